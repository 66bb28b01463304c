"""TLS listeners: server certificate, optional client certificates (mTLS)."""

import ssl

import pytest
import redis

from helpers import PASSWORDS, unique
from resp_util import ConnectionClosed, RawConn, encode

pytestmark = pytest.mark.proxy_only


def tls_client(p, certs, **kw):
    return redis.Redis(host="127.0.0.1", port=p.tls_port, username="web", password=PASSWORDS["web"],
                       ssl=True, ssl_ca_certs=certs.path("ca.crt"), ssl_cert_reqs="required",
                       socket_timeout=10, socket_connect_timeout=5, **kw)


def test_tls_listener_with_redis_py(respguard, certs, direct):
    p = respguard(tls_listener=True)
    r = tls_client(p, certs)
    k = unique()
    assert r.set(k, "over-tls")
    assert r.get(k) == b"over-tls"
    assert direct.get(k) == b"over-tls"
    v = bytes(range(256)) * 4096  # 1 MiB through TLS both ways
    assert r.set(k, v)
    assert r.get(k) == v
    r.close()
    listening = p.events("listening")
    assert any(str(p.tls_port) in str(e.get("bind")) and e.get("tls") in (True, "true", 1)
               for e in listening), listening


def test_tls_listener_verifies_as_localhost(respguard, certs):
    p = respguard(tls_listener=True)
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))  # check_hostname on
    c = RawConn(p.tls_port, tls_context=ctx, server_hostname="localhost")
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    assert c.call_raw("PING") == b"+PONG\r\n"
    c.close()
    # a client that trusts another CA refuses the proxy's certificate
    bad = ssl.create_default_context(cafile=certs.path("rogue_ca.crt"))
    with pytest.raises(ssl.SSLCertVerificationError):
        RawConn(p.tls_port, tls_context=bad, server_hostname="localhost")


def test_plaintext_on_tls_port_is_not_served(respguard):
    p = respguard(tls_listener=True)
    c = RawConn(p.tls_port, timeout=10)
    try:
        c.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("PING"))
        got = b""
        try:
            while b"PONG" not in got:
                got += c.read_bytes(1)
        except (ConnectionClosed, ConnectionResetError):
            pass
        assert b"PONG" not in got and b"+OK" not in got
    finally:
        c.close()
    # the TLS port still serves TLS clients afterwards
    t = p.raw_tls()
    assert t.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    t.close()


def _mtls_attempt(p, certs, cert=None):
    """Connect with (or without) a client cert; return 'ok' or the exception."""
    kw = {}
    if cert:
        kw = {"ssl_certfile": certs.path(cert + ".crt"), "ssl_keyfile": certs.path(cert + ".key")}
    r = tls_client(p, certs, **kw)
    try:
        return "ok" if r.ping() else "no"
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ssl.SSLError, OSError) as e:
        return e
    finally:
        r.close()


def test_client_certificate_required(respguard, certs):
    p = respguard(client_ca=True)
    got = _mtls_attempt(p, certs)
    assert got != "ok", "a client without certificate was served"
    assert not isinstance(got, redis.exceptions.TimeoutError), "no certificate: hang, not refusal"
    got = _mtls_attempt(p, certs, "client_rogue")
    assert got != "ok", "a client certificate from an untrusted CA was accepted"
    assert _mtls_attempt(p, certs, "client") == "ok"


def test_client_certificate_session_works(respguard, certs, direct):
    p = respguard(client_ca=True)
    r = tls_client(p, certs, ssl_certfile=certs.path("client.crt"), ssl_keyfile=certs.path("client.key"))
    k = unique()
    pipe = r.pipeline()
    for i in range(100):
        pipe.rpush(k, i)
    pipe.execute()
    assert r.llen(k) == 100
    assert direct.lrange(k, 0, 2) == [b"0", b"1", b"2"]
    r.close()
    # the plaintext loopback listener of the same instance needs no certificate
    with p.login("web") as c:
        assert c.call_raw("LLEN", k) == b":100\r\n"
