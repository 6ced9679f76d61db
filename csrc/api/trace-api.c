/* Python-facing wrappers of the trace formatter and the name tables (libkbox.so only).
 *
 * kbox_api_trace_format() formats a call made "by this process": pointer arguments are
 * addresses in the caller's memory (cffi buffers in the tests), read through the same
 * struct kbox_mem interface the tiers use, with process_vm_readv on ourselves so that a
 * bad pointer yields -EFAULT and a hex address in the output instead of a crash. */
#include <linux/uio.h>

#include "lib/api.h"
#include "lib/buf.h"
#include "lib/sys.h"
#include "trace/trace.h"

KBOX_API int kbox_api_trace_format(char *out, size_t cap, int nr, const uint64_t *args,
                                   int64_t ret, int state, int json, int show_pid,
                                   size_t strsize, int pid, int tid, int tier);
KBOX_API const char *kbox_api_syscall_name(int nr);
KBOX_API int kbox_api_syscall_number(const char *name);
KBOX_API int kbox_api_syscall_nargs(int nr);
KBOX_API int kbox_api_nr_max(void);
KBOX_API const char *kbox_api_errno_name(int err);
KBOX_API const char *kbox_api_errno_message(int err);
KBOX_API int kbox_api_errno_number(const char *name);
KBOX_API const char *kbox_api_signal_name(int sig);

static long self_read(const struct kbox_mem *m, uint64_t addr, void *buf, size_t len)
{
    struct iovec local = { .iov_base = buf, .iov_len = len };
    struct iovec remote = { .iov_base = (void *)(uintptr_t)addr, .iov_len = len };
    return KSYS6(__NR_process_vm_readv, m->pid, &local, 1, &remote, 1, 0);
}

/* Returns the line's length (it always ends in '\n' when cap >= 2), or -1 if it was cut. */
int kbox_api_trace_format(char *out, size_t cap, int nr, const uint64_t *args, int64_t ret,
                          int state, int json, int show_pid, size_t strsize, int pid, int tid,
                          int tier)
{
    struct kbox_mem mem = { .read = self_read, .pid = (int)kbox_getpid() };
    struct kbox_req req = { .nr = nr, .tier = (enum kbox_tier)tier, .pid = pid, .tid = tid,
                            .mem = &mem };
    struct kbox_trace_opts opts = { .json = json, .show_pid = show_pid, .strsize = strsize };
    struct kbox_buf b;
    for (int i = 0; i < 6; i++)
        req.args[i] = args[i];
    kbox_buf_init(&b, out, cap);
    kbox_trace_format(&b, &opts, &req, ret, (enum kbox_ret_state)state, pid, tid);
    return b.truncated ? -1 : (int)b.len;
}

const char *kbox_api_syscall_name(int nr) { return kbox_syscall_name(nr); }
int kbox_api_syscall_number(const char *name) { return kbox_syscall_number(name); }

int kbox_api_syscall_nargs(int nr)
{
    const struct kbox_sysent *e = kbox_sysent(nr);
    return e && e->name ? e->nargs : -1;
}

int kbox_api_nr_max(void) { return KBOX_NR_MAX; }
const char *kbox_api_errno_name(int err) { return kbox_errno_name(err); }
const char *kbox_api_errno_message(int err) { return kbox_errno_message(err); }
int kbox_api_errno_number(const char *name) { return kbox_errno_number(name); }
const char *kbox_api_signal_name(int sig) { return kbox_signal_name(sig); }
