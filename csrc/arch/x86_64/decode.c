/* x86-64 instruction-length decoder, 64-bit mode only.
 *
 * ABI/encoding facts this file relies on (Intel SDM Vol. 2A chapter 2):
 *   instruction = legacy prefixes* [REX] opcode [ModRM [SIB] [disp]] [imm], at most 15 bytes
 *   REX (40-4f) counts only when it immediately precedes the opcode; a legacy prefix after it
 *   cancels it.  REX.W beats 66 for operand size.  C4/C5 are always VEX and 62 always EVEX in
 *   64-bit mode (LES/LDS/BOUND do not exist there); 8f is XOP when the next byte's mmmmm >= 8.
 *   `syscall` is 0f 05 (2 bytes).
 * The length depends only on: the prefixes 66 (operand size) and 67 (address size), REX.W,
 * the opcode map and opcode, ModRM.mod/rm/reg (+ SIB.base), so that is all we track.
 */
#include <stdbool.h>
#include <linux/errno.h>

#include "lib/api.h"
#include "decode.h"

/* Per-opcode attributes: low nibble = immediate kind, then flags. */
enum {
    I_NONE = 0,
    I_B,       /* imm8 / rel8 */
    I_W,       /* imm16 (ret/retf imm16) */
    I_Z,       /* imm16 with 66 (and no REX.W), else imm32 */
    I_V,       /* imm64 with REX.W, imm16 with 66, else imm32 (B8+r only) */
    I_WB,      /* imm16 + imm8 (ENTER) */
    I_MOFFS,   /* moffs: 8 bytes, 4 with 67 (A0-A3) */
    I_G3B,     /* F6 group 3: imm8 only for /0 and /1 (TEST) */
    I_G3Z,     /* F7 group 3: Iz only for /0 and /1 (TEST) */
    I_J32,     /* near branch rel32; 66 ignored in 64-bit mode (Intel; see docs) */
    IMM_MASK = 0x0f,
    F_M = 0x10,      /* has ModRM */
    F_BAD = 0x20,    /* invalid (#UD) in 64-bit mode or undefined */
    F_SPEC = 0x40,   /* prefix or escape, handled in code */
};

#define __ I_NONE
#define B_ I_B
#define W_ I_W
#define Z_ I_Z
#define V_ I_V
#define M_ F_M
#define MB (F_M | I_B)
#define MZ (F_M | I_Z)
#define XX F_BAD
#define SP F_SPEC
#define MO I_MOFFS
#define J4 I_J32

/* One-byte opcode map, 64-bit mode: Intel SDM Vol. 2D, appendix A.3, Table A-2 (with the
 * "i64"/"o64" superscripts applied: 06 07 0e 16 17 1e 1f 27 2f 37 3f 60 61 82 9a ce d4 d5
 * ea are invalid; d6 (SALC) is undefined). */
static const uint8_t map1[256] = {
    /*        0   1   2   3   4   5   6   7     8   9   a   b   c   d   e   f */
    /* 0 */  M_, M_, M_, M_, B_, Z_, XX, XX,   M_, M_, M_, M_, B_, Z_, XX, SP,
    /* 1 */  M_, M_, M_, M_, B_, Z_, XX, XX,   M_, M_, M_, M_, B_, Z_, XX, XX,
    /* 2 */  M_, M_, M_, M_, B_, Z_, SP, XX,   M_, M_, M_, M_, B_, Z_, SP, XX,
    /* 3 */  M_, M_, M_, M_, B_, Z_, SP, XX,   M_, M_, M_, M_, B_, Z_, SP, XX,
    /* 4 */  SP, SP, SP, SP, SP, SP, SP, SP,   SP, SP, SP, SP, SP, SP, SP, SP,
    /* 5 */  __, __, __, __, __, __, __, __,   __, __, __, __, __, __, __, __,
    /* 6 */  XX, XX, SP, M_, SP, SP, SP, SP,   Z_, MZ, B_, MB, __, __, __, __,
    /* 7 */  B_, B_, B_, B_, B_, B_, B_, B_,   B_, B_, B_, B_, B_, B_, B_, B_,
    /* 8 */  MB, MZ, XX, MB, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, SP,
    /* 9 */  __, __, __, __, __, __, __, __,   __, __, XX, __, __, __, __, __,
    /* a */  MO, MO, MO, MO, __, __, __, __,   B_, Z_, __, __, __, __, __, __,
    /* b */  B_, B_, B_, B_, B_, B_, B_, B_,   V_, V_, V_, V_, V_, V_, V_, V_,
    /* c */  MB, MB, W_, __, SP, SP, MB, MZ, I_WB,__, W_, __, __, B_, XX, __,
    /* d */  M_, M_, M_, M_, XX, XX, XX, __,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* e */  B_, B_, B_, B_, B_, B_, B_, B_,   J4, J4, XX, B_, __, __, __, __,
    /* f */  SP, __, SP, SP, __, __, F_M | I_G3B, F_M | I_G3Z, __, __, __, __, __, __, M_, M_,
};

/* Two-byte opcode map (0f xx): Intel SDM Vol. 2D, appendix A.3, Table A-3.  0f 0f is AMD
 * 3DNow! (ModRM + an imm8 that selects the operation, AMD APM Vol. 3 appendix A.1); 0f 0d and
 * 0f 0e are AMD PREFETCH/FEMMS; 0f 78 (VMREAD / SSE4a EXTRQ, INSERTQ) is resolved in code;
 * 0f ff is UD0 with a ModRM (SDM, since 2017); 0f a6/a7 are the VIA PadLock instructions
 * (montmul, xsha*, xstore, xcrypt*), encoded as a register-form ModRM.  0f 38 and 0f 3a escape to the three-byte
 * maps (Tables ): every opcode there has a ModRM, and every 0f 3a opcode an imm8. */
static const uint8_t map2[256] = {
    /*        0   1   2   3   4   5   6   7     8   9   a   b   c   d   e   f */
    /* 0 */  M_, M_, M_, M_, XX, __, __, __,   __, __, XX, __, XX, M_, __, MB,
    /* 1 */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* 2 */  M_, M_, M_, M_, XX, XX, XX, XX,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* 3 */  __, __, __, __, __, __, XX, __,   SP, XX, SP, XX, XX, XX, XX, XX,
    /* 4 */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* 5 */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* 6 */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* 7 */  MB, MB, MB, MB, M_, M_, M_, __,   SP, M_, XX, XX, M_, M_, M_, M_,
    /* 8 */  J4, J4, J4, J4, J4, J4, J4, J4,   J4, J4, J4, J4, J4, J4, J4, J4,
    /* 9 */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* a */  __, __, __, M_, MB, M_, M_, M_,   __, __, __, M_, MB, M_, M_, M_,
    /* b */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, MB, M_, M_, M_, M_, M_,
    /* c */  M_, M_, MB, M_, MB, MB, MB, M_,   __, __, __, __, __, __, __, __,
    /* d */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* e */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
    /* f */  M_, M_, M_, M_, M_, M_, M_, M_,   M_, M_, M_, M_, M_, M_, M_, M_,
};

/* VEX/EVEX map 1 (0f) opcodes that take an imm8 (SDM Vol. 2D A.3 Table A-3, VEX forms):
 * 70-73 (vpshuf*, shift-by-imm groups), c2 (vcmpps), c4 (vpinsrw), c5 (vpextrw), c6
 * (vshufps).  One bit per opcode.  Maps 0f 38 never have one; 0f 3a always do. */
static const uint32_t vex_map1_imm8[8] = {
    [0x70 / 32] = 0xfu << (0x70 % 32),
    [0xc0 / 32] = (1u << (0xc2 % 32)) | (7u << (0xc4 % 32)),
};

#undef __
#undef B_
#undef W_
#undef Z_
#undef V_
#undef M_
#undef MB
#undef MZ
#undef XX
#undef SP
#undef MO
#undef J4

struct prefixes {
    bool opsize;     /* 66 */
    bool adsize;     /* 67 */
    bool rexw;       /* REX.W of a REX that immediately precedes the opcode */
    bool rex;        /* a REX immediately precedes the opcode */
    bool simd;       /* any of 66 f2 f3 f0: VEX/EVEX/XOP after them is #UD */
    uint8_t rep;     /* the last of f2/f3 seen (0 if none): selects SSE4a INSERTQ */
};

static int imm_size(unsigned kind, const struct prefixes *p, unsigned reg)
{
    switch (kind) {
    case I_B: return 1;
    case I_W: return 2;
    case I_Z: return p->opsize && !p->rexw ? 2 : 4;
    case I_V: return p->rexw ? 8 : p->opsize ? 2 : 4;
    case I_WB: return 3;
    case I_MOFFS: return p->adsize ? 4 : 8;
    case I_G3B: return reg < 2 ? 1 : 0;
    case I_G3Z: return reg < 2 ? (p->opsize && !p->rexw ? 2 : 4) : 0;
    case I_J32: return 4;
    default: return 0;
    }
}

/* Bytes of ModRM + SIB + displacement starting at code[i]; -1 if truncated.  With 64- or
 * 32-bit addressing (the only ones reachable in 64-bit mode) the forms are: mod=3 register;
 * rm=4 adds a SIB; mod=0 rm=5 is RIP-relative disp32; mod=0 with SIB.base=5 has a disp32;
 * mod=1 disp8; mod=2 disp32.  `force_reg`: MOV to/from CR/DR ignore mod (SDM: "the 2 bits
 * in the mod field are ignored"). */
static int modrm_size(const uint8_t *code, size_t i, size_t avail, bool force_reg,
                      unsigned *reg)
{
    if (i >= avail)
        return -1;
    uint8_t m = code[i];
    unsigned mod = m >> 6, rm = m & 7;
    *reg = (m >> 3) & 7;
    if (mod == 3 || force_reg)
        return 1;
    int n = 1;
    if (rm == 4) {
        if (i + 1 >= avail)
            return -1;
        n = 2;
        if (mod == 0 && (code[i + 1] & 7) == 5)
            return n + 4;
    }
    if (mod == 0)
        return rm == 5 ? n + 4 : n;
    return n + (mod == 1 ? 1 : 4);
}

/* VEX (c4/c5), EVEX (62) and XOP (8f) instructions: code[i] is the escape byte.  They always
 * have a ModRM, except VEX 0f 77 (vzeroupper/vzeroall). */
static int decode_vex(const uint8_t *code, size_t i, size_t avail, const struct prefixes *p)
{
    uint8_t esc = code[i];
    unsigned map, imm = 0;
    size_t hdr;   /* bytes of the VEX/EVEX/XOP prefix including the escape */

    /* SDM Vol. 2A 2.3.2 (VEX) and 2.7 (EVEX): a 66, f2, f3, f0 or REX before the escape is
     * #UD; AMD APM Vol. 3 1.8 says the same for XOP. */
    if (p->simd || p->rex)
        return -1;
    if (i + 1 >= avail)
        return -1;
    switch (esc) {
    case 0xc5:
        map = 1, hdr = 2;
        break;
    case 0xc4:
        map = code[i + 1] & 0x1f, hdr = 3;
        if (map < 1 || map > 3)
            return -1;
        break;
    case 0x8f:
        map = code[i + 1] & 0x1f, hdr = 3;
        if (map < 8 || map > 10)   /* XOP maps 8, 9, 0a (AMD APM Vol. 3 appendix A) */
            return -1;
        break;
    default: /* 0x62 */
        hdr = 4;
        if (i + 2 >= avail)
            return -1;
        /* P0 = R X B R' 0 m m m (maps 1-3; 5 and 6 are AVX512-FP16); P1 bit 2 must be 1.
         * Map 4 (APX promoted legacy opcodes) is not decoded. */
        map = code[i + 1] & 7;
        if ((code[i + 1] & 0x08) || !(code[i + 2] & 0x04) ||
            !(map == 1 || map == 2 || map == 3 || map == 5 || map == 6))
            return -1;
        break;
    }
    size_t op_at = i + hdr;
    if (op_at >= avail)
        return -1;
    uint8_t op = code[op_at];
    bool has_modrm = true;
    switch (map) {
    case 1:
        if (esc != 0x62 && op == 0x77)
            has_modrm = false;
        imm = (vex_map1_imm8[op / 32] >> (op % 32)) & 1;
        break;
    case 3:
    case 8:
        imm = 1;
        break;
    case 10:
        imm = 4;   /* BEXTR / LWPINS / LWPVAL imm32 */
        break;
    default:
        break;
    }
    int n = 1;
    unsigned reg;
    if (has_modrm) {
        n = modrm_size(code, op_at + 1, avail, false, &reg);
        if (n < 0)
            return -1;
        n += 1;
    }
    return (int)(op_at + (size_t)n + imm);
}

KBOX_API int kbox_x86_insn_len(const uint8_t *code, size_t avail)
{
    struct prefixes p = {0};
    size_t i = 0;
    uint8_t op;

    if (avail > KBOX_X86_MAX_INSN)
        avail = KBOX_X86_MAX_INSN;
    for (;; i++) {
        if (i >= avail)
            return -1;
        op = code[i];
        switch (op) {
        case 0x66:
            p.opsize = p.simd = true;
            break;
        case 0x67:
            p.adsize = true;
            break;
        case 0xf2:
        case 0xf3:
            p.rep = op;
            p.simd = true;
            break;
        case 0xf0:
            p.simd = true;
            break;
        case 0x26: case 0x2e: case 0x36: case 0x3e: case 0x64: case 0x65:
            break;
        default:
            if ((op & 0xf0) == 0x40) {
                p.rex = true, p.rexw = op & 8;
                continue;
            }
            goto opcode;
        }
        /* A legacy prefix after a REX cancels the REX (SDM 2.2.1). */
        p.rex = p.rexw = false;
    }
opcode:
    i++;
    uint8_t a = map1[op];
    bool force_reg = false;
    if (a & F_BAD)
        return -1;
    if (a & F_SPEC) {
        if (op == 0xc4 || op == 0xc5 || op == 0x62 ||
            (op == 0x8f && i < avail && (code[i] & 0x1f) >= 8)) {
            int n = decode_vex(code, i - 1, avail, &p);
            return n >= 0 && (size_t)n <= avail ? n : -1;
        }
        if (op == 0x8f) {
            a = F_M;   /* POP Ev */
        } else {       /* 0f: two- and three-byte maps */
            if (i >= avail)
                return -1;
            op = code[i++];
            if (op == 0x38 || op == 0x3a) {
                if (i >= avail)
                    return -1;
                i++;
                a = op == 0x38 ? F_M : (F_M | I_B);
            } else {
                a = map2[op];
                if (a & F_BAD)
                    return -1;
                force_reg = op >= 0x20 && op <= 0x23;
                if (op == 0x78 && i < avail) {
                    /* f2 0f 78 INSERTQ and 66 0f 78 EXTRQ (AMD SSE4a) take imm8, imm8 and
                     * exist only with mod=3 (capstone accepts any ModRM.reg for EXTRQ's /0);
                     * every other form is VMREAD Ey, Gy with the prefixes ignored, as
                     * capstone reads it.  f2/f3 outrank 66 as the mandatory prefix, so f3
                     * selects VMREAD too. */
                    bool sse4a = (code[i] >> 6) == 3 &&
                                 (p.rep == 0xf2 || (p.rep == 0 && p.opsize));
                    a = F_M | (sse4a ? I_W : I_NONE);
                }
            }
        }
    }
    unsigned reg = 0;
    if (a & F_M) {
        int n = modrm_size(code, i, avail, force_reg, &reg);
        if (n < 0)
            return -1;
        i += (size_t)n;
    }
    i += (size_t)imm_size(a & IMM_MASK, &p, reg);
    return i <= avail ? (int)i : -1;
}

static inline bool is_syscall(const uint8_t *code, size_t off, int n)
{
    return n == 2 && code[off] == 0x0f && code[off + 1] == 0x05;
}

/* Resync rule: an undecodable byte (data in .text, padding, an encoding we do not know)
 * advances the walk by one byte, so the next instruction boundary is found again as soon as
 * real code resumes; compilers pad with decodable nops/int3, so this is rare. */
static inline size_t step(const uint8_t *code, size_t len, size_t off, int *n)
{
    *n = kbox_x86_insn_len(code + off, len - off);
    return *n > 0 ? (size_t)*n : 1;
}

KBOX_API int kbox_x86_find_syscalls(const uint8_t *code, size_t len, uint64_t base,
                                    uint64_t *out, int max)
{
    if ((!code && len) || max < 0 || (!out && max))
        return -EINVAL;
    int found = 0, n;
    for (size_t off = 0; off < len;) {
        size_t adv = step(code, len, off, &n);
        if (is_syscall(code, off, n)) {
            if (found < max)
                out[found] = base + off;
            if (found < 0x7fffffff)
                found++;
        }
        off += adv;
    }
    return found;
}

KBOX_API int kbox_x86_is_syscall_at(const uint8_t *code, size_t len, size_t offset)
{
    if (!code || offset >= len)
        return -EINVAL;
    int n;
    size_t off = 0;
    while (off < offset)
        off += step(code, len, off, &n);
    if (off != offset)
        return 0;
    n = kbox_x86_insn_len(code + off, len - off);
    return is_syscall(code, off, n) ? 1 : 0;
}
