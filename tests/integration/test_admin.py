"""The admin listener: /metrics parsed by Prometheus' own text parser (Debian's
python3-prometheus-client) with counters that match, byte for byte and command for command, what
the test sent; /healthz; /readyz following the upstream as it stops and comes back."""

import threading
import time

import pytest
import redis

from helpers import PASSWORDS, POOL_MODE, metric_value as val, wait_until
from resp_util import RawConn, encode

pytestmark = pytest.mark.proxy_only


def delta(m, before, name, **labels):
    """How much a series grew since `before` (the start-up port checks already connected)."""
    return val(m, name, **labels) - val(before, name, **labels)


def settle(p):
    """Wait until the start-up checks (one connection to each data port) were accepted and closed."""
    ports = (p.port is not None) + (p.tls_port is not None)
    wait_until(lambda: (lambda m: val(m, "respguard_client_connections_accepted_total") >= ports
                        and val(m, "respguard_client_connections") == 0)(p.metrics()), 5, what="start-up checks")
    return p.metrics()


def family(m, name):
    return {dict(k[1]).get("cert", k[1]): v for k, v in m.items() if k[0] == name}


def pool_state(m, state):
    return val(m, "respguard_pool_connections", state=state)


def test_metrics_match_what_was_sent(respguard):
    # One warm connection kept ready: the pool's connections are the upstream connections.
    p = respguard(admin=True, tls_listener=True, overrides={"upstream": {"pool": {"min_idle": 1}}})
    before = settle(p)
    wait_until(lambda: pool_state(p.metrics(), "idle") == 1, 5, what="the pool's warm connection")
    before = p.metrics()
    # every fixed label value is listed, zero or not, so alerts can use rate() from the start
    for reason in ("source_not_allowed", "max_clients", "tls_handshake", "login_timeout"):
        assert ("respguard_client_connections_refused_total", frozenset({("reason", reason)})) in before
    for t in ("rate_spike", "new_behaviour", "denial_burst", "auth_failure_burst", "connection_surge"):
        assert ("respguard_anomalies_total", frozenset({("type", t), ("user", "web")})) in before

    sent = received = 0
    c = RawConn(p.port, timeout=10)

    def call(*args):
        nonlocal sent, received
        frame = encode(*args)
        c.send(frame)
        reply = c.read_raw()
        sent += len(frame)
        received += len(reply)
        return reply

    assert call("AUTH", "web", "not-the-password").startswith(b"-WRONGPASS")
    assert call("AUTH", "web", PASSWORDS["web"]) == b"+OK\r\n"
    for i in range(7):
        assert call("SET", "metrics:k%d" % i, "v" * i) == b"+OK\r\n"
    for i in range(5):
        assert call("GET", "metrics:k%d" % i).startswith(b"$")
    assert call("FLUSHALL").startswith(b"-NOPERM")          # the guard: never by category
    assert call("NOSUCHCOMMAND").startswith(b"-ERR unknown command")
    assert call("PING") == b"+PONG\r\n"

    m = p.metrics()
    assert val(m, "respguard_client_connections") == 1
    assert delta(m, before, "respguard_client_connections_accepted_total") == 1
    assert val(m, "respguard_logins_total", result="ok") == 1
    assert val(m, "respguard_logins_total", result="wrong_password") == 1
    cmd = "respguard_commands_total"
    # the AUTH that logged in came before a user did: a login, not one of web's commands
    assert val(m, cmd, user="web", category="connection", verdict="allowed") == 1   # PING
    assert val(m, cmd, user="web", category="write", verdict="allowed") == 7
    assert val(m, cmd, user="web", category="read", verdict="allowed") == 5
    assert val(m, cmd, user="web", category="dangerous", verdict="denied") == 1     # FLUSHALL
    assert val(m, cmd, user="web", category="unknown", verdict="error") == 1
    total = sum(v for k, v in m.items() if k[0] == cmd)
    assert total == 1 + 7 + 5 + 2, {k: v for k, v in m.items() if k[0] == cmd}
    assert val(m, "respguard_refusals_total", reason="command") == 1
    assert val(m, "respguard_refusals_total", reason="unsupported") == 0
    assert val(m, "respguard_rate_limited_commands_total", user="web") == 0
    # plaintext bytes, exactly as this client sent and received them
    assert val(m, "respguard_client_bytes_received_total") == sent
    assert val(m, "respguard_client_bytes_sent_total") == received
    # the pool: session mode holds a connection for the client (and opened a new warm one);
    # multiplex mode shares the one it had, which is free again between commands
    states = {s: pool_state(m, s) for s in ("connecting", "idle", "busy", "pinned", "resetting")}
    if POOL_MODE == "session":
        assert states["busy"] == 1, states
    else:
        assert states["busy"] + states["pinned"] == 0, states
    # verified TLS connections: every pooled one, and a refill that is up but not yet logged in
    ready = sum(states.values()) - states["connecting"]
    assert ready <= val(m, "respguard_upstream_connections") <= ready + states["connecting"], states
    assert val(m, "respguard_upstream_connections_opened_total") == val(m, "respguard_upstream_connections")
    assert val(m, "respguard_upstream_handshakes_total", type="full") + \
        val(m, "respguard_upstream_handshakes_total", type="resumed") == \
        val(m, "respguard_upstream_connections_opened_total")
    # forwarded after the login: 7 SET + 5 GET + PING, each with one round trip and one
    # added-latency observation; cumulative buckets end at _count
    for h in ("respguard_upstream_rtt_seconds", "respguard_added_latency_seconds"):
        assert val(m, h + "_count") == 13, h
        assert val(m, h + "_bucket", le="+Inf") == 13, h
        assert 0 < val(m, h + "_sum") < 13 * 1.0, h
        les = sorted((float(dict(k[1])["le"]), v) for k, v in m.items() if k[0] == h + "_bucket")
        assert all(a[1] <= b[1] for a, b in zip(les, les[1:])), les
    # the bytes upstream: at least what was forwarded (plus respguard's own AUTH)
    assert val(m, "respguard_upstream_bytes_sent_total") > 0
    assert val(m, "respguard_upstream_bytes_received_total") > 0

    opened = val(m, "respguard_upstream_connections_opened_total")
    c.close()
    wait_until(lambda: val(p.metrics(), "respguard_client_connections") == 0, 5, what="connection gauge at 0")
    # the client's connection went back to the pool, clean: no reset, nothing closed
    wait_until(lambda: pool_state(p.metrics(), "busy") == 0, 5, what="the connection given back")
    m = p.metrics()
    assert val(m, "respguard_pool_resets_total", result="ok") == 0
    assert val(m, "respguard_upstream_connections") == opened

    # certificates: the TLS listener's and, once probed, the upstream server's (test CA: 1 day+)
    m = p.metrics()
    certs = family(m, "respguard_cert_expiry_seconds")
    assert certs["listener 127.0.0.1:%d" % p.tls_port] > 3600, certs
    assert certs["upstream localhost:%d" % p.upstream.tls_port] > 3600, certs
    assert val(m, "respguard_config_load_success") == 1
    assert abs(val(m, "respguard_config_load_timestamp_seconds") - time.time()) < 120
    assert val(m, "respguard_ready") == 1
    assert val(m, "respguard_upstream_probes_total", result="ok") >= 1
    # probes are not pooled connections
    assert val(m, "respguard_upstream_connections_opened_total") == opened


def test_refused_connections_and_tls_failures_are_counted(respguard):
    p = respguard(admin=True, tls_listener=True, limits={"max_clients": 1, "login_timeout": "300ms"})
    before = settle(p)
    keep = p.login()
    over = RawConn(p.port, timeout=5)
    assert over.read_raw() == b"-ERR max number of clients reached\r\n"
    over.wait_closed()
    keep.close()
    # until respguard has seen the close, the next connection would be over the limit too
    wait_until(lambda: val(p.metrics(), "respguard_client_connections") == 0, 5, what="connections closed")
    # a plaintext client on the TLS listener: its handshake fails
    bad = RawConn(p.tls_port, timeout=5)
    bad.send(b"PING\r\n")
    bad.wait_closed()
    # a client that never logs in
    idle = RawConn(p.port, timeout=5)
    idle.wait_closed()
    m = p.metrics()
    refused = "respguard_client_connections_refused_total"
    assert delta(m, before, refused, reason="max_clients") == 1
    assert delta(m, before, refused, reason="tls_handshake") == 1
    assert delta(m, before, refused, reason="login_timeout") == 1
    assert delta(m, before, "respguard_client_connections_accepted_total") == 4


def test_healthz_readyz_follow_the_upstream(respguard, redis_server_factory):
    srv = redis_server_factory()
    p = respguard(admin=True, upstream_server=srv)
    assert p.http("/healthz")[0] == 200
    wait_until(lambda: p.http("/readyz")[0] == 200, 10, what="/readyz 200")
    assert p.http("/readyz")[2] == "ready\n"
    port, password = srv.tls_port, srv.password

    srv.stop()
    wait_until(lambda: p.http("/readyz")[0] == 503, 10, what="/readyz 503 with the upstream stopped")
    status, _, body = p.http("/readyz")
    assert status == 503 and body.startswith("not ready: upstream: connect: "), body
    assert p.http("/healthz") == (200, p.http("/healthz")[1], "ok\n")
    m = p.metrics()
    assert val(m, "respguard_ready") == 0
    assert val(m, "respguard_upstream_probes_total", result="failed") >= 1
    assert val(m, "respguard_upstream_failures_total", reason="connect") >= 1
    # the log says so once, not once per probe
    time.sleep(1)
    fails = p.events("upstream_probe", result="fail")
    assert len(fails) == 1, fails

    back = redis_server_factory(tls_port=port, password=password)
    wait_until(lambda: p.http("/readyz")[0] == 200, 10, what="/readyz 200 with the upstream back")
    assert back.client().ping()
    assert len(p.events("upstream_probe", result="ok")) == 2
    r = p.client()
    assert r.ping()
    r.close()


def test_readyz_refuses_an_upstream_that_rejects_respguards_login(respguard):
    p = respguard(admin=True, upstream_password="not-the-upstream-password")
    wait_until(lambda: p.http("/readyz")[0] == 503 and "auth" in p.http("/readyz")[2], 10, what="/readyz auth")
    body = p.http("/readyz")[2]
    assert body == "not ready: upstream: auth: the upstream refused respguard's login (WRONGPASS)\n", body
    assert val(p.metrics(), "respguard_upstream_failures_total", reason="auth") >= 1


def test_upstream_errors_that_echo_the_credential_stay_out_of_readyz_and_the_log(respguard,
                                                                               redis_server_factory):
    # an upstream without AUTH answers "ERR unknown command 'AUTH', with args beginning with:
    # 'default' '<password>'": only the error's code may leave respguard
    srv = redis_server_factory(extra_args=("--rename-command", "AUTH", ""))
    p = respguard(admin=True, upstream_server=srv)
    wait_until(lambda: p.http("/readyz")[0] == 503 and "auth" in p.http("/readyz")[2], 10, what="/readyz auth")
    body = p.http("/readyz")[2]
    assert body == "not ready: upstream: auth: the upstream refused respguard's login (ERR)\n", body
    c = RawConn(p.port, timeout=10)
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"-ERR respguard: upstream connection failed\r\n"
    p.wait_event("upstream_error", stage="auth")
    assert srv.password not in p.stderr_text() + body + p.http("/metrics")[2]


def test_readyz_unready_while_draining(respguard):
    p = respguard(admin=True, limits={"shutdown_timeout": "3s"})
    wait_until(lambda: p.http("/readyz")[0] == 200, 10, what="/readyz 200")
    c = p.login()
    c.send(encode("BLPOP", "admin:never", "0"))
    time.sleep(0.2)
    p.signal(15)
    wait_until(lambda: p.http("/readyz")[0] == 503, 5, what="/readyz 503 while draining")
    assert p.http("/readyz")[2] == "not ready: shutting down\n"
    assert p.http("/metrics")[0] == 200  # scrapes still work while sessions drain
    c.close()
    p.proc.wait(10)
    assert p.proc.returncode == 0


def test_admin_http_surface(respguard):
    p = respguard(admin=True)
    status, _, body = p.http("/nope")
    assert status == 404 and "/metrics" in body
    status, headers, _ = p.http("/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = p.http("/metrics", method="HEAD")
    assert status == 200 and body == ""
    # no admin key: no admin listener (the data listener is the only port)
    q = respguard()
    assert q.admin_port is None
    assert not [e for e in q.events("listening") if e.get("role") == "admin"]


def test_redis_py_through_respguard_counts_per_user(respguard):
    p = respguard(admin=True)
    r = p.client("ops")
    pipe = r.pipeline(transaction=True)
    for i in range(10):
        pipe.incr("metrics:counter")
    pipe.execute()
    with pytest.raises(redis.exceptions.ResponseError):
        r.execute_command("CONFIG", "SET", "maxmemory", "1")
    r.close()
    m = p.metrics()
    cmd = "respguard_commands_total"
    assert val(m, cmd, user="ops", category="write", verdict="allowed") == 10
    assert val(m, cmd, user="ops", category="transaction", verdict="allowed") == 2  # MULTI, EXEC
    assert val(m, cmd, user="ops", category="admin", verdict="denied") == 1
    assert val(m, cmd, user="web", category="write", verdict="allowed") == 0


def test_upstream_certificate_failure_is_classified(respguard):
    # the upstream's certificate does not name this server_name: verification fails
    p = respguard(admin=True, server_name="wrong.example")
    wait_until(lambda: p.http("/readyz")[0] == 503 and "tls:" in p.http("/readyz")[2], 10, what="/readyz tls")
    body = p.http("/readyz")[2]
    assert "certificate verify failed" in body, body
    c = RawConn(p.port, timeout=10)
    assert c.call_raw("AUTH", "web", PASSWORDS["web"]) == b"-ERR respguard: upstream connection failed\r\n"
    m = p.metrics()
    assert val(m, "respguard_upstream_failures_total", reason="certificate") >= 2  # probes and the pool
    assert val(m, "respguard_upstream_connections_opened_total") == 0
    assert val(m, "respguard_ready") == 0


def test_metrics_scraped_while_clients_work(respguard):
    """The admin thread sums the worker's counters while the worker writes them (scripts/test.sh
    runs this file against a ThreadSanitizer build too): scrapes during logins, commands,
    refusals and closes see every counter and histogram only grow, and no gauge below zero."""
    p = respguard(admin=True)
    settle(p)
    stop = threading.Event()
    errors = []

    def work(i):
        try:
            while not stop.is_set():
                r = p.client("web")
                r.set("scrape:%d" % i, "v")
                r.get("scrape:%d" % i)
                with pytest.raises(redis.exceptions.ResponseError):
                    r.execute_command("FLUSHALL")
                r.close()
                with pytest.raises(redis.exceptions.ResponseError, match="WRONGPASS"):
                    p.client("web", password="wrong").ping()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in workers:
        t.start()
    grows = ("_total", "_count", "_sum", "_bucket")
    last = {}
    try:
        for _ in range(20):
            m = p.metrics()
            assert p.http("/readyz")[0] == 200
            for k, v in m.items():
                if k[0].endswith(grows):
                    assert v >= last.get(k, 0), (k, v, last.get(k))
                    last[k] = v
                else:
                    assert v >= 0 or k[0] == "respguard_cert_expiry_seconds", (k, v)
    finally:
        stop.set()
        for t in workers:
            t.join(10)
    assert not errors, errors
    assert val(p.metrics(), "respguard_commands_total", user="web", category="dangerous", verdict="denied") > 0
