/* Register, red-zone and vector-state preservation across syscalls.
 *
 * An assembly probe fills every general register the syscall ABI preserves (and, on x86_64,
 * the 128-byte red zone below %rsp) with patterns, loads the vector registers (xmm0-15, or
 * zmm0-31 where AVX-512 exists; v0-v31 on aarch64), makes one getpid syscall from a site
 * shaped like glibc's wrappers (so the rewrite tier patches it), and records everything
 * afterwards.  The result register is not compared; on x86_64 rcx must hold the address
 * after the syscall and r11 the flags, as the kernel leaves them, and the arithmetic flags
 * (set from random operands before each call) must come back unchanged.
 *
 * Output: deterministic yes/no lines.  Usage: regs [ITERATIONS] (default: up to 1,000,000
 * calls or 2 seconds, whichever comes first, so emulated guests finish).
 */
#include "guest.h"
#include <stdint.h>
#include <stdbool.h>
#include <time.h>

uint64_t probe_in[32], probe_out[32], probe_flags_before, probe_flags_after, probe_rcx_expect;
uint8_t probe_vin[32 * 64] __attribute__((aligned(64))), probe_vout[32 * 64] __attribute__((aligned(64)));
uint64_t probe_redzone[16];
int probe_wide;
void probe(int wide);

#ifndef PROBE_SITE_OFFSET
#define PROBE_SITE_OFFSET 0
#endif
#define STR2(x) #x
#define STR1(x) STR2(x)
#if PROBE_SITE_OFFSET > 0
#define PROBE_SKIP ".skip " STR1(PROBE_SITE_OFFSET) ", 0x90\n"
#else
#define PROBE_SKIP ""
#endif

#if defined(__x86_64__)
/* GPR slots: rbx rcx rdx rsi rdi rbp r8 r9 r10 r11 r12 r13 r14 r15 */
__asm__(
    ".text\n.globl probe\n.type probe,@function\nprobe:\n.cfi_startproc\n"
    "push %rbx; push %rbp; push %r12; push %r13; push %r14; push %r15\n"
    "mov %edi, probe_wide(%rip)\n"
    "test %edi, %edi; jz 1f\n"
    ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
    "vmovdqu64 probe_vin+64*\\n(%rip), %zmm\\n\n"
    ".endr\n"
    "jmp 2f\n"
    "1:\n"
    ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "movdqu probe_vin+16*\\n(%rip), %xmm\\n\n"
    ".endr\n"
    "2:\n"
    /* random CF/PF/AF/ZF/SF/OF for this call (probe_in[14..15] are not register slots) */
    "mov probe_in+112(%rip), %rax; add probe_in+120(%rip), %rax\n"
    "pushfq; pop %rax; mov %rax, probe_flags_before(%rip)\n"
    "movabs $0x5a5aa5a55a5aa5a5, %rax\n"
    ".irp n,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n"
    "mov %rax, -8*\\n(%rsp)\n"
    ".endr\n"
    "lea 3f(%rip), %rax; mov %rax, probe_rcx_expect(%rip)\n"
    "mov probe_in+0(%rip), %rbx\n mov probe_in+8(%rip), %rcx\n mov probe_in+16(%rip), %rdx\n"
    "mov probe_in+24(%rip), %rsi\n mov probe_in+32(%rip), %rdi\n mov probe_in+40(%rip), %rbp\n"
    "mov probe_in+48(%rip), %r8\n mov probe_in+56(%rip), %r9\n mov probe_in+64(%rip), %r10\n"
    "mov probe_in+72(%rip), %r11\n mov probe_in+80(%rip), %r12\n mov probe_in+88(%rip), %r13\n"
    "mov probe_in+96(%rip), %r14\n mov probe_in+104(%rip), %r15\n"
    /* mov $__NR_getpid, %eax: the wrapper shape, at PROBE_SITE_OFFSET bytes past a 64-byte
     * cache-line boundary (default 0: one aligned store patches it; tests/test_rewrite.py
     * also builds offsets where the 5 bytes cross a 16-byte boundary or the line). */
    ".p2align 6\n"
    PROBE_SKIP
    ".byte 0xb8; .long 39\n"
    "syscall\n"
    "3:\n"
    "mov %rbx, probe_out+0(%rip)\n mov %rcx, probe_out+8(%rip)\n mov %rdx, probe_out+16(%rip)\n"
    "mov %rsi, probe_out+24(%rip)\n mov %rdi, probe_out+32(%rip)\n mov %rbp, probe_out+40(%rip)\n"
    "mov %r8, probe_out+48(%rip)\n mov %r9, probe_out+56(%rip)\n mov %r10, probe_out+64(%rip)\n"
    "mov %r11, probe_out+72(%rip)\n mov %r12, probe_out+80(%rip)\n mov %r13, probe_out+88(%rip)\n"
    "mov %r14, probe_out+96(%rip)\n mov %r15, probe_out+104(%rip)\n"
    /* the flags after the call, without pushing (the red zone is checked next) */
    "seto %al; lahf; movzwl %ax, %eax; mov %rax, probe_flags_after(%rip)\n"
    ".irp n,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n"
    "mov -8*\\n(%rsp), %rax; mov %rax, probe_redzone+8*(\\n-1)(%rip)\n"
    ".endr\n"
    "cmpl $0, probe_wide(%rip); je 4f\n"
    ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
    "vmovdqu64 %zmm\\n, probe_vout+64*\\n(%rip)\n"
    ".endr\n"
    "jmp 5f\n"
    "4:\n"
    ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "movdqu %xmm\\n, probe_vout+16*\\n(%rip)\n"
    ".endr\n"
    "5:\n"
    "pop %r15; pop %r14; pop %r13; pop %r12; pop %rbp; pop %rbx\n"
    "ret\n.cfi_endproc\n");
#define NGPR 14
#define RCX_SLOT 1
#define R11_SLOT 9
static int have_wide(void) { return __builtin_cpu_supports("avx512f"); }
#elif defined(__aarch64__)
/* GPR slots: x1..x30 except x8 (the syscall number, also checked) -> slots 0..29 = x1..x30 */
__asm__(
    ".text\n.globl probe\n.type probe,%function\nprobe:\n.cfi_startproc\n"
    /* x19-x28 and d8-d15 are callee-saved (AAPCS64): the caller keeps loop state there. */
    "stp x29, x30, [sp, #-160]!\n stp x19, x20, [sp, #16]\n stp x21, x22, [sp, #32]\n"
    "stp x23, x24, [sp, #48]\n stp x25, x26, [sp, #64]\n stp x27, x28, [sp, #80]\n"
    "stp d8, d9, [sp, #96]\n stp d10, d11, [sp, #112]\n stp d12, d13, [sp, #128]\n"
    "stp d14, d15, [sp, #144]\n"
    "adrp x9, probe_vin\n add x9, x9, :lo12:probe_vin\n"
    "ld1 {v0.16b-v3.16b}, [x9], #64\n ld1 {v4.16b-v7.16b}, [x9], #64\n"
    "ld1 {v8.16b-v11.16b}, [x9], #64\n ld1 {v12.16b-v15.16b}, [x9], #64\n"
    "ld1 {v16.16b-v19.16b}, [x9], #64\n ld1 {v20.16b-v23.16b}, [x9], #64\n"
    "ld1 {v24.16b-v27.16b}, [x9], #64\n ld1 {v28.16b-v31.16b}, [x9], #64\n"
    "mrs x9, nzcv\n adrp x10, probe_flags_before\n str x9, [x10, :lo12:probe_flags_before]\n"
    "adrp x0, probe_in\n add x0, x0, :lo12:probe_in\n"
    "ldp x1, x2, [x0, #0]\n ldp x3, x4, [x0, #16]\n ldp x5, x6, [x0, #32]\n ldp x7, x8, [x0, #48]\n"
    "ldp x9, x10, [x0, #64]\n ldp x11, x12, [x0, #80]\n ldp x13, x14, [x0, #96]\n"
    "ldp x15, x16, [x0, #112]\n ldp x17, x18, [x0, #128]\n ldp x19, x20, [x0, #144]\n"
    "ldp x21, x22, [x0, #160]\n ldp x23, x24, [x0, #176]\n ldp x25, x26, [x0, #192]\n"
    "ldp x27, x28, [x0, #208]\n ldp x29, x30, [x0, #224]\n"
    "mov x8, #172\n"                   /* __NR_getpid: the wrapper shape */
    "svc #0\n"
    "adrp x0, probe_out\n add x0, x0, :lo12:probe_out\n"
    "stp x1, x2, [x0, #0]\n stp x3, x4, [x0, #16]\n stp x5, x6, [x0, #32]\n stp x7, x8, [x0, #48]\n"
    "stp x9, x10, [x0, #64]\n stp x11, x12, [x0, #80]\n stp x13, x14, [x0, #96]\n"
    "stp x15, x16, [x0, #112]\n stp x17, x18, [x0, #128]\n stp x19, x20, [x0, #144]\n"
    "stp x21, x22, [x0, #160]\n stp x23, x24, [x0, #176]\n stp x25, x26, [x0, #192]\n"
    "stp x27, x28, [x0, #208]\n stp x29, x30, [x0, #224]\n"
    "mrs x9, nzcv\n str x9, [x0, #240]\n"
    "adrp x9, probe_vout\n add x9, x9, :lo12:probe_vout\n"
    "st1 {v0.16b-v3.16b}, [x9], #64\n st1 {v4.16b-v7.16b}, [x9], #64\n"
    "st1 {v8.16b-v11.16b}, [x9], #64\n st1 {v12.16b-v15.16b}, [x9], #64\n"
    "st1 {v16.16b-v19.16b}, [x9], #64\n st1 {v20.16b-v23.16b}, [x9], #64\n"
    "st1 {v24.16b-v27.16b}, [x9], #64\n st1 {v28.16b-v31.16b}, [x9], #64\n"
    "ldp x19, x20, [sp, #16]\n ldp x21, x22, [sp, #32]\n ldp x23, x24, [sp, #48]\n"
    "ldp x25, x26, [sp, #64]\n ldp x27, x28, [sp, #80]\n"
    "ldp d8, d9, [sp, #96]\n ldp d10, d11, [sp, #112]\n ldp d12, d13, [sp, #128]\n"
    "ldp d14, d15, [sp, #144]\n ldp x29, x30, [sp], #160\n"
    "ret\n.cfi_endproc\n");
#define NGPR 30
static int have_wide(void) { return 0; }
#else
#error "regs.c: x86_64 or aarch64"
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    long max = argc > 1 ? atol(argv[1]) : 1000000;
    double budget = argc > 1 ? 1e9 : 2.0;
    int wide = have_wide();
    size_t vbytes = wide ? 32 * 64 : (NGPR == 30 ? 32 * 16 : 16 * 16);
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    bool gpr_ok = true, vec_ok = true, rz_ok = true, special_ok = true;
    double t0 = now();
    long done = 0;
    for (; done < max; done++) {
        for (int i = 0; i < 32; i++)
            probe_in[i] = (seed += 0x9e3779b97f4a7c15ULL) ^ (uint64_t)done;
#if defined(__aarch64__)
        probe_in[7] = 172; /* slot of x8 holds the number the probe loads anyway */
#endif
        for (size_t i = 0; i < vbytes; i++)
            probe_vin[i] = (uint8_t)(i * 7 + (size_t)done);
        probe(wide);
        for (int i = 0; i < NGPR; i++) {
#if defined(__x86_64__)
            if (i == RCX_SLOT) {
                special_ok &= probe_out[i] == probe_rcx_expect;
                continue;
            }
            if (i == R11_SLOT) {
                /* rflags as the kernel saves them; RF/TF aside the arithmetic flags match */
                special_ok &= (probe_out[i] & 0x8d5) == (probe_flags_before & 0x8d5);
                continue;
            }
#endif
            gpr_ok &= probe_out[i] == probe_in[i];
        }
        vec_ok &= memcmp(probe_vin, probe_vout, vbytes) == 0;
#if defined(__aarch64__)
        special_ok &= probe_out[30] == probe_flags_before;
#endif
#if defined(__x86_64__)
        for (int i = 0; i < 16; i++)
            rz_ok &= probe_redzone[i] == 0x5a5aa5a55a5aa5a5ULL;
        /* lahf: SF ZF AF PF CF in bits 15..8 as in rflags' low byte; seto: OF in bit 0 */
        special_ok &= ((probe_flags_after >> 8) & 0xd5) == (probe_flags_before & 0xd5) &&
                      (probe_flags_after & 1) == ((probe_flags_before >> 11) & 1);
#endif
        if ((done & 1023) == 0 && now() - t0 > budget)
            break;
    }
    printf("general registers preserved: %s\n", gpr_ok ? "yes" : "no");
    printf("result-side registers as the kernel leaves them: %s\n", special_ok ? "yes" : "no");
    printf("red zone untouched: %s\n", rz_ok ? "yes" : "no");
    printf("vector registers preserved: %s\n", vec_ok ? "yes" : "no");
    return gpr_ok && special_ok && rz_ok && vec_ok ? 0 : 1;
}
