#!/usr/bin/env python3
"""Is libpcow's runtime module async-signal-safe?

The Image Monitor runs pcow_expand_cluster() and pcow_cow() (block/pcow/
runtime.c) in its SIGSEGV handler.  This follows every call from them
through libpcow's objects (objdump relocations and direct calls, static
functions included) and lists each function outside libpcow that is
reached, with its callers.  Exit status 1 if one is not on the list of
async-signal-safe functions below (system calls, string primitives,
libpmem's flush): a malloc, a printf, a lock.  Indirect calls (the
persistence hook of the tests) are not followed.

Usage: scripts/pcow-sigsafe.py BUILD_DIR      (after ninja)
"""
import collections, glob, re, subprocess, sys

ENTRY = ['pcow_expand_cluster', 'pcow_cow', 'pcow_cow_units_copied']
SAFE = {
    '__errno_location', '__popcountdi2', '__stack_chk_fail',
    'memset', 'memcpy', 'memmove', 'memcmp',
    'pread64', 'pwrite64', 'pread', 'pwrite', 'fallocate64', 'fallocate',
    'fdatasync', 'ftruncate64', 'ftruncate', 'lseek64', 'lseek',
    'mmap64', 'mmap', 'munmap', 'mremap', 'msync', 'sched_yield',
    'pmem_persist',
}

def main():
    objs = glob.glob(sys.argv[1] + '/libpcow.a.p/*.o')
    if not objs:
        sys.exit('pcow-sigsafe: no objects in %s/libpcow.a.p' % sys.argv[1])
    calls = collections.defaultdict(set)
    owner = {}
    for o in objs:
        out = subprocess.run(['objdump', '-dr', '--no-show-raw-insn', o],
                             capture_output=True, text=True,
                             check=True).stdout
        cur = None
        for line in out.splitlines():
            m = re.match(r'^[0-9a-f]+ <([^>]+)>:', line)
            if m:
                cur = (o, m.group(1))
                calls[cur]
                continue
            if cur is None:
                continue
            m = re.search(r'R_X86_64_\w+\s+([^\s+-]+)', line)
            if m:
                calls[cur].add(m.group(1))
            m = re.search(r'\b(?:call|jmp)\w*\s+[0-9a-f]+ <([^>+]+)>', line)
            if m:
                calls[cur].add(m.group(1))
        nm = subprocess.run(['nm', o], capture_output=True, text=True,
                            check=True).stdout
        for line in nm.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] == 'T':
                owner[p[2]] = o
    rt = [o for o in objs if o.endswith('runtime.c.o')]
    if not rt:
        sys.exit('pcow-sigsafe: no runtime.c.o')
    seen, outside = set(), collections.defaultdict(set)
    stack = [(rt[0], f) for f in ENTRY]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for t in calls.get(node, ()):
            if (node[0], t) in calls:
                stack.append((node[0], t))
            elif t in owner:
                stack.append((owner[t], t))
            elif not t.startswith('.'):
                outside[t].add(node[1])
    bad = 0
    print('libpcow functions reached from %s: %d' % (', '.join(ENTRY),
                                                     len(seen)))
    for t in sorted(outside):
        ok = t in SAFE
        bad += not ok
        print('  %-4s %-20s from %s' % ('ok' if ok else 'BAD', t,
                                        ', '.join(sorted(outside[t]))))
    sys.exit(1 if bad else 0)

if __name__ == '__main__':
    main()
