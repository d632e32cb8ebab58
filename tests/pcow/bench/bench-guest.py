#!/usr/bin/python3
"""Guest benchmarks: host-dax, raw-dax, pcow-dax, pcow-blk, qcow2-blk side by
side (run by run-bench.sh; `make bench` / `make bench-quick`).

Every configuration boots the same Linux guest (tests/pcow/guest: Debian's
6.1 kernel, busybox, Debian's fio) with the same vCPUs and memory and runs
the same fio jobs; the images live on tmpfs (PM emulated by DRAM, as in the
paper) and, as a second column, on the build file system.  Results go to
OUT/results.json, the console logs to OUT/logs/, the charts to OUT/figures/
(and docs/figures/ with --publish).  The last line printed is one JSON
object of ratios.

Usage: bench-guest.py [--quick] [--accel tcg|kvm] [--out DIR] [--publish]
                      [--fs tmpfs,build] [--runtime S] [--only CONFIGS]

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent.parent.parent
sys.path.insert(0, str(TOP / "tests/pcow/guest"))
import guest  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
CONFIGS = ["host-dax", "raw-dax", "pcow-dax", "pcow-blk", "qcow2-blk"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_path(name, env):
    p = os.environ.get(env)
    if p:
        return p
    b = os.environ.get("BUILD", "build")
    b = Path(b) if os.path.isabs(b) else TOP / b
    if (b / name).exists():
        return str(b / name)
    return shutil.which(name)


class BenchGuest(guest.Guest):
    """guest.Guest with a selectable accelerator (the harness hard-codes
    TCG)."""

    def __init__(self, *a, accel="tcg", **kw):
        super().__init__(*a, **kw)
        self.accel = accel

    def command(self, initrd, kernel):
        cmd = super().command(initrd, kernel)
        i = cmd.index("pc,nvdimm=on,accel=tcg")
        cmd[i] = f"pc,nvdimm=on,accel={self.accel}"
        if self.accel == "kvm":
            cmd[cmd.index("max")] = "host"
        return cmd


# ----------------------------------------------------------------------------
# fio job definitions (shared by host and guest)

PCTS = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9]


def fio_args(name, *, rw, bs, filename, size, offset=0, engine, jobs=1,
             runtime=None, io_size=None, direct=False, extra=()):
    a = [f"--name={name}", f"--filename={filename}", f"--rw={rw}",
         f"--bs={bs}", f"--ioengine={engine}", f"--numjobs={jobs}",
         "--group_reporting", "--output-format=json", "--randrepeat=0",
         "--percentile_list=" + ":".join(str(p) for p in PCTS)]
    if jobs > 1 and rw in ("read", "write"):
        # sequential: each thread streams its own slice
        a += [f"--size={size // jobs}", f"--offset={offset}",
              f"--offset_increment={size // jobs}"]
    else:
        a += [f"--size={size}", f"--offset={offset}"]
    if runtime:
        a += ["--time_based", f"--runtime={runtime}", "--ramp_time=1"]
        if rw.startswith("rand"):
            a.append("--norandommap")
    if io_size:
        a.append(f"--io_size={io_size}")
    if direct:
        a.append("--direct=1")
    return a + list(extra)


def steady_jobs(p, target, engine, direct, size, offset=0):
    """The steady-state workloads over already written data."""
    T, N = p["runtime"], p["vcpus"]
    k = dict(filename=target, size=size, offset=offset, engine=engine,
             direct=direct, runtime=T)
    jobs = [("randread-4k-1", dict(rw="randread", bs="4k", **k)),
            ("randwrite-4k-1", dict(rw="randwrite", bs="4k", **k)),
            ("read-1m-N", dict(rw="read", bs="1m", jobs=N, **k)),
            ("write-1m-N", dict(rw="write", bs="1m", jobs=N, **k)),
            ("randread-4k-N", dict(rw="randread", bs="4k", jobs=N, **k)),
            ("randwrite-4k-N", dict(rw="randwrite", bs="4k", jobs=N, **k))]
    if engine == "psync" and p.get("libaio"):
        aio = dict(k, engine="libaio")
        x = ("--iodepth=16",)
        jobs += [("randread-4k-1-aio16", dict(rw="randread", bs="4k", extra=x, **aio)),
                 ("randwrite-4k-1-aio16", dict(rw="randwrite", bs="4k", extra=x, **aio))]
    return jobs


def first_touch_job(target, engine, direct, size, offset=0):
    # 4 KiB random writes into never-written space: one write per 64 KiB
    # on average, no block written twice (fio's random map).
    return ("firsttouch-4k-1", dict(rw="randwrite", bs="4k", filename=target,
                                    size=size, offset=offset, engine=engine,
                                    direct=direct, io_size=size // 16))


def cow_job(name, target, engine, direct, size, offset=0):
    # After a snapshot: 4 KiB random writes over written data, about one
    # write per 64 KiB cluster, so (almost) every write is a first write to
    # a frozen cluster.
    return (name, dict(rw="randwrite", bs="4k", filename=target, size=size,
                       offset=offset, engine=engine, direct=direct,
                       io_size=size // 16))


def sh_fio(jobs):
    out = []
    for name, kw in jobs:
        args = " ".join(fio_args(name, **kw))
        out.append(f'echo "BENCH-BEGIN {name} $(cat /proc/uptime)"\n'
                   f"fio {args} 2>&1 | sed 's/^/@J /'\n"
                   f'echo "BENCH-END {name} $(cat /proc/uptime)"')
    return "\n".join(out) + "\n"


def parse_fio(lines):
    """{job name: fio json} from console lines."""
    res, cur, buf = {}, None, []
    for ln in lines:
        m = re.search(r"BENCH-BEGIN (\S+)", ln)
        if m:
            cur, buf = m.group(1), []
            continue
        m = re.search(r"BENCH-END (\S+)", ln)
        if m and cur:
            txt = "\n".join(buf)
            try:
                j = json.loads(txt[txt.index("{"):txt.rindex("}") + 1])
                res[cur] = summarize(j)
            except (ValueError, KeyError, IndexError) as e:
                res[cur] = {"error": f"{e}: {txt[-400:]}"}
            cur = None
            continue
        if cur is not None and ln.startswith("@J "):
            buf.append(ln[3:])
    return res


def summarize(j):
    job = j["jobs"][0]
    d = job["write"] if job["write"]["io_bytes"] > job["read"]["io_bytes"] else job["read"]
    pct = d.get("clat_ns", {}).get("percentile", {})
    pcts = {float(k): v / 1000.0 for k, v in pct.items()}
    def at(p):
        return pcts.get(p)
    return {"iops": d["iops"], "bw_MBps": d["bw_bytes"] / 1e6,
            "lat_mean_us": d.get("lat_ns", {}).get("mean", 0) / 1000.0,
            "p50_us": at(50.0), "p99_us": at(99.0),
            "pcts_us": sorted(pcts.items()),
            "ios": d.get("total_ios", 0), "runtime_ms": d.get("runtime", 0)}


def parse_kv(lines, key):
    """Lines 'KEY name value...' -> {name: rest}."""
    out = {}
    for ln in lines:
        m = re.search(rf"{key} (\S+) (.*)", ln)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


# ----------------------------------------------------------------------------
# guest scripts

DAX_SETUP = """
set -u
loadavg() { echo "BENCH-INFO $1 $(cat /proc/uptime)"; }
ndctl create-namespace -f -e namespace0.0 -m fsdax >/dev/null || echo "BENCH-FAIL ndctl"
mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0,nodiscard /dev/pmem0 || echo "BENCH-FAIL mkfs"
mount -o dax /dev/pmem0 /mnt || echo "BENCH-FAIL mount"
grep -q ' /mnt .*dax' /proc/mounts && echo "BENCH-INFO dax-mounted" || echo "BENCH-FAIL not-dax"
"""

DAX_REMOUNT = """
set -u
mount -o dax /dev/pmem0 /mnt || echo "BENCH-FAIL mount"
grep -q ' /mnt .*dax' /proc/mounts || echo "BENCH-FAIL not-dax"
"""


def sh_timed(name, cmd):
    """Run cmd, print BENCH-TIME name seconds (guest clock)."""
    return (f't0=$(cut -d" " -f1 /proc/uptime)\n{cmd}\n'
            f't1=$(cut -d" " -f1 /proc/uptime)\n'
            f'echo "BENCH-TIME {name} $t0 $t1"\n')


def sh_redis(p, where):
    n = p["redis_n"]
    return f"""
ip link set lo up
mkdir -p {where}/redis
redis-server --dir {where}/redis --appendonly yes --appendfsync always \\
    --save '' --bind 127.0.0.1 --port 6379 --daemonize yes \\
    --logfile /tmp/redis.log --protected-mode no >/dev/null
i=0; while ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; do
    i=$((i+1)); [ $i -gt 100 ] && {{ echo "BENCH-FAIL redis"; tail /tmp/redis.log; break; }}
    usleep 100000; done
r=$(redis-benchmark -h 127.0.0.1 -t set -n {n} -c 8 -d 256 -r 100000 -q --csv 2>&1 | grep '"SET"' | cut -d, -f2 | tr -d '"')
echo "BENCH-REDIS set ${{r:-0}}"
echo "BENCH-REDIS aof_bytes $(wc -c < {where}/redis/appendonlydir/*.incr.aof 2>/dev/null || wc -c < {where}/redis/appendonly.aof 2>/dev/null || echo 0)"
redis-cli -h 127.0.0.1 shutdown nosave >/dev/null 2>&1
"""


def layout(p):
    """Regions (offset, size) on the NVDIMM/virtio disk or files on DAX."""
    ds, fs, cs = p["data"], p["ft"], p["cow"]
    return {"data": (0, ds), "ft": (ds, fs), "cow": (ds + fs, cs),
            "cowcl": (ds + fs + cs, cs), "end": ds + fs + 2 * cs}


def script_dax_main(p, redis):
    L = layout(p)
    ds, cs = L["data"][1], L["cow"][1]
    s = DAX_SETUP
    s += sh_timed("layout-write-1m", f"dd if=/dev/zero of=/mnt/data bs=1M count={ds // MiB} conv=fsync 2>/dev/null")
    s += sh_fio(steady_jobs(p, "/mnt/data", "mmap", False, ds))
    s += sh_fio([first_touch_job("/mnt/fresh", "mmap", False, L["ft"][1])])
    # data for the copy-on-write boots
    for f in ("cow", "cowcl"):
        s += f"dd if=/dev/urandom of=/mnt/{f} bs=1M count={cs // MiB} conv=fsync 2>/dev/null\n"
    if redis:
        s += sh_redis(p, "/mnt")
    s += "sync; umount /mnt\n"
    return s


def script_dax_cow(p, name, f):
    cs = layout(p)["cow"][1]
    return DAX_REMOUNT + sh_fio([cow_job(name, f"/mnt/{f}", "mmap", False, cs)]) + "umount /mnt\n"


def find_dev_sh(kind, size):
    if kind == "pmem":
        return "DEV=/dev/pmem0\n"
    return ("""DEV=
for b in /sys/block/vd*; do
    [ "$(cat $b/size)" = "%d" ] && DEV=/dev/${b##*/}
done
[ -n "$DEV" ] || echo "BENCH-FAIL no virtio disk of %d sectors"
""" % (size // 512, size // 512))


VIRTIO_SETUP = """
for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
    insmod /bench/$m.ko 2>/dev/null
done
i=0; while [ ! -e /sys/block/vda ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
"""


def script_blk_main(p, kind, redis):
    L = layout(p)
    ds = L["data"][1]
    s = "set -u\n" + (VIRTIO_SETUP if kind == "virtio" else "")
    s += find_dev_sh(kind, p["img"])
    s += sh_timed("layout-write-1m", f"dd if=/dev/zero of=$DEV bs=1M count={ds // MiB} oflag=direct 2>/dev/null")
    s += sh_fio(steady_jobs(p, "$DEV", "psync", True, ds))
    s += sh_fio([first_touch_job("$DEV", "psync", True, L["ft"][1], L["ft"][0])])
    for r in ("cow", "cowcl"):
        off, sz = L[r]
        s += (f"dd if=/dev/urandom of=$DEV bs=1M seek={off // MiB} count={sz // MiB} "
              "oflag=direct 2>/dev/null\n")
    if redis:
        s += find_dev_sh(kind, p["redis_img"]).replace("DEV=", "RDEV=").replace("$DEV", "$RDEV")
        s += ("mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0,nodiscard $RDEV"
              " || echo BENCH-FAIL mkfs\nmkdir -p /r && mount $RDEV /r || echo BENCH-FAIL mount\n")
        s += sh_redis(p, "/r") + "umount /r\n"
    s += "sync\n"
    return s


def script_blk_cow(p, kind, name, region):
    off, sz = layout(p)[region]
    s = "set -u\n" + (VIRTIO_SETUP if kind == "virtio" else "")
    s += find_dev_sh(kind, p["img"])
    return s + sh_fio([cow_job(name, "$DEV", "psync", True, sz, off)])


# ----------------------------------------------------------------------------

class Runner:
    def __init__(self, a):
        self.a = a
        self.quick = a.quick
        self.accel = a.accel
        self.qemu = build_path("qemu-system-x86_64", "QEMU")
        self.qemu_img = build_path("qemu-img", "QEMU_IMG")
        self.pcow_img = build_path("pcow-img", "PCOW_IMG")
        for n, v in (("QEMU", self.qemu), ("pcow-img", self.pcow_img)):
            if not v or not os.access(v, os.X_OK):
                sys.exit(f"bench: {n} not found (build first, or set the env)")
        self.out = Path(a.out)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        vcpus = a.vcpus or min(os.cpu_count() or 1, 4)
        self.p = {"vcpus": vcpus, "runtime": a.runtime or (4 if a.quick else 8),
                  "img": 2 * GiB, "redis_img": 1 * GiB,
                  "data": (256 if a.quick else 512) * MiB,
                  "ft": (256 if a.quick else 512) * MiB,
                  "cow": (128 if a.quick else 256) * MiB,
                  "redis_n": 20000 if a.quick else 50000,
                  "mem": "1G", "libaio": True}
        self.results = {"meta": {}, "fs": {}}
        self.escalate = self.detect_escalate()
        self.files = self.guest_files()
        self.boot_times = []

    # -- environment --
    def detect_escalate(self):
        """How this QEMU lets us choose whole-cluster COW, if it does."""
        try:
            h = subprocess.run([self.qemu, "-object", "memory-backend-file,help"],
                               capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            h = ""
        m = re.search(r"^\s*(cow-?escalate)\b", h, re.M)
        if m:
            return ("prop", m.group(1))
        try:
            s = subprocess.run(["grep", "-c", "PCOW_COW_ESCALATE", self.qemu],
                               capture_output=True, text=True).stdout.strip()
        except OSError:
            s = "0"
        if s and s != "0":
            return ("env", "PCOW_COW_ESCALATE")
        return None

    def guest_files(self):
        files = {}
        kver = (Path(guest.build_initramfs()) / "kver").read_text().strip()
        mods = Path("/lib/modules") / kver / "kernel/drivers"
        for m in ("virtio/virtio", "virtio/virtio_ring", "virtio/virtio_pci_legacy_dev",
                  "virtio/virtio_pci_modern_dev", "virtio/virtio_pci", "block/virtio_blk"):
            f = mods / (m + ".ko")
            if f.exists():
                files["bench/" + f.name] = f
        # Debian's redis (redis-server is redis-check-rdb under another name)
        bins = {"usr/bin/redis-server": "/usr/bin/redis-check-rdb",
                "usr/bin/redis-benchmark": "/usr/bin/redis-benchmark",
                "usr/bin/redis-cli": "/usr/bin/redis-cli"}
        if all(os.path.exists(v) for v in bins.values()):
            for g, h in bins.items():
                files[g] = Path(h)
            libs = set()
            for h in bins.values():
                out = subprocess.run(["ldd", h], capture_output=True, text=True).stdout
                libs |= set(re.findall(r"=> (/\S+)", out))
            for lib in libs:
                files[lib.lstrip("/")] = Path(os.path.realpath(lib))
            self.redis = True
        else:
            log("redis-tools not installed: no Redis rows")
            self.redis = False
        return files

    def machine(self):
        def sh(c):
            return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
        return {"nproc": os.cpu_count(),
                "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"),
                "kernel": platform.release(),
                "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
                "tmpfs": sh("findmnt -n -o SOURCE,FSTYPE,OPTIONS /dev/shm"),
                "buildfs": sh(f"findmnt -n -o SOURCE,FSTYPE,OPTIONS -T {TOP}"),
                "qemu": self.qemu, "qemu_img": self.qemu_img,
                "fio_host": sh("fio --version"),
                "date": datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z",
                "git": sh(f"git -C {TOP} rev-parse --short HEAD")}

    # -- running guests --
    def boot(self, tag, script, qemu_args, env=None, files=None):
        logf = self.out / "logs" / f"{tag}.log"
        la0 = os.getloadavg()[0]
        t0 = time.monotonic()
        old = {}
        for k, v in (env or {}).items():
            old[k] = os.environ.get(k)
            os.environ[k] = v
        try:
            g = BenchGuest(script, qemu_args, qemu=self.qemu, fio=True,
                           files={**self.files, **(files or {})}, mem=self.p["mem"],
                           smp=self.p["vcpus"], timeout=1800, log=logf,
                           accel=self.accel)
            g.start()
            r = g.wait()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        dt = time.monotonic() - t0
        self.boot_times.append((tag, round(dt, 1), r.boot_time))
        fails = [ln for ln in r.lines if "BENCH-FAIL" in ln] + r.errors
        log(f"{tag}: {dt:.0f} s (boot {r.boot_time and round(r.boot_time, 1)} s, "
            f"load {la0:.1f}->{os.getloadavg()[0]:.1f}) rc={r.rc}"
            + (f" FAIL: {fails[:3]}" if fails else ""))
        if r.rc != 0:
            log(f"{tag}: guest rc={r.rc}; qemu stderr: {r.qemu_stderr.strip()[-500:]}; log {logf}")
        res = {"fio": parse_fio(r.lines), "redis": parse_kv(r.lines, "BENCH-REDIS"),
               "time": {k: round(float(v.split()[1]) - float(v.split()[0]), 2)
                        for k, v in parse_kv(r.lines, "BENCH-TIME").items()},
               "rc": r.rc, "fails": fails, "load": [la0, os.getloadavg()[0]],
               "wall_s": round(dt, 1)}
        return res

    def nvdimm(self, path, fmt):
        if fmt == "raw":
            return ["-object", f"memory-backend-file,id=pm,mem-path={path},size={self.p['img']},share=on",
                    "-device", "nvdimm,memdev=pm,id=nv0"]
        opts = ""
        if fmt == "pcow-cluster" and self.escalate and self.escalate[0] == "prop":
            opts = f",{self.escalate[1]}=1"
        return ["-object", f"memory-backend-file,id=pm,mem-path={path},format=pcow,share=on{opts}",
                "-device", "nvdimm,memdev=pm,id=nv0"]

    def virtio(self, path, i, fmt="qcow2"):
        return ["-drive", f"file={path},format={fmt},if=none,id=d{i},cache=writeback,aio=threads",
                "-device", f"virtio-blk-pci,drive=d{i}"]

    def pcow_create(self, path):
        if os.path.exists(path):
            os.unlink(path)
        subprocess.run([self.pcow_img, "create", "-f", "pcow", path, str(self.p["img"])],
                       check=True, capture_output=True)

    def pcow_info(self, path):
        r = subprocess.run([self.pcow_img, "info", "--output=json", "-U", path],
                           capture_output=True, text=True)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {}

    def whole_cluster_env(self):
        if self.escalate and self.escalate[0] == "env":
            return {self.escalate[1]: "1"}
        return {}

    # -- configurations --
    def run_raw_dax(self, d):
        img = d / "raw.img"
        with open(img, "wb") as f:
            f.truncate(self.p["img"])
        r = self.boot(f"{self.fsname}-raw-dax", script_dax_main(self.p, self.redis),
                      self.nvdimm(img, "raw"))
        r["image_bytes"] = os.stat(img).st_blocks * 512
        img.unlink()
        return r

    def run_pcow(self, d, kind):
        img = str(d / f"{kind}.pcow")
        self.pcow_create(img)
        tag = f"{self.fsname}-{kind}"
        if kind == "pcow-dax":
            r = self.boot(tag, script_dax_main(self.p, self.redis), self.nvdimm(img, "pcow"))
        else:
            r = self.boot(tag, script_blk_main(self.p, "pmem", False), self.nvdimm(img, "pcow"))
        r["image_bytes"] = os.stat(img).st_blocks * 512
        subprocess.run([self.pcow_img, "snapshot", "-c", "s1", img], check=True,
                       capture_output=True)
        t = time.monotonic()
        if kind == "pcow-dax":
            c = self.boot(tag + "-cow", script_dax_cow(self.p, "cow-4k", "cow"),
                          self.nvdimm(img, "pcow"), env={"PCOW_COW_ESCALATE": "never"}
                          if self.escalate and self.escalate[0] == "env" else None)
        else:
            c = self.boot(tag + "-cow", script_blk_cow(self.p, "pmem", "cow-4k", "cow"),
                          self.nvdimm(img, "pcow"))
        r["fio"].update(c["fio"])
        r["cow_boot_wall_s"] = round(time.monotonic() - t, 1)
        if self.escalate:
            if kind == "pcow-dax":
                c = self.boot(tag + "-cowcl", script_dax_cow(self.p, "cow-cluster", "cowcl"),
                              self.nvdimm(img, "pcow-cluster"), env=self.whole_cluster_env())
            else:
                c = self.boot(tag + "-cowcl", script_blk_cow(self.p, "pmem", "cow-cluster", "cowcl"),
                              self.nvdimm(img, "pcow-cluster"), env=self.whole_cluster_env())
            r["fio"].update(c["fio"])
        r["info"] = self.pcow_info(img)
        os.unlink(img)
        return r

    def run_qcow2(self, d):
        if not self.qemu_img:
            log("no qemu-img: qcow2-blk skipped")
            return None
        img, rimg = str(d / "q.qcow2"), str(d / "redis.qcow2")
        for f, s in ((img, self.p["img"]), (rimg, self.p["redis_img"])):
            if os.path.exists(f):
                os.unlink(f)
            subprocess.run([self.qemu_img, "create", "-q", "-f", "qcow2", f, str(s)], check=True)
        args = self.virtio(img, 0) + (self.virtio(rimg, 1) if self.redis else [])
        tag = f"{self.fsname}-qcow2-blk"
        r = self.boot(tag, script_blk_main(self.p, "virtio", self.redis), args)
        r["image_bytes"] = os.stat(img).st_blocks * 512
        subprocess.run([self.qemu_img, "snapshot", "-c", "s1", img], check=True)
        c = self.boot(tag + "-cow", script_blk_cow(self.p, "virtio", "cow-qcow2", "cow"),
                      self.virtio(img, 0))
        r["fio"].update(c["fio"])
        for f in (img, rimg):
            os.unlink(f)
        return r

    def run_host(self, d):
        N, T = self.p["vcpus"], self.p["runtime"]
        f = d / "host.data"
        res = {"fio": {}}
        t0 = time.monotonic()
        subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=1M",
                        f"count={self.p['data'] // MiB}", "conv=fsync"],
                       check=True, capture_output=True)
        jobs = steady_jobs(self.p, str(f), "mmap", False, self.p["data"])
        jobs.append(first_touch_job(str(d / "host.fresh"), "mmap", False, self.p["ft"]))
        for name, kw in jobs:
            out = subprocess.run(["fio"] + fio_args(name, **kw), capture_output=True, text=True)
            try:
                res["fio"][name] = summarize(json.loads(out.stdout[out.stdout.index("{"):]))
            except (ValueError, KeyError) as e:
                res["fio"][name] = {"error": str(e) + out.stderr[-300:]}
        for x in (f, d / "host.fresh"):
            if x.exists():
                x.unlink()
        log(f"{self.fsname}-host-dax: {time.monotonic() - t0:.0f} s")
        return res

    def run_monitor(self):
        sh = HERE / "bench-monitor.sh"
        if not sh.exists():
            return None
        t0 = time.monotonic()
        dirs = [str(d) for _, d in self.dirs]
        r = subprocess.run([str(sh)] + dirs, capture_output=True, text=True, cwd=TOP)
        (self.out / "logs" / "bench-monitor.log").write_text(r.stdout + r.stderr)
        log(f"bench-monitor: {time.monotonic() - t0:.0f} s rc={r.returncode}")
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        res = {"rc": r.returncode, "table": "\n".join(lines[:-1])}
        try:
            res["json"] = json.loads(lines[-1])
        except (ValueError, IndexError):
            res["json"] = None
        return res

    def run(self):
        a = self.a
        t_start = time.monotonic()
        self.results["meta"] = {"machine": self.machine(), "params": self.p,
                                "accel": self.accel, "quick": self.quick,
                                "cow_whole_cluster": self.escalate,
                                "qcow2_cache": "cache=writeback,aio=threads (virtio-blk-pci)"}
        fss = a.fs.split(",") if a.fs else (["tmpfs"] if self.quick else ["tmpfs", "build"])
        self.dirs = []
        for fs in fss:
            if fs == "tmpfs":
                d = Path(tempfile.mkdtemp(prefix="pcow-bench.", dir="/dev/shm"))
            else:
                b = Path(os.environ.get("BUILD", "build"))
                b = b if b.is_absolute() else TOP / b
                b.mkdir(exist_ok=True)
                d = Path(tempfile.mkdtemp(prefix="bench-img.", dir=b))
            self.dirs.append((fs, d))
        only = a.only.split(",") if a.only else CONFIGS
        try:
            for fs, d in self.dirs:
                self.fsname = fs
                R = self.results["fs"].setdefault(fs, {})
                for c in only:
                    log(f"== {fs}: {c}")
                    if c == "host-dax":
                        R[c] = self.run_host(d)
                    elif c == "raw-dax":
                        R[c] = self.run_raw_dax(d)
                    elif c in ("pcow-dax", "pcow-blk"):
                        R[c] = self.run_pcow(d, c)
                    elif c == "qcow2-blk":
                        R[c] = self.run_qcow2(d)
                    self.save()
            if not a.no_monitor:
                self.results["monitor"] = self.run_monitor()
        finally:
            for _, d in self.dirs:
                shutil.rmtree(d, ignore_errors=True)
        self.results["meta"]["duration_s"] = round(time.monotonic() - t_start, 1)
        self.results["meta"]["boots"] = self.boot_times
        self.save()
        return self.results

    def save(self):
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))


# ----------------------------------------------------------------------------
# report

def g(R, fs, cfg, job, key="iops"):
    try:
        v = R["fs"][fs][cfg]["fio"][job][key]
        return v if v else None
    except (KeyError, TypeError):
        return None


def ratio(x, y):
    return round(x / y, 3) if x and y else None


def report(R):
    fss = list(R["fs"])
    lines = []
    jobs = [("randread-4k-1", "iops"), ("randwrite-4k-1", "iops"),
            ("randread-4k-1", "p50_us"), ("randread-4k-1", "p99_us"),
            ("randwrite-4k-1", "p50_us"), ("randwrite-4k-1", "p99_us"),
            ("read-1m-N", "bw_MBps"), ("write-1m-N", "bw_MBps"),
            ("randread-4k-N", "iops"), ("randwrite-4k-N", "iops"),
            ("firsttouch-4k-1", "iops"), ("firsttouch-4k-1", "p50_us"),
            ("firsttouch-4k-1", "p99_us"),
            ("randread-4k-1-aio16", "iops"), ("randwrite-4k-1-aio16", "iops")]
    cfgs = CONFIGS
    for fs in fss:
        lines.append(f"\nResults on {fs} ({R['meta']['accel']}, {R['meta']['params']['vcpus']} vCPUs; "
                     "IOPS, MB/s, us)")
        hdr = f"{'workload':<28}" + "".join(f"{c:>12}" for c in cfgs)
        lines.append(hdr)
        for job, key in jobs:
            row = f"{job + ' ' + key.replace('_MBps', ' MB/s').replace('_us', ''):<28}"
            vals = [g(R, fs, c, job, key) for c in cfgs]
            if not any(vals):
                continue
            row += "".join(f"{v:>12.1f}" if v else f"{'-':>12}" for v in vals)
            lines.append(row)
        for c in ("pcow-dax", "pcow-blk", "qcow2-blk"):
            for job in ("cow-4k", "cow-cluster", "cow-qcow2"):
                v = g(R, fs, c, job)
                if v:
                    lines.append(f"{'COW ' + c + ' ' + job:<28}{v:>12.1f} IOPS  p50 "
                                 f"{g(R, fs, c, job, 'p50_us') or 0:.1f} us  p99 "
                                 f"{g(R, fs, c, job, 'p99_us') or 0:.1f} us")
        for c in ("raw-dax", "pcow-dax", "qcow2-blk"):
            try:
                v = float(R["fs"][fs][c]["redis"]["set"])
                lines.append(f"{'Redis SET/s AOF ' + c:<28}{v:>12.0f}")
            except (KeyError, ValueError, TypeError):
                pass
    # ratios
    fs = fss[0]
    rt = {}
    wl = [("4k_randread", "randread-4k-1", "iops"), ("4k_randwrite", "randwrite-4k-1", "iops"),
          ("1m_read_N", "read-1m-N", "bw_MBps"), ("1m_write_N", "write-1m-N", "bw_MBps"),
          ("4k_randread_N", "randread-4k-N", "iops"), ("4k_randwrite_N", "randwrite-4k-N", "iops"),
          ("firsttouch", "firsttouch-4k-1", "iops")]
    for key, job, k in wl:
        rt[f"pcowdax_over_rawdax_{key}"] = ratio(g(R, fs, "pcow-dax", job, k), g(R, fs, "raw-dax", job, k))
    for key, job, k in wl:
        rt[f"pcowdax_over_qcow2blk_{key}"] = ratio(g(R, fs, "pcow-dax", job, k), g(R, fs, "qcow2-blk", job, k))
    for key, job, k in wl[:2]:
        rt[f"pcowblk_over_qcow2blk_{key}"] = ratio(g(R, fs, "pcow-blk", job, k), g(R, fs, "qcow2-blk", job, k))
    for key, job, k in wl[:2]:
        rt[f"rawdax_over_hostdax_{key}"] = ratio(g(R, fs, "raw-dax", job, k), g(R, fs, "host-dax", job, k))
    qc = g(R, fs, "qcow2-blk", "cow-qcow2")
    rt["pcow_cow_over_qcow2_cow"] = ratio(g(R, fs, "pcow-dax", "cow-4k"), qc)
    rt["pcowblk_cow_over_qcow2_cow"] = ratio(g(R, fs, "pcow-blk", "cow-4k"), qc)
    rt["pcow_cowcluster_over_qcow2_cow"] = ratio(g(R, fs, "pcow-dax", "cow-cluster"), qc)
    rt["pcow_cow4k_over_cowcluster"] = ratio(g(R, fs, "pcow-dax", "cow-4k"), g(R, fs, "pcow-dax", "cow-cluster"))
    try:
        rt["redis_pcowdax_over_rawdax"] = ratio(float(R["fs"][fs]["pcow-dax"]["redis"]["set"]),
                                                float(R["fs"][fs]["raw-dax"]["redis"]["set"]))
        rt["redis_pcowdax_over_qcow2blk"] = ratio(float(R["fs"][fs]["pcow-dax"]["redis"]["set"]),
                                                  float(R["fs"][fs]["qcow2-blk"]["redis"]["set"]))
    except (KeyError, ValueError, TypeError):
        pass
    if len(fss) > 1:
        f2 = fss[1]
        for key, job, k in wl[:2]:
            rt[f"{f2}_pcowdax_over_rawdax_{key}"] = ratio(g(R, f2, "pcow-dax", job, k), g(R, f2, "raw-dax", job, k))
            rt[f"{f2}_pcowdax_over_qcow2blk_{key}"] = ratio(g(R, f2, "pcow-dax", job, k), g(R, f2, "qcow2-blk", job, k))
        rt[f"{f2}_pcow_cow_over_qcow2_cow"] = ratio(g(R, f2, "pcow-dax", "cow-4k"), g(R, f2, "qcow2-blk", "cow-qcow2"))
    lines.append(f"\nRatios (same run, images on {fs}; >1 = pcow faster)")
    for k, v in rt.items():
        lines.append(f"  {k:<44} {v if v is not None else '-'}")
    mon = R.get("monitor")
    if mon and mon.get("table"):
        lines.append("\nImage Monitor (host level, bench-monitor)")
        lines.append(mon["table"])
    rt["fs"] = fs
    rt["quick"] = R["meta"]["quick"]
    rt["accel"] = R["meta"]["accel"]
    return "\n".join(lines), rt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fs", default=None, help="tmpfs,build")
    ap.add_argument("--only", default=None, help="comma list of " + ",".join(CONFIGS))
    ap.add_argument("--runtime", type=int, default=None, help="seconds per time-based job")
    ap.add_argument("--vcpus", type=int, default=None)
    ap.add_argument("--publish", action="store_true", help="charts also into docs/figures")
    ap.add_argument("--no-monitor", action="store_true")
    ap.add_argument("--report", default=None, help="only re-print the report of results.json")
    a = ap.parse_args()
    if a.report:
        R = json.loads(Path(a.report).read_text())
        out = Path(a.report).parent
    else:
        if not a.out:
            b = Path(os.environ.get("BUILD", "build"))
            b = b if b.is_absolute() else TOP / b
            a.out = str(b / "bench" / time.strftime("%Y%m%d-%H%M%S"))
        R = Runner(a).run()
        out = Path(a.out)
    text, rt = report(R)
    try:
        figs = [out / "figures"] + ([TOP / "docs/figures"] if a.publish else [])
        subprocess.run([sys.executable, str(HERE / "bench-guest-plot.py"),
                        str(out / "results.json")] + [str(f) for f in figs],
                       check=False)
    except OSError as e:
        log(f"charts: {e}")
    (out / "report.txt").write_text(text + "\n" + json.dumps(rt) + "\n")
    print(text)
    print(f"\n(results: {out}/results.json, charts: {out}/figures/)")
    print(json.dumps(rt))


if __name__ == "__main__":
    main()
