/* aarch64 site rewriting.
 *
 * `svc #0` (4 bytes) becomes `b <trampoline>` (range +-128 MiB): one aligned 32-bit store,
 * which other threads observe atomically, followed by cache maintenance.  svc clobbers
 * nothing but x0, and neither does the trampoline (it saves x0-x18, x30 and NZCV below sp,
 * and the dispatcher never touches FP/SIMD/SVE state: -mgeneral-regs-only).  The number is
 * read from x8 at run time, so every svc #0 is rewritable. */
#include "arch.h"
#include "tiers/rewrite.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "core/mem.h"

struct kbox_rw_frame {
    uint64_t x[19];     /* x0..x18 */
    uint64_t x30, nzcv, decision;
};

extern const uint8_t kbox_rw_tmpl_start[], kbox_rw_tmpl_site[], kbox_rw_tmpl_entry[];
extern const uint8_t kbox_rw_tmpl_jmp1[], kbox_rw_tmpl_jmp2[], kbox_rw_tmpl_end[];

#define SVC0 0xd4000001u

void kbox_rw_a64_entry(struct kbox_rw_frame *f, uint64_t site);

/* aarch64 trampolines save the caller-saved registers and call kbox_rw_a64_entry
 * (launch/sigstack.S), which serves passthrough calls in assembly on the program's stack
 * (reading kbox_trap_fast itself) and the rest through kbox_rw_slow on the kbox stack: the
 * trampoline cannot look the number up itself without a free scratch register. */
void kbox_arch_rw_enable(const uint8_t *fast, int n, const int own_fd[2])
{
    (void)fast, (void)n, (void)own_fd; /* kbox_rw_a64_entry reads the runtime's own */
}

int kbox_arch_rw_plan(uint64_t site, struct kbox_rw_plan *plan)
{
    uint32_t insn;
    if ((site & 3) || kbox_mem_read_self(site, &insn, 4) != 4 || insn != SVC0)
        return -1;
    plan->site = site;
    plan->patch_at = site;
    plan->reloc_len = 0;
    plan->resume = site + 4;
    plan->reach = (128ULL << 20) - (1ULL << 20);
    return 0;
}

uint64_t kbox_arch_rw_tramp_size(const struct kbox_rw_plan *plan)
{
    (void)plan;
    return (uint64_t)(kbox_rw_tmpl_end - kbox_rw_tmpl_start);
}

static uint32_t branch(uint64_t from, uint64_t to)
{
    return 0x14000000u | (uint32_t)(((int64_t)(to - from) >> 2) & 0x03ffffff);   /* b imm26 */
}

void kbox_arch_rw_emit(uint8_t *dst, uint64_t at, const struct kbox_rw_plan *plan)
{
    size_t n = (size_t)(kbox_rw_tmpl_end - kbox_rw_tmpl_start);
    memcpy(dst, kbox_rw_tmpl_start, n);
    uint64_t o_site = (uint64_t)(kbox_rw_tmpl_site - kbox_rw_tmpl_start);
    uint64_t o_entry = (uint64_t)(kbox_rw_tmpl_entry - kbox_rw_tmpl_start);
    uint64_t o_j1 = (uint64_t)(kbox_rw_tmpl_jmp1 - kbox_rw_tmpl_start);
    uint64_t o_j2 = (uint64_t)(kbox_rw_tmpl_jmp2 - kbox_rw_tmpl_start);
    uint64_t entry = (uint64_t)(uintptr_t)kbox_rw_a64_entry;
    uint32_t b1 = branch(at + o_j1, plan->resume), b2 = branch(at + o_j2, plan->resume);
    memcpy(dst + o_site, &plan->site, 8);
    memcpy(dst + o_entry, &entry, 8);
    memcpy(dst + o_j1, &b1, 4);
    memcpy(dst + o_j2, &b2, 4);
}

int kbox_arch_rw_patch(const struct kbox_rw_plan *plan, uint64_t tramp,
                       struct kbox_rw_step steps[3], bool *interim)
{
    uint32_t b = branch(plan->site, tramp);
    steps[0].win = plan->site;
    steps[0].len = 4;
    memcpy(steps[0].bytes, &b, 4);
    *interim = false;
    return 1;
}

uint64_t kbox_arch_rw_interim_resume(uint64_t patch_at) { return patch_at + 4; }

void kbox_arch_rw_store(uint64_t win, const uint8_t *bytes, uint32_t len)
{
    (void)len;
    uint32_t v;
    memcpy(&v, bytes, 4);
    __atomic_store_n((uint32_t *)(uintptr_t)win, v, __ATOMIC_SEQ_CST);
}

int kbox_arch_rw_nr(const struct kbox_rw_frame *f) { return (int)f->x[8]; }
uint64_t kbox_arch_rw_arg(const struct kbox_rw_frame *f, int i) { return f->x[i]; }

void kbox_arch_rw_set_result(struct kbox_rw_frame *f, uint64_t resume, int64_t ret)
{
    (void)resume;
    f->x[0] = (uint64_t)ret;
}

void kbox_arch_rw_set_trap(struct kbox_rw_frame *f) { f->decision = 1; }
void kbox_arch_rw_set_nr(struct kbox_rw_frame *f, int nr) { f->x[8] = (uint64_t)nr; }
