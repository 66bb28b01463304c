"""Regression tests for the review findings fixed in "Fix nine review findings in transport and
session": TLS close-after-reply (QUIT, protocol error, drain), fds leaked by clients that reset,
unbounded memory for a client that never reads, local replies landing inside a streamed pub/sub
message, half-closed clients, RESET with arguments, (P|S)(UN)SUBSCRIBE inside MULTI and MULTI in
RESP2 subscribed mode, and the argument-less UNSUBSCRIBE.

Every wait is bounded (socket timeouts, wait_until); nothing sleeps to assert.
"""

import os
import signal
import socket
import struct
import time

import pytest

from helpers import PASSWORDS, unique, wait_until, blocked_clients
from resp_util import ConnectionClosed, RawConn, bulk, encode

AUTH_WEB = encode("AUTH", "web", PASSWORDS["web"])
PROTOCOL_ERROR = b"*1\r\n$-5\r\n"  # a negative bulk length other than -1
UNKNOWN_FOO = b"-ERR unknown command 'FOO'"



def confirmation(kind, ch, n):
    return b"*3\r\n" + bulk(kind) + bulk(ch) + b":%d\r\n" % n


def tls_login(p, timeout=5.0):
    c = p.raw_tls(timeout=timeout)
    c.send(AUTH_WEB)
    assert c.read_raw() == b"+OK\r\n"
    return c


def read_until_eof(c, timeout=5.0):
    """Everything until the peer closes (bounded); returns the bytes received."""
    c.wait_closed(timeout)
    data, c.buf = c.buf, b""
    return data


# ---------------------------------------------------------------------------
# 1. TLS listener: close-after-reply
# ---------------------------------------------------------------------------

@pytest.mark.proxy_only
def test_tls_quit_replies_ok_then_closes(respguard):
    p = respguard(tls_listener=True)
    c = tls_login(p, timeout=3)
    c.send_cmd("QUIT")
    assert c.read_raw() == b"+OK\r\n"
    assert read_until_eof(c, 3) == b""
    c.close()
    # the listener still serves
    c2 = tls_login(p, timeout=3)
    assert c2.call_raw("PING") == b"+PONG\r\n"
    c2.close()


@pytest.mark.proxy_only
@pytest.mark.parametrize("logged_in", [False, True], ids=["before_login", "after_login"])
def test_tls_protocol_error_answered_then_closed(respguard, logged_in):
    p = respguard(tls_listener=True)
    c = tls_login(p, timeout=3) if logged_in else p.raw_tls(timeout=3)
    c.send(PROTOCOL_ERROR)
    line = c.read_line()
    assert line.startswith(b"-ERR Protocol error"), line
    assert read_until_eof(c, 3) == b""
    c.close()


@pytest.mark.proxy_only
def test_tls_sigterm_drain_delivers_inflight_blpop(respguard):
    p = respguard(tls_listener=True, limits={"shutdown_timeout": "20s"})
    c = tls_login(p, timeout=10)
    key = unique("drain")
    assert c.call_raw("PING") == b"+PONG\r\n"  # the upstream link is up
    c.send_cmd("BLPOP", key, "1")
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert c.read_raw() == b"*-1\r\n"
    assert read_until_eof(c, 10) == b""
    c.close()
    rc = p.proc.wait(15)
    elapsed = time.monotonic() - t0
    assert rc == 0, p.stderr_text()[-3000:]
    # BLPOP times out after 1s; a hang would last until shutdown_timeout (20s)
    assert elapsed < 10, "respguard took %.1fs to drain one BLPOP over TLS" % elapsed


# ---------------------------------------------------------------------------
# 2. clients that reset after a protocol error leave no fds behind
# ---------------------------------------------------------------------------

def _socket_fds(pid):
    n = 0
    d = "/proc/%d/fd" % pid
    for f in os.listdir(d):
        try:
            if os.readlink(os.path.join(d, f)).startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def _settled_socket_fds(pid):
    """The socket count once three polls in a row agree (bounded)."""
    seen = []

    def stable():
        seen.append(_socket_fds(pid))
        return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]
    wait_until(stable, 5, interval=0.1, what="a stable socket count")
    return seen[-1]


@pytest.mark.proxy_only
@pytest.mark.parametrize("logged_in", [False, True], ids=["before_login", "after_login"])
def test_reset_after_protocol_error_leaks_no_socket(respguard, logged_in):
    p = respguard()
    pid = p.proc.pid
    # one full session first, so that whatever is set up lazily is in the baseline
    with p.login() as c:
        assert c.call_raw("PING") == b"+PONG\r\n"
    before = _settled_socket_fds(pid)
    payload = (AUTH_WEB if logged_in else b"") + PROTOCOL_ERROR
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(payload)
        s.close()  # RST
    wait_until(lambda: _socket_fds(pid) <= before, 5, interval=0.1,
               what="respguard's socket count back to %d (now %d)" % (before, _socket_fds(pid)))
    # and it still serves
    with p.login() as c:
        assert c.call_raw("PING") == b"+PONG\r\n"


# ---------------------------------------------------------------------------
# 3. a client that never reads cannot grow respguard's memory
# ---------------------------------------------------------------------------

def _rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS for pid %d" % pid)


RSS_BOUND_MB = 80


@pytest.mark.proxy_only
@pytest.mark.parametrize("logged_in,cmd", [(False, b"PING\r\n"), (True, b"FOO\r\n")],
                         ids=["ping_before_login", "unknown_after_login"])
def test_flood_without_reading_is_memory_bounded(respguard, logged_in, cmd):
    p = respguard(limits={"client_output_bytes": "1mb", "login_timeout": "30s"})
    pid = p.proc.pid
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
    s.settimeout(5)
    s.connect(("127.0.0.1", p.port))
    try:
        if logged_in:
            s.sendall(AUTH_WEB)
            assert s.recv(5) == b"+OK\r\n"
        chunk = cmd * ((1 << 20) // len(cmd))
        s.settimeout(2)  # a sendall blocked this long: respguard stopped reading, as it should
        peak = _rss_mb(pid)
        sent = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:
            try:
                s.sendall(chunk)
            except socket.timeout:
                break
            sent += len(chunk)
            peak = max(peak, _rss_mb(pid))
            if peak >= RSS_BOUND_MB:
                break  # already failed: stop before the machine runs short of memory
        peak = max(peak, _rss_mb(pid))
        assert p.proc.poll() is None, "respguard died: " + p.stderr_text()[-2000:]
        assert peak < RSS_BOUND_MB, \
            "respguard's RSS reached %.0f MB after %d MB of %r from a client that never reads" \
            % (peak, sent >> 20, cmd)
    finally:
        s.close()
    with p.login() as c:
        assert c.call_raw("PING") == b"+PONG\r\n"


# ---------------------------------------------------------------------------
# 4. a local reply never lands inside a streamed pub/sub message
# ---------------------------------------------------------------------------

def _recv_exact(c, n):
    """n bytes from a RawConn, using its buffer first (bytearray: no quadratic copying)."""
    out = bytearray(c.buf[:n])
    c.buf = c.buf[n:]
    while len(out) < n:
        chunk = c.sock.recv(min(1 << 20, n - len(out)))
        if not chunk:
            raise ConnectionClosed("closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return bytes(out)


@pytest.mark.proxy_only
@pytest.mark.parametrize("local", ["unknown", "quit"])
def test_local_reply_waits_for_streamed_message(respguard, local):
    # 1mb: respguard pauses the upstream mid-message, so the frame is open when the command comes
    p = respguard(limits={"client_output_bytes": "1mb"})
    ch = unique("big")
    n = 8 << 20
    payload = (b"0123456789abcdef" * (n // 16))
    sub = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # small, fixed: no autotuning
    sub.settimeout(10)
    sub.connect(("127.0.0.1", p.port))
    c = RawConn.__new__(RawConn)
    c.sock, c.buf = sub, b""
    try:
        c.send(AUTH_WEB)
        assert c.read_raw() == b"+OK\r\n"
        assert c.call_raw("SUBSCRIBE", ch) == confirmation("subscribe", ch, 1)
        pub = p.login(timeout=10)
        pub.send_cmd("PUBLISH", ch, payload)
        assert pub.read_raw() == b":1\r\n"
        pub.close()
        header = b"*3\r\n" + bulk("message") + bulk(ch) + b"$%d\r\n" % n
        # the message has started to arrive: respguard is in the middle of it
        got = _recv_exact(c, len(header) + 4096)
        assert got[:len(header)] == header
        if local == "unknown":
            c.send(b"FOO\r\n" * 20)
        else:
            c.send_cmd("QUIT")
        rest = _recv_exact(c, n - 4096 + 2)
        body = got[len(header):] + rest[:-2]
        if body != payload:
            i = next(i for i in range(n) if body[i] != payload[i])
            raise AssertionError("message corrupted at offset %d: %r" % (i, body[i:i + 80]))
        assert rest[-2:] == b"\r\n"
        if local == "unknown":
            for _ in range(20):
                line = c.read_line()
                assert line.startswith(UNKNOWN_FOO), line
            assert c.call_raw("PING") == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        else:
            assert c.read_raw() == b"+OK\r\n"
            assert read_until_eof(c, 5) == b""
    finally:
        sub.close()


# ---------------------------------------------------------------------------
# 5. half-close
# ---------------------------------------------------------------------------

def test_half_closed_client_gets_every_reply(proxy):
    k = unique("hc")
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    try:
        s.sendall(AUTH_WEB + encode("SET", k, "1") + encode("GET", k))
        s.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "no EOF after %r" % data
            d = s.recv(4096)
            if not d:
                break
            data += d
        assert data == b"+OK\r\n+OK\r\n$1\r\n1\r\n"
    finally:
        s.close()


def test_half_closed_client_with_a_blocked_command_is_closed_at_once(respguard, direct):
    """Redis frees a client that half-closes while blocked; respguard closes it at once too
    (after the replies that are due), instead of waiting shutdown_timeout for a reply that may
    never come, and the upstream connection the command blocks is closed, not handed on."""
    p = respguard(limits={"shutdown_timeout": "60s"})
    k = unique("hcb")
    before = blocked_clients(direct)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(AUTH_WEB + encode("SET", k + ":x", "1") + encode("BLPOP", k, "0"))
        wait_until(lambda: blocked_clients(direct) == before + 1, 5, what="BLPOP blocked upstream")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            d = s.recv(4096)  # the 10 s socket timeout fails the test long before 60 s
            if not d:
                break
            data += d
        assert data == b"+OK\r\n+OK\r\n"
    finally:
        s.close()
    wait_until(lambda: blocked_clients(direct) == before, 5, what="the blocked upstream connection closed")


# ---------------------------------------------------------------------------
# 6. RESET with an argument
# ---------------------------------------------------------------------------

RESET_ARITY = b"-ERR wrong number of arguments for 'reset' command\r\n"


def test_reset_with_argument_is_arity_error(proxy):
    k = unique("rs")
    c = proxy.login()
    assert c.call_raw("SET", k, "v") == b"+OK\r\n"
    assert c.call_raw("RESET", "x") == RESET_ARITY
    assert c.call_raw("GET", k) == b"$1\r\nv\r\n"  # still logged in
    c.close()


def test_reset_with_argument_while_subscribed(proxy, direct):
    ch = unique("ch")
    c = proxy.login()
    assert c.call_raw("SUBSCRIBE", ch) == confirmation("subscribe", ch, 1)
    assert c.call_raw("RESET", "x") == RESET_ARITY
    # still subscribed (RESP2 subscribed mode) and still logged in
    assert c.call_raw("PING") == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    assert direct.publish(ch, "still") == 1
    assert c.read_raw() == b"*3\r\n" + bulk("message") + bulk(ch) + bulk("still")
    assert c.call_raw("UNSUBSCRIBE", ch) == confirmation("unsubscribe", ch, 0)
    assert c.call_raw("PING") == b"+PONG\r\n"
    c.close()


# ---------------------------------------------------------------------------
# 7. MULTI and subscriptions
# ---------------------------------------------------------------------------

@pytest.mark.proxy_only
def test_subscribe_inside_multi_is_refused(proxy, direct):
    ch = unique("ch")
    c = proxy.login()
    c.send(encode("MULTI") + encode("SUBSCRIBE", ch) + encode("EXEC"))
    assert c.read_raw() == b"+OK\r\n"
    assert c.read_raw() == (b"-ERR (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE inside MULTI are not "
                            b"supported through respguard\r\n")
    assert c.read_raw() == b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    assert direct.publish(ch, "nobody") == 0  # no subscription was made
    c.send(encode("PING") + b"FOO\r\n")
    assert c.read_raw() == b"+PONG\r\n"
    assert c.read_line().startswith(UNKNOWN_FOO)
    assert c.call_raw("EXEC") == b"-ERR EXEC without MULTI\r\n"
    c.close()


def test_multi_in_resp2_subscribed_mode(proxy):
    a, b, d = unique("a"), unique("b"), unique("c")
    c = proxy.login()
    assert c.call_raw("SUBSCRIBE", a) == confirmation("subscribe", a, 1)
    assert c.call_raw("MULTI") == (
        b"-ERR Can't execute 'multi': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
        b"RESET are allowed in this context\r\n")
    c.send(encode("SUBSCRIBE", b, d) + b"FOO\r\n")
    assert c.read_raw() == confirmation("subscribe", b, 2)
    assert c.read_raw() == confirmation("subscribe", d, 3)
    assert c.read_line().startswith(UNKNOWN_FOO)
    c.close()


# ---------------------------------------------------------------------------
# 8. argument-less UNSUBSCRIBE
# ---------------------------------------------------------------------------

@pytest.mark.proxy_only
def test_error_to_argumentless_unsubscribe_is_forwarded(respguard, redis_server_factory):
    """The upstream's own user may not run UNSUBSCRIBE: its error is the reply."""
    srv = redis_server_factory()
    p = respguard(upstream_server=srv)
    up = srv.client()
    try:
        up.execute_command("ACL", "SETUSER", "default", "-unsubscribe")
        c = p.login(timeout=5)
        k = unique("u")
        c.send(encode("UNSUBSCRIBE") + encode("SET", k, "1") + encode("GET", k))
        line = c.read_line()
        assert line.startswith(b"-NOPERM") and b"unsubscribe" in line, line
        assert c.read_raw() == b"+OK\r\n"
        assert c.read_raw() == b"$1\r\n1\r\n"
        c.close()
    finally:
        up.close()


def test_argumentless_unsubscribe_with_three_subscriptions(proxy):
    chans = [unique("u%d" % i) for i in range(3)]
    k = unique("k")
    c = proxy.login()
    c.send_cmd("SUBSCRIBE", *chans)
    for i, ch in enumerate(chans):
        assert c.read_raw() == confirmation("subscribe", ch, i + 1)
    c.send(encode("UNSUBSCRIBE") + encode("PING") + encode("SET", k, "x") + encode("GET", k))
    seen = []
    for left in (2, 1, 0):
        v = c.read_reply()
        assert v[0] == b"unsubscribe" and v[2] == left, v
        seen.append(v[1].decode())
    assert sorted(seen) == sorted(chans)
    assert c.read_raw() == b"+PONG\r\n"
    assert c.read_raw() == b"+OK\r\n"
    assert c.read_raw() == b"$1\r\nx\r\n"
    c.close()


def test_idle_sessions_give_back_buffers_grown_for_big_values(respguard):
    """Twenty sessions each SET and GET an 8 MB value, then stay idle: respguard keeps none of
    those sizes (input, TLS staging and the engine's BIO used to stay at 8 MB each: 584 MB)."""
    p = respguard()
    value = b"x" * (8 << 20)
    conns = []
    for i in range(20):
        c = RawConn(p.port, timeout=20)
        c.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("SET", "big:%d" % i, value) + encode("GET", "big:%d" % i))
        assert c.read_bytes(5) == b"+OK\r\n" and c.read_bytes(5) == b"+OK\r\n"
        assert c.read_bytes(len(value) + 12) == b"$8388608\r\n" + value + b"\r\n"
        conns.append(c)
    rss = _rss_mb(p.proc.pid)
    for c in conns:
        c.close()
    assert rss < RSS_BOUND_MB, "respguard holds %.0f MB for 20 idle sessions" % rss


def test_auth_and_hello_inside_multi_are_refused_and_abort_the_transaction(respguard, direct):
    p = respguard()
    c = RawConn(p.port)
    k = unique()
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    assert c.call_raw("MULTI") == b"+OK\r\n"
    assert c.call_raw("SET", k, "v") == b"+QUEUED\r\n"
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == \
        b"-ERR AUTH and HELLO inside MULTI are not supported through respguard\r\n"
    assert c.call_raw("EXEC") == b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    assert c.call_raw("MULTI") == b"+OK\r\n"
    assert c.call_raw("HELLO", "3").startswith(b"-ERR AUTH and HELLO inside MULTI")
    assert c.call_raw("EXEC").startswith(b"-EXECABORT")
    assert c.call_raw("PING") == b"+PONG\r\n"
    c.close()
    assert direct.get(k) is None


def test_client_closing_during_blocking_command_frees_the_session(respguard, direct):
    """A client that times out and closes during BLPOP 0 must not leave its session and its
    upstream connection blocked forever: they go within shutdown_timeout."""
    from helpers import blocked_clients
    p = respguard(limits={"shutdown_timeout": "1s"})
    base = blocked_clients(direct)
    for i in range(3):
        c = RawConn(p.port)
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        c.send(encode("BLPOP", unique("never"), "0"))
        wait_until(lambda: blocked_clients(direct) == base + 1, 5, what="BLPOP blocked upstream")
        c.close()
        # closed at once, as Redis frees a client that closes while blocked
        wait_until(lambda: blocked_clients(direct) <= base, 10, what="upstream session released")
    assert p.proc.poll() is None


def test_monitor_is_served_to_a_named_grant_and_reset_ends_it(respguard):
    """MONITOR was once refused to everyone; a user trusted with every key and channel who
    names +monitor gets the stream, and RESET gives the connection back to commands."""
    users = {"watcher": {"acl": "on >watchpass ~* &* +@all +monitor"}}
    p = respguard(users=users)
    c = RawConn(p.port)
    assert c.call_raw("AUTH", "watcher", "watchpass") == b"+OK\r\n"
    assert c.call_raw("MONITOR") == b"+OK\r\n"
    assert c.call_raw("RESET") == b"+RESET\r\n"
    assert c.call_raw("PING") == b"-NOAUTH Authentication required.\r\n"
    assert c.call_raw("AUTH", "watcher", "watchpass") == b"+OK\r\n"
    assert c.call_raw("PING") == b"+PONG\r\n"
    c.close()


def test_idle_session_upstream_connection_is_trimmed_and_used_again(respguard, direct):
    """An idle session's own upstream connection gives back its buffers (and its TLS engine's)
    like the client side does; the session's next commands use the same connection, big values
    included."""
    p = respguard()
    k = unique()
    value = b"y" * (1 << 20)
    c = RawConn(p.port, timeout=20)
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    assert c.call_raw("SET", k, value) == b"+OK\r\n"
    first_id = c.call("CLIENT", "ID")
    time.sleep(2.5)  # the idle sweep runs once a second for sessions idle over a second
    assert c.call_raw("GET", k) == b"$%d\r\n" % len(value) + value + b"\r\n"
    assert c.call("CLIENT", "ID") == first_id
    assert c.call_raw("SET", k, value + b"z") == b"+OK\r\n"
    assert direct.strlen(k) == len(value) + 1
    c.close()
