#!/usr/bin/env bash
# Installs what the native stack needs and is missing; does nothing (in about a second) when all is present.
#   - .venv with `pip install -e '.[test]'` (again whenever pyproject.toml, setup.py or the C extension's source is newer
#     than the venv's stamp: the extension is compiled in place)
#   - rabbitmq-server from Debian packages (its own service is stopped: the stack runs its own node)
#   - FerretDB and MinIO built with Go, cached outside the repo as <cache>/bin/<name>-<version>
# Environment: PIXPRESS_CACHE_DIR (default ~/.cache/pixpress). Go's own GOPATH/GOMODCACHE/GOCACHE are left as they are.
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
    } >"${TMPDIR:-/tmp}/pixpress-apt.log" 2>&1 || rc=$?
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
    [ "$REPO/setup.py" -nt "$STAMP" ] || [ "$REPO/services/compressor/_jpegdct.c" -nt "$STAMP" ] ||
    ! compgen -G "$REPO/services/compressor/_jpegdct*.so" >/dev/null; then
    t=$(now)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating .venv"
        python3 -m venv "$VENV"
    fi
    say "pip install -e '.[test]' ..."
    mkdir -p "$CACHE/logs"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e "${REPO}[test]" >"$CACHE/logs/pip.log" 2>&1; then
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
    local minor
    minor=$("$GO" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    # Go >= 1.21 fetches a newer toolchain from the module proxy itself when a module asks for one.
    [ "${minor:-0}" -ge 21 ] || die "$("$GO" version) is too old: install Go >= 1.24 (https://go.dev/dl/)"
}

BIN=$CACHE/bin
TMPBUILD=
cleanup() { if [ -n "$TMPBUILD" ]; then rm -rf "$TMPBUILD"; fi; }
trap cleanup EXIT

# FerretDB's `go install .../cmd/ferretdb@v1.24.2` builds, but the binary panics at start: the module zip lacks the
# generated build/version/version.txt (`Invalid build/version/version.txt file content`). So we take the very same
# module from the module proxy, add that one file, and build ./cmd/ferretdb from it.
build_ferretdb() {
    local out=$BIN/ferretdb-$FERRETDB_VERSION
    [ -x "$out" ] && return 0
    find_go
    local t dir
    t=$(now)
    say "building FerretDB $FERRETDB_VERSION with $("$GO" env GOVERSION) (a few minutes on a cold Go cache) ..."
    mkdir -p "$BIN"
    TMPBUILD=$(mktemp -d "$CACHE/build.XXXXXX")
    dir=$(cd "$TMPBUILD" && "$GO" mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then die "go mod download $FERRETDB_MODULE@$FERRETDB_VERSION failed"; fi
    cp -R "$dir/." "$TMPBUILD/src"
    chmod -R u+w "$TMPBUILD/src"
    printf '%s\n' "$FERRETDB_VERSION" >"$TMPBUILD/src/build/version/version.txt"
    (cd "$TMPBUILD/src" && "$GO" build -trimpath -buildvcs=false -o "$TMPBUILD/ferretdb" ./cmd/ferretdb) ||
        die "building FerretDB failed"
    "$TMPBUILD/ferretdb" --version >/dev/null || die "the FerretDB binary does not run"
    mv -f "$TMPBUILD/ferretdb" "$out"
    rm -rf "$TMPBUILD"
    TMPBUILD=
    say "built $out in $(took "$t")"
    did=1
}

build_minio() {
    local out=$BIN/minio-$MINIO_VERSION
    [ -x "$out" ] && return 0
    find_go
    local t
    t=$(now)
    say "building MinIO $MINIO_VERSION with $("$GO" env GOVERSION) (a few minutes on a cold Go cache) ..."
    mkdir -p "$BIN"
    TMPBUILD=$(mktemp -d "$CACHE/build.XXXXXX")
    (cd "$TMPBUILD" && GOBIN=$TMPBUILD "$GO" install -trimpath "$MINIO_MODULE@$MINIO_VERSION") ||
        die "go install $MINIO_MODULE@$MINIO_VERSION failed"
    "$TMPBUILD/minio" --version >/dev/null || die "the MinIO binary does not run"
    mv -f "$TMPBUILD/minio" "$out"
    rm -rf "$TMPBUILD"
    TMPBUILD=
    say "built $out in $(took "$t")"
    did=1
}

build_ferretdb
build_minio

if [ "$did" = 0 ]; then
    say "everything present (venv, rabbitmq-server, ferretdb $FERRETDB_VERSION, minio $MINIO_VERSION)"
else
    say "done in $(took "$START")"
fi
