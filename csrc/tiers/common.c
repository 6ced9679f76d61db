#include "tiers/launch.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "trace/errnoent.h"

void kbox_err(const char *a, const char *b, const char *c)
{
    char line[1024];
    struct kbox_buf buf;
    kbox_buf_init(&buf, line, sizeof(line));
    kbox_buf_puts(&buf, "kbox: ");
    if (a)
        kbox_buf_puts(&buf, a);
    if (b)
        kbox_buf_puts(&buf, b);
    if (c)
        kbox_buf_puts(&buf, c);
    kbox_buf_putc(&buf, '\n');
    kbox_write(2, line, buf.len);
}

const char *kbox_strerror(int err)
{
    if (err > 0 && err < kbox_errnoent_count && kbox_errnoent[err].message)
        return kbox_errnoent[err].message;
    return "Unknown error";
}

int kbox_status_to_exit(int wstatus)
{
    int sig = wstatus & 0x7f;
    if (sig == 0)
        return (wstatus >> 8) & 0xff;     /* exited */
    if (sig == 0x7f)
        return KBOX_EXIT_INTERNAL;        /* stopped: not a final status */
    return 128 + sig;                     /* killed by a signal */
}
