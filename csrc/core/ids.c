/* The root's ownership record: see core/ids.h for what the program sees.
 *
 * Everything here runs in whichever process serves the call (the program's own in the
 * in-process tiers, the supervisor in the seccomp tier), on the table in the run's shared
 * memory, under its one futex lock.  Only raw syscalls (lib/sys.h): this code runs in the
 * SIGSYS handler of the in-process tiers.
 */
#include "core/ids.h"
#include "arch.h"
#include "lib/buf.h"
#include "lib/hash.h"
#include "lib/lock.h"
#include "lib/proc.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <asm/stat.h>
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/mman.h>
#include <linux/stat.h>

#ifndef __NR_fchmodat2
#define __NR_fchmodat2 452
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#define NONE32 0xffffffffu /* chown's "leave it" and set*id's "leave it" */

/* ---- records ------------------------------------------------------------------------------ */

/* What the program sees of an inode: the four fields a record replaces. */
struct look {
    uint32_t mode, uid, gid;
    uint64_t rdev;
};

static uint32_t home_of(uint64_t dev, uint64_t ino)
{
    return kbox_hash_slot(ino ^ (dev * 0x100000001b3ULL), KBOX_IDS_SLOTS);
}

static bool empty(const struct kbox_ids_rec *r) { return r->dev == 0 && r->ino == 0; }

static struct kbox_ids_rec *find(struct kbox_ids_table *t, uint64_t dev, uint64_t ino)
{
    for (uint32_t i = home_of(dev, ino), n = 0; n < KBOX_IDS_SLOTS; i = (i + 1) & (KBOX_IDS_SLOTS - 1), n++) {
        struct kbox_ids_rec *r = &t->slot[i];
        if (empty(r))
            return NULL;
        if (r->dev == dev && r->ino == ino)
            return r;
    }
    return NULL;
}

/* Linear probing's deletion: later records of the same run move back into the hole, so a
 * lookup never stops early at it (no tombstones to fill the table). */
static void drop(struct kbox_ids_table *t, struct kbox_ids_rec *r)
{
    uint32_t i = (uint32_t)(r - t->slot), j = i;
    for (;;) {
        j = (j + 1) & (KBOX_IDS_SLOTS - 1);
        struct kbox_ids_rec *s = &t->slot[j];
        if (empty(s))
            break;
        uint32_t k = home_of(s->dev, s->ino);
        bool movable = i <= j ? (k <= i || k > j) : (k <= i && k > j);
        if (movable) {
            t->slot[i] = *s;
            i = j;
        }
    }
    memset(&t->slot[i], 0, sizeof(t->slot[i]));
    t->count--;
}

static int put(struct kbox_ids_table *t, const struct kbox_ids_rec *rec)
{
    struct kbox_ids_rec *r = find(t, rec->dev, rec->ino);
    if (!r) {
        if (t->count >= KBOX_IDS_MAX) {
            if (!t->full_reported) {
                t->full_reported = 1;
                static const char msg[] = "kbox: --root-id: the ownership record is full (49152 files "
                                          "whose owner or mode differ); further chown/chmod fail with ENOSPC\n";
                kbox_write(2, msg, sizeof(msg) - 1);
            }
            return -ENOSPC;
        }
        for (uint32_t i = home_of(rec->dev, rec->ino);; i = (i + 1) & (KBOX_IDS_SLOTS - 1)) {
            if (empty(&t->slot[i])) {
                r = &t->slot[i];
                break;
            }
        }
        t->count++;
    }
    *r = *rec;
    return 0;
}

static uint64_t encode_dev(uint32_t major, uint32_t minor)
{
    /* The kernel's new_encode_dev: what struct stat's st_dev and st_rdev hold. */
    return (minor & 0xff) | ((uint64_t)major << 8) | ((uint64_t)(minor & ~0xffu) << 12);
}

static uint32_t dev_major(uint64_t d) { return (uint32_t)((d & 0xfff00) >> 8); }
static uint32_t dev_minor(uint64_t d) { return (uint32_t)((d & 0xff) | ((d >> 12) & 0xfff00)); }

/* A file without a record: fakeroot's mapping, the invoking user's files are root's (record
 * only: as it is). */
static struct look unrecorded(const struct kbox_ids_table *t, uint32_t mode, uint32_t uid, uint32_t gid, uint64_t rdev)
{
    struct look l = { mode, uid, gid, rdev };
    if (t->fake_root) {
        l.uid = uid == t->real_uid ? 0 : uid;
        l.gid = gid == t->real_gid ? 0 : gid;
    }
    return l;
}

/* A record still describes the inode if the type matches, or it is a device kbox made as a
 * regular file; otherwise the inode was freed and reused behind kbox's back. */
static bool still_valid(const struct kbox_ids_rec *r, uint32_t real_mode)
{
    uint32_t rt = r->mode & S_IFMT, ft = real_mode & S_IFMT;
    return rt == ft || (ft == S_IFREG && (rt == S_IFCHR || rt == S_IFBLK));
}

/* The program's view of an inode (under the lock). */
static struct look look_up(struct kbox_ids_table *t, uint64_t dev, uint64_t ino, uint32_t mode, uint32_t uid,
                           uint32_t gid, uint64_t rdev)
{
    struct kbox_ids_rec *r = find(t, dev, ino);
    if (r && still_valid(r, mode)) {
        struct look l = { r->mode, r->uid, r->gid, r->rdev };
        return l;
    }
    if (r)
        drop(t, r);
    return unrecorded(t, mode, uid, gid, rdev);
}

static struct look look_stat(struct kbox_ids_table *t, const struct stat *st)
{
    return look_up(t, st->st_dev, st->st_ino, st->st_mode, st->st_uid, st->st_gid, st->st_rdev);
}

/* Keeps `l` as the view of `st`'s inode: a record only where it differs from what the
 * inode shows without one (under the lock). */
static int keep(struct kbox_ids_table *t, const struct stat *st, const struct look *l)
{
    struct look u = unrecorded(t, st->st_mode, st->st_uid, st->st_gid, st->st_rdev);
    if (u.mode == l->mode && u.uid == l->uid && u.gid == l->gid && u.rdev == l->rdev) {
        struct kbox_ids_rec *r = find(t, st->st_dev, st->st_ino);
        if (r)
            drop(t, r);
        return 0;
    }
    struct kbox_ids_rec rec = { st->st_dev, st->st_ino, l->rdev, l->mode, l->uid, l->gid, (uint32_t)st->st_nlink };
    return put(t, &rec);
}

static void forget(struct kbox_ids_table *t, uint64_t dev, uint64_t ino)
{
    kbox_lock(&t->lock);
    struct kbox_ids_rec *r = find(t, dev, ino);
    if (r)
        drop(t, r);
    kbox_unlock(&t->lock);
}

/* ---- the file calls ----------------------------------------------------------------------- */

static long stat_at(long dirfd, uint64_t path, int flags, struct stat *st)
{
    return KSYS4(__NR_newfstatat, dirfd, path, st, flags);
}

static void patch_stat(struct kbox_ids_table *t, const struct kbox_mem *mem, uint64_t addr)
{
    struct stat st;
    if (mem->read(mem, addr, &st, sizeof(st)) != (long)sizeof(st))
        return;
    kbox_lock(&t->lock);
    struct look l = look_stat(t, &st);
    kbox_unlock(&t->lock);
    if (l.mode == st.st_mode && l.uid == st.st_uid && l.gid == st.st_gid && l.rdev == st.st_rdev)
        return;
    st.st_mode = l.mode;
    st.st_uid = l.uid;
    st.st_gid = l.gid;
    st.st_rdev = l.rdev;
    mem->write(mem, addr, &st, sizeof(st));
}

static void patch_statx(struct kbox_ids_table *t, const struct kbox_mem *mem, uint64_t addr)
{
    struct statx sx;
    if (mem->read(mem, addr, &sx, sizeof(sx)) != (long)sizeof(sx) || !(sx.stx_mask & STATX_INO))
        return;
    uint64_t dev = encode_dev(sx.stx_dev_major, sx.stx_dev_minor);
    uint64_t rdev = encode_dev(sx.stx_rdev_major, sx.stx_rdev_minor);
    kbox_lock(&t->lock);
    struct look l = look_up(t, dev, sx.stx_ino, sx.stx_mode, sx.stx_uid, sx.stx_gid, rdev);
    kbox_unlock(&t->lock);
    if (l.mode == sx.stx_mode && l.uid == sx.stx_uid && l.gid == sx.stx_gid && l.rdev == rdev)
        return;
    sx.stx_mode = (uint16_t)l.mode;
    sx.stx_uid = l.uid;
    sx.stx_gid = l.gid;
    sx.stx_rdev_major = dev_major(l.rdev);
    sx.stx_rdev_minor = dev_minor(l.rdev);
    mem->write(mem, addr, &sx, sizeof(sx));
}

/* chown as root: recorded, never made (the real user could not give a file away). */
static int64_t do_chown(struct kbox_ids_table *t, long dirfd, uint64_t path, int flags, uint32_t uid, uint32_t gid)
{
    struct stat st;
    long r = stat_at(dirfd, path, flags & (AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH), &st);
    if (r < 0)
        return r;
    kbox_lock(&t->lock);
    struct look l = look_stat(t, &st);
    if (uid != NONE32)
        l.uid = uid;
    if (gid != NONE32)
        l.gid = gid;
    /* As the kernel does for root too (since 2.2.13): a chown of a non-directory clears
     * set-user-ID, and set-group-ID where the group may execute.  tar sets modes after. */
    if ((uid != NONE32 || gid != NONE32) && (l.mode & S_IFMT) != S_IFDIR && (l.mode & S_IFMT) != S_IFLNK) {
        l.mode &= ~(uint32_t)S_ISUID;
        if (l.mode & S_IXGRP)
            l.mode &= ~(uint32_t)S_ISGID;
    }
    r = keep(t, &st, &l);
    kbox_unlock(&t->lock);
    return r;
}

/* chmod as root: the real file gets the permission bits with the owner's read/write
 * (search for directories) kept, so the real user can go on using it, as fakeroot does;
 * the full mode, set-id and sticky bits included, is recorded.  A file the real user does
 * not own keeps its real mode (root could change it; the record says it did). */
static int64_t do_chmod(struct kbox_ids_table *t, int nr, const uint64_t *a, long dirfd, uint64_t path,
                        int flags, uint32_t mode)
{
    struct stat st;
    long r = stat_at(dirfd, path, flags, &st);
    if (r < 0)
        return r;
    if ((st.st_mode & S_IFMT) == S_IFLNK)
        return -EOPNOTSUPP; /* fchmodat2(AT_SYMLINK_NOFOLLOW) of a symlink, as the kernel says */
    uint32_t real = (mode & 0777) | ((st.st_mode & S_IFMT) == S_IFDIR ? 0700 : 0600);
    if (nr == __NR_fchmod)
        r = KSYS2(__NR_fchmod, a[0], real);
    else if (nr == __NR_fchmodat2)
        r = KSYS4(__NR_fchmodat2, dirfd, path, real, flags);
    else
        r = KSYS3(__NR_fchmodat, dirfd, path, real);
    if (r < 0 && r != -EPERM)
        return r;
    if (r == 0 && stat_at(dirfd, path, flags, &st) < 0)
        return 0;
    kbox_lock(&t->lock);
    struct look l = look_stat(t, &st);
    l.mode = (l.mode & S_IFMT) | (mode & 07777);
    r = keep(t, &st, &l);
    kbox_unlock(&t->lock);
    return r;
}

/* mknod as root: regular files, FIFOs and sockets are made as they are; a device node
 * becomes an empty regular file recorded as the device (fakeroot's way). */
static int64_t do_mknod(struct kbox_ids_table *t, long dirfd, uint64_t path, uint32_t mode, uint64_t dev)
{
    uint32_t type = mode & S_IFMT;
    bool device = type == S_IFCHR || type == S_IFBLK;
    long r = KSYS4(__NR_mknodat, dirfd, path, device ? S_IFREG | (mode & 07777) : mode, device ? 0 : dev);
    if (r < 0)
        return r;
    struct stat st;
    if (stat_at(dirfd, path, AT_SYMLINK_NOFOLLOW, &st) < 0)
        return 0;
    if (!device) {
        forget(t, st.st_dev, st.st_ino); /* a stale record of a reused inode */
        return 0;
    }
    struct look l = unrecorded(t, st.st_mode, st.st_uid, st.st_gid, 0);
    l.mode = type | (st.st_mode & 07777); /* the umask applied, as to root */
    l.rdev = (uint32_t)dev;
    kbox_lock(&t->lock);
    r = keep(t, &st, &l);
    kbox_unlock(&t->lock);
    if (r < 0)
        KSYS3(__NR_unlinkat, dirfd, path, 0);
    return r;
}

/* Record only: chown or chmod made for real; when it succeeded, the record (if the file has
 * one) takes the file's new real owner or permission bits, the rest of it staying. */
static int64_t do_real_change(struct kbox_ids_table *t, int nr, const uint64_t *a, long dirfd, uint64_t path,
                              int flags, bool owner)
{
    int64_t r = kbox_syscall6(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], (long)a[5]);
    struct stat st;
    if (r < 0 || !__atomic_load_n(&t->count, __ATOMIC_RELAXED) || stat_at(dirfd, path, flags, &st) < 0)
        return r;
    kbox_lock(&t->lock);
    struct kbox_ids_rec *rec = find(t, st.st_dev, st.st_ino);
    if (rec && still_valid(rec, st.st_mode)) {
        if (owner) {
            /* As the kernel just did to the real file: set-user-ID goes, and set-group-ID
             * where the group may execute. */
            rec->uid = st.st_uid;
            rec->gid = st.st_gid;
            if ((rec->mode & S_IFMT) != S_IFDIR && (rec->mode & S_IFMT) != S_IFLNK) {
                rec->mode &= ~(uint32_t)S_ISUID;
                if (rec->mode & S_IXGRP)
                    rec->mode &= ~(uint32_t)S_ISGID;
            }
        } else {
            rec->mode = (rec->mode & S_IFMT) | (st.st_mode & 07777);
        }
    }
    kbox_unlock(&t->lock);
    return r;
}

/* unlink, rmdir and rename over a file: the last link's record goes with it. */
static int64_t do_remove(struct kbox_ids_table *t, int nr, const uint64_t *a, long dirfd, uint64_t path,
                         long odirfd, uint64_t opath)
{
    struct stat st, ost;
    bool had = __atomic_load_n(&t->count, __ATOMIC_RELAXED) && stat_at(dirfd, path, AT_SYMLINK_NOFOLLOW, &st) == 0;
    if (had && opath && (stat_at(odirfd, opath, AT_SYMLINK_NOFOLLOW, &ost) < 0 ||
                         (ost.st_dev == st.st_dev && ost.st_ino == st.st_ino)))
        had = false;
    int64_t r = kbox_syscall6(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], (long)a[5]);
    if (r == 0 && had && ((st.st_mode & S_IFMT) == S_IFDIR || st.st_nlink <= 1))
        forget(t, st.st_dev, st.st_ino);
    return r;
}

bool kbox_ids_file_call(int nr)
{
    switch (nr) {
#ifdef __NR_stat
    case __NR_stat:
    case __NR_lstat:
#endif
#ifdef __NR_chown
    case __NR_chown:
    case __NR_lchown:
    case __NR_chmod:
    case __NR_mknod:
    case __NR_unlink:
    case __NR_rmdir:
    case __NR_rename:
#endif
#ifdef __NR_renameat
    case __NR_renameat:
#endif
    case __NR_fstat:
    case __NR_newfstatat:
    case __NR_statx:
    case __NR_fchown:
    case __NR_fchownat:
    case __NR_fchmod:
    case __NR_fchmodat:
    case __NR_fchmodat2:
    case __NR_mknodat:
    case __NR_unlinkat:
    case __NR_renameat2:
        return true;
    default:
        return false;
    }
}

int64_t kbox_ids_syscall(struct kbox_ids_table *t, const struct kbox_mem *mem, int nr, const uint64_t a[6])
{
    uint64_t la[6];
    for (int i = 0; i < 6; i++)
        la[i] = a[i];
    int64_t r;
    if (!t->fake_root) {
        switch (nr) {
#ifdef __NR_chown
        case __NR_chown:
        case __NR_chmod:
            return do_real_change(t, nr, a, AT_FDCWD, a[0], 0, nr == __NR_chown);
        case __NR_lchown:
            return do_real_change(t, nr, a, AT_FDCWD, a[0], AT_SYMLINK_NOFOLLOW, true);
        case __NR_mknod:
#endif
        case __NR_mknodat:
            return kbox_syscall6(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], 0, 0);
        case __NR_fchown:
        case __NR_fchmod:
            return do_real_change(t, nr, a, (long)a[0], (uint64_t)(uintptr_t)"", AT_EMPTY_PATH, nr == __NR_fchown);
        case __NR_fchownat:
            return do_real_change(t, nr, a, (long)a[0], a[1], (int)a[4] & (AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH), true);
        case __NR_fchmodat:
            return do_real_change(t, nr, a, (long)a[0], a[1], 0, false);
        case __NR_fchmodat2:
            return do_real_change(t, nr, a, (long)a[0], a[1], (int)a[3] & (AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH), false);
        default:
            break; /* the stat family and the removals, as below */
        }
    }
    switch (nr) {
#ifdef __NR_stat
    case __NR_stat:
    case __NR_lstat:
#endif
    case __NR_fstat:
        r = kbox_syscall6(nr, (long)a[0], (long)a[1], 0, 0, 0, 0);
        if (r == 0)
            patch_stat(t, mem, a[1]);
        return r;
    case __NR_newfstatat:
        r = kbox_syscall6(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], 0, 0);
        if (r == 0)
            patch_stat(t, mem, a[2]);
        return r;
    case __NR_statx:
        /* The inode number is the record's key: asked for whatever the program asked. */
        la[3] |= STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_INO;
        r = kbox_syscall6(nr, (long)la[0], (long)la[1], (long)la[2], (long)la[3], (long)la[4], 0);
        if (r == 0)
            patch_statx(t, mem, a[4]);
        return r;
#ifdef __NR_chown
    case __NR_chown:
        return do_chown(t, AT_FDCWD, a[0], 0, (uint32_t)a[1], (uint32_t)a[2]);
    case __NR_lchown:
        return do_chown(t, AT_FDCWD, a[0], AT_SYMLINK_NOFOLLOW, (uint32_t)a[1], (uint32_t)a[2]);
    case __NR_chmod:
        return do_chmod(t, nr, a, AT_FDCWD, a[0], 0, (uint32_t)a[1]);
    case __NR_mknod:
        return do_mknod(t, AT_FDCWD, a[0], (uint32_t)a[1], a[2]);
    case __NR_unlink:
    case __NR_rmdir:
        return do_remove(t, nr, a, AT_FDCWD, a[0], 0, 0);
    case __NR_rename:
        return do_remove(t, nr, a, AT_FDCWD, a[1], AT_FDCWD, a[0]);
#endif
    case __NR_fchown:
        return do_chown(t, (long)a[0], (uint64_t)(uintptr_t)"", AT_EMPTY_PATH, (uint32_t)a[1], (uint32_t)a[2]);
    case __NR_fchownat:
        return do_chown(t, (long)a[0], a[1], (int)a[4], (uint32_t)a[2], (uint32_t)a[3]);
    case __NR_fchmod:
        return do_chmod(t, nr, a, (long)a[0], (uint64_t)(uintptr_t)"", AT_EMPTY_PATH, (uint32_t)a[1]);
    case __NR_fchmodat:
        return do_chmod(t, nr, a, (long)a[0], a[1], 0, (uint32_t)a[2]);
    case __NR_fchmodat2:
        return do_chmod(t, nr, a, (long)a[0], a[1], (int)a[3] & (AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH), (uint32_t)a[2]);
    case __NR_mknodat:
        return do_mknod(t, (long)a[0], a[1], (uint32_t)a[2], a[3]);
    case __NR_unlinkat:
        return do_remove(t, nr, a, (long)a[0], a[1], 0, 0);
#ifdef __NR_renameat
    case __NR_renameat:
        return do_remove(t, nr, a, (long)a[2], a[3], (long)a[0], a[1]);
#endif
    case __NR_renameat2:
        if (a[4] & RENAME_EXCHANGE)
            break; /* both names stay */
        return do_remove(t, nr, a, (long)a[2], a[3], (long)a[0], a[1]);
    default:
        break;
    }
    return kbox_syscall6(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], (long)a[5]);
}

/* ---- the processes' ids ------------------------------------------------------------------- */

/* Tgid and parent of task `tid`; 0 or -errno. */
static int proc_status(int tid, int *tgid, int *ppid)
{
    long g, p;
    long r = kbox_proc_status_field(tid, "Tgid:", 10, &g);
    if (r == 0)
        r = kbox_proc_status_field(tid, "PPid:", 10, &p);
    if (r < 0)
        return (int)r;
    *tgid = (int)g;
    *ppid = (int)p;
    return g > 0 ? 0 : -EIO;
}

static struct kbox_ids_cred *cred_slot(struct kbox_ids_table *t, int pid)
{
    uint32_t n = __atomic_load_n(&t->nprocs, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++)
        if (t->proc[i].pid == pid)
            return &t->proc[i];
    return NULL;
}

/* The caller's fake ids into *c, and its tgid: its own entry, or the nearest ancestor's
 * inside the run (a process that never set ids has its parent's), or root's. */
static void cred_of(struct kbox_ids_table *t, int tid, struct kbox_ids_cred *c, int *tgid)
{
    memset(c, 0, sizeof(*c));
    c->ngroups = 1;
    int pid, ppid;
    if (proc_status(tid, &pid, &ppid) < 0)
        pid = tid, ppid = 0;
    *tgid = c->pid = pid;
    if (!__atomic_load_n(&t->nprocs, __ATOMIC_ACQUIRE))
        return;
    for (int depth = 0; depth < 64 && pid > 1; depth++) {
        kbox_lock(&t->lock);
        struct kbox_ids_cred *e = cred_slot(t, pid);
        if (e)
            *c = *e;
        kbox_unlock(&t->lock);
        if (e || pid == t->top_pid || ppid == t->top_pid || ppid <= 1)
            break;
        pid = ppid;
        int g;
        if (proc_status(pid, &g, &ppid) < 0)
            break;
    }
    c->pid = *tgid;
}

static int64_t cred_set(struct kbox_ids_table *t, const struct kbox_ids_cred *c)
{
    kbox_lock(&t->lock);
    struct kbox_ids_cred *e = cred_slot(t, c->pid);
    for (uint32_t i = 0; !e && i < t->nprocs; i++)
        if (t->proc[i].pid == 0)
            e = &t->proc[i];
    if (!e && t->nprocs < KBOX_IDS_PROCS)
        e = &t->proc[t->nprocs];
    if (e) {
        *e = *c;
        if (e == &t->proc[t->nprocs])
            __atomic_store_n(&t->nprocs, t->nprocs + 1, __ATOMIC_RELEASE);
    }
    kbox_unlock(&t->lock);
    return e ? 0 : -EAGAIN; /* as setuid reports running out of processes (RLIMIT_NPROC) */
}

bool kbox_ids_touches(int nr)
{
    switch (nr) {
    case __NR_getuid:
    case __NR_geteuid:
    case __NR_getgid:
    case __NR_getegid:
    case __NR_getresuid:
    case __NR_getresgid:
    case __NR_setuid:
    case __NR_setgid:
    case __NR_setreuid:
    case __NR_setregid:
    case __NR_setresuid:
    case __NR_setresgid:
    case __NR_setfsuid:
    case __NR_setfsgid:
    case __NR_getgroups:
    case __NR_setgroups:
    case __NR_exit_group:
        return true;
    default:
        return kbox_ids_file_call(nr);
    }
}

/* setuid and friends for a process whose ids are `ids` (real, effective, saved, fs), with
 * fakeroot's leniency: every change succeeds. */
static void set_ids(uint32_t *ids, int nr_kind, const uint64_t *a)
{
    uint32_t x = (uint32_t)a[0], y = (uint32_t)a[1], z = (uint32_t)a[2];
    switch (nr_kind) {
    case 0: /* setuid: root sets all, others their effective id */
        if (ids[1] == 0)
            ids[0] = ids[2] = x;
        ids[1] = ids[3] = x;
        break;
    case 1: /* setreuid */
        if (x != NONE32)
            ids[0] = x;
        if (y != NONE32)
            ids[1] = y;
        if (x != NONE32 || (y != NONE32 && y != ids[0]))
            ids[2] = ids[1];
        ids[3] = ids[1];
        break;
    case 2: /* setresuid */
        if (x != NONE32)
            ids[0] = x;
        if (y != NONE32)
            ids[1] = y;
        if (z != NONE32)
            ids[2] = z;
        ids[3] = ids[1];
        break;
    default: /* setfsuid */
        if (x != NONE32)
            ids[3] = x;
        break;
    }
}

static int64_t put_ids(const struct kbox_req *req, const uint32_t *ids)
{
    for (int i = 0; i < 3; i++)
        if (req->mem->write(req->mem, req->args[i], &ids[i], 4) != 4)
            return -EFAULT;
    return 0;
}

void kbox_ids_enter(struct kbox_ids_table *t, const struct kbox_req *req, struct kbox_answer *ans)
{
    int nr = req->nr;
    if (!kbox_ids_touches(nr) || kbox_ids_file_call(nr))
        return;
    /* The seccomp supervisor is told the caller's tid; the in-process tiers are the caller. */
    int tid = req->tier == KBOX_TIER_SECCOMP ? req->tid : (int)kbox_gettid();
    struct kbox_ids_cred c;
    int tgid;
    if (nr == __NR_exit_group) {
        if (__atomic_load_n(&t->nprocs, __ATOMIC_ACQUIRE)) {
            int pid, ppid;
            if (proc_status(tid, &pid, &ppid) == 0) {
                kbox_lock(&t->lock);
                struct kbox_ids_cred *e = cred_slot(t, pid);
                if (e)
                    e->pid = 0;
                kbox_unlock(&t->lock);
            }
        }
        return; /* and the call runs */
    }
    cred_of(t, tid, &c, &tgid);
    int64_t r = 0;
    bool set = false;
    switch (nr) {
    case __NR_getuid: r = c.uid[0]; break;
    case __NR_geteuid: r = c.uid[1]; break;
    case __NR_getgid: r = c.gid[0]; break;
    case __NR_getegid: r = c.gid[1]; break;
    case __NR_getresuid: r = put_ids(req, c.uid); break;
    case __NR_getresgid: r = put_ids(req, c.gid); break;
    case __NR_setuid: set_ids(c.uid, 0, req->args); set = true; break;
    case __NR_setgid: set_ids(c.gid, 0, req->args); set = true; break;
    case __NR_setreuid: set_ids(c.uid, 1, req->args); set = true; break;
    case __NR_setregid: set_ids(c.gid, 1, req->args); set = true; break;
    case __NR_setresuid: set_ids(c.uid, 2, req->args); set = true; break;
    case __NR_setresgid: set_ids(c.gid, 2, req->args); set = true; break;
    case __NR_setfsuid:
        r = c.uid[3]; /* the old one, as the kernel returns */
        set_ids(c.uid, 3, req->args);
        set = true;
        break;
    case __NR_setfsgid:
        r = c.gid[3];
        set_ids(c.gid, 3, req->args);
        set = true;
        break;
    case __NR_getgroups: {
        int size = (int)req->args[0];
        r = c.ngroups;
        if (size < 0)
            r = -EINVAL;
        else if (size > 0 && (uint32_t)size < c.ngroups)
            r = -EINVAL;
        else if (size > 0 && req->mem->write(req->mem, req->args[1], c.groups, 4 * c.ngroups) != (long)(4 * c.ngroups))
            r = -EFAULT;
        break;
    }
    case __NR_setgroups: {
        int64_t n = (int)req->args[0];
        if (n < 0 || n > KBOX_IDS_NGROUPS) {
            r = -EINVAL; /* kbox keeps KBOX_IDS_NGROUPS of them (the kernel: 65536) */
            break;
        }
        if (n && req->mem->read(req->mem, req->args[1], c.groups, 4 * (size_t)n) != 4 * n) {
            r = -EFAULT;
            break;
        }
        c.ngroups = (uint32_t)n;
        set = true;
        break;
    }
    default:
        return;
    }
    if (set) {
        int64_t s = cred_set(t, &c);
        if (s < 0)
            r = s;
    }
    ans->verdict = r < 0 ? KBOX_FAIL : KBOX_RETURN;
    ans->value = r < 0 ? -r : r;
}

/* ---- the record file ---------------------------------------------------------------------- */

/* Parses "name=<digits in base>" at *p, then the separator `end`. */
static bool field(const char **p, const char *lim, const char *name, int base, char end, uint64_t *out)
{
    size_t n = kbox_strlen(name);
    if ((size_t)(lim - *p) < n + 2 || kbox_strncmp(*p, name, n) != 0 || (*p)[n] != '=')
        return false;
    const char *s = *p + n + 1;
    uint64_t v = 0;
    int digits = 0;
    for (; s < lim; s++, digits++) {
        int d = *s >= '0' && *s <= '9' ? *s - '0' : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10 : 99;
        if (d >= base)
            break;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
            return false;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    if (!digits || digits > 22 || s >= lim || *s != end)
        return false;
    *p = s + 1;
    *out = v;
    return true;
}

static void err_line(char *err, size_t cap, long line, const char *what)
{
    struct kbox_buf b;
    kbox_buf_init(&b, err, cap);
    kbox_buf_puts(&b, "line ");
    kbox_buf_dec(&b, line);
    kbox_buf_puts(&b, ": ");
    kbox_buf_puts(&b, what);
}

int kbox_ids_load(struct kbox_ids_table *t, const char *file, bool fake_root, char *err, size_t cap)
{
    t->fake_root = fake_root;
    t->top_pid = (int32_t)kbox_getpid();
    t->real_uid = (uint32_t)KSYS0(__NR_getuid);
    t->real_gid = (uint32_t)KSYS0(__NR_getgid);
    long fd = kbox_openat(AT_FDCWD, file, O_RDONLY | O_CLOEXEC, 0);
    if (fd == -ENOENT)
        return 0;
    struct stat st;
    long r = fd < 0 ? fd : KSYS2(__NR_fstat, fd, &st);
    if (r >= 0 && (st.st_mode & S_IFMT) != S_IFREG)
        r = -EISDIR;
    if (r < 0) {
        struct kbox_buf b;
        kbox_buf_init(&b, err, cap);
        kbox_buf_puts(&b, r == -EISDIR ? "not a regular file" : "cannot be read");
            if (fd >= 0)
            kbox_close((int)fd);
        return -1;
    }
    if (st.st_size == 0) {
        kbox_close((int)fd);
        return 0;
    }
    long m = kbox_mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, (int)fd, 0);
    kbox_close((int)fd);
    if (kbox_is_err(m)) {
        err_line(err, cap, 0, "cannot be mapped");
        return -1;
    }
    const char *p = (const char *)m, *end = p + st.st_size;
    long line = 0;
    int rc = 0;
    while (p < end && rc == 0) {
        line++;
        const char *nl = p;
        while (nl < end && *nl != '\n')
            nl++;
        if (nl == end) {
            err_line(err, cap, line, "no newline at the end (a truncated record?)");
            rc = -1;
            break;
        }
        const char *q = p;
        uint64_t dev, ino, mode, uid, gid, nlink, rdev;
        if (!(field(&q, nl + 1, "dev", 16, ',', &dev) && field(&q, nl + 1, "ino", 10, ',', &ino) &&
              field(&q, nl + 1, "mode", 8, ',', &mode) && field(&q, nl + 1, "uid", 10, ',', &uid) &&
              field(&q, nl + 1, "gid", 10, ',', &gid) && field(&q, nl + 1, "nlink", 10, ',', &nlink) &&
              field(&q, nl + 1, "rdev", 10, '\n', &rdev)) ||
            q != nl + 1 || mode > 0177777 || uid > 0xffffffffu || gid > 0xffffffffu || (!dev && !ino)) {
            err_line(err, cap, line,
                     "malformed record (expected dev=HEX,ino=N,mode=OCTAL,uid=N,gid=N,nlink=N,rdev=N)");
            rc = -1;
            break;
        }
        struct kbox_ids_rec rec = { dev, ino, rdev, (uint32_t)mode, (uint32_t)uid, (uint32_t)gid,
                                    nlink > 0xffffffffu ? 0xffffffffu : (uint32_t)nlink };
        if (t->count >= KBOX_IDS_MAX && !find(t, dev, ino)) {
            err_line(err, cap, line, "more records than kbox holds (49152)");
            rc = -1;
            break;
        }
        put(t, &rec);
        p = nl + 1;
    }
    kbox_munmap((void *)m, (size_t)st.st_size);
    if (rc < 0)
        memset(t->slot, 0, sizeof(t->slot)), t->count = 0;
    return rc;
}

int kbox_ids_save(struct kbox_ids_table *t, const char *file)
{
    char tmp[4200];
    struct kbox_buf b;
    kbox_buf_init(&b, tmp, sizeof(tmp));
    kbox_buf_puts(&b, file);
    kbox_buf_puts(&b, ".tmp");
    if (b.len >= sizeof(tmp) - 1)
        return -ENAMETOOLONG;
    tmp[b.len] = 0;
    long fd = kbox_openat(AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return (int)fd;
    static char out[65536];
    struct kbox_buf o;
    kbox_buf_init(&o, out, sizeof(out));
    long r = 0;
    kbox_lock(&t->lock);
    for (uint32_t i = 0; i < KBOX_IDS_SLOTS && r >= 0; i++) {
        const struct kbox_ids_rec *rec = &t->slot[i];
        if (empty(rec))
            continue;
        if (o.len > sizeof(out) - 256) {
            r = kbox_write((int)fd, out, o.len) == (long)o.len ? 0 : -EIO;
            o.len = 0;
        }
        /* fakeroot's save-file line: dev in hex, mode in octal, both without a prefix. */
        char num[24];
        struct kbox_buf nb;
        kbox_buf_puts(&o, "dev=");
        kbox_buf_init(&nb, num, sizeof(num));
        kbox_buf_hex(&nb, rec->dev);
        kbox_buf_putn(&o, num + 2, nb.len - 2);
        kbox_buf_puts(&o, ",ino=");
        kbox_buf_udec(&o, rec->ino);
        kbox_buf_puts(&o, ",mode=");
        kbox_buf_init(&nb, num, sizeof(num));
        kbox_buf_octal(&nb, rec->mode);
        kbox_buf_putn(&o, num[0] == '0' && nb.len > 1 ? num + 1 : num, num[0] == '0' && nb.len > 1 ? nb.len - 1 : nb.len);
        kbox_buf_puts(&o, ",uid=");
        kbox_buf_udec(&o, rec->uid);
        kbox_buf_puts(&o, ",gid=");
        kbox_buf_udec(&o, rec->gid);
        kbox_buf_puts(&o, ",nlink=");
        kbox_buf_udec(&o, rec->nlink);
        kbox_buf_puts(&o, ",rdev=");
        kbox_buf_udec(&o, rec->rdev);
        kbox_buf_putc(&o, '\n');
    }
    kbox_unlock(&t->lock);
    if (r >= 0 && o.len)
        r = kbox_write((int)fd, out, o.len) == (long)o.len ? 0 : -EIO;
    if (r >= 0)
        r = KSYS1(__NR_fdatasync, fd);
    kbox_close((int)fd);
    if (r >= 0)
        r = KSYS5(__NR_renameat2, AT_FDCWD, tmp, AT_FDCWD, file, 0);
    if (r < 0)
        KSYS3(__NR_unlinkat, AT_FDCWD, tmp, 0);
    return (int)r;
}
