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

/* ---- finding the function that contains the site ---------------------------------------- */

/* The start of the mapping at file offset 0 of the file mapped at `addr` (where its ELF
 * header is), and that file's path; 0 for anonymous code (no unwind tables to read). */
static uint64_t object_base(uint64_t addr, char *path_out, size_t path_cap)
{
    struct kbox_map m;
    if (kbox_maps_find(addr, &m) < 0 || m.path[0] != '/' || kbox_strlen(m.path) >= path_cap)
        return 0;
    memcpy(path_out, m.path, kbox_strlen(m.path) + 1);
    return kbox_maps_file_start(m.path);
}

static int64_t read_enc(uint64_t *p, uint8_t enc, uint64_t datarel)
{
    /* The encodings .eh_frame_hdr uses in practice: sdata4 / udata4, absolute or datarel. */
    int32_t v;
    if ((enc & 0x0f) != 0x0b && (enc & 0x0f) != 0x03)
        return INT64_MIN;
    if (kbox_mem_read_self(*p, &v, 4) != 4)
        return INT64_MIN;
    int64_t val = (enc & 0x0f) == 0x0b ? (int64_t)v : (int64_t)(uint32_t)v;
    uint64_t at = *p;
    *p += 4;
    switch (enc & 0x70) {
    case 0x00: return val;
    case 0x10: return (int64_t)(at + (uint64_t)val);      /* pcrel */
    case 0x30: return (int64_t)(datarel + (uint64_t)val); /* datarel */
    default: return INT64_MIN;
    }
}

static uint64_t uleb(const uint8_t **p, const uint8_t *end)
{
    uint64_t v = 0;
    int shift = 0;
    while (*p < end) {
        uint8_t b = *(*p)++;
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80))
            break;
    }
    return v;
}

/* An object file's section headers, read from its path (static executables keep what the
 * rewriter needs there: .eh_frame's address, the symbol table).  Returns the open file
 * (the caller closes it), or -1. */
struct sections {
    Elf64_Ehdr eh;
    Elf64_Shdr sh[128];
    char names[4096];
};

static long read_sections(const char *path, struct sections *S)
{
    if (!path[0])
        return -1;
    long fd = kbox_openat(AT_FDCWD, path, 0, 0);
    if (fd < 0)
        return -1;
    Elf64_Ehdr *eh = &S->eh;
    int ok = kbox_pread((int)fd, eh, sizeof(*eh), 0) == sizeof(*eh) && eh->e_shnum <= 128 &&
             eh->e_shentsize == sizeof(Elf64_Shdr) && eh->e_shstrndx < eh->e_shnum &&
             kbox_pread((int)fd, S->sh, eh->e_shnum * sizeof(Elf64_Shdr), (long)eh->e_shoff) ==
                 (long)(eh->e_shnum * sizeof(Elf64_Shdr));
    long nn = ok ? kbox_pread((int)fd, S->names, sizeof(S->names) - 1, (long)S->sh[eh->e_shstrndx].sh_offset) : -1;
    if (nn <= 0) {
        kbox_close((int)fd);
        return -1;
    }
    S->names[nn] = 0;
    for (int i = 0; i < eh->e_shnum; i++)
        if (S->sh[i].sh_name >= (uint32_t)nn)
            S->sh[i].sh_name = (uint32_t)nn; /* an empty name */
    return fd;
}

/* Objects without .eh_frame_hdr (static executables: gcc passes --eh-frame-hdr only when
 * linking dynamically): find .eh_frame through the file's section headers and scan its
 * FDEs (DWARF CFI: CIE augmentation "zR..." gives the FDE pointer encoding). */
static int eh_frame_scan(const char *path, uint64_t bias, uint64_t site, uint64_t *start, uint64_t *end)
{
    struct sections S;
    Elf64_Shdr *ehf = NULL;
    long fd = read_sections(path, &S);
    if (fd < 0)
        return -1;
    kbox_close((int)fd);
    for (int i = 0; i < S.eh.e_shnum; i++)
        if (kbox_strcmp(S.names + S.sh[i].sh_name, ".eh_frame") == 0)
            ehf = &S.sh[i];
    if (!ehf || !ehf->sh_addr || ehf->sh_size > (64u << 20))
        return -1;
    uint64_t sec = bias + ehf->sh_addr;
    size_t size = (size_t)ehf->sh_size;
    long m = kbox_mmap(NULL, size, 0x3, 0x22, -1, 0);
    if (kbox_is_err(m))
        return -1;
    const uint8_t *buf = (const uint8_t *)m, *p = buf, *lim = buf + size;
    int rc = -1;
    uint8_t cie_enc[8] = { 0 };
    uint64_t cie_off[8] = { 0 };
    int ncie = 0;
    uint64_t best = 0, best_end = 0;
    if (kbox_mem_read_self(sec, (void *)buf, size) != (long)size)
        goto out;
    while (p + 8 <= lim) {
        uint32_t len;
        memcpy(&len, p, 4);
        if (len == 0 || len == 0xffffffffu || p + 4 + len > lim)
            break;
        const uint8_t *rec = p + 4, *rend = p + 4 + len;
        uint32_t id;
        memcpy(&id, rec, 4);
        if (id == 0) { /* CIE: remember its pointer encoding */
            const uint8_t *q = rec + 5;
            const char *aug = (const char *)q;
            while (q < rend && *q)
                q++;
            q++;
            uleb(&q, rend);            /* code alignment */
            uleb(&q, rend);            /* data alignment (sleb; only skipped) */
            if (rec[4] == 1) q++; else uleb(&q, rend); /* return address register */
            uint8_t enc = 0;
            if (aug[0] == 'z') {
                uleb(&q, rend);
                for (const char *a = aug + 1; *a && q < rend; a++) {
                    if (*a == 'R') enc = *q++;
                    else if (*a == 'L') q++;
                    else if (*a == 'P') { uint8_t pe = *q++; q += (pe & 0x0f) == 0x0b || (pe & 0x0f) == 0x03 ? 4 : 8; }
                    else if (*a != 'S' && *a != 'B') break;
                }
            }
            if (ncie < 8) {
                cie_off[ncie] = (uint64_t)(p - buf);
                cie_enc[ncie++] = enc;
            }
        } else { /* FDE: pc_begin (encoded), pc_range */
            uint64_t cie = (uint64_t)(rec - buf) - id;
            uint8_t enc = 0x1b;
            for (int i = 0; i < ncie; i++)
                if (cie_off[i] == cie)
                    enc = cie_enc[i];
            if ((enc & 0x0f) == 0x0b && (enc & 0x70) == 0x10 && rec + 12 <= rend) {
                int32_t rel, range;
                memcpy(&rel, rec + 4, 4);
                memcpy(&range, rec + 8, 4);
                uint64_t lo = sec + (uint64_t)(rec + 4 - buf) + (uint64_t)(int64_t)rel;
                if (site >= lo && site < lo + (uint32_t)range) {
                    best = lo;
                    best_end = lo + (uint32_t)range;
                    break;
                }
            }
        }
        p = rend;
    }
    if (best) {
        *start = best;
        *end = best_end;
        rc = 0;
    }
out:
    kbox_munmap((void *)buf, size);
    return rc;
}

/* Code without unwind information (musl's libc is built without it): the function symbol
 * that contains the site, from the file's symbol table.  *end is where the next function
 * symbol starts; *fn_end where a sized symbol ends (the function proper), 0 for an assembly
 * symbol without a size (musl's __syscall_cp_asm). */
static int symtab_scan(const char *path, uint64_t bias, uint64_t site, uint64_t *start, uint64_t *end,
                       uint64_t *fn_end)
{
    struct sections S;
    long fd = read_sections(path, &S);
    if (fd < 0)
        return -1;
    const Elf64_Shdr *st = NULL;
    for (int i = 0; i < S.eh.e_shnum; i++)
        if (S.sh[i].sh_type == SHT_SYMTAB && S.sh[i].sh_entsize == sizeof(Elf64_Sym))
            st = &S.sh[i];
    uint64_t best = 0, best_size = 0, next = ~0ULL;
    uint64_t n = st ? st->sh_size / sizeof(Elf64_Sym) : 0;
    Elf64_Sym chunk[128];
    for (uint64_t i = 0; i < n && i < (1u << 22); i += 128) {
        uint64_t k = n - i < 128 ? n - i : 128;
        if (kbox_pread((int)fd, chunk, k * sizeof(Elf64_Sym), (long)(st->sh_offset + i * sizeof(Elf64_Sym))) !=
            (long)(k * sizeof(Elf64_Sym)))
            break;
        for (uint64_t j = 0; j < k; j++) {
            const Elf64_Sym *y = &chunk[j];
            if (ELF64_ST_TYPE(y->st_info) != STT_FUNC || y->st_shndx == SHN_UNDEF || !y->st_value)
                continue;
            uint64_t lo = bias + y->st_value;
            if (lo <= site) {
                if (lo > best) {
                    best = lo;
                    best_size = y->st_size;
                } else if (lo == best && y->st_size > best_size) {
                    best_size = y->st_size; /* aliases: the sized one */
                }
            } else if (lo < next) {
                next = lo;
            }
        }
    }
    kbox_close((int)fd);
    if (!best || (best_size && site >= best + best_size))
        return -1;
    *start = best;
    *fn_end = best_size ? best + best_size : 0;
    *end = next != ~0ULL ? next : *fn_end ? *fn_end : site + 2;
    return 0;
}

/* Where the function containing a site starts and ends, from the object's unwind tables. */
struct fn_bounds {
    uint64_t start;
    uint64_t end;           /* the next function's start (or just past the site) */
    uint64_t fde_end;       /* where its FDE says it ends; 0 if not known */
    uint64_t prev_start;    /* the function before it (.eh_frame_hdr only); 0 if not known */
    uint64_t prev_fde_end;
};

/* End of the function starting at `start` whose FDE is at `fde`, read with the encoding glibc
 * and gcc use (pc_begin pcrel sdata4, checked against `start`); 0 if it does not match. */
static uint64_t fde_end_of(uint64_t fde, uint64_t start)
{
    int32_t f[4]; /* length, CIE pointer, pc_begin, pc_range */
    if (kbox_mem_read_self(fde, f, sizeof(f)) == sizeof(f) && f[1] != 0 &&
        fde + 8 + (uint64_t)(int64_t)f[2] == start && f[3] > 0)
        return start + (uint64_t)(uint32_t)f[3];
    return 0;
}

static int function_bounds(uint64_t site, struct fn_bounds *b)
{
    uint64_t *start = &b->start, *end = &b->end, *fde_end = &b->fde_end;
    b->prev_start = b->prev_fde_end = 0;
    char path[512];
    path[0] = 0;
    uint64_t base = object_base(site, path, sizeof(path));
    if (!base)
        return -1;
    Elf64_Ehdr eh;
    if (kbox_mem_read_self(base, &eh, sizeof(eh)) != sizeof(eh) || memcmp(eh.e_ident, ELFMAG, 4) != 0 ||
        eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 64)
        return -1;
    Elf64_Phdr ph[64];
    if (kbox_mem_read_self(base + eh.e_phoff, ph, eh.e_phnum * sizeof(Elf64_Phdr)) != (long)(eh.e_phnum * sizeof(Elf64_Phdr)))
        return -1;
    uint64_t first_vaddr = ~0ULL, hdr_vaddr = 0;
    for (int i = 0; i < eh.e_phnum; i++) {
        if (ph[i].p_type == PT_LOAD && ph[i].p_vaddr < first_vaddr)
            first_vaddr = ph[i].p_vaddr;
        if (ph[i].p_type == PT_GNU_EH_FRAME)
            hdr_vaddr = ph[i].p_vaddr;
    }
    if (first_vaddr == ~0ULL)
        return -1;
    uint64_t bias = base - (first_vaddr & ~4095ULL);
    if (!hdr_vaddr) {
        *fde_end = 0;
        if (eh_frame_scan(path, bias, site, start, end) == 0) {
            *fde_end = *end; /* the scan reports the FDE's own end */
            return 0;
        }
        return symtab_scan(path, bias, site, start, end, fde_end);
    }
    uint64_t hdr = bias + hdr_vaddr;
    uint8_t h[4];
    if (kbox_mem_read_self(hdr, h, 4) != 4 || h[0] != 1)
        return -1;
    uint64_t p = hdr + 4;
    if (read_enc(&p, h[1], hdr) == INT64_MIN)
        return -1;
    int64_t count = read_enc(&p, h[2], hdr);
    if (count <= 0 || h[3] != 0x3b) /* table: datarel sdata4 */
        return -1;
    /* Binary search over (initial_location, fde) pairs, 8 bytes each. */
    int64_t lo = 0, hi = count - 1, best = -1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        int32_t loc;
        if (kbox_mem_read_self(p + (uint64_t)mid * 8, &loc, 4) != 4)
            return -1;
        if (hdr + (uint64_t)(int64_t)loc <= site) {
            best = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    if (best < 0)
        return -1;
    int32_t ent[2]; /* initial location, FDE address: both relative to the header */
    if (kbox_mem_read_self(p + (uint64_t)best * 8, ent, 8) != 8)
        return -1;
    *start = hdr + (uint64_t)(int64_t)ent[0];
    *end = site + 2;
    if (best + 1 < count) {
        int32_t next;
        if (kbox_mem_read_self(p + (uint64_t)(best + 1) * 8, &next, 4) == 4)
            *end = hdr + (uint64_t)(int64_t)next;
    }
    /* The function proper ends where its FDE says; what lies between that (rounded up to the
     * 16-byte alignment of the next function) and the next FDE could be code without unwind
     * information, so it is not treated as part of this function. */
    *fde_end = fde_end_of(hdr + (uint64_t)(int64_t)ent[1], *start);
    int32_t pent[2];
    if (best > 0 && kbox_mem_read_self(p + (uint64_t)(best - 1) * 8, pent, 8) == 8) {
        b->prev_start = hdr + (uint64_t)(int64_t)pent[0];
        b->prev_fde_end = fde_end_of(hdr + (uint64_t)(int64_t)pent[1], b->prev_start);
    }
    return site < *end && site - *start < (1u << 20) ? 0 : -1;
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
    if (function_bounds(site, &b) < 0)
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
