#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# scripts/roots.sh — Debian roots with newer CPythons, made by debootstrap: each is both a new
# interpreter to test on and a container-like target (another root, its own glibc).
#
#   bash scripts/roots.sh ensure [NAME...]   build what is missing (default: every root), then
#                                            print "NAME PATH" for each root that is ready
#   bash scripts/roots.sh list               the roots that are ready ("NAME PATH"), nothing built
#   bash scripts/roots.sh path NAME          the path of NAME (exit 1 when it is not built)
#   bash scripts/roots.sh remove NAME        delete a root
#
# The roots (name: suite, packages):
#   trixie   Debian 13: python3.13
#   sid      Debian unstable: python3.14, python3.15
#
# Where: $TRACKLEAK_ROOTS, default /var/cache/trackleak/roots: outside the checkout, so that every
# clone of the project (CI's fresh one included) reuses them. A root is built in NAME.tmp and
# renamed when complete, with a stamp (NAME/.trackleak-root) naming its suite and packages: a
# root whose stamp differs from what this script wants is built again. About a minute and
# 200-350 MB each. Needs root (debootstrap), the debootstrap package (installed when missing on
# Debian/Ubuntu) and the Debian mirror (deb.debian.org or $TRACKLEAK_DEBIAN_MIRROR).
set -Eeuo pipefail

ROOTS="${TRACKLEAK_ROOTS:-/var/cache/trackleak/roots}"
MIRROR="${TRACKLEAK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STAMP=.trackleak-root
# One source of truth for what each root holds.
declare -A SUITE=([trixie]=trixie [sid]=sid)
declare -A PACKAGES=([trixie]="python3.13" [sid]="python3.14,python3.15")
ALL=(trixie sid)

say() { printf '[roots] %s\n' "$*" >&2; }
die() { printf '[roots] FAILED: %s\n' "$*" >&2; exit 1; }

want_stamp() { printf 'suite=%s packages=%s\n' "${SUITE[$1]}" "${PACKAGES[$1]}"; }

known() {
    [[ -n "${SUITE[$1]:-}" ]] || die "unknown root '$1' (known: ${ALL[*]})"
}

ready() {
    local dir="$ROOTS/$1"
    [[ -f "$dir/$STAMP" ]] && [[ "$(cat "$dir/$STAMP")" == "$(want_stamp "$1")" ]]
}

build() {
    local name=$1 dir="$ROOTS/$1" tmp="$ROOTS/$1.tmp" log="$ROOTS/$1.log"
    [[ $EUID -eq 0 ]] || die "building a root needs root (debootstrap and chroot): sudo bash scripts/roots.sh ensure $name"
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap"
        apt-get install -y -q debootstrap >"$ROOTS/apt.log" 2>&1 ||
            die "apt-get install debootstrap failed (see $ROOTS/apt.log)"
    fi
    rm -rf "$tmp"
    say "building $name: debootstrap ${SUITE[$name]} with ${PACKAGES[$name]} into $dir (about a minute; log $log)"
    local t0=$SECONDS
    if ! debootstrap --variant=minbase --include="${PACKAGES[$name]}" "${SUITE[$name]}" "$tmp" "$MIRROR" >"$log" 2>&1; then
        tail -n 15 "$log" | sed 's/^/    | /' >&2
        rm -rf "$tmp"
        die "debootstrap of $name failed: is $MIRROR reachable? (log: $log)"
    fi
    # Trimmed: the apt cache and documentation are not needed to run Python.
    rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/usr/share/doc" "$tmp/usr/share/man" "$tmp/usr/share/locale"
    want_stamp "$name" >"$tmp/$STAMP"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    say "built $name in $((SECONDS - t0)) s: $(du -sh "$dir" | cut -f1)"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    ensure)
        names=("$@")
        ((${#names[@]})) || names=("${ALL[@]}")
        mkdir -p "$ROOTS"
        for name in "${names[@]}"; do
            known "$name"
            if ! ready "$name"; then
                # concurrent runs (two checkouts) build each root once; one lock per root
                exec 9>"$ROOTS/.$name.lock"
                flock 9
                ready "$name" || build "$name"
                exec 9>&-
            fi
            printf '%s %s\n' "$name" "$ROOTS/$name"
        done
        ;;
    list)
        for name in "${ALL[@]}"; do
            ready "$name" && printf '%s %s\n' "$name" "$ROOTS/$name"
        done
        true
        ;;
    path)
        known "${1:-}"
        ready "$1" || exit 1
        printf '%s\n' "$ROOTS/$1"
        ;;
    remove)
        known "${1:-}"
        rm -rf "${ROOTS:?}/$1" "${ROOTS:?}/$1.tmp"
        ;;
    -h | --help | help | "")
        sed -n '3,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$cmd' (try --help)"
        ;;
esac
