/* The initial process stack, laid out as fs/binfmt_elf.c:create_elf_tables() does:
 *
 *   sp ->  argc
 *          argv[0..argc-1], NULL
 *          envp[0..envc-1], NULL
 *          auxv pairs ..., AT_NULL 0
 *          (padding)
 *          program headers copy (only when no PT_LOAD maps them), random bytes (only when
 *          the kernel's auxv had none), argv/envp strings, AT_EXECFN and exe path strings
 *   top
 *
 * sp is 16-byte aligned (both ABIs require it at process entry).  Everything is copied so
 * the guest owns its argv strings as it would after execve (setproctitle-style rewriting
 * must not scribble over the launcher's own arguments). */
#include "loader/loader.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/auxvec.h>
#include <linux/resource.h>

#define MAX_AUX_IN 64           /* the kernel emits ~24 pairs; more means a corrupt vector */
#define MAX_ARG_STRLEN (32 * 4096UL)   /* the kernel's bound on one argument */

static int arg_count(char *const *v, size_t *bytes, struct kbox_buf *err)
{
    int n = 0;
    for (; v[n]; n++) {
        size_t len = kbox_strnlen(v[n], MAX_ARG_STRLEN + 1);
        if (len > MAX_ARG_STRLEN) {
            kbox_buf_puts(err, "argument or environment string longer than 128 KiB");
            return -E2BIG;
        }
        *bytes += len + 1;
        if (n >= 0x7ffffff) {
            kbox_buf_puts(err, "too many arguments or environment strings");
            return -E2BIG;
        }
    }
    return n;
}

static uint64_t *put_aux(uint64_t *a, uint64_t type, uint64_t val)
{
    a[0] = type, a[1] = val;
    return a + 2;
}

int kbox_build_stack(const struct kbox_stack_spec *s, uint64_t top, struct kbox_loaded *out,
                     struct kbox_buf *err)
{
    size_t strbytes = 0, phbytes = 0;
    int argc, envc;
    bool have_random = false, have_pagesz = false;
    uint64_t aux[2 * (MAX_AUX_IN + 12)];
    uint64_t *a = aux;
    int i;

    for (i = 0; i < s->npre; i++)
        strbytes += kbox_strlen(s->pre[i]) + 1;
    if ((argc = arg_count(s->argv, &strbytes, err)) < 0)
        return argc;
    argc += s->npre;
    if ((envc = arg_count(s->envp, &strbytes, err)) < 0)
        return envc;
    size_t execfn_len = kbox_strlen(s->execfn) + 1, exe_len = kbox_strlen(s->exe_path) + 1;
    strbytes += execfn_len + exe_len;

    /* The kernel's own limit: a quarter of RLIMIT_STACK, at least 128 KiB, at most 3/4 of
     * the default 8 MiB stack (fs/exec.c:bprm_stack_limits). */
    struct rlimit64 rl;
    uint64_t limit = 6UL << 20;
    if (KSYS4(__NR_prlimit64, 0, RLIMIT_STACK, 0, &rl) == 0 && rl.rlim_cur / 4 < limit)
        limit = rl.rlim_cur / 4;
    if (limit < MAX_ARG_STRLEN)
        limit = MAX_ARG_STRLEN;
    if (strbytes + ((uint64_t)argc + envc + 2) * sizeof(void *) > limit) {
        kbox_buf_puts(err, "argument list too long");
        return -E2BIG;
    }

    /* auxv: the kernel's entries in its order, ours substituted in place, missing ones
     * appended. */
    bool seen[64] = { false };
    for (i = 0; s->auxv; i++) {
        if (i >= MAX_AUX_IN) {
            kbox_buf_puts(err, "the launcher's auxiliary vector is corrupt (no AT_NULL)");
            return -EINVAL;
        }
        uint64_t t = s->auxv[2 * i], v = s->auxv[2 * i + 1];
        if (t == AT_NULL)
            break;
        switch (t) {
        case AT_PHDR: case AT_PHENT: case AT_PHNUM: case AT_BASE: case AT_ENTRY:
        case AT_EXECFN: case AT_SECURE:
            if (seen[t])
                continue;
            seen[t] = true;
            v = 0;      /* filled in below, once addresses on the new stack are known */
            break;
        case AT_EXECFD: case AT_NOTELF:
            continue;   /* described the launcher, not the guest */
        case AT_RANDOM: have_random = true; break;
        case AT_PAGESZ: have_pagesz = true; break;
        default: break;
        }
        a = put_aux(a, t, v);
    }
    static const uint64_t ours[] = { AT_PHDR, AT_PHENT, AT_PHNUM, AT_BASE, AT_ENTRY,
                                     AT_SECURE, AT_EXECFN };
    for (i = 0; i < (int)(sizeof(ours) / sizeof(ours[0])); i++)
        if (!seen[ours[i]])
            a = put_aux(a, ours[i], 0);
    if (!have_pagesz)
        a = put_aux(a, AT_PAGESZ, s->pagesz);
    if (!have_random)
        a = put_aux(a, AT_RANDOM, 0);
    a = put_aux(a, AT_NULL, 0);
    size_t naux_words = (size_t)(a - aux);

    if (s->phdr_copy)
        phbytes = s->at_phnum * sizeof(Elf64_Phdr);
    size_t extra = phbytes + (have_random ? 0 : 16);
    uint64_t area = (top - strbytes - extra) & ~(uint64_t)15;
    size_t words = 1 + (size_t)argc + 1 + (size_t)envc + 1 + naux_words;
    uint64_t sp = (area - words * sizeof(uint64_t)) & ~(uint64_t)15;

    /* Fill from the bottom up; the pages below the old stack fault in on demand. */
    uint64_t *w = (uint64_t *)(uintptr_t)sp;
    char *str = (char *)(uintptr_t)area + extra;
    uint64_t phdr_addr = s->at_phdr, random_addr = 0;
    if (s->phdr_copy) {
        memcpy((void *)(uintptr_t)area, s->phdr_copy, phbytes);
        phdr_addr = area;
    }
    if (!have_random) {
        random_addr = area + phbytes;
        /* GRND_NONBLOCK: early boot must not hang here; zeros are still a valid canary. */
        if (KSYS3(__NR_getrandom, (void *)(uintptr_t)random_addr, 16, 1) != 16)
            memset((void *)(uintptr_t)random_addr, 0, 16);
    }

    out->argc = (uint64_t)argc;
    *w++ = (uint64_t)argc;
    out->argv = (char **)w;
    for (i = 0; i < s->npre; i++) {
        size_t len = kbox_strlen(s->pre[i]) + 1;
        memcpy(str, s->pre[i], len);
        *w++ = (uint64_t)(uintptr_t)str;
        str += len;
    }
    for (i = 0; s->argv[i]; i++) {
        size_t len = kbox_strlen(s->argv[i]) + 1;
        memcpy(str, s->argv[i], len);
        *w++ = (uint64_t)(uintptr_t)str;
        str += len;
    }
    *w++ = 0;
    out->envp = (char **)w;
    for (i = 0; s->envp[i]; i++) {
        size_t len = kbox_strlen(s->envp[i]) + 1;
        memcpy(str, s->envp[i], len);
        *w++ = (uint64_t)(uintptr_t)str;
        str += len;
    }
    *w++ = 0;
    char *execfn = str;
    memcpy(str, s->execfn, execfn_len);
    str += execfn_len;
    char *exe = str;
    memcpy(str, s->exe_path, exe_len);

    out->auxv = w;
    for (size_t k = 0; k < naux_words; k += 2) {
        uint64_t t = aux[k], v = aux[k + 1];
        switch (t) {
        case AT_PHDR: v = phdr_addr; break;
        case AT_PHENT: v = sizeof(Elf64_Phdr); break;
        case AT_PHNUM: v = s->at_phnum; break;
        case AT_BASE: v = s->at_base; break;
        case AT_ENTRY: v = s->at_entry; break;
        case AT_SECURE: v = 0; break;
        case AT_EXECFN: v = (uint64_t)(uintptr_t)execfn; break;
        case AT_RANDOM: if (!have_random) v = random_addr; break;
        default: break;
        }
        *w++ = t;
        *w++ = v;
    }
    out->sp = sp;
    out->phdr = phdr_addr;
    out->guest_path = execfn;
    out->exe_path = exe;
    return 0;
}
