#!/usr/bin/env python3
"""Guest RAM on pcow images (-machine memory-backend= and -numa memdev=).

a. RAM: a TCG guest whose whole RAM is a 512 MiB pcow image
   (-object memory-backend-file,id=ram0,...,format=pcow,share=on
   -machine memory-backend=ram0) writes 64 MiB of a known page into tmpfs
   and reads it back (md5).  While it waits: gpa2hva 0 names ram0 (guest
   RAM is the pcow block), the image is thin (allocated above what was
   written, below 3/4 of its size), and in QEMU's /proc/PID/smaps no
   mapping of the range has AnonHugePages or FilePmdMapped or the
   MADV_HUGEPAGE flag ("hg"; ram_block_add sets it, the pcow glue clears
   it).  After the guest's poweroff: pcow-img check is clean and the raw
   conversion holds every page the guest wrote.
b. prealloc=on: on a fresh image it allocates nothing (QEMU at -S, no
   kernel loaded); on a1's image it prefaults the allocated data (the
   range's RSS rises to about the allocated size; it is ~0 without
   prealloc) and allocates nothing either.
c. NUMA: two nodes, each on its own 256 MiB pcow image
   (-numa node,memdev=ramN); the guest sees node1, and a tmpfs bound to
   each node (mpol=bind:N) puts its pages in that node's image only.
d. Options that make no sense with pcow guest RAM fail with one line and
   exit status 1: -mem-path IMG.pcow (it cannot set share=on; the message
   says how to do it), -mem-path
   with -machine memory-backend, and an image on hugetlbfs (no write(2)
   there: pcow-img create fails, an empty file is not a pcow image).  THP
   is checked in a; the control here shows that QEMU madvises a raw file
   as guest RAM MADV_HUGEPAGE (so a's check of the flag can fail).
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import importlib.util
import os
import re
import socket
import subprocess
import time

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
guest = common.guest
MiB = common.MiB

RAM = 512 * MiB
PAGE = 4096
WRITE = 64 * MiB                  # case a: tmpfs file
NODE_WRITE = 32 * MiB             # case c: per node
KW = dict(common.GUEST_KW, timeout=480)


def line_of(tag: str) -> str:
    """63 characters; with yes's newline 64 bytes, 64 of them one page."""
    return f"pcow-guest-ram {tag} ".ljust(63, "=")


def page_of(tag: str) -> bytes:
    return (line_of(tag) + "\n").encode() * (PAGE // 64)


def count_pages(path, pages: dict) -> dict:
    """How many page-aligned 4 KiB pages of @path equal each of @pages."""
    want = {v: k for k, v in pages.items()}
    n = {k: 0 for k in pages}
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                break
            for i in range(0, len(b), PAGE):
                k = want.get(b[i:i + PAGE])
                if k is not None:
                    n[k] += 1
    return n


def fill(tag: str, path: str, size: int) -> str:
    """Guest shell: write @size bytes of page_of(@tag) to @path, print its
    md5 as "MD5 <tag> <sum>"."""
    return (f'yes "{line_of(tag)}" | head -c {size} > {path} '
            f'|| fail writing {path}\n'
            f'echo "MD5 {tag} $(md5sum < {path} | cut -d" " -f1)"\n')


def ram_obj(i: int, img, extra: str = "") -> list:
    return ["-object", f"memory-backend-file,id=ram{i},mem-path={img},"
            f"format=pcow,share=on{extra}"]


def allocated(t, img) -> int:
    inf = t.info(img)
    return (inf["format-specific"]["data"]["allocated-clusters"] *
            inf["cluster-size"])


def range_vmas(pid: int, base: int, size: int) -> list:
    """The /proc/PID/smaps entries overlapping [base, base + size)."""
    vmas, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for ln in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", ln)
            if m:
                lo, hi = int(m.group(1), 16), int(m.group(2), 16)
                cur = {"lo": lo, "hi": hi, "flags": []}
                if lo < base + size and hi > base:
                    vmas.append(cur)
                continue
            key, _, val = ln.partition(":")
            if key == "VmFlags":
                cur["flags"] = val.split()
            elif val.strip().endswith("kB"):
                cur[key] = int(val.split()[0]) * 1024
    return vmas


def ram_base(m, name: str) -> int | None:
    """Host address of guest physical 0, if block @name holds it."""
    out = m.hmp("gpa2hva 0")
    mm = re.search(r"\((\S+)\) is (0x[0-9a-f]+)", out)
    return int(mm.group(2), 16) if mm and mm.group(1) == name else None


def qemu_bare(t, args, what):
    """QEMU with no kernel and no guest (-S); (Popen, QMP) or fatal."""
    sock = t.tmp / "qmp.sock"
    if sock.exists():
        sock.unlink()
    cmd = [common.QEMU, "-machine", "pc,accel=tcg", "-m", "512M",
           "-nodefaults", "-display", "none", "-S",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    for d in guest.DEFAULT_DATA_DIRS:
        cmd += ["-L", d]
    p = subprocess.Popen(cmd + [str(a) for a in args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        return p, guest.QMP(sock, timeout=60)
    except (OSError, EOFError, guest.GuestError) as e:
        p.kill()
        out = p.communicate()[0]
        t.fatal(f"{what}: QEMU did not answer QMP ({e}): {out.strip()}")


def quit_bare(t, p, m, what):
    try:
        m.execute("quit")
    except (EOFError, OSError):
        pass
    m.close()
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    t.check(p.returncode == 0, f"{what}: QEMU quit with status 0 "
            f"({p.returncode})")


def finish_boot(t, g, label, r=None):
    r = r or g.wait()
    t.boots.append((label, r))
    print(f"   [boot {label}] rc={r.rc} qemu_rc={r.qemu_rc} "
          f"total={r.total_time:.1f}s")
    out = r.output()
    print("\n".join("   | " + ln for ln in out.splitlines()[-30:]))
    if r.qemu_stderr.strip():
        print("   qemu stderr: " + r.qemu_stderr.strip())
    if r.rc != 0:
        print("\n".join("   # " + ln for ln in r.lines[-40:]))
    t.check(r.rc == 0, f"boot {label}: guest script exit {r.rc}")
    return out


# -- a. guest RAM on one image ------------------------------------------

SCRIPT_A = common.GUEST_PRELUDE + fill("A", "/tmp/pat", WRITE) + r"""
echo READY
com2_getline
echo "GOT $line"
"""


def case_ram(t):
    img, ctl = t.tmp / "ram.pcow", t.tmp / "ctl-a"
    t.img("create", img, "512M")
    args = (ram_obj(0, img) + ["-machine", "memory-backend=ram0"] +
            common.ctl_args(ctl))
    g = guest.Guest(SCRIPT_A, args, qmp=True, **KW)
    with g:
        try:
            g.wait_for_line(r"^READY$")
            m = g.qmp()
            base = ram_base(m, "ram0")
            t.check(base is not None, "a: gpa2hva 0 is in block ram0 (guest "
                    "RAM is the pcow backend)")
            vmas = range_vmas(g.proc.pid, base or 0, RAM) if base else []
            during = allocated(t, img)
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(ctl))
            s.sendall(b"go\n")
            g.wait_for_line(r"^GOT go")
            s.close()
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.check(False, f"a: {e}")
            vmas, during = [], 0
        out = finish_boot(t, g, "a-ram")
    want = common.md5(page_of("A") * (WRITE // PAGE))
    t.check(f"MD5 A {want}" in out, "a: the guest read back what it wrote "
            "to tmpfs (md5)")

    rss = sum(v.get("Rss", 0) for v in vmas)
    thp = sum(v.get("AnonHugePages", 0) + v.get("FilePmdMapped", 0)
              for v in vmas)
    hg = [hex(v["lo"]) for v in vmas if "hg" in v["flags"]]
    t.note(f"range: {len(vmas)} mappings, RSS {rss / MiB:.1f} MiB, "
           f"{sum('nh' in v['flags'] for v in vmas)} marked nh")
    t.check(vmas and rss > 0, f"a: QEMU maps the range ({len(vmas)} "
            f"mappings, RSS {rss / MiB:.1f} MiB)")
    t.check(vmas and thp == 0, "a: no huge page in the range "
            f"(AnonHugePages + FilePmdMapped = {thp // 1024} kB)")
    t.check(vmas and not hg, "a: no mapping of the range is madvised "
            f"MADV_HUGEPAGE (VmFlags hg: {hg[:4]})")
    t.check(WRITE < during < RAM * 3 // 4, "a: the image is thin after boot "
            f"and workload: {during / MiB:.1f} MiB allocated of 512 MiB "
            f"(> {WRITE // MiB} MiB written, < 384 MiB)")

    t.check_clean(img, "a: image after the guest's poweroff")
    after = allocated(t, img)
    t.check(after >= during, f"a: allocated {after / MiB:.1f} MiB after "
            f"poweroff, at least the {during / MiB:.1f} MiB while running")
    raw = t.to_raw(img)
    n = count_pages(raw, {"A": page_of("A")})["A"]
    raw.unlink()
    t.check(n >= WRITE // PAGE, "a: the image holds the guest's "
            f"{WRITE // PAGE} pages of tmpfs data ({n} found)")
    return img, after


# -- b. prealloc ---------------------------------------------------------

def rss_bare(t, img, extra, what):
    """Start QEMU (-S) with guest RAM on @img; (range RSS, allocated)."""
    p, m = qemu_bare(t, ram_obj(0, img, extra) +
                     ["-machine", "memory-backend=ram0"], what)
    st = m.execute("query-status")["status"]
    base = ram_base(m, "ram0")
    t.check(st == "prelaunch" and base is not None,
            f"{what}: QEMU started ({st}), RAM block ram0")
    rss = sum(v.get("Rss", 0) for v in range_vmas(p.pid, base, RAM)) \
        if base is not None else -1
    alloc = allocated(t, img)
    quit_bare(t, p, m, what)
    t.note(f"{what}: range RSS {rss / MiB:.1f} MiB, allocated "
           f"{alloc / MiB:.1f} MiB")
    return rss, alloc


def case_prealloc(t, used, used_alloc):
    fresh = t.tmp / "fresh.pcow"
    t.img("create", fresh, "512M")
    rss, alloc = rss_bare(t, fresh, ",prealloc=on", "b: fresh, prealloc=on")
    t.check(alloc == 0, f"b: prealloc=on allocated nothing in a fresh image "
            f"({alloc} bytes allocated)")
    t.check(0 <= rss < 16 * MiB, f"b: prealloc=on on a fresh image touched "
            f"no hole ({rss / MiB:.1f} MiB resident)")
    t.check_clean(fresh, "b: fresh image after quit")

    rss0, _ = rss_bare(t, used, "", "b: a's image, no prealloc")
    rss1, alloc1 = rss_bare(t, used, ",prealloc=on", "b: a's image, "
                            "prealloc=on")
    t.check(0 <= rss0 < used_alloc // 4, f"b: without prealloc the range "
            f"starts almost empty ({rss0 / MiB:.1f} MiB resident)")
    t.check(rss1 >= used_alloc * 9 // 10, f"b: prealloc=on prefaulted the "
            f"allocated data ({rss1 / MiB:.1f} MiB resident of "
            f"{used_alloc / MiB:.1f} MiB allocated)")
    t.check(alloc1 == used_alloc, f"b: prealloc=on allocated nothing more "
            f"({alloc1 / MiB:.1f} MiB, was {used_alloc / MiB:.1f} MiB)")
    t.check_clean(used, "b: a's image after quit")


# -- c. NUMA -------------------------------------------------------------

SCRIPT_C = common.GUEST_PRELUDE + r"""
[ -d /sys/devices/system/node/node1 ] || fail "no NUMA node1"
for n in 0 1; do
    echo "NODE$n $(grep MemTotal /sys/devices/system/node/node$n/meminfo)"
    mkdir -p /mnt/n$n
    mount -t tmpfs -o size=48m,mpol=bind:$n tmpfs /mnt/n$n ||
        fail "mount node $n"
done
""" + fill("N0", "/mnt/n0/pat", NODE_WRITE) + fill("N1", "/mnt/n1/pat",
                                                   NODE_WRITE)


def case_numa(t):
    imgs = [t.tmp / f"node{i}.pcow" for i in (0, 1)]
    args = []
    for i, img in enumerate(imgs):
        t.img("create", img, "256M")
        args += ram_obj(i, img) + ["-numa", f"node,nodeid={i},memdev=ram{i}"]
    g = guest.Guest(SCRIPT_C, args, **KW)
    with g:
        out = finish_boot(t, g, "c-numa")
    for i in (0, 1):
        m = re.search(rf"^NODE{i} Node {i} MemTotal:\s+(\d+) kB", out, re.M)
        t.check(m and int(m.group(1)) > 128 * 1024, f"c: the guest's node{i} "
                f"has memory ({m.group(1) if m else '?'} kB)")
        want = common.md5(page_of(f"N{i}") * (NODE_WRITE // PAGE))
        t.check(f"MD5 N{i} {want}" in out, f"c: node{i}'s tmpfs file reads "
                "back (md5)")
    pages = {"N0": page_of("N0"), "N1": page_of("N1")}
    for i, img in enumerate(imgs):
        t.check_clean(img, f"c: node{i}'s image after poweroff")
        raw = t.to_raw(img)
        n = count_pages(raw, pages)
        raw.unlink()
        mine, other = n[f"N{i}"], n[f"N{1 - i}"]
        t.check(mine >= NODE_WRITE // PAGE and other == 0,
                f"c: node{i}'s image holds node{i}'s {NODE_WRITE // PAGE} "
                f"pages ({mine} found) and none of node{1 - i}'s "
                f"({other} found)")


# -- d. refused configurations -------------------------------------------

def refused(t, args, what, expect):
    cmd = [common.QEMU, "-machine", "pc,accel=tcg", "-m", "512M",
           "-nodefaults", "-display", "none", "-S"] + [str(a) for a in args]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=120,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        rc, out = r.returncode, r.stdout.strip()
    except subprocess.TimeoutExpired:
        rc, out = "timeout", ""
    t.note(f"{what}: {out}")
    t.check(rc == 1 and len(out.splitlines()) == 1 and expect in out,
            f"d: {what}: exit 1 ({rc}) with one line naming {expect!r}")


def thp_control(t):
    """The same QEMU with a raw file as guest RAM: ram_block_add madvises
    the range MADV_HUGEPAGE, which the pcow glue undoes (checked in a)."""
    raw = t.tmp / "control.raw"
    with open(raw, "wb") as f:
        f.truncate(RAM)
    p, m = qemu_bare(t, ["-object", f"memory-backend-file,id=ram0,"
                         f"mem-path={raw},size=512M,share=on",
                         "-machine", "memory-backend=ram0"], "d: raw control")
    base = ram_base(m, "ram0")
    vmas = range_vmas(p.pid, base, RAM) if base is not None else []
    quit_bare(t, p, m, "d: raw control")
    raw.unlink()
    t.check(vmas and all("hg" in v["flags"] for v in vmas),
            "d: control: QEMU madvises raw guest RAM MADV_HUGEPAGE (VmFlags "
            f"hg on {sum('hg' in v['flags'] for v in vmas)} of {len(vmas)})")


def case_refused(t):
    img = t.tmp / "d.pcow"
    t.img("create", img, "512M")
    refused(t, ["-mem-path", img], "-mem-path IMG.pcow",
            "-mem-path cannot set it")
    refused(t, ["-mem-path", img] + ram_obj(0, img) +
            ["-machine", "memory-backend=ram0"],
            "-mem-path with -machine memory-backend", "can't be used together")
    hdir = t.tmp / "hugetlbfs"
    hdir.mkdir()
    r = subprocess.run(["mount", "-t", "hugetlbfs", "none", str(hdir)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    if r.returncode != 0:
        t.note("hugetlbfs: not checked (cannot mount it here: "
               f"{r.stdout.strip()})")
        return
    try:
        c = t.img("create", hdir / "h.pcow", "512M", check=False)
        out = c.stdout.strip().splitlines()
        t.check(c.returncode != 0 and out and "Invalid argument" in out[-1],
                f"d: pcow-img create on hugetlbfs fails ({c.returncode}): "
                f"{out[-1] if out else ''}")
        (hdir / "e.pcow").touch()
        refused(t, ram_obj(0, hdir / "e.pcow") +
                ["-machine", "memory-backend=ram0"],
                "an empty file on hugetlbfs", "not a pcow image")
    finally:
        for f in hdir.iterdir():
            f.unlink()
        subprocess.run(["umount", str(hdir)])


def main():
    t = common.Test("guest-ram")
    case_refused(t)
    thp_control(t)
    img, alloc = case_ram(t)
    case_prealloc(t, img, alloc)
    case_numa(t)
    t.finish()


if __name__ == "__main__":
    main()
