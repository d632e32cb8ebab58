#!/usr/bin/env python3
"""Where a pcow migration to a fresh image spends its time (issue 10).

One QEMU binary or two (--qemu NAME=PATH, e.g. before and after a change)
migrate the same pcow NVDIMM (16 GiB, 164 chunks of 1 MiB of random data
written by the host, spread over it) in one run, in alternating order:

  fresh  migrate-data=all over a unix socket to a QEMU on a fresh image
  null   the source alone: migrate to "exec:cat > /dev/null"

The VMs have no guest (-S: paused, 512 MiB of untouched RAM), so the
figures are the NVDIMM's.  A raw file cannot be the destination of a pcow
source (its section "pcow-image/ID" is unknown there), hence "null".
Per round: the source's total-time, the wall time until the destination
completed (its activation, and so the end of deferred commits, included),
and the destination's Image Monitor statistics.  With --strace, one more
fresh migration per binary under "strace -c -f" on the destination counts
its system calls (slower: not timed).

Usage: bench-migprofile.py --qemu NAME=PATH [--qemu ...] --pcow-img P
           [--dir DIR] [--rounds N] [--strace] [--out FILE] [--publish DIR]
"""
import argparse
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(TOP / "tests/pcow/guest"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmeta  # noqa: E402
import guest  # noqa: E402

MiB = 1 << 20
GIB = 16
CHUNKS = 164
SYSCALLS = ("msync", "fdatasync", "fallocate", "sched_yield", "mmap",
            "madvise", "ioctl")


def prepare(a, d):
    """The source image: the same chunks in every round."""
    raw, img = d / "prep.raw", d / "prep.pcow"
    with open(raw, "wb") as f:
        f.truncate(GIB << 30)
        rnd = random.Random(10)
        for off in sorted(rnd.sample(range(GIB * 1024), CHUNKS)):
            f.seek(off * MiB)
            f.write(rnd.randbytes(MiB))
    img.unlink(missing_ok=True)
    subprocess.run([a.pcow_img, "convert", "-O", "pcow", str(raw), str(img)],
                   check=True)
    raw.unlink()
    return img


class Qemu:
    def __init__(self, qemu, d, name, img, incoming=None):
        self.sock = d / f"{name}.qmp"
        self.sock.unlink(missing_ok=True)
        cmd = [qemu, "-machine", "pc,nvdimm=on,accel=tcg",
               "-m", f"512M,slots=2,maxmem={GIB + 1}G", "-display", "none",
               "-nodefaults", "-S",
               "-qmp", f"unix:{self.sock},server=on,wait=off",
               "-object", f"memory-backend-file,id=pm0,mem-path={img},"
               f"share=on,size={GIB}G,format=pcow,migrate-data=all",
               "-device", "nvdimm,id=nv0,memdev=pm0"]
        if incoming:
            cmd += ["-incoming", incoming]
        self.err = open(d / f"{name}.err", "w+")
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                  stderr=self.err)
        deadline = time.monotonic() + 60
        while not self.sock.exists():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.err.seek(0)
                sys.exit(f"bench-migprofile: QEMU failed: {self.err.read()}")
            time.sleep(0.05)
        self.m = guest.QMP(self.sock, timeout=600)

    def quit(self):
        try:
            self.m.execute("quit")
        except (EOFError, OSError, guest.QMPError):
            pass
        self.p.wait(60)


def wait_status(m, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = m.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.01)
    sys.exit("bench-migprofile: migration not done")


def strace_counts(path):
    """{syscall: calls} of a "strace -c" summary."""
    out = {}
    for ln in Path(path).read_text().splitlines():
        f = ln.split()
        if len(f) >= 5 and f[-1] in SYSCALLS and re.match(r"\d", f[3]):
            out[f[-1]] = int(f[3])
    return out


def one(a, qemu, prep, d, case, strace=False):
    src_img, dst_img = d / "src.pcow", d / "dst.pcow"
    subprocess.run(["cp", "--sparse=always", str(prep), str(src_img)],
                   check=True)
    src = Qemu(qemu, d, "src", src_img)
    dst, tracer = None, None
    uri = "exec:cat > /dev/null"
    if case == "fresh":
        dst_img.unlink(missing_ok=True)
        subprocess.run([a.pcow_img, "create", "-q", str(dst_img),
                        f"{GIB}G"], check=True)
        uri = f"unix:{d}/mig.sock"
        dst = Qemu(qemu, d, "dst", dst_img, incoming=uri)
        if strace:
            tracer = subprocess.Popen(
                ["strace", "-c", "-f", "-o", str(d / "strace.txt"),
                 "-p", str(dst.p.pid)], stderr=subprocess.DEVNULL)
            time.sleep(1)
    try:
        src.m.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        t0 = time.monotonic()
        src.m.execute("migrate", uri=uri)
        info = wait_status(src.m)
        fig = {"status": info["status"], "total_ms": info.get("total-time"),
               "sent_bytes": info.get("ram", {}).get("transferred")}
        if dst:
            dinfo = wait_status(dst.m)
            fig["dst_done_s"] = round(time.monotonic() - t0, 3)
            fig["dst_status"] = dinfo["status"]
            st = dst.m.execute("query-pcow")[0]["statistics"]
            lat = st["expansion-latency"]
            fig.update(expansions=st["expansions"],
                       expansion_p50_us=lat["p50-ns"] / 1000,
                       expansion_p99_us=lat["p99-ns"] / 1000,
                       expansion_max_us=round(lat["max-ns"] / 1000, 1),
                       pool_hits=st["pool-hits"],
                       pool_misses=st["pool-misses"])
        if tracer:
            tracer.send_signal(2)
            tracer.wait(60)
            fig = {"dst_syscalls": strace_counts(d / "strace.txt")}
    finally:
        src.quit()
        if dst:
            dst.quit()
    return fig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu", action="append", required=True)
    ap.add_argument("--pcow-img", required=True)
    ap.add_argument("--dir", default=str(TOP / "build/bench/migprofile"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--publish", default=None)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    qemus = dict(q.split("=", 1) for q in a.qemu)
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    load0, started = benchmeta.loadavg(), benchmeta.now()
    prep = prepare(a, d)
    rounds = []
    names = list(qemus)
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        rnd = {}
        for n in order:
            for case in ("fresh", "null"):
                rnd[f"{n}/{case}"] = one(a, qemus[n], prep, d, case)
        rounds.append(rnd)
        print(f"[migprofile] round {r + 1}: " + ", ".join(
            f"{k} {v['total_ms']} ms" for k, v in rnd.items()),
            file=sys.stderr)
    traced = ({n: one(a, qemus[n], prep, d, "fresh", strace=True)
               for n in names} if a.strace else {})
    summary = {}
    for k in rounds[0]:
        for f in ("total_ms", "dst_done_s", "pool_misses",
                  "expansion_p50_us", "expansion_p99_us"):
            xs = [rd[k].get(f) for rd in rounds if rd[k].get(f) is not None]
            if xs:
                summary[f"{k}/{f}"] = {"median": benchmeta.median(xs),
                                       "min": min(xs), "max": max(xs)}
    res = {"kind": "migprofile",
           "qemu": qemus, "rounds": rounds, "strace": traced,
           "summary": summary,
           "meta": dict(benchmeta.machine(dirs=[d]), started=started,
                        finished=benchmeta.now(), loadavg_start=load0,
                        loadavg_end=benchmeta.loadavg(),
                        busiest_end=benchmeta.busiest(), note=a.note,
                        workload=f"{CHUNKS} MiB of random data in a {GIB} "
                        "GiB pcow image, VMs paused (-S), no guest")}
    out = a.out or str(d / f"migprofile-{time.strftime('%Y%m%d-%H%M%S')}"
                       ".json")
    benchmeta.write_results(res, out, a.publish, "migprofile")
    for k, v in summary.items():
        print(f"{k:40s} {v['median']} [{v['min']}, {v['max']}]")
    for n, v in traced.items():
        print(f"{n} destination syscalls: {v['dst_syscalls']}")
    (d / "prep.pcow").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
