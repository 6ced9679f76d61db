#include "lib/self.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/fcntl.h>
#include <linux/mman.h>
#include <linux/uio.h>

long kbox_vm_rw(int nr, int pid, uint64_t addr, void *buf, size_t len)
{
    struct iovec local = { buf, len };
    struct iovec remote = { (void *)(uintptr_t)addr, len };
    return KSYS6(nr, pid, &local, 1, &remote, 1, 0);
}

long kbox_mem_read_self(uint64_t addr, void *buf, size_t len)
{
    return kbox_vm_rw(__NR_process_vm_readv, (int)kbox_getpid(), addr, buf, len);
}

/* Reads all of /proc/self/maps; returns its NUL-terminated text or NULL.  Static buffer:
 * callers hold the rewrite tier's patch lock. */
static char *read_maps(void)
{
    static char buf[64 * 1024];
    long fd = kbox_openat(AT_FDCWD, "/proc/self/maps", 0, 0);
    if (fd < 0)
        return NULL;
    long n = 0, r;
    while (n < (long)sizeof(buf) - 1 && (r = kbox_read((int)fd, buf + n, sizeof(buf) - 1 - (size_t)n)) > 0)
        n += r;
    kbox_close((int)fd);
    buf[n] = 0;
    return buf;
}

static uint64_t hex(const char **p)
{
    uint64_t v = 0;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9')
            v = v * 16 + (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v * 16 + (uint64_t)(c - 'a' + 10);
        else
            return v;
    }
}

/* Parses one line "lo-hi rwxp offset dev inode   path"; returns the next line. */
static const char *parse_line(const char *line, struct kbox_map *m)
{
    const char *p = line, *end = line;
    while (*end && *end != '\n')
        end++;
    m->lo = hex(&p);
    if (*p == '-')
        p++;
    m->hi = hex(&p);
    while (*p == ' ')
        p++;
    m->prot = 0;
    if (end - p >= 4) {
        m->prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
                  (p[2] == 'x' ? PROT_EXEC : 0);
        p += 4;
    }
    while (*p == ' ')
        p++;
    m->offset = hex(&p);
    for (int field = 0; field < 2 && p < end; field++) { /* dev, inode */
        while (p < end && *p == ' ')
            p++;
        while (p < end && *p != ' ')
            p++;
    }
    while (p < end && *p == ' ')
        p++;
    size_t n = (size_t)(end - p);
    if (n >= sizeof(m->path))
        n = 0; /* too long to be useful: treat as anonymous */
    memcpy(m->path, p, n);
    m->path[n] = 0;
    return *end ? end + 1 : end;
}

int kbox_maps_find(uint64_t addr, struct kbox_map *out)
{
    const char *line = read_maps();
    while (line && *line) {
        line = parse_line(line, out);
        if (addr >= out->lo && addr < out->hi)
            return 0;
    }
    return -1;
}

uint64_t kbox_maps_file_start(const char *path)
{
    struct kbox_map m;
    const char *line = read_maps();
    while (line && *line) {
        line = parse_line(line, &m);
        if (m.offset == 0 && kbox_strcmp(m.path, path) == 0)
            return m.lo;
    }
    return 0;
}
