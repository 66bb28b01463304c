#!/usr/bin/env bash
# Multiplexing: respguard with upstream.pool.mode multiplex (clients share the pool's upstream
# connections) beside a direct TLS connection to redis-server, in one run, on loopback:
# redis-benchmark -c 50 -t get,set without pipelining and with -P 16. Session mode (one pooled
# connection per client) runs too, as a reference. Prints requests per second, the ratio
# respguard / direct, how many commands respguard's multiplex pool packed into one upstream write
# (respguard_pool_commands_per_write from /metrics, per phase), and how many connections
# redis-server saw from respguard (INFO clients, sampled during the run, and after it). Not a
# test: it asserts nothing.
#
#   bench/multiplex.sh [requests] [clients] [pipelined_requests]   defaults: 100000 50 1000000
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
n=${1:-100000}
c=${2:-50}
n16=${3:-1000000} # -P 16 runs ten times as fast: more requests, so that a run is not over in 0.1 s

make_certs
start_redis 10000
start_respguard multiplex "$up_port" multiplex
start_respguard session "$up_port" session

upstream_clients() { up_cli info clients 2>/dev/null | tr -d '\r' | awk -F: '$1 == "connected_clients" { print $2 }'; }
# The most upstream connections respguard NAME had open while a run went on (its established
# sockets to redis-server's port, sampled every 0.2 s; both respguards run side by side, so
# INFO clients alone could not tell them apart).
sample_start() {
    local pid=${RG_PID[$1]}
    (while :; do ss -Htnp state established "( dport = :$up_port )" 2>/dev/null | grep -c "pid=$pid,"; sleep 0.2; done) \
        >"$work/samples" 2>/dev/null &
    echo $! >"$work/1-sampler.pid"
}
sample_stop() {
    kill "$(cat "$work/1-sampler.pid")" 2>/dev/null || true
    wait "$(cat "$work/1-sampler.pid")" 2>/dev/null || true
    rm -f "$work/1-sampler.pid"
    sort -n "$work/samples" | tail -1
}
# hist NAME: "sum count" of respguard_pool_commands_per_write now.
hist() { metrics "$1" | awk '/^respguard_pool_commands_per_write_sum/ { s = $2 } /^respguard_pool_commands_per_write_count/ { c = $2 } END { print s + 0, c + 0 }'; }
buckets() {
    metrics "$1" | awk '/^respguard_pool_commands_per_write_bucket/ { match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); v = $NF; if (v != prev) out = out " <=" le ":" v - prev; prev = v } END { print out }'
}

direct=(-h 127.0.0.1 -p "$up_port" --tls --cacert "$work/ca.crt" --sni localhost -a "$pw")
echo "multiplex: redis-benchmark -c $c -t get,set, $n requests (-P 16: $n16), loopback, $(nproc) cores;" \
    "redis-server $(redis-server --version | awk '{print $3}'); respguard log level info"
printf '%-18s %12s %12s %7s %12s %7s\n' test "direct TLS" multiplex ratio session ratio
declare -A up_max
declare -a hsum
for p in 1 16; do
    np=$n; [ "$p" = 1 ] || np=$n16
    bm "$work/d$p" "${direct[@]}" -c "$c" -n "$np" -t get,set -P "$p"
    before=$(hist multiplex)
    sample_start multiplex
    bm "$work/m$p" -h 127.0.0.1 -p "${RG_PORT[multiplex]}" --user bench -a "$pw" -c "$c" -n "$np" -t get,set -P "$p"
    up_max[m$p]=$(sample_stop)
    after=$(hist multiplex)
    hsum[p]=$(awk -v a="$after" -v b="$before" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%d %d", x[1] - y[1], x[2] - y[2] }')
    sample_start session
    bm "$work/s$p" -h 127.0.0.1 -p "${RG_PORT[session]}" --user bench -a "$pw" -c "$c" -n "$np" -t get,set -P "$p"
    up_max[s$p]=$(sample_stop)
    for t in SET GET; do
        d=$(res "$work/d$p" $t 2); m=$(res "$work/m$p" $t 2); s=$(res "$work/s$p" $t 2)
        name=$t; [ "$p" = 1 ] || name="$t -P $p"
        printf '%-18s %12s %12s %7s %12s %7s\n' "$name" "$d" "$m" "$(ratio "$m" "$d")" "$s" "$(ratio "$s" "$d")"
    done
done
show_err "$work/d1" "$work/m1" "$work/s1" "$work/d16" "$work/m16" "$work/s16"
echo
echo "respguard_pool_commands_per_write (multiplex), per phase (sum, count, mean commands per write):"
for p in 1 16; do
    read -r s cnt <<<"${hsum[$p]}"
    printf '  -P %-3s  _sum %-9s _count %-9s mean %s\n' "$p" "$s" "$cnt" "$(awk -v s="$s" -v c="$cnt" 'BEGIN { if (c > 0) printf "%.2f", s / c; else print "-" }')"
done
read -r s cnt <<<"$(hist multiplex)"
echo "  whole run: _sum $s _count $cnt; writes by size (commands):$(buckets multiplex)"
echo
echo "upstream connections each respguard held during the runs (its sockets to redis-server, sampled; at most):"
echo "  multiplex: ${up_max[m1]} during -P 1, ${up_max[m16]} during -P 16 (pool size: default 64 per worker and credential)"
echo "  session:   ${up_max[s1]} during -P 1, ${up_max[s16]} during -P 16"
stop_respguard session
echo "redis-server's INFO clients after the run, session respguard stopped: connected_clients $(upstream_clients)" \
    "(the measuring connection included); multiplex $(pool_summary multiplex)"
check_respguard multiplex
check_respguard session
