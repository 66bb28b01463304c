#!/usr/bin/env bash
# Connection churn: a new connection, a login and one GET per request (redis-benchmark -c 10
# -k 0 -t get, AUTH on every connection), straight to redis-server over TLS beside respguard
# (plaintext in on loopback, pooled TLS out) in session mode and in multiplex mode, in one run.
# Then the same with redis-server one WAN hop away: bench/relay.c between respguard and the
# server, and between the direct client and the server (the same hop for both), 5 ms round
# trip, the TCP handshake's round trip charged too; plus the same churn from one client that
# sets TCP_NODELAY (a small python loop; redis-benchmark does not set it), and one client's mean
# GET latency over a kept connection through that hop. Prints requests per second (and mean latency) for both and
# the ratio respguard / direct (latency: direct / respguard, so above 1 means respguard is
# faster). Not a test: it asserts nothing.
#
#   bench/churn.sh [requests] [wan_requests] [latency_requests]    defaults: 20000 5000 1000
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
n=${1:-20000}
wn=${2:-5000}
ln=${3:-1000}
delay=2.5

make_certs
start_redis 10000
start_respguard session "$up_port" session
start_respguard multiplex "$up_port" multiplex

direct() { bm "$work/$1" -h 127.0.0.1 -p "$2" --tls --cacert "$work/ca.crt" --sni localhost -a "$pw" "${@:3}"; }
proxied() { bm "$work/$1" -h 127.0.0.1 -p "$2" --user bench -a "$pw" "${@:3}"; }
row() { # name direct session multiplex
    printf '%-34s %12s %12s %7s %12s %7s\n' "$1" "$2" "$3" "$(ratio "$3" "$2")" "$4" "$(ratio "$4" "$2")"
}
header() { printf '%-34s %12s %12s %7s %12s %7s\n' "$1" "direct TLS" session ratio multiplex ratio; }

echo "connection churn: redis-benchmark -c 10 -k 0 -t get, AUTH per connection; $(nproc) cores;" \
    "redis-server $(redis-server --version | awk '{print $3}'); respguard log level info"
echo "(ratio columns: respguard / direct for requests/s, direct / respguard for times)"
echo
echo "== loopback ($n requests) =="
direct l-direct "$up_port" -c 10 -k 0 -t get -n "$n"
proxied l-session "${RG_PORT[session]}" -c 10 -k 0 -t get -n "$n"
proxied l-multiplex "${RG_PORT[multiplex]}" -c 10 -k 0 -t get -n "$n"
header "requests/s"
row "GET, new connection each" "$(res "$work/l-direct" GET 2)" "$(res "$work/l-session" GET 2)" "$(res "$work/l-multiplex" GET 2)"
show_err "$work/l-direct" "$work/l-session" "$work/l-multiplex"
for m in session multiplex; do
    echo "   $m: $(pool_summary $m)"
    check_respguard $m
done
stop_respguard session
stop_respguard multiplex

echo
echo "== upstream one WAN hop away: relay, ${delay} ms each way (5 ms round trip), TCP handshake round trip charged =="
start_relay "$up_port" "$delay" --connect-rtt
start_respguard wan-session "$relay_port" session
start_respguard wan-multiplex "$relay_port" multiplex
direct w-direct "$relay_port" -c 10 -k 0 -t get -n "$wn"
proxied w-session "${RG_PORT[wan-session]}" -c 10 -k 0 -t get -n "$wn"
proxied w-multiplex "${RG_PORT[wan-multiplex]}" -c 10 -k 0 -t get -n "$wn"
echo "churn, $wn requests:"
header "requests/s"
row "GET, new connection each" "$(res "$work/w-direct" GET 2)" "$(res "$work/w-session" GET 2)" "$(res "$work/w-multiplex" GET 2)"
# redis-benchmark's own latency for -k 0 runs to the first reply byte (respguard answers AUTH
# itself), so the time a request takes is derived instead: clients / (requests/s).
per_req() { awk -v r="$1" 'BEGIN { if (r + 0 > 0) printf "%.2f", 10 * 1000 / r; else print "-" }'; }
header "ms per request (10 / rps; d/rg)"
d=$(per_req "$(res "$work/w-direct" GET 2)"); s=$(per_req "$(res "$work/w-session" GET 2)"); m=$(per_req "$(res "$work/w-multiplex" GET 2)")
printf '%-34s %12s %12s %7s %12s %7s\n' "connect, AUTH, GET, close" "$d" "$s" "$(ratio "$d" "$s")" "$m" "$(ratio "$d" "$m")"
show_err "$work/w-direct" "$work/w-session" "$work/w-multiplex"

# The same churn from one client that sets TCP_NODELAY: redis-benchmark does not set it on its
# benchmark connections, so over TLS (where the handshake's last flight and the first command
# leave in two writes) its direct requests also wait a round trip for Nagle.
cat >"$work/churn1.py" <<'PY'
import socket, ssl, statistics, sys, time
port, n, user, pw, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca) if ca != "-" else None
req = ((f"AUTH {user} {pw}" if user != "-" else f"AUTH {pw}") + "\r\nGET k\r\n").encode()
times = []
for _ in range(n):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(req)
    buf = b""
    while buf.count(b"\r\n") < 2:
        d = s.recv(4096)
        if not d:
            raise SystemExit(f"connection closed after {buf!r}")
        buf += d
    if not buf.startswith(b"+OK\r\n"):
        raise SystemExit(f"unexpected reply {buf[:100]!r}")
    times.append(time.perf_counter() - t0)
    s.close()
print(f"{1000 * statistics.mean(times):.2f} {1000 * statistics.median(times):.2f}")
PY
pn=$((ln / 5))
py1() { timeout -k 5 "$bench_timeout" /usr/bin/python3 "$work/churn1.py" "$@" 2>&1 | tail -1; }
pd=$(py1 "$relay_port" "$pn" - "$pw" "$work/ca.crt")
ps=$(py1 "${RG_PORT[wan-session]}" "$pn" bench "$pw" -)
pm=$(py1 "${RG_PORT[wan-multiplex]}" "$pn" bench "$pw" -)
echo "one client with TCP_NODELAY (python), new connection per request, $pn requests:"
header "mean ms per request (d/rg)"
printf '%-34s %12s %12s %7s %12s %7s\n' "connect, AUTH, GET, close" "${pd%% *}" "${ps%% *}" "$(ratio "${pd%% *}" "${ps%% *}")" "${pm%% *}" "$(ratio "${pd%% *}" "${pm%% *}")"
printf '%-34s %12s %12s %7s %12s %7s\n' "  median" "${pd##* }" "${ps##* }" "$(ratio "${pd##* }" "${ps##* }")" "${pm##* }" "$(ratio "${pd##* }" "${pm##* }")"

direct k-direct "$relay_port" -c 1 -P 1 -t get -n "$ln"
proxied k-session "${RG_PORT[wan-session]}" -c 1 -P 1 -t get -n "$ln"
proxied k-multiplex "${RG_PORT[wan-multiplex]}" -c 1 -P 1 -t get -n "$ln"
echo "one client, kept connection (-c 1 -P 1), $ln requests:"
header "mean latency, ms (d/rg)"
d=$(res "$work/k-direct" GET 3); s=$(res "$work/k-session" GET 3); m=$(res "$work/k-multiplex" GET 3)
printf '%-34s %12s %12s %7s %12s %7s\n' "GET latency" "$d" "$s" "$(ratio "$d" "$s")" "$m" "$(ratio "$d" "$m")"
header "requests/s"
row "GET, one client" "$(res "$work/k-direct" GET 2)" "$(res "$work/k-session" GET 2)" "$(res "$work/k-multiplex" GET 2)"
show_err "$work/k-direct" "$work/k-session" "$work/k-multiplex"
for m in wan-session wan-multiplex; do
    echo "   $m: $(pool_summary $m)"
    check_respguard $m
done
