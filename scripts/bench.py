#!/usr/bin/env python3
"""The vfolderfs benchmark: the same workloads, in one run, on the native
backing filesystem, a vfolder of a vfolderfs mount, bindfs and mergerfs over
the same disk. Prints absolute figures and each one's speed ratio to native
(higher is better), medians of several rounds with the order of targets
rotated between rounds. Run it through scripts/bench.sh, which builds the
release binary and installs the peers.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"),
                   "release", "vfolderfs")
# libfuse's example/passthrough_hp, built from source (scripts/bench.sh
# --uring builds it when LIBFUSE_SRC names a libfuse checkout).
PTHP = os.environ.get("PASSTHROUGH_HP", "/tmp/libfuse/build/example/passthrough_hp")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


def unmount(path):
    if not mounted(path):
        return
    if subprocess.run(["umount", path], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)
    for _ in range(200):
        if not mounted(path):
            return
        time.sleep(0.01)


class Target:
    def __init__(self, name, base):
        self.name = name
        self.base = base
        self.mnt = None
        self.work = None

    def setup(self):
        raise NotImplementedError

    def teardown(self):
        if self.mnt:
            unmount(self.mnt)


class Native(Target):
    def setup(self):
        self.work = os.path.join(self.base, "native")
        os.makedirs(self.work, exist_ok=True)


class Vfolderfs(Target):
    opts = None

    def __init__(self, name, base, binary=BIN):
        super().__init__(name, base)
        self.bin = binary

    def setup(self):
        self.store = os.path.join(self.base, f"{self.name}-store")
        self.mnt = os.path.join(self.base, f"{self.name}-mnt")
        os.makedirs(self.mnt, exist_ok=True)
        self.cli("init")
        opts = ",".join(o for o in (self.opts, self.extra_opts()) if o)
        self.cli("mount", self.mnt, *(["-o", opts] if opts else []))
        self.cli("create", "bench")
        self.work = os.path.join(self.mnt, "bench")
        wait_visible(self.work)

    def extra_opts(self):
        return None

    def cli(self, *args, check=True):
        return subprocess.run([self.bin, "--store", self.store, *args], check=check,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def pid(self):
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if cmd and self.store.encode() in cmd and b"mount" in cmd:
                return int(p)
        return None


class VfolderfsUring(Vfolderfs):
    """vfolderfs with -o io_uring; refuses to measure if the kernel did not
    grant it (the mount would be on /dev/fuse)."""

    def extra_opts(self):
        self.log = os.path.join(self.base, f"{self.name}.log")
        return f"io_uring,log={self.log}"

    def setup(self):
        super().setup()
        t0 = time.perf_counter()
        while True:
            with open(self.log) as f:
                if "FUSE over io_uring negotiated" in f.read():
                    return
            if time.perf_counter() - t0 > 10:
                raise RuntimeError("vfolderfs did not negotiate io_uring "
                                   "(/sys/module/fuse/parameters/enable_uring off?)")
            time.sleep(0.05)


class PassthroughHp(Target):
    """libfuse's example/passthrough_hp (default caching), on /dev/fuse or,
    with `uring`, -o io_uring."""
    uring = False

    def setup(self):
        src = os.path.join(self.base, f"{self.name}-src")
        self.mnt = os.path.join(self.base, f"{self.name}-mnt")
        os.makedirs(src, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        sh(f"{PTHP} {'-o io_uring ' if self.uring else ''}{src} {self.mnt}")
        t0 = time.perf_counter()
        while not mounted(self.mnt):
            if time.perf_counter() - t0 > 10:
                raise RuntimeError(f"{self.name} did not mount")
            time.sleep(0.01)
        self.work = self.mnt


class PassthroughHpUring(PassthroughHp):
    uring = True


class Bindfs(Target):
    def setup(self):
        src = os.path.join(self.base, "bindfs-src")
        self.mnt = os.path.join(self.base, "bindfs-mnt")
        os.makedirs(src, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        sh(f"bindfs {src} {self.mnt}")
        self.work = self.mnt


class Mergerfs(Target):
    def setup(self):
        src = os.path.join(self.base, "mergerfs-src")
        self.mnt = os.path.join(self.base, "mergerfs-mnt")
        os.makedirs(src, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        sh("mergerfs -o allow_other,use_ino,cache.files=off,dropcacheonclose=true,"
           f"category.create=mfs {src} {self.mnt}")
        self.work = self.mnt


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_files(d, n, size=0):
    data = b"x" * size
    for i in range(n):
        fd = os.open(os.path.join(d, f"f{i}"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        if data:
            os.write(fd, data)
        os.close(fd)


def make_tree(d, dirs, per):
    os.mkdir(d)
    for i in range(dirs):
        sub = os.path.join(d, f"d{i}")
        os.mkdir(sub)
        make_files(sub, per)


class Workloads:
    """Each workload takes a work directory and returns (value, unit, higher_is_better)."""

    def __init__(self, quick):
        self.quick = quick
        self.seq_mib = 256 if quick else 1024
        self.rand_mib = 64 if quick else 256
        self.rand_secs = 3 if quick else 10
        self.create_n = 2000 if quick else 10000
        self.tree = (50, 100) if quick else (500, 100)
        self.par = 500 if quick else 2500

    def seq_write(self, w):
        p = os.path.join(w, "seq")
        t = timed(lambda: sh(f"dd if=/dev/zero of={p} bs=1M count={self.seq_mib} conv=fsync status=none"))
        return self.seq_mib / t, "MiB/s", True

    def seq_read_cold(self, w):
        p = os.path.join(w, "seq")
        drop_caches()
        t = timed(lambda: sh(f"dd if={p} of=/dev/null bs=1M status=none"))
        return self.seq_mib / t, "MiB/s", True

    def seq_read_warm(self, w):
        p = os.path.join(w, "seq")
        sh(f"cat {p} > /dev/null")
        t = timed(lambda: sh(f"dd if={p} of=/dev/null bs=1M status=none"))
        os.unlink(p)
        return self.seq_mib / t, "MiB/s", True

    def rand_read_warm(self, w):
        p = os.path.join(w, "rand")
        sh(f"dd if=/dev/urandom of={p} bs=1M count={self.rand_mib} status=none && cat {p} > /dev/null")
        out = subprocess.run(
            ["fio", "--name=r", f"--filename={p}", "--rw=randread", "--bs=4k", f"--size={self.rand_mib}M",
             "--ioengine=psync", "--invalidate=0", f"--runtime={self.rand_secs}", "--time_based",
             "--output-format=terse", "--terse-version=3"],
            check=True, stdout=subprocess.PIPE, text=True).stdout
        os.unlink(p)
        iops = float(out.split(";")[7])
        return iops, "IOPS", True

    def create_10k(self, w):
        d = os.path.join(w, "c10k")
        os.mkdir(d)
        t = timed(lambda: make_files(d, self.create_n))
        shutil.rmtree(d)
        return self.create_n / t, "files/s", True

    def tree_create(self, w):
        d = os.path.join(w, "tree")
        t = timed(lambda: make_tree(d, *self.tree))
        return self.tree[0] * self.tree[1] / t, "files/s", True

    def ls_lr_warm(self, w):
        d = os.path.join(w, "tree")
        sh(f"ls -lR {d} > /dev/null")
        t = timed(lambda: sh(f"ls -lR {d} > /dev/null"))
        return t, "s", False

    def ls_lr_idle(self, w):
        """A walk after the tree sat idle (a data loader's next epoch, a
        later `find` or `rsync`): 60 s (20 s quick) after the previous one."""
        d = os.path.join(w, "tree")
        sh(f"ls -lR {d} > /dev/null")
        time.sleep(20 if self.quick else 60)
        t = timed(lambda: sh(f"ls -lR {d} > /dev/null"))
        return t, "s", False

    def find_stat_warm(self, w):
        d = os.path.join(w, "tree")
        sh(f"find {d} -printf '%s %m %u\\n' > /dev/null")
        t = timed(lambda: sh(f"find {d} -printf '%s %m %u\\n' > /dev/null"))
        return t, "s", False

    def rm_rf(self, w):
        d = os.path.join(w, "tree")
        t = timed(lambda: sh(f"rm -rf {d}"))
        return self.tree[0] * self.tree[1] / t, "files/s", True

    def small_read(self, w):
        """Open, read and close small files, warm (an ImageNet-style loader's
        epoch): 32 KiB files, one process."""
        return self._small_reads(w, "fd=os.open(p,os.O_RDONLY); os.read(fd,65536); os.close(fd)")

    def small_read_open(self, w):
        """The same with Python's open() (a loader's usual call), which also
        fstat()s each file: after an earlier epoch's read the kernel asks
        the filesystem for the attributes again (kernel passthrough
        invalidates the cached atime after every read)."""
        return self._small_reads(w, "with open(p,'rb') as f: f.read()")

    def _small_reads(self, w, read_one):
        """Reads 32 KiB files with `read_one` (Python, the path in `p`) in a
        fresh process, once to warm the caches and once timed."""
        d = os.path.join(w, "small")
        os.mkdir(d)
        n = 2000 if self.quick else 10000
        blob = os.urandom(32768)
        for i in range(n):
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(blob)
        os.sync()
        script = ("import os,sys\n"
                  "d=sys.argv[1]; n=int(sys.argv[2])\n"
                  "for i in range(n):\n"
                  "    p=os.path.join(d,'f%d'%i)\n"
                  f"    {read_one}\n")
        subprocess.run([sys.executable, "-c", script, d, str(n)], check=True)  # warm
        t = timed(lambda: subprocess.run([sys.executable, "-c", script, d, str(n)], check=True))
        shutil.rmtree(d)
        return n / t, "files/s", True

    def ckpt_parallel(self, w):
        """Four writers each write a checkpoint file and fsync it."""
        mib = 128 if self.quick else 1024
        ps = []
        t0 = time.perf_counter()
        for k in range(4):
            p = os.path.join(w, f"ckpt{k}")
            ps.append(subprocess.Popen(["dd", "if=/dev/zero", f"of={p}", "bs=1M", f"count={mib}",
                                        "conv=fsync", "status=none"]))
        for p in ps:
            if p.wait() != 0:
                raise RuntimeError("dd failed")
        t = time.perf_counter() - t0
        for k in range(4):
            os.unlink(os.path.join(w, f"ckpt{k}"))
        return 4 * mib / t, "MiB/s", True

    def ckpt_many(self, w):
        """A run of 256 MiB checkpoint shards, one after another, each fsynced."""
        n, mib = (4, 64) if self.quick else (8, 256)
        d = os.path.join(w, "shards")
        os.mkdir(d)
        t = timed(lambda: [sh(f"dd if=/dev/zero of={d}/s{i} bs=1M count={mib} conv=fsync status=none")
                           for i in range(n)])
        shutil.rmtree(d)
        return n * mib / t, "MiB/s", True

    def parallel_small(self, w):
        d = os.path.join(w, "par")
        os.mkdir(d)
        n = self.par
        script = ("import os,sys\n"
                  "d=sys.argv[1]\n"
                  f"for i in range({n}):\n"
                  "    p=os.path.join(d,'f%d'%i)\n"
                  "    fd=os.open(p,os.O_CREAT|os.O_WRONLY,0o644); os.write(fd,b'y'*4096); os.close(fd)\n"
                  f"for i in range({n}):\n"
                  "    fd=os.open(os.path.join(d,'f%d'%i),os.O_RDONLY); os.read(fd,8192); os.close(fd)\n")
        for k in range(4):
            os.mkdir(os.path.join(d, str(k)))

        def run():
            ps = [subprocess.Popen([sys.executable, "-c", script, os.path.join(d, str(k))]) for k in range(4)]
            for p in ps:
                if p.wait() != 0:
                    raise RuntimeError("parallel worker failed")
        t = timed(run)
        shutil.rmtree(d)
        return 4 * n / t, "files/s", True


ROWS = [
    ("seq write (fsync)", "seq_write"),
    ("seq read cold", "seq_read_cold"),
    ("seq read warm", "seq_read_warm"),
    ("4 KiB rand read warm", "rand_read_warm"),
    ("create files, one dir", "create_10k"),
    ("tree create", "tree_create"),
    ("ls -lR tree, warm", "ls_lr_warm"),
    ("ls -lR tree, after idle", "ls_lr_idle"),
    ("find/stat tree, warm", "find_stat_warm"),
    ("rm -rf tree", "rm_rf"),
    ("4 procs small files", "parallel_small"),
    ("small-file reads 32 KiB", "small_read"),
    ("same, Python open()", "small_read_open"),
    ("4 writers x ckpt, fsync", "ckpt_parallel"),
    ("256 MiB shards, fsync", "ckpt_many"),
]

# Workloads that use what an earlier one made.
NEEDS = {
    "seq_read_cold": "seq_write",
    "seq_read_warm": "seq_write",
    "ls_lr_warm": "tree_create",
    "ls_lr_idle": "tree_create",
    "find_stat_warm": "tree_create",
    "rm_rf": "tree_create",
}


def lifecycle(vfs, quick, base):
    """Trash and purge of a populated vfolder against native rm -rf."""
    n_dirs, per = (50, 200) if quick else (500, 100)
    files = n_dirs * per
    out = {}
    vfs.cli("create", "life")
    path = None
    for line in vfs.cli("show", "life", "--json").stdout.splitlines():
        import json
        path = json.loads(line)["path"]
    for i in range(n_dirs):
        sub = os.path.join(path, f"d{i}")
        os.mkdir(sub)
        make_files(sub, per)
    t_del = timed(lambda: vfs.cli("delete", "life"))
    t_purge = timed(lambda: vfs.cli("purge", "life"))
    native = os.path.join(base, "native-rm")
    make_tree(native, n_dirs, per)
    os.sync()
    t_rm = timed(lambda: sh(f"rm -rf {native}"))
    out["delete to trash"] = (t_del * 1000, f"ms for {files} files")
    out["purge"] = ((files + n_dirs) / t_purge, f"entries/s (native rm -rf {(files + n_dirs) / t_rm:.0f}/s,"
                    f" ratio {t_rm / t_purge:.2f})")
    return out


def wait_visible(path, limit=5.0):
    """A vfolder made by the CLI appears in the mount within the watcher's poll."""
    t0 = time.perf_counter()
    while not os.path.isdir(path):
        if time.perf_counter() - t0 > limit:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.005)


class CpuHogs:
    """Busy loops on every CPU while the block runs (a loaded host)."""

    def __enter__(self):
        self.procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
                      for _ in range(os.cpu_count() or 2)]
        return self

    def __exit__(self, *_):
        for p in self.procs:
            p.kill()
            p.wait()


def seed_vfolders(store, n):
    """Adds n ready vfolders straight into an (unmounted) store: the rows and
    private backing directories `create` would make, without 20,000 CLI runs.
    Bench-only seeding; the change feed's triggers stamp the rows as usual."""
    import sqlite3
    import uuid
    now = int(time.time() * 1000)
    db = sqlite3.connect(os.path.join(store, "vfolders.db"))
    with db:
        for i in range(n):
            vid = str(uuid.uuid4())
            d = os.path.join(store, "data", vid[:2])
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.mkdir(os.path.join(d, vid), 0o700)
            db.execute("INSERT INTO vfolders (id, name, status, created_at, status_changed_at, volume)"
                       " VALUES (?, ?, 'ready', ?, ?, 'default')", (vid, f"seed{i}", now, now))
            db.execute("INSERT INTO status_history (vfolder_id, from_status, to_status, at, cause)"
                       " VALUES (?, NULL, 'ready', ?, 'bench seed')", (vid, now))
    db.close()


def enforcement_latency(base, n_vfolders, loaded, samples):
    """The enforcement protocol as a user sees it: a writer keeps writing
    through a handle while `vfolderfs delete` runs. Returns the command's
    duration (it returns once every live mount confirmed), the time from the
    command's start to the first refused write, both as (median, max) in ms,
    and how many writes that began after the command returned succeeded
    (the protocol says none)."""
    import threading
    vfs = Vfolderfs(f"enf{n_vfolders}{'L' if loaded else ''}", base)
    vfs.store = os.path.join(base, f"enf-store-{n_vfolders}-{int(loaded)}")
    vfs.mnt = os.path.join(base, f"enf-mnt-{n_vfolders}-{int(loaded)}")
    os.makedirs(vfs.mnt, exist_ok=True)
    vfs.cli("init")
    seed_vfolders(vfs.store, max(0, n_vfolders - 1))
    vfs.cli("mount", vfs.mnt)
    cmd, refusal, late_ok = [], [], 0
    try:
        hogs = CpuHogs() if loaded else None
        if hogs:
            hogs.__enter__()
        try:
            for i in range(samples):
                name = f"lat{i}"
                vfs.cli("create", name)
                fd = os.open(os.path.join(vfs.mnt, name, "f"), os.O_CREAT | os.O_WRONLY, 0o644)
                stop = threading.Event()
                log = []  # (began, ok) of every write

                def writer():
                    while not stop.is_set():
                        t = time.perf_counter()
                        try:
                            os.pwrite(fd, b"x", 0)
                            log.append((t, True))
                        except OSError:
                            log.append((t, False))

                th = threading.Thread(target=writer)
                th.start()
                time.sleep(0.05)
                t0 = time.perf_counter()
                vfs.cli("delete", name)
                t1 = time.perf_counter()
                time.sleep(0.05)
                stop.set()
                th.join()
                os.close(fd)
                cmd.append((t1 - t0) * 1000)
                first = next((t for t, ok in log if not ok and t >= t0), None)
                refusal.append(((first - t0) * 1000) if first is not None else float("nan"))
                late_ok += sum(1 for t, ok in log if ok and t > t1)
        finally:
            if hogs:
                hogs.__exit__()
    finally:
        unmount(vfs.mnt)
    return ((statistics.median(cmd), max(cmd)), (statistics.median(refusal), max(refusal)), late_ok)


def rss_after_find(vfs, n_files):
    vfs.cli("create", "rss")
    import json
    path = json.loads(vfs.cli("show", "rss", "--json").stdout)["path"]
    per = 1000
    for i in range(n_files // per):
        sub = os.path.join(path, f"d{i}")
        os.mkdir(sub)
        make_files(sub, per)
    wait_visible(os.path.join(vfs.mnt, "rss"))
    sh(f"find {os.path.join(vfs.mnt, 'rss')} > /dev/null")
    pid = vfs.pid()
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pinned(cpu, f):
    """Runs f with this process (and what it starts) on `cpu` alone, if given."""
    if cpu is None:
        return f()
    was = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return f()
    finally:
        os.sched_setaffinity(0, was)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, one round (under 2 minutes)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--dir", default="/var/tmp", help="where to work (the disk under test)")
    ap.add_argument("--only", default=None, help="comma-separated targets (native,vfolderfs,bindfs,mergerfs;"
                    " also vfolderfs-uring, pthp, pthp-uring)")
    ap.add_argument("--vfs-opts", default=None, help="extra -o options for the vfolderfs mount")
    ap.add_argument("--skip-extra", action="store_true", help="only the table (no lifecycle, latency, RSS)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                    help="also mount another vfolderfs binary as target NAME (e.g. before=/tmp/old/vfolderfs),"
                    " for a before/after comparison in the same run")
    ap.add_argument("--samples", action="store_true", help="also print every round's figures")
    ap.add_argument("--tree", default=None,
                    help="DIRS,PER: the tree rows' size (default 500,100; 50,100 quick)")
    ap.add_argument("--pin-client", type=int, default=None, metavar="CPU",
                    help="run each workload (and the processes it starts) on this CPU only, as in a"
                    " one-CPU cpuset; the file systems' daemons stay unpinned")
    ap.add_argument("--rows", default=None,
                    help="comma-separated workloads to run (" + ",".join(fn for _, fn in ROWS) + ")")
    args = ap.parse_args()
    Vfolderfs.opts = args.vfs_opts
    rounds = args.rounds or (1 if args.quick else 3)
    base = tempfile.mkdtemp(prefix="vfolderfs-bench-", dir=args.dir)
    kinds = {"native": Native, "vfolderfs": Vfolderfs, "bindfs": Bindfs, "mergerfs": Mergerfs,
             "vfolderfs-uring": VfolderfsUring, "pthp": PassthroughHp, "pthp-uring": PassthroughHpUring}
    # The io_uring and passthrough_hp targets are asked for by name
    # (scripts/bench.sh --uring).
    names = args.only.split(",") if args.only else ["native", "vfolderfs", "bindfs", "mergerfs"]
    if not os.access(PTHP, os.X_OK) and any(n.startswith("pthp") for n in names):
        print(f"note: {PTHP} is not built (set PASSTHROUGH_HP, or LIBFUSE_SRC for bench.sh --uring):"
              " passthrough_hp skipped", file=sys.stderr)
        names = [n for n in names if not n.startswith("pthp")]
    targets = [kinds[n](n, base) for n in names]
    for spec in args.compare:
        name, _, path = spec.partition("=")
        if not name or not path or name in kinds:
            ap.error(f"--compare wants NAME=PATH with a new name, not {spec!r}")
        targets.insert(2 if len(targets) > 2 else len(targets), Vfolderfs(name, base, os.path.abspath(path)))
    wl = Workloads(args.quick)
    if args.tree:
        wl.tree = tuple(int(x) for x in args.tree.split(","))
    rows = ROWS
    if args.rows:
        wanted = args.rows.split(",")
        unknown = set(wanted) - {fn for _, fn in ROWS}
        if unknown:
            ap.error(f"unknown workloads: {', '.join(sorted(unknown))}")
        # A workload that reads what another one made brings that one along.
        wanted += [NEEDS[fn] for fn in wanted if fn in NEEDS]
        rows = [r for r in ROWS if r[1] in wanted]
    results = {}
    units = {}
    extra = {}

    def cleanup(*_):
        for t in targets:
            try:
                t.teardown()
            except Exception:
                pass
        shutil.rmtree(base, ignore_errors=True)

    signal.signal(signal.SIGINT, lambda *a: (cleanup(), sys.exit(130)))
    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(143)))
    try:
        for t in targets:
            t.setup()
        for rnd in range(rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for label, fn in rows:
                for t in order:
                    # Each measurement starts with no dirty data left by the one before.
                    os.sync()
                    v, unit, hib = pinned(args.pin_client, lambda: getattr(wl, fn)(t.work))
                    results.setdefault((t.name, fn), []).append(v)
                    units[fn] = (unit, hib)
            for t in targets:
                # What a partial selection of workloads left behind (untimed).
                for leftover in ("seq", "tree"):
                    p = os.path.join(t.work, leftover)
                    if os.path.isdir(p):
                        shutil.rmtree(p)
                    elif os.path.exists(p):
                        os.unlink(p)
            print(f"round {rnd + 1}/{rounds} done", file=sys.stderr)
        vfs = next((t for t in targets if t.name == "vfolderfs"), None)
        if vfs and not args.skip_extra:
            extra.update(lifecycle(vfs, args.quick, base))
            samples = 5 if args.quick else 20
            for n_vf in (1, 20_000):
                for loaded in (False, True):
                    (cm, cx), (rm, rx), late = enforcement_latency(base, n_vf, loaded, samples)
                    host = "loaded" if loaded else "idle"
                    extra[f"delete returns, {n_vf} vfolders, {host}"] = (
                        cm, f"ms median (max {cx:.1f})")
                    extra[f"delete → first refused write, {n_vf}, {host}"] = (
                        rm, f"ms median (max {rx:.1f}); writes begun after return that succeeded: {late}")
            n = 100_000 if args.quick else 1_000_000
            rss = rss_after_find(vfs, n)
            extra[f"daemon peak RSS after find over {n} files"] = (rss, "MiB (target ≤256)")
    finally:
        cleanup()

    def cell(name, fn):
        v = statistics.median(results[(name, fn)])
        unit, hib = units[fn]
        nat = statistics.median(results[("native", fn)]) if ("native", fn) in results else None
        ratio = ""
        if nat and name != "native":
            r = v / nat if hib else nat / v
            ratio = f" ({r:.2f})"
        return f"{v:,.1f}{ratio}" if v >= 10 else f"{v:.3f}{ratio}"

    print()
    print(f"vfolderfs benchmark ({'quick' if args.quick else 'full'}, {rounds} round(s), medians;"
          " ratio to native in parentheses, higher is better)")
    if args.pin_client is not None:
        print(f"workloads pinned to CPU {args.pin_client} (daemons unpinned)")
    header = f"{'workload':26} {'unit':8}" + "".join(f" {t.name:>20}" for t in targets)
    print(header)
    print("-" * len(header))
    for label, fn in rows:
        unit, _ = units[fn]
        print(f"{label:26} {unit:8}" + "".join(f" {cell(t.name, fn):>20}" for t in targets))
    if args.samples:
        print()
        for label, fn in rows:
            for t in targets:
                vals = " ".join(f"{v:,.1f}" if v >= 10 else f"{v:.3f}" for v in results[(t.name, fn)])
                print(f"{label:26} {t.name:10} {vals}")
    if extra:
        print()
        for k, (v, unit) in extra.items():
            print(f"{k:45} {v:10.1f} {unit}")


if __name__ == "__main__":
    main()
