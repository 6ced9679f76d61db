#include "core/mem.h"
#include "lib/sys.h"
#include "lib/self.h"
#include <linux/errno.h>
#include <linux/uio.h>
#include <linux/ioctl.h>
#include <linux/seccomp.h>
#include <linux/openat2.h>


static long self_read(const struct kbox_mem *m, uint64_t addr, void *buf, size_t len)
{
    return kbox_vm_rw(__NR_process_vm_readv, m->pid ? m->pid : (int)kbox_getpid(), addr, buf, len);
}

static long self_write(const struct kbox_mem *m, uint64_t addr, const void *buf, size_t len)
{
    return kbox_vm_rw(__NR_process_vm_writev, m->pid ? m->pid : (int)kbox_getpid(), addr, (void *)buf, len);
}

void kbox_mem_init_self(struct kbox_mem *m)
{
    m->read = self_read;
    m->write = self_write;
    m->swap32 = NULL; /* the trap runtime adds its own (it can check the mapping first) */
    m->pid = 0; /* looked up on first use: most calls never touch memory */
    m->notify_fd = -1;
    m->notify_id = 0;
}

static long notif_read(const struct kbox_mem *m, uint64_t addr, void *buf, size_t len)
{
    long r = kbox_vm_rw(__NR_process_vm_readv, m->pid, addr, buf, len);
    uint64_t id = m->notify_id;
    if (KSYS3(__NR_ioctl, m->notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0)
        return -3; /* ESRCH: the caller is gone; whatever we read is not its memory */
    return r;
}

static long notif_write(const struct kbox_mem *m, uint64_t addr, const void *buf, size_t len)
{
    uint64_t id = m->notify_id;
    if (KSYS3(__NR_ioctl, m->notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0)
        return -3;
    return kbox_vm_rw(__NR_process_vm_writev, m->pid, addr, (void *)buf, len);
}

void kbox_mem_init_notif(struct kbox_mem *m, int pid, int notify_fd, uint64_t id)
{
    m->read = notif_read;
    m->write = notif_write;
    m->swap32 = NULL;
    m->pid = pid;
    m->notify_fd = notify_fd;
    m->notify_id = id;
}

long kbox_mem_read_str(const struct kbox_mem *m, uint64_t addr, char *buf, size_t cap)
{
    size_t got = 0;
    if (!cap)
        return -EINVAL;
    /* Read page by page: a string may end just before an unmapped page. */
    while (got + 1 < cap) {
        size_t page_left = 4096 - ((addr + got) & 4095);
        size_t want = cap - 1 - got;
        if (want > page_left)
            want = page_left;
        long r = m->read(m, addr + got, buf + got, want);
        if (r <= 0) {
            buf[got] = 0;
            return got ? (long)got : (r ? r : -EFAULT);
        }
        for (long i = 0; i < r; i++) {
            if (buf[got + (size_t)i] == 0)
                return (long)(got + (size_t)i);
        }
        got += (size_t)r;
    }
    buf[got] = 0;
    return (long)got;
}

long kbox_open_how_read(const struct kbox_mem *m, uint64_t addr, uint64_t size, struct open_how *how)
{
    /* As the kernel's copy_struct_from_user: a smaller struct than it knows is too old
     * (EINVAL), a larger one must hold only zeros past what it knows (E2BIG otherwise). */
    if (size < sizeof(*how))
        return -EINVAL;
    if (size > 4096)
        return -E2BIG;
    if (m->read(m, addr, how, sizeof(*how)) != (long)sizeof(*how))
        return -EFAULT;
    for (uint64_t off = sizeof(*how); off < size; off += 8) {
        uint64_t tail = 0;
        size_t n = size - off < 8 ? (size_t)(size - off) : 8;
        if (m->read(m, addr + off, &tail, n) != (long)n)
            return -EFAULT;
        if (tail)
            return -E2BIG;
    }
    return 0;
}
