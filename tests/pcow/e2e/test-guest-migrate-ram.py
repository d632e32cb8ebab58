#!/usr/bin/env python3
"""Every page a TCG guest writes during a live migration reaches the
destination: guest RAM and the pcow NVDIMM, compared page by page.

Regression test for patches/0017-tcg-stop-losing-guest-stores-during-
migration.patch: under TCG, stores went unrecorded once a migration bitmap
sync had cleared their page (the guest on the destination oopsed, or ran on
stale pages).  Source: a guest with a 1 GiB pcow NVDIMM that keeps writing
its RAM (tmpfs) and the NVDIMM (holes and allocated clusters alike).  The
host migrates it to a file with a downtime limit of 1 ms for a while, so
that migration iterates (many bitmap syncs while the guest writes), then
lets it converge; the source ends paused.  The host saves the source's RAM
and the NVDIMM's written range (pmemsave).  Destination: a fresh image,
-incoming from the file with -S, so that nothing runs before the same
ranges are saved there.  Every page must be equal.
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import importlib.util
import os
import time

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
guest = common.guest
MiB, GiB = common.MiB, common.GiB

RAM = 512 * MiB                   # guest.py's default -m
NV_SPAN = 64 * MiB                # the NVDIMM range the guest writes
ITERATE_S = 15                    # seconds with a 1 ms downtime limit
PAGE = 4096

SCRIPT = common.GUEST_PRELUDE + r"""
for k in 1 2 3; do
    ( while :; do
        dd if=/dev/urandom of=/tmp/r$k bs=4096 count=512 conv=notrunc \
            2>/dev/null
      done ) &
done
( i=0
  while :; do
    dd if=/dev/urandom of=/dev/pmem0 bs=65536 count=4 \
        seek=$(( i % 256 )) conv=notrunc 2>/dev/null
    i=$((i + 4))
  done ) &
echo WRITING
sleep 100000
"""


def save(t, m, tag):
    """The guest's RAM and the NVDIMM's written range, as two files."""
    nv = m.execute("query-memory-devices")[0]["data"]["addr"]
    files = []
    for what, addr, size in (("ram", 0, RAM), ("nv", nv, NV_SPAN)):
        path = t.tmp / f"{tag}-{what}.bin"
        m.execute("pmemsave", val=addr, size=size, filename=str(path))
        files.append(path)
    return files


def differing(p, q):
    with open(p, "rb") as f, open(q, "rb") as g:
        x, y = f.read(), g.read()
    if len(x) != len(y):
        return [f"sizes {len(x)} and {len(y)}"]
    return [hex(i) for i in range(0, len(x), PAGE)
            if x[i:i + PAGE] != y[i:i + PAGE]]


def main():
    t = common.Test("guest-migrate-ram")
    a, b, state = t.tmp / "a.pcow", t.tmp / "b.pcow", t.tmp / "state"
    t.img("create", a, "1G")
    t.img("create", b, "1G")
    kw = dict(common.GUEST_KW, qmp=True)

    src = guest.Guest(SCRIPT, common.nvdimm_args([(a, "migrate-data=all")]), **kw)
    with src:
        try:
            src.wait_for_line(r"^WRITING$")
            m = src.qmp()
            m.execute("migrate-set-parameters",
                      {"max-bandwidth": 64 * MiB, "downtime-limit": 1})
            m.execute("migrate", uri=f"exec:cat > {state}")
            time.sleep(ITERATE_S)
            m.execute("migrate-set-parameters", {"downtime-limit": 5000})
            info = common.wait_migration(m, timeout=300)
            vm = m.execute("query-status")["status"]
            src_files = save(t, m, "src")
            m.execute("quit")
            t.boots.append(("source", src.wait(timeout=60)))
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"source: {e}")
    syncs = info.get("ram", {}).get("dirty-sync-count", 0)
    t.check(info.get("status") == "completed",
            f"source: migration {info.get('status')}")
    t.check(vm == "postmigrate", f"source: paused after migrating ({vm})")
    t.check(syncs >= 3, f"source: migration iterated while the guest wrote "
            f"({syncs} dirty bitmap syncs)")

    dst = guest.Guest(SCRIPT, common.nvdimm_args([(b, "migrate-data=all")]) +
                      ["-S", "-incoming", f"exec:cat {state}"], **kw)
    with dst:
        try:
            m = dst.qmp(timeout=60)
            st = common.wait_migration(m, timeout=300).get("status")
            vm = m.execute("query-status")["status"]
            dst_files = save(t, m, "dst")
            m.execute("quit")
            t.boots.append(("destination", dst.wait(timeout=60)))
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"destination: {e}")
    t.check(st == "completed", f"destination: incoming migration {st}")
    t.check(vm != "running", f"destination: not running yet ({vm})")
    for what, p, q in zip(("RAM", "NVDIMM"), src_files, dst_files):
        bad = differing(p, q)
        t.check(not bad, f"{what}: every page on the destination equals the "
                f"source's ({len(bad)} differ" +
                (f": {bad[:8]})" if bad else ")"))
        p.unlink()
        q.unlink()
    t.check_clean(a, "source image after quit")
    t.check_clean(b, "destination image after quit")
    t.finish()


if __name__ == "__main__":
    main()
