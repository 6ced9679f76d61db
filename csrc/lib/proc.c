#include "lib/proc.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>

long kbox_proc_status_field(int tid, const char *field, int base, long *out)
{
    char p[48], buf[4096]; /* CapEff: lies past 2 KiB with many groups */
    struct kbox_buf b;
    kbox_buf_init(&b, p, sizeof(p));
    kbox_buf_puts(&b, "/proc/");
    kbox_buf_dec(&b, tid);
    kbox_buf_puts(&b, "/status");
    long fd = kbox_openat(AT_FDCWD, p, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return fd;
    long n = kbox_read((int)fd, buf, sizeof(buf) - 1);
    kbox_close((int)fd);
    if (n <= 0)
        return -EIO;
    buf[n] = 0;
    size_t fl = kbox_strlen(field);
    for (long i = 0; i + (long)fl < n; i++) {
        if ((i == 0 || buf[i - 1] == '\n') && kbox_strncmp(buf + i, field, fl) == 0) {
            long v = 0;
            for (long j = i + (long)fl; j < n && buf[j] != '\n'; j++) {
                char ch = buf[j];
                int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : 99;
                if (d < base)
                    v = v * base + d;
            }
            *out = v;
            return 0;
        }
    }
    return -ENOENT;
}
