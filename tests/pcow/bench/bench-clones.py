#!/usr/bin/python3
"""Clones of a VM snapshot against raw restores and cold boots (`make
bench-clones`, run by bench-clones.sh; issue 12).

The workload: a TCG guest (tests/pcow/guest) whose script prints a tick
line ("CL-TICK n") every --tick-ms and, at tick --work-at, writes
--work-mib MiB of /dev/urandom to a file in its RAM (the "small
workload"), prints "CL-WORKED n" and ticks on.

Templates (once per run, before the rounds):
  pcow  the guest with its RAM on a pcow image (-machine memory-backend=,
        no disk, no NVDIMM) of each size of --scale-mib; at tick
        --snap-at, HMP savevm gold (the VM state goes into the image);
        quit.  Each clone is `pcow-img clone tmpl-S.pcow@gold cK.pcow`
        started with the template's command line on cK.pcow and
        `-loadvm gold`.
  raw   the same guest on plain RAM of the main size (--ram-mib) and of
        the largest one; at tick --snap-at, migrate "exec:cat > F" (a
        state file with the full RAM); quit.  A raw restore is the same
        command line with -incoming "exec:cat F".

The cases of a round (each starts its VMs at once, then kills them):
  clone<N>, raw<N>, cold<N>   N of --counts VMs: a clone, a raw restore,
        a cold boot of the main size; figures: each VM's start time,
        from its QEMU process start to its first tick line (the guest
        runs the workload again; for a cold boot its first tick), their
        median, and the time until the last is running (from the first
        process start).  A clone or a restore must not boot (no
        PCOW-GUEST-START line) and must tick on from the saved tick.
        Clones also: pcow-img clone's time, and the monitor's counters
        (query-pcow) right after the first tick.
  clone-S, raw-S   one clone of RAM size S (MiB) for the other sizes of
        --scale-mib (the main size is clone1/raw1), one raw restore of
        the largest.
  mem-clone<M>, mem-raw<M>, mem-clone1, mem-raw1   M (--mem-n) clones or
        raw restores, and one alone, each running until its CL-WORKED
        line; then the sum of their PSS (/proc/PID/smaps_rollup; also
        split into Pss_Anon, _File and _Shmem), and
        for clones the monitor's counters (COW units, expansions) and
        each image's active bytes (what the clone wrote).

Each round runs every case once, in an order that rotates from round to
round.  Ratios are medians of per-round ratios with a 95% bootstrap
interval (benchmeta.py).  The memory check: sum of the clones' PSS <=
1.5 x one VM's PSS (mem-clone1) + what they wrote (their active bytes),
per round and on the medians.

The chart: `bench-clones.py --plot RESULTS.json PNG` (--publish makes
docs/figures/bench-clones[-T].png).

Usage: bench-clones.py --qemu Q --pcow-img P --dir DIR --out FILE
                       [--publish DIR] [--tag T] [--rounds N] [--quick]
                       [--counts 1,4,16] [--cold-counts 1,4]
                       [--ram-mib 256]
                       [--scale-mib 256,1024,4096] [--mem-n 8]
                       [--cases C,...] [--kernel vmlinux|bzimage]
                       [--warm-mib 0] [--note TEXT]
  --quick   a smoke run: 1 round, counts 1,2, scale 256,512, mem-n 2
  --cold-counts   the counts with cold boots (default those of --counts
            up to 4: 16 TCG boots at once take minutes on 2 CPUs)
  --rounds  default 3 (8 to 12 minutes on 2 loaded CPUs)
  --warm-mib  a warmed template (default 0, none): the guest puts that
            many MiB of /dev/urandom in a file in its RAM before its
            first tick (before the snapshot), and every VM's workload
            reads it back before its write (at most half the smallest
            --scale-mib)
  --kernel  the guest kernel of every VM: vmlinux (default, as every
            guest test: an ELF booted through PVH, which QEMU copies into
            guest RAM at every machine reset, so also before a clone's
            -loadvm) or bzimage (loaded by the option ROM at boot only)

Prints a table of medians [min, max] and the ratios, then, as the last
line, one JSON object.  Exit 1 if any case failed (the run is invalid and
is not published).

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import argparse
import importlib.util
import os
import re
import signal
import statistics
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

_spec = importlib.util.spec_from_file_location("bench_lifecycle",
                                               HERE / "bench-lifecycle.py")
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)
round_order = lc.round_order
spread = lc.spread
fmt_ratio = lc.fmt_ratio

MiB = 1 << 20
KiB4 = 4096
TICK_RE = re.compile(r"CL-TICK (\d+)")
WORKED_RE = re.compile(r"CL-WORKED (\d+)")
BOOT_MARK = guest.START_MARK          # printed only by a booting guest
TAG = "gold"
PSS_TARGET = 1.5                      # sum of clones <= 1.5 x one VM + writes
SCALING_TARGET = 2.0                  # start(4G) / start(256M) <= 2


def log(msg):
    print(f"[clones {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


# ----------------------------------------------------------------------------
# pure parts (tests/pcow/bench/test-bench.py)

def workload(tick_ms, work_at, work_mib, warm_mib=0):
    """The guest's script: ticks, and the small workload at @work_at.
    With @warm_mib, a warmed guest: before its first tick (so before the
    template's snapshot) it puts @warm_mib MiB of /dev/urandom in a file
    in its RAM, and the workload reads that file back before writing, so
    each clone or restore uses the warmed state (untouched pages would
    not count in any PSS)."""
    warm = (f"dd if=/dev/urandom of=/tmp/warm bs=1M count={warm_mib} "
            f"2>/dev/null\necho \"CL-WARM {warm_mib}\"\n"
            if warm_mib else "")
    # dd copies every page to user space; busybox cat sends the file to
    # /dev/null without reading it (a clone's PSS stayed at the small
    # template's)
    use = ("        dd if=/tmp/warm of=/dev/null bs=1M 2>/dev/null\n"
           if warm_mib else "")
    return (f"{warm}i=0\n"
            f"while :; do\n"
            f"    i=$((i + 1))\n"
            f"    echo \"CL-TICK $i\"\n"
            f"    if [ $i -eq {work_at} ]; then\n"
            f"{use}"
            f"        dd if=/dev/urandom of=/tmp/work bs=1M "
            f"count={work_mib} 2>/dev/null\n"
            f"        echo \"CL-WORKED $i\"\n"
            f"    fi\n"
            f"    usleep {tick_ms * 1000}\n"
            f"done\n")


def ram_args(path):
    """Guest RAM on the pcow image @path (its size is the RAM size)."""
    return ["-object", f"memory-backend-file,id=ram0,mem-path={path},"
            "format=pcow,share=on", "-machine", "memory-backend=ram0"]


def case_names(counts, scale_mib, ram_mib, mem_n, cold_counts=None):
    """Every case of a round, in the base order the rounds rotate: cold
    boots only for @cold_counts (default all of @counts), raw restores
    against RAM size only for the largest."""
    out = []
    for kind in ("clone", "raw", "cold"):
        out += [f"{kind}{n}" for n in counts
                if kind != "cold" or cold_counts is None or
                n in cold_counts]
    for s in scale_mib:
        if s != ram_mib:
            out += [f"clone-{s}"] + ([f"raw-{s}"] if s == max(scale_mib)
                                     else [])
    return out + [f"mem-clone{mem_n}", f"mem-raw{mem_n}", "mem-clone1",
                  "mem-raw1"]


def parse_case(name):
    """(kind, count, ram MiB or None, memory case?) of a case name."""
    m = re.fullmatch(r"(mem-)?(clone|raw|cold)(\d+)", name)
    if m:
        return m.group(2), int(m.group(3)), None, bool(m.group(1))
    m = re.fullmatch(r"(clone|raw)-(\d+)", name)
    if m:
        return m.group(1), 1, int(m.group(2)), False
    raise ValueError(f"unknown case {name!r}")


def first_tick(lines, times):
    """(time, tick, booted) of the first tick line: its host time since
    QEMU's start, its tick, and whether a boot marker came before it."""
    booted = False
    for ln, t in zip(lines, times):
        if BOOT_MARK in ln:
            booted = True
        m = TICK_RE.search(ln)
        if m:
            return t, int(m.group(1)), booted
    return None, None, booted


def start_figures(t0s, firsts):
    """Figures of N VMs started at once: @t0s their process start times
    (monotonic), @firsts their first ticks' times since their start."""
    lasts = [a + b for a, b in zip(t0s, firsts)]
    return {"n": len(firsts), "start_s": round(statistics.median(firsts), 3),
            "start_min_s": round(min(firsts), 3),
            "start_max_s": round(max(firsts), 3),
            "last_s": round(max(lasts) - min(t0s), 3),
            "starts_s": [round(x, 3) for x in firsts]}


def pss_bytes(smaps_rollup, kind=""):
    """Pss (or Pss_Anon, _File, _Shmem for @kind anon, file, shmem) of
    /proc/PID/smaps_rollup's text, in bytes."""
    key = "Pss" + (f"_{kind.capitalize()}" if kind else "")
    m = re.search(rf"^{key}:\s+(\d+) kB", smaps_rollup, re.M)
    if not m:
        raise ValueError(f"no {key} line in smaps_rollup")
    return int(m.group(1)) * 1024


def pcow_stats(query_pcow, backend="ram0"):
    """Copies and writes of one clone from query-pcow's answer."""
    for b in query_pcow:
        if b.get("id") == backend:
            s = b["statistics"]
            return {"cow_units": s["cow-unit-faults"],
                    "cow_clusters": s["cow-cluster-faults"],
                    "expansions": s["expansions"],
                    "hole_reads": s["hole-read-faults"],
                    "active_bytes": b["active-bytes"],
                    "cluster_size": b["cluster-size"]}
    raise ValueError(f"query-pcow has no backend {backend}")


def sum_stats(stats):
    """Totals and per-clone medians of pcow_stats() of several clones."""
    out = {}
    for k in ("cow_units", "cow_clusters", "expansions", "active_bytes"):
        v = [s[k] for s in stats]
        out[k + "_sum"] = sum(v)
        out[k + "_per_clone"] = statistics.median(v) if v else None
    return out


def pss_check(clones_pss, one_pss, written, factor=PSS_TARGET):
    """(met?, bound) of the memory target: the clones' summed PSS at most
    @factor x one VM's PSS plus what they wrote."""
    if None in (clones_pss, one_pss, written):
        return None, None
    bound = factor * one_pss + written
    return clones_pss <= bound, bound


def series(rounds, case, metric):
    out = []
    for r in rounds:
        v = r.get(case, {}).get(metric)
        out.append(v if isinstance(v, (int, float)) and
                   not isinstance(v, bool) else None)
    return out


def ratio_defs(counts, scale_mib, ram_mib, mem_n):
    """(name, (case, metric) numerator, (case, metric) denominator)."""
    out = [("clone_start_raw_over_pcow", ("raw1", "start_s"),
            ("clone1", "start_s")),
           ("clone_start_cold_over_pcow", ("cold1", "start_s"),
            ("clone1", "start_s"))]
    for n in counts:
        if n == 1:
            continue
        for base in ("raw", "cold"):
            out.append((f"clone{n}_start_{base}_over_pcow",
                        (f"{base}{n}", "start_s"), (f"clone{n}", "start_s")))
            out.append((f"clone{n}_last_{base}_over_pcow",
                        (f"{base}{n}", "last_s"), (f"clone{n}", "last_s")))
    big = max(scale_mib)
    if big != ram_mib:
        out.append(("clone_start_ram_scaling", (f"clone-{big}", "start_s"),
                    ("clone1", "start_s")))
        out.append(("raw_start_ram_scaling", (f"raw-{big}", "start_s"),
                    ("raw1", "start_s")))
    out.append((f"clones{mem_n}_pss_raw_over_pcow",
                (f"mem-raw{mem_n}", "pss_sum_bytes"),
                (f"mem-clone{mem_n}", "pss_sum_bytes")))
    return out


def figure_defs(cases):
    """(key, case, metric) of the medians quoted as they are."""
    want = {"start_s", "last_s", "pss_sum_bytes", "pss_anon_sum_bytes",
            "pss_file_sum_bytes", "clone_create_s",
            "cow_units_per_clone", "cow_clusters_per_clone",
            "expansions_per_clone", "active_bytes_per_clone",
            "active_bytes_sum", "cow_units_sum", "expansions_sum"}
    out = []
    for c in cases:
        kind, n, size, mem = parse_case(c)
        for m in sorted(want):
            if m.startswith("pss_") and not mem:
                continue
            if m not in ("start_s", "last_s") and \
                    not m.startswith("pss_") and kind != "clone":
                continue
            out.append((f"{c.replace('-', '_')}_{m}", c, m))
    return out


def summarize(rounds, counts, scale_mib, ram_mib, mem_n, cases):
    """The final JSON's figures: ratios (median of per-round ratios, with
    _ci95, _min, _max), medians of the rounds, and the two targets."""
    out = {}
    for name, num, den in ratio_defs(counts, scale_mib, ram_mib, mem_n):
        s = spread(benchmeta.paired_ratios(series(rounds, *num),
                                           series(rounds, *den)))
        out[name] = s["median"]
        out[name + "_ci95"] = s["ci95"]
        out[name + "_min"], out[name + "_max"] = s["min"], s["max"]
    for key, c, m in figure_defs(cases):
        s = spread(series(rounds, c, m), 3)
        if s["n"]:
            out[key] = s["median"]
            out[key + "_min"], out[key + "_max"] = s["min"], s["max"]
    sc = out.get("clone_start_ram_scaling")
    out["clone_start_ram_scaling_target"] = SCALING_TARGET
    out["clone_start_ram_scaling_target_met"] = (
        None if sc is None else sc <= SCALING_TARGET)
    # the memory check, round by round and on the medians
    cm, one = f"mem-clone{mem_n}", "mem-clone1"
    per = []
    for r in rounds:
        ok, _ = pss_check(r.get(cm, {}).get("pss_sum_bytes"),
                          r.get(one, {}).get("pss_sum_bytes"),
                          r.get(cm, {}).get("active_bytes_sum"))
        per.append(ok)
    med = (lambda m, c=cm: spread(series(rounds, c, m), 0)["median"])
    clones, single, wrote = (med("pss_sum_bytes"),
                             med("pss_sum_bytes", one),
                             med("active_bytes_sum"))
    ok, bound = pss_check(clones, single, wrote)
    out["pss_check"] = {
        "rule": f"sum PSS of {mem_n} clones <= {PSS_TARGET} x PSS of one "
                "clone alone + the clones' active bytes",
        f"clones{mem_n}_pss_bytes": clones, "one_vm_pss_bytes": single,
        "written_bytes": wrote, "bound_bytes": bound, "met": ok,
        "met_per_round": per}
    # the same rule on mapped files only (the images' pages and QEMU's
    # binary), leaving out each QEMU's own anonymous memory
    fc, fo = med("pss_file_sum_bytes"), med("pss_file_sum_bytes", one)
    ok, bound = pss_check(fc, fo, wrote)
    out["pss_check_file"] = {
        "rule": f"sum Pss_File of {mem_n} clones <= {PSS_TARGET} x "
                "Pss_File of one clone alone + the clones' active bytes",
        f"clones{mem_n}_bytes": fc, "one_vm_bytes": fo,
        "written_bytes": wrote, "bound_bytes": bound, "met": ok}
    return out


def table(rounds, cases):
    """Text table: every measured (case, figure), median [min, max]."""
    lines = [f"{'case':<14} {'figure':<24} {'median':>14} "
             f"{'[min, max]':>28}"]
    metrics = ["start_s", "last_s", "clone_create_s", "pss_sum_bytes",
               "pss_anon_sum_bytes", "pss_file_sum_bytes",
               "pss_shmem_sum_bytes",
               "cow_units_per_clone", "cow_clusters_per_clone",
               "expansions_per_clone", "active_bytes_per_clone",
               "first_tick"]
    for c in cases:
        for m in metrics:
            s = spread(series(rounds, c, m), 3)
            if s["n"]:
                mm = f"[{s['min']}, {s['max']}]"
                lines.append(f"{c:<14} {m:<24} {s['median']:>14} {mm:>28}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# QEMU and the guest

class Bench:
    def __init__(self, a):
        self.a = a
        self.dir = Path(a.dir)
        self.script = workload(a.tick_ms, a.work_at, a.work_mib,
                               a.warm_mib)
        self.cases = a.cases
        self.invalid = []
        self.rounds = []
        self.templates = {}

    def kw(self, mib):
        kw = dict(qemu=self.a.qemu, mem=f"{mib}M",
                  maxmem=f"{max(mib * 2, 1024)}M", timeout=3600,
                  qmp=True, append="no_timer_check")
        if self.a.kernel == "bzimage":
            kw["kernel"] = str(guest.build_initramfs() / "vmlinuz")
        return kw

    def img(self, *args):
        subprocess.run([self.a.pcow_img] + [str(x) for x in args],
                       check=True, stdout=subprocess.DEVNULL)

    def info(self, path):
        r = subprocess.run([self.a.pcow_img, "info", "--output=json", "-U",
                            str(path)], check=True, capture_output=True,
                           text=True)
        return benchmeta.strict_loads(r.stdout)

    # -- templates --
    def template_pcow(self, mib):
        img = self.dir / f"tmpl-{mib}.pcow"
        img.unlink(missing_ok=True)
        self.img("create", "-q", img, f"{mib}M")
        g = guest.Guest(self.script, ram_args(img), log=self.dir /
                        f"tmpl-{mib}.log", **self.kw(mib)).start()
        try:
            ln = g.wait_for_line(rf"CL-TICK {self.a.snap_at}$", 600)
            m = g.qmp(timeout=60)
            m.sock.settimeout(600)
            t0 = time.monotonic()
            out = m.hmp(f"savevm {TAG}")
            dt = time.monotonic() - t0
            if out.strip():
                raise guest.GuestError(f"template {mib}: savevm: {out}")
            m.execute("quit")
            g.proc.wait(timeout=120)
        finally:
            g.kill()
            g.wait(timeout=60)
        snaps = {s["name"]: s for s in self.info(img).get("snapshots", [])}
        vm = snaps.get(TAG, {}).get("vm-state-size", 0)
        if not vm:
            raise guest.GuestError(f"template {mib}: no VM state in {TAG}")
        log(f"template pcow {mib} MiB: savevm at {ln.strip()} in "
            f"{dt:.2f} s, VM state {vm} bytes")
        return {"image": img, "savevm_s": round(dt, 3),
                "vmstate_bytes": vm, "snap_tick": self.a.snap_at,
                "image_bytes": self.info(img).get("actual-size")}

    def template_raw(self, mib):
        state = self.dir / f"tmpl-{mib}.state"
        state.unlink(missing_ok=True)
        g = guest.Guest(self.script, [], log=self.dir / f"raw-{mib}.log",
                        **self.kw(mib)).start()
        try:
            g.wait_for_line(rf"CL-TICK {self.a.snap_at}$", 600)
            m = g.qmp(timeout=60)
            m.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
            t0 = time.monotonic()
            m.execute("migrate", uri=f"exec:cat > {state}")
            info = lc.wait_done(m, 600)
            if info["status"] != "completed":
                raise guest.GuestError(f"raw template {mib}: "
                                       f"{info['status']}")
            dt = time.monotonic() - t0
            m.execute("quit")
            g.proc.wait(timeout=120)
        finally:
            g.kill()
            g.wait(timeout=60)
        size = state.stat().st_size
        log(f"template raw {mib} MiB: state file {size} bytes in {dt:.2f} s")
        return {"state": state, "save_s": round(dt, 3), "file_bytes": size}

    def prepare(self):
        a = self.a
        sizes = sorted(set(a.scale_mib) | {a.ram_mib})
        for s in sizes:
            self.templates[("clone", s)] = self.template_pcow(s)
        for s in sorted({a.ram_mib, max(sizes)}):
            self.templates[("raw", s)] = self.template_raw(s)

    # -- starting VMs --
    def vm_args(self, kind, mib, i):
        """(QEMU arguments, clone image or None) of VM @i of a case."""
        if kind == "cold":
            return [], None
        if kind == "raw":
            st = self.templates[("raw", mib)]["state"]
            return ["-incoming", f"exec:cat {st}"], None
        tmpl = self.templates[("clone", mib)]["image"]
        c = self.dir / f"c{i}.pcow"
        c.unlink(missing_ok=True)
        self.img("clone", "-q", f"{tmpl}@{TAG}", c)
        return ram_args(c) + ["-loadvm", TAG], c

    def start(self, kind, n, mib):
        """Start @n VMs at once; (guests, figures)."""
        prep = []
        t0 = time.monotonic()
        for i in range(n):
            prep.append(self.vm_args(kind, mib, i))
        create = time.monotonic() - t0
        gs = [guest.Guest(self.script, args, **self.kw(mib))
              for args, _ in prep]
        try:
            for g in gs:
                g.start()
            for g in gs:
                g.wait_for_line(TICK_RE.pattern, 900)
        except guest.GuestError as e:
            self.stop(gs)
            why = [g.wait().qemu_stderr.strip() for g in gs if g.proc]
            raise guest.GuestError(
                f"{kind}: {e}: " +
                next((w for w in why if w), "")[-300:]) from e
        except BaseException:
            self.stop(gs)
            raise
        firsts, ticks = [], []
        for i, g in enumerate(gs):
            with g._cond:
                t, tick, booted = first_tick(list(g.lines), list(g.times))
            if kind != "cold" and (booted or tick < self.a.snap_at):
                self.stop(gs)
                raise guest.GuestError(
                    f"{kind} VM {i} booted (tick {tick}, boot marker "
                    f"{booted}) instead of resuming from tick "
                    f"{self.a.snap_at}")
            firsts.append(t)
            ticks.append(tick)
        fig = start_figures([g._t0 for g in gs], firsts)
        fig["first_tick"] = min(ticks)
        if kind == "clone":
            fig["clone_create_s"] = round(create, 3)
        return gs, fig

    def stop(self, gs):
        for g in gs:
            if g.proc:
                g.kill(signal.SIGKILL)
        for g in gs:
            if g.proc:
                g.wait(timeout=60)

    def stats(self, gs):
        return [pcow_stats(g.qmp(timeout=60).execute("query-pcow"))
                for g in gs]

    def run_case(self, name):
        kind, n, size, mem = parse_case(name)
        mib = size or self.a.ram_mib
        gs, fig = self.start(kind, n, mib)
        try:
            if mem:
                for g in gs:
                    g.wait_for_line(WORKED_RE.pattern, 900)
                time.sleep(1)
                texts = [Path(f"/proc/{g.proc.pid}/smaps_rollup")
                         .read_text() for g in gs]
                fig["pss_bytes"] = [pss_bytes(t) for t in texts]
                fig["pss_sum_bytes"] = sum(fig["pss_bytes"])
                # where it is: QEMU's own (anon) against mapped files
                # (the pcow images, QEMU's binary and libraries)
                for k in ("anon", "file", "shmem"):
                    fig[f"pss_{k}_sum_bytes"] = sum(pss_bytes(t, k)
                                                    for t in texts)
            if kind == "clone":
                st = self.stats(gs)
                fig.update(sum_stats(st))
                fig["clone_stats"] = st
        finally:
            self.stop(gs)
            for i in range(n):
                (self.dir / f"c{i}.pcow").unlink(missing_ok=True)
        return fig

    def run(self):
        self.prepare()
        for rnd in range(self.a.rounds):
            res = {}
            for c in round_order(self.cases, rnd):
                t0 = time.monotonic()
                try:
                    res[c] = self.run_case(c)
                    f = res[c]
                    log(f"round {rnd + 1}: {c} in "
                        f"{time.monotonic() - t0:.0f} s: start "
                        f"{f['start_s']} s, last {f['last_s']} s" +
                        (f", PSS {f['pss_sum_bytes'] / MiB:.1f} MiB"
                         if "pss_sum_bytes" in f else "") +
                        (f", COW units {f['cow_units_sum']}, expansions "
                         f"{f['expansions_sum']}" if "cow_units_sum" in f
                         else ""))
                except (guest.GuestError, guest.QMPError, EOFError,
                        OSError, ValueError,
                        subprocess.CalledProcessError) as e:
                    why = f"round {rnd + 1}: {c}: {e}"
                    log(why)
                    self.invalid.append(why)
                    res[c] = {"error": str(e)}
            self.rounds.append(res)
        return self.rounds


# ----------------------------------------------------------------------------
# the chart (docs/figures/bench-clones.png)

def plot(res, png):
    """Start times (median per VM, whiskers min to max, a dot for the
    last VM running) of clones, raw restores and cold boots by count and
    RAM size, and the summed PSS beside the memory target."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench-clones: python3-matplotlib missing: no chart",
              file=sys.stderr)
        return
    rounds, f = res["rounds"], res["figures"]
    groups = [(f"{n} at once", n, None) for n in f["counts"]]
    groups += [(f"1, {s} MiB RAM", 1, s) for s in f["scale_mib"]
               if s != f["ram_mib"]]
    colors = {"clone": "#2ca02c", "raw": "#1f77b4", "cold": "#7f7f7f"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2),
                                 gridspec_kw={"width_ratios": [3, 1.3]})
    w = 0.27
    for k, kind in enumerate(("clone", "raw", "cold")):
        xs, med, lo, hi, last = [], [], [], [], []
        for i, (_, n, size) in enumerate(groups):
            c = f"{kind}-{size}" if size else f"{kind}{n}"
            s = spread(series(rounds, c, "start_s"))
            if not s["n"]:
                continue
            xs.append(i + (k - 1) * w)
            med.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
            last.append(spread(series(rounds, c, "last_s"))["median"])
        if not xs:
            continue
        ax.bar(xs, med, w, yerr=[lo, hi], capsize=3, color=colors[kind],
               label={"clone": "clone (-loadvm)", "raw": "raw restore "
                      "(-incoming)", "cold": "cold boot"}[kind])
        ax.plot(xs, last, "k.", ms=5)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups])
    ax.set_yscale("log")
    ax.set_ylabel("process start to workload running, s")
    ax.set_title("start time per VM (dot: the last of them running)")
    ax.legend(fontsize=8)
    pc, m = f["pss_check"], f["mem_n"]
    names = [f"{m} clones", f"{m} raw", "1 clone", "1 raw"]
    cases = [f"mem-clone{m}", f"mem-raw{m}", "mem-clone1", "mem-raw1"]
    vals = [(spread(series(rounds, c, "pss_sum_bytes"))["median"] or 0) /
            MiB for c in cases]
    bx.bar(names, vals, color=["#2ca02c", "#1f77b4", "#98df8a", "#aec7e8"])
    if pc["bound_bytes"]:
        bx.axhline(pc["bound_bytes"] / MiB, color="r", ls="--", lw=1,
                   label="1.5 x one clone + written")
        bx.legend(fontsize=8)
    bx.set_ylabel("summed PSS, MiB")
    bx.set_title("memory after the workload")
    bx.tick_params(axis="x", labelsize=8)
    meta = res["meta"]
    fig.suptitle(f"bench-clones, {meta['date'][:10]}, {f['rounds']} rounds,"
                 f" TCG, {meta['nproc']} CPUs, git "
                 f"{meta['git']['commit'][:7]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    print(f"bench-clones: chart {png}", file=sys.stderr)


def int_list(s):
    return [int(x) for x in s.split(",") if x]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--pcow-img", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--publish")
    ap.add_argument("--tag")
    ap.add_argument("--note")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--counts", type=int_list)
    ap.add_argument("--ram-mib", type=int, default=256)
    ap.add_argument("--scale-mib", type=int_list)
    ap.add_argument("--mem-n", type=int)
    ap.add_argument("--cold-counts", type=int_list)
    ap.add_argument("--tick-ms", type=int, default=200)
    ap.add_argument("--snap-at", type=int, default=5)
    ap.add_argument("--work-at", type=int, default=40)
    ap.add_argument("--work-mib", type=int, default=4)
    ap.add_argument("--warm-mib", type=int, default=0)
    ap.add_argument("--cases")
    ap.add_argument("--kernel", choices=["vmlinux", "bzimage"],
                    default="vmlinux")
    a = ap.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds or (1 if q else 3)
    a.counts = a.counts or ([1, 2] if q else [1, 4, 16])
    a.scale_mib = a.scale_mib or ([256, 512] if q else [256, 1024, 4096])
    a.mem_n = a.mem_n or (2 if q else 8)
    a.cold_counts = a.cold_counts or [n for n in a.counts if n <= 4]
    all_cases = case_names(a.counts, a.scale_mib, a.ram_mib, a.mem_n,
                           a.cold_counts)
    a.cases = a.cases.split(",") if a.cases else all_cases
    bad = [c for c in a.cases if c not in all_cases]
    if bad or a.rounds < 1 or 1 not in a.counts or \
            a.ram_mib not in a.scale_mib or a.work_at <= a.snap_at + 5 or \
            not 0 <= a.warm_mib <= min(a.scale_mib) // 2:
        ap.error(f"unknown case {bad}" if bad else
                 "--rounds >= 1, --counts with 1, --ram-mib in --scale-mib,"
                 " --work-at > --snap-at + 5, 0 <= --warm-mib <= half the "
                 "smallest --scale-mib")
    return a


def main():
    if sys.argv[1:2] == ["--plot"]:
        if len(sys.argv) != 4:
            sys.exit("usage: bench-clones.py --plot RESULTS.json PNG")
        plot(benchmeta.strict_loads(Path(sys.argv[2]).read_text()),
             sys.argv[3])
        return 0
    a = parse_args()
    load0, started, t0 = benchmeta.loadavg(), benchmeta.now(), time.time()
    busy0 = benchmeta.busiest()
    b = Bench(a)
    log(f"cases {a.cases}; {a.rounds} rounds")
    try:
        rounds = b.run()
    except (guest.GuestError, guest.QMPError, OSError,
            subprocess.CalledProcessError) as e:
        sys.exit(f"bench-clones: the templates could not be made: {e}")
    figs = summarize(rounds, a.counts, a.scale_mib, a.ram_mib, a.mem_n,
                     a.cases)
    figs.update(rounds=a.rounds, cases=a.cases, counts=a.counts,
                kernel=a.kernel,
                ram_mib=a.ram_mib, scale_mib=a.scale_mib, mem_n=a.mem_n,
                tick_ms=a.tick_ms, work_mib=a.work_mib,
                warm_mib=a.warm_mib, valid=not b.invalid,
                templates={f"{k}-{s}": {x: (str(y) if isinstance(y, Path)
                                            else y) for x, y in v.items()}
                           for (k, s), v in b.templates.items()})
    if b.invalid:
        figs["invalid_reasons"] = b.invalid[:20]
    text = table(rounds, a.cases)
    res = {"what": "clones", "command": " ".join(sys.argv),
           "meta": dict(benchmeta.machine(dirs=[a.dir]), started=started,
                        finished=benchmeta.now(),
                        duration_s=round(time.time() - t0),
                        loadavg_start=load0, loadavg_end=benchmeta.loadavg(),
                        busiest_start=busy0, busiest_end=benchmeta.busiest(),
                        note=a.note, qemu=a.qemu,
                        qemu_mtime=time.strftime(
                            "%Y-%m-%d %H:%M:%S UTC",
                            time.gmtime(os.stat(a.qemu).st_mtime)),
                        accel="tcg",
                        ci95=(f"percentile bootstrap of the median, "
                              f"{benchmeta.BOOT_RESAMPLES} resamples, seed "
                              f"{benchmeta.BOOT_SEED}")),
           "table": text, "rounds": rounds, "figures": figs}
    print(text)
    print(f"\nRatios (same run; median of the per-round ratios [95% "
          f"bootstrap interval], min, max; {a.rounds} rounds)")
    for name, _, _ in ratio_defs(a.counts, a.scale_mib, a.ram_mib, a.mem_n):
        print(f"  {name:<40} {fmt_ratio(figs, name)}")
    met = {True: "met", False: "NOT met", None: "not measured"}
    print(f"  target: clone_start_ram_scaling <= {SCALING_TARGET}: "
          f"{met[figs['clone_start_ram_scaling_target_met']]}")
    pc = figs["pss_check"]
    print(f"  memory check: {pc['rule']}: {met[pc['met']]} "
          f"({pc[f'clones{a.mem_n}_pss_bytes']} <= {pc['bound_bytes']}; "
          f"per round {pc['met_per_round']})")
    pf = figs["pss_check_file"]
    print(f"  (mapped files only: {pf['rule']}: {met[pf['met']]}, "
          f"{pf[f'clones{a.mem_n}_bytes']} <= {pf['bound_bytes']})")
    benchmeta.write_results(res, a.out, a.publish if not b.invalid else None,
                            "clones" + (f"-{a.tag}" if a.tag else ""))
    if a.publish and not b.invalid:
        plot(res, Path(a.publish) /
             ("bench-clones" + (f"-{a.tag}" if a.tag else "") + ".png"))
    if b.invalid:
        print(f"bench-clones: INVALID run ({len(b.invalid)} failures); "
              "not published", file=sys.stderr)
    print(benchmeta.strict_dumps(figs))
    return 1 if b.invalid else 0


if __name__ == "__main__":
    sys.exit(main())
