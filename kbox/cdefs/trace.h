int kbox_api_trace_format(char *out, size_t cap, int nr, const uint64_t *args, int64_t ret,
                          int state, int json, int show_pid, size_t strsize, int pid, int tid,
                          int tier);
const char *kbox_api_syscall_name(int nr);
int kbox_api_syscall_number(const char *name);
int kbox_api_syscall_nargs(int nr);
int kbox_api_nr_max(void);
const char *kbox_api_errno_name(int err);
const char *kbox_api_errno_message(int err);
int kbox_api_errno_number(const char *name);
const char *kbox_api_signal_name(int sig);
