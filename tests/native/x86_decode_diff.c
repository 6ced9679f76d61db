/* Differential test of kbox_x86_insn_len() against capstone (CS_MODE_64).
 *
 * Built by tests/test_x86_decode.py with the decoder source compiled in:
 *   gcc -O2 tests/native/x86_decode_diff.c csrc/arch/x86_64/decode.c -Icsrc \
 *       -Icsrc/arch/x86_64 -lcapstone
 *
 *   x86_decode_diff random COUNT SEED
 *       COUNT sequences of 15 bytes (deterministic for a seed), biased toward prefixes, REX,
 *       VEX/EVEX/XOP and the 0f maps; every sequence capstone decodes is compared.
 *   x86_decode_diff sweep NAME FILE OFFSET SIZE [OFFSET SIZE ...]
 *       linear sweep of those file ranges (executable sections); where capstone fails, the
 *       sweep advances one byte.
 *
 * Output: `key=value` lines (tried, decoded, compared, agree, disagree, rejected_by_us,
 * and one `known_<class>=N` per documented capstone-vs-SDM class, see docs/x86-decoder.md),
 * then `DIS <hex> cs=<len> <mnemonic> <ops> ours=<len>` for the first disagreements.
 * Exit status 0 unless the program itself failed; the caller asserts on the counts.
 */
#include <capstone/capstone.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "decode.h"

#define MAX_SHOWN 25

/* Classes where capstone departs from the Intel SDM, which the decoder follows.  Each one is
 * recognised by its exact byte pattern AND the exact length delta, so anything else still
 * counts as a disagreement. */
enum known {
    K_BRANCH_REL16,   /* 66/67 + E8/E9/0F 8x: SDM rel32 (prefix ignored), capstone rel16 */
    K_UD_MODRM,       /* UD1 0F B9 /r, UD0 0F FF /r: SDM has a ModRM, capstone does not */
    K_RET_IMM16,      /* REX.W C2 iw: always imm16 (SDM), capstone reads imm32 */
    /* capstone 4.0 only (and K_SSE4A): */
    K_REP_CANCELS_66, /* 66 + F2/F3 on an Iz opcode: capstone 4 drops the 66 (imm32) */
    K_EVEX_ADDR32,    /* 67 + EVEX memory operand: capstone 4 drops the SIB or the disp32 of
                       * mod=0 rm=5 (shows [r12]/[r13]) */
    K_EVEX_REG_EXTRA, /* EVEX with a register ModRM and no imm8: capstone 4 reads one more byte */
    K_SSE4A,          /* 0F 78 mod=3, VMREAD vs EXTRQ/INSERTQ (imm8, imm8): capstone 4 picks by
                       * prefix adjacency and takes 67 for 66; capstone 5 (rarely) lets a 66
                       * nearer the opcode beat F3 */
    K_VEX_PREFIXED,   /* 66/F2/F3/F0/REX before C4/C5/62/XOP: SDM #UD, capstone decodes */
    K_COUNT,
};
static const char *const known_names[K_COUNT] = {
    [K_BRANCH_REL16] = "branch_rel16",   [K_UD_MODRM] = "ud_modrm",
    [K_RET_IMM16] = "ret_imm16",         [K_VEX_PREFIXED] = "vex_prefixed",
    [K_REP_CANCELS_66] = "rep_cancels_66", [K_EVEX_ADDR32] = "evex_addr32",
    [K_EVEX_REG_EXTRA] = "evex_reg_extra", [K_SSE4A] = "sse4a",
};

struct stats {
    uint64_t tried, decoded, compared, agree, disagree, rejected_by_us;
    uint64_t known[K_COUNT];
    int shown;
};

/* Index of the opcode byte after legacy prefixes and REX, and which prefixes were seen. */
struct pfx {
    bool has66, has67, rexw, simd_or_rex, rep, lock;
};

static size_t skip_prefixes(const uint8_t *b, size_t n, struct pfx *f)
{
    size_t i = 0;
    memset(f, 0, sizeof *f);
    for (; i < n; i++) {
        uint8_t c = b[i];
        bool rex = (c & 0xf0) == 0x40;
        if (!rex && !(c == 0x66 || c == 0x67 || c == 0xf2 || c == 0xf3 || c == 0xf0 ||
                      c == 0x26 || c == 0x2e || c == 0x36 || c == 0x3e || c == 0x64 ||
                      c == 0x65))
            break;
        f->rexw = (c & 0xf8) == 0x48;   /* only a REX right before the opcode counts */
        if (c == 0x66)
            f->has66 = true;
        if (c == 0x67)
            f->has67 = true;
        if (c == 0xf2 || c == 0xf3)
            f->rep = true;
        if (c == 0xf0)
            f->lock = true;
        if (c != 0x67 && (rex || c == 0x66 || c == 0xf2 || c == 0xf3 || c == 0xf0))
            f->simd_or_rex = true;
    }
    return i;
}

static int classify(const uint8_t *b, size_t n, int cs_len, int ours)
{
    struct pfx f;
    size_t i = skip_prefixes(b, n, &f);
    if (i + 1 >= n)
        return -1;
    uint8_t op = b[i], op2 = b[i + 1];
    if ((f.has66 || f.has67) && ours == cs_len + 2 &&
        (op == 0xe8 || op == 0xe9 || (op == 0x0f && (op2 & 0xf0) == 0x80)))
        return K_BRANCH_REL16;
    if (op == 0x0f && (op2 == 0xff || op2 == 0xb9) && cs_len == (int)i + 2 && ours > cs_len)
        return K_UD_MODRM;
    if (op == 0xc2 && f.rexw && cs_len == ours + 2)
        return K_RET_IMM16;
    if (op != 0x0f && f.has66 && f.rep && cs_len == ours + 2)
        return K_REP_CANCELS_66;
    if (op == 0x62 && i + 5 < n) {
        uint8_t p2 = b[i + 3], modrm = b[i + 5];
        if (f.has67 && (modrm >> 6) != 3 && cs_len < ours)
            return K_EVEX_ADDR32;
        (void)p2;
        if ((modrm >> 6) == 3 && cs_len == ours + 1)
            return K_EVEX_REG_EXTRA;
    }
    if (op == 0x0f && op2 == 0x78 && i + 2 < n && (b[i + 2] >> 6) == 3 &&
        (cs_len == ours - 2 || cs_len == ours + 2))
        return K_SSE4A;
    if (ours == -1 && f.simd_or_rex &&
        (op == 0xc4 || op == 0xc5 || op == 0x62 || (op == 0x8f && (op2 & 0x1f) >= 8)))
        return K_VEX_PREFIXED;
    return -1;
}

static void compare(struct stats *st, const uint8_t *b, size_t avail, const cs_insn *insn)
{
    int ours = kbox_x86_insn_len(b, avail);
    int cs_len = insn->size;
    st->compared++;
    if (ours == cs_len) {
        st->agree++;
        return;
    }
    int k = classify(b, avail, cs_len, ours);
    if (k >= 0) {
        st->known[k]++;
        return;
    }
    st->disagree++;
    if (ours < 0)
        st->rejected_by_us++;
    if (st->shown++ < MAX_SHOWN) {
        printf("DIS ");
        for (size_t j = 0; j < avail && j < 15; j++)
            printf("%02x", b[j]);
        printf(" cs=%d %s %s ours=%d\n", cs_len, insn->mnemonic, insn->op_str, ours);
    }
}

static void report(const char *name, const struct stats *st)
{
    printf("name=%s\ntried=%llu\ndecoded=%llu\ncompared=%llu\nagree=%llu\ndisagree=%llu\n"
           "rejected_by_us=%llu\n",
           name, (unsigned long long)st->tried, (unsigned long long)st->decoded,
           (unsigned long long)st->compared, (unsigned long long)st->agree,
           (unsigned long long)st->disagree, (unsigned long long)st->rejected_by_us);
    for (int k = 0; k < K_COUNT; k++)
        printf("known_%s=%llu\n", known_names[k], (unsigned long long)st->known[k]);
}

/* xorshift64*: fast and deterministic for a seed. */
static uint64_t rng_state;
static inline uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static const uint8_t legacy[] = {0x66, 0x67, 0xf2, 0xf3, 0xf0, 0x2e, 0x3e, 0x26, 0x36, 0x64, 0x65};

/* Fills 15 bytes: random bytes, then a structured start chosen so that every decoding path
 * (prefix runs, REX, each opcode map, VEX2/VEX3/EVEX/XOP headers, 3DNow) is hit often. */
static void generate(uint8_t b[15])
{
    uint64_t r = rnd(), r2 = rnd();
    memcpy(b, &r, 8);
    memcpy(b + 8, &r2, 7);
    uint64_t c = rnd();
    size_t i = 0;
    unsigned kind = c % 100;
    c /= 100;
    if (kind < 15)
        return;   /* fully random */
    /* 0-3 legacy prefixes (more likely none/one) and an optional REX */
    unsigned np = (c % 8) < 4 ? 0 : (c % 8) < 6 ? 1 : (c % 8) < 7 ? 2 : 3;
    c /= 8;
    bool vexlike = kind >= 60 && kind < 92;
    if (vexlike && (c % 8) != 0)   /* mostly legal VEX/EVEX/XOP: no prefixes */
        np = 0;
    c /= 8;
    for (unsigned k = 0; k < np; k++, c /= 16)
        b[i++] = legacy[(c % 16) % sizeof legacy];
    if (c % 3 == 0 && !(vexlike && (c % 8) != 0))
        b[i++] = 0x40 | (rnd() & 0xf);
    c = rnd();
    if (kind < 35) {
        /* one-byte map: leave the random opcode */
    } else if (kind < 50) {
        b[i++] = 0x0f;
    } else if (kind < 58) {
        b[i++] = 0x0f;
        b[i++] = (c & 1) ? 0x38 : 0x3a;
    } else if (kind < 60) {
        b[i++] = 0x0f;
        b[i++] = 0x0f;
    } else if (kind < 68) {
        b[i++] = 0xc5;
    } else if (kind < 78) {
        b[i++] = 0xc4;
        b[i] = (b[i] & 0xe0) | (uint8_t)(1 + (c % 3));
        i++;
    } else if (kind < 88) {
        b[i++] = 0x62;
        static const uint8_t maps[] = {1, 2, 3, 5, 6, 1, 2, 3};
        b[i] = (b[i] & 0xf0) | maps[c % 8];
        b[i + 1] |= 0x04;
        i += 3;
    } else if (kind < 92) {
        b[i++] = 0x8f;
        b[i] = (b[i] & 0xe0) | (uint8_t)(8 + (c % 3));
        i++;
    } else {
        /* opcodes whose immediates depend on prefixes or ModRM.reg */
        static const uint8_t ops[] = {0xa0, 0xa1, 0xa2, 0xa3, 0xb8, 0xbf, 0xc8, 0xf6, 0xf7,
                                      0xc7, 0xc6, 0xe8, 0xe9, 0x68, 0x69, 0x81, 0xc2, 0xe3};
        b[i++] = ops[c % sizeof ops];
    }
    (void)i;
}

static int run_random(uint64_t count, uint64_t seed, csh h, cs_insn *insn)
{
    struct stats st = {0};
    rng_state = seed ? seed : 1;
    uint8_t b[15];
    for (uint64_t n = 0; n < count; n++) {
        generate(b);
        st.tried++;
        const uint8_t *p = b;
        size_t sz = sizeof b;
        uint64_t addr = 0x100000;
        if (!cs_disasm_iter(h, &p, &sz, &addr, insn))
            continue;
        st.decoded++;
        compare(&st, b, sizeof b, insn);
    }
    report("random", &st);
    return 0;
}

static int run_sweep(const char *name, const char *path, int nranges, char **ranges, csh h,
                     cs_insn *insn)
{
    int fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        perror(path);
        return 2;
    }
    const uint8_t *file = mmap(NULL, sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    struct stats st = {0};
    /* Syscall sites: capstone's sweep (instructions exactly 0f 05) vs our own walk
     * (kbox_x86_find_syscalls over the same range); the two lists must be identical. */
    uint64_t cs_sites = 0, our_sites = 0, site_mismatch = 0, raw_pairs = 0;
    for (int r = 0; r + 1 < nranges; r += 2) {
        uint64_t off = strtoull(ranges[r], NULL, 0), size = strtoull(ranges[r + 1], NULL, 0);
        if (off + size > (uint64_t)sb.st_size) {
            fprintf(stderr, "%s: range %s+%s beyond end of file\n", path, ranges[r],
                    ranges[r + 1]);
            return 2;
        }
        const uint8_t *base = file + off, *p = base;
        size_t left = size;
        uint64_t addr = off;
        int nsites = kbox_x86_find_syscalls(base, size, off, NULL, 0);
        uint64_t *sites = calloc(nsites > 0 ? nsites : 1, sizeof *sites);
        if (nsites < 0 || !sites || kbox_x86_find_syscalls(base, size, off, sites, nsites) != nsites) {
            fprintf(stderr, "kbox_x86_find_syscalls failed\n");
            return 2;
        }
        our_sites += (uint64_t)nsites;
        for (uint64_t j = 0; j + 1 < size; j++)
            raw_pairs += base[j] == 0x0f && base[j + 1] == 0x05;
        int next_site = 0;
        while (left) {
            const uint8_t *at = p;
            size_t avail = left;
            st.tried++;
            if (!cs_disasm_iter(h, &p, &left, &addr, insn)) {
                p = at + 1, left = avail - 1, addr = off + (uint64_t)(p - base);
                continue;
            }
            st.decoded++;
            compare(&st, at, avail < 15 ? avail : 15, insn);
            if (insn->size == 2 && at[0] == 0x0f && at[1] == 0x05) {
                uint64_t where = off + (uint64_t)(at - base);
                cs_sites++;
                while (next_site < nsites && sites[next_site] < where)
                    next_site++, site_mismatch++;   /* we report a site capstone does not */
                if (next_site < nsites && sites[next_site] == where)
                    next_site++;
                else if (site_mismatch++ < MAX_SHOWN)
                    printf("SITE missed by us at file offset 0x%llx\n", (unsigned long long)where);
            }
        }
        site_mismatch += (uint64_t)(nsites - next_site);
        free(sites);
    }
    report(name, &st);
    printf("cs_syscall_sites=%llu\nour_syscall_sites=%llu\nsyscall_site_mismatch=%llu\n"
           "raw_0f05_pairs=%llu\n",
           (unsigned long long)cs_sites, (unsigned long long)our_sites,
           (unsigned long long)site_mismatch, (unsigned long long)raw_pairs);
    return 0;
}

int main(int argc, char **argv)
{
    csh h;
    if (cs_open(CS_ARCH_X86, CS_MODE_64, &h) != CS_ERR_OK) {
        fprintf(stderr, "cs_open failed\n");
        return 2;
    }
    int major, minor;
    cs_version(&major, &minor);
    printf("capstone=%d.%d\n", major, minor);
    cs_insn *insn = cs_malloc(h);
    int rc = 2;
    if (argc == 4 && !strcmp(argv[1], "random"))
        rc = run_random(strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0), h, insn);
    else if (argc >= 6 && !strcmp(argv[1], "sweep"))
        rc = run_sweep(argv[2], argv[3], argc - 4, argv + 4, h, insn);
    else
        fprintf(stderr, "usage: %s random COUNT SEED | sweep NAME FILE OFF SIZE...\n", argv[0]);
    cs_free(insn, 1);
    cs_close(&h);
    return rc;
}
