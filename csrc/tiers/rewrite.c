/* The rewrite tier: lazy, exhaustive rewriting on top of the trap tier (lazypoline's idea).
 *
 * Every syscall site starts on the trap path.  When a site traps, the handler serves the
 * call and then rewrites the site (kbox_rewrite_site) so that its next execution branches
 * to a per-site trampoline, which serves it without a signal: passthrough calls from the
 * trampoline's own assembly path, the rest from kbox_rewrite_slow on the thread's kbox
 * stack (tiers/signals.h); no kernel round trip beyond the syscall itself.  Code that appears later (dlopen, JIT) is covered
 * the same way, because it traps the first time too.  A site that cannot be rewritten
 * safely (arch/<arch>/launch/rewrite-<arch>.c says when) simply stays on the trap path.
 *
 * Calls that need the signal frame (clone, vfork, execve, rt_sigreturn, the signal-mask
 * calls: KBOX_SC_FRAME in the syscall table) are handed back to the trap path from the
 * trampoline by the slow path (kbox_rewrite_slow, tiers/trap.c); this file only patches.
 *
 * Trampolines live in chunks mapped near the code they serve (the branch range is +-2 GiB on
 * x86_64, +-128 MiB on aarch64).  Adding one briefly makes its chunk writable (and still
 * executable, since other threads may be running older trampolines in it); patching a site
 * briefly adds PROT_WRITE to its page(s).  All of that happens under one lock with every
 * signal blocked.
 */
#include "tiers/rewrite.h"
#include "lib/self.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/hash.h"
#include "lib/lock.h"
#include <linux/errno.h>
#include <linux/mman.h>
#include <linux/signal.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define CHUNK_SIZE (256 * 1024)
#define MAX_CHUNKS 128
#define SITE_SLOTS 8192

static struct {
    bool enabled;
    int32_t lock;
    struct { uint64_t start, used; } chunk[MAX_CHUNKS];
    int nchunks;
    /* Sites already handled: patched, or found unpatchable (never retried). */
    uint64_t site[SITE_SLOTS];
} rw;


bool kbox_rewrite_enabled(void) { return rw.enabled; }

bool kbox_rewrite_owns(uint64_t pc)
{
    for (int i = 0; i < rw.nchunks; i++)
        if (pc >= rw.chunk[i].start && pc < rw.chunk[i].start + CHUNK_SIZE)
            return true;
    return false;
}

void kbox_rewrite_enable(const uint8_t *fast, int n, const int own_fd[2])
{
    kbox_arch_rw_enable(fast, n, own_fd);
    rw.enabled = true;
}

/* ---- bookkeeping -------------------------------------------------------------------------- */

/* Whether `site` was handled already; with `insert`, marks it handled.  A full table counts
 * as seen: rewriting stops there, and the trap path still serves everything. */
static bool site_seen(uint64_t site, bool insert)
{
    if (kbox_u64set_slot(rw.site, SITE_SLOTS, site, false))
        return true;
    return insert && !kbox_u64set_slot(rw.site, SITE_SLOTS, site, true);
}

/* Instruction starts that carried a two-step patch's placeholder (never removed: a thread
 * that trapped there while the patch was in progress may be handled after it finished). */
#define INTERIM_MAX 1024
static uint64_t interim_site[INTERIM_MAX];
static int ninterim;

static void interim_add(uint64_t at)
{
    if (ninterim < INTERIM_MAX)
        __atomic_store_n(&interim_site[ninterim++], at, __ATOMIC_RELEASE);
}

bool kbox_rewrite_interim(uint64_t pc, uint64_t *restart)
{
    int n = __atomic_load_n(&ninterim, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++) {
        uint64_t at = __atomic_load_n(&interim_site[i], __ATOMIC_ACQUIRE);
        if (at && kbox_arch_rw_interim_resume(at) == pc) {
            *restart = at;
            return true;
        }
    }
    return false;
}

static uint64_t dist(uint64_t a, uint64_t b) { return a > b ? a - b : b - a; }

/* A trampoline slot of `size` bytes within `reach` of `near`. */
static uint64_t alloc_tramp(uint64_t near, uint64_t reach, uint64_t size)
{
    size = (size + 15) & ~15ULL;
    for (int i = 0; i < rw.nchunks; i++) {
        uint64_t at = rw.chunk[i].start + rw.chunk[i].used;
        if (rw.chunk[i].used + size <= CHUNK_SIZE && dist(at, near) + size < reach &&
            dist(rw.chunk[i].start, near) < reach) {
            rw.chunk[i].used += size;
            return at;
        }
    }
    if (rw.nchunks == MAX_CHUNKS)
        return 0;
    /* Probe free address space around `near`, below first (code sits above the heap gap). */
    uint64_t step = 1ULL << 20, base = near & ~(uint64_t)(CHUNK_SIZE - 1);
    for (uint64_t d = step; d + CHUNK_SIZE < reach; d += step) {
        for (int dir = 0; dir < 2; dir++) {
            uint64_t cand = dir ? base + d : base - d;
            if (!dir && base < d + 65536)
                continue;
            long r = kbox_mmap((void *)(uintptr_t)cand, CHUNK_SIZE, PROT_READ | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
            if (kbox_is_err(r))
                continue;
            if ((uint64_t)r != cand) { /* an old kernel ignoring NOREPLACE */
                kbox_munmap((void *)r, CHUNK_SIZE);
                continue;
            }
            rw.chunk[rw.nchunks].start = cand;
            rw.chunk[rw.nchunks].used = size;
            rw.nchunks++;
            return cand;
        }
    }
    return 0;
}

/* Protection of the mapping containing `addr` (-1 if unknown). */
static int prot_of(uint64_t addr)
{
    struct kbox_map m;
    return kbox_maps_find(addr, &m) == 0 ? m.prot : -1;
}

static bool patch_plan(const struct kbox_rw_plan *pl)
{
    struct kbox_rw_plan plan = *pl;
    uint64_t size = kbox_arch_rw_tramp_size(&plan);
    uint64_t tramp = alloc_tramp(plan.patch_at, plan.reach, size);
    if (!tramp)
        return false;
    struct kbox_rw_step steps[3];
    bool interim;
    int nsteps = kbox_arch_rw_patch(&plan, tramp, steps, &interim);
    if (nsteps < 0)
        return false; /* the slot is wasted; harmless */
    uint64_t win = steps[0].win, win_end = steps[0].win + steps[0].len;
    for (int i = 1; i < nsteps; i++) {
        if (steps[i].win < win)
            win = steps[i].win;
        if (steps[i].win + steps[i].len > win_end)
            win_end = steps[i].win + steps[i].len;
    }

    /* The trampoline first, then the branch to it. */
    uint64_t cstart = tramp & ~(uint64_t)(CHUNK_SIZE - 1);
    for (int i = 0; i < rw.nchunks; i++)
        if (tramp >= rw.chunk[i].start && tramp < rw.chunk[i].start + CHUNK_SIZE)
            cstart = rw.chunk[i].start;
    if (kbox_mprotect((void *)(uintptr_t)cstart, CHUNK_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC) < 0)
        return false;
    kbox_arch_rw_emit((uint8_t *)(uintptr_t)tramp, tramp, &plan);
    kbox_mprotect((void *)(uintptr_t)cstart, CHUNK_SIZE, PROT_READ | PROT_EXEC);
    __builtin___clear_cache((char *)(uintptr_t)tramp, (char *)(uintptr_t)(tramp + size));

    uint64_t pg = win & ~4095ULL, pg_end = (win_end + 4095) & ~4095ULL;
    int prot = prot_of(win);
    if (prot < 0 || !(prot & PROT_EXEC) || (pg_end - pg > 4096 && prot_of(pg + 4096) != prot))
        return false;
    if (kbox_mprotect((void *)(uintptr_t)pg, pg_end - pg, prot | PROT_WRITE) < 0)
        return false;
    if (interim)
        interim_add(plan.patch_at);
    for (int i = 0; i < nsteps; i++)
        kbox_arch_rw_store(steps[i].win, steps[i].bytes, steps[i].len);
    kbox_mprotect((void *)(uintptr_t)pg, pg_end - pg, prot);
    __builtin___clear_cache((char *)(uintptr_t)win, (char *)(uintptr_t)win_end);
    return true;
}

static bool patch(uint64_t site)
{
    struct kbox_rw_plan plan;
    return kbox_arch_rw_plan(site, &plan) == 0 && patch_plan(&plan);
}

int kbox_rewrite_promote(uint64_t lo, uint64_t hi)
{
    if (!rw.enabled || hi <= lo || hi - lo > (64u << 20))
        return 0;
    size_t len = (size_t)(hi - lo);
    long m = kbox_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (kbox_is_err(m))
        return 0;
    static struct kbox_rw_plan plans[512];
    int n = 0, done = 0;
    if (kbox_mem_read_self(lo, (void *)m, len) == (long)len)
        n = kbox_arch_rw_promotions((const uint8_t *)m, lo, len, plans, 512);
    kbox_munmap((void *)m, len);
    /* Before the program runs: no other thread, no signal handler of its own yet. */
    kbox_lock(&rw.lock);
    for (int i = 0; i < n; i++)
        done += patch_plan(&plans[i]);
    kbox_unlock(&rw.lock);
    return done;
}

void kbox_rewrite_site(uint64_t site)
{
    if (!rw.enabled || kbox_rewrite_owns(site))
        return;
    /* Never our own code (the launcher image, which is linked at a fixed address). */
    extern const char __executable_start[], _end[];
    if (site >= (uint64_t)(uintptr_t)__executable_start && site < (uint64_t)(uintptr_t)_end)
        return;
    /* Most traps in rewrite mode come from sites already handled (those that cannot be
     * rewritten): answer that without the lock and the two sigprocmask calls.  A stale
     * read only sends us to the locked path, which decides again. */
    if (site_seen(site, false))
        return;
    uint64_t all = ~0ULL, saved;
    KSYS4(__NR_rt_sigprocmask, SIG_SETMASK, &all, &saved, 8);
    kbox_lock(&rw.lock);
    if (!site_seen(site, true))
        patch(site);
    kbox_unlock(&rw.lock);
    KSYS4(__NR_rt_sigprocmask, SIG_SETMASK, &saved, NULL, 8);
}
