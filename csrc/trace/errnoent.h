/* The errno table generated into trace/errnoent.c by scripts/gen-sysent.py. */
#ifndef KBOX_TRACE_ERRNOENT_H
#define KBOX_TRACE_ERRNOENT_H

#include <stddef.h>

struct kbox_errnoent {
    const char *name;      /* NULL for unassigned numbers */
    const char *message;   /* glibc's strerror() text */
};

extern const struct kbox_errnoent kbox_errnoent[];
extern const int kbox_errnoent_count;

/* Kernel-internal restart codes (512...), which are not in the uapi headers. */
struct kbox_kerrnoent {
    int nr;
    const char *name, *message;
};

extern const struct kbox_kerrnoent kbox_kerrnoent[];

#endif
