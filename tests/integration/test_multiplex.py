"""Multiplex mode (upstream.pool.mode: multiplex): many clients, few upstream connections.

The commands of all clients of one upstream credential share up to `size` upstream connections;
a client with connection state (MULTI, WATCH, subscriptions, blocking commands, RESP3, ...) gets
one of its own until that state ends; CLIENT ID/INFO/GETNAME/SETNAME are answered by respguard
about the client's own connection. Nothing a client sends may change meaning because it is
multiplexed, and no reply may ever reach the wrong client.

Everything is real: redis-server 7.0 behind respguard over TLS, node-redis v5 and ioredis in one
node process (node/workload_multiplex.mjs), redis-py in threads, raw sockets for byte-exact
order. Every test is bounded in time and in the work it does.
"""

import json
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
import redis

from helpers import PASSWORDS, default_users, metric_value, unique, wait_until
from resp_util import RawConn, bulk, encode
from test_clients_node import NODE_DIR, node_bin

pytestmark = pytest.mark.proxy_only


def mux(size=4, **pool):
    p = {"mode": "multiplex", "size": size, "min_idle": min(size, pool.pop("min_idle", size)),
         "acquire_timeout": "10s"}
    p.update(pool)
    return {"upstream": {"pool": p}}


def log_problems(proxy):
    """Log lines that must never appear in a healthy multiplexed run."""
    bad = []
    for e in proxy.logs():
        ev = e.get("event")
        if "_raw" in e or ev in ("internal_error", "unexpected_reply", "upstream_error", "session_close_timeout",
                                 "client_output_limit") or e.get("level") == "error":
            bad.append(e)
    return bad


def stderr_excerpt(proxy, n=4000):
    """respguard's log without the per-connection lines (accept, login, close, refusals)."""
    keep = [l for l in proxy.stderr_text().splitlines()
            if not any('"event":"%s"' % e in l for e in ("accept", "login", "session_close", "refused"))]
    return "\n".join(keep)[-n:]


def assert_alive(proxy):
    assert proxy.proc.poll() is None, "respguard exited with %s; stderr:\n%s" % (
        proxy.proc.returncode, stderr_excerpt(proxy, 6000))


# ---------------------------------------------------------------------------------------------
# 1. The main correctness test: 200 clients of three libraries at once, pool of 4.
# ---------------------------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.mismatches = 0
        self.samples = []
        self.errors = []
        self.counts = {}
        self.finished = 0

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n


class PyClient:
    """One redis-py client (three connections: main, other, subscriber) running the mix."""

    def __init__(self, idx, proxy, direct, prefix, iters, cross_wait, stats, seed):
        self.name = "py%d" % idx
        self.idx = idx
        self.proxy = proxy
        self.direct = direct
        self.prefix = prefix
        self.iters = iters
        self.cross_wait = cross_wait
        self.stats = stats
        self.rnd = random.Random("%s-%s" % (seed, self.name))
        self.step = "connect"
        self.history = []

    def K(self, s):
        return "%s:%s:%s" % (self.prefix, self.name, s)

    def check(self, what, expected, got):
        st = self.stats
        st.count("checks")
        if expected == got:
            return True
        with st.lock:
            st.mismatches += 1
            if len(st.samples) < 30:
                st.samples.append({"lib": "redis-py", "client": self.name, "step": self.step, "what": what,
                                   "expected": repr(expected), "got": repr(got),
                                   "history": self.history[-8:]})
        return False

    def connect(self, name):
        return self.proxy.client(client_name=name, decode_responses=True, socket_timeout=30,
                                 socket_connect_timeout=20)

    def run(self):
        try:
            self._run()
            with self.stats.lock:
                self.stats.finished += 1
        except Exception as e:  # every exception is an error of the run, reported with its step
            with self.stats.lock:
                self.stats.errors.append("redis-py %s step %s: %s: %s (history: %s)" % (
                    self.name, self.step, type(e).__name__, e, ", ".join(self.history[-6:])))

    def _run(self):
        K, ri, check = self.K, self.rnd.randint, self.check
        name = self.name
        a, b, sub = self.connect(name), self.connect(name + "-b"), self.connect(name + "-sub")
        counter = tx_counter = tx_len = 0
        w_value = last_s = None
        force_iter = ri(0, self.iters - 1)
        force_direct = self.rnd.random() < 0.5
        pubsub_iter = ri(0, self.iters - 1)
        modes = ["pre-other", "direct-later", "timeout", "other-later", "pre-other", "direct-later"]
        try:
            for j in range(self.iters):
                # plain commands
                self.step = "plain"
                self.history.append("it%d:plain" % j)
                v = "%s:s:%d:%d" % (name, j, ri(0, 10 ** 9))
                check("SET", True, a.set(K("s"), v))
                last_s = v
                check("GET", v, a.get(K("s")))
                counter += 1
                check("INCR", counter, a.incr(K("n")))
                check("CLIENT GETNAME", name, a.client_getname())
                check("STRLEN", len(v), a.strlen(K("s")))
                self.stats.count("plain")

                # a pipeline of 10-50 commands
                self.step = "pipeline"
                n = ri(10, 50)
                self.history.append("it%d:pipeline(%d)" % (j, n))
                pipe = a.pipeline(transaction=False)
                want, model = [], {}
                pc = plen = alen = 0
                for i in range(n):
                    t = ri(0, 6)
                    if t == 0:
                        key, val = K("p%d:%d" % (j, ri(0, 6))), "%s:p:%d:%d" % (name, j, i)
                        pipe.set(key, val)
                        want.append(True)
                        model[key] = val
                    elif t == 1:
                        key = K("p%d:%d" % (j, ri(0, 6)))
                        pipe.get(key)
                        want.append(model.get(key))
                    elif t == 2:
                        pc += 1
                        pipe.incr(K("pc%d" % j))
                        want.append(pc)
                    elif t == 3:
                        plen += 1
                        pipe.rpush(K("pl%d" % j), "%s:%d" % (name, i))
                        want.append(plen)
                    elif t == 4:
                        piece = "%d." % i
                        alen += len(piece)
                        pipe.append(K("pa%d" % j), piece)
                        want.append(alen)
                    elif t == 5:
                        e = "%s:echo:%d:%d" % (name, j, i)
                        pipe.echo(e)
                        want.append(e)
                    else:
                        pipe.client_getname()
                        want.append(name)
                check("pipeline of %d" % n, want, pipe.execute(raise_on_error=False))
                self.stats.count("pipelines")
                self.stats.count("pipelined_commands", n)

                # MULTI/EXEC
                self.step = "multi"
                self.history.append("it%d:multi" % j)
                tv = "%s:t:%d" % (name, j)
                pipe = a.pipeline(transaction=True)
                pipe.set(K("t"), tv).incr(K("tn")).get(K("t")).lpush(K("tl"), tv)
                tx_counter += 1
                tx_len += 1
                check("MULTI SET/INCR/GET/LPUSH EXEC", [True, tx_counter, tv, tx_len], pipe.execute())
                self.stats.count("transactions")

                # WATCH with optimistic retry, once with a forced conflict
                self.step = "watch"
                forced = j == force_iter
                self.history.append("it%d:watch%s" % (j, "(forced,%s)" % ("direct" if force_direct else "other")
                                                      if forced else ""))
                via_other = forced and not force_direct
                if via_other:
                    self.cross_wait.acquire()
                try:
                    committed = False
                    for attempt in range(1, 6):
                        with a.pipeline() as pipe:
                            check("WATCH", True, pipe.watch(K("w")))
                            check("GET watched key (attempt %d)" % attempt, w_value, pipe.get(K("w")))
                            conflict = forced and attempt == 1
                            if conflict:
                                cv = "%s:conflict:%d" % (name, j)
                                if force_direct:
                                    check("direct SET (conflict)", True, self.direct.set(K("w"), cv))
                                else:
                                    check("other SET (conflict)", True, b.set(K("w"), cv))
                                w_value = cv
                                self.stats.count("forced_conflicts")
                            nv = "%s:w:%d:%d" % (name, j, attempt)
                            pipe.multi()
                            pipe.set(K("w"), nv).get(K("w"))
                            try:
                                res = pipe.execute()
                            except redis.WatchError:
                                res = None
                        if conflict:
                            check("EXEC after a conflicting write is aborted (nil)", None, res)
                            if res is None:
                                self.stats.count("aborts_seen")
                        else:
                            check("EXEC of an unconflicted WATCH commits (attempt %d)" % attempt, [True, nv], res)
                        if res is not None:
                            committed = True
                            w_value = nv
                            break
                    check("WATCH cycle committed", True, committed)
                finally:
                    if via_other:
                        self.cross_wait.release()
                self.stats.count("watch_cycles")

                # BLPOP with a short timeout on this client's own list
                if j % 2 == self.idx % 2:
                    mode = modes[(j + self.idx) % len(modes)]
                    self.step = "blpop " + mode
                    self.history.append("it%d:blpop(%s)" % (j, mode))
                    lk, bv = K("bl"), "%s:b:%d" % (name, j)
                    pushed = True
                    if mode == "pre-other":
                        check("RPUSH by the other connection", 1, b.rpush(lk, bv))
                        got = a.blpop([lk], timeout=0.5)
                        check("BLPOP of a pushed value", (lk, bv), got)
                    elif mode == "timeout":
                        pushed = False
                        check("BLPOP on an empty list times out (nil)", None, a.blpop([lk], timeout=0.1))
                        got = None
                    else:
                        pusher = self.direct if mode == "direct-later" else b
                        if mode == "other-later":
                            self.cross_wait.acquire()
                        try:
                            res = {}

                            def push():
                                time.sleep(0.02)
                                try:
                                    res["rpush"] = pusher.rpush(lk, bv)
                                except Exception as e:  # reported below
                                    res["rpush"] = e
                            t = threading.Thread(target=push, daemon=True)
                            t.start()
                            got = a.blpop([lk], timeout=0.5)
                            t.join(30)
                            check("RPUSH (%s)" % mode, 1, res.get("rpush"))
                        finally:
                            if mode == "other-later":
                                self.cross_wait.release()
                    if pushed:
                        if got is None:
                            self.stats.count("blpop_late")
                            check("LPOP of the value BLPOP missed", bv, a.lpop(lk))
                        else:
                            check("BLPOP got the value this client pushed", (lk, bv), got)
                    check("list empty afterwards", None, a.lpop(lk))
                    self.stats.count("blpops")

                # pub/sub
                if j == pubsub_iter:
                    self.step = "pubsub"
                    self.history.append("it%d:pubsub" % j)
                    ch = K("ch")
                    nmsg = ri(3, 10)
                    self.cross_wait.acquire()
                    try:
                        p = sub.pubsub()
                        try:
                            p.subscribe(ch)
                            conf = p.get_message(timeout=20)
                            check("subscribe confirmation", {"type": "subscribe", "pattern": None, "channel": ch,
                                                             "data": 1}, conf)
                            sent = []
                            for i in range(nmsg):
                                m = "%s:m:%d:%d" % (name, j, i)
                                sent.append(m)
                                check("PUBLISH reaches exactly one subscriber", 1, b.publish(ch, m))
                            got = []
                            deadline = time.monotonic() + 10
                            while len(got) < nmsg and time.monotonic() < deadline:
                                msg = p.get_message(timeout=max(0.01, deadline - time.monotonic()))
                                if msg is None:
                                    continue
                                got.append(msg)
                            check("messages received in order",
                                  [{"type": "message", "pattern": None, "channel": ch, "data": m} for m in sent], got)
                            self.stats.count("messages", len(got))
                            p.unsubscribe(ch)
                            conf = p.get_message(timeout=20)
                            check("unsubscribe confirmation", {"type": "unsubscribe", "pattern": None, "channel": ch,
                                                               "data": 0}, conf)
                            # the same connection serves a command again, with this client's data
                            p.execute_command("GET", K("s"))
                            check("GET on the former subscriber", last_s, p.parse_response(block=True, timeout=20))
                        finally:
                            p.close()
                    finally:
                        self.cross_wait.release()
                    self.stats.count("pubsub_cycles")

            self.step = "final check (direct)"
            d = self.direct
            check("final counter (direct)", str(counter), d.get(K("n")))
            check("final transaction counter (direct)", str(tx_counter), d.get(K("tn")))
            check("final transaction list length (direct)", tx_len, d.llen(K("tl")))
            check("final watched value (direct)", w_value, d.get(K("w")))
            check("final string (direct)", last_s, d.get(K("s")))
        finally:
            for c in (a, b, sub):
                c.close()


def start_node_workload(proxy, upstream, certs, nr, io, iters, timeout_ms):
    node = node_bin()
    env = dict(os.environ, RG_HOST="127.0.0.1", RG_PORT=str(proxy.port), RG_USER="web",
               RG_PASS=PASSWORDS["web"], RG_PREFIX=unique("muxnode"), RG_NR_CLIENTS=str(nr),
               RG_IO_CLIENTS=str(io), RG_ITERS=str(iters), RG_SEED=str(random.randrange(1 << 30)),
               RG_TIMEOUT_MS=str(timeout_ms), RG_DIRECT_PORT=str(upstream.tls_port),
               RG_DIRECT_PASS=upstream.password, RG_DIRECT_CA=certs.path("ca.crt"))
    return subprocess.Popen([node, os.path.join(NODE_DIR, "workload_multiplex.mjs")], cwd=NODE_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


NODE_NR, NODE_IO, PY_CLIENTS = 70, 70, 60
ITERS = int(os.environ.get("RG_MUX_ITERS", "15"))


# Found by this test while it was written (fixed in 457faef): pool.c became_free() handed the
# connection to a PIN waiter and then still attached the SHARE waiters queued behind it; their
# replies went to the pinning client (behind its unbounded OWNER route), the reset's own frames
# (+RESET, +OK, the nonce) reached a client, sharing clients got "upstream connection lost" after
# the reset timed out, and a freed session's stale route made route_input() use freed memory
# (SIGSEGV). test_clients_waiting_to_share_never_join_a_connection_just_pinned is its small,
# deterministic form.
def test_200_clients_of_three_libraries_share_a_pool_of_4(respguard, upstream, certs):
    proxy = respguard(overrides=mux(4))
    t0 = time.monotonic()
    nodep = start_node_workload(proxy, upstream, certs, NODE_NR, NODE_IO, ITERS, 110000)
    try:
        stats = Stats()
        direct = upstream.client(decode_responses=True)
        cross_wait = threading.Semaphore(1)
        prefix = unique("muxpy")
        seed = random.randrange(1 << 30)
        clients = [PyClient(i, proxy, direct, prefix, ITERS, cross_wait, stats, seed) for i in range(PY_CLIENTS)]
        threads = [threading.Thread(target=c.run, name=c.name, daemon=True) for c in clients]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        hung_py = [t.name for t in threads if t.is_alive()]
        try:
            out, err = nodep.communicate(timeout=max(1, deadline + 10 - time.monotonic()))
        except subprocess.TimeoutExpired:
            nodep.kill()
            out, err = nodep.communicate()
        elapsed = time.monotonic() - t0
        direct.close()
    finally:
        if nodep.poll() is None:
            nodep.kill()
            nodep.wait(10)
    out, err = out.decode(), err.decode()
    lines = [l for l in out.splitlines() if l.strip()]
    assert nodep.returncode == 0 and lines, "node workload failed (exit %s):\n%s\n%s\nrespguard:\n%s" % (
        nodep.returncode, out[-3000:], err[-4000:], stderr_excerpt(proxy))
    nres = json.loads(lines[-1])
    summary = {
        "seconds": round(elapsed, 1),
        "node": {k: nres[k] for k in ("started", "finished", "mismatches", "error_count", "counts", "seconds")},
        "python": {"clients": PY_CLIENTS, "finished": stats.finished, "mismatches": stats.mismatches,
                   "errors": len(stats.errors), "counts": stats.counts},
    }
    print(json.dumps(summary))
    problems = {
        "node_mismatches": nres["mismatch_samples"],
        "node_errors": nres["errors"],
        "python_mismatches": stats.samples,
        "python_errors": stats.errors[:30],
        "python_hung": hung_py,
    }
    exit_status = proxy.proc.poll()
    assert exit_status is None and nres["mismatches"] == 0 and stats.mismatches == 0 and not nres["errors"] \
        and not stats.errors and not hung_py, \
        "multiplexed clients saw wrong replies or errors (respguard exit status: %s): %s\nsummary: %s\n" \
        "respguard stderr:\n%s" % (exit_status, json.dumps(problems, indent=1)[:12000], json.dumps(summary),
                                   stderr_excerpt(proxy))
    assert nres["finished"] == {"nr": NODE_NR, "io": NODE_IO}, summary
    assert stats.finished == PY_CLIENTS, summary
    # every part of the mix really ran
    for c in (nres["counts"], stats.counts):
        for k in ("plain", "pipelines", "transactions", "watch_cycles", "forced_conflicts", "aborts_seen",
                  "blpops", "pubsub_cycles", "messages"):
            assert c.get(k, 0) > 0, (k, summary)
    assert not log_problems(proxy), log_problems(proxy)[:20]


# ---------------------------------------------------------------------------------------------
# 2. RESP-level order: one big pipeline per client, with refusals and local answers.
# ---------------------------------------------------------------------------------------------

LIMITED_PASSWORD = "limitedpass-mux"

NOPERM_KEYS = b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
NOPERM_CONFIG = b"-NOPERM this user has no permissions to run the 'config|get' command\r\n"
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"



def raw_login(port, user, password, timeout=30.0):
    c = RawConn(port, timeout=timeout)
    c.send_cmd("AUTH", user, password)
    line = c.read_raw()
    assert line == b"+OK\r\n", line
    return c


# Regression test: see the comment on test_200_clients_of_three_libraries_share_a_pool_of_4.
def test_pipelines_with_refusals_and_local_answers_keep_each_clients_order(respguard, direct, upstream, certs):
    users = default_users()
    users["limited"] = {"acl": "on >%s ~mux:own:* &* +@all" % LIMITED_PASSWORD}
    proxy = respguard(users=users, overrides=mux(4))
    # Redis's own bytes for an unknown command, asked of Redis itself
    d = direct_raw(upstream, certs)
    try:
        unknown = d.call_raw("NOSUCHCMD", "a1", "b2")
    finally:
        d.close()
    assert unknown.startswith(b"-ERR unknown command 'NOSUCHCMD'"), unknown

    nclients, nsteps = 100, 60
    tag = unique("t").split(":")[1]
    barrier = threading.Barrier(nclients)
    results = [None] * nclients

    def one(ci):
        pre = "mux:own:%s:%d" % (tag, ci)
        denied = "mux:other:%s:%d" % (tag, ci)
        cmds, want = [], []

        def add(cmd, reply):
            cmds.append(cmd)
            want.append(reply)
        counter = 0
        add(("CLIENT", "SETNAME", "c%d" % ci), b"+OK\r\n")
        for i in range(nsteps):
            val = "v-%d-%d-%s" % (ci, i, "x" * ((ci * 7 + i) % 40))
            add(("SET", "%s:k%d" % (pre, i), val), b"+OK\r\n")
            add(("GET", "%s:k%d" % (denied, i)), NOPERM_KEYS)
            add(("NOSUCHCMD", "a1", "b2"), unknown)
            add(("CLIENT", "ID"), None)  # filled in below: the same id every time
            add(("GET", "%s:k%d" % (pre, i)), bulk(val))
            counter += 1
            add(("INCR", pre + ":n"), b":%d\r\n" % counter)
            add(("MSET", "%s:m" % pre, "x", "%s:m" % denied, "y"), NOPERM_KEYS)
            add(("CONFIG", "GET", "maxmemory"), NOPERM_CONFIG)
            add(("ECHO", "e-%d-%d" % (ci, i)), bulk("e-%d-%d" % (ci, i)))
            add(("CLIENT", "GETNAME"), bulk("c%d" % ci))
            if i % 10 == 3:  # a transaction doomed by a refusal: pins, EXECABORT, unpins
                add(("MULTI",), b"+OK\r\n")
                add(("SET", pre + ":tx", val), b"+QUEUED\r\n")
                add(("GET", denied + ":tx"), NOPERM_KEYS)
                add(("EXEC",), EXECABORT)
            if i % 10 == 6:  # a transaction that runs
                counter += 1
                add(("MULTI",), b"+OK\r\n")
                add(("INCR", pre + ":n"), b"+QUEUED\r\n")
                add(("GET", "%s:k%d" % (pre, i)), b"+QUEUED\r\n")
                add(("EXEC",), b"*2\r\n:%d\r\n%s" % (counter, bulk(val)))
            if i % 15 == 9:  # a blocking command that finds its value at once
                add(("RPUSH", pre + ":l", val), b":1\r\n")
                add(("BLPOP", pre + ":l", "0.5"), b"*2\r\n%s%s" % (bulk(pre + ":l"), bulk(val)))
        c = raw_login(proxy.port, "limited", LIMITED_PASSWORD)
        try:
            payload = b"".join(encode(*x) for x in cmds)
            barrier.wait(30)
            c.send(payload)
            got = []
            for _ in cmds:
                got.append(c.read_raw())
            # then one more command on its own, once every reply is in
            c.send_cmd("ECHO", "late-%d" % ci)
            got.append(c.read_raw())
            # and nothing else, ever (no reply of another client, nothing of respguard's own)
            c.settimeout(0.3)
            try:
                extra = c.buf + c.sock.recv(65536)
            except socket.timeout:
                extra = c.buf
            if extra:
                got.append(extra)
        finally:
            c.close()
        results[ci] = (cmds + [("ECHO", "late-%d" % ci)], want + [bulk("late-%d" % ci)], got)

    errors = []

    def run(ci):
        try:
            one(ci)
        except Exception as e:
            errors.append("client %d: %s: %s" % (ci, type(e).__name__, e))
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not [t for t in threads if t.is_alive()], "clients hung; respguard:\n" + stderr_excerpt(proxy)
    assert not errors, "%s\nrespguard:\n%s" % ("\n".join(errors[:20]), stderr_excerpt(proxy))

    ids = {}
    bad = []
    for ci, (cmds, want, got) in enumerate(results):
        cid = None
        if len(got) > len(cmds):
            bad.append((ci, len(cmds), "(nothing more)", b"", got[len(cmds):]))
        for i, (cmd, w, g) in enumerate(zip(cmds, want, got)):
            if w is None:  # CLIENT ID: an integer, the same for every call of this client
                m = re.fullmatch(rb":(\d+)\r\n", g)
                if not m or (cid is not None and m.group(1) != cid):
                    bad.append((ci, i, cmd, "CLIENT ID %r" % cid, g))
                cid = cid or (m.group(1) if m else None)
                continue
            if g != w:
                bad.append((ci, i, cmd, w, g))
        ids[ci] = cid
    assert not bad, "replies out of order or to the wrong client (client, index, command, expected, got):\n%s" % (
        "\n".join(repr(b) for b in bad[:40]))
    assert len(set(ids.values())) == nclients, "CLIENT ID not distinct between clients: %r" % ids
    assert_alive(proxy)
    assert not log_problems(proxy), log_problems(proxy)[:20]
    # every refusal was judged by respguard: nothing of another key space reached the upstream
    assert direct.keys("mux:other:%s:*" % tag) == []


# Regression test: see the comment on test_200_clients_of_three_libraries_share_a_pool_of_4.
def test_clients_waiting_to_share_never_join_a_connection_just_pinned(respguard):
    """Pool of one: clients leave a transaction (their pin ends) while others wait for the
    connection, some to pin it (MULTI), some to share it (a plain ECHO). Whoever gets it next,
    each client gets exactly its own replies and nothing else."""
    proxy = respguard(overrides=mux(1))
    nclients, rounds = 5, 10
    for rnd in range(rounds):
        barrier = threading.Barrier(nclients)
        results, errors = {}, []

        def one(ci):
            try:
                c = raw_login(proxy.port, "web", PASSWORDS["web"], timeout=10)
                try:
                    key = unique("wp%d" % ci)
                    cmds = [("ECHO", "c%d-pre" % ci), ("MULTI",), ("INCR", key), ("EXEC",), ("ECHO", "c%d-post" % ci)]
                    want = [bulk("c%d-pre" % ci), b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n:1\r\n", bulk("c%d-post" % ci),
                            bulk("c%d-late" % ci)]
                    barrier.wait(10)
                    c.send(b"".join(encode(*x) for x in cmds))
                    got = [c.read_raw() for _ in cmds]
                    c.send_cmd("ECHO", "c%d-late" % ci)
                    got.append(c.read_raw())
                    c.settimeout(0.3)
                    try:
                        extra = c.buf + c.sock.recv(65536)
                    except socket.timeout:
                        extra = c.buf
                    if extra:
                        got.append(extra)
                    results[ci] = (want, got)
                finally:
                    c.close()
            except Exception as e:
                errors.append("client %d: %s: %s" % (ci, type(e).__name__, e))

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(nclients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        bad = {ci: r for ci, r in results.items() if r[0] != r[1]}
        assert not errors and not bad, "round %d: %s\n%s\nrespguard:\n%s" % (
            rnd, errors, "\n".join("client %d:\n want %r\n got  %r" % (ci, w, g) for ci, (w, g) in sorted(bad.items())),
            stderr_excerpt(proxy))
    assert_alive(proxy)
    assert not log_problems(proxy), log_problems(proxy)


# ---------------------------------------------------------------------------------------------
# 3. CLIENT ID/INFO/GETNAME/SETNAME: about the client's own connection.
# ---------------------------------------------------------------------------------------------

def direct_raw(upstream, certs):
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    c = RawConn(upstream.tls_port, timeout=10, tls_context=ctx, server_hostname="localhost")
    assert c.call_raw("AUTH", upstream.password) == b"+OK\r\n"
    return c


def info_fields(text):
    assert text.endswith("\n"), repr(text)
    return [tuple(kv.split("=", 1)) for kv in text.rstrip("\n").split(" ")]


def test_client_identity_is_the_clients_own(respguard, upstream, certs):
    proxy = respguard(overrides=mux(2))
    clients = [proxy.login() for _ in range(6)]
    try:
        ids = []
        for i, c in enumerate(clients):
            raw = c.call_raw("CLIENT", "ID")
            m = re.fullmatch(rb":(\d+)\r\n", raw)
            assert m, raw
            ids.append(int(m.group(1)))
            # stable, also between other commands and other clients' traffic
            for other in clients:
                assert other.call_raw("PING") == b"+PONG\r\n"
            assert c.call_raw("CLIENT", "ID") == raw
        assert len(set(ids)) == len(ids), ids

        # no name yet: nil, as Redis
        assert clients[0].call_raw("CLIENT", "GETNAME") == b"$-1\r\n"
        for i, c in enumerate(clients):
            assert c.call_raw("CLIENT", "SETNAME", "mux-name-%d" % i) == b"+OK\r\n"
        for i, c in enumerate(clients):
            assert c.call_raw("CLIENT", "GETNAME") == bulk("mux-name-%d" % i)
        # Redis's refusal of a bad name
        assert clients[0].call_raw("CLIENT", "SETNAME", "a b") == \
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        assert clients[0].call_raw("CLIENT", "GETNAME") == bulk("mux-name-0")

        d = direct_raw(upstream, certs)
        try:
            d.send_cmd("CLIENT", "INFO")
            draw, dval = d.read_reply_raw()
        finally:
            d.close()
        assert draw.startswith(b"$"), draw
        direct_fields = info_fields(dval.decode())

        for i, c in enumerate(clients):
            raw = c.call_raw("CLIENT", "INFO")
            m = re.match(rb"\$(\d+)\r\n", raw)
            assert m, raw
            body = raw[m.end():]
            assert body.endswith(b"\r\n") and len(body) - 2 == int(m.group(1)), raw
            fields = info_fields(body[:-2].decode())
            assert [k for k, _ in fields] == [k for k, _ in direct_fields], \
                "CLIENT INFO fields differ from Redis's:\n respguard %r\n redis     %r" % (fields, direct_fields)
            f = dict(fields)
            local = c.sock.getsockname()
            assert f["id"] == str(ids[i]), (f, ids[i])
            assert f["name"] == "mux-name-%d" % i, f
            assert f["user"] == "web", f
            assert f["resp"] == "2", f
            assert f["addr"] == "%s:%d" % local, (f, local)
            assert f["laddr"] == "127.0.0.1:%d" % proxy.port, f
            assert f["db"] == "0" and f["multi"] == "-1" and f["flags"] == "N" and f["cmd"] == "client|info", f

        # the upstream knows none of these names or addresses (they stayed with respguard)
        d = direct_raw(upstream, certs)
        try:
            listing = d.call("CLIENT", "LIST").decode()
        finally:
            d.close()
        for i, c in enumerate(clients):
            assert "mux-name-%d" % i not in listing, listing
            assert "addr=%s:%d " % c.sock.getsockname() not in listing, listing
    finally:
        for c in clients:
            c.close()
    assert_alive(proxy)


def test_client_info_in_resp3_matches_redis_format(respguard, upstream, certs):
    proxy = respguard(overrides=mux(2))
    c = proxy.login()
    d = direct_raw(upstream, certs)
    try:
        c.send_cmd("HELLO", "3")
        c.read_reply_raw()
        d.send_cmd("HELLO", "3")
        d.read_reply_raw()
        cid = c.call("CLIENT", "ID")
        raw = c.call_raw("CLIENT", "INFO")
        draw = d.call_raw("CLIENT", "INFO")
        assert raw[:1] == draw[:1] == b"=", (raw, draw)
        body = raw.split(b"\r\n", 1)[1][:-2]
        dbody = draw.split(b"\r\n", 1)[1][:-2]
        assert body.startswith(b"txt:") and dbody.startswith(b"txt:"), (raw, draw)
        fields, dfields = info_fields(body[4:].decode()), info_fields(dbody[4:].decode())
        assert [k for k, _ in fields] == [k for k, _ in dfields], (fields, dfields)
        f = dict(fields)
        assert f["resp"] == "3" and f["id"] == str(cid) and f["user"] == "web", f
        assert f["addr"] == "%s:%d" % c.sock.getsockname(), f
        # RESP3 nil for no name, as Redis
        assert c.call_raw("CLIENT", "GETNAME") == d.call_raw("CLIENT", "GETNAME") == b"_\r\n"
    finally:
        c.close()
        d.close()


def test_client_identity_inside_multi_is_refused(respguard, direct):
    """Inside MULTI Redis queues CLIENT ID/GETNAME/SETNAME/INFO and answers them in EXEC's array,
    where respguard, which answers them itself in multiplex mode, cannot place its answers: they
    are refused (a documented difference) and, like any error at queue time, doom the
    transaction; the name set before MULTI is untouched."""
    proxy = respguard(overrides=mux(2))
    c = proxy.login()
    k = unique("mux:tx")
    refused = (b"-ERR CLIENT ID, INFO, GETNAME and SETNAME inside MULTI are not supported through "
               b"respguard where respguard answers them\r\n")
    try:
        c.send(encode("CLIENT", "SETNAME", "before") + encode("MULTI") + encode("SET", k, "v") +
               encode("CLIENT", "ID") + encode("CLIENT", "SETNAME", "inside") + encode("CLIENT", "GETNAME") +
               encode("EXEC") + encode("CLIENT", "GETNAME"))
        got = [c.read_raw() for _ in range(8)]
        assert got == [b"+OK\r\n", b"+OK\r\n", b"+QUEUED\r\n", refused, refused, refused,
                       b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                       b"$6\r\nbefore\r\n"], got
        assert direct.get(k) is None
    finally:
        c.close()


def test_client_identity_in_resp2_subscribed_mode_is_refused_like_redis(respguard, upstream, certs):
    """A RESP2 connection in subscribed mode may only (un)subscribe, PING, QUIT and RESET: Redis
    refuses CLIENT ID/SETNAME/GETNAME/INFO there, and so must a multiplexed session."""
    proxy = respguard(overrides=mux(2))
    c = proxy.login()
    d = direct_raw(upstream, certs)
    try:
        got, want = [], []
        for conn, out in ((c, got), (d, want)):
            conn.send_cmd("SUBSCRIBE", unique("ch"))
            conn.read_reply()
            for cmd in (("CLIENT", "ID"), ("CLIENT", "SETNAME", "sub-name"), ("CLIENT", "GETNAME"),
                        ("CLIENT", "INFO")):
                raw = conn.call_raw(*cmd)
                out.append((" ".join(cmd), raw if raw.startswith(b"-") else raw[:60]))
            assert conn.call_raw("RESET") == b"+RESET\r\n"
        assert got == want, "through respguard (multiplex) vs Redis:\n got  %r\n want %r" % (got, want)
    finally:
        c.close()
        d.close()


def test_client_info_reports_subscriptions_and_database_like_redis(respguard, upstream, certs):
    """CLIENT INFO's flags, db, sub, psub, ssub and multi say what Redis would say of the same
    connection (the client's own state, which respguard knows)."""
    proxy = respguard(overrides=mux(2))
    fields = ("flags", "db", "sub", "psub", "ssub", "multi")

    def state(conn):
        raw = conn.call_raw("CLIENT", "INFO")
        body = raw.split(b"\r\n", 1)[1][:-2].decode()
        if body.startswith("txt:"):
            body = body[4:]
        f = dict(info_fields(body))
        return {k: f[k] for k in fields}

    got, want = {}, {}
    for make, out in ((proxy.login, got), (lambda: direct_raw(upstream, certs), want)):
        conn = make()
        try:
            conn.send_cmd("HELLO", "3")
            conn.read_reply()
            ch = unique("ch")
            conn.send_cmd("SUBSCRIBE", ch + ":a", ch + ":b")
            conn.read_reply()
            conn.read_reply()
            conn.send_cmd("PSUBSCRIBE", ch + ":p*")
            conn.read_reply()
            out["resp3 subscribed to 2 channels and 1 pattern"] = state(conn)
            assert conn.call_raw("RESET") == b"+RESET\r\n"
        finally:
            conn.close()
        conn = make()
        try:
            assert conn.call_raw("SELECT", "2") == b"+OK\r\n"
            out["after SELECT 2"] = state(conn)
        finally:
            conn.close()
    assert got == want, "CLIENT INFO through respguard (multiplex) vs Redis:\n got  %r\n want %r" % (got, want)


# ---------------------------------------------------------------------------------------------
# 4. Pin lifecycle, seen in the pool metrics.
# ---------------------------------------------------------------------------------------------

def pinned(proxy):
    return metric_value(proxy.metrics(), "respguard_pool_connections", state="pinned")


def wait_pinned(proxy, n, what):
    try:
        wait_until(lambda: pinned(proxy) == n, 5, what="%s: pinned == %d" % (what, n))
    except AssertionError:
        m = proxy.metrics()
        states = {dict(k[1]).get("state"): v for k, v in m.items() if k[0] == "respguard_pool_connections"}
        raise AssertionError("%s: expected %d pinned connections, have %r" % (what, n, states))


def test_pins_begin_and_end_with_connection_state(respguard, direct):
    proxy = respguard(overrides=mux(4), admin=True)
    k = unique("pin")
    wait_pinned(proxy, 0, "at start")
    c = proxy.login()
    other = proxy.login()
    try:
        assert c.call_raw("SET", k, "1") == b"+OK\r\n"
        wait_pinned(proxy, 0, "after a plain command")

        # MULTI .. EXEC
        assert c.call_raw("MULTI") == b"+OK\r\n"
        wait_pinned(proxy, 1, "transaction open")
        assert c.call_raw("INCR", k) == b"+QUEUED\r\n"
        assert other.call_raw("GET", k) == bulk("1")  # others share the rest meanwhile
        wait_pinned(proxy, 1, "transaction still open")
        assert c.call_raw("EXEC") == b"*1\r\n:2\r\n"
        wait_pinned(proxy, 0, "after EXEC")
        # MULTI .. DISCARD
        assert c.call_raw("MULTI") == b"+OK\r\n"
        wait_pinned(proxy, 1, "second transaction open")
        assert c.call_raw("DISCARD") == b"+OK\r\n"
        wait_pinned(proxy, 0, "after DISCARD")

        # WATCH .. UNWATCH, WATCH .. EXEC
        assert c.call_raw("WATCH", k) == b"+OK\r\n"
        wait_pinned(proxy, 1, "WATCH")
        assert c.call_raw("UNWATCH") == b"+OK\r\n"
        wait_pinned(proxy, 0, "after UNWATCH")
        assert c.call_raw("WATCH", k) == b"+OK\r\n"
        assert other.call_raw("SET", k, "9") == b"+OK\r\n"
        c.send(encode("MULTI") + encode("GET", k) + encode("EXEC"))
        assert [c.read_raw() for _ in range(3)] == [b"+OK\r\n", b"+QUEUED\r\n", b"*-1\r\n"]
        wait_pinned(proxy, 0, "after an aborted EXEC")

        # a subscriber pins until it has no subscription left
        s = proxy.login()
        try:
            s.send_cmd("SUBSCRIBE", k + ":a", k + ":b")
            assert s.read_reply() == [b"subscribe", (k + ":a").encode(), 1]
            assert s.read_reply() == [b"subscribe", (k + ":b").encode(), 2]
            wait_pinned(proxy, 1, "subscribed")
            s.send_cmd("PSUBSCRIBE", k + ":p*")
            assert s.read_reply() == [b"psubscribe", (k + ":p*").encode(), 3]
            assert other.call("PUBLISH", k + ":a", "m1") == 1
            assert s.read_reply() == [b"message", (k + ":a").encode(), b"m1"]
            s.send_cmd("UNSUBSCRIBE", k + ":a")
            assert s.read_reply() == [b"unsubscribe", (k + ":a").encode(), 2]
            wait_pinned(proxy, 1, "two subscriptions left")
            s.send_cmd("UNSUBSCRIBE")
            assert s.read_reply() == [b"unsubscribe", (k + ":b").encode(), 1]
            wait_pinned(proxy, 1, "a pattern subscription left")
            s.send_cmd("PUNSUBSCRIBE", k + ":p*")
            assert s.read_reply() == [b"punsubscribe", (k + ":p*").encode(), 0]
            wait_pinned(proxy, 0, "no subscription left")
            assert s.call_raw("GET", k) == bulk("9")
        finally:
            s.close()

        # HELLO 3 pins until HELLO 2
        h = proxy.login()
        try:
            h.send_cmd("HELLO", "3")
            assert isinstance(h.read_reply(), dict)
            wait_pinned(proxy, 1, "HELLO 3")
            assert h.call_raw("GET", k) == bulk("9")
            assert h.call_raw("HGETALL", k + ":none") == b"%0\r\n"
            h.send_cmd("HELLO", "2")
            assert isinstance(h.read_reply(), list)
            wait_pinned(proxy, 0, "after HELLO 2")
            assert h.call_raw("HGETALL", k + ":none") == b"*0\r\n"
            # ... and until RESET
            h.send_cmd("HELLO", "3")
            h.read_reply()
            wait_pinned(proxy, 1, "HELLO 3 again")
            assert h.call_raw("RESET") == b"+RESET\r\n"
            wait_pinned(proxy, 0, "after RESET")
            assert h.call_raw("GET", k) == b"-NOAUTH Authentication required.\r\n"
            assert h.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
            assert h.call_raw("HGETALL", k + ":none") == b"*0\r\n"
            wait_pinned(proxy, 0, "after the new login")
        finally:
            h.close()

        # a blocking command pins while it blocks
        c.send_cmd("BLPOP", k + ":list", "5")
        wait_pinned(proxy, 1, "BLPOP blocking")
        assert other.call_raw("RPUSH", k + ":list", "x") == b":1\r\n"
        assert c.read_raw() == b"*2\r\n%s%s" % (bulk(k + ":list"), bulk("x"))
        wait_pinned(proxy, 0, "after BLPOP returned")

        # a client that leaves with a pin gives it back (reset, then free)
        q = proxy.login()
        assert q.call_raw("MULTI") == b"+OK\r\n"
        wait_pinned(proxy, 1, "leaving client's transaction")
        q.close()
        wait_pinned(proxy, 0, "after the client left")
        m = proxy.metrics()
        assert metric_value(m, "respguard_pool_resets_total", result="ok") >= 1
    finally:
        c.close()
        other.close()
    assert_alive(proxy)
    assert not log_problems(proxy), log_problems(proxy)


# ---------------------------------------------------------------------------------------------
# 5. Commands of different clients ready in the same loop turn leave in one write.
# ---------------------------------------------------------------------------------------------

def test_commands_of_many_clients_share_upstream_writes(respguard):
    proxy = respguard(overrides=mux(2), admin=True)
    nclients, rounds = 50, 200
    barrier = threading.Barrier(nclients)
    errors = []

    def client(ci):
        try:
            c = raw_login(proxy.port, "web", PASSWORDS["web"])
            try:
                key = unique("cpw%d" % ci)
                barrier.wait(30)
                for i in range(rounds):
                    c.send_cmd("SET", key, str(i))  # one command at a time, never pipelined
                    r = c.read_raw()
                    if r != b"+OK\r\n":
                        errors.append((ci, i, r))
                        return
                    c.send_cmd("GET", key)
                    r = c.read_raw()
                    if r != bulk(str(i)):
                        errors.append((ci, i, r))
                        return
            finally:
                c.close()
        except Exception as e:
            errors.append((ci, repr(e)))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [t for t in threads if t.is_alive()]
    assert not errors, errors[:10]
    m = proxy.metrics()
    total = metric_value(m, "respguard_pool_commands_per_write_sum")
    writes = metric_value(m, "respguard_pool_commands_per_write_count")
    print("commands per upstream write: %.2f (%d commands in %d writes)" % (total / max(writes, 1), total, writes))
    assert total >= nclients * rounds * 2, (total, writes)
    assert writes > 0 and total / writes > 1, \
        "every upstream write carried one command (sum %r, count %r)" % (total, writes)
