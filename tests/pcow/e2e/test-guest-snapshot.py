#!/usr/bin/env python3
"""Internal snapshots between boots, revert, other snapshots intact.

64 MiB image, regions R0..R3 (64 KiB each, R1 not cluster-aligned).
Boot 1: write A0 to R0, A1 to R1.           host: snapshot -c s1
Boot 2: see s1's data; write B1 over R1 (COW of frozen clusters), B2 to R2.
                                             host: snapshot -c s2
Boot 3: see s2's data; write C0, C2, C3 to R0, R2, R3; meanwhile the host's
        `pcow-img snapshot -c` on the running image is refused (locked).
Host: convert -O raw = boot 3's state; snapshot -a s1.
Boot 4: the guest sees exactly s1 (A0, A1, zeros; whole-device md5).
Host: snapshot -l lists s1 and s2; check clean; snapshot -a s2 then
      convert -O raw = s2's state exactly.
"""

import importlib.util
import os
import time

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB, KiB = common.MiB, common.KiB
guest = common.guest

SIZE = 64 * MiB
N = 64 * KiB
R = [1 * MiB, 9 * MiB + 4 * KiB, 20 * MiB, 40 * MiB]   # region offsets


def blob(tag):
    return common.pattern(("snap", tag), N)


def write_cmds(items):
    """items: {region index: tag}; data files /data/<tag>."""
    return "\n".join(
        f"dd if=/data/{tag} of=/dev/pmem0 bs=4096 seek={R[i] // 4096} "
        f"conv=notrunc,fsync 2>/dev/null || fail write {tag}"
        for i, tag in items.items())


def read_cmds(state):
    """state: {region: tag or None (zeros)}; prints REGION i OK|BAD."""
    out = []
    for i in range(len(R)):
        want = common.md5(blob(state[i]) if state.get(i) else bytes(N))
        out.append(
            f'[ "$(dd if=/dev/pmem0 bs=4096 skip={R[i] // 4096} count={N // 4096}'
            f' 2>/dev/null | md5sum | cut -d" " -f1)" = "{want}" ] '
            f'&& echo REGION {i} OK || echo REGION {i} BAD')
    return "\n".join(out)


def image_of(state) -> bytes:
    b = bytearray(SIZE)
    for i, tag in state.items():
        if tag:
            b[R[i]:R[i] + N] = blob(tag)
    return bytes(b)


def regions_ok(t, out, what):
    bad = [ln for ln in out.splitlines() if ln.startswith("REGION") and "BAD" in ln]
    n = sum(1 for ln in out.splitlines() if ln.startswith("REGION") and "OK" in ln)
    t.check(n == len(R) and not bad, f"{what} ({n}/{len(R)} regions; bad: {bad})")


def main():
    t = common.Test("guest-snapshot")
    img = t.tmp / "snap.pcow"
    t.img("create", img, "64M")
    tags = ["A0", "A1", "B1", "B2", "C0", "C2", "C3"]
    files = {f"data/{x}": blob(x) for x in tags}
    s1 = {0: "A0", 1: "A1"}
    s2 = {0: "A0", 1: "B1", 2: "B2"}
    s3 = {0: "C0", 1: "B1", 2: "C2", 3: "C3"}

    r = t.boot("1", common.GUEST_PRELUDE + write_cmds(s1) + "\necho W1",
               [img], files=files)
    t.check("W1" in r.output(), "boot 1: A0, A1 written")
    t.img("snapshot", "-c", "s1", img)

    r = t.boot("2", common.GUEST_PRELUDE + read_cmds(s1) + "\n"
               + write_cmds({1: "B1", 2: "B2"}) + "\necho W2", [img], files=files)
    regions_ok(t, r.output(), "boot 2: the guest sees s1's data")
    t.check("W2" in r.output(), "boot 2: B1 (over frozen R1), B2 written")
    t.img("snapshot", "-c", "s2", img)

    script3 = (common.GUEST_PRELUDE + read_cmds(s2) + "\n"
               + write_cmds({0: "C0", 2: "C2", 3: "C3"})
               + "\necho W3\necho HOLD\nsleep 4\necho HELD")
    g = guest.Guest(script3, common.nvdimm_args([img]), **common.GUEST_KW,
                    files=files)
    with g:
        try:
            g.wait_for_line(r"^HOLD")
            rr = t.img("snapshot", "-c", "s-live", img, check=False)
            t.check(rr.returncode != 0 and ("in use" in rr.stdout
                                            or "lock" in rr.stdout),
                    "pcow-img snapshot -c on the running image is refused "
                    f"(exit {rr.returncode}: {rr.stdout.strip()})")
        except guest.GuestError as e:
            t.check(False, f"boot 3: {e}")
        r = g.wait()
    t.boots.append(("3", r))
    print(f"   [boot 3] rc={r.rc} total={r.total_time:.1f}s")
    out = r.output()
    t.check(r.rc == 0, f"boot 3: guest script exit {r.rc}")
    regions_ok(t, out, "boot 3: the guest sees s2's data")
    t.check("W3" in out, "boot 3: C0, C2, C3 written")
    t.check_clean(img, "after boot 3")

    raw = t.to_raw(img)
    t.check(raw.read_bytes() == image_of(s3),
            "host: convert -O raw = the state written by boot 3")
    lst = t.img("snapshot", "-l", img).stdout
    t.check("s-live" not in lst, "no snapshot s-live was made while running")
    t.img("snapshot", "-a", "s1", img)

    r = t.boot("4", common.GUEST_PRELUDE + read_cmds(s1)
               + '\necho "MD5-ALL $(md5sum < /dev/pmem0 | cut -d" " -f1)"', [img])
    out = r.output()
    regions_ok(t, out, "boot 4 after snapshot -a s1: the guest sees s1's data")
    t.check(f"MD5-ALL {common.md5(image_of(s1))}" in out,
            "boot 4: md5 of the whole device = s1's content exactly")
    t.check_clean(img, "after boot 4")

    lst = t.img("snapshot", "-l", img).stdout
    print("   " + lst.strip().replace("\n", "\n   "))
    names = [ln.split()[1] for ln in lst.splitlines()[2:] if len(ln.split()) > 1]
    t.check(names == ["s1", "s2"], f"snapshot -l lists s1 and s2 ({names})")
    t.img("snapshot", "-a", "s2", img)
    raw = t.to_raw(img)
    t.check(raw.read_bytes() == image_of(s2),
            "snapshot s2 intact: after snapshot -a s2, convert -O raw = s2's state")
    t.img("snapshot", "-a", "s1", img)
    raw = t.to_raw(img)
    t.check(raw.read_bytes() == image_of(s1),
            "snapshot s1 intact after a revert to s2 and back")
    t.check_clean(img, "at the end")
    t.finish()


if __name__ == "__main__":
    main()
