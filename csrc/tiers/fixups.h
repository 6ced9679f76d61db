/* The runtime's adjustments of calls it must see through (fixups.c). */
#ifndef KBOX_TIERS_FIXUPS_H
#define KBOX_TIERS_FIXUPS_H

#include "arch.h"
#include "core/request.h"
#include <stdbool.h>

/* For a call marked KBOX_SC_RUNTIME: returns true if it was fully emulated (result in
 * *ret); false if it is to run with ans->args (possibly rewritten, pointing into
 * ans->scratch).  `uc` is the SIGSYS frame, or NULL when served from a trampoline (the
 * calls that need the frame never are: KBOX_SC_FRAME). */
bool kbox_runtime_fixup(const struct kbox_req *req, struct kbox_answer *ans, kbox_ucontext_t *uc,
                        int64_t *ret);

#endif
