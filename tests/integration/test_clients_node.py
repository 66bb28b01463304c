"""Real node clients through the proxy: ioredis 5 (RESP2), node-redis v5 (RESP2 and RESP3).

The workloads are node/*.mjs scripts; they print one JSON line that is checked here.
node and node/node_modules are required (CI runs `npm ci` in node/): their absence is a
failure, not a skip.
"""

import json
import os
import shutil
import subprocess

import pytest

from helpers import PASSWORDS, REFERENCE, unique

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


def node_bin():
    node = shutil.which("node")
    assert node, "node is not installed (required for the node client tests)"
    for pkg in ("redis", "redis4", "ioredis", "@redis/client"):
        assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", pkg)), \
            "node module %r missing: run `npm ci` in %s" % (pkg, NODE_DIR)
    return node


def run_workload(script, port, resp, user="web", timeout=60):
    node = node_bin()
    env = dict(os.environ, RG_HOST="127.0.0.1", RG_PORT=str(port), RG_USER=user,
               RG_PASS=PASSWORDS[user], RG_RESP=str(resp), RG_PREFIX=unique("node"))
    try:
        r = subprocess.run([node, os.path.join(NODE_DIR, script)], cwd=NODE_DIR, env=env,
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s hung; stderr: %s" % (script, (e.stderr or b"").decode()[-2000:]))
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, "%s failed (exit %d):\n%s\n%s" % (script, r.returncode, out[-2000:], err[-4000:])
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines, "%s printed nothing; stderr:\n%s" % (script, err)
    return json.loads(lines[-1])


def expected(resp, name):
    return {
        "client_name": name,
        "upstream_resp": resp,
        "get": "v1",
        "incrby": 15,
        "append": 7,
        "mget": ["v1-more", None],
        "ttl_ok": True,
        "getdel": "x",
        "exists_after_getdel": 0,
        "hgetall": {"f1": "a", "f2": "b"},
        "hget": "b",
        "hincrby": 3,
        "lrange": ["c", "a", "b"],
        "lpop": "c",
        "smembers": ["m1", "m2", "m3"],
        "sismember": 1,
        "scard": 3,
        "zrange_withscores": [["a", 1], ["b", 2.5]],
        "zscore": 2.5,
        "zincrby": 4.5,
        "pipeline_len": 100,
        "pipeline_last": 100,
        "multi": ["OK", 2],
        "watch": "aborted",
        "watch_value": "theirs",
        "refused": {"error": "NOPERM this user has no permissions to run the 'config|get' command"},
        "after_refused": "PONG",
        "big_ok": True,
        "binary_ok": True,
        "publish_receivers": [1, 1, 1],
        "pubsub": ["message ch m1", "pmessage pat.x m2", "message ch m3"],
        "after_unsubscribe": "v1-more",
        "errors": [],
    }


def check(result, want):
    if REFERENCE:  # Redis itself allows CONFIG GET to this user
        want = dict(want, refused=result.get("refused"))
    diffs = {k: {"expected": v, "got": result.get(k, "<missing>")}
             for k, v in want.items() if result.get(k, "<missing>") != v}
    assert not diffs, json.dumps(diffs, indent=1)


def test_ioredis_resp2(proxy):
    check(run_workload("workload_ioredis.mjs", proxy.port, 2), expected(2, "io-main"))


@pytest.mark.parametrize("resp", [2, 3])
def test_node_redis(proxy, resp):
    want = expected(resp, "nr-main")
    if resp == 3:
        want["get_while_subscribed"] = "v1-more"
    check(run_workload("workload_node_redis.mjs", proxy.port, resp), want)


def test_node_redis4_resp2(proxy):
    """node-redis v4, still what most apps run: RESP2 only."""
    want = {
        "client_name": "nr4-main",
        "get": "v1",
        "incrby": 15,
        "hgetall": {"f1": "a", "f2": "b"},
        "pipeline_last": 100,
        "multi": ["OK", "2"],
        "refused": {"error": "NOPERM this user has no permissions to run the 'flushall' command"},
        "after_refused": "PONG",
        "binary_ok": True,
        "message": "hello",
        "after_unsubscribe": "v1",
        "errors": [],
    }
    if REFERENCE:
        pytest.skip("the reference server has no guard")
    check(run_workload("workload_node_redis4.mjs", proxy.port, 2), want)
