#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# scripts/setup.sh — everything TrackLeak needs on a fresh Debian/Ubuntu machine.
#
# Idempotent and safe to rerun: every step checks first and does nothing when its
# work is already done, so a rerun on a ready machine takes a second or two.
#
#   1. system packages (apt; `apt-get update` only when something is missing); for the
#      Elasticsearch tests: a Java runtime 17+ (openjdk-17-jre-headless when `java` is missing or
#      older), Maven (when `mvn` is missing), nginx, openssl, unzip, curl; and, as root, the system
#      user trackleak-es that runs the test server (Elasticsearch refuses root; scripts/es.sh);
#      for the HTML report's browser test: chromium, chromium-driver, fonts-dejavu-core
#   2. kernel headers for bcc: the running kernel's own, or a merged tree of the
#      distribution's generic headers under .cache/kernel-headers/<version>, whose
#      path is written to .cache/bcc_kernel_source (read by the agent and
#      scripts/test.sh as BCC_KERNEL_SOURCE); system paths are left as they are.
#   3. tracefs mounted at /sys/kernel/tracing (warning only if that fails)
#   4. .venv from Debian's /usr/bin/python3 with --system-site-packages (bcc's
#      Python module only exists as Debian's python3-bpfcc; PyPI's `bcc` is unrelated)
#   5. `pip install -e '.[test]'` (skipped when the build inputs have not changed)
#
# Usage: scripts/setup.sh [--force]
#   --force   reinstall the package into .venv even when nothing changed
# Environment:
#   TRACKLEAK_SETUP_FORCE=1   same as --force
#
# Runs as root, or as a user with sudo (used only for apt and mount; it says so).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
VENV="$ROOT/.venv"
SYS_PYTHON=/usr/bin/python3
LOG="$CACHE/setup.log"
FORCE="${TRACKLEAK_SETUP_FORCE:-0}"

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '3,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "[setup] unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------------------
# output helpers: one line per step; on failure name the step and what to do
# ---------------------------------------------------------------------------
STEP="start"
HINT=""
say()  { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die()  { printf '[setup] FAILED at step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
step() { STEP="$1"; HINT="${2:-}"; }

on_error() {
    local rc=$1
    trap - ERR
    {
        printf '[setup] FAILED at step "%s" (exit code %s)\n' "$STEP" "$rc"
        if [[ -s "$LOG" ]]; then
            printf '[setup] last lines of %s:\n' "$LOG"
            tail -n 25 "$LOG" | sed 's/^/    | /'
        fi
        [[ -n "$HINT" ]] && printf '[setup] what to do: %s\n' "$HINT"
    } >&2
    exit "$rc"
}
trap 'on_error $?' ERR

# Run a command with its output going to the log (shown on failure).
logged() {
    printf '\n$ %s\n' "$*" >>"$LOG"
    "$@" >>"$LOG" 2>&1
}

cd "$ROOT"
step "start" "$CACHE must be writable by $(id -un) (made by another user, e.g. root?): fix its owner, or run as that user"
mkdir -p "$CACHE"
touch "$LOG"

# Concurrent runs (make -j test demo) would race on apt and .venv: serialize them.
if command -v flock >/dev/null 2>&1 && { exec 9>>"$CACHE/setup.lock"; } 2>/dev/null; then
    flock 9
fi
: >"$LOG"

# ---------------------------------------------------------------------------
# privileges: root, or sudo for the few steps that need it
# ---------------------------------------------------------------------------
SUDO=()
SUDO_NOTE=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
        SUDO_NOTE=" (not root: using sudo)"
    else
        SUDO=(false-no-sudo)
    fi
fi
as_root() {
    if [[ ${SUDO[0]:-} == false-no-sudo ]]; then
        printf 'needs root: run as root or install sudo\n' >>"$LOG"
        return 1
    fi
    "${SUDO[@]}" "$@"
}
can_be_root() { [[ ${SUDO[0]:-} != false-no-sudo ]]; }

# ---------------------------------------------------------------------------
# platform
# ---------------------------------------------------------------------------
step "platform"
OS_ID=unknown OS_LIKE=""
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    read -r OS_ID OS_LIKE < <(. /etc/os-release && echo "${ID:-unknown} ${ID_LIKE:-}")
fi
FAMILY=other
case " $OS_ID $OS_LIKE " in
    *" ubuntu "*) FAMILY=ubuntu ;;
    *" debian "*) FAMILY=debian ;;
esac
ARCH="$(dpkg --print-architecture 2>/dev/null || uname -m)"
KREL="$(uname -r)"
say "platform: $OS_ID ($FAMILY), arch $ARCH, kernel $KREL, user $(id -un)$SUDO_NOTE"

# Generic kernel-headers package and the flavour suffix of its /usr/src tree.
HDR_GENERIC="" HDR_FLAVOUR=""
if [[ $ARCH == amd64 ]]; then
    case $FAMILY in
        debian) HDR_GENERIC=linux-headers-amd64;   HDR_FLAVOUR=amd64 ;;
        ubuntu) HDR_GENERIC=linux-headers-generic; HDR_FLAVOUR=generic ;;
    esac
fi
OWN_BUILD="/lib/modules/$KREL/build"
USR_SRC=/usr/src

# ---------------------------------------------------------------------------
# 1. system packages
# ---------------------------------------------------------------------------
step "apt packages" "check the network to the Debian/Ubuntu mirrors and rerun scripts/setup.sh; as non-root, make sure 'sudo apt-get' works"

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# A merged header tree can be built from what is already in /usr/src?
have_generic_headers_tree() {
    [[ -n $HDR_FLAVOUR ]] && compgen -G "$USR_SRC/linux-headers-*-$HDR_FLAVOUR" >/dev/null
}

PKGS=(build-essential python3-venv python3-dev bpfcc-tools python3-bpfcc)
# Validators of the deployment files (tests/unit/test_deploy.py): systemd-analyze, vagrant
# validate, ruby -c, shellcheck. None of them needs a running service.
PKGS+=(systemd vagrant ruby shellcheck)
# The Elasticsearch tests (scripts/es.sh fetches the server with Maven and runs it on Java 17+;
# nginx and openssl put authentication and TLS in front of it).
PKGS+=(nginx openssl unzip curl)
# The HTML report's browser test (tests/integration/test_report_views.py, driven by selenium) and
# the README's screenshot: Debian's headless Chromium, its WebDriver, and a font to draw text with.
PKGS+=(chromium chromium-driver fonts-dejavu-core)
java_major() {
    java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}' | cut -d. -f1
}
if ! command -v java >/dev/null 2>&1 || [[ "$(java_major)" -lt 17 ]] 2>/dev/null; then
    PKGS+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null 2>&1 || PKGS+=(maven)
NGINX_WAS_INSTALLED=0
pkg_installed_early() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]; }
if pkg_installed_early nginx; then NGINX_WAS_INSTALLED=1; fi
if [[ $FAMILY == other ]] || ! command -v apt-get >/dev/null 2>&1; then
    warn "not Debian/Ubuntu: install yourself: a C compiler, Python 3 venv + headers, bcc with its Python module, kernel headers"
else
    missing=()
    for p in "${PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done

    need_headers=0
    if [[ -e $OWN_BUILD ]]; then
        :   # the running kernel's own headers are there
    elif [[ -z $HDR_GENERIC ]]; then
        warn "kernel headers: no generic headers package known for $FAMILY/$ARCH; bcc needs BCC_KERNEL_SOURCE set by hand"
    elif pkg_installed "linux-headers-$KREL" || pkg_installed "$HDR_GENERIC" || have_generic_headers_tree; then
        :
    else
        need_headers=1
    fi

    if ((${#missing[@]} == 0 && need_headers == 0)); then
        say "apt packages: all present"
    else
        if ! can_be_root; then
            what="${missing[*]:-}"
            if ((need_headers)); then what="${what:+$what + }kernel headers"; fi
            die "missing: $what; not root and no sudo: run as root or install sudo"
        fi
        say "apt packages: updating package lists$SUDO_NOTE"
        logged as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q
        if ((need_headers)); then
            # The running kernel's exact headers first (Ubuntu, or Debian on its own
            # kernel), else the distribution's newest generic headers.
            if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
                missing+=("linux-headers-$KREL")
            else
                missing+=("$HDR_GENERIC")
            fi
        fi
        say "apt packages: installing ${missing[*]}$SUDO_NOTE"
        logged as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
            install -y -q --no-install-recommends "${missing[@]}"
        say "apt packages: installed"
        # Only nginx's binary is used (the tests run their own on loopback): a service the
        # package started on port 80 is stopped and disabled, when we installed it just now.
        if ((NGINX_WAS_INSTALLED == 0)) && command -v systemctl >/dev/null 2>&1 \
            && systemctl is-enabled nginx >/dev/null 2>&1; then
            logged as_root systemctl disable --now nginx || warn "could not stop the nginx service the package started"
        fi
    fi
fi

# ---------------------------------------------------------------------------
# 1b. the user the test Elasticsearch runs as (it refuses to run as root)
# ---------------------------------------------------------------------------
step "elasticsearch user" "create it yourself: useradd --system --no-create-home --shell /usr/sbin/nologin trackleak-es"
if [[ $(id -u) -eq 0 ]]; then
    if id trackleak-es >/dev/null 2>&1; then
        say "elasticsearch user: trackleak-es exists"
    else
        logged useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin trackleak-es
        say "elasticsearch user: made the system user trackleak-es (runs the test Elasticsearch: scripts/es.sh)"
    fi
fi

# ---------------------------------------------------------------------------
# 2. kernel headers for bcc
# ---------------------------------------------------------------------------
step "kernel headers" "install the headers package (apt-get install ${HDR_GENERIC:-linux-headers-<flavour>}) and rerun scripts/setup.sh; or set BCC_KERNEL_SOURCE to a full kernel header tree yourself"
KSRC_FILE="$CACHE/bcc_kernel_source"
HDR_ROOT="$CACHE/kernel-headers"

# Newest /usr/src/linux-headers-<ver>-<flavour> that has its common tree beside it.
# Debian: <ver>-common; Ubuntu: plain linux-headers-<ver>.
pick_headers() {
    local d rel ver common best="" best_common=""
    for d in "$USR_SRC"/linux-headers-*-"$HDR_FLAVOUR"; do
        [[ -d $d ]] || continue
        rel="${d#"$USR_SRC"/linux-headers-}"          # e.g. 6.1.0-56-amd64
        ver="${rel%-"$HDR_FLAVOUR"}"                 # e.g. 6.1.0-56
        if [[ -d $USR_SRC/linux-headers-$ver-common ]]; then
            common=$USR_SRC/linux-headers-$ver-common
        elif [[ -d $USR_SRC/linux-headers-$ver ]]; then
            common=$USR_SRC/linux-headers-$ver
        else
            continue
        fi
        if [[ -z $best ]] || [[ "$(printf '%s\n%s\n' "$best" "$rel" | sort -V | tail -n1)" == "$rel" ]]; then
            best=$rel best_common=$common
        fi
    done
    [[ -n $best ]] || return 1
    printf '%s %s\n' "$best" "$best_common"
}

# Copy tree $1 onto $2: hard links when allowed (fast, no space), else a real copy.
# --remove-destination unlinks before writing, so a hard link into /usr/src is
# replaced, never written through.
copy_tree() {
    local src=$1 dst=$2
    if [[ $LINK_OK == 1 ]]; then
        logged cp -al --remove-destination "$src/." "$dst/"
    else
        logged cp -a --remove-destination "$src/." "$dst/"
    fi
}

build_merged_headers() {
    local rel=$1 common=$2 flavour=$USR_SRC/linux-headers-$1
    local dest="$HDR_ROOT/$rel" stage="$HDR_ROOT/.$rel.tmp.$$" scratch="$HDR_ROOT/.$rel.flavour.$$"
    # leftovers of an interrupted run (we hold the lock, so none is in use)
    rm -rf "$HDR_ROOT"/.*.tmp.* "$HDR_ROOT"/.*.flavour.*
    mkdir -p "$stage" "$scratch"

    # Hard links need the same filesystem and, for non-root, owning the file
    # (fs.protected_hardlinks): probe once.
    LINK_OK=0
    local probe
    probe="$(find "$common" -maxdepth 1 -type f -name Makefile -print -quit)"
    if [[ -n $probe ]] && ln "$probe" "$stage/.linkprobe" 2>/dev/null; then
        LINK_OK=1
        rm -f "$stage/.linkprobe"
    fi

    # The common (arch-independent) tree first ...
    copy_tree "$common" "$stage"
    # ... then the flavour tree on top. Ubuntu's flavour tree is largely symlinks
    # into the common tree: drop those (their content is already there), and any
    # link where the common tree has a directory (cp cannot put a link over one).
    logged cp -a "$flavour/." "$scratch/"
    local link target rel_path
    while IFS= read -r -d '' link; do
        rel_path="${link#"$scratch"/}"
        target="$(readlink -f "$flavour/$rel_path" || true)"
        case "$target" in
            "$common"|"$common"/*) rm -f "$link"; continue ;;
        esac
        if [[ -d $stage/$rel_path && ! -L $stage/$rel_path ]]; then rm -f "$link"; fi
    done < <(find "$scratch" -type l -print0)
    copy_tree "$scratch" "$stage"
    rm -rf "$scratch"

    # Relative symlinks that pointed outside the trees (Debian: scripts, tools ->
    # ../../lib/linux-kbuild-*) dangle in the copy: point them at the real target.
    local orig
    while IFS= read -r -d '' link; do
        [[ -e $link ]] && continue
        rel_path="${link#"$stage"/}"
        if [[ -L $flavour/$rel_path ]]; then orig="$flavour/$rel_path"; else orig="$common/$rel_path"; fi
        target="$(readlink -f "$orig" || true)"
        if [[ -n $target && -e $target ]]; then ln -sfn "$target" "$link"; fi
    done < <(find "$stage" -type l -print0)

    [[ -f $stage/include/generated/autoconf.h || -f $stage/include/generated/uapi/linux/version.h ]] \
        || die "merged tree $stage has no include/generated headers: $flavour looks incomplete"
    printf 'common=%s\nflavour=%s\nlinks=%s\n' "$common" "$flavour" "$LINK_OK" >"$stage/.trackleak-merged"
    rm -rf "$dest"
    mv "$stage" "$dest"
}

if [[ -n "${BCC_KERNEL_SOURCE:-}" ]]; then
    say "kernel headers: BCC_KERNEL_SOURCE already set to $BCC_KERNEL_SOURCE (left alone)"
elif [[ -e $OWN_BUILD ]]; then
    rm -f "$KSRC_FILE"
    say "kernel headers: running kernel's own at $OWN_BUILD (no BCC_KERNEL_SOURCE needed)"
elif [[ -z $HDR_FLAVOUR ]]; then
    rm -f "$KSRC_FILE"
    warn "kernel headers: none for kernel $KREL and no generic tree for $FAMILY/$ARCH; eBPF features will not work"
else
    picked="$(pick_headers)" || die "no $USR_SRC/linux-headers-*-$HDR_FLAVOUR tree with its common tree found (is $HDR_GENERIC installed?)"
    rel="${picked%% *}" common="${picked#* }"
    dest="$HDR_ROOT/$rel"
    if [[ -f $dest/.trackleak-merged ]]; then
        say "kernel headers: merged tree for $rel already built"
    else
        say "kernel headers: merging $common + $USR_SRC/linux-headers-$rel into .cache/kernel-headers/$rel"
        mkdir -p "$HDR_ROOT"
        build_merged_headers "$rel" "$common"
    fi
    printf '%s\n' "$dest" >"$KSRC_FILE"
    say "kernel headers: BCC_KERNEL_SOURCE=$dest (written to .cache/bcc_kernel_source)"
fi

# ---------------------------------------------------------------------------
# 3. tracefs (bcc reads tracepoints and event ids there)
# ---------------------------------------------------------------------------
step "tracefs"
TRACEFS=/sys/kernel/tracing
# /proc/mounts, not `ls`: as non-root the mounted tracefs is unreadable and looks empty.
if awk -v p="$TRACEFS" '$2 == p && $3 == "tracefs" { found = 1 } END { exit !found }' /proc/mounts; then
    say "tracefs: already mounted at $TRACEFS"
elif [[ ! -d $TRACEFS ]]; then
    warn "tracefs: $TRACEFS does not exist on this kernel; eBPF probes may not attach"
elif can_be_root && logged as_root mount -t tracefs tracefs "$TRACEFS"; then
    say "tracefs: was not mounted, mounted it at $TRACEFS$SUDO_NOTE"
else
    warn "tracefs: not mounted at $TRACEFS and mounting failed (needs root): run 'mount -t tracefs tracefs $TRACEFS' as root before using eBPF"
fi

# ---------------------------------------------------------------------------
# 4. virtualenv from Debian's python3, seeing Debian's bcc module
# ---------------------------------------------------------------------------
step "virtualenv" "make sure $SYS_PYTHON and python3-venv are installed (apt-get install python3-venv), then rerun scripts/setup.sh"
[[ -x $SYS_PYTHON ]] || die "$SYS_PYTHON not found: the virtualenv must come from the distribution's Python (bcc's module is Debian's python3-bpfcc)"
sys_ver="$("$SYS_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

venv_ok() {
    [[ -x $VENV/bin/python && -f $VENV/pyvenv.cfg ]] || return 1
    grep -Eq '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" || return 1
    grep -Eq '^home *= */usr/bin/?$' "$VENV/pyvenv.cfg" || return 1
    [[ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" == "$sys_ver" ]]
}

if venv_ok; then
    say "virtualenv: .venv ready (Python $sys_ver, system site-packages)"
else
    if [[ -e $VENV ]]; then
        say "virtualenv: .venv is not from $SYS_PYTHON with --system-site-packages: recreating it"
        rm -rf "$VENV"
    fi
    say "virtualenv: creating .venv from $SYS_PYTHON (Python $sys_ver) with --system-site-packages"
    logged "$SYS_PYTHON" -m venv --system-site-packages "$VENV"
    # Debian's bundled pip is old; a failed upgrade is not fatal (the old one works).
    logged "$VENV/bin/python" -m pip install -q --upgrade pip \
        || warn "virtualenv: could not upgrade pip (kept $("$VENV/bin/python" -m pip --version | cut -d' ' -f2))"
    rm -f "$VENV/.trackleak-install-stamp"
fi

step "bcc module" "install python3-bpfcc (apt-get install python3-bpfcc bpfcc-tools) and rerun scripts/setup.sh"
if logged "$VENV/bin/python" -c 'import bcc'; then
    say "bcc module: importable from .venv ($("$VENV/bin/python" -c 'import os, bcc; print(os.path.dirname(bcc.__file__))'))"
else
    die "bcc's Python module cannot be imported from .venv (see $LOG): install python3-bpfcc and rerun"
fi

# ---------------------------------------------------------------------------
# 5. the package itself (editable; builds the shim)
# ---------------------------------------------------------------------------
step "pip install" "read the pip output (all of it in .cache/setup.log); fix pyproject.toml or the shim's build, then rerun scripts/setup.sh (or 'make build')"
[[ -f $ROOT/pyproject.toml ]] \
    || die "pyproject.toml not found in $ROOT: the package is not there yet (incomplete checkout?); cannot pip install -e '.[test]'"

# Everything the build reads; when none of it changed and the package imports,
# reinstalling would only cost time.
install_inputs_hash() {
    (
        cd "$ROOT"
        {
            for f in pyproject.toml setup.py setup.cfg MANIFEST.in; do
                if [[ -f $f ]]; then echo "$f"; fi
            done
            for d in preload bpf; do
                if [[ -d $d ]]; then
                    find "$d" -type f ! -name '*.o' ! -name '*.so' ! -name '*.pyc' \
                        ! -path '*/build/*' ! -path '*/__pycache__/*'
                fi
            done
        } | LC_ALL=C sort | while IFS= read -r f; do sha256sum "$f"; done | sha256sum | cut -d' ' -f1
    )
}
want="$(install_inputs_hash)"
have="$(cat "$VENV/.trackleak-install-stamp" 2>/dev/null || true)"
if [[ $FORCE != 1 && $want == "$have" ]] && "$VENV/bin/python" -c 'import trackleak' >/dev/null 2>&1; then
    say "pip install: trackleak up to date in .venv (build inputs unchanged; --force reinstalls)"
else
    say "pip install: .venv/bin/pip install -e '.[test]' (builds the shim)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 logged "$VENV/bin/pip" install -e '.[test]'
    logged "$VENV/bin/python" -c 'import trackleak' \
        || die "pip succeeded but 'import trackleak' fails in .venv (see $LOG)"
    printf '%s\n' "$want" >"$VENV/.trackleak-install-stamp"
    say "pip install: done"
fi

step "done"
say "ready: .venv/bin/trackleak, tests with scripts/test.sh, demo with scripts/demo.sh"
