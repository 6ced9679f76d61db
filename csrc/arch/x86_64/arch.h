/* x86_64 syscall ABI, as the interposer relies on it:
 *   number in rax; arguments rdi, rsi, rdx, r10, r8, r9; result in rax (-4095..-1 = -errno)
 *   `syscall` (0f 05, 2 bytes) clobbers rcx (return rip) and r11 (rflags); nothing else
 *   the SysV red zone: 128 bytes below rsp belong to the interrupted function
 *   SIGSYS from SECCOMP_RET_TRAP: the syscall is skipped, si_syscall holds the number,
 *   rax already holds -ENOSYS, rip points after the instruction
 */
#ifndef KBOX_ARCH_X86_64_H
#define KBOX_ARCH_X86_64_H

#include <stddef.h>
#include <stdint.h>
#include <linux/types.h>
#include <linux/audit.h>
#include <asm/signal.h>
#include <asm/sigcontext.h>
#include <asm/ucontext.h>
#include <asm/siginfo.h>

#define KBOX_ARCH_NAME "x86_64"
#define KBOX_AUDIT_ARCH AUDIT_ARCH_X86_64
#define KBOX_SYSCALL_INSN_LEN 2
#define KBOX_REDZONE 128
#define KBOX_STACK_ALIGN 16
#define KBOX_MINSIGSTKSZ 2048   /* the kernel's MINSIGSTKSZ for sigaltstack */
#define KBOX_HAS_SUD 1          /* Syscall User Dispatch is offered as a trap source */
/* clone(flags, stack, parent_tid, child_tid, tls): child_tid is argument 3 */
#define KBOX_CLONE_CTID_ARG 3

typedef struct ucontext kbox_ucontext_t;

static inline uint64_t kbox_uc_arg(const kbox_ucontext_t *uc, int i)
{
    const struct sigcontext *m = &uc->uc_mcontext;
    switch (i) {
    case 0: return m->rdi;
    case 1: return m->rsi;
    case 2: return m->rdx;
    case 3: return m->r10;
    case 4: return m->r8;
    default: return m->r9;
    }
}

static inline void kbox_uc_set_arg(kbox_ucontext_t *uc, int i, uint64_t v)
{
    struct sigcontext *m = &uc->uc_mcontext;
    switch (i) {
    case 0: m->rdi = v; break;
    case 1: m->rsi = v; break;
    case 2: m->rdx = v; break;
    case 3: m->r10 = v; break;
    case 4: m->r8 = v; break;
    default: m->r9 = v; break;
    }
}

static inline void kbox_uc_set_nr(kbox_ucontext_t *uc, uint64_t nr) { uc->uc_mcontext.rax = nr; }
static inline uint64_t kbox_uc_ret(const kbox_ucontext_t *uc) { return uc->uc_mcontext.rax; }
static inline void kbox_uc_set_ret(kbox_ucontext_t *uc, uint64_t v) { uc->uc_mcontext.rax = v; }
static inline uint64_t kbox_uc_pc(const kbox_ucontext_t *uc) { return uc->uc_mcontext.rip; }
static inline void kbox_uc_set_pc(kbox_ucontext_t *uc, uint64_t v) { uc->uc_mcontext.rip = v; }
static inline uint64_t kbox_uc_sp(const kbox_ucontext_t *uc) { return uc->uc_mcontext.rsp; }
static inline void kbox_uc_set_sp(kbox_ucontext_t *uc, uint64_t v) { uc->uc_mcontext.rsp = v; }
/* After the vfork stub (tiers/clone.c): the vfork result (kbox_vfork_stub stored it: the marker syscall
 * clobbers rax, rcx and r11), and the register the marker used for its number (rax, which
 * receives the result anyway). */
extern uint64_t kbox_vfork_result;
static inline uint64_t kbox_uc_vfork_result(const kbox_ucontext_t *uc) { (void)uc; return kbox_vfork_result; }
static inline uint64_t kbox_uc_nr_reg(const kbox_ucontext_t *uc) { return uc->uc_mcontext.rax; }
static inline void kbox_uc_restore_nr_reg(kbox_ucontext_t *uc, uint64_t v) { (void)uc; (void)v; }
static inline uint64_t *kbox_uc_sigmask(kbox_ucontext_t *uc) { return (uint64_t *)&uc->uc_sigmask; }

#endif
