/* The trap tier's handler, for the runtime's own callers (see trap.c). */
#ifndef KBOX_TIERS_TRAP_H
#define KBOX_TIERS_TRAP_H

#include "arch.h"
#include "core/request.h"

/* Serves one intercepted syscall described by `req`, with the interrupted context `uc`
 * (whose result register receives the outcome).  `si` is the SIGSYS siginfo, whose frame
 * a CLONE_VM child copies. */
void kbox_trap_serve(struct kbox_req *req, const siginfo_t *si, kbox_ucontext_t *uc);

#endif
