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
                      [--tag T] [--fs tmpfs,build] [--runtime S]
                      [--rounds N] [--only CONFIGS]

Every job runs in N rounds (default 10); in each round every configuration
runs it once, in an order that rotates from round to round, except that
in the steady-state jobs raw-dax and pcow-dax, the pair whose parity the
benchmark is asked about, run back to back twice as A B B A (which one
runs first alternates from round to round): a round's figure for each is
the mean of its two runs, so that a linear drift of the machine's speed
over those four runs hits both alike.  Each figure is the median over
the rounds; each ratio is the median of the per-round ratios, with a 95%
percentile bootstrap interval (KEY_ci95: [lo, hi]).

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import argparse
import json
import os
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
sys.path.insert(0, str(HERE))
import guest  # noqa: E402
import benchmeta  # noqa: E402  (this directory)

MiB = 1 << 20
GiB = 1 << 30
CONFIGS = ["host-dax", "raw-dax", "pcow-dax", "pcow-blk", "qcow2-blk"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_path(name, env, system_ok=False):
    """$env, else $BUILD/name; a system binary only where that is fine
    (qemu-img for qcow2; never a QEMU without format=pcow)."""
    p = os.environ.get(env)
    if p:
        return p
    b = os.environ.get("BUILD", "build")
    b = Path(b) if os.path.isabs(b) else TOP / b
    if (b / name).exists():
        return str(b / name)
    return shutil.which(name) if system_ok else None


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


FIO_GLOBAL = ["--output-format=json", "--percentile_list=" + ":".join(str(p) for p in PCTS)]


def fio_args(name, *, rw, bs, filename, size, offset=0, engine, jobs=1,
             runtime=None, ramp=1, io_size=None, direct=False, extra=()):
    """Options of one job section (fio runs the sections one after the
    other: stonewall)."""
    a = [f"--name={name}", f"--filename={filename}", f"--rw={rw}",
         f"--bs={bs}", f"--ioengine={engine}", f"--numjobs={jobs}",
         "--group_reporting", "--randrepeat=0", "--stonewall"]
    if jobs > 1 and rw in ("read", "write"):
        # sequential: each thread streams its own slice
        a += [f"--size={size // jobs}", f"--offset={offset}",
              f"--offset_increment={size // jobs}"]
    else:
        a += [f"--size={size}", f"--offset={offset}"]
    if runtime:
        a += ["--time_based", f"--runtime={runtime}",
              f"--ramp_time={round(ramp * 1000)}ms"]
        if rw.startswith("rand"):
            a.append("--norandommap")
    if io_size:
        a.append(f"--io_size={io_size}")
    if direct:
        a.append("--direct=1")
    return a + list(extra)


def fio_cmd(jobs):
    a = list(FIO_GLOBAL)
    for name, kw in jobs:
        a += fio_args(name, **kw)
    return a


def steady_jobs(p, target, engine, direct, size, offset=0):
    """The steady-state workloads over already written data."""
    T, N = p["runtime"], p["vcpus"]
    k = dict(filename=target, size=size, offset=offset, engine=engine,
             direct=direct, runtime=T, ramp=p["ramp"])
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


def sh_fio(jobs):
    """One fio process runs all jobs in order (fio's start-up under TCG
    costs seconds); its JSON goes to the console prefixed with '@J '."""
    tag = jobs[0][0]
    return (f'echo "BENCH-BEGIN {tag} $(cat /proc/uptime)"\n'
            f"fio {' '.join(fio_cmd(jobs))} 2>&1 | sed 's/^/@J /'\n"
            f'echo "BENCH-END {tag} $(cat /proc/uptime)"\n')


def parse_fio_json(txt):
    res = {}
    try:
        j = json.loads(txt[txt.index("{"):txt.rindex("}") + 1])
    except ValueError as e:
        return {"_error": f"{e}: {txt[-400:]}"}
    for job in j.get("jobs", []):
        try:
            res[job["jobname"]] = summarize(job)
        except (KeyError, TypeError) as e:
            res[job.get("jobname", "?")] = {"error": str(e)}
    return res


def parse_fio(lines):
    """{"cfg@job": summary} from console lines."""
    res, cur, buf = {}, None, []
    for ln in lines:
        m = re.search(r"BENCH-BEGIN (\S+)", ln)
        if m:
            cur, buf = m.group(1), []
            continue
        m = re.search(r"BENCH-END (\S+)", ln)
        if m and cur:
            res.update(parse_fio_json("\n".join(buf)))
            cur = None
            continue
        if cur is not None and ln.startswith("@J "):
            buf.append(ln[3:])
    return res


def summarize(job):
    d = job["write"] if job["write"]["io_bytes"] > job["read"]["io_bytes"] else job["read"]
    pct = d.get("clat_ns", {}).get("percentile", {})
    pcts = {float(k): v / 1000.0 for k, v in pct.items()}
    def at(p):
        return pcts.get(p)
    return {"iops": d["iops"], "bw_MBps": d["bw_bytes"] / 1e6,
            "lat_mean_us": d.get("lat_ns", {}).get("mean", 0) / 1000.0,
            "p50_us": at(50.0), "p99_us": at(99.0),
            "pcts_us": sorted(pcts.items()),
            "ios": d.get("total_ios", 0), "runtime_ms": d.get("runtime", 0),
            # what the job cost the guest: its process's page faults,
            # context switches and CPU split (fio counts ramp time too)
            "minf": job.get("minf"), "majf": job.get("majf"),
            "ctx": job.get("ctx"), "usr_cpu": job.get("usr_cpu"),
            "sys_cpu": job.get("sys_cpu")}


def boot_results(lines, rc, cfgs, errors=()):
    """What one boot measured that can be trusted, and why the rest cannot.

    Returns (fio, redis, bad, reasons): fio {"cfg@job": summary} and redis
    {cfg: SET/s} of the configurations the guest verified (BENCH-OK: the
    expected device, DAX on for the DAX ones) in a script that ran to its
    end; bad: the configurations whose results were dropped; reasons: one
    line per problem.  Anything else might have been measured elsewhere,
    e.g. on the initramfs under a mount point whose mount failed."""
    fio, redis = parse_fio(lines), parse_kv(lines, "BENCH-REDIS")
    ok = set(parse_kv(lines, "BENCH-OK"))
    reasons = [f"guest: {e}" for e in errors]
    bad = set()
    if rc != 0:
        reasons.append(f"guest script exit status {rc}")
        bad |= set(cfgs)
    for ln in lines:
        m = re.search(r"BENCH-(FAIL|ABORT) (.*)", ln)
        if not m:
            continue
        reasons.append(f"BENCH-{m.group(1)} {m.group(2).strip()}")
        words = m.group(2).split()
        if m.group(1) == "FAIL" and len(words) > 1:
            what = words[1].rstrip(":")
            if words[0] == "redis":
                for k in [k for k in redis if k.partition("#")[0] == what]:
                    del redis[k]
            elif what in cfgs:
                bad.add(what)
    for cfg in cfgs:
        if cfg not in ok and cfg not in bad:
            reasons.append(f"{cfg}: the guest did not verify its device")
            bad.add(cfg)
    if "_error" in fio:
        reasons.append(f"fio output: {fio.pop('_error')[:200]}")
    for k, v in list(fio.items()):
        if k.partition("@")[0] in bad:
            del fio[k]
        elif "error" in v:
            reasons.append(f"fio {k}: {v['error']}")
            del fio[k]
    for k, v in list(redis.items()):
        try:
            good = k.partition("#")[0] not in bad and float(v) > 0
        except ValueError:
            good = False
        if not good:
            if k.partition("#")[0] not in bad:
                reasons.append(f"redis {k}: no result ({v!r})")
            del redis[k]
    return fio, redis, sorted(bad), reasons


# figures of a fio job that get a median and an interval over the rounds
KEYS = ("iops", "bw_MBps", "lat_mean_us", "p50_us", "p99_us", "minf", "majf",
        "ctx", "usr_cpu", "sys_cpu")


def combine_rounds(rounds):
    """{round: fio summary} -> one job's entry: for every figure the median
    over the rounds and its 95% interval (KEY_ci95), and every round
    (rounds[r], null where round r has no result)."""
    rl = [None] * (max(rounds) + 1)
    for r, v in rounds.items():
        rl[r] = {k: None if v.get(k) is None else round(v[k], 3) for k in KEYS}
    out = {}
    for k in KEYS:
        out[k], out[k + "_ci95"] = benchmeta.summary(
            [x[k] for x in rl if x and x[k] is not None])
    # the latency CDF: the round whose IOPS is nearest the median
    mid = min(rounds.values(),
              key=lambda v: abs((v.get("iops") or 0) - (out["iops"] or 0)))
    out["pcts_us"] = mid.get("pcts_us", [])
    out["ios"] = sum(v.get("ios") or 0 for v in rounds.values())
    out["runtime_ms"] = sum(v.get("runtime_ms") or 0 for v in rounds.values())
    out["rounds"] = rl
    return out


def mean_of_runs(runs):
    """One round's summary from its runs (a paired configuration's two,
    A B B A): every figure the mean of the runs (null if a run lacks it),
    ios and runtime summed, the latency CDF of the first run."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for k in KEYS:
        vs = [r.get(k) for r in runs]
        out[k] = None if None in vs else sum(vs) / len(vs)
    out["ios"] = sum(r.get("ios") or 0 for r in runs)
    out["runtime_ms"] = sum(r.get("runtime_ms") or 0 for r in runs)
    out["runs"] = len(runs)
    return out


def merge_fio(res, fio):
    """fio {"cfg@job#round[.part]": summary} of one boot into res
    {cfg: {"fio": {job: combine_rounds()}}} (no #round: round 0; the parts
    of a round, a paired configuration's runs, averaged: mean_of_runs)."""
    per = {}
    for k, v in fio.items():
        cfg, _, job = k.partition("@")
        job, _, tag = job.partition("#")
        rnd = int(tag.partition(".")[0] or 0)
        if cfg in res:
            per.setdefault((cfg, job), {}).setdefault(rnd, []).append(v)
    for (cfg, job), rounds in per.items():
        res[cfg]["fio"][job] = combine_rounds(
            {r: mean_of_runs(runs) for r, runs in rounds.items()})


def merge_redis(res, redis):
    """redis {"cfg#round": "SET/s"} into res[cfg]["redis"]: set (median),
    set_ci95, rounds."""
    per = {}
    for k, v in redis.items():
        cfg, _, rnd = k.partition("#")
        if cfg in res:
            per.setdefault(cfg, {})[int(rnd or 0)] = float(v)
    for cfg, rounds in per.items():
        rl = [None] * (max(rounds) + 1)
        for r, v in rounds.items():
            rl[r] = v
        m, ci = benchmeta.summary(list(rounds.values()), 1)
        res[cfg]["redis"] = {"set": m, "set_ci95": ci, "rounds": rl}


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
#
# One guest holds every guest configuration at once, so that they share the
# boot, the kernel, the vCPUs and the moment (this machine's load changes
# by the minute): NVDIMM 1 = raw image (raw-dax), NVDIMM 2 = pcow image
# (pcow-dax), NVDIMM 3 = pcow image used as a block device (pcow-blk),
# virtio-blk disks = qcow2 (qcow2-blk, plus a small one for Redis).  The
# NVDIMMs differ in size so that the guest can tell them apart.  fio runs
# each workload on every configuration back to back (order alternating)
# before it moves on to the next workload.

GUEST_CFGS = ["raw-dax", "pcow-dax", "pcow-blk", "qcow2-blk"]
SIZES = {"raw-dax": 2048 * MiB, "pcow-dax": 2176 * MiB, "pcow-blk": 1920 * MiB,
         "qcow2-blk": 2048 * MiB, "redis-blk": 1024 * MiB}
TARGET = {"raw-dax": "/mnt/raw", "pcow-dax": "/mnt/pcow", "pcow-blk": "$PBLK",
          "qcow2-blk": "$QBLK"}


def layout(p):
    """Regions (offset, size) on the block devices (files on DAX)."""
    ds, fs, cs = p["data"], p["ft"], p["cow"]
    return {"data": (0, ds), "ft": (ds, fs), "cow": (ds + fs, cs),
            "cowcl": (ds + fs + cs, cs)}


def target(cfg, region, p):
    """fio target kwargs of a config's region."""
    off, sz = layout(p)[region]
    if cfg.endswith("-dax"):
        return dict(filename=f"{TARGET[cfg]}/{region}", size=sz, offset=0,
                    engine="mmap", direct=False)
    return dict(filename=TARGET[cfg], size=sz, offset=off, engine="psync", direct=True)


def round_order(cfgs, rnd, i=0):
    """The configurations in round rnd of workload i: rotated by one each
    round and reversed every other workload, so that no configuration
    always runs first, last or right after the same one (load drift and
    what the previous job left behind hit them all alike)."""
    k = rnd % len(cfgs)
    order = cfgs[k:] + cfgs[:k]
    return order if (i + rnd) % 2 == 0 else order[::-1]


# The configurations compared for parity: in the steady-state jobs they run
# as A B B A in every round (paired_order)
PAIR = ("raw-dax", "pcow-dax")


def paired_order(order):
    """[(cfg, part)] of one round of a steady-state job: @order, but the
    PAIR's two configurations as one block A B B A where the first of them
    stands in @order (so the rotation alternates which runs first), part
    0 and 1 being their two runs; the others run once (part None)."""
    pair = [c for c in order if c in PAIR]
    if len(pair) != 2:
        return [(c, None) for c in order]
    a, b = pair
    out = []
    for c in order:
        if c == a:
            out += [(a, 0), (b, 0), (b, 1), (a, 1)]
        elif c != b:
            out.append((c, None))
    return out


def slice_of(p, region, rnd):
    """Round rnd's slice (offset, size) of a one-shot region (first touch,
    COW): each round writes its own fresh part, 64 KiB aligned."""
    off, sz = layout(p)[region]
    n = max(p["rounds"], 1)
    ssz = sz // n // (64 * 1024) * (64 * 1024)
    return off + rnd * ssz, ssz


def one_shot(cfg, region, p, rnd):
    """fio target kwargs of round rnd's slice of a one-shot region: about
    one 4 KiB write per 64 KiB, no block written twice."""
    off, ssz = slice_of(p, region, rnd)
    t = target(cfg, region, p)
    if cfg.endswith("-dax") and region == "ft":
        # a new file per round: fio would lay out (and could truncate) a
        # file that it has to extend
        t.update(filename=f"{t['filename']}{rnd}", size=ssz)
    elif cfg.endswith("-dax"):
        # the file was written in full before the snapshot
        t.update(offset=off - layout(p)[region][0], size=ssz)
    else:
        t.update(offset=off, size=ssz)
    return dict(rw="randwrite", bs="4k", io_size=ssz // 16, **t)


def main_jobs(p, cfgs):
    T, N = p["runtime"], p["vcpus"]
    wl = [("randread-4k-1", dict(rw="randread", bs="4k")),
          ("randwrite-4k-1", dict(rw="randwrite", bs="4k")),
          ("read-1m-N", dict(rw="read", bs="1m", jobs=N)),
          ("write-1m-N", dict(rw="write", bs="1m", jobs=N)),
          ("randread-4k-N", dict(rw="randread", bs="4k", jobs=N)),
          ("randwrite-4k-N", dict(rw="randwrite", bs="4k", jobs=N)),
          ("randread-4k-1-aio16", dict(rw="randread", bs="4k", extra=("--iodepth=16",))),
          ("randwrite-4k-1-aio16", dict(rw="randwrite", bs="4k", extra=("--iodepth=16",))),
          ("firsttouch-4k-1", None)]
    jobs = []
    for rnd in range(p["rounds"]):
        for i, (name, kw) in enumerate(wl):
            if name == "firsttouch-4k-1":
                # writes into never-written space: this round's slice
                for cfg in round_order(cfgs, rnd, i):
                    jobs.append((f"{cfg}@{name}#{rnd}", one_shot(cfg, "ft", p, rnd)))
                continue
            order = round_order(cfgs, rnd, i)
            for cfg, part in paired_order(order):
                t = target(cfg, "data", p)
                if "aio" in name:
                    if t["engine"] != "psync":
                        continue
                    t["engine"] = "libaio"
                tag = f"{rnd}" if part is None else f"{rnd}.{part}"
                jobs.append((f"{cfg}@{name}#{tag}",
                             dict(runtime=T, ramp=p["ramp"], **kw, **t)))
    return jobs


def cow_jobs(p, cfgs, region, name):
    """After a snapshot: 4 KiB random writes over written data, about one
    write per 64 KiB cluster, so (almost) every write is a first write to a
    frozen cluster; every round its own slice of the region.  raw-dax has
    no snapshot: plain overwrites (baseline)."""
    jobs = []
    for rnd in range(p["rounds"]):
        for cfg in round_order(cfgs, rnd):
            jobs.append((f"{cfg}@{name}#{rnd}", one_shot(cfg, region, p, rnd)))
    return jobs


# Guest-side checks, before any measurement: a configuration counts only
# when its device is the expected one and, for DAX, when an ext4 on that
# device is mounted with DAX on.  Otherwise fio would measure the initramfs
# (a failed mount leaves an empty directory there).  Every check prints
# BENCH-OK or BENCH-FAIL; any failure ends the boot before fio.
# BENCH_MOUNTS and BENCH_SYSFS (via $SYS) exist for tests/pcow/bench/
# test-bench.py.
SH_CHECKS = r"""
bench_fails=0
bench_fail() { echo "BENCH-FAIL $*"; bench_fails=$((bench_fails + 1)); }
# dax_check CFG DEV MNT NAMESPACE: DEV (of NAMESPACE's region) is an ext4
# mounted on MNT with DAX on
dax_check() {
    mounts=${BENCH_MOUNTS:-/proc/mounts}
    region=${4#namespace}; region=region${region%%.*}
    if [ -z "$4" ] || ! readlink -f "$SYS/block/${2#/dev/}" |
            grep -q "/$region/"; then
        bench_fail "wrong-device $1 '$2' is not in the region of '$4'"
    elif awk -v d="$2" -v m="$3" '$1 == d && $2 == m && $3 == "ext4" &&
            $4 ~ /(^|,)dax(=always)?(,|$)/ { ok = 1 } END { exit !ok }' \
            "$mounts"; then
        echo "BENCH-OK $1 $2 on $3 ext4 dax"
    else
        bench_fail "not-dax $1 $2 on $3: $(grep " $3 " "$mounts" | head -n 1)"
    fi
}
# blk_check CFG DEV: DEV is a block device
blk_check() {
    if [ -n "$2" ] && [ -b "$2" ]; then
        echo "BENCH-OK $1 $2 block device"
    else
        bench_fail "nodev $1 '$2' is not a block device"
    fi
}
bench_checked() {
    if [ $bench_fails -gt 0 ]; then
        echo "BENCH-ABORT $bench_fails failed check(s): nothing measured"
        exit 3
    fi
}
"""


def sh_devices(cfgs, fresh):
    """Find the devices (by size), set up or mount the DAX file systems,
    check them all (SH_CHECKS)."""
    s = ("set -u\nSYS=${BENCH_SYSFS:-/sys}\n"
         "RAWNS= PCOWNS= PBLKNS= PBLK= QBLK= RBLK=\n" + SH_CHECKS)
    if "qcow2-blk" in cfgs:
        s += """for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
    insmod /bench/$m.ko 2>/dev/null
done
i=0; while [ ! -e $SYS/block/vdb ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
for b in $SYS/block/vd*; do
    case $(cat $b/size) in
        %d) QBLK=/dev/${b##*/} ;;
        %d) RBLK=/dev/${b##*/} ;;
    esac
done
blk_check qcow2-blk "$QBLK"
""" % (SIZES["qcow2-blk"] // 512, SIZES["redis-blk"] // 512)
    s += "for r in $SYS/bus/nd/devices/region*; do\n    case $(cat $r/size) in\n"
    for cfg, var in (("raw-dax", "RAWNS"), ("pcow-dax", "PCOWNS"), ("pcow-blk", "PBLKNS")):
        if cfg in cfgs:
            s += f"        {SIZES[cfg]}) {var}=namespace${{r##*region}}.0 ;;\n"
    s += "    esac\ndone\n"
    if "pcow-blk" in cfgs:
        s += ('[ -n "$PBLKNS" ] && PBLK=/dev/$(ls $SYS/bus/nd/devices/$PBLKNS/block)\n'
              'blk_check pcow-blk "$PBLK"\n')
    for cfg, var, label in (("raw-dax", "RAWNS", "rawdax"), ("pcow-dax", "PCOWNS", "pcowdax")):
        if cfg not in cfgs:
            continue
        mnt = TARGET[cfg]
        if fresh:
            s += (f'dev=$(ndctl create-namespace -f -e "${var}" -m fsdax | '
                  "sed -n 's/.*\"blockdev\":\"\\([^\"]*\\)\".*/\\1/p')\n"
                  f"mkfs.ext4 -q -F -b 4096 -L {label} "
                  "-E lazy_itable_init=0,lazy_journal_init=0,nodiscard /dev/$dev "
                  f'|| bench_fail "mkfs {cfg}"\n')
        else:
            s += f"dev=$(findfs LABEL={label}); dev=${{dev#/dev/}}\n"
        s += (f'mkdir -p {mnt} && mount -o dax /dev/$dev {mnt} || bench_fail "mount {cfg}"\n'
              f'dax_check {cfg} "/dev/$dev" {mnt} "${var}"\n')
    return s + "bench_checked\n"


def sh_fill(cfg, region, p, timed=None):
    """Write a region once (data, or frozen data for the COW boots)."""
    off, sz = layout(p)[region]
    if cfg.endswith("-dax"):
        cmd = (f"dd if=/dev/zero of={TARGET[cfg]}/{region} bs=1M count={sz // MiB} "
               "conv=fsync 2>/dev/null")
    else:
        cmd = (f"dd if=/dev/zero of={TARGET[cfg]} bs=1M seek={off // MiB} "
               f"count={sz // MiB} oflag=direct 2>/dev/null")
    if timed:
        return sh_timed(f"{cfg}@{timed}", cmd)
    return cmd + "\n"


def sh_timed(name, cmd):
    """Run cmd, print BENCH-TIME name t0 t1 (guest uptime)."""
    return (f't0=$(cut -d" " -f1 /proc/uptime)\n{cmd}\n'
            f't1=$(cut -d" " -f1 /proc/uptime)\n'
            f'echo "BENCH-TIME {name} $t0 $t1"\n')


def sh_redis_start(cfg, port, where):
    return f"""
mkdir -p {where}/redis
redis-server --dir {where}/redis --appendonly yes --appendfsync always \\
    --save '' --bind 127.0.0.1 --port {port} --daemonize yes \\
    --logfile /tmp/redis-{cfg}.log --protected-mode no >/dev/null
i=0; while ! redis-cli -h 127.0.0.1 -p {port} ping >/dev/null 2>&1; do
    i=$((i+1)); [ $i -gt 100 ] && {{ echo "BENCH-FAIL redis {cfg}"; tail /tmp/redis-{cfg}.log; break; }}
    usleep 100000; done
"""


def sh_redis_rounds(p, servers):
    """Every Redis server runs at once; each round benchmarks them one
    after the other (order rotating), redis_n SETs each."""
    s = ""
    names = list(servers)
    for rnd in range(p["rounds"]):
        for cfg in round_order(names, rnd):
            s += (f"r=$(redis-benchmark -h 127.0.0.1 -p {servers[cfg][0]} -t set "
                  f"-n {p['redis_n']} -c 8 -d 256 -r 100000 -q --csv 2>&1 | "
                  "grep '\"SET\"' | cut -d, -f2 | tr -d '\"')\n"
                  f'echo "BENCH-REDIS {cfg}#{rnd} ${{r:-0}}"\n')
    for cfg, (port, where) in servers.items():
        s += (f"redis-cli -h 127.0.0.1 -p {port} shutdown nosave >/dev/null 2>&1\n"
              f'echo "BENCH-INFO redis {cfg} end $(cat /proc/uptime) aof_bytes '
              f'$(cat {where}/redis/appendonlydir/* 2>/dev/null | wc -c)"\n')
    return s


def script_main(p, cfgs, redis):
    s = sh_devices(cfgs, fresh=True)
    for cfg in cfgs:
        s += sh_fill(cfg, "data", p, timed="layout-write-1m")
    s += sh_fio(main_jobs(p, cfgs))
    for cfg in cfgs:
        s += sh_fill(cfg, "cow", p) + sh_fill(cfg, "cowcl", p)
    if redis:
        s += "ip link set lo up\n"
        servers = {}
        for cfg in cfgs:
            port = 6379 + len(servers)
            if cfg.endswith("-dax"):
                servers[cfg] = (port, TARGET[cfg])
                s += sh_redis_start(cfg, port, TARGET[cfg])
            elif cfg == "qcow2-blk":
                # Redis on the qcow2 disk, never on the initramfs
                servers[cfg] = (port, "/r")
                s += ('if [ -b "$RBLK" ] && mkfs.ext4 -q -F -b 4096 -E '
                      'lazy_itable_init=0,lazy_journal_init=0,nodiscard "$RBLK" && '
                      'mkdir -p /r && mount "$RBLK" /r; then\n')
                s += sh_redis_start(cfg, port, "/r")
                s += f"else\n    echo 'BENCH-FAIL redis {cfg}: no ext4 on the Redis disk'\nfi\n"
        s += sh_redis_rounds(p, servers)
        if "qcow2-blk" in servers:
            s += "umount /r 2>/dev/null\n"
    s += "sync\n" + "".join(f"umount {TARGET[c]}\n" for c in cfgs if c.endswith("-dax"))
    return s


def script_cow(p, cfgs, region, name):
    s = sh_devices(cfgs, fresh=False)
    s += sh_fio(cow_jobs(p, cfgs, region, name))
    s += "sync\n" + "".join(f"umount {TARGET[c]}\n" for c in cfgs if c.endswith("-dax"))
    return s


# ----------------------------------------------------------------------------

class Runner:
    def __init__(self, a):
        self.a = a
        self.quick = a.quick
        self.accel = a.accel
        self.qemu = build_path("qemu-system-x86_64", "QEMU")
        self.qemu_img = build_path("qemu-img", "QEMU_IMG", system_ok=True)
        self.pcow_img = build_path("pcow-img", "PCOW_IMG")
        for n, v in (("QEMU", self.qemu), ("pcow-img", self.pcow_img)):
            if not v or not os.access(v, os.X_OK):
                sys.exit(f"bench: {n} not found (build first, or set the env)")
        self.out = Path(a.out)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        vcpus = a.vcpus or min(os.cpu_count() or 1, 4)
        # many short rounds: the spread between rounds gives the interval
        self.p = {"vcpus": vcpus, "runtime": a.runtime or (1 if a.quick else 2),
                  "ramp": 0.5 if a.quick else 1,
                  "rounds": a.rounds or 10,
                  # steady-state jobs: these two as A B B A in every round
                  "paired": list(PAIR),
                  "data": (256 if a.quick else 512) * MiB,
                  "ft": (256 if a.quick else 512) * MiB,
                  "cow": (128 if a.quick else 256) * MiB,
                  "redis_n": 500 if a.quick else 1000,  # SETs per round
                  "mem": "1G", "sizes": SIZES}
        self.results = {"meta": {}, "fs": {}}
        self.escalate = self.detect_escalate()
        self.files = self.guest_files()
        self.boot_times = []

    # -- environment --
    def detect_escalate(self):
        """How this QEMU lets us choose whole-cluster COW, if it does: a
        memory-backend-file property cow-escalate, or env PCOW_COW_ESCALATE
        (number of 4 KiB units copied before the whole cluster is)."""
        try:
            h = subprocess.run([self.qemu, "-object", "memory-backend-file,help"],
                               capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            h = ""
        m = re.search(r"^\s*(cow-?escalate)\b", h, re.M)
        if m:
            return ["prop", m.group(1)]
        r = subprocess.run(["grep", "-c", "PCOW_COW_ESCALATE", self.qemu],
                           capture_output=True, text=True)
        if r.stdout.strip() not in ("", "0"):
            return ["env", "PCOW_COW_ESCALATE"]
        return None

    def guest_files(self):
        files = {}
        # our own initramfs directory: tests/pcow/guest/out is shared with
        # (and cleaned by) other test runs
        b = Path(os.environ.get("BUILD", "build"))
        b = b if b.is_absolute() else TOP / b
        self.initramfs = str(b / "bench-initramfs")
        kver = (Path(guest.build_initramfs(self.initramfs)) / "kver").read_text().strip()
        self.guest_kernel = kver
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
        self.redis = all(os.path.exists(v) for v in bins.values())
        if self.redis:
            libs = set()
            for gp, h in bins.items():
                files[gp] = Path(h)
                out = subprocess.run(["ldd", h], capture_output=True, text=True).stdout
                libs |= set(re.findall(r"=> (/\S+)", out))
            for lib in libs:
                files[lib.lstrip("/")] = Path(os.path.realpath(lib))
        else:
            log("redis-tools not installed: no Redis rows")
        return files

    def machine(self):
        def sh(c):
            return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
        m = benchmeta.machine(TOP, ["/dev/shm", TOP])
        m.update({"tmpfs": m["fs"]["/dev/shm"], "buildfs": m["fs"][str(TOP)],
                  "qemu": self.qemu, "qemu_img": self.qemu_img,
                  "pcow_img": self.pcow_img, "fio_host": sh("fio --version")})
        return m

    # -- running guests --
    def boot(self, tag, script, qemu_args, cfgs, env=None):
        logf = self.out / "logs" / f"{tag}.log"
        la0 = os.getloadavg()[0]
        t0 = time.monotonic()
        old = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            g = BenchGuest(script, qemu_args, qemu=self.qemu, fio=True, files=self.files,
                           outdir=self.initramfs,
                           mem=self.p["mem"], maxmem="12G", smp=self.p["vcpus"],
                           timeout=3600, log=logf, accel=self.accel)
            g.start()
            r = g.wait()
        except (guest.GuestError, OSError) as e:
            log(f"{tag}: {e}")
            return {"fio": {}, "redis": {}, "bad": list(cfgs), "time": {}, "rc": None,
                    "fails": [f"{tag}: {e}"],
                    "load": [la0, os.getloadavg()[0]], "wall_s": 0, "boot_s": None}
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        dt = time.monotonic() - t0
        self.boot_times.append([tag, round(dt, 1), r.boot_time and round(r.boot_time, 1)])
        fio, redis, bad, fails = boot_results(r.lines, r.rc, cfgs, r.errors)
        log(f"{tag}: {dt:.0f} s (boot {r.boot_time and round(r.boot_time, 1)} s, "
            f"load {la0:.1f}->{os.getloadavg()[0]:.1f}) rc={r.rc}"
            + (f" INVALID {bad}: {fails[:3]}" if fails else ""))
        if r.rc != 0:
            log(f"{tag}: guest rc={r.rc}; qemu stderr: {r.qemu_stderr.strip()[-500:]}; log {logf}")
        return {"fio": fio, "redis": redis, "bad": bad,
                "time": {k: round(float(v.split()[1]) - float(v.split()[0]), 2)
                         for k, v in parse_kv(r.lines, "BENCH-TIME").items()},
                "rc": r.rc, "fails": fails, "load": [round(la0, 1), round(os.getloadavg()[0], 1)],
                "wall_s": round(dt, 1), "boot_s": r.boot_time}

    def qemu_args(self, imgs, cluster_cow=False):
        a = []
        for i, cfg in enumerate(("raw-dax", "pcow-dax", "pcow-blk")):
            if cfg not in imgs:
                continue
            if cfg == "raw-dax":
                obj = f"memory-backend-file,id=pm{i},mem-path={imgs[cfg]},size={SIZES[cfg]},share=on"
            else:
                obj = f"memory-backend-file,id=pm{i},mem-path={imgs[cfg]},format=pcow,share=on"
                if cluster_cow and self.escalate and self.escalate[0] == "prop":
                    obj += f",{self.escalate[1]}=1"
            a += ["-object", obj, "-device", f"nvdimm,memdev=pm{i},id=nv{i}"]
        for i, cfg in enumerate(("qcow2-blk", "redis-blk")):
            if cfg in imgs:
                a += ["-drive", f"file={imgs[cfg]},format=qcow2,if=none,id=d{i},"
                      "cache=writeback,aio=threads",
                      "-device", f"virtio-blk-pci,drive=d{i}"]
        return a

    def create(self, d, cfgs):
        imgs = {}
        for cfg in cfgs + (["redis-blk"] if "qcow2-blk" in cfgs and self.redis else []):
            sz = SIZES[cfg]
            if cfg == "raw-dax":
                f = d / "raw-dax.img"
                with open(f, "wb") as fh:
                    fh.truncate(sz)
            elif cfg.startswith("pcow"):
                f = d / f"{cfg}.pcow"
                subprocess.run([self.pcow_img, "create", "-f", "pcow", str(f), str(sz)],
                               check=True, capture_output=True)
            else:
                f = d / f"{cfg}.qcow2"
                subprocess.run([self.qemu_img, "create", "-q", "-f", "qcow2", str(f), str(sz)],
                               check=True)
            imgs[cfg] = str(f)
        return imgs

    def snapshot(self, imgs):
        for cfg, f in imgs.items():
            if cfg.startswith("pcow"):
                subprocess.run([self.pcow_img, "snapshot", "-c", "s1", f], check=True,
                               capture_output=True)
            elif cfg == "qcow2-blk":
                subprocess.run([self.qemu_img, "snapshot", "-c", "s1", f], check=True)

    def run_guests(self, d, cfgs):
        """Main boot, offline snapshots, COW boot(s).  Returns {cfg: res}."""
        fs = self.fsname
        if "qcow2-blk" in cfgs and not self.qemu_img:
            log("no qemu-img: qcow2-blk skipped")
            cfgs = [c for c in cfgs if c != "qcow2-blk"]
        imgs = self.create(d, cfgs)
        res = {c: {"fio": {}, "redis": {}} for c in cfgs}

        def merge(r, boot):
            # every round is kept; the figures are medians over the rounds
            merge_fio(res, r["fio"])
            merge_redis(res, r["redis"])
            for k, v in r["time"].items():
                cfg, _, job = k.partition("@")
                if cfg in res:
                    res[cfg].setdefault("time", {})[job] = v
            self.results.setdefault("boots", {})[f"{fs}-{boot}"] = {
                k: r[k] for k in ("rc", "fails", "bad", "load", "wall_s", "boot_s")}
            # a failed configuration invalidates the run (and its ratios)
            self.results.setdefault("invalid", []).extend(
                f"{fs}-{boot}: {x}" for x in r["fails"])

        r = self.boot(f"{fs}-main", script_main(self.p, cfgs, self.redis), self.qemu_args(imgs),
                      cfgs)
        merge(r, "main")
        for cfg, f in imgs.items():
            if cfg in res:
                res[cfg]["image_bytes_after_main"] = os.stat(f).st_blocks * 512
        self.snapshot(imgs)
        env = {"PCOW_COW_ESCALATE": "never"} if self.escalate and self.escalate[0] == "env" else None
        r = self.boot(f"{fs}-cow", script_cow(self.p, cfgs, "cow", "cow"), self.qemu_args(imgs),
                      cfgs, env)
        merge(r, "cow")
        pc = [c for c in cfgs if c.startswith("pcow")]
        if self.escalate and pc:
            env = {"PCOW_COW_ESCALATE": "1"} if self.escalate[0] == "env" else None
            r = self.boot(f"{fs}-cowcl", script_cow(self.p, pc, "cowcl", "cow-cluster"),
                          self.qemu_args({c: imgs[c] for c in pc}, cluster_cow=True), pc, env)
            merge(r, "cowcl")
        for cfg, f in imgs.items():
            if cfg in res and cfg.startswith("pcow"):
                r = subprocess.run([self.pcow_img, "info", "--output=json", "-U", f],
                                   capture_output=True, text=True)
                try:
                    res[cfg]["info"] = json.loads(r.stdout)
                except ValueError:
                    pass
            os.unlink(f)
        return res

    def run_host(self, d):
        t0 = time.monotonic()
        f = d / "host.data"
        subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=1M",
                        f"count={self.p['data'] // MiB}", "conv=fsync"],
                       check=True, capture_output=True)
        jobs = []
        for rnd in range(self.p["rounds"]):
            # the later rounds only what a ratio needs (host-dax is not in
            # the guest's rounds: its rounds pair by number, not by time)
            jobs += [(f"host-dax@{n}#{rnd}", kw) for n, kw in
                     steady_jobs(self.p, str(f), "mmap", False, self.p["data"])
                     if rnd == 0 or n in ("randread-4k-1", "randwrite-4k-1")]
        n, kw = first_touch_job(str(d / "host.fresh"), "mmap", False, self.p["ft"])
        jobs.append((f"host-dax@{n}#0", kw))
        out = subprocess.run(["fio"] + fio_cmd(jobs), capture_output=True, text=True)
        fio = parse_fio_json(out.stdout)
        res = {"fio": {}}
        if "_error" in fio or out.returncode != 0:
            why = f"{self.fsname}-host-dax: fio exit {out.returncode}: " \
                  f"{fio.pop('_error', '')[:200]} {out.stderr[-200:]}"
            log(why)
            self.results.setdefault("invalid", []).append(why)
        else:
            merge_fio({"host-dax": res}, fio)
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
        r = subprocess.run([str(sh), "--out", str(self.out / "bench-monitor.json")] + dirs,
                           capture_output=True, text=True, cwd=TOP)
        (self.out / "logs" / "bench-monitor.log").write_text(r.stdout + r.stderr)
        log(f"bench-monitor: {time.monotonic() - t0:.0f} s rc={r.returncode}")
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        res = {"rc": r.returncode, "table": "\n".join(lines[:-1]),
               "stderr": r.stderr[-500:]}
        try:
            res["json"] = benchmeta.strict_loads(lines[-1])
        except (ValueError, IndexError):
            res["json"] = None
            res["table"] = "\n".join(lines) + "\n" + r.stderr[-500:]
        if r.returncode != 0 or res["json"] is None:
            self.results.setdefault("invalid", []).append(
                f"bench-monitor: exit {r.returncode}, "
                f"{'valid' if res['json'] else 'no valid'} JSON")
        return res

    def run(self):
        a = self.a
        t_start = time.monotonic()
        self.results["meta"] = {"machine": self.machine(), "params": self.p,
                                "command": " ".join(sys.argv),
                                "guest_kernel": self.guest_kernel,
                                "accel": self.accel, "quick": self.quick,
                                "cow_whole_cluster": self.escalate,
                                "qcow2_cache": "virtio-blk-pci, cache=writeback, aio=threads",
                                "loadavg_start": benchmeta.loadavg(),
                                "busiest_start": benchmeta.busiest(),
                                "note": a.note}
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
                if "host-dax" in only:
                    R["host-dax"] = self.run_host(d)
                gc = [c for c in GUEST_CFGS if c in only]
                if gc:
                    R.update(self.run_guests(d, gc))
                self.save()
            if not a.no_monitor:
                self.results["monitor"] = self.run_monitor()
        finally:
            for _, d in self.dirs:
                shutil.rmtree(d, ignore_errors=True)
        self.results["meta"]["duration_s"] = round(time.monotonic() - t_start, 1)
        self.results["meta"]["loadavg_end"] = benchmeta.loadavg()
        self.results["meta"]["busiest_end"] = benchmeta.busiest()
        self.results["meta"]["boots"] = self.boot_times
        self.save()
        return self.results

    def save(self):
        (self.out / "results.json").write_text(benchmeta.strict_dumps(self.results, indent=1))


# ----------------------------------------------------------------------------
# report

def g(R, fs, cfg, job, key="iops"):
    try:
        v = R["fs"][fs][cfg]["fio"][job][key]
        return v if v else None
    except (KeyError, TypeError):
        return None


def rounds_of(R, fs, cfg, job, key="iops"):
    """Per-round values of a figure (index = round; None: not measured).
    A results file without rounds: its one value."""
    try:
        v = R["fs"][fs][cfg]["fio"][job]
    except (KeyError, TypeError):
        return []
    rl = v.get("rounds")
    if rl and all(x is None or isinstance(x, dict) for x in rl):
        return [x.get(key) if x else None for x in rl]
    return [v.get(key)]


def redis_rounds(R, fs, cfg):
    try:
        r = R["fs"][fs][cfg]["redis"]
        return [None if x is None else float(x)
                for x in r.get("rounds") or [r["set"]]]
    except (KeyError, ValueError, TypeError):
        return []


def put_ratio(rt, name, num, den):
    """rt[name] = median of the per-round ratios num[r] / den[r];
    rt[name_ci95] = its 95% bootstrap interval (null below 2 rounds)."""
    rt[name], rt[name + "_ci95"] = benchmeta.summary(
        benchmeta.paired_ratios(num, den))


def fmt_ratio(v, ci):
    if v is None:
        return "-"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def report(R):
    fss = list(R["fs"])
    lines = []
    jobs = [("randread-4k-1", "iops"), ("randwrite-4k-1", "iops"),
            ("randread-4k-1", "p50_us"), ("randread-4k-1", "p99_us"),
            ("randwrite-4k-1", "p50_us"), ("randwrite-4k-1", "p99_us"),
            ("randread-4k-1", "minf"), ("randwrite-4k-1", "minf"),
            ("read-1m-N", "bw_MBps"), ("write-1m-N", "bw_MBps"),
            ("randread-4k-N", "iops"), ("randwrite-4k-N", "iops"),
            ("firsttouch-4k-1", "iops"), ("firsttouch-4k-1", "p50_us"),
            ("firsttouch-4k-1", "p99_us"),
            ("randread-4k-1-aio16", "iops"), ("randwrite-4k-1-aio16", "iops")]
    cfgs = CONFIGS
    for fs in fss:
        lines.append(f"\nResults on {fs} ({R['meta']['accel']}, {R['meta']['params']['vcpus']} vCPUs; "
                     "median of the rounds; IOPS, MB/s, us)")
        hdr = f"{'workload':<28}" + "".join(f"{c:>12}" for c in cfgs)
        lines.append(hdr)
        for job, key in jobs:
            row = f"{job + ' ' + key.replace('_MBps', ' MB/s').replace('_us', ''):<28}"
            vals = [g(R, fs, c, job, key) for c in cfgs]
            if not any(vals):
                continue
            row += "".join(f"{v:>12.1f}" if v else f"{'-':>12}" for v in vals)
            lines.append(row)
        for c in ("raw-dax", "pcow-dax", "pcow-blk", "qcow2-blk"):
            for job in ("cow", "cow-cluster"):
                v = g(R, fs, c, job)
                if v:
                    what = {"raw-dax": "overwrite (no snapshot)", "qcow2-blk": "qcow2 internal snap"}.get(
                        c, "4 KiB COW" if job == "cow" else "whole-cluster COW")
                    lines.append(f"{'COW ' + c:<14}{what:<26}{v:>10.1f} IOPS  p50 "
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
    def fio_ratio(name, c1, c2, job, k="iops", f=fs):
        put_ratio(rt, name, rounds_of(R, f, c1, job, k), rounds_of(R, f, c2, job, k))

    for key, job, k in wl:
        fio_ratio(f"pcowdax_over_rawdax_{key}", "pcow-dax", "raw-dax", job, k)
    for key, job, k in wl:
        fio_ratio(f"pcowdax_over_qcow2blk_{key}", "pcow-dax", "qcow2-blk", job, k)
    for key, job, k in wl[:2]:
        fio_ratio(f"pcowblk_over_qcow2blk_{key}", "pcow-blk", "qcow2-blk", job, k)
    for key, job, k in wl[:2]:
        fio_ratio(f"rawdax_over_hostdax_{key}", "raw-dax", "host-dax", job, k)
    qc = rounds_of(R, fs, "qcow2-blk", "cow")
    pc, pcl = rounds_of(R, fs, "pcow-dax", "cow"), rounds_of(R, fs, "pcow-dax", "cow-cluster")
    put_ratio(rt, "pcow_cow_over_qcow2_cow", pc, qc)
    put_ratio(rt, "pcowblk_cow_over_qcow2_cow", rounds_of(R, fs, "pcow-blk", "cow"), qc)
    put_ratio(rt, "pcow_cowcluster_over_qcow2_cow", pcl, qc)
    put_ratio(rt, "pcow_cow4k_over_cowcluster", pc, pcl)
    put_ratio(rt, "pcow_cow_over_rawdax_overwrite", pc, rounds_of(R, fs, "raw-dax", "cow"))
    put_ratio(rt, "redis_pcowdax_over_rawdax", redis_rounds(R, fs, "pcow-dax"),
              redis_rounds(R, fs, "raw-dax"))
    put_ratio(rt, "redis_pcowdax_over_qcow2blk", redis_rounds(R, fs, "pcow-dax"),
              redis_rounds(R, fs, "qcow2-blk"))
    if len(fss) > 1:
        f2 = fss[1]
        for key, job, k in wl[:2]:
            fio_ratio(f"{f2}_pcowdax_over_rawdax_{key}", "pcow-dax", "raw-dax", job, k, f2)
            fio_ratio(f"{f2}_pcowdax_over_qcow2blk_{key}", "pcow-dax", "qcow2-blk", job, k, f2)
        fio_ratio(f"{f2}_pcow_cow_over_qcow2_cow", "pcow-dax", "qcow2-blk", "cow", "iops", f2)
    nr = R["meta"]["params"].get("rounds")
    lines.append(f"\nRatios (same run, images on {fs}; >1 = pcow faster): median of "
                 f"the per-round ratios [95% bootstrap interval], {nr} rounds")
    for k, v in rt.items():
        if not k.endswith("_ci95"):
            lines.append(f"  {k:<44} {fmt_ratio(v, rt.get(k + '_ci95'))}")
    mon = R.get("monitor")
    if mon and mon.get("table"):
        lines.append("\nImage Monitor (host level, bench-monitor)")
        lines.append(mon["table"])
    bad = R.get("invalid", [])
    if bad:
        lines.append(f"\nINVALID RUN ({len(bad)} problems): the ratios of the failed "
                     "configurations are null; do not quote this run")
        lines += [f"  {x}" for x in bad[:20]]
    rt["fs"] = fs
    rt["rounds"] = nr
    rt["ci95"] = (f"percentile bootstrap of the median of the per-round ratios, "
                  f"{benchmeta.BOOT_RESAMPLES} resamples, seed {benchmeta.BOOT_SEED}")
    rt["quick"] = R["meta"]["quick"]
    rt["accel"] = R["meta"]["accel"]
    rt["valid"] = not bad
    if bad:
        rt["invalid_reasons"] = bad[:20]
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
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds (default 10): every figure is the median over "
                    "the rounds, every ratio the median of per-round ratios "
                    "with a 95%% bootstrap interval")
    ap.add_argument("--publish", action="store_true",
                    help="charts and results-<date>-<quick|full>.json also into docs/figures")
    ap.add_argument("--tag", default=None,
                    help="published as results-<date>-<quick|full>-TAG.json")
    ap.add_argument("--note", default=None,
                    help="recorded in the results' meta (e.g. what else ran)")
    ap.add_argument("--no-monitor", action="store_true")
    ap.add_argument("--report", default=None,
                    help="only print the report (tables, ratios) of a results.json")
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
    if a.report:
        # only print: the results file and its directory stay as they are
        print(text)
        print(benchmeta.strict_dumps(rt))
        sys.exit(0 if rt["valid"] else 1)
    R["ratios"] = rt
    (out / "results.json").write_text(benchmeta.strict_dumps(R, indent=1))
    publish = a.publish and rt["valid"]
    try:
        figs = [out / "figures"] + ([TOP / "docs/figures"] if publish else [])
        subprocess.run([sys.executable, str(HERE / "bench-guest-plot.py"),
                        str(out / "results.json")] + [str(f) for f in figs],
                       check=False)
    except OSError as e:
        log(f"charts: {e}")
    (out / "report.txt").write_text(text + "\n" + benchmeta.strict_dumps(rt) + "\n")
    print(text)
    print(f"\n(results: {out}/results.json, charts: {out}/figures/)")
    if publish:
        kind = ("quick" if a.quick else "full") + (f"-{a.tag}" if a.tag else "")
        dst = TOP / "docs/figures" / benchmeta.publish_name(kind)
        shutil.copyfile(out / "results.json", dst)
        print(f"(published: {dst})")
    print(benchmeta.strict_dumps(rt))
    if not rt["valid"]:
        print(f"bench: INVALID run, {len(R['invalid'])} problems (see above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
