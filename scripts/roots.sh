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
#   bash scripts/roots.sh pythons            every interpreter of the ready roots: "NAME PATH"
#                                            (the launchers below, and the free-threaded builds)
#
# The roots (name: suite, packages):
#   trixie   Debian 13: python3.13
#   sid      Debian unstable: python3.14, python3.15
# and the free-threaded builds (Debian packages none), configured --disable-gil and installed into
# a prefix, each from one of two sources:
#   ft3.13   CPython 3.13t, PREFIX/bin/python3.13t: Debian's source tarball of trixie's python3.13
#            (the same version as the trixie root's interpreter)
#   ft3.14   CPython 3.14t, PREFIX/bin/python3.14t: CPython's git tag v3.14.7 as the Go module
#            proxy serves it (proxy.golang.org/github.com/python/cpython/@v/v3.14.7+incompatible.zip,
#            36 MB), pinned by version and sha256 below (FT_ZIP_*). Debian's mirror does not serve
#            sid's source tarballs (404), and the proxy is reachable wherever the package
#            registries are ($TRACKLEAK_GOPROXY, default https://proxy.golang.org).
#
# Each Debian root also gets, on ensure (stamped in NAME/.trackleak-headers):
#   - its interpreters' headers (libpython3.X-dev of the same version, unpacked into the root with
#     dpkg-deb -x: bpf/offsets/generate.py and the extension tests compile against them);
#   - a host-runnable copy of each interpreter, ROOT/usr/lib/trackleak/python3.X: the root's
#     executable patched (patchelf) to use the root's own dynamic loader and libraries (glibc
#     included), run from the host's file system: the root's interpreter without a chroot, so every test can pass it host
#     paths (scripts, log directories, the shim). `chroot ROOT /usr/bin/python3.X` is the container
#     form of the same interpreter.
#
# Where: $TRACKLEAK_ROOTS, default /var/cache/trackleak/roots (builds: ROOTS/NAME too): outside the checkout, so that every
# clone of the project (CI's fresh one included) reuses them. A root is built in NAME.tmp and
# renamed when complete, with a stamp (NAME/.trackleak-root) naming its suite and packages: a
# root whose stamp differs from what this script wants is built again. About a minute and
# 200-350 MB each (a free-threaded build: 4-10 minutes on 2 cores, ~450 MB, its time printed).
# Needs root (debootstrap), the debootstrap package (installed when missing on Debian/Ubuntu), the
# Debian mirror (deb.debian.org or $TRACKLEAK_DEBIAN_MIRROR) and, for ft3.14, the Go module proxy.
set -Eeuo pipefail

ROOTS="${TRACKLEAK_ROOTS:-/var/cache/trackleak/roots}"
MIRROR="${TRACKLEAK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
GOPROXY_URL="${TRACKLEAK_GOPROXY:-https://proxy.golang.org}"
STAMP=.trackleak-root
# One source of truth for what each root holds.
declare -A SUITE=([trixie]=trixie [sid]=sid)
declare -A PACKAGES=([trixie]="python3.13" [sid]="python3.14,python3.15")
# Free-threaded builds: the root whose interpreter gives the source version, and its package.
# FT_ROOT/FT_PKG: Debian's source tarball of that package in that root (the root's version);
# FT_ZIP_VERSION/FT_ZIP_SHA256 instead: CPython's git tag from the Go module proxy, pinned.
declare -A FT_ROOT=([ft3.13]=trixie [ft3.14]="")
declare -A FT_PKG=([ft3.13]=python3.13 [ft3.14]=python3.14)
declare -A FT_ZIP_VERSION=([ft3.14]=3.14.7)
declare -A FT_ZIP_SHA256=([ft3.14]=e79b1270b4b62593f6686c8db8edd384b4a9b14e5824a8c9fce0a95656dd6321)
ALL=(trixie sid ft3.13 ft3.14)

say() { printf '[roots] %s\n' "$*" >&2; }
die() { printf '[roots] FAILED: %s\n' "$*" >&2; exit 1; }

is_ft() { [[ -n "${FT_PKG[$1]:-}" ]]; }
from_zip() { [[ -n "${FT_ZIP_VERSION[$1]:-}" ]]; }

# A free-threaded build's version: the upstream part of its root's package version (3.13.5-2+deb13u5
# -> 3.13.5), so both are built from the same source; empty while the root is not built.
ft_version() {
    if from_zip "$1"; then
        printf '%s\n' "${FT_ZIP_VERSION[$1]}"
        return 0
    fi
    local root="$ROOTS/${FT_ROOT[$1]}" v
    [[ -f "$root/$STAMP" ]] || return 0
    v="$(chroot "$root" dpkg-query -W -f '${Version}' "${FT_PKG[$1]}" 2>/dev/null)" || return 0
    v="${v#*:}"
    printf '%s\n' "${v%%-*}"
}

want_stamp() {
    if is_ft "$1" && from_zip "$1"; then
        printf 'free-threaded source=cpython-v%s.zip sha256=%s configure=--disable-gil\n' "${FT_ZIP_VERSION[$1]}" "${FT_ZIP_SHA256[$1]}"
    elif is_ft "$1"; then
        printf 'free-threaded source=%s_%s configure=--disable-gil\n' "${FT_PKG[$1]}" "$(ft_version "$1")"
    else
        printf 'suite=%s packages=%s\n' "${SUITE[$1]}" "${PACKAGES[$1]}"
    fi
}

known() {
    [[ -n "${SUITE[$1]:-}" ]] || is_ft "$1" || die "unknown root '$1' (known: ${ALL[*]})"
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

# The source of a free-threaded build, unpacked into DEST (configure at its top).
# Debian's .orig.tar.xz of the root's version, downloaded once into ROOTS.
ft_source_debian() {
    local name=$1 dest=$2 pkg="${FT_PKG[$1]}" version url src
    ready "${FT_ROOT[$name]}" || locked "${FT_ROOT[$name]}" ensure_one "${FT_ROOT[$name]}"
    version="$(ft_version "$name")"
    [[ -n $version ]] || die "$name: cannot read the version of $pkg in the ${FT_ROOT[$name]} root"
    url="$MIRROR/pool/main/p/$pkg/${pkg}_${version}.orig.tar.xz"
    src="$ROOTS/${pkg}_${version}.orig.tar.xz"
    if [[ ! -s $src ]]; then
        say "downloading $url"
        local rc=0
        curl -fsSL --retry 2 -m 600 -o "$src.part" "$url" || rc=$?
        if ((rc == 22)); then  # an HTTP error: the mirror answered without the file
            rm -f "$src.part"
            die "$name: the mirror does not carry the CPython $version source ($url answered an HTTP error; Debian's pool keeps only current versions' sources); a copy of that tarball placed at $src is used as it is"
        elif ((rc)); then
            rm -f "$src.part"
            die "$name: cannot download the CPython $version source ($url): is $MIRROR reachable? (curl exit $rc)"
        fi
        mv "$src.part" "$src"
    fi
    mkdir -p "$dest"
    tar -xJf "$src" -C "$dest" --strip-components=1 || { rm -rf "$dest"; die "$name: cannot unpack $src"; }
}

# CPython's git tag vX.Y.Z as a Go module zip (the proxy serves any GitHub tag of a repository
# without a go.mod as module github.com/python/cpython, version vX.Y.Z+incompatible), downloaded
# once into ROOTS and checked against the pinned sha256 (a mismatch: the file is removed, an
# error). Unpacked by python3's zipfile: such a zip keeps no file modes (files with a "#!" line are
# made executable, as git has them: configure, install-sh, the build's scripts) and no symlinks
# (CPython's build needs none), and every file gets the zip's one timestamp, so that make sees
# the generated files (configure, Python/generated_cases.c.h, ...) as up to date, as in a tarball.
ft_source_zip() {
    local name=$1 dest=$2 version="${FT_ZIP_VERSION[$1]}" sha="${FT_ZIP_SHA256[$1]}" url src got
    url="$GOPROXY_URL/github.com/python/cpython/@v/v$version+incompatible.zip"
    src="$ROOTS/cpython-v$version.zip"
    if [[ ! -s $src ]]; then
        say "downloading $url"
        local rc=0
        curl -fsSL --retry 2 -m 600 -o "$src.part" "$url" || rc=$?
        if ((rc)); then
            rm -f "$src.part"
            die "$name: cannot download the CPython $version source ($url, curl exit $rc): is the Go module proxy reachable ($GOPROXY_URL, or set TRACKLEAK_GOPROXY to a mirror)? A copy of that zip placed at $src (sha256 $sha) is used as it is"
        fi
        mv "$src.part" "$src"
    fi
    got="$(sha256sum "$src" | cut -d' ' -f1)"
    if [[ $got != "$sha" ]]; then
        rm -f "$src"
        die "$name: $src (from $url) has sha256 $got, not the pinned $sha (FT_ZIP_SHA256 in scripts/roots.sh); it was removed"
    fi
    mkdir -p "$dest"
    python3 - "$src" "$dest" "github.com/python/cpython@v$version+incompatible/" <<'PY' || { rm -rf "$dest"; die "$name: cannot unpack $src"; }
import os, sys, zipfile
src, dest, top = sys.argv[1:]
stamp = 315532800  # 1980-01-01, the zip's own timestamp for every file
with zipfile.ZipFile(src) as z:
    for info in z.infolist():
        if not info.filename.startswith(top) or info.is_dir():
            continue
        rel = info.filename[len(top):]
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = z.read(info)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o755 if data.startswith(b"#!") else 0o644)
        os.utime(path, (stamp, stamp))
PY
    [[ -f $dest/configure ]] || { rm -rf "$dest"; die "$name: $src has no configure at its top"; }
}

# A free-threaded CPython (ft_source_*: see FT_ROOT and FT_ZIP_VERSION), no PGO,
# make -j$(nproc), installed into ROOTS/NAME (bin/python3.Xt). About 4-10 minutes on 2 cores; the
# time is printed.
build_ft() {
    local name=$1 dir="$ROOTS/$1" tmp="$ROOTS/$1.tmp" log="$ROOTS/$1.log" pkg="${FT_PKG[$1]}"
    local version t0=$SECONDS
    rm -rf "$tmp" "$ROOTS/$name.src"
    if from_zip "$name"; then
        ft_source_zip "$name" "$ROOTS/$name.src"
    else
        ft_source_debian "$name" "$ROOTS/$name.src"
    fi
    version="$(ft_version "$name")"
    say "building $name: CPython $version ./configure --disable-gil into $dir (4-10 minutes; log $log)"
    if ! (
        set -e
        cd "$ROOTS/$name.src"
        ./configure --disable-gil --prefix="$dir" --without-ensurepip
        make -j"$(nproc)"
        make install DESTDIR="$tmp"
    ) >"$log" 2>&1; then
        tail -n 15 "$log" | sed 's/^/    | /' >&2
        rm -rf "$tmp" "$ROOTS/$name.src"
        die "build of $name failed (log: $log)"
    fi
    # DESTDIR keeps the prefix's path under tmp: move the prefix itself into place.
    want_stamp "$name" >"$tmp$dir/$STAMP"
    rm -rf "$dir"
    mv "$tmp$dir" "$dir"
    rm -rf "$tmp" "$ROOTS/$name.src"
    "$dir/bin/${pkg}t" -c 'import sys, sysconfig; assert sysconfig.get_config_var("Py_GIL_DISABLED"), "not free-threaded"' ||
        die "$name: $dir/bin/${pkg}t is not a free-threaded interpreter"
    say "built $name in $((SECONDS - t0)) s: $(du -sh "$dir" | cut -f1)"
}

# The root's libpython3.X-dev headers (same version as its python3.X), through the host's apt-get
# with a private state directory (no change to the host's apt), unpacked into the root.
headers() {
    local name=$1 dir="$ROOTS/$1" pkgs=() want="" pkg version
    IFS=, read -r -a pkgs <<<"${PACKAGES[$name]}"
    for pkg in "${pkgs[@]}"; do
        version="$(chroot "$dir" dpkg-query -W -f '${Version}' "$pkg")"
        want+="lib${pkg}-dev=$version "
    done
    [[ -f "$dir/.trackleak-headers" && "$(cat "$dir/.trackleak-headers")" == "$want" ]] && return 0
    local apt="$ROOTS/.apt/$name" t0=$SECONDS
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
    echo "deb [trusted=yes] $MIRROR ${SUITE[$name]} main" >"$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root
        -o APT::Architecture=amd64 -o Debug::NoLocking=1)
    say "headers of $name: $want"
    if ! apt-get "${opts[@]}" -q update >"$apt/log" 2>&1 ||
        ! (cd "$apt/debs" && apt-get "${opts[@]}" -q download $want) >>"$apt/log" 2>&1; then
        tail -n 5 "$apt/log" | sed 's/^/    | /' >&2
        die "$name: cannot download $want from $MIRROR (log: $apt/log)"
    fi
    for pkg in $want; do
        dpkg-deb -x "$apt/debs/${pkg%%=*}_${pkg#*=}_amd64.deb" "$dir" ||
            die "$name: cannot unpack ${pkg%%=*}"
    done
    rm -f "$apt/debs/"*.deb
    printf '%s' "$want" >"$dir/.trackleak-headers"
    say "headers of $name in $((SECONDS - t0)) s"
}

# ROOT/usr/lib/trackleak/python3.X for each python3.X of the root (see the top of this file): a copy
# of ROOT/usr/bin/python3.X whose ELF interpreter is the root's ld.so and whose DT_RPATH (searched
# for every object, dlopen'ed extension modules too) the root's library directories (patchelf). A
# real executable named python3.X, no wrapper process (LD_PRELOAD goes to Python alone); Python
# finds its prefix (ROOT/usr) by walking up from its own place, even when run isolated (-I).
launchers() {
    local name=$1 dir="$ROOTS/$1" pkgs=() pkg
    IFS=, read -r -a pkgs <<<"${PACKAGES[$name]}"
    if ! command -v patchelf >/dev/null; then
        say "installing patchelf"
        apt-get install -y -q patchelf >"$ROOTS/apt.log" 2>&1 ||
            die "apt-get install patchelf failed (see $ROOTS/apt.log)"
    fi
    rm -rf "$ROOTS/bin"
    mkdir -p "$dir/usr/lib/trackleak"
    for pkg in "${pkgs[@]}"; do
        local out="$dir/usr/lib/trackleak/$pkg"
        rm -f "$dir/usr/bin/trackleak-$pkg"  # (the first launchers: a shell script there)
        [[ -x $out && $out -nt "$dir/usr/bin/$pkg" ]] && continue
        cp "$dir/usr/bin/$pkg" "$out.tmp"
        patchelf --set-interpreter "$dir/lib64/ld-linux-x86-64.so.2" --force-rpath \
            --set-rpath "$dir/lib/x86_64-linux-gnu:$dir/usr/lib/x86_64-linux-gnu" "$out.tmp" ||
            die "patchelf of $out failed"
        mv "$out.tmp" "$out"
    done
}

# "NAME PATH" for each interpreter of the ready roots and builds.
pythons() {
    local name pkg pkgs=()
    for name in "${ALL[@]}"; do
        ready "$name" || continue
        if is_ft "$name"; then
            printf '%s %s\n' "$name" "$ROOTS/$name/bin/${FT_PKG[$name]}t"
        else
            IFS=, read -r -a pkgs <<<"${PACKAGES[$name]}"
            for pkg in "${pkgs[@]}"; do
                [[ -x "$ROOTS/$name/usr/lib/trackleak/$pkg" ]] &&
                    printf '%s %s\n' "$name-$pkg" "$ROOTS/$name/usr/lib/trackleak/$pkg"
            done
        fi
    done
    true
}

# Run "$@" holding NAME's lock: concurrent runs (two checkouts) build each root once.
locked() {
    local name=$1 fd
    shift
    exec {fd}>"$ROOTS/.$name.lock"
    flock "$fd"
    "$@"
    exec {fd}>&-
}

# Build NAME unless another run did while we waited for its lock.
ensure_one() {
    if is_ft "$1"; then
        ready "$1" || build_ft "$1"
    else
        ready "$1" || build "$1"
    fi
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
            ready "$name" || locked "$name" ensure_one "$name"
            if ! is_ft "$name"; then
                locked "$name" headers "$name"
                locked "$name" launchers "$name"
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
    pythons)
        pythons
        ;;
    path)
        known "${1:-}"
        ready "$1" || exit 1
        printf '%s\n' "$ROOTS/$1"
        ;;
    remove)
        known "${1:-}"
        rm -rf "${ROOTS:?}/$1" "${ROOTS:?}/$1.tmp" "${ROOTS:?}/$1.src"
        ;;
    -h | --help | help | "")
        sed -n '3,43p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$cmd' (try --help)"
        ;;
esac
