/* Socket addresses in the seccomp supervisor's root view (seccomp-sock.c). */
#ifndef KBOX_TIERS_SECCOMP_SOCK_H
#define KBOX_TIERS_SECCOMP_SOCK_H

#include "core/request.h"
#include "tiers/seccomp-proc.h"
#include <stdbool.h>
#include <stdint.h>

/* Serves the notified socket call `req` (a KBOX_SC_SOCKADDR call; id: its notification,
 * listener: the seccomp listener) on the supervisor's own copies.  false: the kernel may
 * run it as it is (CONTINUE).  true: served; *answered says whether a helper child answers
 * the notification itself (a call that may block; *ret is then -EINPROGRESS) or *ret is the
 * answer.  `shown` gets the trace's view of the call (its pointers at the copies). */
bool kbox_sview_sock_serve(const struct kbox_sview_run *run, int listener, const struct kbox_req *req, uint64_t id,
                           int64_t *ret, bool *answered, struct kbox_req *shown);

#endif
