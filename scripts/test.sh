#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, checks the module layering, runs the
# cmocka unit tests, then under ASan/UBSan the unit tests again and the fuzz targets over their
# seed corpora (also through libFuzzer when clang is there), then the integration tests (pytest,
# real redis-server, real clients): under ASan/UBSan, the admin tests under TSan, and in both
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
                     -e 'include/respguard/probe.h' -e 'src/pool.c' -e 'include/respguard/pool.h' \
                     -e 'src/watch.c' -e 'include/respguard/watch.h' -e 'src/rest.c' || true
         grep -l '#include <microhttpd' src/*.c include/respguard/*.h | grep -v -e 'src/admin.c' -e 'src/rest.c' || true
         grep -l '#include <systemd/' src/*.c include/respguard/*.h | grep -v 'src/notify.c' || true
         grep -l '#include <jansson' src/*.c include/respguard/*.h | grep -v 'src/restcodec.c' || true; } )
if [ -n "$bad" ]; then
    echo "layering violation in: $bad" >&2
    exit 1
fi

build=${BUILD_DIR:-build-test}
[ -f "$build/build.ninja" ] || meson setup "$build" -Dwerror=true >/dev/null
meson compile -C "$build" >/dev/null
meson test -C "$build" --suite unit --print-errorlogs

# A sanitizer report fails what it happens in: ASan and UBSan stop at the first one (gcc's UBSan
# would otherwise print and go on) and exit non-zero; LeakSanitizer runs at every exit.
asan_options=halt_on_error=1:detect_leaks=1
ubsan_options=halt_on_error=1:print_stacktrace=1
san_env=(ASAN_OPTIONS=$asan_options UBSAN_OPTIONS=$ubsan_options)
# Set up a build dir, or bring an existing one to the options: --reconfigure (unlike meson
# configure) also knows options added since the dir was made, e.g. invariants in an old build-asan.
configure() { # dir options...
    local dir=$1; shift
    if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null; else meson setup "$dir" "$@" >/dev/null; fi
}

# The ASan/UBSan build, RG_INVARIANT on: the unit tests (they give parsers heap blocks of exactly
# the input's size, so a read past the end is a report), and the fuzz targets over their seed
# corpora (tests/fuzz/corpus) through tests/fuzz/replay.c.
asan=${ASAN_BUILD_DIR:-build-asan}
configure "$asan" -Db_sanitize=address,undefined -Dtests=true -Dinvariants=true
meson compile -C "$asan" >/dev/null
echo "unit tests and fuzz corpora, ASan/UBSan build:"
env "${san_env[@]}" meson test -C "$asan" --no-rebuild --suite unit --suite fuzz-replay --print-errorlogs

# The corpora through libFuzzer itself, when clang has it (scripts/deps.sh does not install clang).
if command -v clang >/dev/null &&
   echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
       clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
    fuzz=${FUZZ_BUILD_DIR:-build-fuzz}
    fuzz_options=(-Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false -Dinvariants=true)
    if [ ! -f "$fuzz/build.ninja" ]; then
        CC=clang meson setup "$fuzz" -Dtests=false "${fuzz_options[@]}" >/dev/null
    elif grep -q '^ command = clang' "$fuzz/build.ninja"; then
        configure "$fuzz" "${fuzz_options[@]}"
    else
        echo "$fuzz is not a clang build: remove it or set FUZZ_BUILD_DIR" >&2
        exit 1
    fi
    meson compile -C "$fuzz" fuzz_request fuzz_reply fuzz_config fuzz_acl fuzz_restjson >/dev/null
    echo "fuzz corpora, libFuzzer build:"
    env "${san_env[@]}" meson test -C "$fuzz" --no-rebuild --suite fuzz-replay --print-errorlogs
fi

# The integration suite runs three times: against the ASan/UBSan build in multiplex mode (any
# sanitizer report in respguard's stderr fails the test that caused it; LeakSanitizer runs at each
# graceful exit), then against the build users run, in multiplex mode and in session mode (the
# default; the last line is that run's pytest summary). Tests that choose their own pool mode
# (test_pool.py, test_multiplex.py) and the differential tests (no proxy involved) run once per
# build; test_packaging.py (the .deb, the man pages, sd_notify) and test_container.py (the image
# built from that .deb) run once, in the last run. In between, the tests built on the admin
# listener go against a ThreadSanitizer build.
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
run_quiet env ASAN_OPTIONS=$asan_options:quarantine_size_mb=16 UBSAN_OPTIONS=$ubsan_options \
    RESPGUARD_BIN=$PWD/$asan/respguard RESPGUARD_POOL_MODE=multiplex \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration -k "not differential" \
    --ignore=tests/integration/test_packaging.py --ignore=tests/integration/test_container.py

# The admin thread (libmicrohttpd) reads what the worker writes: metric shards, the probe's status.
# The admin, anomaly, enforcement and reload tests (built on /metrics and /readyz; a reload
# replaces what the admin thread reads) against a
# ThreadSanitizer build; a report fails the test. (The whole suite under TSan takes ~3 minutes.)
tsan=${TSAN_BUILD_DIR:-build-tsan}
configure "$tsan" -Db_sanitize=thread -Dtests=false -Dinvariants=true
meson compile -C "$tsan" respguard >/dev/null
echo "admin and metrics integration tests, TSan build, multiplex mode:"
run_quiet env TSAN_OPTIONS=halt_on_error=1 RESPGUARD_BIN=$PWD/$tsan/respguard RESPGUARD_POOL_MODE=multiplex \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider \
    tests/integration/test_admin.py tests/integration/test_anomaly.py tests/integration/test_enforcement.py \
    tests/integration/test_reload.py

export RESPGUARD_BIN=$PWD/$build/respguard
echo "integration tests, multiplex mode:"
run_quiet env RESPGUARD_POOL_MODE=multiplex /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration \
    -k "not differential" --ignore=tests/integration/test_pool.py --ignore=tests/integration/test_multiplex.py \
    --ignore=tests/integration/test_packaging.py --ignore=tests/integration/test_container.py
rm -f "$asan_log"

echo "integration tests, session mode:"
exec env RESPGUARD_POOL_MODE=session /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration
