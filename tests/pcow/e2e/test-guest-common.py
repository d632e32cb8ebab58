"""Shared helpers of the end-to-end guest tests (tests/pcow/e2e/test-guest-*.py).

Not a test itself (the runner only runs test-*.sh).  Loaded by the tests with

    common = load_common()      # see the top of each test-guest-*.py

Each test boots the Linux test guest of tests/pcow/guest (TCG) on pcow
images through
    -object memory-backend-file,id=ID,mem-path=IMG,format=pcow,share=on
    -device nvdimm,id=nvN,memdev=ID
and checks the guest's view and the host's view (pcow-img) of the images.

Environment: QEMU (qemu-system-x86_64 with format=pcow; default
build/qemu-system-x86_64), PCOW_IMG (pcow-img; default build/pcow-img),
PCOW_E2E_KEEP=1 keeps the temporary directory.  A missing or pcow-less QEMU
is a failure, not a skip: the build must provide it.  The only skip is "not
root" (the guest build installs Debian packages).

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "tests" / "pcow" / "guest"))
import guest  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

QEMU = os.environ.get("QEMU") or str(REPO / "build" / "qemu-system-x86_64")
PCOW_IMG = os.environ.get("PCOW_IMG") or str(REPO / "build" / "pcow-img")


class Test:
    """One end-to-end test: temp dir, checks, boots, result."""

    def __init__(self, name: str):
        self.name = name
        self.t0 = time.monotonic()
        self.failures: list[str] = []
        self.boots: list[tuple[str, guest.GuestResult]] = []
        if os.geteuid() != 0:
            self.skip("not root (the test guest is built from Debian packages "
                      "installed with apt-get)")
        for what, path in (("QEMU", QEMU), ("PCOW_IMG", PCOW_IMG)):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                self.fatal(f"{what}={path} is not an executable (build it: "
                           "./configure && make)")
        help_out = subprocess.run([QEMU, "-object", "memory-backend-file,help"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True).stdout
        if "format=" not in help_out:
            self.fatal(f"{QEMU} has no memory-backend-file format= property "
                       "(not a qemu-pcow build)")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"pcow-e2e-{name}."))
        # The guest's initramfs carries pcow-img too (for the PM-host test;
        # one cached initramfs for all tests).
        os.environ.setdefault("PCOW_IMG", PCOW_IMG)
        print(f"== {name}: QEMU={QEMU} PCOW_IMG={PCOW_IMG} tmp={self.tmp}")
        sys.stdout.flush()

    # -- results --
    def check(self, cond, what: str) -> bool:
        print(("ok   " if cond else "FAIL ") + what)
        sys.stdout.flush()
        if not cond:
            self.failures.append(what)
        return bool(cond)

    def note(self, text: str) -> None:
        print("     " + text)
        sys.stdout.flush()

    def skip(self, why: str):
        print(f"SKIP: {why}")
        sys.exit(77)

    def fatal(self, why: str):
        print(f"FAIL {why}")
        self.failures.append(why)
        self.finish()

    def finish(self):
        dt = time.monotonic() - self.t0
        bt = ", ".join(f"{n} {r.total_time:.1f}s" for n, r in self.boots)
        print(f"== {self.name}: {len(self.boots)} boots ({bt}); "
              f"{dt:.1f} s in all")
        tmp = getattr(self, "tmp", None)
        if self.failures:
            print(f"== {self.name}: {len(self.failures)} FAILED:")
            for f in self.failures:
                print(f"   {f}")
            if tmp:
                print(f"   (files kept in {tmp})")
            sys.exit(1)
        if tmp and not os.environ.get("PCOW_E2E_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"== {self.name}: PASS")
        sys.exit(0)

    # -- host side: pcow-img --
    def img(self, *args, check: bool = True, quiet: bool = False, cwd=None):
        """Run pcow-img (in @cwd if given); return CompletedProcess
        (stdout+stderr in .stdout)."""
        exe = os.path.abspath(PCOW_IMG) if os.sep in PCOW_IMG else PCOW_IMG
        cmd = [exe] + [str(a) for a in args]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, cwd=cwd)
        if not quiet:
            print("   $ pcow-img " + " ".join(str(a) for a in args)
                  + f"  -> exit {r.returncode}")
        if check and r.returncode != 0:
            print(r.stdout)
            self.fatal(f"pcow-img {' '.join(str(a) for a in args)} "
                       f"exited {r.returncode}")
        return r

    def info(self, path) -> dict:
        r = self.img("info", "--output=json", "-U", path, quiet=True)
        return json.loads(r.stdout)

    def clusters(self, path) -> int:
        """Clusters of the active layer (guest-visible data of this image)."""
        return self.info(path)["format-specific"]["data"]["active-clusters"]

    def check_clean(self, path, what: str) -> None:
        """pcow-img check exits 0 and info shows the in-use (dirty) flag off."""
        inf = self.info(path)
        self.check(inf.get("dirty-flag") is False,
                   f"{what}: info dirty-flag false (in-use flag cleared)")
        r = self.img("check", path, check=False)
        self.check(r.returncode == 0,
                   f"{what}: pcow-img check exit 0 (got {r.returncode})"
                   + ("" if r.returncode == 0 else ": " + r.stdout.strip()))

    def to_raw(self, path, raw=None) -> Path:
        raw = Path(raw or str(path) + ".raw")
        if raw.exists():
            raw.unlink()
        self.img("convert", "-O", "raw", path, raw)
        return raw

    # -- guest side --
    def boot(self, label: str, script: str, images, *, expect_rc: int | None = 0,
             **kw) -> guest.GuestResult:
        """Boot the guest with pcow NVDIMMs.  images: list of image paths or
        (path, extra backend options, extra nvdimm options) tuples."""
        args = nvdimm_args(images)
        for k, v in GUEST_KW.items():
            kw.setdefault(k, v)
        kill_on = kw.pop("kill_on", None)
        r = guest.run(script, args, kill_on=kill_on, **kw)
        self.boots.append((label, r))
        bt = f"{r.boot_time:.1f}s" if r.boot_time is not None else "-"
        print(f"   [boot {label}] rc={r.rc} qemu_rc={r.qemu_rc} boot={bt} "
              f"total={r.total_time:.1f}s killed={r.killed}")
        out = r.output()
        if out.strip():
            print("\n".join("   | " + ln for ln in out.splitlines()[-60:]))
        if r.qemu_stderr.strip():
            print("   qemu stderr: " + r.qemu_stderr.strip().replace("\n", "\n   "))
        if expect_rc is not None and r.rc != expect_rc:
            print("   console tail:")
            print("\n".join("   # " + ln for ln in r.lines[-50:]))
        if expect_rc is not None:
            self.check(r.rc == expect_rc,
                       f"boot {label}: guest script exit {r.rc}, expected {expect_rc}")
        sys.stdout.flush()
        return r


# Defaults for every guest.Guest / guest.run of these tests.  no_timer_check:
# on a loaded host the kernel's IO-APIC timer check under TCG can fail and
# panic the guest ("IO-APIC + timer doesn't work!"); the check is useless
# in a VM (KVM guests skip it too).
GUEST_KW = {"qemu": QEMU, "timeout": 240, "append": "no_timer_check"}


def nvdimm_args(images) -> list[str]:
    args: list[str] = []
    for i, im in enumerate(images):
        if isinstance(im, (str, os.PathLike)):
            im = (im, "", "")
        path, obj, dev = (list(im) + ["", ""])[:3]
        obj = f",{obj}" if obj else ""
        dev = f",{dev}" if dev else ""
        args += ["-object", f"memory-backend-file,id=pm{i},mem-path={path},"
                 f"format=pcow,share=on{obj}",
                 "-device", f"nvdimm,id=nv{i},memdev=pm{i}{dev}"]
    return args


def ctl_args(path) -> list[str]:
    """QEMU arguments for COM2 as the host's control line: a unix socket
    server at @path (the guest polls it with com2_ready/com2_getline)."""
    return ["-chardev", f"socket,id=ctl,path={path},server=on,wait=off",
            "-device", "isa-serial,chardev=ctl,index=1"]


def migration_block(tag: str, i: int) -> bytes:
    """Block @i of a migration test's guest: 4 KiB of "@tag block @i"."""
    s = f"{tag} block {i}\n".encode()
    return (s * (4096 // len(s) + 1))[:4096]


def last_iter(lines) -> int:
    """The last "ITER N" a guest printed, 0 if none."""
    n = 0
    for ln in lines:
        m = re.match(r"ITER (\d+)$", ln.strip())
        if m:
            n = int(m.group(1))
    return n


def run_job(m, cmd: str, **args):
    """Run a snapshot-* QMP job to its end over monitor @m; returns its
    error or None."""
    jid = f"{cmd}-{time.monotonic_ns()}"
    m.execute(cmd, {"job-id": jid, **args})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        j = {j["id"]: j for j in m.execute("query-jobs")}.get(jid)
        if j and j["status"] == "concluded":
            m.execute("job-dismiss", id=jid)
            print(f"   (qmp) {cmd} {args} -> {j.get('error', 'ok')}")
            return j.get("error")
        time.sleep(0.2)
    raise guest.GuestError(f"{cmd}: job not concluded after 600 s")


def wait_migration(m, timeout: float = 180) -> dict:
    """query-migrate once the migration completed, failed or was
    cancelled; on a timeout its "status" says so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = m.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.2)
    return {"status": f"still not done after {timeout} s"}


def pattern(seed, size: int) -> bytes:
    """Deterministic pseudo-random bytes (never all zero)."""
    return random.Random(repr(seed)).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_at(path, off: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def touched_clusters(writes, cluster: int) -> set[int]:
    """Cluster indexes covered by [(offset, length), ...]."""
    s: set[int] = set()
    for off, n in writes:
        s.update(range(off // cluster, (off + n - 1) // cluster + 1))
    return s


# Shell helpers put in front of each guest script.
GUEST_PRELUDE = r"""
# pmem device (name, e.g. pmem1) whose size is $1 bytes
pmem_of_size() {
    for d in /sys/block/pmem*; do
        [ -e "$d" ] || continue
        if [ "$(( $(cat $d/size) * 512 ))" = "$1" ]; then
            basename $d; return 0
        fi
    done
    return 1
}
fail() { echo "GUEST-FAIL $*"; exit 1; }
# COM2 (the host's control line) without its interrupt, which a TCG guest
# was seen to lose across a migration: poll the line status register
# through /dev/port and read the receive buffer a byte at a time.  The
# port is never opened, so the kernel's driver leaves it alone.
com2_in() { dd if=/dev/port bs=1 skip=$1 count=1 2>/dev/null | od -An -tu1; }
com2_ready() {
    v=$(com2_in 765)
    [ -n "$v" ] || fail "cannot read COM2's line status"
    [ $((v & 1)) -eq 1 ]
}
# The next line the host sent on COM2, in $line.
com2_getline() {
    line=
    while :; do
        com2_ready || { usleep 50000; continue; }
        c=$(com2_in 760)
        [ "$c" -eq 10 ] && return 0
        line="$line$(printf "\\$(printf %o "$c")")"
    done
}
"""
