/* Loader facts for x86_64 (included by the loader sources through -Iarch/$(ARCH)):
 *   ELF machine EM_X86_64 (62); user address space ends at 1 << 47 (4-level paging);
 *   Linux puts a PIE at ELF_ET_DYN_BASE = 2/3 of TASK_SIZE, which with ASLR off is
 *   0x555555554000 -- we hint the same place so guest addresses look familiar.
 *   Entry: rsp -> argc, rdx = atexit function (0), see launch/entry.S.
 */
#ifndef KBOX_ARCH_X86_64_LOADER_H
#define KBOX_ARCH_X86_64_LOADER_H

#define KBOX_ELF_MACHINE 62             /* EM_X86_64 */
#define KBOX_PIE_HINT 0x555555554000ULL
#define KBOX_USER_VA_END (1ULL << 47)

#endif
