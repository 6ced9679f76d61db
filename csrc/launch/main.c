/* kbox-launch: the C entry point of every tier.
 *
 *   kbox-launch [options] -- PROG [ARGS...]
 *
 * Normally started by `kbox run` (kbox/runner.py builds this command line), and by itself
 * when a guest in an in-process tier calls execve (--relaunch).  Options:
 *   --syscall-mode=seccomp|trap|rewrite|none   (none: load in-process, no interposition)
 *   --trap-backend=seccomp|sud
 *   --trace  --trace-json  --trace-output=FILE  --trace-fd=N  --strsize=N
 *   --deny=NAME[:ERRNO]  --virtual-pid  --stats  --allow-wx  --no-promote
 *   --root=DIR --workdir=DIR   (the root view: DIR canonical)
 *   --bind=HOST --bind-at=GUEST   (repeatable, after --root: HOST shown at GUEST; canonical)
 *   --root-id=FILE   (with --root: fake root ids and ownership, recorded in FILE; core/ids.h)
 *   --root-record=FILE   (with --root: FILE's owners and modes shown by stat, ids not faked;
 *                    an image root's record, kbox/ext4image.py; core/ids.h)
 *   --chroot=DIR   (internal, with --root: a chroot inside the view, DIR a path in the root;
 *                   core/view-chroot.h)
 *   --shared-fd=N --relaunch --exec-path=PATH --cwd-fd=N   (internal: execve re-launch)
 * Exit status: the program's (128+N if signal N killed it); 2 for usage errors; 126/127 if
 * the program cannot be executed / is not found; 125 for kbox's own failures.
 */
#include "tiers/launch.h"
#include "tiers/seccomp-guest.h"
#include "arch/interface.h"
#include "core/ids.h"
#include "core/policy.h"
#include "core/shared.h"
#include "core/view.h"
#include "core/view-chroot.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "trace/trace.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/resource.h>

static __attribute__((noreturn)) void finish(int status);

enum mode { MODE_SECCOMP, MODE_TRAP, MODE_NONE };

static struct kbox_policy policy;
static struct kbox_launch launch;
static char *saved_opts[64];
static const char *stats_tier = "trap";
static char trace_fd_opt[32], shared_fd_opt[32], cwd_fd_opt[32], self_path[4096];
static const char *root_id_file; /* --root-id=FILE or --root-record=FILE: written back at the end */
static const char *record_opt = "--root-id "; /* which of the two, for messages */

static __attribute__((noreturn)) void usage(const char *a, const char *b)
{
    kbox_err(a, b, NULL);
    kbox_exit_group(KBOX_EXIT_USAGE);
}

static bool opt_value(const char *arg, const char *name, const char **val)
{
    size_t n = kbox_strlen(name);
    if (kbox_strncmp(arg, name, n) == 0 && arg[n] == '=') {
        *val = arg + n + 1;
        return true;
    }
    return false;
}

static void parse_deny(const char *spec)
{
    char name[64];
    const char *colon = kbox_strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : kbox_strlen(spec);
    if (n == 0 || n >= sizeof(name))
        usage("--deny: expected NAME[:ERRNO], got ", spec);
    memcpy(name, spec, n);
    name[n] = 0;
    long nr;
    if (!kbox_parse_long(name, &nr))
        nr = kbox_syscall_number(name);
    if (nr < 0 || nr >= KBOX_NR_MAX || !kbox_syscall_name((int)nr))
        usage("--deny: unknown syscall ", name);
    long err = EPERM;
    if (colon) {
        if (!kbox_parse_long(colon + 1, &err))
            err = kbox_errno_number(colon + 1);
        if (err <= 0 || err >= 4096)
            usage("--deny: unknown errno ", colon + 1);
    }
    policy.deny_errno[nr] = (uint16_t)err;
}

/* Makes the guest directory `dir` of the root view the working directory. */
static int start_in(const char *dir)
{
    char host[KBOX_VIEW_PATH_MAX];
    int tmp;
    int r = kbox_view_host_path(AT_FDCWD, dir, true, host, sizeof(host), &tmp);
    if (r == 0)
        r = (int)KSYS1(__NR_chdir, host);
    if (tmp >= 0)
        kbox_close(tmp);
    if (r < 0)
        kbox_err("--workdir ", dir, r == -ENOTDIR ? ": not a directory in the root"
                                                   : ": no such directory in the root");
    return r;
}

/* A descriptor number the guest is unlikely to want: near the top of its fd limit. */
static int high_fd(int below)
{
    struct rlimit rl;
    long top = 1024;
    if (KSYS2(__NR_getrlimit, RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > 16 && rl.rlim_cur < (1u << 20))
        top = (long)rl.rlim_cur;
    return (int)top - 1 - below;
}

static void print_stats(const char *tier)
{
    char line[256];
    struct kbox_buf b;
    uint64_t total = 0;
    kbox_buf_init(&b, line, sizeof(line));
    kbox_buf_puts(&b, "kbox: syscall statistics (");
    kbox_buf_puts(&b, tier);
    kbox_buf_puts(&b, " tier)\n");
    kbox_buf_pad_str(&b, "syscall", -24);
    kbox_buf_pad_str(&b, "calls", 10);
    kbox_buf_pad_str(&b, "notified", 10);
    kbox_buf_pad_str(&b, "trapped", 10);
    kbox_buf_pad_str(&b, "rewritten", 11);
    kbox_buf_putc(&b, '\n');
    kbox_write(2, line, b.len);
    for (int nr = 0; nr < KBOX_NR_MAX; nr++) {
        const uint64_t *c = policy.shared->counts[nr];
        uint64_t n = c[0] + c[1] + c[2];
        if (!n)
            continue;
        total += n;
        kbox_buf_init(&b, line, sizeof(line));
        const char *name = kbox_syscall_name(nr);
        if (name) {
            kbox_buf_pad_str(&b, name, -24);
        } else {
            char num[24];
            struct kbox_buf nb;
            kbox_buf_init(&nb, num, sizeof(num));
            kbox_buf_puts(&nb, "syscall_");
            kbox_buf_dec(&nb, nr);
            kbox_buf_pad_str(&b, num, -24);
        }
        kbox_buf_pad_udec(&b, n, 10);
        kbox_buf_pad_udec(&b, c[KBOX_PATH_NOTIFIED], 10);
        kbox_buf_pad_udec(&b, c[KBOX_PATH_TRAPPED], 10);
        kbox_buf_pad_udec(&b, c[KBOX_PATH_REWRITTEN], 11);
        kbox_buf_putc(&b, '\n');
        kbox_write(2, line, b.len);
    }
    kbox_buf_init(&b, line, sizeof(line));
    kbox_buf_pad_str(&b, "total", -24);
    kbox_buf_pad_udec(&b, total, 10);
    kbox_buf_putc(&b, '\n');
    kbox_write(2, line, b.len);
}

static int launcher_main(uint64_t *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    char **e = envp;
    while (*e)
        e++;
    launch.auxv = (const uint64_t *)(e + 1);
    launch.envp = envp;
    launch.policy = &policy;
    launch.shared_fd = -1;
    launch.cwd_fd = -1;
    policy.trace_opts.strsize = 32;
    policy.trace_opts.show_pid = true;
    policy.trace_fd = -1;

    enum mode mode = MODE_TRAP;
    const char *trace_output = NULL, *exec_path = NULL, *root = NULL, *workdir = NULL, *chroot_dir = NULL, *v;
    bool allow_wx = false;
    int nsaved = 0, i;
    /* --bind=HOST --bind-at=GUEST pairs (canonical paths, checked by kbox run). */
    const char *bind_host[KBOX_VIEW_BINDS_MAX + 1] = { 0 }, *bind_guest[KBOX_VIEW_BINDS_MAX];
    int nbinds = 0;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool keep = true;
        if (kbox_strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (opt_value(a, "--syscall-mode", &v)) {
            if (kbox_strcmp(v, "seccomp") == 0)
                mode = MODE_SECCOMP;
            else if (kbox_strcmp(v, "trap") == 0)
                mode = MODE_TRAP;
            else if (kbox_strcmp(v, "rewrite") == 0)
                mode = MODE_TRAP, launch.rewrite = true;
            else if (kbox_strcmp(v, "none") == 0)
                mode = MODE_NONE;
            else
                usage("unknown --syscall-mode ", v);
        } else if (opt_value(a, "--trap-backend", &v)) {
            if (kbox_strcmp(v, "seccomp") == 0)
                launch.trap_backend = KBOX_TRAP_SECCOMP;
            else if (kbox_strcmp(v, "sud") == 0)
                launch.trap_backend = KBOX_TRAP_SUD;
            else
                usage("unknown --trap-backend ", v);
        } else if (kbox_strcmp(a, "--trace") == 0) {
            policy.trace = true;
        } else if (kbox_strcmp(a, "--trace-json") == 0) {
            policy.trace = true;
            policy.trace_opts.json = true;
        } else if (opt_value(a, "--trace-output", &v)) {
            policy.trace = true;
            trace_output = v;
            keep = false;
        } else if (opt_value(a, "--trace-fd", &v)) {
            long fd;
            if (!kbox_parse_long(v, &fd))
                usage("bad --trace-fd ", v);
            policy.trace_fd = (int)fd;
            keep = false;
        } else if (opt_value(a, "--strsize", &v)) {
            long n;
            if (!kbox_parse_long(v, &n) || n < 0)
                usage("bad --strsize ", v);
            policy.trace_opts.strsize = (size_t)n;
        } else if (opt_value(a, "--deny", &v)) {
            parse_deny(v);
        } else if (kbox_strcmp(a, "--virtual-pid") == 0) {
            policy.virtual_pid = true;
        } else if (kbox_strcmp(a, "--stats") == 0) {
            policy.stats = true;
        } else if (kbox_strcmp(a, "--allow-wx") == 0) {
            allow_wx = true;
        } else if (kbox_strcmp(a, "--no-promote") == 0) {
            launch.no_promote = true;
        } else if (opt_value(a, "--shared-fd", &v)) {
            long fd;
            if (!kbox_parse_long(v, &fd))
                usage("bad --shared-fd ", v);
            launch.shared_fd = (int)fd;
            keep = false;
        } else if (kbox_strcmp(a, "--relaunch") == 0) {
            launch.relaunch = true;
            keep = false;
        } else if (opt_value(a, "--root", &v)) {
            root = v;
        } else if (opt_value(a, "--bind", &v)) {
            if (nbinds == KBOX_VIEW_BINDS_MAX)
                usage("too many --bind (the most is 16)", NULL);
            bind_host[nbinds] = v;
        } else if (opt_value(a, "--bind-at", &v)) {
            if (!bind_host[nbinds])
                usage("--bind-at without --bind before it", NULL);
            bind_guest[nbinds++] = v;
        } else if (opt_value(a, "--root-id", &v)) {
            if (v[0] != '/')
                usage("--root-id: FILE must be an absolute path, got ", v);
            if (root_id_file && kbox_strcmp(root_id_file, v) != 0)
                usage("--root-id and --root-record name different files", NULL);
            policy.root_id = policy.root_record = true;
            root_id_file = v;
        } else if (opt_value(a, "--root-record", &v)) {
            if (v[0] != '/')
                usage("--root-record: FILE must be an absolute path, got ", v);
            if (root_id_file && kbox_strcmp(root_id_file, v) != 0)
                usage("--root-id and --root-record name different files", NULL);
            policy.root_record = true;
            root_id_file = v;
            if (!policy.root_id)
                record_opt = "--root-record ";
        } else if (opt_value(a, "--chroot", &v)) {
            chroot_dir = v;
            keep = false; /* an execve passes on the chroot it is made in (exec.c) */
        } else if (opt_value(a, "--workdir", &v)) {
            workdir = v;
            keep = false; /* the working directory carries over an execve by itself */
        } else if (opt_value(a, "--cwd-fd", &v)) {
            long fd;
            if (!kbox_parse_long(v, &fd) || fd < 0)
                usage("bad --cwd-fd ", v);
            launch.cwd_fd = (int)fd;
        } else if (opt_value(a, "--exec-path", &v)) {
            exec_path = v;
            keep = false;
        } else {
            usage("unknown option ", a);
        }
        if (keep) {
            if (nsaved >= (int)(sizeof(saved_opts) / sizeof(saved_opts[0])) - 2)
                usage("too many options", NULL);
            saved_opts[nsaved++] = argv[i];
        }
    }
    if (i >= argc)
        usage("usage: kbox-launch [options] -- PROG [ARGS...]", NULL);
    launch.argv = argv + i;
    launch.path = exec_path ? exec_path : argv[i];

    if (mode == MODE_NONE)
        return kbox_plain_run(&launch);

    if (mode == MODE_SECCOMP && launch.relaunch) {
        /* A program's execve with a root view (seccomp-guest.h): the supervisor serves this
         * image's calls; the options are kept for the next execve. */
        if (!root || launch.cwd_fd < 0)
            usage("--relaunch with --syscall-mode=seccomp needs --root and --cwd-fd", NULL);
        launch.launcher_opts = saved_opts;
        launch.n_launcher_opts = nsaved;
        kbox_seccomp_guest(&launch);
    }
    if (bind_host[nbinds] || (nbinds && !root))
        usage("--bind needs --bind-at after it, and --root", NULL);
    if (root) {
        int r = kbox_view_init(root, high_fd(2));
        if (r < 0) {
            kbox_err("--root ", root, ": cannot open it as a directory");
            return KBOX_EXIT_USAGE;
        }
        for (int b = 0; b < nbinds; b++) {
            /* Descriptors below the root's, the seccomp tier's cwd (3) and one spare. */
            r = kbox_view_add_bind(bind_host[b], bind_guest[b], high_fd(5 + 2 * b));
            if (r < 0) {
                char why[160];
                struct kbox_buf m;
                kbox_buf_init(&m, why, sizeof(why));
                kbox_buf_puts(&m, " at ");
                kbox_buf_puts(&m, bind_guest[b]);
                kbox_buf_puts(&m, ": ");
                kbox_buf_puts(&m, kbox_strerror(-r));
                kbox_err("--bind ", bind_host[b], why);
                return KBOX_EXIT_USAGE;
            }
        }
        if (!launch.relaunch && start_in(workdir ? workdir : "/") < 0)
            return KBOX_EXIT_USAGE;
        /* Below the root's and the seccomp tier's cwd (3): the one spare. */
        kbox_view.chroot_fd_at = high_fd(4);
        if (chroot_dir && (r = kbox_view_chroot_to(chroot_dir)) < 0) {
            kbox_err("--chroot ", chroot_dir, ": cannot make it the root");
            return KBOX_EXIT_USAGE;
        }
    }
    if (chroot_dir && !root)
        usage("--chroot needs --root", NULL);

    if (policy.root_record && !root)
        usage(record_opt, "needs --root");
    if (policy.root_id)
        record_opt = "--root-id ";
    if (mode == MODE_SECCOMP && policy.virtual_pid)
        usage("--virtual-pid needs an in-process tier (--syscall-mode=trap): the seccomp tier "
              "cannot rewrite the results of fork, clone or wait4", NULL);
    policy.enforce_wx = mode != MODE_SECCOMP && !allow_wx;

    /* State shared by every process of the run. */
    if (launch.shared_fd >= 0) {
        if (kbox_shared_attach(launch.shared_fd, &policy.shared) < 0)
            usage("bad --shared-fd", NULL);
    } else {
        int fd = kbox_shared_create(&policy.shared);
        if (fd < 0) {
            kbox_err("cannot create shared state: ", kbox_strerror(-fd), NULL);
            return KBOX_EXIT_INTERNAL;
        }
        int want = high_fd(1);
        if (KSYS3(__NR_dup3, fd, want, mode == MODE_SECCOMP ? O_CLOEXEC : 0) == want) {
            kbox_close(fd);
            fd = want;
        }
        launch.shared_fd = fd;
        if (policy.root_record) {
            char why[256], msg[768];
            if (kbox_ids_load(&policy.shared->ids, root_id_file, policy.root_id, why, sizeof(why)) < 0) {
                struct kbox_buf b;
                kbox_buf_init(&b, msg, sizeof(msg));
                kbox_buf_puts(&b, root_id_file);
                kbox_buf_puts(&b, ": ");
                kbox_buf_puts(&b, why);
                kbox_err(record_opt, msg, NULL);
                return KBOX_EXIT_USAGE;
            }
        }
    }

    /* The trace goes to kbox's own stderr (or FILE), never to whatever the guest later makes
     * of its fd 2, so it is kept on a descriptor of its own. */
    if (policy.trace && policy.trace_fd < 0) {
        long fd = trace_output
                      ? kbox_openat(AT_FDCWD, trace_output, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644)
                      : KSYS1(__NR_dup, 2);
        if (fd < 0) {
            kbox_err(trace_output ? trace_output : "stderr", ": ", kbox_strerror((int)-fd));
            return KBOX_EXIT_USAGE;
        }
        int want = high_fd(0);
        if (KSYS3(__NR_dup3, fd, want, mode == MODE_SECCOMP ? O_CLOEXEC : 0) == want) {
            kbox_close((int)fd);
            fd = want;
        }
        policy.trace_fd = (int)fd;
    }

    /* What a re-launch after execve needs to rebuild this configuration. */
    if (policy.trace) {
        struct kbox_buf b;
        kbox_buf_init(&b, trace_fd_opt, sizeof(trace_fd_opt));
        kbox_buf_puts(&b, "--trace-fd=");
        kbox_buf_dec(&b, policy.trace_fd);
        saved_opts[nsaved++] = trace_fd_opt;
    }
    {
        struct kbox_buf b;
        kbox_buf_init(&b, shared_fd_opt, sizeof(shared_fd_opt));
        kbox_buf_puts(&b, "--shared-fd=");
        kbox_buf_dec(&b, launch.shared_fd);
        saved_opts[nsaved++] = shared_fd_opt;
    }
    if (root && mode == MODE_SECCOMP) {
        struct kbox_buf b;
        launch.cwd_fd = high_fd(3);
        kbox_buf_init(&b, cwd_fd_opt, sizeof(cwd_fd_opt));
        kbox_buf_puts(&b, "--cwd-fd=");
        kbox_buf_dec(&b, launch.cwd_fd);
        saved_opts[nsaved++] = cwd_fd_opt;
    }
    launch.launcher_opts = saved_opts;
    launch.n_launcher_opts = nsaved;
    long n = KSYS4(__NR_readlinkat, AT_FDCWD, "/proc/self/exe", self_path, sizeof(self_path) - 1);
    if (n <= 0) {
        kbox_err("cannot find the launcher itself (/proc/self/exe): ", kbox_strerror((int)-n), NULL);
        return KBOX_EXIT_INTERNAL;
    }
    self_path[n] = 0;
    launch.self_path = self_path;

    stats_tier = mode == MODE_SECCOMP ? "seccomp" : launch.rewrite ? "rewrite" : "trap";
    launch.finish = finish;
    finish(mode == MODE_SECCOMP ? kbox_seccomp_run(&launch) : kbox_trap_run(&launch));
}

/* The end of the run, in the top-level launcher once every process of it is gone. */
static void finish(int status)
{
    if (policy.stats && policy.shared)
        print_stats(stats_tier);
    if (policy.root_record && policy.shared && !launch.relaunch) {
        int r = kbox_ids_save(&policy.shared->ids, root_id_file);
        if (r < 0) {
            char msg[768];
            struct kbox_buf b;
            kbox_buf_init(&b, msg, sizeof(msg));
            kbox_buf_puts(&b, root_id_file);
            kbox_buf_puts(&b, ": cannot write the record: ");
            kbox_buf_puts(&b, kbox_strerror(-r));
            kbox_err(record_opt, msg, NULL);
            if (status == 0)
                status = KBOX_EXIT_INTERNAL;
        }
    }
    kbox_exit_group(status);
}

/* Called from _start (arch/<arch>/launch/entry.S) with the kernel's initial stack. */
void kbox_main(uint64_t *sp)
{
    kbox_exit_group(launcher_main(sp));
}
