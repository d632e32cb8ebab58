#!/usr/bin/env python3
"""QMP/HMP against careless administrators (issue 16 items 4 to 8).

No guest boots: QEMU runs "-machine none" with memory-backend-file objects
(format=pcow) that nothing maps, which is all the management commands
need, and QMP on a unix socket.  The VM is running (no -S), so vm_stop()
shows as a STOP event.

4  New snapshot names with control characters are refused (QMP and HMP);
   names from images made elsewhere (pcow-io-helper snapshot-any) are
   printed by HMP "info pcow" as \\xHH, one line per snapshot.
5  pcow-snapshot-delete keeps names and ids apart: name="N" is only ever
   the name "N", snapshot-id=N the id; both must match the same snapshot;
   HMP pcow_snapshot_delete takes a name, or an id with -i.
6  A refused create or delete (duplicate, over-long or bad name, unknown
   snapshot) never pauses the guest: no STOP or RESUME event, while a
   successful one emits both.
7  While a migration runs (held in pre-switchover), create and delete are
   refused with an error that says so; after migrate_cancel they work.
8  A second backend on the same image (or on a base of it) names the first
   one instead of "another process".
Mappings (issue 11): query-pcow's vmas-needed of an image written out of
guest order is pcow-img info's "VMAs needed", the backend holds that many
(vmas), maps it at open (lazy-mapping false), and HMP info pcow says so.

Env: QEMU, PCOW_IMG, BUILD (for pcow-io-helper).  Exit 0 pass, 77 skip,
1 fail.

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "tests" / "pcow" / "guest"))
import guest  # noqa: E402

BUILD = Path(os.environ.get("BUILD") or REPO / "build")
QEMU = os.environ.get("QEMU") or str(BUILD / "qemu-system-x86_64")
PCOW_IMG = os.environ.get("PCOW_IMG") or str(BUILD / "pcow-img")
HELPER = str(BUILD / "tests" / "pcow" / "img" / "pcow-io-helper")

fails = 0


def check(cond, what):
    global fails
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        fails += 1
    return cond


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


class Qemu:
    """QEMU -machine none with pcow backends @objs and QMP on a socket."""

    def __init__(self, tmp, name, objs):
        self.sock = tmp / f"{name}.qmp"
        args = [QEMU, "-machine", "none", "-display", "none", "-nodefaults",
                "-qmp", f"unix:{self.sock},server=on,wait=off"]
        for o in objs:
            args += ["-object", o]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.qmp = guest.QMP(self.sock, timeout=30)

    def error(self, cmd, **args):
        """The error desc of @cmd, or None if it succeeded."""
        try:
            self.qmp.execute(cmd, **args)
        except guest.QMPError as e:
            return e.error.get("desc", "")
        return None

    def pause_events(self):
        """STOP/RESUME events since the last call (a query flushes them)."""
        self.qmp.execute("query-status")
        ev = [e["event"] for e in self.qmp.events
              if e["event"] in ("STOP", "RESUME")]
        self.qmp.events.clear()
        return ev

    def snapshots(self, bid="pm0"):
        for e in self.qmp.execute("query-pcow"):
            if e["id"] == bid:
                return {s["id"]: s["name"] for s in e["snapshots"]}
        return None

    def close(self):
        try:
            self.qmp.execute("quit")
        except (EOFError, OSError):
            pass
        self.qmp.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def backend(bid, path):
    return f"memory-backend-file,id={bid},mem-path={path},format=pcow,share=on"


def names_and_escapes(vm, tmp):
    """Item 4."""
    for bad in ("two\nlines", "esc\x1b[2J", "tab\tx", "del\x7f"):
        err = vm.error("pcow-snapshot-create", id="pm0", name=bad)
        check(err is not None and "control characters" in err,
              f"QMP create refuses {bad!r}: {err}")
    out = vm.qmp.hmp('pcow_snapshot_create pm0 "hmp\\nname"')
    check("control characters" in out, f"HMP create refuses a newline: "
          f"{out.strip()!r}")
    check("hmp\nname" not in vm.snapshots().values(),
          "nothing was created by the refused commands")
    info = vm.qmp.hmp("info pcow")
    raw = [c for c in info if (ord(c) < 0x20 and c not in "\r\n")
           or 0x7f <= ord(c) < 0xa0]
    check(not raw, f"info pcow prints no control character ({raw!r})")
    check("evil\\x0a" in info and "\\x1b[31mred" in info,
          "info pcow prints names from elsewhere as \\xHH")
    rows = [ln for ln in info.splitlines() if "forged" in ln]
    check(len(rows) == 1 and "evil" in rows[0],
          f"the newline in a name forges no row: {rows!r}")


def no_pause_on_refusal(vm):
    """Item 6 (after item 4's snapshots: "evil..." and "\\x1b..." exist)."""
    vm.pause_events()
    vm.qmp.execute("pcow-snapshot-create", id="pm0", name="dup")
    check(vm.pause_events() == ["STOP", "RESUME"],
          "a successful create pauses and resumes the guest")
    cases = [
        ("pcow-snapshot-create", {"name": "dup"}, "already exists"),
        ("pcow-snapshot-create", {"name": "n" * 256}, "1..255"),
        ("pcow-snapshot-create", {"name": ""}, "1..255"),
        ("pcow-snapshot-create", {"name": "a\nb"}, "control characters"),
        ("pcow-snapshot-delete", {"name": "nosuch"}, "no snapshot named"),
        ("pcow-snapshot-delete", {"snapshot-id": 999}, "no snapshot with id"),
        ("pcow-snapshot-delete", {}, "name or snapshot-id"),
    ]
    for cmd, args, want in cases:
        err = vm.error(cmd, id="pm0", **args)
        ev = vm.pause_events()
        short = {k: (v[:12] + "..." if isinstance(v, str) and len(v) > 12
                     else v) for k, v in args.items()}
        check(err is not None and want in err and not ev,
              f"{cmd} {short}: error '{want}', no STOP/RESUME "
              f"(events {ev}; {err})")
    check(vm.qmp.execute("query-status")["running"], "the VM still runs")


def ids_and_names(vm):
    """Item 5."""
    for n in ("a", "b"):
        vm.qmp.execute("pcow-snapshot-create", id="pm0", name=n)
    sn = vm.snapshots()
    by_name = {v: k for k, v in sn.items()}
    bid = by_name["b"]
    # a snapshot whose name is the id of "b"
    vm.qmp.execute("pcow-snapshot-create", id="pm0", name=str(bid))
    sn = vm.snapshots()
    num_id = {v: k for k, v in sn.items()}[str(bid)]
    aid = by_name["a"]
    check(str(aid) not in sn.values(), "no snapshot is named like a's id")
    err = vm.error("pcow-snapshot-delete", id="pm0", name=str(aid))
    check(err is not None and f"no snapshot named '{aid}'" in err and
          vm.snapshots() == sn,
          f"name='{aid}' is a name, never id {aid}: refused ({err})")
    vm.qmp.execute("pcow-snapshot-delete", id="pm0", name=str(bid))
    after = vm.snapshots()
    check(num_id not in after and bid in after,
          f"name='{bid}' deletes the snapshot named '{bid}' (id {num_id}), "
          f"not id {bid}")
    err = vm.error("pcow-snapshot-delete", id="pm0", name="a",
                   **{"snapshot-id": bid})
    check(err is not None and vm.snapshots() == after,
          f"name and snapshot-id of two snapshots: refused ({err})")
    vm.qmp.execute("pcow-snapshot-delete", id="pm0", **{"snapshot-id": bid})
    after = vm.snapshots()
    check(bid not in after and aid in after, f"snapshot-id={bid} deletes b")
    vm.qmp.execute("pcow-snapshot-delete", id="pm0", name="a",
                   **{"snapshot-id": aid})
    check(aid not in vm.snapshots(), "name and snapshot-id of one snapshot")
    vm.qmp.execute("pcow-snapshot-create", id="pm0", name="c")
    cid = {v: k for k, v in vm.snapshots().items()}["c"]
    out = vm.qmp.hmp(f"pcow_snapshot_delete pm0 {cid}")
    check(f"no snapshot named '{cid}'" in out and cid in vm.snapshots(),
          f"HMP: a number without -i is a name ({out.strip()})")
    out = vm.qmp.hmp(f"pcow_snapshot_delete -i pm0 {cid}")
    check(out.strip() == "" and cid not in vm.snapshots(),
          f"HMP -i {cid} deletes id {cid} ({out.strip()!r})")


def during_migration(vm):
    """Item 7."""
    vm.qmp.execute("pcow-snapshot-create", id="pm0", name="pre-mig")
    vm.qmp.execute("migrate-set-capabilities", capabilities=[
        {"capability": "pause-before-switchover", "state": True}])
    vm.qmp.execute("migrate", uri="exec:cat > /dev/null")
    status, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline:
        status = vm.qmp.execute("query-migrate").get("status")
        if status == "pre-switchover":
            break
        time.sleep(0.05)
    if not check(status == "pre-switchover",
                 f"migration held before switchover ({status})"):
        return
    err = vm.error("pcow-snapshot-create", id="pm0", name="mig")
    check(err is not None and "migration is in progress" in err,
          f"create refused during migration: {err}")
    err = vm.error("pcow-snapshot-delete", id="pm0", name="pre-mig")
    check(err is not None and "migration is in progress" in err,
          f"delete refused during migration: {err}")
    check("mig" not in vm.snapshots().values() and
          "pre-mig" in vm.snapshots().values(), "the image is unchanged")
    vm.qmp.execute("migrate_cancel")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = vm.qmp.execute("query-migrate").get("status")
        if status == "cancelled":
            break
        time.sleep(0.05)
    check(status == "cancelled", f"migration cancelled ({status})")
    err = vm.error("pcow-snapshot-create", id="pm0", name="mig")
    check(err is None, f"after the cancel, create works ({err})")


def mapping_counts(vm, top):
    """query-pcow and HMP against pcow-img info, for pm2 (@top)."""
    out = subprocess.run([PCOW_IMG, "info", "-U", "--output=json", str(top)],
                         check=True, capture_output=True, text=True).stdout
    needed = json.loads(out)["format-specific"]["data"]["vmas-needed"]
    st = [e["statistics"] for e in vm.qmp.execute("query-pcow")
          if e["id"] == "pm2"][0]
    check(needed > 5 and st["vmas-needed"] == needed,
          f"query-pcow vmas-needed {st['vmas-needed']} is pcow-img info's "
          f"{needed}")
    check(st["vmas"] == needed and st["lazy-mapping"] is False,
          f"pm2 holds {st['vmas']} mappings, lazy {st['lazy-mapping']}")
    info = vm.qmp.hmp("info pcow")
    check(f"{st['vmas']} mappings ({needed} needed)" in info,
          "HMP info pcow prints the mappings held and needed")


def same_image_twice(vm, img, top, base):
    """Item 8."""
    err = vm.error("object-add", **{
        "qom-type": "memory-backend-file", "id": "pm1", "mem-path": str(img),
        "format": "pcow", "share": True})
    check(err is not None and "already in use by memory backend 'pm0' in "
          "this process" in err and "another" not in err,
          f"second backend on the image names pm0: {err}")
    err = vm.error("object-add", **{
        "qom-type": "memory-backend-file", "id": "pm3", "mem-path": str(base),
        "format": "pcow", "share": True})
    check(err is not None and "memory backend 'pm2' (as a base of its "
          "image) in this process" in err,
          f"a backend on pm2's base names pm2: {err}")
    err = vm.error("object-add", **{
        "qom-type": "memory-backend-file", "id": "pm4", "mem-path": str(top),
        "format": "pcow", "share": True})
    check(err is not None and "memory backend 'pm2' in this process" in err,
          f"a backend on pm2's image names pm2: {err}")


def main():
    for exe, what in ((QEMU, "QEMU"), (PCOW_IMG, "PCOW_IMG"),
                      (HELPER, "pcow-io-helper")):
        if not os.access(exe, os.X_OK):
            print(f"FAIL {what} is not an executable ({exe})")
            return 1
    with tempfile.TemporaryDirectory(prefix="pcow-qmp-admin.") as d:
        tmp = Path(d)
        img, base, top = tmp / "a.pcow", tmp / "base.pcow", tmp / "top.pcow"
        run(PCOW_IMG, "create", "-q", str(img), "16M")
        run(PCOW_IMG, "create", "-q", str(base), "16M")
        run(PCOW_IMG, "create", "-q", "-b", str(base), "-F", "pcow",
            str(top))
        # Names an image made elsewhere may hold
        run(HELPER, "snapshot-any", str(img), "evil\n 99  forged")
        run(HELPER, "snapshot-any", str(img), "\x1b[31mred")
        # One process per cluster, out of guest order: apart in the file
        for c in (9, 2, 5, 3, 8, 4, 6, 7):
            run(HELPER, "write", str(top), str(c * 65536), "64K", "0x33")
        vm = Qemu(tmp, "vm", [backend("pm0", img), backend("pm2", top)])
        try:
            for part in (lambda: mapping_counts(vm, top),
                         lambda: names_and_escapes(vm, tmp),
                         lambda: no_pause_on_refusal(vm),
                         lambda: ids_and_names(vm),
                         lambda: same_image_twice(vm, img, top, base),
                         lambda: during_migration(vm)):
                try:
                    part()
                except guest.QMPError as e:
                    check(False, f"unexpected QMP error: {e}")
        finally:
            vm.close()
    print(f"{'FAIL' if fails else 'PASS'}: test-qmp-admin, {fails} "
          "failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
