/* Loader facts for aarch64 (included by the loader sources through -Iarch/$(ARCH)):
 *   ELF machine EM_AARCH64 (183); user address space ends at 1 << 48 (48-bit VA, Debian);
 *   Linux's ELF_ET_DYN_BASE with ASLR off puts a PIE at 0xaaaaaaaa0000 (64 KiB aligned, so
 *   binaries linked for 64 KiB pages keep their p_align).
 *   Entry: sp -> argc, x0 = atexit function (0), see launch/entry.S.
 */
#ifndef KBOX_ARCH_AARCH64_LOADER_H
#define KBOX_ARCH_AARCH64_LOADER_H

#define KBOX_ELF_MACHINE 183            /* EM_AARCH64 */
#define KBOX_PIE_HINT 0xaaaaaaaa0000ULL
#define KBOX_USER_VA_END (1ULL << 48)

#endif
