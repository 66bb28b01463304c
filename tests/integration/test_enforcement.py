"""Optional enforcement, off by default: per-user command rate limits (token bucket; excess
commands get "-ERR rate limit exceeded for user '<name>'" and the connection stays usable) and a
per-source login lockout after repeated failures. Both are logged once per episode and counted
in /metrics."""

import time

import pytest
import redis

from helpers import PASSWORDS, metric_value as val, wait_until
from resp_util import RawConn, encode

pytestmark = pytest.mark.proxy_only

LIMITED = b"-ERR rate limit exceeded for user 'web'\r\n"


def pipeline(c, cmds):
    c.send(b"".join(encode(*a) for a in cmds))
    return [c.read_raw() for _ in cmds]


def test_rate_limit_refuses_the_excess_and_the_connection_stays_usable(respguard):
    p = respguard(admin=True, overrides={"users": {"web": {"rate_limit": {"commands_per_second": 5,
                                                                           "burst": 10}}}})
    c = p.login("web")
    replies = pipeline(c, [("GET", "rl:k%d" % i) for i in range(30)])
    # the bucket starts full: 10 pass at once (a few more may have refilled meanwhile)
    passed = [r for r in replies if r != LIMITED]
    assert 10 <= len(passed) <= 12, replies
    assert all(r == b"$-1\r\n" for r in passed)
    assert replies[:10] == [b"$-1\r\n"] * 10 and replies[-1] == LIMITED
    refused = len(replies) - len(passed)

    # other users are not affected
    ops = p.login("ops")
    assert ops.call_raw("PING") == b"+PONG\r\n"

    # the connection stays usable: after a pause the bucket has refilled
    time.sleep(0.5)
    assert c.call_raw("SET", "rl:k", "v") == b"+OK\r\n"

    # one log line when limiting began, one once a second passed without a refusal
    p.wait_event("rate_limit", phase="end")
    begin = p.events("rate_limit", phase="begin")
    end = p.events("rate_limit", phase="end")
    assert len(begin) == 1 and begin[0]["user"] == "web" and begin[0]["commands_per_second"] == 5, begin
    assert len(end) == 1 and end[0]["refused"] == refused, end
    assert not p.events("refused")  # rate limiting is not an ACL refusal

    m = p.metrics()
    assert val(m, "respguard_rate_limited_commands_total", user="web") == refused
    assert val(m, "respguard_refusals_total", reason="rate_limit") == refused
    assert val(m, "respguard_commands_total", user="web", category="read", verdict="rate_limited") == refused
    assert val(m, "respguard_rate_limited_commands_total", user="ops") == 0


def test_sustained_overload_is_one_episode_in_the_log(respguard):
    p = respguard(overrides={"users": {"web": {"rate_limit": {"commands_per_second": 5, "burst": 5}}}})
    c = p.login("web")
    passed = refused = 0
    end = time.monotonic() + 3
    while time.monotonic() < end:          # about 50 commands a second against a limit of 5
        r = c.call_raw("GET", "rl:overload")
        passed += r == b"$-1\r\n"
        refused += r == LIMITED
        time.sleep(0.02)
    assert refused > 50 and 10 <= passed <= 25, (passed, refused)
    p.wait_event("rate_limit", phase="end", timeout=5)
    assert len(p.events("rate_limit")) == 2, p.events("rate_limit")
    assert p.events("rate_limit", phase="end")[0]["refused"] == refused


def test_rate_limit_in_multi_aborts_the_transaction_and_exec_still_ends_it(respguard):
    p = respguard(overrides={"users": {"web": {"rate_limit": {"commands_per_second": 1, "burst": 3}}}})
    c = p.login("web")
    # MULTI, INCR, INCR take the 3 tokens; the next INCR is refused at queue time, so EXEC
    # (never limited: a client must always be able to end a transaction) answers EXECABORT
    replies = pipeline(c, [("MULTI",), ("INCR", "rl:m"), ("INCR", "rl:m"), ("INCR", "rl:m"), ("EXEC",)])
    assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n", LIMITED,
                       b"-EXECABORT Transaction discarded because of previous errors.\r\n"], replies
    assert p.login("ops").call_raw("GET", "rl:m") == b"$-1\r\n"  # nothing ran


def test_a_refused_multi_keeps_the_transaction_from_running_piecemeal(respguard, direct):
    p = respguard(overrides={"users": {"web": {"rate_limit": {"commands_per_second": 5, "burst": 2}}}})
    c = p.login("web")
    # the bucket is empty when MULTI comes: MULTI is refused, and the commands meant for the
    # transaction do not run on their own when tokens come back; EXEC answers EXECABORT
    assert pipeline(c, [("PING",), ("PING",), ("MULTI",)]) == [b"+PONG\r\n", b"+PONG\r\n", LIMITED]
    time.sleep(0.5)  # tokens again
    assert pipeline(c, [("SET", "rl:atomic", "v"), ("EXEC",)]) == [
        LIMITED, b"-EXECABORT Transaction discarded because of previous errors.\r\n"]
    assert direct.exists("rl:atomic") == 0
    # DISCARD ends such a transaction too; afterwards a MULTI with tokens works as usual
    time.sleep(0.5)
    assert pipeline(c, [("PING",), ("PING",), ("MULTI",), ("INCR", "rl:atomic"), ("DISCARD",)]) == [
        b"+PONG\r\n", b"+PONG\r\n", LIMITED, LIMITED, b"+OK\r\n"]
    time.sleep(0.5)
    assert pipeline(c, [("MULTI",), ("INCR", "rl:atomic"), ("EXEC",)]) == [
        b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n:1\r\n"]
    assert direct.get("rl:atomic") == b"1"


def test_no_command_escapes_the_limit_on_its_way_upstream(respguard, direct):
    p = respguard(overrides={"users": {"web": {"rate_limit": {"commands_per_second": 1, "burst": 2}}}})
    c = p.login("web")

    def calls(cmd):
        stats = direct.info("commandstats")
        return stats.get("cmdstat_" + cmd, {}).get("calls", 0)

    kinds = [("WATCH", "rl:w"), ("UNWATCH",), ("HELLO", "2"), ("EXEC",), ("DISCARD",), ("MULTI",), ("RESET",),
             ("AUTH", "web", PASSWORDS["web"])]
    before = {k[0].lower(): calls(k[0].lower()) for k in kinds}
    replies = pipeline(c, [k for k in kinds for _ in range(200)])
    after = {k[0].lower(): calls(k[0].lower()) for k in kinds}
    forwarded = sum(after[k] - before[k] for k in after)
    # 1600 commands against a limit of 2 at once and 1 a second: a handful get through
    assert forwarded <= 6, (forwarded, after, before)
    # (after the first MULTI was refused, the other MULTIs are nested in its transaction)
    nested = b"-ERR MULTI calls can not be nested\r\n"
    assert replies.count(LIMITED) + replies.count(nested) >= 1590, replies[:20]
    # QUIT is never refused
    assert c.call_raw("QUIT") == b"+OK\r\n"


def test_rate_limit_from_limits_applies_to_every_user_and_a_user_can_opt_out(respguard):
    p = respguard(limits={"rate_limit": {"commands_per_second": 2, "burst": 2}},
                  overrides={"users": {"ops": {"rate_limit": {"commands_per_second": 0}}}})
    web = p.login("web")
    assert pipeline(web, [("PING",)] * 4)[2:] == [LIMITED, LIMITED]
    ops = p.login("ops")
    assert pipeline(ops, [("PING",)] * 50) == [b"+PONG\r\n"] * 50
    # QUIT is never limited
    assert web.call_raw("QUIT") == b"+OK\r\n"


def test_rate_limit_with_redis_py(respguard):
    p = respguard(overrides={"users": {"web": {"rate_limit": {"commands_per_second": 2, "burst": 2}}}})
    r = p.client("web")
    r.set("rl:py", "1")  # the connection's AUTH is not a command of the user's
    r.get("rl:py")
    with pytest.raises(redis.exceptions.ResponseError, match="rate limit exceeded for user 'web'"):
        r.get("rl:py")
    time.sleep(0.6)
    assert r.get("rl:py") == b"1"
    r.close()


def test_login_lockout(respguard):
    p = respguard(admin=True, limits={"login_lockout": {"failures": 3, "window": "10s", "duration": "2s"}})
    c = RawConn(p.port, timeout=5)
    wrong = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    for _ in range(3):
        assert c.call_raw("AUTH", "web", "guess") == wrong
    locked = c.call_raw("AUTH", "web", PASSWORDS["web"])  # even the right password
    assert locked == (b"-WRONGPASS too many failed logins for this user from this address, try again in 2 "
                      b"seconds\r\n"), locked
    assert c.call_raw("HELLO", "3", "AUTH", "web", PASSWORDS["web"]).startswith(b"-WRONGPASS too many failed")
    # a new connection from the same address is locked out as well, for that user name only:
    # another app on the same host (a sidecar's clients are all 127.0.0.1) still logs in
    d = RawConn(p.port, timeout=5)
    assert d.call_raw("AUTH", "web", PASSWORDS["web"]).startswith(b"-WRONGPASS too many failed")
    assert d.call_raw("AUTH", "ops", PASSWORDS["ops"]) == b"+OK\r\n"
    # redis-py's connect fails with the lockout's words
    with pytest.raises(redis.exceptions.ResponseError, match="too many failed logins for this user"):
        p.client("web").ping()

    lockouts = p.events("login_lockout")
    assert len(lockouts) == 1 and lockouts[0]["failures"] == 3 and lockouts[0]["user"] == "web", lockouts
    m = p.metrics()
    assert val(m, "respguard_login_lockouts_total") == 1
    assert val(m, "respguard_logins_total", result="locked_out") == 4
    assert val(m, "respguard_logins_total", result="wrong_password") == 3

    # after the lockout the right password works again
    def login_ok():
        with RawConn(p.port, timeout=5) as e:
            return e.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n" and e.call_raw("PING") == b"+PONG\r\n"
    wait_until(login_ok, 5, interval=0.25, what="login after the lockout")


def test_no_lockout_by_default(proxy):
    c = RawConn(proxy.port, timeout=5)
    for _ in range(30):
        assert c.call_raw("AUTH", "web", "guess").startswith(b"-WRONGPASS invalid")
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    assert not proxy.events("login_lockout")


def test_login_lockout_of_a_source_that_sprays_names(respguard):
    # made-up names cannot buy a source unlimited guesses: ten times `failures` in the window,
    # whatever the names, lock the whole address out, real names included
    p = respguard(limits={"login_lockout": {"failures": 3, "window": "10s", "duration": "2s"}})
    c = RawConn(p.port, timeout=5)
    for i in range(29):
        assert c.call_raw("AUTH", "spray%d" % i, "guess").startswith(b"-WRONGPASS invalid")
    assert c.call_raw("AUTH", "spray29", "guess").startswith(b"-WRONGPASS invalid")
    assert c.call_raw("AUTH", "ops", PASSWORDS["ops"]).startswith(b"-WRONGPASS too many failed logins")
    assert len(p.events("login_lockout")) == 1
