/* The in-process ELF loader: maps a guest program (static, static-pie, or dynamic through
 * its PT_INTERP; `#!` scripts resolved like execve) into the calling process and builds
 * the initial stack the kernel would have built, so the launcher can jump to it with
 * kbox_enter_guest(out.entry, out.sp).
 *
 * Freestanding like the rest of csrc/: raw syscalls only, -errno returns, messages built
 * into a caller-provided kbox_buf. */
#ifndef KBOX_LOADER_LOADER_H
#define KBOX_LOADER_LOADER_H

#include <stddef.h>
#include <stdint.h>
#include "lib/buf.h"

struct kbox_loaded {
    uint64_t entry;        /* where to jump: the interpreter's entry if dynamic */
    uint64_t sp;           /* initial stack pointer: -> argc, argv[], NULL, envp[], NULL, auxv */
    uint64_t main_entry, main_bias, interp_bias; /* AT_ENTRY, load biases (AT_BASE = interp_bias) */
    uint64_t phdr; uint32_t phnum, phent;
    const char *exe_path;  /* the path actually executed (after #! resolution: the script's
                              interpreter), canonical and absolute as /proc/self/exe shows
                              it natively; lives on the new stack */
    const char *guest_path;/* what the guest asked to run (AT_EXECFN); lives on the new stack */
    /* Added: where the pieces of the new frame are (all inside the new stack). */
    uint64_t argc;
    char **argv, **envp;
    uint64_t *auxv;        /* pairs, AT_NULL-terminated */
    /* Address ranges the loader reserved (page aligned, [start, start+len)); the main
     * program's includes gaps between its segments.  interp_len is 0 without PT_INTERP. */
    uint64_t main_start, main_len, interp_start, interp_len;
    int script_depth;      /* how many #! levels were followed */
};

/* Maps `path` (following #! up to 4 levels, then PT_INTERP) into this process and builds
 * the initial stack for it below the caller's stack.  argv/envp: NULL-terminated arrays
 * (strings may be anywhere; they are copied onto the new stack).
 * auxv: the launcher's own auxv from the kernel (pairs, AT_NULL-terminated; NULL allowed) —
 * keeps AT_SYSINFO_EHDR, AT_HWCAP*, AT_PAGESZ, AT_CLKTCK, AT_UID/EUID/GID/EGID, AT_RANDOM,
 * AT_PLATFORM, AT_MINSIGSTKSZ etc.; replaces AT_PHDR/PHENT/PHNUM/BASE/ENTRY/EXECFN and sets
 * AT_SECURE to 0.
 * Returns 0, or -errno with a one-line human message in *err.  errno choices mirror
 * execve: ENOENT missing file/interpreter, EACCES not executable or not a regular file,
 * ENOEXEC not ELF/not a script/wrong arch, ELIBBAD corrupt ELF or bad interpreter,
 * E2BIG arguments too large, ENOMEM address space in use or exhausted, ELOOP #! depth.
 * On failure nothing stays mapped. */
int kbox_load_program(const char *path, char *const argv[], char *const envp[],
                      const uint64_t *auxv, struct kbox_loaded *out, struct kbox_buf *err);

/* Validation only, on a file image in memory (no mapping): for tests and early errors.
 * interp is truncated to 255 bytes (a longer PT_INTERP is still valid). */
struct kbox_elf_info { int type; int machine; int is_dynamic; int is_static_pie;
                       uint64_t entry; char interp[256]; int phnum; };
int kbox_elf_check(const void *image, size_t len, struct kbox_elf_info *info,
                   struct kbox_buf *err);

/* binfmt_script's parse of "#!interp [arg]" in the first n <= KBOX_BINPRM_BUF bytes of a
 * file; `line` (KBOX_BINPRM_BUF + 1 bytes) receives the NUL-separated pieces.  Returns 0
 * with *name (and *arg or NULL) set, or -ENOEXEC.  The loader and the trap tier's execve
 * pre-check both use it, so they agree with the kernel and with each other. */
int kbox_parse_shebang(const unsigned char *buf, size_t n, char *line, const char **name,
                       const char **arg);

/* ---- internal to loader/ ---- */

#include <linux/elf.h>

/* Limits.  The kernel refuses program header tables larger than one page (73 entries with
 * 4 KiB pages); we accept up to 128 so 64 KiB-page binaries are not refused here. */
#define KBOX_ELF_MAX_PHNUM 128
#define KBOX_SCRIPT_MAX_DEPTH 4       /* #! levels followed (the kernel allows 5 binfmt levels) */
#define KBOX_BINPRM_BUF 256           /* bytes the kernel reads to recognise a format */
#define KBOX_INTERP_MAX 4096          /* PATH_MAX: the kernel's bound on PT_INTERP */
#define KBOX_STACK_GAP (64 * 1024)    /* space left between the caller's stack and the guest's */

/* What validation learnt about a program's PT_LOAD layout. */
struct kbox_elf_layout {
    uint64_t lo, hi;        /* lowest p_vaddr, highest p_vaddr + p_memsz over PT_LOADs */
    uint64_t align;         /* largest power-of-two p_align, at least the page size */
    int nload;              /* PT_LOADs with p_memsz > 0 */
    int interp_idx;         /* index of PT_INTERP, or -1 */
    int64_t phdr_vaddr;     /* unbiased address of the program headers in memory, or -1 */
};

const char *kbox_errno_text(int err);
/* e_ident .. e_phoff checks; filesize = bytes available. */
int kbox_elf_check_ehdr(const Elf64_Ehdr *eh, uint64_t filesize, const char *name,
                        struct kbox_buf *err);
/* Program header checks; ph holds eh->e_phnum entries already copied out of the file. */
int kbox_elf_check_phdrs(const Elf64_Ehdr *eh, const Elf64_Phdr *ph, uint64_t filesize,
                         uint64_t pagesz, const char *name, struct kbox_elf_layout *lay,
                         struct kbox_buf *err);

/* Everything the initial stack is built from. */
struct kbox_stack_spec {
    const char *const *pre; int npre;   /* argv prefix produced by #! resolution */
    char *const *argv;                  /* then these, NULL-terminated */
    char *const *envp;
    const uint64_t *auxv;               /* the kernel's, or NULL */
    const char *execfn, *exe_path;
    uint64_t at_phdr, at_phnum, at_base, at_entry, pagesz;
    const Elf64_Phdr *phdr_copy;        /* non-NULL: headers not mapped, copy them to the stack */
};
/* Builds the frame below `top` (which must lie below every live frame of the caller). */
int kbox_build_stack(const struct kbox_stack_spec *s, uint64_t top, struct kbox_loaded *out,
                     struct kbox_buf *err);

#endif
