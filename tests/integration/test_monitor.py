"""MONITOR through respguard (issue 9, /tmp/issue9/SPEC.md §4).

Served only to a user whose rules name +monitor and who has every key (read and write) and
every channel; everyone else gets `NOPERM this user has no permissions to run the 'monitor'
command`. After +OK the connection carries Redis's monitor lines of every command the server
runs, other clients' commands through respguard included. On a monitoring connection QUIT
(+OK, close) and RESET (+RESET, monitoring ends; as any RESET through respguard, the client
then logs in again) are served; anything else gets
`-ERR respguard: only QUIT and RESET are served on a MONITOR connection`.
"""

import re
import ssl
import time

import pytest

from helpers import POOL_MODE, unique, wait_until
from resp_util import RawConn, bulk, encode

pytestmark = pytest.mark.proxy_only

PW = "monitor-Pw-6604"
USERS = {
    "watcher": "on >%s ~* &* +@all +monitor" % PW,
    "safe_watcher": "on >%s ~* &* +@all -@dangerous +monitor" % PW,
    "kw_watcher": "on >%s allkeys allchannels nocommands +monitor +set +quit +reset +ping" % PW,
    "plain": "on >%s ~* &* +@all" % PW,
    "tenant_watch": "on >%s ~t:* &t:* +@all +monitor" % PW,
    "chan_watch": "on >%s ~* &t:* +@all +monitor" % PW,
    "read_watch": "on >%s %%R~* &* +@all +monitor" % PW,
    "nochan_watch": "on >%s ~* +@all +monitor" % PW,
    "worker": "on >%s ~* &* +@all" % PW,
}
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NOAUTH = b"-NOAUTH Authentication required.\r\n"
ONLY = b"-ERR respguard: only QUIT and RESET are served on a MONITOR connection\r\n"
NOPERM_MONITOR = b"-NOPERM this user has no permissions to run the 'monitor' command\r\n"
MONITOR_LINE = re.compile(rb"\+\d+\.\d+ \[\d+ [^\]]*\]( .*)?\r\n\Z")


def parse_monitor_line(line):
    """'+1700000000.123 [0 127.0.0.1:5] "GET" "k"' -> [b"GET", b"k"] (Redis's sdscatrepr)."""
    assert MONITOR_LINE.match(line), "not a monitor line: %r" % line
    rest = line[line.index(b"] ") + 2:].rstrip(b"\r\n") if b"] " in line else b""
    esc = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b'"': b'"', b"\\": b"\\"}
    args, i = [], 0
    while i < len(rest):
        if rest[i:i + 1] != b'"':
            i += 1
            continue
        i += 1
        cur = bytearray()
        while rest[i:i + 1] != b'"':
            ch = rest[i:i + 1]
            if ch == b"\\":
                nxt = rest[i + 1:i + 2]
                if nxt == b"x":
                    cur.append(int(rest[i + 2:i + 4], 16))
                    i += 4
                else:
                    cur += esc[nxt]
                    i += 2
                continue
            cur += ch
            i += 1
        args.append(bytes(cur))
        i += 1
    return args


def norm(args):
    return [args[0].lower()] + list(args[1:]) if args else args


class Monitor:
    """Reads a monitoring connection: monitor lines are collected, anything else returned."""

    def __init__(self, conn):
        self.c = conn
        self.seen = []

    def next_reply(self):
        while True:
            line = self.c.read_line()
            if MONITOR_LINE.match(line):
                self.seen.append(norm(parse_monitor_line(line)))
                continue
            return line

    def wait_for(self, args, timeout=5.0):
        want = norm([a.encode() if isinstance(a, str) else a for a in args])
        deadline = time.monotonic() + timeout
        while want not in self.seen:
            assert time.monotonic() < deadline, "monitor never showed %r; saw %r" % (want, self.seen[-20:])
            line = self.c.read_line()
            assert MONITOR_LINE.match(line), "not a monitor line while waiting for %r: %r" % (want, line)
            self.seen.append(norm(parse_monitor_line(line)))


@pytest.fixture
def proxy_mon(respguard):
    return respguard(users={n: {"acl": a} for n, a in USERS.items()})


def login(p, user, timeout=5.0):
    return p.login(user, PW, timeout=timeout)


def direct_raw(upstream, timeout=5.0):
    ctx = ssl.create_default_context(cafile=upstream.certs.path("ca.crt"))
    c = RawConn(upstream.tls_port, tls_context=ctx, server_hostname="localhost", timeout=timeout)
    assert c.call_raw("AUTH", upstream.password) == OK
    return c


def monitors_upstream(upstream):
    """Upstream connections in monitor mode (CLIENT LIST flag O)."""
    with direct_raw(upstream) as d:
        listing = d.call("CLIENT", "LIST").decode()
    return [l for l in listing.splitlines() if re.search(r" flags=\w*O", l)]


def start_monitor(p, user="watcher"):
    m = login(p, user, timeout=10)
    assert m.call_raw("MONITOR") == OK
    return Monitor(m)


@pytest.mark.parametrize("user", ["watcher", "safe_watcher", "kw_watcher"])
def test_monitor_streams_other_clients_commands(proxy_mon, upstream, user):
    mon = start_monitor(proxy_mon, user)
    k = unique("mon")
    with login(proxy_mon, "worker") as w:
        assert w.call_raw("set", k, "v1") == OK
        assert w.call_raw("GET", k) == bulk("v1")
        w.send(encode("INCR", k + ":n") + encode("INCR", k + ":n"))
        assert [w.read_raw(), w.read_raw()] == [b":1\r\n", b":2\r\n"]
    with direct_raw(upstream) as d:
        assert d.call_raw("ECHO", k) == bulk(k)
    mon.wait_for(["ECHO", k])
    seen = mon.seen
    for args in (["set", k, "v1"], ["get", k], ["incr", k + ":n"]):
        assert norm([a.encode() for a in args]) in seen, (args, seen[-20:])
    assert seen.index([b"set", k.encode(), b"v1"]) < seen.index([b"get", k.encode()]) < seen.index([b"echo", k.encode()])
    assert seen.count([b"incr", (k + ":n").encode()]) == 2
    mon.c.send(encode("QUIT"))
    assert mon.next_reply() == OK
    assert mon.c.wait_closed()
    mon.c.close()


@pytest.mark.parametrize("user", ["plain", "tenant_watch", "chan_watch", "read_watch", "nochan_watch"])
def test_monitor_is_refused_unless_named_with_every_key_and_channel(proxy_mon, user):
    with login(proxy_mon, user) as c:
        assert c.call_raw("MONITOR") == NOPERM_MONITOR
        with login(proxy_mon, "worker") as w:
            assert w.call_raw("SET", unique("mon"), "x") == OK
        # not monitoring: the next reply is the next command's, no monitor line before it
        assert c.call_raw("PING") == PONG
        c.send(encode("MONITOR") + encode("PING"))
        assert [c.read_raw(), c.read_raw()] == [NOPERM_MONITOR, PONG]
    ev = proxy_mon.events("refused", user=user)
    assert len(ev) == 2 and all(str(e.get("command")).lower() == "monitor" for e in ev), ev


def test_quit_on_a_monitoring_connection(proxy_mon, upstream):
    mon = start_monitor(proxy_mon)
    wait_until(lambda: len(monitors_upstream(upstream)) == 1, 5, what="one monitor upstream")
    with login(proxy_mon, "worker") as w:
        k = unique("mon")
        assert w.call_raw("SET", k, "x") == OK
    mon.wait_for(["SET", k, "x"])
    mon.c.send(encode("QUIT") + encode("PING"))
    assert mon.next_reply() == OK
    assert mon.c.wait_closed()
    assert b"PONG" not in mon.c.buf
    mon.c.close()
    # the upstream connection does not go on monitoring (reset or closed)
    wait_until(lambda: not monitors_upstream(upstream), 5, what="no monitor upstream after QUIT")


def test_reset_ends_monitoring(proxy_mon, upstream):
    mon = start_monitor(proxy_mon)
    k = unique("mon")
    with login(proxy_mon, "worker") as w:
        assert w.call_raw("SET", k, "1") == OK
        mon.wait_for(["SET", k, "1"])
        mon.c.send(encode("RESET"))
        assert mon.next_reply() == b"+RESET\r\n"
        c = mon.c
        # a RESET through respguard logs the client out (as on Redis with requirepass)
        assert c.call_raw("PING") == NOAUTH
        assert c.call_raw("AUTH", "watcher", PW) == OK
        assert c.call_raw("PING") == PONG
        # no longer monitoring: another client's commands leave no line before the reply
        assert w.call_raw("SET", k, "2") == OK
        assert w.call_raw("INCR", k) == b":3\r\n"
        assert c.call_raw("GET", k) == bulk("3")
        assert c.call_raw("PING") == PONG
        # and it may monitor again
        assert c.call_raw("MONITOR") == OK
        assert w.call_raw("SET", k, "4") == OK
        Monitor(c).wait_for(["SET", k, "4"])
        c.close()
    wait_until(lambda: not monitors_upstream(upstream), 5, what="no monitor upstream at the end")


def test_other_commands_on_a_monitoring_connection(proxy_mon):
    mon = start_monitor(proxy_mon)
    probe = unique("probe")
    for args in [("GET", probe), ("PING",), ("SUBSCRIBE", probe), ("CLIENT", "REPLY", "OFF"),
                 ("MONITOR",), ("AUTH", "watcher", PW), ("HELLO", "3"), ("MULTI",), ("SET", probe, "x"),
                 ("EXEC",), ("NOSUCHCOMMAND", probe)]:
        mon.c.send(encode(*args))
        assert mon.next_reply() == ONLY, args
    # several in one write, each answered in order
    mon.c.send(encode("GET", probe) + encode("ECHO", probe) + encode("PING"))
    assert [mon.next_reply() for _ in range(3)] == [ONLY] * 3
    # still monitoring, and none of the refused commands ran upstream
    k = unique("mon")
    with login(proxy_mon, "worker") as w:
        assert w.call_raw("SET", k, "x") == OK
    mon.wait_for(["SET", k, "x"])
    assert not [a for a in mon.seen if probe.encode() in a], mon.seen
    mon.c.send(encode("QUIT"))
    assert mon.next_reply() == OK
    mon.c.close()


def test_monitor_and_a_command_in_one_write(proxy_mon):
    m = login(proxy_mon, "watcher")
    m.send(encode("MONITOR") + encode("GET", "x") + encode("QUIT"))
    mon = Monitor(m)
    assert mon.next_reply() == OK
    assert mon.next_reply() == ONLY
    assert mon.next_reply() == OK
    assert m.wait_closed()
    m.close()


def test_a_monitoring_connection_is_not_handed_on(respguard, upstream):
    """With one upstream connection, a client that monitored and left abruptly is followed by
    clients on that same connection: they get their replies and no monitor line."""
    pool = {"size": 1, "min_idle": 1}
    if POOL_MODE != "session":
        pool["mode"] = POOL_MODE
    p = respguard(users={n: {"acl": a} for n, a in USERS.items()}, overrides={"upstream": {"pool": pool}})
    for i in range(3):
        m = login(p, "watcher", timeout=10)
        assert m.call_raw("MONITOR") == OK
        m.close()  # no QUIT
        c = login(p, "worker", timeout=10)
        k = unique("after")
        assert c.call_raw("SET", k, "v") == OK
        assert c.call_raw("GET", k) == bulk("v")
        assert c.call_raw("PING") == PONG
        c.settimeout(0.2)
        try:
            extra = c.sock.recv(65536)
        except Exception:
            extra = b""
        assert extra == b"" and c.buf == b"", "stray bytes after the replies: %r" % (c.buf + extra)
        c.close()
    wait_until(lambda: not monitors_upstream(upstream), 5, what="no monitor upstream")
