"""The Upstash-compatible REST listener (issue 11): every command form (POST / JSON, the path
form with its body and query arguments, /pipeline, /multi-exec), token auth (Bearer and
?_token=), the ACL and the guard, the HTTP statuses (400, 401, 405, 413, 429),
Upstash-Encoding: base64, Upstash-Response-Format: resp2, CORS, the slow-client and idle
timeouts, keep-alive, TLS, config errors, metrics, log lines and live reload. Everything goes
through http.client against a real respguard in front of the real TLS redis-server; INFO
commandstats and the keys themselves (the `direct` fixture) show what did, and what did not,
reach the upstream."""

import base64
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

import pytest

from helpers import (DELETE, OFF_USER_PASSWORD, PASSWORDS, deep_merge, default_users, free_port,
                     metric_value as val, respguard_bin, sighup, to_yaml, unique, wait_port, wait_until,
                     write_config)

pytestmark = pytest.mark.proxy_only

TOKEN = PASSWORDS["web"]
UNAUTHORIZED = b'{"error":"Unauthorized"}'
NOPERM_KEYS = "NOPERM this user has no permissions to access one of the keys used as arguments"
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"
APP_TOKEN = "appToken-Prefix-314"
EXECABORT = "EXECABORT Transaction discarded because of: "


def noperm_cmd(name):
    return "NOPERM this user has no permissions to run the '%s' command" % name


def unsupported(name):
    return "ERR %s is not supported over the REST API" % name


def unknown_cmd(name, *args):
    return "ERR unknown command '%s', with args beginning with: %s" % (
        name, "".join("'%s' " % a for a in args))


# ---------------------------------------------------------------------------
# an HTTP client for the REST listener
# ---------------------------------------------------------------------------

class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError:
            raise AssertionError("not a JSON body (status %d): %r" % (self.status, self.body[:500]))

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "Reply(%d, %r, %r)" % (self.status, self.headers, self.body[:500])


class Rest:
    """Requests to one REST listener, each on a fresh connection unless conn= is given."""

    def __init__(self, port, tls_context=None, host="127.0.0.1", timeout=10.0):
        self.port = port
        self.tls_context = tls_context
        self.host = host
        self.timeout = timeout

    def conn(self, source_address=None):
        if self.tls_context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.tls_context, source_address=source_address)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout,
                                          source_address=source_address)

    def request(self, method, path, body=None, token=TOKEN, headers=None, conn=None, source_address=None):
        h = {}
        if token is not None:
            h["Authorization"] = "Bearer " + token
        if isinstance(body, (list, dict)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        own = conn is None
        c = conn or self.conn(source_address)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            if own:
                c.close()

    def cmd(self, *args, **kw):
        """POST / with one JSON command."""
        return self.request("POST", "/", list(args), **kw)

    def pipeline(self, cmds, **kw):
        return self.request("POST", "/pipeline", cmds, **kw)

    def multi(self, cmds, **kw):
        return self.request("POST", "/multi-exec", cmds, **kw)


def start(respguard, rest=None, extra_rest=(), bind_host="127.0.0.1", **kw):
    """A respguard with one REST listener (rest: its extra keys) on a free port; p.rest talks to
    it (plaintext, or verified TLS against the test CA when rest has tls)."""
    port = free_port()
    entry = dict({"bind": "%s:%d" % (bind_host, port)}, **(rest or {}))
    overrides = deep_merge(kw.pop("overrides", None) or {}, {"rest": [entry] + list(extra_rest)})
    p = respguard(overrides=overrides, **kw)
    try:
        wait_port(port, 10, p.proc, "respguard's REST listener")
    except AssertionError:
        raise AssertionError("REST listener not up; stderr:\n" + p.stderr_text()[-4000:])
    ctx = None
    if "tls" in entry:
        ctx = ssl.create_default_context(cafile=p.certs.path("ca.crt"))
    p.rest_port = port
    p.rest = Rest(port, ctx)
    return p


def ok_json(r, want, status=200):
    assert r.status == status and r.json() == want, (r, want)
    ctype = (r.header("Content-Type") or "").split(";")[0].strip()
    assert ctype == "application/json", r


def error_is(r, status, text):
    ok_json(r, {"error": text}, status)


def error_starts(r, status, prefix):
    assert r.status == status, r
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"].startswith(prefix), r


def calls(direct, name):
    return direct.info("commandstats").get("cmdstat_" + name, {}).get("calls", 0)


def q(s):
    return urllib.parse.quote(s, safe="")


# ---------------------------------------------------------------------------
# command forms
# ---------------------------------------------------------------------------

def test_post_json_command_with_numbers(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    r = p.rest.cmd("SET", k, "v1", "EX", 100)
    assert r.status == 200 and r.body == b'{"result":"OK"}', r
    assert direct.get(k) == b"v1"
    assert 95 <= direct.ttl(k) <= 100, direct.ttl(k)
    ok_json(p.rest.cmd("GET", k), {"result": "v1"})
    # numbers reach Redis as written, booleans as "true"/"false"
    ok_json(p.rest.cmd("SET", k, 1.5), {"result": "OK"})
    assert direct.get(k) == b"1.5"
    ok_json(p.rest.cmd("INCRBYFLOAT", k, 2), {"result": "3.5"})
    ok_json(p.rest.cmd("SET", k, True), {"result": "OK"})
    assert direct.get(k) == b"true"
    ok_json(p.rest.cmd("SET", k, False), {"result": "OK"})
    assert direct.get(k) == b"false"
    # UTF-8 text both ways
    ok_json(p.rest.cmd("SET", k, "h\u00e9llo \u2603"), {"result": "OK"})
    assert direct.get(k) == "h\u00e9llo \u2603".encode()
    ok_json(p.rest.cmd("GET", k), {"result": "h\u00e9llo \u2603"})


def test_reply_values_map_to_json(respguard, direct):
    p = start(respguard)
    k, lst, missing = unique("rest"), unique("rest"), unique("rest")
    ok_json(p.rest.cmd("PING"), {"result": "PONG"})                      # simple string
    ok_json(p.rest.cmd("INCR", k), {"result": 1})                        # integer
    ok_json(p.rest.cmd("INCRBY", k, -5), {"result": -4})
    ok_json(p.rest.cmd("GET", missing), {"result": None})                # nil
    ok_json(p.rest.cmd("RPUSH", lst, "a", "b", "c"), {"result": 3})
    ok_json(p.rest.cmd("LRANGE", lst, 0, -1), {"result": ["a", "b", "c"]})   # array
    ok_json(p.rest.cmd("LRANGE", missing, 0, -1), {"result": []})
    ok_json(p.rest.cmd("EVAL", "return {1,{2,'x'},{}}", 0), {"result": [1, [2, "x"], []]})
    ok_json(p.rest.cmd("MGET", k, missing), {"result": ["-4", None]})
    assert not direct.exists(missing)


def test_path_form_get_and_set(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    ok_json(p.rest.request("GET", "/set/%s/v" % q(k)), {"result": "OK"})
    assert direct.get(k) == b"v"
    ok_json(p.rest.request("GET", "/get/%s" % q(k)), {"result": "v"})
    # segments are percent-decoded
    ok_json(p.rest.request("GET", "/set/%s/hello%%20world%%21" % q(k)), {"result": "OK"})
    assert direct.get(k) == b"hello world!"
    # %2F stays inside one argument: key "<k>/sub", not the two arguments "<k>" and "sub"
    ok_json(p.rest.request("GET", "/set/%s%%2Fsub/slashed" % q(k)), {"result": "OK"})
    assert direct.get(k + "/sub") == b"slashed"
    assert direct.get(k) == b"hello world!"
    ok_json(p.rest.request("GET", "/get/%s%%2Fsub" % q(k)), {"result": "slashed"})
    # POST path form without a body is the same command
    ok_json(p.rest.request("POST", "/get/%s%%2Fsub" % q(k)), {"result": "slashed"})
    ok_json(p.rest.request("GET", "/incr/%s" % q(k + ":n")), {"result": 1})
    ok_json(p.rest.request("GET", "/ping"), {"result": "PONG"})
    # command names are case-insensitive, as in Redis
    ok_json(p.rest.request("GET", "/GET/%s" % q(k)), {"result": "hello world!"})


def test_path_form_post_body_is_the_last_argument(respguard, direct):
    p = start(respguard)
    k, lst = unique("rest"), unique("rest")
    value = b'a value with spaces, "quotes", slashes / and \r\n newlines'
    ok_json(p.rest.request("POST", "/set/%s" % q(k), value, headers={"Content-Type": "text/plain"}),
            {"result": "OK"})
    assert direct.get(k) == value
    ok_json(p.rest.request("POST", "/rpush/%s/first" % q(lst), b"second"), {"result": 2})
    assert direct.lrange(lst, 0, -1) == [b"first", b"second"]
    # a JSON-looking body on the path form is a plain value, not a command
    ok_json(p.rest.request("POST", "/set/%s" % q(k), b'["DEL","x"]'), {"result": "OK"})
    assert direct.get(k) == b'["DEL","x"]'


def test_path_form_query_string_arguments(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    ok_json(p.rest.request("GET", "/set/%s/v?EX=100" % q(k)), {"result": "OK"})
    assert direct.get(k) == b"v"
    assert 95 <= direct.ttl(k) <= 100, direct.ttl(k)
    # a flag without a value, then NX fails on an existing key (nil)
    ok_json(p.rest.request("GET", "/set/%s/w?NX" % q(k)), {"result": None})
    assert direct.get(k) == b"v"
    # _token is the credential, never an argument (ECHO takes exactly one)
    ok_json(p.rest.request("GET", "/echo/hi?_token=%s" % TOKEN, token=None), {"result": "hi"})
    ok_json(p.rest.request("GET", "/set/%s/q?_token=%s&EX=200" % (q(k), TOKEN), token=None), {"result": "OK"})
    assert direct.get(k) == b"q" and 195 <= direct.ttl(k) <= 200


def test_pipeline_mixed_results_and_errors(respguard, direct):
    p = start(respguard)
    k, missing = unique("rest"), unique("rest")
    direct.config_resetstat()
    r = p.rest.pipeline([["SET", k, "1"], ["INCR", k], ["GET", k], ["LPUSH", k, "x"],
                         ["NOSUCHCMD", "a"], ["GET", missing], ["FLUSHALL"], ["BLPOP", k, 1],
                         ["GET"], ["ECHO", "end"]])
    ok_json(r, [{"result": "OK"}, {"result": 2}, {"result": "2"}, {"error": WRONGTYPE},
                {"error": unknown_cmd("NOSUCHCMD", "a")}, {"result": None},
                {"error": noperm_cmd("flushall")}, {"error": unsupported("BLPOP")},
                {"error": "ERR wrong number of arguments for 'get' command"}, {"result": "end"}])
    assert direct.get(k) == b"2"
    assert calls(direct, "flushall") == 0 and calls(direct, "blpop") == 0
    # one command is a pipeline of one
    ok_json(p.rest.pipeline([["ECHO", "x"]]), [{"result": "x"}])
    # a long pipeline answers every command, in order
    n = unique("rest")
    cmds = [["INCR", n] if i % 2 == 0 else ["ECHO", "e%d" % i] for i in range(1000)]
    want = [{"result": i // 2 + 1} if i % 2 == 0 else {"result": "e%d" % i} for i in range(1000)]
    ok_json(p.rest.pipeline(cmds), want)
    assert direct.get(n) == b"500"


def test_multi_exec_returns_exec_entries(respguard, direct):
    p = start(respguard)
    k, s = unique("rest"), unique("rest")
    direct.set(s, "not-a-number")
    r = p.rest.multi([["SET", k, "1"], ["INCR", k], ["GET", k], ["INCR", s], ["RPUSH", k + ":l", "a", "b"],
                      ["LRANGE", k + ":l", 0, -1]])
    ok_json(r, [{"result": "OK"}, {"result": 2}, {"result": "2"}, {"error": NOT_INTEGER}, {"result": 2},
                {"result": ["a", "b"]}])
    assert direct.get(k) == b"2"


def test_multi_exec_refused_command_discards_the_whole_transaction(respguard, direct):
    users = default_users()
    users["app"] = {"acl": "on >%s ~app:* +@all" % APP_TOKEN}
    p = start(respguard, users=users)
    p.secrets.append(APP_TOKEN)
    k, c = unique("rest"), unique("rest")
    direct.set(k, "orig")
    direct.config_resetstat()
    r = p.rest.multi([["SET", k, "changed"], ["INCR", c], ["FLUSHALL"]])
    error_is(r, 400, EXECABORT + noperm_cmd("flushall"))
    # a key outside the user's prefix
    app_k = "app:" + unique("rest")
    r = p.rest.multi([["SET", app_k, "1"], ["SET", "other:" + unique("rest"), "1"]], token=APP_TOKEN)
    error_is(r, 400, EXECABORT + NOPERM_KEYS)
    # nothing reached the upstream: no transaction, no write
    assert direct.get(k) == b"orig"
    assert not direct.exists(c) and not direct.exists(app_k)
    stats = direct.info("commandstats")
    for name in ("multi", "exec", "set", "incr", "flushall"):
        assert "cmdstat_" + name not in stats, (name, sorted(stats))
    # the prefix user's own keys work in a transaction
    ok_json(p.rest.multi([["SET", app_k, "1"], ["INCR", app_k]], token=APP_TOKEN),
            [{"result": "OK"}, {"result": 2}])


def test_multi_exec_with_an_unsupported_command_is_discarded(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.set(k, "orig")
    direct.config_resetstat()
    # the refusal's text is "ERR SUBSCRIBE is not supported over the REST API"; inside
    # EXECABORT its "ERR " goes, as Redis words an EXEC refused at run time
    r = p.rest.multi([["SET", k, "changed"], ["SUBSCRIBE", "ch"]])
    error_is(r, 400, EXECABORT + unsupported("SUBSCRIBE")[4:])
    r = p.rest.multi([["SET", k, "changed"], ["BLPOP", k + ":l", 1]])
    error_is(r, 400, EXECABORT + unsupported("BLPOP")[4:])
    assert direct.get(k) == b"orig"
    stats = direct.info("commandstats")
    for name in ("multi", "exec", "set", "subscribe", "blpop"):
        assert "cmdstat_" + name not in stats, (name, sorted(stats))


def test_multi_exec_command_error_at_queue_time_aborts(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.set(k, "orig")
    # wrong arity and an unknown command are errors before EXEC: the transaction is discarded
    for bad in (["GET"], ["NOSUCHCMD", "x"]):
        r = p.rest.multi([["SET", k, "changed"], bad])
        error_starts(r, 400, "EXECABORT Transaction discarded because of")
        assert direct.get(k) == b"orig"
    # a transaction of one command whose result is nil
    ok_json(p.rest.multi([["GET", unique("rest")]]), [{"result": None}])


# ---------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------

def test_bearer_and_query_token(respguard):
    p = start(respguard)
    ok_json(p.rest.cmd("ECHO", "bearer"), {"result": "bearer"})
    ok_json(p.rest.request("POST", "/?_token=" + TOKEN, ["ECHO", "query"], token=None), {"result": "query"})
    ok_json(p.rest.request("POST", "/pipeline?_token=" + TOKEN, [["ECHO", "p"]], token=None), [{"result": "p"}])
    ok_json(p.rest.request("POST", "/multi-exec?_token=" + TOKEN, [["ECHO", "m"]], token=None), [{"result": "m"}])
    # a user whose acl holds the password's sha256 (#<hex>) takes the password as its token
    ok_json(p.rest.cmd("ECHO", "hashed", token=PASSWORDS["hashed"]), {"result": "hashed"})
    # any other user's password is that user's token
    ok_json(p.rest.cmd("ECHO", "ops", token=PASSWORDS["ops"]), {"result": "ops"})


def test_bad_credentials_are_401_and_reach_nothing(respguard, direct):
    users = default_users()
    users["old"] = {"acl": "on >oldToken-2020x ~* &* +@all", "expires": "2020-01-01T00:00:00Z"}
    users["np"] = {"acl": "on nopass ~* &* +@all"}
    users["far"] = {"acl": "on >farToken-10net ~* &* +@all", "allow_from": ["10.0.0.0/8"]}
    p = start(respguard, users=users)
    wrong = "wrongToken-xyz-987"
    p.secrets += ["oldToken-2020x", "farToken-10net", wrong]
    k = unique("rest")
    cases = {
        "missing": dict(token=None),
        "wrong": dict(token=wrong),
        "empty": dict(token=""),
        "expired": dict(token="oldToken-2020x"),
        "disabled": dict(token=OFF_USER_PASSWORD),
        "nopass never matches": dict(token="anything-at-all"),
        "source not allowed": dict(token="farToken-10net"),
        "basic scheme": dict(token=None, headers={"Authorization": "Basic " + base64.b64encode(
            b"web:" + TOKEN.encode()).decode()}),
        "wrong query token": dict(token=None, path="/?_token=" + wrong),
    }
    for name, kw in cases.items():
        path = kw.pop("path", "/")
        r = p.rest.request("POST", path, ["SET", k, name], **kw)
        assert (r.status, r.body) == (401, UNAUTHORIZED), (name, r)
        r = p.rest.request("GET", "/set/%s/%s" % (q(k), q(name)), **dict(kw))
        assert (r.status, r.body) == (401, UNAUTHORIZED), (name, r)
        r = p.rest.pipeline([["SET", k, name]], **dict(kw))
        assert (r.status, r.body) == (401, UNAUTHORIZED), (name, r)
        r = p.rest.multi([["SET", k, name]], **dict(kw))
        assert (r.status, r.body) == (401, UNAUTHORIZED), (name, r)
    # auth comes before the body is decoded
    r = p.rest.request("POST", "/", b'["SET", broken', token=wrong)
    assert (r.status, r.body) == (401, UNAUTHORIZED), r
    r = p.rest.request("POST", "/pipeline", b'{', token=None)
    assert (r.status, r.body) == (401, UNAUTHORIZED), r
    assert not direct.exists(k)
    # the same tokens work where their user may log in
    ok_json(p.rest.cmd("SET", k, "ok"), {"result": "OK"})


def test_login_lockout_is_401(respguard):
    p = start(respguard, limits={"login_lockout": {"failures": 2, "window": "30s", "duration": "2s"}})
    wrong = "wrongToken-lockout-42"
    p.secrets.append(wrong)
    ok_json(p.rest.cmd("ECHO", "before"), {"result": "before"})
    # a wrong token repeated is locked out by itself: a right token from the same address works
    for _ in range(5):
        r = p.rest.cmd("PING", token=wrong)
        assert (r.status, r.body) == (401, UNAUTHORIZED), r
    assert len(p.events("login_lockout")) == 1, p.events("login_lockout")
    # the name the log gives a wrong token is a keyed hash: not a prefix of its plain SHA-256
    import hashlib
    tag = p.events("login_lockout")[0]["user"]
    assert tag.startswith("(rest token ") and hashlib.sha256(wrong.encode()).hexdigest()[:8] not in tag, tag
    ok_json(p.rest.cmd("ECHO", "still"), {"result": "still"})
    # requests without any token are no guesses: never a lockout
    for _ in range(30):
        r = p.rest.cmd("PING", token=None)
        assert (r.status, r.body) == (401, UNAUTHORIZED), r
    ok_json(p.rest.cmd("ECHO", "still"), {"result": "still"})
    # guessing: ten times `failures` wrong tokens from one address lock out every login from it
    guesses = ["guess-%d-lockout" % i for i in range(20)]
    p.secrets += guesses
    for g in guesses:
        r = p.rest.cmd("PING", token=g)
        assert (r.status, r.body) == (401, UNAUTHORIZED), r
    r = p.rest.cmd("ECHO", "locked", token=TOKEN)
    assert (r.status, r.body) == (401, UNAUTHORIZED), r
    # and only for the lockout's duration
    wait_until(lambda: p.rest.cmd("ECHO", "after").status == 200, 8, interval=0.25, what="the lockout to end")


def test_user_allow_from_is_checked_against_the_http_client(respguard):
    users = default_users()
    users["near"] = {"acl": "on >nearToken-local ~* &* +@all", "allow_from": ["127.0.0.1/32"]}
    p = start(respguard, users=users)
    p.secrets.append("nearToken-local")
    ok_json(p.rest.cmd("ECHO", "near", token="nearToken-local", source_address=("127.0.0.1", 0)),
            {"result": "near"})
    try:
        r = p.rest.cmd("ECHO", "far", token="nearToken-local", source_address=("127.0.0.5", 0))
    except OSError as e:
        pytest.skip("cannot connect from 127.0.0.5 here: %s" % e)
    assert (r.status, r.body) == (401, UNAUTHORIZED), r


def test_token_never_logged_nor_answered(respguard):
    users = default_users()
    users["app"] = {"acl": "on >%s ~app:* +@all" % APP_TOKEN}
    p = start(respguard, users=users)
    wrong = "wrongToken-Never-Logged-55"
    p.secrets += [APP_TOKEN, wrong]
    replies = [
        p.rest.cmd("ECHO", "x", token=APP_TOKEN),
        p.rest.cmd("SET", "other:k", "v", token=APP_TOKEN),      # refused: logged
        p.rest.cmd("FLUSHALL", token=APP_TOKEN),                 # refused: logged
        p.rest.cmd("PING", token=wrong),
        p.rest.request("POST", "/?_token=" + wrong, ["PING"], token=None),
        p.rest.request("GET", "/get/app:k?_token=" + APP_TOKEN, token=None),
        p.rest.request("GET", "/nosuch/x?_token=" + APP_TOKEN, token=None),
        p.rest.request("PUT", "/?_token=" + APP_TOKEN, token=None),
    ]
    assert [r.status for r in replies] == [200, 400, 400, 401, 401, 200, 400, 405], replies
    for r in replies:
        for secret in (APP_TOKEN, wrong, TOKEN):
            assert secret.encode() not in r.body, r
            assert all(secret not in v for v in r.headers.values()), r
    p.wait_event("refused", user="app")
    text = p.stderr_text()
    for secret in (APP_TOKEN, wrong, TOKEN):
        assert secret not in text, "token %r in the log:\n%s" % (secret, text[-3000:])


def test_rest_login_lines(respguard):
    p = start(respguard)
    wrong = "wrongToken-login-lines-1"
    p.secrets.append(wrong)
    c = p.rest.conn()
    try:
        for i in range(3):
            ok_json(p.rest.cmd("ECHO", str(i), conn=c), {"result": str(i)})
    finally:
        c.close()
    ok_json(p.rest.cmd("ECHO", "second connection"), {"result": "second connection"})
    for _ in range(2):
        r = p.rest.cmd("PING", token=wrong)
        assert r.status == 401, r
    wait_until(lambda: len(p.events("login", protocol="rest", result="fail")) >= 2, 5, what="2 failed logins")
    # one line per HTTP connection and user; a failure each time
    oks = p.events("login", protocol="rest", result="ok", user="web")
    assert len(oks) == 2, oks
    assert len(p.events("login", protocol="rest", result="fail")) == 2, p.events("login")
    assert not p.events("login", protocol="resp"), p.events("login")


# ---------------------------------------------------------------------------
# ACL and guard
# ---------------------------------------------------------------------------

def test_acl_prefix_user_gets_the_exact_noperm_text(respguard, direct):
    users = default_users()
    users["app"] = {"acl": "on >%s ~app:* +@all" % APP_TOKEN}
    p = start(respguard, users=users)
    p.secrets.append(APP_TOKEN)
    mine, other = "app:" + unique("rest"), "other:" + unique("rest")
    ok_json(p.rest.cmd("SET", mine, "v", token=APP_TOKEN), {"result": "OK"})
    direct.config_resetstat()
    error_is(p.rest.cmd("SET", other, "v", token=APP_TOKEN), 400, NOPERM_KEYS)
    error_is(p.rest.cmd("GET", other, token=APP_TOKEN), 400, NOPERM_KEYS)
    error_is(p.rest.request("GET", "/get/%s" % q(other), token=APP_TOKEN), 400, NOPERM_KEYS)
    error_is(p.rest.cmd("MSET", mine, "1", other, "2", token=APP_TOKEN), 400, NOPERM_KEYS)
    ok_json(p.rest.pipeline([["GET", other], ["GET", mine]], token=APP_TOKEN),
            [{"error": NOPERM_KEYS}, {"result": "v"}])
    stats = direct.info("commandstats")
    assert "cmdstat_set" not in stats and "cmdstat_mset" not in stats, sorted(stats)
    assert stats["cmdstat_get"]["calls"] == 1, stats["cmdstat_get"]
    assert not direct.exists(other)
    assert direct.get(mine) == b"v"


def test_flushall_is_refused_and_logged_with_protocol_rest(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.set(k, "survives")
    direct.config_resetstat()
    error_is(p.rest.cmd("FLUSHALL"), 400, noperm_cmd("flushall"))
    error_is(p.rest.request("GET", "/flushall"), 400, noperm_cmd("flushall"))
    error_is(p.rest.request("POST", "/flushall?ASYNC"), 400, noperm_cmd("flushall"))
    error_is(p.rest.cmd("CONFIG", "GET", "maxmemory"), 400, noperm_cmd("config|get"))
    assert direct.get(k) == b"survives"
    stats = direct.info("commandstats")
    assert "cmdstat_flushall" not in stats and "cmdstat_config|get" not in stats, sorted(stats)
    e = p.wait_event("refused", user="web")
    assert e.get("protocol") == "rest", e
    assert str(e.get("command", "")).lower() == "flushall", e
    wait_until(lambda: len(p.events("refused", user="web")) >= 4, 5, what="4 refused lines")
    assert all(e.get("protocol") == "rest" for e in p.events("refused")), p.events("refused")
    # the same refusal over RESP says so
    with p.login("web") as c:
        assert c.call_raw("FLUSHALL").startswith(b"-NOPERM")
    e = p.wait_event("refused", protocol="resp")
    assert e.get("user") == "web", e


# ---------------------------------------------------------------------------
# statuses
# ---------------------------------------------------------------------------

def test_command_errors_are_400_with_redis_text(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.rpush(k, "x")
    error_is(p.rest.cmd("NOSUCHCMD"), 400, unknown_cmd("NOSUCHCMD"))
    error_is(p.rest.cmd("nosuchcmd", "a", "b"), 400, unknown_cmd("nosuchcmd", "a", "b"))
    error_is(p.rest.request("GET", "/nosuchcmd/a"), 400, unknown_cmd("nosuchcmd", "a"))
    error_is(p.rest.cmd("GET"), 400, "ERR wrong number of arguments for 'get' command")
    error_is(p.rest.cmd("SET", k), 400, "ERR wrong number of arguments for 'set' command")
    error_is(p.rest.request("GET", "/get"), 400, "ERR wrong number of arguments for 'get' command")
    error_is(p.rest.cmd("GET", k), 400, WRONGTYPE)
    error_is(p.rest.cmd("INCR", k), 400, WRONGTYPE)
    error_is(p.rest.cmd("SET", k, "v", "EX", "notanumber"), 400, NOT_INTEGER)
    error_is(p.rest.cmd("SET", k, "v", "BOGUS"), 400, "ERR syntax error")
    assert direct.lrange(k, 0, -1) == [b"x"]


def test_methods_not_allowed_are_405(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.config_resetstat()
    cases = [("PUT", "/"), ("DELETE", "/"), ("PATCH", "/"), ("PUT", "/set/%s/v" % q(k)),
             ("DELETE", "/del/%s" % q(k)), ("GET", "/"), ("GET", "/pipeline"), ("GET", "/multi-exec"),
             ("PUT", "/pipeline")]
    for method, path in cases:
        body = json.dumps(["SET", k, "v"]).encode() if method != "GET" else None
        r = p.rest.request(method, path, body)
        assert (r.status, r.body) == (405, b'{"error":"ERR method not allowed"}'), (method, path, r)
        assert r.header("Allow"), (method, path, r)
    r = p.rest.request("HEAD", "/get/%s" % q(k))
    assert r.status == 405, r
    assert not direct.exists(k)
    stats = direct.info("commandstats")
    assert "cmdstat_set" not in stats and "cmdstat_del" not in stats, sorted(stats)


def test_body_over_max_request_bytes_is_413(respguard, direct):
    p = start(respguard, rest={"max_request_bytes": "2kb"})
    k = unique("rest")
    direct.config_resetstat()
    big = ["SET", k, "x" * 4000]
    for path, body in (("/", big), ("/pipeline", [big]), ("/multi-exec", [big]), ("/set/" + q(k), b"y" * 4000)):
        r = p.rest.request("POST", path, body)
        error_starts(r, 413, "ERR request body too large")
    # a chunked body (no Content-Length) is cut at the limit too
    chunks = [b'["SET","' + k.encode() + b'","'] + [b"z" * 500] * 8 + [b'"]']
    c = p.rest.conn()
    try:
        c.request("POST", "/", body=iter(chunks), encode_chunked=True,
                  headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 413 and json.loads(body)["error"].startswith("ERR request body too large"), (r.status, body)
    except (ConnectionResetError, BrokenPipeError) as e:
        raise AssertionError("a chunked body over the limit was not answered 413: %r" % e)
    finally:
        c.close()
    assert not direct.exists(k)
    assert "cmdstat_set" not in direct.info("commandstats")
    # just under the limit is fine
    ok_json(p.rest.cmd("SET", k, "x" * 1500), {"result": "OK"})
    assert direct.strlen(k) == 1500


def test_rate_limited_single_command_is_429(respguard, direct):
    p = start(respguard, overrides={"users": {"web": {"rate_limit": {"commands_per_second": 0.1, "burst": 2}}}})
    k = unique("rest")
    limited = "ERR rate limit exceeded for user 'web'"
    ok_json(p.rest.cmd("SET", k, "1"), {"result": "OK"})
    ok_json(p.rest.cmd("INCR", k), {"result": 2})
    error_is(p.rest.cmd("INCR", k), 429, limited)
    error_is(p.rest.request("GET", "/incr/%s" % q(k)), 429, limited)
    # a pipeline answers 200 with the refused entries' errors
    ok_json(p.rest.pipeline([["INCR", k], ["INCR", k]]), [{"error": limited}, {"error": limited}])
    assert direct.get(k) == b"2"
    # other users are not limited
    ok_json(p.rest.cmd("INCR", k, token=PASSWORDS["ops"]), {"result": 3})


def test_rate_limit_from_limits_applies_to_rest(respguard):
    p = start(respguard, limits={"rate_limit": {"commands_per_second": 0.1, "burst": 3}})
    limited = "ERR rate limit exceeded for user 'ops'"
    # a pipeline of 4 takes the 3 tokens and the 4th is refused; each command takes one
    ok_json(p.rest.pipeline([["ECHO", "a"], ["ECHO", "b"], ["ECHO", "c"], ["ECHO", "d"]], token=PASSWORDS["ops"]),
            [{"result": "a"}, {"result": "b"}, {"result": "c"}, {"error": limited}])
    error_is(p.rest.cmd("ECHO", "e", token=PASSWORDS["ops"]), 429, limited)
    ok_json(p.rest.cmd("ECHO", "web has its own bucket"), {"result": "web has its own bucket"})


# ---------------------------------------------------------------------------
# Upstash headers
# ---------------------------------------------------------------------------

B64 = {"Upstash-Encoding": "base64"}


def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


def test_base64_encoding(respguard, direct):
    p = start(respguard)
    k, lst, h, missing = unique("rest"), unique("rest"), unique("rest"), unique("rest")
    r = p.rest.cmd("SET", k, "bar", headers=B64)
    assert r.status == 200 and r.body == b'{"result":"OK"}', r
    ok_json(p.rest.cmd("GET", k, headers=B64), {"result": "YmFy"})
    ok_json(p.rest.cmd("GET", missing, headers=B64), {"result": None})
    ok_json(p.rest.cmd("INCR", k + ":n", headers=B64), {"result": 1})
    ok_json(p.rest.cmd("PING", headers=B64), {"result": b64("PONG")})
    ok_json(p.rest.cmd("RPUSH", lst, "a", "OK", "", headers=B64), {"result": 3})
    ok_json(p.rest.cmd("LRANGE", lst, 0, -1, headers=B64), {"result": [b64("a"), b64("OK"), ""]})
    ok_json(p.rest.cmd("EVAL", "return {1,{'x',2}}", 0, headers=B64), {"result": [1, [b64("x"), 2]]})
    # only a top-level simple string OK stays as it is; a bulk string "OK" is a value
    direct.set(h, "OK")
    ok_json(p.rest.cmd("GET", h, headers=B64), {"result": b64("OK")})
    ok_json(p.rest.request("GET", "/get/%s" % q(k), headers=B64), {"result": "YmFy"})
    ok_json(p.rest.pipeline([["GET", k], ["INCR", k + ":n"], ["GET", missing]], headers=B64),
            [{"result": "YmFy"}, {"result": 2}, {"result": None}])
    ok_json(p.rest.multi([["GET", k], ["LRANGE", lst, 0, 0]], headers=B64),
            [{"result": "YmFy"}, {"result": [b64("a")]}])
    # errors are text, not base64
    error_is(p.rest.cmd("NOSUCHCMD", headers=B64), 400, unknown_cmd("NOSUCHCMD"))
    # without the header the same value is plain
    ok_json(p.rest.cmd("GET", k), {"result": "bar"})


def test_binary_value_round_trip(respguard, direct):
    p = start(respguard)
    k, k2 = unique("rest"), unique("rest")
    value = bytes(range(256)) * 8
    ok_json(p.rest.request("POST", "/set/%s" % q(k), value, headers={"Content-Type": "application/octet-stream"}),
            {"result": "OK"})
    assert direct.get(k) == value
    r = p.rest.cmd("GET", k, headers=B64)
    assert r.status == 200 and base64.b64decode(r.json()["result"]) == value, r
    r = p.rest.request("GET", "/get/%s" % q(k), headers=B64)
    assert r.status == 200 and base64.b64decode(r.json()["result"]) == value, r
    # raw bytes with the resp2 format
    r = p.rest.cmd("GET", k, headers={"Upstash-Response-Format": "resp2"})
    assert r.status == 200 and r.body == b"$%d\r\n%s\r\n" % (len(value), value), r
    # a large value (most of the default 1 MiB limit) both ways
    big = os.urandom(600 * 1024)
    ok_json(p.rest.request("POST", "/set/%s" % q(k2), big), {"result": "OK"})
    assert direct.get(k2) == big
    r = p.rest.request("GET", "/get/%s" % q(k2), headers={"Upstash-Response-Format": "resp2"})
    assert r.status == 200 and r.body == b"$%d\r\n%s\r\n" % (len(big), big), r
    r = p.rest.cmd("GET", k2, headers=B64)
    assert r.status == 200 and base64.b64decode(r.json()["result"]) == big
    # a binary key and value through percent-encoding
    bkey = k2.encode() + b"\x00\xff\x01"
    bval = b"\x00\x01\xfe\xff"
    ok_json(p.rest.request("GET", "/set/%s/%s" % (urllib.parse.quote(bkey, safe=""), urllib.parse.quote(bval, safe=""))),
            {"result": "OK"})
    assert direct.get(bkey) == bval
    ok_json(p.rest.request("GET", "/get/%s" % urllib.parse.quote(bkey, safe=""), headers=B64), {"result": b64(bval)})


def test_resp2_response_format(respguard, direct):
    p = start(respguard)
    k, missing = unique("rest"), unique("rest")
    RESP2 = {"Upstash-Response-Format": "resp2"}

    def raw(r, status, body):
        assert (r.status, r.body) == (status, body), r
        assert (r.header("Content-Type") or "").split(";")[0].strip() == "application/octet-stream", r

    raw(p.rest.cmd("SET", k, "bar", headers=RESP2), 200, b"+OK\r\n")
    raw(p.rest.cmd("GET", k, headers=RESP2), 200, b"$3\r\nbar\r\n")
    raw(p.rest.cmd("GET", missing, headers=RESP2), 200, b"$-1\r\n")
    raw(p.rest.cmd("INCR", k + ":n", headers=RESP2), 200, b":1\r\n")
    raw(p.rest.request("GET", "/get/%s" % q(k), headers=RESP2), 200, b"$3\r\nbar\r\n")
    raw(p.rest.cmd("NOSUCHCMD", headers=RESP2), 400, b"-" + unknown_cmd("NOSUCHCMD").encode() + b"\r\n")
    raw(p.rest.pipeline([["SET", k, "v"], ["GET", k], ["LPUSH", k, "x"]], headers=RESP2), 200,
        b"+OK\r\n$1\r\nv\r\n-" + WRONGTYPE.encode() + b"\r\n")
    raw(p.rest.multi([["SET", k, "1"], ["INCR", k]], headers=RESP2), 200, b"*2\r\n+OK\r\n:2\r\n")
    # explicit json is the default format
    ok_json(p.rest.cmd("GET", k, headers={"Upstash-Response-Format": "json"}), {"result": "2"})
    # anything else is a 400, and runs nothing
    r = p.rest.cmd("SET", k, "xml", headers={"Upstash-Response-Format": "xml"})
    error_starts(r, 400, "ERR")
    assert direct.get(k) == b"2"


def test_sync_token_is_echoed_and_unknown_upstash_headers_ignored(respguard):
    p = start(respguard)
    r = p.rest.cmd("ECHO", "x", headers={"upstash-sync-token": "sync-abc-123"})
    ok_json(r, {"result": "x"})
    assert r.header("upstash-sync-token") == "sync-abc-123", r
    r = p.rest.pipeline([["ECHO", "y"]], headers={"Upstash-Sync-Token": "s2"})
    ok_json(r, [{"result": "y"}])
    assert r.header("upstash-sync-token") == "s2", r
    r = p.rest.cmd("ECHO", "z", headers={"Upstash-Foo": "bar", "Upstash-Telemetry-Sdk": "x/1.0",
                                         "Upstash-Telemetry-Platform": "test"})
    ok_json(r, {"result": "z"})
    assert r.header("upstash-sync-token") is None, r


# ---------------------------------------------------------------------------
# unsupported commands and bad input
# ---------------------------------------------------------------------------

def test_unsupported_commands_are_400_and_reach_nothing(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.config_resetstat()
    multi_text = "ERR MULTI is not supported over the REST API: send the transaction to /multi-exec"
    cases = [
        # (timeouts of 1 s: a command that wrongly reached Redis answers nil instead of hanging)
        (["BLPOP", k, 1], unsupported("BLPOP")),
        (["blpop", k, 1], unsupported("BLPOP")),          # the name upper-case whatever was sent
        (["BRPOP", k, 1], unsupported("BRPOP")),
        (["BLMOVE", k, k + "2", "LEFT", "RIGHT", 1], unsupported("BLMOVE")),
        (["BZPOPMIN", k, 1], unsupported("BZPOPMIN")),
        (["XREAD", "BLOCK", 1000, "STREAMS", k, "$"], unsupported("XREAD")),
        (["WAIT", 1, 1000], unsupported("WAIT")),
        (["SUBSCRIBE", "ch"], unsupported("SUBSCRIBE")),
        (["psubscribe", "ch*"], unsupported("PSUBSCRIBE")),
        (["UNSUBSCRIBE"], unsupported("UNSUBSCRIBE")),
        (["WATCH", k], unsupported("WATCH")),
        (["UNWATCH"], unsupported("UNWATCH")),
        (["AUTH", "web", TOKEN], unsupported("AUTH")),
        (["HELLO", 3], unsupported("HELLO")),
        (["QUIT"], unsupported("QUIT")),
        (["RESET"], unsupported("RESET")),
        (["SELECT", 1], unsupported("SELECT")),
        (["MULTI"], multi_text),
        (["multi"], multi_text),
    ]
    for cmd, text in cases:
        error_is(p.rest.cmd(*cmd), 400, text)
    error_is(p.rest.request("GET", "/blpop/%s/1" % q(k)), 400, unsupported("BLPOP"))
    error_is(p.rest.request("GET", "/subscribe/ch"), 400, unsupported("SUBSCRIBE"))
    error_is(p.rest.request("POST", "/multi"), 400, multi_text)
    for cmd in (["EXEC"], ["DISCARD"]):
        error_starts(p.rest.cmd(*cmd), 400, "ERR ")
    for cmd in (["CLIENT", "SETNAME", "x"], ["CLIENT", "ID"], ["CLIENT", "GETNAME"]):
        error_starts(p.rest.cmd(*cmd), 400, "ERR CLIENT")
    stats = direct.info("commandstats")
    for name in ("blpop", "brpop", "blmove", "bzpopmin", "xread", "wait", "subscribe", "psubscribe",
                 "unsubscribe", "watch", "unwatch", "select", "multi", "exec", "discard", "quit",
                 "client|setname", "client|id", "client|getname", "hello"):
        assert "cmdstat_" + name not in stats, (name, sorted(stats))
    # the ACL verdict comes first
    error_is(p.rest.cmd("NOSUCHBLOCK", k), 400, unknown_cmd("NOSUCHBLOCK", k))
    # the non-blocking forms are fine
    ok_json(p.rest.cmd("SELECT", 0), {"result": "OK"})
    ok_json(p.rest.cmd("XREAD", "STREAMS", k, "0"), {"result": None})
    ok_json(p.rest.cmd("LPOP", k), {"result": None})


BAD_COMMAND_BODIES = [
    b'["SET","K","v"',                  # truncated
    b'["SET","K","v"]]',                # trailing garbage
    b'["SET" "K" "v"]',                 # no commas
    b"['SET','K','v']",                 # not JSON strings
    b'["SET","K","\\x"]',               # bad escape
    b'',                                # empty body
    b'{"cmd":["SET","K","v"]}',         # an object
    b'"SET K v"',                       # a string
    b'42',                              # a number
    b'null',
    b'[]',                              # empty command
    b'["SET",["K"],"v"]',               # nested array
    b'["SET","K",null]',                # null argument
    b'["SET","K",{"v":1}]',             # object argument
    b'[["SET","K","v"]]',               # a pipeline at /
]

BAD_PIPELINE_BODIES = [
    b'[["SET","K","v"]',
    b'[]',                              # empty pipeline
    b'[[]]',                            # an empty command
    b'["SET","K","v"]',                 # one command, not a list of them
    b'[["SET","K","v"],"GET"]',         # a string where a command goes
    b'[["SET","K","v"],[null]]',        # one bad entry spoils the request
    b'[["SET","K","v"],["GET",["K"]]]',
    b'[["SET","K","v"],{"a":1}]',
    b'{"0":["SET","K","v"]}',
]


@pytest.mark.parametrize("route", ["/", "/pipeline", "/multi-exec"])
def test_bad_bodies_are_400_and_reach_nothing(respguard, direct, route):
    p = start(respguard)
    k = unique("rest")
    direct.config_resetstat()
    bodies = BAD_COMMAND_BODIES if route == "/" else BAD_PIPELINE_BODIES
    for body in bodies:
        body = body.replace(b"K", k.encode())
        r = p.rest.request("POST", route, body, headers={"Content-Type": "application/json"})
        assert r.status == 400, (route, body, r)
        assert r.json().get("error", "").startswith("ERR "), (route, body, r)
        assert list(r.json()) == ["error"], (route, body, r)
    assert not direct.exists(k)
    stats = direct.info("commandstats")
    assert "cmdstat_set" not in stats and "cmdstat_multi" not in stats, sorted(stats)
    # the connection-level state is fine afterwards
    ok_json(p.rest.request("POST", route, [["ECHO", "ok"]] if route != "/" else ["ECHO", "ok"]),
            [{"result": "ok"}] if route != "/" else {"result": "ok"})


def test_deep_nesting_is_400(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.config_resetstat()
    cmd = json.dumps(["SET", k, "v"])
    for route, depth in (("/", 50), ("/pipeline", 50), ("/multi-exec", 50), ("/", 9), ("/pipeline", 9)):
        body = ("[" * (depth - 1) + cmd + "]" * (depth - 1)).encode()
        r = p.rest.request("POST", route, body)
        error_starts(r, 400, "ERR ")
    # far deeper than any parser's own limit, unterminated, within max_request_bytes
    for route in ("/", "/pipeline"):
        error_starts(p.rest.request("POST", route, b"[" * 200000), 400, "ERR ")
        error_starts(p.rest.request("POST", route, b'["SET",' * 50000), 400, "ERR ")
    assert not direct.exists(k)
    assert "cmdstat_set" not in direct.info("commandstats")
    assert p.proc.poll() is None
    ok_json(p.rest.cmd("ECHO", "alive"), {"result": "alive"})


def test_oversized_headers_are_refused_and_the_server_goes_on(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    body = json.dumps(["SET", k, "v"]).encode()
    req = (b"POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + TOKEN.encode() +
           b"\r\nX-Big: " + b"a" * (256 * 1024) + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s = socket.create_connection(("127.0.0.1", p.rest_port), timeout=10)
    got = b""
    try:
        try:
            s.sendall(req)
        except (ConnectionResetError, BrokenPipeError):
            pass
        try:
            while b"\r\n\r\n" not in got:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError("256 KiB of headers: neither answered nor closed within 10 s (got %r)" % got[:300])
    finally:
        s.close()
    if got:
        status = int(got.split(b" ", 2)[1])
        assert 400 <= status < 500, got[:300]
    assert not direct.exists(k)
    ok_json(p.rest.cmd("ECHO", "alive"), {"result": "alive"})


# ---------------------------------------------------------------------------
# CORS
# ---------------------------------------------------------------------------

APP_ORIGIN = "https://app.example.com"


def preflight(rest, origin, path="/"):
    h = {"Access-Control-Request-Method": "POST",
         "Access-Control-Request-Headers": "authorization, content-type, upstash-encoding"}
    if origin is not None:
        h["Origin"] = origin
    return rest.request("OPTIONS", path, token=None, headers=h)


def no_cors_headers(r):
    return not [h for h in r.headers if h.startswith("access-control-")]


def test_cors(respguard, direct):
    star_port, none_port = free_port(), free_port()
    p = start(respguard, rest={"cors": {"allowed_origins": [APP_ORIGIN]}},
              extra_rest=[{"bind": "127.0.0.1:%d" % star_port, "cors": {"allowed_origins": ["*"]}},
                          {"bind": "127.0.0.1:%d" % none_port}])
    wait_port(star_port, 10, p.proc)
    wait_port(none_port, 10, p.proc)
    star, none = Rest(star_port), Rest(none_port)

    for path in ("/", "/pipeline", "/multi-exec", "/set/k/v"):
        r = preflight(p.rest, APP_ORIGIN, path)
        assert r.status == 204, (path, r)
        assert r.header("Access-Control-Allow-Origin") == APP_ORIGIN, r
        assert r.header("Access-Control-Allow-Methods") == "GET, POST, OPTIONS", r
        allowed = [h.strip().lower() for h in (r.header("Access-Control-Allow-Headers") or "").split(",")]
        for h in ("authorization", "content-type", "upstash-encoding"):
            assert h in allowed, r
        assert "origin" in [v.strip().lower() for v in (r.header("Vary") or "").split(",")], r
        assert r.body == b"", r
    # an origin that is not listed (or a look-alike), or no Origin at all
    for origin in ("https://evil.example.com", "http://app.example.com", "https://app.example.com.evil.io", None):
        r = preflight(p.rest, origin)
        assert (r.status, r.body) == (403, b'{"error":"ERR origin not allowed"}'), (origin, r)
        assert no_cors_headers(r), (origin, r)
    # "*": any origin, echoed back
    r = preflight(star, "https://anything.example.org")
    assert r.status == 204 and r.header("Access-Control-Allow-Origin") == "https://anything.example.org", r
    # no cors configured: every preflight is refused
    r = preflight(none, APP_ORIGIN)
    assert (r.status, r.body) == (403, b'{"error":"ERR origin not allowed"}') and no_cors_headers(r), r

    # actual requests: an allowed Origin gets the header; others run without it
    k = unique("rest")
    r = p.rest.cmd("SET", k, "from-app", headers={"Origin": APP_ORIGIN})
    ok_json(r, {"result": "OK"})
    assert r.header("Access-Control-Allow-Origin") == APP_ORIGIN, r
    # the SDK's read-your-writes reads this header: a browser may only if it is exposed
    assert r.header("Access-Control-Expose-Headers") == "upstash-sync-token", r
    assert r.header("Cache-Control") == "no-store", r
    r = p.rest.cmd("GET", k, headers={"Origin": "https://evil.example.com"})
    ok_json(r, {"result": "from-app"})
    assert r.header("Access-Control-Allow-Origin") is None, r
    r = p.rest.cmd("GET", k)
    ok_json(r, {"result": "from-app"})
    assert r.header("Access-Control-Allow-Origin") is None, r
    r = star.cmd("GET", k, headers={"Origin": "https://x.example"})
    ok_json(r, {"result": "from-app"})
    assert r.header("Access-Control-Allow-Origin") == "https://x.example", r
    r = none.cmd("GET", k, headers={"Origin": APP_ORIGIN})
    ok_json(r, {"result": "from-app"})
    assert r.header("Access-Control-Allow-Origin") is None, r
    # a 401 to an allowed origin still lets the browser read it
    r = p.rest.cmd("GET", k, token=None, headers={"Origin": APP_ORIGIN})
    assert (r.status, r.body) == (401, UNAUTHORIZED), r
    assert r.header("Access-Control-Allow-Origin") == APP_ORIGIN, r
    # a preflight runs nothing
    assert direct.get(k) == b"from-app"


# ---------------------------------------------------------------------------
# timeouts and connections
# ---------------------------------------------------------------------------

def trickle(port, head, chunks, interval, limit, during=None):
    """Send head, then one chunk every `interval` s until the server closes the connection or
    `limit` s pass. Returns (seconds from the head to the close or None, bytes received). during()
    runs once, 0.5 s in."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    got = b""
    closed_after = None
    done_during = during is None
    try:
        t0 = time.monotonic()
        s.sendall(head)
        i = 0
        next_send = t0 + interval
        while time.monotonic() - t0 < limit:
            if not done_during and time.monotonic() - t0 >= 0.5:
                during()
                done_during = True
            timeout = max(0.0, min(next_send - time.monotonic(), 0.1))
            readable, _, _ = select.select([s], [], [], timeout)
            if readable:
                try:
                    d = s.recv(65536)
                except (ConnectionResetError, OSError):
                    d = b""
                if not d:
                    closed_after = time.monotonic() - t0
                    break
                got += d
            if time.monotonic() >= next_send:
                try:
                    s.sendall(chunks[i % len(chunks)])
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - t0
                    break
                i += 1
                next_send += interval
    finally:
        s.close()
    return closed_after, got


def test_slow_client_head_is_cut_and_others_are_served(respguard, direct):
    p = start(respguard, rest={"request_timeout": "1s"})
    served = []

    def other_client():
        k = unique("rest")
        ok_json(p.rest.cmd("SET", k, "meanwhile"), {"result": "OK"})
        served.append(direct.get(k))

    head = b"POST / HTTP/1.1\r\nHost: localhost\r\n"
    # one header byte every 0.25 s: never idle for long, but the head never ends
    closed_after, got = trickle(p.rest_port, head, [b"X", b"-", b"a", b"b"], 0.25, 8, during=other_client)
    assert served == [b"meanwhile"]
    assert closed_after is not None, "a head trickled for 8 s was not cut (request_timeout 1s)"
    assert 0.8 <= closed_after <= 4.0, closed_after
    assert got == b"", "the slow request was answered: %r" % got[:300]
    ok_json(p.rest.cmd("ECHO", "after"), {"result": "after"})


def test_slow_client_body_is_cut(respguard, direct):
    p = start(respguard, rest={"request_timeout": "1s"})
    k = unique("rest")
    body = json.dumps(["SET", k, "v"]).encode()
    body += b" " * (200 - len(body))
    head = (b"POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (TOKEN.encode(), len(body)))
    chunks = [body[i:i + 1] for i in range(len(body))]
    closed_after, got = trickle(p.rest_port, head, chunks, 0.25, 8)
    assert closed_after is not None, "a body trickled for 8 s was not cut (request_timeout 1s)"
    assert 0.8 <= closed_after <= 4.0, closed_after
    assert got == b"", "the slow request was answered: %r" % got[:300]
    assert not direct.exists(k)


def test_idle_keep_alive_connection_is_closed(respguard):
    p = start(respguard, rest={"idle_timeout": "1s"})
    c = p.rest.conn()
    try:
        ok_json(p.rest.cmd("ECHO", "x", conn=c), {"result": "x"})
        s = c.sock
        s.settimeout(6)
        t0 = time.monotonic()
        try:
            d = s.recv(100)
        except ConnectionResetError:
            d = b""
        assert d == b"", d
        assert time.monotonic() - t0 < 4.0
    finally:
        c.close()


def test_keep_alive_200_requests_on_one_connection(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    c = p.rest.conn()
    try:
        c.connect()
        me = c.sock.getsockname()
        for i in range(100):
            ok_json(p.rest.cmd("SET", "%s:%d" % (k, i), "v%d" % i, conn=c), {"result": "OK"})
            ok_json(p.rest.request("GET", "/get/%s" % q("%s:%d" % (k, i)), conn=c), {"result": "v%d" % i})
            assert c.sock is not None and c.sock.getsockname() == me, "the connection was not kept alive"
    finally:
        c.close()
    assert direct.get(k + ":99") == b"v99"
    assert direct.get(k + ":0") == b"v0"


def test_max_connections(respguard):
    p = start(respguard, rest={"max_connections": 2})
    quick = Rest(p.rest_port, timeout=2)
    dropped = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, TimeoutError)
    held = [p.rest.conn(), p.rest.conn()]
    try:
        for i, c in enumerate(held):
            ok_json(p.rest.cmd("ECHO", str(i), conn=c), {"result": str(i)})
        # a third connection is not served while two are open (closed, 503, or left waiting)
        try:
            r = quick.cmd("ECHO", "third")
        except dropped:
            r = None
        assert r is None or r.status == 503, r
        # the held ones still are
        ok_json(p.rest.cmd("ECHO", "held", conn=held[0]), {"result": "held"})
        # once one of the two closes, new connections are served again
        held[1].close()

        def served():
            try:
                return quick.cmd("ECHO", "again").status == 200
            except dropped:
                return False
        wait_until(served, 8, interval=0.1, what="a new connection served once one of the two closed")
    finally:
        for c in held:
            c.close()


def test_each_request_on_a_keep_alive_connection_is_authenticated(respguard, direct):
    users = default_users()
    users["app"] = {"acl": "on >%s ~app:* +@all" % APP_TOKEN}
    p = start(respguard, users=users)
    wrong = "wrongToken-keepalive-3"
    p.secrets += [APP_TOKEN, wrong]
    other = "other:" + unique("rest")
    c = p.rest.conn()
    try:
        ok_json(p.rest.cmd("SET", other, "by-web", conn=c), {"result": "OK"})
        r = p.rest.cmd("GET", other, token=wrong, conn=c)
        assert (r.status, r.body) == (401, UNAUTHORIZED), r
        r = p.rest.cmd("GET", other, token=None, conn=c)
        assert (r.status, r.body) == (401, UNAUTHORIZED), r
        # another user's token on the same connection runs as that user
        error_is(p.rest.cmd("SET", other, "by-app", token=APP_TOKEN, conn=c), 400, NOPERM_KEYS)
        ok_json(p.rest.cmd("GET", other, conn=c), {"result": "by-web"})
        error_is(p.rest.cmd("GET", other, token=APP_TOKEN, conn=c), 400, NOPERM_KEYS)
        ok_json(p.rest.cmd("GET", other, conn=c), {"result": "by-web"})
    finally:
        c.close()
    assert direct.get(other) == b"by-web"


def test_concurrent_clients_get_their_own_answers(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    errors = []

    def client(t):
        c = p.rest.conn()
        try:
            for i in range(25):
                v = "%s-%d-%d" % (k, t, i)
                r = p.rest.pipeline([["SET", "%s:%d" % (k, t), v], ["GET", "%s:%d" % (k, t)], ["ECHO", v]], conn=c)
                if r.status != 200 or r.json() != [{"result": "OK"}, {"result": v}, {"result": v}]:
                    errors.append(r)
                r = p.rest.request("GET", "/echo/%s" % q(v), conn=c)
                if r.status != 200 or r.json() != {"result": v}:
                    errors.append(r)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "clients still running after 60 s"
    assert not errors, errors[:5]
    assert direct.get(k + ":7") == ("%s-7-24" % k).encode()


def test_listener_allow_from_closes_other_sources(respguard):
    p = start(respguard, rest={"allow_from": ["127.0.0.1/32"]})
    ok_json(p.rest.cmd("ECHO", "near"), {"result": "near"})
    s = socket.socket()
    s.settimeout(5)
    try:
        try:
            s.bind(("127.0.0.5", 0))
            s.connect(("127.0.0.1", p.rest_port))
        except OSError as e:
            pytest.skip("cannot connect from 127.0.0.5 here: %s" % e)
        got = b""
        try:
            s.sendall(b"GET /ping?_token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
        except OSError:
            pass
        assert got == b"", "a refused source was answered: %r" % got[:300]
    finally:
        s.close()


# ---------------------------------------------------------------------------
# TLS and config errors
# ---------------------------------------------------------------------------

def test_tls_rest_listener(respguard, certs, direct):
    p = start(respguard, bind_host="0.0.0.0",
              rest={"tls": {"cert_file": certs.path("server.crt"), "key_file": certs.path("server.key")}})
    k = unique("rest")
    ok_json(p.rest.cmd("SET", k, "over-https"), {"result": "OK"})
    assert direct.get(k) == b"over-https"
    ok_json(p.rest.request("GET", "/get/%s" % q(k)), {"result": "over-https"})
    # verified as localhost too
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    c = http.client.HTTPSConnection("localhost", p.rest_port, timeout=10, context=ctx)
    try:
        c.request("GET", "/get/%s" % q(k), headers={"Authorization": "Bearer " + TOKEN})
        r = c.getresponse()
        assert (r.status, json.loads(r.read())) == (200, {"result": "over-https"})
    finally:
        c.close()
    # keep-alive over TLS
    c = p.rest.conn()
    try:
        for i in range(20):
            ok_json(p.rest.cmd("ECHO", str(i), conn=c), {"result": str(i)})
    finally:
        c.close()
    # a client that trusts another CA refuses the certificate
    bad = Rest(p.rest_port, ssl.create_default_context(cafile=certs.path("rogue_ca.crt")))
    with pytest.raises(ssl.SSLCertVerificationError):
        bad.cmd("PING")
    # plaintext HTTP on the TLS port is not served
    s = socket.create_connection(("127.0.0.1", p.rest_port), timeout=5)
    got = b""
    try:
        s.sendall(b"GET /ping?_token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        while len(got) < 4096:
            d = s.recv(4096)
            if not d:
                break
            got += d
    except OSError:
        pass
    finally:
        s.close()
    assert b"PONG" not in got and not got.startswith(b"HTTP/1.1 200"), got[:300]


def check_config(tmp_path, upstream, certs, rest, start=True):
    cfg = {
        "listeners": [{"bind": "127.0.0.1:%d" % free_port()}],
        "upstream": {"url": "rediss://default:${UPSTREAM_PW}@localhost:%d" % upstream.tls_port,
                     "ca_file": certs.path("ca.crt"), "connect_timeout": "2s"},
        "users": default_users(),
        "limits": {"login_timeout": "2s", "shutdown_timeout": "5s"},
        "rest": rest,
    }
    text = to_yaml(cfg) + "\n"
    path = tmp_path / ("rest-%d.yaml" % len(os.listdir(str(tmp_path))))
    path.write_text(text)
    env = dict(os.environ, UPSTREAM_PW=upstream.password)
    check = subprocess.run([respguard_bin(), "check", "-c", str(path)], capture_output=True, env=env, timeout=15)
    if not start:
        return str(path), text, check.returncode, check.stderr.decode("utf-8", "replace"), None, None
    try:
        run = subprocess.run([respguard_bin(), "-c", str(path)], capture_output=True, env=env, timeout=10,
                             stdin=subprocess.DEVNULL)
        run_rc, run_err = run.returncode, run.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:  # it started: subprocess.run killed it
        run_rc, run_err = "still running after 10s", (e.stderr or b"").decode("utf-8", "replace")
    return str(path), text, check.returncode, check.stderr.decode("utf-8", "replace"), run_rc, run_err


def line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError("%r not in %s" % (needle, text))


def test_plaintext_rest_off_loopback_is_a_config_error(tmp_path, upstream, certs):
    port = free_port()
    path, text, rc, err, run_rc, run_err = check_config(tmp_path, upstream, certs,
                                                        [{"bind": "0.0.0.0:%d" % port}])
    line = line_of(text, "0.0.0.0:%d" % port)
    assert rc == 1, (rc, err)
    for e in (err, run_err):
        assert re.search(r"^%s:%d:\d+: .*plaintext.*0\.0\.0\.0:%d" % (re.escape(path), line, port), e, re.M), e
        assert upstream.password not in e
    assert run_rc not in (0, "still running after 10s"), (run_rc, run_err)
    # with TLS the same address is fine
    path, text, rc, err, _, _ = check_config(tmp_path, upstream, certs, [
        {"bind": "0.0.0.0:%d" % port, "tls": {"cert_file": certs.path("server.crt"),
                                              "key_file": certs.path("server.key")}}], start=False)
    assert rc == 0, err
    # client certificates are refused on a rest listener
    path, text, rc, err, run_rc, _ = check_config(tmp_path, upstream, certs, [
        {"bind": "127.0.0.1:%d" % port, "tls": {"cert_file": certs.path("server.crt"),
                                                "key_file": certs.path("server.key"),
                                                "client_ca_file": certs.path("client_ca.crt")}}])
    assert rc == 1 and "client_ca_file" in err, (rc, err)
    assert run_rc not in (0, "still running after 10s"), run_rc


# ---------------------------------------------------------------------------
# metrics and log
# ---------------------------------------------------------------------------

def test_rest_requests_total_has_the_specified_status_labels(respguard):
    p = start(respguard, admin=True)
    m = p.metrics()
    labels = sorted(dict(k[1])["status"] for k in m if k[0] == "respguard_rest_requests_total")
    want = sorted(["200", "204", "400", "401", "403", "405", "413", "429", "500", "503", "other"])
    assert labels == want, labels
    assert ("respguard_rest_connections", frozenset()) in m
    assert ("respguard_rest_commands_total", frozenset()) in m


def test_metrics_count_rest_requests(respguard):
    p = start(respguard, admin=True)
    wait_until(lambda: val(p.metrics(), "respguard_rest_connections") == 0, 5, what="start-up probe closed")
    before = p.metrics()
    k = unique("rest")
    c = p.rest.conn()
    try:
        ok_json(p.rest.cmd("SET", k, "v", conn=c), {"result": "OK"})                    # write, 200
        wait_until(lambda: val(p.metrics(), "respguard_rest_connections") == 1, 5, what="gauge at 1")
        ok_json(p.rest.request("GET", "/get/%s" % q(k), conn=c), {"result": "v"})      # read, 200
        error_is(p.rest.cmd("NOSUCHCMD", conn=c), 400, unknown_cmd("NOSUCHCMD"))       # unknown, 400
        error_is(p.rest.cmd("FLUSHALL", conn=c), 400, noperm_cmd("flushall"))          # denied, 400
        ok_json(p.rest.pipeline([["GET", k], ["SET", k, "w"]], conn=c),                # 200
                [{"result": "v"}, {"result": "OK"}])
    finally:
        c.close()
    assert p.rest.cmd("PING", token=None).status == 401
    assert p.rest.request("PUT", "/").status == 405
    assert preflight(p.rest, APP_ORIGIN).status == 403
    wait_until(lambda: val(p.metrics(), "respguard_rest_connections") == 0, 5, what="gauge back at 0")
    m = p.metrics()

    def d(name, **labels):
        return val(m, name, **labels) - val(before, name, **labels)

    got = {s: d("respguard_rest_requests_total", status=s) for s in ("200", "400", "401", "403", "405", "413")}
    assert got == {"200": 3, "400": 2, "401": 1, "403": 1, "405": 1, "413": 0}, got
    cmd = "respguard_commands_total"
    assert d(cmd, user="web", category="write", verdict="allowed") == 2
    assert d(cmd, user="web", category="read", verdict="allowed") == 2
    assert d(cmd, user="web", category="unknown", verdict="error") == 1
    assert d(cmd, user="web", category="dangerous", verdict="denied") == 1
    assert 4 <= d("respguard_rest_commands_total") <= 6, d("respguard_rest_commands_total")


# ---------------------------------------------------------------------------
# reload
# ---------------------------------------------------------------------------

def reload_ok(p, cfg):
    write_config(p, cfg)
    p.config = cfg
    ev = sighup(p)
    assert (ev.get("result"), ev.get("trigger")) == ("ok", "signal"), ev
    assert ev.get("users") == len(cfg["users"]), ev
    return ev


def request_retrying_once(rest, conn, *args, **kw):
    """On a keep-alive connection the server may close instead of answering: then retry on a new
    one (http.client reconnects a closed HTTPConnection by itself)."""
    try:
        return rest.request(*args, conn=conn, **kw)
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        conn.close()
        return rest.request(*args, conn=conn, **kw)


def test_reload_adds_and_removes_a_token(respguard):
    p = start(respguard)
    new_token, web2 = "newbieToken-Reloaded-7", "webpass-rotated-2"
    p.secrets += [new_token, web2]
    r = p.rest.cmd("ECHO", "x", token=new_token)
    assert (r.status, r.body) == (401, UNAUTHORIZED), r

    cfg = deep_merge(p.config, {"users": {"newbie": {"acl": "on >%s ~nb:* +@all" % new_token}}})
    reload_ok(p, cfg)
    ok_json(p.rest.cmd("ECHO", "hello", token=new_token), {"result": "hello"})
    # with newbie's own ACL
    error_is(p.rest.cmd("GET", "other:x", token=new_token), 400, NOPERM_KEYS)
    ok_json(p.rest.cmd("GET", "nb:" + unique("rest"), token=new_token), {"result": None})
    p.wait_event("login", result="ok", user="newbie", protocol="rest")
    held = p.rest.conn()
    try:
        ok_json(p.rest.cmd("ECHO", "held", token=new_token, conn=held), {"result": "held"})

        # remove newbie and rotate web's token
        cfg = deep_merge(cfg, {"users": {"newbie": DELETE,
                                         "web": {"acl": "on >%s ~* &* +@all" % web2}}})
        reload_ok(p, cfg)
        for tok in (new_token, TOKEN):
            r = p.rest.cmd("ECHO", "x", token=tok)
            assert (r.status, r.body) == (401, UNAUTHORIZED), (tok, r)
        r = request_retrying_once(p.rest, held, "POST", "/", ["ECHO", "x"], token=new_token)
        assert (r.status, r.body) == (401, UNAUTHORIZED), r
        ok_json(p.rest.cmd("ECHO", "rotated", token=web2), {"result": "rotated"})
    finally:
        held.close()


def test_reload_applies_rest_settings_live(respguard, direct):
    p = start(respguard, rest={"max_request_bytes": "2kb", "request_timeout": "30s",
                               "cors": {"allowed_origins": ["https://a.example"]}})
    k = unique("rest")
    error_starts(p.rest.cmd("SET", k, "x" * 4000), 413, "ERR request body too large")
    assert preflight(p.rest, "https://a.example").status == 204
    assert preflight(p.rest, "https://b.example").status == 403

    # same bind: max_request_bytes, cors and request_timeout apply; idle_timeout needs a restart
    rest = dict(p.config["rest"][0], max_request_bytes="8kb", request_timeout="1s", idle_timeout="5s",
                cors={"allowed_origins": ["https://b.example"]})
    reload_ok(p, dict(p.config, rest=[rest]))
    warn = p.wait_event("reload_restart_required")
    assert [x.strip() for x in warn.get("keys", "").split(",")] == ["rest[0].idle_timeout"], warn
    ok_json(p.rest.cmd("SET", k, "x" * 4000), {"result": "OK"})
    assert direct.strlen(k) == 4000
    error_starts(p.rest.cmd("SET", k, "x" * 9000), 413, "ERR request body too large")
    assert direct.strlen(k) == 4000
    assert preflight(p.rest, "https://a.example").status == 403
    r = preflight(p.rest, "https://b.example")
    assert r.status == 204 and r.header("Access-Control-Allow-Origin") == "https://b.example", r
    closed_after, got = trickle(p.rest_port, b"POST / HTTP/1.1\r\nHost: localhost\r\n", [b"X"], 0.25, 8)
    assert closed_after is not None and closed_after <= 4.0, "request_timeout 1s not applied: %r" % closed_after
    assert got == b""
    # a user's rate limit applies live too
    reload_ok(p, deep_merge(p.config, {"users": {"web": {"rate_limit": {"commands_per_second": 0.1, "burst": 1}}}}))
    ok_json(p.rest.cmd("ECHO", "1"), {"result": "1"})
    error_is(p.rest.cmd("ECHO", "2"), 429, "ERR rate limit exceeded for user 'web'")


def test_reload_with_a_new_rest_bind_needs_a_restart(respguard):
    p = start(respguard)
    moved = free_port()
    rest = dict(p.config["rest"][0], bind="127.0.0.1:%d" % moved)
    cfg = deep_merge(dict(p.config, rest=[rest]), {"users": {"late": {"acl": "on >lateToken-99x ~* +@all"}}})
    p.secrets.append("lateToken-99x")
    reload_ok(p, cfg)
    warn = p.wait_event("reload_restart_required")
    assert [x.strip() for x in warn.get("keys", "").split(",")] == ["rest[0].bind"], warn
    # the running listener goes on, with the new users
    ok_json(p.rest.cmd("ECHO", "late", token="lateToken-99x"), {"result": "late"})
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", moved), timeout=2).close()


def test_reload_turning_tls_on_needs_a_restart(respguard, certs):
    p = start(respguard)
    rest = dict(p.config["rest"][0], tls={"cert_file": certs.path("server.crt"), "key_file": certs.path("server.key")})
    reload_ok(p, dict(p.config, rest=[rest]))
    warn = p.wait_event("reload_restart_required")
    assert [x.strip() for x in warn.get("keys", "").split(",")] == ["rest[0].tls"], warn
    # the running listener is still the plaintext one
    ok_json(p.rest.cmd("ECHO", "plain"), {"result": "plain"})


def _peer_cert_der(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


def _der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def test_reload_rotates_the_rest_certificate_without_dropping_a_connection(respguard, certs, tmp_path, direct):
    # the listener reads its certificate from files the test replaces, as a renewal tool would
    crt, key = str(tmp_path / "rest.crt"), str(tmp_path / "rest.key")
    shutil.copy(certs.path("server.crt"), crt)
    shutil.copy(certs.path("server.key"), key)
    p = start(respguard, rest={"tls": {"cert_file": crt, "key_file": key}})
    assert _peer_cert_der(p.rest_port) == _der(certs.path("server.crt"))
    k = unique("rest")
    held = p.rest.conn()  # a keep-alive connection made under the old certificate
    try:
        ok_json(p.rest.cmd("INCR", k, conn=held), {"result": 1})

        shutil.copy(certs.path("server2.crt"), crt)
        shutil.copy(certs.path("server2.key"), key)
        reload_ok(p, p.config)
        ev = wait_until(lambda: p.events("rest_certificate"), 5, what="rest_certificate line")[-1]
        assert (ev.get("result"), ev.get("retiring_connections")) == ("rotated", 1), ev
        assert not p.events("reload_restart_required"), p.events("reload_restart_required")

        # new handshakes get the new certificate, verified by the same CA
        assert _peer_cert_der(p.rest_port) == _der(certs.path("server2.crt"))
        ok_json(p.rest.cmd("INCR", k), {"result": 2})
        # the connection made before goes on, on the retiring daemon
        for i in range(3, 23):
            ok_json(p.rest.cmd("INCR", k, conn=held), {"result": i})
    finally:
        held.close()
    assert direct.get(k) == b"22"

    # a key that does not match its certificate fails the reload: the running one stays
    shutil.copy(certs.path("server.key"), key)
    ev = sighup(p)
    assert ev.get("result") == "failed" and "rest listener" in ev.get("reason", ""), ev
    assert _peer_cert_der(p.rest_port) == _der(certs.path("server2.crt"))
    ok_json(p.rest.cmd("INCR", k), {"result": 23})


def test_multi_exec_judges_multi_and_exec(respguard, direct):
    users = default_users()
    users["notx"] = {"acl": "on >notxToken-1 ~* +get +set +incr"}
    p = start(respguard, users=users)
    p.secrets.append("notxToken-1")
    k = unique("rest")
    direct.set(k, "orig")
    direct.config_resetstat()
    r = p.rest.multi([["SET", k, "changed"]], token="notxToken-1")
    error_is(r, 400, EXECABORT + "NOPERM this user has no permissions to run the 'multi' command")
    assert direct.get(k) == b"orig"
    stats = direct.info("commandstats")
    for name in ("multi", "exec", "set"):
        assert "cmdstat_" + name not in stats, (name, sorted(stats))
    ev = wait_until(lambda: p.events("refused", command="multi"), 5, what="refused line")[-1]
    assert ev.get("protocol") == "rest", ev
    # the same user's single commands run
    ok_json(p.rest.cmd("SET", k, "single", token="notxToken-1"), {"result": "OK"})


def test_no_token_is_refused_before_the_body(respguard):
    p = start(respguard)
    s = socket.create_connection(("127.0.0.1", p.rest_port), timeout=5)
    try:
        # headers announce a large body that never comes: the 401 must not wait for it
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 900000\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            d = s.recv(4096)
            if not d:
                break
            got += d
        assert got.startswith(b"HTTP/1.1 401"), got
    finally:
        s.close()


def test_get_body_is_not_an_argument(respguard, direct):
    p = start(respguard)
    k = unique("rest")
    direct.set(k, "v")
    r = p.rest.request("GET", "/get/%s" % q(k), body=b"extra")
    ok_json(r, {"result": "v"})  # GET k, not GET k extra (which would be an arity error)


def test_rest_tls_refuses_old_protocols(respguard, certs):
    p = start(respguard, rest={"tls": {"cert_file": certs.path("server.crt"), "key_file": certs.path("server.key")}})
    def handshake(*args):
        r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % p.rest_port] + list(args),
                           input=b"", capture_output=True, timeout=10)
        return r.stdout.decode(errors="replace")
    assert "Cipher is (NONE)" in handshake("-tls1_1"), "TLS 1.1 must be refused"
    assert "Cipher is (NONE)" in handshake("-tls1_2", "-cipher", "AES128-SHA"), "CBC ciphers must be refused"
    assert "Protocol  : TLSv1.2" in handshake("-tls1_2")
    assert "TLSv1.3" in handshake("-tls1_3")


def test_shutdown_does_not_wait_for_idle_keep_alive_connections(respguard):
    p = start(respguard, limits={"shutdown_timeout": "30s"})
    held = p.rest.conn()
    try:
        ok_json(p.rest.cmd("PING", conn=held), {"result": "PONG"})
        p.signal(signal.SIGTERM)
        p.proc.wait(10)
    finally:
        held.close()
    assert p.proc.returncode == 0
    assert not p.events("shutdown", phase="timeout"), p.events("shutdown")


def test_rest_under_repeated_reloads(respguard, direct):
    """Keep-alive REST clients run pipelines and transactions while 30 reloads add and remove a
    user and change the stable user's rules back and forth: every answer is the right one for
    the configuration in force (a removed user: 401; otherwise exact counters), nothing else."""
    users = default_users()
    stable = {"acl": "on >stableToken-9 ~st:* +@all"}
    flaky = {"acl": "on >flakyToken-9 ~fl:* +@all"}
    users["stable"], users["flaky"] = stable, flaky
    p = start(respguard, users=users)
    p.secrets += ["stableToken-9", "flakyToken-9"]
    base = dict(p.config)
    stop = threading.Event()
    errors, counts = [], {"stable": 0, "flaky_ok": 0, "flaky_401": 0}
    lock = threading.Lock()

    def client(name, token, prefix, may_vanish):
        c = p.rest.conn()
        k = "%s:%s" % (prefix, unique("n"))
        n = 0
        try:
            while not stop.is_set():
                r = request_retrying_once(p.rest, c, "POST", "/pipeline", [["INCR", k], ["GET", k]], token=token)
                if may_vanish and r.status == 401:
                    with lock:
                        counts["flaky_401"] += 1
                    continue
                if r.status != 200:
                    errors.append((name, "pipeline", r))
                    return
                n += 1
                if r.json() != [{"result": n}, {"result": str(n)}]:
                    errors.append((name, "pipeline", n, r))
                    return
                r = request_retrying_once(p.rest, c, "POST", "/multi-exec", [["INCR", k], ["INCR", k]], token=token)
                if may_vanish and r.status == 401:
                    continue
                if r.status != 200 or r.json() != [{"result": n + 1}, {"result": n + 2}]:
                    errors.append((name, "multi", n, r))
                    return
                n += 2
                with lock:
                    counts["stable" if not may_vanish else "flaky_ok"] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((name, repr(e)))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=("stable%d" % i, "stableToken-9", "st", False)) for i in range(3)]
    threads += [threading.Thread(target=client, args=("flaky%d" % i, "flakyToken-9", "fl", True)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            cfg = deep_merge(base, {})
            if i % 2 == 0:
                cfg["users"] = dict(cfg["users"])
                del cfg["users"]["flaky"]
                cfg["users"]["stable"] = {"acl": "on >stableToken-9 ~st:* ~other:* +@all"}
            reload_ok(p, cfg)
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    assert counts["stable"] > 0 and counts["flaky_ok"] > 0 and counts["flaky_401"] > 0, counts
    assert p.proc.poll() is None


def test_rotation_keeps_the_connection_cap_and_refuses_what_gnutls_cannot_load(respguard, certs, tmp_path):
    crt, key = str(tmp_path / "rest.crt"), str(tmp_path / "rest.key")
    shutil.copy(certs.path("server.crt"), crt)
    shutil.copy(certs.path("server.key"), key)
    p = start(respguard, rest={"tls": {"cert_file": crt, "key_file": key}, "max_connections": 2})
    held = [p.rest.conn(), p.rest.conn()]
    try:
        for c in held:
            ok_json(p.rest.cmd("PING", conn=c), {"result": "PONG"})
        shutil.copy(certs.path("server2.crt"), crt)
        shutil.copy(certs.path("server2.key"), key)
        reload_ok(p, p.config)
        wait_until(lambda: p.events("rest_certificate", result="rotated"), 5, what="rotation")
        # the two connections of the retiring daemon still count against max_connections
        with pytest.raises((ConnectionError, OSError, http.client.HTTPException, ssl.SSLError)):
            p.rest.cmd("PING")
        held.pop().close()

        def served():
            try:  # until respguard has seen the close, a new connection is still refused
                return p.rest.cmd("PING").status == 200
            except (ConnectionError, OSError, http.client.HTTPException, ssl.SSLError):
                return False
        wait_until(served, 5, interval=0.2, what="a free slot")
    finally:
        for c in held:
            c.close()

    # OpenSSL takes a "TRUSTED CERTIFICATE" PEM, libmicrohttpd's GnuTLS does not: the reload
    # fails before anything changes, and `check` says so too
    subprocess.run(["openssl", "x509", "-in", certs.path("server2.crt"), "-trustout", "-out", crt], check=True)
    ev = sighup(p)
    assert ev.get("result") == "failed" and "GnuTLS" in ev.get("reason", ""), ev
    assert _peer_cert_der(p.rest_port) == _der(certs.path("server2.crt"))
    env = dict(os.environ, UPSTREAM_PW="x")  # check reads the file as it is, ${VAR}s included
    r = subprocess.run([respguard_bin(), "check", "-c", p.config_path], capture_output=True, timeout=30, env=env)
    assert r.returncode != 0 and b"GnuTLS" in r.stderr, r
