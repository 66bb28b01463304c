# Shared by bench/churn.sh, bench/multiplex.sh and bench/idle.sh (sourced, not run): a scratch
# directory removed on exit, certificates, redis-server with a TLS port, respguard instances with
# an admin endpoint, the delay relay (bench/relay.c), and redis-benchmark runs that cannot hang.
#
# Environment:
#   RESPGUARD_BIN   respguard binary (default build/respguard, built if missing, as run.sh)
#   BENCH_LOG_DIR   keep respguard's, the relay's and redis-server's logs here (default: they
#                   are removed with the scratch directory; a warning or error line from
#                   respguard is printed either way)
#   BENCH_TIMEOUT   seconds one redis-benchmark run may take before it is stopped (default 150)
#   BENCH_PIN       where processes run on a 2-core machine (default: wherever the scheduler puts
#                   them, which makes three busy processes on two cores vary by up to 2x between
#                   runs): "server" puts respguard beside redis-server on CPU 1 and the benchmark
#                   clients on CPU 0 (respguard as a gateway next to the database); "sidecar" puts
#                   respguard beside the clients on CPU 0 and redis-server on CPU 1. Direct runs
#                   put the clients on CPU 0 and redis-server on CPU 1 in both.
# shellcheck shell=bash
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${RESPGUARD_BIN:-build/respguard}
[ -x "$bin" ] || { meson setup build >/dev/null 2>&1 || true; meson compile -C build >/dev/null; }
bench_timeout=${BENCH_TIMEOUT:-150}
bench_pin=${BENCH_PIN:-}
case "$bench_pin" in "" | server | sidecar) ;; *) echo "BENCH_PIN must be server or sidecar" >&2; exit 2 ;; esac
# pin PID CPU: when BENCH_PIN is set.
pin() { [ -z "$bench_pin" ] || taskset -pc "$2" "$1" >/dev/null; }
# pin_respguard PID: beside redis-server (server) or beside the clients (sidecar).
pin_respguard() {
    if [ "$bench_pin" = server ]; then pin "$1" 1; elif [ "$bench_pin" = sidecar ]; then pin "$1" 0; fi
}
# The clients' CPU, as a command prefix.
client_cpu=()
[ -z "$bench_pin" ] || client_cpu=(taskset -c 0)
work=$(mktemp -d)
# shellcheck disable=SC2034 # used by the scripts that source this
declare -A RG_PORT RG_ADMIN RG_PID

# Processes are stopped in the order of their pid files' names: a benchmark run (0-*), clients
# (1-*), respguard (5-*), the relay (8-*), redis-server (9-*).
bench_cleanup() {
    local f pid
    for f in "$work"/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null) || continue
        if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${BENCH_LOG_DIR:-}" ]; then
        mkdir -p "$BENCH_LOG_DIR"
        cp "$work"/*.log "$BENCH_LOG_DIR"/ 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM HUP

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }

# shellcheck source=scripts/certs.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/certs.sh"
make_certs() {
    make_local_certs "$work" "bench CA" 1 s
    pw=$(openssl rand -hex 16)
    export BENCH_PW=$pw
}

# start_redis [maxclients]: redis-server with only a TLS port ($up_port), password $pw.
start_redis() {
    up_port=$(free_port)
    redis-server --port 0 --bind 127.0.0.1 --tls-port "$up_port" --tls-cert-file "$work/s.crt" \
        --tls-key-file "$work/s.key" --tls-ca-cert-file "$work/ca.crt" --tls-auth-clients no \
        --requirepass "$pw" --save '' --appendonly no --dir "$work" --daemonize yes \
        --maxclients "${1:-10000}" --pidfile "$work/9-redis.pid" --logfile "$work/redis.log"
    for _ in $(seq 50); do
        if up_cli ping >/dev/null 2>&1; then
            pin "$(cat "$work/9-redis.pid")" 1
            return 0
        fi
        sleep 0.1
    done
    echo "redis-server did not start:" >&2; cat "$work/redis.log" >&2; exit 1
}
# redis-cli straight to redis-server over TLS (or, with UP_CLI_PORT set, through that port).
up_cli() {
    redis-cli -h 127.0.0.1 -p "${UP_CLI_PORT:-$up_port}" --tls --cacert "$work/ca.crt" --sni localhost \
        -a "$pw" --no-auth-warning "$@"
}

# start_relay TARGET_PORT ONE_WAY_DELAY_MS [--connect-rtt]: sets relay_port.
start_relay() {
    [ -x "$work/relay" ] || cc -O2 -o "$work/relay" bench/relay.c
    relay_port=$(free_port)
    "$work/relay" --listen "127.0.0.1:$relay_port" --target "127.0.0.1:$1" --delay-ms "$2" "${@:3}" \
        >"$work/relay.out" 2>"$work/relay.log" &
    echo $! >"$work/8-relay.pid"
    for _ in $(seq 50); do grep -q listening "$work/relay.out" 2>/dev/null && return 0; sleep 0.05; done
    echo "relay did not start:" >&2; cat "$work/relay.log" >&2; exit 1
}

# start_respguard NAME UPSTREAM_PORT MODE [POOL_SIZE] [MAX_CLIENTS]
# A respguard on a free port (RG_PORT[NAME]) with its admin endpoint (RG_ADMIN[NAME]), user
# "bench" with password $pw, upstream.pool.mode MODE, log level info (stderr in NAME.log).
# RG_LOG_LEVEL overrides the level; RG_EXTRA_CONFIG is YAML appended to the config (more
# top-level sections, e.g. a rest listener).
start_respguard() {
    local name=$1 upstream=$2 mode=$3 size=${4:-} maxc=${5:-10000} port admin
    port=$(free_port)
    admin=$(free_port)
    # shellcheck disable=SC2016 # ${BENCH_PW} is for respguard to expand
    {
        printf 'listeners:\n  - bind: 127.0.0.1:%s\n' "$port"
        printf 'upstream:\n  url: rediss://default:${BENCH_PW}@localhost:%s\n' "$upstream"
        printf '  ca_file: %s\n  pool:\n    mode: %s\n' "$work/ca.crt" "$mode"
        [ -n "$size" ] && printf '    size: %s\n' "$size"
        printf 'users:\n  bench:\n    acl: "on >${BENCH_PW} ~* &* +@all"\n'
        printf 'limits:\n  max_clients: %s\n' "$maxc"
        printf 'log:\n  level: %s\n' "${RG_LOG_LEVEL:-info}"
        printf 'admin:\n  bind: 127.0.0.1:%s\n' "$admin"
        [ -z "${RG_EXTRA_CONFIG:-}" ] || printf '%s\n' "$RG_EXTRA_CONFIG"
    } >"$work/$name.yaml"
    "$bin" -c "$work/$name.yaml" 2>"$work/$name.log" &
    RG_PID[$name]=$!
    pin_respguard "$!"
    echo $! >"$work/5-$name.pid"
    # shellcheck disable=SC2034 # read by the scripts that source this
    RG_PORT[$name]=$port
    RG_ADMIN[$name]=$admin
    for _ in $(seq 100); do
        redis-cli -p "$port" --user bench --pass "$pw" --no-auth-warning ping 2>/dev/null | grep -q PONG && return 0
        kill -0 "${RG_PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "respguard ($name) did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}
stop_respguard() {
    local name=$1 pid=${RG_PID[$1]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && echo "!! respguard ($name) did not stop within 15 s of SIGTERM; killed"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$work/5-$name.pid"
    touch "$work/$name.stopped"
}
# Says so when respguard NAME has exited (unless stop_respguard stopped it), and counts its warn
# and error log events by kind (redis-benchmark's start-up CONFIG GET is refused by respguard's
# guard: "refused config|get"; many new connections make an anomaly "connection_surge").
check_respguard() {
    local name=$1
    if [ ! -e "$work/$name.stopped" ] && ! kill -0 "${RG_PID[$name]}" 2>/dev/null; then
        echo "!! respguard ($name) is not running; last log lines:"
        tail -20 "$work/$name.log" | cut -c1-300 | sed 's/^/!!   /'
    fi
    awk '/"level":"(warn|error)"/ {
            ev = "?"; cmd = ""
            if (match($0, /"event":"[^"]*"/)) ev = substr($0, RSTART + 9, RLENGTH - 10)
            if (match($0, /"command":"[^"]*"/)) cmd = " " substr($0, RSTART + 11, RLENGTH - 12)
            if (match($0, /"type":"[^"]*"/)) cmd = cmd " " substr($0, RSTART + 8, RLENGTH - 9)
            lv = ($0 ~ /"level":"error"/) ? "error " : ""
            n[lv ev cmd]++
        }
        END { s = ""; for (k in n) s = s (s ? ", " : "") k "=" n[k]; if (s) print "   respguard (" name ") log warn/error events: " s }' name="$name" "$work/$name.log"
}
metrics() { curl -s --max-time 10 "http://127.0.0.1:${RG_ADMIN[$1]}/metrics"; }
# pool_summary NAME: one line of pool metrics.
pool_summary() {
    metrics "$1" | awk '
        /^respguard_pool_connections\{/ { match($0, /state="[a-z_]+"/); s = substr($0, RSTART + 7, RLENGTH - 8); conns = conns " " s "=" $NF }
        /^respguard_upstream_handshakes_total\{/ { match($0, /type="[a-z]+"/); t = substr($0, RSTART + 6, RLENGTH - 7); hs = hs " " t "=" $NF }
        /^respguard_pool_resets_total/ { resets += $NF }
        /^respguard_pool_acquire_waits_total/ { waits += $NF }
        /^respguard_pool_acquire_timeouts_total/ { tmo += $NF }
        END { printf "pool connections:%s; upstream handshakes:%s; resets %d, acquire waits %d, acquire timeouts %d\n", conns, hs, resets, waits, tmo }'
}

# bm OUT_PREFIX redis-benchmark-args...: runs redis-benchmark --csv under a timeout; prints
# nothing; leaves "TEST RPS AVG_MS" lines in OUT_PREFIX.res and anything else it said (errors)
# in OUT_PREFIX.err, except its warning that it could not read the server's CONFIG (respguard's
# guard refuses CONFIG GET; that only affects redis-benchmark's banner).
bm() {
    local out=$1 rc=0
    shift
    # In the background and waited for, so that a signal to this script is handled at once (the
    # cleanup stops the run through its pid file).
    timeout -k 5 "$bench_timeout" "${client_cpu[@]}" redis-benchmark "$@" --csv >"$out.raw" 2>&1 &
    echo $! >"$work/0-bench.pid"
    wait $! || rc=$?
    rm -f "$work/0-bench.pid"
    tr '\r' '\n' <"$out.raw" | awk -F, '/^"/ && !/^"test"/ { gsub(/"/, ""); print $1, $2, $3 }' >"$out.res"
    tr '\r' '\n' <"$out.raw" | grep -v -E '^"|^$|Keepalive disabled|tcp_tw_reuse|Could not fetch server CONFIG' | sort | uniq -c | sort -rn | head -5 >"$out.err" || true
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "     TIMEOUT after ${bench_timeout}s" >>"$out.err"
    [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 137 ] && echo "     exit status $rc" >>"$out.err"
    return 0
}
# res OUT_PREFIX TEST FIELD(2=rps,3=avg ms)
res() { awk -v t="$2" -v f="$3" '$1 == t { print $f }' "$1.res" | tail -1; }
# Prints what a run said besides its results (errors), indented, if anything.
show_err() {
    local f
    for f in "$@"; do
        [ -s "$f.err" ] && { echo "   redis-benchmark output besides results ($(basename "$f")):"; sed 's/^/     /' "$f.err" | cut -c1-300; }
    done
    return 0
}
