#!/usr/bin/env bash
# Installs what the native stack needs and is missing; does nothing (in about a second) when all is present.
#   - .venv with `pip install -c constraints.txt -e '.[dev]'`: the services, the native stack's supervisor, the tests,
#     the benchmarks' and `make lint`'s tools, at the versions constraints.txt pins (again whenever pyproject.toml,
#     constraints.txt, setup.py or the C extension's source is newer than the venv's stamp: the extension is
#     compiled in place)
#   - rabbitmq-server from Debian packages (its own service is stopped: the stack runs its own node); chromium for the
#     console's browser tests
#   - FerretDB (with scripts/ferretdb/pixpress.patch) and MinIO built with Go, side by side, cached outside the repo
#     as <cache>/bin/<name>-<version>[-pixpress-<patch hash>] (scripts/versions.sh)
#   - promtool and promcheck from scripts/prometheus (the tests check the alert rules and dashboard with them)
# Environment: PIXPRESS_CACHE_DIR (default ~/.cache/pixpress); PIXPRESS_INSTALL_TICK (seconds between "still
# building" lines, default 30). Go's own GOPATH/GOMODCACHE/GOCACHE are used as they are set (.ci/run points GOCACHE
# at an empty directory to build as a fresh machine would).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PIXPRESS_CACHE_DIR:-${HOME:-/root}/.cache/pixpress}
VENV=$REPO/.venv
STAMP=$VENV/.pixpress-installed
# shellcheck source=scripts/versions.sh
. "$REPO/scripts/versions.sh"

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }
took() { printf '%ss' "$(( $(now) - $1 ))"; }

# Waits for background jobs (label=pid words), printing which are still running every PIXPRESS_INSTALL_TICK seconds
# (default 30) so that a long first install never looks hung. Returns when all have ended; their exit statuses
# are collected by the caller with `wait`.
wait_ticking() {
    local since=$1 tick=${PIXPRESS_INSTALL_TICK:-30} next job running
    shift
    next=$(($(now) + tick))
    while :; do
        running=()
        for job; do
            if kill -0 "${job#*=}" 2>/dev/null; then running+=("${job%%=*}"); fi
        done
        [ "${#running[@]}" -gt 0 ] || return 0
        sleep 1
        if (($(now) >= next)); then
            say "still working: ${running[*]} ($(took "$since"), load average $(cut -d' ' -f1-3 /proc/loadavg))"
            next=$(($(now) + tick))
        fi
    done
}

START=$(now)
did=0
SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi

# --- Debian packages --------------------------------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_packages=()
installed rabbitmq-server || apt_packages+=(rabbitmq-server)
# the compressor's C extension (services/compressor/_jpegdct.c) is compiled by pip against the system libjpeg-turbo
installed libjpeg62-turbo-dev || apt_packages+=(libjpeg62-turbo-dev)
command -v gcc >/dev/null || apt_packages+=(gcc)
# the console's browser tests (tests/test_console*.py) drive Debian's chromium with Playwright (never its own download)
installed chromium || apt_packages+=(chromium)
# ... and needs the headers of the Python that builds the venv (Debian's python3 keeps them in python3-dev)
if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'; then
    apt_packages+=(python3-dev)
fi
if [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt_packages+=(python3-venv)
fi

if [ "${#apt_packages[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${apt_packages[*]} and no apt-get: install them by hand"
    t=$(now)
    say "apt-get install ${apt_packages[*]} ..."
    # Keep the Debian package from starting its own rabbitmq-server (the stack runs its own node on 127.0.0.1):
    # a policy-rc.d that answers 101 is Debian's documented way; only ours is removed again.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    rc=0
    {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_packages[@]}"
    } >"${TMPDIR:-/tmp}/pixpress-apt.log" 2>&1 &
    wait_ticking "$t" "apt-get=$!"
    wait $! || rc=$?
    if [ "$own_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    if [ "$rc" != 0 ]; then
        tail -n 30 "${TMPDIR:-/tmp}/pixpress-apt.log" >&2
        die "apt-get failed (full log: ${TMPDIR:-/tmp}/pixpress-apt.log)"
    fi
    # Belt and braces: if the package's service started anyway (it runs as user rabbitmq), stop it.
    if pgrep -u rabbitmq -f beam >/dev/null 2>&1; then
        say "stopping the rabbitmq-server service the Debian package started"
        "${SUDO[@]}" service rabbitmq-server stop >/dev/null 2>&1 ||
            "${SUDO[@]}" su rabbitmq -s /bin/sh -c '/usr/lib/rabbitmq/bin/rabbitmqctl stop' >/dev/null 2>&1 || true
        pkill -u rabbitmq -f beam 2>/dev/null || true
    fi
    say "apt-get install ${apt_packages[*]} done in $(took "$t")"
    did=1
fi

# --- Python venv ------------------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ] || [ ! -e "$STAMP" ] || [ "$REPO/pyproject.toml" -nt "$STAMP" ] ||
    [ "$REPO/constraints.txt" -nt "$STAMP" ] || [ "$REPO/setup.py" -nt "$STAMP" ] || [ "$REPO/services/compressor/_jpegdct.c" -nt "$STAMP" ] ||
    ! compgen -G "$REPO/services/compressor/_jpegdct*.so" >/dev/null; then
    t=$(now)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating .venv"
        python3 -m venv "$VENV"
    fi
    say "pip install -c constraints.txt -e '.[dev]' ..."
    mkdir -p "$CACHE/logs"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -c "$REPO/constraints.txt" -e "${REPO}[dev]" \
        >"$CACHE/logs/pip.log" 2>&1 &
    wait_ticking "$t" "pip=$!"
    if ! wait $!; then
        tail -n 30 "$CACHE/logs/pip.log" >&2
        die "pip install failed (full log: $CACHE/logs/pip.log)"
    fi
    touch "$STAMP"
    say "python environment ready in $(took "$t")"
    did=1
fi

# --- Go-built servers -------------------------------------------------------------------------------------------
GO=
find_go() {
    [ -n "$GO" ] && return 0
    GO=$(command -v go || true)
    if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
    [ -n "$GO" ] || die "Go is needed to build FerretDB and MinIO: install Go >= 1.24 (https://go.dev/dl/)"
    command -v git >/dev/null || die "git is needed to apply scripts/ferretdb/pixpress.patch: apt-get install git"
    local minor
    minor=$("$GO" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    # Go >= 1.21 fetches a newer toolchain from the module proxy itself when a module asks for one.
    [ "${minor:-0}" -ge 21 ] || die "$("$GO" version) is too old: install Go >= 1.24 (https://go.dev/dl/)"
}

BIN=$CACHE/bin
LOGDIR=$CACHE/logs
BUILDS=()
cleanup() {
    local dir
    for dir in "${BUILDS[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

# A fresh build directory in the cache (same filesystem as $BIN, so the finished binary is moved, not copied).
new_build_dir() { mktemp -d "$CACHE/build.XXXXXX"; }

# FerretDB's `go install .../cmd/ferretdb@v1.24.2` builds, but the binary panics at start: the module zip lacks the
# generated build/version/version.txt (`Invalid build/version/version.txt file content`). So we take the very same
# module from the module proxy, add that one file, apply our patch (scripts/ferretdb/README.md) and build
# ./cmd/ferretdb from it. Runs in a subshell of its own (see build_all): `die` ends only this build.
build_ferretdb() {
    local out=$BIN/$FERRETDB_BINARY tmp=$1 dir
    dir=$(cd "$tmp" && "$GO" mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then die "go mod download $FERRETDB_MODULE@$FERRETDB_VERSION failed"; fi
    cp -R "$dir/." "$tmp/src"
    chmod -R u+w "$tmp/src"
    printf '%s\n' "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
    # GIT_CEILING_DIRECTORIES: should the cache sit inside some git work tree, `git apply` would take the patch's
    # paths as relative to that tree and silently skip them; the grep proves the patch is in.
    (cd "$tmp/src" && GIT_CEILING_DIRECTORIES=$tmp git apply -p1 "$FERRETDB_PATCH") ||
        die "scripts/ferretdb/pixpress.patch does not apply to $FERRETDB_MODULE@$FERRETDB_VERSION"
    grep -q 'pixpress patch' "$tmp/src/internal/backends/sqlite/query.go" || die "the FerretDB patch was not applied"
    (cd "$tmp/src" && "$GO" build -trimpath -buildvcs=false -o "$tmp/ferretdb" ./cmd/ferretdb) ||
        die "building FerretDB failed"
    "$tmp/ferretdb" --version >/dev/null || die "the FerretDB binary does not run"
    mv -f "$tmp/ferretdb" "$out"
}

build_minio() {
    local out=$BIN/$MINIO_BINARY tmp=$1
    (cd "$tmp" && GOBIN=$tmp "$GO" install -trimpath "$MINIO_MODULE@$MINIO_VERSION") ||
        die "go install $MINIO_MODULE@$MINIO_VERSION failed"
    "$tmp/minio" --version >/dev/null || die "the MinIO binary does not run"
    mv -f "$tmp/minio" "$out"
}

# promtool without Prometheus's service-discovery plugins but DNS ($PROMTOOL_TAGS: the compose scrape config uses
# dns_sd, nothing here needs the cloud and Kubernetes clients): with promcheck 2 min 41 s from an empty Go build
# cache on our 2-core machine, where promtool alone with all of them took 10 min 23 s (docs/observability.md).
build_prometheus_tools() {
    local tmp=$1
    (cd "$PROMETHEUS_TOOLS_DIR" &&
        "$GO" build -trimpath -buildvcs=false -tags "$PROMTOOL_TAGS" -o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool &&
        "$GO" build -trimpath -buildvcs=false -o "$tmp/promcheck" .) || die "building promtool and promcheck failed"
    "$tmp/promtool" --version >/dev/null || die "the promtool binary does not run"
    mv -f "$tmp/promtool" "$BIN/$PROMTOOL_BINARY"
    mv -f "$tmp/promcheck" "$BIN/$PROMCHECK_BINARY"
}

# Builds the missing binaries side by side: each `go` already uses every core, but one build's single-threaded
# phases (module downloads, linking) overlap the other's compiling.
build_all() {
    local names=() name jobs=() pid t failed=() tmp
    [ -x "$BIN/$FERRETDB_BINARY" ] || names+=(ferretdb)
    [ -x "$BIN/$MINIO_BINARY" ] || names+=(minio)
    if [ ! -x "$BIN/$PROMTOOL_BINARY" ] || [ ! -x "$BIN/$PROMCHECK_BINARY" ]; then names+=(prometheus_tools); fi
    [ "${#names[@]}" -gt 0 ] || return 0
    find_go
    mkdir -p "$BIN" "$LOGDIR"
    t=$(now)
    say "building ${names[*]} with $("$GO" env GOVERSION) (on a fresh machine 5-10 minutes; logs in $LOGDIR) ..."
    for name in "${names[@]}"; do
        tmp=$(new_build_dir)
        BUILDS+=("$tmp")
        ("build_$name" "$tmp") >"$LOGDIR/build-$name.log" 2>&1 &
        jobs+=("$name=$!")
    done
    wait_ticking "$t" "${jobs[@]}"
    for name in "${jobs[@]}"; do
        pid=${name#*=}
        name=${name%%=*}
        if wait "$pid"; then
            say "built $BIN/$(binary_name "$name")"
        else
            failed+=("$name")
            printf -- '--- last lines of %s ---\n' "$LOGDIR/build-$name.log" >&2
            tail -n 30 "$LOGDIR/build-$name.log" >&2
        fi
    done
    [ "${#failed[@]}" -eq 0 ] || die "building ${failed[*]} failed (logs: $LOGDIR/build-<name>.log)"
    say "built ${names[*]} in $(took "$t")"
    did=1
}

binary_name() {
    case $1 in
    ferretdb) printf '%s\n' "$FERRETDB_BINARY" ;;
    minio) printf '%s\n' "$MINIO_BINARY" ;;
    prometheus_tools) printf '%s and %s\n' "$PROMTOOL_BINARY" "$PROMCHECK_BINARY" ;;
    esac
}

build_all

if [ "$did" = 0 ]; then
    say "everything present (venv, rabbitmq-server, $FERRETDB_BINARY, $MINIO_BINARY, $PROMTOOL_BINARY, $PROMCHECK_BINARY)"
else
    say "done in $(took "$START")"
fi
