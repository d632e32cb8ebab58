#!/usr/bin/python3
"""Tests of the benchmark harness (meson: bench-harness in suite unit,
bench-monitor-json in suite monitor).

  test-bench.py                    the harness: guest-side checks, results
  test-bench.py BENCH-MONITOR-BIN  also bench-monitor's JSON output

A configuration whose setup fails (ndctl, mkfs, mount, no DAX, wrong
device) must stop the guest before fio runs, and its results must never
reach a ratio: the run is marked invalid.  bench-monitor's last line must
be strict JSON (null, never nan).  bench-lifecycle's pure parts: its
workload layout, its QEMU arguments with and without migrate-data, the
figures it takes from query-migrate and query-block, its ratios and its
JSON.  bench-clones' pure parts: its guest loop, its cases, the start
times, PSS and query-pcow figures it takes, its ratios, memory check and
JSON.  No guest is booted: the guest's device
script runs under /bin/sh with stub commands and a fake sysfs and mount
table.

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
_spec = importlib.util.spec_from_file_location("bench_guest",
                                               HERE / "bench-guest.py")
bg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bg)
_spec = importlib.util.spec_from_file_location("bench_lifecycle",
                                               HERE / "bench-lifecycle.py")
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)
_spec = importlib.util.spec_from_file_location("bench_clones",
                                               HERE / "bench-clones.py")
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)
import benchmeta  # noqa: E402

BENCH_MONITOR = None

# Stubs for the guest's commands.  mount fails when /stubs/mount-fails
# exists; nothing touches the host.
STUBS = {
    "ndctl": 'echo \'{"dev":"namespace1.0","mode":"fsdax",'
             '"blockdev":"pmem1"}\'',
    "mkfs.ext4": 'exit 0',
    "findfs": 'echo /dev/pmem1',
    "insmod": 'exit 0',
    "usleep": 'exit 0',
    "mkdir": 'exit 0',
    "mount": '[ -e "$(dirname "$0")/mount-fails" ] && exit 32; exit 0',
}

PCOW_OK = "/dev/pmem1 /mnt/pcow ext4 rw,relatime,dax=always 0 0\n"
PCOW_NODAX = "/dev/pmem1 /mnt/pcow ext4 rw,relatime 0 0\n"


class GuestScript(unittest.TestCase):
    """sh_devices() for pcow-dax, run under /bin/sh against stubs."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        t = Path(self.tmp.name)
        self.stubs = t / "stubs"
        self.stubs.mkdir()
        for name, body in STUBS.items():
            f = self.stubs / name
            f.write_text(f"#!/bin/sh\n{body}\n")
            f.chmod(0o755)
        # fake sysfs: pcow-dax's region (by size) holds pmem1
        self.sys = t / "sys"
        reg = self.sys / "bus/nd/devices/region1"
        reg.mkdir(parents=True)
        (reg / "size").write_text(f"{bg.SIZES['pcow-dax']}\n")
        blk = self.sys / "devices/ndbus0/region1/pfn1.0/block/pmem1"
        blk.mkdir(parents=True)
        (self.sys / "block").mkdir()
        (self.sys / "block/pmem1").symlink_to(blk)
        self.mounts = t / "mounts"

    def tearDown(self):
        self.tmp.cleanup()

    def run_script(self, mounts, fresh=True, mount_fails=False,
                   region_of_pmem1="region1"):
        if mount_fails:
            (self.stubs / "mount-fails").write_text("")
        if region_of_pmem1 != "region1":
            link = self.sys / "block/pmem1"
            link.unlink()
            other = self.sys / f"devices/ndbus0/{region_of_pmem1}/block/pmem1"
            other.mkdir(parents=True)
            link.symlink_to(other)
        self.mounts.write_text(mounts)
        script = (bg.sh_devices(["pcow-dax"], fresh=fresh) +
                  'echo "FIO-WOULD-RUN-HERE"\n')
        env = dict(os.environ, PATH=f"{self.stubs}:/usr/bin:/bin",
                   BENCH_SYSFS=str(self.sys), BENCH_MOUNTS=str(self.mounts))
        r = subprocess.run(["/bin/sh", "-c", script], env=env,
                           capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout.splitlines()

    def assert_stopped(self, rc, lines, why):
        self.assertNotIn("FIO-WOULD-RUN-HERE", lines,
                         f"fio would have run after: {why}")
        self.assertNotEqual(rc, 0)
        self.assertTrue(any("BENCH-FAIL" in ln and why in ln for ln in lines),
                        lines)
        fio, redis, bad, reasons = bg.boot_results(lines, rc, ["pcow-dax"])
        self.assertEqual(bad, ["pcow-dax"])
        self.assertTrue(reasons)

    def test_checked_setup_runs(self):
        for fresh in (True, False):
            rc, lines = self.run_script(PCOW_OK, fresh=fresh)
            self.assertEqual(rc, 0, lines)
            self.assertIn("FIO-WOULD-RUN-HERE", lines)
            self.assertTrue(any(ln.startswith("BENCH-OK pcow-dax /dev/pmem1")
                                for ln in lines), lines)

    def test_failed_mount_stops_before_fio(self):
        # the mount point stays an initramfs directory: fio must not run
        rc, lines = self.run_script("", mount_fails=True)
        self.assert_stopped(rc, lines, "mount")

    def test_mount_without_dax_stops_before_fio(self):
        for fresh in (True, False):
            rc, lines = self.run_script(PCOW_NODAX, fresh=fresh)
            self.assert_stopped(rc, lines, "not-dax")

    def test_wrong_device_stops_before_fio(self):
        rc, lines = self.run_script(PCOW_OK, region_of_pmem1="region2")
        self.assert_stopped(rc, lines, "wrong-device")


def fio_job(name, iops):
    side = {"io_bytes": int(iops * 4096), "iops": iops,
            "bw_bytes": iops * 4096, "total_ios": int(iops), "runtime": 1000,
            "lat_ns": {"mean": 1e9 / iops},
            "clat_ns": {"percentile": {"50.000000": 5000,
                                       "99.000000": 50000}}}
    empty = dict(side, io_bytes=0, iops=0, bw_bytes=0)
    return {"jobname": name, "read": side, "write": empty,
            "minf": int(iops // 3), "majf": 0, "ctx": 5, "usr_cpu": 40.0,
            "sys_cpu": 60.0}


def console(checks, iops, extra=(), rounds=1):
    """Console lines of a main boot: checks, then one fio run.  iops:
    {cfg: IOPS} or {cfg: [IOPS of round 0, 1, ...]}."""
    jobs = []
    for rnd in range(rounds):
        for cfg, v in iops.items():
            v = v[rnd] if isinstance(v, list) else v
            jobs.append(fio_job(f"{cfg}@randread-4k-1#{rnd}", v))
    out = list(checks) + ["BENCH-BEGIN x 1.0 1.0"]
    out += ["@J " + ln for ln in json.dumps({"jobs": jobs}).splitlines()]
    return out + ["BENCH-END x 2.0 2.0"] + list(extra)


OK = ["BENCH-OK raw-dax /dev/pmem0 on /mnt/raw ext4 dax",
      "BENCH-OK pcow-dax /dev/pmem1 on /mnt/pcow ext4 dax",
      "BENCH-OK qcow2-blk /dev/vdb block device"]
IOPS = {"raw-dax": 1000.0, "pcow-dax": 1000.0, "qcow2-blk": 100.0}
CFGS = ["raw-dax", "pcow-dax", "qcow2-blk"]


def results(fio, invalid=(), redis=None, rounds=1):
    """A results.json as Runner.run() builds it, from one boot."""
    R = {"meta": {"accel": "tcg", "quick": True,
                  "params": {"vcpus": 2, "rounds": rounds}},
         "fs": {"tmpfs": {c: {"fio": {}, "redis": {}} for c in CFGS}},
         "invalid": list(invalid)}
    bg.merge_fio(R["fs"]["tmpfs"], fio)
    bg.merge_redis(R["fs"]["tmpfs"], redis or {})
    return R


class Results(unittest.TestCase):
    """boot_results() and report(): what may be quoted."""

    def test_good_boot_gives_valid_ratios(self):
        fio, redis, bad, reasons = bg.boot_results(console(OK, IOPS), 0, CFGS)
        self.assertEqual((bad, reasons), ([], []))
        text, rt = bg.report(results(fio, reasons))
        self.assertTrue(rt["valid"])
        self.assertEqual(rt["pcowdax_over_rawdax_4k_randread"], 1.0)
        self.assertEqual(rt["pcowdax_over_qcow2blk_4k_randread"], 10.0)

    def test_failed_mount_invalidates_its_ratios(self):
        # A guest that carried on after a failed mount: fio measured the
        # initramfs under /mnt/pcow (fast).  Those figures must not count.
        lines = console([OK[0], "BENCH-FAIL mount pcow-dax", OK[2]],
                        dict(IOPS, **{"pcow-dax": 90000.0}))
        fio, redis, bad, reasons = bg.boot_results(lines, 0, CFGS)
        self.assertEqual(bad, ["pcow-dax"])
        self.assertFalse([k for k in fio if k.startswith("pcow-dax@")])
        text, rt = bg.report(results(fio, reasons))
        self.assertFalse(rt["valid"])
        self.assertIsNone(rt["pcowdax_over_rawdax_4k_randread"])
        self.assertIsNone(rt["pcowdax_over_qcow2blk_4k_randread"])
        self.assertIn("INVALID", text)
        json.loads(benchmeta.strict_dumps(rt))

    def test_unverified_device_invalidates(self):
        fio, redis, bad, reasons = bg.boot_results(
            console(OK[:1] + OK[2:], IOPS), 0, CFGS)
        self.assertEqual(bad, ["pcow-dax"])
        self.assertIn("pcow-dax: the guest did not verify its device",
                      reasons)

    def test_failed_script_invalidates_everything(self):
        fio, redis, bad, reasons = bg.boot_results(console(OK, IOPS), 3, CFGS)
        self.assertEqual(bad, sorted(CFGS))
        self.assertEqual(fio, {})
        self.assertIn("guest script exit status 3", reasons)

    def test_failed_redis_drops_only_redis(self):
        extra = ["BENCH-REDIS raw-dax 700", "BENCH-REDIS qcow2-blk 0",
                 "BENCH-FAIL redis qcow2-blk: no ext4 on the Redis disk"]
        fio, redis, bad, reasons = bg.boot_results(console(OK, IOPS, extra),
                                                   0, CFGS)
        self.assertEqual(bad, [])
        self.assertEqual(redis, {"raw-dax": "700"})
        self.assertEqual(len(fio), 3)
        self.assertTrue(reasons)


class Intervals(unittest.TestCase):
    """The statistics of the rounds: medians, per-round ratios, 95%
    bootstrap intervals, and that every ratio in the JSON has one."""

    def test_median(self):
        self.assertEqual(benchmeta.median([3, 1, 2]), 2)
        self.assertEqual(benchmeta.median([4, 1, 3, 2]), 2.5)
        self.assertIsNone(benchmeta.median([]))

    def test_identical_samples_give_a_point(self):
        self.assertEqual(benchmeta.summary([0.97] * 10), (0.97, [0.97, 0.97]))

    def test_interval_holds_the_median_and_is_reproducible(self):
        xs = [1.0, 0.8, 1.3, 0.95, 1.1, 0.7, 1.05, 0.99, 1.2, 0.9]
        m, ci = benchmeta.summary(xs)
        self.assertEqual(m, 0.995)
        self.assertLess(ci[0], m)
        self.assertGreater(ci[1], m)
        # the median of 10 samples lies between the 2nd and 9th smallest
        self.assertGreaterEqual(ci[0], 0.8)
        self.assertLessEqual(ci[1], 1.2)
        self.assertEqual(benchmeta.summary(xs), (m, ci))

    def test_shifted_sample_excludes_parity(self):
        xs = [0.90, 0.93, 0.88, 0.91, 0.94, 0.89, 0.92, 0.90, 0.93, 0.91]
        m, ci = benchmeta.summary(xs)
        self.assertLess(ci[1], 0.98)
        self.assertGreater(ci[0], 0.85)
        # a sample around 1 keeps parity inside
        m, ci = benchmeta.summary([x + 0.09 for x in xs])
        self.assertLessEqual(ci[0], 1.0)
        self.assertGreaterEqual(ci[1], 1.0)

    def test_one_round_has_no_interval(self):
        self.assertEqual(benchmeta.summary([1.5]), (1.5, None))
        self.assertEqual(benchmeta.summary([]), (None, None))

    def test_ratios_pair_rounds(self):
        # round 1 of the denominator is missing: its numerator is unpaired
        self.assertEqual(benchmeta.paired_ratios([2, 4, 6], [1, None, 3]),
                         [2.0, 2.0])
        self.assertEqual(benchmeta.paired_ratios([1, 0], [0, 1]), [])

    def test_every_ratio_has_its_interval(self):
        n = 10
        raw = [1000.0 + 40 * (r % 3) for r in range(n)]
        iops = {"raw-dax": raw,
                "pcow-dax": [0.9 * v for v in raw],  # 10% slower each round
                "qcow2-blk": [100.0 + r for r in range(n)]}
        fio, redis, bad, reasons = bg.boot_results(
            console(OK, iops, rounds=n), 0, CFGS)
        self.assertEqual((bad, reasons), ([], []))
        red = {f"{c}#{r}": str(v + r) for c, v in
               (("raw-dax", 700), ("pcow-dax", 350), ("qcow2-blk", 300))
               for r in range(n)}
        R = results(fio, reasons, red, rounds=n)
        j = R["fs"]["tmpfs"]["raw-dax"]["fio"]["randread-4k-1"]
        self.assertEqual(len(j["rounds"]), n)
        self.assertEqual(j["iops"], benchmeta.median(raw))
        self.assertEqual(len(j["iops_ci95"]), 2)
        # the guest's page faults are kept per round, as the figures are
        self.assertEqual([x["minf"] for x in j["rounds"]],
                         [int(v // 3) for v in raw])
        self.assertEqual(j["minf"], benchmeta.median([int(v // 3) for v in raw]))
        text, rt = bg.report(R)
        rt = benchmeta.strict_loads(benchmeta.strict_dumps(rt))
        self.assertEqual(rt["pcowdax_over_rawdax_4k_randread"], 0.9)
        self.assertEqual(rt["pcowdax_over_rawdax_4k_randread_ci95"],
                         [0.9, 0.9])
        lo, hi = rt["pcowdax_over_qcow2blk_4k_randread_ci95"]
        self.assertLess(lo, rt["pcowdax_over_qcow2blk_4k_randread"])
        self.assertGreater(hi, rt["pcowdax_over_qcow2blk_4k_randread"])
        self.assertEqual(rt["redis_pcowdax_over_rawdax"],
                         round(benchmeta.median(
                             [(350 + r) / (700 + r) for r in range(n)]), 3))
        self.assertLess(rt["redis_pcowdax_over_rawdax_ci95"][1], 0.98)
        meta = {"fs", "rounds", "ci95", "quick", "accel", "valid"}
        ratios = [k for k in rt if k not in meta and not k.endswith("_ci95")]
        self.assertGreater(len(ratios), 20)
        for k in ratios:
            self.assertIn(k + "_ci95", rt, k)
            if rt[k] is not None:
                self.assertIn(f"{k:<44} {rt[k]:.3f} [", text)
        self.assertIn("0.900 [0.900, 0.900]", text)


class Paired(unittest.TestCase):
    """raw-dax and pcow-dax, whose parity the benchmark is asked about, run
    as A B B A in every round of a steady-state job; a round's figure is
    the mean of the two runs."""
    cfgs = ["raw-dax", "pcow-dax", "pcow-blk", "qcow2-blk"]
    p = {"vcpus": 2, "runtime": 1, "ramp": 0.5, "rounds": 4,
         "data": 256 << 20, "ft": 256 << 20, "cow": 128 << 20}

    def round_of(self, jobs, name, rnd):
        return [k.partition("@")[0] + "#" + k.partition("#")[2]
                for k, _ in jobs
                if k.partition("@")[2].partition("#")[0] == name and
                k.partition("#")[2].partition(".")[0] == str(rnd)]

    def test_steady_jobs_run_abba(self):
        jobs = bg.main_jobs(self.p, self.cfgs)
        for name in ("randread-4k-1", "randwrite-4k-1", "read-1m-N",
                     "write-1m-N", "randread-4k-N", "randwrite-4k-N"):
            firsts = set()
            for rnd in range(self.p["rounds"]):
                seq = self.round_of(jobs, name, rnd)
                cfgs = [x.partition("#")[0] for x in seq]
                i = next(k for k, c in enumerate(cfgs) if c in bg.PAIR)
                a, b = cfgs[i], cfgs[i + 1]
                self.assertEqual({a, b}, set(bg.PAIR), (name, seq))
                self.assertEqual(cfgs[i:i + 4], [a, b, b, a], (name, seq))
                self.assertEqual(seq[i:i + 4],
                                 [f"{a}#{rnd}.0", f"{b}#{rnd}.0",
                                  f"{b}#{rnd}.1", f"{a}#{rnd}.1"])
                # the others run once, unpaired
                for c in ("pcow-blk", "qcow2-blk"):
                    self.assertEqual(seq.count(f"{c}#{rnd}"), 1, seq)
                firsts.add(a)
            # which of the pair runs first alternates
            self.assertEqual(firsts, set(bg.PAIR), name)
        # the one-shot job (never-written space) runs once per round
        seq = self.round_of(jobs, "firsttouch-4k-1", 0)
        self.assertEqual(sorted(seq), sorted(f"{c}#0" for c in self.cfgs))

    def test_without_the_pair_nothing_is_paired(self):
        jobs = bg.main_jobs(self.p, ["pcow-dax", "qcow2-blk"])
        self.assertFalse([k for k, _ in jobs if "." in k.partition("#")[2]])

    def test_round_figure_is_the_mean_of_its_two_runs(self):
        runs = {"raw-dax": [(1000.0, 800.0), (1000.0, 1000.0)],
                "pcow-dax": [(950.0, 850.0), (990.0, 970.0)]}
        jobs = [fio_job(f"{c}@randread-4k-1#{r}.{k}", v[k])
                for c, rl in runs.items() for r, v in enumerate(rl)
                for k in (0, 1)]
        jobs += [fio_job(f"qcow2-blk@randread-4k-1#{r}", 100.0)
                 for r in range(2)]
        lines = (OK + ["BENCH-BEGIN x 1.0 1.0"] +
                 ["@J " + ln for ln in json.dumps({"jobs": jobs}).splitlines()] +
                 ["BENCH-END x 2.0 2.0"])
        fio, redis, bad, reasons = bg.boot_results(lines, 0, CFGS)
        self.assertEqual((bad, reasons), ([], []))
        R = results(fio, reasons, rounds=2)
        j = R["fs"]["tmpfs"]["raw-dax"]["fio"]["randread-4k-1"]
        self.assertEqual([x["iops"] for x in j["rounds"]], [900.0, 1000.0])
        self.assertEqual(j["ios"], 1000 + 800 + 1000 + 1000)
        text, rt = bg.report(R)
        # per round: 900/900 and 980/1000; the median of the two
        self.assertEqual(rt["pcowdax_over_rawdax_4k_randread"], 0.99)


class StrictJson(unittest.TestCase):
    def test_nan_is_refused(self):
        for bad in ('{"a": nan}', '{"a": NaN}', '{"a": Infinity}'):
            with self.assertRaises(ValueError):
                benchmeta.strict_loads(bad)
        with self.assertRaises(ValueError):
            benchmeta.strict_dumps({"a": float("nan")})

    def test_monitor_results_refuses_nan(self):
        with self.assertRaises(ValueError):
            benchmeta.monitor_results('table\n{"dirs": [], "x": nan}\n',
                                      [0, 0, 0], [])
        r = benchmeta.monitor_results(
            'table\n{"dirs": [], "ratio_of": {"r": ["f", "fl"]}}\n',
            [1, 2, 3], [])
        for k in ("date", "cpu", "nproc", "kernel", "git", "loadavg_start",
                  "loadavg_end"):
            self.assertIn(k, r["meta"])

    def test_monitor_results_refuses_a_missing_floor(self):
        ratio_of = {"hole_read_p50_over_floor":
                    ["hole_read_p50_us", "floor_uffd_read_p50_us"]}
        good = {"hole_read_p50_us": 10.0, "floor_uffd_read_p50_us": 7.0,
                "hole_read_p50_over_floor": 1.4}
        ok = json.dumps({"dirs": [{"dir": "d", "metrics": good}],
                         "ratio_of": ratio_of})
        benchmeta.monitor_results(f"t\n{ok}\n", [0, 0, 0], [])
        for k in ("floor_uffd_read_p50_us", "hole_read_p50_over_floor"):
            for bad in (None, 0):
                m = dict(good, **{k: bad})
                out = json.dumps({"dirs": [{"dir": "d", "metrics": m}],
                                  "ratio_of": ratio_of})
                with self.assertRaises(ValueError, msg=k):
                    benchmeta.monitor_results(f"t\n{out}\n", [0, 0, 0], [])
        # an older bench-monitor, without floors at all
        old = json.dumps({"dirs": [{"dir": "d", "metrics": good}]})
        with self.assertRaises(ValueError):
            benchmeta.monitor_results(f"t\n{old}\n", [0, 0, 0], [])
        # a figure not measured needs no floor
        m = dict(good, hole_read_p50_us=None, floor_uffd_read_p50_us=None,
                 hole_read_p50_over_floor=None)
        out = json.dumps({"dirs": [{"dir": "d", "metrics": m}],
                          "ratio_of": ratio_of})
        benchmeta.monitor_results(f"t\n{out}\n", [0, 0, 0], [])

    def test_load_run_is_published_apart(self):
        self.assertEqual(benchmeta.monitor_kind({"load": {"hogs": 2}}),
                         "monitor-load")
        self.assertEqual(benchmeta.monitor_kind({"load": {"hogs": 0}}),
                         "monitor")
        self.assertEqual(benchmeta.monitor_kind({}), "monitor")
        self.assertEqual(benchmeta.monitor_kind({"load": {"hogs": 2}}, "f"),
                         "monitor-load-f")
        self.assertEqual(benchmeta.monitor_kind({}, "f"), "monitor-f")


class BenchMonitorJson(unittest.TestCase):
    """bench-monitor with a subset: unmeasured figures are null."""

    def setUp(self):
        if not BENCH_MONITOR:
            self.skipTest("no bench-monitor binary given")

    def run_bench(self, only, *args):
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, PCOW_BENCH_ONLY=only)
            r = subprocess.run([BENCH_MONITOR] + list(args) + [d], env=env,
                               capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        j = benchmeta.strict_loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(j["dirs"][0]["dir"], d)
        return r, j

    def test_floors_and_ratios(self):
        r, j = self.run_bench("hole", "--reps", "3")
        m, spread = j["dirs"][0]["metrics"], j["dirs"][0]["spread"]
        self.assertEqual(j["reps"], 3)
        self.assertEqual(j["load"], {"hogs": 0, "pids": []})
        benchmeta.check_floors(j)
        # the floors are measured whenever a latency figure is, and are
        # real round trips: more than a clock read, less than a second
        for k in ("floor_uffd_write_gap100us_p50_us",
                  "floor_uffd_write_b2b_p50_us", "floor_uffd_read_p50_us",
                  "floor_sigsegv_mprotect_p50_us",
                  "floor_uffd_write_b2b_p99_us", "floor_uffd_read_p99_us",
                  "floor_sigsegv_mprotect_p99_us"):
            self.assertIsNotNone(m.get(k), k)
            self.assertGreater(m[k], 0.3, k)
            self.assertLess(m[k], 1e6, k)
        # every ratio names a figure and a floor of the output
        for ratio, (fig, floor) in j["ratio_of"].items():
            self.assertIn(ratio, m)
            self.assertIn(fig, m)
            self.assertTrue(floor.startswith("floor_"), floor)
            self.assertEqual(m[ratio] is None, m[fig] is None, ratio)
        self.assertEqual(j["ratio_of"]["hole_read_p50_over_floor"],
                         ["hole_read_p50_us", "floor_uffd_read_p50_us"])
        # a ratio per repetition: within what the spreads allow
        for q in ("p50", "p99"):
            fig, fl = spread[f"hole_read_{q}_us"], \
                spread[f"floor_uffd_read_{q}_us"]
            rt = m[f"hole_read_{q}_over_floor"]
            self.assertGreaterEqual(rt, fig["min"] / fl["max"] * 0.999)
            self.assertLessEqual(rt, fig["max"] / fl["min"] * 1.001)
        for k, s in spread.items():
            self.assertEqual(s["n"], 3, k)
            self.assertLessEqual(s["min"], m[k] * 1.0001, k)
            self.assertGreaterEqual(s["max"], m[k] * 0.9999, k)
        self.assertIsNone(m["expansion_b2b_pool_p50_over_floor"])
        self.assertIsNone(m["cow_4k_unit_p50_over_floor"])

    def test_load_hogs_run_and_are_gone(self):
        r, j = self.run_bench("64t", "--load", "--reps", "1")
        pids = j["load"]["pids"]
        self.assertEqual(j["load"]["hogs"], len(os.sched_getaffinity(0)))
        self.assertEqual(len(pids), j["load"]["hogs"])
        self.assertIn("busy-loop", r.stdout)
        for pid in pids:
            with self.assertRaises(ProcessLookupError, msg=pid):
                os.kill(pid, 0)

    def test_bad_option_fails(self):
        r = subprocess.run([BENCH_MONITOR, "--reps", "0", "/nonexistent"],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

    def test_subset_is_strict_json(self):
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, PCOW_BENCH_ONLY="hole,64t")
            r = subprocess.run([BENCH_MONITOR, "--reps", "2", d], env=env,
                               capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        last = r.stdout.strip().splitlines()[-1]
        j = benchmeta.strict_loads(last)
        m = j["dirs"][0]["metrics"]
        self.assertEqual(j["dirs"][0]["dir"], d)
        self.assertGreater(m["hole_read_p50_us"], 0)
        self.assertGreater(m["roundtrip_64tib_s"], 0)
        for k in ("steady_rand4k_pcow_over_raw", "steady_seq1m_pcow_over_raw",
                  "cow_whole_64k_cluster_p50_us", "expansion_b2b_pool_p50_us",
                  "monitor_open_1m_random_s"):
            self.assertIsNone(m[k], k)
        # one table row per measured figure, none for the others
        rows = [ln for ln in r.stdout.strip().splitlines()[:-1]
                if not ln.startswith("#")]
        self.assertEqual(len(rows), sum(v is not None for v in m.values()))


def lc_round(fresh_ms, raw_ms, vm=(100, 300), save=(10, 200)):
    """One round of bench-lifecycle's results: pcow fresh and raw
    migration times, vmstate sizes (pcow, raw), save file sizes."""
    mig = (lambda ms, sent: {"total_time_ms": ms, "sent_bytes": sent,
                             "pages_scanned": 1000})
    return {"fresh": {"migrate": mig(fresh_ms, 200),
                      "savevm": {"vmstate_bytes": vm[0], "time_s": 1.0}},
            "fresh4": {"migrate": mig(fresh_ms, 200)},
            "raw": {"migrate": mig(raw_ms, 300),
                    "savevm": {"vmstate_bytes": vm[1], "time_s": 4.0},
                    "save": {"file_bytes": save[1]}},
            "shared": {"migrate": mig(fresh_ms // 2, 50),
                       "save": {"file_bytes": save[0]}}}


class Lifecycle(unittest.TestCase):
    """bench-lifecycle's pure parts: the workload's layout, the QEMU
    arguments, query-migrate's figures, the ratios and the JSON."""

    def test_one_percent_of_16g_is_164_chunks(self):
        self.assertEqual(lc.chunk_count(16, 1.0), 164)
        self.assertEqual(lc.chunk_count(4, 1.0), 41)
        self.assertEqual(lc.chunk_count(16, 0.5), 82)

    def test_chunks_are_distinct_and_inside(self):
        for size in (4096, 16384):
            offs = lc.chunk_offsets(size, 164)
            self.assertEqual(len(set(offs)), 164)
            self.assertTrue(all(0 <= o < size for o in offs))
            # scattered: no two neighbours in the file
            s = sorted(offs)
            self.assertGreater(min(b - a for a, b in zip(s, s[1:])), 1)
        with self.assertRaises(ValueError):
            lc.chunk_offsets(100, 101)

    def test_base_chunks_avoid_the_top(self):
        top = lc.chunk_offsets(16384, 164)
        base = lc.base_offsets(16384, 164, top)
        self.assertEqual(len(set(base)), 164)
        self.assertFalse(set(base) & set(top))

    def test_migrate_data_detected_and_dropped(self):
        old = "  format=<string>  - ...\n  share=<bool>\n"
        new = old + "  migrate-data=<string> - none, all or top\n"
        self.assertFalse(lc.has_migrate_data(old))
        self.assertTrue(lc.has_migrate_data(new))
        self.assertEqual(lc.select_cases(lc.CASES, False),
                         (["fresh", "fresh4", "raw", "ram"],
                          ["shared", "top"]))
        self.assertEqual(lc.select_cases(lc.CASES, True), (lc.CASES, []))
        with_mode = lc.nvdimm(0, "/x.pcow", "pcow", 16, "top")[1]
        self.assertIn(",format=pcow,migrate-data=top", with_mode)
        self.assertNotIn("migrate-data", lc.nvdimm(0, "/x", "pcow", 16)[1])
        raw = lc.nvdimm(1, "/x.raw", "raw", 16)
        self.assertNotIn("format=", raw[1])
        self.assertEqual(raw[3], "nvdimm,id=nv1,memdev=pm1")

    def test_migration_figures(self):
        info = {"status": "completed", "total-time": 1200, "downtime": 30,
                "ram": {"duplicate": 100, "normal": 50, "skipped": 0,
                        "transferred": 4096 * 50 + 900,
                        "dirty-sync-count": 3, "total": 1 << 30}}
        f = lc.mig_figures(info, 1.25)
        self.assertEqual((f["pages_scanned"], f["sent_bytes"],
                          f["total_time_ms"], f["downtime_ms"]),
                         (150, 4096 * 50 + 900, 1200, 30))
        self.assertIsNone(lc.mig_figures({"status": "failed"})
                          ["pages_scanned"])

    def test_vmstate_size_from_query_block(self):
        qb = [{"device": "d0", "inserted": {
            "node-name": "disk0", "image": {"snapshots": [
                {"name": "lc", "vm-state-size": 12345}]}}}]
        self.assertEqual(lc.vmstate_sizes(qb, "disk0"), {"lc": 12345})
        self.assertEqual(lc.vmstate_sizes(qb, "other"), {})

    def test_rounds_rotate(self):
        n = len(lc.CASES)
        orders = [lc.round_order(lc.CASES, r) for r in range(n)]
        for o in orders:
            self.assertEqual(sorted(o), sorted(lc.CASES))
        self.assertEqual(len({o[0] for o in orders}), n)

    def test_ratios_pair_rounds_and_skip_failures(self):
        rounds = [lc_round(1000, 30000), lc_round(2000, 50000),
                  lc_round(1000, 10000)]
        rounds[2]["raw"] = {"error": "migration failed"}
        out = lc.summarize(rounds)
        # rounds 1 and 2 only: 30 and 25
        self.assertEqual(out["migrate_fresh_raw_over_pcow_time"], 27.5)
        self.assertEqual(out["migrate_fresh_raw_over_pcow_time_min"], 25.0)
        self.assertEqual(out["migrate_fresh_raw_over_pcow_time_max"], 30.0)
        self.assertTrue(out["migrate_fresh_target_met"])
        self.assertEqual(out["savevm_vmstate_raw_over_pcow_bytes"], 3.0)
        self.assertEqual(out["save_file_raw_over_pcow_bytes"], 20.0)
        self.assertEqual(out["migrate_shared_sent_bytes"], 50)
        self.assertEqual(out["migrate_fresh_16g_over_4g_time"], 1.0)
        for k in ("migrate_fresh_raw_over_pcow_time",
                  "migrate_shared_sent_bytes",
                  "savevm_vmstate_raw_over_pcow_bytes",
                  "save_file_raw_over_pcow_bytes"):
            self.assertIn(k, out)
        benchmeta.strict_loads(benchmeta.strict_dumps(out))

    def test_unmeasured_is_null_not_met(self):
        out = lc.summarize([{"fresh": {"error": "x"}}])
        self.assertIsNone(out["migrate_fresh_raw_over_pcow_time"])
        self.assertIsNone(out["migrate_fresh_target_met"])
        self.assertIsNone(out["migrate_shared_sent_bytes"])
        slow = lc.summarize([lc_round(1000, 5000)])
        self.assertFalse(slow["migrate_fresh_target_met"])


def bc_round(clone_s, raw_s, big_s=None, pss=(300, 100, 900), wrote=8):
    """One round of bench-clones' results: start times of clone1 and
    raw1, of the 4 GiB clone, and the PSS of 8 clones, one clone alone
    and 8 raw restores (MiB), what the 8 clones wrote (MiB)."""
    return {"clone1": {"start_s": clone_s, "last_s": clone_s},
            "raw1": {"start_s": raw_s, "last_s": raw_s},
            "cold1": {"start_s": 8.0, "last_s": 8.0},
            "clone-4096": {"start_s": big_s or clone_s},
            "raw-4096": {"start_s": raw_s * 3},
            "mem-clone8": {"pss_sum_bytes": pss[0] << 20,
                           "pss_file_sum_bytes": (pss[0] - 100) << 20,
                           "active_bytes_sum": wrote << 20,
                           "cow_units_per_clone": 100},
            "mem-clone1": {"pss_sum_bytes": pss[1] << 20,
                           "pss_file_sum_bytes": (pss[1] - 20) << 20},
            "mem-raw8": {"pss_sum_bytes": pss[2] << 20}}


class Clones(unittest.TestCase):
    """bench-clones' pure parts: the guest's loop, the cases, the start
    times, PSS and query-pcow figures, the ratios, the memory check and
    the JSON."""

    ARGS = ([1, 4], [256, 4096], 256, 8)

    @staticmethod
    def run_workload(script, ticks):
        """@script under /bin/sh with a usleep that stops it after @ticks
        sleeps and a dd that only logs its arguments: (stdout, dd's log)."""
        with tempfile.TemporaryDirectory() as d:
            Path(d, "usleep").write_text(
                "#!/bin/sh\nn=$(cat %s/n 2>/dev/null || echo 0)\n"
                "echo $((n + 1)) > %s/n\n"
                "[ $n -ge %d ] && kill $PPID\nexit 0\n" % (d, d, ticks - 1))
            Path(d, "dd").write_text("#!/bin/sh\necho \"dd $*\" >> %s/log\n"
                                     % d)
            for f in ("usleep", "dd"):
                os.chmod(Path(d, f), 0o755)
            r = subprocess.run(["/bin/sh", "-c", script],
                               capture_output=True, text=True, timeout=30,
                               env=dict(os.environ,
                                        PATH=f"{d}:{os.environ['PATH']}"))
            return r.stdout, Path(d, "log").read_text()

    def test_guest_loop_ticks_and_works_once(self):
        """The script stopped after 12 ticks, with a dd that writes
        nothing."""
        out, dd = self.run_workload(bc.workload(200, 7, 4), 12)
        lines = out.split("\n")
        ticks = [int(m.group(1)) for m in map(bc.TICK_RE.search, lines) if m]
        self.assertEqual(ticks, list(range(1, 13)))
        self.assertEqual([ln for ln in lines if "WORKED" in ln],
                         ["CL-WORKED 7"])
        self.assertEqual(dd.split(), ["dd", "if=/dev/urandom", "of=/tmp/work",
                                      "bs=1M", "count=4"])
        self.assertIn("usleep 200000", bc.workload(200, 7, 4))

    def test_warm_guest_fills_before_ticks_and_reads_back(self):
        """--warm-mib: the fill comes before the first tick (before the
        template's snapshot), the read back at the work tick before the
        write; without it the script is the same as before."""
        out, dd = self.run_workload(bc.workload(200, 6, 4, 512), 10)
        lines = [ln for ln in out.split("\n") if ln]
        self.assertEqual(lines[:2], ["CL-WARM 512", "CL-TICK 1"])
        self.assertEqual(lines.count("CL-WARM 512"), 1)
        self.assertEqual([ln for ln in lines if "WORKED" in ln],
                         ["CL-WORKED 6"])
        self.assertEqual(dd.split("\n")[:3],
                         ["dd if=/dev/urandom of=/tmp/warm bs=1M count=512",
                          "dd if=/tmp/warm of=/dev/null bs=1M",
                          "dd if=/dev/urandom of=/tmp/work bs=1M count=4"])
        self.assertEqual(bc.workload(200, 7, 4, 0), bc.workload(200, 7, 4))
        self.assertNotIn("warm", bc.workload(200, 7, 4))

    def test_warm_option(self):
        base = ["--qemu", "q", "--pcow-img", "p", "--dir", "d", "--out", "o"]
        self.assertEqual(bc.parse_args(base).warm_mib, 0)
        a = bc.parse_args(base + ["--ram-mib", "1024", "--scale-mib", "1024",
                                  "--warm-mib", "512"])
        self.assertEqual((a.warm_mib, a.ram_mib), (512, 1024))
        # more than half the smallest RAM size, or negative
        for bad in (["--warm-mib", "129"], ["--warm-mib", "-1"],
                    ["--ram-mib", "1024", "--scale-mib", "256,1024",
                     "--warm-mib", "512"]):
            with self.assertRaises(SystemExit):
                bc.parse_args(base + bad)

    def test_cases_and_names(self):
        cases = bc.case_names(*self.ARGS)
        self.assertEqual(cases, ["clone1", "clone4", "raw1", "raw4",
                                 "cold1", "cold4", "clone-4096", "raw-4096",
                                 "mem-clone8", "mem-raw8", "mem-clone1",
                                 "mem-raw1"])
        full = bc.case_names([1, 4, 16], [256, 1024, 4096], 256, 8, [1, 4])
        self.assertNotIn("cold16", full)
        self.assertNotIn("raw-1024", full)
        self.assertIn("clone-1024", full)
        self.assertIn("raw16", full)
        self.assertEqual(bc.parse_case("clone16"), ("clone", 16, None,
                                                    False))
        self.assertEqual(bc.parse_case("raw-4096"), ("raw", 1, 4096, False))
        self.assertEqual(bc.parse_case("mem-raw8"), ("raw", 8, None, True))
        with self.assertRaises(ValueError):
            bc.parse_case("cold-4096")
        a = bc.parse_args(["--qemu", "q", "--pcow-img", "p", "--dir", "d",
                           "--out", "o", "--quick"])
        self.assertEqual((a.rounds, a.counts, a.mem_n), (1, [1, 2], 2))
        with self.assertRaises(SystemExit):
            bc.parse_args(["--qemu", "q", "--pcow-img", "p", "--dir", "d",
                           "--out", "o", "--counts", "4,16"])

    def test_ram_on_pcow_args(self):
        a = bc.ram_args("/x/c0.pcow")
        self.assertIn("mem-path=/x/c0.pcow,format=pcow,share=on", a[1])
        self.assertEqual(a[2:], ["-machine", "memory-backend=ram0"])

    def test_first_tick_and_boot_marker(self):
        lines = ["Linux version", bc.BOOT_MARK, "CL-TICK 1", "CL-TICK 2"]
        self.assertEqual(bc.first_tick(lines, [0.1, 5.0, 6.5, 6.7]),
                         (6.5, 1, True))
        self.assertEqual(bc.first_tick(["\x00CL-TICK 7"], [0.4]),
                         (0.4, 7, False))
        self.assertEqual(bc.first_tick(["x"], [1.0]), (None, None, False))

    def test_start_figures(self):
        # three VMs started 0.1 s apart; the last running is the second
        f = bc.start_figures([10.0, 10.1, 10.2], [1.0, 3.0, 2.0])
        self.assertEqual((f["start_s"], f["start_max_s"], f["last_s"]),
                         (2.0, 3.0, 3.1))

    def test_pss_and_query_pcow(self):
        text = "Rss:  2048 kB\nPss:  1500 kB\nPss_Anon:  10 kB\n"
        self.assertEqual(bc.pss_bytes(text), 1500 * 1024)
        self.assertEqual(bc.pss_bytes(text, "anon"), 10 * 1024)
        with self.assertRaises(ValueError):
            bc.pss_bytes(text, "file")
        with self.assertRaises(ValueError):
            bc.pss_bytes("Rss: 1 kB\n")
        st = {"expansions": 3, "cow-unit-faults": 40,
              "cow-cluster-faults": 1, "hole-read-faults": 9}
        q = [{"id": "pm0", "statistics": {}},
             {"id": "ram0", "statistics": st, "active-bytes": 65536 * 5,
              "cluster-size": 65536}]
        s = bc.pcow_stats(q)
        self.assertEqual((s["cow_units"], s["expansions"],
                          s["active_bytes"]), (40, 3, 65536 * 5))
        with self.assertRaises(ValueError):
            bc.pcow_stats(q, "nv9")
        t = bc.sum_stats([s, dict(s, cow_units=60)])
        self.assertEqual((t["cow_units_sum"], t["cow_units_per_clone"]),
                         (100, 50))

    def test_memory_check(self):
        self.assertEqual(bc.pss_check(150, 100, 0), (True, 150))
        self.assertEqual(bc.pss_check(151, 100, 0), (False, 150))
        self.assertEqual(bc.pss_check(151, 100, 10), (True, 160))
        self.assertEqual(bc.pss_check(None, 100, 0), (None, None))

    def test_ratios_targets_and_json(self):
        rounds = [bc_round(0.5, 1.0), bc_round(0.5, 2.0, big_s=1.5),
                  bc_round(1.0, 3.0, pss=(300, 100, 600))]
        rounds[1]["raw1"] = {"error": "restore failed"}
        out = bc.summarize(rounds, *self.ARGS, bc.case_names(*self.ARGS))
        # rounds 1 and 3: 2 and 3
        self.assertEqual(out["clone_start_raw_over_pcow"], 2.5)
        self.assertEqual(out["clone_start_raw_over_pcow_min"], 2.0)
        self.assertIsNotNone(out["clone_start_raw_over_pcow_ci95"])
        # 1, 3, 1
        self.assertEqual(out["clone_start_ram_scaling"], 1.0)
        self.assertTrue(out["clone_start_ram_scaling_target_met"])
        self.assertEqual(out["clones8_pss_raw_over_pcow"], 3.0)
        self.assertEqual(out["clone1_start_s"], 0.5)
        self.assertEqual(out["mem_clone8_cow_units_per_clone"], 100)
        pc = out["pss_check"]
        # 300 MiB <= 1.5 x 100 MiB + 8 MiB: no
        self.assertEqual((pc["met"], pc["bound_bytes"]),
                         (False, 158 << 20))
        self.assertEqual(pc["met_per_round"], [False] * 3)
        # files only: 200 MiB <= 1.5 x 80 MiB + 8 MiB: no
        self.assertEqual((out["pss_check_file"]["met"],
                          out["pss_check_file"]["bound_bytes"]),
                         (False, 128 << 20))
        good = bc.summarize([bc_round(0.5, 1.0, pss=(150, 100, 900))],
                            *self.ARGS, bc.case_names(*self.ARGS))
        self.assertTrue(good["pss_check"]["met"])
        self.assertIsNone(good["clone_start_raw_over_pcow_ci95"])
        benchmeta.strict_loads(benchmeta.strict_dumps(out))

    def test_unmeasured_is_null_not_met(self):
        out = bc.summarize([{"clone1": {"error": "x"}}], *self.ARGS,
                           bc.case_names(*self.ARGS))
        for k in ("clone_start_raw_over_pcow", "clone_start_ram_scaling",
                  "clones8_pss_raw_over_pcow"):
            self.assertIsNone(out[k])
        self.assertIsNone(out["clone_start_ram_scaling_target_met"])
        self.assertIsNone(out["pss_check"]["met"])
        slow = bc.summarize([bc_round(0.5, 1.0, big_s=1.5)], *self.ARGS,
                            bc.case_names(*self.ARGS))
        self.assertFalse(slow["clone_start_ram_scaling_target_met"])


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        BENCH_MONITOR = sys.argv.pop(1)
    unittest.main(verbosity=2)
