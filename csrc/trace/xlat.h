/* Value-to-name tables for the trace decoder (trace/names.c), strace's "xlat" idea.
 * Values come from the uapi headers of the build arch, so flag bits that differ between
 * x86_64 and arm64 (O_DIRECTORY, O_LARGEFILE, MAP_32BIT, PROT_BTI ...) are right on each. */
#ifndef KBOX_TRACE_XLAT_H
#define KBOX_TRACE_XLAT_H

#include <stdint.h>
#include "lib/buf.h"

struct kbox_xlat {
    uint64_t val;
    const char *name;
};

/* Every table ends with { 0, NULL }. */
extern const struct kbox_xlat kbox_xl_open_flags[], kbox_xl_fd_flags[], kbox_xl_prot[],
    kbox_xl_map_type[], kbox_xl_map_flags[], kbox_xl_clone_flags[], kbox_xl_at_flags[],
    kbox_xl_access[], kbox_xl_fcntl_cmd[], kbox_xl_whence[], kbox_xl_af[], kbox_xl_sock_type[],
    kbox_xl_sock_flags[], kbox_xl_wait_options[], kbox_xl_ioctl[], kbox_xl_futex_cmd[],
    kbox_xl_prctl[], kbox_xl_arch_prctl[], kbox_xl_rlimit[], kbox_xl_clock[], kbox_xl_msg_flags[],
    kbox_xl_epoll_op[], kbox_xl_madv[], kbox_xl_poll_events[], kbox_xl_sigprocmask_how[],
    kbox_xl_sa_flags[], kbox_xl_file_type[];

/* The name of exactly `v`, or NULL. */
const char *kbox_xlat_name(const struct kbox_xlat *t, uint64_t v);
/* Flag set in table order, "A|B", unknown bits appended as "|0x..."; "0" for 0.  An entry
 * with several bits matches only when all are set (O_TMPFILE, O_SYNC). */
void kbox_xlat_flags(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v);

#endif
