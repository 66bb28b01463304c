#!/usr/bin/env bash
# Idle clients: 10,000 clients log in to respguard (AUTH user pass, +OK) and then stay connected
# and silent. Reports respguard's resident memory (VmRSS) before and with them, and how many
# upstream connections redis-server sees from respguard (CLIENT LIST entries whose address is one
# of respguard's sockets, and INFO clients less the measuring connection), beside the configured
# pool size. First, for reference, the same clients straight to redis-server over TLS (its
# connection count and RSS growth); then respguard in multiplex mode (clients share the pool: the
# upstream should see about min_idle connections); then session mode with a pool as large as
# the client count (every logged-in client holds its own upstream TLS connection, so respguard
# needs two descriptors per client: with an open files limit below that the client count is cut
# to fit, and the output says so). Not a test: it asserts nothing.
#
#   bench/idle.sh [clients] [session: yes|no]      defaults: 10000 yes
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
clients=${1:-10000}
with_session=${2:-yes}
batch=250

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" # the hard limit, without CAP_SYS_RESOURCE
fds=$(ulimit -n)
[ "$fds" -gt $((clients + 200)) ] || echo "note: open files limit is $fds; $clients clients may not fit"

make_certs
start_redis $((clients * 2 + 1000))

# One process, plain sockets: connect and send AUTH for a batch, then read each +OK; keep them
# all open until SIGTERM. With --tls, straight to redis-server over TLS instead (AUTH pass).
cat >"$work/idle_clients.py" <<'PY'
import collections, signal, socket, ssl, sys, time
port, n, batch, user, pw = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
use_tls = len(sys.argv) > 6 and sys.argv[6] == "--tls"
ctx = None
if use_tls:
    ctx = ssl.create_default_context(cafile=sys.argv[7])
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
keep, errors = [], collections.Counter()
auth = (f"AUTH {pw}\r\n" if not user else f"AUTH {user} {pw}\r\n").encode()
t0 = time.time()
for start in range(0, n, batch):
    pending = []
    for _ in range(start, min(n, start + batch)):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx:
                s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(auth)
            pending.append(s)
        except OSError as e:
            errors["connect: " + str(e)] += 1
    for s in pending:
        buf = b""
        try:
            while not buf.endswith(b"\r\n"):
                d = s.recv(256)
                if not d:
                    break
                buf += d
        except OSError as e:
            buf = ("error: " + str(e)).encode()
        if buf == b"+OK\r\n":
            keep.append(s)
        else:
            errors[(buf[:120] or b"closed by the server").decode(errors="replace").strip()] += 1
            s.close()
print(f"ready: {len(keep)} logged in, {sum(errors.values())} failed, in {time.time() - t0:.1f} s", flush=True)
for e, k in errors.most_common(5):
    print(f"  {k} x {e}", flush=True)
while True:
    signal.pause()
PY

# start_clients PORT USER [--tls CA]: runs the clients in the background until they are all
# logged in (or failed); prints their summary.
start_clients() {
    /usr/bin/python3 "$work/idle_clients.py" "$1" "${clients}" "$batch" "$2" "$pw" "${@:3}" >"$work/clients.out" 2>&1 &
    echo $! >"$work/1-clients.pid"
    local i
    for i in $(seq 1800); do
        grep -q '^ready' "$work/clients.out" && break
        kill -0 "$(cat "$work/1-clients.pid")" 2>/dev/null || break
        sleep 0.1
    done
    [ "$i" = 1800 ] && echo "   clients: not all logged in after 180 s"
    sed 's/^/   clients: /' "$work/clients.out"
}
stop_clients() {
    local pid
    pid=$(cat "$work/1-clients.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$work/1-clients.pid"
}
rss_mb() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "-"; }
# upstream_from PID: redis-server's CLIENT LIST entries whose address is a socket of PID.
upstream_from() {
    ss -Htnp state established "( dport = :$up_port )" 2>/dev/null | grep "pid=$1," | awk '{ print $3 }' | sort >"$work/ours"
    up_cli client list 2>/dev/null | tr -d '\r' | grep -o 'addr=[^ ]*' | cut -d= -f2 | sort >"$work/theirs"
    comm -12 "$work/ours" "$work/theirs" | wc -l
}
upstream_clients() { up_cli info clients 2>/dev/null | tr -d '\r' | awk -F: '$1 == "connected_clients" { print $2 - 1 }'; }
# metric NAME METRIC: the value of an unlabelled metric.
metric() { metrics "$1" | awk -v m="$2" '$1 == m { print $2 }'; }

declare -A R_CONN R_UP R_KB
measure() { # name pool_size_shown
    local name=$1 pid=${RG_PID[$1]} before
    before=$(rss_mb "$pid")
    start_clients "${RG_PORT[$name]}" bench
    sleep 3 # idle: the pool settles, and respguard gives back the buffers of clients idle for a second
    local after up ups conns
    after=$(rss_mb "$pid")
    up=$(upstream_from "$pid")
    ups=$(upstream_clients)
    conns=$(metric "$name" respguard_client_connections)
    R_CONN[$name]=$conns
    R_UP[$name]=$up
    R_KB[$name]=$(awk -v a="$after" -v b="$before" -v n="${conns:-0}" 'BEGIN { if (n > 0) printf "%.1f", (a - b) * 1024 / n; else print "-" }')
    echo "   respguard client connections (metric): $conns"
    echo "   respguard VmRSS: $before MB before, $after MB with the clients (${R_KB[$name]} KB per client)"
    echo "   upstream connections from respguard: $up in CLIENT LIST (INFO clients: $ups); configured pool size: $2"
    echo "   $(pool_summary "$name")"
    stop_clients
    check_respguard "$name"
}

echo "idle clients: logged-in idle clients from one process (batches of $batch); $(nproc) cores;" \
    "redis-server $(redis-server --version | awk '{print $3}'); respguard log level info; open files limit $fds"
echo
echo "== direct: $clients clients straight to redis-server over TLS (AUTH password), for reference =="
rpid=$(cat "$work/9-redis.pid")
before=$(rss_mb "$rpid")
start_clients "$up_port" "" --tls "$work/ca.crt"
sleep 1
after=$(rss_mb "$rpid")
R_UP[direct]=$(upstream_clients)
R_CONN[direct]=${R_UP[direct]}
R_KB[direct]=$(awk -v a="$after" -v b="$before" -v n="${R_UP[direct]:-0}" 'BEGIN { if (n > 0) printf "%.1f", (a - b) * 1024 / n; else print "-" }')
echo "   redis-server VmRSS: $before MB before, $after MB with the clients (${R_KB[direct]} KB per client); INFO clients: ${R_UP[direct]}"
stop_clients
for _ in $(seq 50); do [ "$(upstream_clients)" -le 0 ] && break; sleep 0.1; done

echo
echo "== respguard, upstream.pool.mode multiplex (pool size default 64, min_idle 4), $clients clients =="
start_respguard multiplex "$up_port" multiplex "" $((clients + 1000))
measure multiplex "64 (default)"
stop_respguard multiplex

# Session mode holds one upstream connection per client: respguard needs two descriptors per
# client, so the client count is cut to what the open files limit allows (and said so).
s_clients=$clients
if [ "$with_session" = yes ]; then
    echo
    if [ $((clients * 2 + 300)) -gt "$fds" ]; then
        s_clients=$(((fds - 300) / 2))
        echo "note: session mode needs two descriptors per client in respguard; the open files limit is $fds" \
            "and cannot be raised here, so session mode runs $s_clients clients, not $clients"
    fi
    size=$((clients + 100)) # at least the full client count, as if all of them fitted
    echo "== respguard, upstream.pool.mode session, pool size $size, $s_clients clients =="
    start_respguard session "$up_port" session "$size" $((clients + 1000))
    clients=$s_clients measure session "$size"
    stop_respguard session
else
    echo
    echo "== session mode skipped (second argument: no) =="
fi

echo
echo "summary (memory: redis-server's RSS growth for direct, respguard's for the others):"
printf '%-34s %12s %12s %12s\n' "" "direct TLS" multiplex session
printf '%-34s %12s %12s %12s\n' "logged-in idle clients" "${R_CONN[direct]:--}" "${R_CONN[multiplex]:--}" "${R_CONN[session]:--}"
printf '%-34s %12s %12s %12s\n' "connections redis-server holds" "${R_UP[direct]:--}" "${R_UP[multiplex]:--}" "${R_UP[session]:--}"
printf '%-34s %12s %12s %12s\n' "KB per idle client" "${R_KB[direct]:--}" "${R_KB[multiplex]:--}" "${R_KB[session]:--}"
