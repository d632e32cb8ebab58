#!/usr/bin/env python3
"""Boot the qemu-pcow Linux test guest under TCG and run a shell script in it.

Module use (Python 3.11 stdlib only):

    import sys; sys.path.insert(0, "tests/pcow/guest"); import guest

    r = guest.run(script, qemu_args=["-object", "memory-backend-file,...",
                                     "-device", "nvdimm,id=nv0,memdev=pm"])
    r.rc          # exit code of the script (None: no PCOW-GUEST-EXIT marker)
    r.lines       # console lines ("\r" stripped); r.log is the log file

    # background + SIGKILL when the guest prints a line (crash tests)
    with guest.Guest(script, qemu_args, qmp=True) as g:
        g.wait_for_line(r"^WRITING")
        g.qmp().execute("query-status")
        g.kill()
        r = g.wait()

    r = guest.run(script, qemu_args, kill_on=r"^WRITING")   # same, one call

CLI:  guest.py build
      guest.py run [options] SCRIPT [-- QEMU-ARGS...]   (exit status = guest rc)

See README in this directory for the console markers and measured times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_OUTDIR = Path(os.environ.get("PCOW_GUEST_OUT", HERE / "out"))
DEFAULT_QEMU = os.environ.get("QEMU", str(REPO / "build" / "qemu-system-x86_64"))
# Firmware (SeaBIOS, linuxboot_dma.bin): Debian's seabios + qemu-system-data.
DEFAULT_DATA_DIRS = [d for d in os.environ.get(
    "QEMU_DATA_DIRS", "/usr/share/seabios:/usr/share/qemu").split(":")
    if d and os.path.isdir(d)]

EXIT_RE = re.compile(r"PCOW-GUEST-EXIT (-?\d+)")
START_MARK = "PCOW-GUEST-START"


class GuestError(Exception):
    pass


# --------------------------------------------------------------------------
# initramfs

_build_lock = threading.Lock()
_built: dict[str, Path] = {}


def build_initramfs(outdir: str | os.PathLike | None = None,
                    pcow_img: str | None = None) -> Path:
    """Run build-initramfs.sh (cached by input hash); return the directory
    holding vmlinuz, base.cpio.{zst,gz}, fio.cpio.{zst,gz}."""
    outdir = str(outdir or DEFAULT_OUTDIR)
    pcow_img = pcow_img if pcow_img is not None else os.environ.get("PCOW_IMG", "")
    key = f"{outdir}\0{pcow_img}"
    with _build_lock:
        if key not in _built:
            env = dict(os.environ, PCOW_IMG=pcow_img)
            out = subprocess.run([str(HERE / "build-initramfs.sh"), outdir], env=env,
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            _built[key] = Path(out.strip().splitlines()[-1]).resolve()
        return _built[key]


def _layer(d: Path, name: str) -> Path:
    for ext in ("zst", "gz"):
        p = d / f"{name}.cpio.{ext}"
        if p.exists():
            return p
    raise GuestError(f"no {name}.cpio.* in {d}")


def make_cpio(files: dict[str, bytes | str | os.PathLike], mode: int = 0o755) -> bytes:
    """newc cpio archive with the given files (guest path -> content; str is
    text, a Path is read from the host).  Parent directories are added."""
    out = bytearray()
    ino = [1000]

    def entry(name: str, m: int, data: bytes = b"") -> None:
        ino[0] += 1
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino[0], m, 0, 0, 2 if m & 0o040000 else 1, 0, len(data),
            0, 0, 0, 0, len(nb), 0))
        out.extend(hdr.encode() + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    dirs: set[str] = set()
    for path, content in files.items():
        path = path.strip("/")
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entry(d, 0o040755)
        if isinstance(content, os.PathLike):
            data = Path(content).read_bytes()
        elif isinstance(content, str):
            data = content.encode()
        else:
            data = bytes(content)
        entry(path, 0o100000 | mode, data)
    entry("TRAILER!!!", 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


# --------------------------------------------------------------------------
# QMP

class QMPError(Exception):
    def __init__(self, cmd: str, error: dict):
        super().__init__(f"{cmd}: {error.get('class')}: {error.get('desc')}")
        self.error = error


class QMP:
    """Minimal QMP client over a unix socket: QMP(path).execute(cmd, **args)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 10.0):
        self.path = str(path)
        self.timeout = timeout
        self.events: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        s.settimeout(timeout)
        self.sock = s
        self._f = s.makefile("rb")
        self.greeting = self._recv()
        if "QMP" not in self.greeting:
            raise GuestError(f"bad QMP greeting {self.greeting!r}")
        self.execute("qmp_capabilities")

    def _recv(self) -> dict:
        line = self._f.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def execute(self, cmd: str, args: dict | None = None, **kwargs):
        """Run a command; return its "return" value or raise QMPError.
        Events received meanwhile are appended to self.events."""
        msg: dict = {"execute": cmd}
        a = dict(args or {}, **kwargs)
        if a:
            msg["arguments"] = a
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._recv()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise QMPError(cmd, r["error"])
            if "return" in r:
                return r["return"]

    def hmp(self, command: str) -> str:
        return self.execute("human-monitor-command", {"command-line": command})

    def close(self) -> None:
        try:
            self._f.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# --------------------------------------------------------------------------
# guest

@dataclass
class GuestResult:
    rc: int | None                 # script exit code; None = no EXIT marker
    lines: list[str]               # console lines
    log: Path | None               # console log file (None: deleted, see wait())
    boot_time: float | None        # seconds from QEMU start to PCOW-GUEST-START
    total_time: float              # seconds from QEMU start to QEMU exit
    killed: bool = False           # we killed QEMU (kill()/kill_on)
    timed_out: bool = False        # timeout hit (QEMU was SIGKILLed)
    qemu_rc: int | None = None     # QEMU's exit status (-9 = SIGKILL)
    qemu_stderr: str = ""
    errors: list[str] = field(default_factory=list)  # PCOW-GUEST-ERROR lines

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def output(self) -> str:
        """Console text between PCOW-GUEST-START and PCOW-GUEST-EXIT."""
        out, on = [], False
        for ln in self.lines:
            if EXIT_RE.search(ln):
                break
            if on:
                out.append(ln)
            if ln.strip() == START_MARK:
                on = True
        return "\n".join(out)


class Guest:
    """One boot of the test guest.  start() launches QEMU in the background;
    wait() collects the result.  Also a context manager (kills on exit)."""

    def __init__(self, script: str, qemu_args: list[str] | tuple = (), *,
                 qemu: str | None = None, files: dict | None = None,
                 fio: bool = False, mem: str = "512M", maxmem: str = "8G",
                 smp: int = 1, timeout: float = 300, log: str | os.PathLike | None = None,
                 qmp: bool | str | os.PathLike = False, append: str = "",
                 pmem: int | None = None, outdir: str | None = None,
                 pcow_img: str | None = None, echo: bool = False,
                 data_dirs: list[str] | None = None, kernel: str | None = None):
        self.script = script
        self.qemu_args = [str(a) for a in qemu_args]
        self.qemu = qemu or DEFAULT_QEMU
        self.files = dict(files or {})
        self.fio = fio
        self.mem, self.maxmem, self.smp = mem, maxmem, smp
        self.timeout = timeout
        self.append = append
        if pmem is None:  # wait for as many pmem devices as NVDIMMs were given
            pmem = sum(1 for i, a in enumerate(self.qemu_args)
                       if a == "-device" and i + 1 < len(self.qemu_args)
                       and re.match(r"(nvdimm|virtio-pmem)", self.qemu_args[i + 1]))
        self.pmem = pmem
        self.outdir, self.pcow_img = outdir, pcow_img
        self.echo = echo
        self.kernel = kernel
        self.data_dirs = DEFAULT_DATA_DIRS if data_dirs is None else data_dirs
        self._tmp = tempfile.mkdtemp(prefix="pcow-guest-")
        self.log = Path(log) if log else Path(self._tmp) / "console.log"
        if qmp is True:
            self.qmp_path: str | None = os.path.join(self._tmp, "qmp.sock")
        else:
            self.qmp_path = str(qmp) if qmp else None
        self.lines: list[str] = []
        self.times: list[float] = []   # host time (since start) of each line
        self._cond = threading.Condition()
        self._cursor = 0
        self._eof = False
        self.proc: subprocess.Popen | None = None
        self.killed = False
        self.timed_out = False
        self._qmp: QMP | None = None
        self._result: GuestResult | None = None

    # -- setup --
    def command(self, initrd: str, kernel: str) -> list[str]:
        cmdline = f"console=ttyS0 quiet panic=-1 no_timer_check pcow.pmem={self.pmem} {self.append}".strip()
        cmd = [self.qemu, "-machine", "pc,nvdimm=on,accel=tcg", "-cpu", "max",
               "-m", f"{self.mem},slots=4,maxmem={self.maxmem}", "-smp", str(self.smp),
               "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
               "-kernel", kernel, "-initrd", initrd, "-append", cmdline]
        for d in self.data_dirs:
            cmd += ["-L", d]
        if self.qmp_path:
            cmd += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        return cmd + self.qemu_args

    def start(self) -> "Guest":
        if not (os.path.isfile(self.qemu) and os.access(self.qemu, os.X_OK)):
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise GuestError(f"QEMU binary {self.qemu} not found "
                             "(build it, or set QEMU= / pass qemu=)")
        d = build_initramfs(self.outdir, self.pcow_img)
        initrd = os.path.join(self._tmp, "initrd")
        with open(initrd, "wb") as f:
            layers = [_layer(d, "base")] + ([_layer(d, "fio")] if self.fio else [])
            for p in layers:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f)
                f.write(b"\0" * (-f.tell() % 512))  # next cpio must be aligned
            f.write(make_cpio({"test.sh": self.script, **self.files}))
        kernel = self.kernel or str(d / "vmlinux" if (d / "vmlinux").exists()
                                    else d / "vmlinuz")
        self.cmd = self.command(initrd, kernel)
        self._logf = open(self.log, "w")
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._reader, daemon=True).start()
        self._errthr = threading.Thread(
            target=lambda: self._stderr.append(self.proc.stderr.read()), daemon=True)
        self._errthr.start()
        return self

    def _reader(self) -> None:
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            self._add(done)
        self._add([buf] if buf else [])
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _add(self, raw: list[bytes]) -> None:
        if not raw:
            return
        t = time.monotonic() - self._t0
        with self._cond:
            for b in raw:
                ln = b.decode("utf-8", "replace").replace("\r", "")
                self.lines.append(ln)
                self.times.append(t)
                self._logf.write(ln + "\n")
                if self.echo:
                    print(ln, file=sys.stderr)
            self._logf.flush()
            self._cond.notify_all()

    # -- control --
    def wait_for_line(self, pattern: str, timeout: float | None = None) -> str:
        """Block until a console line (after the previous match) matches the
        regex; return it.  Raises GuestError on timeout or QEMU exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                while self._cursor < len(self.lines):
                    ln = self.lines[self._cursor]
                    self._cursor += 1
                    if rx.search(ln):
                        return ln
                if self._eof:
                    raise GuestError(f"QEMU exited before {pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(f"timeout waiting for {pattern!r}")
                self._cond.wait(left)

    def qmp(self, timeout: float = 10.0) -> QMP:
        if not self.qmp_path:
            raise GuestError("Guest started without qmp=")
        if self._qmp is None:
            self._qmp = QMP(self.qmp_path, timeout)
        return self._qmp

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.killed = True
            self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> GuestResult:
        if self._result:
            return self._result
        left = self.timeout - (time.monotonic() - self._t0) if timeout is None else timeout
        try:
            self.proc.wait(max(left, 0))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.proc.kill()
            self.proc.wait()
        total = time.monotonic() - self._t0
        with self._cond:
            self._cond.wait_for(lambda: self._eof, 5)
        if self._qmp:
            self._qmp.close()
        self._logf.close()
        rc = boot = None
        errors = []
        for ln, t in zip(self.lines, self.times):
            if boot is None and ln.strip() == START_MARK:
                boot = t
            if "PCOW-GUEST-ERROR" in ln:
                errors.append(ln)
            m = EXIT_RE.search(ln)
            if m:
                rc = int(m.group(1))
        self._errthr.join(5)
        self._result = GuestResult(
            rc=rc, lines=list(self.lines), log=self.log, boot_time=boot,
            total_time=total, killed=self.killed, timed_out=self.timed_out,
            qemu_rc=self.proc.returncode,
            qemu_stderr=b"".join(self._stderr).decode("utf-8", "replace"),
            errors=errors)
        # The private temp dir goes; if it holds the console log (no log=
        # given), it stays only when the run failed (rc != 0 and not killed).
        failed = rc != 0 and not self.killed
        if Path(self._tmp) in self.log.parents and failed:
            try:
                os.unlink(os.path.join(self._tmp, "initrd"))
            except OSError:
                pass
        else:
            if Path(self._tmp) in self.log.parents:
                self._result.log = None
            shutil.rmtree(self._tmp, ignore_errors=True)
        return self._result

    def __enter__(self) -> "Guest":
        return self.start() if self.proc is None else self

    def __exit__(self, *a) -> None:
        self.kill()
        if self.proc:
            self.wait()


def run(script: str, qemu_args: list[str] | tuple = (), *, kill_on: str | None = None,
        kill_delay: float = 0.0, **kw) -> GuestResult:
    """Boot, run script, return the GuestResult.  kill_on: regex; when a
    console line matches, QEMU gets SIGKILL (after kill_delay seconds)."""
    g = Guest(script, qemu_args, **kw).start()
    if kill_on:
        try:
            g.wait_for_line(kill_on)
            if kill_delay:
                time.sleep(kill_delay)
            g.kill()
        except GuestError:
            pass
    return g.wait()


# --------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build/refresh the cached initramfs")
    b.add_argument("--outdir")
    r = sub.add_parser("run", help="boot and run SCRIPT; exit status = its rc")
    r.add_argument("script", help="shell script file to run as /test.sh")
    r.add_argument("qemu_args", nargs=argparse.REMAINDER,
                   help="after --: extra QEMU arguments (e.g. -object/-device)")
    r.add_argument("--qemu", help="QEMU binary (default $QEMU or build/qemu-system-x86_64)")
    r.add_argument("--timeout", type=float, default=300)
    r.add_argument("--log", help="console log file")
    r.add_argument("--fio", action="store_true", help="include the fio layer")
    r.add_argument("--mem", default="512M")
    r.add_argument("--smp", type=int, default=1)
    r.add_argument("--qmp", help="QMP unix socket path")
    r.add_argument("--append", default="", help="extra kernel command line")
    r.add_argument("--pmem", type=int, help="pmem devices to wait for (default: #nvdimm)")
    r.add_argument("--kill-on", help="SIGKILL QEMU when a console line matches")
    r.add_argument("--file", action="append", default=[], metavar="GUEST=HOST",
                   help="extra file for the guest initramfs")
    r.add_argument("--outdir")
    r.add_argument("-q", "--quiet", action="store_true", help="don't echo the console")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        print(build_initramfs(a.outdir))
        return 0
    qargs = a.qemu_args[1:] if a.qemu_args[:1] == ["--"] else a.qemu_args
    files = {}
    for spec in a.file:
        g, _, h = spec.partition("=")
        files[g] = Path(h)
    res = run(Path(a.script).read_text(), qargs, kill_on=a.kill_on, qemu=a.qemu,
              timeout=a.timeout, log=a.log, fio=a.fio, mem=a.mem, smp=a.smp,
              qmp=a.qmp or False, append=a.append, pmem=a.pmem, files=files,
              outdir=a.outdir, echo=not a.quiet)
    bt = f"{res.boot_time:.2f}s" if res.boot_time is not None else "-"
    print(f"guest.py: rc={res.rc} boot={bt} total={res.total_time:.2f}s "
          f"killed={res.killed} timed_out={res.timed_out} qemu_rc={res.qemu_rc} "
          f"log={res.log}", file=sys.stderr)
    if res.qemu_stderr.strip():
        print(res.qemu_stderr.rstrip(), file=sys.stderr)
    if res.rc is None:
        return 125
    return res.rc & 255


if __name__ == "__main__":
    sys.exit(main())
