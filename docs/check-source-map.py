#!/usr/bin/env python3
"""docs/pcow.rst's developer map, README.md's map and MAINTAINERS name
every source file.

  check-source-map.py SOURCE_ROOT

docs/pcow.rst's section "For developers: the source tree" gives each file of
libpcow, the Image Monitor, the QEMU glue, pcow-img and scripts/ one entry.
This fails, one line per problem, when a file there has no entry, when an
entry names a file that does not exist, when README.md's "What is here"
does not name it (by path or file name, in backquotes), or when
MAINTAINERS has no F: pattern covering a file.
"""
import fnmatch
import glob
import os
import re
import sys

GUIDE = 'docs/pcow.rst'
SECTION = 'For developers: the source tree'
# The files the map must name
PATTERNS = [
    'include/pcow/*.h',
    'block/pcow/*.[ch]',
    'backends/pcow-monitor*.[ch]',
    'backends/hostmem-pcow*.[ch]',
    'hw/mem/pcow-*.c',
    'qapi/pcow.json',
    'tools/pcow-img/*.[ch]',
    'scripts/*',
]
NAMED = re.compile(r'``([A-Za-z0-9_./-]+\.(?:c|h|py|sh|json))``')


def section_text(root):
    with open(os.path.join(root, GUIDE), encoding='utf-8') as fh:
        lines = fh.read().split('\n')
    try:
        start = lines.index(SECTION)
    except ValueError:
        sys.exit('%s has no section "%s"' % (GUIDE, SECTION))
    out = []
    for i in range(start + 2, len(lines)):
        # the next section of the same level ends it
        if (i + 1 < len(lines) and lines[i] and
                re.fullmatch(r'=+', lines[i + 1] or '-') and
                len(lines[i + 1]) >= len(lines[i])):
            break
        out.append(lines[i])
    return '\n'.join(out)


def readme_names(root):
    with open(os.path.join(root, 'README.md'), encoding='utf-8') as fh:
        text = fh.read()
    m = re.search(r'^## What is here\n(.*?)^## ', text, re.S | re.M)
    if not m:
        sys.exit('README.md has no section "## What is here"')
    return set(re.findall(r'`([^`]+)`', m.group(1)))


def maintainers_patterns(root):
    pats = []
    with open(os.path.join(root, 'MAINTAINERS'), encoding='utf-8') as fh:
        for line in fh:
            if line.startswith('F:'):
                pats.append(line[2:].strip())
    return pats


def covered(path, pats):
    for p in pats:
        if p.endswith('/') and path.startswith(p):
            return True
        if fnmatch.fnmatch(path, p):
            return True
    return False


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: check-source-map.py SOURCE_ROOT')
    root = sys.argv[1]
    text = section_text(root)
    # Entries are definition-list terms: lines that start with ``name``
    named = {n for line in text.split('\n') if line.startswith('``')
             for n in NAMED.findall(line)}
    files = sorted({os.path.relpath(f, root)
                    for p in PATTERNS
                    for f in glob.glob(os.path.join(root, p))
                    if os.path.isfile(f)})
    pats = maintainers_patterns(root)
    readme = readme_names(root)
    bad = 0
    for f in files:
        if f not in named and os.path.basename(f) not in named:
            print('not ok - %s has no entry in %s, "%s"'
                  % (f, GUIDE, SECTION))
            bad += 1
        if f not in readme and os.path.basename(f) not in readme:
            print('not ok - %s is not named in README.md, "What is here"'
                  % f)
            bad += 1
        if not covered(f, pats):
            print('not ok - %s is in no F: pattern of MAINTAINERS' % f)
            bad += 1
    paths = set(files) | {os.path.basename(f) for f in files}
    for n in sorted(named):
        if n not in paths and not os.path.exists(os.path.join(root, n)):
            print('not ok - %s, named in "%s", does not exist'
                  % (n, SECTION))
            bad += 1
    print('%d files, %d names in the map, %d problem%s'
          % (len(files), len(named), bad, '' if bad == 1 else 's'))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
