/* aarch64 syscall ABI, as the interposer relies on it:
 *   number in x8; arguments x0..x5; result in x0 (-4095..-1 = -errno)
 *   `svc #0` (d4000001, 4 bytes) clobbers nothing but x0; x1..x30 and sp survive
 *   no red zone below sp
 *   SIGSYS from SECCOMP_RET_TRAP: the syscall is skipped, si_syscall holds the number,
 *   x0 still holds the first argument, pc points after the instruction
 */
#ifndef KBOX_ARCH_AARCH64_H
#define KBOX_ARCH_AARCH64_H

#include <stddef.h>
#include <stdint.h>
#include <linux/types.h>
#include <linux/audit.h>
#include <asm/signal.h>
#include <asm/sigcontext.h>
#include <asm/ucontext.h>
#include <asm/siginfo.h>

#define KBOX_ARCH_NAME "aarch64"
#define KBOX_AUDIT_ARCH AUDIT_ARCH_AARCH64
#define KBOX_SYSCALL_INSN_LEN 4
#define KBOX_REDZONE 0
#define KBOX_STACK_ALIGN 16
#define KBOX_MINSIGSTKSZ 5120   /* the kernel's MINSIGSTKSZ for sigaltstack */
#define KBOX_HAS_SUD 0          /* Debian's arm64 kernels lack CONFIG_GENERIC_ENTRY */
/* clone(flags, stack, parent_tid, tls, child_tid): child_tid is argument 4 */
#define KBOX_CLONE_CTID_ARG 4

typedef struct ucontext kbox_ucontext_t;

static inline uint64_t kbox_uc_arg(const kbox_ucontext_t *uc, int i) { return uc->uc_mcontext.regs[i]; }
static inline void kbox_uc_set_arg(kbox_ucontext_t *uc, int i, uint64_t v) { uc->uc_mcontext.regs[i] = v; }
static inline void kbox_uc_set_nr(kbox_ucontext_t *uc, uint64_t nr) { uc->uc_mcontext.regs[8] = nr; }
static inline uint64_t kbox_uc_ret(const kbox_ucontext_t *uc) { return uc->uc_mcontext.regs[0]; }
static inline void kbox_uc_set_ret(kbox_ucontext_t *uc, uint64_t v) { uc->uc_mcontext.regs[0] = v; }
static inline uint64_t kbox_uc_pc(const kbox_ucontext_t *uc) { return uc->uc_mcontext.pc; }
static inline void kbox_uc_set_pc(kbox_ucontext_t *uc, uint64_t v) { uc->uc_mcontext.pc = v; }
static inline uint64_t kbox_uc_sp(const kbox_ucontext_t *uc) { return uc->uc_mcontext.sp; }
static inline void kbox_uc_set_sp(kbox_ucontext_t *uc, uint64_t v) { uc->uc_mcontext.sp = v; }
/* After the vfork stub (tiers/clone.c): the result stays in x0; the marker used x8, which the guest expects
 * to find unchanged after its svc. */
static inline uint64_t kbox_uc_vfork_result(const kbox_ucontext_t *uc) { return uc->uc_mcontext.regs[0]; }
static inline uint64_t kbox_uc_nr_reg(const kbox_ucontext_t *uc) { return uc->uc_mcontext.regs[8]; }
static inline void kbox_uc_restore_nr_reg(kbox_ucontext_t *uc, uint64_t v) { uc->uc_mcontext.regs[8] = v; }
static inline uint64_t *kbox_uc_sigmask(kbox_ucontext_t *uc) { return (uint64_t *)&uc->uc_sigmask; }

#endif
