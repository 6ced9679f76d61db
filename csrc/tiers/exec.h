/* execve/execveat in the in-process runtime (exec.c). */
#ifndef KBOX_TIERS_EXEC_H
#define KBOX_TIERS_EXEC_H

#include "core/request.h"

/* Runs the program's execve(at) with the dispatcher's arguments through the launcher; returns
 * only on failure (-errno, the kernel's choice for the same call). */
int64_t kbox_run_execve(const struct kbox_req *req, const uint64_t *args);

#endif
