#!/usr/bin/python3
"""QEMU's memory overhead against NVDIMM size, pcow against raw.

For each size and accelerator, starts QEMU paused (-S) with one NVDIMM
backed by a thin pcow image (pcow-img create) or a sparse raw file
(truncate -s), waits for QMP, and records /proc/PID/smaps_rollup (RSS,
PSS), the page tables (VmPTE), and the biggest anonymous mappings (where
the dirty bitmaps live).  Prints a table and writes the results as JSON.

Usage: bench-overhead.py --qemu Q --pcow-img P --dir DIR --out FILE
                         [--publish DIR] [--tag T] [--accel A,...] [SIZE...]
SIZE is in GiB (default: 1 64 1024 4096 16384).  --accel: tcg (default),
kvm or both (tcg,kvm).  --tag T publishes results-<date>-nvdimm-overhead-T.json.

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmeta  # noqa: E402

GIB = 1 << 30


def kib_fields(path):
    out = {}
    for ln in Path(path).read_text().splitlines():
        parts = ln.split()
        if len(parts) >= 3 and parts[-1] == "kB":
            out[parts[0].rstrip(":")] = int(parts[-2])
    return out


def anon_maps(pid, top=6):
    """The largest mappings by RSS (KiB), with their names."""
    maps, cur = [], None
    for ln in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        f = ln.split()
        if "-" in f[0] and not f[0].endswith(":"):
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            cur = {"name": f[5] if len(f) > 5 else "[anon]",
                   "size_kib": (hi - lo) // 1024}
            maps.append(cur)
        elif f[0] in ("Rss:", "Pss:"):
            cur[f[0][:-1].lower() + "_kib"] = int(f[1])
    maps.sort(key=lambda m: -m.get("rss_kib", 0))
    return maps[:top]


def qmp(path, cmds, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.time() > deadline:
                raise TimeoutError("QMP socket never appeared")
            time.sleep(0.1)
    s.settimeout(timeout)
    f = s.makefile("rw")
    json.loads(f.readline())
    replies = []
    for c in ["qmp_capabilities"] + cmds:
        f.write(json.dumps({"execute": c}) + "\n")
        f.flush()
        while True:
            r = json.loads(f.readline())
            if "return" in r or "error" in r:
                replies.append(r)
                break
    s.close()
    return replies[1:]


def one(args, fmt, gib, accel):
    d = Path(args.dir)
    img = d / f"nv-{gib}g.{'pcow' if fmt == 'pcow' else 'raw'}"
    sock = d / "qmp.sock"
    for p in (img, sock):
        p.unlink(missing_ok=True)
    if fmt == "pcow":
        subprocess.run([args.pcow_img, "create", "-q", str(img), f"{gib}G"],
                       check=True)
    else:
        try:
            with open(img, "wb") as f:
                f.truncate(gib * GIB)
        except OSError as e:
            # ext4 files end below 16 TiB: say so, as a result
            img.unlink(missing_ok=True)
            return {"format": fmt, "size_gib": gib, "accel": accel,
                    "error": f"truncate -s {gib}G: {e.strerror}"}
    cmd = [args.qemu, "-S", "-machine", "pc,nvdimm=on", "-accel", accel,
           "-cpu", "qemu64,phys-bits=48",
           "-m", f"256M,slots=2,maxmem={gib + 1}G",
           "-nographic", "-display", "none", "-nodefaults",
           "-qmp", f"unix:{sock},server=on,wait=off",
           "-object", f"memory-backend-file,id=pm,mem-path={img},"
           f"format={fmt},share=on,size={gib}G",
           "-device", "nvdimm,id=nv0,memdev=pm"]
    res = {"format": fmt, "size_gib": gib, "accel": accel}
    t0 = time.time()
    q = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        # Wait for the socket or for QEMU to give up.
        while not sock.exists() and q.poll() is None:
            time.sleep(0.05)
        st = None
        if q.poll() is None:
            try:
                st = qmp(str(sock), ["query-status"], args.timeout)[0]
            except (OSError, ValueError):
                pass                # QEMU died while starting: its error
        if st is not None and q.poll() is None:
            res["start_s"] = round(time.time() - t0, 2)
            res["status"] = st.get("return", {}).get("status")
            r = kib_fields(f"/proc/{q.pid}/smaps_rollup")
            s = kib_fields(f"/proc/{q.pid}/status")
            res.update(rss_kib=r["Rss"], pss_kib=r["Pss"],
                       anon_kib=r.get("Anonymous", 0),
                       vm_size_kib=s["VmSize"], vm_pte_kib=s["VmPTE"],
                       top_mappings=anon_maps(q.pid))
            q.terminate()
        q.wait(timeout=args.timeout)
    finally:
        if q.poll() is None:
            q.kill()
            q.wait()
    if "rss_kib" not in res:
        res["error"] = q.stderr.read().strip().splitlines()[-1:] or [
            f"exit {q.returncode}"]
        res["error"] = res["error"][0]
    img.unlink(missing_ok=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--pcow-img", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--publish")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--tag")
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("sizes", nargs="*", type=int,
                    default=[1, 64, 1024, 4096, 16384])
    a = ap.parse_args()
    load0 = benchmeta.loadavg()
    started = benchmeta.now()
    rows = []
    print(f"{'size':>8} {'accel':>5} {'fmt':>5} {'RSS MiB':>9} "
          f"{'PSS MiB':>9} {'PTE MiB':>8} {'start s':>8}")
    for gib, accel, fmt in ((g, ac, f) for g in a.sizes
                            for ac in a.accel.split(",")
                            for f in ("pcow", "raw")):
        r = one(a, fmt, gib, accel)
        rows.append(r)
        if "error" in r:
            print(f"{gib:>7}G {accel:>5} {fmt:>5} failed: {r['error']}")
        else:
            print(f"{gib:>7}G {accel:>5} {fmt:>5} "
                  f"{r['rss_kib'] / 1024:9.1f} "
                  f"{r['pss_kib'] / 1024:9.1f} "
                  f"{r['vm_pte_kib'] / 1024:8.1f} {r['start_s']:8.2f}")
        sys.stdout.flush()
    res = {"what": "nvdimm-overhead",
           "command": " ".join(sys.argv),
           "meta": dict(benchmeta.machine(), started=started,
                        finished=benchmeta.now(), loadavg_start=load0,
                        loadavg_end=benchmeta.loadavg(),
                        mem_total_kib=kib_fields("/proc/meminfo")["MemTotal"]),
           "results": rows}
    benchmeta.write_results(res, a.out, a.publish, "nvdimm-overhead"
                            + (f"-{a.tag}" if a.tag else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
