/* The root view in the seccomp supervisor (seccomp-view.c). */
#ifndef KBOX_TIERS_SECCOMP_VIEW_H
#define KBOX_TIERS_SECCOMP_VIEW_H

#include "core/ids.h"
#include "core/request.h"
#include "tiers/seccomp-proc.h"
#include <stdbool.h>
#include <stdint.h>

struct kbox_sview {
    int listener;           /* the seccomp listener (ADDFD) */
    uint64_t image_lo, image_hi; /* kbox's image, at the same address in every guest */
    struct kbox_sview_run run;
    struct kbox_ids_table *ids; /* --root-id: the record its file calls go through, or NULL */
};

/* Prepares the supervisor's side (its private /proc entry, kbox's path and image). */
int kbox_sview_init(struct kbox_sview *sv, int listener, int cwd_fd);

enum kbox_sview_action {
    KBOX_SV_CONTINUE,   /* not a call of the view: the kernel runs it (CONTINUE) */
    KBOX_SV_RESULT,     /* served or refused here: answer with *ret */
    KBOX_SV_ANSWERED,   /* served and answered already (a descriptor installed with
                           ADDFD|SEND, or handed to a helper for a FIFO); *ret is the result */
};

/* Serves the notified call `req` (id: its notification) inside the view when it touches a
 * path, and refuses what would let the program reach around the view (see the comment at
 * the top of seccomp-view.c).  `shown` receives the request the trace should decode: for a
 * served call, its arguments point at the supervisor's copies (the guest paths as read,
 * the results as written), which stay valid after the answer. */
enum kbox_sview_action kbox_sview_serve(struct kbox_sview *sv, const struct kbox_req *req, uint64_t id,
                                        int64_t *ret, struct kbox_req *shown);

/* Calls refused for containment (seccomp-refuse.c), and the working directory's descriptor
 * kept; true if answered (*ret). */
bool kbox_sview_refuse(const struct kbox_sview *sv, const struct kbox_req *req, int64_t *ret);

#endif
