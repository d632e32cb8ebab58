#!/usr/bin/env python3
"""Which file permissions does a compiled AppArmor profile grant a path?

    aa-perms.py RULE-EXPRS PATH=PERMS... PATH!PERMS...

RULE-EXPRS is what `apparmor_parser -D rule-exprs` printed for one profile:
one "rule: REGEX  ->  TREE [deny ](ALLOW/AUDIT)< ...>" line per file rule,
with the parser's own translation of the rule's glob (variables, {a,b},
*, ** expanded) into a regular expression.  For each PATH, every rule whose
regex matches it adds its permissions; deny rules take theirs away.  PERMS
are letters from "rwaklmx".  A permission counts only when the profile
grants it both to the file's owner and to others (the top image is owned
by the QEMU user while the domain runs, the bases are not).

PATH!PERMS asks the opposite: the profile must grant none of PERMS, to
the owner or to others.

Prints one line per PATH; exits 0 when every PATH=PERMS gets all its
PERMS and every PATH!PERMS none of them, 1 when one does not, 2 on bad
input.
"""
import re
import sys

# The parser's file permission bits (parser/immunix.h): the owner's in the
# low 14 bits, the others' shifted left by 14.
BITS = {'x': 0x1, 'w': 0x2, 'r': 0x4, 'a': 0x8, 'l': 0x10, 'k': 0x20,
        'm': 0x40}
OTHER_SHIFT = 14
RULE = re.compile(r'^rule: (.*?)  ->  .*? (deny )?\((0x[0-9a-f]+)/[0-9a-fx]+\)')


def load(path):
    rules = []
    with open(path) as f:
        for line in f:
            m = RULE.match(line)
            if not m:
                continue
            try:
                rx = re.compile(m.group(1), re.S)
            except re.error as e:
                sys.exit('aa-perms: cannot read rule %r: %s' % (m.group(1), e))
            rules.append((rx, bool(m.group(2)), int(m.group(3), 16)))
    if not rules:
        print('aa-perms: no "rule:" lines in %s' % path, file=sys.stderr)
        sys.exit(2)
    return rules


def granted(rules, path, either=False):
    allow = deny = 0
    for rx, is_deny, mask in rules:
        if rx.fullmatch(path):
            if is_deny:
                deny |= mask
            else:
                allow |= mask
    mask = allow & ~deny
    owner = mask & ((1 << OTHER_SHIFT) - 1)
    other = mask >> OTHER_SHIFT
    if either:
        return ''.join(p for p, b in BITS.items() if (owner | other) & b)
    return ''.join(p for p, b in BITS.items() if owner & b and other & b)


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().split('\n\n')[1], file=sys.stderr)
        return 2
    rules = load(argv[1])
    bad = 0
    for arg in argv[2:]:
        sep = '=' if arg.rfind('=') > arg.rfind('!') else '!'
        path, sep, want = arg.rpartition(sep)
        if not sep or not path.startswith('/') or set(want) - set(BITS):
            print('aa-perms: bad argument %r (PATH=PERMS or PATH!PERMS)'
                  % arg, file=sys.stderr)
            return 2
        if sep == '!':
            have = granted(rules, path, either=True)
            extra = ''.join(p for p in want if p in have)
            if extra:
                bad += 1
                print('GRANTED: %s must not get %s, the profile grants "%s"'
                      % (path, want, have))
            else:
                print('denied: %s %s (profile grants "%s")'
                      % (path, want, have))
            continue
        have = granted(rules, path)
        missing = ''.join(p for p in want if p not in have)
        if missing:
            bad += 1
            print('NOT covered: %s needs %s, the profile grants "%s" '
                  '(missing %s)' % (path, want, have, missing))
        else:
            print('covered: %s %s (profile grants "%s")' % (path, want, have))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
