#!/usr/bin/env python3
"""An image truncated behind QEMU's back (issue 16, item 2).

The pcow lock is advisory: `truncate -s 4096 img` succeeds while QEMU runs.
Then the image's metadata mappings end at 4 KiB, and touching them raises
SIGBUS.  query-pcow, HMP info pcow, pcow-snapshot-create and -delete used
to do just that and QEMU died.  Each must now fail with a one-line error
that names the image once, and QEMU (its VM running SeaBIOS, no guest
OS: the guest never touches the NVDIMM) must keep running and answering.

Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


class QMP:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("r")
        self._read()                        # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            line = self.rfile.readline()
            if not line:
                raise EOFError("QMP connection closed (QEMU died?)")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, command, **args):
        """The reply: ("ok", return value) or ("error", description)."""
        req = {"execute": command}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        msg = self._read()
        if "error" in msg:
            return "error", msg["error"]["desc"]
        return "ok", msg["return"]


def main():
    qemu = os.environ.get("QEMU", "")
    pcow_img = os.environ.get("PCOW_IMG", "")
    for var, path in (("QEMU", qemu), ("PCOW_IMG", pcow_img)):
        if not path or not os.access(path, os.X_OK):
            print(f"SKIP: {var} is not set to an executable ('{path}')")
            return 77

    fails = 0
    count = 0

    def check(cond, what):
        nonlocal fails, count
        count += 1
        if not cond:
            fails += 1
        print(("ok   " if cond else "FAIL ") + what)
        return cond

    tmp = tempfile.mkdtemp(prefix="pcow-qmp-truncated.")
    img = os.path.join(tmp, "t.pcow")
    sock = os.path.join(tmp, "qmp.sock")
    proc = None
    try:
        subprocess.run([pcow_img, "create", "-q", "-f", "pcow", img, "64M"],
                       check=True)
        proc = subprocess.Popen(
            [qemu, "-machine", "pc,nvdimm=on,accel=tcg",
             "-m", "128M,slots=2,maxmem=4G", "-display", "none",
             "-nodefaults", "-S",
             "-object", "memory-backend-file,id=pm,mem-path=" + img +
             ",format=pcow,share=on",
             "-device", "nvdimm,id=nv0,memdev=pm",
             "-qmp", "unix:" + sock + ",server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(300):
            if os.path.exists(sock) or proc.poll() is not None:
                break
            time.sleep(0.1)
        q = QMP(sock)
        r = q.cmd("pcow-snapshot-create", id="pm", name="s0")
        check(r[0] == "ok", f"snapshot s0 before the truncation: {r[0]}")
        r = q.cmd("cont")
        size = os.path.getsize(img)
        os.truncate(img, 4096)
        print(f"     truncated {img} from {size} to 4096 bytes")

        def expect_error(what, reply):
            msg = str(reply[1])
            check(reply[0] == "error" and msg.count(img) == 1 and
                  "truncated" in msg and "\n" not in msg,
                  f"{what}: one line naming the image once: {msg}")
            check(proc.poll() is None, f"{what}: QEMU still runs")

        expect_error("query-pcow", q.cmd("query-pcow"))
        expect_error("pcow-snapshot-create",
                     q.cmd("pcow-snapshot-create", id="pm", name="s1"))
        expect_error("pcow-snapshot-delete",
                     q.cmd("pcow-snapshot-delete", id="pm", name="s0"))
        r = q.cmd("human-monitor-command", **{"command-line": "info pcow"})
        check(r[0] == "ok" and r[1].count(img) == 1 and "truncated" in r[1],
              f"HMP info pcow: error naming the image once: {r[1]!r}")
        r = q.cmd("query-status")
        check(r[0] == "ok" and r[1].get("running") is True,
              f"the VM is still running: {r[1]}")
        q.cmd("quit")
        rc = proc.wait(timeout=60)
        check(rc >= 0, f"QEMU exits without a signal on quit (status {rc})")
    except (EOFError, OSError, subprocess.SubprocessError) as e:
        status = None
        if proc:
            try:
                status = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        err = proc.stderr.read() if proc and status is not None else ""
        check(False, f"QEMU did not survive: {e}; exit status {status}"
              f"{' (signal %d)' % -status if status and status < 0 else ''}"
              f"; stderr: {err.strip()}")
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{count - fails}/{count} checks passed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
