"""The upstream connection pool: warm, verified, logged-in TLS connections to the upstream,
held by one client at a time (session mode) or shared and pinned (multiplex mode).

Everything is real: redis-server 7.0 over TLS, the respguard binary, raw RESP clients (and
redis-py straight to the server to look at it from the other side). respguard's own upstream
connections are told apart from every other client of the server by their local ports, read
from /proc/<respguard pid>/fd and /proc/<pid>/net/tcp{,6} (see rg_clients).

Every test sets its pool mode explicitly (the suite may otherwise run with
RESPGUARD_POOL_MODE=multiplex as the default).
"""

import asyncio
import os
import socket
import struct
import threading
import time

import pytest

from helpers import PASSWORDS, blocked_clients, metric_value as val, unique, wait_until
from resp_util import ConnectionClosed, bulk, encode

pytestmark = pytest.mark.proxy_only

NO_CONN = b"-ERR respguard: no upstream connection available\r\n"
LOST = b"-ERR respguard: upstream connection lost\r\n"
PONG = b"+PONG\r\n"
OK = b"+OK\r\n"



# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def hello_id_of(reply):
    """The upstream connection's id in HELLO 2's reply."""
    return dict(zip(reply[0::2], reply[1::2]))[b"id"]


def held_id(c):
    """Session mode: the id of the upstream connection c holds, from HELLO 2 (CLIENT ID would
    mark the connection as known to the client, which then closes it instead of pooling it)."""
    return hello_id_of(c.call("HELLO", "2"))

def start(respguard, mode, admin=False, quiet_probe=True, upstream_server=None, limits=None, **pool):
    """A respguard with upstream.pool = {mode, **pool}. With admin, the readiness probe runs once
    at start (probe_interval 1h) unless quiet_probe=False, so that the probe's own short
    connection does not show up among the pool's."""
    pool = dict(pool)
    pool["mode"] = mode
    ov = {"upstream": {"pool": pool}}
    if admin and quiet_probe:
        ov["admin"] = {"probe_interval": "1h"}
    p = respguard(admin=admin, overrides=ov, upstream_server=upstream_server, limits=limits)
    if admin:
        wait_until(lambda: p.http("/readyz")[0] == 200, 10, what="/readyz 200 at start")
    return p


def pool_gauge(p, state):
    return val(p.metrics(), "respguard_pool_connections", state=state)


def wait_idle(p, n, timeout=10):
    """With admin: wait until the pool has at least n idle connections."""
    return wait_until(lambda: pool_gauge(p, "idle") >= n, timeout, what="%d idle pooled connection(s)" % n)


def rg_upstream_ports(p):
    """Local ports of respguard's established TCP connections to its upstream's TLS port."""
    port = p.upstream_server.tls_port
    pid = p.proc.pid
    fddir = "/proc/%d/fd" % pid
    inodes = set()
    try:
        fds = os.listdir(fddir)
    except OSError:
        return set()
    for fd in fds:
        try:
            t = os.readlink(os.path.join(fddir, fd))
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            f = open("/proc/%d/net/%s" % (pid, name))
        except OSError:
            continue
        with f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) < 10 or parts[9] not in inodes or parts[3] != "01":
                    continue
                if int(parts[2].rsplit(":", 1)[1], 16) == port:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def rg_clients(p, direct):
    """The server's CLIENT LIST entries (dicts) that are respguard's upstream connections."""
    ports = rg_upstream_ports(p)
    return [c for c in direct.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]


def rg_ids(p, direct):
    return sorted(int(c["id"]) for c in rg_clients(p, direct))


def quiet(c, t=0.3):
    """True if nothing arrives on c within t seconds (and nothing is buffered)."""
    if c.buf:
        return False
    c.settimeout(t)
    try:
        chunk = c.sock.recv(1 << 16)
    except socket.timeout:
        return True
    finally:
        c.settimeout(5)
    c.buf += chunk
    return False


class Sampler(threading.Thread):
    """Counts, every few ms while it runs, the server's clients other than the sampler itself
    (on a server only respguard uses) and respguard's established upstream sockets (/proc)."""

    def __init__(self, srv, p):
        super().__init__(daemon=True)
        self.srv, self.p = srv, p
        self.stop_evt = threading.Event()
        self.max_server = 0
        self.max_sockets = 0
        self.samples = 0
        self.error = None

    def run(self):
        c = self.srv.client()
        try:
            me = c.client_id()
            while not self.stop_evt.is_set():
                n = sum(1 for e in c.client_list() if int(e["id"]) != me)
                self.max_server = max(self.max_server, n)
                self.max_sockets = max(self.max_sockets, len(rg_upstream_ports(self.p)))
                self.samples += 1
                self.stop_evt.wait(0.01)
        except Exception as e:  # reported by stop()
            self.error = e
        finally:
            c.close()

    def stop(self):
        self.stop_evt.set()
        self.join(10)
        assert self.error is None, "sampler failed: %r" % self.error
        assert self.samples > 0


# -- asyncio raw clients ---------------------------------------------------------------------

async def aread(r):
    """One RESP2 reply as raw bytes (simple types, bulk, arrays of those)."""
    line = await r.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionClosed("closed after %r" % line)
    t = line[:1]
    if t == b"$":
        n = int(line[1:-2])
        return line if n < 0 else line + await r.readexactly(n + 2)
    if t == b"*":
        out = line
        for _ in range(max(0, int(line[1:-2]))):
            out += await aread(r)
        return out
    return line


async def aclient(port, script, gate=None, hold=None):
    """Connect, log in, [count itself in gate[1] and wait for gate[0]], run script: a list of
    (request bytes, expected reply bytes or None for any). Returns a list of mismatches (empty:
    all correct)."""
    bad = []
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(encode("AUTH", "web", PASSWORDS["web"]))
        got = await aread(r)
        if got != OK:
            return [("AUTH", OK, got)]
        if gate is not None:
            gate[1].append(1)
            await gate[0].wait()
        for req, want in script:
            w.write(req)
            got = await aread(r)
            if want is not None and got != want:
                bad.append((req[:60], want, got))
        if hold:
            await asyncio.sleep(hold)
        w.write(encode("QUIT"))
        got = await aread(r)
        if got != OK:
            bad.append(("QUIT", OK, got))
    finally:
        w.close()
    return bad


def client_script(i, prefix):
    k, v = "%s:%d" % (prefix, i), "value-%d-%s" % (i, prefix)
    return [
        (encode("SET", k, v), OK),
        (encode("GET", k), bulk(v)),
        (encode("APPEND", k, "!"), b":%d\r\n" % (len(v) + 1)),
        (encode("ECHO", "e%d" % i), bulk("e%d" % i)),
        (encode("GET", k), bulk(v + "!")),
    ]


# ---------------------------------------------------------------------------------------------
# A. Session mode: no state of one client is visible to the next
# ---------------------------------------------------------------------------------------------

def _multi_leave(a, ctx, direct):
    assert a.call_raw("MULTI") == OK
    assert a.call_raw("SET", ctx["k"], "from-a") == b"+QUEUED\r\n"


def _multi_check(b, ctx, direct):
    assert b.call_raw("EXEC") == b"-ERR EXEC without MULTI\r\n"
    assert b.call_raw("GET", ctx["k"]) == b"$-1\r\n"
    assert direct.exists(ctx["k"]) == 0


def _watch_leave(a, ctx, direct):
    direct.set(ctx["k"], "before")
    assert a.call_raw("WATCH", ctx["k"]) == OK
    direct.set(ctx["k"], "changed")  # A's WATCH is now dirty


def _watch_check(b, ctx, direct):
    direct.set(ctx["k"], "changed-again")
    assert b.call_raw("MULTI") == OK
    assert b.call_raw("SET", ctx["k"], "from-b") == b"+QUEUED\r\n"
    assert b.call_raw("EXEC") == b"*1\r\n+OK\r\n"
    assert direct.get(ctx["k"]) == b"from-b"


def _sub_leave(cmd, chan):
    def leave(a, ctx, direct):
        got = a.call(cmd, chan(ctx))
        assert got == [cmd.lower().encode(), chan(ctx).encode(), 1], got
    return leave


def _sub_check(publish, target):
    def check(b, ctx, direct):
        assert b.call_raw("PING") == PONG  # not the subscribed-mode ["pong", ""]
        receivers = direct.execute_command(publish, target(ctx), "leaked?")
        assert receivers == 0, "%s reached %d subscriber(s): the subscription survived" % (publish, receivers)
        assert quiet(b), "the next client received %r" % b.buf
        assert b.call_raw("PING") == PONG
    return check


def _hello3_leave(a, ctx, direct):
    got = a.call("HELLO", "3")
    assert isinstance(got, dict) and got.get(b"proto") == 3, got


def _hello3_check(b, ctx, direct):
    direct.hset(ctx["k"], "f", "v")
    assert b.call_raw("HGETALL", ctx["k"]) == b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    assert b.call_raw("GET", ctx["k"] + ":none") == b"$-1\r\n"  # RESP3 would be _\r\n


def _setname_leave(a, ctx, direct):
    assert a.call_raw("CLIENT", "SETNAME", "client-a-name") == OK


def _setname_check(b, ctx, direct):
    # session mode: CLIENT GETNAME is forwarded, so this is the upstream connection's name
    assert b.call_raw("CLIENT", "GETNAME") == b"$-1\r\n"
    entry = [e for e in direct.client_list() if int(e["id"]) == ctx["a_id"]]
    assert entry and entry[0]["name"] == "", entry


def _tracking_leave(a, ctx, direct):
    assert a.call_raw("CLIENT", "TRACKING", "ON") == OK


def _tracking_check(b, ctx, direct):
    info = b.call("CLIENT", "TRACKINGINFO")
    d = dict(zip(info[0::2], info[1::2]))
    assert d[b"flags"] == [b"off"], info


def _blpop_leave(a, ctx, direct):
    direct.set(ctx["k"], "v")
    base = blocked_clients(direct)
    a.send_cmd("BLPOP", ctx["q"], "1")
    # the BLPOP is in flight upstream when A goes (it times out after 1 s with a nil reply)
    ctx["blocked_seen"] = wait_until(lambda: blocked_clients(direct) > base, 0.9, interval=0.01,
                                     what="A's BLPOP blocked upstream")


def _blpop_rst_leave(a, ctx, direct):
    _blpop_leave(a, ctx, direct)
    # close with a TCP RST: respguard sees an error, not a half-close it would still answer
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _blpop_check(b, ctx, direct):
    assert blocked_clients(direct) == 0, "B was served while A's BLPOP was still blocked"
    assert b.call_raw("PING") == PONG
    assert b.call_raw("GET", ctx["k"]) == bulk("v")
    assert quiet(b, 1.2), "stray reply for the next client: %r" % b.buf
    assert b.call_raw("ECHO", "after") == bulk("after")


BIG = 20 * 1024 * 1024


def _big_leave(a, ctx, direct):
    direct.set(ctx["big"], b"x" * BIG)
    direct.set(ctx["k"], "small")
    a.send_cmd("GET", ctx["big"])
    head = a.read_bytes(65536)
    assert head.startswith(b"$%d\r\nxxx" % BIG), head[:20]


def _big_check(b, ctx, direct):
    assert b.call_raw("GET", ctx["k"]) == bulk("small")
    assert b.call_raw("PING") == PONG
    assert b.call_raw("ECHO", "e") == bulk("e")
    direct.delete(ctx["big"])


def _select_leave(a, ctx, direct):
    assert a.call_raw("SELECT", "5") == OK
    assert a.call_raw("SET", ctx["k"], "in-db5", "EX", "60") == OK


def _select_check(b, ctx, direct):
    assert b.call_raw("GET", ctx["k"]) == b"$-1\r\n"
    info = b.call("CLIENT", "INFO").decode()
    assert " db=0 " in info, info
    entry = [e for e in direct.client_list() if int(e["id"]) == ctx["a_id"]]
    assert entry and entry[0]["db"] == "0", entry


def _clean_leave(a, ctx, direct):
    assert a.call_raw("PING") == PONG
    assert a.call_raw("SET", ctx["k"], "v") == OK


def _clean_check(b, ctx, direct):
    assert b.call_raw("GET", ctx["k"]) == bulk("v")


CLOSED = "closed"  # the upstream connection is closed, not handed on

LEAK_CASES = {
    # name: (A leaves this behind, B checks it is gone, whether A's connection must be reset
    # before reuse in session mode, and in multiplex mode: True: exactly one reset, False: none,
    # None: either)
    "multi_open": (_multi_leave, _multi_check, True, True),
    "watch": (_watch_leave, _watch_check, True, True),
    "subscribe": (_sub_leave("SUBSCRIBE", lambda c: c["ch"]), _sub_check("PUBLISH", lambda c: c["ch"]), True, True),
    "psubscribe": (_sub_leave("PSUBSCRIBE", lambda c: c["ch"] + "*"),
                   _sub_check("PUBLISH", lambda c: c["ch"] + "x"), True, True),
    "ssubscribe": (_sub_leave("SSUBSCRIBE", lambda c: c["ch"]), _sub_check("SPUBLISH", lambda c: c["ch"]),
                   True, True),
    "hello3": (_hello3_leave, _hello3_check, True, True),
    # multiplex: the name stays with respguard, nothing reaches the shared connection
    "setname": (_setname_leave, _setname_check, True, False),
    "tracking": (_tracking_leave, _tracking_check, True, True),
    # A closes (FIN) with only its BLPOP in flight: as Redis frees such a client, respguard closes
    # it at once, and the connection the BLPOP blocks with it: B gets a new one
    "blpop_in_flight": (_blpop_leave, _blpop_check, CLOSED, CLOSED),
    # A resets its TCP connection with the BLPOP in flight: closed too (a reset would wait
    # behind the BLPOP, which could take what other clients push meanwhile)
    "blpop_in_flight_rst": (_blpop_rst_leave, _blpop_check, CLOSED, CLOSED),
    # multiplex: a shared connection; the rest of A's reply is read and dropped, no reset
    "big_reply_half_read": (_big_leave, _big_check, True, False),
    "select5": (_select_leave, _select_check, True, True),
    "clean": (_clean_leave, _clean_check, False, False),
}


@pytest.mark.parametrize("case", list(LEAK_CASES))
@pytest.mark.parametrize("mode", ["session", "multiplex"])
def test_next_client_sees_no_state(respguard, direct, mode, case):
    """size 1: B necessarily gets the upstream connection A used; nothing of A's is visible."""
    leave, check, session_dirty, mux_dirty = LEAK_CASES[case]
    dirty = session_dirty if mode == "session" else mux_dirty
    p = start(respguard, mode, admin=True, size=1, min_idle=1)
    wait_idle(p, 1)
    before = p.metrics()
    ctx = {"k": unique("pool"), "q": unique("q"), "ch": unique("ch"), "big": unique("big")}
    conn = wait_until(lambda: (lambda ids: ids if len(ids) == 1 else None)(rg_ids(p, direct)), 5,
                      what="exactly one upstream connection of respguard's")
    up_id = ctx["a_id"] = conn[0]

    a = p.login(timeout=10)
    if mode == "session":
        # session mode: CLIENT ID is forwarded: the upstream connection's id
        assert held_id(a) == up_id
    leave(a, ctx, direct)
    a.close()

    b = p.login(timeout=10)
    try:
        if dirty is CLOSED:
            # A's connection was closed, not handed on: B's is a new one, and the only one
            assert b.call_raw("PING") == PONG
            up_id = ctx["b_id"] = wait_until(
                lambda: (lambda ids: ids[0] if len(ids) == 1 and ids[0] != ctx["a_id"] else None)(
                    rg_ids(p, direct)), 5, what="A's connection replaced by one new connection")
        elif mode == "session":
            assert held_id(b) == up_id, "B did not get A's upstream connection (size 1)"
        else:
            assert b.call_raw("PING") == PONG  # B has used the (one) shared connection
        assert rg_ids(p, direct) == [up_id], "the pooled connection was replaced or another was opened"
        m = p.metrics()
        resets = val(m, "respguard_pool_resets_total", result="ok") - \
            val(before, "respguard_pool_resets_total", result="ok")
        assert val(m, "respguard_pool_resets_total", result="failed") == \
            val(before, "respguard_pool_resets_total", result="failed")
        if dirty is None or dirty is CLOSED:
            assert resets == 0 if dirty is CLOSED else resets in (0, 1)
        elif dirty:
            assert resets == 1, "A's connection was given back unclean: expected one reset, got %d" % resets
        else:
            assert resets == 0, "a clean connection was reset before reuse"
        check(b, ctx, direct)
        assert rg_ids(p, direct) == [up_id]
    finally:
        b.close()
    if not dirty or dirty is CLOSED:
        wait_idle(p, 1)
        assert val(p.metrics(), "respguard_pool_resets_total", result="ok") == \
            val(before, "respguard_pool_resets_total", result="ok")
    assert p.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# B. A clean client gives its connection back at once
# ---------------------------------------------------------------------------------------------

def test_session_mode_clean_clients_reuse_one_connection(respguard, direct):
    p = start(respguard, "session", admin=True, size=1, min_idle=1)
    wait_idle(p, 1)
    before = p.metrics()
    prefix = unique("seq")
    ids = set()
    t0 = time.monotonic()
    for i in range(50):
        k, v = "%s:%d" % (prefix, i), "v%d" % i
        with p.raw(timeout=10) as c:
            c.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("SET", k, v) + encode("GET", k) +
                   encode("HELLO", "2") + encode("QUIT"))
            assert c.read_raw() == OK
            assert c.read_raw() == OK
            assert c.read_raw() == bulk(v)
            ids.add(hello_id_of(c.read_reply()))
            assert c.read_raw() == OK
            assert c.wait_closed(5)
    elapsed = time.monotonic() - t0
    assert elapsed < 20, "50 sequential clients took %.1fs" % elapsed
    assert len(ids) == 1, "clients got different upstream connections: %r" % ids
    assert rg_ids(p, direct) == sorted(ids)
    m = p.metrics()
    assert val(m, "respguard_upstream_connections_opened_total") - \
        val(before, "respguard_upstream_connections_opened_total") == 0
    assert val(m, "respguard_pool_resets_total", result="ok") == val(before, "respguard_pool_resets_total", result="ok")
    assert val(m, "respguard_pool_acquire_timeouts_total") == 0


# ---------------------------------------------------------------------------------------------
# C. size caps the upstream connections
# ---------------------------------------------------------------------------------------------

def test_multiplex_500_clients_never_more_than_size(respguard, redis_server_factory):
    # FAILS (respguard bug, same root cause as test_multiplex_waiters_each_get_their_own_replies:
    # pool.c became_free attaches SHARE waiters to a connection a PIN waiter has just taken).
    # Under this load, clients that run MULTI receive other clients' GET/ECHO replies, clients
    # whose commands went to the pinned connection get "upstream connection lost" after the reset
    # of that connection times out (shutdown_timeout), and with the ASan build respguard reports a
    # heap-use-after-free (pool.c route_input / notify_lost reading a freed session through an
    # OWNER route left in the route ring). With that one check added to became_free, it passes.
    n = 4
    srv = redis_server_factory()
    # min_idle 1: the pool grows only because clients need connections of their own (every 25th
    # runs a transaction, which pins one) while the others share
    p = start(respguard, "multiplex", upstream_server=srv, size=n, min_idle=1, acquire_timeout="10s",
              limits={"login_timeout": "30s"})
    sampler = Sampler(srv, p)
    sampler.start()
    prefix = unique("mx")

    def script(i):
        s = client_script(i, prefix) * 3
        if i % 25 == 0:
            k = "%s:tx:%d" % (prefix, i)
            s += [(encode("MULTI"), OK), (encode("INCR", k), b"+QUEUED\r\n"),
                  (encode("INCR", k), b"+QUEUED\r\n"), (encode("EXEC"), b"*2\r\n:1\r\n:2\r\n")]
            s += [(encode("ECHO", "after-tx"), bulk("after-tx")), (encode("INCR", k), b":3\r\n")]
        return s

    async def main():
        gate = (asyncio.Event(), [])
        tasks = [asyncio.ensure_future(aclient(p.port, script(i), gate)) for i in range(500)]
        # every client connects and logs in, then all run their commands at once
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(gate[1]) < len(tasks) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.02)
        gate[0].set()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 40)

    try:
        results = asyncio.run(main())
    finally:
        sampler.stop()
    errors = [r for r in results if isinstance(r, BaseException)]
    bad = [b for r in results if not isinstance(r, BaseException) for b in r]
    assert not errors, "%d clients failed, e.g. %r" % (len(errors), errors[:3])
    assert not bad, "%d wrong replies, e.g. %r" % (len(bad), bad[:5])
    d = srv.client()
    assert d.get("%s:499" % prefix) == b"value-499-%s!" % prefix.encode()
    assert d.get("%s:tx:475" % prefix) == b"3"
    d.close()
    print("multiplex: max upstream connections seen %d (server) %d (sockets), %d samples"
          % (sampler.max_server, sampler.max_sockets, sampler.samples))
    assert 1 <= sampler.max_server <= n, "the upstream saw %d connections (size %d)" % (sampler.max_server, n)
    assert sampler.max_sockets <= n, "respguard had %d upstream sockets (size %d)" % (sampler.max_sockets, n)


def test_session_mode_size_caps_held_connections(respguard, redis_server_factory):
    n = 4
    srv = redis_server_factory()
    p = start(respguard, "session", upstream_server=srv, size=n, min_idle=1, acquire_timeout="1s")
    sampler = Sampler(srv, p)
    sampler.start()
    prefix = unique("ss")

    async def main():
        tasks = [aclient(p.port, client_script(i, prefix)[:3]) for i in range(40)]
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    try:
        results = asyncio.run(main())
        errors = [r for r in results if isinstance(r, BaseException)]
        bad = [b for r in results if not isinstance(r, BaseException) for b in r]
        assert not errors, "%d clients failed, e.g. %r" % (len(errors), errors[:3])
        assert not bad, "%d wrong replies, e.g. %r" % (len(bad), bad[:5])

        # n clients hold every connection; one more gets the pool's error after acquire_timeout
        holders = [p.login(timeout=10) for _ in range(n)]
        ids = {held_id(h) for h in holders}
        assert len(ids) == n, ids
        with p.raw(timeout=10) as extra:
            t0 = time.monotonic()
            extra.send_cmd("AUTH", "web", PASSWORDS["web"])
            got = extra.read_raw()
            waited = time.monotonic() - t0
            assert got == NO_CONN
            assert 0.7 <= waited <= 5, "answered after %.2fs (acquire_timeout 1s)" % waited
            assert extra.wait_closed(5)
        for h in holders:
            assert h.call_raw("PING") == PONG
        # one leaves (cleanly): the next client gets its connection
        assert holders[0].call_raw("QUIT") == OK
        holders[0].close()
        with p.login(timeout=10) as again:
            assert held_id(again) in ids
        for h in holders[1:]:
            h.close()
    finally:
        sampler.stop()
    print("session: max upstream connections seen %d (server) %d (sockets), %d samples"
          % (sampler.max_server, sampler.max_sockets, sampler.samples))
    assert 1 <= sampler.max_server <= n, "the upstream saw %d connections (size %d)" % (sampler.max_server, n)
    assert sampler.max_sockets <= n


# ---------------------------------------------------------------------------------------------
# D. acquire_timeout when every connection is pinned (multiplex)
# ---------------------------------------------------------------------------------------------

def test_multiplex_acquire_timeout_when_all_pinned(respguard, direct):
    p = start(respguard, "multiplex", admin=True, size=2, min_idle=2, acquire_timeout="500ms")
    wait_idle(p, 2)
    q, k = unique("q"), unique("k")
    third = p.login(timeout=10)  # logged in while a connection is free (a multiplex login needs one)
    assert third.call_raw("PING") == PONG

    pin_tx = p.login(timeout=10)
    assert pin_tx.call_raw("MULTI") == OK
    assert pin_tx.call_raw("INCR", k) == b"+QUEUED\r\n"
    pin_blpop = p.login(timeout=10)
    base = blocked_clients(direct)
    pin_blpop.send_cmd("BLPOP", q, "30")
    wait_until(lambda: blocked_clients(direct) > base, 5, what="BLPOP blocked upstream")
    wait_until(lambda: pool_gauge(p, "pinned") == 2, 5, what="both connections pinned")
    before = p.metrics()

    t0 = time.monotonic()
    assert third.call_raw("MULTI") == NO_CONN
    waited = time.monotonic() - t0
    assert 0.3 <= waited <= 3, "MULTI answered after %.2fs (acquire_timeout 500ms)" % waited
    assert third.call_raw("DISCARD") == OK
    t0 = time.monotonic()
    assert third.call_raw("GET", k) == NO_CONN  # no shared connection either
    waited = time.monotonic() - t0
    assert 0.3 <= waited <= 3, "GET answered after %.2fs" % waited
    m = p.metrics()
    assert val(m, "respguard_pool_acquire_timeouts_total") - val(before, "respguard_pool_acquire_timeouts_total") == 2
    assert val(m, "respguard_pool_acquire_waits_total") - val(before, "respguard_pool_acquire_waits_total") >= 2

    # release one pin: the BLPOP is answered
    direct.rpush(q, "x")
    assert pin_blpop.read_raw() == b"*2\r\n" + bulk(q) + bulk("x")
    assert third.call_raw("MULTI") == OK
    assert third.call_raw("SET", k + ":3", "t") == b"+QUEUED\r\n"
    assert third.call_raw("EXEC") == b"*1\r\n+OK\r\n"
    assert third.call_raw("GET", k + ":3") == bulk("t")
    assert pin_tx.call_raw("EXEC") == b"*1\r\n:1\r\n"
    assert pin_blpop.call_raw("PING") == PONG
    for c in (third, pin_tx, pin_blpop):
        c.close()


def test_multiplex_waiters_each_get_their_own_replies(respguard, direct):
    # FAILS (respguard bug, pool.c became_free): when a connection becomes free and the wait list
    # holds a PIN waiter followed by a SHARE waiter, the PIN waiter takes the connection and the
    # SHARE waiter is then attached to that same, now pinned, connection (attach_share does not
    # check the state). The SHARE client's command goes out on the pinned connection and its
    # reply is delivered to the pinning client (another client's data), while the SHARE client
    # never gets an answer (the connection's reset later times out and it gets "upstream
    # connection lost"). Do not xfail: it is a cross-client data leak.
    p = start(respguard, "multiplex", admin=True, size=1, min_idle=1, acquire_timeout="5s")
    wait_idle(p, 1)
    k = unique("w")
    direct.set(k, "secret-of-S")
    sharer = p.login(timeout=10)   # logged in while the connection is free
    p1 = p.login(timeout=10)
    p2 = p.login(timeout=10)
    assert p1.call_raw("MULTI") == OK  # pins the only connection
    waits = val(p.metrics(), "respguard_pool_acquire_waits_total")
    p2.send_cmd("MULTI")  # waits for a connection of its own
    wait_until(lambda: val(p.metrics(), "respguard_pool_acquire_waits_total") >= waits + 1, 5,
               what="P2's MULTI waiting")
    sharer.send_cmd("GET", k)  # waits to share one, behind P2
    wait_until(lambda: val(p.metrics(), "respguard_pool_acquire_waits_total") >= waits + 2, 5,
               what="S's GET waiting")
    assert p1.call_raw("EXEC") == b"*0\r\n"  # P1's pin ends: P2 pins it next
    got = p2.read_raw()
    assert got == OK, "P2's MULTI was answered %r (S's GET reply is %r)" % (got, bulk("secret-of-S"))
    assert p2.call_raw("SET", k + ":p2", "x") == b"+QUEUED\r\n"
    assert p2.call_raw("EXEC") == b"*1\r\n+OK\r\n"
    sharer.settimeout(8)
    assert sharer.read_raw() == bulk("secret-of-S")
    assert sharer.call_raw("PING") == PONG
    for c in (sharer, p1, p2):
        c.close()
    assert val(p.metrics(), "respguard_pool_acquire_timeouts_total") == 0


def test_multiplex_client_identity_and_dropped_replies(respguard, direct):
    """Multiplex, one shared connection: CLIENT ID/SETNAME/GETNAME are each client's own, and
    the replies of a client that leaves with a pipeline in flight reach nobody else."""
    p = start(respguard, "multiplex", admin=True, size=1, min_idle=1)
    wait_idle(p, 1)
    up = rg_ids(p, direct)
    k, big = unique("k"), unique("big")
    direct.set(big, b"y" * 100000)
    direct.set(k, "mine")
    a, b = p.login(timeout=10), p.login(timeout=10)
    a_id, b_id = a.call("CLIENT", "ID"), b.call("CLIENT", "ID")
    assert a_id != b_id and up[0] not in (a_id, b_id)
    assert a.call_raw("CLIENT", "SETNAME", "alpha") == OK
    assert b.call_raw("CLIENT", "GETNAME") == b"$-1\r\n"
    assert a.call_raw("CLIENT", "GETNAME") == bulk("alpha")
    assert [e["name"] for e in rg_clients(p, direct)] == [""]
    # A leaves with 200 big replies due on the shared connection
    a.send(encode("GET", big) * 200)
    a.read_bytes(1000)
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()
    for i in range(50):
        assert b.call_raw("GET", k) == bulk("mine")
        assert b.call_raw("ECHO", "n%d" % i) == bulk("n%d" % i)
    assert quiet(b)
    with p.login(timeout=10) as c:
        assert c.call_raw("GET", k) == bulk("mine")
    assert rg_ids(p, direct) == up
    b.close()
    direct.delete(big)


@pytest.mark.parametrize("sub,unsub,pub", [("SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH"),
                                             ("PSUBSCRIBE", "PUNSUBSCRIBE", "PUBLISH"),
                                             ("SSUBSCRIBE", "SUNSUBSCRIBE", "SPUBLISH")])
def test_multiplex_pin_ends_with_the_last_subscription(respguard, direct, sub, unsub, pub):
    """A subscription pins a connection; once none is left it is shared again, clean."""
    p = start(respguard, "multiplex", admin=True, size=1, min_idle=1)
    wait_idle(p, 1)
    ch1, ch2, k = unique("ch"), unique("ch"), unique("k")
    direct.set(k, "v")
    a, b = p.login(timeout=10), p.login(timeout=10)
    assert a.call(sub, ch1, ch2) == [sub.lower().encode(), ch1.encode(), 1]
    assert a.read_reply() == [sub.lower().encode(), ch2.encode(), 2]
    wait_until(lambda: pool_gauge(p, "pinned") == 1, 5, what="the subscriber pinned")
    assert a.call(unsub, ch1) == [unsub.lower().encode(), ch1.encode(), 1]
    assert pool_gauge(p, "pinned") == 1, "unpinned with a subscription left"
    assert a.call(unsub, ch2) == [unsub.lower().encode(), ch2.encode(), 0]
    wait_until(lambda: pool_gauge(p, "pinned") == 0, 5, what="the connection unpinned")
    # both clients now share the one connection; no message reaches anyone
    assert a.call_raw("GET", k) == bulk("v")
    assert b.call_raw("GET", k) == bulk("v")
    assert direct.execute_command(pub, ch1, "late") == 0
    assert quiet(a) and quiet(b)
    assert a.call_raw("PING") == PONG and b.call_raw("PING") == PONG
    a.close()
    b.close()


# ---------------------------------------------------------------------------------------------
# E. the upstream restarts: /readyz follows, the pool refills
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["session", "multiplex"])
def test_pool_refills_after_upstream_restart(respguard, redis_server_factory, mode):
    srv = redis_server_factory()
    p = start(respguard, mode, admin=True, quiet_probe=False, upstream_server=srv, size=4, min_idle=2)
    wait_idle(p, 2)
    k = unique("rs")
    with p.login(timeout=10) as c:
        assert c.call_raw("SET", k, "1") == OK
    srv.kill()
    wait_until(lambda: p.http("/readyz")[0] == 503, 10, what="/readyz 503 with the upstream down")
    wait_until(lambda: pool_gauge(p, "idle") == 0, 10, what="the dead idle connections closed")
    again = redis_server_factory(tls_port=srv.tls_port, password=srv.password)
    assert again.client().ping()
    wait_until(lambda: p.http("/readyz")[0] == 200, 15, what="/readyz 200 after the restart")
    wait_idle(p, 2, timeout=20)
    for i in range(3):
        with p.login(timeout=10) as c:
            assert c.call_raw("SET", k, str(i)) == OK
            assert c.call_raw("GET", k) == bulk(str(i))
    assert p.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# F. TLS session resumption on refills
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["session", "multiplex"])
def test_refill_resumes_tls_sessions(respguard, mode):
    p = start(respguard, mode, admin=True, size=4, min_idle=1)
    wait_idle(p, 1)
    m = p.metrics()
    assert val(m, "respguard_upstream_handshakes_total", type="full") >= 1
    clients = []
    for _ in range(3):  # more than min_idle connections at once: the pool opens more
        c = p.login(timeout=10)
        if mode == "multiplex":
            assert c.call_raw("MULTI") == OK  # pinned: a connection of its own
        else:
            assert c.call_raw("PING") == PONG
        clients.append(c)
    wait_until(lambda: pool_gauge(p, "busy") + pool_gauge(p, "pinned") == 3, 10, what="3 connections in use")
    m = p.metrics()
    opened = val(m, "respguard_upstream_handshakes_total", type="full") + \
        val(m, "respguard_upstream_handshakes_total", type="resumed")
    assert opened >= 3
    assert val(m, "respguard_upstream_handshakes_total", type="resumed") > 0, \
        "no resumed handshake among %d (full %d)" % (opened, val(m, "respguard_upstream_handshakes_total", type="full"))
    for c in clients:
        if mode == "multiplex":
            assert c.call_raw("DISCARD") == OK
        c.close()


# ---------------------------------------------------------------------------------------------
# G. keepalive, max_lifetime, idle_timeout
# ---------------------------------------------------------------------------------------------

def test_keepalive_pings_idle_connection(respguard, direct):
    p = start(respguard, "session", size=1, min_idle=1, keepalive="1s")
    entry = wait_until(lambda: [e for e in rg_clients(p, direct) if e["cmd"] == "ping"], 6,
                       what="the idle pooled connection PINGed by respguard")
    conn_id = int(entry[0]["id"])
    idles = []
    for _ in range(6):
        time.sleep(0.5)
        e = [e for e in rg_clients(p, direct) if int(e["id"]) == conn_id]
        assert e, "the kept-alive connection went away"
        idles.append(int(e[0]["idle"]))
    assert max(idles) <= 3, "keepalive 1s, yet the connection was idle for %r s" % idles
    with p.login(timeout=10) as c:
        assert held_id(c) == conn_id
        assert c.call_raw("PING") == PONG
        assert c.call_raw("ECHO", "still usable") == bulk("still usable")


def test_max_lifetime_replaces_connections(respguard, direct):
    p = start(respguard, "session", size=1, min_idle=1, max_lifetime="2s")
    k = unique("life")
    # A holds the connection past its lifetime: it is not taken away from under A
    a = p.login(timeout=10)
    first = held_id(a)
    t_end = time.monotonic() + 3
    i = 0
    while time.monotonic() < t_end:
        assert a.call_raw("SET", k, str(i)) == OK
        assert a.call_raw("GET", k) == bulk(str(i))
        time.sleep(0.2)
        i += 1
    assert held_id(a) == first
    assert a.call_raw("QUIT") == OK
    a.close()
    # given back past its lifetime: closed, and the next client gets a new connection
    with p.login(timeout=10) as b:
        second = held_id(b)
        assert second != first, "a connection past max_lifetime was handed out again"
        assert b.call_raw("GET", k) == bulk(str(i - 1))
    wait_until(lambda: first not in [int(e["id"]) for e in direct.client_list()], 5,
               what="the retired connection closed upstream")
    # an idle connection past its lifetime is replaced by the pool itself
    wait_until(lambda: (lambda ids: ids and second not in ids)(rg_ids(p, direct)), 8,
               what="the idle connection replaced after max_lifetime")
    with p.login(timeout=10) as c:
        third = held_id(c)
        assert third not in (first, second)
        assert c.call_raw("PING") == PONG


def test_idle_timeout_closes_connections_above_min_idle(respguard, direct):
    p = start(respguard, "session", admin=True, size=4, min_idle=0, idle_timeout="1s")
    assert rg_ids(p, direct) == []
    clients = [p.login(timeout=10) for _ in range(3)]
    ids = [held_id(c) for c in clients]
    assert len(set(ids)) == 3
    assert rg_ids(p, direct) == sorted(ids)
    for c in clients:
        assert c.call_raw("QUIT") == OK
        c.close()
    wait_until(lambda: pool_gauge(p, "busy") == 0, 5, what="connections given back")
    wait_until(lambda: pool_gauge(p, "idle") == 0, 6, what="idle connections closed after idle_timeout")
    wait_until(lambda: not set(ids) & {int(e["id"]) for e in direct.client_list()}, 5,
               what="the server no longer lists respguard's connections")
    assert rg_ids(p, direct) == []
    with p.login(timeout=10) as c:  # and a new client still gets one
        assert c.call_raw("PING") == PONG


# ---------------------------------------------------------------------------------------------
# H. an upstream connection killed by the server mid-load
# ---------------------------------------------------------------------------------------------

class Looper(threading.Thread):
    """A client that GETs its own key in pipelines of 10 until told to stop."""

    def __init__(self, p, key, value):
        super().__init__(daemon=True)
        self.p, self.key, self.value = p, key, value
        self.stop_evt = threading.Event()
        self.ok = self.lost = self.recovered = 0
        self.wrong = []
        self.error = None
        self.pending_recovery = False

    def run(self):
        want = bulk(self.value)
        try:
            c = self.p.login(timeout=10)
            with c:
                while not self.stop_evt.is_set():
                    c.send(encode("GET", self.key) * 10)
                    for _ in range(10):
                        got = c.read_raw()
                        if got == want:
                            self.ok += 1
                            if self.pending_recovery:
                                self.recovered += 1
                                self.pending_recovery = False
                        elif got == LOST:
                            self.lost += 1
                            self.pending_recovery = True
                        else:
                            self.wrong.append(got[:80])
                # its next command after the last error works
                assert c.call_raw("PING") == PONG
                if self.pending_recovery:
                    self.recovered += 1
                    self.pending_recovery = False
        except Exception as e:
            self.error = e


def test_multiplex_upstream_connection_killed_mid_load(respguard, direct):
    p = start(respguard, "multiplex", admin=True, size=3, min_idle=3)
    wait_idle(p, 3)
    loopers = []
    for i in range(6):
        k = unique("kill")
        v = "v%d-" % i + "x" * 40
        direct.set(k, v)
        loopers.append(Looper(p, k, v))
    for lp in loopers:
        lp.start()
    try:
        wait_until(lambda: all(lp.ok > 20 for lp in loopers), 10, what="the loopers running")
        me = direct.client_id()
        killed = []
        for _ in range(3):  # three rounds, each killing one of respguard's busy connections
            def busy():
                return [e for e in rg_clients(p, direct) if int(e["id"]) != me and e["cmd"] == "get"]
            victims = wait_until(busy, 5, interval=0.01, what="a busy upstream connection")
            vid = int(victims[0]["id"])
            assert direct.client_kill_filter(_id=vid) == 1
            killed.append(vid)
            time.sleep(0.4)
        lost_before_stop = sum(lp.lost for lp in loopers)
        time.sleep(0.3)
    finally:
        for lp in loopers:
            lp.stop_evt.set()
        for lp in loopers:
            lp.join(15)
    for lp in loopers:
        assert not lp.is_alive(), "a client hung"
        assert lp.error is None, "a client failed: %r (ok %d, lost %d)" % (lp.error, lp.ok, lp.lost)
        assert not lp.wrong, "wrong replies: %r" % lp.wrong[:5]
        assert lp.lost == 0 or lp.recovered >= 1, "no command worked after 'upstream connection lost'"
    live = {int(e["id"]) for e in direct.client_list()}
    assert not set(killed) & live
    print("lost replies: %d; per client %r" % (lost_before_stop, [lp.lost for lp in loopers]))
    # the pool refilled and serves new clients
    wait_idle(p, 1)
    with p.login(timeout=10) as c:
        assert c.call_raw("PING") == PONG
    assert p.proc.poll() is None


def test_session_upstream_connection_killed(respguard, direct):
    p = start(respguard, "session", admin=True, size=3, min_idle=3)
    wait_idle(p, 3)
    x, y, z = (p.login(timeout=10) for _ in range(3))
    ids = [held_id(c) for c in (x, y, z)]
    assert len(set(ids)) == 3
    q, k = unique("q"), unique("k")
    direct.set(k, "kept")
    base = blocked_clients(direct)
    x.send_cmd("BLPOP", q, "10")
    wait_until(lambda: blocked_clients(direct) > base, 5, what="X's BLPOP blocked upstream")
    assert direct.client_kill_filter(_id=ids[0]) == 1
    assert x.read_raw() == LOST
    assert x.wait_closed(5), "the client whose held connection died was not disconnected"
    x.close()
    for c, cid in ((y, ids[1]), (z, ids[2])):
        assert c.call_raw("GET", k) == bulk("kept")
        assert held_id(c) == cid
        c.close()
    with p.login(timeout=10) as n:
        assert n.call_raw("GET", k) == bulk("kept")
        assert held_id(n) not in ids[:1]
    assert p.proc.poll() is None




def test_session_connection_whose_id_the_client_learnt_is_not_handed_on(respguard, direct):
    """A client that asked CLIENT ID may have handed the id to others (TRACKING REDIRECT,
    CLIENT KILL ID, CLIENT UNBLOCK): its connection goes with it, as a direct one would, so the
    next client never receives what was meant for the one that left."""
    p = start(respguard, "session", admin=True, size=1, min_idle=1)
    wait_idle(p, 1)
    k = unique("redir")
    a = p.login(timeout=10)
    a_id = a.call("CLIENT", "ID")
    tracker = direct  # a client that sends its invalidations to A's connection
    tracker.execute_command("CLIENT", "TRACKING", "on", "REDIRECT", a_id, "BCAST", "PREFIX", k)
    try:
        assert a.call_raw("QUIT") == OK
        a.close()
        b = p.login(timeout=10)
        try:
            assert held_id(b) != a_id, "A's connection was handed on to B"
            assert a_id not in rg_ids(p, direct)
            direct.set(k + ":x", "1")  # would be an invalidation for A's connection
            assert b.call_raw("PING") == PONG
            assert quiet(b, 0.5), "B received something meant for A: %r" % b.buf
        finally:
            b.close()
    finally:
        tracker.execute_command("CLIENT", "TRACKING", "off")
    assert p.proc.poll() is None
