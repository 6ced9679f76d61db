/* The few string and memory routines the freestanding runtime needs.  gcc may emit calls
 * to memcpy/memset/memmove/memcmp for struct copies, so those keep their standard names. */
#ifndef KBOX_LIB_STR_H
#define KBOX_LIB_STR_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t kbox_strlen(const char *s);
size_t kbox_strnlen(const char *s, size_t max);
int kbox_strcmp(const char *a, const char *b);
int kbox_strncmp(const char *a, const char *b, size_t n);
const char *kbox_strchr(const char *s, int c);
bool kbox_startswith(const char *s, const char *prefix);
/* Parses a decimal (or 0x hex) integer occupying all of s; returns false on junk/overflow. */
bool kbox_parse_long(const char *s, long *out);

#endif
