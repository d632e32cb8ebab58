#!/usr/bin/env python3
"""Live management over QMP/HMP: live snapshot, offline revert, delete.

Boot 1 (64 MiB image, TCG): the guest writes generation N to block N
(64 KiB = one cluster, N = 1, 2, ...), one dd with conv=fsync each, and
prints "gen N done" after it.  While it writes, the host takes snapshot
"live1" over QMP (pcow-snapshot-create).  What the snapshot guarantees: the
vCPUs were stopped, so it is the guest's memory at one instant; with one
writer going through the block layer in order, that is blocks 1..K whole,
block K+1 empty or partly written (torn at 4 KiB page granularity) and
every later block untouched (zeros), with K at least the last "gen K
done" the host saw before sending the command.  After the writer ends,
the host takes "live2" with HMP pcow_snapshot_create, the guest rewrites
blocks 1..32 (copy on write: their old data is now only live2's), the
host deletes live2 over QMP and query-pcow's allocated-bytes must drop by
those 32 clusters.  Meanwhile: query-pcow statistics non-zero, HMP
"info pcow" names the image, pcow-snapshot-revert refuses and says how to
revert offline, pcow-img refuses to write the running image and points at
QMP, pcow-img info -U works on it.
Host: pcow-img snapshot -a live1 with the VM stopped.
Boot 2: the guest's whole-device md5 equals the reverted image's content
(convert -O raw), and that content has the prefix shape above.
Boot 3 (1 GiB image): the guest fills all 16384 clusters, then keeps
writing while the host takes 5 live snapshots; the pause each reports
(pause-ns) is printed (a figure for the docs, goal < 50 ms, not asserted).
"""

import importlib.util
import os
import statistics
import time

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB, KiB, GiB = common.MiB, common.KiB, common.GiB
guest = common.guest

SIZE = 64 * MiB
BS = 64 * KiB
GENS = 120          # blocks written by boot 1's writer
SNAP_AT = 15        # take live1 after "gen SNAP_AT done"
REWRITE = 32        # blocks rewritten after live2


def gen_block(n: int) -> bytes:
    """What the guest's `yes gNNNNNNN | head -c 65536` writes to block n."""
    line = b"g%07d\n" % n
    return (line * (BS // len(line) + 1))[:BS]


WRITER = common.GUEST_PRELUDE + f"""
i=1
while [ $i -le {GENS} ]; do
    yes "g$(printf %07d $i)" | head -c {BS} > /tmp/b
    dd if=/tmp/b of=/dev/pmem0 bs={BS} seek=$i conv=notrunc,fsync \\
        2>/dev/null || fail write $i
    echo "gen $i done"
    i=$((i + 1))
done
echo "WRITER END"
sleep 6
echo "REWRITE START"
head -c {BS} /dev/zero | tr '\\000' 'r' > /tmp/r
i=1
while [ $i -le {REWRITE} ]; do
    dd if=/tmp/r of=/dev/pmem0 bs={BS} seek=$i conv=notrunc,fsync \\
        2>/dev/null || fail rewrite $i
    i=$((i + 1))
done
echo "REWRITE DONE"
sleep 8
echo "BYE"
"""


def classify(raw: bytes):
    """Per block 1..: 'full', 'zero' or 'torn'; also what block 0 holds."""
    kinds = []
    for n in range(1, SIZE // BS):
        b = raw[n * BS:(n + 1) * BS]
        if b == gen_block(n):
            kinds.append("full")
        elif b == bytes(BS):
            kinds.append("zero")
        else:
            want = gen_block(n)
            pages_ok = all(b[p:p + 4096] in (want[p:p + 4096], bytes(4096))
                           for p in range(0, BS, 4096))
            kinds.append("torn" if pages_ok else "garbage")
    return kinds


def prefix_shape(kinds):
    """(K, torn block or None, problem or None) for blocks 1..N."""
    k = 0
    while k < len(kinds) and kinds[k] == "full":
        k += 1
    torn = None
    rest = kinds[k:]
    if rest and rest[0] == "torn":
        torn = k + 1
        rest = rest[1:]
    bad = [i for i, x in enumerate(rest) if x != "zero"]
    if bad:
        first = k + 1 + (1 if torn else 0) + bad[0] + 1
        return k, torn, f"block {first} is {kinds[first - 1]} after the prefix"
    return k, torn, None


def pcow_entry(qmp, bid="pm0"):
    for e in qmp.execute("query-pcow"):
        if e["id"] == bid:
            return e
    return None


def main():
    t = common.Test("qmp-live")
    img = t.tmp / "live.pcow"
    t.img("create", img, "64M")

    # ---- boot 1: writer, live snapshots, delete -------------------------
    qmp_path = t.tmp / "qmp.sock"
    g = guest.Guest(WRITER, common.nvdimm_args([img]), **common.GUEST_KW,
                    qmp=str(qmp_path))
    seen_before_snap = None
    snap1 = None
    with g:
        try:
            q = g.qmp()
            g.wait_for_line(rf"^gen {SNAP_AT} done")
            # The last "done" line seen before the command is sent.
            done = [int(ln.split()[1]) for ln in g.lines
                    if ln.startswith("gen ") and ln.endswith(" done")]
            seen_before_snap = max(done)
            snap1 = q.execute("pcow-snapshot-create", id="pm0", name="live1")
            t.note(f"live1: {snap1}")
            t.check(snap1["snapshot"]["name"] == "live1"
                    and snap1["pause-ns"] > 0,
                    f"QMP pcow-snapshot-create live1 while the guest writes: "
                    f"pause {snap1['pause-ns'] / 1e6:.2f} ms")
            st = q.execute("query-status")
            t.check(st["running"], "the VM runs again after the snapshot "
                    f"(status {st['status']})")

            # pcow-img on the running image
            r = t.img("snapshot", "-c", "offline", img, check=False)
            t.check(r.returncode != 0 and "pcow-snapshot-create" in r.stdout,
                    "pcow-img snapshot -c on the running image is refused and "
                    "points at QMP: " + r.stdout.strip().replace("\n", " | "))
            r = t.img("info", "-U", img, check=False)
            t.check(r.returncode == 0 and "live1" in r.stdout,
                    "pcow-img info -U works on the running image and lists "
                    "live1")

            try:
                q.execute("pcow-snapshot-revert", id="pm0", name="live1")
                t.check(False, "pcow-snapshot-revert must refuse")
            except guest.QMPError as e:
                t.check("pcow-img snapshot -a live1" in str(e),
                        f"pcow-snapshot-revert refuses, says how: {e}")
            try:
                q.execute("pcow-snapshot-create", id="nosuch", name="x")
                t.check(False, "pcow-snapshot-create on a missing backend")
            except guest.QMPError as e:
                t.check("nosuch" in str(e), f"unknown backend refused: {e}")
            try:
                q.execute("pcow-snapshot-create", id="pm0", name="live1")
                t.check(False, "a duplicate snapshot name must be refused")
            except guest.QMPError as e:
                t.check(True, f"duplicate name refused: {e}")

            g.wait_for_line(r"^WRITER END")
            early = any(ln.startswith("REWRITE START") for ln in g.lines)
            out = q.hmp("pcow_snapshot_create pm0 live2")
            t.check("live2" in out and "paused" in out,
                    f"HMP pcow_snapshot_create: {out.strip()}")
            g.wait_for_line(r"^REWRITE DONE")
            t.check(not early, "the rewrite started after live2 was taken "
                    "(the guest sleeps 6 s after WRITER END)")
            e1 = pcow_entry(q)
            names = [s["name"] for s in e1["snapshots"]]
            t.check(names == ["live1", "live2"],
                    f"query-pcow lists the snapshots {names}")
            stats = e1["statistics"]
            t.note("statistics: " + ", ".join(
                f"{k}={v}" for k, v in stats.items() if not isinstance(v, dict)))
            for k in ("expansion-latency", "cow-latency"):
                t.note(f"{k}: {stats[k]}")
            t.check(stats["expansions"] >= GENS - SNAP_AT
                    and stats["cow-unit-faults"] + stats["cow-cluster-faults"] > 0
                    and stats["expansion-latency"]["p50-ns"] > 0
                    and stats["errors"] == 0,
                    f"query-pcow statistics: {stats['expansions']} expansions, "
                    f"{stats['cow-unit-faults']}+{stats['cow-cluster-faults']} "
                    "COW faults, no errors")
            hmp_info = q.hmp("info pcow")
            print("   " + hmp_info.strip().replace("\n", "\n   "))
            t.check(str(img) in hmp_info and "live2" in hmp_info,
                    "HMP info pcow names the image and its snapshots")

            du1 = os.stat(img).st_blocks * 512
            q.execute("pcow-snapshot-delete", id="pm0", name="live2")
            e2 = pcow_entry(q)
            du2 = os.stat(img).st_blocks * 512
            freed = e1["allocated-bytes"] - e2["allocated-bytes"]
            t.note(f"delete live2: allocated-bytes {e1['allocated-bytes']} -> "
                   f"{e2['allocated-bytes']} ({freed // BS} clusters), file "
                   f"usage {du1} -> {du2} bytes")
            # Blocks that live1 already held whole were never written between
            # live1 and live2, so live1 still shares their clusters: only the
            # rest of the rewritten blocks were live2's alone.  A block torn
            # in live1 was completed later, so live2 had its own copy.
            in_live1 = min(snap1["snapshot"]["allocated-bytes"] // BS, REWRITE)
            t.check(REWRITE - in_live1 <= freed // BS <= REWRITE - in_live1 + 1
                    and freed % BS == 0,
                    f"deleting live2 live frees the clusters only it held: "
                    f"{freed // BS} of the {REWRITE} rewritten blocks "
                    f"({in_live1} still shared with live1)")
            t.check([s["name"] for s in e2["snapshots"]] == ["live1"],
                    "query-pcow lists only live1 after the delete")
            g.wait_for_line(r"^BYE")
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.check(False, f"boot 1: {e}")
        r = g.wait()
    t.boots.append(("1", r))
    print(f"   [boot 1] rc={r.rc} total={r.total_time:.1f}s")
    t.check(r.rc == 0, f"boot 1: guest script exit {r.rc}")
    if r.qemu_stderr.strip():
        print("   qemu stderr: " + r.qemu_stderr.strip())
    t.check_clean(img, "after boot 1")
    final = t.to_raw(img).read_bytes()
    t.check(final[BS:2 * BS] == b"r" * BS
            and final[(REWRITE + 1) * BS:(REWRITE + 2) * BS]
            == gen_block(REWRITE + 1)
            and final[GENS * BS:(GENS + 1) * BS] == gen_block(GENS),
            "after boot 1 the image holds the rewrite and every generation")

    # ---- offline revert ----------------------------------------------------
    t.img("snapshot", "-a", "live1", img)
    raw = t.to_raw(img).read_bytes()
    kinds = classify(raw)
    k, torn, problem = prefix_shape(kinds)
    t.note(f"live1: blocks 1..{k} whole, torn block: {torn}, "
           f"'gen {seen_before_snap} done' seen before the command")
    t.check(problem is None and raw[:BS] == bytes(BS),
            "live1 is a prefix: blocks 1..K whole, at most block K+1 torn, "
            f"the rest zeros ({problem or 'ok'})")
    t.check(seen_before_snap is not None and k >= seen_before_snap,
            f"live1 holds every generation the guest finished before the "
            f"command (K={k} >= {seen_before_snap})")
    t.check(k < GENS, f"live1 is not the final state (K={k} < {GENS})")

    r = t.boot("2", common.GUEST_PRELUDE
               + 'echo "MD5-ALL $(md5sum < /dev/pmem0 | cut -d" " -f1)"', [img])
    t.check(f"MD5-ALL {common.md5(raw)}" in r.output(),
            "boot 2 after the offline revert: the guest sees exactly live1 "
            "(md5 of the whole device)")
    t.check_clean(img, "after boot 2")

    # ---- pause for a 1 GiB image with 16K allocated clusters ---------------
    big = t.tmp / "big.pcow"
    t.img("create", big, "1G")
    script = common.GUEST_PRELUDE + """
dd if=/dev/zero of=/dev/pmem0 bs=1M count=1024 conv=fsync 2>/dev/null \\
    || fail fill
echo FILLED
i=0
# Keep writing for a fixed time, so that the guest is still running while
# the host takes and deletes its snapshots, however slow the host is.
end=$(( $(date +%s) + 30 ))
while [ "$(date +%s)" -lt "$end" ]; do
    dd if=/dev/urandom of=/dev/pmem0 bs=4096 count=1 \\
        seek=$(( (i * 4099) % 262144 )) conv=notrunc 2>/dev/null
    i=$((i + 1))
done
echo "LOOP END"
"""
    qmp2 = t.tmp / "qmp2.sock"
    g = guest.Guest(script, common.nvdimm_args([big]), **common.GUEST_KW,
                    qmp=str(qmp2))
    pauses = []
    with g:
        try:
            q = g.qmp()
            g.wait_for_line(r"^FILLED", timeout=400)
            e = pcow_entry(q)
            t.note(f"1 GiB image: {e['allocated-bytes'] // BS} clusters "
                   f"allocated, {e['statistics']['vmas']} mappings")
            t.check(e["allocated-bytes"] == GiB,
                    "the guest allocated all 16384 clusters")
            for n in range(5):
                res = q.execute("pcow-snapshot-create", id="pm0",
                                name=f"p{n}")
                pauses.append(res["pause-ns"])
                time.sleep(0.5)
            e = pcow_entry(q)
            t.note(f"after 5 snapshots: {e['statistics']['vmas']} mappings, "
                   f"{e['statistics']['cow-unit-faults']} COW unit faults")
            for n in range(5):
                q.execute("pcow-snapshot-delete", id="pm0", name=f"p{n}")
            g.wait_for_line(r"^LOOP END", timeout=400)
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.check(False, f"boot 3: {e}")
        r = g.wait()
    t.boots.append(("3", r))
    print(f"   [boot 3] rc={r.rc} total={r.total_time:.1f}s")
    t.check(r.rc == 0, f"boot 3: guest script exit {r.rc}")
    # The pause is a figure, not a pass/fail criterion (timed assertions
    # fail on a loaded host): it is printed here and recorded in the docs.
    # What must hold is that each snapshot was taken and its pause measured.
    ms = [p / 1e6 for p in pauses]
    t.check(len(ms) == 5 and all(x > 0 for x in ms),
            "5 live snapshots of the 1 GiB image, each with a measured pause")
    if ms:
        t.note("live snapshot pause, 1 GiB image, 16384 clusters: "
               + ", ".join(f"{x:.2f}" for x in ms) + f" ms (median "
               f"{statistics.median(ms):.2f} ms; goal < 50 ms)")
    t.check_clean(big, "after boot 3")
    t.finish()


if __name__ == "__main__":
    main()
