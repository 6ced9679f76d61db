/* x86_64 site rewriting.
 *
 * `syscall` is 2 bytes and a jump needs 5, and zpoline's 2-byte `call *%rax` pushes a return
 * address into the interrupted function's red zone.  So the `syscall` itself stays, and the
 * single instruction right before it — if it is at least 5 bytes long and position
 * independent, as glibc's `mov $nr,%eax` and `syscall()`'s `mov 0x8(%rsp),%r9` are — is
 * replaced by `jmp rel32` to a per-site trampoline that re-executes it.  Consequences:
 *  - a thread blocked in the syscall returns to site+2, which is unchanged;
 *  - a jump straight to the syscall (skipping the instruction) still traps;
 *  - instruction boundaries come from decoding forward from the function's start (from the
 *    object's .eh_frame_hdr), never from guessing backwards;
 *  - the patch is one atomic store (an aligned 8- or 16-byte window, or a locked unaligned
 *    one inside a cache line), so no thread ever fetches a torn instruction; a site whose 5
 *    bytes cross a 64-byte line is patched in two steps through a trapping placeholder
 *    (kbox_arch_rw_patch).
 * Short sites — an instruction of 2-4 bytes before the syscall, like glibc read's
 * `xor %eax,%eax` — get `jmp rel8` instead, to a 5-byte `jmp rel32` written into alignment
 * padding of the same function within 127 bytes (find_slot says which padding is provably
 * dead).  Where there is none, the site stays on the trap path.
 */
#include "arch.h"
#include "decode.h"
#include "arch/interface.h"
#include "launch/rw-frame.h"
#include "launch/func-bounds.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/self.h"
#include <linux/fcntl.h>
#include <linux/elf.h>


extern const uint8_t kbox_rw_tmpl_start[], kbox_rw_tmpl_site[], kbox_rw_tmpl_entry[];
extern const uint8_t kbox_rw_tmpl_jmp1[], kbox_rw_tmpl_jmp2[], kbox_rw_tmpl_end[];
extern const uint8_t kbox_rw_tmpl_fast[], kbox_rw_tmpl_resume[], kbox_rw_tmpl_gate[];
extern const uint8_t kbox_rw_tmpl_fd0[], kbox_rw_tmpl_fd1[];
extern const uint8_t kbox_rw_gate[];

/* The trampolines' passthrough table, indexed by the low 16 bits of a syscall number whose
 * high 16 bits are zero (the template checks that without touching the flags). */
static uint8_t kbox_rw_fast[65536];

/* The runtime's descriptors, compared in the trampoline for KBOX_FAST_UNLESS_OWN_FD calls
 * (read at emit time: they are fixed before the program starts). */
static const int *rw_own_fd;

void kbox_arch_rw_enable(const uint8_t *fast, int n, const int own_fd[2])
{
    for (int i = 0; i < n && i < (int)sizeof(kbox_rw_fast); i++)
        kbox_rw_fast[i] = fast[i];
    rw_own_fd = own_fd;
}

/* ---- which instructions may run elsewhere --------------------------------------------- */

/* One-byte opcodes with a ModRM byte whose only address dependence is a ModRM memory operand
 * (Intel SDM Vol. 2D, A.3 Table A-2): moves, lea, integer ALU ops and compares.  Anything
 * else (branches, calls, stack-relative control flow, string ops) is left alone. */
static bool plain_modrm_opcode(uint8_t op)
{
    switch (op) {
    case 0x01: case 0x03: case 0x09: case 0x0b: case 0x11: case 0x13: case 0x19: case 0x1b:
    case 0x21: case 0x23: case 0x29: case 0x2b: case 0x31: case 0x33: case 0x39: case 0x3b:
    case 0x80: case 0x81: case 0x83: case 0x85: case 0x88: case 0x89: case 0x8a: case 0x8b: case 0x8d:
    case 0xc6: case 0xc7:
        return true;
    default:
        return false;
    }
}

static bool relocatable(const uint8_t *c, int len)
{
    int i = 0;
    while (i < len && (c[i] == 0x66 || c[i] == 0x67 || c[i] == 0x64 || c[i] == 0x65))
        i++;
    if (i < len && (c[i] & 0xf0) == 0x40)
        i++; /* REX */
    if (i >= len)
        return false;
    uint8_t op = c[i++];
    if (op >= 0xb8 && op <= 0xbf)
        return true; /* mov $imm, %reg: no operand depends on the address */
    if (op == 0x0f && i < len && (c[i] == 0xb6 || c[i] == 0xb7 || c[i] == 0xbe || c[i] == 0xbf))
        op = c[i++], op = 0x8b; /* movzx/movsx: ModRM like mov */
    if (!plain_modrm_opcode(op) || i >= len)
        return false;
    uint8_t modrm = c[i];
    /* mod == 00 and rm == 101: RIP-relative, which would change meaning once moved. */
    return !((modrm >> 6) == 0 && (modrm & 7) == 5);
}

/* ---- short sites: a 5-byte slot in dead padding ------------------------------------------ */

/* What one decoded instruction means for control flow. */
enum flow { FLOW_NEXT, FLOW_END /* ret, jmp, ud2: never falls through */, FLOW_INDIRECT };

static enum flow insn_flow(const uint8_t *c, int len, uint64_t pc, uint64_t *target)
{
    int i = 0;
    *target = 0;
    while (i < len && (c[i] == 0x66 || c[i] == 0x67 || c[i] == 0xf2 || c[i] == 0xf3 || c[i] == 0x2e ||
                       c[i] == 0x3e || c[i] == 0x26 || c[i] == 0x36 || c[i] == 0x64 || c[i] == 0x65 ||
                       c[i] == 0xf0))
        i++;
    if (i < len && (c[i] & 0xf0) == 0x40)
        i++;
    if (i >= len)
        return FLOW_NEXT;
    uint8_t op = c[i];
    uint64_t next = pc + (uint64_t)len;
    if ((op >= 0x70 && op <= 0x7f) || (op >= 0xe0 && op <= 0xe3) || op == 0xeb) {
        *target = next + (uint64_t)(int64_t)(int8_t)c[len - 1];
        return op == 0xeb ? FLOW_END : FLOW_NEXT;
    }
    if (op == 0xe8 || op == 0xe9 || (op == 0x0f && i + 1 < len && c[i + 1] >= 0x80 && c[i + 1] <= 0x8f)) {
        int32_t rel;
        memcpy(&rel, c + len - 4, 4);
        *target = next + (uint64_t)(int64_t)rel;
        return op == 0xe9 ? FLOW_END : FLOW_NEXT;
    }
    if (op == 0xc3 || op == 0xc2 || (op == 0x0f && i + 1 < len && c[i + 1] == 0x0b))
        return FLOW_END;
    if (op == 0xff && i + 1 < len && (((c[i + 1] >> 3) & 7) == 4 || ((c[i + 1] >> 3) & 7) == 5))
        return FLOW_INDIRECT; /* jmp *...: a jump table could land anywhere */
    return FLOW_NEXT;
}

/* nop (90, 0f 1f /0 with any 66/2e prefixes) or int3 padding. */
static bool is_padding(const uint8_t *c, int len)
{
    int i = 0;
    while (i < len && (c[i] == 0x66 || c[i] == 0x2e))
        i++;
    if (i == len - 1)
        return c[i] == 0x90 || c[i] == 0xcc;
    return i + 1 < len && c[i] == 0x0f && c[i + 1] == 0x1f;
}

/* Slots already handed out (under the rewrite lock: kbox_arch_rw_plan runs inside it). */
#define SLOTS_MAX 512
static uint64_t slot_used[SLOTS_MAX];
static int nslots;

static bool slot_free(uint64_t at)
{
    for (int i = 0; i < nslots; i++)
        if (at < slot_used[i] + 5 && slot_used[i] < at + 5)
            return false;
    return true;
}

/* A 5-byte slot for the long jump of the short site at `patch_at` (its `jmp rel8` ends at
 * patch_at + 2), in the function [start, end) whose bytes are `code`.  A slot is dead code
 * for certain when it lies in a run of padding that (1) directly follows an instruction
 * that never falls through (ret, jmp, ud2), (2) ends on a 16-byte boundary, i.e. is the
 * alignment padding before a label, and (3) is the target of no direct branch anywhere in
 * the function, which (4) has no indirect jump.  Returns the slot or 0. */
static uint64_t find_slot(const uint8_t *code, uint64_t start, uint64_t end, uint64_t patch_at)
{
    uint64_t best = 0, run = 0, pc = start;
    bool after_end = false;
    uint64_t cand[16];
    int ncand = 0;
    while (pc < end) {
        const uint8_t *c = code + (pc - start);
        int n = kbox_x86_insn_len(c, (size_t)(end - pc));
        if (n <= 0)
            return 0;
        uint64_t target;
        enum flow f = insn_flow(c, n, pc, &target);
        if (f == FLOW_INDIRECT)
            return 0;
        if (is_padding(c, n)) {
            if (!run && after_end)
                run = pc;
        } else {
            run = 0;
        }
        after_end = (run != 0) || f == FLOW_END;
        uint64_t next = pc + (uint64_t)n;
        /* A run of padding that ends on a 16-byte boundary: its first 5 bytes, if in reach. */
        if (run && (next & 15) == 0 && next - run >= 5 && ncand < 16) {
            int64_t d = (int64_t)(run - (patch_at + 2));
            if (d >= -128 && d <= 127 && slot_free(run))
                cand[ncand++] = run;
        }
        pc = next;
    }
    /* (3): no direct branch may land inside a candidate (its end, the label, is fine).  One
     * more pass over the function (the first one decoded it all, so lengths are valid). */
    bool hit[16] = { false };
    for (pc = start; ncand && pc < end;) {
        const uint8_t *c = code + (pc - start);
        int n = kbox_x86_insn_len(c, (size_t)(end - pc));
        uint64_t target;
        insn_flow(c, n, pc, &target);
        for (int k = 0; k < ncand; k++)
            hit[k] |= target >= cand[k] && target < cand[k] + 5;
        pc += (uint64_t)n;
    }
    for (int k = 0; k < ncand && !best; k++)
        if (!hit[k])
            best = cand[k];
    if (!best || nslots == SLOTS_MAX)
        return 0;
    slot_used[nslots++] = best;
    return best;
}

/* A slot in the trailing padding of the function before the site's, if that padding runs
 * right up to the site's function (so nothing without unwind information sits between). */
static uint64_t slot_in_previous(const struct fn_bounds *b, uint64_t patch_at)
{
    uint64_t lo = b->prev_start, hi = b->start;
    if (!b->prev_fde_end || ((b->prev_fde_end + 15) & ~15ULL) != hi || lo >= hi ||
        hi - lo > (1u << 20) || patch_at - hi > 128)
        return 0;
    size_t n = (size_t)(hi - lo);
    long m = kbox_mmap(NULL, n, 0x3, 0x22, -1, 0);
    if (kbox_is_err(m))
        return 0;
    uint64_t slot = 0;
    if (kbox_mem_read_self(lo, (void *)m, n) == (long)n)
        slot = find_slot((const uint8_t *)m, lo, hi, patch_at);
    kbox_munmap((void *)m, n);
    return slot;
}

int kbox_arch_rw_plan(uint64_t site, struct kbox_rw_plan *plan)
{
    uint8_t insn[2];
    if (kbox_mem_read_self(site, insn, 2) != 2 || insn[0] != 0x0f || insn[1] != 0x05)
        return -1;
    struct fn_bounds b;
    if (kbox_x86_function_bounds(site, &b) < 0)
        return -1;
    uint64_t start = b.start, end = b.end, fde_end = b.fde_end;
    /* A short site needs the whole function (find_slot checks every branch in it): the
     * function proper plus the alignment padding after it, when the next function is known
     * to start no earlier (.eh_frame_hdr's table; a bare .eh_frame scan only knows the FDE). */
    uint64_t fn_end = (fde_end + 15) & ~15ULL; /* 0 when the FDE's end is unknown */
    if (fn_end > end)
        fn_end = fde_end;
    if (site + 2 - start > (1u << 20) || (fn_end > site && fn_end - start > (1u << 20)))
        return -1;
    size_t head = (size_t)(site + 2 - start);
    size_t span = fn_end > site + 2 ? (size_t)(fn_end - start) : head;
    long m = kbox_mmap(NULL, span, 0x3 /* PROT_READ|PROT_WRITE */, 0x22 /* MAP_PRIVATE|MAP_ANONYMOUS */, -1, 0);
    if (kbox_is_err(m))
        return -1;
    uint8_t *code = (uint8_t *)m;
    /* Walk true instruction boundaries from the function start up to the site. */
    uint64_t pc = start, prev = 0;
    if (kbox_mem_read_self(start, code, head) == (long)head) {
        while (pc < site) {
            int n = kbox_x86_insn_len(code + (pc - start), (size_t)(site + 2 - pc));
            if (n <= 0)
                break;
            prev = pc;
            pc += (uint64_t)n;
        }
    }
    int len = (int)(site - prev);
    bool ok = pc == site && prev && len >= 2 && len <= 15 &&
              kbox_mem_read_self(prev, plan->reloc, (size_t)len) == len && relocatable(plan->reloc, len);
    plan->slot = 0;
    if (ok && len < 5) {
        if (span > head && kbox_mem_read_self(site + 2, code + head, span - head) == (long)(span - head))
            plan->slot = find_slot(code, start, start + span, prev);
        /* Else the padding at the end of the function before, when it runs up to ours. */
        if (!plan->slot)
            plan->slot = slot_in_previous(&b, prev);
        ok = plan->slot != 0;
    }
    kbox_munmap(code, span);
    if (!ok)
        return -1;
    plan->site = site;
    plan->patch_at = prev;
    plan->reloc_len = (uint32_t)len;
    plan->resume = site + 2;
    plan->reach = 0x7fff0000ULL - 256; /* the slot is within 130 bytes of patch_at */
    return 0;
}

/* musl's cancellable calls on x86_64 are `call __syscall_cp`, which (without pthread_cancel
 * linked) is a register shuffle, `syscall` and `ret`: that syscall is an ordinary site,
 * rewritten lazily like any other.  Promoting the call itself would save one call/ret pair
 * and six moves per call but needs a 5-byte call patched atomically and the 7th argument
 * taken from the stack; not done (docs/tiers.md). */
int kbox_arch_rw_promotions(const uint8_t *code, uint64_t at, uint64_t len,
                            struct kbox_rw_plan *plans, int max)
{
    (void)code, (void)at, (void)len, (void)plans, (void)max;
    return 0;
}

uint64_t kbox_arch_rw_tramp_size(const struct kbox_rw_plan *plan)
{
    return plan->reloc_len + (uint64_t)(kbox_rw_tmpl_end - kbox_rw_tmpl_start);
}

static void put32(uint8_t *p, int32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

void kbox_arch_rw_emit(uint8_t *dst, uint64_t at, const struct kbox_rw_plan *plan)
{
    uint32_t r = plan->reloc_len;
    size_t n = (size_t)(kbox_rw_tmpl_end - kbox_rw_tmpl_start);
    memcpy(dst, plan->reloc, r);
    memcpy(dst + r, kbox_rw_tmpl_start, n);
    uint64_t o_site = r + (uint64_t)(kbox_rw_tmpl_site - kbox_rw_tmpl_start);
    uint64_t o_entry = r + (uint64_t)(kbox_rw_tmpl_entry - kbox_rw_tmpl_start);
    uint64_t o_j1 = r + (uint64_t)(kbox_rw_tmpl_jmp1 - kbox_rw_tmpl_start);
    uint64_t o_j2 = r + (uint64_t)(kbox_rw_tmpl_jmp2 - kbox_rw_tmpl_start);
    put64(dst + o_site + 2, plan->site);                                  /* 48 be imm64 */
    put64(dst + o_entry + 2, (uint64_t)(uintptr_t)kbox_rw_slow);          /* 48 b8 imm64 */
    put32(dst + o_j1 + 1, (int32_t)(plan->resume - (at + o_j1 + 5)));    /* e9 rel32 */
    put32(dst + o_j2 + 1, (int32_t)(plan->resume - (at + o_j2 + 5)));    /* e9 rel32 */
    put64(dst + r + (uint64_t)(kbox_rw_tmpl_fast - kbox_rw_tmpl_start) + 2,
          (uint64_t)(uintptr_t)kbox_rw_fast);                             /* 49 bb imm64 */
    put64(dst + r + (uint64_t)(kbox_rw_tmpl_resume - kbox_rw_tmpl_start) + 2,
          plan->resume);                                                  /* 48 b9 imm64 */
    put64(dst + r + (uint64_t)(kbox_rw_tmpl_gate - kbox_rw_tmpl_start) + 2,
          (uint64_t)(uintptr_t)kbox_rw_gate);                             /* 48 b9 imm64 */
    put32(dst + r + (uint64_t)(kbox_rw_tmpl_fd0 - kbox_rw_tmpl_start) + 3, -rw_own_fd[0]); /* 67 8d 8f disp32 */
    put32(dst + r + (uint64_t)(kbox_rw_tmpl_fd1 - kbox_rw_tmpl_start) + 3, -rw_own_fd[1]); /* 67 8d 8f disp32 */
}

/* True if the instruction reads or writes rcx or r11, which the two-step patch's
 * placeholder `syscall` clobbers before the instruction is restarted. */
static bool touches_rcx_r11(const uint8_t *c, int len)
{
    int i = 0;
    uint8_t rex = 0;
    while (i < len && (c[i] == 0x66 || c[i] == 0x67 || c[i] == 0x64 || c[i] == 0x65))
        i++;
    if (i < len && (c[i] & 0xf0) == 0x40)
        rex = c[i++];
    if (i >= len)
        return true;
    uint8_t op = c[i++];
    if (op >= 0xb8 && op <= 0xbf) {
        int r = (op & 7) | ((rex & 1) << 3);
        return r == 1 || r == 11;
    }
    if (op == 0x0f)
        i++;
    if (i >= len)
        return true;
    uint8_t modrm = c[i++];
    int reg = ((modrm >> 3) & 7) | ((rex & 4) << 1), rm = (modrm & 7) | ((rex & 1) << 3);
    if (reg == 1 || reg == 11)
        return true;
    if ((modrm >> 6) != 3 && (modrm & 7) == 4 && i < len) {
        uint8_t sib = c[i];
        int base = (sib & 7) | ((rex & 1) << 3), index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        return base == 1 || base == 11 || index == 1 || index == 11;
    }
    return rm == 1 || rm == 11;
}

/* An atomic window holding [at, at+n): naturally aligned 8 bytes (a plain store), else
 * aligned 16 (lock cmpxchg16b), else 8 unaligned bytes inside one 64-byte cache line (lock
 * cmpxchg: a locked access is atomic at any alignment, and one that stays inside a line
 * needs no bus lock).  AMD guarantees plain stores atomic only inside an aligned quadword,
 * so unaligned windows always take the locked path (kbox_arch_rw_store). */
static int window(uint64_t at, uint32_t n, struct kbox_rw_step *st)
{
    if ((at & 7) + n <= 8)
        st->win = at & ~7ULL, st->len = 8;
    else if ((at & 15) + n <= 16)
        st->win = at & ~15ULL, st->len = 16;
    else if ((at & 63) + n <= 64)
        st->win = (at & 63) + 8 <= 64 ? at : (at & ~63ULL) + 56, st->len = 8;
    else
        return -1;
    return kbox_mem_read_self(st->win, st->bytes, st->len) == (long)st->len ? 0 : -1;
}

int kbox_arch_rw_patch(const struct kbox_rw_plan *plan, uint64_t tramp,
                       struct kbox_rw_step steps[3], bool *interim)
{
    uint64_t m = plan->patch_at;
    uint8_t jmp[5];
    *interim = false;
    if (plan->slot) {
        /* Short site: the long jump goes into the dead slot first (plain stores: nothing
         * executes there), then `jmp rel8` to it replaces the instruction atomically. */
        steps[0].win = plan->slot;
        steps[0].len = 5;
        steps[0].bytes[0] = 0xe9;
        put32(steps[0].bytes + 1, (int32_t)(tramp - (plan->slot + 5)));
        if (window(m, 2, &steps[1]) < 0)
            return -1;
        steps[1].bytes[m - steps[1].win] = 0xeb;
        steps[1].bytes[m - steps[1].win + 1] = (uint8_t)(int8_t)(int64_t)(plan->slot - (m + 2));
        /* The window was read before the slot is written: carry the slot's bytes it holds. */
        for (uint64_t a = plan->slot; a < plan->slot + 5; a++)
            if (a >= steps[1].win && a < steps[1].win + steps[1].len)
                steps[1].bytes[a - steps[1].win] = steps[0].bytes[a - plan->slot];
        return 2;
    }
    jmp[0] = 0xe9;                                       /* jmp rel32 -> trampoline */
    put32(jmp + 1, (int32_t)(tramp - (m + 5)));
    if (window(m, 5, &steps[0]) == 0) {
        memcpy(steps[0].bytes + (m - steps[0].win), jmp, 5);
        return 1;
    }
    /* The 5 bytes cross a 64-byte cache line.  Two steps, each atomic:
     *  1. the first 2 bytes become `syscall`: a thread reaching the instruction now traps,
     *     and the handler restarts it at m once the patch is complete (kbox_rewrite_interim);
     *  2. bytes 2..4 get the tail of rel32 (nobody can execute them now) — the 16-byte
     *     window that holds them is stored whole;
     *  3. the first 2 bytes become `e9 rel32[0]`.
     * The restarted instruction must not depend on rcx/r11, which the placeholder clobbers. */
    if (touches_rcx_r11(plan->reloc, (int)plan->reloc_len) || window(m, 2, &steps[0]) < 0)
        return -1;
    uint64_t w = steps[0].win;
    steps[2] = steps[0];
    steps[0].bytes[m - w] = 0x0f;                        /* placeholder: syscall (traps) */
    steps[0].bytes[m - w + 1] = 0x05;
    /* Step 2: the tail, plain stores (len 3: not one of the atomic sizes). */
    steps[1].win = m + 2;
    steps[1].len = 3;
    memcpy(steps[1].bytes, jmp + 2, 3);
    /* Step 3: the head, atomically, carrying whatever of the tail shares its window. */
    for (uint64_t a2 = m; a2 < m + 5; a2++)
        if (a2 >= w && a2 < w + steps[2].len)
            steps[2].bytes[a2 - w] = jmp[a2 - m];
    *interim = true;
    return 3;
}

uint64_t kbox_arch_rw_interim_resume(uint64_t patch_at) { return patch_at + 2; }

void kbox_arch_rw_store(uint64_t win, const uint8_t *bytes, uint32_t len)
{
    if (len != 8 && len != 16) {
        /* Bytes no thread can execute at this point (two-step patch tail). */
        for (uint32_t i = 0; i < len; i++)
            ((volatile uint8_t *)(uintptr_t)win)[i] = bytes[i];
        return;
    }
    if (len == 8 && !(win & 7)) {
        uint64_t v;
        memcpy(&v, bytes, 8);
        __atomic_store_n((uint64_t *)(uintptr_t)win, v, __ATOMIC_SEQ_CST);
        return;
    }
    if (len == 8) {
        /* Unaligned inside a cache line: lock cmpxchg until it takes. */
        uint64_t v;
        memcpy(&v, bytes, 8);
        volatile uint64_t *q = (volatile uint64_t *)(uintptr_t)win;
        for (;;) {
            uint64_t old;
            memcpy(&old, (const void *)(uintptr_t)win, 8);
            uint8_t ok;
            __asm__ volatile("lock cmpxchg %3, %1; sete %0"
                             : "=q"(ok), "+m"(*q), "+a"(old)
                             : "r"(v)
                             : "memory", "cc");
            if (ok)
                return;
        }
    }
    /* 16 bytes: lock cmpxchg16b until it takes (the expected value is re-read each time). */
    uint64_t nlo, nhi;
    memcpy(&nlo, bytes, 8);
    memcpy(&nhi, bytes + 8, 8);
    volatile uint64_t *q = (volatile uint64_t *)(uintptr_t)win;
    for (;;) {
        uint64_t olo = q[0], ohi = q[1];
        uint8_t ok;
        __asm__ volatile("lock cmpxchg16b %1; sete %0"
                         : "=q"(ok), "+m"(*(volatile uint64_t(*)[2])q), "+a"(olo), "+d"(ohi)
                         : "b"(nlo), "c"(nhi)
                         : "memory", "cc");
        if (ok)
            return;
    }
}

int kbox_arch_rw_nr(const struct kbox_rw_frame *f) { return (int)f->rax; }

uint64_t kbox_arch_rw_arg(const struct kbox_rw_frame *f, int i)
{
    switch (i) {
    case 0: return f->rdi;
    case 1: return f->rsi;
    case 2: return f->rdx;
    case 3: return f->r10;
    case 4: return f->r8;
    default: return f->r9;
    }
}

void kbox_arch_rw_set_result(struct kbox_rw_frame *f, uint64_t resume, int64_t ret)
{
    /* What `syscall` leaves: the result in rax, the return address in rcx, rflags in r11. */
    f->rax = (uint64_t)ret;
    f->rcx = resume;
    f->r11 = f->flags;
}

void kbox_arch_rw_set_trap(struct kbox_rw_frame *f) { f->decision = 1; }
void kbox_arch_rw_set_nr(struct kbox_rw_frame *f, int nr) { f->rax = (uint64_t)(uint32_t)nr; }
