/* aarch64 site rewriting.
 *
 * `svc #0` (4 bytes) becomes `b <trampoline>` (range +-128 MiB): one aligned 32-bit store,
 * which other threads observe atomically, followed by cache maintenance.  svc clobbers
 * nothing but x0, and neither does the trampoline (it saves x0-x18, x30 and NZCV below sp,
 * and the dispatcher never touches FP/SIMD/SVE state: -mgeneral-regs-only).  The number is
 * read from x8 at run time, so every svc #0 is rewritable. */
#include "arch.h"
#include "arch/interface.h"
#include "launch/rw-frame.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/self.h"


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

/* ---- promoting musl's wrapper calls ------------------------------------------------------
 *
 * musl (1.2.x) makes its cancellable calls (open, read, write, close, ...) as
 * `bl __syscall_cp` with the number in x0 and the arguments in x1..x6.  When the program
 * does not link pthread_cancel, __syscall_cp is `b __syscall_cp_c`, and __syscall_cp_c is
 * musl's sccp: exactly the nine instructions below, a register shuffle, `svc #0`, `ret`.
 * Such a `bl` is promoted: it becomes `b trampoline`, whose prefix does what the call would
 * (the shuffle; x30 = the return address) and then serves the syscall like any site whose
 * svc is sccp's, resuming after the bl.  The target is matched instruction for instruction,
 * so a promoted call does exactly what it did: with pthread_cancel linked, __syscall_cp_c
 * checks the thread's cancellation state and is never promoted (no check is ever skipped,
 * whatever threads the program starts).  A plain `b` is never promoted (no return address
 * to resume at). */
static const uint32_t sccp[9] = {
    0xaa0003e8, /* mov x8, x0 */
    0xaa0103e0, /* mov x0, x1 */
    0xaa0203e1, /* mov x1, x2 */
    0xaa0303e2, /* mov x2, x3 */
    0xaa0403e3, /* mov x3, x4 */
    0xaa0503e4, /* mov x4, x5 */
    0xaa0603e5, /* mov x5, x6 */
    SVC0,       /* svc #0 */
    0xd65f03c0, /* ret */
};

static bool is_b(uint32_t w) { return (w & 0xfc000000u) == 0x14000000u; }
static bool is_bl(uint32_t w) { return (w & 0xfc000000u) == 0x94000000u; }
static uint64_t b_target(uint64_t pc, uint32_t w)
{
    int64_t off = (int64_t)((uint64_t)(w & 0x03ffffffu) << 38) >> 36; /* imm26 * 4, signed */
    return pc + (uint64_t)off;
}

/* The address of sccp's svc if `target` (followed through up to two `b`) is sccp; else 0. */
static uint64_t sccp_svc(const uint8_t *code, uint64_t at, uint64_t len, uint64_t target)
{
    for (int hop = 0; hop < 3; hop++) {
        if ((target & 3) || target < at || target + sizeof(sccp) > at + len)
            return 0;
        const uint32_t *w = (const uint32_t *)(const void *)(code + (target - at));
        if (memcmp(w, sccp, sizeof(sccp)) == 0)
            return target + 7 * 4;
        if (!is_b(w[0]))
            return 0;
        target = b_target(target, w[0]);
    }
    return 0;
}

/* movz/movk x30, #imm: the return address a bl would have left. */
static void put_mov_x30(uint8_t *p, uint64_t v)
{
    for (uint32_t hw = 0; hw < 4; hw++) {
        uint32_t insn = (hw ? 0xf2800000u : 0xd2800000u) | (hw << 21) |
                        ((uint32_t)((v >> (16 * hw)) & 0xffff) << 5) | 30;
        memcpy(p + 4 * hw, &insn, 4);
    }
}

int kbox_arch_rw_promotions(const uint8_t *code, uint64_t at, uint64_t len,
                            struct kbox_rw_plan *plans, int max)
{
    uint64_t known_target[4] = { 0 }, known_svc[4] = { 0 };
    int nknown = 0, n = 0;
    for (uint64_t off = 0; off + 4 <= len && n < max; off += 4) {
        uint32_t w;
        memcpy(&w, code + off, 4);
        if (!is_bl(w))
            continue;
        uint64_t pc = at + off, target = b_target(pc, w), svc = 0;
        for (int i = 0; i < nknown; i++)
            if (known_target[i] == target)
                svc = known_svc[i];
        if (!svc) {
            svc = sccp_svc(code, at, len, target);
            if (!svc)
                continue;
            if (nknown < 4) {
                known_target[nknown] = target;
                known_svc[nknown++] = svc;
            }
        }
        struct kbox_rw_plan *p = &plans[n++];
        memset(p, 0, sizeof(*p));
        p->site = svc;          /* the syscall the call makes: sccp's svc */
        p->patch_at = pc;       /* the bl */
        p->resume = pc + 4;
        p->reach = (128ULL << 20) - (1ULL << 20);
        memcpy(p->reloc, sccp, 7 * 4);          /* the shuffle */
        put_mov_x30(p->reloc + 7 * 4, pc + 4);  /* x30 = the return address */
        uint32_t nop = 0xd503201f;              /* keeps the template's literals 8-aligned */
        memcpy(p->reloc + 11 * 4, &nop, 4);
        p->reloc_len = 12 * 4;
    }
    return n;
}

uint64_t kbox_arch_rw_tramp_size(const struct kbox_rw_plan *plan)
{
    return plan->reloc_len + (uint64_t)(kbox_rw_tmpl_end - kbox_rw_tmpl_start);
}

static uint32_t branch(uint64_t from, uint64_t to)
{
    return 0x14000000u | (uint32_t)(((int64_t)(to - from) >> 2) & 0x03ffffff);   /* b imm26 */
}

void kbox_arch_rw_emit(uint8_t *dst, uint64_t at, const struct kbox_rw_plan *plan)
{
    size_t n = (size_t)(kbox_rw_tmpl_end - kbox_rw_tmpl_start);
    uint64_t r = plan->reloc_len; /* a promoted call's prefix, in front of the template */
    memcpy(dst, plan->reloc, r);
    memcpy(dst + r, kbox_rw_tmpl_start, n);
    uint64_t o_site = r + (uint64_t)(kbox_rw_tmpl_site - kbox_rw_tmpl_start);
    uint64_t o_entry = r + (uint64_t)(kbox_rw_tmpl_entry - kbox_rw_tmpl_start);
    uint64_t o_j1 = r + (uint64_t)(kbox_rw_tmpl_jmp1 - kbox_rw_tmpl_start);
    uint64_t o_j2 = r + (uint64_t)(kbox_rw_tmpl_jmp2 - kbox_rw_tmpl_start);
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
    uint32_t b = branch(plan->patch_at, tramp);
    steps[0].win = plan->patch_at;
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
