#!/usr/bin/env bash
# The REST listener beside RESP, in one run, on loopback: GET of one key from 50 connections
# without pipelining, as RESP (redis-benchmark with the user's credentials) through respguard in
# upstream.pool.mode session (the default) and multiplex, and as REST on kept-alive HTTP/1.1
# connections (autocannon, the user's password as the token) through the session one: the path
# form GET /get/<key>, and POST /pipeline with a body of one GET and the headers the
# @upstash/redis SDK sends (what it sends for redis.get() by default). Several rounds, the four
# runs one after the other in each; prints requests per second per round, the medians, the
# ratios REST / RESP, and the CPU time respguard, redis-server and the client spent per request.
# Not a test: it asserts nothing.
#
#   bench/rest.sh [rounds] [resp_requests] [rest_seconds]     defaults: 3, about 5 s worth, 5
#
# Environment (besides bench/lib.sh's BENCH_LOG_DIR and BENCH_TIMEOUT):
#   RESPGUARD_BIN     default: build-rel/respguard, a release build made here first (meson setup
#                     when build-rel is missing, ninja -C build-rel otherwise)
#   BENCH_PIN         server (the default here): respguard and redis-server on CPU 1, the
#                     benchmark client alone on CPU 0; sidecar (respguard beside the client on
#                     CPU 0); none: wherever the scheduler puts them
#   BENCH_CONNS       client connections (default 50)
#   AUTOCANNON_DIR    where autocannon is installed with npm (default
#                     ${XDG_CACHE_HOME:-~/.cache}/respguard-bench/autocannon-<version>, outside the
#                     work tree; installed there on first use, the version pinned below)
#   BENCH_PERF        a directory: perf record -g of the serving respguard during round 1's runs
#                     (rs1.data, get1.data, rm1.data, pipe1.data there)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
resp_requests=${2:-} # default: as many as take about rest_seconds
secs=${3:-5}
conns=${BENCH_CONNS:-50}
autocannon_version=9.0.0

if [ -z "${RESPGUARD_BIN:-}" ]; then
    if [ ! -e build-rel/build.ninja ]; then
        out=$(meson setup build-rel --buildtype=release -Dtests=false 2>&1) || { echo "$out" >&2; exit 1; }
    fi
    out=$(ninja -C build-rel 2>&1) || { echo "$out" >&2; exit 1; }
    export RESPGUARD_BIN=build-rel/respguard
fi
BENCH_PIN=${BENCH_PIN-server}
[ "$BENCH_PIN" != none ] || BENCH_PIN=
export BENCH_PIN

ac_dir=${AUTOCANNON_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/respguard-bench/autocannon-$autocannon_version}
ac=$ac_dir/node_modules/.bin/autocannon
if [ ! -x "$ac" ]; then
    mkdir -p "$ac_dir"
    out=$(npm install --prefix "$ac_dir" --no-audit --no-fund --no-save "autocannon@$autocannon_version" 2>&1) ||
        { echo "npm install autocannon@$autocannon_version failed:" >&2; echo "$out" >&2; exit 1; }
fi

# shellcheck source=bench/lib.sh
source bench/lib.sh

make_certs
start_redis 10000
redis_pid=$(cat "$work/9-redis.pid")
rest_port=$(free_port)
# Two respguards with user bench (password $pw, also the REST token): "session" with the REST
# listener (plaintext, loopback), "multiplex" without.
RG_LOG_LEVEL=warn RG_EXTRA_CONFIG=$(printf 'rest:\n  - bind: 127.0.0.1:%s' "$rest_port") \
    start_respguard session "$up_port" session
RG_LOG_LEVEL=warn start_respguard multiplex "$up_port" multiplex

key=bench:rest
value=$(printf 'v%.0s' $(seq 32)) # 32 bytes
redis-cli -p "${RG_PORT[session]}" --user bench --pass "$pw" --no-auth-warning set "$key" "$value" >/dev/null
got=$(curl -s --max-time 5 -H "Authorization: Bearer $pw" "http://127.0.0.1:$rest_port/get/$key")
[ "$got" = "{\"result\":\"$value\"}" ] || { echo "REST GET answered: $got" >&2; exit 1; }
# What @upstash/redis 1.39.0 sends on node for redis.get(key) (auto-pipelining, its default): POST
# /pipeline, these headers (with its Content-Length; the token in "authorization"), this body.
sdk_headers=("Content-Type: application/json" "authorization: Bearer $pw" "Upstash-Encoding: base64"
    "Upstash-Telemetry-Runtime: node@$(node --version)" "Upstash-Telemetry-Platform: unknown"
    "Upstash-Telemetry-Sdk: @upstash/redis@v1.39.0" "upstash-sync-token: " "accept: */*" "accept-language: *"
    "sec-fetch-mode: cors" "user-agent: node" "pragma: no-cache" "cache-control: no-cache"
    "accept-encoding: gzip, deflate")
printf '[["get","%s"]]' "$key" >"$work/pipeline.json"
curl_h=(); ac_h=()
for h in "${sdk_headers[@]}"; do curl_h+=(-H "$h"); ac_h+=(-H "${h%%: *}=${h#*: }"); done
curl_h=("${curl_h[@]/upstash-sync-token: /upstash-sync-token;}") # curl sends an empty header as "name;"
got=$(curl -s --max-time 5 "${curl_h[@]}" --data-binary "@$work/pipeline.json" "http://127.0.0.1:$rest_port/pipeline")
[ "$got" = "[{\"result\":\"$(printf %s "$value" | base64 -w0)\"}]" ] || { echo "REST /pipeline answered: $got" >&2; exit 1; }

# CPU time (user + system) of a process so far, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# The machine's user, nice and system time so far, all CPUs, in clock ticks.
busy() { awk '$1 == "cpu" { print $2 + $3 + $4; exit }' /proc/stat; }
hz=$(getconf CLK_TCK)
perf_start() { # NAME PID
    [ -n "${BENCH_PERF:-}" ] && [ "$round" = 1 ] || return 0
    mkdir -p "$BENCH_PERF"
    perf record -q -g -p "$2" -o "$BENCH_PERF/$1.data" >/dev/null 2>&1 &
    echo $! >"$work/1-perf.pid"
    sleep 0.2
}
perf_stop() {
    [ -e "$work/1-perf.pid" ] || return 0
    local p
    p=$(cat "$work/1-perf.pid")
    kill -INT "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    rm -f "$work/1-perf.pid"
}

# measure NAME RESPGUARD command...: runs the client (on the clients' CPU, under /usr/bin/time
# and a timeout) and keeps its output in NAME.out, its CPU time in NAME.time, and the CPU ticks
# of respguard RESPGUARD, redis-server and the whole machine during the run in NAME.cpu.
measure() {
    local name=$1 pid=${RG_PID[$2]} rc=0 rg0 rd0 b0
    shift 2
    perf_start "$name" "$pid"
    rg0=$(ticks "$pid")
    rd0=$(ticks "$redis_pid")
    b0=$(busy)
    timeout -k 5 "$bench_timeout" "${client_cpu[@]}" /usr/bin/time -f '%e %U %S' -o "$work/$name.time" "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    echo $! >"$work/0-bench.pid"
    wait $! || rc=$?
    rm -f "$work/0-bench.pid"
    echo "$(($(ticks "$pid") - rg0)) $(($(ticks "$redis_pid") - rd0)) $(($(busy) - b0))" >"$work/$name.cpu"
    perf_stop
    [ "$rc" = 0 ] || echo "   !! $name: exit status $rc; $(tail -3 "$work/$name.err" | tr '\n' ' ' | cut -c1-300)"
}
# resp_run NAME RESPGUARD REQUESTS
resp_run() {
    measure "$1" "$2" redis-benchmark -h 127.0.0.1 -p "${RG_PORT[$2]}" --user bench -a "$pw" -c "$conns" -n "$3" \
        --csv GET "$key"
}
# rest_run NAME SECONDS get|pipeline
rest_run() {
    if [ "$3" = get ]; then
        measure "$1" session "$ac" -c "$conns" -d "$2" -j -H "Authorization=Bearer $pw" "http://127.0.0.1:$rest_port/get/$key"
    else
        measure "$1" session "$ac" -c "$conns" -d "$2" -j "${ac_h[@]}" -m POST -i "$work/pipeline.json" \
            "http://127.0.0.1:$rest_port/pipeline"
    fi
}
# result NAME: "requests requests/s failed" of a run (failed: not 2xx, errors, timeouts; or a
# redis-benchmark run without a result).
result() {
    if [ -s "$work/$1.out" ] && head -c1 "$work/$1.out" | grep -q '{'; then
        node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
                 const ok = r["2xx"], bad = r.non2xx + r.errors + r.timeouts;
                 console.log(ok, (ok / r.duration).toFixed(0), bad);' "$work/$1.out"
    else
        awk -F, -v n="${N[$1]:-0}" 'NR > 1 && $2 != "" { gsub(/"/, ""); r = sprintf("%d %.0f 0", n, $2) } END { print r ? r : "0 - 1" }' "$work/$1.out"
    fi
}
# cpu NAME REQUESTS: "respguard redis-server client" microseconds of CPU per request, and the
# share of the machine's CPU time (both cores, over the run) that went to other processes.
cpu() {
    local rg rd b e u s
    read -r rg rd b <"$work/$1.cpu"
    read -r e u s <"$work/$1.time"
    awk -v rg="$rg" -v rd="$rd" -v b="$b" -v e="$e" -v u="$u" -v s="$s" -v hz="$hz" -v n="$2" -v ncpu="$(nproc)" \
        'BEGIN { other = (b / hz - rg / hz - rd / hz - u - s) / (e * ncpu) * 100; if (other < 0) other = 0
                 if (n > 0) printf "%.1f %.1f %.1f %.0f", rg / hz * 1e6 / n, rd / hz * 1e6 / n, (u + s) * 1e6 / n, other
                 else print "- - - -" }'
}
# median VALUES... (whole numbers); median_f: of the lines on stdin, one decimal.
# (A run without a result, "-", is left out.)
median() { printf '%s\n' "$@" | median_of "%.0f"; }
median_f() { median_of "%.1f"; }
median_of() {
    grep -E '^[0-9.]+$' | sort -n |
        awk -v f="$1" '{ v[NR] = $1 } END { if (!NR) print "-"; else printf f "\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "rest: GET of one key (32-byte value), $conns connections, no pipelining, loopback, $(nproc) cores;" \
    "redis-server $(redis-server --version | awk '{print $3}'); $("$bin" --version 2>/dev/null | head -1 || echo respguard)" \
    "($bin); pin: ${BENCH_PIN:-none}; $rounds rounds"
echo "RESP: redis-benchmark -c $conns GET $key (--user bench), about $secs s a run, through respguard with" \
    "upstream.pool.mode session (the default) and multiplex"
echo "REST: autocannon $autocannon_version -c $conns -d $secs (keep-alive) through the session respguard:" \
    "GET /get/$key (Bearer token), and POST /pipeline [[\"get\",\"$key\"]] with @upstash/redis's headers"
# Warm-up (the pools' upstream connections, node's JIT), and how many requests make a RESP run
# last about as long as a REST one.
round=0
declare -A N
for m in session multiplex; do
    N[warm-$m]=20000
    resp_run "warm-$m" "$m" 20000
    read -r _ r _ <<<"$(result "warm-$m")"
    N[$m]=${resp_requests:-$(awk -v r="$r" -v s="$secs" 'BEGIN { n = int(r * s / 1000) * 1000; print n < 20000 ? 20000 : n }')}
done
rest_run warm-get 1 get
rest_run warm-pipe 1 pipeline
echo "RESP requests a run: session ${N[session]}, multiplex ${N[multiplex]}"
echo

kinds=(rs rm get pipe)
declare -A LABEL=([rs]="RESP GET, session" [rm]="RESP GET, multiplex" [get]="REST GET /get/key" [pipe]="REST POST /pipeline")
row() { printf '%-6s %10s %10s %10s %6s %6s %10s %6s %6s %7s\n' "$@"; }
echo "requests/s (ratio s: REST / RESP session, m: REST / RESP multiplex)"
row round "RESP sess" "RESP mux" "REST GET" "s" "m" "REST pipe" "s" "m" "other %"
declare -A RPS CPU
for round in $(seq "$rounds"); do
    N[rs$round]=${N[session]}
    N[rm$round]=${N[multiplex]}
    resp_run "rs$round" session "${N[session]}"
    rest_run "get$round" "$secs" get
    resp_run "rm$round" multiplex "${N[multiplex]}"
    rest_run "pipe$round" "$secs" pipeline
    failed=""
    for k in "${kinds[@]}"; do
        read -r cnt r bad <<<"$(result "$k$round")"
        RPS[$k$round]=$r
        CPU[$k$round]=$(cpu "$k$round" "$cnt")
        [ "$bad" = 0 ] || failed="$failed ${LABEL[$k]}: $bad;"
    done
    other=$(for k in "${kinds[@]}"; do echo "${CPU[$k$round]##* }"; done | sort -n | tail -1)
    s=${RPS[rs$round]} m=${RPS[rm$round]} g=${RPS[get$round]} p=${RPS[pipe$round]}
    row "$round" "$s" "$m" "$g" "$(ratio "$g" "$s")" "$(ratio "$g" "$m")" "$p" "$(ratio "$p" "$s")" "$(ratio "$p" "$m")" "$other"
    [ -z "$failed" ] || echo "   !! round $round, failed requests (not 2xx, errors, timeouts):$failed"
done
declare -A MED
for k in "${kinds[@]}"; do
    MED[$k]=$(median "$(for round in $(seq "$rounds"); do echo "${RPS[$k$round]}"; done)")
done
s=${MED[rs]} m=${MED[rm]} g=${MED[get]} p=${MED[pipe]}
row median "$s" "$m" "$g" "$(ratio "$g" "$s")" "$(ratio "$g" "$m")" "$p" "$(ratio "$p" "$s")" "$(ratio "$p" "$m")" ""
echo "(other %: the most CPU time other processes took during one of the round's runs, as a share of"
echo " both cores; more than a few percent: the round was disturbed)"
echo
echo "CPU time per request, microseconds (user + system; median over the rounds):"
printf '%-20s %10s %13s %8s\n' "" respguard redis-server client
for k in "${kinds[@]}"; do
    cols=()
    for f in 1 2 3; do
        cols+=("$(for round in $(seq "$rounds"); do echo "${CPU[$k$round]}" | awk -v f="$f" '{ print $f }'; done | median_f)")
    done
    printf '%-20s %10s %13s %8s\n' "${LABEL[$k]}" "${cols[@]}"
done
echo
curl -s --max-time 10 "http://127.0.0.1:${RG_ADMIN[session]}/metrics" | awk '
    /^respguard_rest_requests_total\{/ && $NF != 0 { match($0, /status="[^"]*"/); s = s " " substr($0, RSTART + 8, RLENGTH - 9) "=" $NF }
    END { print "respguard_rest_requests_total (not 0) by status:" s }'
check_respguard session
check_respguard multiplex
