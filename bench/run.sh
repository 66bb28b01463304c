#!/usr/bin/env bash
# Measures respguard beside a direct TLS connection, in one run, on this machine:
# redis-benchmark against redis-server over TLS, then through respguard (plaintext in on
# loopback, verified TLS out), for the same commands, clients and pipelining. Prints requests
# per second for both and the ratio (respguard / direct). Not a test: it asserts nothing.
#
#   bench/run.sh [requests] [clients]      defaults: 200000 50
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
c=${2:-50}
bin=${RESPGUARD_BIN:-build/respguard}
[ -x "$bin" ] || { meson setup build >/dev/null 2>&1 || true; meson compile -C build >/dev/null; }
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port)
rg_port=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=bench CA" \
    -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$work/s.key" -out "$work/s.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/s.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
    -extfile "$work/san.ext" -out "$work/s.crt" 2>/dev/null
pw=$(openssl rand -hex 16)

redis-server --port 0 --bind 127.0.0.1 --tls-port "$up_port" --tls-cert-file "$work/s.crt" \
    --tls-key-file "$work/s.key" --tls-ca-cert-file "$work/ca.crt" --tls-auth-clients no \
    --requirepass "$pw" --save '' --appendonly no --dir "$work" --daemonize yes \
    --pidfile "$work/redis.pid" --logfile "$work/redis.log"

cat >"$work/rg.yaml" <<YAML
listeners:
  - bind: 127.0.0.1:$rg_port
upstream:
  url: rediss://default:\${BENCH_PW}@localhost:$up_port
  ca_file: $work/ca.crt
users:
  bench:
    acl: "on >\${BENCH_PW} ~* &* +@all"
log:
  level: warn
YAML
BENCH_PW=$pw "$bin" -c "$work/rg.yaml" 2>"$work/rg.log" &
echo $! >"$work/rg.pid"
for _ in $(seq 50); do redis-cli -p "$rg_port" --user bench --pass "$pw" --no-auth-warning ping >/dev/null 2>&1 && break; sleep 0.1; done

direct=(redis-benchmark -h 127.0.0.1 -p "$up_port" --tls --cacert "$work/ca.crt" --sni localhost -a "$pw")
proxied=(redis-benchmark -h 127.0.0.1 -p "$rg_port" --user bench -a "$pw")

rps() { "$@" -n "$n" -c "$c" -q 2>/dev/null | tr '\r' '\n' | awk '/requests per second/ {print $2}' | tail -1; }

echo "redis-benchmark, $n requests, $c clients, loopback, $(nproc) cores; redis-server $(redis-server --version | awk '{print $3}')"
printf '%-22s %14s %14s %8s\n' test "direct TLS" "respguard" ratio
for spec in "PING_MBULK:-t ping" "SET:-t set" "GET:-t get" "SET 16 KiB:-t set -d 16384" \
            "SET pipeline 16:-t set -P 16" "GET pipeline 16:-t get -P 16" "LPUSH:-t lpush"; do
    name=${spec%%:*}
    args=${spec#*:}
    # shellcheck disable=SC2086
    d=$(rps "${direct[@]}" $args)
    # shellcheck disable=SC2086
    p=$(rps "${proxied[@]}" $args)
    printf '%-22s %14s %14s %8s\n' "$name" "$d" "$p" "$(awk -v a="$p" -v b="$d" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
done
