"""CLIENT REPLY ON|OFF|SKIP through respguard (issue 9, /tmp/issue9/SPEC.md §3), in both pool modes.

As Redis 7.0: OFF silences every reply (OFF's own included) until CLIENT REPLY ON, whose +OK is
sent; SKIP silences itself and the next command; respguard's own replies (NOPERM refusals,
unknown commands, rate-limit errors, AUTH, QUIT) obey it too; pub/sub messages, (un)subscribe
confirmations and RESP3 pushes (tracking invalidations) still arrive; RESET ends OFF; inside
MULTI, CLIENT REPLY is refused and dooms the transaction.

Pipelines are written raw on a socket (a client library would wait for the replies that never
come) and the whole byte stream a client receives is compared with the stream the same
pipeline gets from redis-server directly, as a Redis user with the same rules. Each test has
its own redis-server, which has the test users too.
"""

import random
import socket
import ssl
import time

import pytest
import redis

from helpers import wait_until, pings
from resp_util import RawConn, bulk, encode

pytestmark = pytest.mark.proxy_only

PW = "creply-Pw-2290"
# respguard's users; Redis gets the same users (its "cr" also lacks CONFIG, which respguard
# refuses to this tenant as a server-wide command, so that both refuse it with one text)
USERS = {
    "web": "on >%s ~* &* +@all" % PW,
    "cr": "on >%s ~cr:* &* +@all" % PW,
}
REDIS_EXTRA = {"cr": " -config"}
RATE_USER = "slow"

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
KEY_ERR = b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
LIMITED = b"-ERR rate limit exceeded for user '%s'\r\n" % RATE_USER.encode()
MULTI_ERR = b"-ERR CLIENT REPLY inside MULTI is not supported through respguard\r\n"
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
NOAUTH = b"-NOAUTH Authentication required.\r\n"
END = "end-of-transcript"

OFF = ("CLIENT", "REPLY", "OFF")
ON = ("CLIENT", "REPLY", "ON")
SKIP = ("CLIENT", "REPLY", "SKIP")



class World:
    def __init__(self, srv, proxy, direct):
        self.srv = srv
        self.proxy = proxy
        self.direct = direct

    def via_proxy(self, user="web", timeout=5.0):
        return self.proxy.login(user, PW, timeout=timeout)

    def via_redis(self, user="web", timeout=5.0):
        ctx = ssl.create_default_context(cafile=self.srv.certs.path("ca.crt"))
        c = RawConn(self.srv.tls_port, tls_context=ctx, server_hostname="localhost", timeout=timeout)
        assert c.call_raw("AUTH", user, PW) == OK
        return c

    def sides(self, user="web"):
        """(name, connect) for Redis directly and for respguard."""
        return [("redis", lambda **kw: self.via_redis(user, **kw)),
                ("respguard", lambda **kw: self.via_proxy(user, **kw))]

    def clean(self):
        for k in self.direct.keys("cr:*") + self.direct.keys("crk:*"):
            self.direct.delete(k)


@pytest.fixture
def world(redis_server_factory, respguard):
    srv = redis_server_factory()
    d = srv.client()
    wait_until(lambda: pings(d), 10, what="dedicated redis-server")
    d.set("other:x", "outside")
    for name, acl in USERS.items():
        d.execute_command("ACL", "SETUSER", name, "reset", *(acl + REDIS_EXTRA.get(name, "")).split())
    users = {n: {"acl": a} for n, a in USERS.items()}
    users[RATE_USER] = {"acl": "on >%s ~* &* +@all" % PW,
                        "rate_limit": {"commands_per_second": 1, "burst": 4}}
    p = respguard(upstream_server=srv, users=users)
    yield World(srv, p, d)
    d.close()


class Transcript:
    """Everything one connection receives, read up to known points (a reply that is expected
    to arrive); nothing is parsed, so a stray or missing reply shows in the bytes."""

    def __init__(self, conn):
        self.c = conn
        self.out = b""

    def send(self, *cmds):
        self.c.send(b"".join(encode(*a) for a in cmds))

    def until(self, suffix):
        try:
            while not self.c.buf.endswith(suffix):
                self.c._fill()
        except (socket.timeout, OSError) as e:
            raise AssertionError("waited for %r (%s); received so far:\n%r" % (suffix, e, self.out + self.c.buf))
        self.out += self.c.buf
        self.c.buf = b""

    def finish(self):
        """Replies must be on: an ECHO marks the end."""
        self.send(("ECHO", END))
        self.until(bulk(END))
        return self.out

    def nothing_more(self, wait=0.2):
        self.c.settimeout(wait)
        try:
            chunk = self.c.sock.recv(65536)
        except socket.timeout:
            chunk = b""
        finally:
            self.c.settimeout(5.0)
        assert chunk == b"" and self.c.buf == b"", "unexpected bytes after the transcript: %r" % (self.c.buf + chunk)


def hello3(c):
    c.send_cmd("HELLO", "3")
    raw, v = c.read_reply_raw()
    assert isinstance(v, dict) and v.get(b"proto") == 3, raw


def pipeline_transcripts(world, cmds, user="web", resp=2, chunk=None):
    """The same pipeline (ending with CLIENT REPLY ON) on Redis and on respguard."""
    out = {}
    for name, connect in world.sides(user):
        world.clean()
        with connect() as c:
            if resp == 3:
                hello3(c)
            t = Transcript(c)
            data = b"".join(encode(*a) for a in list(cmds) + [ON, ("ECHO", END)])
            if chunk:
                for i in range(0, len(data), chunk):
                    c.send(data[i:i + chunk])
            else:
                c.send(data)
            t.until(bulk(END))
            out[name] = t.out
            # in step afterwards: nothing late, and the next reply is the next command's
            t.nothing_more()
            assert c.call_raw("PING") == PONG, name
    return out


def assert_same(out, note=""):
    assert out["respguard"] == out["redis"], "%s\nredis:     %r\nrespguard: %r" % (note, out["redis"], out["respguard"])


# ---------------------------------------------------------------------------
# OFF, ON, SKIP
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("resp", [2, 3])
def test_off_and_on_like_redis(world, resp):
    cmds = [OFF, ("SET", "cr:k", "1"), ("INCR", "cr:k"), ("GET", "cr:k"), ("PING",), ("ECHO", "hidden"),
            ON, ("GET", "cr:k"), ON, OFF, ("INCR", "cr:k"), OFF, ("INCR", "cr:k")]
    out = pipeline_transcripts(world, cmds, resp=resp)
    assert_same(out)
    assert out["redis"] == OK + bulk("2") + OK + OK + bulk(END)


@pytest.mark.parametrize("resp", [2, 3])
def test_skip_like_redis(world, resp):
    cmds = [SKIP, ("SET", "cr:k", "v"), ("GET", "cr:k"),
            SKIP, SKIP, ("PING", "a"), ("PING", "b"),         # the second SKIP is the skipped one
            SKIP, ON, ("PING", "c"),                        # ON clears SKIP and answers
            OFF, SKIP, ("PING", "d"), ON, ("PING", "e"),    # SKIP while OFF does nothing
            SKIP, OFF, ("PING", "f"), ON,
            SKIP, ("GET",), ("CLIENT", "REPLY", "OFF", "x"), ("CLIENT", "REPLY", "bogus"), ("PING", "g"),
            SKIP]
    out = pipeline_transcripts(world, cmds, resp=resp)
    assert_same(out)
    assert out["redis"].startswith(bulk("v") + bulk("b") + OK + bulk("c")), out["redis"]


@pytest.mark.parametrize("resp", [2, 3])
def test_refusals_and_errors_obey_client_reply(world, resp):
    """A tenant's NOPERM refusals (keys, and CONFIG: a server-wide command), unknown commands
    and arity errors are respguard's own replies: silenced exactly where Redis silences them."""
    refusals = [("GET", "other:x"), ("MSET", "cr:a", "1", "other:b", "2"), ("CONFIG", "GET", "maxmemory")]
    cmds = ([OFF] + refusals + [("NOSUCH", "a", "b"), ("GET",), ("SET", "cr:k", "1"), ON]
            + refusals + [("NOSUCH", "c")]
            + [x for r in refusals for x in (SKIP, r)]
            + [SKIP, ("NOSUCH", "d"), ("GET", "cr:k"), SKIP, ("GET",), ("INCR", "cr:k")]
            + [OFF, ("GET", "other:x"), SKIP, ("GET", "other:x")])
    out = pipeline_transcripts(world, cmds, user="cr", resp=resp)
    assert_same(out)
    assert out["redis"].count(b"-NOPERM") == 3 and out["redis"].count(b"unknown command") == 1, out["redis"]
    # a silenced refusal is still audited: one line per refused command
    n_refused = sum(1 for a in cmds if a in refusals or a == ("GET", "other:x"))
    events = world.proxy.events("refused", user="cr")
    assert len(events) == n_refused, (n_refused, events)


@pytest.mark.parametrize("seed,resp,chunk", [(1, 2, None), (2, 3, None), (3, 2, 7), (4, 3, 1)])
def test_random_pipelines_like_redis(world, seed, resp, chunk):
    """Random mixes of OFF/ON/SKIP, refusals, errors and normal commands, written at once
    (or in 7- and 1-byte pieces): the same bytes as Redis."""
    rnd = random.Random(seed)
    pool = [OFF, ON, SKIP, SKIP, ("CLIENT", "REPLY", "bogus"), ("CLIENT", "REPLY"),
            ("SET", "cr:k", "v"), ("INCR", "cr:n"), ("GET", "cr:n"), ("GET", "other:x"),
            ("MSET", "cr:a", "1", "other:b", "2"), ("NOSUCH", "a"), ("GET",), ("PING",),
            ("CONFIG", "GET", "maxmemory"), ("PUBLISH", "cr:ch", "m"), ("LPUSH", "cr:k", "x"),
            ("HSET", "cr:h", "f", "v"), ("EXISTS", "cr:a", "cr:k")]
    cmds = []
    for i in range(300 if chunk != 1 else 120):
        cmds.append(rnd.choice(pool))
        if rnd.random() < 0.2:
            cmds.append(("ECHO", "e%d" % i))
    out = pipeline_transcripts(world, cmds, user="cr", resp=resp, chunk=chunk)
    assert_same(out, "seed %d" % seed)


def test_rate_limit_errors_obey_client_reply(world):
    """User 'slow': 1 command a second, a burst of 4. A limited command's error is silenced
    like any reply; a limited CLIENT REPLY ON does not turn replies on."""
    with world.via_proxy(RATE_USER) as c:
        t = Transcript(c)
        # tokens: OFF, PING, PING, PING; then every command (ON included) is limited, silently
        t.send(OFF, ("PING",), ("PING",), ("PING",), ("PING",), ("PING",), ON, ("ECHO", "x"))
        t.nothing_more(0.3)
        time.sleep(1.05)                      # one token: this ON is served
        t.send(ON, ("PING",))
        t.until(LIMITED)
        assert t.out == OK + LIMITED, t.out
        time.sleep(1.05)                      # one token: SKIP; the next PING is limited and skipped
        t.send(SKIP, ("PING",), ("PING",))
        t.until(LIMITED)
        assert t.out == OK + LIMITED + LIMITED, t.out
        t.nothing_more()
    ev = world.proxy.events("rate_limit", phase="begin")
    assert ev and ev[0]["user"] == RATE_USER, ev


# ---------------------------------------------------------------------------
# AUTH, QUIT, RESET, MULTI
# ---------------------------------------------------------------------------

def test_auth_replies_obey_client_reply(world):
    cmds = [OFF, ("AUTH", "web", "wrong-password"), ("AUTH", "web", PW), ON,
            ("AUTH", "web", "wrong-password"), SKIP, ("AUTH", "web", PW), SKIP, ("AUTH", "web", "wrong"),
            ("GET", "cr:nothing")]
    out = pipeline_transcripts(world, cmds)
    assert_same(out)
    assert out["redis"] == (OK + b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
                            + b"$-1\r\n" + OK + bulk(END)), out["redis"]


@pytest.mark.parametrize("mode", [OFF, SKIP])
def test_quit_answers_nothing_when_replies_are_off(world, mode):
    """Redis sends no +OK for a QUIT under OFF or SKIP (and reads nothing after it); respguard
    sends nothing either, whether or not it then closes the connection."""
    for name, connect in world.sides():
        with connect() as c:
            c.send(encode(*mode) + encode("QUIT") + encode(*ON) + encode("PING"))
            got = b""
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                c.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = c.sock.recv(65536)
                except socket.timeout:
                    break
                except (ConnectionResetError, BrokenPipeError):
                    break
                if not chunk:
                    break
                got += chunk
            assert got == b"", "%s answered %r to %r + QUIT" % (name, got, mode)


@pytest.mark.parametrize("resp", [2, 3])
def test_reset_ends_off(world, resp):
    """RESET under OFF answers +RESET and replies are on again (the connection must log in
    again after RESET, on Redis with requirepass as through respguard)."""
    out = {}
    for name, connect in world.sides():
        world.clean()
        with connect() as c:
            if resp == 3:
                hello3(c)
            t = Transcript(c)
            t.send(OFF, ("SET", "cr:k", "1"), ("RESET",), ("PING",), ("AUTH", "web", PW), ("GET", "cr:k"))
            t.until(bulk("1"))
            out[name] = t.finish()
            t.nothing_more()
    assert_same(out)
    assert out["redis"] == b"+RESET\r\n" + NOAUTH + OK + bulk("1") + bulk(END)


def test_skip_then_reset_like_redis(world):
    """SKIP then RESET: RESET is the skipped command, so Redis sends no +RESET."""
    out = {}
    for name, connect in world.sides():
        with connect() as c:
            t = Transcript(c)
            t.send(SKIP, ("RESET",), ("AUTH", "web", PW), ("PING",))
            t.until(PONG)
            out[name] = t.finish()
    assert_same(out)
    assert out["redis"] == OK + PONG + bulk(END)


@pytest.mark.parametrize("form", [OFF, SKIP, ON])
def test_client_reply_inside_multi_is_refused(world, form):
    """Redis would apply CLIENT REPLY OFF in the middle of EXEC's reply (a truncated array);
    respguard refuses it at queue time, which dooms the transaction."""
    with world.via_proxy() as c:
        c.send(encode("MULTI") + encode("SET", "cr:m", "1") + encode(*form) + encode("INCR", "cr:m")
               + encode("EXEC") + encode("GET", "cr:m") + encode("PING"))
        got = [c.read_raw() for _ in range(7)]
        assert got == [OK, b"+QUEUED\r\n", MULTI_ERR, b"+QUEUED\r\n", EXECABORT, b"$-1\r\n", PONG], got
        assert world.direct.exists("cr:m") == 0
        # replies are still on: the refused CLIENT REPLY did nothing
        assert c.call_raw("ECHO", "on") == bulk("on")


# ---------------------------------------------------------------------------
# pub/sub and pushes while replies are off
# ---------------------------------------------------------------------------

def sub_msg(kind, *parts, resp=2):
    head = b">" if resp == 3 else b"*"
    out = head + b"%d\r\n" % (len(parts) + 1) + bulk(kind)
    for p in parts:
        out += b":%d\r\n" % p if isinstance(p, int) else bulk(p)
    return out


@pytest.mark.parametrize("resp", [2, 3])
def test_pubsub_while_replies_are_off(world, resp):
    """Confirmations and messages arrive while OFF; the replies to PING, GET and the rest do not
    (an UNSUBSCRIBE without arguments included, whose end respguard has to find itself)."""
    out = {}
    for name, connect in world.sides():
        world.clean()
        with connect() as s, connect() as pub:
            if resp == 3:
                hello3(s)
            t = Transcript(s)
            t.send(OFF, ("SUBSCRIBE", "cr:ch"), ("PING",))
            t.until(sub_msg("subscribe", "cr:ch", 1, resp=resp))
            assert pub.call_raw("PUBLISH", "cr:ch", "m1") == b":1\r\n"
            t.until(sub_msg("message", "cr:ch", "m1", resp=resp))
            t.send(("PSUBSCRIBE", "cr:p*"))
            t.until(sub_msg("psubscribe", "cr:p*", 2, resp=resp))
            assert pub.call_raw("PUBLISH", "cr:px", "m2") == b":1\r\n"
            t.until(sub_msg("pmessage", "cr:p*", "cr:px", "m2", resp=resp))
            more = [("GET", "cr:k"), ("PING", "x")]
            if resp == 3:
                more += [("SET", "cr:k", "v"), ("GET", "cr:k")]
            t.send(*more)
            t.send(("UNSUBSCRIBE",))
            t.until(sub_msg("unsubscribe", "cr:ch", 1, resp=resp))
            t.send(("PUNSUBSCRIBE",))
            t.until(sub_msg("punsubscribe", "cr:p*", 0, resp=resp))
            t.send(ON)
            t.until(OK)
            out[name] = t.finish()
            t.nothing_more()
            assert s.call_raw("PING") == PONG
    assert_same(out)


def test_tracking_invalidations_arrive_while_off(world):
    """RESP3 client-side caching: keys read while OFF are tracked (their replies are not sent),
    and the invalidation pushes arrive while OFF."""
    out = {}
    for name, connect in world.sides():
        world.clean()
        with connect() as c, connect() as w:
            hello3(c)
            t = Transcript(c)
            t.send(("CLIENT", "TRACKING", "ON"), ("GET", "cr:t1"))
            t.until(b"_\r\n")
            # a subscription confirmation is delivered while OFF: it marks the point where the
            # silenced GETs have run (and their keys are tracked)
            t.send(OFF, ("GET", "cr:t2"), ("GET", "cr:t1"), ("ECHO", "hidden"), ("SUBSCRIBE", "cr:sync"))
            t.until(sub_msg("subscribe", "cr:sync", 1, resp=3))
            assert w.call_raw("SET", "cr:t1", "x") == OK
            t.until(b">2\r\n" + bulk("invalidate") + b"*1\r\n" + bulk("cr:t1"))
            assert w.call_raw("SET", "cr:t2", "y") == OK
            t.until(b">2\r\n" + bulk("invalidate") + b"*1\r\n" + bulk("cr:t2"))
            t.send(("UNSUBSCRIBE", "cr:sync"), ON)
            t.until(OK)
            out[name] = t.finish()
            t.nothing_more()
    assert_same(out)
    assert out["redis"] == (OK + b"_\r\n" + sub_msg("subscribe", "cr:sync", 1, resp=3)
                            + b">2\r\n" + bulk("invalidate") + b"*1\r\n" + bulk("cr:t1")
                            + b">2\r\n" + bulk("invalidate") + b"*1\r\n" + bulk("cr:t2")
                            + sub_msg("unsubscribe", "cr:sync", 0, resp=3) + OK + bulk(END))
