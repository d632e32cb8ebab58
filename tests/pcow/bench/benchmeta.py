#!/usr/bin/python3
"""What a benchmark run records about itself, and strict JSON.

Used by bench-guest.py (imported) and bench-monitor.sh (command line):

  benchmeta.py monitor-results --stdout FILE --load0 "L1 L5 L15"
                               --started DATE --out FILE [--publish DIR]
                               DIR...

reads bench-monitor's output (a table, then one JSON line), checks that the
JSON line is strict JSON (no NaN or Infinity: a figure that was not
measured is null), and writes a results file: the machine, the load
average at start and end, the date, the git commit, the table and the
figures.  --publish also copies it to DIR/results-<date>-monitor.json
(-monitor-load.json for a run with --load: CPU hogs on every CPU;
--tag T appends -T).
Exits 1 with a one-line message if the output is not valid.

  benchmeta.py run --what NAME --out FILE [--publish DIR] -- COMMAND...

runs COMMAND (output shown as it comes) and writes its output, exit
status, the machine, the load average at start and end, the dates and the
git commit to FILE (and DIR/results-<date>-NAME.json): for figures that
come from a test's log, e.g. the live snapshot pause of test-qmp-live.
Exits with COMMAND's status.

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent.parent.parent


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON (an unmeasured figure is null)")


def strict_loads(text):
    """json.loads that refuses NaN and Infinity (Python accepts them)."""
    return json.loads(text, parse_constant=_reject_constant)


def strict_dumps(obj, **kw):
    return json.dumps(obj, allow_nan=False, **kw)


# --------------------------------------------------------------------------
# statistics of the rounds (no numpy here: plain Python, fixed seed, so a
# results file always gives the same interval)

BOOT_RESAMPLES = 2000
BOOT_SEED = 20261201


def median(xs):
    """Median of the numbers in xs (None when there are none)."""
    v = sorted(xs)
    n = len(v)
    if not n:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _quantile(v, q):
    """q-quantile of the sorted list v, linear between neighbours."""
    pos = q * (len(v) - 1)
    i = int(pos)
    if i + 1 >= len(v):
        return v[-1]
    return v[i] + (v[i + 1] - v[i]) * (pos - i)


def bootstrap_ci(xs, level=0.95, resamples=BOOT_RESAMPLES, seed=BOOT_SEED):
    """Percentile bootstrap interval [lo, hi] of the median of xs.

    None with fewer than 2 samples: one round says nothing about the
    spread."""
    xs = list(xs)
    if len(xs) < 2:
        return None
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(xs, k=len(xs)))
                  for _ in range(resamples))
    a = (1 - level) / 2
    return [_quantile(meds, a), _quantile(meds, 1 - a)]


def paired_ratios(num, den):
    """num[r] / den[r] for every round r where both were measured (the
    two configurations ran in the same round, one after the other)."""
    return [a / b for a, b in zip(num, den)
            if a is not None and b is not None and a > 0 and b > 0]


def summary(xs, digits=3):
    """(median, [lo, hi] or None) of xs, rounded."""
    m = median(xs)
    ci = bootstrap_ci(xs)
    r = (lambda x: round(x, digits))
    return (None if m is None else r(m),
            None if ci is None else [r(ci[0]), r(ci[1])])


def _sh(cmd):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return r.stdout.strip()


def cpu_model():
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def busiest(n=8):
    """The processes using the most CPU (what else shares the machine)."""
    r = subprocess.run(["ps", "-eo", "pcpu,etimes,comm", "--sort=-pcpu"],
                       capture_output=True, text=True)
    return [" ".join(ln.split()) for ln in r.stdout.splitlines()[1:n + 1]]


def git_commit(top=TOP):
    """The commit, and the tracked files that differ from it (a published
    chart is one: --publish rewrites docs/figures/)."""
    commit = _sh(f"git -C '{top}' rev-parse HEAD")
    changed = _sh(f"git -C '{top}' status --porcelain --untracked-files=no")
    files = [ln[3:] for ln in changed.splitlines()]
    return {"commit": commit, "dirty": bool(files), "dirty_files": files[:50]}


def machine(top=TOP, dirs=()):
    """The machine and the moment of a run."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") *
                         os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
        "git": git_commit(top),
        "fs": {str(d): _sh(f"findmnt -n -o SOURCE,FSTYPE,OPTIONS -T '{d}'")
               .split("\n")[0] for d in dirs},
    }


def publish_name(kind, date=None):
    """docs/figures/results-<date>-<kind>.json"""
    d = date or datetime.datetime.now(datetime.timezone.utc)
    return f"results-{d:%Y-%m-%d}-{kind}.json"


def check_floors(figures):
    """Every measured latency figure that has a ratio to a floor (ratio_of)
    must come with its floor and its ratio, both positive; ValueError if
    not (a run without its floors cannot be quoted against them)."""
    ratio_of = figures.get("ratio_of")
    if not isinstance(ratio_of, dict) or not ratio_of:
        raise ValueError("no ratio_of: bench-monitor did not report floors")
    for d in figures["dirs"]:
        m = d.get("metrics", {})
        for ratio, (fig, floor) in ratio_of.items():
            if m.get(fig) is None:
                continue
            for k in (floor, ratio):
                v = m.get(k)
                if not isinstance(v, (int, float)) or v <= 0:
                    raise ValueError(f"{d.get('dir')}: {fig} measured but "
                                     f"{k} is {v!r}")


def monitor_kind(figures, tag=None):
    """monitor, or monitor-load for a run with CPU hogs (--load), then
    -TAG if given."""
    kind = ("monitor-load" if figures.get("load", {}).get("hogs")
            else "monitor")
    return f"{kind}-{tag}" if tag else kind


def monitor_results(stdout, load0, dirs, started=None):
    """bench-monitor's output -> results object; ValueError if not valid."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("no output")
    figures = strict_loads(lines[-1])
    if not isinstance(figures, dict) or "dirs" not in figures:
        raise ValueError("the last line is not bench-monitor's JSON object")
    check_floors(figures)
    return {"what": "bench-monitor",
            "meta": dict(machine(dirs=dirs), started=started,
                         loadavg_start=load0, loadavg_end=loadavg()),
            "table": "\n".join(lines[:-1]),
            "bench_monitor": figures}


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")


def run_logged(cmd):
    """Run cmd, echo and keep its output: results object."""
    load0, started = loadavg(), now()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    out = []
    for ln in p.stdout:
        sys.stdout.write(ln)
        sys.stdout.flush()
        out.append(ln.rstrip("\n"))
    rc = p.wait()
    return {"what": " ".join(cmd), "rc": rc,
            "meta": dict(machine(dirs=[os.environ.get("TMPDIR", "/tmp")]),
                         started=started, loadavg_start=load0,
                         loadavg_end=loadavg()),
            "log": out}


def write_results(res, out, publish, name):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(strict_dumps(res, indent=1) + "\n")
    print(f"benchmeta: results in {out}", file=sys.stderr)
    if publish:
        dst = Path(publish) / publish_name(name)
        shutil.copyfile(out, dst)
        print(f"benchmeta: published {dst}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--what", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--publish", default=None)
    r.add_argument("command", nargs=argparse.REMAINDER)
    m = sub.add_parser("monitor-results")
    m.add_argument("--stdout", required=True)
    m.add_argument("--load0", required=True)
    m.add_argument("--started", default=None)
    m.add_argument("--out", required=True)
    m.add_argument("--publish", default=None)
    m.add_argument("--tag", default=None)
    m.add_argument("dirs", nargs="*")
    a = ap.parse_args()
    if a.cmd == "run":
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not cmd:
            ap.error("run: no command")
        res = run_logged(cmd)
        write_results(res, a.out, a.publish, a.what)
        return res["rc"]
    try:
        load0 = [float(x) for x in a.load0.split()]
        res = monitor_results(Path(a.stdout).read_text(), load0, a.dirs,
                              a.started)
    except (OSError, ValueError) as e:
        print(f"bench-monitor: invalid output: {e}", file=sys.stderr)
        return 1
    write_results(res, a.out, a.publish,
                  monitor_kind(res["bench_monitor"], a.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
