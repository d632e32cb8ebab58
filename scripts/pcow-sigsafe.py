#!/usr/bin/env python3
"""Are libpcow's runtime module and the monitor's SIGSEGV handler
async-signal-safe?

The Image Monitor runs pcow_expand_cluster() and pcow_cow() (block/pcow/
runtime.c) in its SIGSEGV handler, segv_handler() in backends/
pcow-monitor-cow.c, which also calls into libpcow outside runtime.c
(pcow_reserve_count, in alloc.c) and into the monitor's own files (its
signal-safe formatter, statistics, the pool's eventfd).  This follows every
call from those entry points through libpcow's and the monitor's objects
(objdump relocations and direct calls, static functions included) and
lists each function outside them that is reached, with its callers.  Exit
status 1 if one is not on the list of async-signal-safe functions below
(system calls, string primitives, libpmem's flush): a malloc, a printf, a
lock.  An indirect call ("call *") is a problem too, except in persist.c,
whose persistence hook the monitor's API says runs in the handler (a tail
call through a pointer, "jmp *", looks like a switch's jump table and is
not told apart).  The monitor's entry is checked when its objects
(libpcowmon) are built.

Usage: scripts/pcow-sigsafe.py BUILD_DIR      (after ninja)
       scripts/pcow-sigsafe.py --selftest     (the checker catches a
                                               malloc and an indirect call
                                               behind the handler)
"""
import collections, glob, os, re, subprocess, sys, tempfile

# (object file suffix, entry points)
ENTRIES = [
    ('runtime.c.o', ['pcow_expand_cluster', 'pcow_cow',
                     'pcow_cow_units_copied']),
    ('pcow-monitor-cow.c.o', ['segv_handler']),
]
SAFE = {
    '__errno_location', '__popcountdi2', '__stack_chk_fail',
    'memset', 'memcpy', 'memmove', 'memcmp',
    'pread64', 'pwrite64', 'pread', 'pwrite', 'fallocate64', 'fallocate',
    'fdatasync', 'ftruncate64', 'ftruncate', 'lseek64', 'lseek',
    'mmap64', 'mmap', 'munmap', 'mremap', 'msync', 'sched_yield',
    'pmem_persist',
    # the monitor's handler: report, clock, eventfd, futex, chaining
    'write', 'clock_gettime', 'syscall', 'raise', 'sigaction',
    'sigemptyset',
}
# A sanitizer build's instrumentation (ASan/UBSan runtime calls the
# compiler inserts): not part of the code under test, listed as such
INSTRUMENTATION = ('__asan_', '__ubsan_', '__sanitizer_', '__lsan_')
INDIRECT = '<indirect call>'
# Where an indirect call is the persistence hook (documented as such), or
# the previous SIGSEGV handler, chained for a fault that is not ours (in
# chain(), kept out of line for this check)
INDIRECT_OK = ('persist.c.o',)
INDIRECT_OK_FN = {('pcow-monitor-cow.c.o', 'chain')}


def read_objects(objs):
    """calls[(obj, fn)] = callees; owner[fn] = obj; data symbols"""
    calls = collections.defaultdict(set)
    owner, data = {}, set()
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
            if re.search(r'\bcall\w*\s+\*', line):
                calls[cur].add(INDIRECT)
        nm = subprocess.run(['nm', o], capture_output=True, text=True,
                            check=True).stdout
        for line in nm.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] == 'T':
                owner[p[2]] = o
            elif len(p) == 3 and p[1] in 'BDRVbdr':
                data.add(p[2])
    return calls, owner, data


def check(build):
    objs = glob.glob(build + '/libpcow.a.p/*.o')
    if not objs:
        sys.exit('pcow-sigsafe: no objects in %s/libpcow.a.p' % build)
    objs += glob.glob(build + '/libpcowmon.a.p/*.o')
    calls, owner, data = read_objects(objs)
    stack, names = [], []
    for suffix, fns in ENTRIES:
        obj = [o for o in objs if o.endswith(suffix)]
        if not obj and suffix == 'runtime.c.o':
            sys.exit('pcow-sigsafe: no runtime.c.o')
        for f in fns if obj else []:
            if (obj[0], f) not in calls:
                sys.exit('pcow-sigsafe: no %s in %s' % (f, obj[0]))
            stack.append((obj[0], f))
            names.append(f)
    seen, outside = set(), collections.defaultdict(set)
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
            elif t == INDIRECT:
                ok = node[0].endswith(INDIRECT_OK) or any(
                    node[0].endswith(o) and node[1] == f
                    for o, f in INDIRECT_OK_FN)
                outside['%s (%s)' % (t, 'hook' if ok else 'unknown')].add(
                    node[1])
            elif t not in data and not t.startswith('.'):
                outside[t].add(node[1])
    bad = instr = 0
    print('functions reached from %s: %d' % (', '.join(names), len(seen)))
    for t in sorted(outside):
        if t.startswith(INSTRUMENTATION):
            instr += 1
            continue
        ok = t in SAFE or t == INDIRECT + ' (hook)'
        bad += not ok
        print('  %-4s %-20s from %s' % ('ok' if ok else 'BAD', t,
                                        ', '.join(sorted(outside[t]))))
    if instr:
        print('  (%d sanitizer instrumentation symbols not counted)' % instr)
    return 1 if bad else 0


SELFTEST = {
    # a handler whose callee, outside the runtime module, allocates
    'malloc': ('''
        #include <stdlib.h>
        void *volatile keep;
        int pcow_reserve_count(void) { keep = malloc(1); return 0; }''',
               'int pcow_reserve_count(void);\n'
               'void segv_handler(void) { pcow_reserve_count(); }\n'),
    # a handler that calls through a pointer
    'indirect': ('int pcow_reserve_count(void) { return 0; }\n',
                 'void (*volatile fp)(void);\nvolatile int n;\n'
                 'void segv_handler(void) { fp(); n++; }\n'),
    'clean': ('int pcow_reserve_count(void) { return 0; }\n',
              'int pcow_reserve_count(void);\n'
              'void segv_handler(void) { pcow_reserve_count(); }\n'),
}
RUNTIME = ('void pcow_expand_cluster(void) {}\nvoid pcow_cow(void) {}\n'
           'void pcow_cow_units_copied(void) {}\n')


def selftest():
    cc = os.environ.get('CC', 'cc')
    for name, (alloc, handler) in sorted(SELFTEST.items()):
        with tempfile.TemporaryDirectory() as d:
            for sub, base, src in (('libpcow.a.p', 'runtime.c', RUNTIME),
                                   ('libpcow.a.p', 'alloc.c', alloc),
                                   ('libpcowmon.a.p', 'pcow-monitor-cow.c',
                                    handler)):
                os.makedirs(os.path.join(d, sub), exist_ok=True)
                c = os.path.join(d, base)
                with open(c, 'w') as fh:
                    fh.write(src)
                subprocess.run([cc, '-O2', '-fno-inline', '-c', c, '-o',
                                os.path.join(d, sub, 'x_' + base + '.o')],
                               check=True)
            ret = check(d)
        if ret != (0 if name == 'clean' else 1):
            print('not ok - selftest %s: exit %d' % (name, ret))
            return 1
        print('ok - selftest %s: exit %d' % (name, ret))
    return 0


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: pcow-sigsafe.py BUILD_DIR | --selftest')
    if sys.argv[1] == '--selftest':
        return selftest()
    return check(sys.argv[1])


if __name__ == '__main__':
    sys.exit(main())
