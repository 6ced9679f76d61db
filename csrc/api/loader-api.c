/* Python-facing wrappers of the loader (libkbox.so only): plain char buffers instead of
 * struct kbox_buf, so cffi callers need no knowledge of the buffer type. */
#include "lib/api.h"
#include "lib/buf.h"
#include "loader/loader.h"

KBOX_API int kbox_api_elf_check(const void *image, size_t len, struct kbox_elf_info *info,
                                char *err, size_t errcap);
KBOX_API int kbox_api_load_program(const char *path, char *const argv[], char *const envp[],
                                   const uint64_t *auxv, struct kbox_loaded *out, char *err,
                                   size_t errcap);

int kbox_api_elf_check(const void *image, size_t len, struct kbox_elf_info *info, char *err,
                       size_t errcap)
{
    struct kbox_buf b;
    kbox_buf_init(&b, err, errcap);
    return kbox_elf_check(image, len, info, &b);
}

/* Maps the program into the calling process and builds its stack without jumping: tests
 * run it in a throwaway child and inspect the result. */
int kbox_api_load_program(const char *path, char *const argv[], char *const envp[],
                          const uint64_t *auxv, struct kbox_loaded *out, char *err,
                          size_t errcap)
{
    struct kbox_buf b;
    kbox_buf_init(&b, err, errcap);
    return kbox_load_program(path, argv, envp, auxv, out, &b);
}
