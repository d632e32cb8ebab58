#!/usr/bin/env python3
"""QEMU killed (SIGKILL), terminated (SIGTERM), quit (QMP) while the guest
writes; guest poweroff is covered by every other test's check_clean.

64 MiB image.  The guest writes patterns P0, P1 with conv=fsync, prints
SYNCED, then writes 64 KiB blocks of random data with conv=fsync in a loop
(each a first write to a hole: an expansion in the monitor) and prints
WRITING after the first 20.

Boot 1: SIGKILL 0.3 s after WRITING.  Asserted: `pcow-img check` exits 0
    or 3 (3 = leaked clusters only, never corruption); the in-use flag is
    still set (nobody closed the image) - reported, not asserted;
    convert -O raw has P0 and P1 (written before SYNCED).
Boot 2: the image opens read-write in QEMU again (this open repairs what
    the crash left); the guest reads P0, P1.  After poweroff: check exits 0
    and the in-use flag is clear.
Boot 3: SIGTERM while writing: QEMU exits 0, check exits 0, flag clear,
    P0/P1 intact.
Boot 4: QMP quit while writing: same.
"""

import importlib.util
import os
import signal
import time

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB, KiB = common.MiB, common.KiB
guest = common.guest

N = 64 * KiB
R = [128 * KiB, 1 * MiB + 4 * KiB]      # P0, P1 (P1 straddles two clusters)

WRITER = common.GUEST_PRELUDE + f"""
dd if=/data/P0 of=/dev/pmem0 bs=4096 seek={R[0] // 4096} conv=notrunc,fsync 2>/dev/null || fail P0
dd if=/data/P1 of=/dev/pmem0 bs=4096 seek={R[1] // 4096} conv=notrunc,fsync 2>/dev/null || fail P1
echo SYNCED
i=0
while [ $i -lt 5000 ]; do
    # clusters 50..1009 of 1024, in a scattered order
    dd if=/dev/urandom of=/dev/pmem0 bs=65536 seek=$(( (i * 389) % 960 + 50 )) \
        count=1 conv=notrunc,fsync 2>/dev/null
    i=$((i + 1))
    [ $i = 20 ] && echo WRITING
done
echo WRITER-DONE
"""



def reader(md5s):
    return common.GUEST_PRELUDE + "\n".join(
        f'[ "$(dd if=/dev/pmem0 bs=4096 skip={R[i] // 4096} count={N // 4096} '
        f'2>/dev/null | md5sum | cut -d" " -f1)" = "{md5s[i]}" ] && echo P{i} OK '
        f'|| echo P{i} BAD' for i in range(2))


def main():
    t = common.Test("guest-crash")
    img = t.tmp / "crash.pcow"
    t.img("create", img, "64M")
    P = [common.pattern(("crash", i), N) for i in range(2)]
    files = {"data/P0": P[0], "data/P1": P[1]}

    def patterns_on_host(what):
        raw = t.to_raw(img)
        ok = all(common.read_at(raw, R[i], N) == P[i] for i in range(2))
        t.check(ok, f"{what}: convert -O raw has P0 and P1 (written before SYNCED)")
        raw.unlink()

    # --- boot 1: SIGKILL
    r = t.boot("1-sigkill", WRITER, [img], files=files, expect_rc=None,
               kill_on=r"^WRITING", kill_delay=0.3)
    t.check(r.killed and r.qemu_rc == -signal.SIGKILL and r.rc is None,
            f"QEMU SIGKILLed while the guest wrote (qemu_rc {r.qemu_rc}, "
            f"script rc {r.rc})")
    t.check("SYNCED" in r.output(), "guest reached SYNCED before the kill")
    inf = t.info(img)
    d = inf["format-specific"]["data"]
    t.note(f"after SIGKILL: dirty-flag {inf.get('dirty-flag')}, "
           f"active-clusters {d['active-clusters']}, allocated "
           f"{d['allocated-clusters']}, actual-size {inf['actual-size']}")
    rc = t.img("check", img, check=False)
    print("   " + rc.stdout.strip().replace("\n", "\n   "))
    t.check(rc.returncode in (0, 3),
            f"after SIGKILL: pcow-img check exits 0 or 3 (leaks only), "
            f"got {rc.returncode}")
    patterns_on_host("after SIGKILL")

    # --- boot 2: reopen read-write, read back, poweroff
    r = t.boot("2-reboot", reader([common.md5(p) for p in P]), [img])
    out = r.output()
    t.check("P0 OK" in out and "P1 OK" in out,
            "reboot after SIGKILL: the guest reads P0 and P1")
    t.check_clean(img, "after the reboot's poweroff")

    # --- boot 3: SIGTERM, boot 4: QMP quit
    for label, how in (("3-sigterm", "sigterm"), ("4-quit", "quit")):
        g = guest.Guest(WRITER, common.nvdimm_args([img]), **common.GUEST_KW,
                        files=files, qmp=(how == "quit"))
        with g:
            try:
                g.wait_for_line(r"^WRITING")
                time.sleep(0.3)
                if how == "sigterm":
                    g.kill(signal.SIGTERM)
                else:
                    try:
                        g.qmp().execute("quit")
                    except EOFError:
                        pass
            except guest.GuestError as e:
                t.check(False, f"boot {label}: {e}")
            r = g.wait(60)
        t.boots.append((label, r))
        print(f"   [boot {label}] rc={r.rc} qemu_rc={r.qemu_rc} "
              f"total={r.total_time:.1f}s timed_out={r.timed_out}")
        if r.qemu_stderr.strip():
            print("   qemu stderr: " + r.qemu_stderr.strip())
        t.check(r.qemu_rc == 0 and not r.timed_out and r.rc is None,
                f"{how} while the guest writes: QEMU exits 0 (got {r.qemu_rc})")
        t.check_clean(img, f"after {how}")
        patterns_on_host(f"after {how}")
    t.finish()


if __name__ == "__main__":
    main()
