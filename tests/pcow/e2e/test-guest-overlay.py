#!/usr/bin/env python3
"""One base image, two overlays, booted one after the other (and together).

Host: base.pcow (64 MiB) = convert -O pcow of a raw file with patterns in
    regions R0..R2; md5 of base.pcow recorded; ov1.pcow and ov2.pcow created
    with `pcow-img create -b base.pcow -F pcow`.
Boot 1 (ov1): the guest sees the base's patterns; writes 4 KiB into the
    middle of R1 (partial COW from the base) and 64 KiB to R3 (a hole).
Boot 2 (ov2): sees the base only (not ov1's writes); writes 8 KiB into R2
    and 64 KiB to R4.
Host: base.pcow byte-identical (md5); convert -O raw of each overlay = base
    + its own writes; check clean.
Boot 3 (ov1 and ov2 as two NVDIMMs of one VM, sharing the base): each
    device's md5 is its overlay's expected content.
Host: base still byte-identical.
"""

import importlib.util
import os

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB, KiB = common.MiB, common.KiB

SIZE = 64 * MiB
N = 64 * KiB
R = [2 * MiB, 10 * MiB, 30 * MiB, 50 * MiB, 60 * MiB]


def main():
    t = common.Test("guest-overlay")
    base_raw = bytearray(SIZE)
    for i in range(3):
        base_raw[R[i]:R[i] + N] = common.pattern(("base", i), N)
    (t.tmp / "base.raw").write_bytes(base_raw)
    base = t.tmp / "base.pcow"
    t.img("convert", "-O", "pcow", t.tmp / "base.raw", base)
    base_md5 = common.md5_file(base)
    ov = [t.tmp / "ov1.pcow", t.tmp / "ov2.pcow"]
    for o in ov:
        t.img("create", "-b", base, "-F", "pcow", o)
    t.check(t.info(ov[0])["virtual-size"] == SIZE, "overlay: size from the base")

    # own writes: (offset, tag, length)
    writes = [
        [(R[1] + 20 * KiB, "o1a", 4 * KiB), (R[3], "o1b", N)],
        [(R[2] + 8 * KiB, "o2a", 8 * KiB), (R[4], "o2b", N)],
    ]
    data = {tag: common.pattern(("ov", tag), n) for w in writes for _, tag, n in w}
    files = {f"data/{k}": v for k, v in data.items()}
    expect = []
    for w in writes:
        b = bytearray(base_raw)
        for off, tag, n in w:
            b[off:off + n] = data[tag]
        expect.append(bytes(b))

    def base_check():
        return "\n".join(
            f'[ "$(dd if=/dev/pmem0 bs=4096 skip={R[i] // 4096} count={N // 4096}'
            f' 2>/dev/null | md5sum | cut -d" " -f1)" = '
            f'"{common.md5(base_raw[R[i]:R[i] + N])}" ] && echo BASE {i} OK '
            f'|| echo BASE {i} BAD' for i in range(3))

    for k in range(2):
        script = common.GUEST_PRELUDE + base_check() + "\n" + "\n".join(
            f"dd if=/data/{tag} of=/dev/pmem0 bs=4096 seek={off // 4096} "
            f"conv=notrunc,fsync 2>/dev/null || fail write {tag}"
            for off, tag, n in writes[k]) + "\necho WROTE"
        r = t.boot(f"{k + 1}-ov{k + 1}", script, [ov[k]], files=files)
        out = r.output()
        n_ok = sum(1 for ln in out.splitlines() if ln.startswith("BASE") and "OK" in ln)
        t.check(n_ok == 3, f"boot {k + 1}: overlay {k + 1} sees the base's data "
                f"({n_ok}/3 regions; ov2 does not see ov1's writes)")
        t.check("WROTE" in out, f"boot {k + 1}: overlay {k + 1} wrote its data")
        t.check(common.md5_file(base) == base_md5,
                f"after boot {k + 1}: base.pcow byte-identical (md5)")
        t.check_clean(ov[k], f"ov{k + 1} after boot {k + 1}")

    for k in range(2):
        raw = t.to_raw(ov[k])
        t.check(raw.read_bytes() == expect[k],
                f"host: convert -O raw of ov{k + 1} = base + its own writes")
        inf = t.info(ov[k])
        t.note(f"ov{k + 1}: active-clusters "
               f"{inf['format-specific']['data']['active-clusters']}, "
               f"actual-size {inf['actual-size']}")
    t.check_clean(base, "base")

    r = t.boot("3-both", common.GUEST_PRELUDE + r"""
for d in /sys/block/pmem*; do
    echo "DEV $(basename $d) $(md5sum < /dev/$(basename $d) | cut -d' ' -f1)"
done
""", ov)
    got = sorted(ln.split()[2] for ln in r.output().splitlines()
                 if ln.startswith("DEV "))
    want = sorted(common.md5(e) for e in expect)
    t.check(got == want, "boot 3: both overlays in one VM (shared base): each "
            "device shows base + its own writes")
    t.check(common.md5_file(base) == base_md5, "at the end: base.pcow byte-identical")
    for k in range(2):
        t.check_clean(ov[k], f"ov{k + 1} at the end")
    t.finish()


if __name__ == "__main__":
    main()
