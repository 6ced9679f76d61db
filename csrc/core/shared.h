/* State shared by every process of one kbox run: --stats counters, the --virtual-pid
 * table and the --root-id record (its pages are touched only when it is used).  It lives in a memfd mapped MAP_SHARED: fork children inherit the mapping, and
 * the in-process tiers' execve re-launch passes the fd on (--shared-fd), so counts and pid
 * numbers survive exec and are summed once by the top-level launcher at the end. */
#ifndef KBOX_CORE_SHARED_H
#define KBOX_CORE_SHARED_H

#include <stdint.h>
#include "core/ids.h"
#include "core/request.h"
#include "trace/trace.h"

#define KBOX_SHARED_MAGIC 0x6b626f78u   /* "kbox" */
#define KBOX_VPID_MAX 32768             /* virtual pids handed out per run */
#define KBOX_VPID_HASH 65536            /* real -> virtual open-addressing table (power of 2) */

struct kbox_vpid_slot {
    int32_t real;   /* 0 = empty */
    int32_t virt;
};

struct kbox_shared {
    uint32_t magic;
    uint32_t size;
    int32_t next_vpid;                   /* last virtual pid handed out */
    int32_t listener_fd;                 /* seccomp tier: the child's listener fd number */
    int32_t sync_wakeup;                 /* seccomp tier: SYNC_WAKE_UP was accepted */
    int32_t pad;
    uint64_t counts[KBOX_NR_MAX][KBOX_PATH_COUNT];
    int32_t virt_to_real[KBOX_VPID_MAX];
    struct kbox_vpid_slot real_to_virt[KBOX_VPID_HASH];
    struct kbox_ids_table ids;           /* --root-id: the ownership record, processes' ids */
};

/* Creates the memfd and maps it; returns the fd (>= 0) or -errno. */
int kbox_shared_create(struct kbox_shared **out);
/* Maps an inherited fd; -errno if it is not a kbox shared region. */
int kbox_shared_attach(int fd, struct kbox_shared **out);

/* Virtual pid of `real`, or 0 if it has none. */
int kbox_vpid_lookup(struct kbox_shared *s, int real);
/* Virtual pid of `real`, handing out the next number if it has none yet (call only for ids
 * known to belong to the run: the caller itself, or a clone result). */
int kbox_vpid_assign(struct kbox_shared *s, int real);
/* Real pid for a virtual one, or 0. */
int kbox_vpid_real(struct kbox_shared *s, int virt);

#endif
