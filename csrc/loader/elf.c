/* ELF validation shared by the loader (headers read from a file) and kbox_elf_check (an
 * image in memory).  Nothing in a header is trusted: every offset, size and address is
 * range-checked with overflow-safe arithmetic before anything is read or mapped, because
 * a crash here takes down the launcher with no message at all. */
#include "loader/loader.h"
#include "arch.h"
#include "loader-arch.h"
#include "lib/str.h"
#include <linux/errno.h>

const char *kbox_errno_text(int e)
{
    switch (e) {
    case EPERM: return "Operation not permitted";
    case ENOENT: return "No such file or directory";
    case EIO: return "Input/output error";
    case E2BIG: return "Argument list too long";
    case ENOEXEC: return "Exec format error";
    case EBADF: return "Bad file descriptor";
    case ENOMEM: return "Cannot allocate memory";
    case EACCES: return "Permission denied";
    case EFAULT: return "Bad address";
    case EEXIST: return "File exists";
    case ENOTDIR: return "Not a directory";
    case EISDIR: return "Is a directory";
    case EINVAL: return "Invalid argument";
    case ENFILE: return "Too many open files in system";
    case EMFILE: return "Too many open files";
    case ETXTBSY: return "Text file busy";
    case ENAMETOOLONG: return "File name too long";
    case ELOOP: return "Too many levels of symbolic links";
    case ELIBBAD: return "Accessing a corrupted shared library";
    case ENODEV: return "No such device";
    default: return "error";
    }
}

static const char *machine_name(int m)
{
    switch (m) {
    case 3: return "i386";
    case 40: return "arm";
    case 62: return "x86_64";
    case 183: return "aarch64";
    case 243: return "riscv";
    case 8: return "mips";
    case 21: return "ppc64";
    case 22: return "s390";
    default: return NULL;
    }
}

static int fail(struct kbox_buf *err, int code, const char *name, const char *what)
{
    kbox_buf_puts(err, name);
    kbox_buf_puts(err, ": ");
    kbox_buf_puts(err, what);
    return -code;
}

/* "name: corrupt ELF: what" with an optional segment index. */
static int corrupt(struct kbox_buf *err, const char *name, int seg, const char *what)
{
    kbox_buf_puts(err, name);
    kbox_buf_puts(err, ": corrupt ELF: ");
    if (seg >= 0) {
        kbox_buf_puts(err, "program header ");
        kbox_buf_dec(err, seg);
        kbox_buf_puts(err, ": ");
    }
    kbox_buf_puts(err, what);
    return -ELIBBAD;
}

static bool add_ok(uint64_t a, uint64_t b, uint64_t *sum)
{
    return !__builtin_add_overflow(a, b, sum);
}

int kbox_elf_check_ehdr(const Elf64_Ehdr *eh, uint64_t filesize, const char *name,
                        struct kbox_buf *err)
{
    const unsigned char *id = eh->e_ident;
    if (filesize < 4 || id[EI_MAG0] != ELFMAG0 || id[EI_MAG1] != ELFMAG1 ||
        id[EI_MAG2] != ELFMAG2 || id[EI_MAG3] != ELFMAG3)
        return fail(err, ENOEXEC, name, "not an ELF executable");
    if (filesize < EI_NIDENT)
        return corrupt(err, name, -1, "file ends inside the ELF identification");
    if (id[EI_CLASS] != ELFCLASS64) {
        kbox_buf_puts(err, name);
        kbox_buf_puts(err, id[EI_CLASS] == ELFCLASS32 ? ": 32-bit ELF, this is 64-bit "
                                                       : ": unknown ELF class, this is 64-bit ");
        kbox_buf_puts(err, KBOX_ARCH_NAME);
        return -ENOEXEC;
    }
    if (id[EI_DATA] != ELFDATA2LSB)
        return fail(err, ENOEXEC, name, "big-endian or unknown ELF data encoding, this is "
                                        "little-endian " KBOX_ARCH_NAME);
    if (filesize < sizeof(Elf64_Ehdr))
        return corrupt(err, name, -1, "file ends inside the ELF header");
    if (eh->e_machine != KBOX_ELF_MACHINE) {
        const char *m = machine_name(eh->e_machine);
        kbox_buf_puts(err, name);
        kbox_buf_puts(err, ": ELF for ");
        if (m) {
            kbox_buf_puts(err, m);
        } else {
            kbox_buf_puts(err, "machine ");
            kbox_buf_udec(err, eh->e_machine);
        }
        kbox_buf_puts(err, ", this is " KBOX_ARCH_NAME);
        return -ENOEXEC;
    }
    if (eh->e_type != ET_EXEC && eh->e_type != ET_DYN) {
        kbox_buf_puts(err, name);
        kbox_buf_puts(err, eh->e_type == ET_REL ? ": relocatable object (ET_REL), not an executable"
                           : eh->e_type == ET_CORE ? ": core dump (ET_CORE), not an executable"
                                                   : ": ELF type is neither ET_EXEC nor ET_DYN");
        return -ENOEXEC;
    }
    if (eh->e_phentsize != sizeof(Elf64_Phdr))
        return corrupt(err, name, -1, "e_phentsize is not 56");
    if (eh->e_phnum == 0)
        return corrupt(err, name, -1, "no program headers");
    if (eh->e_phnum > KBOX_ELF_MAX_PHNUM)
        return corrupt(err, name, -1, "too many program headers (more than 128)");
    uint64_t end;
    if (!add_ok(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr), &end) || end > filesize)
        return corrupt(err, name, -1, "program headers beyond end of file");
    return 0;
}

int kbox_elf_check_phdrs(const Elf64_Ehdr *eh, const Elf64_Phdr *ph, uint64_t filesize,
                         uint64_t pagesz, const char *name, struct kbox_elf_layout *lay,
                         struct kbox_buf *err)
{
    uint64_t prev_end = 0, end;
    bool entry_ok = false;
    lay->lo = ~0ULL, lay->hi = 0, lay->align = pagesz, lay->nload = 0;
    lay->interp_idx = -1, lay->phdr_vaddr = -1;

    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *p = &ph[i];
        if (p->p_type == PT_INTERP) {
            if (lay->interp_idx >= 0)
                return corrupt(err, name, i, "more than one PT_INTERP");
            if (p->p_filesz < 2 || p->p_filesz > KBOX_INTERP_MAX)
                return corrupt(err, name, i, "PT_INTERP size out of range");
            if (!add_ok(p->p_offset, p->p_filesz, &end) || end > filesize)
                return corrupt(err, name, i, "PT_INTERP beyond end of file");
            lay->interp_idx = i;
        } else if (p->p_type == PT_PHDR) {
            lay->phdr_vaddr = (int64_t)p->p_vaddr;
        }
        if (p->p_type != PT_LOAD)
            continue;
        if (p->p_filesz > p->p_memsz)
            return corrupt(err, name, i, "p_filesz larger than p_memsz");
        if (!add_ok(p->p_offset, p->p_filesz, &end) || end > filesize)
            return corrupt(err, name, i, "segment beyond end of file");
        if (!add_ok(p->p_vaddr, p->p_memsz, &end) || end > KBOX_USER_VA_END)
            return corrupt(err, name, i, "segment beyond the user address space");
        /* mmap can only place file page N at an address congruent to it */
        if ((p->p_vaddr - p->p_offset) & (pagesz - 1))
            return corrupt(err, name, i, "p_vaddr and p_offset not congruent modulo the page size");
        if (p->p_align > 1) {
            if (p->p_align & (p->p_align - 1))
                return corrupt(err, name, i, "p_align is not a power of two");
            if (p->p_align >= KBOX_USER_VA_END)
                return corrupt(err, name, i, "p_align larger than the address space");
            if (p->p_align > lay->align)
                lay->align = p->p_align;
        }
        if (p->p_memsz == 0)
            continue;
        if (lay->nload && p->p_vaddr < prev_end)
            return corrupt(err, name, i, "PT_LOAD segments overlap or are not sorted by address");
        prev_end = end;
        if (lay->nload == 0)
            lay->lo = p->p_vaddr;
        lay->hi = end;
        lay->nload++;
        if (eh->e_entry >= p->p_vaddr && eh->e_entry < end)
            entry_ok = true;
        /* Without PT_PHDR the headers are wherever the segment holding e_phoff maps them
         * (what the kernel computes for AT_PHDR). */
        uint64_t ph_end = eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr);
        if (lay->phdr_vaddr < 0 && p->p_offset <= eh->e_phoff &&
            ph_end <= p->p_offset + p->p_filesz)
            lay->phdr_vaddr = (int64_t)(p->p_vaddr + (eh->e_phoff - p->p_offset));
    }
    if (lay->nload == 0)
        return corrupt(err, name, -1, "no loadable segments");
    if (!entry_ok)
        return corrupt(err, name, -1, "entry point outside the loadable segments");
    return 0;
}

int kbox_elf_check(const void *image, size_t len, struct kbox_elf_info *info,
                   struct kbox_buf *err)
{
    static const char name[] = "ELF image";
    Elf64_Ehdr eh;
    Elf64_Phdr ph[KBOX_ELF_MAX_PHNUM];
    struct kbox_elf_layout lay;
    int r;

    memset(info, 0, sizeof(*info));
    memset(&eh, 0, sizeof(eh));
    memcpy(&eh, image, len < sizeof(eh) ? len : sizeof(eh));
    if ((r = kbox_elf_check_ehdr(&eh, len, name, err)) < 0)
        return r;
    /* Copied out so that an unaligned e_phoff cannot fault on a strict-alignment access. */
    memcpy(ph, (const char *)image + eh.e_phoff, eh.e_phnum * sizeof(Elf64_Phdr));
    if ((r = kbox_elf_check_phdrs(&eh, ph, len, 4096, name, &lay, err)) < 0)
        return r;
    info->type = eh.e_type;
    info->machine = eh.e_machine;
    info->entry = eh.e_entry;
    info->phnum = eh.e_phnum;
    if (lay.interp_idx >= 0) {
        const Elf64_Phdr *ip = &ph[lay.interp_idx];
        const char *s = (const char *)image + ip->p_offset;
        if (s[ip->p_filesz - 1] != 0)
            return corrupt(err, name, lay.interp_idx, "PT_INTERP is not NUL-terminated");
        size_t n = kbox_strnlen(s, ip->p_filesz);
        if (n == 0)
            return corrupt(err, name, lay.interp_idx, "PT_INTERP is empty");
        if (n > sizeof(info->interp) - 1)
            n = sizeof(info->interp) - 1;
        memcpy(info->interp, s, n);
        info->interp[n] = 0;
        info->is_dynamic = 1;
    } else {
        info->is_static_pie = eh.e_type == ET_DYN;
    }
    return 0;
}
