#!/usr/bin/env bash
# respguard in one command: installs what is missing, builds, makes a throwaway CA, starts a
# local redis-server with a TLS port as a stand-in for a hosted Redis, starts respguard in front
# of it with config/quickstart.yaml, and prints the REDIS_URL to use.
#
#   scripts/quickstart.sh              run in the foreground (Ctrl-C stops both)
#   scripts/quickstart.sh --background start both and return
#   scripts/quickstart.sh --stop       stop what --background started
#
# Ports: RESPGUARD_PORT (default 6380), UPSTREAM_TLS_PORT (default 6390) and ADMIN_PORT (metrics
# and health, default 9121), all on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/certs.sh
source scripts/certs.sh
root=$(pwd)
dir=${QUICKSTART_DIR:-$root/.quickstart}
export RESPGUARD_PORT=${RESPGUARD_PORT:-6380}
export UPSTREAM_TLS_PORT=${UPSTREAM_TLS_PORT:-6390}
export ADMIN_PORT=${ADMIN_PORT:-9121}
export QUICKSTART_DIR=$dir

stop() {
    for f in respguard.pid redis.pid; do
        [ -f "$dir/$f" ] && kill "$(cat "$dir/$f")" 2>/dev/null || true
        rm -f "$dir/$f"
    done
}
if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi

scripts/deps.sh --runtime-only
[ -f build/build.ninja ] || meson setup build >/dev/null
if ! out=$(meson compile -C build 2>&1); then echo "$out" >&2; exit 1; fi

mkdir -p "$dir" && chmod 700 "$dir"
stop
if [ ! -f "$dir/ca.crt" ]; then
    make_local_certs "$dir" "respguard quickstart CA" 30 upstream
    openssl rand -hex 32 >"$dir/upstream.password"
    openssl rand -hex 16 >"$dir/app.password"
    chmod 600 "$dir"/*.key "$dir"/*.password
fi
export UPSTREAM_PASSWORD=$(cat "$dir/upstream.password")
app_password=$(cat "$dir/app.password")
export APP_PASSWORD_HASH=$(printf '%s' "$app_password" | build/respguard passwd | cut -c2-)

# The stand-in upstream: TLS only (port 0 turns plaintext off), a password only respguard knows.
redis-server --port 0 --bind 127.0.0.1 --tls-port "$UPSTREAM_TLS_PORT" \
    --tls-cert-file "$dir/upstream.crt" --tls-key-file "$dir/upstream.key" \
    --tls-ca-cert-file "$dir/ca.crt" --tls-auth-clients no \
    --requirepass "$UPSTREAM_PASSWORD" --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
for _ in $(seq 50); do [ -s "$dir/redis.pid" ] && break; sleep 0.1; done

build/respguard check -c config/quickstart.yaml >/dev/null

url="redis://app:$app_password@127.0.0.1:$RESPGUARD_PORT"
banner() {
    cat <<MSG

respguard is listening on 127.0.0.1:$RESPGUARD_PORT, in front of a TLS-only redis-server on
127.0.0.1:$UPSTREAM_TLS_PORT (a stand-in for your hosted Redis; only respguard knows its password).

  REDIS_URL=$url

  redis-cli --no-auth-warning -u '$url' ping

Metrics (Prometheus) and health: curl http://127.0.0.1:$ADMIN_PORT/metrics  (also /healthz, /readyz)

Config: config/quickstart.yaml; secrets and the throwaway CA: $dir
MSG
}

if [ "${1:-}" = "--background" ]; then
    build/respguard -c config/quickstart.yaml </dev/null >>"$dir/respguard.log" 2>&1 &
    echo $! >"$dir/respguard.pid"
    # Until a PING goes through both (up to 30 s: a busy machine starts the TLS stand-in slowly).
    for _ in $(seq 300); do
        redis-cli -u "$url" --no-auth-warning ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    banner
    echo "Logs: $dir/respguard.log. Stop with: scripts/quickstart.sh --stop"
    exit 0
fi
banner
echo "Logs follow (JSON lines); Ctrl-C stops respguard and the stand-in upstream."
trap stop EXIT
build/respguard -c config/quickstart.yaml
