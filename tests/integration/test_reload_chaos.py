"""Reload chaos: a bounded, seeded stress test of configuration reload under live traffic.

A dedicated upstream with three ACL users (userA, userB: everything; ro: read-only) sits behind a
respguard with the credentials credA, credB and credRO, a small pool, a plaintext and a TLS
listener and the admin listener. Eight client threads run a random mix of plain commands,
pipelines, transactions, pub/sub, blocking pops, RESET/AUTH, RESP3 and one-command connections
as random users while the main thread performs about sixty reloads, each a random mutation drawn
from a seeded RNG (users added, removed, turned off, rules narrowed and widened, passwords
changed, users remapped between credentials, credentials removed and added, the pool resized,
the listener certificate swapped, rate limits changed), some of them invalid on purpose.

The mutations are deterministic for a seed; the timing of the clients is not. So the clients
tolerate everything a reload may legitimately do to them (a close, NOPERM, WRONGPASS, EXECABORT,
`-ERR respguard: upstream connection ...`, a rate limit) and record as failures only replies that
are wrong for their request whatever the timing: another key's value, a reply of the wrong type
or out of order, a lost pub/sub message, a hang. Where no reload started or ended between a
request and its reply (a seqlock the main thread bumps around each reload), the configuration in
force is known exactly, and the reply must also agree with it: a login with the current password
of an enabled user succeeds and any other fails, a command the user's rules and credential allow
is not refused and one they refuse does not run, a session of a removed or disabled user gets no
reply at all, and there is no rate limit error for a user without a rate limit.

With a sanitizer build (RESPGUARD_BIN=build-asan/respguard) the respguard fixture's teardown
fails the test on any ASan/UBSan/LeakSanitizer report in respguard's stderr."""

import collections
import os
import random
import secrets
import signal
import socket
import ssl
import threading
import time
import traceback

import pytest

from helpers import POOL_MODE, free_port, metric_value as val, report_summary, to_yaml, wait_until
from resp_util import ConnectionClosed, ErrorReply, Push, RawConn, encode

pytestmark = pytest.mark.proxy_only

SEEDS = [20240611, 77, 4242]
RELOADS = 60
RELOAD_PHASE_SECONDS = 16.0   # the reloads stop here even if fewer than RELOADS were done
WORKERS = 8
READ_TIMEOUT = 10.0           # a reply later than this is a hang (acquire_timeout is 1 s)

USERS = ["alice", "bob", "carol", "dave", "erin"]
CREDS = {"credA": "userA", "credB": "userB", "credRO": "ro"}
RO_RULES = ("~*", "&*", "+@read", "+@connection", "+@transaction", "+@pubsub", "+ping", "+hello",
            "+client|setname", "+auth", "+select", "+reset", "+echo")

# rules profiles: respguard ACL text and what each allows of the commands the clients send
PROFILES = {
    "full": "~* &* +@all",
    "nokeys": "~other:* &* +@all",
    "readonly": "~* &* +@all -@write",
    "nochan": "~* resetchannels +@all",
    "noset": "~* &* +@all -set",
}
WRITES = {"SET", "INCR", "RPUSH", "BLPOP"}
KEYED = {"GET", "SET", "INCR", "RPUSH", "BLPOP"}
CHANNEL = {"SUBSCRIBE", "PUBLISH"}


def rules_allow(profile, cmd):
    if profile == "nokeys":
        return cmd not in KEYED
    if profile == "readonly":
        return cmd not in WRITES
    if profile == "nochan":
        return cmd not in CHANNEL
    if profile == "noset":
        return cmd != "SET"
    return True


# ---------------------------------------------------------------------------
# the model of the configuration and its rendering
# ---------------------------------------------------------------------------

def new_password(rng):
    return "chaospw-%016x" % rng.getrandbits(64)


class Model:
    """What the configuration says, in the terms the clients need."""

    def __init__(self):
        self.users = {}     # name -> {on, profile, pws, cred, rate}
        self.creds = set()  # present credential names
        self.pool = (3, 1)
        self.cert = "server"

    def copy(self):
        m = Model()
        m.users = {n: dict(u, pws=list(u["pws"])) for n, u in self.users.items()}
        m.creds = set(self.creds)
        m.pool = self.pool
        m.cert = self.cert
        return m

    def active(self, user):
        u = self.users.get(user)
        return u is not None and u["on"]

    def login_ok(self, user, pw):
        return self.active(user) and pw in self.users[user]["pws"]

    def allows(self, user, cmd):
        """Whether a session of user may run cmd (respguard's rules and the upstream user)."""
        u = self.users[user]
        if not rules_allow(u["profile"], cmd):
            return False
        if u["cred"] == "credRO" and cmd in WRITES:
            return False
        return True

    def limited(self, user):
        return self.users[user]["rate"] > 0

    def describe(self):
        return {"users": {n: (u["on"], u["profile"], u["cred"], u["rate"], len(u["pws"]))
                          for n, u in sorted(self.users.items())},
                "creds": sorted(self.creds), "pool": self.pool, "cert": self.cert}


def render(model, base, certs, cred_pw, breakage=None):
    """The config dict for model (base: the listeners, upstream URL and admin)."""
    users = {}
    for name, u in model.users.items():
        acl = "%s %s %s" % ("on" if u["on"] else "off", " ".join(">" + p for p in u["pws"]),
                            PROFILES[u["profile"]])
        entry = {"acl": acl}
        if u["cred"]:
            entry["upstream_credential"] = u["cred"]
        if u["rate"]:
            entry["rate_limit"] = {"commands_per_second": u["rate"], "burst": max(1, u["rate"] // 5)}
        users[name] = entry
    listeners = [dict(base["listeners"][0]),
                 {"bind": base["listeners"][1]["bind"],
                  "tls": {"cert_file": certs.path(model.cert + ".crt"),
                          "key_file": certs.path(model.cert + ".key")}}]
    up = dict(base["upstream"])
    up["pool"] = {"mode": POOL_MODE, "size": model.pool[0], "min_idle": model.pool[1],
                  "acquire_timeout": "1s"}
    up["credentials"] = {c: {"username": CREDS[c], "password": cred_pw[c]} for c in sorted(model.creds)}
    cfg = {"listeners": listeners, "upstream": up, "users": users,
           "limits": {"login_timeout": "2s", "shutdown_timeout": "5s"},
           "admin": dict(base["admin"])}
    if breakage == "unknown_key":
        cfg["limits"]["max_clientz"] = 10
    elif breakage == "missing_credential":
        cfg["users"][sorted(users)[0] if users else "x"] = {"acl": "on >whatever-pw ~* +@all",
                                                           "upstream_credential": "credNope"}
    elif breakage == "bad_rule":
        cfg["users"]["broken"] = {"acl": "on >broken-pw ~* +nosuchcommand"}
    elif breakage == "missing_cert":
        cfg["listeners"][1]["tls"]["cert_file"] = certs.path("no-such-cert.crt")
    elif breakage == "min_idle":
        up["pool"]["size"], up["pool"]["min_idle"] = 2, 3
    return cfg


BREAKAGES = ["unknown_key", "missing_credential", "bad_rule", "missing_cert", "min_idle", "yaml"]


def mutate(model, rng):
    """One random valid mutation of model, in place; returns its description."""
    kinds = ["remove_user", "add_user", "rules", "password", "remap", "remove_cred", "add_cred",
             "pool", "cert", "toggle_off", "rate"]
    kind = rng.choice(kinds)
    present = sorted(model.users)
    absent = [u for u in USERS if u not in model.users]
    if kind == "remove_user" and len(present) > 1:
        name = rng.choice(present)
        del model.users[name]
        return "remove %s" % name
    if kind in ("add_user", "remove_user") and absent:
        name = rng.choice(absent)
        model.users[name] = {"on": True, "profile": rng.choice(list(PROFILES)),
                             "pws": [new_password(rng)],
                             "cred": rng.choice([None] + sorted(model.creds)), "rate": 0}
        return "add %s" % name
    if kind == "rules" and present:
        name = rng.choice(present)
        model.users[name]["profile"] = rng.choice(list(PROFILES))
        return "rules %s %s" % (name, model.users[name]["profile"])
    if kind == "password" and present:
        name = rng.choice(present)
        pws = model.users[name]["pws"]
        how = rng.choice(["replace", "add", "drop_old"])
        if how == "add" or (how == "drop_old" and len(pws) == 1):
            pws.append(new_password(rng))
            del pws[:-2]
        elif how == "drop_old":
            del pws[0]
        else:
            pws[:] = [new_password(rng)]
        return "password %s %s" % (name, how)
    if kind == "remap" and present:
        name = rng.choice(present)
        model.users[name]["cred"] = rng.choice([None] + sorted(model.creds))
        return "remap %s %s" % (name, model.users[name]["cred"])
    if kind == "remove_cred" and model.creds:
        cred = rng.choice(sorted(model.creds))
        model.creds.discard(cred)
        for u in model.users.values():
            if u["cred"] == cred:
                u["cred"] = rng.choice([None] + sorted(model.creds))
        return "remove credential %s" % cred
    if kind in ("add_cred", "remove_cred"):
        missing = sorted(set(CREDS) - model.creds)
        if missing:
            cred = rng.choice(missing)
            model.creds.add(cred)
            if present and rng.random() < 0.5:
                model.users[rng.choice(present)]["cred"] = cred
            return "add credential %s" % cred
    if kind == "pool":
        size = rng.randint(2, 4)
        model.pool = (size, rng.randint(0, min(size, 2)))
        return "pool %s" % (model.pool,)
    if kind == "cert":
        model.cert = "server2" if model.cert == "server" else "server"
        return "cert %s" % model.cert
    if kind == "toggle_off" and present:
        name = rng.choice(present)
        model.users[name]["on"] = not model.users[name]["on"]
        return "%s %s" % ("on" if model.users[name]["on"] else "off", name)
    if kind == "rate" and present:
        name = rng.choice(present)
        model.users[name]["rate"] = rng.choice([0, 0, 50, 2000])
        return "rate %s %s" % (name, model.users[name]["rate"])
    return "nothing"


# ---------------------------------------------------------------------------
# shared state between the reloading thread and the clients
# ---------------------------------------------------------------------------

class Chaos:
    def __init__(self, p, seed, certs):
        self.p = p
        self.seed = seed
        self.certs = certs
        self.stop = threading.Event()
        self.seq = 0           # odd while a reload is in flight (seqlock)
        self.models = {}       # even seq -> Model in force
        self.latest = None
        self.failures = []
        self.lock = threading.Lock()
        self.stats = collections.Counter()

    def fail(self, **what):
        what["seed"], what["mode"] = self.seed, POOL_MODE
        what["seq"] = self.seq
        with self.lock:
            self.failures.append(what)

    def count(self, key):
        with self.lock:
            self.stats[key] += 1

    def tls_context(self):
        return ssl.create_default_context(cafile=self.certs.path("ca.crt"))


class Closed(Exception):
    """The connection went away (respguard closed it, or we gave up on it)."""


UNKNOWN = object()   # outcome of a request whose reply never came


def classify(reply):
    """'ok' for a non-error reply, else the kind of error."""
    if not isinstance(reply, ErrorReply):
        return "ok"
    t = reply.text
    if t.startswith("NOPERM"):
        return "noperm"
    if t.startswith("WRONGPASS"):
        return "wrongpass"
    if t.startswith("EXECABORT"):
        return "execabort"
    if t.startswith("ERR respguard: upstream connection lost"):
        return "lost"   # the request may or may not have run upstream
    if t.startswith("ERR respguard: "):
        return "upstream"
    if t.startswith("ERR rate limit exceeded for user"):
        return "rate"
    return "other"


class Worker(threading.Thread):
    def __init__(self, ctx, wid):
        super().__init__(name="chaos-worker-%d" % wid, daemon=True)
        self.ctx = ctx
        self.wid = wid
        self.rng = random.Random(ctx.seed * 1000 + wid)
        self.conn = None
        self.user = None
        self.resp3 = False
        self.n = 0
        self.ctr = "chaos:w%d:ctr:%d" % (wid, ctx.seed)
        self.ctr_last = None
        self.new_list()
        self.behaviour = None

    # -- bookkeeping --------------------------------------------------------------------
    def key(self, what="k"):
        self.n += 1
        return "chaos:w%d:%s:%d" % (self.wid, what, self.n)

    def new_list(self):
        self.n = getattr(self, "n", 0) + 1
        self.list = "chaos:w%d:list:%d" % (self.wid, self.n)
        self.listq = collections.deque()

    def fail(self, why, **kw):
        self.ctx.fail(worker=self.wid, behaviour=self.behaviour, user=self.user, why=why, **kw)

    def window(self):
        s = self.ctx.seq
        return s, (self.ctx.models.get(s) if s % 2 == 0 else None)

    def stable_model(self, s1):
        """The model in force over a request sent at seq s1, if no reload touched it."""
        s2 = self.ctx.seq
        if s1 == s2 and s1 % 2 == 0:
            return self.ctx.models[s1]
        return None

    def drop(self):
        if self.conn is not None:
            self.conn.close()
        self.conn, self.user, self.resp3 = None, None, False

    # -- io -----------------------------------------------------------------------------
    def connect(self, tls=None):
        p = self.ctx.p
        if tls is None:
            tls = self.rng.random() < 0.3
        try:
            if tls:
                return RawConn(p.tls_port, timeout=READ_TIMEOUT, tls_context=self.ctx.tls_context(),
                               server_hostname="localhost")
            return RawConn(p.port, timeout=READ_TIMEOUT)
        except (OSError, ssl.SSLError) as e:
            self.fail("connect failed", error=repr(e))
            raise Closed()

    def read(self, c, what):
        try:
            return c.read_reply()
        except socket.timeout:
            self.fail("no reply within %.0fs (hang?)" % READ_TIMEOUT, request=what)
            c.close()
            raise Closed()
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
            c.close()
            raise Closed()
        except OSError:
            c.close()
            raise Closed()

    def send(self, c, data):
        try:
            c.send(data)
        except (OSError, ssl.SSLError):
            c.close()
            raise Closed()

    def call(self, c, *args):
        self.send(c, encode(*args))
        return self.read(c, args)

    def auth(self, c, user):
        """AUTH user with its current password on c: True when logged in."""
        s1, m = self.window()
        m = m or self.ctx.latest
        pws = m.users[user]["pws"] if user in m.users else ["chaospw-never-set"]
        pw = self.rng.choice(pws)
        r = self.call(c, "AUTH", user, pw)
        kind = classify(r)
        stable = self.stable_model(s1)
        if r == "OK":
            if stable is not None and not stable.login_ok(user, pw):
                self.fail("login accepted though the config refuses it", request=("AUTH", user),
                          model=stable.describe())
            self.ctx.count("auth ok")
            return True
        if kind == "wrongpass":
            if stable is not None and stable.login_ok(user, pw):
                self.fail("WRONGPASS for an enabled user's current password", request=("AUTH", user),
                          reply=r, model=stable.describe())
            self.ctx.count("auth wrongpass")
            return False
        if kind in ("upstream", "lost"):
            self.ctx.count("auth upstream error")
            return False
        self.fail("unexpected reply to AUTH", request=("AUTH", user), reply=r)
        return False

    def ensure(self, user=None):
        """self.conn logged in (as user, or the one it has, or a random one)."""
        if self.conn is not None and (user is None or user == self.user):
            return self.conn
        self.drop()
        user = user or self.rng.choice(USERS)
        c = self.connect()
        try:
            if not self.auth(c, user):
                c.close()
                time.sleep(0.02)
                raise Closed()
        except Closed:
            c.close()
            raise
        self.conn, self.user, self.resp3 = c, user, False
        return c

    def checked(self, s1, cmd, reply):
        """Common checks of a reply to cmd sent at seq s1 by a session of self.user: returns its
        kind ('ok', 'noperm', ...). Errors out of place and rights out of place are failures."""
        kind = classify(reply)
        m = self.stable_model(s1)
        if kind == "other":
            self.fail("unexpected error reply", request=cmd, reply=reply)
        if m is None:
            return kind
        if not m.active(self.user):
            self.fail("a session of a removed or disabled user was answered", request=cmd, reply=reply,
                      model=m.describe())
            return kind
        if kind == "noperm" and m.allows(self.user, cmd):
            self.fail("NOPERM for a command the config allows", request=cmd, reply=reply,
                      model=m.describe())
        if kind == "ok" and not m.allows(self.user, cmd):
            self.fail("a command the config refuses was run", request=cmd, reply=reply,
                      model=m.describe())
        if kind == "rate" and not m.limited(self.user):
            self.fail("rate limit error for a user without a rate limit", request=cmd, reply=reply,
                      model=m.describe())
        return kind

    # -- checks of values -----------------------------------------------------------------
    def check_set(self, req, r):
        if not isinstance(r, ErrorReply) and r != "OK":
            self.fail("wrong reply to SET", request=req, reply=r)

    def check_get(self, req, r, value, set_outcome):
        """GET k after SET k value whose outcome was set_outcome ('ok', an error kind, UNKNOWN)."""
        if isinstance(r, ErrorReply):
            return
        want = {value} if set_outcome == "ok" else ({value, None} if set_outcome in (UNKNOWN, "lost")
                                                    else {None})
        got = r if r is None else (r if isinstance(r, bytes) else ("<%s>" % type(r).__name__, r))
        if got not in want:
            self.fail("wrong reply to GET", request=req, reply=r, expected=sorted(map(repr, want)),
                      set_outcome=str(set_outcome))

    # -- behaviours ----------------------------------------------------------------------
    def b_plain(self):
        c = self.ensure()
        k = self.key()
        v = ("%s=%s" % (k, secrets.token_hex(4))).encode()
        s1, _ = self.window()
        r1 = self.call(c, "SET", k, v)
        k1 = self.checked(s1, "SET", r1)
        self.check_set(("SET", k), r1)
        s1, _ = self.window()
        r2 = self.call(c, "GET", k)
        self.checked(s1, "GET", r2)
        self.check_get(("GET", k), r2, v, k1)

    def b_pipeline(self):
        c = self.ensure()
        pairs = []
        for _ in range(10):
            k = self.key("p")
            pairs.append((k, ("%s=%s" % (k, secrets.token_hex(4))).encode()))
        s1, _ = self.window()
        self.send(c, b"".join(encode("SET", k, v) + encode("GET", k) for k, v in pairs))
        for i, (k, v) in enumerate(pairs):
            r1 = self.read(c, ("pipeline SET", i, k))
            k1 = self.checked(s1, "SET", r1)
            self.check_set(("pipeline SET #%d" % (2 * i), k), r1)
            r2 = self.read(c, ("pipeline GET", i, k))
            self.checked(s1, "GET", r2)
            self.check_get(("pipeline GET #%d" % (2 * i + 1), k), r2, v, k1)

    def b_multi(self):
        c = self.ensure()
        k = self.key("m")
        v = ("%s=%s" % (k, secrets.token_hex(4))).encode()
        s0, _ = self.window()
        r = self.call(c, "MULTI")
        if r != "OK":
            if not isinstance(r, ErrorReply):
                self.fail("wrong reply to MULTI", reply=r)
            self.checked(s0, "MULTI", r)
            self.drop()
            return
        queued = []
        for cmd in (("SET", k, v), ("INCR", self.ctr)):
            s1, _ = self.window()
            r = self.call(c, *cmd)
            if r == "QUEUED":
                queued.append(True)
            elif isinstance(r, ErrorReply):
                self.checked(s1, cmd[0], r)
                queued.append(False)
            else:
                self.fail("wrong reply to a command in MULTI", request=cmd, reply=r)
                self.drop()
                return
        r = self.call(c, "EXEC")
        m = self.stable_model(s0)
        if isinstance(r, ErrorReply):
            kind = classify(r)
            if kind == "other":
                self.fail("unexpected error reply to EXEC", reply=r)
            if kind == "execabort" and all(queued) and m is not None and m.active(self.user) \
                    and m.allows(self.user, "SET") and m.allows(self.user, "INCR"):
                self.fail("EXECABORT though no reload touched the transaction", reply=r, model=m.describe())
            self.ctx.count("exec " + kind)
            return
        if not all(queued):
            self.fail("EXEC ran a transaction with a refused command", reply=r)
            return
        if not (isinstance(r, list) and len(r) == 2):
            self.fail("wrong reply to EXEC", reply=r)
            self.drop()
            return
        a, b = r
        if not (a == "OK" or isinstance(a, ErrorReply)):
            self.fail("wrong SET reply inside EXEC", reply=r)
        if isinstance(b, ErrorReply):
            pass
        elif not isinstance(b, int) or isinstance(b, bool):
            self.fail("wrong INCR reply inside EXEC", reply=r)
        else:
            if self.ctr_last is not None and b <= self.ctr_last:
                self.fail("INCR inside EXEC went backwards", reply=r, last=self.ctr_last)
            self.ctr_last = b
        self.ctx.count("exec ok")
        if a == "OK":
            s1, _ = self.window()
            r2 = self.call(c, "GET", k)
            self.checked(s1, "GET", r2)
            self.check_get(("GET after EXEC", k), r2, v, "ok")

    def b_pubsub(self):
        pub = self.ensure()
        user = self.user
        ch = self.key("ch")
        sub = self.connect()
        try:
            if not self.auth(sub, user):
                return
            s1, _ = self.window()
            r = self.call(sub, "SUBSCRIBE", ch)
            kind = self.checked(s1, "SUBSCRIBE", r)
            if kind != "ok":
                return
            if r != [b"subscribe", ch.encode(), 1]:
                self.fail("wrong reply to SUBSCRIBE", reply=r)
                return
            self.ctx.count("subscribed")
            sub_alive = True
            for i in range(4):
                payload = ("%s#%d#%s" % (ch, i, secrets.token_hex(3))).encode()
                s1, _ = self.window()
                n = self.call(pub, "PUBLISH", ch, payload)
                self.checked(s1, "PUBLISH", n)
                if isinstance(n, ErrorReply):
                    continue
                if not isinstance(n, int) or n not in (0, 1):
                    self.fail("wrong reply to PUBLISH", reply=n)
                    continue
                if n == 1 and sub_alive:
                    try:
                        msg = sub.read_reply()
                    except socket.timeout:
                        self.fail("a published message (1 receiver) never reached the subscriber",
                                  channel=ch, payload=payload)
                        return
                    except (ConnectionClosed, OSError, ssl.SSLError):
                        sub_alive = False
                        continue
                    if msg != [b"message", ch.encode(), payload]:
                        self.fail("wrong message to a subscriber", reply=msg, expected=payload)
                        return
                    self.ctx.count("message")
        finally:
            sub.close()

    def b_blpop(self):
        c = self.ensure()
        if self.rng.random() < 0.6:
            v = ("%s=%d=%s" % (self.list, self.n, secrets.token_hex(3))).encode()
            self.n += 1
            s1, _ = self.window()
            try:
                r = self.call(c, "RPUSH", self.list, v)
            except Closed:
                self.new_list()
                raise
            kind = self.checked(s1, "RPUSH", r)
            if kind == "ok":
                if not isinstance(r, int) or r != len(self.listq) + 1:
                    self.fail("wrong reply to RPUSH", reply=r, expected=len(self.listq) + 1)
                    self.new_list()
                    return
                self.listq.append(v)
            elif kind in ("lost", "other"):
                self.new_list()
                return
        s1, _ = self.window()
        try:
            r = self.call(c, "BLPOP", self.list, "0.2")
        except Closed:
            self.new_list()
            raise
        kind = self.checked(s1, "BLPOP", r)
        if kind != "ok":
            if kind in ("lost", "other"):
                self.new_list()
            return
        if self.listq:
            want = [self.list.encode(), self.listq[0]]
            if r != want:
                self.fail("wrong reply to BLPOP", reply=r, expected=want)
                self.new_list()
                return
            self.listq.popleft()
        elif r is not None:
            self.fail("BLPOP of an empty list returned something", reply=r)
            self.new_list()

    def b_reset_auth(self):
        c = self.ensure()
        r = self.call(c, "RESET")
        if r != "RESET":
            if not isinstance(r, ErrorReply) or classify(r) == "other":
                self.fail("wrong reply to RESET", reply=r)
            self.drop()
            return
        self.resp3 = False
        user = self.rng.choice(USERS)
        self.user = None
        if not self.auth(c, user):
            self.drop()
            return
        self.user = user
        self.b_plain()

    def b_hello3(self):
        c = self.ensure()
        s1, _ = self.window()
        r = self.call(c, "HELLO", "3")
        if isinstance(r, ErrorReply):
            self.checked(s1, "HELLO", r)
            self.drop()
            return
        if not isinstance(r, dict) or r.get(b"proto") != 3:
            self.fail("wrong reply to HELLO 3", reply=r)
            self.drop()
            return
        self.resp3 = True
        self.b_plain()
        if self.rng.random() < 0.5:
            r = self.call(c, "HELLO", "2")
            if isinstance(r, ErrorReply):
                self.drop()
                return
            if not isinstance(r, list):
                self.fail("wrong reply to HELLO 2", reply=r)
                self.drop()
                return
            self.resp3 = False

    def b_oneshot(self):
        c = self.connect()
        user = self.rng.choice(USERS)
        saved = (self.conn, self.user, self.resp3)
        self.conn, self.user = c, user
        try:
            if not self.auth(c, user):
                return
            k = self.key("o")
            s1, _ = self.window()
            if self.rng.random() < 0.5:
                r = self.call(c, "GET", k)
                self.checked(s1, "GET", r)
                self.check_get(("oneshot GET", k), r, b"", "never set")
            else:
                r = self.call(c, "SET", k, "x")
                self.checked(s1, "SET", r)
                self.check_set(("oneshot SET", k), r)
            self.ctx.count("oneshot")
        finally:
            c.close()
            self.conn, self.user, self.resp3 = saved

    BEHAVIOURS = ["b_plain", "b_pipeline", "b_multi", "b_pubsub", "b_blpop", "b_reset_auth",
                  "b_hello3", "b_oneshot"]

    def run(self):
        while not self.ctx.stop.is_set():
            self.behaviour = self.rng.choice(self.BEHAVIOURS)
            try:
                if self.conn is not None and self.rng.random() < 0.1:
                    self.drop()   # another user, and session mode frees its connection
                getattr(self, self.behaviour)()
                self.ctx.count(self.behaviour)
            except Closed:
                self.ctx.count("closed")
                self.drop()
                time.sleep(0.01)
            except Exception:   # a bug of the test itself: make it visible
                self.fail("worker exception", trace=traceback.format_exc())
                self.drop()
                time.sleep(0.05)
        self.drop()


# ---------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------

def served_cert(p, certs):
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    c = RawConn(p.tls_port, timeout=10, tls_context=ctx, server_hostname="localhost")
    try:
        return c.sock.getpeercert(binary_form=True)
    finally:
        c.close()


def cert_der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def reload_lines(p):
    return [e for e in p.events("reload") if "result" in e]


@pytest.mark.parametrize("seed", SEEDS)
def test_reload_chaos(respguard, redis_server_factory, certs, request, seed):
    t0 = time.monotonic()
    rng = random.Random(seed)
    srv = redis_server_factory()
    admin = srv.client()
    cred_pw = {}
    for cred, user in CREDS.items():
        cred_pw[cred] = "upstream-%s-%s" % (user, secrets.token_hex(8))
        rules = RO_RULES if cred == "credRO" else ("~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", user, "reset", "on", ">" + cred_pw[cred], *rules)
    admin.close()

    model = Model()
    model.creds = set(CREDS)
    for i, name in enumerate(USERS):
        model.users[name] = {"on": True, "profile": "full", "pws": [new_password(rng)],
                             "cred": [None, "credA", "credB", "credRO", "credA"][i], "rate": 0}
    model.pool = (3, 1)
    start_cfg = render(model, {"listeners": [{"bind": "127.0.0.1:0"},
                                             {"bind": "127.0.0.1:0"}],
                               "upstream": {}, "admin": {"bind": "x"}}, certs, cred_pw)
    up = {"credentials": start_cfg["upstream"]["credentials"], "pool": start_cfg["upstream"]["pool"]}
    p = respguard(upstream_server=srv, tls_listener=True, admin=True, users=start_cfg["users"],
                  overrides={"upstream": up})
    p.secrets.extend(cred_pw.values())
    base = p.config
    secrets_seen = set()

    last_pw = {}

    def note_secrets(m):
        for name, u in m.users.items():
            last_pw[name] = u["pws"][-1]
            for pw in u["pws"]:
                if pw not in secrets_seen:
                    secrets_seen.add(pw)
                    p.secrets.append(pw)

    note_secrets(model)
    ctx = Chaos(p, seed, certs)
    ctx.models[0] = model
    ctx.latest = model
    cert_of = {n: cert_der(certs.path(n + ".crt")) for n in ("server", "server2")}
    assert served_cert(p, certs) == cert_of["server"]

    workers = [Worker(ctx, i) for i in range(WORKERS)]
    for w in workers:
        w.start()
    done = collections.Counter()
    log = []
    main_failures = []
    try:
        time.sleep(0.5)   # let the clients get going
        phase_end = time.monotonic() + RELOAD_PHASE_SECONDS
        for i in range(RELOADS):
            if time.monotonic() > phase_end:
                break
            if p.proc.poll() is not None:
                main_failures.append("respguard exited with %s during the reloads" % p.proc.returncode)
                break
            cur = ctx.latest
            nxt = cur.copy()
            steps = [mutate(nxt, rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            breakage = rng.choice(BREAKAGES) if rng.random() < 0.12 else None
            note_secrets(nxt)
            cfg = render(nxt, base, certs, cred_pw, breakage if breakage != "yaml" else None)
            text = to_yaml(cfg) + "\n"
            if breakage == "yaml":
                text += "users: [unterminated\n"
            seen = len(reload_lines(p))
            ctx.seq += 1   # odd: a reload is in flight
            with open(p.config_path, "w") as f:
                f.write(text)
            p.signal(signal.SIGHUP)
            try:
                ev = wait_until(lambda: reload_lines(p)[seen] if len(reload_lines(p)) > seen else None,
                                10, interval=0.01, what="reload log line #%d" % (seen + 1))
            except AssertionError:
                main_failures.append("reload %d (%s%s): no reload log line within 10 s (hang?)"
                                     % (i + 1, steps, " +" + breakage if breakage else ""))
                break
            log.append((i + 1, steps, breakage, ev.get("result"), ev.get("sessions_closed"),
                        ev.get("pools_drained")))
            if breakage:
                if ev.get("result") != "failed":
                    main_failures.append("reload %d with breakage %s: %r" % (i + 1, breakage, ev))
                    nxt_in_force = nxt   # it was applied after all: follow it
                else:
                    nxt_in_force = cur
                done["failed" if ev.get("result") == "failed" else "ok"] += 1
            else:
                if ev.get("result") != "ok" or ev.get("users") != len(nxt.users):
                    main_failures.append("reload %d (%s): %r" % (i + 1, steps, ev))
                    nxt_in_force = cur if ev.get("result") == "failed" else nxt
                else:
                    nxt_in_force = nxt
                done["ok" if ev.get("result") == "ok" else "failed"] += 1
            ctx.models[ctx.seq + 1] = nxt_in_force
            ctx.latest = nxt_in_force
            ctx.seq += 1   # even: stable
            # the listener's certificate is the one in force, a failed reload or not
            try:
                got = served_cert(p, certs)
                if got != cert_of[nxt_in_force.cert]:
                    main_failures.append("reload %d: the TLS listener serves the wrong certificate "
                                         "(want %s)" % (i + 1, nxt_in_force.cert))
            except (OSError, ssl.SSLError) as e:
                main_failures.append("reload %d: TLS handshake failed: %r" % (i + 1, e))
            time.sleep(rng.uniform(0.02, 0.15))
    finally:
        ctx.stop.set()
        for w in workers:
            w.join(READ_TIMEOUT + 5)
    stuck = [w.name for w in workers if w.is_alive()]
    final = ctx.latest
    elapsed = time.monotonic() - t0
    summary = ("seed %d, %s mode: %d reloads (%d ok, %d failed) in %.1fs; client outcomes: %s"
               % (seed, POOL_MODE, sum(done.values()), done["ok"], done["failed"], elapsed,
                  dict(sorted(ctx.stats.items()))))
    report_summary(request, "reload chaos", summary)
    print("\n".join(repr(x) for x in log))

    assert not stuck, "client threads did not stop (hang): %s" % stuck
    assert p.proc.poll() is None, "respguard exited with %s:\n%s" % (p.proc.returncode,
                                                                     p.stderr_text()[-6000:])
    assert not main_failures, "\n".join(main_failures)
    assert not ctx.failures, "%d wrong replies, first ones:\n%s" % (
        len(ctx.failures), "\n".join(repr(f) for f in ctx.failures[:15]))

    # a fresh login under the final configuration works, for every enabled user (after a second
    # in which every rate limit's bucket refills from the workers' last commands)
    active = [u for u in USERS if final.active(u)]
    if any(final.limited(u) for u in active):
        time.sleep(1.0)
    for user in active:
        with RawConn(p.port, timeout=10) as c:
            r = c.call("AUTH", user, final.users[user]["pws"][-1])
            assert r == "OK", (user, r, final.describe())
            r = c.call("PING")
            assert r == "PONG", (user, r)
            k = "chaos:final:%s:%d" % (user, seed)
            r = c.call("GET", k)
            if final.allows(user, "GET"):
                assert r is None, (user, r, final.describe())
            else:
                assert isinstance(r, ErrorReply) and r.text.startswith("NOPERM"), (user, r)
    for user in USERS:
        if not final.active(user):
            with RawConn(p.port, timeout=10) as c:
                r = c.call("AUTH", user, last_pw.get(user, "chaospw-x"))
                assert isinstance(r, ErrorReply) and r.text.startswith("WRONGPASS"), (user, r)

    # reload counts: what was done, in the log and the metrics
    lines = reload_lines(p)
    assert len([e for e in lines if e["result"] == "ok"]) == done["ok"], lines
    assert len([e for e in lines if e["result"] == "failed"]) == done["failed"], lines
    m = p.metrics()
    assert val(m, "respguard_config_reloads_total", result="ok") == done["ok"]
    assert val(m, "respguard_config_reloads_total", result="failed") == done["failed"]
    assert val(m, "respguard_config_last_reload_success") == (1 if lines[-1]["result"] == "ok" else 0)

    # a clean shutdown (the fixture's teardown then looks for sanitizer reports and secrets)
    p.signal(signal.SIGTERM)
    rc = p.proc.wait(15)
    assert rc == 0, "respguard exit %s:\n%s" % (rc, p.stderr_text()[-6000:])
