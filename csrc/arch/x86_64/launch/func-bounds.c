/* Finding the function that contains a syscall site, for the x86_64 rewriter: the object's
 * .eh_frame_hdr binary-search table (what unwinders use), else its ELF symbol table read
 * from the file.  Everything is read through non-faulting accessors: the program's memory
 * and files are untrusted input. */
#include "arch.h"
#include "launch/func-bounds.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/self.h"
#include <linux/fcntl.h>
#include <linux/elf.h>

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

int kbox_x86_function_bounds(uint64_t site, struct fn_bounds *b)
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
