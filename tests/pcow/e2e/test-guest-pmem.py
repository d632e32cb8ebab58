#!/usr/bin/env python3
"""pcow NVDIMM as a raw block device: size, scattered writes, thin growth.

Boot 1 (empty 256 MiB image): /dev/pmem0 is 268435456 bytes; md5sum of the
    whole device is that of 256 MiB of zeros; dd writes patterns at
    scattered offsets (cluster-aligned, straddling a cluster boundary,
    sector-sized, 1 MiB, the last 4 KiB) with conv=fsync.
Host: the image holds exactly the clusters touched by the writes (reading
    the whole empty device allocated nothing), its size on disk grew by no
    more than those clusters (+ new metadata clusters), `pcow-img convert
    -O raw` has the patterns at their offsets and zeros elsewhere, the image
    is clean after the guest's poweroff.
Boot 2: every pattern reads back; md5sum of the whole device equals the md5
    of the host's raw conversion.
Host: reading the whole device did not grow the image (clusters, disk size,
    file size unchanged).
"""

import importlib.util
import os
import sys

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB, KiB = common.MiB, common.KiB

SIZE = 256 * MiB
CLUSTER = 64 * KiB
WRITES = [                        # (offset, length)
    (1 * MiB, 4 * KiB),           # cluster-aligned 4 KiB
    (5 * MiB + 60 * KiB, 8 * KiB),  # straddles a cluster boundary
    (37 * MiB + 512, 1024),       # two sectors inside one page
    (100 * MiB, 1 * MiB),         # 16 whole clusters
    (200 * MiB + 4 * KiB, 4 * KiB),
    (SIZE - 4 * KiB, 4 * KiB),    # the very end of the device
]


def dd_args(off, n):
    bs = 4096 if off % 4096 == 0 and n % 4096 == 0 else 512
    return bs, off // bs, n // bs


def main():
    t = common.Test("guest-pmem")
    img = t.tmp / "pm.pcow"
    t.img("create", img, "256M")
    inf0 = t.info(img)
    t.check(inf0["virtual-size"] == SIZE and inf0["cluster-size"] == CLUSTER,
            "image: virtual size 256 MiB, cluster size 64 KiB")

    blobs = [common.pattern(("pmem", i), n) for i, (off, n) in enumerate(WRITES)]
    files = {f"data/blk{i}": b for i, b in enumerate(blobs)}
    zero_md5 = common.md5(bytes(SIZE))

    # --- boot 1: size, read everything (holes), write patterns
    lines = [common.GUEST_PRELUDE,
             'echo "SIZE $(blockdev --getsize64 /dev/pmem0)"',
             'echo "MD5-EMPTY $(md5sum < /dev/pmem0 | cut -d" " -f1)"']
    for i, (off, n) in enumerate(WRITES):
        bs, seek, cnt = dd_args(off, n)
        lines.append(f"dd if=/data/blk{i} of=/dev/pmem0 bs={bs} seek={seek} "
                     f"count={cnt} conv=notrunc,fsync 2>/dev/null "
                     f"|| fail dd write {i}")
    lines.append("echo WROTE")
    r = t.boot("1-write", "\n".join(lines), [img], files=files)
    out = r.output()
    t.check(f"SIZE {SIZE}" in out, "guest: /dev/pmem0 is 268435456 bytes "
            "(the image's virtual size)")
    t.check(f"MD5-EMPTY {zero_md5}" in out,
            "guest: md5sum of the empty device = md5 of 256 MiB of zeros")
    t.check("WROTE" in out, "guest: dd wrote all patterns (conv=fsync)")

    # --- host: growth, content
    t.check_clean(img, "after boot 1 (guest poweroff)")
    inf1 = t.info(img)
    want = common.touched_clusters(WRITES, CLUSTER)
    d1 = inf1["format-specific"]["data"]
    d0 = inf0["format-specific"]["data"]
    t.note(f"touched clusters {len(want)}; image: active-clusters "
           f"{d1['active-clusters']}, allocated {d1['allocated-clusters']}, "
           f"metadata {d1['metadata-clusters']} (was {d0['metadata-clusters']}); "
           f"actual-size {inf0['actual-size']} -> {inf1['actual-size']}; "
           f"file-size {d0['file-size']} -> {d1['file-size']}")
    t.check(d1["active-clusters"] == len(want),
            f"image holds exactly the {len(want)} clusters written "
            f"(active-clusters {d1['active-clusters']}; the md5sum of the "
            "empty device allocated nothing)")
    meta_new = max(0, d1["metadata-clusters"] - d0["metadata-clusters"])
    # slack: 2 clusters (a reserved cluster the monitor may leave free
    # inside the file, host file system blocks)
    limit = (len(want) + meta_new + 2) * CLUSTER
    grew = inf1["actual-size"] - inf0["actual-size"]
    t.check(0 < grew <= limit,
            f"disk usage grew by {grew} bytes <= (written clusters "
            f"{len(want)} + new metadata clusters {meta_new} + 2 slack) * "
            f"64 KiB = {limit}")
    raw = t.to_raw(img)
    t.check(os.path.getsize(raw) == SIZE, "convert -O raw: 256 MiB")
    for i, (off, n) in enumerate(WRITES):
        got = common.read_at(raw, off, n)
        t.check(got == blobs[i], f"convert -O raw: pattern {i} at offset {off} "
                f"({n} bytes)")
    # zeros around the writes (a few spots)
    for off in (0, 1 * MiB + 4 * KiB, 5 * MiB + 56 * KiB, 37 * MiB,
                37 * MiB + 1536, 101 * MiB, 200 * MiB, SIZE - 8 * KiB):
        t.check(common.read_at(raw, off, 512) == bytes(512),
                f"convert -O raw: zeros at {off}")
    raw_md5 = common.md5_file(raw)

    # --- boot 2: read back, md5 of the whole device
    lines = [common.GUEST_PRELUDE]
    for i, (off, n) in enumerate(WRITES):
        bs, skip, cnt = dd_args(off, n)
        lines.append(
            f'[ "$(dd if=/dev/pmem0 bs={bs} skip={skip} count={cnt} 2>/dev/null'
            f' | md5sum | cut -d" " -f1)" = "{common.md5(blobs[i])}" ] '
            f'&& echo READ-OK {i} || echo READ-BAD {i}')
    lines.append('echo "MD5-ALL $(md5sum < /dev/pmem0 | cut -d" " -f1)"')
    r = t.boot("2-read", "\n".join(lines), [img])
    out = r.output()
    for i, (off, n) in enumerate(WRITES):
        t.check(f"READ-OK {i}" in out.splitlines(),
                f"after reboot the guest reads pattern {i} at offset {off}")
    t.check(f"MD5-ALL {raw_md5}" in out,
            "guest md5sum of /dev/pmem0 = md5 of the host's convert -O raw")
    t.check_clean(img, "after boot 2")
    inf2 = t.info(img)
    d2 = inf2["format-specific"]["data"]
    t.note(f"after the whole-device read: active-clusters {d2['active-clusters']}, "
           f"actual-size {inf2['actual-size']}, file-size {d2['file-size']}")
    t.check(d2["allocated-clusters"] == d1["allocated-clusters"]
            and inf2["actual-size"] == inf1["actual-size"]
            and d2["file-size"] == d1["file-size"],
            "reading the whole device did not grow the image "
            "(allocated clusters, disk size and file size unchanged)")
    t.finish()


if __name__ == "__main__":
    main()
