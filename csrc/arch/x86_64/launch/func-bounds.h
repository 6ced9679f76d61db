/* Where the function containing a syscall site begins and ends (func-bounds.c): the x86_64
 * rewriter decodes forward from a function's start, never backwards from the site. */
#ifndef KBOX_ARCH_X86_FUNC_BOUNDS_H
#define KBOX_ARCH_X86_FUNC_BOUNDS_H

#include <stdint.h>

struct fn_bounds {
    uint64_t start;
    uint64_t end;           /* the next function's start (or just past the site) */
    uint64_t fde_end;       /* where its FDE says it ends; 0 if not known */
    uint64_t prev_start;    /* the function before it (.eh_frame_hdr only); 0 if not known */
    uint64_t prev_fde_end;
};

/* From the object's .eh_frame_hdr, else its symbol table (static musl programs have no
 * unwind tables); 0, or -1 when no bounds are known (the site stays on the trap path). */
int kbox_x86_function_bounds(uint64_t site, struct fn_bounds *b);

#endif
