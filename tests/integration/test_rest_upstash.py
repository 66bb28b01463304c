"""The real @upstash/redis SDK (pinned 1.39.0 in node/package.json) against respguard's REST
listener (issue 11).

node/rest_upstash.mjs drives the SDK and prints one JSON line: every result, every error the
SDK threw, and a transcript of each HTTP exchange (taken by wrapping the global fetch the SDK
calls). Checked here: the SDK's own view (results, error messages), the upstream's (through the
`direct` fixture: keys, bytes, nothing written by what was refused) and that neither the
upstream's password nor a token appears in anything the SDK received or threw.

The SDK by default sends Upstash-Encoding: base64 and auto-pipelines (a single command goes to
/pipeline in a batch, except a few it never batches: hgetall, lrange, zrange, keys, exec, ...);
it is also run with enableAutoPipelining: false (single commands to POST /) and with plain JSON
replies (responseEncoding: false), and once over https (the test CA through
NODE_EXTRA_CA_CERTS). node and node/node_modules are required (CI runs `npm ci` in node/): their
absence is a failure, not a skip.
"""

import json
import os
import shutil
import subprocess

import pytest

from helpers import OFF_USER_PASSWORD, PASSWORDS, default_users, free_port, unique, wait_port

pytestmark = pytest.mark.proxy_only

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
SCRIPT = "rest_upstash.mjs"

# REST tokens are the users' passwords. Distinctive, so a leak anywhere is unmistakable.
TOKENS = {
    "app": "tok-app-Secret-4711",
    "old": "tok-old-Secret-4712",
    "limited": "tok-lim-Secret-4713",
}

NOPERM_KEY = "NOPERM this user has no permissions to access one of the keys used as arguments"


def noperm_cmd(name):
    return "NOPERM this user has no permissions to run the '%s' command" % name


def rest_users():
    users = default_users()
    # a tenant, as an app on the REST API would be; it names EVAL (scripts are refused to a
    # tenant unless named: README "Tenants")
    users["app"] = {"acl": "on >%s ~app:* +@all -@dangerous +eval" % TOKENS["app"]}
    users["old"] = {"acl": "on >%s ~* &* +@all" % TOKENS["old"], "expires": "2020-01-01T00:00:00Z"}
    users["limited"] = {"acl": "on >%s ~app:* +@all" % TOKENS["limited"],
                        "rate_limit": {"commands_per_second": 1, "burst": 3}}
    return users


def start(respguard, certs=None, tls=False):
    """A respguard with one REST listener (plaintext on loopback, or TLS); .rest_port is its port."""
    port = free_port()
    rest = {"bind": "127.0.0.1:%d" % port}
    if tls:
        rest["tls"] = {"cert_file": certs.path("server.crt"), "key_file": certs.path("server.key")}
    p = respguard(users=rest_users(), overrides={"rest": [rest]})
    try:
        wait_port(port, 10, p.proc, "respguard's REST listener")
    except AssertionError:
        raise AssertionError("the REST listener did not start; stderr:\n" + p.stderr_text()[-4000:])
    p.rest_port = port
    p.secrets.extend(TOKENS.values())  # checked in respguard's log at teardown (conftest)
    return p


def node_bin():
    node = shutil.which("node")
    assert node, "node is not installed (required for the node client tests)"
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "@upstash", "redis")), \
        "node module '@upstash/redis' missing: run `npm ci` in %s" % NODE_DIR
    return node


def run_sdk(p, scenario, user="app", token=None, auto=True, encoding="base64", scheme="http",
            prefix=None, extra_env=None, timeout=120):
    """Run the SDK script; returns (result, full stdout + stderr text)."""
    env = dict(os.environ, RG_HOST="127.0.0.1", RG_PORT=str(p.rest_port), RG_USER=user,
               RG_PASS=token if token is not None else TOKENS.get(user) or PASSWORDS[user],
               RG_PREFIX=prefix or unique("app:node"), RG_SCENARIO=scenario,
               RG_AUTOPIPELINE="1" if auto else "0", RG_ENCODING=encoding, RG_SCHEME=scheme,
               RG_TIMEOUT_MS=str((timeout - 10) * 1000))
    for k in list(env):
        if k.startswith(("UPSTASH_", "KV_REST_")):
            del env[k]
    env.update(extra_env or {})
    try:
        r = subprocess.run([node_bin(), os.path.join(NODE_DIR, SCRIPT)], cwd=NODE_DIR, env=env,
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s (%s) hung; stderr: %s" % (SCRIPT, scenario, (e.stderr or b"").decode()[-2000:]))
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, "%s (%s) failed (exit %d):\n%s\n%s" % (SCRIPT, scenario, r.returncode,
                                                                    out[-3000:], err[-4000:])
    # "\n" only: the JSON line may hold U+0085 or U+2028, which str.splitlines() splits at
    lines = [line for line in out.split("\n") if line.strip()]
    assert lines, "%s printed nothing; stderr:\n%s" % (SCRIPT, err)
    return json.loads(lines[-1]), out + err


def assert_no_credentials(p, text):
    """Neither the upstream's password nor any REST token in what the SDK got, threw or printed."""
    upstream_pw = p.upstream_server.password
    assert upstream_pw not in text, "the upstream password appears in the SDK's output"
    for name, tok in list(TOKENS.items()) + [(u, pw) for u, pw in PASSWORDS.items()] + \
            [("off_user", OFF_USER_PASSWORD)]:
        assert tok not in text, "the token of %r appears in the SDK's output" % name


def sdk_error(err, command, batched):
    """The message @upstash/redis 1.39.0 throws for a Redis error `err`: an auto-pipelined
    command fails inside its batch (HTTP 200, the entry's error); any other request gets a 4xx
    whose {"error"} the SDK reports with the command it sent."""
    if batched:
        return "Command failed: " + err
    return "%s, command was: %s" % (err, json.dumps(command, separators=(",", ":"), ensure_ascii=False))


def error_of(result, name):
    v = result.get(name)
    assert isinstance(v, dict) and "error" in v, "%s: expected an error, got %r" % (name, v)
    return v["error"]


def check_http(result, statuses, encoding="base64"):
    """The transcript of HTTP exchanges: JSON replies, only the expected statuses, no network error."""
    assert result["network_errors"] == [], result["network_errors"]
    assert result["http"], "no HTTP exchange recorded"
    for x in result["http"]:
        assert x["method"] == "POST", x
        assert (x["content_type"] or "").split(";")[0].strip() == "application/json", \
            "%s %s -> %s: Content-Type %r" % (x["method"], x["path"], x["status"], x["content_type"])
        assert x["status"] in statuses, "%s %s: status %s, body %s, request %s" % (
            x["method"], x["path"], x["status"], x["body"][:300], (x["request"] or "")[:300])
        assert x["encoding"] == ("base64" if encoding == "base64" else None), x
        json.loads(x["body"])  # every body is JSON (the SDK would have thrown otherwise)
        # read-your-writes: the sync token the SDK sent comes back
        if x["sent_sync"]:
            assert x["recv_sync"] == x["sent_sync"], \
                "upstash-sync-token %r sent, %r received (%s)" % (x["sent_sync"], x["recv_sync"], x["path"])


# ---------------------------------------------------------------------------
# the scoped user's workload
# ---------------------------------------------------------------------------

RAW_INVALID = b"\xff\xfe\x00\x80abc\xc3(" + os.urandom(16)  # not UTF-8
RAW_VALID = "x\x00ü😀 ok\r\n".encode()


def seed_raw(direct, prefix):
    """Values written upstream by the test itself: the SDK must read these bytes back."""
    raw = {prefix + ":raw:invalid": RAW_INVALID, prefix + ":raw:valid": RAW_VALID}
    for key, v in raw.items():
        direct.set(key, v)
    return {k: v.hex() for k, v in raw.items()}


def check_main(result, text, p, direct, prefix, other, auto, encoding):
    k = lambda s: "%s:%s" % (prefix, s)  # noqa: E731
    b = auto  # auto-pipelined commands fail inside their batch

    want = {
        "set": "OK", "get": "v1", "get_missing": None,
        "set_ex": "OK", "ttl_ok": True,
        "set_nx_existing": None, "set_nx_new": "OK", "set_px": "OK", "pttl_ok": True,
        "set_xx_get": "v1",
        "incr": 1, "incrby": 11, "decr": 10, "incrbyfloat": 1.5,
        "get_number": 42, "get_float": 0.1, "get_bool": True,
        "mget": ["v3", None, 42],
        "append": 7, "strlen": 7, "del": 2, "exists": 1,
        "ping": "PONG", "echo": "hello",
        "hset": 3, "hgetall": {"f1": "a", "f2": 2, "f3": {"x": 1}}, "hget": "a", "hincrby": 3,
        "hmget": {"f1": "a", "nope": None}, "hgetall_missing": None,
        "zadd": 2, "zrange_withscores": ["a", 1, "b", 2.5], "zrange": ["a", "b"], "zscore": 2.5,
        "zincrby": 3, "zrange_after": ["b", 2.5, "a", 3],
        "lpush": 3, "lrange": ["c", "b", "a"], "rpop": "a", "rpush": 3, "llen": 3,
        "lrange_after": ["c", "b", "z"],
        "sadd": 2, "smembers": ["m1", "m2"], "sismember": 1,
        "json_set": "OK", "json_get": result.get("json_object"), "json_array": [1, {"two": 2}, "three"],
        "unicode_key_set": "OK", "unicode_key_get": "u",
        "binary_hset": 1, "binary_hash_ok": True,
        "pipeline": ["OK", 1, "x", 1, {"a": 1}, 1, 1, ["m", 3], 1, None],
        "pipeline_keep_errors": [
            {"error": None, "result": "OK"},
            {"error": "ERR value is not an integer or out of range", "result": None},
            {"error": NOPERM_KEY, "result": None},
            {"error": None, "result": "str"},
        ],
        "pipeline_throws": {"error": "Command 2 [ incr ] failed: ERR value is not an integer or out of range"},
        "multi": ["OK", 1, "a", 2, {"f1": "a", "f2": 2, "f3": {"x": 1}, "cnt": 3}],
        "multi_runtime_error": [
            {"error": None, "result": "OK"},
            {"error": "ERR value is not an integer or out of range", "result": None},
            {"error": None, "result": "OK"},
        ],
        "multi_refused": {"error": sdk_error("EXECABORT Transaction discarded because of: " + NOPERM_KEY,
                                             [["set", k("t4"), "nope"], ["get", other]], False)},
        "noperm_get": {"error": sdk_error(NOPERM_KEY, ["get", other], b)},
        "noperm_set": {"error": sdk_error(NOPERM_KEY, ["set", other, "x"], b)},
        "noperm_keys": {"error": sdk_error(noperm_cmd("keys"), ["keys", "*"], False)},
        "noperm_flushdb": {"error": sdk_error(noperm_cmd("flushdb"), ["flushdb"], False)},
        "wrongtype": {"error": sdk_error("WRONGTYPE Operation against a key holding the wrong kind of value",
                                         ["lpush", k("s"), "x"], b)},
        "blpop": {"error": sdk_error("ERR BLPOP is not supported over the REST API",
                                     ["BLPOP", k("l"), "1"], False)},
        "multi_cmd": {"error": sdk_error("ERR MULTI is not supported over the REST API: send the "
                                         "transaction to /multi-exec", ["MULTI"], False)},
        "after_errors": "v3-more",
        "eval": [k("ev"), "x"],
        "concurrent_sets": ["OK"] * 10,
        "concurrent_gets": ["v%d" % i for i in range(10)],
        "sync_set": "OK", "sync_get": "y", "sync_token_after": "rg-sync-token-1", "sync_multi": ["y"],
    }
    diffs = {key: {"expected": v, "got": result.get(key, "<missing>")}
             for key, v in want.items() if result.get(key, "<missing>") != v}
    assert not diffs, json.dumps(diffs, indent=1, ensure_ascii=False)

    # a queue-time error (HSET with no field/value) discards the transaction, whoever finds it
    assert error_of(result, "multi_queue_error").startswith("EXECABORT Transaction discarded because of"), \
        result["multi_queue_error"]
    assert error_of(result, "unknown").startswith(
        "ERR unknown command 'NOSUCHCMD', with args beginning with: 'x'"), result["unknown"]
    # auto-pipelining batches concurrent commands into one request; without it each is one
    if auto:
        assert result["concurrent"] == list(range(1, 21))
        assert result["concurrent_requests"] == 1, result["concurrent_requests"]
    else:
        assert sorted(result["concurrent"]) == list(range(1, 21))
        assert result["concurrent_requests"] == 20, result["concurrent_requests"]

    # binary and unicode values: round trip through the SDK, and the exact UTF-8 bytes upstream
    for name, v in result["binary"].items():
        assert v["roundtrip"], "%s did not round-trip: got %r" % (name, v["got"])
        up = direct.get(v["key"])
        assert up is not None and len(up) == v["utf8_len"], (name, up and len(up))
        if v["utf8_hex"] is not None:
            assert up.hex() == v["utf8_hex"], name
    assert direct.get(k("ключ😀").encode()) == b"u"
    assert direct.hgetall(k("hbin")) == {"f\x00😀".encode(): "v\x00ü".encode()}
    want_raw = {k("raw:valid"): True}
    if encoding == "base64":  # plain JSON cannot carry bytes that are not UTF-8
        want_raw[k("raw:invalid")] = True
    assert result["raw"] == want_raw, result["raw"]

    # what reached the upstream, under the right keys
    assert direct.get(k("s")) == b"v3-more"
    assert 0 < direct.ttl(k("ex")) <= 100
    assert direct.exists(k("nx"), k("px")) == 0  # deleted by the DEL
    assert direct.get(k("num")) == b"42"
    assert direct.get(k("float")) == b"0.1"
    assert direct.get(k("bool")) == b"true"
    assert direct.get(k("f")) == b"1.5"
    assert direct.hgetall(k("h")) == {b"f1": b"a", b"f2": b"2", b"f3": b'{"x":1}', b"cnt": b"3"}
    assert direct.zrange(k("z"), 0, -1, withscores=True) == [(b"b", 2.5), (b"a", 3.0)]
    assert direct.lrange(k("l"), 0, -1) == [b"c", b"b", b"z"]
    assert json.loads(direct.get(k("json"))) == result["json_object"]
    assert direct.exists(k("p1")) == 0 and direct.get(k("pc")) == b"1"
    assert direct.get(k("p2")) == b"str"
    assert direct.get(k("t1")) == b"a" and direct.get(k("tc")) == b"1"
    assert direct.lrange(k("tl"), 0, -1) == [b"y", b"x"]
    assert direct.get(k("t3")) == b"after"
    assert direct.exists(k("t4")) == 0, "a transaction respguard refused was partly run upstream"
    assert direct.exists(k("t5"), k("t5h")) == 0, "a discarded transaction was partly run upstream"
    assert direct.get(k("cnt")) == b"20"
    assert direct.get(k("sync")) == b"y"
    assert direct.exists(other) == 0, "a key outside the user's pattern was written"

    # the HTTP side: routes used, statuses, encoding, the sync token echoed
    check_http(result, {200, 400}, encoding)
    paths = {x["path"] for x in result["http"]}
    assert paths == {"/", "/pipeline", "/multi-exec"}, paths
    synced = [x for x in result["http"] if x["sent_sync"] == "rg-sync-token-1"]
    assert synced, "the SDK never sent the sync token it was given"
    assert_no_credentials(p, text)


@pytest.mark.parametrize("auto,encoding", [(True, "base64"), (False, "base64"), (True, "json")],
                         ids=["default", "no-autopipelining", "json-replies"])
def test_sdk_scoped_user(respguard, direct, auto, encoding):
    p = start(respguard)
    prefix = unique("app:node")
    other = unique("other")
    raw = seed_raw(direct, prefix)
    result, text = run_sdk(p, "main", auto=auto, encoding=encoding, prefix=prefix,
                           extra_env={"RG_OTHER_KEY": other, "RG_RAW": json.dumps(raw)})
    assert result["auto_pipelining"] is auto and result["encoding"] == encoding
    check_main(result, text, p, direct, prefix, other, auto, encoding)
    # refusals are audited as REST ones
    refused = p.events("refused", user="app")
    assert refused and all(e.get("protocol") == "rest" for e in refused), refused[:3]


def test_sdk_over_https(respguard, certs, direct):
    """The default client over https, the CA given to node by NODE_EXTRA_CA_CERTS."""
    p = start(respguard, certs, tls=True)
    prefix = unique("app:node")
    other = unique("other")
    raw = seed_raw(direct, prefix)
    result, text = run_sdk(p, "main", scheme="https", prefix=prefix,
                           extra_env={"RG_OTHER_KEY": other, "RG_RAW": json.dumps(raw),
                                      "NODE_EXTRA_CA_CERTS": certs.path("ca.crt")})
    assert result["url_scheme"] == "https"
    check_main(result, text, p, direct, prefix, other, True, "base64")


# ---------------------------------------------------------------------------
# refused tokens
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("auto", [True, False], ids=["default", "no-autopipelining"])
def test_sdk_unauthorized(respguard, direct, auto):
    """An expired user's token, a disabled user's and an unknown one: 401 {"error":"Unauthorized"},
    which the SDK throws as "Unauthorized, command was: ..." whatever the route; nothing runs."""
    p = start(respguard)
    prefix = unique("app:node")
    tokens = [TOKENS["old"], OFF_USER_PASSWORD, "no-such-token-4714"]
    result, text = run_sdk(p, "unauthorized", user="old", prefix=prefix, auto=auto,
                           extra_env={"RG_TOKENS": json.dumps(tokens)})
    assert len(result["tokens"]) == len(tokens)
    for tok_result in result["tokens"]:
        for op, v in tok_result.items():
            assert isinstance(v, dict) and "error" in v, (op, v)
            assert v["error"].startswith("Unauthorized, command was: "), (op, v)
    check_http(result, {401})
    for x in result["http"]:
        assert json.loads(x["body"]) == {"error": "Unauthorized"}, x
    # 3 tokens x (get, set, keys, pipeline, multi)
    assert len(result["http"]) == 15, [(x["path"], x["status"]) for x in result["http"]]
    assert direct.exists("%s:unauth" % prefix, "%s:x" % prefix) == 0
    assert_no_credentials(p, text)
    # the expired user's attempts are logged as failed REST logins
    fails = p.events("login", result="fail", user="old")
    assert fails and all(e.get("protocol") == "rest" for e in fails), p.events("login")[:5]
    assert any(e.get("reason") == "expired" for e in fails), fails[:3]


# ---------------------------------------------------------------------------
# rate limit
# ---------------------------------------------------------------------------

LIMITED = "ERR rate limit exceeded for user 'limited'"


@pytest.mark.parametrize("auto", [True, False], ids=["default", "no-autopipelining"])
def test_sdk_rate_limited(respguard, direct, auto):
    """burst 3, 1/s: of 8 SETs sent at once (one /pipeline) or one by one (POST /), the first
    3 pass and the excess gets the rate-limit error: in its entry of the batch (HTTP 200), or as
    HTTP 429 for a single command. What was refused never reaches the upstream."""
    p = start(respguard)
    prefix = unique("app:node")
    result, text = run_sdk(p, "ratelimit", user="limited", prefix=prefix, auto=auto)
    res = result["results"]
    assert len(res) == 8
    assert res[:3] == [{"ok": "OK"}] * 3, res
    refused = [i for i, r in enumerate(res) if r != {"ok": "OK"}]
    # 1/s refills at most one token while the 8 are sent
    assert len(refused) >= 4 and refused[-1] == 7, res
    for i in refused:
        assert res[i] == {"error": sdk_error(LIMITED, ["set", "%s:rl%d" % (prefix, i), "v"], auto)}, res[i]
    if auto:
        check_http(result, {200})
        assert [x["path"] for x in result["http"]] == ["/pipeline"], result["http"]
        entries = json.loads(result["http"][0]["body"])
        assert [e.get("error") for e in entries if "error" in e] == [LIMITED] * len(refused), entries
    else:
        check_http(result, {200, 429})
        statuses = [x["status"] for x in result["http"]]
        assert statuses == [429 if i in refused else 200 for i in range(8)], statuses
        for i in refused:
            assert json.loads(result["http"][i]["body"]) == {"error": LIMITED}
    for i in range(8):
        assert direct.exists("%s:rl%d" % (prefix, i)) == (0 if i in refused else 1), i
    assert_no_credentials(p, text)


# ---------------------------------------------------------------------------
# the upstream credential
# ---------------------------------------------------------------------------

PROBE = [
    ["CONFIG", "GET", "requirepass"], ["CONFIG", "GET", "masterauth"], ["CONFIG", "GET", "*"],
    ["ACL", "LIST"], ["ACL", "GETUSER", "default"], ["ACL", "USERS"], ["ACL", "WHOAMI"], ["ACL", "LOG"],
    ["CLIENT", "LIST"], ["CLIENT", "INFO"], ["CLIENT", "GETNAME"], ["CLIENT", "ID"],
    ["INFO"], ["INFO", "everything"], ["SLOWLOG", "GET", "128"], ["LATENCY", "DOCTOR"], ["MEMORY", "DOCTOR"],
    ["MODULE", "LIST"], ["DEBUG", "OBJECT", "app:x"], ["MONITOR"],
    ["HELLO", "3"], ["HELLO", "2", "AUTH", "default", "not-it"], ["AUTH", "not-it"], ["AUTH", "default", "not-it"],
    ["RESET"], ["SELECT", "1"], ["WATCH", "app:x"], ["QUIT"],
    # scripts run upstream as the upstream's user: CONFIG and ACL are refused inside them by Redis
    ["EVAL", "return redis.call('CONFIG', 'GET', 'requirepass')", "0"],
    ["EVAL", "return redis.call('ACL', 'LIST')", "0"],
    ["PING"],
]


@pytest.mark.parametrize("user", ["app", "web"])
def test_sdk_never_sees_the_upstream_credential(respguard, direct, user):
    """Introspection through the SDK, by a tenant (app) and by a user of every key (web, token
    = its password): whatever is answered or refused, the upstream password is in none of it."""
    p = start(respguard)
    prefix = unique("app:node")
    result, text = run_sdk(p, "probe", user=user, prefix=prefix,
                           extra_env={"RG_PROBE": json.dumps(PROBE)})
    assert len(result["probe"]) == len(PROBE)
    assert result["after"] == "OK"  # the client still works after all of it
    check_http(result, {200, 400})
    assert_no_credentials(p, text)
    replies = {" ".join(x["cmd"]): x["reply"] for x in result["probe"]}
    # unsupported over REST (spec), whoever asks (MONITOR and SELECT 1 may be NOPERM first)
    for cmd in ("HELLO 3", "AUTH not-it", "AUTH default not-it", "RESET", "WATCH app:x", "QUIT"):
        name = cmd.split()[0]
        assert replies[cmd] == {"error": sdk_error("ERR %s is not supported over the REST API" % name,
                                                   cmd.split(), False)}, (cmd, replies[cmd])
    assert replies["ACL WHOAMI"] == {"ok": user}
    assert direct.get(prefix + ":after-probe") == b"ok"
