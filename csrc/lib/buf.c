#include "lib/buf.h"
#include "lib/str.h"

void kbox_buf_putc(struct kbox_buf *b, char c)
{
    if (b->len + 1 < b->cap) {
        b->p[b->len++] = c;
        b->p[b->len] = 0;
    } else {
        b->truncated = true;
    }
}

void kbox_buf_putn(struct kbox_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kbox_buf_putc(b, s[i]);
}

void kbox_buf_puts(struct kbox_buf *b, const char *s) { kbox_buf_putn(b, s, kbox_strlen(s)); }

static size_t utoa(char *tmp, uint64_t v, unsigned base)
{
    size_t n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    return n;
}

static void put_rev(struct kbox_buf *b, const char *tmp, size_t n)
{
    while (n)
        kbox_buf_putc(b, tmp[--n]);
}

void kbox_buf_udec(struct kbox_buf *b, uint64_t v)
{
    char tmp[24];
    put_rev(b, tmp, utoa(tmp, v, 10));
}

void kbox_buf_dec(struct kbox_buf *b, int64_t v)
{
    if (v < 0) {
        kbox_buf_putc(b, '-');
        kbox_buf_udec(b, (uint64_t)0 - (uint64_t)v);
    } else {
        kbox_buf_udec(b, (uint64_t)v);
    }
}

void kbox_buf_hex(struct kbox_buf *b, uint64_t v)
{
    char tmp[24];
    kbox_buf_puts(b, "0x");
    put_rev(b, tmp, utoa(tmp, v, 16));
}

void kbox_buf_octal(struct kbox_buf *b, uint64_t v)
{
    char tmp[24];
    kbox_buf_putc(b, '0');
    if (v)
        put_rev(b, tmp, utoa(tmp, v, 8));
}

void kbox_buf_pad_udec(struct kbox_buf *b, uint64_t v, int width)
{
    char tmp[24];
    size_t n = utoa(tmp, v, 10);
    for (int i = (int)n; i < width; i++)
        kbox_buf_putc(b, ' ');
    put_rev(b, tmp, n);
    for (int i = (int)n; i < -width; i++)
        kbox_buf_putc(b, ' ');
}

void kbox_buf_pad_str(struct kbox_buf *b, const char *s, int width)
{
    int n = (int)kbox_strlen(s);
    for (int i = n; i < width; i++)
        kbox_buf_putc(b, ' ');
    kbox_buf_puts(b, s);
    for (int i = n; i < -width; i++)
        kbox_buf_putc(b, ' ');
}

void kbox_buf_cquote(struct kbox_buf *b, const char *s, size_t n, size_t max, bool more)
{
    static const char hex[] = "0123456789abcdef";
    kbox_buf_putc(b, '"');
    for (size_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': kbox_buf_puts(b, "\\\""); break;
        case '\\': kbox_buf_puts(b, "\\\\"); break;
        case '\n': kbox_buf_puts(b, "\\n"); break;
        case '\t': kbox_buf_puts(b, "\\t"); break;
        case '\r': kbox_buf_puts(b, "\\r"); break;
        case '\f': kbox_buf_puts(b, "\\f"); break;
        case '\v': kbox_buf_puts(b, "\\v"); break;
        default:
            if (c >= 0x20 && c < 0x7f) {
                kbox_buf_putc(b, (char)c);
            } else {
                kbox_buf_puts(b, "\\x");
                kbox_buf_putc(b, hex[c >> 4]);
                kbox_buf_putc(b, hex[c & 15]);
            }
        }
    }
    kbox_buf_putc(b, '"');
    if (more || n > max)
        kbox_buf_puts(b, "...");
}

void kbox_buf_jquote(struct kbox_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    kbox_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            kbox_buf_putc(b, '\\');
            kbox_buf_putc(b, (char)c);
        } else if (c == '\n') {
            kbox_buf_puts(b, "\\n");
        } else if (c < 0x20 || c == 0x7f || c >= 0x80) {
            /* Bytes >= 0x80 are escaped too: guest strings need not be valid UTF-8 and a
             * JSON consumer must never choke on a trace line. */
            kbox_buf_puts(b, "\\u00");
            kbox_buf_putc(b, hex[c >> 4]);
            kbox_buf_putc(b, hex[c & 15]);
        } else {
            kbox_buf_putc(b, (char)c);
        }
    }
    kbox_buf_putc(b, '"');
}
