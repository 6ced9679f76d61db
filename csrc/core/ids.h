/* The root's ownership record (kbox run --root R --root-id[=FILE]): fakeroot's semantics
 * without LD_PRELOAD, so static programs and every tier get them.
 *
 * The program sees itself as uid/gid 0, and its set*id calls succeed (each process keeps the
 * ids it set; a process that set none has its parent's).  chown and chmod succeed and are
 * recorded per inode, (st_dev, st_ino) -> mode, uid, gid, rdev; mknod of a device creates an
 * empty regular file and records the device.  The stat family shows the record, and for a
 * file without one, uid/gid 0 where the real owner is the invoking user (fakeroot's mapping).
 *
 * The record lives in the run's shared memory (core/shared.h), so every process of the run
 * (forks, threads, exec'd programs) sees the others' changes at once; the top-level launcher
 * loads FILE before the run and writes it back atomically (FILE.tmp, rename) at the end.
 * FILE is fakeroot's save-file format, one line a record:
 *     dev=<hex>,ino=<dec>,mode=<oct>,uid=<dec>,gid=<dec>,nlink=<dec>,rdev=<dec>
 *
 * Only states that differ from the unrecorded view are kept: a `chown 0:0` of the user's own
 * file records nothing, so extracting a root-owned tree costs records only for what is not
 * root's.  A record whose file type no longer matches the inode (the inode was freed outside
 * kbox and reused) is ignored and dropped; the last unlink, rmdir or rename over a file drops
 * its record.
 *
 * Record only (kbox run --root IMAGE without --root-id; the launcher's --root-record=FILE):
 * the record holds an ext4 image's owners, modes and devices for the files kbox materialized
 * from it (kbox/ext4image.py), and the stat family shows them, but the program keeps its own
 * ids and nothing is faked for it: id calls pass, a file without a record shows its real
 * owner, and chown, chmod and mknod are made for real (the kernel decides); a chown or chmod
 * that succeeded carries the file's new real owner or permission bits into its record.
 * unlink, rmdir and rename drop records as above.
 */
#ifndef KBOX_CORE_IDS_H
#define KBOX_CORE_IDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "core/request.h"

#define KBOX_IDS_SLOTS 65536        /* open-addressing table (power of 2) */
#define KBOX_IDS_MAX 49152          /* records it may hold (3/4 full) */
#define KBOX_IDS_PROCS 1024         /* processes that changed their ids */
#define KBOX_IDS_NGROUPS 32         /* supplementary groups a process may set */

struct kbox_ids_rec {
    uint64_t dev, ino;              /* the key; ino == 0 and dev == 0: an empty slot */
    uint64_t rdev;                  /* the kernel's encoding (st_rdev) */
    uint32_t mode, uid, gid, nlink; /* mode with its file type */
};

/* One process's fake ids: real, effective, saved, filesystem. */
struct kbox_ids_cred {
    int32_t pid;                    /* tgid; 0 = a free entry */
    uint32_t uid[4], gid[4];
    uint32_t ngroups;
    uint32_t groups[KBOX_IDS_NGROUPS];
};

struct kbox_ids_table {
    int32_t lock;                   /* lib/lock.h futex word, shared by the run's processes */
    uint32_t count;                 /* records in slot[] */
    uint32_t nprocs;                /* entries in proc[] that were ever used */
    int32_t top_pid;                /* the launcher: where the walk up the parents stops */
    uint32_t real_uid, real_gid;    /* the invoking user (files of theirs show as 0) */
    int32_t full_reported;
    int32_t fake_root;              /* --root-id: fake ids and fakeroot's mapping; 0: record only */
    struct kbox_ids_cred proc[KBOX_IDS_PROCS];
    struct kbox_ids_rec slot[KBOX_IDS_SLOTS];
};

/* Loads FILE into the (empty) table; a missing FILE is an empty record.  fake_root: as
 * --root-id (true) or record only (false).  0, or -1 with a one-line reason in err
 * ("line 3: ..."). */
int kbox_ids_load(struct kbox_ids_table *t, const char *file, bool fake_root, char *err, size_t cap);

/* Writes the table to FILE atomically (FILE.tmp, fsync, rename); 0 or -errno. */
int kbox_ids_save(struct kbox_ids_table *t, const char *file);

/* Whether call `nr` is one the record changes (the dispatcher's calls below, and the file
 * calls): it must not take a tier's passthrough path. */
bool kbox_ids_touches(int nr);

/* The dispatcher's part: answers the id calls (getuid ... setgroups) from the caller's fake
 * ids, and forgets a process's ids at exit_group. */
void kbox_ids_enter(struct kbox_ids_table *t, const struct kbox_req *req, struct kbox_answer *ans);

/* Whether `nr` is a file call kbox_ids_syscall makes (stat, chown, chmod, mknod, unlink,
 * rename families). */
bool kbox_ids_file_call(int nr);

/* Makes file call `nr` with arguments that name host objects of the calling process (paths
 * already resolved in the root view, descriptors of this process), as fake root: chown is
 * recorded and not made, chmod applies what the real user may and records the rest, mknod
 * of a device makes a regular file, stat results are patched.  `mem` reaches the memory its
 * pointer arguments point into.  Returns the result or -errno. */
int64_t kbox_ids_syscall(struct kbox_ids_table *t, const struct kbox_mem *mem, int nr, const uint64_t a[6]);

#endif
