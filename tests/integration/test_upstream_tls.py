"""Upstream TLS is always verified: CA, hostname (or server_name), SNI; failures are
answered with an error (never a hang) and logged as upstream_error."""

import socket

import pytest

from helpers import DELETE, PASSWORDS
from resp_util import ConnectionClosed, encode

pytestmark = pytest.mark.proxy_only


def replies_until_closed(c, n):
    """Read up to n replies; stop early when the proxy closes.  A hang raises socket.timeout."""
    out = []
    while len(out) < n:
        try:
            out.append(c.read_raw())
        except (ConnectionClosed, ConnectionResetError):
            break
    return out


def assert_refused_with_error(p):
    with p.raw(timeout=15) as c:
        c.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("PING") + encode("GET", "k"))
        try:
            got = replies_until_closed(c, 3)
        except socket.timeout:
            raise AssertionError("client hung: no reply and no close within 15 s")
    assert got, "connection closed without any error reply"
    assert any(r.startswith(b"-ERR") for r in got), got
    assert b"+PONG\r\n" not in got, got
    assert all(r.startswith(b"-") or r == b"+OK\r\n" for r in got), got
    return got


def test_untrusted_ca_is_refused(respguard, redis_server_factory):
    rogue = redis_server_factory(cert="rogue")
    p = respguard(upstream_server=rogue)
    assert_refused_with_error(p)
    e = p.wait_event("upstream_error", stage="tls")
    assert "certificate verify failed" in str(e.get("reason")), e


def test_system_store_does_not_trust_test_ca(respguard, upstream):
    p = respguard(ca_file=DELETE)
    assert_refused_with_error(p)
    e = p.wait_event("upstream_error", stage="tls")
    assert "certificate verify failed" in str(e.get("reason")), e


def test_certificate_for_another_name_is_refused(respguard, redis_server_factory):
    other = redis_server_factory(cert="other")  # valid chain, only DNS:other.example
    p = respguard(upstream_server=other, upstream_host="localhost")
    assert_refused_with_error(p)
    e = p.wait_event("upstream_error", stage="tls")
    assert "hostname mismatch" in str(e.get("reason")).lower(), e


def test_server_name_not_in_certificate_is_refused(respguard, upstream):
    p = respguard(server_name="wrong.example")
    assert_refused_with_error(p)
    e = p.wait_event("upstream_error", stage="tls")
    assert "hostname mismatch" in str(e.get("reason")).lower(), e


def test_server_name_is_the_name_verified(respguard, redis_server_factory):
    """Control for the two above: the same 'other.example' server is accepted when
    server_name names it, although the URL has an IP address."""
    other = redis_server_factory(cert="other")
    p = respguard(upstream_server=other, upstream_host="127.0.0.1", server_name="other.example")
    with p.login("web") as c:
        assert c.call_raw("PING") == b"+PONG\r\n"
    assert not p.events("upstream_error")


def test_ip_address_url_verified_against_ip_san(respguard, upstream):
    p = respguard(upstream_host="127.0.0.1")
    with p.login("web") as c:
        assert c.call_raw("PING") == b"+PONG\r\n"


def test_wrong_upstream_password(respguard, upstream):
    p = respguard(upstream_password="not-the-Upstream-Pw")
    assert_refused_with_error(p)
    e = p.wait_event("upstream_error", stage="auth")
    assert e.get("reason"), e
    assert "not-the-Upstream-Pw" not in p.stderr_text()


def test_refusal_does_not_break_the_listener(respguard, redis_server_factory):
    rogue = redis_server_factory(cert="rogue")
    p = respguard(upstream_server=rogue)
    for _ in range(3):
        assert_refused_with_error(p)
    assert p.proc.poll() is None, "respguard exited"
    # pre-login handling does not need the upstream at all
    with p.raw() as c:
        assert c.call_raw("GET", "x") == b"-NOAUTH Authentication required.\r\n"
