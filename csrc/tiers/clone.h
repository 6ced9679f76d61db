/* vfork and clone in the in-process runtime (clone.c). */
#ifndef KBOX_TIERS_CLONE_H
#define KBOX_TIERS_CLONE_H

#include "arch.h"
#include "core/request.h"
#include <stdbool.h>

/* If the call is a vfork that can be made outside the handler, prepares `uc` to make it
 * (from kbox_vfork_stub) and returns true; the handler then returns without serving. */
bool kbox_vfork_begin(const struct kbox_req *req, const struct kbox_answer *ans,
                      kbox_ucontext_t *uc);
/* The marker trap after such a vfork returned, in the child or the parent: restores the
 * program's registers and, in the parent, finishes the call. */
void kbox_vfork_finish(kbox_ucontext_t *uc);
/* Runs clone/clone3/fork/vfork with the dispatcher's arguments; the SIGSYS frame (si, uc)
 * is what a CLONE_VM child starts from.  Returns the kernel's result (0 in a child). */
int64_t kbox_run_clone(const struct kbox_req *req, const uint64_t *args, const siginfo_t *si,
                       kbox_ucontext_t *uc);

#endif
