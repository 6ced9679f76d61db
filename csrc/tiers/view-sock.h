/* AF_UNIX socket paths in the in-process tiers' root view (view-sock.c; the translation
 * itself: core/view-unix.h). */
#ifndef KBOX_TIERS_VIEW_SOCK_H
#define KBOX_TIERS_VIEW_SOCK_H

#include "core/request.h"
#include "core/view-unix.h"
#include <stdbool.h>

/* One socket call's translated address and the room for the one it reports, alive until
 * the call has run (part of kbox_view_call). */
struct kbox_view_sock {
    struct kbox_unix_addr to;    /* the destination or name, as the kernel gets it */
    struct kbox_msghdr msg;      /* sendmsg/recvmsg: the program's, with msg_name replaced */
    uint64_t name_addr, len_addr; /* where the program wants the name reported, and its length */
    uint64_t msg_addr;           /* recvmsg: the program's msghdr */
    int32_t cap;                 /* the program's room for the name */
    uint32_t len;                /* the length the kernel reports (our room on entry) */
    _Alignas(8) unsigned char name[KBOX_SOCKADDR_MAX];
    bool out;                    /* the call reports a name into `name` */
};

/* Before a call with the KBOX_SC_SOCKADDR property runs: a path address is pointed at its
 * translation, a reported name at `s->name`.  True if served here (*ret: the translation's
 * error). */
bool kbox_view_sock_enter(const struct kbox_req *req, uint64_t *args, struct kbox_view_sock *s, int64_t *ret);

/* After it ran: releases the resolution, reports the name as the guest's. */
void kbox_view_sock_leave(const struct kbox_req *req, struct kbox_view_sock *s, int64_t *ret);

#endif
