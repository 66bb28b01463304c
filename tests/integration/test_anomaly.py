"""Anomalies are logged per user: one JSON line at onset and one at recovery, never one per
command. A real client drives steady traffic, a burst, a first write, refusals and failed logins
through respguard, with the detector's windows shortened so the test takes seconds."""

import time

import pytest

from helpers import PASSWORDS, wait_until
from resp_util import RawConn

pytestmark = pytest.mark.proxy_only

ANOMALY = {
    "warmup": "3s",
    "half_life": "20s",
    "sustain": "2s",
    "recovery": "2s",
    "min_rate": 5,
    "factor": 3,
    "k": 4,
    "denial_burst": 5,
    "auth_failure_burst": 3,
}


def paced(conn, rate, seconds, cmd=("GET", "anomaly:missing")):
    """Send cmd at about `rate` per second for `seconds`, reading every reply."""
    end = time.monotonic() + seconds
    interval = 1.0 / rate
    nxt = time.monotonic()
    while time.monotonic() < end:
        conn.call_raw(*cmd)
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def burst(conn, count, seconds):
    """About count/seconds commands per second, pipelined in small batches."""
    per = max(1, count // (seconds * 10))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.send(b"".join(b"*2\r\n$3\r\nGET\r\n$15\r\nanomaly:missing\r\n" for _ in range(per)))
        for _ in range(per):
            conn.read_raw()
        time.sleep(0.1)


def anomalies(p, **match):
    return [e for e in p.events("anomaly") if all(e.get(k) == v for k, v in match.items())]


def test_rate_spike_and_new_behaviour_onset_and_recovery(respguard):
    p = respguard(admin=True, overrides={"anomaly": ANOMALY})
    c = RawConn(p.port, timeout=10)
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    paced(c, 20, 6)                      # steady reads through the warm-up and beyond
    assert anomalies(p) == [], anomalies(p)
    burst(c, 4000, 4)                    # ~1000 reads per second: far over 3x the baseline
    wait_until(lambda: anomalies(p, type="rate_spike", phase="onset"), 10, what="rate_spike onset")
    paced(c, 20, 2)
    wait_until(lambda: anomalies(p, type="rate_spike", phase="recovery"), 15, what="rate_spike recovery")
    onset = anomalies(p, type="rate_spike", phase="onset")
    recovery = anomalies(p, type="rate_spike", phase="recovery")
    assert len(onset) == 1 and len(recovery) == 1, (onset, recovery)
    assert onset[0]["user"] == "web" and onset[0]["category"] == "read"
    assert onset[0]["observed"] > onset[0]["threshold"] >= onset[0]["baseline"]
    assert recovery[0]["duration_s"] >= 2 and recovery[0]["peak"] >= onset[0]["observed"]

    # a first write after warm-up: a read-only client suddenly deleting
    assert c.call_raw("DEL", "anomaly:missing") == b":0\r\n"
    wait_until(lambda: anomalies(p, type="new_behaviour"), 5, what="new_behaviour")
    nb = anomalies(p, type="new_behaviour")
    wait_until(lambda: len(anomalies(p, type="new_behaviour")) >= 2, 5, what="new_behaviour per category")
    nb = anomalies(p, type="new_behaviour")
    # DEL is @keyspace and @write: both are new for this user, each reported once
    assert sorted((e["user"], e["category"], e["phase"]) for e in nb) == [
        ("web", "keyspace", "onset"), ("web", "write", "onset")]
    c.close()
    # thousands of commands, a handful of lines
    assert len(anomalies(p)) == 4, anomalies(p)
    # /metrics counts the same onsets, per type and user
    m = p.metrics()
    counted = {(dict(k[1])["type"], dict(k[1])["user"]): v for k, v in m.items()
               if k[0] == "respguard_anomalies_total" and v}
    assert counted == {("rate_spike", "web"): 1, ("new_behaviour", "web"): 2}, counted


def test_denial_and_auth_failure_bursts(respguard):
    p = respguard(admin=True, overrides={"anomaly": ANOMALY})
    c = RawConn(p.port, timeout=10)
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    for _ in range(8):
        assert c.call_raw("FLUSHALL").startswith(b"-NOPERM")
    wait_until(lambda: len(anomalies(p, type="denial_burst")) >= 2, 5, what="denial_burst")
    d = anomalies(p, type="denial_burst")
    # denial_burst applies per user and per source: one onset each
    assert sorted((str(e["user"]), str(e["source"]), e["phase"]) for e in d) == [
        ("None", "127.0.0.1", "onset"), ("web", "None", "onset")], d
    for _ in range(5):
        assert c.call_raw("AUTH", "web", "not-the-pw-7f3a").startswith(b"-WRONGPASS")
    wait_until(lambda: anomalies(p, type="auth_failure_burst"), 5, what="auth_failure_burst")
    a = anomalies(p, type="auth_failure_burst")
    assert len(a) == 1 and a[0]["source"] == "127.0.0.1" and a[0]["user"] is None, a
    c.close()
    m = p.metrics()
    counted = {(dict(k[1])["type"], dict(k[1])["user"]): v for k, v in m.items()
               if k[0] == "respguard_anomalies_total" and v}
    # per-source events have no user: user=""
    assert counted == {("denial_burst", "web"): 1, ("denial_burst", ""): 1, ("auth_failure_burst", ""): 1}, counted
    assert "not-the-pw-7f3a" not in p.stderr_text()


def test_anomaly_detection_can_be_disabled(respguard):
    p = respguard(overrides={"anomaly": dict(ANOMALY, enabled=False)})
    c = RawConn(p.port, timeout=10)
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    for _ in range(8):
        c.call_raw("FLUSHALL")
    time.sleep(1.5)  # two ticks would have reported it; nothing may come
    c.close()
    assert anomalies(p) == []
