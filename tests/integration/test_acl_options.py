"""Per-user ACL options and tooling (issue 3): the audit line of each refusal, users.expires,
allow_from on users and listeners (IPv4 and IPv6), `respguard dryrun`, `respguard check` on
ACL strings and guard names, and the guard against +@all."""

import calendar
import os
import socket
import ssl
import subprocess
import time
import uuid

import pytest
import redis

from helpers import free_port, respguard_bin, to_yaml, wait_until, pings
from resp_util import RawConn

pytestmark = pytest.mark.proxy_only

PW = "optsPw-5150"
TENANT = "on >%s ~tenant-a:* &tenant-a:* +@all -@dangerous" % PW
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
KEY_ERR = b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
CHAN_ERR = b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n"
SORT_BY_ERR = b"-ERR BY option of SORT denied due to insufficient ACL permissions.\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"


# The audit "rule" of a refusal Redis's own ACL gives too: acl_reason_name(ACL_REASON_REDIS) in
# src/acl.c says "acl"; the README's Per-user ACL section calls it `redis` (one of them is wrong).
RULE_REDIS = "acl"


def cmd_err(name):
    return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % name.encode()


def raw_tls(srv, user, password):
    ctx = ssl.create_default_context(cafile=srv.certs.path("ca.crt"))
    c = RawConn(srv.tls_port, tls_context=ctx, server_hostname="localhost")
    assert c.call_raw("AUTH", user, password) == OK
    return c


def run(args, env=None, timeout=15):
    e = dict(os.environ)
    e.update(env or {})
    try:
        return subprocess.run([respguard_bin()] + list(args), capture_output=True, env=e,
                              stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("respguard %s did not finish within %ds" % (" ".join(args), timeout))



# ---------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------

def audit_cases(key, chan, value):
    """(user, argv, reply, command, reason, rule, position)."""
    return [
        ("tenant", ("FLUSHALL",), cmd_err("flushall"), "flushall", "command", RULE_REDIS, 0),
        ("admin", ("FLUSHALL",), cmd_err("flushall"), "flushall", "command", "guard", 0),
        ("admin", ("CONFIG", "SET", "maxmemory", "1"), cmd_err("config|set"), "config|set", "command", "guard", 0),
        ("tenant", ("EVAL", "return 1", "0"), cmd_err("eval"), "eval", "command", "script", 0),
        ("tenant", ("SELECT", "1"), cmd_err("select"), "select", "command", "database", 1),
        ("tenant", ("DBSIZE",), cmd_err("dbsize"), "dbsize", "command", "server", 0),
        ("tenant", ("GET", key), KEY_ERR, "get", "key", RULE_REDIS, 1),
        ("tenant", ("MSET", "tenant-a:k", value, key, value), KEY_ERR, "mset", "key", RULE_REDIS, 3),
        ("tenant", ("RENAME", "tenant-a:x", key), KEY_ERR, "rename", "key", RULE_REDIS, 2),
        ("tenant", ("ZUNIONSTORE", "tenant-a:d", "2", "tenant-a:z", key), KEY_ERR, "zunionstore", "key", RULE_REDIS, 4),
        ("tenant", ("XREAD", "COUNT", "1", "STREAMS", "tenant-a:s", key, "0", "0"), KEY_ERR, "xread", "key",
         RULE_REDIS, 5),
        ("tenant", ("OBJECT", "ENCODING", key), KEY_ERR, "object|encoding", "key", RULE_REDIS, 2),
        ("tenant_ks", ("KEYS", key + "*"), KEY_ERR, "keys", "key", "enumeration", 1),
        ("tenant_ks", ("SORT", "tenant-a:l", "BY", key + "*"), SORT_BY_ERR, "sort", "key", "sort", 2),
        ("tenant", ("PUBLISH", chan, value), CHAN_ERR, "publish", "channel", RULE_REDIS, 1),
        ("tenant", ("SUBSCRIBE", "tenant-a:c", chan), CHAN_ERR, "subscribe", "channel", RULE_REDIS, 2),
        ("tenant_allch", ("SUBSCRIBE", "tenant-a:c", "__keyspace@0__:" + key), CHAN_ERR, "subscribe", "channel",
         "system-channel", 2),
    ]


AUDIT_USERS = {
    "tenant": {"acl": TENANT},
    "tenant_ks": {"acl": TENANT + " +keys +sort"},
    "tenant_allch": {"acl": "on >%s ~tenant-a:* &* +@all -@dangerous" % PW},
    "admin": {"acl": "on >%s ~* &* +@all" % PW},
}


def _run_audit(p, key, chan, value):
    cases = audit_cases(key, chan, value)
    conns = {}
    try:
        for user, args, reply, *_ in cases:
            if user not in conns:
                conns[user] = p.login(user, PW)
            c = conns[user]
            assert c.call_raw(*args) == reply, args
            assert c.call_raw("PING") == PONG
        ports = {u: c.sock.getsockname()[1] for u, c in conns.items()}
    finally:
        for c in conns.values():
            c.close()
    wait_until(lambda: len(p.events("refused")) >= len(cases), 5, what="%d refused events" % len(cases))
    events = p.events("refused")
    assert len(events) == len(cases), "one refused event per refusal expected, got:\n%s" % (
        "\n".join(map(str, events)))
    for (user, args, _reply, command, reason, rule, pos), e in zip(cases, events):
        where = "%r -> %r" % (args, e)
        assert e.get("level") == "warn", where
        assert e.get("user") == user, where
        assert e.get("peer") == "127.0.0.1:%d" % ports[user], where
        assert e.get("command") == command, where
        assert e.get("reason") == reason, where
        assert e.get("rule") == rule, where
        assert e.get("position") == pos, where
        assert isinstance(e.get("session"), int), where
    return cases, events


def test_audit_line_per_refusal_kind(respguard):
    key = "other:secretkey-%s" % uuid.uuid4().hex[:10]
    chan = "other-secretchan-%s" % uuid.uuid4().hex[:10]
    value = "secretvalue-%s" % uuid.uuid4().hex[:10]
    p = respguard(users=AUDIT_USERS)
    _, events = _run_audit(p, key, chan, value)
    for e in events:
        assert "argument" not in e, "argument logged without log.keys: %r" % e
    text = p.stderr_text()
    for secret in (key, chan, value, "secretkey", "secretchan", "secretvalue"):
        assert secret not in text, "%r appears in the log without log.keys:\n%s" % (secret, text[-3000:])


def test_audit_line_names_the_argument_with_log_keys(respguard):
    key = "other:loggedkey-%s" % uuid.uuid4().hex[:10]
    chan = "other-loggedchan-%s" % uuid.uuid4().hex[:10]
    value = "secretvalue-%s" % uuid.uuid4().hex[:10]
    p = respguard(users=AUDIT_USERS, overrides={"log": {"keys": True}})
    cases, events = _run_audit(p, key, chan, value)
    for (user, args, _r, _c, reason, _rule, pos), e in zip(cases, events):
        if pos == 0:
            assert "argument" not in e, e
        else:
            assert e.get("argument") == args[pos], e
    assert key in p.stderr_text()
    # values are never logged, keys or not
    assert value not in p.stderr_text()


# ---------------------------------------------------------------------------
# expires
# ---------------------------------------------------------------------------

def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def test_expired_user_cannot_log_in(respguard):
    p = respguard(users={"old": {"acl": "on >%s ~* &* +@all" % PW, "expires": "2020-01-01T00:00:00Z"},
                         "web": {"acl": "on >%s ~* &* +@all" % PW}})
    with p.raw() as c:
        assert c.call_raw("AUTH", "old", PW) == WRONGPASS
        assert c.call_raw("HELLO", "2", "AUTH", "old", PW) == WRONGPASS
        assert c.call_raw("GET", "x") == b"-NOAUTH Authentication required.\r\n"
        assert c.call_raw("AUTH", "web", PW) == OK
        assert c.call_raw("PING") == PONG
    e = p.wait_event("login", result="fail", user="old")
    assert e.get("reason") == "expired", e
    assert len(p.events("login", result="fail", user="old", reason="expired")) == 2


def test_expiry_closes_the_live_session(respguard):
    expires = calendar.timegm(time.gmtime()) + 4
    p = respguard(users={"temp": {"acl": "on >%s ~* &* +@all" % PW, "expires": rfc3339(expires)},
                         "web": {"acl": "on >%s ~* &* +@all" % PW}})
    c = p.login("temp", PW)
    other = p.login("web", PW)
    try:
        assert time.time() < expires, "the test machine was too slow to log in before the expiry"
        assert c.call_raw("ECHO", "alive") == b"$5\r\nalive\r\n"
        # the session is closed at expiry, without a request from the client
        assert c.wait_closed(timeout=10)
        assert c.buf == b"", "unexpected bytes before the close: %r" % c.buf
        # other users' sessions stay
        assert other.call_raw("PING") == PONG
    finally:
        c.close()
        other.close()
    e = p.wait_event("refused", user="temp")
    assert e.get("reason") == "expired", e
    with p.raw() as c2:
        assert c2.call_raw("AUTH", "temp", PW) == WRONGPASS
    e = p.wait_event("login", result="fail", user="temp")
    assert e.get("reason") == "expired", e


# ---------------------------------------------------------------------------
# allow_from
# ---------------------------------------------------------------------------

def test_user_allow_from(respguard):
    p = respguard(users={
        "far": {"acl": "on >%s ~* &* +@all" % PW, "allow_from": ["10.0.0.0/8"]},
        "near": {"acl": "on >%s ~* &* +@all" % PW, "allow_from": ["10.0.0.0/8", "127.0.0.1/32"]},
        "v6only": {"acl": "on >%s ~* &* +@all" % PW, "allow_from": ["::1/128"]},
    })
    with p.raw() as c:
        assert c.call_raw("AUTH", "far", PW) == WRONGPASS
        assert c.call_raw("HELLO", "3", "AUTH", "far", PW) == WRONGPASS
        assert c.call_raw("AUTH", "v6only", PW) == WRONGPASS
        assert c.call_raw("PING") == b"-NOAUTH Authentication required.\r\n"
        assert c.call_raw("AUTH", "near", PW) == OK
        assert c.call_raw("PING") == PONG
        # a failed re-login keeps the current user (as in Redis)
        assert c.call_raw("AUTH", "far", PW) == WRONGPASS
        assert c.call_raw("PING") == PONG
    fails = p.events("login", result="fail", user="far")
    assert len(fails) == 3 and all(e.get("reason") == "source not allowed" for e in fails), fails
    assert p.events("login", result="fail", user="v6only")[0].get("reason") == "source not allowed"
    assert p.events("login", result="ok", user="near")


def test_listener_allow_from_closes_without_serving(respguard):
    open_port, closed_port = free_port(), free_port()
    p = respguard(users={"web": {"acl": "on >%s ~* &* +@all" % PW}},
                  overrides={"listeners": [{"bind": "127.0.0.1:%d" % open_port},
                                           {"bind": "127.0.0.1:%d" % closed_port,
                                            "allow_from": ["10.0.0.0/8"]}]})
    assert p.port == closed_port
    with RawConn(closed_port) as c:
        try:
            c.send(b"*3\r\n$4\r\nAUTH\r\n$3\r\nweb\r\n$%d\r\n%s\r\n" % (len(PW), PW.encode()))
        except OSError:
            pass  # already closed
        assert c.wait_closed(timeout=5)
        assert c.buf == b"", "a refused source was answered: %r" % c.buf
    e = p.wait_event("refused_source")
    assert e.get("bind", "").endswith(":%d" % closed_port), e
    assert not p.events("login"), "a refused source reached login: %r" % p.events("login")
    with RawConn(open_port) as c:
        assert c.call_raw("AUTH", "web", PW) == OK
        assert c.call_raw("PING") == PONG


def _ipv6_loopback_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("::1", 0))
        return [s.getsockname()[1] for s in socks]
    except OSError as e:
        pytest.skip("cannot bind [::1] on this machine: %s" % e)
    finally:
        for s in socks:
            s.close()


def test_ipv6_listener_and_allow_from(respguard):
    p6, p6_closed = _ipv6_loopback_ports(2)
    p4 = free_port()
    acl = "on >%s ~* &* +@all" % PW
    p = respguard(users={"v6": {"acl": acl, "allow_from": ["::1/128"]},
                         "v4": {"acl": acl, "allow_from": ["127.0.0.0/8"]},
                         "ula": {"acl": acl, "allow_from": ["fd00::/8"]}},
                  overrides={"listeners": [{"bind": "[::1]:%d" % p6},
                                           {"bind": "[::1]:%d" % p6_closed, "allow_from": ["fd00::/8"]},
                                           {"bind": "127.0.0.1:%d" % p4}]})
    assert p.port == p4
    wait_until(lambda: p.events("ready"), 5, what="respguard ready")
    with RawConn(p6, host="::1") as c:
        assert c.call_raw("AUTH", "v4", PW) == WRONGPASS
        assert c.call_raw("AUTH", "ula", PW) == WRONGPASS
        assert c.call_raw("AUTH", "v6", PW) == OK
        assert c.call_raw("PING") == PONG
        peer6 = c.sock.getsockname()[1]
    with RawConn(p4) as c:
        assert c.call_raw("AUTH", "v6", PW) == WRONGPASS
        assert c.call_raw("AUTH", "v4", PW) == OK
        assert c.call_raw("PING") == PONG
    with RawConn(p6_closed, host="::1") as c:
        try:
            c.send(b"PING\r\n")
        except OSError:
            pass
        assert c.wait_closed(timeout=5)
        assert c.buf == b""
    ok = p.wait_event("login", result="ok", user="v6")
    assert "::1" in ok.get("peer", "") and str(peer6) in ok.get("peer", ""), ok
    fail = p.events("login", result="fail", user="v4")
    assert fail and fail[0].get("reason") == "source not allowed", fail
    p.wait_event("refused_source")


# ---------------------------------------------------------------------------
# dryrun
# ---------------------------------------------------------------------------

def test_dryrun(tmp_path, upstream):
    cfg = {
        "listeners": [{"bind": "127.0.0.1:%d" % free_port()}],
        "upstream": {"url": "rediss://default:unused-pw@localhost:%d" % upstream.tls_port},
        "users": {"tenant": {"acl": TENANT}, "admin": {"acl": "on >%s ~* &* +@all" % PW}},
    }
    path = str(tmp_path / "dry.yaml")
    with open(path, "w") as f:
        f.write(to_yaml(cfg) + "\n")
    ref = raw_tls(upstream, "default", upstream.password)

    def dry(user, *args):
        r = run(["dryrun", "-c", path, user] + list(args))
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    def redis_says(*args):
        return ref.call_raw(*args)[1:-2].decode() + "\n"

    try:
        cases = [
            (("tenant", "GET", "tenant-a:x"), 0, "OK\n"),
            (("tenant", "set", "tenant-a:x", "v"), 0, "OK\n"),
            (("tenant", "SCAN", "0"), 0, "OK (respguard appends MATCH tenant-a:*)\n"),
            (("admin", "FLUSHALL"), 1, "NOPERM this user has no permissions to run the 'flushall' command\n"),
            (("admin", "CONFIG", "SET", "maxmemory", "1"), 1,
             "NOPERM this user has no permissions to run the 'config|set' command\n"),
            (("tenant", "GET", "other:x"), 1,
             "NOPERM this user has no permissions to access one of the keys used as arguments\n"),
            (("tenant", "MSET", "tenant-a:k", "v", "other:k", "v"), 1,
             "NOPERM this user has no permissions to access one of the keys used as arguments\n"),
            (("tenant", "PUBLISH", "other", "x"), 1,
             "NOPERM this user has no permissions to access one of the channels used as arguments\n"),
            (("tenant", "EVAL", "return 1", "0"), 1, "NOPERM this user has no permissions to run the 'eval' command\n"),
            # syntax errors: Redis's own texts (checked against the live server below)
            (("tenant", "FOO", "bar"), 1, redis_says("FOO", "bar")),
            (("tenant", "CONFIG", "NOSUCH"), 1, redis_says("CONFIG", "NOSUCH")),
            (("tenant", "GET"), 1, redis_says("GET")),
        ]
    finally:
        ref.close()
    assert cases[-3][2] == "ERR unknown command 'FOO', with args beginning with: 'bar' \n"
    assert cases[-1][2] == "ERR wrong number of arguments for 'get' command\n"
    for args, code, out in cases:
        rc, stdout, stderr = dry(*args)
        assert (rc, stdout) == (code, out), "dryrun %r: exit %d, stdout %r, stderr %r" % (args, rc, stdout, stderr)
    rc, stdout, stderr = dry("nobody", "GET", "x")
    assert rc == 2, (rc, stdout, stderr)
    assert "nobody" in stderr and stdout == "", (stdout, stderr)


def test_dryrun_matches_the_running_proxy(respguard, upstream):
    p = respguard(users={"tenant": {"acl": TENANT}})
    cases = [("GET", "other:x"), ("FLUSHALL",), ("SELECT", "1"), ("PUBLISH", "other", "m"),
             ("RENAME", "tenant-a:x", "other:y"), ("RANDOMKEY",), ("PSUBSCRIBE", "*")]
    with p.login("tenant", PW) as c:
        for args in cases:
            live = c.call_raw(*args)
            r = run(["dryrun", "-c", p.config_path, "tenant"] + list(args), env={"UPSTREAM_PW": upstream.password})
            assert r.returncode == 1, (args, r.returncode, r.stderr)
            assert live == b"-" + r.stdout.rstrip(b"\n") + b"\r\n", (args, live, r.stdout)


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------

def _check_config(tmp_path, name, users_yaml, guard_yaml=""):
    text = ("listeners:\n  - bind: 127.0.0.1:%d\n"
            "upstream:\n  url: rediss://default:unused-pw@localhost:6390\n"
            "users:\n%s%s" % (free_port(), users_yaml, guard_yaml))
    path = str(tmp_path / name)
    with open(path, "w") as f:
        f.write(text)
    return path, text


def _line_col(text, needle, occurrence=1):
    idx = -1
    for _ in range(occurrence):
        idx = text.index(needle, idx + 1)
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, col


def test_check_refuses_selectors_with_position(tmp_path):
    users = ('  ok:\n    acl: "on >pw ~* +@all"\n'
             '  sel:\n    acl: "on >pw ~a:* (~x +get) +@all"\n')
    path, text = _check_config(tmp_path, "sel.yaml", users)
    r = run(["check", "-c", path])
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err)
    line, col = _line_col(text, "(~x")
    want = "%s:%d:%d: users.sel.acl: " % (path, line, col)
    assert want in err, "expected %r in:\n%s" % (want, err)
    assert "(~x" in err and "elector" in err, err

    users = '  sel2:\n    acl: on >pw +@all (+set ~y)\n'
    path, text = _check_config(tmp_path, "sel2.yaml", users)
    r = run(["check", "-c", path])
    line, col = _line_col(text, "(+set")
    assert r.returncode == 1
    assert "%s:%d:%d: users.sel2.acl: " % (path, line, col) in r.stderr.decode(), r.stderr.decode()


def test_check_guard_names(tmp_path):
    users = '  web:\n    acl: "on >pw ~* +@all"\n'
    path, _ = _check_config(tmp_path, "g_ok.yaml", users,
                            "guard:\n  never_by_category: [flushall, client|kill, CONFIG]\n")
    r = run(["check", "-c", path])
    assert r.returncode == 0, r.stderr.decode()
    assert "never_by_category: flushall client|kill config" in r.stdout.decode(), r.stdout.decode()
    for bad in ("nosuchcommand", "config|nosuch"):
        path, _ = _check_config(tmp_path, "g_bad.yaml", users,
                                "guard:\n  never_by_category: [flushall, %s]\n" % bad)
        r = run(["check", "-c", path])
        err = r.stderr.decode()
        assert r.returncode == 1, (bad, r.returncode, r.stdout, err)
        assert err.startswith(path) and "guard.never_by_category" in err and bad in err, err


# ---------------------------------------------------------------------------
# the guard
# ---------------------------------------------------------------------------

def test_guard_against_plus_all(respguard, redis_server_factory):
    srv = redis_server_factory()
    d = srv.client()
    wait_until(lambda: pings(d), 10, what="dedicated redis-server")
    d.set("guarded:k", "v")
    sha = d.script_load("return 42")
    victim = srv.client()
    victim_id = victim.client_id()
    acl = "on >%s ~* &* +@all" % PW
    p = respguard(upstream_server=srv, users={
        "all": {"acl": acl},
        "allcmds": {"acl": "on >%s allkeys allchannels allcommands +@dangerous" % PW},
        "ops": {"acl": acl + " +flushdb"},
        "ops_undone": {"acl": acl + " +flushdb -@dangerous"},
    })
    d.config_resetstat()
    for user in ("all", "allcmds"):
        with p.login(user, PW) as c:
            for args, name in [(("FLUSHALL",), "flushall"), (("FLUSHDB",), "flushdb"),
                               (("CONFIG", "SET", "maxmemory", "1"), "config|set"),
                               (("CLIENT", "KILL", "ID", str(victim_id)), "client|kill"),
                               (("SCRIPT", "FLUSH"), "script|flush"),
                               (("fLuShAlL", "SYNC"), "flushall")]:
                assert c.call_raw(*args) == cmd_err(name), (user, args)
                assert c.call_raw("PING") == PONG
            # not guarded: +@all grants the rest
            assert c.call_raw("EVALSHA", sha, "0") == b":42\r\n"
            assert c.call_raw("GET", "guarded:k") == b"$1\r\nv\r\n"
    assert victim.ping() is True
    assert d.config_get("maxmemory") == {"maxmemory": "0"}
    assert d.script_exists(sha) == [True]
    assert d.get("guarded:k") == b"v"
    stats = d.info("commandstats")
    for n in ("flushall", "flushdb", "config|set", "client|kill", "script|flush"):
        assert "cmdstat_" + n not in stats, (n, stats.get("cmdstat_" + n))

    with p.login("ops_undone", PW) as c:
        assert c.call_raw("FLUSHDB") == cmd_err("flushdb")
    assert d.get("guarded:k") == b"v"
    with p.login("ops", PW) as c:
        assert c.call_raw("FLUSHALL") == cmd_err("flushall")
        assert d.get("guarded:k") == b"v"
        assert c.call_raw("FLUSHDB") == OK
    assert d.exists("guarded:k") == 0
    victim.close()
    d.close()
