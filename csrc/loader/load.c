/* kbox_load_program: execve's job, done inside the calling process.
 *
 * Order of work, as in fs/exec.c + binfmt_script.c + binfmt_elf.c:
 *   1. open the file (regular, executable), read its first 256 bytes;
 *   2. "#!" -> splice interpreter (+ optional argument) into argv, repeat (at most 4 levels);
 *   3. validate the ELF completely before mapping anything;
 *   4. reserve the whole span of the program, map each PT_LOAD into it; same for PT_INTERP;
 *   5. build the initial stack (stack.c).
 * On any failure everything mapped so far is unmapped again, so a caller can report the
 * error and carry on (tests call this in-process). */
#include "loader/loader.h"
#include "core/view.h"
#include "arch.h"
#include "loader-arch.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/mman.h>
#include <linux/stat.h>
#include <linux/auxvec.h>

#define KBOX_X_OK 1            /* <unistd.h>'s X_OK; not in the uapi headers */

struct open_file {
    int fd;
    uint64_t size;
};

/* Everything the loader keeps while it works (about 9 KiB, on the launcher's stack). */
struct load_ctx {
    unsigned char buf[KBOX_BINPRM_BUF + 1];
    Elf64_Phdr ph[KBOX_ELF_MAX_PHNUM];
    char script_line[KBOX_SCRIPT_MAX_DEPTH][KBOX_BINPRM_BUF + 1];
    char interp[KBOX_INTERP_MAX + 1];
    char exe_real[KBOX_INTERP_MAX + 1];
    const char *pre[2 * KBOX_SCRIPT_MAX_DEPTH + 2];
    int npre;
    char *const *argv;
    uint64_t pagesz;
};

static int say(struct kbox_buf *err, int code, const char *prefix, const char *name,
               const char *what)
{
    kbox_buf_puts(err, prefix);
    kbox_buf_puts(err, name);
    kbox_buf_puts(err, ": ");
    kbox_buf_puts(err, what);
    return -code;
}

static uint64_t page_down(uint64_t a, uint64_t pg) { return a & ~(pg - 1); }
static uint64_t page_up(uint64_t a, uint64_t pg) { return (a + pg - 1) & ~(pg - 1); }

/* Opens `path` the way execve would judge it: a regular file we may execute.  prefix goes
 * in front of the name in messages ("interpreter "). */
static int open_exec(const char *path, const char *prefix, struct open_file *f,
                     struct kbox_buf *err)
{
    struct statx stx;
    long r;

    if (!path[0])
        return say(err, ENOENT, prefix, "''", kbox_errno_text(ENOENT));
    r = kbox_view_openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0); /* inside the root view, if any */
    if (r < 0)
        return say(err, (int)-r, prefix, path, kbox_errno_text((int)-r));
    f->fd = (int)r;
    r = KSYS5(__NR_statx, f->fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE, &stx);
    if (r < 0) {
        kbox_close(f->fd);
        return say(err, (int)-r, prefix, path, kbox_errno_text((int)-r));
    }
    if (S_ISDIR(stx.stx_mode)) {
        kbox_close(f->fd);
        return say(err, EACCES, prefix, path, "Permission denied (is a directory)");
    }
    if (!S_ISREG(stx.stx_mode)) {
        kbox_close(f->fd);
        return say(err, EACCES, prefix, path, "Permission denied (not a regular file)");
    }
    /* Judge the file we opened, not whatever the path names now (faccessat2, Linux 5.8;
     * the path-based call remains for older kernels). */
    r = KSYS4(__NR_faccessat2, f->fd, "", KBOX_X_OK, AT_EMPTY_PATH);
    if (r == -ENOSYS)
        r = KSYS3(__NR_faccessat, AT_FDCWD, path, KBOX_X_OK);
    if (r < 0) {
        kbox_close(f->fd);
        if (r == -EACCES || r == -EPERM)
            return say(err, EACCES, prefix, path, "Permission denied (not executable)");
        return say(err, (int)-r, prefix, path, kbox_errno_text((int)-r));
    }
    f->size = stx.stx_size;
    return 0;
}

/* Reads exactly n bytes at off (short only at end of file). */
static long read_at(int fd, void *buf, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        long r = kbox_pread(fd, (char *)buf + got, n - got, (long)(off + got));
        if (r == -EINTR)
            continue;
        if (r < 0)
            return r;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (long)got;
}

static bool spacetab(char c) { return c == ' ' || c == '\t'; }

int kbox_parse_shebang(const unsigned char *buf, size_t n, char *line, const char **name,
                         const char **arg)
{
    size_t end = 0;
    memcpy(line, buf, n);
    line[n] = 0;
    while (end < n && line[end] != '\n')
        end++;
    if (end == n && n == KBOX_BINPRM_BUF) {
        /* No newline in a full buffer: the interpreter path must still end (space, tab or
         * NUL) before its last byte, or it may have been truncated; like the kernel, that
         * last byte is then dropped.  (A shorter file is NUL-padded in the kernel's buffer,
         * which always terminates the line.) */
        size_t i = 2, lim = n - 1;
        while (i < lim && spacetab(line[i]))
            i++;
        while (i < lim && line[i] && !spacetab(line[i]))
            i++;
        if (i >= lim)
            return -ENOEXEC;
        end = lim;
    }
    line[end] = 0;
    while (end > 2 && spacetab(line[end - 1]))
        line[--end] = 0;
    char *cp = line + 2;
    while (spacetab(*cp))
        cp++;
    if (!*cp)
        return -ENOEXEC;
    *name = cp;
    while (*cp && !spacetab(*cp))
        cp++;
    while (spacetab(*cp))
        *cp++ = 0;
    *arg = *cp ? cp : NULL;
    return 0;
}

/* argv becomes [name, arg?, file, old argv[1:]...] (binfmt_script). */
static int splice_script(struct load_ctx *c, const char *name, const char *arg, const char *file)
{
    const char *old[2 * KBOX_SCRIPT_MAX_DEPTH + 2];
    int n = 0;
    if (c->npre > 0) {
        for (int i = 1; i < c->npre; i++)
            old[n++] = c->pre[i];
    } else if (c->argv[0]) {
        c->argv++;
    }
    c->npre = 0;
    c->pre[c->npre++] = name;
    if (arg)
        c->pre[c->npre++] = arg;
    c->pre[c->npre++] = file;
    for (int i = 0; i < n; i++) {
        if (c->npre >= (int)(sizeof(c->pre) / sizeof(c->pre[0])))
            return -E2BIG;
        c->pre[c->npre++] = old[i];
    }
    return 0;
}

struct mapped {
    uint64_t start, len, bias, entry;
};

/* Reserves the span and maps every PT_LOAD of an already validated ELF. */
static int map_elf(struct load_ctx *c, int fd, const char *name, const Elf64_Ehdr *eh,
                   const struct kbox_elf_layout *lay, uint64_t hint, struct mapped *m,
                   struct kbox_buf *err)
{
    const uint64_t pg = c->pagesz;
    uint64_t lo = page_down(lay->lo, pg), hi = page_up(lay->hi, pg), span = hi - lo;
    long r;

    if (eh->e_type == ET_EXEC) {
        /* Fixed addresses: NOREPLACE so a guest can never map over the launcher (linked
         * at 0x3000000000) or anything else already here. */
        r = kbox_mmap((void *)lo, span, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (r >= 0 && (uint64_t)r != lo) {   /* kernel < 4.17 treats the flag as a hint */
            kbox_munmap((void *)r, span);
            r = -EEXIST;
        }
        if (r < 0) {
            kbox_buf_puts(err, name);
            kbox_buf_puts(err, ": cannot map its fixed addresses ");
            kbox_buf_hex(err, lo);
            kbox_buf_puts(err, "-");
            kbox_buf_hex(err, hi);
            if (r == -EEXIST) {
                kbox_buf_puts(err, ": they overlap memory already in use (kbox's runtime is "
                                   "linked at 0x3000000000)");
            } else {
                kbox_buf_puts(err, ": ");
                kbox_buf_puts(err, kbox_errno_text((int)-r));
            }
            return -ENOMEM;
        }
        m->start = lo, m->len = span, m->bias = 0;
    } else {
        /* Position independent: over-reserve so the base can honour the largest p_align,
         * then give back both ends. */
        uint64_t align = lay->align > pg ? lay->align : pg, len;
        if (__builtin_add_overflow(span, align - pg, &len) || len >= KBOX_USER_VA_END)
            return say(err, ENOMEM, "", name, "segments span more than the address space");
        r = kbox_mmap((void *)hint, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r < 0) {
            kbox_buf_puts(err, name);
            kbox_buf_puts(err, ": cannot reserve ");
            kbox_buf_udec(err, len);
            kbox_buf_puts(err, " bytes: ");
            kbox_buf_puts(err, kbox_errno_text((int)-r));
            return -ENOMEM;
        }
        uint64_t base = ((uint64_t)r + align - 1) & ~(align - 1);
        if (base > (uint64_t)r)
            kbox_munmap((void *)r, base - (uint64_t)r);
        if ((uint64_t)r + len > base + span)
            kbox_munmap((void *)(base + span), (uint64_t)r + len - (base + span));
        m->start = base, m->len = span, m->bias = base - lo;
    }
    m->entry = eh->e_entry + m->bias;

    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *p = &c->ph[i];
        if (p->p_type != PT_LOAD || p->p_memsz == 0)
            continue;
        int prot = (p->p_flags & PF_R ? PROT_READ : 0) | (p->p_flags & PF_W ? PROT_WRITE : 0) |
                   (p->p_flags & PF_X ? PROT_EXEC : 0);
        uint64_t start = m->bias + p->p_vaddr, file_end = start + p->p_filesz;
        uint64_t mem_end = start + p->p_memsz, map_start = page_down(start, pg);
        uint64_t anon_start = map_start;
        if (p->p_filesz) {
            uint64_t len = page_up(file_end, pg) - map_start;
            uint64_t off = p->p_offset - (start - map_start);
            /* The last file page's bytes beyond p_filesz are .bss and must read as zero:
             * map it writable (never executable) to clear them, then drop to p_flags. */
            bool zero = p->p_memsz > p->p_filesz && (file_end & (pg - 1));
            int mprot = zero ? PROT_READ | PROT_WRITE : prot;
            r = kbox_mmap((void *)map_start, len, mprot, MAP_PRIVATE | MAP_FIXED, fd, (long)off);
            if (r < 0)
                goto map_failed;
            if (zero) {
                memset((void *)file_end, 0, page_up(file_end, pg) - file_end);
                if (mprot != prot && (r = kbox_mprotect((void *)map_start, len, prot)) < 0)
                    goto map_failed;
            }
            anon_start = page_up(file_end, pg);
        }
        uint64_t anon_end = page_up(mem_end, pg);
        if (anon_end > anon_start) {
            r = kbox_mmap((void *)anon_start, anon_end - anon_start, prot,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (r < 0)
                goto map_failed;
        }
        continue;
    map_failed:
        kbox_munmap((void *)m->start, m->len);
        kbox_buf_puts(err, name);
        kbox_buf_puts(err, ": cannot map program header ");
        kbox_buf_dec(err, i);
        kbox_buf_puts(err, ": ");
        kbox_buf_puts(err, kbox_errno_text((int)-r));
        /* noexec mounts refuse PROT_EXEC with EPERM; execve says EACCES */
        return r == -EPERM || r == -EACCES ? -EACCES : r == -ENOMEM ? -ENOMEM : -ELIBBAD;
    }
    return 0;
}

/* Reads and validates the headers of an open ELF whose first bytes are in c->buf. */
static int read_elf(struct load_ctx *c, const struct open_file *f, size_t nbuf,
                    const char *name, Elf64_Ehdr *eh, struct kbox_elf_layout *lay,
                    struct kbox_buf *err)
{
    int r;
    memset(eh, 0, sizeof(*eh));
    memcpy(eh, c->buf, nbuf < sizeof(*eh) ? nbuf : sizeof(*eh));
    if ((r = kbox_elf_check_ehdr(eh, f->size < nbuf ? nbuf : f->size, name, err)) < 0)
        return r;
    size_t phsz = eh->e_phnum * sizeof(Elf64_Phdr);
    long n = read_at(f->fd, c->ph, phsz, eh->e_phoff);
    if (n < 0)
        return say(err, (int)-n, "", name, kbox_errno_text((int)-n));
    if ((size_t)n != phsz)
        return say(err, ELIBBAD, "", name, "corrupt ELF: program headers beyond end of file");
    return kbox_elf_check_phdrs(eh, c->ph, f->size, c->pagesz, name, lay, err);
}

/* Roughly the stack pointer below the caller's locals: a frame one call deeper. */
static __attribute__((noinline)) uint64_t current_sp(void)
{
    uint64_t sp = (uint64_t)(uintptr_t)__builtin_frame_address(0);
    __asm__ volatile("" : "+r"(sp));   /* keep the call from being folded away */
    return sp;
}

static uint64_t aux_get(const uint64_t *auxv, uint64_t type, uint64_t dflt)
{
    for (int i = 0; auxv && i < 2 * 256 && auxv[i] != AT_NULL; i += 2)
        if (auxv[i] == type)
            return auxv[i + 1];
    return dflt;
}

int kbox_load_program(const char *path, char *const argv[], char *const envp[],
                      const uint64_t *auxv, struct kbox_loaded *out, struct kbox_buf *err)
{
    static char *const empty_argv[] = { (char *)"", NULL };
    static char *const no_env[] = { NULL };
    struct load_ctx c;
    struct open_file f, fi;
    Elf64_Ehdr eh, ieh;
    struct kbox_elf_layout lay, ilay;
    struct mapped mm, mi = { 0, 0, 0, 0 };
    const char *cur = path;
    long n;
    int r;

    memset(out, 0, sizeof(*out));
    c.npre = 0;
    /* Linux >= 5.18 runs a program given an empty argv with argv = { "" }. */
    c.argv = argv && argv[0] ? argv : empty_argv;
    c.pagesz = aux_get(auxv, AT_PAGESZ, 4096);
    if (c.pagesz < 4096 || (c.pagesz & (c.pagesz - 1)))
        c.pagesz = 4096;

    for (int depth = 0;; depth++) {
        if ((r = open_exec(cur, "", &f, err)) < 0)
            return r;
        n = read_at(f.fd, c.buf, KBOX_BINPRM_BUF, 0);
        if (n < 0) {
            kbox_close(f.fd);
            return say(err, (int)-n, "", cur, kbox_errno_text((int)-n));
        }
        if (n < 2 || c.buf[0] != '#' || c.buf[1] != '!')
            break;
        kbox_close(f.fd);
        if (depth == KBOX_SCRIPT_MAX_DEPTH)
            return say(err, ELOOP, "", path, "too many levels of #! interpreters (more than 4)");
        const char *name, *arg;
        if (kbox_parse_shebang(c.buf, (size_t)n, c.script_line[depth], &name, &arg) < 0)
            return say(err, ENOEXEC, "", cur, "malformed #! line (no interpreter, or longer "
                                              "than 256 bytes)");
        if (splice_script(&c, name, arg, cur) < 0)
            return say(err, E2BIG, "", path, "argument list too long");
        out->script_depth = depth + 1;
        cur = name;
    }

    r = read_elf(&c, &f, (size_t)n, cur, &eh, &lay, err);
    if (r == 0 && lay.interp_idx >= 0) {
        const Elf64_Phdr *ip = &c.ph[lay.interp_idx];
        long got = read_at(f.fd, c.interp, ip->p_filesz, ip->p_offset);
        c.interp[ip->p_filesz] = 0;
        if (got != (long)ip->p_filesz)
            r = say(err, ELIBBAD, "", cur, "corrupt ELF: cannot read PT_INTERP");
        else if (c.interp[ip->p_filesz - 1] != 0)
            r = say(err, ELIBBAD, "", cur, "corrupt ELF: PT_INTERP is not NUL-terminated");
        else if (!c.interp[0])
            r = say(err, ELIBBAD, "", cur, "corrupt ELF: PT_INTERP is empty");
    }
    /* AT_PHDR/PHNUM describe the main program; keep them before c.ph is reused. */
    uint64_t phnum = eh.e_phnum;
    int64_t phdr_vaddr = lay.phdr_vaddr;
    if (r == 0)
        r = map_elf(&c, f.fd, cur, &eh, &lay, eh.e_type == ET_DYN ? KBOX_PIE_HINT : 0, &mm, err);
    /* exe_path is what /proc/self/exe would say natively: the opened file's canonical
     * absolute path (glibc's static startup asserts it starts with '/'); the name as
     * given only when /proc is not mounted. */
    const char *exe = cur;
    if (r == 0) {
        char link[32];
        struct kbox_buf lb;
        kbox_buf_init(&lb, link, sizeof(link));
        kbox_buf_puts(&lb, "/proc/self/fd/");
        kbox_buf_dec(&lb, f.fd);
        long n2 = KSYS4(__NR_readlinkat, AT_FDCWD, link, c.exe_real, sizeof(c.exe_real) - 1);
        if (n2 > 0 && c.exe_real[0] == '/') {
            c.exe_real[n2] = 0;
            exe = c.exe_real;
        }
    }
    kbox_close(f.fd);
    if (r < 0)
        return r;
    out->main_start = mm.start, out->main_len = mm.len;
    out->main_bias = mm.bias, out->main_entry = mm.entry;
    out->entry = mm.entry;

    /* Headers that no PT_LOAD maps (legal, rare): glibc still needs AT_PHDR, so they go on
     * the new stack.  Copied now, before the interpreter reuses c.ph. */
    Elf64_Phdr *phcopy = NULL;
    Elf64_Phdr main_ph[KBOX_ELF_MAX_PHNUM];
    if (phdr_vaddr < 0) {
        memcpy(main_ph, c.ph, phnum * sizeof(Elf64_Phdr));
        phcopy = main_ph;
    }

    if (lay.interp_idx >= 0) {
        /* The interpreter: failures here are the guest's "bad interpreter" (ELIBBAD),
         * except a missing/unreadable file (ENOENT/EACCES), as execve reports them. */
        r = open_exec(c.interp, "interpreter ", &fi, err);
        if (r == 0) {
            n = read_at(fi.fd, c.buf, KBOX_BINPRM_BUF, 0);
            if (n < 0) {
                r = say(err, (int)-n, "interpreter ", c.interp, kbox_errno_text((int)-n));
            } else {
                struct kbox_buf sub;
                char msg[200];
                kbox_buf_init(&sub, msg, sizeof(msg));
                r = read_elf(&c, &fi, (size_t)n, c.interp, &ieh, &ilay, &sub);
                if (r == 0)
                    r = map_elf(&c, fi.fd, c.interp, &ieh, &ilay, 0, &mi, &sub);
                if (r < 0) {
                    kbox_buf_puts(err, "bad interpreter ");
                    kbox_buf_puts(err, msg);
                    if (r != -ENOMEM && r != -EACCES)
                        r = -ELIBBAD;
                }
            }
            kbox_close(fi.fd);
        }
        if (r < 0) {
            kbox_munmap((void *)mm.start, mm.len);
            return r;
        }
        out->interp_start = mi.start, out->interp_len = mi.len;
        out->interp_bias = mi.bias;
        out->entry = mi.entry;
    }

    struct kbox_stack_spec s = {
        .pre = c.pre, .npre = c.npre, .argv = c.argv, .envp = envp ? envp : no_env,
        .auxv = auxv, .execfn = path, .exe_path = exe,
        .at_phdr = phdr_vaddr >= 0 ? (uint64_t)phdr_vaddr + mm.bias : 0,
        .at_phnum = phnum, .at_base = mi.bias, .at_entry = mm.entry, .pagesz = c.pagesz,
        .phdr_copy = phcopy,
    };
    out->phnum = (uint32_t)phnum;
    out->phent = sizeof(Elf64_Phdr);
    /* Far enough below every live frame (this one holds ~20 KiB of buffers) that the
     * launcher's remaining calls never reach the guest's frame. */
    uint64_t top = (current_sp() - KBOX_STACK_GAP) & ~(uint64_t)15;
    r = kbox_build_stack(&s, top, out, err);
    if (r < 0) {
        kbox_munmap((void *)mm.start, mm.len);
        if (mi.len)
            kbox_munmap((void *)mi.start, mi.len);
        return r;
    }
    return 0;
}
