#!/usr/bin/env python3
"""Module map of qemu-pcow: file-level call graph from object symbols,
its strongly connected components (cycles), and the longest functions.
Usage: scripts/pcow-modmap.py BUILD_DIR [SRC_DIR]   (after make; TOP=N for more)"""
import subprocess, sys, re, os, glob, collections
build = sys.argv[1]; src = sys.argv[2] if len(sys.argv) > 2 else '.'
objs = sorted(glob.glob(f'{build}/libpcow.a.p/*.o') + glob.glob(f'{build}/libpcowmon.a.p/*.o')
              + glob.glob(f'{build}/qemu-build/libcommon.fa.p/backends_hostmem-pcow*.c.o')
              + glob.glob(f'{build}/qemu-build/libcommon.fa.p/hw_mem_pcow-qmp.c.o')
              + glob.glob(f'{build}/tools/pcow-img/pcow-img.p/*.o'))
def name(o):
    b = os.path.basename(o)[:-2]
    b = re.sub(r'^(block_pcow_|backends_|hw_mem_|tools_pcow-img_)', '', b)
    d = os.path.basename(os.path.dirname(o))
    pre = {'libpcow.a.p': 'block/pcow/', 'libpcowmon.a.p': 'backends/', 'pcow-img.p': 'tools/pcow-img/'}.get(d, '')
    if 'hostmem' in b: pre = 'backends/'
    if 'pcow-qmp' in b: pre = 'hw/mem/'
    return pre + b
defs, undefs = {}, {}
for o in objs:
    out = subprocess.run(['nm', o], capture_output=True, text=True).stdout
    n = name(o); defs[n] = set(); undefs[n] = set()
    for l in out.splitlines():
        p = l.split()
        if len(p) == 3 and p[1] in 'TDBR': defs[n].add(p[2])
        elif len(p) == 2 and p[0] == 'U': undefs[n].add(p[1])
owner = {s: n for n, ss in defs.items() for s in ss}
edges = collections.defaultdict(set)
for n, us in undefs.items():
    for s in us:
        if s in owner and owner[s] != n: edges[n].add(owner[s])
print('## Module map (file -> files it calls)')
for n in sorted(defs): print(f'{n}: {" ".join(sorted(edges[n])) or "-"}')
# Tarjan SCC
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in sorted(defs):
    if v not in idx: sc(v)
print('## Cycles (strongly connected components)')
for s in sccs: print(' <-> '.join(s))
if not sccs: print('none')
print('## Longest functions')
fl = []
files = glob.glob(f'{src}/block/pcow/*.c') + glob.glob(f'{src}/backends/*pcow*.c') + glob.glob(f'{src}/hw/mem/pcow*.c') + glob.glob(f'{src}/tools/pcow-img/*.c')
for f in files:
    lines = open(f).read().split('\n'); start = None; fn = None
    for i, l in enumerate(lines):
        if l == '{' and i > 0:
            j = i - 1
            while j > 0 and '(' not in lines[j]: j -= 1
            m = re.search(r'(\w+)\s*\(', lines[j]); fn = m.group(1) if m else '?'; start = i
        elif l == '}' and start is not None:
            fl.append((i - start + 1, os.path.relpath(f, src), fn)); start = None
fl.sort(reverse=True)
for n, f, fn in fl[:int(os.environ.get('TOP', 10))]: print(f'{n:5d} {f}:{fn}')
print(f'functions over 100 lines: {sum(1 for x in fl if x[0] > 100)}')
