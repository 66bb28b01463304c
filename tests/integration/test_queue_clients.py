"""BullMQ (over ioredis 5) through respguard: node/workload_bullmq.mjs adds a job to a queue and a
Worker processes it; before that a plain ioredis client connects with its default ready check.

What BullMQ 6.7.6 sends (captured with MONITOR directly on redis-server, one add + one processed
job): on every connection AUTH, then INFO twice (ioredis's ready check wants `loading:0`;
BullMQ reads `redis_version` and `maxmemory_policy`), CLIENT SETNAME bull:<base64 name>[:qe];
all queue work is Lua: EVAL (addStandardJob, moveStalledJobsToWait, moveToActive,
moveToFinished, getCounts, ...) and EVALSHA once ioredis knows the script is cached; besides
HSET bull:<q>:meta, BZPOPMIN bull:<q>:marker 5 (the Worker's blocking connection), XREAD BLOCK
10000 STREAMS bull:<q>:events (QueueEvents) and QUIT. Every key is under bull:<queue>:.

INFO is @dangerous: with `+@all -@dangerous` it only works through respguard's scoped INFO (an
ioredis that gets NOPERM for INFO warns and skips its ready check; BullMQ's version check would
fail). Scripts are refused to tenants that do not name them (rule script), so a user confined
to bull:* with `+@all` alone stops at BullMQ's first script, with Redis's NOPERM text. A tenant
naming +eval +evalsha runs BullMQ, with `+@all` and with `+@all -@dangerous` (its scripts' keys
are then not checked by respguard: BullMQ's scripts build some key names from the KEYS[]
prefix themselves).
"""

import json
import os
import shutil
import subprocess

import pytest

from helpers import unique

pytestmark = pytest.mark.proxy_only

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
PW = "bullmq-Pw-3318"
USERS = {
    "bull_all": "on >%s ~* &* +@all" % PW,
    "bull_safe": "on >%s ~* &* +@all -@dangerous" % PW,
    "bull_tenant": "on >%s ~bull:* &bull:* +@all" % PW,
    "bull_tenant_safe": "on >%s ~bull:* &bull:* +@all -@dangerous" % PW,
    # a tenant whose rules name the script commands (respguard then lets it run scripts,
    # whose keys it cannot see: BullMQ's scripts build some key names from KEYS[] prefixes)
    "bull_tenant_scripts": "on >%s ~bull:* &bull:* +@all +eval +evalsha" % PW,
    "bull_tenant_scripts_safe": "on >%s ~bull:* &bull:* +@all -@dangerous +eval +evalsha" % PW,
}
READY_CHECK_SKIPPED = "Skipping the ready check"


class ScriptsRefused(AssertionError):
    """BullMQ failed because respguard refuses EVAL/EVALSHA for the user (rule script)."""


def node_bin():
    node = shutil.which("node")
    assert node, "node is not installed (required for the node client tests)"
    for pkg in ("ioredis", "bullmq"):
        assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", pkg)), \
            "node module %r missing: run `npm ci` in %s" % (pkg, NODE_DIR)
    return node


def run_bullmq(port, user, timeout=60):
    env = dict(os.environ, RG_HOST="127.0.0.1", RG_PORT=str(port), RG_USER=user, RG_PASS=PW,
               RG_PREFIX=unique("bq"), RG_TIMEOUT_MS="40000")
    script = os.path.join(NODE_DIR, "workload_bullmq.mjs")
    try:
        r = subprocess.run([node_bin(), script], cwd=NODE_DIR, env=env, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("workload_bullmq.mjs hung; stderr: %s" % (e.stderr or b"").decode()[-2000:])
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, "workload_bullmq.mjs failed (exit %d):\n%s\n%s" % (
        r.returncode, out[-2000:], err[-4000:])
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines, "workload_bullmq.mjs printed nothing; stderr:\n%s" % err
    result = json.loads(lines[-1])
    print("workload_bullmq.mjs as %s: %s" % (user, json.dumps(result)))
    return result


@pytest.fixture
def bull_proxy(respguard):
    return respguard(users={n: {"acl": a} for n, a in USERS.items()})


def script_refusal(result):
    """The NOPERM text of a refused script in the workload's result, or None."""
    texts = [result.get("add_error") or "", result.get("worker_error") or ""] + result.get("errors", [])
    for t in texts:
        for cmd in ("eval", "evalsha"):
            if "NOPERM this user has no permissions to run the '%s' command" % cmd in t:
                return t
    return None


def check_full_run(result):
    if script_refusal(result):
        raise ScriptsRefused("BullMQ's scripts were refused: %s" % script_refusal(result))
    want = {
        "ioredis_status": "ready",
        "ioredis_set": "OK",
        "ioredis_get": "v",
        "added": {"name": "double", "data": {"x": 21}},
        "completed": {"name": "double", "returnvalue": {"doubled": 42, "name": "double"}},
        "counts": {"completed": 1, "waiting": 0, "active": 0, "failed": 0},
        "errors": [],
        "warnings": [],
    }
    diffs = {k: {"expected": v, "got": result.get(k, "<missing>")}
             for k, v in want.items() if result.get(k, "<missing>") != v}
    assert not diffs, json.dumps(diffs, indent=1) + "\nfull result: " + json.dumps(result)


@pytest.mark.parametrize("user", ["bull_all", "bull_safe", "bull_tenant_scripts", "bull_tenant_scripts_safe"])
def test_bullmq_job_is_added_and_processed(bull_proxy, direct, user):
    """`~* &* +@all`, `~* &* +@all -@dangerous`, and a tenant of bull:* that names +eval
    +evalsha, with `+@all` and with `-@dangerous`: the ready check passes without ioredis's NOPERM warning (INFO answered, scoped
    where INFO is not granted), the job runs, counts are right."""
    result = run_bullmq(bull_proxy.port, user)
    check_full_run(result)
    # the queue's keys are where BullMQ puts them, and nothing of the queue is outside bull:
    keys = direct.keys("bull:%s:*" % result["queue"])
    assert keys, "no bull:%s:* keys upstream" % result["queue"]
    assert not [k for k in direct.keys("*%s*" % result["queue"]) if not k.startswith(b"bull:")]


@pytest.mark.parametrize("user", ["bull_tenant", "bull_tenant_safe"])
def test_bullmq_tenant_gets_as_far_as_the_first_script(bull_proxy, user):
    """What does work for a tenant: ioredis's ready check (the scoped INFO has loading:0, no
    warning), BullMQ's version check (redis_version from the scoped INFO); then the first
    script is refused with Redis's NOPERM text for 'eval'."""
    result = run_bullmq(bull_proxy.port, user)
    assert result["ioredis_status"] == "ready", result
    assert (result["ioredis_set"], result["ioredis_get"]) == ("OK", "v"), result
    assert not [w for w in result["warnings"] if READY_CHECK_SKIPPED in w], result["warnings"]
    assert result.get("add_error") == "NOPERM this user has no permissions to run the 'eval' command", result
    events = [e for e in bull_proxy.events("refused", user=user)]
    assert events and all(e.get("rule") == "script" for e in events), events
    assert {str(e.get("command")).lower() for e in events} <= {"eval", "evalsha"}, events
