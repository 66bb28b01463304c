"""Faults: the upstream dies mid-pipeline; respguard drains on SIGTERM/SIGINT."""

import signal
import socket
import subprocess

import pytest

from helpers import PASSWORDS, blocked_clients, unique, wait_until
from resp_util import ConnectionClosed, RawConn, bulk, encode

pytestmark = pytest.mark.proxy_only



def drain_replies(c, limit):
    """Replies until the proxy closes (or `limit` replies); a hang raises AssertionError."""
    out = []
    try:
        while len(out) < limit:
            out.append(c.read_raw())
    except (ConnectionClosed, ConnectionResetError):
        pass
    except socket.timeout:
        raise AssertionError("client hung after %d replies: %r" % (len(out), out[-3:]))
    return out


def served(port):
    """True if a new connection to port is accepted AND served (AUTH + PING answered)."""
    try:
        c = RawConn(port, timeout=5)
    except (ConnectionRefusedError, ConnectionResetError):
        return False  # refused, or reset from the backlog of a listener that just closed
    try:
        c.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("PING"))
        got = drain_replies(c, 2)
    except (BrokenPipeError, ConnectionResetError):
        return False
    finally:
        c.close()
    return b"+PONG\r\n" in got


def test_upstream_killed_mid_pipeline(respguard, redis_server_factory):
    srv = redis_server_factory()
    p = respguard(upstream_server=srv)
    d = srv.client()
    k, q = unique(), unique("q")
    c = p.login("web", timeout=15)
    c.send(encode("SET", k, "1") + encode("BLPOP", q, "60") + b"".join(encode("GET", k) for _ in range(200)))
    assert c.read_raw() == b"+OK\r\n"
    wait_until(lambda: blocked_clients(d) >= 1, 5, what="BLPOP blocked on the upstream")
    d.close()
    srv.kill()
    got = drain_replies(c, 201)
    assert all(r.startswith(b"-") for r in got), \
        "non-error replies after the upstream died: %r" % [r for r in got if not r.startswith(b"-")][:3]
    if len(got) == 201:  # all answered: then the session must not pretend to work
        c.send(encode("PING"))
        assert drain_replies(c, 1) != [b"+PONG\r\n"]
    c.close()
    p.wait_event("upstream_error", stage="lost", timeout=5)

    # a new client now gets an error, not a hang
    with p.raw(timeout=15) as n:
        n.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("PING"))
        got = drain_replies(n, 2)
    assert any(r.startswith(b"-") for r in got), got
    assert b"+PONG\r\n" not in got
    p.wait_event("upstream_error", stage="connect", timeout=5)
    assert p.proc.poll() is None, "respguard exited when the upstream died"


def test_new_sessions_work_again_after_upstream_restart(respguard, redis_server_factory, workdir, certs):
    srv = redis_server_factory()
    p = respguard(upstream_server=srv)
    with p.login("web") as c:
        assert c.call_raw("PING") == b"+PONG\r\n"
    srv.kill()
    with p.raw(timeout=15) as n:
        n.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("PING"))
        assert b"+PONG\r\n" not in drain_replies(n, 2)
    again = redis_server_factory(tls_port=srv.tls_port, password=srv.password)
    assert again.client().ping()
    with p.login("web") as c:
        assert c.call_raw("PING") == b"+PONG\r\n"


def test_sigterm_drains_in_flight_blpop(respguard, direct):
    p = respguard(limits={"shutdown_timeout": "5s"})
    q = unique("q")
    base = blocked_clients(direct)
    c = p.login("web", timeout=15)
    c.send_cmd("BLPOP", q, "20")
    wait_until(lambda: blocked_clients(direct) >= base + 1, 5, what="BLPOP blocked on the upstream")
    p.signal(signal.SIGTERM)
    wait_until(lambda: not served(p.port), 5, what="new connections refused after SIGTERM")
    assert p.proc.poll() is None, "respguard exited before the in-flight BLPOP was answered"
    direct.rpush(q, "drained")
    try:
        got = c.read_raw()
    except (ConnectionClosed, ConnectionResetError):
        raise AssertionError("respguard closed the client on SIGTERM instead of delivering the "
                             "in-flight BLPOP reply (exit code %s)" % p.proc.poll())
    assert got == b"*2\r\n" + bulk(q) + bulk("drained")
    try:
        rc = p.proc.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError("respguard did not exit after draining")
    assert rc == 0
    c.close()
    p.wait_event("shutdown", timeout=1)


def test_sigterm_exits_after_shutdown_timeout_with_stuck_client(respguard, direct):
    p = respguard(limits={"shutdown_timeout": "1s"})
    q = unique("q")
    base = blocked_clients(direct)
    c = p.login("web", timeout=15)
    c.send_cmd("BLPOP", q, "60")
    wait_until(lambda: blocked_clients(direct) >= base + 1, 5, what="BLPOP blocked on the upstream")
    p.signal(signal.SIGTERM)
    try:
        p.proc.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError("respguard still running long after shutdown_timeout")
    assert c.wait_closed(5)
    c.close()
    p.wait_event("shutdown", timeout=1)
    # the upstream connection was closed too: the BLPOP is no longer blocked
    wait_until(lambda: blocked_clients(direct) <= base, 5, what="upstream session closed")


def test_sigint_idle_exits_zero(proxy):
    with proxy.login("web") as c:
        assert c.call_raw("PING") == b"+PONG\r\n"
    proxy.signal(signal.SIGINT)
    try:
        assert proxy.proc.wait(15) == 0
    except subprocess.TimeoutExpired:
        raise AssertionError("respguard did not exit on SIGINT")
    proxy.wait_event("shutdown", timeout=1)


def test_idle_logged_in_client_closed_on_shutdown(proxy):
    c = proxy.login("web", timeout=15)
    assert c.call_raw("PING") == b"+PONG\r\n"
    proxy.signal(signal.SIGTERM)
    try:
        assert proxy.proc.wait(15) == 0
    except subprocess.TimeoutExpired:
        raise AssertionError("respguard did not exit with only an idle client connected")
    assert c.wait_closed(5)
    c.close()
