/* Shared between tiers/trap.c and arch/<arch>/launch/vfork.S. */
#ifndef KBOX_TIERS_VFORK_H
#define KBOX_TIERS_VFORK_H

/* A syscall number no kernel defines, raised from kbox_vfork_marker when a vfork made from
 * kbox_vfork_stub has returned (in the child, and in the parent). */
#define KBOX_NR_VFORK_DONE 0x3ff0

#ifndef __ASSEMBLER__
#include <stdint.h>
extern uint64_t kbox_vfork_result;
void kbox_vfork_stub(void);
void kbox_vfork_marker(void);
extern const char kbox_vfork_marker_end[];
#endif

#endif
