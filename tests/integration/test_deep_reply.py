"""Replies of any depth (issue 9, /tmp/issue9/SPEC.md §5).

A Lua script returning a table that contains itself makes Redis answer with arrays nested about
8,000 levels deep, ending in "-ERR reached lua stack limit" (in RESP3 a map that contains
itself: nested maps about 2,700 deep). respguard must pass such a reply byte for byte and the
session must keep working, for a user allowed EVAL (a non-tenant: `~* &* +@all`).

The frames are read with an iterative reader (no recursion, so Python's own limit does not
matter) that returns the raw bytes of one whole top-level frame.
"""

import ssl

import pytest

from helpers import unique
from resp_util import RawConn, bulk, encode

PONG = b"+PONG\r\n"
RECURSIVE_ARRAY = "local a = {}; local b = {a}; a[1] = b; return a"
RECURSIVE_MAP = "local a = {}; a['map'] = {k = a}; return a"   # a map in RESP3, *2 arrays in RESP2
LIMIT_ERR = b"-ERR reached lua stack limit\r\n"


def read_frame(c):
    """The raw bytes of one complete top-level RESP2/RESP3 frame, read iteratively."""
    out = bytearray()
    left = [1]  # elements still due at each open level
    while left:
        line = c._line()
        out += line + b"\r\n"
        t, rest = line[:1], line[1:]
        if t == b"|":
            n = int(rest)  # an attribute map comes before its value: not an element itself
            if n > 0:
                left.append(2 * n)
            continue
        left[-1] -= 1
        if t in (b"$", b"=", b"!"):
            n = int(rest)
            if n >= 0:
                out += c._exact(n + 2)
        elif t in (b"*", b"~", b">"):
            n = int(rest)
            if n > 0:
                left.append(n)
        elif t == b"%":
            n = int(rest)
            if n > 0:
                left.append(2 * n)
        elif t not in (b"+", b"-", b":", b"_", b"#", b",", b"("):
            raise AssertionError("unexpected RESP type %r in %r" % (t, line[:80]))
        while left and left[-1] == 0:
            left.pop()
    return bytes(out)


def depth(frame, head):
    return frame.count(head)


def direct_raw(upstream, timeout=10.0):
    ctx = ssl.create_default_context(cafile=upstream.certs.path("ca.crt"))
    c = RawConn(upstream.tls_port, tls_context=ctx, server_hostname="localhost", timeout=timeout)
    assert c.call_raw("AUTH", upstream.password) == b"+OK\r\n"
    return c


def hello3(c):
    c.send_cmd("HELLO", "3")
    c.read_reply_raw()


@pytest.fixture
def pair(proxy, upstream):
    """(respguard as web: ~* &* +@all, Redis directly)"""
    c = proxy.login("web", timeout=10)
    d = direct_raw(upstream)
    yield c, d
    c.close()
    d.close()


def test_reader_agrees_with_resp_util_on_shallow_frames(pair):
    _, d = pair
    for args in [("PING",), ("ECHO", "x"), ("EVAL", "return {1, {2, {3, 'x'}}, {}}", "0"),
                 ("EVAL", "return redis.error_reply('E')", "0")]:
        d.send_cmd(*args)
        a = read_frame(d)
        d.send_cmd(*args)
        assert d.read_raw() == a, args


@pytest.mark.parametrize("resp", [2, 3])
def test_recursive_lua_table_passes_byte_for_byte(pair, resp):
    c, d = pair
    if resp == 3:
        hello3(c)
        hello3(d)
    d.send_cmd("EVAL", RECURSIVE_ARRAY, "0")
    want = read_frame(d)
    assert want.endswith(LIMIT_ERR) and depth(want, b"*1\r\n") > 1000, (len(want), want[-100:])
    c.send_cmd("EVAL", RECURSIVE_ARRAY, "0")
    got = read_frame(c)
    assert got == want, "reply differs: %d bytes vs Redis's %d; first difference at %d" % (
        len(got), len(want), next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want))))
    assert c.call_raw("PING") == PONG
    k = unique()
    assert c.call_raw("SET", k, "after-deep") == b"+OK\r\n"
    assert c.call_raw("GET", k) == bulk("after-deep")


@pytest.mark.parametrize("resp", [2, 3])
def test_recursive_map_passes_byte_for_byte(pair, resp):
    """RESP3: maps nested ~2,700 deep, each with a key; RESP2: the same as *2 arrays."""
    c, d = pair
    if resp == 3:
        hello3(c)
        hello3(d)
    head = b"%1\r\n" if resp == 3 else b"*2\r\n"
    d.send_cmd("EVAL", RECURSIVE_MAP, "0")
    want = read_frame(d)
    assert want.startswith(head) and depth(want, head) > 1000 and want.endswith(LIMIT_ERR), want[-120:]
    c.send_cmd("EVAL", RECURSIVE_MAP, "0")
    assert read_frame(c) == want
    assert c.call_raw("PING") == PONG


def test_deep_replies_in_a_pipeline_and_in_exec(pair):
    c, d = pair
    k = unique()
    cmds = [("EVAL", RECURSIVE_ARRAY, "0"), ("SET", k, "1"), ("EVAL", RECURSIVE_MAP, "0"), ("INCR", k),
            ("MULTI",), ("EVAL", RECURSIVE_ARRAY, "0"), ("INCR", k), ("EXEC",), ("GET", k)]
    payload = b"".join(encode(*a) for a in cmds)
    d.send(payload)
    want = [read_frame(d) for _ in cmds]
    d.call_raw("DEL", k)
    assert want[7].startswith(b"*2\r\n*1\r\n*1\r\n") and want[8] == bulk("3"), (want[7][:40], want[8])
    c.send(payload)
    got = [read_frame(c) for _ in cmds]
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, "reply %d (%r) differs (%d bytes vs %d)" % (i, cmds[i][0], len(g), len(w))
    assert c.call_raw("PING") == PONG


def test_deep_reply_does_not_disturb_other_clients(proxy, upstream):
    """In multiplex mode the clients share an upstream connection: a deep frame routed to one
    client leaves the others' replies where they belong."""
    with proxy.login("web", timeout=15) as a, proxy.login("web", timeout=15) as b, direct_raw(upstream) as d:
        d.send_cmd("EVAL", RECURSIVE_ARRAY, "0")
        want = read_frame(d)
        k = unique()
        a.send(b"".join(encode("EVAL", RECURSIVE_ARRAY, "0") + encode("PING") for _ in range(3)))
        b.send(b"".join(encode("INCR", k) for _ in range(200)))
        for i in range(3):
            assert read_frame(a) == want, i
            assert a.read_raw() == PONG
        assert [b.read_raw() for _ in range(200)] == [b":%d\r\n" % i for i in range(1, 201)]
        assert a.call_raw("PING") == PONG and b.call_raw("PING") == PONG


@pytest.mark.proxy_only
def test_tenant_gets_no_script(respguard):
    """The deep reply needs EVAL, which a tenant that does not name it may not run."""
    p = respguard(users={"t": {"acl": "on >tenant-Pw-1 ~t:* &t:* +@all"}})
    with p.login("t", "tenant-Pw-1") as c:
        assert c.call_raw("EVAL", RECURSIVE_ARRAY, "0") == \
            b"-NOPERM this user has no permissions to run the 'eval' command\r\n"
        assert c.call_raw("PING") == PONG
