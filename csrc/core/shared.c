#include "core/shared.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/hash.h"
#include <linux/errno.h>
#include <linux/mman.h>
#include <linux/memfd.h>

static size_t shared_size(void) { return (sizeof(struct kbox_shared) + 4095) & ~(size_t)4095; }

int kbox_shared_create(struct kbox_shared **out)
{
    /* No MFD_CLOEXEC: the in-process tiers hand this fd to the re-executed launcher. */
    long fd = KSYS2(__NR_memfd_create, "kbox-shared", 0);
    if (fd < 0)
        return (int)fd;
    long r = KSYS2(__NR_ftruncate, fd, shared_size());
    if (r < 0) {
        kbox_close((int)fd);
        return (int)r;
    }
    r = kbox_mmap(NULL, shared_size(), PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
    if (kbox_is_err(r)) {
        kbox_close((int)fd);
        return (int)r;
    }
    struct kbox_shared *s = (struct kbox_shared *)r;
    s->magic = KBOX_SHARED_MAGIC;
    s->size = (uint32_t)sizeof(*s);
    *out = s;
    return (int)fd;
}

int kbox_shared_attach(int fd, struct kbox_shared **out)
{
    long r = kbox_mmap(NULL, shared_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (kbox_is_err(r))
        return (int)r;
    struct kbox_shared *s = (struct kbox_shared *)r;
    if (s->magic != KBOX_SHARED_MAGIC || s->size != sizeof(*s)) {
        kbox_munmap(s, shared_size());
        return -EINVAL;
    }
    *out = s;
    return 0;
}

static uint32_t slot_of(int real) { return kbox_hash_slot((uint64_t)real, KBOX_VPID_HASH); }

int kbox_vpid_lookup(struct kbox_shared *s, int real)
{
    if (real <= 0)
        return 0;
    for (uint32_t i = slot_of(real), n = 0; n < KBOX_VPID_HASH; i = (i + 1) & (KBOX_VPID_HASH - 1), n++) {
        int32_t r = __atomic_load_n(&s->real_to_virt[i].real, __ATOMIC_ACQUIRE);
        if (r == 0)
            return 0;
        if (r == real) {
            /* The slot is published before its value; wait out that tiny window. */
            int32_t v;
            while ((v = __atomic_load_n(&s->real_to_virt[i].virt, __ATOMIC_ACQUIRE)) == 0)
                ;
            return v;
        }
    }
    return 0;
}

int kbox_vpid_assign(struct kbox_shared *s, int real)
{
    if (real <= 0)
        return 0;
    for (uint32_t i = slot_of(real), n = 0; n < KBOX_VPID_HASH; i = (i + 1) & (KBOX_VPID_HASH - 1), n++) {
        struct kbox_vpid_slot *slot = &s->real_to_virt[i];
        int32_t r = __atomic_load_n(&slot->real, __ATOMIC_ACQUIRE);
        if (r == 0) {
            int32_t expected = 0;
            if (!__atomic_compare_exchange_n(&slot->real, &expected, real, false,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                r = expected; /* someone else took the slot: re-examine it */
            } else {
                int32_t v = __atomic_add_fetch(&s->next_vpid, 1, __ATOMIC_ACQ_REL);
                if (v < KBOX_VPID_MAX)
                    __atomic_store_n(&s->virt_to_real[v], real, __ATOMIC_RELEASE);
                __atomic_store_n(&slot->virt, v, __ATOMIC_RELEASE);
                return v;
            }
        }
        if (r == real)
            return kbox_vpid_lookup(s, real);
    }
    return 0;
}

int kbox_vpid_real(struct kbox_shared *s, int virt)
{
    if (virt <= 0 || virt >= KBOX_VPID_MAX)
        return 0;
    return __atomic_load_n(&s->virt_to_real[virt], __ATOMIC_ACQUIRE);
}
