#!/usr/bin/env bash
# The native pixpress stack (no Docker): RabbitMQ, FerretDB, MinIO and the four services under one supervisord,
# everything listening on 127.0.0.1 only.
#
#   scripts/stack.sh up        install what is missing, start what is not running (restart the services when their
#                              environment or code changed), wait until all is healthy
#   scripts/stack.sh down      stop everything gracefully (services first, then the servers)
#   scripts/stack.sh ps        one line "<name> <pid>" per running process
#   scripts/stack.sh status    supervisor's view plus one health probe per program
#   scripts/stack.sh logs [-n N] [--no-follow] [name...]   tail the program logs (all by default)
#   scripts/stack.sh logs --request ID [--follow]   one request's lines from every service, in time order
#   scripts/stack.sh restart [name...]   restart programs (default: the Python services) and wait until healthy
#   scripts/stack.sh clean     down, then delete the state directory (queues, database, objects, logs)
#
# Program names and ports: scripts/stack.env (API 5000, RabbitMQ 5672 + management UI 15672 + Prometheus metrics
# 15692, FerretDB 27017, MinIO 9000, workers' health and /metrics 8101, 8102, 8110+N; ingest's /metrics is on the
# API port), which tests/ and bench/ read too.
#
# Environment:
#   PIXPRESS_*                 every other PIXPRESS_ variable is handed to the services. `up` stores them in
#                              <state>/service.env; when they differ from what the running services got, `up`
#                              restarts the services (and MinIO if PIXPRESS_S3_ACCESS_KEY/SECRET_KEY changed).
#   PIXPRESS_STATE_DIR         state (data, logs, sockets); default <repo>/.run
#   PIXPRESS_CACHE_DIR         built binaries; default ~/.cache/pixpress
#   PIXPRESS_COMPRESSORS       number of compressor processes; default: number of cores
#   PIXPRESS_STACK_ONLY_INFRA  1 = run only RabbitMQ, FerretDB and MinIO (no Python services)
#   PIXPRESS_STACK_TIMEOUT     seconds `up` waits for health, counted from when it starts the servers (after
#                              install.sh, however long that took); default 180
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$REPO/scripts/stack.sh
STATE=$(realpath -m -- "${PIXPRESS_STATE_DIR:-$REPO/.run}")
CACHE=${PIXPRESS_CACHE_DIR:-${HOME:-/root}/.cache/pixpress}
VENV=$REPO/.venv
# shellcheck source=scripts/versions.sh
. "$REPO/scripts/versions.sh"
# shellcheck source=scripts/stack.env
. "$REPO/scripts/stack.env"
FERRETDB_BIN=$CACHE/bin/$FERRETDB_BINARY
MINIO_BIN=$CACHE/bin/$MINIO_BINARY

CONF=$STATE/supervisord.conf
SOCK=$STATE/supervisord.sock
PIDFILE=$STATE/supervisord.pid
LOGS=$STATE/logs
SERVICE_ENV=$STATE/service.env
SERVICE_CODE=$STATE/service.code # code_stamp of what the running services were started from
MARKER=PXSTACK_STATE_DIR # set in supervisord's environment, so every process of this stack carries it

read -ra INFRA <<<"$SERVERS"

say() { printf '%s: %s\n' "${CMD:-stack}" "$*"; }
die() { printf '%s: ERROR: %s\n' "${CMD:-stack}" "$*" >&2; exit 1; }

# --- helpers ----------------------------------------------------------------------------------------------------

# The Python services supervisord runs (compressor-1..N from PIXPRESS_COMPRESSORS, default: one per core).
service_names() {
    [ "${PIXPRESS_STACK_ONLY_INFRA:-0}" = 1 ] && return 0
    local n=${PIXPRESS_COMPRESSORS:-$(nproc)} i words
    [[ $n =~ ^[0-9]+$ ]] || die "PIXPRESS_COMPRESSORS must be a number, got '$n'"
    read -ra words <<<"$SERVICES"
    printf '%s\n' "${words[@]}"
    for ((i = 1; i <= n; i++)); do printf 'compressor-%d\n' "$i"; done
}

# The port of a worker's /healthz (scripts/stack.env).
health_port() {
    case $1 in
    aggregator) printf '%s\n' "$AGGREGATOR_HEALTH_PORT" ;;
    notifier) printf '%s\n' "$NOTIFIER_HEALTH_PORT" ;;
    compressor-*) printf '%s\n' "$((COMPRESSOR_HEALTH_PORT_BASE + ${1#compressor-}))" ;;
    esac
}

# supervisorctl's name for a program.
sv_name() { case $1 in compressor-*) printf 'compressor:%s\n' "$1" ;; *) printf '%s\n' "$1" ;; esac; }

sv() { "$VENV/bin/supervisorctl" -c "$CONF" "$@"; }

# A process that exists and is not a zombie (kill -0 succeeds on zombies no one has reaped yet).
alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

supervisord_pid() {
    local pid
    [ -r "$PIDFILE" ] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q supervisord || return 1
    printf '%s\n' "$pid"
}

# supervisord's XML-RPC API and the health probes (scripts/stackctl.py): ps, names, start, wait, health.
ctl() { "$VENV/bin/python" "$REPO/scripts/stackctl.py" --state "$STATE" --prefix "${CMD:-stack}" "$@"; }

# The ingest API's port: PIXPRESS_API_PORT as the services got it, else scripts/stack.env's.
api_port() {
    # shellcheck disable=SC1090
    (if [ -r "$SERVICE_ENV" ]; then . "$SERVICE_ENV"; fi; printf '%s\n' "${PIXPRESS_API_PORT:-$API_PORT}")
}

# Processes carrying this stack's marker: whatever survived its supervisord (e.g. after a kill -9 of supervisord).
marked_pids() {
    grep -lzxF -- "$MARKER=$STATE" /proc/[0-9]*/environ 2>/dev/null | sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' |
        grep -vxF -e "$$" -e "$PPID" || true
}

sweep() {
    local pids pid shown=() t
    pids=$(marked_pids)
    [ -n "$pids" ] || return 0
    for pid in $pids; do
        local comm
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        [ "$comm" = epmd ] || shown+=("$pid($comm)")
    done
    [ "${#shown[@]}" -eq 0 ] || say "stopping processes left over from an earlier run: ${shown[*]}"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((t = 0; t < 300; t++)); do
        [ -n "$(marked_pids)" ] || return 0
        sleep 0.1
    done
    pids=$(marked_pids)
    say "still alive after 30s, killing: $pids"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    if ! flock -n 9; then
        say "waiting for another scripts/stack.sh working on $STATE ..."
        flock -w 900 9 || die "gave up waiting for the other scripts/stack.sh (lock $STATE/.lock)"
    fi
}

check_paths() {
    local p
    for p in "$REPO" "$STATE" "$CACHE"; do
        [[ $p =~ ^[A-Za-z0-9._/+@:,=-]+$ ]] ||
            die "path '$p' has spaces or characters supervisord/sqlite URLs cannot take; set PIXPRESS_STATE_DIR/PIXPRESS_CACHE_DIR"
    done
    [ "${#SOCK}" -lt 100 ] || die "socket path $SOCK is too long for a unix socket; set PIXPRESS_STATE_DIR to a shorter path"
}

# Writes $2 to $1 only when different; returns 0 when it changed the file.
write_if_changed() {
    local file=$1 content=$2
    if [ -f "$file" ] && [ "$(cat "$file")" = "$content" ]; then return 1; fi
    (umask 077 && printf '%s\n' "$content" >"$file.tmp") || die "cannot write $file.tmp"
    mv -f "$file.tmp" "$file" || die "cannot write $file"
}

# --- generated files --------------------------------------------------------------------------------------------

rabbitmq_conf() {
    cat <<EOF
# generated by scripts/stack.sh
listeners.tcp.default = 127.0.0.1:$RABBITMQ_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBITMQ_MANAGEMENT_PORT
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $RABBITMQ_PROMETHEUS_PORT
loopback_users.$RABBITMQ_USER = true
log.console = true
log.console.level = info
log.console.use_colors = off
log.file.level = info
EOF
}

# The PIXPRESS_* environment handed to the services (stack.sh's own knobs left out), as shell to source.
service_env() {
    local name
    printf '# PIXPRESS_* environment of the services, written by scripts/stack.sh up; read at each program start\n'
    while IFS= read -r name; do
        case $name in PIXPRESS_STATE_DIR | PIXPRESS_CACHE_DIR | PIXPRESS_COMPRESSORS | PIXPRESS_STACK_*) continue ;; esac
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep '^PIXPRESS_' | LC_ALL=C sort)
}

# A fingerprint of the code the Python services run (path, size and time of every file under services/ and
# shared/), so that `up` after a `git pull` or an edit restarts them instead of leaving yesterday's code running.
code_stamp() {
    (cd "$REPO" && find services shared -name __pycache__ -prune -o -type f -printf '%p %s %T@\n' | LC_ALL=C sort |
        cksum | cut -d' ' -f1)
}

program() { # name priority autostart startsecs startretries command...
    local name=$1 priority=$2 autostart=$3 startsecs=$4 startretries=$5
    shift 5
    cat <<EOF

[program:$name]
command=$*
directory=${PROGRAM_DIR:-$REPO}
priority=$priority
autostart=$autostart
autorestart=true
startsecs=$startsecs
startretries=$startretries
stopsignal=TERM
stopwaitsecs=30
killasgroup=true
redirect_stderr=true
stdout_logfile=$LOGS/$name.log
stdout_logfile_maxbytes=50MB
stdout_logfile_backups=2
EOF
}

supervisord_conf() {
    local hard minfds home name compressors=()
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then minfds=65536; else minfds=$hard; fi
    home=${HOME:-$(cd ~ && pwd)}
    cat <<EOF
; generated by scripts/stack.sh up; edits are overwritten
[unix_http_server]
file=$SOCK
chmod=0700

[supervisord]
logfile=$LOGS/supervisord.log
logfile_maxbytes=10MB
logfile_backups=2
pidfile=$PIDFILE
childlogdir=$LOGS
directory=$STATE
minfds=$minfds
identifier=pixpress

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$SOCK
EOF
    # RabbitMQ as root from the package's own script (not /usr/sbin/rabbitmq-server, which switches to user rabbitmq).
    # RABBITMQ_ALLOW_INPUT makes that script exec the VM instead of running it in the background (-noinput is given
    # back below): supervisord then watches beam.smp itself (a kill -9 of the pid `ps` shows is a broker crash it
    # restarts) and its SIGTERM is the broker's clean shutdown. The Erlang distribution and epmd listen on loopback too; the cookie is
    # $home/.erlang.cookie.
    PROGRAM_DIR=$STATE/rabbitmq program rabbitmq 10 true 5 3 /usr/lib/rabbitmq/bin/rabbitmq-server
    cat <<EOF
environment=HOME="$home",RABBITMQ_ALLOW_INPUT="true",RABBITMQ_NODENAME="pixpress@localhost",RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",RABBITMQ_NODE_PORT="$RABBITMQ_PORT",RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT",ERL_EPMD_ADDRESS="127.0.0.1",RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-noinput +sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}",RABBITMQ_MNESIA_BASE="$STATE/rabbitmq/mnesia",RABBITMQ_LOG_BASE="$STATE/rabbitmq/log",RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/rabbitmq/enabled_plugins",RABBITMQ_CONFIG_FILE="$STATE/rabbitmq/rabbitmq.conf",RABBITMQ_ADVANCED_CONFIG_FILE="$STATE/rabbitmq/advanced.config",RABBITMQ_CONF_ENV_FILE="$STATE/rabbitmq/rabbitmq-env.conf",ERL_CRASH_DUMP="$LOGS/erl_crash.dump",PXSTACK_RABBITMQ_CONF="$(rabbitmq_conf | cksum | cut -d' ' -f1)"
EOF
    PROGRAM_DIR=$STATE/ferretdb-state program ferretdb 20 true 2 3 "$FERRETDB_BIN" --handler=sqlite "--sqlite-url=file:$STATE/ferretdb/" \
        "--listen-addr=127.0.0.1:$FERRETDB_PORT" --telemetry=disable "--debug-addr=127.0.0.1:$FERRETDB_DEBUG_PORT" "--state-dir=$STATE/ferretdb-state"
    # FerretDB allocates heavily per document it decodes: GOGC=400 instead of Go's default 100 cut its CPU per query
    # by about a third (the heap may grow to 5x the live data, ~60 MB resident), with a 1 GiB soft limit so that a
    # huge request's sorted read collects earlier instead of growing 5x: docs/ferretdb.md, "CPU per document".
    printf 'environment=GOGC="400",GOMEMLIMIT="1GiB"\n'
    PROGRAM_DIR=$STATE program minio 20 true 2 3 "$SELF" _run --minio -- "$MINIO_BIN" server "$STATE/minio" \
        --address "127.0.0.1:$MINIO_PORT" --console-address "127.0.0.1:$MINIO_CONSOLE_PORT"
    # metrics without a bearer token (MinIO listens on 127.0.0.1 only here): docs/observability.md
    printf 'environment=MINIO_BROWSER="off",MINIO_UPDATE="off",MINIO_PROMETHEUS_AUTH_TYPE="public"\n'

    # The Python services start once the servers are healthy (autostart=false; `up` starts them), and stop first.
    while IFS= read -r name; do
        case $name in
        ingest) program ingest 100 false 2 10 "$SELF" _run -- "$VENV/bin/pixpress-ingest" ;;
        aggregator | notifier)
            program "$name" 100 false 2 10 "$SELF" _run "PIXPRESS_HEALTH_PORT=$(health_port "$name")" -- \
                "$VENV/bin/pixpress-$name" ;;
        compressor-*)
            compressors+=("$name")
            program "$name" 100 false 2 10 "$SELF" _run "PIXPRESS_HEALTH_PORT=$(health_port "$name")" -- \
                "$VENV/bin/pixpress-compressor" ;;
        esac
    done < <(service_names)
    if [ "${#compressors[@]}" -gt 0 ]; then
        local IFS=,
        printf '\n[group:compressor]\nprograms=%s\npriority=100\n' "${compressors[*]}"
    fi
}

# --- subcommands ------------------------------------------------------------------------------------------------

cmd_up() {
    local began
    began=$(date +%s)
    "$REPO/scripts/install.sh" # may take minutes on a fresh machine (it says what it does while it runs)
    check_paths
    if [ ! -x "$FERRETDB_BIN" ] || [ ! -x "$MINIO_BIN" ]; then die "binaries missing in $CACHE/bin after install.sh"; fi
    lock
    # The health deadline counts from here, when the servers are being started: neither the install nor
    # waiting for another stack.sh's lock eats into it.
    START=$(date +%s)
    TIMEOUT=${PIXPRESS_STACK_TIMEOUT:-180}
    mkdir -p "$LOGS" "$STATE/rabbitmq/mnesia" "$STATE/rabbitmq/log" "$STATE/ferretdb" "$STATE/ferretdb-state" \
        "$STATE/minio"
    touch "$STATE/.pixpress-state"
    write_if_changed "$STATE/rabbitmq/rabbitmq.conf" "$(rabbitmq_conf)" || true
    write_if_changed "$STATE/rabbitmq/enabled_plugins" "[rabbitmq_management,rabbitmq_prometheus]." || true
    write_if_changed "$STATE/rabbitmq/rabbitmq-env.conf" "# empty on purpose: /etc/rabbitmq/rabbitmq-env.conf is not used" ||
        true

    local conf env old_env changed code restart="" services=()
    mapfile -t services < <(service_names)
    conf=$(supervisord_conf)
    env=$(service_env)
    code=$(code_stamp)

    if ! supervisord_pid >/dev/null; then
        sweep
        write_if_changed "$CONF" "$conf" || true
        write_if_changed "$SERVICE_ENV" "$env" || true
        write_if_changed "$SERVICE_CODE" "$code" || true
        local unset_args=() name t
        while IFS= read -r name; do unset_args+=(-u "$name"); done < <(compgen -e | grep '^PIXPRESS_' || true)
        # The services get PIXPRESS_* only from service.env, so a later `up` can change them by restarting them.
        # 9>&-: the daemon must not inherit (and so hold forever) the lock taken above.
        env "${unset_args[@]}" "$MARKER=$STATE" "$VENV/bin/supervisord" -c "$CONF" 9>&- ||
            die "supervisord did not start: see $LOGS/supervisord.log"
        for ((t = 0; t < 100; t++)); do sv pid >/dev/null 2>&1 && break; sleep 0.1; done
        say "started supervisord (pid $(supervisord_pid || echo '?')), config $CONF"
    else
        if write_if_changed "$CONF" "$conf"; then
            say "supervisord config changed, applying:"
            sv reread >/dev/null
            sv update 2>&1 | sed "s/^/$CMD:   /" || true
        fi
        old_env=$(cat "$SERVICE_ENV" 2>/dev/null || true)
        if [ "$old_env" != "$env" ]; then
            changed=$(diff <(printf '%s\n' "$old_env") <(printf '%s\n' "$env") |
                sed -n 's/^[<>] export \([A-Za-z0-9_]*\)=.*/\1/p' | sort -u | tr '\n' ' ' || true)
            write_if_changed "$SERVICE_ENV" "$env" || true
            restart="environment changed (${changed% })"
            if [[ " $changed " == *" PIXPRESS_S3_ACCESS_KEY "* || " $changed " == *" PIXPRESS_S3_SECRET_KEY "* ]]; then
                say "S3 credentials changed: restarting minio"
                sv stop minio >/dev/null 2>&1 || true
            fi
        fi
        if write_if_changed "$SERVICE_CODE" "$code"; then
            restart=${restart:-"the code changed since they started"}
        fi
        if [ -n "$restart" ] && [ "${#services[@]}" -gt 0 ]; then
            say "$restart: restarting the services"
            sv stop "$(sv_name ingest)" aggregator notifier 'compressor:*' >/dev/null 2>&1 || true
        fi
    fi

    ctl start "${INFRA[@]}"
    ctl wait --since "$START" --timeout "$TIMEOUT" "${INFRA[@]}" || exit 1
    if [ "${#services[@]}" -gt 0 ]; then
        ctl start --all "${services[@]}"
        ctl wait --since "$START" --timeout "$TIMEOUT" "${INFRA[@]}" "${services[@]}" || exit 1
    fi
    local total=""
    if ((START - began >= 5)); then total=" ($(( $(date +%s) - began ))s with the install)"; fi
    say "all healthy in $(( $(date +%s) - START ))s$total: ${INFRA[*]}${services[*]:+ ${services[*]}}"
    if [ "${#services[@]}" -gt 0 ]; then
        say "API http://127.0.0.1:$(api_port), RabbitMQ UI http://127.0.0.1:$RABBITMQ_MANAGEMENT_PORT ($RABBITMQ_USER/$RABBITMQ_PASSWORD), MinIO http://127.0.0.1:$MINIO_PORT"
    fi
}

cmd_down() {
    [ -d "$STATE" ] || { say "nothing running"; return 0; }
    local start pid t
    start=$(date +%s)
    lock
    if pid=$(supervisord_pid); then
        say "stopping the services, then rabbitmq, ferretdb, minio (graceful, up to 30s each) ..."
        sv shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        for ((t = 0; t < 1800; t++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            say "supervisord still running after 180s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sweep
        say "stopped in $(( $(date +%s) - start ))s"
    else
        sweep
        say "nothing running"
    fi
}

cmd_ps() {
    supervisord_pid >/dev/null || return 0
    ctl ps
}

cmd_status() {
    local pid
    if ! pid=$(supervisord_pid); then
        say "down (no supervisord for $STATE)"
        return 3
    fi
    printf 'supervisord pid %s, state %s\n' "$pid" "$STATE"
    sv status || true
    ctl health
}

cmd_logs() {
    local n=20 follow=(-F) files=() name
    while [ $# -gt 0 ]; do
        case $1 in
        -n) n=$2; shift 2 ;;
        --no-follow) follow=(); shift ;;
        --request) shift; cd "$REPO" && exec "$VENV/bin/python" -m scripts.request_log --logs "$LOGS" "$@" ;;
        *) files+=("$LOGS/$1.log"); shift ;;
        esac
    done
    if [ "${#files[@]}" -eq 0 ]; then
        for name in "$LOGS"/*.log; do [ -e "$name" ] && files+=("$name"); done
    fi
    [ "${#files[@]}" -gt 0 ] || { say "no logs in $LOGS yet"; return 0; }
    exec tail -n "$n" "${follow[@]}" "${files[@]}"
}

cmd_restart() {
    START=$(date +%s)
    TIMEOUT=${PIXPRESS_STACK_TIMEOUT:-180}
    supervisord_pid >/dev/null || die "the stack is not running: scripts/stack.sh up"
    local names=("$@") name services=()
    if [ "${#names[@]}" -eq 0 ]; then mapfile -t names < <(ctl names | grep -vxF -f <(printf '%s\n' "${INFRA[@]}")); fi
    for name in "${names[@]}"; do
        case " ${INFRA[*]} " in *" $name "*) ;; *) services+=("$name") ;; esac
    done
    say "restarting ${names[*]}"
    for name in "${names[@]}"; do sv stop "$(sv_name "$name")" >/dev/null 2>&1 || true; done
    ctl start "${INFRA[@]}"
    ctl wait --since "$START" --timeout "$TIMEOUT" "${INFRA[@]}" || exit 1
    if [ "${#services[@]}" -gt 0 ]; then
        ctl start --all "${services[@]}"
        ctl wait --since "$START" --timeout "$TIMEOUT" "${services[@]}" || exit 1
    fi
    say "restarted and healthy in $(( $(date +%s) - START ))s"
}

cmd_clean() {
    cmd_down
    if [ -d "$STATE" ]; then
        [ -e "$STATE/.pixpress-state" ] || [ "$STATE" = "$REPO/.run" ] ||
            die "$STATE does not look like a pixpress state directory; not deleting it"
        rm -rf -- "$STATE"
        say "removed $STATE"
    fi
}

# supervisord's entry point for minio and the Python services: the PIXPRESS_* environment from service.env,
# then the program's own KEY=VALUE settings, then exec (so supervisord signals the program itself).
run_program() {
    local minio=0
    if [ "${1:-}" = --minio ]; then minio=1; shift; fi
    if [ -r "$SERVICE_ENV" ]; then
        # shellcheck disable=SC1090
        . "$SERVICE_ENV"
    fi
    while [ $# -gt 0 ]; do
        case $1 in
        --) shift; break ;;
        *=*) export "${1?}"; shift ;;
        *) break ;;
        esac
    done
    if [ "$minio" = 1 ]; then
        export MINIO_ROOT_USER="${PIXPRESS_S3_ACCESS_KEY:-pixpress}" MINIO_ROOT_PASSWORD="${PIXPRESS_S3_SECRET_KEY:-pixpress-secret}"
    fi
    export PYTHONUNBUFFERED=1
    exec "$@"
}

CMD=${1:-}
[ $# -gt 0 ] && shift
case $CMD in
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
ps) cmd_ps "$@" ;;
status) cmd_status "$@" ;;
logs) cmd_logs "$@" ;;
restart) cmd_restart "$@" ;;
clean) cmd_clean "$@" ;;
_run) run_program "$@" ;;
*)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
    ;;
esac
