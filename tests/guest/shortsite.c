/* Syscall sites preceded by a short instruction (x86_64), and the padding near them.
 *
 * The rewrite tier patches such a site with `jmp rel8` to a 5-byte `jmp rel32` it writes
 * into alignment padding nearby, but only padding that is provably dead.  Three functions:
 *   ss_plain:    `mov %edi,%eax; syscall; ret` + padding: the site may be rewritten;
 *   ss_target:   the padding after its `ret` is also a branch target (taken when the second
 *                argument is non-zero), so it is live code and must not be overwritten;
 *   ss_indirect: contains an indirect jump, so no padding in it is provably dead;
 *   ss_prev:     no padding of its own, but the function before it ends in dead padding that
 *                runs up to it (found through .eh_frame_hdr, so in dynamic builds only).
 * Each is called 200 times on both of its paths; every result is checked.  The output is
 * the same natively and under every tier (tests/test_rewrite.py checks, from --stats, which
 * sites were rewritten).  On aarch64 every `svc #0` is rewritable; the same calls are made
 * through syscall() so the program prints the same lines.
 */
#include "guest.h"
#include <sys/syscall.h>

#if defined(__x86_64__)
long ss_plain(long nr);
long ss_target(long nr, long branch);
long ss_indirect(long nr, long branch);
long ss_prev(long nr);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl ss_plain\n.type ss_plain, @function\n"
        "ss_plain:\n.cfi_startproc\n"
        "mov %edi, %eax\n"            /* 89 f8: 2 bytes */
        "syscall\n"
        "ret\n"
        ".p2align 4\n"                /* 11 bytes of nop padding: dead */
        ".cfi_endproc\n.size ss_plain, .-ss_plain\n"

        ".p2align 4\n"
        ".globl ss_target\n.type ss_target, @function\n"
        "ss_target:\n.cfi_startproc\n"
        "test %esi, %esi\n"           /* 2 */
        "jnz 1f\n"                    /* 2 */
        "mov %edi, %eax\n"            /* 2 */
        "syscall\n"                   /* 2 */
        "ret\n"                       /* 1: offset 9 */
        "1: .byte 0x0f, 0x1f, 0x80, 0, 0, 0, 0\n" /* 7-byte nop, a branch target: live */
        "mov $7, %eax\n"              /* offset 16 */
        "ret\n"                       /* 21 */
        "ud2; ud2; ud2; ud2; ud2\n"   /* to 32: no other padding in or after ss_target */
        ".cfi_endproc\n.size ss_target, .-ss_target\n"

        ".p2align 4\n"
        ".globl ss_indirect\n.type ss_indirect, @function\n"
        "ss_indirect:\n.cfi_startproc\n"
        "test %esi, %esi\n"
        "jz 2f\n"
        "lea 3f(%rip), %rcx\n"
        "jmp *%rcx\n"                 /* indirect: nothing in this function is provably dead */
        "2: mov %edi, %eax\n"
        "syscall\n"
        "ret\n"
        ".p2align 4\n"
        "3: mov $9, %eax\n"
        "ret\n"
        ".cfi_endproc\n.size ss_indirect, .-ss_indirect\n"

        ".p2align 4\n"
        ".type ss_before_prev, @function\n"
        "ss_before_prev:\n.cfi_startproc\n"
        "mov $1, %eax\n"
        "ret\n"
        ".cfi_endproc\n.size ss_before_prev, .-ss_before_prev\n"
        ".p2align 4\n"                /* 10 bytes of padding outside any FDE: dead */
        ".globl ss_prev\n.type ss_prev, @function\n"
        "ss_prev:\n.cfi_startproc\n"
        "mov %edi, %eax\n"
        "syscall\n"
        "ret\n"
        "ud2; ud2; ud2; ud2; ud2; hlt\n" /* 16 bytes exactly: no padding after it */
        ".cfi_endproc\n.size ss_prev, .-ss_prev\n");
#else
static long ss_plain(long nr) { return syscall(nr); }
static long ss_target(long nr, long branch) { return branch ? 7 : syscall(nr); }
static long ss_indirect(long nr, long branch) { return branch ? 9 : syscall(nr); }
static long ss_prev(long nr) { return syscall(nr); }
#endif

int main(void)
{
    const long rounds = 200; /* 1000 syscalls: cheap even for seccomp in an emulated guest */
    long pid = syscall(SYS_getpid), ppid = syscall(SYS_getppid), uid = syscall(SYS_getuid);
    long egid = syscall(SYS_getegid);
    int plain_ok = 1, target_ok = 1, indirect_ok = 1, prev_ok = 1;
    for (long i = 0; i < rounds; i++) {
        plain_ok &= ss_plain(SYS_getppid) == ppid;
        target_ok &= ss_target(SYS_getpid, 0) == pid && ss_target(SYS_getpid, 1) == 7;
        indirect_ok &= ss_indirect(SYS_getuid, 0) == uid && ss_indirect(SYS_getuid, 1) == 9;
        prev_ok &= ss_prev(SYS_getegid) == egid;
    }
    printf("plain short site: %s\n", plain_ok ? "ok" : "FAIL");
    printf("padding that is a branch target: %s\n", target_ok ? "ok" : "FAIL");
    printf("function with an indirect jump: %s\n", indirect_ok ? "ok" : "FAIL");
    printf("padding of the function before: %s\n", prev_ok ? "ok" : "FAIL");
    return plain_ok && target_ok && indirect_ok && prev_ok ? 0 : 1;
}
