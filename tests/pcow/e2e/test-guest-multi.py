#!/usr/bin/env python3
"""Three pcow NVDIMMs in one VM; one of them readonly=on.

Host: a.pcow 64 MiB, b.pcow 96 MiB (empty), c.pcow 128 MiB with a pattern
    (convert -O pcow); c attached with readonly=on and nvdimm unarmed=on.
Boot: QMP query-memory-devices lists three nvdimms with the images' sizes;
    the guest finds the devices by size, writes Pa to a and Pb to b, reads
    c's pattern; c is read-only for the guest (/sys/block/*/ro = 1) and a dd
    to it fails; then the guest forces it (blockdev --setrw) and writes
    again, drops its caches and reads c back: it must still see the
    original pattern.  Then, past the guest kernel: c's namespace disabled,
    CPU stores with busybox devmem (kernel iomem=relaxed) into c's physical
    range, at the pattern and in a hole: QEMU discards them (ROM-like), the
    guest reads the old values, QEMU does not crash.
Host: a and b hold their data and nothing else; c.pcow is byte-identical
    (md5, mtime) and checks clean; all three clean.
"""

import importlib.util
import os

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB, KiB = common.MiB, common.KiB
guest = common.guest

N = 64 * KiB
SIZES = {"a": 64 * MiB, "b": 96 * MiB, "c": 128 * MiB}
OFF = {"a": 1 * MiB, "b": 2 * MiB + 8 * KiB, "c": 3 * MiB}
HOLE = 100 * MiB        # a hole of c.pcow


def main():
    t = common.Test("guest-multi")
    pat = {k: common.pattern(("multi", k), N) for k in ("a", "b", "c", "x")}
    img = {k: t.tmp / f"{k}.pcow" for k in SIZES}
    t.img("create", img["a"], "64M")
    t.img("create", img["b"], "96M")
    craw = bytearray(SIZES["c"])
    craw[OFF["c"]:OFF["c"] + N] = pat["c"]
    (t.tmp / "c.raw").write_bytes(craw)
    t.img("convert", "-O", "pcow", t.tmp / "c.raw", img["c"])
    c_md5, c_mtime = common.md5_file(img["c"]), os.stat(img["c"]).st_mtime_ns

    files = {f"data/P{k}": v for k, v in pat.items()}
    md5c = common.md5(pat["c"])
    script = common.GUEST_PRELUDE + f"""
A=$(pmem_of_size {SIZES['a']}) || fail no 64 MiB device
B=$(pmem_of_size {SIZES['b']}) || fail no 96 MiB device
C=$(pmem_of_size {SIZES['c']}) || fail no 128 MiB device
echo "DEVS $A $B $C"
dd if=/data/Pa of=/dev/$A bs=4096 seek={OFF['a'] // 4096} conv=notrunc,fsync 2>/dev/null || fail write a
dd if=/data/Pb of=/dev/$B bs=4096 seek={OFF['b'] // 4096} conv=notrunc,fsync 2>/dev/null || fail write b
readc() {{
    [ "$(dd if=/dev/$C bs=4096 skip={OFF['c'] // 4096} count={N // 4096} 2>/dev/null \\
        | md5sum | cut -d' ' -f1)" = "{md5c}" ] && echo "$1 OK" || echo "$1 BAD"
}}
readc C-READ
echo "C-RO $(cat /sys/block/$C/ro)"
dd if=/data/Px of=/dev/$C bs=4096 seek={OFF['c'] // 4096} conv=notrunc,fsync 2>/tmp/e
echo "C-WRITE-RC $?"; sed 's/^/C-WRITE-ERR /' /tmp/e
blockdev --setrw /dev/$C; echo "C-SETRW-RC $?"
dd if=/data/Px of=/dev/$C bs=4096 seek={OFF['c'] // 4096} conv=notrunc,fsync 2>/tmp/e
echo "C-FORCED-WRITE-RC $?"; sed 's/^/C-WRITE-ERR /' /tmp/e
echo 3 > /proc/sys/vm/drop_caches
readc C-AFTER
# Past the guest kernel: disable C's namespace and store to its physical
# range with the CPU (busybox devmem, iomem=relaxed): at the pattern and in
# a hole.  QEMU must discard the stores (or stop the guest), never write.
ns=$(basename "$(readlink -f /sys/block/$C/device)")
base=$(cat /sys/bus/nd/devices/$ns/resource)
ndctl disable-namespace $ns >/dev/null 2>&1 || fail "disable $ns"
echo "C-PHYS $ns $base"
pa=$(( base + {OFF['c']} )); ph=$(( base + {HOLE} ))
echo "DEVMEM-BEFORE $(devmem $pa 32) $(devmem $ph 32)"
devmem $pa 32 0xdeadbeef; echo "DEVMEM-W1 $?"
devmem $ph 32 0x12345678; echo "DEVMEM-W2 $?"
echo "DEVMEM-AFTER $(devmem $pa 32) $(devmem $ph 32)"
"""
    images = [img["a"], img["b"], (img["c"], "readonly=on", "unarmed=on")]
    g = guest.Guest(script, common.nvdimm_args(images), **dict(common.GUEST_KW, append="no_timer_check iomem=relaxed"),
                    files=files, qmp=True)
    devs = None
    with g:
        try:
            g.wait_for_line(r"PCOW-GUEST-START")
            devs = g.qmp().execute("query-memory-devices")
        except (guest.GuestError, guest.QMPError, OSError, EOFError) as e:
            t.check(False, f"QMP query-memory-devices: {e}")
        r = g.wait()
    t.boots.append(("1-three", r))
    out = r.output()
    print(f"   [boot 1-three] rc={r.rc} qemu_rc={r.qemu_rc} total={r.total_time:.1f}s")
    print("\n".join("   | " + ln for ln in out.splitlines()))
    if r.qemu_stderr.strip():
        print("   qemu stderr: " + r.qemu_stderr.strip())
    if r.rc != 0:
        print("\n".join("   # " + ln for ln in r.lines[-40:]))
    t.check(r.rc == 0, f"guest script exit {r.rc}")
    if devs is not None:
        got = sorted((d["type"], d["data"]["size"]) for d in devs)
        t.check(got == sorted(("nvdimm", s) for s in SIZES.values()),
                f"QMP query-memory-devices: three nvdimms of 64/96/128 MiB ({got})")
    t.check("C-READ OK" in out, "guest reads the readonly image's pattern")
    t.check("C-RO 1" in out, "the readonly (unarmed) NVDIMM is read-only in "
            "the guest (/sys/block/pmemN/ro = 1)")
    t.check("C-WRITE-RC 0" not in out, "a dd to the readonly device fails")
    forced = "C-FORCED-WRITE-RC 0" in out
    t.note("forced write after blockdev --setrw: "
           + ("dd succeeded (the stores reached QEMU)" if forced else "dd failed"))
    t.check("C-AFTER OK" in out, "after the forced write and a cache drop the "
            "guest still reads the original pattern from the readonly image")
    word = "0x%08X" % int.from_bytes(pat["c"][:4], "little")
    want = f"DEVMEM-AFTER {word} 0x00000000"
    t.check(f"DEVMEM-BEFORE {word} 0x00000000".lower() in out.lower(),
            f"devmem reads the readonly NVDIMM's pattern word {word} and a hole's 0")
    t.check("DEVMEM-W1 0" in out and want.lower() in out.lower(),
            "CPU stores (devmem) to the readonly NVDIMM's data and hole are "
            "discarded: the guest reads the old values back")
    t.check(r.qemu_rc == 0, f"QEMU exited normally (status {r.qemu_rc})")

    for k in ("a", "b"):
        raw = t.to_raw(img[k])
        want = bytearray(SIZES[k])
        want[OFF[k]:OFF[k] + N] = pat[k]
        t.check(raw.read_bytes() == want, f"host: {k}.pcow holds exactly its "
                "own pattern (no cross-talk between the NVDIMMs)")
        raw.unlink()
        t.check_clean(img[k], f"{k}.pcow")
    t.check(common.md5_file(img["c"]) == c_md5
            and os.stat(img["c"]).st_mtime_ns == c_mtime,
            "readonly c.pcow byte-identical (md5) and not modified (mtime)")
    t.check_clean(img["c"], "c.pcow")
    t.finish()


if __name__ == "__main__":
    main()
