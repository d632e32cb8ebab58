#!/usr/bin/env python3
"""Read and patch pcow header fields on disk, for the CLI tests.

Written from docs/interop/pcow-spec.rst (Header slots, Hot line),
independently of libpcow, so that tests check the bytes the spec defines
and not the code's own constants.

  pcow-hdr.py FILE slot               current slot: A or B
  pcow-hdr.py FILE get FIELD          a field of the current slot
  pcow-hdr.py FILE set FIELD VALUE    patch it (the slot's CRC is fixed up)
  pcow-hdr.py FILE hot FIELD [VALUE]  get/set a hot line field
  pcow-hdr.py FILE unref VCLUSTER     clear an active L2 entry (32 bytes)
  pcow-hdr.py FILE l2entry VCLUSTER   file offset of an active L2 entry
  pcow-hdr.py FILE snapid K ID        set the id of snapshot record K (the
                                      table's and the slot's CRCs are fixed)
  pcow-hdr.py FILE mkimage SIZE       write a new empty image (64 KiB
                                      clusters, 4 KiB COW units, no base)

The current slot is the valid one (magic, version 1, length, CRC) with the
highest generation.  Exit 1 with a message when there is none.
"""
import struct
import sys

MAGIC = b"PCOW"         # 50 43 4f 57
SLOTS = {"A": 0, "B": 1536}
SLOT_SIZE = 1536
FIELDS = {
    "magic": (0, "4s"), "version": (4, "<I"), "header_length": (8, "<I"),
    "crc": (12, "<I"), "generation": (16, "<Q"),
    "incompatible_features": (24, "<Q"), "compatible_features": (32, "<Q"),
    "autoclear_features": (40, "<Q"), "cluster_bits": (48, "<I"),
    "cow_unit_bits": (52, "<I"), "virtual_size": (56, "<Q"),
    "l1_table_offset": (64, "<Q"), "l1_size": (72, "<I"),
    "nb_snapshots": (76, "<I"), "snapshots_offset": (80, "<Q"),
    "snapshots_size": (88, "<I"), "snapshots_crc32c": (92, "<I"),
    "next_snapshot_id": (96, "<Q"), "backing_format": (104, "<I"),
    "backing_name_length": (108, "<I"),
}
HOT = {"frontier": 3072, "in_use": 3080, "stamp": 3088}


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def slot_valid(s):
    if s[:4] != MAGIC or struct.unpack_from("<I", s, 4)[0] != 1:
        return False
    length = struct.unpack_from("<I", s, 8)[0]
    if length < 128 or length > SLOT_SIZE or length % 8:
        return False
    body = bytearray(s[:length])
    body[12:16] = bytes(4)
    return crc32c(body) == struct.unpack_from("<I", s, 12)[0]


def current(f):
    best = None
    for name, off in SLOTS.items():
        f.seek(off)
        s = f.read(SLOT_SIZE)
        if len(s) == SLOT_SIZE and slot_valid(s):
            gen = struct.unpack_from("<Q", s, 16)[0]
            if best is None or gen > best[2]:
                best = (name, off, gen, bytearray(s))
    if best is None:
        sys.exit("pcow-hdr.py: no valid header slot")
    return best


def field(s, name):
    off, fmt = FIELDS[name]
    return struct.unpack_from(fmt, s, off)[0]


def l2_entry_offset(f, s, v):
    cs = 1 << field(s, "cluster_bits")
    l2e = cs // 32
    f.seek(field(s, "l1_table_offset") + (v // l2e) * 8)
    l2 = struct.unpack("<Q", f.read(8))[0] & ~(cs - 1) & ((1 << 56) - 1)
    if not l2:
        sys.exit("pcow-hdr.py: no L2 table for cluster %d" % v)
    return l2 + (v % l2e) * 32


def mkimage(path, size):
    """An empty image exactly as the spec's Create describes it."""
    cbits, cs = 16, 1 << 16
    l1_size = -(-size // (cs * (cs // 32)))
    l1_bytes = -(-(l1_size * 8) // cs) * cs
    frontier = cs + l1_bytes
    s = bytearray(SLOT_SIZE)
    values = {"magic": MAGIC, "version": 1, "header_length": 128,
              "generation": 1, "cluster_bits": cbits, "cow_unit_bits": 12,
              "virtual_size": size, "l1_table_offset": cs,
              "l1_size": l1_size, "next_snapshot_id": 1}
    for name, v in values.items():
        struct.pack_into(FIELDS[name][1], s, FIELDS[name][0], v)
    struct.pack_into("<I", s, 12, crc32c(bytes(s[:128])))
    with open(path, "xb") as f:
        f.write(s)
        f.seek(HOT["frontier"])
        f.write(struct.pack("<Q", frontier))
        f.truncate(frontier)


def set_field(f, off, s, name, value):
    foff, fmt = FIELDS[name]
    struct.pack_into(fmt, s, foff, value)
    length = field(s, "header_length")
    s[12:16] = bytes(4)
    struct.pack_into("<I", s, 12, crc32c(bytes(s[:length])))
    f.seek(off)
    f.write(s)


def set_snapshot_id(f, off, s, k, new_id):
    toff, tsize = field(s, "snapshots_offset"), field(s, "snapshots_size")
    f.seek(toff)
    table = bytearray(f.read(tsize))
    pos = 0
    for _ in range(k):
        name_len = struct.unpack_from("<I", table, pos + 20)[0]
        pos += 64 + -(-name_len // 8) * 8
    struct.pack_into("<Q", table, pos, new_id)
    f.seek(toff)
    f.write(table)
    set_field(f, off, s, "snapshots_crc32c", crc32c(bytes(table)))


def main(argv):
    path, cmd, args = argv[1], argv[2], argv[3:]
    if cmd == "mkimage":
        mkimage(path, int(args[0], 0))
        return
    with open(path, "r+b") as f:
        name, off, _, s = current(f)
        if cmd == "slot":
            print(name)
        elif cmd == "get":
            v = field(s, args[0])
            print(v.decode("latin-1") if isinstance(v, bytes) else v)
        elif cmd == "set":
            set_field(f, off, s, args[0], int(args[1], 0))
        elif cmd == "snapid":
            set_snapshot_id(f, off, s, int(args[0]), int(args[1], 0))
        elif cmd == "hot":
            f.seek(HOT[args[0]])
            if len(args) > 1:
                f.write(struct.pack("<Q", int(args[1], 0)))
            else:
                print(struct.unpack("<Q", f.read(8))[0])
        elif cmd == "l2entry":
            print(l2_entry_offset(f, s, int(args[0], 0)))
        elif cmd == "unref":
            f.seek(l2_entry_offset(f, s, int(args[0], 0)))
            f.write(bytes(32))
        else:
            sys.exit("pcow-hdr.py: unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
