/* Code that appears after start is still interposed, and `syscall` bytes that are not an
 * instruction are never patched.
 *
 * 1. JIT: machine code is written to a RW mapping, made executable with mprotect (never
 *    writable and executable at once: the in-process tiers refuse W+X), and called; its
 *    getppid must return what libc's getppid returns, many times (so a rewriting tier
 *    rewrites the JIT site too).
 * 2. An immediate that contains the bytes of a syscall instruction (x86_64: b8 0f 05 00 00,
 *    "mov $0x50f, %eax") sits right before a real syscall; after many calls its bytes must
 *    be unchanged and its value intact.
 * With the argument "wx" it instead reports whether a writable+executable mapping is granted
 * (the in-process tiers refuse it unless --allow-wx; tests/test_rewrite.py checks that).
 */
#include "guest.h"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
/* mov $__NR_getppid, %eax; syscall; ret */
static const uint8_t jit_code[] = { 0xb8, 110, 0, 0, 0, 0x0f, 0x05, 0xc3 };
#define JIT_SIZE sizeof(jit_code)
/* The immediate holds 0f 05; the real syscall follows it. */
long imm_then_syscall(void);
__asm__(".text\n.globl imm_then_syscall\n.type imm_then_syscall,@function\n"
        "imm_then_syscall:\n.cfi_startproc\n"
        "imm_site: mov $0x50f, %edx\n"       /* ba 0f 05 00 00 */
        "mov $110, %eax\n"                   /* b8 6e 00 00 00 */
        "syscall\n"
        "add %rdx, %rax\n"                   /* getppid() + 0x50f */
        "ret\n.cfi_endproc\n");
extern const uint8_t imm_site[];
static const uint8_t imm_expect[] = { 0xba, 0x0f, 0x05, 0x00, 0x00 };
#elif defined(__aarch64__)
/* mov x8, #173 (getppid); svc #0; ret */
static const uint32_t jit_words[] = { 0xd28015a8, 0xd4000001, 0xd65f03c0 };
#define jit_code ((const uint8_t *)jit_words)
#define JIT_SIZE sizeof(jit_words)
long imm_then_syscall(void);
/* A literal word equal to svc #0, loaded as data; the real svc follows. */
__asm__(".text\n.globl imm_then_syscall\n.type imm_then_syscall,%function\n"
        "imm_then_syscall:\n.cfi_startproc\n"
        "ldr w2, imm_site\n"
        "mov x8, #173\n"
        "svc #0\n"
        "add x0, x0, x2\n"
        "ret\n"
        ".balign 4\nimm_site: .word 0xd4000001\n.cfi_endproc\n");
extern const uint8_t imm_site[];
static const uint8_t imm_expect[] = { 0x01, 0x00, 0x00, 0xd4 };
#endif

/* Enough calls that the lazily rewritten path serves most of them; few enough that the
 * seccomp tier in an emulated 6.1 guest (milliseconds per notified call) is not slowed. */
#define CALLS 500

int main(int argc, char **argv)
{
    long page = sysconf(_SC_PAGESIZE);
    if (argc > 1 && strcmp(argv[1], "wx") == 0) {
        void *wx = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE | PROT_EXEC,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        printf("W+X mapping: %s\n", wx == MAP_FAILED ? errname(errno) : "granted");
        void *rw = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        printf("mprotect to W+X: %s\n",
               mprotect(rw, (size_t)page, PROT_READ | PROT_WRITE | PROT_EXEC) ? errname(errno) : "granted");
        return 0;
    }
    uint8_t *code = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(code != MAP_FAILED);
    memcpy(code, jit_code, JIT_SIZE);
    CHECK(mprotect(code, (size_t)page, PROT_READ | PROT_EXEC) == 0);
    __builtin___clear_cache((char *)code, (char *)code + JIT_SIZE);
    long (*fn)(void) = (long (*)(void))(uintptr_t)code;
    long want = getppid();
    int same = 1;
    for (int i = 0; i < CALLS; i++)
        same &= fn() == want;
    printf("JIT getppid matches libc: %s\n", same ? "yes" : "no");

    int imm_ok = 1;
    for (int i = 0; i < CALLS; i++)
        imm_ok &= imm_then_syscall() == want + (long)(sizeof(imm_expect) == 5 ? 0x50f : 0xd4000001);
    printf("value next to a syscall-looking immediate intact: %s\n", imm_ok ? "yes" : "no");
    printf("immediate bytes unchanged: %s\n",
           memcmp(imm_site, imm_expect, sizeof(imm_expect)) == 0 ? "yes" : "no");
    return same && imm_ok ? 0 : 1;
}
