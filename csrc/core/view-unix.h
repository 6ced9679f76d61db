/* AF_UNIX socket addresses in the root view: a path address (sun_path[0] != 0) names a
 * socket file inside the view, resolved confined like every other path (core/view.h), and
 * the names the kernel reports back (getsockname, getpeername, accept, recvfrom, recvmsg)
 * are turned into guest paths.  Abstract (sun_path[0] == 0) and unnamed addresses, and
 * every other family, pass unchanged.  Shared by the in-process tiers (tiers/view-sock.c)
 * and the seccomp supervisor (tiers/seccomp-sock.c).
 *
 * The kernel stores a bound socket's name as the string bind(2) was given, and reports that
 * string to every process, so what bind is given decides what can be mapped back:
 *  - the in-process tiers bind to the absolute host path of the resolved parent plus the
 *    name when it fits sun_path (107 bytes and the NUL): kbox_view_guest_path maps it back
 *    in every process of the run;
 *  - the seccomp supervisor binds to "/proc/<its pid>/fd/K/name", K a descriptor of the
 *    resolved parent directory it keeps for the run: the kernel walks no path the program
 *    can change, and the supervisor maps the name back through K.
 * A connect or send follows a final symlink (as the kernel's does): it is given
 * "/proc/self/fd/N", N the socket file resolved in the view.
 */
#ifndef KBOX_CORE_VIEW_UNIX_H
#define KBOX_CORE_VIEW_UNIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/un.h>

#define KBOX_SUN_OFF 2                       /* offsetof(struct sockaddr_un, sun_path) */
#define KBOX_SUN_MAX (KBOX_SUN_OFF + UNIX_PATH_MAX) /* the largest AF_UNIX address: 110 */
#define KBOX_SOCKADDR_MAX 128                /* sizeof(struct sockaddr_storage) */

/* The kernel's struct user_msghdr (sendmsg, recvmsg) on a 64-bit ABI. */
struct kbox_msghdr {
    uint64_t name;
    int32_t namelen;
    uint32_t pad0;
    uint64_t iov, iovlen, control, controllen;
    uint32_t flags, pad1;
};
_Static_assert(sizeof(struct kbox_msghdr) == 56, "struct user_msghdr");
_Static_assert(__builtin_offsetof(struct kbox_msghdr, flags) == 48, "msg_flags");

/* An address for the kernel, made from a guest path address. */
struct kbox_unix_addr {
    struct sockaddr_un sun;
    uint32_t len;
    int tmpfd;          /* a descriptor naming what was resolved, to close after the call; -1 */
};

enum kbox_unix_use {
    KBOX_UNIX_CONNECT,   /* connect, sendto, sendmsg: the socket file, a final symlink followed */
    KBOX_UNIX_BIND,      /* bind in the program's own process: the host path, when it fits */
    KBOX_UNIX_BIND_KEPT, /* bind by the seccomp supervisor: through a directory it keeps */
};


/* Where a call with the KBOX_SC_SOCKADDR property keeps its address. */
struct kbox_unix_args {
    int8_t addr;  /* the address argument, or -1 (sendmsg, recvmsg: in the msghdr) */
    int8_t len;   /* its length: a value for an address given, a pointer for one reported */
    int8_t msg;   /* the msghdr argument, or -1 */
    bool given;   /* the call is given an address (bind, connect, sendto, sendmsg) */
    enum kbox_unix_use use;
};

/* The argument layout of socket call `nr`; false if it has no address. */
bool kbox_unix_args(int nr, struct kbox_unix_args *out);

/* The path of an AF_UNIX path address of `len` bytes, NUL-terminated into
 * path[UNIX_PATH_MAX + 1] as the kernel reads it: true; false for anything that passes
 * unchanged (another family, abstract, unnamed, a length the kernel refuses by itself). */
bool kbox_unix_path_of(const void *addr, uint64_t len, char *path);

/* The address for the kernel naming guest path `guest` (relative paths from `dirfd`) inside
 * the view; 0 or -errno (the resolution's: ENOENT for a missing parent or socket file;
 * ENAMETOOLONG when the translated name cannot fit sun_path). */
int kbox_unix_to_host(int dirfd, const char *guest, enum kbox_unix_use use, struct kbox_unix_addr *out);

/* Rewrites the address of `len` bytes the kernel reported at `a` (room for
 * KBOX_SOCKADDR_MAX bytes) into the guest's name, in place; returns its new length, as the
 * kernel would report it.  Names the view cannot map (a socket bound outside the root, or
 * through a descriptor since closed) stay as they are. */
uint32_t kbox_unix_to_guest(void *a, uint32_t len);

#endif
