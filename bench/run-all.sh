#!/usr/bin/env bash
# Runs every benchmark once, one after the other: bench/run.sh (throughput beside direct TLS),
# bench/churn.sh (connection churn, on loopback and one WAN hop away), bench/multiplex.sh
# (multiplex mode under load), bench/idle.sh (10,000 idle clients) and bench/rest.sh (the REST
# listener beside RESP; needs node and npm for autocannon). Each starts its own
# redis-server and respguard and cleans up after itself. Not a test: it asserts nothing.
#
#   bench/run-all.sh        (RESPGUARD_BIN, BENCH_LOG_DIR and BENCH_TIMEOUT apply to all)
set -uo pipefail
here=$(dirname "$0")
if [ -n "${BENCH_LOG_DIR:-}" ]; then base=$BENCH_LOG_DIR; else base=; fi
status=0
for script in run.sh churn.sh multiplex.sh idle.sh rest.sh; do
    echo "################ bench/$script ($(date -u +%H:%M:%SZ))"
    start=$(date +%s)
    if [ -n "$base" ]; then
        BENCH_LOG_DIR="$base/${script%.sh}" "$here/$script" || { echo "bench/$script exited with status $?"; status=1; }
    else
        "$here/$script" || { echo "bench/$script exited with status $?"; status=1; }
    fi
    echo "################ bench/$script took $(($(date +%s) - start)) s"
    echo
done
exit $status
