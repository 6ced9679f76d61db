/* Bounded text building without libc: trace lines, stats tables and error messages are all
 * assembled in a caller-provided buffer and written with one write(2), so lines from
 * concurrent processes never interleave mid-line. */
#ifndef KBOX_LIB_BUF_H
#define KBOX_LIB_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kbox_buf {
    char *p;
    size_t len, cap;     /* cap includes room for a terminating NUL */
    bool truncated;      /* set once anything did not fit */
};

static inline void kbox_buf_init(struct kbox_buf *b, char *mem, size_t cap)
{
    b->p = mem, b->len = 0, b->cap = cap, b->truncated = false;
    if (cap)
        mem[0] = 0;
}

void kbox_buf_putc(struct kbox_buf *b, char c);
void kbox_buf_puts(struct kbox_buf *b, const char *s);
void kbox_buf_putn(struct kbox_buf *b, const char *s, size_t n);
void kbox_buf_dec(struct kbox_buf *b, int64_t v);
void kbox_buf_udec(struct kbox_buf *b, uint64_t v);
void kbox_buf_hex(struct kbox_buf *b, uint64_t v);           /* 0x1f */
void kbox_buf_octal(struct kbox_buf *b, uint64_t v);         /* 0644 */
/* Right-aligns (width > 0) or left-aligns (width < 0) the next field. */
void kbox_buf_pad_udec(struct kbox_buf *b, uint64_t v, int width);
void kbox_buf_pad_str(struct kbox_buf *b, const char *s, int width);
/* A C string literal in strace's style: "abc\n\33" with at most `max` bytes shown, then "...". */
void kbox_buf_cquote(struct kbox_buf *b, const char *s, size_t n, size_t max, bool more);
/* A JSON string literal (UTF-8 passed through, control bytes escaped as \u00XX). */
void kbox_buf_jquote(struct kbox_buf *b, const char *s, size_t n);

#endif
