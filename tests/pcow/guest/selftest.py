#!/usr/bin/env python3
"""Self-test / demo of the test-guest harness with a raw-file NVDIMM.

    QEMU=/usr/bin/qemu-system-x86_64 tests/pcow/guest/selftest.py [--fio]

Boots several times against one 256 MiB raw file:
  1. raw namespace: /dev/pmem0 is 268435456 bytes; dd writes patterns at a few
     offsets (checked in the host file afterwards); QMP query while running.
  2. namespace -> fsdax (ndctl), mkfs.ext4 -b 4096, mount -o dax, write files.
  3. second boot: mount -o dax again, files read back and checked.
  4. crash: QEMU SIGKILLed when the guest prints a line while writing.
  5. (--fio) fio verify run on the DAX filesystem.
Prints boot/total times.  Exit status 0 = all good.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guest  # noqa: E402

MiB = 1 << 20
OFFSETS = {1: "ONE", 100: "HUNDRED", 255: "TWOFIFTYFIVE"}   # MiB -> tag

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def report(name, r):
    bt = f"{r.boot_time:.2f}" if r.boot_time is not None else "-"
    print(f"  [{name}] rc={r.rc} boot-to-script={bt}s total={r.total_time:.2f}s "
          f"log={r.log}")
    if r.rc != 0 and not r.killed:
        print("\n".join("  | " + ln for ln in r.lines[-40:]))
        if r.qemu_stderr:
            print("  qemu stderr:", r.qemu_stderr)


def main():
    with_fio = "--fio" in sys.argv
    tmp = tempfile.mkdtemp(prefix="pcow-selftest-")
    img = os.path.join(tmp, "pm.raw")
    with open(img, "wb") as f:
        f.truncate(256 * MiB)
    args = ["-object", f"memory-backend-file,id=pm,mem-path={img},size=256M,share=on",
            "-device", "nvdimm,id=nv0,memdev=pm"]
    times = []

    # 1. raw namespace, dd at offsets, QMP
    dd = "\n".join(
        f"yes PCOW-{tag} | head -c 4096 | dd of=/dev/pmem0 bs=4096 "
        f"seek={off * MiB // 4096} conv=fsync 2>/dev/null || exit 2"
        for off, tag in OFFSETS.items())
    script1 = f"""
set -e
echo "SIZE $(blockdev --getsize64 /dev/pmem0)"
ndctl list -N | grep -q '"mode":"raw"' && echo MODE-RAW
{dd}
for o in {' '.join(str(o) for o in OFFSETS)}; do
    echo "READ $o $(dd if=/dev/pmem0 bs=4096 skip=$((o * 256)) count=1 2>/dev/null | head -c 16)"
done
echo READY-FOR-QMP
sleep 1
"""
    with guest.Guest(script1, args, qmp=True) as g:
        g.wait_for_line("^READY-FOR-QMP")
        q = g.qmp()
        st = q.execute("query-status")
        devs = q.execute("query-memory-devices")
        r = g.wait()
    report("raw+dd", r)
    times.append(r)
    out = r.output()
    check(r.rc == 0, "boot 1 script rc 0")
    check("SIZE 268435456" in out, "/dev/pmem0 is 268435456 bytes")
    check("MODE-RAW" in out, "label-less NVDIMM is a raw namespace")
    for off, tag in OFFSETS.items():
        check(f"READ {off} {f'PCOW-{tag}'[:16]}" in out, f"guest reads back pattern at {off} MiB")
    check(st.get("status") == "running", f"QMP query-status: {st}")
    check(devs and devs[0]["type"] == "nvdimm"
          and devs[0]["data"]["size"] == 256 * MiB, "QMP query-memory-devices: nvdimm 256M")
    with open(img, "rb") as f:
        for off, tag in OFFSETS.items():
            f.seek(off * MiB)
            data = f.read(4096)
            want = (f"PCOW-{tag}\n" * 4096).encode()[:4096]
            check(data == want, f"host raw file has the pattern at {off} MiB")

    # 2. fsdax + ext4 -o dax, write files
    script2 = """
set -e
ndctl create-namespace -f -e namespace0.0 -m fsdax >/dev/null
ndctl list -N | grep -q '"mode":"fsdax"' && echo MODE-FSDAX
echo "FSDAX-SIZE $(blockdev --getsize64 /dev/pmem0)"
mkfs.ext4 -q -F -b 4096 /dev/pmem0
mount -o dax /dev/pmem0 /mnt
grep ' /mnt ' /proc/mounts
mkdir /mnt/d
for i in 1 2 3; do
    dd if=/dev/urandom of=/mnt/d/f$i bs=64k count=$((i * 8)) 2>/dev/null
done
echo hello-dax > /mnt/hello
(cd /mnt && sha256sum hello d/*) > /mnt/SUMS
cat /mnt/SUMS
umount /mnt
"""
    r = guest.run(script2, args)
    report("fsdax+mkfs+write", r)
    times.append(r)
    out = r.output()
    check(r.rc == 0, "boot 2 script rc 0")
    check("MODE-FSDAX" in out, "namespace converted to fsdax")
    check("dax" in next((ln for ln in out.splitlines() if " /mnt " in ln), ""),
          "ext4 mounted with dax")

    # 3. second boot: read back
    script3 = """
set -e
ndctl list -N | grep -q '"mode":"fsdax"' && echo MODE-FSDAX-PERSISTS
mount -o dax /dev/pmem0 /mnt
grep ' /mnt ' /proc/mounts
cd /mnt && sha256sum -c SUMS && cat hello
cd / && umount /mnt
"""
    r = guest.run(script3, args)
    report("fsdax+read-back", r)
    times.append(r)
    out = r.output()
    check(r.rc == 0, "boot 3 script rc 0 (sha256sum -c passed)")
    check("MODE-FSDAX-PERSISTS" in out, "fsdax info block persists across boots")
    check("hello-dax" in out, "file content read back after reboot")

    # 4. crash: SIGKILL while the guest writes
    script4 = """
mount -o dax /dev/pmem0 /mnt || exit 2
i=0
while :; do
    i=$((i + 1)); echo "$i" > /mnt/counter
    [ $i = 50 ] && echo WRITING
done
"""
    r = guest.run(script4, args, kill_on="^WRITING", timeout=120)
    report("crash", r)
    times.append(r)
    check(r.killed and r.rc is None and r.qemu_rc == -9,
          f"QEMU SIGKILLed mid-write (killed={r.killed} rc={r.rc} qemu_rc={r.qemu_rc})")
    script5 = """
e2fsck -fy /dev/pmem0 >/dev/null 2>&1; echo "FSCK $?"
mount -o dax /dev/pmem0 /mnt && echo "COUNTER $(cat /mnt/counter)"
umount /mnt
"""
    r = guest.run(script5, args)
    report("after-crash", r)
    times.append(r)
    check(r.rc == 0 and "COUNTER" in r.output(), "filesystem mounts after the crash")

    if with_fio:
        script6 = """
mount -o dax /dev/pmem0 /mnt || exit 2
fio --name=v --filename=/mnt/fio --size=16M --bs=4k --rw=randwrite \
    --ioengine=psync --verify=crc32c --minimal >/tmp/fio.out; rc=$?
cut -d';' -f1-8 /tmp/fio.out
umount /mnt
exit $rc
"""
        r = guest.run(script6, args, fio=True)
        report("fio", r)
        times.append(r)
        check(r.rc == 0, "fio verify on ext4 -o dax")

    boots = [t.boot_time for t in times if t.boot_time is not None]
    print(f"boot-to-script: min {min(boots):.2f}s max {max(boots):.2f}s; "
          f"total per test: " + " ".join(f"{t.total_time:.2f}s" for t in times))
    if failures:
        print(f"{len(failures)} FAILURES (image kept in {tmp})")
        return 1
    os.unlink(img)
    os.rmdir(tmp)
    print("ALL OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
