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

from helpers import (DELETE, PASSWORDS, deep_merge, default_users, free_port,
                     metric_value as val, to_yaml, unique, wait_until)

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

def write_config(p, cfg):
    """Replace p's config file by cfg; returns the YAML text written."""
    text = to_yaml(cfg) + "\n"
    with open(p.config_path, "w") as f:
        f.write(text)
    return text


def next_reload(p, seen, timeout=5.0):
    """The reload log line that follows the first `seen` ones (ok or failed)."""
    def find():
        lines = p.events("reload")
        return lines[seen] if len(lines) > seen else None
    try:
        return wait_until(find, timeout, what="reload log line #%d" % (seen + 1))
    except AssertionError:
        raise AssertionError("no reload log line #%d within %.1fs; log:\n%s"
                             % (seen + 1, timeout, p.stderr_text()[-4000:]))


def sighup(p):
    """SIGHUP p; returns the reload log line it brings."""
    seen = len(p.events("reload"))
    p.signal(signal.SIGHUP)
    return next_reload(p, seen)


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
