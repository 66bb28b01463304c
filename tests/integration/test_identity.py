"""Who a session is upstream and downstream: per-user upstream credentials
(upstream_credential) and users named by their client certificate (user_from_cert: cn)."""

import ssl

import pytest

from helpers import PASSWORDS, default_users, unique
from resp_util import RawConn

pytestmark = pytest.mark.proxy_only


@pytest.fixture
def readonly_upstream_user(direct):
    """An upstream ACL user like Upstash's default_ro: reads only."""
    name, pw = unique("ro"), "ro-" + unique("pw")
    direct.execute_command("ACL", "SETUSER", name, "on", ">" + pw, "~*", "&*", "+@read", "+ping",
                           "+hello", "+client|setname", "+auth")
    yield name, pw
    direct.execute_command("ACL", "DELUSER", name)


def test_upstream_credential_maps_a_user_to_another_upstream_login(respguard, direct, readonly_upstream_user):
    name, pw = readonly_upstream_user
    users = default_users()
    users["reader"] = {"acl": "on >readerpass ~* &* +@all", "upstream_credential": "ro"}
    p = respguard(users=users, overrides={"upstream": {"credentials": {"ro": {"username": name, "password": pw}}}})
    k = unique()
    direct.set(k, "v")
    c = RawConn(p.port)
    assert c.call_raw("AUTH", "reader", "readerpass") == b"+OK\r\n"
    assert c.call_raw("GET", k) == b"$1\r\nv\r\n"
    # respguard's rules allow SET, but the provider-side credential is read-only: its refusal
    # comes back as the upstream's own NOPERM
    assert c.call_raw("SET", k, "w").startswith(b"-NOPERM")
    # ACL WHOAMI is respguard's user, never the upstream login the credential maps to
    assert c.call_raw("ACL", "WHOAMI") == b"$6\r\nreader\r\n"
    assert c.call_raw("ACL", "LIST").startswith(b"-NOPERM")  # guard: ACL is never granted by +@all
    # logging in as another user on the same connection switches the upstream credential too
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    assert c.call_raw("SET", k, "w") == b"+OK\r\n"
    assert c.call_raw("AUTH", "reader", "readerpass") == b"+OK\r\n"
    assert c.call_raw("SET", k, "x").startswith(b"-NOPERM")
    c.close()
    assert direct.get(k) == b"w"
    assert pw not in p.stderr_text()


def test_user_from_certificate_cn(respguard, certs, direct):
    p = respguard(client_ca=True, user_from_cert=True)
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    ctx.load_cert_chain(certs.path("client.crt"), certs.path("client.key"))
    c = RawConn(p.tls_port, tls_context=ctx, server_hostname="localhost")
    k = unique()
    assert c.call_raw("SET", k, "by-cert") == b"+OK\r\n"  # no AUTH: the certificate says who (CN=web)
    c.close()
    assert direct.get(k) == b"by-cert"
    ev = p.wait_event("login", result="ok")
    assert ev["user"] == "web"
    # without the option the same certificate only opens the TLS session: AUTH is still needed
    q = respguard(client_ca=True)
    c = RawConn(q.tls_port, tls_context=ctx, server_hostname="localhost")
    assert c.call_raw("GET", k) == b"-NOAUTH Authentication required.\r\n"
    c.close()
