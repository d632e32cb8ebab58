#!/usr/bin/env python3
"""Links between the reStructuredText files of docs/ reach their target.

  check-doc-links.py DOCS_DIR
  check-doc-links.py --selftest

rst2html (test docs-rst) checks the references inside one file only: a
link to another file, such as the guide's ``interop/pcow-spec.rst#locking``,
is a URI to it, and it stays "valid" when the spec's section is renamed.
This parses every file with docutils, takes each relative link to a .rst
file, and fails, one line per link, when that file does not exist or has no
section or target with the link's #anchor (docutils' id of its title).
"""
import glob
import os
import sys
import tempfile

import docutils.core
import docutils.nodes
import docutils.utils

SETTINGS = {'report_level': docutils.utils.Reporter.SEVERE_LEVEL + 1,
            'halt_level': docutils.utils.Reporter.SEVERE_LEVEL + 1,
            'file_insertion_enabled': False, 'raw_enabled': False}


def _findall(tree, cls):
    # findall() is docutils 0.18's name for traverse()
    return (tree.findall if hasattr(tree, 'findall') else tree.traverse)(cls)


def doctree(path):
    with open(path, encoding='utf-8') as fh:
        return docutils.core.publish_doctree(fh.read(), source_path=path,
                                             settings_overrides=SETTINGS)


def ids_of(tree):
    ids = set()
    for node in _findall(tree, docutils.nodes.Element):
        ids.update(node.get('ids', []))
    return ids


def links_of(tree):
    """Relative links to .rst files: (file part, anchor or '')"""
    for node in _findall(tree, docutils.nodes.reference):
        uri = node.get('refuri', '')
        if not uri or ':' in uri.split('#')[0] or uri.startswith('#'):
            continue
        path, _, anchor = uri.partition('#')
        if path.endswith('.rst'):
            yield path, anchor


def check(docs):
    files = sorted(glob.glob(os.path.join(docs, '*.rst')) +
                   glob.glob(os.path.join(docs, '*', '*.rst')))
    trees = {os.path.realpath(f): doctree(f) for f in files}
    bad = nlinks = 0
    for f in files:
        for path, anchor in sorted(set(links_of(trees[os.path.realpath(f)]))):
            nlinks += 1
            target = os.path.realpath(os.path.join(os.path.dirname(f), path))
            rel = os.path.relpath(f, docs)
            if target not in trees:
                print('not ok - %s links to %s: no such file under %s'
                      % (rel, path, docs))
                bad += 1
            elif anchor and anchor not in ids_of(trees[target]):
                print('not ok - %s links to %s#%s: %s has no section or '
                      'target with that id' % (rel, path, anchor, path))
                bad += 1
    print('%d files, %d links between them, %d broken'
          % (len(files), nlinks, bad))
    return 1 if bad else 0


def selftest():
    """A good link passes; a renamed section and a missing file fail"""
    guide = ('Guide\n=====\n\nSee Locking_ and `the spec`_.\n\n'
             '.. _Locking: sub/spec.rst#locking\n'
             '.. _the spec: sub/spec.rst\n')
    cases = [('Spec\n====\n\nLocking\n-------\n\nText.\n', True),
             ('Spec\n====\n\nLocks\n-----\n\nText.\n', False),
             (None, False)]
    for spec, want_ok in cases:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, 'guide.rst'), 'w') as fh:
                fh.write(guide)
            if spec is not None:
                os.mkdir(os.path.join(d, 'sub'))
                with open(os.path.join(d, 'sub', 'spec.rst'), 'w') as fh:
                    fh.write(spec)
            got_ok = check(d) == 0
        if got_ok != want_ok:
            print('not ok - selftest: expected %s for spec %r'
                  % ('pass' if want_ok else 'failure', spec))
            return 1
    print('ok - selftest: a good link passes, a renamed section and a '
          'missing file fail')
    return 0


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: check-doc-links.py DOCS_DIR | --selftest')
    if sys.argv[1] == '--selftest':
        return selftest()
    return check(sys.argv[1])


if __name__ == '__main__':
    sys.exit(main())
