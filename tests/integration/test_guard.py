"""The guard: commands a user may not run are refused with Redis's own NOPERM text,
never reach the upstream, never close the connection, and are logged."""

import ssl

import pytest

from helpers import PASSWORDS, unique, wait_until
from resp_util import RawConn, encode

pytestmark = pytest.mark.proxy_only

# (command, Redis's name for it in NOPERM errors)
DANGEROUS = [
    (("FLUSHALL",), "flushall"),
    (("FLUSHALL", "ASYNC"), "flushall"),
    (("flushall",), "flushall"),
    (("CONFIG", "GET", "x"), "config|get"),
    (("config", "set", "maxmemory", "1"), "config|set"),
    (("CONFIG", "RESETSTAT"), "config|resetstat"),
    (("CLIENT", "KILL", "127.0.0.1:1"), "client|kill"),
    (("DEBUG", "SLEEP", "0"), "debug"),
    (("FLUSHDB",), "flushdb"),
]


def noperm(name):
    return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % name.encode()


def direct_raw(upstream, user, password):
    ctx = ssl.create_default_context(cafile=upstream.certs.path("ca.crt"))
    c = RawConn(upstream.tls_port, host="127.0.0.1", tls_context=ctx, server_hostname="localhost")
    assert c.call_raw("AUTH", user, password) == b"+OK\r\n"
    return c


@pytest.fixture
def probe_user(direct):
    """A real Redis ACL user lacking the dangerous commands, to read Redis's own texts."""
    direct.execute_command("ACL", "SETUSER", "rg_probe", "reset", "on", ">probe-pw", "~*", "&*",
                           "+@all", "-flushall", "-flushdb", "-config", "-client|kill", "-debug")
    yield ("rg_probe", "probe-pw")
    direct.execute_command("ACL", "DELUSER", "rg_probe")


def test_noperm_texts_are_redis_own(proxy, upstream, probe_user):
    ref = direct_raw(upstream, *probe_user)
    with proxy.login("web") as c:
        for cmd, name in DANGEROUS:
            if name == "debug":
                # Redis refuses DEBUG before the ACL check (enable-debug-command); a user
                # without the command gets NOPERM
                want = noperm(name)
            else:
                want = ref.call_raw(*cmd)
                assert want == noperm(name), "reference Redis answered %r to %r" % (want, cmd)
            assert c.call_raw(*cmd) == want, cmd
            assert c.call_raw("PING") == b"+PONG\r\n"
    ref.close()


def test_refused_commands_keep_connection_usable(proxy, direct):
    k = unique()
    with proxy.login("web") as c:
        assert c.call_raw("SET", k, "1") == b"+OK\r\n"
        assert c.call_raw("FLUSHALL") == noperm("flushall")
        assert c.call_raw("CONFIG", "GET", "x") == noperm("config|get")
        assert c.call_raw("CLIENT", "KILL", "127.0.0.1:1") == noperm("client|kill")
        assert c.call_raw("INCR", k) == b":2\r\n"
    assert direct.get(k) == b"2"


def test_ops_may_flushdb_by_name_but_not_flushall(proxy, direct):
    k = unique()
    direct.set(k, "x")
    with proxy.login("ops") as c:
        assert c.call_raw("FLUSHALL") == noperm("flushall")
        assert direct.get(k) == b"x"
        assert c.call_raw("CONFIG", "GET", "maxmemory") == noperm("config|get")
        assert c.call_raw("FLUSHDB") == b"+OK\r\n"
    assert direct.get(k) is None


def test_reauth_switches_the_rules(proxy):
    with proxy.login("web") as c:
        assert c.call_raw("FLUSHDB") == noperm("flushdb")
        assert c.call_raw("AUTH", "ops", PASSWORDS["ops"]) == b"+OK\r\n"
        assert c.call_raw("FLUSHDB") == b"+OK\r\n"
        assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("FLUSHDB") == noperm("flushdb")


def test_refused_commands_never_reach_upstream(proxy, direct):
    direct.config_resetstat()
    with proxy.login("web") as c:
        assert c.call_raw("FLUSHALL") == noperm("flushall")
        assert c.call_raw("CONFIG", "GET", "x") == noperm("config|get")
        assert c.call_raw("CLIENT", "KILL", "127.0.0.1:1") == noperm("client|kill")
        assert c.call_raw("FLUSHDB") == noperm("flushdb")
        assert c.call_raw("PING") == b"+PONG\r\n"
    with proxy.login("ops") as c:
        assert c.call_raw("FLUSHALL") == noperm("flushall")
        assert c.call_raw("FLUSHDB") == b"+OK\r\n"  # control: allowed commands are counted
    stats = direct.info("commandstats")
    for name in ("flushall", "config|get", "client|kill"):
        assert "cmdstat_" + name not in stats, sorted(stats)
    assert stats["cmdstat_flushdb"]["calls"] == 1, stats.get("cmdstat_flushdb")
    assert stats["cmdstat_ping"]["calls"] >= 1


def test_refusal_is_logged(proxy):
    with proxy.login("web") as c:
        port = c.sock.getsockname()[1]
        assert c.call_raw("FLUSHALL") == noperm("flushall")
    e = proxy.wait_event("refused", lambda e: str(port) in str(e.get("peer", "")), user="web")
    assert str(e.get("command", "")).lower() == "flushall", e
    assert e.get("reason"), e


def test_shutdown_is_refused(respguard, redis_server_factory):
    """SHUTDOWN through the proxy must not stop the upstream (own server, in case it does)."""
    srv = redis_server_factory()
    p = respguard(upstream_server=srv)
    with p.login("web") as c:
        assert c.call_raw("SHUTDOWN", "NOSAVE") == noperm("shutdown")
        assert c.call_raw("PING") == b"+PONG\r\n"
    assert srv.proc.poll() is None
    d = srv.client()
    assert d.ping()
    d.close()


def test_key_patterns(respguard, upstream, direct):
    """Key patterns are checked on every key position (DESIGN: ~pattern rules)."""
    users = {"cache": {"acl": "on >cache-Pw-1 ~cache:* &* +@all"}}
    p = respguard(users=users)
    # Redis's own text for the same rule
    direct.execute_command("ACL", "SETUSER", "rg_cache", "reset", "on", ">p", "~cache:*", "&*", "+@all")
    try:
        ref = direct_raw(upstream, "rg_cache", "p")
        want = ref.call_raw("MSET", "cache:a", "1", "other:b", "2")
        ref.close()
    finally:
        direct.execute_command("ACL", "DELUSER", "rg_cache")
    assert want == b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
    k = unique("cache")
    other = unique("other")
    with p.login("cache", "cache-Pw-1") as c:
        assert c.call_raw("SET", k, "1") == b"+OK\r\n"
        assert c.call_raw("GET", other) == want
        assert c.call_raw("MSET", k, "2", other, "2") == want
        assert c.call_raw("RENAME", k, other) == want
        assert c.call_raw("GET", k) == b"$1\r\n1\r\n"
    assert direct.get(other) is None


def test_refused_while_upstream_is_busy(proxy, direct):
    """A refusal queued behind a slow command keeps its place in the order."""
    k = unique("l")
    with proxy.login("web", timeout=10) as c:
        c.send(encode("BLPOP", k, "5") + encode("FLUSHALL") + encode("GET", k))
        wait_until(lambda: int(direct.info("clients")["blocked_clients"]) >= 1, 5,
                   what="BLPOP blocked upstream")
        direct.rpush(k, "v")
        assert c.read_raw() == b"*2\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(k), k.encode())
        assert c.read_raw() == noperm("flushall")
        assert c.read_raw() == b"$-1\r\n"
