#!/usr/bin/env python3
"""Every persist point of the spec is tagged in the code, and back.

  persist-tags.py SOURCE_ROOT

The spec (docs/interop/pcow-spec.rst) names each persist point P-xxx; the
code that makes it durable carries the same name in a comment, so that a
reader (and the crash harness's author) can go from one to the other.  A
name in the spec that no code carries, or a tag in the code that the spec
does not define, fails the test with one line per name.
"""
import os
import re
import sys

NAME = re.compile(r'\bP-[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+\b')
SPEC = 'docs/interop/pcow-spec.rst'
# Where libpcow and the Image Monitor write to images
CODE_DIRS = ['block/pcow', 'backends']


def code_tags(root):
    tags = {}
    for d in CODE_DIRS:
        for dirpath, _, files in os.walk(os.path.join(root, d)):
            for f in sorted(files):
                if not f.endswith(('.c', '.h')):
                    continue
                path = os.path.join(dirpath, f)
                with open(path, encoding='utf-8', errors='replace') as fh:
                    for n, line in enumerate(fh, 1):
                        for t in NAME.findall(line):
                            rel = os.path.relpath(path, root)
                            tags.setdefault(t, '%s:%d' % (rel, n))
    return tags


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: persist-tags.py SOURCE_ROOT')
    root = sys.argv[1]
    with open(os.path.join(root, SPEC), encoding='utf-8') as fh:
        spec = set(NAME.findall(fh.read()))
    tags = code_tags(root)
    if len(spec) < 10:
        sys.exit('%s names only %d persist points: not the spec?'
                 % (SPEC, len(spec)))
    bad = 0
    for name in sorted(spec - set(tags)):
        print('not ok - %s (named in %s) has no tag in %s'
              % (name, SPEC, ', '.join(CODE_DIRS)))
        bad += 1
    for name in sorted(set(tags) - spec):
        print('not ok - %s tagged at %s is not a persist point of %s'
              % (name, tags[name], SPEC))
        bad += 1
    for name in sorted(spec & set(tags)):
        print('ok - %s tagged at %s' % (name, tags[name]))
    print('%d persist points in the spec, %d tags in the code, %d mismatch%s'
          % (len(spec), len(tags), bad, '' if bad == 1 else 'es'))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
