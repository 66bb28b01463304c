#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, checks the module layering, runs the
# cmocka unit tests, then the integration tests (pytest, real redis-server, real clients) in both
# upstream pool modes. The last line is pytest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
(cd tests/integration/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

# Layering: only these files may include these headers (see docs/architecture.md).
bad=$( { grep -l '#include <openssl/' src/*.c include/respguard/*.h | grep -v -e 'src/tlsconn.c' -e 'src/crypto.c' || true
         grep -l '#include <uv.h>' src/*.c include/respguard/*.h |
             grep -v -e 'src/main.c' -e 'src/listener.c' -e 'src/session.c' -e 'src/upstream.c' \
                     -e 'src/transport.c' -e 'src/worker.c' -e 'src/probe.c' -e 'include/respguard/transport.h' \
                     -e 'include/respguard/upstream.h' -e 'include/respguard/worker.h' \
                     -e 'include/respguard/session.h' -e 'include/respguard/listener.h' \
                     -e 'include/respguard/probe.h' -e 'src/pool.c' -e 'include/respguard/pool.h' || true
         grep -l '#include <microhttpd' src/*.c include/respguard/*.h | grep -v 'src/admin.c' || true; } )
if [ -n "$bad" ]; then
    echo "layering violation in: $bad" >&2
    exit 1
fi

build=${BUILD_DIR:-build-test}
[ -f "$build/build.ninja" ] || meson setup "$build" -Dwerror=true >/dev/null
meson compile -C "$build" >/dev/null
meson test -C "$build" --suite unit --print-errorlogs

# The integration suite runs three times: against an ASan/UBSan build in multiplex mode (any
# sanitizer report in respguard's stderr fails the test that caused it; LeakSanitizer runs at each
# graceful exit), then against the build users run, in multiplex mode and in session mode (the
# default; the last line is that run's pytest summary). Tests that choose their own pool mode
# (test_pool.py, test_multiplex.py) and the differential tests (no proxy involved) run once per
# build.
asan=${ASAN_BUILD_DIR:-build-asan}
[ -f "$asan/build.ninja" ] || meson setup "$asan" -Db_sanitize=address,undefined -Dtests=false >/dev/null
meson compile -C "$asan" respguard >/dev/null
echo "integration tests, ASan/UBSan build, multiplex mode:"
# A small quarantine: ASan otherwise keeps 256 MB of freed memory resident, which the tests that
# bound respguard's memory would (rightly) count.
# Only its summary is shown, unless something failed: then the failures.
asan_log=$(mktemp)
run_quiet() { # run a pytest, show its summary line, or the failures when it fails
    if ! "$@" >"$asan_log" 2>&1; then
        sed -n '/= FAILURES =/,$p' "$asan_log" | tail -300
        rm -f "$asan_log"
        exit 1
    fi
    tail -1 "$asan_log"
}
run_quiet env ASAN_OPTIONS=quarantine_size_mb=16 UBSAN_OPTIONS=print_stacktrace=1 RESPGUARD_BIN=$PWD/$asan/respguard \
    RESPGUARD_POOL_MODE=multiplex /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration -k "not differential"

export RESPGUARD_BIN=$PWD/$build/respguard
echo "integration tests, multiplex mode:"
run_quiet env RESPGUARD_POOL_MODE=multiplex /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration \
    -k "not differential" --ignore=tests/integration/test_pool.py --ignore=tests/integration/test_multiplex.py
rm -f "$asan_log"

echo "integration tests, session mode:"
exec env RESPGUARD_POOL_MODE=session /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration
