#!/usr/bin/env python3
"""An incoming state that never hands the image over is not run on.

With migrate-data=none (the default) a destination opens its pcow image
only when the stream's pcow-image/ID section hands it over; until then its
RAM block is an anonymous placeholder.  A stream without that section (its
source had no such pcow backend, or was not a migration of one) must not
let the guest run on the placeholder: QEMU's activation of images after
the load fails, naming the backend and the image, the VM stays stopped,
cont is refused with the same line, and the image is byte for byte
unchanged.  No guest OS: both QEMUs run SeaBIOS, once started paused (-S)
and once running.

Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(REPO, "tests", "pcow", "guest"))
import guest  # noqa: E402

QEMU = os.environ.get("QEMU") or os.path.join(REPO, "build",
                                              "qemu-system-x86_64")
PCOW_IMG = os.environ.get("PCOW_IMG") or os.path.join(REPO, "build",
                                                      "pcow-img")
BASE = ["-machine", "pc,nvdimm=on,accel=tcg", "-m", "256M,slots=4,maxmem=4G",
        "-nodefaults", "-display", "none"]
MSG = "the incoming state did not hand over pcow image"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def qemu(args, qmp_path, stderr):
    return subprocess.Popen([QEMU] + BASE + args +
                            ["-qmp", f"unix:{qmp_path},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=stderr)


def wait_status(m, want, timeout=60):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = m.execute("query-migrate").get("status")
        if st in want:
            break
        time.sleep(0.1)
    return st


def case(tmp, img, paused):
    tag = "paused" if paused else "running"
    state = os.path.join(tmp, f"state-{tag}")
    src = qemu(["-S"] if paused else [], os.path.join(tmp, f"src-{tag}"),
               subprocess.DEVNULL)
    try:
        with guest.QMP(os.path.join(tmp, f"src-{tag}")) as m:
            m.execute("migrate", uri=f"exec:cat > {state}")
            st = wait_status(m, ("completed", "failed"))
            check(st == "completed", f"{tag} source: saved ({st})")
            m.execute("quit")
    finally:
        src.wait(timeout=60)
    errf = open(os.path.join(tmp, f"dst-{tag}.err"), "w+")
    before = md5(img)
    dst = qemu(["-object", f"memory-backend-file,id=pm0,mem-path={img},"
                "format=pcow,share=on", "-device", "nvdimm,id=nv0,memdev=pm0",
                "-incoming", f"exec:cat {state}"],
               os.path.join(tmp, f"dst-{tag}"), errf)
    try:
        with guest.QMP(os.path.join(tmp, f"dst-{tag}")) as m:
            st = wait_status(m, ("completed", "failed"))
            check(st == "completed", f"{tag}: the stream loaded ({st})")
            time.sleep(0.5)
            vm = m.execute("query-status")
            check(not vm["running"], f"{tag}: the VM did not start "
                  f"({vm['status']})")
            err = ""
            try:
                m.execute("cont")
            except guest.QMPError as e:
                err = str(e)
            check(MSG in err and "pm0" in err and img in err,
                  f"{tag}: cont refused naming backend and image ({err!r})")
            vm = m.execute("query-status")
            check(not vm["running"], f"{tag}: still stopped after cont "
                  f"({vm['status']})")
            m.execute("quit")
    finally:
        dst.wait(timeout=60)
    errf.seek(0)
    text = errf.read().strip()
    if not paused:
        check(MSG in text, f"{tag}: QEMU said why it did not start "
              f"({text!r})")
    check(md5(img) == before, f"{tag}: the image is byte for byte unchanged")


def main():
    if not (os.path.isfile(QEMU) and os.access(QEMU, os.X_OK)):
        print(f"FAIL no QEMU at {QEMU}")
        sys.exit(1)
    tmp = tempfile.mkdtemp(prefix="pcow-e2e-nohandover.")
    try:
        img = os.path.join(tmp, "a.pcow")
        subprocess.run([PCOW_IMG, "create", "-q", "-f", "pcow", img, "1G"],
                       check=True)
        case(tmp, img, paused=True)
        case(tmp, img, paused=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} FAILED")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
