#!/usr/bin/python3
"""VM lifecycle with a pcow NVDIMM against a raw one (`make
bench-lifecycle`, run by bench-lifecycle.sh; issue 10).

A TCG guest (tests/pcow/guest; 512 MiB RAM) with a 16 GiB NVDIMM of which
1% (164 MiB) is written.  One preparation boot has the guest write the
same 164 chunks of 1 MiB of /dev/urandom, at scattered offsets, to four
NVDIMMs at once: a 16 GiB pcow image, a 16 GiB sparse raw file (the
baseline: memory-backend-file share=on without format=pcow), a 4 GiB pcow
image (the scaling case) and a 16 GiB pcow overlay whose base holds 164
other chunks (a golden image, written by the host).  Every measured VM
then boots on a copy of one of these, idles, and:

  fresh   pcow, migrate-data=all: live migration (unix socket) to a fresh
          image of the same size; on the destination, savevm and loadvm
          (the vmstate goes to a qcow2 disk, if=none)
  fresh4  the same migration with the 4 GiB image (time against virtual
          size: same data, a quarter of the size; the same qcow2 disk)
  raw     the raw file: migration to a fresh sparse file, savevm and
          loadvm on the destination, save to a state file
          (migrate exec:cat > FILE), quit, restore onto the same file
          (migrate-incoming exec:cat FILE)
  shared  pcow, migrate-data=none: save to a file, quit, restore onto the
          same image; then live migration to a QEMU on that same image
          (shared storage: the image is handed over at switchover)
  top     pcow, migrate-data=top: the overlay migrates to a fresh overlay
          of the same base; only the top's clusters are sent
  ram     the same guest without an NVDIMM: the migration floor (the
          512 MiB of RAM and the devices)

Each round runs every case once, in an order that rotates from round to
round.  Migration figures come from query-migrate on the source at its
end: total-time, downtime, ram.transferred (bytes sent), and the pages
the RAM migration scanned, ram.duplicate + ram.normal (each page it looked
at is sent as one or the other; holes of a pcow image are never looked
at); dirty-sync-count and ram.total (guest RAM plus the NVDIMM's size,
whether or not it is sent) are kept too, and the host's wall time from
the migrate command to the end.
savevm/loadvm: wall time of the HMP command, VM state size from
query-block.  Save: query-migrate's total-time, the file's size; restore:
from migrate-incoming to the VM running (-incoming defer).

Without QEMU's migrate-data property (memory-backend-file,help), the
shared and top cases are skipped (null) and pcow migrates as with all.

Usage: bench-lifecycle.py --qemu Q --qemu-img QI --pcow-img P --dir DIR
                          --out FILE [--publish DIR] [--tag T]
                          [--rounds N] [--size-gib G] [--small-gib G]
                          [--percent P] [--cases C,...] [--migrate-data
                          auto|yes|no] [--note TEXT]

Prints a table of medians [min, max] and ratios (median of the per-round
ratios [95% bootstrap interval], min and max), then, as the last line, one
JSON object.  Exit 1 if any case failed (the run is invalid and is not
published).

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent.parent.parent
sys.path.insert(0, str(TOP / "tests/pcow/guest"))
sys.path.insert(0, str(HERE))
import guest  # noqa: E402
import benchmeta  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
CASES = ["fresh", "fresh4", "raw", "shared", "top", "ram"]
NEEDS_MODES = {"shared", "top"}     # need QEMU's migrate-data property
IDLE = "echo LC-IDLE\nwhile :; do sleep 5; done\n"
DISK = {"vmstate": "disk0"}         # the qcow2 node that holds vmstates


def log(msg):
    print(f"[lifecycle {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


# ----------------------------------------------------------------------------
# pure parts (tests/pcow/bench/test-bench.py)

def chunk_count(size_gib, percent):
    """1 MiB chunks that make @percent of @size_gib GiB, rounded up."""
    return math.ceil(round(size_gib * 1024 * percent / 100, 6))


def stride(size_mib):
    """The step between consecutive chunks: near size / golden ratio
    (Fibonacci hashing spreads any number of them evenly) and prime to
    the size, so that n <= size chunks never meet."""
    k = int(size_mib * 0.6180339887) | 1
    while math.gcd(k, size_mib) != 1:
        k += 2
    return k


def chunk_offsets(size_mib, n, shift=0):
    """MiB offsets of @n distinct chunks spread over @size_mib MiB: chunk
    i at (i * stride + shift) mod size."""
    if n > size_mib:
        raise ValueError(f"{n} chunks of 1 MiB do not fit in {size_mib} MiB")
    k = stride(size_mib)
    return [(i * k + shift) % size_mib for i in range(n)]


def base_offsets(size_mib, n, taken):
    """@n chunk offsets for the overlay's base, between those of @taken
    and none of them in it."""
    out, taken = [], set(taken)
    for off in chunk_offsets(size_mib, size_mib, size_mib // (4 * n) + 1):
        if len(out) == n:
            break
        if off not in taken:
            out.append(off)
    return out


def has_migrate_data(help_text):
    """QEMU's memory-backend-file,help lists a migrate-data property."""
    return re.search(r"^\s*migrate-data=", help_text, re.M) is not None


def nvdimm(idx, path, fmt, size_gib, mode=None):
    """-object/-device of NVDIMM @idx: pcow (with migrate-data=@mode
    when given) or raw (a plain shared file)."""
    o = (f"memory-backend-file,id=pm{idx},mem-path={path},share=on,"
         f"size={size_gib}G")
    if fmt == "pcow":
        o += ",format=pcow" + (f",migrate-data={mode}" if mode else "")
    return ["-object", o, "-device", f"nvdimm,id=nv{idx},memdev=pm{idx}"]


def mig_figures(info, wall=None):
    """Figures of one finished outgoing migration (query-migrate)."""
    ram = info.get("ram", {})
    dup, norm = ram.get("duplicate"), ram.get("normal")
    return {"status": info.get("status"),
            "total_time_ms": info.get("total-time"),
            "downtime_ms": info.get("downtime"),
            "setup_ms": info.get("setup-time"),
            "pages_scanned": (None if dup is None or norm is None
                              else dup + norm + ram.get("skipped", 0)),
            "zero_pages": dup, "normal_pages": norm,
            "sent_bytes": ram.get("transferred"),
            "ram_total_bytes": ram.get("total"),
            "dirty_syncs": ram.get("dirty-sync-count"),
            "wall_s": wall}


def vmstate_sizes(block_info, node):
    """{tag: vm-state-size} of the snapshots of @node in query-block's
    answer."""
    for b in block_info:
        ins = b.get("inserted") or {}
        if ins.get("node-name") == node or b.get("device") == node:
            return {s["name"]: s["vm-state-size"]
                    for s in ins.get("image", {}).get("snapshots", [])}
    return {}


def select_cases(cases, modes):
    """(cases to run, cases skipped): without QEMU's migrate-data property
    (@modes false) the cases that need none or top cannot run."""
    run = [c for c in cases if modes or c not in NEEDS_MODES]
    return run, [c for c in cases if c not in run]


def round_order(cases, rnd):
    """The cases of round @rnd: case @rnd first, the others after it in
    turn, backwards every other round (no case always first, last or
    after the same one)."""
    if not cases:
        return []
    k = rnd % len(cases)
    rest = list(cases[k + 1:]) + list(cases[:k])
    return [cases[k]] + (rest if rnd % 2 == 0 else rest[::-1])


# (ratio name, (case, op, metric) of the numerator, of the denominator)
RATIOS = [
    ("migrate_fresh_raw_over_pcow_time", ("raw", "migrate", "total_time_ms"),
     ("fresh", "migrate", "total_time_ms")),
    ("migrate_fresh_raw_over_pcow_bytes", ("raw", "migrate", "sent_bytes"),
     ("fresh", "migrate", "sent_bytes")),
    ("migrate_fresh_raw_over_pcow_pages", ("raw", "migrate", "pages_scanned"),
     ("fresh", "migrate", "pages_scanned")),
    ("migrate_fresh_raw_over_pcow_downtime",
     ("raw", "migrate", "downtime_ms"), ("fresh", "migrate", "downtime_ms")),
    ("migrate_fresh_16g_over_4g_time", ("fresh", "migrate", "total_time_ms"),
     ("fresh4", "migrate", "total_time_ms")),
    ("migrate_fresh_16g_over_4g_pages", ("fresh", "migrate", "pages_scanned"),
     ("fresh4", "migrate", "pages_scanned")),
    ("migrate_raw_over_shared_time", ("raw", "migrate", "total_time_ms"),
     ("shared", "migrate", "total_time_ms")),
    ("migrate_raw_over_top_time", ("raw", "migrate", "total_time_ms"),
     ("top", "migrate", "total_time_ms")),
    ("migrate_fresh_over_ram_time", ("fresh", "migrate", "total_time_ms"),
     ("ram", "migrate", "total_time_ms")),
    ("migrate_raw_over_ram_time", ("raw", "migrate", "total_time_ms"),
     ("ram", "migrate", "total_time_ms")),
    ("savevm_raw_over_pcow_time", ("raw", "savevm", "time_s"),
     ("fresh", "savevm", "time_s")),
    ("savevm_vmstate_raw_over_pcow_bytes", ("raw", "savevm", "vmstate_bytes"),
     ("fresh", "savevm", "vmstate_bytes")),
    ("loadvm_raw_over_pcow_time", ("raw", "loadvm", "time_s"),
     ("fresh", "loadvm", "time_s")),
    ("save_raw_over_pcow_time", ("raw", "save", "total_time_ms"),
     ("shared", "save", "total_time_ms")),
    ("save_file_raw_over_pcow_bytes", ("raw", "save", "file_bytes"),
     ("shared", "save", "file_bytes")),
    ("restore_raw_over_pcow_time", ("raw", "restore", "time_s"),
     ("shared", "restore", "time_s")),
]
# Medians quoted as they are (not ratios): (key, (case, op, metric))
FIGURES = [
    ("migrate_shared_sent_bytes", ("shared", "migrate", "sent_bytes")),
    ("migrate_top_sent_bytes", ("top", "migrate", "sent_bytes")),
    ("migrate_fresh_sent_bytes", ("fresh", "migrate", "sent_bytes")),
    ("migrate_raw_sent_bytes", ("raw", "migrate", "sent_bytes")),
    ("migrate_fresh_time_ms", ("fresh", "migrate", "total_time_ms")),
    ("migrate_raw_time_ms", ("raw", "migrate", "total_time_ms")),
    ("migrate_ram_time_ms", ("ram", "migrate", "total_time_ms")),
    ("migrate_ram_sent_bytes", ("ram", "migrate", "sent_bytes")),
]
TARGET = ("migrate_fresh_raw_over_pcow_time", 20)


def series(rounds, case, op, metric):
    """The value of @metric of @op of @case in every round (None where it
    was not measured)."""
    out = []
    for r in rounds:
        v = r.get(case, {}).get(op, {}).get(metric)
        out.append(v if isinstance(v, (int, float)) else None)
    return out


def spread(xs, digits=3):
    """{median, ci95, min, max} of the measured values of @xs (all None
    when there are none)."""
    v = [x for x in xs if x is not None]
    med, ci = benchmeta.summary(v, digits)
    r = (lambda x: round(x, digits))
    return {"median": med, "ci95": ci, "min": r(min(v)) if v else None,
            "max": r(max(v)) if v else None, "n": len(v)}


def summarize(rounds):
    """The final JSON's figures: each ratio the median of the per-round
    ratios (KEY), with KEY_ci95, KEY_min, KEY_max; each figure the median
    of the rounds with its min and max."""
    out = {}
    for name, num, den in RATIOS:
        s = spread(benchmeta.paired_ratios(series(rounds, *num),
                                           series(rounds, *den)))
        out[name] = s["median"]
        out[name + "_ci95"] = s["ci95"]
        out[name + "_min"], out[name + "_max"] = s["min"], s["max"]
    for name, src in FIGURES:
        s = spread(series(rounds, *src), 0)
        out[name] = s["median"]
        out[name + "_min"], out[name + "_max"] = s["min"], s["max"]
    key, goal = TARGET
    out["migrate_fresh_target"] = goal
    out["migrate_fresh_target_met"] = (None if out[key] is None
                                       else out[key] >= goal)
    return out


def table(rounds, cases):
    """Text table: every measured (case, op, metric), median [min, max]."""
    lines = [f"{'case':<8} {'op':<8} {'figure':<16} "
             f"{'median':>14} {'[min, max]':>30}"]
    ops = ["migrate", "save", "restore", "savevm", "loadvm"]
    metrics = ["total_time_ms", "downtime_ms", "pages_scanned", "sent_bytes",
               "ram_total_bytes", "dirty_syncs", "file_bytes", "vmstate_bytes",
               "time_s"]
    for c in cases:
        for op in ops:
            for m in metrics:
                s = spread(series(rounds, c, op, m), 3)
                if s["n"]:
                    mm = f"[{s['min']}, {s['max']}]"
                    lines.append(f"{c:<8} {op:<8} {m:<16} "
                                 f"{s['median']:>14} {mm:>30}")
    return "\n".join(lines)


def fmt_ratio(out, k):
    v = out.get(k)
    if v is None:
        return "-"
    ci = out.get(k + "_ci95")
    return (f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") +
            f" min {out[k + '_min']:.3f} max {out[k + '_max']:.3f}")


# ----------------------------------------------------------------------------
# QEMU and the guest

class Vm:
    """One QEMU of the benchmark (booted, or waiting for an incoming
    migration), with its QMP."""

    def __init__(self, bench, args, incoming=None, label="vm", gib=None):
        self.label = label
        a = list(args) + (["-incoming", incoming] if incoming else [])
        self.g = guest.Guest(IDLE, a, **dict(
            bench.guest_kw, maxmem=f"{(gib or bench.a.size_gib) + 1}G"))
        self.g.start()
        try:
            self.m = self.g.qmp(timeout=60)
            self.m.sock.settimeout(900)   # savevm of 16 GiB under TCG
            if not incoming:
                self.g.wait_for_line(r"^LC-IDLE$")
        except BaseException:
            self.close()
            raise

    def status(self):
        return self.m.execute("query-status")["status"]

    def quit(self):
        """QMP quit, and wait for QEMU to close its images and exit."""
        try:
            self.m.execute("quit")
            self.g.proc.wait(timeout=120)
        except (EOFError, OSError, guest.QMPError,
                subprocess.TimeoutExpired):
            pass
        r = self.close()
        if r.qemu_rc != 0:
            raise guest.GuestError(f"{self.label}: QEMU exit {r.qemu_rc} "
                                   f"after quit: "
                                   f"{r.qemu_stderr.strip()[-300:]}")

    def close(self):
        """Kill QEMU if it still runs (a failed case); its result."""
        self.g.kill()
        return self.g.wait(timeout=60)


def wait_done(m, timeout):
    """query-migrate until the migration ended; the final answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = m.execute("query-migrate")
        st = info.get("status")
        if st in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.05)
    raise guest.GuestError(f"migration not done after {timeout} s")


class Bench:
    def __init__(self, a):
        self.a = a
        self.dir = Path(a.dir)
        help_text = subprocess.run(
            [a.qemu, "-object", "memory-backend-file,help"],
            capture_output=True, text=True, timeout=60).stdout
        if "format=" not in help_text:
            sys.exit(f"bench-lifecycle: {a.qemu} has no format= property "
                     "(not a qemu-pcow build)")
        have = has_migrate_data(help_text)
        self.modes = have if a.migrate_data == "auto" else \
            a.migrate_data == "yes"
        self.cases, self.skipped = select_cases(a.cases.split(","),
                                                self.modes)
        self.n = chunk_count(a.size_gib, a.percent)
        self.size_mib = a.size_gib * 1024
        self.offs = chunk_offsets(self.size_mib, self.n)
        self.offs4 = chunk_offsets(a.small_gib * 1024, self.n)
        self.guest_kw = dict(qemu=a.qemu, timeout=3600, qmp=True,
                             append="no_timer_check")
        self.invalid = []
        self.notes = []
        self.rounds = []

    # -- host helpers --
    def img(self, *args):
        subprocess.run([self.a.pcow_img] + [str(x) for x in args],
                       check=True, stdout=subprocess.DEVNULL)

    def info(self, path):
        r = subprocess.run([self.a.pcow_img, "info", "--output=json", "-U",
                            str(path)], check=True, capture_output=True,
                           text=True)
        return benchmeta.strict_loads(r.stdout)

    def mode(self, m):
        """migrate-data=@m where QEMU has it; nothing otherwise (all)."""
        return m if self.modes else None

    def qcow2(self, name):
        p = self.dir / name
        p.unlink(missing_ok=True)
        subprocess.run([self.a.qemu_img, "create", "-q", "-f", "qcow2",
                        str(p), "64M"], check=True)
        return ["-drive", f"if=none,id=d0,node-name=disk0,format=qcow2,"
                f"file={p}"]

    def copy(self, src, name):
        dst = self.dir / name
        dst.unlink(missing_ok=True)
        subprocess.run(["cp", "--sparse=always", str(src), str(dst)],
                       check=True)
        return dst

    def sparse(self, name, gib):
        p = self.dir / name
        p.unlink(missing_ok=True)
        with open(p, "wb") as f:
            f.truncate(gib * GiB)
        return p

    def fresh(self, name, gib, base=None):
        p = self.dir / name
        p.unlink(missing_ok=True)
        if base:
            self.img("create", "-q", "-b", base.name, "-F", "pcow", p)
        else:
            self.img("create", "-q", p, f"{gib}G")
        return p

    def clean(self, *names):
        for n in names:
            (self.dir / n).unlink(missing_ok=True)

    # -- preparation --
    def prepare(self):
        """The guest writes the same chunks to the four NVDIMMs; the
        overlay's base gets other chunks from the host."""
        d, g = self.dir, self.a.size_gib
        self.P = self.fresh("prep.pcow", g)
        self.P4 = self.fresh("prep4.pcow", self.a.small_gib)
        self.R = self.sparse("prep.raw", g)
        self.BASE = d / "base.pcow"
        boffs = base_offsets(self.size_mib, self.n, self.offs)
        raw = self.sparse("base.raw", g)
        with open(raw, "r+b") as f:
            for off in boffs:
                f.seek(off * MiB)
                f.write(os.urandom(MiB))
        self.img("convert", "-O", "pcow", raw, self.BASE)
        raw.unlink()
        self.T = self.fresh("prep-top.pcow", g, base=self.BASE)
        script = self.prep_script()
        args = (nvdimm(0, self.P, "pcow", g) + nvdimm(1, self.R, "raw", g) +
                nvdimm(2, self.T, "pcow", g) +
                nvdimm(3, self.P4, "pcow", self.a.small_gib))
        kw = dict(self.guest_kw, qmp=False,
                  maxmem=f"{3 * g + self.a.small_gib + 1}G")
        t0 = time.monotonic()
        r = guest.run(script, args, **kw)
        log(f"prepare: guest wrote {self.n} MiB to 4 NVDIMMs, rc {r.rc}, "
            f"{time.monotonic() - t0:.0f} s")
        if r.rc != 0:
            tail = "\n".join(r.lines[-20:])
            sys.exit(f"bench-lifecycle: the preparation boot failed "
                     f"(rc {r.rc}): {tail}\n{r.qemu_stderr[-500:]}")
        self.check_prepared()

    def prep_script(self):
        g4 = self.a.small_gib * GiB
        pairs = " ".join(f"{a}:{b}" for a, b in zip(self.offs, self.offs4))
        return (r"""
big= small=
for d in /sys/block/pmem*; do
    n=$(basename $d)
    if [ "$(( $(cat $d/size) * 512 ))" = "%d" ]; then small=/dev/$n
    else big="$big /dev/$n"; fi
done
[ -n "$small" ] && [ $(echo $big | wc -w) = 3 ] || {
    echo "LC-FAIL devices: big=$big small=$small"; exit 1; }
for p in %s; do
    dd if=/dev/urandom of=/tmp/c bs=1M count=1 iflag=fullblock \
        2>/dev/null || exit 1
    for d in $big; do
        dd if=/tmp/c of=$d bs=1M seek=${p%%:*} oflag=direct \
            conv=notrunc 2>/dev/null || { echo "LC-FAIL $d"; exit 1; }
    done
    dd if=/tmp/c of=$small bs=1M seek=${p#*:} oflag=direct \
        conv=notrunc 2>/dev/null || { echo "LC-FAIL $small"; exit 1; }
done
sync
echo LC-WRITTEN
""" % (g4, pairs))

    def check_prepared(self):
        """Every image holds the written MiB (the guest found the right
        devices and every write reached its image): the pcow images count
        exactly that many clusters, the raw file has random data at every
        chunk (its allocated size says little: ext4 may allocate whole
        large folios)."""
        want = self.n * MiB
        for p in (self.P, self.T, self.P4):
            inf = self.info(p)
            cl = inf["cluster-size"]
            got = inf["format-specific"]["data"]["active-clusters"] * cl
            if got != want:
                sys.exit(f"bench-lifecycle: {p.name} holds {got} bytes of "
                         f"data, expected {want}")
        seen = set()
        with open(self.R, "rb") as f:
            for off in self.offs:
                f.seek(off * MiB)
                seen.add(hash(f.read(MiB)))
        if len(seen) != self.n:
            sys.exit(f"bench-lifecycle: {self.R.name} has {len(seen)} "
                     f"different chunks, expected {self.n} (random)")

    # -- operations --
    def migrate(self, src, dst_args, uri, label, gib=None):
        """Live migration of @src to a new QEMU (@dst_args, -incoming
        @uri); returns (figures, destination Vm)."""
        dst = Vm(self, dst_args, incoming=uri, label=label + "-dst", gib=gib)
        try:
            src.m.execute("migrate-set-parameters",
                          {"max-bandwidth": 1 << 40})
            t0 = time.monotonic()
            src.m.execute("migrate", uri=uri)
            info = wait_done(src.m, 1800)
            fig = mig_figures(info, round(time.monotonic() - t0, 3))
            if info["status"] != "completed":
                raise guest.GuestError(f"{label}: migration {info['status']}"
                                       f": {info.get('error-desc')}")
            deadline = time.monotonic() + 120
            while dst.status() != "running":
                if time.monotonic() > deadline:
                    raise guest.GuestError(f"{label}: destination "
                                           f"{dst.status()}")
                time.sleep(0.05)
            src.quit()
        except BaseException:
            dst.close()
            raise
        return fig, dst

    def save(self, src, state):
        src.m.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        src.m.execute("migrate", uri=f"exec:cat > {state}")
        info = wait_done(src.m, 1800)
        if info["status"] != "completed":
            raise guest.GuestError(f"save: {info['status']}: "
                                   f"{info.get('error-desc')}")
        fig = mig_figures(info)
        src.quit()
        fig["file_bytes"] = os.stat(state).st_size
        return fig

    def restore(self, args, state, label):
        vm = Vm(self, args, incoming="defer", label=label)
        try:
            t0 = time.monotonic()
            vm.m.execute("migrate-incoming", uri=f"exec:cat {state}")
            deadline = t0 + 1800
            while vm.status() != "running":
                info = vm.m.execute("query-migrate")
                if info.get("status") == "failed":
                    raise guest.GuestError(f"{label}: restore failed")
                if time.monotonic() > deadline:
                    raise guest.GuestError(f"{label}: restore not done")
                time.sleep(0.02)
            return {"time_s": round(time.monotonic() - t0, 3)}, vm
        except BaseException:
            vm.close()
            raise

    def hmp_timed(self, vm, cmd):
        t0 = time.monotonic()
        out = vm.m.hmp(cmd)
        dt = time.monotonic() - t0
        if out.strip():
            raise guest.GuestError(f"{vm.label}: {cmd}: {out.strip()}")
        return round(dt, 3)

    def snapshots(self, vm, tag="lc"):
        sv = {"time_s": self.hmp_timed(vm, f"savevm {tag}")}
        sv["vmstate_bytes"] = vmstate_sizes(
            vm.m.execute("query-block"), DISK["vmstate"]).get(tag)
        lv = {"time_s": self.hmp_timed(vm, f"loadvm {tag}")}
        if vm.status() != "running":
            raise guest.GuestError(f"{vm.label}: not running after loadvm")
        return sv, lv

    # -- the cases: each returns {op: figures} --
    def case_fresh(self, rnd):
        g = self.a.size_gib
        a = self.copy(self.P, "fresh-a.pcow")
        b = self.fresh("fresh-b.pcow", g)
        disk = self.qcow2("fresh.qcow2")
        mode = self.mode("all")
        src = Vm(self, nvdimm(0, a, "pcow", g, mode) + disk, label="fresh")
        try:
            mig, dst = self.migrate(src, nvdimm(0, b, "pcow", g, mode) + disk,
                                    f"unix:{self.dir}/mig.sock", "fresh")
        except BaseException:
            src.close()
            raise
        try:
            sv, lv = self.snapshots(dst)
        finally:
            dst.quit()
        self.clean("fresh-a.pcow", "fresh-b.pcow", "fresh.qcow2")
        return {"migrate": mig, "savevm": sv, "loadvm": lv}

    def case_fresh4(self, rnd):
        g = self.a.small_gib
        a = self.copy(self.P4, "fresh4-a.pcow")
        b = self.fresh("fresh4-b.pcow", g)
        disk = self.qcow2("fresh4.qcow2")  # as fresh: only the size differs
        mode = self.mode("all")
        src = Vm(self, nvdimm(0, a, "pcow", g, mode) + disk, label="fresh4",
                 gib=g)
        try:
            mig, dst = self.migrate(src, nvdimm(0, b, "pcow", g, mode) + disk,
                                    f"unix:{self.dir}/mig.sock", "fresh4",
                                    gib=g)
        except BaseException:
            src.close()
            raise
        dst.quit()
        self.clean("fresh4-a.pcow", "fresh4-b.pcow", "fresh4.qcow2")
        return {"migrate": mig}

    def case_raw(self, rnd):
        g = self.a.size_gib
        a = self.copy(self.R, "raw-a.raw")
        b = self.sparse("raw-b.raw", g)
        disk = self.qcow2("raw.qcow2")
        state = self.dir / "raw.state"
        src = Vm(self, nvdimm(0, a, "raw", g) + disk, label="raw")
        try:
            mig, dst = self.migrate(src, nvdimm(0, b, "raw", g) + disk,
                                    f"unix:{self.dir}/mig.sock", "raw")
        except BaseException:
            src.close()
            raise
        try:
            save = self.save(dst, state)
        except BaseException:
            dst.close()
            raise
        rest, vm = self.restore(nvdimm(0, b, "raw", g) + disk, state,
                                "raw-restored")
        try:
            sv, lv = self.snapshots(vm)
        finally:
            vm.quit()
        self.clean("raw-a.raw", "raw-b.raw", "raw.qcow2", "raw.state")
        return {"migrate": mig, "save": save, "restore": rest,
                "savevm": sv, "loadvm": lv}

    def case_shared(self, rnd):
        g = self.a.size_gib
        a = self.copy(self.P, "shared.pcow")
        state = self.dir / "shared.state"
        args = nvdimm(0, a, "pcow", g, self.mode("none"))
        src = Vm(self, args, label="shared")
        try:
            save = self.save(src, state)
        except BaseException:
            src.close()
            raise
        rest, vm = self.restore(args, state, "shared-restored")
        try:
            mig, dst = self.migrate(vm, args, f"unix:{self.dir}/mig.sock",
                                    "shared")
        except BaseException:
            vm.close()
            raise
        dst.quit()
        self.clean("shared.pcow", "shared.state")
        return {"migrate": mig, "save": save, "restore": rest}

    def case_top(self, rnd):
        g = self.a.size_gib
        a = self.copy(self.T, "top-a.pcow")
        b = self.fresh("top-b.pcow", g, base=self.BASE)
        mode = self.mode("top")
        src = Vm(self, nvdimm(0, a, "pcow", g, mode), label="top")
        try:
            mig, dst = self.migrate(src, nvdimm(0, b, "pcow", g, mode),
                                    f"unix:{self.dir}/mig.sock", "top")
        except BaseException:
            src.close()
            raise
        dst.quit()
        self.clean("top-a.pcow", "top-b.pcow")
        return {"migrate": mig}

    def case_ram(self, rnd):
        src = Vm(self, [], label="ram")
        try:
            mig, dst = self.migrate(src, [], f"unix:{self.dir}/mig.sock",
                                    "ram")
        except BaseException:
            src.close()
            raise
        dst.quit()
        return {"migrate": mig}

    def run(self):
        self.prepare()
        for rnd in range(self.a.rounds):
            res = {}
            for c in round_order(self.cases, rnd):
                t0 = time.monotonic()
                try:
                    res[c] = getattr(self, f"case_{c}")(rnd)
                    log(f"round {rnd + 1}: {c} done in "
                        f"{time.monotonic() - t0:.0f} s: " + ", ".join(
                            f"{op} {f.get('total_time_ms', f.get('time_s'))}"
                            for op, f in res[c].items()))
                except (guest.GuestError, guest.QMPError, EOFError,
                        OSError, subprocess.CalledProcessError) as e:
                    why = f"round {rnd + 1}: {c}: {e}"
                    log(why)
                    self.invalid.append(why)
                    res[c] = {"error": str(e)}
            self.rounds.append(res)
        return self.rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--qemu-img", required=True)
    ap.add_argument("--pcow-img", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--publish")
    ap.add_argument("--tag")
    ap.add_argument("--note")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--size-gib", type=int, default=16)
    ap.add_argument("--small-gib", type=int, default=4)
    ap.add_argument("--percent", type=float, default=1.0)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--migrate-data", choices=["auto", "yes", "no"],
                    default="auto")
    a = ap.parse_args()
    bad = [c for c in a.cases.split(",") if c not in CASES]
    if bad or a.rounds < 1 or a.small_gib >= a.size_gib:
        ap.error(f"unknown case {bad}" if bad else
                 "--rounds >= 1 and --small-gib < --size-gib")
    load0, started, t0 = benchmeta.loadavg(), benchmeta.now(), time.time()
    busy0 = benchmeta.busiest()
    b = Bench(a)
    log(f"cases {b.cases}" + (f", skipped {b.skipped} (QEMU has no "
                               "migrate-data property)" if b.skipped else "")
        + f"; {b.n} MiB written of {a.size_gib} GiB; {a.rounds} rounds")
    rounds = b.run()
    figs = summarize(rounds)
    figs.update(rounds=a.rounds, cases=b.cases, skipped=b.skipped,
                migrate_data_property=b.modes, written_mib=b.n,
                size_gib=a.size_gib, small_gib=a.small_gib,
                valid=not b.invalid)
    if b.invalid:
        figs["invalid_reasons"] = b.invalid[:20]
    text = table(rounds, b.cases)
    res = {"what": "lifecycle", "command": " ".join(sys.argv),
           "meta": dict(benchmeta.machine(dirs=[a.dir]), started=started,
                        finished=benchmeta.now(),
                        duration_s=round(time.time() - t0),
                        loadavg_start=load0, loadavg_end=benchmeta.loadavg(),
                        busiest_start=busy0, busiest_end=benchmeta.busiest(),
                        note=a.note, qemu=a.qemu,
                        qemu_mtime=time.strftime(
                            "%Y-%m-%d %H:%M:%S UTC",
                            time.gmtime(os.stat(a.qemu).st_mtime)),
                        guest_mem="512M", accel="tcg",
                        ci95=(f"percentile bootstrap of the median, "
                              f"{benchmeta.BOOT_RESAMPLES} resamples, seed "
                              f"{benchmeta.BOOT_SEED}")),
           "table": text, "rounds": rounds, "figures": figs}
    print(text)
    print(f"\nRatios (same run; median of the per-round ratios [95% "
          f"bootstrap interval], min, max; {a.rounds} rounds)")
    for name, _, _ in RATIOS:
        print(f"  {name:<40} {fmt_ratio(figs, name)}")
    key, goal = TARGET
    met = {True: "met", False: "NOT met", None: "not measured"}[
        figs["migrate_fresh_target_met"]]
    print(f"  target: {key} >= {goal}: {met}")
    benchmeta.write_results(res, a.out, a.publish if not b.invalid else None,
                            "lifecycle" + (f"-{a.tag}" if a.tag else ""))
    if b.invalid:
        print(f"bench-lifecycle: INVALID run ({len(b.invalid)} failures); "
              "not published", file=sys.stderr)
    print(benchmeta.strict_dumps(figs))
    return 1 if b.invalid else 0


if __name__ == "__main__":
    sys.exit(main())
