#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, checks the module layering, runs the
# cmocka unit tests, then the integration tests (pytest, real redis-server, real clients).
# The last line is pytest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
(cd tests/integration/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

# Layering: only these files may include these headers (see docs/architecture.md).
bad=$( { grep -l '#include <openssl/' src/*.c include/respguard/*.h | grep -v -e 'src/tlsconn.c' -e 'src/crypto.c' || true
         grep -l '#include <hiredis' src/*.c include/respguard/*.h | grep -v 'src/resp.c' || true
         grep -l '#include <uv.h>' src/*.c include/respguard/*.h |
             grep -v -e 'src/main.c' -e 'src/listener.c' -e 'src/session.c' -e 'src/upstream.c' \
                     -e 'src/transport.c' -e 'src/worker.c' -e 'src/probe.c' -e 'include/respguard/transport.h' \
                     -e 'include/respguard/upstream.h' -e 'include/respguard/worker.h' \
                     -e 'include/respguard/session.h' -e 'include/respguard/listener.h' \
                     -e 'include/respguard/probe.h' || true
         grep -l '#include <microhttpd' src/*.c include/respguard/*.h | grep -v 'src/admin.c' || true; } )
if [ -n "$bad" ]; then
    echo "layering violation in: $bad" >&2
    exit 1
fi

build=${BUILD_DIR:-build-test}
[ -f "$build/build.ninja" ] || meson setup "$build" -Dwerror=true >/dev/null
meson compile -C "$build" >/dev/null
meson test -C "$build" --suite unit --print-errorlogs

# First the integration suite against an ASan/UBSan build (any sanitizer report in respguard's
# stderr fails the test that caused it; LeakSanitizer runs at each graceful exit), then against
# the build users run. The last line is the second run's pytest summary.
asan=${ASAN_BUILD_DIR:-build-asan}
[ -f "$asan/build.ninja" ] || meson setup "$asan" -Db_sanitize=address,undefined -Dtests=false >/dev/null
meson compile -C "$asan" respguard >/dev/null
echo "integration tests, ASan/UBSan build:"
# A small quarantine: ASan otherwise keeps 256 MB of freed memory resident, which the tests that
# bound respguard's memory would (rightly) count.
# Only its summary is shown, unless something failed: then the failures.
asan_log=$(mktemp)
if ! ASAN_OPTIONS=quarantine_size_mb=16 UBSAN_OPTIONS=print_stacktrace=1 RESPGUARD_BIN=$PWD/$asan/respguard \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration -k "not differential" >"$asan_log" 2>&1; then
    sed -n '/= FAILURES =/,$p' "$asan_log" | tail -300
    rm -f "$asan_log"
    exit 1
fi
tail -1 "$asan_log"
rm -f "$asan_log"

echo "integration tests:"
export RESPGUARD_BIN=$PWD/$build/respguard
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration
