"""Server-wide commands and their scoped forms for tenants (issue 9, /tmp/issue9/SPEC.md §1, §2).

A tenant (keys not read+write on every key, or channels not all) may not run a command that
describes or changes the whole server unless its rules name it: `+@all` and `+@all -@dangerous`
get `NOPERM this user has no permissions to run '<name>'` for every member of the class (audit
rule "server" where only that rule refuses), `+@all +slowlog` may run SLOWLOG. INFO, CLIENT
ID/INFO/GETNAME/SETNAME, ACL WHOAMI, PUBSUB CHANNELS/NUMSUB and SCAN/KEYS are answered in a
scoped form instead. Each behaviour is set against what the same command shows run directly on
Redis as an unscoped user: what would have leaked.

Every test has its own redis-server (TLS, requirepass), seeded with tenant-a:, tenant-b: and
other keys, so that a refused SHUTDOWN or FLUSHALL that leaked would show (and harm only it),
and the same users are created on it so that ACL DRYRUN says what Redis's own ACL would allow.
"""

import re
import ssl

import pytest
import redis

from helpers import pings, wait_until
from resp_util import RawConn, bulk, encode

pytestmark = pytest.mark.proxy_only

PW = "srvwide-Pw-5512"
TA = "~tenant-a:* &tenant-a:*"
USERS = {
    # tenants
    "ta": "on >%s %s +@all" % (PW, TA),
    "ta_safe": "on >%s %s +@all -@dangerous" % (PW, TA),
    "ta_chan": "on >%s ~* &tenant-a:* +@all" % PW,        # only the channels restricted
    "ta_read": "on >%s %%R~* &* +@all" % PW,              # reads every key, writes none
    "tb": "on >%s ~tenant-b:* &tenant-b:* +@all" % PW,    # the neighbour
    # tenants that name commands of the class
    "ta_slowlog": "on >%s %s +@all +slowlog" % (PW, TA),
    "ta_safe_slowlog": "on >%s %s +@all -@dangerous +slowlog" % (PW, TA),
    "ta_slowlog_get": "on >%s %s +@all +slowlog|get" % (PW, TA),
    "ta_named": "on >%s %s +@all +lastsave +role +pubsub|numpat +memory|doctor +latency|latest" % (PW, TA),
    "ta_dbsize": "on >%s %s +@all -@dangerous +dbsize +randomkey" % (PW, TA),
    "ta_info": "on >%s %s +@all +info" % (PW, TA),
    "ta_safe_info": "on >%s %s +@all -@dangerous +info" % (PW, TA),
    # not tenants
    "full": "on >%s ~* &* +@all" % PW,
    "full_safe": "on >%s ~* &* +@all -@dangerous" % PW,
    # ACL is in the guard: these name the subcommand
    "ta_whoami": "on >%s %s +@all +acl|whoami" % (PW, TA),
    "full_whoami": "on >%s ~* &* +@all +acl|whoami" % PW,
}
TENANTS = ["ta", "ta_safe", "ta_chan", "ta_read"]

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
KEY_ERR = b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
CHAN_ERR = b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n"


def noperm(name):
    return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % name.encode()


# The server-wide class of the spec, each with arguments of the right arity (arity is checked
# before permissions) and Redis's name for it in NOPERM.
CLUSTER_SUBS = [("INFO",), ("REPLICATE", "x"), ("FORGET", "x"), ("NODES",), ("BUMPEPOCH",),
                ("FAILOVER",), ("SHARDS",), ("SLOTS",), ("SETSLOT", "1", "STABLE"),
                ("SET-CONFIG-EPOCH", "1"), ("SLAVES", "x"), ("DELSLOTS", "1"), ("FLUSHSLOTS",),
                ("MEET", "127.0.0.1", "1"), ("DELSLOTSRANGE", "1", "2"),
                ("COUNT-FAILURE-REPORTS", "x"), ("COUNTKEYSINSLOT", "1"), ("RESET",),
                ("ADDSLOTS", "1"), ("GETKEYSINSLOT", "1", "1"), ("ADDSLOTSRANGE", "1", "2"),
                ("LINKS",), ("REPLICAS", "x"), ("SAVECONFIG",), ("MYID",)]
CLASS = (
    [(("ACL",) + a, "acl|" + a[0].lower()) for a in [
        ("DELUSER", "x"), ("DRYRUN", "x", "get", "k"), ("GETUSER", "x"), ("LIST",), ("LOAD",),
        ("LOG",), ("SAVE",), ("SETUSER", "x"), ("USERS",)]]
    + [(("BGREWRITEAOF",), "bgrewriteaof"), (("BGSAVE",), "bgsave")]
    + [(("CLUSTER",) + a, "cluster|" + a[0].lower()) for a in CLUSTER_SUBS]
    + [(("CONFIG", "GET", "maxmemory"), "config|get"), (("CONFIG", "SET", "maxmemory", "1"), "config|set"),
       (("CONFIG", "RESETSTAT"), "config|resetstat"), (("CONFIG", "REWRITE"), "config|rewrite"),
       (("DBSIZE",), "dbsize"), (("DEBUG", "SLEEP", "0"), "debug"), (("FAILOVER",), "failover"),
       (("FLUSHALL",), "flushall"), (("FLUSHDB",), "flushdb"), (("LASTSAVE",), "lastsave")]
    + [(("LATENCY",) + a, "latency|" + a[0].lower()) for a in [
        ("DOCTOR",), ("GRAPH", "command"), ("HISTOGRAM",), ("HISTORY", "command"), ("LATEST",), ("RESET",)]]
    + [(("MEMORY", s), "memory|" + s.lower()) for s in ("DOCTOR", "MALLOC-STATS", "PURGE", "STATS")]
    + [(("MODULE", "LIST"), "module|list"), (("MODULE", "LOAD", "/nonexistent.so"), "module|load"),
       (("MODULE", "LOADEX", "/nonexistent.so"), "module|loadex"), (("MODULE", "UNLOAD", "x"), "module|unload"),
       (("PFSELFTEST",), "pfselftest"), (("PSYNC", "?", "-1"), "psync"), (("PUBSUB", "NUMPAT"), "pubsub|numpat"),
       (("RANDOMKEY",), "randomkey"), (("REPLCONF", "listening-port", "1"), "replconf"),
       (("REPLICAOF", "NO", "ONE"), "replicaof"), (("ROLE",), "role"), (("SAVE",), "save"),
       (("SHUTDOWN", "NOSAVE"), "shutdown"), (("SLAVEOF", "NO", "ONE"), "slaveof"),
       (("SLOWLOG", "GET"), "slowlog|get"), (("SLOWLOG", "LEN"), "slowlog|len"),
       (("SLOWLOG", "RESET"), "slowlog|reset"), (("SYNC",), "sync"), (("READONLY",), "readonly"),
       (("READWRITE",), "readwrite"), (("ASKING",), "asking")]
)
# guard.never_by_category (default): refused for everyone unless named, whatever the tenancy
GUARD = {"flushall", "flushdb", "config", "debug", "shutdown", "monitor", "replicaof", "slaveof", "sync",
         "psync", "module", "acl", "swapdb", "failover", "cluster", "save", "bgsave", "bgrewriteaof"}

# INFO's scoped form: these sections and fields only, in Redis's order
INFO_ALLOWED = [
    ("Server", ["redis_version", "redis_git_sha1", "redis_git_dirty", "redis_build_id", "redis_mode", "os",
                "arch_bits", "monotonic_clock", "multiplexing_api", "atomicvar_api", "gcc_version",
                "server_time_usec", "uptime_in_seconds", "uptime_in_days", "hz", "configured_hz",
                "lru_clock", "io_threads_active"]),
    ("Memory", ["maxmemory", "maxmemory_human", "maxmemory_policy", "mem_allocator"]),
    ("Persistence", ["loading", "async_loading"]),
    ("Cluster", ["cluster_enabled"]),
]
INFO_NEVER = ["Clients", "Stats", "Replication", "CPU", "Modules", "Commandstats", "Errorstats",
              "Latencystats", "Keyspace"]
INFO_VOLATILE = {"server_time_usec", "uptime_in_seconds", "uptime_in_days", "lru_clock"}


# ---------------------------------------------------------------------------
# the world: a dedicated server, its keys, the users, respguard
# ---------------------------------------------------------------------------

class World:
    def __init__(self, srv, proxy, direct):
        self.srv = srv
        self.proxy = proxy
        self.direct = direct

    def login(self, user, timeout=5.0):
        return self.proxy.login(user, PW, timeout=timeout)

    def direct_raw(self, timeout=5.0):
        """A raw connection straight to Redis as its unscoped default user (what respguard
        itself logs in as)."""
        ctx = ssl.create_default_context(cafile=self.srv.certs.path("ca.crt"))
        c = RawConn(self.srv.tls_port, tls_context=ctx, server_hostname="localhost", timeout=timeout)
        assert c.call_raw("AUTH", self.srv.password) == OK
        return c

    def dryrun(self, user, args):
        r = self.direct.execute_command("ACL", "DRYRUN", user, *args)
        return r.decode() if isinstance(r, bytes) else r

    def keys_snapshot(self):
        d = self.direct
        return {k: (d.type(k), d.dump(k)) for k in d.keys("*")}



@pytest.fixture
def world(redis_server_factory, respguard):
    srv = redis_server_factory()
    d = srv.client()
    wait_until(lambda: pings(d), 10, what="dedicated redis-server")
    d.set("tenant-a:x", "ax")
    d.rpush("tenant-a:list", "1", "2")
    for i in range(5):
        d.set("tenant-b:k%d" % i, "neighbour-%d" % i)
    d.set("other:x", "outside")
    for name, acl in USERS.items():
        d.execute_command("ACL", "SETUSER", name, "reset", *acl.split())
    p = respguard(upstream_server=srv, users={n: {"acl": a} for n, a in USERS.items()})
    w = World(srv, p, d)
    yield w
    d.close()


# ---------------------------------------------------------------------------
# INFO text helpers
# ---------------------------------------------------------------------------

def parse_info(text):
    """Redis's INFO text -> [(section, [(field, value), ...]), ...]; asserts the format
    (sections separated by one empty line, CRLF line ends, 'field:value' lines)."""
    if text == "":
        return []
    assert text.startswith("# "), repr(text[:80])
    assert text.endswith("\r\n") and not text.endswith("\r\n\r\n"), repr(text[-80:])
    sections = []
    for block in text[:-2].split("\r\n\r\n"):
        lines = block.split("\r\n")
        assert lines[0].startswith("# "), "section without a header: %r" % block[:200]
        fields = []
        for line in lines[1:]:
            assert ":" in line, "not a field:value line: %r (section %s)" % (line, lines[0])
            k, v = line.split(":", 1)
            fields.append((k, v))
        sections.append((lines[0][2:], fields))
    return sections


def scoped_expectation(direct_text, wanted=None):
    """What the scoped INFO should be, made from Redis's own INFO text: only the allowed
    sections and fields, in Redis's order; wanted: section names asked for (lowercase) or None."""
    allowed = dict(INFO_ALLOWED)
    out = []
    for name, fields in parse_info(direct_text):
        if name not in allowed or (wanted is not None and name.lower() not in wanted):
            continue
        out.append((name, [(k, v) for k, v in fields if k in allowed[name]]))
    return out


def masked(sections):
    return [(n, [(k, "<t>" if k in INFO_VOLATILE else v) for k, v in f]) for n, f in sections]


def info_body(raw):
    """The text of an INFO reply: RESP2 bulk or RESP3 verbatim 'txt'. Returns (text, resp)."""
    m = re.match(rb"([$=])(\d+)\r\n", raw)
    assert m, "INFO reply is neither a bulk nor a verbatim string: %r" % raw[:200]
    body = raw[m.end():]
    assert body.endswith(b"\r\n") and len(body) - 2 == int(m.group(2)), raw[:200]
    body = body[:-2]
    if m.group(1) == b"=":
        assert body.startswith(b"txt:"), raw[:200]
        return body[4:].decode(), 3
    return body.decode(), 2


def check_scoped_info(raw, direct_text, wanted=None, resp=2):
    text, got_resp = info_body(raw)
    assert got_resp == resp, raw[:100]
    sections = parse_info(text)
    names = [n for n, _ in sections]
    for never in INFO_NEVER:
        assert never not in names and ("# " + never) not in text, "scoped INFO has # %s:\n%s" % (never, text)
    allowed = dict(INFO_ALLOWED)
    for name, fields in sections:
        assert name in allowed, "scoped INFO has section # %s:\n%s" % (name, text)
        extra = [k for k, _ in fields if k not in allowed[name]]
        assert not extra, "fields outside the allow-list in # %s: %r" % (name, extra)
    want = scoped_expectation(direct_text, wanted)
    assert masked(sections) == masked(want), \
        "scoped INFO differs from Redis's INFO filtered to the allow-list:\n got  %r\n want %r" % (sections, want)
    return dict(kv for _, f in sections for kv in f)


def direct_info_text(w, *sections):
    with w.direct_raw() as d:
        text, _ = info_body(d.call_raw("INFO", *sections))
    return text


# ---------------------------------------------------------------------------
# 1. the class is refused to tenants unless named
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("user", TENANTS)
def test_server_wide_commands_are_refused_to_tenants(world, user):
    before = world.keys_snapshot()
    world.direct.config_resetstat()
    problems = []
    with world.login(user) as c:
        for args, name in CLASS:
            got = c.call_raw(*args)
            if got != noperm(name):
                problems.append("%s %r: %r, expected %r" % (user, args, got, noperm(name)))
            pong = c.call_raw("PING")
            if pong != PONG:
                problems.append("%s %r: PING afterwards got %r" % (user, args, pong))
        # the same in one pipeline, each refusal in its place
        c.send(b"".join(encode(*a) + encode("ECHO", str(i)) for i, (a, _) in enumerate(CLASS)))
        for i, (args, name) in enumerate(CLASS):
            got, echo = c.read_raw(), c.read_raw()
            if (got, echo) != (noperm(name), bulk(str(i))):
                problems.append("%s %r in a pipeline: %r %r" % (user, args, got, echo))
    assert not problems, "\n".join(problems)

    # nothing reached Redis, nothing changed
    assert world.srv.proc.poll() is None, "the upstream stopped"
    stats = world.direct.info("commandstats")
    reached = sorted(n for _, n in CLASS if "cmdstat_" + n in stats and n != "config|resetstat")
    assert not reached, "refused commands reached Redis: %r" % reached
    assert world.keys_snapshot() == before
    assert world.direct.config_get("maxmemory") == {"maxmemory": "0"}
    assert world.direct.role()[0] == b"master"

    # audit: one "refused" line per refusal; rule "server" where Redis's ACL and the guard
    # would both have let the command through
    events = world.proxy.events("refused", user=user)
    assert len(events) == 2 * len(CLASS), (len(events), events[-3:])
    wrong = []
    for (args, name), e in zip(CLASS, events[:len(CLASS)]):
        if str(e.get("command", "")).lower() not in (name, name.split("|")[0]):
            wrong.append((args, "command", e))
        redis_allows = world.dryrun(user, args) == "OK"
        if redis_allows and args[0].lower() not in GUARD and e.get("rule") != "server":
            wrong.append((args, "rule", e))
        if e.get("reason") != "command":
            wrong.append((args, "reason", e))
    assert not wrong, "audit lines:\n" + "\n".join(map(repr, wrong))


def test_pure_and_help_subcommands_stay_allowed_for_tenants(world):
    """TIME, LOLWUT and the HELP subcommands say nothing about other clients: answered as Redis."""
    with world.login("ta_safe") as c, world.direct_raw() as d:
        for args in [("SLOWLOG", "HELP"), ("LATENCY", "HELP"), ("MEMORY", "HELP"), ("PUBSUB", "HELP")]:
            assert c.call_raw(*args) == d.call_raw(*args), args
        t = c.call("TIME")
        assert isinstance(t, list) and len(t) == 2, t
        assert not c.call_raw("LOLWUT").startswith(b"-")


def test_slowlog_shows_other_tenants_commands_unless_refused(world):
    """Directly, SLOWLOG GET shows tenant-b's command with its arguments. A tenant gets NOPERM
    unless it names +slowlog (or +slowlog|get, which grants GET only)."""
    world.direct.config_set("slowlog-log-slower-than", "0")
    world.direct.slowlog_reset()
    secret = "hunter2-token-of-tenant-b"
    with world.login("tb") as b:
        assert b.call_raw("SET", "tenant-b:secret", secret) == OK
    with world.direct_raw() as d:
        d.send_cmd("SLOWLOG", "GET", "128")
        raw_direct = d.read_raw()
    assert secret.encode() in raw_direct, "the direct SLOWLOG GET should show the neighbour's command"

    for user in ("ta", "ta_safe", "ta_chan", "ta_read"):
        with world.login(user) as c:
            assert c.call_raw("SLOWLOG", "GET", "128") == noperm("slowlog|get"), user
            assert c.call_raw("SLOWLOG", "LEN") == noperm("slowlog|len"), user
            assert c.call_raw("SLOWLOG", "RESET") == noperm("slowlog|reset"), user
    for user in ("ta_slowlog", "ta_safe_slowlog"):
        with world.login(user) as c:
            c.send_cmd("SLOWLOG", "GET", "128")
            raw, entries = c.read_reply_raw()
            assert isinstance(entries, list) and secret.encode() in raw, (user, raw[:300])
            n = c.call("SLOWLOG", "LEN")
            assert isinstance(n, int) and n > 0, (user, n)
    with world.login("ta_slowlog_get") as c:
        c.send_cmd("SLOWLOG", "GET", "128")
        raw, entries = c.read_reply_raw()
        assert isinstance(entries, list) and secret.encode() in raw, raw[:300]
        assert c.call_raw("SLOWLOG", "LEN") == noperm("slowlog|len")
        assert c.call_raw("SLOWLOG", "RESET") == noperm("slowlog|reset")
    assert len(world.direct.slowlog_get(128)) > 0  # nobody reset it


@pytest.mark.parametrize("user,args", [
    ("ta_named", ("LASTSAVE",)),
    ("ta_named", ("ROLE",)),
    ("ta_named", ("PUBSUB", "NUMPAT")),
    ("ta_named", ("LATENCY", "LATEST")),
    ("ta_dbsize", ("DBSIZE",)),
])
def test_named_server_wide_commands_are_granted(world, user, args):
    """A command of the class that the tenant's rules name is forwarded: the same answer as
    Redis gives directly."""
    with world.login(user) as c, world.direct_raw() as d:
        want = d.call_raw(*args)
        assert not want.startswith(b"-"), want
        assert c.call_raw(*args) == want, args
    # named +lastsave does not grant the rest of the class
    if user == "ta_named":
        with world.login(user) as c:
            assert c.call_raw("SLOWLOG", "GET") == noperm("slowlog|get")
            assert c.call_raw("DBSIZE") == noperm("dbsize")


def test_named_memory_doctor_and_randomkey_are_granted(world):
    with world.login("ta_named") as c:
        doc = c.call("MEMORY", "DOCTOR")
        assert isinstance(doc, bytes) and doc, doc
        assert c.call_raw("MEMORY", "STATS") == noperm("memory|stats")
    with world.login("ta_dbsize") as c:
        k = c.call("RANDOMKEY")
        assert isinstance(k, bytes) and world.direct.exists(k), k


# ---------------------------------------------------------------------------
# 2. INFO
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("user", ["ta", "ta_safe", "ta_chan", "full_safe"])
def test_info_is_scoped(world, user):
    """Directly, INFO shows the Keyspace (tenant-b's keys counted), clients, stats, replication;
    through respguard the tenant (and a user whose rules do not grant INFO) sees only the
    allowed fields, with the same values as Redis."""
    direct_text = direct_info_text(world, "everything")
    assert "# Keyspace\r\ndb0:keys=" in direct_text and "# Clients" in direct_text
    direct_fields = dict(kv for _, f in parse_info(direct_text) for kv in f)

    with world.login(user) as c:
        fields = check_scoped_info(c.call_raw("INFO"), direct_text)
        for k in ("redis_version", "maxmemory_policy", "loading"):
            assert fields[k] == direct_fields[k], (k, fields.get(k), direct_fields[k])
        assert fields["loading"] == "0"  # what ioredis's ready check waits for
        for kw in ("all", "everything", "default", "ALL", "EveryThing"):
            check_scoped_info(c.call_raw("INFO", kw), direct_text)
        for ask in [("server",), ("SeRvEr",), ("memory", "persistence"), ("cluster",), ("server", "keyspace"),
                    ("cpu", "Memory"), ("keyspace", "clients", "persistence")]:
            check_scoped_info(c.call_raw("INFO", *ask), direct_text, wanted={a.lower() for a in ask})
        # only excluded sections: an empty string, as Redis answers for an unknown section
        for ask in [("keyspace",), ("clients",), ("stats",), ("replication",), ("cpu",), ("commandstats",),
                    ("errorstats",), ("latencystats",), ("modules",), ("Keyspace", "Clients")]:
            assert c.call_raw("INFO", *ask) == b"$0\r\n\r\n", ask
        # RESP3: a verbatim string, the same content
        c.send_cmd("HELLO", "3")
        c.read_reply_raw()
        check_scoped_info(c.call_raw("INFO"), direct_text, resp=3)
        check_scoped_info(c.call_raw("INFO", "server"), direct_text, wanted={"server"}, resp=3)
        with world.direct_raw() as d:
            d.send_cmd("HELLO", "3")
            d.read_reply_raw()
            empty = d.call_raw("INFO", "nosuchsection")
        assert empty == b"=4\r\ntxt:\r\n"
        assert c.call_raw("INFO", "keyspace") == empty
        assert c.call_raw("PING") == PONG


@pytest.mark.parametrize("user", ["full", "ta_info", "ta_safe_info"])
def test_info_is_redis_own_when_granted(world, user):
    """A non-tenant whose rules grant INFO, and a tenant naming +info, get Redis's full INFO."""
    with world.login(user) as c, world.direct_raw() as d:
        text, _ = info_body(c.call_raw("INFO", "everything"))
        dtext, _ = info_body(d.call_raw("INFO", "everything"))
        assert [n for n, _ in parse_info(text)] == [n for n, _ in parse_info(dtext)]
        assert "# Keyspace" in text and "# Clients" in text and "# Commandstats" in text
        assert c.call_raw("INFO", "keyspace") == d.call_raw("INFO", "keyspace")


def test_scoped_info_is_not_an_audited_refusal(world):
    """The scoped INFO is an answer, not a refusal: no audit line."""
    with world.login("ta") as c:
        assert c.call_raw("INFO").startswith(b"$")
    assert not world.proxy.events("refused", user="ta")


# ---------------------------------------------------------------------------
# 2. CLIENT ID / INFO / GETNAME / SETNAME and ACL WHOAMI
# ---------------------------------------------------------------------------

def client_info_fields(text):
    assert text.endswith("\n"), repr(text)
    return [tuple(kv.split("=", 1)) for kv in text.rstrip("\n").split(" ")]


@pytest.mark.parametrize("user", ["ta", "ta_safe", "ta_chan"])
def test_client_identity_is_the_tenants_own(world, user):
    with world.direct_raw() as d:
        dtext = d.call("CLIENT", "INFO").decode()
    direct_keys = [k for k, _ in client_info_fields(dtext)]
    assert "user=default" in dtext  # what the upstream connection would show

    with world.login(user) as c, world.login(user) as c2:
        local = "%s:%d" % c.sock.getsockname()
        cid = c.call("CLIENT", "ID")
        assert isinstance(cid, int), cid
        assert c.call("CLIENT", "ID") == cid
        assert c2.call("CLIENT", "ID") != cid
        login = [e for e in world.proxy.events("login", user=user) if e.get("peer") == local]
        assert len(login) == 1 and login[0].get("session") == cid, (login, cid)
        assert c.call_raw("CLIENT", "GETNAME") == b"$-1\r\n"

        def check_info(resp, name):
            raw = c.call_raw("CLIENT", "INFO")
            if resp == 2:
                m = re.match(rb"\$(\d+)\r\n", raw)
                assert m and len(raw) == m.end() + int(m.group(1)) + 2, raw
                body = raw[m.end():-2]
            else:
                assert raw.startswith(b"=") and b"\r\ntxt:" in raw, raw
                body = raw.split(b"\r\n", 1)[1][4:-2]
            text = body.decode()
            fields = client_info_fields(text)
            assert [k for k, _ in fields] == direct_keys, (fields, direct_keys)
            f = dict(fields)
            assert f["id"] == str(cid), (f, cid)
            assert f["addr"] == local, (f, local)
            assert f["laddr"] == "127.0.0.1:%d" % world.proxy.port, f
            assert f["name"] == name, f
            assert f["user"] == user, f
            assert f["resp"] == str(resp), f
            assert "user=default" not in text and ":%d " % world.srv.tls_port not in text, text

        check_info(2, "")
        assert c.call_raw("CLIENT", "SETNAME", "app-a") == OK
        assert c.call_raw("CLIENT", "GETNAME") == bulk("app-a")
        check_info(2, "app-a")
        c.send_cmd("HELLO", "3")
        c.read_reply_raw()
        check_info(3, "app-a")
        assert c.call("CLIENT", "ID") == cid
        assert c.call_raw("CLIENT", "SETNAME", "bad name") == \
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        assert c.call_raw("CLIENT", "GETNAME") == bulk("app-a")
        assert c2.call_raw("CLIENT", "GETNAME") == b"$-1\r\n"

    # the tenant's name never reached the upstream
    with world.direct_raw() as d:
        listing = d.call("CLIENT", "LIST").decode()
    assert "app-a" not in listing, listing


@pytest.mark.parametrize("user", ["ta", "ta_safe", "full", "full_safe", "ta_whoami", "full_whoami"])
def test_acl_whoami_is_the_respguard_user(world, user):
    """SPEC §2: "ACL WHOAMI: answered by respguard with the respguard user's name, for every
    user" -- also where the guard (ACL is in never_by_category) would refuse it by category."""
    with world.direct_raw() as d:
        assert d.call_raw("ACL", "WHOAMI") == bulk("default")  # respguard's upstream login
    with world.login(user) as c:
        assert c.call_raw("ACL", "WHOAMI") == bulk(user)
        c.send_cmd("HELLO", "3")
        c.read_reply_raw()
        assert c.call_raw("ACL", "WHOAMI") == bulk(user)


# ---------------------------------------------------------------------------
# 2. PUBSUB introspection, SCAN and KEYS
# ---------------------------------------------------------------------------

def test_pubsub_introspection_is_scoped(world):
    with world.login("tb") as sb, world.login("ta") as sa, world.login("ta") as c:
        assert sb.call("SUBSCRIBE", "tenant-b:news") == [b"subscribe", b"tenant-b:news", 1]
        assert sa.call("SUBSCRIBE", "tenant-a:news") == [b"subscribe", b"tenant-a:news", 1]
        assert sb.call("PSUBSCRIBE", "tenant-b:*") == [b"psubscribe", b"tenant-b:*", 2]
        with world.direct_raw() as d:
            assert sorted(d.call("PUBSUB", "CHANNELS")) == [b"tenant-a:news", b"tenant-b:news"]
            assert d.call("PUBSUB", "NUMSUB", "tenant-b:news") == [b"tenant-b:news", 1]
            assert d.call("PUBSUB", "NUMPAT") == 1
        assert c.call_raw("PUBSUB", "CHANNELS") == CHAN_ERR
        assert c.call_raw("PUBSUB", "CHANNELS", "*") == CHAN_ERR
        assert c.call_raw("PUBSUB", "CHANNELS", "tenant-b:*") == CHAN_ERR
        assert c.call("PUBSUB", "CHANNELS", "tenant-a:*") == [b"tenant-a:news"]
        assert c.call_raw("PUBSUB", "NUMSUB", "tenant-b:news") == CHAN_ERR
        assert c.call_raw("PUBSUB", "NUMSUB", "tenant-a:news", "tenant-b:news") == CHAN_ERR
        assert c.call("PUBSUB", "NUMSUB", "tenant-a:news") == [b"tenant-a:news", 1]
        assert c.call_raw("PUBSUB", "SHARDCHANNELS") == CHAN_ERR
        assert c.call_raw("PUBSUB", "SHARDNUMSUB", "tenant-b:news") == CHAN_ERR
        assert c.call_raw("PUBSUB", "NUMPAT") == noperm("pubsub|numpat")
        assert c.call_raw("PING") == PONG


@pytest.mark.parametrize("user", ["ta", "ta_safe"])
def test_scan_and_keys_show_only_the_tenants_keys(world, user):
    d = world.direct
    mine = set(d.keys("tenant-a:*"))
    assert any(k.startswith(b"tenant-b:") for k in d.scan_iter(count=1000))  # directly: everything
    with world.login(user) as c:
        cursor, keys = c.call("SCAN", "0", "COUNT", "1000")
        assert cursor == b"0" and set(keys) == mine, keys
        cursor, keys = c.call("SCAN", "0", "MATCH", "*", "COUNT", "1000")
        assert cursor == b"0" and set(keys) == mine, keys
        if user == "ta":  # KEYS is @dangerous
            assert set(c.call("KEYS", "tenant-a:*")) == mine
            assert c.call_raw("KEYS", "*") == KEY_ERR
            assert c.call_raw("KEYS", "tenant-b:*") == KEY_ERR
        else:
            assert c.call_raw("KEYS", "tenant-a:*") == noperm("keys")


# ---------------------------------------------------------------------------
# not a tenant: as Redis (plus the guard)
# ---------------------------------------------------------------------------

def test_non_tenant_runs_server_wide_commands_as_redis(world):
    world.direct.config_set("slowlog-log-slower-than", "0")
    with world.login("tb") as b:
        assert b.call_raw("SET", "tenant-b:secret", "s3cr3t") == OK
    before = world.keys_snapshot()
    with world.login("full") as c, world.direct_raw() as d:
        c.send_cmd("SLOWLOG", "GET", "128")
        raw, entries = c.read_reply_raw()
        assert isinstance(entries, list) and b"s3cr3t" in raw
        for args in [("DBSIZE",), ("ROLE",), ("LASTSAVE",), ("PUBSUB", "NUMPAT"), ("LATENCY", "LATEST"),
                     ("SLOWLOG", "HELP")]:
            assert c.call_raw(*args) == d.call_raw(*args), args
        assert isinstance(c.call("MEMORY", "STATS"), list)
        assert c.call_raw("FLUSHALL") == noperm("flushall")
        assert c.call_raw("FLUSHDB") == noperm("flushdb")
        assert c.call_raw("CONFIG", "GET", "maxmemory") == noperm("config|get")
        assert c.call_raw("SHUTDOWN", "NOSAVE") == noperm("shutdown")
        assert c.call_raw("PING") == PONG
    assert world.srv.proc.poll() is None
    after = world.keys_snapshot()
    assert after == before
    # -@dangerous without +slowlog: Redis's own ACL refuses it, with the same text
    with world.login("full_safe") as c:
        assert c.call_raw("SLOWLOG", "GET") == noperm("slowlog|get")
        assert c.call_raw("DBSIZE") == b":%d\r\n" % world.direct.dbsize()
