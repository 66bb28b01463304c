"""Configuration reload: SIGHUP (and, with `watch: yes`, any change to the config file or a file
it names) parses and validates a whole new configuration, then swaps it in; on an error the
running one stays, and the error is logged with file:line:column. Live sessions follow Redis's
ACL semantics: sessions of a removed or disabled user are closed, changed rules apply from a
session's next command, a new password leaves sessions logged in with the old one alone.
Listener certificates apply to new handshakes, upstream credentials to new upstream connections
(pooled connections of the old credential are closed once free). Keys that cannot change live
are logged as needing a restart; everything else is applied."""

import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from helpers import (DELETE, PASSWORDS, POOL_MODE, deep_merge, default_users, free_port,
                     metric_value as val, next_reload, sighup, to_yaml, unique, wait_until, write_config)
from resp_util import ConnectionClosed, bulk, encode

pytestmark = pytest.mark.proxy_only

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
NOPERM_KEYS = b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"


def acl(password, rules="~* &* +@all"):
    return "on >%s %s" % (password, rules)


# ---------------------------------------------------------------------------
# reloading
# ---------------------------------------------------------------------------

def reload_ok(p, cfg=None):
    """Write cfg (when given) as p's config and SIGHUP p; returns the reload line, which must
    say ok and count the new config's users."""
    if cfg is not None:
        write_config(p, cfg)
        p.config = cfg
    ev = sighup(p)
    assert (ev.get("level"), ev.get("result"), ev.get("trigger")) == ("info", "ok", "signal"), ev
    assert ev.get("users") == len(p.config["users"]), (ev, sorted(p.config["users"]))
    return ev


def reload_by_watch(p, change):
    """Run change() on files p watches; returns the one reload line it brings within 2 s (the
    kubelet's swap and an editor's write are several file events each: debounced, one reload)."""
    seen = len(p.events("reload"))
    change()
    ev = next_reload(p, seen, timeout=2.0)
    time.sleep(0.5)  # well past the ~200 ms debounce: a second reload would be here by now
    assert len(p.events("reload")) == seen + 1, p.events("reload")[seen:]
    assert ev.get("trigger") == "watch", ev
    return ev


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def wrongpass(p, user, password):
    with p.raw() as c:
        return c.call_raw("AUTH", user, password) == WRONGPASS


# ---------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------

def cert_der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def served_cert(p):
    """DER of the certificate a new TLS connection to p's TLS listener is shown."""
    c = p.raw_tls()
    try:
        return c.sock.getpeercert(binary_form=True)
    finally:
        c.close()


def with_cert(cfg, certs, name):
    """cfg with its TLS listener serving certs' NAME.crt and NAME.key."""
    tls = {"cert_file": certs.path(name + ".crt"), "key_file": certs.path(name + ".key")}
    listeners = [dict(lst, tls=dict(lst["tls"], **tls)) if "tls" in lst else lst
                 for lst in cfg["listeners"]]
    return dict(cfg, listeners=listeners)


# ---------------------------------------------------------------------------
# 1. reloads under load, then a bad config
# ---------------------------------------------------------------------------

RELOADS = 50
BENCH_SECONDS = 20  # how long the benchmark is sized to run: it must outlast the 50 reloads
TEMP_PASSWORD = "temppass-reload"


def benchmark(p, requests, log):
    """redis-benchmark as web through p's plaintext listener: 50 clients, `requests` SETs, then
    as many GETs (it exits non-zero at the first error reply or dropped connection)."""
    return subprocess.Popen(["redis-benchmark", "-h", "127.0.0.1", "-p", str(p.port), "--user", "web",
                             "-a", PASSWORDS["web"], "-c", "50", "-n", str(requests), "-t", "set,get",
                             "-q"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def finish(bench, log_path, timeout):
    """Wait for a benchmark; returns (exit code, its output)."""
    try:
        rc = bench.wait(timeout)
    except subprocess.TimeoutExpired:
        bench.kill()
        bench.wait(10)
        rc = "killed after %ds" % timeout
    with open(log_path, "rb") as f:
        return rc, f.read().decode("utf-8", "replace")


def requests_lasting(p, seconds, log_path):
    """Requests per test that keep the benchmark busy about `seconds` through p, measured with a
    short run (release and sanitizer builds differ several-fold)."""
    n = 20000
    start = time.monotonic()
    with open(log_path, "wb") as log:
        bench = benchmark(p, n, log)
    rc, out = finish(bench, log_path, 60)
    assert rc == 0, "calibration run of redis-benchmark failed (%s):\n%s" % (rc, out[-2000:])
    return int(n * seconds / (time.monotonic() - start))


def upstream_calls(direct, cmd):
    return direct.info("commandstats").get("cmdstat_" + cmd, {}).get("calls", 0)


def test_fifty_reloads_under_load_drop_nothing_then_a_bad_config_changes_nothing(respguard, certs, direct,
                                                                                  tmp_path):
    # A: an extra user and a high rate limit for web; B: no extra user, another (still high) rate
    # limit and the listener's other certificate. The benchmark runs as web, in both.
    users_a = default_users()
    users_a["temp"] = {"acl": acl(TEMP_PASSWORD, "~temp:* +@read")}
    users_a["web"]["rate_limit"] = {"commands_per_second": 10000000, "burst": 10000000}
    p = respguard(tls_listener=True, admin=True, users=users_a)
    p.secrets.append(TEMP_PASSWORD)
    config_a = p.config
    config_b = with_cert(deep_merge(config_a, {"users": {"temp": DELETE, "web": {"rate_limit": {
        "commands_per_second": 9000000, "burst": 9000000}}}}), certs, "server2")
    cert_a, cert_b = cert_der(certs.path("server.crt")), cert_der(certs.path("server2.crt"))
    rounds = [(config_b, cert_b), (config_a, cert_a)]
    assert served_cert(p) == cert_a

    m = p.metrics()
    assert val(m, "respguard_config_last_reload_success") == 1
    assert val(m, "respguard_config_reloads_total", result="ok") == 0
    loaded_at_start = val(m, "respguard_config_load_timestamp_seconds")

    held = p.login("web")  # a session that lives through every reload
    requests = requests_lasting(p, BENCH_SECONDS, str(tmp_path / "calibration.log"))
    sets, gets = upstream_calls(direct, "set"), upstream_calls(direct, "get")
    log_path = str(tmp_path / "benchmark.log")
    with open(log_path, "wb") as log:
        bench = benchmark(p, requests, log)
    try:
        wait_until(lambda: upstream_calls(direct, "set") > sets or bench.poll() is not None, 10,
                   what="redis-benchmark's first SETs upstream")
        for i in range(RELOADS):
            cfg, cert = rounds[i % 2]
            last_at = time.time()
            ev = reload_ok(p, cfg)
            assert ev.get("sessions_closed") == 0, ev  # temp never has a session
            assert served_cert(p) == cert, "reload %d: the listener's certificate" % (i + 1)
        assert bench.poll() is None, (
            "redis-benchmark (%d requests per test) ended before the reloads did: they do not overlap"
            % requests)
    except BaseException:
        bench.kill()  # a failed reload fails the test now, not when the benchmark is done
        bench.wait(10)
        raise
    rc, out = finish(bench, log_path, 4 * BENCH_SECONDS)
    assert rc == 0 and "error" not in out.lower(), "redis-benchmark exit %s:\n%s" % (rc, out[-3000:])
    # every request of every test reached the upstream
    assert upstream_calls(direct, "set") - sets == requests
    assert upstream_calls(direct, "get") - gets == requests

    assert len(p.events("reload", result="ok")) == RELOADS
    m = p.metrics()
    assert val(m, "respguard_config_reloads_total", result="ok") == RELOADS
    assert val(m, "respguard_config_reloads_total", result="failed") == 0
    assert val(m, "respguard_config_last_reload_success") == 1
    assert val(m, "respguard_config_last_reload_timestamp_seconds") >= int(last_at)
    loaded_at = val(m, "respguard_config_load_timestamp_seconds")
    assert loaded_at >= int(last_at) and loaded_at > loaded_at_start, (loaded_at, last_at, loaded_at_start)

    # The running config is A. B with an unknown key at a known line is refused as a whole.
    text = write_config(p, deep_merge(config_b, {"limits": {"max_clientz": 10}}))
    line = text.splitlines().index("  max_clientz: 10") + 1
    failed_at = time.time()
    ev = sighup(p)
    assert (ev.get("level"), ev.get("result"), ev.get("trigger")) == ("error", "failed", "signal"), ev
    assert ev.get("reason", "").startswith("%s:%d:3: " % (p.config_path, line)), (line, ev)
    assert "max_clientz" in ev["reason"], ev
    m = p.metrics()
    assert val(m, "respguard_config_reloads_total", result="failed") == 1
    assert val(m, "respguard_config_reloads_total", result="ok") == RELOADS
    assert val(m, "respguard_config_last_reload_success") == 0
    assert val(m, "respguard_config_last_reload_timestamp_seconds") >= int(failed_at)
    assert val(m, "respguard_config_load_timestamp_seconds") == loaded_at
    # nothing of B was applied: temp still logs in, the certificate is still A's
    assert held.call_raw("PING") == PONG
    p.login("web").close()
    p.login("temp", TEMP_PASSWORD).close()
    assert served_cert(p) == cert_a


# ---------------------------------------------------------------------------
# 2.-5. users and live sessions
# ---------------------------------------------------------------------------

def test_password_rotation_keeps_sessions_and_only_the_new_password_logs_in(respguard):
    p = respguard()
    held = p.login("web")
    new = "webpass-rotated"
    p.secrets.append(new)
    ev = reload_ok(p, deep_merge(p.config, {"users": {"web": {"acl": acl(new)}}}))
    assert ev.get("sessions_closed") == 0, ev
    k = unique()
    assert held.call_raw("SET", k, "v") == OK
    assert held.call_raw("GET", k) == b"$1\r\nv\r\n"
    p.login("web", new).close()
    assert wrongpass(p, "web", PASSWORDS["web"])


def test_certificate_rotation_serves_new_handshakes_and_keeps_tls_sessions(respguard, certs, tmp_path):
    # the listener's files are replaced in place, as a certificate manager renews them
    cert, key = str(tmp_path / "listener.crt"), str(tmp_path / "listener.key")

    def install(name):
        shutil.copyfile(certs.path(name + ".crt"), cert)
        shutil.copyfile(certs.path(name + ".key"), key)

    install("server")
    p = respguard(overrides={"listeners": [
        {"bind": "127.0.0.1:%d" % free_port()},
        {"bind": "127.0.0.1:%d" % free_port(), "tls": {"cert_file": cert, "key_file": key}}]})
    assert served_cert(p) == cert_der(certs.path("server.crt"))
    held = p.raw_tls()
    assert held.call_raw("AUTH", "web", PASSWORDS["web"]) == OK

    install("server2")
    reload_ok(p)
    assert served_cert(p) == cert_der(certs.path("server2.crt"))
    assert held.call_raw("PING") == PONG
    fresh = p.raw_tls()
    assert fresh.call_raw("AUTH", "web", PASSWORDS["web"]) == OK
    assert fresh.call_raw("PING") == PONG


def test_sessions_of_a_removed_or_disabled_user_are_closed_and_others_go_on(respguard):
    users = default_users()
    users["gone"] = {"acl": acl("gonepass")}
    users["paused"] = {"acl": acl("pausedpass")}
    p = respguard(users=users)
    gone = [p.login("gone", "gonepass") for _ in range(2)]
    paused = p.login("paused", "pausedpass")
    web = p.login("web")

    ev = reload_ok(p, deep_merge(p.config, {"users": {
        "gone": DELETE, "paused": {"acl": "off >pausedpass ~* &* +@all"}}}))
    assert ev.get("sessions_closed") == 3, ev
    for c in gone + [paused]:
        # closed by the reload itself, without a request, and silently (as expiry closes them)
        assert c.wait_closed(timeout=3)
        assert c.buf == b"", "unexpected bytes before the close: %r" % c.buf
    assert web.call_raw("PING") == PONG
    assert wrongpass(p, "gone", "gonepass")
    assert wrongpass(p, "paused", "pausedpass")


def test_a_narrowed_acl_refuses_the_sessions_next_command(respguard):
    users = default_users()
    users["app"] = {"acl": acl("apppass")}
    p = respguard(users=users)
    c = p.login("app", "apppass")
    mine, other = unique("app"), unique("other")
    assert c.call_raw("GET", other) == b"$-1\r\n"
    assert c.call_raw("DEL", mine) == b":0\r\n"

    ev = reload_ok(p, deep_merge(p.config, {"users": {"app": {"acl": acl("apppass", "~app:* +get +set")}}}))
    assert ev.get("sessions_closed") == 0, ev
    assert c.call_raw("GET", other) == NOPERM_KEYS
    # (FLUSHDB would prove nothing: the guard refuses it under +@all too)
    assert c.call_raw("DEL", mine) == b"-NOPERM this user has no permissions to run the 'del' command\r\n"
    assert c.call_raw("SET", mine, "v") == OK
    assert c.call_raw("GET", mine) == b"$1\r\nv\r\n"


# ---------------------------------------------------------------------------
# 6. watch
# ---------------------------------------------------------------------------

def kube_publish(mount, files):
    """Publish files ({name: text}) in mount as the kubelet updates a ConfigMap or Secret volume:
    written to a new ..<timestamp> directory, the ..data symlink atomically renamed to point
    there, each name a symlink to ..data/<name>, the previous directory removed."""
    os.makedirs(mount, exist_ok=True)
    new = tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S."), dir=mount)
    for name, text in files.items():
        write_file(os.path.join(new, name), text)
    data = os.path.join(mount, "..data")
    old = os.readlink(data) if os.path.islink(data) else None
    os.symlink(os.path.basename(new), os.path.join(mount, "..data_tmp"))
    os.rename(os.path.join(mount, "..data_tmp"), data)
    for name in files:
        if not os.path.islink(os.path.join(mount, name)):
            os.symlink(os.path.join("..data", name), os.path.join(mount, name))
    if old:
        shutil.rmtree(os.path.join(mount, old))


def test_watch_reloads_on_kubernetes_style_secret_and_configmap_swaps(respguard, tmp_path):
    config_mount, secret_mount = str(tmp_path / "configmap"), str(tmp_path / "secret")
    kube_publish(secret_mount, {"web.acl": acl(PASSWORDS["web"])})
    kube_publish(config_mount, {"respguard.yaml": ""})  # the fixture writes it through the symlink
    users = default_users()
    users["web"] = {"acl_file": os.path.join(secret_mount, "web.acl")}
    p = respguard(users=users, overrides={"watch": True},
                  config_path=os.path.join(config_mount, "respguard.yaml"))
    held = p.login("web")

    new = "webpass-from-the-secret"
    p.secrets.append(new)
    ev = reload_by_watch(p, lambda: kube_publish(secret_mount, {"web.acl": acl(new)}))
    assert ev.get("result") == "ok", ev
    p.login("web", new).close()
    assert wrongpass(p, "web", PASSWORDS["web"])
    assert held.call_raw("PING") == PONG

    cfg = deep_merge(p.config, {"users": {"added": {"acl": acl("addedpass")}}})
    ev = reload_by_watch(p, lambda: kube_publish(config_mount, {"respguard.yaml": to_yaml(cfg) + "\n"}))
    assert ev.get("result") == "ok" and ev.get("users") == len(cfg["users"]), ev
    p.login("added", "addedpass").close()
    p.login("web", new).close()


def test_watch_reloads_when_a_referenced_file_is_edited(respguard, tmp_path):
    secrets_dir = tmp_path / "secrets"  # its own directory: nothing else happens there
    secrets_dir.mkdir()
    acl_file = str(secrets_dir / "web.acl")
    write_file(acl_file, acl(PASSWORDS["web"]))
    users = default_users()
    users["web"] = {"acl_file": acl_file}
    p = respguard(users=users, overrides={"watch": True})
    held = p.login("web")

    # a typo first: refused, logged with where it is, and web's password stays
    ev = reload_by_watch(p, lambda: write_file(acl_file, acl("typo-pass", "~* +nosuchcommand")))
    assert (ev.get("level"), ev.get("result")) == ("error", "failed"), ev
    assert re.match(r"/\S+:\d+:\d+: .*nosuchcommand", ev.get("reason", "")), ev
    p.login("web").close()

    new = "webpass-edited"
    p.secrets.append(new)
    ev = reload_by_watch(p, lambda: write_file(acl_file, acl(new)))
    assert ev.get("result") == "ok", ev
    p.login("web", new).close()
    assert wrongpass(p, "web", PASSWORDS["web"])
    assert held.call_raw("PING") == PONG


# ---------------------------------------------------------------------------
# 7. keys that need a restart
# ---------------------------------------------------------------------------

def test_a_changed_bind_needs_a_restart_and_the_rest_is_applied(respguard):
    p = respguard()
    moved = free_port()
    reload_ok(p, deep_merge(p.config, {"listeners": [{"bind": "127.0.0.1:%d" % moved}],
                                       "users": {"late": {"acl": acl("latepass")}}}))
    warn = p.wait_event("reload_restart_required")
    assert warn.get("level") == "warn", warn
    assert [k.strip() for k in warn.get("keys", "").split(",")] == ["listeners[0].bind"], warn
    p.login("late", "latepass").close()  # on the old port, which still serves
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", moved), timeout=2).close()


# ---------------------------------------------------------------------------
# 8. upstream credential rotation
# ---------------------------------------------------------------------------

def upstream_logins(admin):
    """{upstream user: [last command of each of its connections]} from CLIENT LIST, admin's own
    connection left out."""
    me = admin.client_id()
    out = {}
    for e in admin.client_list():
        if int(e["id"]) != me:
            out.setdefault(e["user"], []).append(e["cmd"])
    return out


def test_upstream_credential_rotation_moves_new_commands_and_drains_the_old_login(
        respguard, redis_server_factory, tmp_path):
    srv = redis_server_factory()
    admin = srv.client()
    passwords = {u: "upstream-%s-%s" % (u, secrets.token_hex(8)) for u in ("userA", "userB")}
    for user, pw in passwords.items():
        admin.execute_command("ACL", "SETUSER", user, "on", ">" + pw, "~*", "&*", "+@all")
    password_file = str(tmp_path / "upstream.password")

    def credential(user):
        write_file(password_file, passwords[user] + "\n")
        return {"url": "rediss://%s@localhost:%d" % (user, srv.tls_port), "password_file": password_file}

    # two connections kept idle: some are free at the reload
    p = respguard(upstream_server=srv,
                  overrides={"upstream": dict(credential("userA"), pool={"size": 4, "min_idle": 2})})
    p.secrets.extend(passwords.values())
    # STRLEN marks the connection a client's command ran on (CLIENT LIST's cmd); nothing else uses it
    before = p.login("web")
    assert before.call_raw("STRLEN", "reload:probe") == b":0\r\n"
    logins = upstream_logins(admin)
    assert "strlen" in logins.get("userA", []) and "userB" not in logins, logins

    reload_ok(p, deep_merge(p.config, {"upstream": credential("userB")}))
    assert not p.events("reload_restart_required")
    after = p.login("web")
    assert after.call_raw("STRLEN", "reload:probe") == b":0\r\n"
    assert "strlen" in upstream_logins(admin).get("userB", []), upstream_logins(admin)
    # the free userA connections close at once (in session mode `before` still holds one)
    wait_until(lambda: len(upstream_logins(admin).get("userA", [])) <= 1, 5,
               what="idle userA connections closed")
    assert before.call_raw("PING") == PONG
    before.close()
    wait_until(lambda: "userA" not in upstream_logins(admin), 5, what="every userA connection closed")
    assert after.call_raw("PING") == PONG
    assert "userB" in upstream_logins(admin)
    admin.close()


# ---------------------------------------------------------------------------
# 9. regressions: what a reload must not leave behind
# ---------------------------------------------------------------------------

ERR_UPSTREAM_FAILED = b"-ERR respguard: upstream connection failed\r\n"


def upstream_user(admin, name, rules=("~*", "&*", "+@all")):
    """ACL SETUSER name on the server admin speaks to; returns its (random) password."""
    pw = "upstream-%s-%s" % (name, secrets.token_hex(8))
    admin.execute_command("ACL", "SETUSER", name, "reset", "on", ">" + pw, *rules)
    return pw


def credentials(admin, **creds):
    """upstream.credentials for creds (name=upstream user), each user made on the upstream with a
    fresh password: (the credentials section, {upstream user: password})."""
    pw = {user: upstream_user(admin, user) for user in creds.values()}
    return ({name: {"username": user, "password": pw[user]} for name, user in creds.items()}, pw)


def pin(c):
    """In multiplex mode, SELECT 1 gives c an upstream connection of its own (session mode: it
    has one anyway)."""
    if POOL_MODE == "multiplex":
        assert c.call_raw("SELECT", "1") == OK


def upstream_ids(admin):
    """The ids of the upstream's client connections, admin's own left out."""
    me = admin.client_id()
    return {int(e["id"]) for e in admin.client_list() if int(e["id"]) != me}


@pytest.mark.parametrize("change", ["remapped", "removed"])
def test_a_session_owning_a_connection_of_a_credential_its_user_left_is_closed(respguard, redis_server_factory,
                                                                               change):
    # web runs as userB (credB); the reload maps it to credA, and removes credB or keeps it
    srv = redis_server_factory()
    admin = srv.client()
    creds, passwords = credentials(admin, credA="userA", credB="userB")
    users = default_users()
    users["web"]["upstream_credential"] = "credB"
    p = respguard(upstream_server=srv, users=users, overrides={"upstream": {"credentials": creds}})
    p.secrets.extend(passwords.values())
    held = p.login("web")
    pin(held)  # its own upstream connection, logged in as userB
    assert held.call_raw("STRLEN", "reload:probe") == b":0\r\n"
    shared = p.login("web") if POOL_MODE == "multiplex" else None  # multiplex: one that shares
    if shared:
        assert shared.call_raw("PING") == PONG
    assert "strlen" in upstream_logins(admin).get("userB", []), upstream_logins(admin)

    over = {"users": {"web": {"upstream_credential": "credA"}}}
    if change == "removed":
        over["upstream"] = {"credentials": {"credB": DELETE}}
    ev = reload_ok(p, deep_merge(p.config, over))
    # going on would keep userB's rights, which web was just moved away from
    assert ev.get("sessions_closed") == 1, ev
    closed = p.wait_event("session_closed", user="web", by="reload")
    assert closed.get("reason") == "upstream credential changed", closed
    try:
        held.send_cmd("RESET")  # (it once reset a connection of a retired pool: a crash)
    except OSError:
        pass
    assert held.wait_closed(timeout=3)
    assert held.buf == b"", "a reply after the reload closed the session: %r" % held.buf
    time.sleep(0.2)
    assert p.proc.poll() is None, "respguard exited with %s" % p.proc.returncode

    fresh = p.login("web")
    assert fresh.call_raw("TTL", "reload:probe") == b":-2\r\n"
    assert "ttl" in upstream_logins(admin).get("userA", []), upstream_logins(admin)
    if shared:  # not closed, and its next command runs as userA
        assert shared.call_raw("PTTL", "reload:probe") == b":-2\r\n"
        assert "pttl" in upstream_logins(admin).get("userA", []), upstream_logins(admin)
        assert shared.call_raw("RESET") == b"+RESET\r\n"
        assert shared.call_raw("AUTH", "web", PASSWORDS["web"]) == OK
        assert shared.call_raw("PING") == PONG
    if change == "removed":
        wait_until(lambda: "userB" not in upstream_logins(admin), 5, what="every userB connection closed")
    admin.close()


def test_multiplex_pinned_sessions_close_and_shared_ones_move_to_the_new_credential(respguard,
                                                                                     redis_server_factory):
    srv = redis_server_factory()
    admin = srv.client()
    # a read-only upstream user: its NOPERM for SET can only come from the upstream (web has +@all)
    ro_pw = upstream_user(admin, "ro", ("~*", "&*", "+@read", "+ping", "+hello", "+client|setname", "+auth",
                                        "+select", "+reset", "+echo"))
    p = respguard(upstream_server=srv, overrides={"upstream": {
        "pool": {"mode": "multiplex"}, "credentials": {"ro": {"username": "ro", "password": ro_pw}}}})
    p.secrets.append(ro_pw)
    k, queued = unique(), unique()
    shared = p.login("web")
    assert shared.call_raw("SET", k, "1") == OK
    resp3 = p.login("web")
    assert resp3.call_raw("HELLO", "3")[:1] == b"%"  # RESP3 pins
    multi = p.login("web")
    assert multi.call_raw("MULTI") == OK  # a transaction pins
    assert multi.call_raw("SET", queued, "v") == b"+QUEUED\r\n"

    ev = reload_ok(p, deep_merge(p.config, {"users": {"web": {"upstream_credential": "ro"}}}))
    assert ev.get("sessions_closed") == 2, ev
    closed = p.events("session_closed", user="web", by="reload")
    assert [e.get("reason") for e in closed] == ["upstream credential changed"] * 2, closed
    for c in (resp3, multi):
        assert c.wait_closed(timeout=3)
    assert shared.call_raw("SET", k, "2").startswith(b"-NOPERM"), "SET ran as the old upstream user"
    assert shared.call_raw("STRLEN", k) == b":1\r\n"
    assert "strlen" in upstream_logins(admin).get("ro", []), upstream_logins(admin)
    assert admin.get(k) == b"1"
    assert admin.exists(queued) == 0
    admin.close()


def test_a_changed_upstream_host_needs_a_restart_and_new_connections_verify_the_running_one(
        respguard, redis_server_factory):
    srv = redis_server_factory()
    admin = srv.client()
    # a second password of the URL's user: changing it too makes the reload replace every
    # connection, so that the check below is about connections made after it
    new_pw = "upstream-new-" + secrets.token_hex(8)
    admin.execute_command("ACL", "SETUSER", "default", ">" + new_pw)
    p = respguard(upstream_server=srv)  # no server_name: the URL's host is what is verified
    p.secrets.append(new_pw)
    before = p.login("web")
    assert before.call_raw("PING") == PONG
    old_ids = upstream_ids(admin)

    url = "rediss://default:%s@other.example:%d" % (new_pw, srv.tls_port)  # other.example: no address
    ev = reload_ok(p, deep_merge(p.config, {"upstream": {"url": url}}))
    assert ev.get("pools_drained") == 1, ev
    warn = p.wait_event("reload_restart_required")
    assert "upstream.url" in [k.strip() for k in warn.get("keys", "").split(",")], warn
    fresh = p.login("web")  # to localhost still, its certificate verified for localhost
    assert fresh.call_raw("STRLEN", "reload:probe") == b":0\r\n"
    now = [e for e in admin.client_list() if e["cmd"] == "strlen"]
    assert now and all(int(e["id"]) not in old_ids for e in now), (now, old_ids)
    assert not p.events("upstream_error"), p.events("upstream_error")
    admin.close()


def admin_answer(port, source):
    """What the admin listener on port answers a GET /healthz from source: the first bytes, or
    the error of a refused connection."""
    s = socket.socket()
    s.settimeout(3)
    try:
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        return s.recv(100)
    except OSError as e:
        return repr(e).encode()
    finally:
        s.close()


def test_admin_allow_from_stays_with_the_running_bind(respguard):
    port = free_port()
    p = respguard(admin=True, overrides={"admin": {"bind": "0.0.0.0:%d" % port,
                                                   "allow_from": ["127.0.0.1/32"]}})
    assert admin_answer(port, "127.0.0.1").startswith(b"HTTP/1.1 200")
    assert not admin_answer(port, "127.0.0.5").startswith(b"HTTP"), "127.0.0.5 is not allowed"

    # the new file would be fine (a loopback bind needs no allow_from), but its bind needs a
    # restart: the running 0.0.0.0 one keeps the allow_from it was checked against
    reload_ok(p, deep_merge(p.config, {"admin": {"bind": "127.0.0.1:%d" % port, "allow_from": DELETE}}))
    warn = p.wait_event("reload_restart_required")
    assert [k.strip() for k in warn.get("keys", "").split(",")] == ["admin.bind"], warn
    answer = admin_answer(port, "127.0.0.5")
    assert not answer.startswith(b"HTTP"), "the admin port answers 127.0.0.5 after the reload: %r" % answer
    assert admin_answer(port, "127.0.0.1").startswith(b"HTTP/1.1 200")


def test_a_credential_named_url_is_not_the_urls_login(respguard, redis_server_factory):
    srv = redis_server_factory()
    admin = srv.client()
    pw = upstream_user(admin, "userB")
    users = default_users()
    users["web"]["upstream_credential"] = "url"  # a credential called "url"; ops uses the URL's login
    p = respguard(upstream_server=srv, users=users, overrides={"upstream": {"credentials": {
        "url": {"username": "userB", "password": pw}}}})
    p.secrets.append(pw)

    def run_as(user, cmd):
        """The upstream user a fresh session of user runs cmd (a key-reading probe) as."""
        c = p.login(user)
        want = b":-2\r\n" if cmd.endswith("TTL") else b":0\r\n"
        assert c.call_raw(cmd, "reload:probe") == want
        c.close()
        return [u for u, cmds in upstream_logins(admin).items() if cmd.lower() in cmds]

    assert run_as("ops", "STRLEN") == ["default"]
    assert run_as("web", "EXISTS") == ["userB"]
    reload_ok(p)  # the same file again
    # (other commands than before: a connection's last command may be left from before)
    assert run_as("ops", "TTL") == ["default"]
    assert run_as("web", "PTTL") == ["userB"]
    admin.close()


def test_a_reload_that_changes_a_users_rules_aborts_its_open_transaction(respguard, direct):
    users = default_users()
    users["app"] = {"acl": acl("apppass")}
    p = respguard(users=users)
    c = p.login("app", "apppass")
    k = unique()
    assert c.call_raw("MULTI") == OK
    assert c.call_raw("SET", k, "v") == b"+QUEUED\r\n"  # allowed when queued, not any more
    ev = reload_ok(p, deep_merge(p.config, {"users": {"app": {"acl": acl("apppass", "~* &* +get +multi +exec")}}}))
    assert ev.get("sessions_closed") == 0, ev
    assert c.call_raw("EXEC") == b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    assert direct.exists(k) == 0
    assert c.call_raw("GET", k) == b"$-1\r\n"  # the session goes on, under the new rules
    assert c.call_raw("SET", k, "v") == b"-NOPERM this user has no permissions to run the 'set' command\r\n"


def test_a_password_change_leaves_an_open_transaction_alone(respguard, direct):
    users = default_users()
    users["app"] = {"acl": acl("apppass")}
    p = respguard(users=users)
    p.secrets.append("apppass-rotated")
    c = p.login("app", "apppass")
    k = unique()
    assert c.call_raw("MULTI") == OK
    assert c.call_raw("SET", k, "v") == b"+QUEUED\r\n"
    ev = reload_ok(p, deep_merge(p.config, {"users": {"app": {"acl": acl("apppass-rotated")}}}))
    assert ev.get("sessions_closed") == 0, ev
    assert c.call_raw("EXEC") == b"*1\r\n+OK\r\n"
    assert direct.get(k) == b"v"


def test_subscribers_of_a_user_whose_rules_change_are_closed_a_new_password_keeps_them(respguard, direct):
    users = default_users()
    users["narrowed"] = {"acl": acl("narrowedpass")}
    users["rotated"] = {"acl": acl("rotatedpass")}
    p = respguard(users=users)
    p.secrets.append("rotatedpass-new")
    ch = unique("news")
    subs = {}
    for name in ("narrowed", "rotated"):
        subs[name] = c = p.login(name, name + "pass")
        assert c.call_raw("SUBSCRIBE", ch) == b"*3\r\n$9\r\nsubscribe\r\n%s:1\r\n" % bulk(ch)

    ev = reload_ok(p, deep_merge(p.config, {"users": {
        "narrowed": {"acl": acl("narrowedpass", "~* &other:* +@all")},  # ch is not allowed any more
        "rotated": {"acl": acl("rotatedpass-new")}}}))
    assert ev.get("sessions_closed") == 1, ev
    assert p.wait_event("session_closed", user="narrowed", by="reload")
    assert subs["narrowed"].wait_closed(timeout=3)
    assert subs["narrowed"].buf == b""
    assert direct.publish(ch, "after-the-reload") == 1
    assert subs["rotated"].read_raw() == b"*3\r\n$7\r\nmessage\r\n%s$16\r\nafter-the-reload\r\n" % bulk(ch)


def test_a_session_closed_by_a_reload_hands_its_connection_to_a_waiting_login(respguard, certs):
    # session mode, one connection: a login at connect (nopass default on the TLS listener) waits
    # for the connection a session of a user the reload removes holds
    users = default_users()
    users["default"] = {"acl": "on nopass +@all ~* &*"}
    users["gone"] = {"acl": acl("gonepass")}
    p = respguard(users=users, tls_listener=True, limits={"login_timeout": "10s"},
                  overrides={"upstream": {"pool": {"mode": "session", "size": 1, "min_idle": 1}}})
    waiting_raw = socket.create_connection(("127.0.0.1", p.tls_port), timeout=5)  # its session first
    time.sleep(0.3)
    holder = p.login("gone", "gonepass")
    assert holder.call_raw("PING") == PONG
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    waiting = ctx.wrap_socket(waiting_raw, server_hostname="localhost")  # logs in as default: waits
    try:
        waiting.settimeout(0.5)
        waiting.sendall(b"*1\r\n$4\r\nPING\r\n")
        with pytest.raises(socket.timeout):
            waiting.recv(100)  # no connection for it yet
        ev = reload_ok(p, deep_merge(p.config, {"users": {"gone": DELETE}}))
        assert ev.get("sessions_closed") == 1, ev
        assert holder.wait_closed(timeout=3)
        waiting.settimeout(5)
        assert waiting.recv(100) == PONG
        assert p.proc.poll() is None
    finally:
        waiting.close()
    p.login("web").close()


@pytest.mark.parametrize("change", ["remapped", "removed"])
def test_a_login_waiting_in_a_pool_its_user_left_waits_in_the_new_one(respguard, redis_server_factory, certs,
                                                                    change):
    # session mode, one connection per credential: a login at connect (nopass default on the TLS
    # listener) waits for credB's only connection, which holder keeps; the reload maps default
    # to credA (and, "removed", deletes credB): the login is served by credA at once, without
    # holder letting go, and runs as credA's upstream user
    srv = redis_server_factory()
    admin = srv.client()
    creds, _ = credentials(admin, credA="userA", credB="userB")
    users = default_users()
    users["default"] = {"acl": "on nopass +@all ~* &*", "upstream_credential": "credB"}
    users["holder"] = {"acl": acl("holderpass"), "upstream_credential": "credB"}
    p = respguard(upstream_server=srv, users=users, tls_listener=True, limits={"login_timeout": "10s"},
                  overrides={"upstream": {"credentials": creds,
                                          "pool": {"mode": "session", "size": 1, "min_idle": 1}}})
    holder = p.login("holder", "holderpass")
    assert holder.call_raw("PING") == PONG
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    waiting = ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.tls_port), timeout=5),
                              server_hostname="localhost")
    try:
        waiting.settimeout(0.5)
        key = unique("waiter")
        waiting.sendall(b"*2\r\n$6\r\nSTRLEN\r\n$%d\r\n%s\r\n" % (len(key), key.encode()))
        with pytest.raises(socket.timeout):
            waiting.recv(100)  # no connection for it yet
        over = {"users": {"default": {"upstream_credential": "credA"}}}
        if change == "removed":
            over["upstream"] = {"credentials": {"credB": DELETE}}
            over["users"]["holder"] = {"upstream_credential": "credA"}
        ev = reload_ok(p, deep_merge(p.config, over))
        assert ev.get("sessions_closed") == (1 if change == "removed" else 0), ev
        waiting.settimeout(3)
        assert waiting.recv(100) == b":0\r\n"
        assert "strlen" in upstream_logins(admin).get("userA", []), upstream_logins(admin)
        if change == "remapped":
            assert holder.call_raw("PING") == PONG  # untouched, still on credB
    finally:
        waiting.close()
        holder.close()
    assert p.proc.poll() is None


def test_an_unauthenticated_session_holding_a_removed_credentials_connection_is_closed(
        respguard, redis_server_factory):
    # session mode keeps the held connection through RESET and a failed AUTH: the session is not
    # logged in, but its connection speaks credRO, which the reload removes; it must be closed
    # (its RESET would send a login the new configuration no longer has)
    srv = redis_server_factory()
    admin = srv.client()
    creds, _ = credentials(admin, credA="userA", credRO="ro")
    users = default_users()
    users["web"]["upstream_credential"] = "credRO"
    p = respguard(upstream_server=srv, users=users, overrides={"upstream": {"credentials": creds}})
    c = p.login("web")
    assert c.call_raw("RESET") == b"+RESET\r\n"
    assert c.call_raw("AUTH", "web", "wrong-password") == WRONGPASS
    ev = reload_ok(p, deep_merge(p.config, {"upstream": {"credentials": {"credRO": DELETE}},
                                            "users": {"web": {"upstream_credential": "credA"}}}))
    if POOL_MODE == "session":
        assert ev.get("sessions_closed") == 1, ev
        assert c.wait_closed(timeout=3)
    else:  # after RESET a multiplex session holds no connection of its own: it goes on
        assert ev.get("sessions_closed") == 0, ev
        assert c.call_raw("RESET") == b"+RESET\r\n"
    assert p.proc.poll() is None
    w = p.login("web")
    assert w.call_raw("PING") == PONG
    w.close()


def handshakes(p):
    m = p.metrics()
    return sum(val(m, "respguard_upstream_handshakes_total", type=t) for t in ("full", "resumed"))


def test_tls_sessions_of_handshakes_in_flight_at_a_ca_rotation_are_not_resumed(respguard, redis_server_factory,
                                                                                certs):
    srv = redis_server_factory()
    p = respguard(upstream_server=srv, admin=True, overrides={"upstream": {
        "connect_timeout": "5s", "pool": {"size": 8, "min_idle": 1, "acquire_timeout": "10s"}}})
    first = p.login("web")
    pin(first)  # one full handshake: a TLS session to resume
    wait_until(lambda: handshakes(p) >= 1, 5, what="the first upstream handshake")
    before = handshakes(p)
    waiting = []
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):  # each needs a connection of its own (AUTH, then SELECT pins in multiplex)
            c = p.raw(timeout=12)
            c.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("SELECT", "1"))
            waiting.append(c)
        time.sleep(0.5)  # their connections wait in the TLS handshake with the stopped server
        reload_ok(p, deep_merge(p.config, {"upstream": {"ca_file": certs.path("rogue_ca.crt")}}))
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    # the handshakes begun under the trusted CA complete now (the premise of the test) ...
    wait_until(lambda: handshakes(p) > before, 5, what="a handshake begun before the reload completing")
    for c in waiting:
        try:
            c.read_raw()
        except (ConnectionClosed, OSError):
            pass
    # ... and what they leave to resume from must not let a handshake skip the new CA
    fresh = p.raw(timeout=12)
    fresh.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("SELECT", "1"))
    assert fresh.read_raw() == ERR_UPSTREAM_FAILED


def test_a_bare_word_in_a_reloaded_acl_is_not_logged(respguard):
    p = respguard()
    word = "hunter2secret"  # a password written without its '>'
    p.secrets.append(word)
    text = write_config(p, deep_merge(p.config, {"users": {"web": {"acl": "on %s ~* +@all" % word}}}))
    line = next(i for i, s in enumerate(text.splitlines(), 1) if word in s)
    column = text.splitlines()[line - 1].index(word) + 1
    ev = sighup(p)
    assert (ev.get("level"), ev.get("result")) == ("error", "failed"), ev
    assert ev.get("reason", "").startswith("%s:%d:%d: users.web.acl: " % (p.config_path, line, column)), ev
    assert "h***" in ev["reason"] and word not in ev["reason"], ev
    assert word not in p.stderr_text()
    p.login("web").close()  # the running config stays
