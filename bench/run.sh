#!/usr/bin/env bash
# Measures respguard beside a direct TLS connection, in one run, on this machine:
# redis-benchmark against redis-server over TLS, then through respguard (plaintext in on
# loopback, verified TLS out; the default pool mode, session), for the same commands, clients
# and pipelining. Prints requests per second for both and the ratio (respguard / direct). Not a
# test: it asserts nothing.
#
#   bench/run.sh [requests] [clients]      defaults: 200000 50
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
n=${1:-200000}
c=${2:-50}
rg_port=$(free_port)

make_certs
start_redis

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
"$bin" -c "$work/rg.yaml" 2>"$work/rg.log" &
echo $! >"$work/5-rg.pid"
pin_respguard "$!"
for _ in $(seq 50); do redis-cli -p "$rg_port" --user bench --pass "$pw" --no-auth-warning ping >/dev/null 2>&1 && break; sleep 0.1; done

direct=(redis-benchmark -h 127.0.0.1 -p "$up_port" --tls --cacert "$work/ca.crt" --sni localhost -a "$pw")
proxied=(redis-benchmark -h 127.0.0.1 -p "$rg_port" --user bench -a "$pw")

rps() { "${client_cpu[@]}" "$@" -n "$n" -c "$c" -q 2>/dev/null | tr '\r' '\n' | awk '/requests per second/ {print $2}' | tail -1; }

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
    printf '%-22s %14s %14s %8s\n' "$name" "$d" "$p" "$(ratio "$p" "$d")"
done
