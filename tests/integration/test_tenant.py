"""A tenant confined to tenant-a: (issue 3), end to end through respguard.

User `tenant`: "on >pw ~tenant-a:* &tenant-a:* +@all -@dangerous" (plus variants where the
base rules cannot show a behaviour: +keys +sort, two key prefixes, all channels).

Each test gets its own redis-server (TLS, requirepass) so that the whole keyspace is known:
every key outside tenant-a: is seeded with a known value and compared (type, DUMP, TTL) after
the test, and MONITOR / INFO commandstats on that server show what actually reached it.

Expected replies: for refusals Redis's own ACL gives too, the same users are created on the
upstream with ACL SETUSER and the same command is sent to Redis as that user; respguard must
answer byte for byte the same (and the text is also pinned here, so a case Redis would run is
never silently accepted). respguard's documented differences (README / acl.c) are asserted
directly, with ACL DRYRUN showing that Redis itself would have allowed them.
"""

import ssl

import pytest
import redis

from helpers import wait_until, pings
from resp_util import RawConn, bulk, encode

pytestmark = pytest.mark.proxy_only

PW = "tenant-Pw-7741"
ACL_TENANT = "on >%s ~tenant-a:* &tenant-a:* +@all -@dangerous" % PW
USERS = {
    "tenant": ACL_TENANT,
    # the base rules refuse KEYS and SORT as commands (both are @dangerous in Redis 7.0)
    "tenant_ks": ACL_TENANT + " +keys +sort",
    # two readable prefixes: SCAN cannot be confined by appending one MATCH
    "tenant_two": "on >%s ~tenant-a:* ~tenant-b:* &tenant-a:* +@all -@dangerous" % PW,
    # keys confined, channels not: system channels are still refused (documented difference)
    "tenant_allch": "on >%s ~tenant-a:* &* +@all -@dangerous" % PW,
}

KEY_ERR = b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
CHAN_ERR = b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n"
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
SORT_BY_ERR = b"-ERR BY option of SORT denied due to insufficient ACL permissions.\r\n"
SORT_GET_ERR = b"-ERR GET option of SORT denied due to insufficient ACL permissions.\r\n"
PONG = b"+PONG\r\n"
OK = b"+OK\r\n"
QUEUED = b"+QUEUED\r\n"


def cmd_err(name):
    return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % name.encode()


# Keys outside the tenant's prefix, with known values; none may be read, changed, renamed or
# deleted, and no other key outside the prefix may appear.
def seed_outside(d):
    d.set("other:x", "outside-x")
    d.set("other:y", "outside-y")
    d.set("other:k", "outside-k")
    d.set("other:bits", b"\xff\x0f")
    d.rpush("other:list", "o1", "o2", "o3")
    d.sadd("other:set", "om1", "om2")
    d.zadd("other:z", {"oa": 1, "ob": 2})
    d.xadd("other:s", {"f": "outside"}, id="1-1")
    d.hset("other:h", mapping={"f": "outside"})
    d.set("tenant-b:x", "neighbour")       # another tenant
    d.set("tenant-ab:x", "prefix-without-colon")
    d.set("tenant-a", "the-prefix-itself")  # not matched by tenant-a:*
    d.set("other:ttl", "with-ttl", ex=3600)


def seed_tenant(d):
    d.set("tenant-a:x", "ax")
    d.rpush("tenant-a:list", "3", "1", "2")
    d.sadd("tenant-a:set", "m", "n")
    d.zadd("tenant-a:z", {"za": 1, "zb": 2})
    d.xadd("tenant-a:s", {"f": "mine"}, id="1-1")
    d.hset("tenant-a:h", mapping={"f": "mine"})


def raw_tls(srv, user, password, timeout=5.0):
    ctx = ssl.create_default_context(cafile=srv.certs.path("ca.crt"))
    c = RawConn(srv.tls_port, tls_context=ctx, server_hostname="localhost", timeout=timeout)
    assert c.call_raw("AUTH", user, password) == OK
    return c


class World:
    def __init__(self, srv, proxy, direct):
        self.srv = srv
        self.proxy = proxy
        self.direct = direct
        self.before = self.snapshot_outside()

    def login(self, user="tenant", timeout=5.0):
        return self.proxy.login(user, PW, timeout=timeout)

    def client(self, user="tenant"):
        return self.proxy.client(user, PW)

    def ref(self, user="tenant"):
        """A direct connection to Redis as the same user, with the same rules."""
        return raw_tls(self.srv, user, PW)

    def dryrun_redis(self, user, args):
        r = self.direct.execute_command("ACL", "DRYRUN", user, *args)
        return r.decode() if isinstance(r, bytes) else r

    def snapshot_outside(self):
        d = self.direct
        snap = {}
        for k in d.keys("*"):
            if k.startswith(b"tenant-a:"):
                continue
            snap[k] = (d.type(k), d.dump(k), d.ttl(k) > 0)
        dbs = sorted(x for x in d.info("keyspace") if x.startswith("db"))
        return snap, dbs

    def assert_outside_unchanged(self):
        (before, dbs_before), (after, dbs_after) = self.before, self.snapshot_outside()
        assert dbs_after == dbs_before == ["db0"], "databases: %r -> %r" % (dbs_before, dbs_after)
        assert sorted(after) == sorted(before), \
            "keys outside tenant-a: changed: added %r, removed %r" % (
                sorted(set(after) - set(before)), sorted(set(before) - set(after)))
        changed = [k for k in before if before[k] != after[k]]
        assert not changed, "keys outside tenant-a: modified: %r" % changed
        assert self.direct.get("other:x") == b"outside-x"
        assert self.direct.lrange("other:list", 0, -1) == [b"o1", b"o2", b"o3"]


@pytest.fixture
def world(redis_server_factory, respguard):
    srv = redis_server_factory()
    d = srv.client()
    wait_until(lambda: pings(d), 10, what="dedicated redis-server")
    seed_outside(d)
    seed_tenant(d)
    for name, acl in USERS.items():
        d.execute_command("ACL", "SETUSER", name, "reset", *acl.split())
    p = respguard(upstream_server=srv, users={n: {"acl": a} for n, a in USERS.items()})
    w = World(srv, p, d)
    yield w
    d.close()



# ---------------------------------------------------------------------------
# the refusal cases
# ---------------------------------------------------------------------------

# Refusals Redis 7.0's own ACL gives for the same user: (user, argv, expected reply).
REDIS_AGREES = [
    ("tenant", ("GET", "other:x"), KEY_ERR),
    ("tenant", ("GET", "tenant-a"), KEY_ERR),
    ("tenant", ("SET", "tenant-ab:x", "v"), KEY_ERR),
    ("tenant", ("MGET", "tenant-a:x", "other:x"), KEY_ERR),
    ("tenant", ("MSET", "tenant-a:k", "v", "other:k", "v"), KEY_ERR),
    ("tenant", ("MSET", "other:k", "v", "tenant-a:k", "v"), KEY_ERR),
    ("tenant", ("RENAME", "tenant-a:x", "other:y"), KEY_ERR),
    ("tenant", ("RENAME", "other:x", "tenant-a:stolen"), KEY_ERR),
    ("tenant", ("LMOVE", "tenant-a:list", "other:list", "LEFT", "RIGHT"), KEY_ERR),
    ("tenant", ("LMOVE", "other:list", "tenant-a:list", "LEFT", "RIGHT"), KEY_ERR),
    ("tenant", ("SMOVE", "tenant-a:set", "other:set", "m"), KEY_ERR),
    ("tenant", ("COPY", "tenant-a:x", "other:copy"), KEY_ERR),
    ("tenant", ("COPY", "other:x", "tenant-a:copy"), KEY_ERR),
    ("tenant", ("BITOP", "OR", "other:bits", "tenant-a:x"), KEY_ERR),
    ("tenant", ("BITOP", "OR", "tenant-a:bits", "tenant-a:x", "other:bits"), KEY_ERR),
    ("tenant", ("ZUNIONSTORE", "other:zd", "1", "tenant-a:z"), KEY_ERR),
    ("tenant", ("ZUNIONSTORE", "tenant-a:zd", "2", "tenant-a:z", "other:z"), KEY_ERR),
    ("tenant", ("XREAD", "STREAMS", "other:s", "0"), KEY_ERR),
    ("tenant", ("XREAD", "COUNT", "1", "STREAMS", "tenant-a:s", "other:s", "0", "0"), KEY_ERR),
    ("tenant", ("OBJECT", "ENCODING", "other:x"), KEY_ERR),
    ("tenant", ("MEMORY", "USAGE", "other:x"), KEY_ERR),
    ("tenant", ("DEL", "tenant-a:x", "other:x"), KEY_ERR),
    ("tenant", ("UNLINK", "other:y"), KEY_ERR),
    ("tenant", ("EXPIRE", "other:x", "1"), KEY_ERR),
    ("tenant", ("HGETALL", "other:h"), KEY_ERR),
    ("tenant", ("SINTERSTORE", "other:set", "tenant-a:set"), KEY_ERR),
    ("tenant", ("WATCH", "other:x"), KEY_ERR),
    ("tenant", ("KEYS", "*"), cmd_err("keys")),
    ("tenant", ("SORT", "tenant-a:list", "BY", "other:*"), cmd_err("sort")),
    ("tenant", ("FLUSHALL",), cmd_err("flushall")),
    ("tenant", ("FLUSHDB",), cmd_err("flushdb")),
    ("tenant", ("CONFIG", "SET", "maxmemory", "1"), cmd_err("config|set")),
    ("tenant", ("CONFIG", "GET", "*"), cmd_err("config|get")),
    ("tenant", ("CLIENT", "LIST"), cmd_err("client|list")),
    ("tenant", ("CLIENT", "KILL", "ID", "1"), cmd_err("client|kill")),
    ("tenant", ("PUBLISH", "other", "hi"), CHAN_ERR),
    ("tenant", ("SUBSCRIBE", "other"), CHAN_ERR),
    ("tenant", ("SUBSCRIBE", "tenant-a:ok", "other"), CHAN_ERR),
    ("tenant", ("PSUBSCRIBE", "tenant-a:x*"), CHAN_ERR),
    ("tenant", ("PSUBSCRIBE", "*"), CHAN_ERR),
    ("tenant", ("PSUBSCRIBE", "tenant-a:*", "other*"), CHAN_ERR),
    ("tenant", ("SPUBLISH", "other", "hi"), CHAN_ERR),
    ("tenant", ("SUBSCRIBE", "__keyspace@0__:tenant-a:x"), CHAN_ERR),
    ("tenant", ("PSUBSCRIBE", "__keyspace@0__:*"), CHAN_ERR),
    ("tenant", ("PSUBSCRIBE", "__key*__:*"), CHAN_ERR),
    # +sort: Redis refuses BY with a pattern and GET when SORT runs, with these texts
    ("tenant_ks", ("SORT", "tenant-a:list", "BY", "other:*"), SORT_BY_ERR),
    ("tenant_ks", ("SORT", "tenant-a:list", "BY", "tenant-a:w_*"), SORT_BY_ERR),
    ("tenant_ks", ("SORT", "tenant-a:list", "GET", "other:*"), SORT_GET_ERR),
    ("tenant_ks", ("SORT", "tenant-a:list", "GET", "#"), SORT_GET_ERR),
    ("tenant_ks", ("SORT", "tenant-a:list", "STORE", "other:sorted"), KEY_ERR),
]

# respguard's documented differences: Redis's ACL (ACL DRYRUN) would allow these.
DOCUMENTED = [
    ("tenant", ("EVAL", "return redis.call('get','other:x')", "0"), cmd_err("eval")),
    ("tenant", ("EVAL", "return 1", "0"), cmd_err("eval")),
    ("tenant", ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"), cmd_err("evalsha")),
    ("tenant", ("EVAL_RO", "return 1", "0"), cmd_err("eval_ro")),
    ("tenant", ("FCALL", "f", "0"), cmd_err("fcall")),
    ("tenant", ("SCRIPT", "LOAD", "return 1"), cmd_err("script|load")),
    ("tenant", ("FUNCTION", "LIST"), cmd_err("function|list")),
    ("tenant", ("RANDOMKEY",), cmd_err("randomkey")),
    ("tenant", ("DBSIZE",), cmd_err("dbsize")),
    ("tenant", ("SELECT", "1"), cmd_err("select")),
    ("tenant", ("MOVE", "tenant-a:x", "1"), cmd_err("move")),
    ("tenant", ("COPY", "tenant-a:x", "tenant-a:x2", "DB", "1"), KEY_ERR),
    ("tenant", ("CLIENT", "TRACKING", "ON", "BCAST"), cmd_err("client|tracking")),
    ("tenant", ("PUBSUB", "CHANNELS"), CHAN_ERR),
    ("tenant", ("PUBSUB", "NUMSUB", "other"), CHAN_ERR),
    ("tenant_ks", ("KEYS", "*"), KEY_ERR),
    ("tenant_ks", ("KEYS", "other:*"), KEY_ERR),
    ("tenant_ks", ("KEYS", "tenant-a*"), KEY_ERR),  # would match tenant-ab:x
    ("tenant_two", ("SCAN", "0"), KEY_ERR),
    ("tenant_two", ("SCAN", "0", "MATCH", "*"), KEY_ERR),
    ("tenant_two", ("SCAN", "0", "MATCH", "other:*"), KEY_ERR),
    ("tenant_two", ("SCAN", "0", "MATCH", "tenant-a:*", "MATCH", "*"), KEY_ERR),
    ("tenant_allch", ("SUBSCRIBE", "__keyspace@0__:tenant-a:x"), CHAN_ERR),
    ("tenant_allch", ("PSUBSCRIBE", "__keyspace@0__:*"), CHAN_ERR),
    ("tenant_allch", ("PSUBSCRIBE", "*"), CHAN_ERR),
    ("tenant_allch", ("PUBLISH", "__redis__:invalidate", "x"), CHAN_ERR),
]

# Commands that only ever appear refused in test_refusals_never_reach_upstream.
ONLY_REFUSED_CMDSTATS = ["get", "mget", "mset", "rename", "lmove", "smove", "copy", "bitop",
                         "zunionstore", "xread", "object|encoding", "memory|usage", "del", "unlink",
                         "expire", "hgetall", "sinterstore", "watch", "keys", "sort", "flushall",
                         "flushdb", "config|set", "config|get", "client|list", "client|kill",
                         "publish", "subscribe", "psubscribe", "spublish", "eval", "evalsha",
                         "eval_ro", "fcall", "script|load", "function|list", "randomkey", "dbsize",
                         "select", "move", "client|tracking", "pubsub|channels", "pubsub|numsub",
                         "set"]


# ---------------------------------------------------------------------------
# normal work
# ---------------------------------------------------------------------------

def test_normal_work_through_redis_py(world):
    d = world.direct
    r = world.client()
    try:
        assert r.set("tenant-a:k1", "v1") is True
        assert r.get("tenant-a:k1") == b"v1"
        assert r.mset({"tenant-a:m1": "a", "tenant-a:m2": "b"}) is True
        assert r.mget("tenant-a:m1", "tenant-a:m2", "tenant-a:nope") == [b"a", b"b", None]
        assert r.rename("tenant-a:m1", "tenant-a:renamed") is True
        assert d.get("tenant-a:renamed") == b"a" and d.exists("tenant-a:m1") == 0
        assert r.lmove("tenant-a:list", "tenant-a:list2", "LEFT", "RIGHT") == b"3"
        assert d.lrange("tenant-a:list2", 0, -1) == [b"3"]
        assert r.smove("tenant-a:set", "tenant-a:set2", "m") is True
        assert d.smembers("tenant-a:set2") == {b"m"}
        assert r.zunionstore("tenant-a:zu", ["tenant-a:z", "tenant-a:z"]) == 2
        assert d.zrange("tenant-a:zu", 0, -1, withscores=True) == [(b"za", 2.0), (b"zb", 4.0)]
        assert r.copy("tenant-a:k1", "tenant-a:k1copy") is True
        assert r.hset("tenant-a:hh", mapping={"f1": "1", "f2": "2"}) == 2
        assert r.hgetall("tenant-a:hh") == {b"f1": b"1", b"f2": b"2"}
        assert r.bitop("OR", "tenant-a:bits", "tenant-a:k1", "tenant-a:x") == 2
        assert r.xread({"tenant-a:s": "0"}) == [[b"tenant-a:s", [(b"1-1", {b"f": b"mine"})]]]
        assert r.object("encoding", "tenant-a:k1") == b"embstr"
        assert r.memory_usage("tenant-a:k1") > 0
        assert r.incr("tenant-a:ctr") == 1
        assert r.delete("tenant-a:ctr") == 1
        assert r.select(0) is True

        mine = {k for k in d.keys("tenant-a:*")}
        assert len(mine) > 10
        # SCAN with MATCH inside the prefix
        assert set(r.scan_iter(match="tenant-a:*", count=5)) == mine
        # SCAN without MATCH: respguard appends MATCH tenant-a:* (one prefix), so only the
        # tenant's keys come back although the database holds others
        got = set(r.scan_iter(count=7))
        assert got == mine, "SCAN without MATCH returned %r" % sorted(got - mine)
        got = set(r.scan_iter(count=1000, _type="string"))
        assert got == {k for k in mine if d.type(k) == b"string"}
        # SCAN with a MATCH outside the prefix is confined the same way (one prefix): respguard's
        # MATCH tenant-a:* comes last and Redis uses the last MATCH
        assert set(r.scan_iter(match="*", count=1000)) == mine
        assert set(r.scan_iter(match="other:*", count=1000)) == mine

        # MULTI/EXEC within the prefix
        with r.pipeline(transaction=True) as p:
            p.set("tenant-a:t1", "1").incr("tenant-a:t1").get("tenant-a:t1").lpush("tenant-a:tl", "x")
            assert p.execute() == [True, 2, b"2", 1]
        # WATCH within the prefix works
        with r.pipeline(transaction=True) as p:
            p.watch("tenant-a:t1")
            p.multi()
            p.incr("tenant-a:t1")
            assert p.execute() == [3]
        # plain pipeline
        with r.pipeline(transaction=False) as p:
            for i in range(50):
                p.set("tenant-a:p:%d" % i, i)
            for i in range(50):
                p.get("tenant-a:p:%d" % i)
            res = p.execute()
        assert res[:50] == [True] * 50
        assert res[50:] == [str(i).encode() for i in range(50)]
        assert r.ping() is True
    finally:
        r.close()
    world.assert_outside_unchanged()


def test_keys_and_sort_for_a_tenant_granted_them(world):
    """+keys +sort: KEYS inside the prefix lists only tenant keys; SORT without BY/GET works."""
    d = world.direct
    r = world.client("tenant_ks")
    try:
        assert set(r.keys("tenant-a:*")) == set(d.keys("tenant-a:*"))
        assert r.keys("tenant-a:l*") == [b"tenant-a:list"]
        assert r.sort("tenant-a:list") == [b"1", b"2", b"3"]
        assert r.sort("tenant-a:list", by="nosort") == [b"3", b"1", b"2"]
        assert r.sort("tenant-a:list", desc=True, store="tenant-a:sorted") == 3
        assert d.lrange("tenant-a:sorted", 0, -1) == [b"3", b"2", b"1"]
    finally:
        r.close()
    world.assert_outside_unchanged()


def _wait_message(p, want_type, timeout=5.0):
    got = []

    def poll():
        m = p.get_message(timeout=0.2)
        if m is not None:
            got.append(m)
            if m["type"] == want_type:
                return m
        return None
    try:
        return wait_until(poll, timeout, interval=0, what="pub/sub %s" % want_type)
    except AssertionError:
        raise AssertionError("no %s message within %.0fs; got %r" % (want_type, timeout, got))


def test_pubsub_on_own_channels(world):
    sub = world.client()
    pub = world.client()
    p = sub.pubsub()
    try:
        p.subscribe("tenant-a:news")
        assert _wait_message(p, "subscribe")["channel"] == b"tenant-a:news"
        # a pattern is allowed when it is exactly one of the user's channel patterns
        p.psubscribe("tenant-a:*")
        assert _wait_message(p, "psubscribe")["channel"] == b"tenant-a:*"
        assert pub.publish("tenant-a:news", "hello") == 2
        m = _wait_message(p, "message")
        assert (m["channel"], m["data"]) == (b"tenant-a:news", b"hello")
        m = _wait_message(p, "pmessage")
        assert (m["pattern"], m["channel"], m["data"]) == (b"tenant-a:*", b"tenant-a:news", b"hello")
        # a refused subscription neither subscribes nor breaks the subscriber
        with pytest.raises(redis.exceptions.NoPermissionError):
            pub.publish("other", "x")
        assert pub.publish("tenant-a:other", "second") == 1
        m = _wait_message(p, "pmessage")
        assert m["data"] == b"second"
        assert pub.execute_command("PUBSUB", "NUMSUB", "tenant-a:news") == [b"tenant-a:news", 1]
    finally:
        p.close()
        sub.close()
        pub.close()

    # raw: refusals while in subscribed mode (RESP2) keep the subscription and the order
    with world.login() as c:
        assert c.call_raw("SUBSCRIBE", "other") == CHAN_ERR
        assert c.call_raw("PING") == PONG  # not in subscribed mode
        assert c.call("SUBSCRIBE", "tenant-a:c1") == [b"subscribe", b"tenant-a:c1", 1]
        assert c.call_raw("SUBSCRIBE", "other") == CHAN_ERR
        assert c.call_raw("PSUBSCRIBE", "*") == CHAN_ERR
        assert c.call_raw("SUBSCRIBE", "__keyspace@0__:tenant-a:x") == CHAN_ERR
        assert c.call("PING") == [b"pong", b""]  # still subscribed
        with world.client() as pub2:
            assert pub2.publish("tenant-a:c1", "m1") == 1
        assert c.read_reply() == [b"message", b"tenant-a:c1", b"m1"]
        assert c.call("UNSUBSCRIBE") == [b"unsubscribe", b"tenant-a:c1", 0]
        assert c.call_raw("PING") == PONG
    world.assert_outside_unchanged()


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------

def test_refusals_agree_with_redis_and_keep_the_connection(world):
    conns, refs = {}, {}
    problems = []
    try:
        for user, args, want in REDIS_AGREES:
            if user not in conns:
                conns[user] = world.login(user)
                refs[user] = world.ref(user)
            theirs = refs[user].call_raw(*args)
            mine = conns[user].call_raw(*args)
            if theirs != want:
                problems.append("%s %r: Redis itself answered %r, expected %r" % (user, args, theirs, want))
            if mine != want:
                problems.append("%s %r: respguard answered %r, Redis %r" % (user, args, mine, theirs))
            pong = conns[user].call_raw("PING")
            if pong != PONG:
                problems.append("%s %r: PING afterwards got %r" % (user, args, pong))
    finally:
        for c in list(conns.values()) + list(refs.values()):
            c.close()
    assert not problems, "\n".join(problems)
    world.assert_outside_unchanged()


def test_documented_differences_are_refused(world):
    conns = {}
    problems = []
    try:
        for user, args, want in DOCUMENTED:
            # Redis's own ACL would let this user run it: a difference, not an agreement
            theirs = world.dryrun_redis(user, args)
            if theirs != "OK":
                problems.append("%s %r: ACL DRYRUN on Redis says %r (not a difference?)" % (user, args, theirs))
            if user not in conns:
                conns[user] = world.login(user)
            mine = conns[user].call_raw(*args)
            if mine != want:
                problems.append("%s %r: respguard answered %r, expected %r" % (user, args, mine, want))
            pong = conns[user].call_raw("PING")
            if pong != PONG:
                problems.append("%s %r: PING afterwards got %r" % (user, args, pong))
        # SELECT 0 stays allowed; the connection is still on db 0
        assert conns["tenant"].call_raw("SELECT", "0") == OK
        assert conns["tenant"].call_raw("GET", "tenant-a:x") == bulk("ax")
    finally:
        for c in conns.values():
            c.close()
    assert not problems, "\n".join(problems)
    world.assert_outside_unchanged()
    assert world.direct.exists("tenant-a:x2") == 0


def test_guarded_commands_for_a_tenant_without_minus_dangerous(respguard, redis_server_factory):
    """+@all alone: Redis would run these; respguard's guard (and tenant rules) refuse them.
    Never sent to Redis as that user."""
    srv = redis_server_factory()
    d = srv.client()
    wait_until(lambda: pings(d), 10, what="dedicated redis-server")
    d.set("other:x", "outside-x")
    p = respguard(upstream_server=srv,
                  users={"t": {"acl": "on >%s ~tenant-a:* &tenant-a:* +@all" % PW}})
    with p.login("t", PW) as c:
        for args, want in [(("FLUSHALL",), cmd_err("flushall")), (("FLUSHDB", "ASYNC"), cmd_err("flushdb")),
                           (("CONFIG", "SET", "maxmemory", "1"), cmd_err("config|set")),
                           (("SWAPDB", "0", "1"), cmd_err("swapdb")),
                           (("SHUTDOWN", "NOSAVE"), cmd_err("shutdown")),
                           (("MONITOR",), cmd_err("monitor")),
                           (("SCRIPT", "FLUSH"), cmd_err("script|flush")),
                           (("KEYS", "*"), KEY_ERR),
                           (("SORT", "tenant-a:l", "BY", "other:*"), SORT_BY_ERR),
                           (("MIGRATE", "127.0.0.1", "1", "tenant-a:x", "0", "10"), cmd_err("migrate"))]:
            assert c.call_raw(*args) == want, args
            assert c.call_raw("PING") == PONG
    assert srv.proc.poll() is None
    assert d.get("other:x") == b"outside-x"
    assert d.config_get("maxmemory") == {"maxmemory": "0"}
    d.close()


def test_refusals_never_reach_upstream(world):
    """MONITOR on the upstream sees none of the refused commands (and does see the allowed
    ones, including the MATCH respguard appends to SCAN); INFO commandstats has no entry for
    a command that was only ever refused."""
    d = world.direct
    mon = raw_tls(world.srv, "default", world.srv.password, timeout=10)
    try:
        d.config_resetstat()
        assert mon.call_raw("MONITOR") == OK
        refused = []
        with world.login() as c:
            for user, args, want in REDIS_AGREES + DOCUMENTED:
                if user != "tenant":
                    continue
                assert c.call_raw(*args) == want, args
                refused.append(tuple(a.encode() for a in args))
            # positive controls
            assert c.call_raw("PING") == PONG
            assert c.call_raw("ECHO", "control-1") == bulk("control-1")
            c.send_cmd("SCAN", "0", "COUNT", "1000")
            assert c.read_reply()[0] == b"0"
            c.send_cmd("SCAN", "0", "MATCH", "*", "COUNT", "1000")
            assert c.read_reply()[0] == b"0"
        sentinel = "sentinel-after-refusals"
        assert d.echo(sentinel) == sentinel.encode()
        seen = []
        while True:
            line = mon.read_line()
            args = parse_monitor_line(line)
            if args == [b"ECHO", sentinel.encode()]:
                break
            seen.append(args)
    finally:
        mon.close()

    assert [b"ECHO", b"control-1"] in seen, "MONITOR saw: %r" % seen
    assert [b"SCAN", b"0", b"COUNT", b"1000", b"MATCH", b"tenant-a:*"] in seen, seen
    assert [b"SCAN", b"0", b"MATCH", b"*", b"COUNT", b"1000", b"MATCH", b"tenant-a:*"] in seen, seen
    leaked = [a for a in seen if tuple([a[0].upper()] + a[1:]) in
              {tuple([r[0].upper()] + list(r[1:])) for r in refused}]
    assert not leaked, "refused commands reached the upstream: %r" % leaked
    outside = [a for a in seen if any(t in x for x in a for t in (b"other", b"tenant-b", b"tenant-ab",
                                                                  b"__keyspace", b"__redis__"))]
    assert not outside, "arguments outside the tenant reached the upstream: %r" % outside

    stats = d.info("commandstats")
    present = [n for n in ONLY_REFUSED_CMDSTATS if "cmdstat_" + n in stats]
    assert not present, "commands only ever refused were counted upstream: %r" % (
        {n: stats["cmdstat_" + n] for n in present})
    assert stats["cmdstat_scan"]["calls"] == 2
    assert stats["cmdstat_echo"]["calls"] >= 2
    world.assert_outside_unchanged()


def parse_monitor_line(line):
    """'+1700000000.123 [0 127.0.0.1:5] "GET" "k"' -> [b"GET", b"k"] (Redis's sdscatrepr)."""
    assert line.startswith(b"+"), line
    rest = line[line.index(b"] ") + 2:].rstrip(b"\r\n")
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


# ---------------------------------------------------------------------------
# pipelines, MULTI, inline, case
# ---------------------------------------------------------------------------

def test_refusals_in_a_1000_command_pipeline(world):
    templates = [
        (("GET", "other:x"), KEY_ERR),
        (("MSET", "tenant-a:pm", "v", "other:k", "clobbered"), KEY_ERR),
        (("gEt", "tenant-a:x"), bulk("ax")),
        (("RENAME", "tenant-a:x", "other:y"), KEY_ERR),
        (("EVAL", "return 1", "0"), cmd_err("eval")),
        (("PUBLISH", "other", "m"), CHAN_ERR),
        (("PUBLISH", "tenant-a:ch", "m"), b":0\r\n"),
        (("FLUSHALL",), cmd_err("flushall")),
        (("PING",), PONG),
        (("DBSIZE",), cmd_err("dbsize")),
        (("SELECT", "1"), cmd_err("select")),
        (("SELECT", "0"), OK),
        (("mSeT", "tenant-a:pm", "v", "tenant-a:pm2", "w"), OK),
        (("LMOVE", "tenant-a:list", "other:list", "LEFT", "RIGHT"), KEY_ERR),
        (("SUBSCRIBE", "other"), CHAN_ERR),
        (("OBJECT", "ENCODING", "other:x"), KEY_ERR),
    ]
    cmds, expected = [], []
    n_incr = 0
    i = 0
    while len(cmds) < 1000:
        if i % 3 == 0:
            n_incr += 1
            cmds.append(("INCR", "tenant-a:pipe"))
            expected.append(b":%d\r\n" % n_incr)
        else:
            args, want = templates[i % len(templates)]
            cmds.append(args)
            expected.append(want)
        i += 1
    payload = b"".join(encode(*a) for a in cmds)
    with world.login(timeout=15) as c:
        c.send(payload)
        got = [c.read_raw() for _ in range(len(cmds))]
        assert c.call_raw("PING") == PONG
    bad = [(j, cmds[j], got[j], expected[j]) for j in range(len(cmds)) if got[j] != expected[j]]
    assert not bad, "%d replies out of place or wrong, first: %r" % (len(bad), bad[:5])
    assert world.direct.get("tenant-a:pipe") == str(n_incr).encode()
    world.assert_outside_unchanged()


def test_refusals_inside_multi(world):
    d = world.direct
    # the same transaction against Redis itself, as the same user (a Redis-agreed refusal)
    seq = [(("MULTI",), OK), (("SET", "tenant-a:m1", "v"), QUEUED), (("GET", "other:x"), KEY_ERR),
           (("INCR", "tenant-a:m2"), QUEUED), (("EXEC",), EXECABORT)]
    ref = world.ref()
    try:
        theirs = [ref.call_raw(*a) for a, _ in seq]
    finally:
        ref.close()
    assert theirs == [w for _, w in seq], theirs
    assert d.exists("tenant-a:m1", "tenant-a:m2") == 0

    refusals = [("GET", "other:x"), ("MSET", "tenant-a:m1", "1", "other:k", "2"),
                ("RENAME", "tenant-a:x", "other:y"), ("EVAL", "return 1", "0"), ("FLUSHALL",),
                ("PUBLISH", "other", "m"), ("SELECT", "1"), ("RANDOMKEY",), ("cOnFiG", "sEt", "maxmemory", "1")]
    wants = [KEY_ERR, KEY_ERR, KEY_ERR, cmd_err("eval"), cmd_err("flushall"), CHAN_ERR,
             cmd_err("select"), cmd_err("randomkey"), cmd_err("config|set")]
    with world.login() as c:
        for bad, want in zip(refusals, wants):
            assert c.call_raw("MULTI") == OK
            assert c.call_raw("SET", "tenant-a:m1", "v") == QUEUED
            assert c.call_raw(*bad) == want, bad
            assert c.call_raw("INCR", "tenant-a:m2") == QUEUED
            assert c.call_raw("EXEC") == EXECABORT, bad
            assert c.call_raw("PING") == PONG
            assert d.exists("tenant-a:m1", "tenant-a:m2") == 0, "part of a doomed transaction ran (%r)" % (bad,)
        # the same pipelined in one write
        c.send(encode("MULTI") + encode("SET", "tenant-a:m1", "v") + encode("GET", "other:x")
               + encode("SET", "other:x", "clobbered") + encode("EXEC") + encode("GET", "tenant-a:m1"))
        assert [c.read_raw() for _ in range(6)] == [OK, QUEUED, KEY_ERR, KEY_ERR, EXECABORT, b"$-1\r\n"]
        # and a clean transaction afterwards works
        assert c.call_raw("MULTI") == OK
        assert c.call_raw("SET", "tenant-a:m1", "ok") == QUEUED
        assert c.call_raw("EXEC") == b"*1\r\n+OK\r\n"
    assert d.get("tenant-a:m1") == b"ok"
    # a refused WATCH, then a transaction: the refused key was never watched
    with world.login() as c:
        assert c.call_raw("WATCH", "tenant-a:x", "other:x") == KEY_ERR
        assert c.call_raw("MULTI") == OK
        assert c.call_raw("GET", "tenant-a:x") == QUEUED
        assert c.call_raw("EXEC") == b"*1\r\n" + bulk("ax")
    # redis-py's transaction surfaces the refusal and nothing runs
    r = world.client()
    try:
        with pytest.raises(redis.exceptions.NoPermissionError) as ei:
            with r.pipeline(transaction=True) as p:
                p.set("tenant-a:m3", "x").get("other:x").incr("tenant-a:m3b")
                p.execute()
        assert "no permissions to access one of the keys" in str(ei.value)
        assert r.ping() is True
    finally:
        r.close()
    assert d.exists("tenant-a:m3", "tenant-a:m3b") == 0
    world.assert_outside_unchanged()


def test_inline_and_mixed_case_refusals(world):
    cases = [
        (b"GET other:x\r\n", KEY_ERR),
        (b"gEt other:x\r\n", KEY_ERR),
        (b"mSeT tenant-a:k v other:k v\r\n", KEY_ERR),
        (b"rEnAmE tenant-a:x other:y\r\n", KEY_ERR),
        (b"fLuShAlL\r\n", cmd_err("flushall")),
        (b"config get maxmemory\r\n", cmd_err("config|get")),
        (b"eval \"return redis.call('get','other:x')\" 0\r\n", cmd_err("eval")),
        (b"publish other hi\r\n", CHAN_ERR),
        (b"Subscribe other\r\n", CHAN_ERR),
        (b"select 1\r\n", cmd_err("select")),
        (b"get \"other:x\"\r\n", KEY_ERR),
        (b"GET 'other:x'\r\n", KEY_ERR),
        (b"GET other:\\x78\r\n", KEY_ERR),  # unquoted: the bytes "other:\x78" literally
        (b"GET \"other:\\x78\"\r\n", KEY_ERR),  # quoted escape: other:x
        (b"gEt tenant-a:x\r\n", bulk("ax")),
        (b"PING\r\n", PONG),
    ]
    with world.login() as c:
        for raw, want in cases:
            c.send(raw)
            assert c.read_raw() == want, raw
            assert c.call_raw("PING") == PONG
        # multibulk with odd case
        for args, want in [(("gEt", "other:x"), KEY_ERR), (("mSeT", "tenant-a:k", "v", "other:k", "v"), KEY_ERR),
                           (("ObJeCt", "EnCoDiNg", "other:x"), KEY_ERR),
                           (("cLiEnT", "kIlL", "ID", "1"), cmd_err("client|kill")),
                           (("EvAl", "return 1", "0"), cmd_err("eval")),
                           (("pSuBsCrIbE", "*"), CHAN_ERR),
                           (("mSeT", "tenant-a:k", "v", "tenant-a:k2", "w"), OK)]:
            assert c.call_raw(*args) == want, args
        # all inline in one write, replies in order
        c.send(b"GET other:x\r\nGET tenant-a:x\r\nFLUSHALL\r\nPING\r\n")
        assert [c.read_raw() for _ in range(4)] == [KEY_ERR, bulk("ax"), cmd_err("flushall"), PONG]
    assert world.direct.get("tenant-a:k") == b"v"
    world.assert_outside_unchanged()


def test_nothing_outside_changed_after_everything(world):
    """All refusals, every way of sending them, on one connection; then the outside data is
    byte-identical and no other database was touched."""
    with world.login(timeout=10) as c:
        for user, args, want in REDIS_AGREES + DOCUMENTED:
            if user != "tenant":
                continue
            assert c.call_raw(*args) == want, args
            assert c.call_raw("MULTI") == OK
            assert c.call_raw(*args) == want, ("in MULTI", args)
            assert c.call_raw("EXEC") == EXECABORT
            c.send(encode(*args) + encode("PING"))
            assert c.read_raw() == want and c.read_raw() == PONG
    world.assert_outside_unchanged()
    assert world.proxy.proc.poll() is None
    with world.login() as c:
        assert c.call_raw("GET", "tenant-a:x") == bulk("ax")
