#!/usr/bin/env python3
"""The spec's layout and limits match pcow-int.h and pcow.h, field by field.

  check-spec-layout.py SOURCE_ROOT

docs/interop/pcow-spec.rst gives the header slot, the hot line and the
snapshot record and its VM state extension as tables of offset, size and
field, and the L2 entry as a
table of 8-byte words; block/pcow/pcow-int.h names the same offsets
(PCOW_H_*, PCOW_HOT_*, PCOW_S_*, PCOW_W_*) with the size in a comment
("u32", "u64"), and the code encodes and decodes through those names.  The spec's limits and
sizes (cluster 0's layout, cluster bits, name lengths, L1 size, L2 entry
and snapshot record sizes, chain depth) and its bits (the map word's flags,
the incompatible feature bits) are compared with the constants of the same
meaning.  This fails, one line per difference, when an offset, a
size, a field name or a limit differs, or when either side has a field the
other lacks.
"""
import os
import re
import sys

SPEC = 'docs/interop/pcow-spec.rst'
HDR = 'block/pcow/pcow-int.h'
API = 'include/pcow/pcow.h'
# (what, regex over the spec with one group per value, macros in order;
# a macro "A+B" means the value is B - A + 1 bytes from A's value)
LIMITS = [
    ('header slot A', r'header slot A\s+bytes\s+(\d+) \.\. (\d+)',
     ['PCOW_SLOT_A', 'PCOW_SLOT_A+PCOW_SLOT_SIZE']),
    ('header slot B', r'header slot B\s+bytes\s+(\d+) \.\. (\d+)',
     ['PCOW_SLOT_B', 'PCOW_SLOT_B+PCOW_SLOT_SIZE']),
    ('hot line', r'hot line\s+bytes\s+(\d+) \.\. (\d+)',
     ['PCOW_HOT_OFFSET', 'PCOW_HOT_OFFSET+PCOW_HOT_SIZE']),
    ('cluster_bits', r'``cluster_bits``: (\d+) \.\. (\d+)',
     ['PCOW_MIN_CLUSTER_BITS', 'PCOW_MAX_CLUSTER_BITS']),
    ('backing_name_length', r'``backing_name_length``: 0 \.\. (\d+)',
     ['PCOW_MAX_BACKING_NAME']),
    ('snapshot name_length', r'``name_length``: 1 \.\. (\d+)',
     ['PCOW_MAX_SNAPSHOT_NAME']),
    ('l1_size', r'``l1_size``: entries.*?at most\s+``1 << (\d+)``',
     ['log2:PCOW_MAX_L1_SIZE']),
    ('L2 entry size', r'L2 entries are (\d+) bytes',
     ['PCOW_L2_ENTRY_SIZE']),
    ('snapshot record name offset', r'\n(\d+)\s+n\s+name \(no NUL\)',
     ['PCOW_SNAP_FIXED']),
    ('backing chain depth', r'depth at most (\d+)',
     ['PCOW_MAX_CHAIN_DEPTH']),
    ('map flag PRESENT', r'\* bit (\d+) ``PRESENT``',
     ['log2:PCOW_F_PRESENT']),
    ('map flag WRITABLE', r'\* bit (\d+) ``WRITABLE``',
     ['log2:PCOW_F_WRITABLE']),
    ('map flag PARTIAL', r'\* bit (\d+) ``PARTIAL``',
     ['log2:PCOW_F_PARTIAL']),
    ('incompatible feature BACKING_LIMIT',
     r'incompatible bit (\d+), ``BACKING_LIMIT``',
     ['log2:PCOW_INCOMPAT_BACKING_LIMIT']),
    ('incompatible feature VM_STATE',
     r'incompatible bit (\d+), ``VM_STATE``',
     ['log2:PCOW_INCOMPAT_VM_STATE']),
    ('snapshot extra_length', r'``extra_length``: bytes.*?0, or (\d+)',
     ['PCOW_SX_SIZE']),
    ('VM state size', r'``vm_state_size``: bytes of VM state, 1 \.\.\s+'
     r'``PCOW_MAX_VM_STATE`` \(2\^(\d+)\)', ['log2:PCOW_MAX_VM_STATE']),
]
CONST = re.compile(r'^#define (PCOW_[A-Z0-9_]+)\s+(?:(\d+)|\((\d+)u?l?l? << '
                   r'(\d+)\))')
ROW = re.compile(r'^(\d+)\s+(\d+|n)\s+(.*)$')
FIELD = re.compile(r'``([a-z0-9_]+)``')
DEFINE = re.compile(r'^#define (PCOW_(?:H|HOT|S|SX|W)_[A-Z0-9_]+)'
                    r'\s+(\d+)\s*(?:/\*\s*(.*?)\s*\*/)?')
# Rows of the L2 entry table: word, name
WORD_ROW = re.compile(r'^(\d+)\s+(?:``([a-z0-9_]+)``|(reserved))\s')
# Table rows whose field is described, not named with ``...``
DESCRIBED = {'reserved': 'reserved', 'backing file name': 'backing_name'}


def spec_table(lines, title, words=False):
    """Rows (offset, size, field) of the first table after @title; with
    @words, rows (word, 8, name) of the L2 entry table"""
    i = lines.index(title)
    rows, rules = [], 0
    for line in lines[i:]:
        if line.startswith('====') and '  ' in line:
            rules += 1
            if rules == 3:
                break
            continue
        if rules != 2:
            continue
        if words:
            m = WORD_ROW.match(line)
            if m:
                rows.append((int(m.group(1)), 8, m.group(2) or m.group(3)))
            continue
        m = ROW.match(line)
        if not m:
            continue
        off, size, text = int(m.group(1)), m.group(2), m.group(3)
        f = FIELD.match(text)
        if f:
            name = f.group(1)
        else:
            name = next((v for k, v in DESCRIBED.items()
                         if text.startswith(k)), text.split()[0])
        rows.append((off, None if size == 'n' else int(size), name))
    return rows


def code_fields(path):
    """{offset: (size, name, macro)} of the PCOW_H_* (header), PCOW_HOT_*
    (hot line), PCOW_S_* (snapshot record) and PCOW_W_* (L2 entry word)
    fields"""
    groups = {'H': {}, 'HOT': {}, 'S': {}, 'SX': {}, 'W': {}}
    with open(path, encoding='utf-8') as fh:
        for line in fh:
            m = DEFINE.match(line)
            if not m:
                continue
            macro, off, comment = m.group(1), int(m.group(2)), m.group(3)
            if macro in ('PCOW_HOT_OFFSET', 'PCOW_HOT_SIZE', 'PCOW_SX_SIZE'):
                continue
            words = (comment or '').replace(',', ' ').split()
            size = {'u32': 4, 'u64': 8}.get(words[0] if words else '')
            # "u32 header_length": the spec's name where the macro's differs
            if len(words) > 1 and re.fullmatch(r'[a-z0-9]+_[a-z0-9_]+',
                                               words[1]):
                name = words[1]
            else:
                name = macro.split('_', 2)[2].lower()
                name = re.sub(r'^(reserved)\d+$', r'\1', name)
            group = macro.split('_')[1]
            if group == 'W':
                size = 8
            groups[group][off] = (size, name, macro)
    # Without a size comment a field reaches the next one
    for fields in groups.values():
        offs = sorted(fields)
        for a, b in zip(offs, offs[1:]):
            if fields[a][0] is None:
                fields[a] = (b - a,) + fields[a][1:]
    return groups


def constants(paths):
    out = {}
    for path in paths:
        with open(path, encoding='utf-8') as fh:
            for line in fh:
                m = CONST.match(line)
                if m:
                    out[m.group(1)] = (int(m.group(2)) if m.group(2) else
                                       int(m.group(3)) << int(m.group(4)))
    return out


def code_value(macro, consts):
    if macro.startswith('log2:'):
        v = consts.get(macro[5:])
        return None if v is None else v.bit_length() - 1
    if '+' in macro:
        a, b = macro.split('+')
        if a not in consts or b not in consts:
            return None
        return consts[a] + consts[b] - 1
    return consts.get(macro)


def compare_limits(text, consts):
    bad = 0
    for what, regex, macros in LIMITS:
        m = re.search(regex, text, re.S)
        if not m:
            print('not ok - %s: not found in the spec (/%s/)' % (what, regex))
            bad += 1
            continue
        for value, macro in zip(m.groups(), macros):
            cv = code_value(macro, consts)
            if cv is None:
                print('not ok - %s: %s not found in the code' % (what, macro))
                bad += 1
            elif cv != int(value):
                print('not ok - %s: the spec says %s, the code %s (%s)'
                      % (what, value, cv, macro))
                bad += 1
    return bad


def compare(what, rows, fields):
    bad = 0
    seen = set()
    for off, size, name in rows:
        rel = off
        seen.add(rel)
        if rel not in fields and name == 'reserved':
            continue                # need not be named in the code
        if rel not in fields:
            print('not ok - %s: the spec has %s at %d; pcow-int.h has no '
                  'field there' % (what, name, off))
            bad += 1
            continue
        csize, cname, macro = fields[rel]
        if size is not None and csize is not None and csize != size:
            print('not ok - %s: %s at %d is %d bytes in the spec, %s in '
                  'pcow-int.h (%s)' % (what, name, off, size, csize, macro))
            bad += 1
        if cname != name:
            print('not ok - %s: at %d the spec has %s, pcow-int.h %s (%s)'
                  % (what, off, name, cname, macro))
            bad += 1
    for rel in sorted(set(fields) - seen):
        print('not ok - %s: pcow-int.h has %s at %d; the spec has no field '
              'there' % (what, fields[rel][2], rel))
        bad += 1
    return bad


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: check-spec-layout.py SOURCE_ROOT')
    root = sys.argv[1]
    with open(os.path.join(root, SPEC), encoding='utf-8') as fh:
        text = fh.read()
    lines = text.split('\n')
    tables = [('header slot', spec_table(lines, 'Header slots'), 'H', 20),
              ('hot line', spec_table(lines, 'Hot line'), 'HOT', 2),
              ('snapshot record', spec_table(lines, 'Snapshot table'), 'S',
               10),
              ('VM state extension', spec_table(lines, 'VM state'), 'SX',
               3),
              ('L2 entry word', spec_table(lines, 'Mapping: L1 and L2 tables',
                                           words=True), 'W', 4)]
    groups = code_fields(os.path.join(root, HDR))
    bad = nfields = 0
    for what, rows, group, least in tables:
        if len(rows) < least or not groups[group]:
            print('not ok - %s: table not found (%d rows in the spec, %d '
                  'PCOW_%s_* in pcow-int.h)' % (what, len(rows),
                                               len(groups[group]), group))
            bad += 1
            continue
        bad += compare(what, rows, groups[group])
        nfields += len(rows)
    bad += compare_limits(text, constants([os.path.join(root, HDR),
                                           os.path.join(root, API)]))
    print('%d fields of %d tables and %d limits compared, %d difference%s'
          % (nfields, len(tables), len(LIMITS), bad, '' if bad == 1 else 's'))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
