#!/usr/bin/env bash
# Static AppArmor checks of qemu-pcow's snippet (tools/apparmor/qemu-pcow.in,
# installed by scripts/install-apparmor.sh) against Debian 12's libvirt 9.0:
# no AppArmor kernel is needed, nothing is loaded, enforcement itself is
# not tested (docs/pcow.rst, "Confined hosts").
#
#   confine-apparmor.sh parse   the installer (idempotent include line;
#                               --destdir leaves the local file alone; no
#                               /etc/apparmor.d: nothing installed), then
#                               apparmor_parser -Q --skip-kernel-load
#                               compiles a domain's profile, made the way
#                               libvirt makes it (TEMPLATE.qemu, Debian's
#                               abstractions, our snippet, virt-aa-helper's
#                               rules); a broken snippet must fail to parse
#   confine-apparmor.sh local   what the installer does to a host: every
#                               domain's profile still compiles once the
#                               abstraction is removed again (uninstall);
#                               the administrator's last line stays a line
#                               of its own; a prefix with a space or "&"
#                               gives rules for that very path; one the
#                               AppArmor syntax cannot hold is refused
#                               before anything is written
#   confine-apparmor.sh cover   virt-aa-helper's rules for a domain whose
#                               NVDIMM is a pcow overlay contain the image
#                               ("rw"); with the snippet, the compiled
#                               profile grants every file `pcow-img info`
#                               lists for the chain (image rwk, bases rk),
#                               /dev/userfaultfd (rw) and the installed QEMU
#                               (rmx); without it, it does not; and
#                               no more: bases are not writable, another
#                               domain's .pcow image gets no r or w
#
# The chain's bases sit in the documented base directory /var/lib/pcow/base
# (a subdirectory made and removed here; as root only: otherwise the
# snippet is installed with a private base directory instead).  Needs
# Debian's apparmor, libvirt-daemon (virt-aa-helper) and
# libvirt-daemon-system's abstractions and TEMPLATE.qemu (installed, or
# unpacked into build/deps/): scripts/install-deps.sh provides them.
# Env: PCOW_IMG.  Exit: 0 pass, 77 skip, else fail.
set -u -o pipefail

top=$(cd "$(dirname "$0")/../../.." && pwd)
here=$top/tests/pcow/confine
PCOW_IMG=${PCOW_IMG:-$top/build/pcow-img}
mode=${1:-}
AA=/etc/apparmor.d
VAH=/usr/lib/libvirt/virt-aa-helper
BASEDIR=/var/lib/pcow/base
PREFIX=/usr/local
UUID=6f1e2d3c-0b4a-4c5d-9e8f-0123456789ab
PROFILE=libvirt-$UUID

n=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
fail() { echo "FAIL [confine-apparmor $mode]: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

case $mode in
parse|cover|local) ;;
*) echo "usage: $0 parse|cover|local" >&2; exit 2 ;;
esac
command -v apparmor_parser >/dev/null ||
    skip "no apparmor_parser (package apparmor; scripts/install-deps.sh)"
[ -x "$VAH" ] ||
    skip "no $VAH (package libvirt-daemon; scripts/install-deps.sh)"
# libvirt-daemon-system's AppArmor files: the installed package's, or the
# copy scripts/install-deps.sh unpacks into the build tree
LDS_AA=
[ -f "$AA/libvirt/TEMPLATE.qemu" ] ||
    LDS_AA=$top/build/deps/libvirt-daemon-system/etc/apparmor.d
for f in abstractions/libvirt-qemu libvirt/TEMPLATE.qemu tunables/global; do
    [ -f "$AA/$f" ] || { [ -n "$LDS_AA" ] && [ -f "$LDS_AA/$f" ]; } ||
        skip "no $AA/$f (packages apparmor, libvirt-daemon-system;" \
             "scripts/install-deps.sh)"
done
[ -x "$PCOW_IMG" ] || fail "no pcow-img at $PCOW_IMG"

T=$(mktemp -d "${TMPDIR:-/tmp}/pcow-confine.XXXXXX") || exit 1
CLEANUP=()
cleanup() {
    local c
    for c in "${CLEANUP[@]}"; do
        eval "$c"
    done
    rm -rf "$T"
}
trap cleanup EXIT

# aa_tree DIR: a copy of the host's /etc/apparmor.d as Debian's packages
# leave it (empty local file, none of our files), to install into
aa_tree() {
    rm -rf "$1"
    cp -a "$AA" "$1" || fail "cannot copy $AA"
    if [ -n "$LDS_AA" ]; then
        cp -an "$LDS_AA/." "$1/" || fail "cannot copy $LDS_AA"
    fi
    rm -f "$1/abstractions/qemu-pcow"
    # Debian's postinst creates the local file; an unpacked package has none
    mkdir -p "$1/local/abstractions" || fail "cannot create $1/local"
    : >"$1/local/abstractions/libvirt-qemu"
}

install_aa() {      # install_aa TREE [more install-apparmor.sh options]
    local tree=$1
    shift
    "$top/scripts/install-apparmor.sh" --prefix "$PREFIX" \
        --apparmor-dir "$tree" "$@" >"$T/install.out" 2>&1 ||
        { cat "$T/install.out"; fail "install-apparmor.sh $*"; }
}

# domain_xml NVDIMM-PATH: a domain as libvirt passes it to virt-aa-helper
# (<memory> counts the NVDIMM, as libvirt's own XML does)
domain_xml() {
    cat <<XML
<domain type='kvm'>
  <name>pcow-confine</name>
  <uuid>$UUID</uuid>
  <memory unit='MiB'>384</memory>
  <currentMemory unit='MiB'>256</currentMemory>
  <maxMemory slots='2' unit='GiB'>8</maxMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <cpu><numa><cell id='0' cpus='0' memory='256' unit='MiB'/></numa></cpu>
  <devices>
    <emulator>$PREFIX/bin/qemu-system-x86_64</emulator>
    <memory model='nvdimm' access='shared'>
      <source><path>$1</path></source>
      <target><size unit='KiB'>131072</size><node>0</node></target>
    </memory>
  </devices>
</domain>
XML
}

# profile TREE NVDIMM-PATH: what libvirt does at domain start -- run
# virt-aa-helper (a dry run prints the .files it would write) and make the
# profile from TEMPLATE.qemu as its create_profile() does
profile() {
    local tree=$1 files=$1/libvirt/$PROFILE.files
    domain_xml "$2" >"$T/domain.xml"
    "$VAH" -d -r -u "$PROFILE" <"$T/domain.xml" >/dev/null 2>"$T/vah.out" ||
        { cat "$T/vah.out"; fail "virt-aa-helper -r on the domain XML"; }
    # The .files content: the indented lines of the dry run
    grep '^  ' "$T/vah.out" >"$files" ||
        { cat "$T/vah.out"; fail "no rules from virt-aa-helper"; }
    sed -e "s/LIBVIRT_TEMPLATE/$PROFILE/" \
        -e "s|^}|  #include <libvirt/$PROFILE.files>\n}|" \
        "$tree/libvirt/TEMPLATE.qemu" >"$tree/libvirt/$PROFILE"
    grep -q "profile $PROFILE " "$tree/libvirt/$PROFILE" ||
        fail "TEMPLATE.qemu has no 'profile LIBVIRT_TEMPLATE' line"
}

# compile TREE OUT: parse and compile the domain's profile, rules dumped to
# OUT ("rule:" lines, apparmor_parser -D rule-exprs)
compile() {
    apparmor_parser -Q --skip-kernel-load --skip-cache --config-file /dev/null \
        --base "$1" -D rule-exprs "$1/libvirt/$PROFILE" >/dev/null 2>"$2"
}

case_parse() {
    local tree=$T/aa line='include if exists <abstractions/qemu-pcow>' c snip
    aa_tree "$tree"
    install_aa "$tree" --base-dir "$T/base"
    install_aa "$tree" --base-dir "$T/base"
    snip=$tree/abstractions/qemu-pcow
    c=$(grep -cxF "$line" "$tree/local/abstractions/libvirt-qemu")
    [ "$c" = 1 ] ||
        fail "after two installs the local file has $c include lines, not 1"
    grep -qF "\"$T/base/**\" rk," "$snip" ||
        fail "the installed snippet does not name the base directory"
    grep -qF "\"$PREFIX/bin/qemu-system-x86_64\" rmix," "$snip" ||
        fail "the installed snippet does not name $PREFIX/bin's QEMU"
    ! grep -q '@[A-Z]*@' "$snip" ||
        fail "the installed snippet has unfilled @...@ fields"
    ok "install-apparmor.sh: abstractions/qemu-pcow with this install's" \
       "paths; one include line after two installs"

    local st=$T/stage
    mkdir -p "$st"
    install_aa /etc/apparmor.d --destdir "$st"
    [ -f "$st/etc/apparmor.d/abstractions/qemu-pcow" ] ||
        fail "--destdir: no snippet under the staging directory"
    [ ! -e "$st/etc/apparmor.d/local" ] ||
        fail "--destdir: the administrator's local/ file was written"
    grep -qxF "  \"$BASEDIR/**\" rk," \
        "$st/etc/apparmor.d/abstractions/qemu-pcow" ||
        fail "the default base directory is not $BASEDIR"
    [ -d "$st$BASEDIR" ] || fail "--destdir: no $BASEDIR staged"
    install_aa "$T/no-apparmor-here"
    [ ! -e "$T/no-apparmor-here" ] ||
        fail "installed into a missing AppArmor directory"
    grep -q 'does not exist' "$T/install.out" ||
        fail "no note for a missing AppArmor directory"
    ok "install-apparmor.sh: --destdir stages the snippet and $BASEDIR" \
       "only; without an AppArmor directory it installs nothing"

    profile "$tree" "$T/vm/nv.pcow"
    compile "$tree" "$T/rules" || { cat "$T/rules"
        fail "apparmor_parser rejects the domain profile with our snippet"; }
    grep -q '^rule: /dev/userfaultfd ' "$T/rules" ||
        fail "no /dev/userfaultfd rule compiled: the snippet was not read"
    ok "apparmor_parser -Q --skip-kernel-load compiles TEMPLATE.qemu +" \
       "Debian's abstractions + our snippet + virt-aa-helper's rules"

    echo '  /this-is not-a-rule,' >>"$snip"
    if compile "$tree" "$T/rules.bad"; then
        fail "apparmor_parser accepted a broken snippet: it does not read ours"
    fi
    grep -q 'qemu-pcow' "$T/rules.bad" ||
        { cat "$T/rules.bad"; fail "the parse error does not name the snippet"; }
    ok "a broken snippet fails to parse:" \
       "$(grep -m1 -o 'in profile.*' "$T/rules.bad")"
}

# domain_compiles TREE WHAT: the domain profile made from TREE compiles
# (its rules in $T/rules.last)
domain_compiles() {
    profile "$1" "$T/vm/nv.pcow"
    compile "$1" "$T/rules.last" ||
        { cat "$T/rules.last"; fail "$2: the domain profile does not compile"; }
}

case_local() {
    local tree=$T/aa lf rc q=$T/quote
    lf=$tree/local/abstractions/libvirt-qemu

    # Uninstall: the abstraction goes, the include line may stay
    aa_tree "$tree"
    install_aa "$tree" --base-dir "$T/base"
    rm "$tree/abstractions/qemu-pcow"
    domain_compiles "$tree" "abstraction removed"
    ok "with abstractions/qemu-pcow removed again, every domain's profile" \
       "still compiles (the include line is 'include if exists')"

    # The administrator's file, its last line without a newline
    aa_tree "$tree"
    printf '  /srv/vm-extra/** r,' >"$lf"
    install_aa "$tree" --base-dir "$T/base"
    grep -qxF '  /srv/vm-extra/** r,' "$lf" ||
        { cat "$lf"; fail "the administrator's last line was changed"; }
    grep -qxF 'include if exists <abstractions/qemu-pcow>' "$lf" ||
        { cat "$lf"; fail "no include line of its own"; }
    domain_compiles "$tree" "no trailing newline"
    ok "a local file without a final newline keeps its last line"

    # Prefixes with a space and with "&": rules for exactly that path
    local p
    for p in "/opt/my qemu" "/opt/a&b"; do
        aa_tree "$tree"
        "$top/scripts/install-apparmor.sh" --prefix "$p" --base-dir \
            "$T/base" --apparmor-dir "$tree" >"$T/install.out" 2>&1 ||
            { cat "$T/install.out"; fail "install-apparmor.sh --prefix '$p'"; }
        domain_compiles "$tree" "prefix '$p'"
        cover_check "$T/rules.last" "$T/cover" \
            "$p/bin/qemu-system-x86_64=rmx" "$p/share/qemu/keymaps/en-us=r" ||
            { cat "$T/cover"; fail "prefix '$p': its QEMU is not granted"; }
    done
    ok "prefixes '/opt/my qemu' and '/opt/a&b': the profile grants that QEMU"

    # A prefix no AppArmor rule can name: refused, nothing written
    aa_tree "$tree"
    printf '  /srv/vm-extra/** r,\n' >"$lf"
    cp "$lf" "$T/lf.before"
    "$top/scripts/install-apparmor.sh" --prefix '/opt/q"x' \
        --apparmor-dir "$tree" --base-dir "$T/base" >"$q" 2>&1
    rc=$?
    [ $rc -ne 0 ] || { cat "$q"; fail "a prefix with '\"' was installed"; }
    [ "$(grep -c . "$q")" = 1 ] || { cat "$q"; fail "not a one-line error"; }
    [ ! -e "$tree/abstractions/qemu-pcow" ] ||
        fail "a prefix with '\"': the abstraction was written"
    cmp -s "$lf" "$T/lf.before" ||
        fail "a prefix with '\"': the local file was changed"
    ok "a prefix with '\"' is refused (exit $rc): $(cat "$q")"
}

# cover_check RULES OUT WANT...: aa-perms.py's verdict (0 all covered,
# 1 not), its report in OUT; anything else fails the test
cover_check() {
    local rules=$1 out=$2 rc
    shift 2
    python3 "$here/aa-perms.py" "$rules" "$@" >"$out"
    rc=$?
    [ $rc -le 1 ] || { cat "$out"; fail "aa-perms.py failed (exit $rc)"; }
    return $rc
}

case_cover() {
    local base=$BASEDIR sub json files f img want=() i=0
    if [ "$(id -u)" = 0 ]; then
        [ -d /var/lib/pcow ] || CLEANUP+=("rmdir /var/lib/pcow 2>/dev/null")
        [ -d "$base" ] || CLEANUP=("rmdir $base 2>/dev/null" "${CLEANUP[@]}")
        mkdir -p "$base" || fail "cannot create $base"
    else
        base=$T/base
        mkdir -p "$base"
        echo "not root: the bases go to $base, installed as the base directory"
    fi
    sub=$(mktemp -d "$base/pcow-confine-test.XXXXXX") || fail "mktemp in $base"
    CLEANUP=("rm -rf '$sub'" "${CLEANUP[@]}")
    # The chain: vm/nv.pcow -> BASEDIR/.../mid.pcow -> BASEDIR/.../base.raw
    mkdir -p "$T/vm"
    truncate -s 128M "$sub/base.raw"
    "$PCOW_IMG" create -q -f pcow -b base.raw -F raw "$sub/mid.pcow" &&
        "$PCOW_IMG" create -q -f pcow -b "$sub/mid.pcow" -F pcow \
            "$T/vm/nv.pcow" || fail "cannot create the chain"
    img=$(realpath "$T/vm/nv.pcow")
    json=$("$PCOW_IMG" info --output=json "$img") || fail "pcow-img info"
    files=$(python3 -c 'import json, sys
print("\n".join(json.loads(sys.argv[1])["chain-files"]))' "$json") ||
        fail "no chain-files in: $json"
    [ "$files" = "$(realpath "$img" "$sub/mid.pcow" "$sub/base.raw")" ] ||
        fail "pcow-img info lists the chain as '$files'"
    ok "pcow-img info lists the chain:" $files

    while read -r f; do
        if [ $i = 0 ]; then want+=("$f=rwk"); else want+=("$f=rk"); fi
        i=$((i + 1))
    done <<<"$files"
    want+=("/dev/userfaultfd=rw" "$PREFIX/bin/qemu-system-x86_64=rmx")

    # libvirt alone: virt-aa-helper's rules hold the image, read-write; the
    # profile lacks the lock, the bases and the device (else the snippet
    # would be moot, or this check blind)
    local bare=$T/bare
    aa_tree "$bare"
    profile "$bare" "$img"
    grep -qxF "  \"$img\" rw," "$bare/libvirt/$PROFILE.files" ||
        { cat "$bare/libvirt/$PROFILE.files"
          fail "virt-aa-helper's rules lack the NVDIMM image"; }
    ok "virt-aa-helper's rules contain the NVDIMM image:" \
       "$(grep -F nv.pcow "$bare/libvirt/$PROFILE.files")"
    compile "$bare" "$T/rules.bare" ||
        { cat "$T/rules.bare"; fail "Debian's profile does not compile"; }
    if cover_check "$T/rules.bare" "$T/cover.bare" "${want[@]}"; then
        cat "$T/cover.bare"
        fail "libvirt's profile alone covers the chain: the check is blind"
    fi
    for f in "${want[@]}"; do
        grep -qF "NOT covered: ${f%=*} " "$T/cover.bare" ||
            { cat "$T/cover.bare"; fail "without the snippet, $f is covered"; }
    done
    sed 's/^/    /' "$T/cover.bare"
    ok "without the snippet the profile denies the image's lock, the" \
       "bases, /dev/userfaultfd and this install's QEMU"

    local tree=$T/aa
    aa_tree "$tree"
    if [ "$base" = "$BASEDIR" ]; then
        install_aa "$tree"
    else
        install_aa "$tree" --base-dir "$base"
    fi
    profile "$tree" "$img"
    compile "$tree" "$T/rules" ||
        { cat "$T/rules"; fail "the profile with our snippet does not compile"; }
    cover_check "$T/rules" "$T/cover" "${want[@]}" ||
        { cat "$T/cover"; fail "the profile with our snippet misses some"; }
    sed 's/^/    /' "$T/cover"
    ok "with the snippet the profile grants the image rwk, each base rk," \
       "/dev/userfaultfd rw, QEMU rmx"

    # and no more: a base is not writable, nothing new can be created in
    # the base directory, another domain's image gets the lock only
    local deny=()
    while read -r f; do
        [ "$f" = "$img" ] || deny+=("$f!wa")
    done <<<"$files"
    deny+=("$base/new.pcow!wa" "/var/lib/libvirt/images/other-vm.pcow!rwam"
           "$T/other-vm.pcow!rwam")
    cover_check "$T/rules" "$T/deny" "${deny[@]}" ||
        { cat "$T/deny"; fail "the profile with our snippet grants too much"; }
    sed 's/^/    /' "$T/deny"
    ok "with the snippet no base is writable and another domain's" \
       "image is neither readable nor writable"
}

case_$mode
echo "confine-apparmor $mode: $n checks passed"
