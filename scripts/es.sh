#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# scripts/es.sh — a real Elasticsearch on loopback for the tests (and for trying TrackLeak out).
#
#   scripts/es.sh start    fetch (once), unpack (once), start, wait until it answers; print its URL
#   scripts/es.sh stop     stop it (TERM, then KILL after 30 s)
#   scripts/es.sh status   print its URL and exit 0 when it runs; exit 3 when it does not
#   scripts/es.sh url      print the URL of the running server (exit 3 when none)
#
# What runs: Elasticsearch's own test distribution from Maven Central
# (org.elasticsearch.distribution.integ-test-zip:elasticsearch:$VERSION, a zip with the server, no
# JDK): fetched with Maven into ~/.m2/repository (a second run, from any checkout, downloads nothing), unpacked
# into .cache/elasticsearch/elasticsearch-$VERSION. It listens on 127.0.0.1 only, on a free port
# (written to .cache/elasticsearch/run/port, the URL to .../run/url), single node, security off (the
# tests put nginx in front for authentication and TLS), disk watermarks off, 256 MiB heap; config,
# data and logs under .cache/elasticsearch/run. Elasticsearch refuses to run as root: as root it runs
# as the system user trackleak-es (made here when missing); when that user cannot reach .cache
# (the checkout is under /root, 0700), the unpacked server and its run directory go to
# /var/tmp/trackleak-es-<hash of that path> instead (the download stays in .cache).
#
# Environment:
#   TRACKLEAK_ES_VERSION    server version (default 8.19.0; the Python client is elasticsearch 8.x)
#   TRACKLEAK_ES_PORT       HTTP port (default: a free one)
#   TRACKLEAK_ES_HEAP       heap size (default 256m)
#   TRACKLEAK_ES_JAVA_HOME  the JDK/JRE to run it with (default: the one `java` on PATH belongs to; 17+)
#   TRACKLEAK_ES_DIR        where it is unpacked and runs (default .cache/elasticsearch)
#   TRACKLEAK_ES_M2         the Maven repository it is fetched into (default ~/.m2/repository)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${TRACKLEAK_ES_VERSION:-8.19.0}"
BASE="${TRACKLEAK_ES_DIR:-$ROOT/.cache/elasticsearch}"
# The download goes to the user's Maven repository, shared by every checkout on the machine (a CI
# run on a fresh clone downloads nothing when an earlier one did); TRACKLEAK_ES_M2 overrides it.
M2="${TRACKLEAK_ES_M2:-${HOME:-/root}/.m2/repository}"
GROUP=org.elasticsearch.distribution.integ-test-zip
ARTIFACT=elasticsearch
ZIP="$M2/${GROUP//.//}/$ARTIFACT/$VERSION/$ARTIFACT-$VERSION.zip"
ES_USER=trackleak-es
STATE="$BASE"  # where the unpacked server and its run directory live (see pick_state)
HOME_DIR="$STATE/elasticsearch-$VERSION"
RUN="$STATE/run"
PIDFILE="$RUN/es.pid"
HEAP="${TRACKLEAK_ES_HEAP:-256m}"
START_TIMEOUT=120

say() { printf '[es] %s\n' "$*" >&2; }
die() { printf '[es] FAILED: %s\n' "$*" >&2; exit 1; }

running_pid() {
    local pid
    [[ -s $PIDFILE ]] || return 1
    pid="$(cat "$PIDFILE")"
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    # the pid must still be our java (a stale file may name a reused pid)
    grep -qa 'org.elasticsearch' "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

answers() {  # the server answers on its port
    curl -fsS --max-time 5 "http://127.0.0.1:$1/_cluster/health?wait_for_status=yellow&timeout=4s" >/dev/null 2>&1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

java_home() {
    local home="${TRACKLEAK_ES_JAVA_HOME:-}" java major
    if [[ -z $home ]]; then
        java="$(command -v java || true)"
        [[ -n $java ]] || die "no java on PATH: install a JDK/JRE 17+ (apt-get install openjdk-17-jre-headless; scripts/setup.sh does) or set TRACKLEAK_ES_JAVA_HOME"
        home="$(dirname "$(dirname "$(readlink -f "$java")")")"
    fi
    [[ -x $home/bin/java ]] || die "TRACKLEAK_ES_JAVA_HOME=$home has no bin/java"
    major="$("$home/bin/java" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
    [[ ${major%%.*} =~ ^[0-9]+$ && ${major%%.*} -ge 17 ]] || die "Elasticsearch $VERSION needs Java 17 or newer; $home/bin/java is ${major:-unknown}"
    echo "$home"
}

fetch() {
    [[ -s $ZIP ]] && return 0
    command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (apt-get install maven; scripts/setup.sh does)"
    say "fetching $GROUP:$ARTIFACT:$VERSION:zip from Maven Central into ${M2#"$ROOT"/} (once)"
    mkdir -p "$M2"
    # -C: a checksum mismatch fails the download
    mvn -B -q -C -Dmaven.repo.local="$M2" dependency:get \
        -Dartifact="$GROUP:$ARTIFACT:$VERSION:zip" -Dtransitive=false >"$BASE/fetch.log" 2>&1 \
        || { tail -n 20 "$BASE/fetch.log" >&2; die "Maven could not fetch $GROUP:$ARTIFACT:$VERSION:zip (log: $BASE/fetch.log)"; }
    [[ -s $ZIP ]] || die "Maven reported success but $ZIP is missing"
}

unpack() {
    [[ -x $HOME_DIR/bin/elasticsearch ]] && return 0
    local stage="$BASE/.unpack.$$"
    rm -rf "$stage"
    mkdir -p "$stage"
    say "unpacking into ${HOME_DIR#"$ROOT"/}"
    unzip -q "$ZIP" -d "$stage"
    [[ -x $stage/elasticsearch-$VERSION/bin/elasticsearch ]] || die "$ZIP has no elasticsearch-$VERSION/bin/elasticsearch"
    rm -rf "$HOME_DIR"
    mv "$stage/elasticsearch-$VERSION" "$HOME_DIR"
    rmdir "$stage"
    chmod -R a+rX "$HOME_DIR"  # readable by $ES_USER whatever our umask
}

# As root, the server runs as $ES_USER: it must reach (x) every directory down to its files.
pick_state() {
    if [[ $(id -u) -eq 0 ]] && id "$ES_USER" >/dev/null 2>&1; then
        mkdir -p "$BASE"
        if ! runuser -u "$ES_USER" -- test -x "$BASE" 2>/dev/null; then
            STATE="/var/tmp/trackleak-es-$(printf '%s' "$BASE" | sha256sum | cut -c1-12)"
            mkdir -p "$STATE"
            chmod 755 "$STATE"
        fi
    fi
    HOME_DIR="$STATE/elasticsearch-$VERSION"
    RUN="$STATE/run"
    PIDFILE="$RUN/es.pid"
}

run_as() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$ES_USER" -- "$@"
    else
        "$@"
    fi
}

ensure_user() {
    [[ $(id -u) -eq 0 ]] || return 0
    if ! id "$ES_USER" >/dev/null 2>&1; then
        say "creating system user $ES_USER (Elasticsearch refuses to run as root)"
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$ES_USER"
    fi
}

write_config() {
    local port=$1 tport=$2 conf="$RUN/config"
    rm -rf "$conf"
    mkdir -p "$conf" "$RUN/data" "$RUN/logs" "$RUN/tmp"
    cp -a "$HOME_DIR/config/." "$conf/"
    # The stock jvm.options logs GC to logs/gc.log relative to the working directory; heap dumps too.
    sed -i -e 's#^-Xlog:gc.*#-Xlog:disable#' \
        -e "s#^-XX:HeapDumpPath=.*#-XX:HeapDumpPath=$RUN/logs#" \
        -e "s#^-XX:ErrorFile=.*#-XX:ErrorFile=$RUN/logs/hs_err_pid%p.log#" "$conf/jvm.options"
    cat >"$conf/elasticsearch.yml" <<YML
# written by scripts/es.sh: a throwaway single-node server for tests, on loopback only
cluster.name: trackleak-test
node.name: trackleak-test
network.host: 127.0.0.1
http.port: $port
transport.port: $tport
discovery.type: single-node
path.data: $RUN/data
path.logs: $RUN/logs
xpack.security.enabled: false
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
YML
    if [[ $(id -u) -eq 0 ]]; then chown -R "$ES_USER:" "$RUN"; fi
}

cmd_start() {
    local pid port
    if pid="$(running_pid)"; then
        port="$(cat "$RUN/port")"
        if answers "$port"; then
            say "already running (pid $pid) at http://127.0.0.1:$port"
            echo "http://127.0.0.1:$port"
            return 0
        fi
        say "pid $pid does not answer: stopping it and starting afresh"
        cmd_stop
    fi
    local jhome
    jhome="$(java_home)"
    mkdir -p "$BASE"
    fetch
    ensure_user
    pick_state
    if [[ $STATE != "$BASE" ]]; then
        say "$ES_USER cannot reach ${BASE}: the server runs from $STATE"
    fi
    unpack
    run_as test -r "$HOME_DIR/lib" -a -x "$HOME_DIR/bin" \
        || die "user $ES_USER cannot read $HOME_DIR: set TRACKLEAK_ES_DIR to a directory it can reach"
    port="${TRACKLEAK_ES_PORT:-$(free_port)}"
    local tport
    tport="$(free_port)"
    write_config "$port" "$tport"
    rm -f "$PIDFILE" "$RUN/url"
    echo "$port" >"$RUN/port"
    say "starting Elasticsearch $VERSION on 127.0.0.1:$port (java: $jhome, heap $HEAP)"
    local t0=$SECONDS
    # -d: daemonize once the node has started; -p: its pid
    (cd "$RUN" && run_as env -u ES_JAVA_OPTS ES_PATH_CONF="$RUN/config" ES_JAVA_HOME="$jhome" ES_TMPDIR="$RUN/tmp" \
        ES_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP" "$HOME_DIR/bin/elasticsearch" -d -p "$PIDFILE" \
        >"$RUN/logs/launcher.log" 2>&1) || {
        tail -n 30 "$RUN/logs/launcher.log" >&2
        die "Elasticsearch did not start (logs in $RUN/logs)"
    }
    while ! answers "$port"; do
        if ! running_pid >/dev/null; then
            tail -n 30 "$RUN/logs/launcher.log" >&2
            die "Elasticsearch exited while starting (logs in $RUN/logs)"
        fi
        if ((SECONDS - t0 > START_TIMEOUT)); then
            cmd_stop
            die "Elasticsearch did not answer within ${START_TIMEOUT}s (logs in $RUN/logs)"
        fi
        sleep 0.5
    done
    echo "http://127.0.0.1:$port" >"$RUN/url"
    say "ready at http://127.0.0.1:$port after $((SECONDS - t0))s (pid $(cat "$PIDFILE"))"
    echo "http://127.0.0.1:$port"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE" "$RUN/url"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid still running after 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE" "$RUN/url"
    say "stopped (pid $pid)"
}

cmd_status() {
    local pid port
    if pid="$(running_pid)" && port="$(cat "$RUN/port" 2>/dev/null)" && answers "$port"; then
        echo "http://127.0.0.1:$port"
        return 0
    fi
    return 3
}

pick_state
case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status|url) cmd_status ;;
    *) sed -n '3,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
