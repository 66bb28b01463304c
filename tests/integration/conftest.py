"""End-to-end fixtures for respguard.

Everything here is real: certificates are made per run with the openssl CLI, the
upstream is a real redis-server (7.0, built with TLS) on a TLS-only port with
requirepass, and respguard is the real binary ($RESPGUARD_BIN or
build/respguard) started with a generated YAML config.

Reference mode (harness debugging only): RESPGUARD_REFERENCE=redis replaces the
proxy by the upstream redis-server itself, reached on an extra plaintext port
and given the same users, so the byte-exact expectations of the suite can be
checked against Redis.  The direct fixture then logs in as an "admin" user.
Tests marked ``proxy_only`` (log lines, guard rules, upstream handling, CLI,
downstream TLS) are skipped in that mode, with a reason, and only in that mode.
"""

import glob
import http.client
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time

import pytest
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resp_util import RawConn  # noqa: E402
from helpers import (DELETE, OFF_USER_PASSWORD, PASSWORDS, POOL_MODE, REFERENCE, ROOT, deep_merge,  # noqa: E402
                     default_users, free_port, openssl, respguard_bin, to_yaml,
                     pings, wait_port, wait_until)



def pytest_configure(config):
    config.addinivalue_line(
        "markers", "proxy_only: needs respguard itself (skipped in RESPGUARD_REFERENCE=redis mode)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_collection_modifyitems(config, items):
    if not REFERENCE:
        return
    skip = pytest.mark.skip(reason="RESPGUARD_REFERENCE=redis: test is about respguard itself")
    for item in items:
        if item.get_closest_marker("proxy_only"):
            item.add_marker(skip)


# ---------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------

class Certs:
    """Per-run PKI.

    ca / server:        the trusted CA and a server cert for DNS:localhost, IP:127.0.0.1
    server2:            another such server cert (its own key), for certificate rotation
    other:              signed by the trusted CA, valid only for DNS:other.example
    rogue_ca / rogue:   an unrelated CA and its own localhost server cert
    client_ca / client: a CA for client certificates and a client cert CN=web
    """

    def __init__(self, d):
        self.dir = d

    def path(self, name):
        return os.path.join(self.dir, name)


def _make_ca(d, name, cn):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", name + ".key", "-out", name + ".crt", "-days", "2",
            "-subj", "/CN=" + cn,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_leaf(d, name, ca, cn, san=None, usage="serverAuth"):
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn, cwd=d)
    ext = ["basicConstraints=CA:FALSE",
           "keyUsage=critical,digitalSignature,keyEncipherment",
           "extendedKeyUsage=" + usage]
    if san:
        ext.append("subjectAltName=" + san)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("\n".join(ext) + "\n")
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext", cwd=d)


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="respguard-it-")
    yield d
    if os.environ.get("RESPGUARD_KEEP_TMP"):
        print("kept test files in", d)
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def certs(workdir):
    d = os.path.join(workdir, "certs")
    os.makedirs(d)
    _make_ca(d, "ca", "respguard test CA")
    _make_leaf(d, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    _make_leaf(d, "server2", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    _make_leaf(d, "other", "ca", "other.example", "DNS:other.example")
    _make_ca(d, "rogue_ca", "rogue CA")
    _make_leaf(d, "rogue", "rogue_ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    _make_ca(d, "client_ca", "respguard client CA")
    _make_leaf(d, "client", "client_ca", "web", None, usage="clientAuth")
    _make_leaf(d, "client_rogue", "rogue_ca", "web", None, usage="clientAuth")
    return Certs(d)


# ---------------------------------------------------------------------------
# redis-server
# ---------------------------------------------------------------------------

class RedisServer:
    def __init__(self, workdir, certs, cert="server", password=None, extra_args=(),
                 plain_port=0, tls_port=None):
        self.tls_port = tls_port or free_port()
        self.plain_port = plain_port
        self.username = None
        self.password = password or secrets.token_hex(16)
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=workdir)
        self.certs = certs
        self.log_path = os.path.join(self.dir, "redis.log")
        args = ["redis-server", "--port", str(plain_port), "--bind", "127.0.0.1",
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", certs.path(cert + ".crt"),
                "--tls-key-file", certs.path(cert + ".key"),
                "--tls-ca-cert-file", certs.path("ca.crt"),
                "--tls-auth-clients", "no",
                "--requirepass", self.password,
                "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--logfile", self.log_path] + list(extra_args)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.tls_port, 10, self.proc, "redis-server")

    def client(self, **kw):
        """A redis-py client straight to this server over TLS (CA-verified)."""
        return redis.Redis(host="127.0.0.1", port=self.tls_port, password=self.password,
                           username=self.username,
                           ssl=True, ssl_ca_certs=self.certs.path("ca.crt"),
                           ssl_cert_reqs="required", socket_timeout=10,
                           socket_connect_timeout=5, **kw)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def upstream(workdir, certs):
    """The main upstream: redis-server, TLS only, requirepass, cert for localhost."""
    srv = RedisServer(workdir, certs, plain_port=free_port() if REFERENCE else 0)
    c = srv.client()
    wait_until(lambda: pings(c), 10, what="upstream PING over TLS")
    if REFERENCE:
        c.execute_command("ACL", "SETUSER", "admin", "on", ">" + srv.password, "~*", "&*", "+@all")
        srv.username = "admin"
    c.close()
    yield srv
    srv.stop()



@pytest.fixture
def direct(upstream):
    """redis-py straight to the upstream over TLS with its password."""
    c = upstream.client()
    yield c
    c.close()


@pytest.fixture
def redis_server_factory(workdir, certs):
    """Start extra redis-servers (other certificates, or to be killed); stopped at teardown."""
    started = []

    def make(cert="server", **kw):
        srv = RedisServer(workdir, certs, cert=cert, **kw)
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()


# ---------------------------------------------------------------------------
# respguard
# ---------------------------------------------------------------------------

class Proxy:
    """A running respguard (or, in reference mode, a redis-server stand-in)."""

    def __init__(self, config, config_path, env, certs, secrets_list, upstream_server, workdir):
        self.config = config
        self.upstream_server = self.upstream = upstream_server
        self.config_path = config_path
        self.certs = certs
        self.secrets = [s for s in secrets_list if s and len(s) >= 6]
        self.dir = workdir
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.port = None
        self.tls_port = None
        self.admin_port = None
        if "admin" in config:
            self.admin_port = int(config["admin"]["bind"].rsplit(":", 1)[1])
        for lst in config["listeners"]:
            port = int(lst["bind"].rsplit(":", 1)[1])
            if "tls" in lst:
                self.tls_port = port
            else:
                self.port = port
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        self.proc = None
        if REFERENCE:
            self._reference_setup()
            return
        self.proc = subprocess.Popen([respguard_bin(), "-c", config_path], stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err, env=env, cwd=self.dir)
        for p in (self.port, self.tls_port, self.admin_port):
            if p is not None:
                try:
                    wait_port(p, 10, self.proc, "respguard")
                except AssertionError:
                    self.stop()
                    raise AssertionError("respguard did not start; stderr:\n" + self.stderr_text())

    # reference mode: the upstream redis-server itself, with the same users
    def _reference_setup(self):
        srv = self.upstream_server
        self.port = srv.plain_port
        if self.tls_port is not None:
            self.tls_port = srv.tls_port
        c = srv.client()
        for name, u in self.config["users"].items():
            c.execute_command("ACL", "SETUSER", name, "reset", *u["acl"].split())
        c.close()

    # -- log ---------------------------------------------------------------
    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout_text(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def logs(self):
        """Parsed JSON log lines; a line that is not a JSON object becomes {"_raw": line}."""
        out = []
        for line in self.stderr_text().splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    obj = {"_raw": line}
            except ValueError:
                obj = {"_raw": line}
            out.append(obj)
        return out

    def events(self, name, **match):
        return [e for e in self.logs() if e.get("event") == name
                and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, name, pred=None, timeout=5.0, **match):
        def find():
            for e in self.events(name, **match):
                if pred is None or pred(e):
                    return e
            return None
        try:
            return wait_until(find, timeout, what="log event %r %r" % (name, match))
        except AssertionError:
            raise AssertionError("no log event %r matching %r within %.0fs; log:\n%s"
                                 % (name, match, timeout, self.stderr_text()[-4000:]))

    def assert_no_secrets(self):
        text = self.stderr_text() + self.stdout_text()
        for s in self.secrets:
            assert s not in text, "secret %r appears in respguard's output:\n%s" % (s, text[-3000:])

    # -- clients -------------------------------------------------------------
    def raw(self, timeout=5.0):
        return RawConn(self.port, timeout=timeout)

    def raw_tls(self, timeout=5.0, certfile=None, keyfile=None):
        ctx = ssl.create_default_context(cafile=self.certs.path("ca.crt"))
        if certfile:
            ctx.load_cert_chain(certfile, keyfile)
        return RawConn(self.tls_port, timeout=timeout, tls_context=ctx, server_hostname="localhost")

    def login(self, user="web", password=None, timeout=5.0):
        """A raw connection logged in with AUTH user pass (asserts +OK)."""
        c = self.raw(timeout)
        if password is None:
            password = PASSWORDS[user]
        c.send_cmd("AUTH", user, password)
        line = c.read_raw()
        assert line == b"+OK\r\n", "AUTH %s failed through respguard: %r" % (user, line)
        return c

    def client(self, user="web", password=None, **kw):
        if password is None:
            password = PASSWORDS[user]
        kw.setdefault("socket_timeout", 10)
        kw.setdefault("socket_connect_timeout", 5)
        return redis.Redis(host="127.0.0.1", port=self.port, username=user, password=password, **kw)

    # -- admin HTTP ---------------------------------------------------------------
    def http(self, path, method="GET"):
        """(status, headers, body text) from the admin listener."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read().decode("utf-8")
        finally:
            conn.close()

    def metrics(self):
        """/metrics parsed by prometheus_client: {(name, frozenset(labels.items())): value}."""
        from prometheus_client.parser import text_string_to_metric_families
        status, headers, body = self.http("/metrics")
        assert status == 200, (status, body)
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    # -- lifecycle ------------------------------------------------------------
    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()
        self._out.close()


@pytest.fixture
def respguard(request, tmp_path, certs, upstream):
    """Factory: respguard(**options) -> running Proxy; all are stopped at teardown.

    Options:
      tls_listener=False      add a TLS listener (cert for localhost/127.0.0.1)
      client_ca=False         ... which requires client certificates from client_ca
      user_from_cert=False    ... and names the user from the certificate's CN (needs client_ca)
      upstream_server=None    a RedisServer (default: the session upstream)
      upstream_host='localhost'
      server_name=None        upstream.server_name
      ca_file=<test CA>       upstream.ca_file (DELETE to use the system store)
      users=None              replace the users map
      limits=None             merged into limits
      overrides=None          deep-merged into the whole config (DELETE removes keys)
      upstream_password=None  the password given to respguard (default: the server's)
      admin=False             an admin listener on a free port, probing the upstream every 200ms
      config_path=None        write the config there (e.g. through a symlink of a Kubernetes-style
                              mount) instead of respguard.yaml in the instance's own directory,
                              which keeps its logs either way
    """
    started = []

    def make(tls_listener=False, client_ca=False, user_from_cert=False, upstream_server=None,
             upstream_host="localhost", server_name=None, ca_file=None, users=None,
             limits=None, overrides=None, upstream_password=None, admin=False, config_path=None):
        srv = upstream_server or upstream
        d = tmp_path / ("rg%d" % len(started))
        d.mkdir()
        listeners = [{"bind": "127.0.0.1:%d" % free_port()}]
        if tls_listener or client_ca:
            tls = {"cert_file": certs.path("server.crt"), "key_file": certs.path("server.key")}
            if client_ca:
                tls["client_ca_file"] = certs.path("client_ca.crt")
            if user_from_cert:
                tls["user_from_cert"] = "cn"

            listeners.append({"bind": "127.0.0.1:%d" % free_port(), "tls": tls})
        up = {"url": "rediss://default:${UPSTREAM_PW}@%s:%d" % (upstream_host, srv.tls_port),
              "ca_file": certs.path("ca.crt"), "connect_timeout": "2s"}
        if POOL_MODE != "session":
            up["pool"] = {"mode": POOL_MODE}
        if ca_file is DELETE:
            del up["ca_file"]
        elif ca_file is not None:
            up["ca_file"] = ca_file
        if server_name:
            up["server_name"] = server_name
        cfg = {
            "listeners": listeners,
            "upstream": up,
            "users": users if users is not None else default_users(),
            "limits": deep_merge({"login_timeout": "2s", "shutdown_timeout": "5s"}, limits or {}),
        }
        if admin:
            cfg["admin"] = {"bind": "127.0.0.1:%d" % free_port(), "probe_interval": "200ms"}
        if overrides:
            cfg = deep_merge(cfg, overrides)
        path = config_path or str(d / "respguard.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(cfg) + "\n")
        env = dict(os.environ)
        env["UPSTREAM_PW"] = upstream_password or srv.password
        p = Proxy(cfg, path, env, certs,
                  list(PASSWORDS.values()) + [OFF_USER_PASSWORD, srv.password, env["UPSTREAM_PW"]],
                  srv, str(d))
        started.append(p)
        return p

    yield make
    leaks = []
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p in started:
        p.stop()
        if failed and not REFERENCE:
            print("---- respguard stderr (%s), exit %s ----" % (p.config_path, p.proc.returncode))
            print(p.stderr_text()[-6000:])
        if not REFERENCE:
            try:
                p.assert_no_secrets()
            except AssertionError as e:
                leaks.append(str(e))
            # With a sanitizer build (scripts/test.sh runs one), any report fails the test.
            text = p.stderr_text()
            for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                           "WARNING: ThreadSanitizer", "ThreadSanitizer: "):
                if marker in text:
                    i = text.index(marker)
                    leaks.append("sanitizer report in respguard's stderr:\n" + text[max(0, i - 200):i + 3000])
                    break
    assert not leaks, "\n".join(leaks)


@pytest.fixture
def proxy(respguard):
    """A respguard with the default configuration."""
    return respguard()


# ---------------------------------------------------------------------------
# the Debian package
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def deb(tmp_path_factory):
    """packaging/build-deb.sh once for the session (test_packaging.py and test_container.py):
    the .deb and its extracted file tree."""
    out = tmp_path_factory.mktemp("deb")
    t0 = time.monotonic()
    r = subprocess.run([os.path.join(ROOT, "packaging", "build-deb.sh"), str(out)],
                       capture_output=True, timeout=600)
    assert r.returncode == 0, "build-deb.sh failed:\n%s\n%s" % (r.stdout.decode()[-4000:],
                                                             r.stderr.decode()[-4000:])
    debs = glob.glob(str(out / "respguard_*.deb"))
    assert len(debs) == 1, "expected one respguard_*.deb in %s, found %r" % (out, os.listdir(out))
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-x", debs[0], str(tree)], check=True, timeout=60)
    print("package built in %.0fs" % (time.monotonic() - t0))
    return {"deb": debs[0], "tree": str(tree), "dir": str(out)}
