/* The one place that picks the architecture (cf. nolibc's arch.h).  Both arch headers export
 * the same names; no other file tests __x86_64__ or __aarch64__. */
#ifndef KBOX_ARCH_H
#define KBOX_ARCH_H

#if defined(__x86_64__)
#include "arch/x86_64/arch.h"
#elif defined(__aarch64__)
#include "arch/aarch64/arch.h"
#else
#error Unsupported architecture
#endif

#endif
