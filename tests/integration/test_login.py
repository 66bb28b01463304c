"""Login at the proxy: AUTH, HELLO ... AUTH, limits before login, login log lines."""

import time

import pytest
import redis

from helpers import HASHED_HEX, OFF_USER_PASSWORD, PASSWORDS, POOL_MODE, connected_clients, unique, wait_until
from resp_util import encode

NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
HELLO_NOAUTH = (b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
                b"HELLO AUTH <user> <pass> option can be used to authenticate the client and select "
                b"the RESP protocol version at the same time\r\n")


def test_commands_before_login_get_noauth(proxy):
    with proxy.raw() as c:
        for cmd in (("GET", "x"), ("PING",), ("SET", "a", "b"), ("FLUSHALL",), ("SUBSCRIBE", "c")):
            assert c.call_raw(*cmd) == NOAUTH, cmd
        # the connection is still there and a login works afterwards
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("PING") == b"+PONG\r\n"


def test_auth_password_only_logs_in_as_default(proxy):
    k = unique()
    with proxy.raw() as c:
        assert c.call_raw("AUTH", PASSWORDS["default"]) == b"+OK\r\n"
        assert c.call_raw("SET", k, "v") == b"+OK\r\n"
        assert c.call_raw("GET", k) == b"$1\r\nv\r\n"
    # redis-py with only a password sends AUTH <pass>
    r = proxy.client(user=None, password=PASSWORDS["default"])
    assert r.get(k) == b"v"
    r.close()


def test_auth_user_password(proxy):
    with proxy.raw() as c:
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("PING") == b"+PONG\r\n"
        assert c.call_raw("ECHO", "hello") == b"$5\r\nhello\r\n"
    r = proxy.client("web")
    assert r.ping() is True
    r.close()


def test_auth_is_case_insensitive_command_but_exact_password(proxy):
    with proxy.raw() as c:
        assert c.call_raw("auth", "web", PASSWORDS["web"].upper()) == WRONGPASS
        assert c.call_raw("aUtH", "web", PASSWORDS["web"]) == b"+OK\r\n"


def test_hello2_auth_setname(proxy):
    with proxy.raw() as c:
        c.send_cmd("HELLO", "2", "AUTH", "web", PASSWORDS["web"], "SETNAME", "conn-a")
        raw, reply = c.read_reply_raw()
        assert raw.startswith(b"*14\r\n"), raw
        fields = dict(zip(reply[0::2], reply[1::2]))
        assert fields[b"server"] == b"redis"
        assert fields[b"proto"] == 2
        assert fields[b"version"] == b"7.0.15"
        assert fields[b"mode"] == b"standalone"
        assert c.call_raw("CLIENT", "GETNAME") == b"$6\r\nconn-a\r\n"
        assert c.call_raw("PING") == b"+PONG\r\n"


def test_hello3_auth_switches_to_resp3(proxy):
    k = unique("h")
    with proxy.raw() as c:
        c.send_cmd("HELLO", "3", "AUTH", "web", PASSWORDS["web"])
        raw, reply = c.read_reply_raw()
        assert raw.startswith(b"%7\r\n"), raw
        assert reply[b"server"] == b"redis"
        assert reply[b"proto"] == 3
        assert reply[b"version"] == b"7.0.15"
        if POOL_MODE == "session":
            # the map is the upstream's: its id is this session's upstream connection
            assert c.call_raw("CLIENT", "ID") == b":%d\r\n" % reply[b"id"]
        else:
            # multiplex: CLIENT ID is respguard's own id of this client connection
            assert c.call_raw("CLIENT", "ID").startswith(b":")
        assert c.call_raw("HSET", k, "f", "v") == b":1\r\n"
        assert c.call_raw("HGETALL", k) == b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
        assert c.call_raw("GET", unique()) == b"_\r\n"


def test_auth_hashed_user(proxy):
    with proxy.raw() as c:
        # the hash itself is not the password
        assert c.call_raw("AUTH", "hashed", HASHED_HEX) == WRONGPASS
        assert c.call_raw("AUTH", "hashed", "#" + HASHED_HEX) == WRONGPASS
        assert c.call_raw("AUTH", "hashed", PASSWORDS["hashed"]) == b"+OK\r\n"
        assert c.call_raw("PING") == b"+PONG\r\n"


def test_off_user_is_refused(proxy):
    with proxy.raw() as c:
        assert c.call_raw("AUTH", "off_user", OFF_USER_PASSWORD) == WRONGPASS
        assert c.call_raw("HELLO", "3", "AUTH", "off_user", OFF_USER_PASSWORD) == WRONGPASS
        assert c.call_raw("PING") == NOAUTH


def test_wrong_password_and_unknown_user(proxy):
    with proxy.raw() as c:
        assert c.call_raw("AUTH", "web", "nope") == WRONGPASS
        assert c.call_raw("AUTH", "nobody", "nope") == WRONGPASS
        assert c.call_raw("AUTH", "nope") == WRONGPASS
        assert c.call_raw("HELLO", "2", "AUTH", "web", "nope") == WRONGPASS
        assert c.call_raw("HELLO", "3", "AUTH", "web", "nope") == WRONGPASS
        assert c.call_raw("GET", "x") == NOAUTH
    with pytest.raises((redis.exceptions.ResponseError, redis.exceptions.AuthenticationError),
                       match="WRONGPASS"):
        proxy.client("web", password="nope").ping()


def test_hello_without_auth_before_login(proxy):
    with proxy.raw() as c:
        assert c.call_raw("HELLO", "3") == HELLO_NOAUTH
        assert c.call_raw("HELLO", "2") == HELLO_NOAUTH
        assert c.call_raw("HELLO", "3", "SETNAME", "x") == HELLO_NOAUTH
        assert c.call_raw("PING") == NOAUTH


def test_hello_bad_protocol_versions(proxy):
    with proxy.raw() as c:
        assert c.call_raw("HELLO", "4") == b"-NOPROTO unsupported protocol version\r\n"
        assert c.call_raw("HELLO", "1", "AUTH", "web", PASSWORDS["web"]) == \
            b"-NOPROTO unsupported protocol version\r\n"
        assert c.call_raw("HELLO", "x") == \
            b"-ERR Protocol version is not an integer or out of range\r\n"
        assert c.call_raw("PING") == NOAUTH  # none of these logged in
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("HELLO", "4") == b"-NOPROTO unsupported protocol version\r\n"
        assert c.call_raw("PING") == b"+PONG\r\n"


def test_prelogin_multibulk_limit(proxy):
    with proxy.raw() as c:
        # 10 arguments are fine before login (answered NOAUTH) ...
        assert c.call_raw("DEL", *["a"] * 9) == NOAUTH
        # ... 11 are a protocol error and the connection is closed
        c.send(b"*11\r\n")
        assert c.read_raw() == b"-ERR Protocol error: unauthenticated multibulk length\r\n"
        assert c.wait_closed()
        assert c.buf == b""


def test_prelogin_bulk_limit(proxy):
    with proxy.raw() as c:
        # 16384 bytes is still allowed
        assert c.call_raw("AUTH", "web", "p" * 16384) == WRONGPASS
        c.send(b"*3\r\n$4\r\nAUTH\r\n$3\r\nweb\r\n$16385\r\n")
        assert c.read_raw() == b"-ERR Protocol error: unauthenticated bulk length\r\n"
        assert c.wait_closed()
        assert c.buf == b""


def test_prelogin_limits_do_not_apply_after_login(proxy):
    k = unique()
    big = "x" * 20000
    with proxy.login("web") as c:
        args = []
        for i in range(8):
            args += ["%s:%d" % (k, i), big]
        assert c.call_raw("MSET", *args) == b"+OK\r\n"
        assert c.call_raw("STRLEN", "%s:7" % k) == b":20000\r\n"


@pytest.mark.proxy_only
def test_login_timeout_closes_idle_unauthenticated_connection(respguard):
    p = respguard(limits={"login_timeout": "1s"})
    logged_in = p.login("web")
    idle = p.raw(timeout=10)
    half = p.raw(timeout=10)
    assert half.call_raw("AUTH", "web", "wrong") == WRONGPASS
    assert idle.wait_closed(timeout=8)
    assert half.wait_closed(timeout=8)
    assert idle.buf == b"" or idle.buf.startswith(b"-")
    # an authenticated session is not subject to the login timeout
    assert logged_in.call_raw("PING") == b"+PONG\r\n"
    for c in (logged_in, idle, half):
        c.close()


def test_failed_auth_after_login_keeps_session(proxy):
    k = unique()
    with proxy.login("web") as c:
        assert c.call_raw("SET", k, "v1") == b"+OK\r\n"
        assert c.call_raw("AUTH", "web", "bad") == WRONGPASS
        assert c.call_raw("AUTH", "nobody", "bad") == WRONGPASS
        assert c.call_raw("HELLO", "2", "AUTH", "web", "bad") == WRONGPASS
        assert c.call_raw("GET", k) == b"$2\r\nv1\r\n"
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("GET", k) == b"$2\r\nv1\r\n"


def test_pipelined_auth_and_commands(proxy):
    """AUTH and the first commands arrive in one packet, as with many clients."""
    k = unique()
    with proxy.raw() as c:
        c.send(encode("GET", k) + encode("AUTH", "web", PASSWORDS["web"]) + encode("SET", k, "1")
               + encode("INCR", k) + encode("GET", k))
        assert [c.read_raw() for _ in range(5)] == [
            NOAUTH, b"+OK\r\n", b"+OK\r\n", b":2\r\n", b"$1\r\n2\r\n"]


@pytest.mark.proxy_only
def test_login_events_logged_without_password(proxy):
    ok = proxy.login("web")
    ok_port = ok.sock.getsockname()[1]
    bad = proxy.raw()
    bad_port = bad.sock.getsockname()[1]
    assert bad.call_raw("AUTH", "web", "wrong-Pass-1234") == WRONGPASS
    assert bad.call_raw("AUTH", "nosuchuser", "wrong-Pass-5678") == WRONGPASS

    def peer_is(port):
        return lambda e: str(port) in str(e.get("peer", "")) and "127.0.0.1" in str(e.get("peer"))

    e = proxy.wait_event("login", peer_is(ok_port), result="ok")
    assert e["user"] == "web"
    e = proxy.wait_event("login", peer_is(bad_port), result="fail", user="web")
    proxy.wait_event("login", peer_is(bad_port), result="fail", user="nosuchuser")
    ok.close()
    bad.close()
    text = proxy.stderr_text()
    for secret in ("wrong-Pass-1234", "wrong-Pass-5678", PASSWORDS["web"]):
        assert secret not in text


@pytest.mark.proxy_only
def test_no_secret_in_log_after_every_kind_of_login(proxy):
    attempts = [("AUTH", PASSWORDS["default"]), ("AUTH", "web", PASSWORDS["web"]),
                ("AUTH", "ops", PASSWORDS["ops"]), ("AUTH", "hashed", PASSWORDS["hashed"]),
                ("AUTH", "off_user", OFF_USER_PASSWORD),
                ("HELLO", "3", "AUTH", "web", PASSWORDS["web"], "SETNAME", "n"),
                ("HELLO", "2", "AUTH", "web", "Typo-" + PASSWORDS["web"]),
                ("AUTH", "web", PASSWORDS["ops"]), ("AUTH", PASSWORDS["web"])]
    for a in attempts:
        with proxy.raw() as c:
            c.call_raw(*a)
            c.call_raw("PING")
    wait_until(lambda: len(proxy.events("login")) >= len(attempts), 5, what="login events")
    text = proxy.stderr_text()
    for secret in list(PASSWORDS.values()) + [OFF_USER_PASSWORD, proxy.upstream.password, "Typo-"]:
        assert secret not in text, secret


@pytest.mark.proxy_only
def test_log_lines_are_json_objects(proxy):
    with proxy.login("web") as c:
        assert c.call_raw("PING") == b"+PONG\r\n"
    proxy.wait_event("login", result="ok")
    proxy.stop()
    logs = proxy.logs()
    assert logs, "no log output"
    for e in logs:
        assert "_raw" not in e, "not a JSON object: %r" % e.get("_raw")
        for key in ("ts", "level", "event"):
            assert key in e, (key, e)
    events = [e["event"] for e in logs]
    assert "start" in events
    listening = [e for e in logs if e["event"] == "listening"]
    assert any(str(proxy.port) in str(e.get("bind")) for e in listening), listening
    assert all(e.get("tls") in (False, "false", 0) for e in listening), listening
    assert events[-1] == "shutdown" or "shutdown" in events


@pytest.mark.proxy_only
def test_no_upstream_connection_before_login(respguard, direct):
    # The pool keeps min_idle connections ready; unauthenticated clients add none.
    proxy = respguard(overrides={"upstream": {"pool": {"min_idle": 2}}})
    with proxy.login() as c:  # the pool is up once a login was answered
        assert c.call_raw("PING") == b"+PONG\r\n"
    time.sleep(0.3)
    base = connected_clients(direct)
    conns = []
    try:
        for _ in range(5):
            c = proxy.raw()
            assert c.call_raw("PING") == NOAUTH
            assert c.call_raw("AUTH", "web", "wrong") == WRONGPASS
            conns.append(c)
        time.sleep(0.3)
        assert connected_clients(direct) <= base, \
            "unauthenticated clients opened upstream connections"
        # control: after login each session holds a connection of its own (session mode), or
        # they share the warm ones (multiplex)
        for c in conns:
            assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
            assert c.call_raw("PING") == b"+PONG\r\n"
        if POOL_MODE == "session":
            wait_until(lambda: connected_clients(direct) >= base + 5, 5,
                       what="upstream connections for logged-in sessions")
        else:
            time.sleep(0.3)
            assert connected_clients(direct) <= base
    finally:
        for c in conns:
            c.close()


def test_redis_py_default_user_and_errors(proxy):
    with pytest.raises((redis.exceptions.ResponseError, redis.exceptions.AuthenticationError),
                       match="WRONGPASS"):
        proxy.client(user=None, password="not-it").ping()
    r = proxy.client(user=None, password=PASSWORDS["default"])
    assert r.ping()
    r.close()

