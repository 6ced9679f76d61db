"""The programs run inside the Debian tree (kbox/root_debian.py) by tests/test_root_debian.py
on the host and vmtests/test_root_debian.py in each guest, and what legitimately differs
between their output natively in a chroot and under kbox --root."""
from __future__ import annotations

import re

# The same environment for the native and the kbox run; fixed git dates make commit ids
# reproducible, so they are compared rather than masked.
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C",
       "TZ": "UTC", "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
       "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z"}

GIT = """d=$(mktemp -d /tmp/git.XXXXXX) && cd "$d" && git init -q -b main && printf 'hi\\n' > f &&
mkdir sub && echo there > sub/g && git add -A && git -c user.name=k -c user.email=k@k commit -qm first &&
echo more >> f && git -c user.name=k -c user.email=k@k commit -qam second &&
git log --format='%H %s' && git status --short && git cat-file -p HEAD^{tree} && git diff HEAD~1 --stat &&
cd / && rm -rf "$d" """
SQLITE = """d=$(mktemp -d /tmp/db.XXXXXX) &&
sqlite3 "$d/t.db" "create table t(k integer primary key, v text); insert into t(v) values ('a'), ('b');
  create index tv on t(v); select k, v from t order by v desc; pragma integrity_check;" &&
sqlite3 "$d/t.db" .dump && rm -rf "$d" """
PYTHON = """import hashlib, json, os, sqlite3, subprocess, sys
print(sys.version.split()[0], sys.prefix, sys.executable)
print(subprocess.run(['sh', '-c', 'ls /usr/lib/python3.11/json; echo $0'], capture_output=True, text=True).stdout)
print(hashlib.sha256(open('/usr/bin/dash', 'rb').read()).hexdigest())
print(sorted(os.listdir('/etc')), os.path.realpath('/lib64/ld-linux-x86-64.so.2'))
print(json.dumps(sqlite3.connect(':memory:').execute('select sqlite_version()').fetchall()))
"""
PROGRAMS = {
    "os-release-and-bin": ["sh", "-c", "cat /etc/os-release; ls /usr/bin | head"],
    "ls-l-root": ["ls", "-l", "/"],
    "coreutils-stat": ["stat", "/etc/hostname", "/usr/bin", "/bin", "/etc/os-release"],
    "coreutils-sort": ["sh", "-c", "sort -t: -k3,3n /etc/passwd /etc/group; printf 'b\\nc\\na\\n' | sort -r; ls /usr/lib | sort | tail -3"],
    "python3": ["python3", "-c", PYTHON],
    "git": ["sh", "-c", GIT],
    "sqlite3": ["sh", "-c", SQLITE],
}


def masked(name: str, out: str) -> str:
    """What legitimately differs between a native chroot and kbox --root, removed."""
    if name == "ls-l-root":
        # /proc, /dev and /sys are the host's under kbox (docs/tiers.md: what the view is
        # made of), the tree's own empty directories in a chroot without mounts: their
        # lines and the block total that counts them differ by design, and so do the column
        # widths ls pads to (the host's /proc has a link per process: 99 or 100 of them).
        return "\n".join(re.sub(r" +", " ", ln) for ln in out.splitlines()
                         if not re.search(r" (proc|dev|sys)$", ln) and not ln.startswith("total "))
    if name == "coreutils-stat":
        # Access times move whenever any run reads the file (relatime), natively too.
        return re.sub(r"(?m)^Access: \d{4}-.*$", "Access: <atime>", out)
    return out


# Root view bugs these programs found (csrc/core/view.c, kbox_view_host_path), expected to
# fail until fixed; strict, so a fix makes them fail as XPASS and the marks go.
KNOWN_BUGS: dict[str, str] = {}
