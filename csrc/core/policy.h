/* The policies every tier applies through the one dispatcher. */
#ifndef KBOX_CORE_POLICY_H
#define KBOX_CORE_POLICY_H

#include <stdbool.h>
#include <stdint.h>
#include "core/request.h"
#include "core/shared.h"
#include "trace/trace.h"

struct kbox_policy {
    uint16_t deny_errno[KBOX_NR_MAX];   /* --deny: nonzero = fail the call with this errno */
    bool trace;                         /* --trace */
    struct kbox_trace_opts trace_opts;
    int trace_fd;
    bool virtual_pid;                   /* --virtual-pid */
    bool stats;                         /* --stats */
    bool enforce_wx;                    /* in-process tiers unless --allow-wx */
    bool root_id;                       /* --root-id: fake root ids and ownership (core/ids.h) */
    bool root_record;                   /* the ownership record patches the file calls: --root-id,
                                         * or --root-record alone (an image root's owners) */
    struct kbox_shared *shared;         /* counters, virtual pid table */
};

/* Decides what happens to a call.  ans->args starts as a copy of req->args. */
void kbox_dispatch_enter(const struct kbox_policy *p, const struct kbox_req *req,
                         struct kbox_answer *ans);

/* Finishes a call: translates the result for the guest (virtual pids), writes the trace
 * line, and returns the value the guest must see.  For KBOX_RETURN/KBOX_FAIL answers the
 * tier passes ret = value / -errno with KBOX_RET_KNOWN. */
int64_t kbox_dispatch_exit(const struct kbox_policy *p, const struct kbox_req *req,
                           const struct kbox_answer *ans, int64_t ret, enum kbox_ret_state state);

/* True if, under this policy, the dispatcher would run call `nr` unchanged and leave its
 * result alone, with nothing to record: a tier may then skip the dispatcher entirely. */
bool kbox_dispatch_passthrough(const struct kbox_policy *p, int nr);

/* Writes one trace line for `req` (used directly by tiers for calls that never return,
 * before they are made). */
void kbox_dispatch_trace(const struct kbox_policy *p, const struct kbox_req *req, int64_t ret,
                         enum kbox_ret_state state);

/* The ids the guest sees for the caller (virtual under --virtual-pid). */
int kbox_guest_pid(const struct kbox_policy *p, int real);

#endif
