"""A logged-in session: pipelines, MULTI/WATCH, blocking commands, big values, RESP3,
RESET/QUIT and the connection-setup commands clients send."""

import os
import ssl

import pytest
import redis

from helpers import PASSWORDS, blocked_clients, unique, wait_until
from resp_util import RawConn, bulk, encode

NOAUTH = b"-NOAUTH Authentication required.\r\n"
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"


def noperm(name):
    return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % name.encode()



def direct_raw(upstream):
    ctx = ssl.create_default_context(cafile=upstream.certs.path("ca.crt"))
    c = RawConn(upstream.tls_port, host="127.0.0.1", tls_context=ctx, server_hostname="localhost")
    if upstream.username:
        assert c.call_raw("AUTH", upstream.username, upstream.password) == b"+OK\r\n"
    else:
        assert c.call_raw("AUTH", upstream.password) == b"+OK\r\n"
    return c


# --------------------------------------------------------------------------- pipelines

def _pipeline_1000(prefix, with_refusals):
    reqs, want = [], []
    counter = prefix + ":ctr"
    n = 0
    for i in range(1000):
        if with_refusals and i % 10 == 3:
            reqs.append(encode("FLUSHALL"))
            want.append(noperm("flushall"))
        elif with_refusals and i % 10 == 7:
            reqs.append(encode("CONFIG", "GET", "maxmemory"))
            want.append(noperm("config|get"))
        elif i % 3 == 0:
            reqs.append(encode("SET", "%s:%d" % (prefix, i), "v%d" % i))
            want.append(b"+OK\r\n")
        elif i % 3 == 1:
            n += 1
            reqs.append(encode("INCR", counter))
            want.append(b":%d\r\n" % n)
        else:
            reqs.append(encode("ECHO", "e%d" % i))
            want.append(bulk("e%d" % i))
    return b"".join(reqs), want


@pytest.mark.proxy_only
def test_pipeline_1000_with_refusals_in_order(proxy, direct):
    prefix = unique("pl")
    data, want = _pipeline_1000(prefix, True)
    with proxy.login("web", timeout=15) as c:
        c.send(data)
        got = [c.read_raw() for _ in range(len(want))]
        assert c.call_raw("PING") == b"+PONG\r\n"
    bad = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert not bad, "first mismatches (index, expected, got): %r" % bad[:5]
    assert direct.get(prefix + ":999") == b"v999"


def test_pipeline_1000_in_order(proxy, direct):
    prefix = unique("pl")
    data, want = _pipeline_1000(prefix, False)
    with proxy.login("web", timeout=15) as c:
        c.send(data)
        got = [c.read_raw() for _ in range(len(want))]
    assert got == want
    assert direct.get(prefix + ":0") == b"v0"


@pytest.mark.proxy_only
def test_redis_py_pipeline_with_refusals(proxy):
    r = proxy.client("web")
    prefix = unique("rp")
    pipe = r.pipeline(transaction=False)
    expected = []
    for i in range(1000):
        if i % 25 == 0:
            pipe.flushall()
            # redis-py turns "-NOPERM msg" into NoPermissionError("msg")
            expected.append("this user has no permissions to run the 'flushall' command")
        else:
            pipe.set("%s:%d" % (prefix, i), i)
            expected.append(True)
    results = pipe.execute(raise_on_error=False)
    assert len(results) == 1000
    for i, (res, exp) in enumerate(zip(results, expected)):
        if exp is True:
            assert res is True, (i, res)
        else:
            assert isinstance(res, redis.exceptions.NoPermissionError), (i, res)
            assert str(res) == exp, (i, str(res))
    assert r.get("%s:999" % prefix) == b"999"
    r.close()


# --------------------------------------------------------------------------- MULTI / WATCH

@pytest.mark.proxy_only
def test_multi_with_refused_command_aborts(proxy, direct):
    k1, k2 = unique(), unique()
    with proxy.login("web") as c:
        assert c.call_raw("MULTI") == b"+OK\r\n"
        assert c.call_raw("SET", k1, "1") == b"+QUEUED\r\n"
        assert c.call_raw("FLUSHALL") == noperm("flushall")
        assert c.call_raw("SET", k2, "2") == b"+QUEUED\r\n"
        assert c.call_raw("EXEC") == EXECABORT
        assert direct.get(k1) is None
        assert direct.get(k2) is None
        # the session goes on, and the next transaction works
        assert c.call_raw("PING") == b"+PONG\r\n"
        assert c.call_raw("EXEC") == b"-ERR EXEC without MULTI\r\n"
        assert c.call_raw("MULTI") == b"+OK\r\n"
        assert c.call_raw("SET", k1, "3") == b"+QUEUED\r\n"
        assert c.call_raw("INCR", k1) == b"+QUEUED\r\n"
        assert c.call_raw("EXEC") == b"*2\r\n+OK\r\n:4\r\n"
    assert direct.get(k1) == b"4"


@pytest.mark.proxy_only
def test_multi_refused_pipelined(proxy, direct):
    """The same, all in one write, as redis-py's transaction pipeline sends it."""
    k = unique()
    with proxy.login("web") as c:
        c.send(encode("MULTI") + encode("SET", k, "1") + encode("CONFIG", "GET", "x")
               + encode("EXEC") + encode("GET", k))
        assert [c.read_raw() for _ in range(5)] == [
            b"+OK\r\n", b"+QUEUED\r\n", noperm("config|get"), EXECABORT, b"$-1\r\n"]
    assert direct.get(k) is None
    r = proxy.client("web")
    pipe = r.pipeline(transaction=True)
    pipe.set(k, "1")
    pipe.flushall()
    with pytest.raises(redis.exceptions.ResponseError):
        pipe.execute()
    assert direct.get(k) is None
    r.close()


def test_multi_errors_are_redis_own(proxy, direct):
    k = unique()
    with proxy.login("web") as c:
        assert c.call_raw("EXEC") == b"-ERR EXEC without MULTI\r\n"
        assert c.call_raw("DISCARD") == b"-ERR DISCARD without MULTI\r\n"
        assert c.call_raw("MULTI") == b"+OK\r\n"
        assert c.call_raw("MULTI") == b"-ERR MULTI calls can not be nested\r\n"
        assert c.call_raw("WATCH", k) == b"-ERR WATCH inside MULTI is not allowed\r\n"
        assert c.call_raw("SET", k) == b"-ERR wrong number of arguments for 'set' command\r\n"
        assert c.call_raw("SET", k, "1") == b"+QUEUED\r\n"
        assert c.call_raw("EXEC") == EXECABORT
        assert direct.get(k) is None
        assert c.call_raw("MULTI") == b"+OK\r\n"
        assert c.call_raw("SET", k, "1") == b"+QUEUED\r\n"
        assert c.call_raw("DISCARD") == b"+OK\r\n"
        assert direct.get(k) is None


def test_watch_abort_resp2(proxy, direct):
    k = unique()
    direct.set(k, "orig")
    with proxy.login("web") as c:
        assert c.call_raw("WATCH", k) == b"+OK\r\n"
        direct.set(k, "theirs")
        assert c.call_raw("MULTI") == b"+OK\r\n"
        assert c.call_raw("SET", k, "mine") == b"+QUEUED\r\n"
        assert c.call_raw("EXEC") == b"*-1\r\n"
    assert direct.get(k) == b"theirs"


def test_watch_abort_resp3(proxy, direct):
    k = unique()
    with proxy.login("web") as c:
        c.send_cmd("HELLO", "3")
        raw, hello = c.read_reply_raw()
        assert hello[b"proto"] == 3
        assert c.call_raw("WATCH", k) == b"+OK\r\n"
        direct.set(k, "theirs")
        assert c.call_raw("MULTI") == b"+OK\r\n"
        assert c.call_raw("SET", k, "mine") == b"+QUEUED\r\n"
        assert c.call_raw("EXEC") == b"_\r\n"
    assert direct.get(k) == b"theirs"


def test_watch_without_conflict_commits(proxy, direct):
    k = unique()
    r = proxy.client("web")
    r.set(k, 1)

    def incr(pipe):
        v = int(pipe.get(k))
        pipe.multi()
        pipe.set(k, v + 1)

    r.transaction(incr, k)
    assert direct.get(k) == b"2"
    r.close()


# --------------------------------------------------------------------------- blocking

def test_blpop_released_by_another_client(proxy, direct):
    k = unique("q")
    with proxy.login("web", timeout=15) as a, proxy.login("web") as b:
        a.send_cmd("BLPOP", k, "10")
        wait_until(lambda: blocked_clients(direct) >= 1, 5, what="BLPOP blocked on the upstream")
        assert b.call_raw("RPUSH", k, "hello") == b":1\r\n"
        assert a.read_raw() == b"*2\r\n" + bulk(k) + bulk("hello")
        assert a.call_raw("PING") == b"+PONG\r\n"


def test_blpop_timeout_returns_nil(proxy):
    with proxy.login("web") as c:
        assert c.call_raw("BLPOP", unique("q"), "0.2") == b"*-1\r\n"


# --------------------------------------------------------------------------- values

def test_1mib_and_binary_values(proxy, direct):
    r = proxy.client("web")
    k = unique("big")
    v = os.urandom(1 << 20)
    assert r.set(k, v)
    assert r.get(k) == v
    assert direct.get(k) == v
    kb = unique("bin").encode() + bytes(range(256))
    vb = bytes(range(256)) * 17
    assert r.set(kb, vb)
    assert r.get(kb) == vb
    assert direct.get(kb) == vb
    # a hash with binary fields, a list of every single byte
    hk = unique("hb")
    r.hset(hk, mapping={bytes([i]): bytes([255 - i]) * i for i in range(256)})
    assert r.hgetall(hk) == {bytes([i]): bytes([255 - i]) * i for i in range(256)}
    lk = unique("lb")
    r.rpush(lk, *[bytes([i]) for i in range(256)])
    assert r.lrange(lk, 0, -1) == [bytes([i]) for i in range(256)]
    r.close()


def test_9mib_value_round_trip(proxy, direct):
    r = proxy.client("web", socket_timeout=30)
    k = unique("huge")
    v = os.urandom(9 << 20)
    assert r.set(k, v)
    assert r.strlen(k) == len(v)
    assert r.get(k) == v
    assert direct.get(k) == v
    r.close()


def test_many_1mib_replies_pipelined(proxy, direct):
    k = unique("big")
    v = os.urandom(1 << 20)
    direct.set(k, v)
    with proxy.login("web", timeout=20) as c:
        c.send(encode("GET", k) * 12)
        for _ in range(12):
            assert c.read_raw() == bulk(v)


# --------------------------------------------------------------------------- RESP3

def test_hello3_then_resp3_replies_pass_through(proxy, direct):
    h, s, z = unique("h"), unique("s"), unique("z")
    with proxy.login("web") as c:
        c.send_cmd("HELLO", "3")
        raw, reply = c.read_reply_raw()
        assert raw.startswith(b"%7\r\n")
        assert reply[b"proto"] == 3 and reply[b"server"] == b"redis"
        assert b" resp=3" in c.call("CLIENT", "INFO"), "the upstream connection is not in RESP3"
        assert c.call_raw("HSET", h, "f1", "a", "f2", "b") == b":2\r\n"
        c.send_cmd("HGETALL", h)
        raw, m = c.read_reply_raw()
        assert raw.startswith(b"%2\r\n"), raw
        assert m == {b"f1": b"a", b"f2": b"b"}
        assert c.call_raw("SADD", s, "x") == b":1\r\n"
        assert c.call_raw("SMEMBERS", s) == b"~1\r\n$1\r\nx\r\n"
        assert c.call_raw("ZADD", z, "1.5", "m") == b":1\r\n"
        assert c.call_raw("ZSCORE", z, "m") == b",1.5\r\n"
        assert c.call_raw("ZRANGE", z, "0", "-1", "WITHSCORES") == b"*1\r\n*2\r\n$1\r\nm\r\n,1.5\r\n"
        assert c.call_raw("GET", unique()) == b"_\r\n"
        # and back to RESP2 on the same session
        c.send_cmd("HELLO", "2")
        raw, reply = c.read_reply_raw()
        assert raw.startswith(b"*14\r\n")
        assert c.call_raw("HGETALL", h) in (b"*4\r\n$2\r\nf1\r\n$1\r\na\r\n$2\r\nf2\r\n$1\r\nb\r\n",
                                            b"*4\r\n$2\r\nf2\r\n$1\r\nb\r\n$2\r\nf1\r\n$1\r\na\r\n")
        assert c.call_raw("ZSCORE", z, "m") == b"$3\r\n1.5\r\n"
        assert c.call_raw("GET", unique()) == b"$-1\r\n"


def test_resp3_replies_identical_to_direct(proxy, upstream, direct):
    """The same RESP3 commands through the proxy and straight to Redis give the same bytes."""
    h, s, z = unique("h"), unique("s"), unique("z")
    direct.hset(h, mapping={"a": "1"})
    direct.sadd(s, "m")
    direct.zadd(z, {"m": 2.25})
    cmds = [("HGETALL", h), ("SMEMBERS", s), ("ZSCORE", z, "m"), ("EXISTS", h),
            ("TTL", h), ("GET", unique()), ("HRANDFIELD", h, "-2", "WITHVALUES"),
            ("XINFO", "HELP"), ("OBJECT", "ENCODING", h), ("CLIENT", "TRACKINGINFO")]
    ref = direct_raw(upstream)
    ref.send_cmd("HELLO", "3")
    ref.read_reply_raw()
    with proxy.login("web") as c:
        c.send_cmd("HELLO", "3")
        c.read_reply_raw()
        for cmd in cmds:
            assert c.call_raw(*cmd) == ref.call_raw(*cmd), cmd
    ref.close()


# --------------------------------------------------------------------------- RESET / QUIT

def test_reset_requires_login_again(proxy, direct):
    k = unique()
    with proxy.login("web") as c:
        assert c.call_raw("SET", k, "1") == b"+OK\r\n"
        assert c.call_raw("RESET") == b"+RESET\r\n"
        assert c.call_raw("GET", k) == NOAUTH
        assert c.call_raw("SET", k, "2") == NOAUTH
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("GET", k) == b"$1\r\n1\r\n"
    assert direct.get(k) == b"1"


def test_reset_leaves_resp3_multi_and_subscriptions(proxy, direct):
    k = unique()
    with proxy.raw() as c:
        c.send_cmd("HELLO", "3", "AUTH", "web", PASSWORDS["web"])
        c.read_reply_raw()
        assert c.call_raw("SUBSCRIBE", "rch") == b">3\r\n$9\r\nsubscribe\r\n$3\r\nrch\r\n:1\r\n"
        assert c.call_raw("RESET") == b"+RESET\r\n"
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("GET", k) == b"$-1\r\n"  # RESP2 again
        assert c.call_raw("MULTI") == b"+OK\r\n"
        assert c.call_raw("SET", k, "1") == b"+QUEUED\r\n"
        assert c.call_raw("RESET") == b"+RESET\r\n"
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("EXEC") == b"-ERR EXEC without MULTI\r\n"
    assert direct.get(k) is None


def test_reset_before_login(proxy):
    with proxy.raw() as c:
        assert c.call_raw("RESET") == b"+RESET\r\n"
        assert c.call_raw("PING") == NOAUTH


def test_quit_answers_ok_and_closes(proxy):
    with proxy.login("web") as c:
        c.send(encode("QUIT"))
        assert c.read_raw() == b"+OK\r\n"
        assert c.wait_closed()
        assert c.buf == b""
    with proxy.raw() as c:
        c.send(encode("QUIT"))
        assert c.read_raw() == b"+OK\r\n"
        assert c.wait_closed()


def test_quit_after_pipeline_flushes_replies_first(proxy):
    k = unique()
    with proxy.login("web") as c:
        c.send(encode("SET", k, "1") + encode("INCR", k) + encode("QUIT") + encode("INCR", k))
        assert c.read_raw() == b"+OK\r\n"
        assert c.read_raw() == b":2\r\n"
        assert c.read_raw() == b"+OK\r\n"
        assert c.wait_closed()
        assert c.buf == b""


# --------------------------------------------------------------------------- client setup commands

def test_setname_select_setinfo_like_direct(proxy, upstream):
    ref = direct_raw(upstream)
    with proxy.login("web") as c:
        for cmd in [("CLIENT", "SETNAME", "app-1"), ("CLIENT", "GETNAME"), ("SELECT", "0"),
                    ("CLIENT", "SETINFO", "lib-name", "redis-py"),
                    ("CLIENT", "SETINFO", "lib-ver", "4.3.4"),
                    ("CLIENT", "SETNAME", "bad name"), ("CLIENT", "GETNAME"), ("ECHO", "x" * 40)]:
            want = ref.call_raw(*cmd)
            got = c.call_raw(*cmd)
            assert got == want, (cmd, want, got)
        assert c.call_raw("PING") == b"+PONG\r\n"
    ref.close()


def test_setname_and_select_via_client_library(proxy):
    r = proxy.client("web", client_name="lib-client", db=0)
    assert r.client_getname() == "lib-client"
    assert r.ping()
    r.close()
