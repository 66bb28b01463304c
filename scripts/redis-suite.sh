#!/usr/bin/env bash
# Runs Redis's own test suite (tests/ of the Redis source Debian ships, BSD-licensed) twice in
# external-server mode: directly against a throwaway redis-server, and through respguard in front
# of a second, identical redis-server reached over verified TLS. Prints the tests that fail (or
# break off, or time out) only through respguard, and the totals of both runs.
#
#   scripts/redis-suite.sh                       all units, session mode
#   scripts/redis-suite.sh --mode multiplex      respguard's pool in multiplex mode
#   scripts/redis-suite.sh --units "unit/multi unit/pubsub"    only these units
#   scripts/redis-suite.sh --proxy-only          no direct run (compare with nothing)
#   scripts/redis-suite.sh -- --singledb         anything after -- goes to every ./runtest
#   scripts/redis-suite.sh --serve               start everything, print how to run one test by
#                                                hand (direct and through respguard), wait
#
# Nothing of Redis is vendored: the source package matching the installed redis-server is
# downloaded at run time with `apt-get source --download-only` (a deb-src entry in a private apt
# configuration; the system's apt sources are not touched) into the cache directory, unpacked,
# and Debian's patches are applied (some of them change tests along with the server).
#
# Each unit (tests/unit/*.tcl, tests/integration/*.tcl) runs as its own ./runtest --single UNIT
# --host H --port P --durable, so an exception or a hang ends that unit only. External mode
# skips the tests tagged external:skip (those that start, restart or inspect server processes)
# and runs with one test client (--clients has no effect there). The direct and the proxied runs
# go in parallel (two servers, one test client each).
#
# Environment (all optional):
#   RESPGUARD_BIN       respguard binary (default build/respguard, built with meson if missing)
#   POOL_MODE           session (default) or multiplex; --mode overrides it
#   REDIS_SUITE_CACHE   downloaded and unpacked source (default ~/.cache/respguard-redis-suite)
#   REDIS_SUITE_OUT     results: per-unit logs, respguard's and redis-server's logs, the config,
#                       summary.txt (default .redis-suite/last in the repository; gitignored;
#                       emptied at the start of each run)
#   REDIS_SUITE_TAGS    ./runtest --tags value (default "-slow": what Redis's own CI runs against
#                       external servers; "-needs:repl" is added unless REDIS_SUITE_REPL=1)
#   REDIS_SUITE_BUDGET  seconds for the test runs as a whole (default 780); a unit that would
#                       start later is not run, one still running then is stopped, and both are
#                       listed
#   REDIS_SUITE_UNIT_TIMEOUT   seconds one unit may take (default 240)
#   REDIS_SUITE_PROGRESS_TIMEOUT  ./runtest --timeout: seconds without a test finishing before
#                       the unit is stopped as hung (default 60; the slowest test takes ~45)
#   REDIS_SUITE_REPL    1: also run the tests that read the replication stream (below)
#   REDIS_SUITE_SERIAL  1: run direct and proxied one after the other instead of in parallel
#   REDIS_SUITE_ACL     the respguard user `default`'s rule (default "nopass on ~* &* +@all
#                       +monitor": MONITOR is served only when the rule names it)
#   REDIS_SUITE_CONFIG_EXTRA  YAML appended to respguard's config (top-level keys other than
#                       listeners, upstream, users, guard, limits, log, anomaly)
#
# Tests that read the replication stream (tagged needs:repl, or calling
# attach_to_replication_stream, found in the source at run time and listed in
# skipped-tests.txt) are skipped on both sides unless REDIS_SUITE_REPL=1: they send SYNC on a raw
# connection, and the RDB payload that answers it is not RESP (no CRLF after the bulk), so
# respguard ends that session; the test then fails before its own cleanup (REPLICAOF NO ONE,
# SELECT 9, DEBUG SET-ACTIVE-EXPIRE 1), which fails or hangs the rest of its unit.
#
# Before each unit, on both sides, what a failed test may have left on the server is undone
# (configuration back to the start, REPLICAOF NO ONE, CLIENT UNPAUSE, DEBUG switches, ACL users),
# so that one failure does not spread to later units.
#
# respguard's config: a plaintext listener on loopback, upstream rediss:// (the throwaway CA,
# no upstream password: the direct server has none either), pool mode as chosen, one user
# `default` (REDIS_SUITE_ACL), `guard: {never_by_category: []}`, anomaly detection off.
#
# Exit status: 0 when no test fails only through respguard, 1 when some do, 2 on a setup error.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

mode=${POOL_MODE:-session}
units_arg=""
proxy_only=0
serve=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) mode=$2; shift 2 ;;
        --units) units_arg=$2; shift 2 ;;
        --proxy-only) proxy_only=1; shift ;;
        --serve) serve=1; shift ;;
        --) shift; extra=("$@"); break ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$mode" in session | multiplex) ;; *) echo "--mode must be session or multiplex" >&2; exit 2 ;; esac

bin=${RESPGUARD_BIN:-build/respguard}
cache=${REDIS_SUITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/respguard-redis-suite}
out=${REDIS_SUITE_OUT:-$root/.redis-suite/last}
tags=${REDIS_SUITE_TAGS--slow}
budget=${REDIS_SUITE_BUDGET:-780}
unit_timeout=${REDIS_SUITE_UNIT_TIMEOUT:-240}
progress_timeout=${REDIS_SUITE_PROGRESS_TIMEOUT:-60}
repl=${REDIS_SUITE_REPL:-0}
serial=${REDIS_SUITE_SERIAL:-0}
t_start=$(date +%s)

say() { printf '%s [redis-suite] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 2; }

# --- what is needed ------------------------------------------------------------------------------
need=()
command -v tclsh >/dev/null || need+=(tcl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v openssl >/dev/null || need+=(openssl)
command -v patch >/dev/null || need+=(patch)
command -v python3 >/dev/null || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing: ${need[*]} (install them, or run as root)"
    say "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x "$bin" ]; then
    say "building $bin"
    bdir=$(dirname "$bin")
    [ -f "$bdir/build.ninja" ] || meson setup "$bdir" >/dev/null
    meson compile -C "$bdir" >/dev/null
fi

# --- the Redis source: Debian's source package of the installed redis-server --------------------
# Prints the directory of the unpacked, patched tree.
fetch_source() {
    local want up dl apt tree
    want=$(dpkg-query -W -f='${source:Version}' redis-server 2>/dev/null || true)
    up=$(dpkg-query -W -f='${source:Upstream-Version}' redis-server 2>/dev/null || true)
    [ -n "$up" ] || up=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
    tree="$cache/src/${want:-$up}/redis-$up"
    if [ -f "$tree/.respguard-ready" ]; then echo "$tree"; return 0; fi
    apt="$cache/apt"
    dl="$cache/dl/${want:-$up}"
    mkdir -p "$apt/etc/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$dl"
    : >"$apt/etc/sources.list"
    # Debian 12's main archive and its security updates (where the current redis comes from).
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    cat >"$apt/etc/sources.list.d/redis-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $codename-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    local opts=(-o "Dir::Etc::sourcelist=$apt/etc/sources.list"
                -o "Dir::Etc::sourceparts=$apt/etc/sources.list.d"
                -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
                -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root" -qq)
    say "downloading the source of redis ${want:-$up} (apt-get source, into $dl)"
    apt-get "${opts[@]}" update >&2 || die "apt-get update (deb-src) failed"
    if ! (cd "$dl" && apt-get "${opts[@]}" source --download-only "redis${want:+=$want}" >&2); then
        say "redis $want is not in the archive; taking the newest redis source package"
        (cd "$dl" && apt-get "${opts[@]}" source --download-only redis >&2) || die "apt-get source redis failed"
    fi
    local orig deb
    orig=$(ls "$dl"/redis_*.orig.tar.* | head -1)
    deb=$(ls "$dl"/redis_*.debian.tar.* | head -1)
    up=$(basename "$orig" | sed 's/^redis_\(.*\)\.orig\.tar\..*/\1/')
    tree="$cache/src/${want:-$up}/redis-$up"
    rm -rf "$(dirname "$tree")"
    mkdir -p "$(dirname "$tree")"
    tar -xf "$orig" -C "$(dirname "$tree")"
    [ -d "$tree" ] || die "unexpected layout of $orig"
    tar -xf "$deb" -C "$tree"
    local p
    while read -r p; do
        p=${p%%#*}; p=${p// /}
        [ -n "$p" ] || continue
        patch -d "$tree" -p1 -s -N -f <"$tree/debian/patches/$p" >/dev/null || say "warning: debian patch $p did not apply"
    done <"$tree/debian/patches/series"
    touch "$tree/.respguard-ready"
    echo "$tree"
}
redis_tree=$(fetch_source)
suite_version=$(basename "$redis_tree")
server_version=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
[ "redis-$server_version" = "$suite_version" ] ||
    say "warning: redis-server is $server_version, the test suite is $suite_version"

# --- scratch: two copies of the suite, certificates, servers, respguard --------------------------
[ -n "$out" ] && [ "$out" != / ] || die "bad REDIS_SUITE_OUT"
rm -rf "$out"
mkdir -p "$out/run"
run="$out/run"   # pid files, sockets, server directories

cleanup() {
    local f pid
    # The runners first (so that they start nothing more), then the test runs (`timeout` passes
    # the signal on to its process group: runtest and its test client), respguard, the servers.
    for f in "$run"/1-*.pid "$run"/0-*.pid "$run"/5-*.pid "$run"/9-*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null) || continue
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A copy of runtest and tests/ per run (the two runs go in parallel and the suite writes into
# tests/tmp), with the helper binaries the suite calls by src/ paths.
for side in direct proxy; do
    mkdir -p "$run/suite-$side/src"
    cp -a "$redis_tree/runtest" "$redis_tree/tests" "$run/suite-$side/"
    for b in redis-server redis-cli redis-benchmark redis-check-aof redis-check-rdb; do
        p=$(command -v "$b" || true)
        [ -n "$p" ] && ln -s "$p" "$run/suite-$side/src/$b"
    done
done

# shellcheck source=scripts/certs.sh
source "$root/scripts/certs.sh"
make_local_certs "$run" "redis-suite CA" 1 s

# start_redis NAME PORT_ARGS...: what Redis's CI uses for its external-server runs (no
# persistence, DEBUG, MODULE and protected configs allowed), no password (the suite expects
# the default user without one), verbose log.
start_redis() {
    local name=$1
    shift
    mkdir -p "$run/$name"
    redis-server --bind 127.0.0.1 "$@" --save '' --appendonly no --dir "$run/$name" \
        --enable-protected-configs yes --enable-debug-command yes --enable-module-command yes \
        --daemonize yes --pidfile "$run/9-$name.pid" --logfile "$out/redis-$name.log"
}
direct_port=$(free_port)
up_port=$(free_port)
start_redis direct --port "$direct_port"
start_redis upstream --port 0 --tls-port "$up_port" --tls-cert-file "$run/s.crt" \
    --tls-key-file "$run/s.key" --tls-ca-cert-file "$run/ca.crt" --tls-auth-clients no
up() {
    redis-cli -p "$direct_port" ping >/dev/null 2>&1 &&
        redis-cli -p "$up_port" --tls --cacert "$run/ca.crt" --sni localhost ping >/dev/null 2>&1
}
for _ in $(seq 100); do up && break; sleep 0.1; done
up || { tail -5 "$out"/redis-*.log >&2; die "redis-server did not start"; }

rg_port=$(free_port)
cat >"$out/respguard.yaml" <<EOF
listeners:
  - bind: 127.0.0.1:$rg_port
upstream:
  url: rediss://localhost:$up_port
  ca_file: $run/ca.crt
  pool:
    mode: $mode
users:
  default:
    acl: "${REDIS_SUITE_ACL:-nopass on ~* &* +@all +monitor}"
guard:
  never_by_category: []
limits:
  max_request_bytes: 600mb   # above Redis's proto-max-bulk-len (512mb): the suite sends 33 MB values
log:
  level: info
anomaly:
  enabled: no
EOF
[ -z "${REDIS_SUITE_CONFIG_EXTRA:-}" ] || printf '%s\n' "$REDIS_SUITE_CONFIG_EXTRA" >>"$out/respguard.yaml"
"$bin" check -c "$out/respguard.yaml" >/dev/null || die "respguard check failed"
"$bin" -c "$out/respguard.yaml" 2>"$out/respguard.log" &
echo $! >"$run/5-respguard.pid"
rg_pid=$!
for _ in $(seq 100); do
    redis-cli -p "$rg_port" ping 2>/dev/null | grep -q PONG && break
    kill -0 "$rg_pid" 2>/dev/null || break
    sleep 0.1
done
redis-cli -p "$rg_port" ping 2>/dev/null | grep -q PONG || { tail -20 "$out/respguard.log" >&2; die "respguard did not start"; }
say "redis-server direct :$direct_port; respguard ($mode mode) :$rg_port -> redis-server TLS :$up_port"

# srv_cli SIDE ARGS...: redis-cli straight to that side's redis-server (the proxy side's over TLS).
srv_cli() {
    local side=$1
    shift
    if [ "$side" = direct ]; then
        redis-cli -p "$direct_port" "$@"
    else
        redis-cli -p "$up_port" --tls --cacert "$run/ca.crt" --sni localhost "$@"
    fi
}
# What a unit may leave behind when one of its tests fails halfway (a test that makes the server
# a replica and fails before its REPLICAOF NO ONE breaks every later unit): before each unit, the
# server's configuration goes back to the snapshot taken here, REPLICAOF NO ONE, CLIENT UNPAUSE,
# the DEBUG switches to their defaults, ACL users as at the start. The same on both sides,
# straight to the server.
for side in direct proxy; do
    srv_cli "$side" CONFIG GET '*' >"$run/$side.config0"
    srv_cli "$side" ACL LIST >"$run/$side.acl0"
done
restore_server() {
    local side=$1 k v u
    # DEBUG switches that tests turn and (when they get that far) turn back: their defaults.
    srv_cli "$side" >/dev/null 2>&1 <<'CMDS' || true
REPLICAOF NO ONE
CLIENT UNPAUSE
SCRIPT KILL
FUNCTION KILL
DEBUG SET-ACTIVE-EXPIRE 1
DEBUG SET-SKIP-CHECKSUM-VALIDATION 0
DEBUG SET-DISABLE-DENY-SCRIPTS 0
DEBUG PAUSE-CRON 0
DEBUG QUICKLIST-PACKED-THRESHOLD 0
DEBUG REPLYBUFFER RESIZING 1
DEBUG REPLYBUFFER PEAK-RESET-TIME RESET
CMDS
    srv_cli "$side" CONFIG GET '*' >"$run/$side.config1" 2>/dev/null || return 0
    # Pairs of lines (name, value); set back every value that differs from the snapshot.
    awk 'NR == FNR { if (FNR % 2) k = $0; else v0[k] = $0; next }
         FNR % 2 { k = $0; next }
         (k in v0) && v0[k] != $0 { print k; print v0[k] }' \
        "$run/$side.config0" "$run/$side.config1" |
        while IFS= read -r k && IFS= read -r v; do
            srv_cli "$side" CONFIG SET "$k" "$v" >/dev/null 2>&1 || true
        done
    if ! srv_cli "$side" ACL LIST 2>/dev/null | cmp -s - "$run/$side.acl0"; then
        for u in $(srv_cli "$side" ACL USERS 2>/dev/null); do
            [ "$u" = default ] || srv_cli "$side" ACL DELUSER "$u" >/dev/null 2>&1 || true
        done
        srv_cli "$side" ACL SETUSER default reset on nopass '~*' '&*' +@all >/dev/null 2>&1 || true
    fi
}

if [ "$serve" = 1 ]; then
    q=$(printf '%q' "-slow -needs:repl")
    cat <<MSG

Serving until Ctrl-C. Direct redis-server on :$direct_port; respguard ($mode mode) on :$rg_port in
front of redis-server TLS :$up_port (config $out/respguard.yaml, log $out/respguard.log).

  redis-cli -p $rg_port                    # through respguard
  redis-cli -p $direct_port                    # directly
  cd $run/suite-proxy && ./runtest --host 127.0.0.1 --port $rg_port --durable --tags $q --single unit/tracking --only 'TEST NAME'
  cd $run/suite-direct && ./runtest --host 127.0.0.1 --port $direct_port --durable --tags $q --single unit/tracking --only 'TEST NAME'
MSG
    while kill -0 "$rg_pid" 2>/dev/null; do sleep 1; done
    say "respguard exited"
    exit 0
fi

# --- the runs ------------------------------------------------------------------------------------
if [ -n "$units_arg" ]; then
    read -r -a units <<<"$units_arg"
else
    mapfile -t units < <(cd "$run/suite-direct" && ./runtest --list-tests)
fi
printf '%s\n' "${units[@]}" >"$out/units.txt"
# The skip list: tests that read the replication stream (unless REDIS_SUITE_REPL=1): those of
# the tag needs:repl (by --tags) and those that call attach_to_replication_stream (by name).
: >"$run/skip.txt"
if [ "$repl" != 1 ]; then
    python3 - "$redis_tree/tests" >"$run/skip.txt" <<'PY'
import glob, os, re, sys
os.chdir(sys.argv[1])
start = re.compile(r'^\s*test\s+(\{[^}\n]*\}|"[^"\n]*")', re.M)
for f in sorted(glob.glob("unit/**/*.tcl", recursive=True) + glob.glob("integration/*.tcl")):
    src = open(f, errors="replace").read()
    heads = list(start.finditer(src))
    for i, m in enumerate(heads):
        body = src[m.end():heads[i + 1].start() if i + 1 < len(heads) else len(src)]
        if "attach_to_replication_stream" not in body:
            continue
        name = m.group(1)[1:-1]
        if "$" in name or "[" in name:   # a name made at run time: a regular expression
            print("/^" + re.sub(r"\\\$\w+|\\\[.*?\\\]", ".*", re.escape(name)) + "$")
        else:
            print(name)
PY
    tags="${tags:+$tags }-needs:repl"
fi
cp "$run/skip.txt" "$out/skipped-tests.txt"
deadline=$((t_start + budget))

# run_side SIDE PORT: every unit, one after the other, into $out/SIDE/UNIT.log. The two sides'
# test servers (runtest talks to its test client over a local port) get apart port ranges. A unit
# in which a test hangs (./runtest's TIMEOUT names it) is run again without that test, up to
# twice, so that one hang does not hide the rest of its unit; the earlier attempts are kept as
# UNIT.log.attemptN.
run_side() {
    local side=$1 port=$2 u log now left t rc base=21111 attempt hung skips
    [ "$side" = proxy ] && base=25111
    mkdir -p "$out/$side"
    for u in "${units[@]}"; do
        log="$out/$side/${u//\//__}.log"
        skips=()
        : >"$log.notes"
        for attempt in 1 2 3; do
            now=$(date +%s)
            left=$((deadline - now))
            if [ "$left" -lt 5 ]; then
                echo "@@ NOT RUN: the time budget ($budget s) was used up" >>"$log.notes"
                : >"$log.run"
                break
            fi
            restore_server "$side"
            t=$unit_timeout
            [ "$left" -lt "$t" ] && t=$left
            rc=0
            (cd "$run/suite-$side" && TERM=dumb exec timeout -k 5 "$t" ./runtest --host 127.0.0.1 --port "$port" \
                --single "$u" --baseport "$base" --durable --timeout "$progress_timeout" --skipfile "$run/skip.txt" \
                ${tags:+--tags "$tags"} "${skips[@]}" "${extra[@]}") >"$log.raw" 2>&1 </dev/null &
            echo $! >"$run/0-$side.pid"
            wait $! || rc=$?
            rm -f "$run/0-$side.pid"
            sed 's/\x1b\[[0-9;]*m//g' "$log.raw" >"$log.run" && rm -f "$log.raw"
            if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
                echo "@@ KILLED: the unit ran longer than $t s" >>"$log.run"
            fi
            echo "@@ EXIT $rc $(( $(date +%s) - now )) s" >>"$log.run"
            # respguard must still be running; if it is not, nothing after this is meaningful.
            if [ "$side" = proxy ] && ! kill -0 "$rg_pid" 2>/dev/null; then
                echo "@@ RESPGUARD EXITED during this unit" >>"$log.run"
                cat "$log.notes" "$log.run" >"$log"
                rm -f "$log.notes" "$log.run"
                say "respguard exited during $u; last log lines:"
                tail -5 "$out/respguard.log" | cut -c1-300 >&2
                return 0
            fi
            hung=$(sed -n 's/^.* => (IN PROGRESS) //p' "$log.run" | head -1)
            if [ "$attempt" -lt 3 ] && [ -n "$hung" ] && grep -q '^\[TIMEOUT\]' "$log.run"; then
                echo "@@ HUNG: $hung" >>"$log.notes"
                mv "$log.run" "$log.attempt$attempt"
                skips+=(--skiptest "$hung")
                continue
            fi
            break
        done
        cat "$log.notes" "$log.run" >"$log"
        rm -f "$log.notes" "$log.run"
    done
}

say "running ${#units[@]} units (tags: ${tags:-none}; extra runtest args: ${extra[*]:-none}; budget $budget s)"
if [ "$proxy_only" = 1 ]; then
    run_side proxy "$rg_port"
elif [ "$serial" = 1 ]; then
    run_side direct "$direct_port"
    run_side proxy "$rg_port"
else
    run_side direct "$direct_port" &
    echo $! >"$run/1-direct.pid"
    run_side proxy "$rg_port" &
    echo $! >"$run/1-proxy.pid"
    wait "$(cat "$run/1-direct.pid")" || true
    wait "$(cat "$run/1-proxy.pid")" || true
    rm -f "$run/1-direct.pid" "$run/1-proxy.pid"
fi

# respguard's warnings and errors, by event, for the summary.
awk '/"level":"(warn|error)"/ {
        ev = "?"; cmd = ""
        if (match($0, /"event":"[^"]*"/)) ev = substr($0, RSTART + 9, RLENGTH - 10)
        if (match($0, /"reason":"[^"]*"/)) cmd = " " substr($0, RSTART + 10, RLENGTH - 11)
        n[ev cmd]++
    }
    END { for (k in n) print n[k], k }' "$out/respguard.log" | sort -rn >"$out/respguard-events.txt"
cleanup

# --- the comparison ------------------------------------------------------------------------------
elapsed=$(( $(date +%s) - t_start ))
set +e
PROGRESS_TIMEOUT=$progress_timeout python3 - "$out" "$proxy_only" "$mode" "$elapsed" "$suite_version" <<'PY' | tee "$out/summary.txt"
import os, re, sys
from collections import Counter, OrderedDict

out, proxy_only, mode, elapsed, version = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4], sys.argv[5]
STATUS = re.compile(r"^\[(ok|err|exception|skip|ignore|TIMEOUT)\]: (.*)$")
BROKE = ("exception", "KILLED", "RESPGUARD", "TIMEOUT")

def parse(path):
    """A unit's log -> (results: name -> [(status, detail)], notes, counts)."""
    res, notes, counts = OrderedDict(), [], Counter()
    lines = open(path, errors="replace").read().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("@@ HUNG: "):
            name = line[9:]
            res.setdefault(name, []).append(("err", "hung: nothing for %s s (the unit was run again without it)" % PROGRESS))
            counts["hung"] += 1
            continue
        if line.startswith("@@ ") and not line.startswith("@@ EXIT"):
            notes.append(line[3:])
            continue
        m = STATUS.match(line)
        if not m:
            continue
        st, rest = m.group(1), m.group(2)
        counts[st] += 1
        if st == "ok":
            res.setdefault(re.sub(r" \(\d+ ms\)$", "", rest), []).append(("ok", ""))
        elif st == "err":
            detail = []
            for l in lines[i + 1:]:
                if l.startswith(("[", "@@", "Testing ")):
                    break
                detail.append(l.strip())
            # runtest cuts the first 10 characters off an error that is not an assertion (it
            # expects "assertion:"); the next line, the start of errorInfo, has all of it.
            if len(detail) > 1 and detail[0] and detail[1].endswith(detail[0]):
                detail = detail[1:]
            mm = re.match(r"^(.*) in tests/\S+\.tcl$", rest)
            if mm:
                name = mm.group(1)
            else:   # an error outside any test (--durable reports it this way)
                name = "(outside a test) " + (detail[0] if detail and detail[0].endswith(rest) else rest)[:100]
            res.setdefault(name, []).append(("err", " | ".join(d for d in detail[:3] if d)[:300]))
        elif st == "exception":
            notes.append("exception: " + " ".join([rest] + [l.strip() for l in lines[i + 1:i + 3]])[:300])
        elif st == "TIMEOUT":
            prog = [re.sub(r"^.*\(IN PROGRESS\) ", "", l) for l in lines[i + 1:i + 6] if "IN PROGRESS" in l]
            notes.append("TIMEOUT: nothing for %s s%s" % (PROGRESS, (" in: " + prog[0]) if prog else ""))
            for n in prog:
                res.setdefault(n, []).append(("err", "hung: nothing for %s s; the rest of the unit did not run" % PROGRESS))
    return res, notes, counts

PROGRESS = os.environ.get("PROGRESS_TIMEOUT", "60")
ORDER = [l.strip() for l in open(os.path.join(out, "units.txt")) if l.strip()]
def side(name):
    units = OrderedDict()
    for u in ORDER:
        f = os.path.join(out, name, u.replace("/", "__") + ".log")
        if os.path.exists(f):
            units[u] = parse(f)
    return units

def totals(units):
    c = Counter()
    for _, (_, notes, counts) in units.items():
        c.update(counts)
        c["units broken off"] += sum(1 for n in notes if n.startswith(BROKE))
        c["units not run"] += sum(1 for n in notes if n.startswith("NOT RUN"))
    return c

def fmt(c):
    return ("[ok] %d, [err] %d (hung %d), [exception] %d, ignored/skipped %d; units broken off %d, not run %d"
            % (c["ok"], c["err"] + c["hung"] + c["TIMEOUT"], c["hung"] + c["TIMEOUT"], c["exception"],
               c["ignore"] + c["skip"], c["units broken off"], c["units not run"]))

direct, proxy = side("direct"), side("proxy")
print("Redis %s test suite, external mode, directly and through respguard (%s mode); %s s"
      % (version, mode, elapsed))
if not proxy_only:
    print("  direct:            " + fmt(totals(direct)))
print("  through respguard: " + fmt(totals(proxy)))
print()

only, both, missing, unit_notes = [], [], OrderedDict(), []
for unit, (pres, pnotes, _) in proxy.items():
    dres = direct.get(unit, (OrderedDict(), [], None))[0]
    unit_notes += ["%s: %s" % (unit, n) for n in pnotes]
    for name, outcomes in pres.items():
        perr = [d for s, d in outcomes if s == "err"]
        if not perr:
            continue
        derr = [d for s, d in dres.get(name, []) if s == "err"]
        if proxy_only or not derr:
            only.append((unit, name, perr[0]))
        else:
            both.append((unit, name, perr[0]))
    if not proxy_only:
        gone = [n for n, o in dres.items() if n not in pres and any(s == "ok" for s, _ in o)]
        if gone:
            missing[unit] = gone

print("Tests that fail through respguard%s: %d" % ("" if proxy_only else " but not directly", len(only)))
for unit, name, detail in only:
    print("  FAIL %s: %s" % (unit, name))
    if detail:
        print("       %s" % detail)
if missing:
    n = sum(len(v) for v in missing.values())
    print("\nTests that passed directly but did not run through respguard (their unit broke off): %d" % n)
    with open(os.path.join(out, "not-run-through-respguard.txt"), "w") as f:
        for unit, names in missing.items():
            print("  %s: %d, from '%s' on" % (unit, len(names), names[0]))
            for nm in names:
                f.write("%s: %s\n" % (unit, nm))
if unit_notes:
    print("\nUnits through respguard that hung or broke off:")
    for n in unit_notes:
        print("  " + n)
if both:
    print("\nTests that fail both ways (not respguard's doing): %d" % len(both))
    for unit, name, detail in both:
        print("  both %s: %s" % (unit, name))
ev = os.path.join(out, "respguard-events.txt")
if os.path.exists(ev) and os.path.getsize(ev):
    print("\nrespguard's warn/error log lines (count, event, reason):")
    for l in open(ev):
        print("  " + l.rstrip())
print("\nLogs: %s/{direct,proxy}/UNIT.log, %s/respguard.log, %s/summary.txt" % (out, out, out))
sys.exit(1 if only or missing else 0)
PY
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || [ "$rc" = 1 ] || rc=2
exit "$rc"
