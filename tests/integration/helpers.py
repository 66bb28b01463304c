"""Shared helpers of the integration suite (imported by conftest and the tests)."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid

REFERENCE = os.environ.get("RESPGUARD_REFERENCE", "") == "redis"
# The upstream pool mode every respguard of the run uses unless a test sets its own
# (upstream.pool.mode): scripts/test.sh runs the suite in both.
POOL_MODE = os.environ.get("RESPGUARD_POOL_MODE", "session")
assert POOL_MODE in ("session", "multiplex"), "RESPGUARD_POOL_MODE must be session or multiplex"
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# Passwords of the test users.  Distinctive strings so that a leak into the
# log is unmistakable (see Proxy.assert_no_secrets).
PASSWORDS = {
    "web": "webpass",
    "ops": "opspass",
    "hashed": "hashedpass",
    "default": "defpass",
}
OFF_USER_PASSWORD = "offuser-Secret-77"
HASHED_HEX = hashlib.sha256(PASSWORDS["hashed"].encode()).hexdigest()


def default_users():
    return {
        "web": {"acl": "on >%s ~* &* +@all" % PASSWORDS["web"]},
        "ops": {"acl": "on >%s ~* &* +@all +flushdb" % PASSWORDS["ops"]},
        "hashed": {"acl": "on #%s +@all ~*" % HASHED_HEX},
        "off_user": {"acl": "off >%s +@all ~*" % OFF_USER_PASSWORD},
        "default": {"acl": "on >%s +@all ~*" % PASSWORDS["default"]},
    }


# ---------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0, proc=None, what="server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("%s exited with %s before listening on %d"
                                 % (what, proc.returncode, port))
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("%s did not listen on 127.0.0.1:%d within %.0fs" % (what, port, timeout))


def wait_until(pred, timeout=5.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s (last value %r)" % (timeout, what, last))


def unique(prefix="k"):
    return "%s:%s" % (prefix, uuid.uuid4().hex[:12])


def openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.decode()))


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    plain = re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_./:@-]*", s) is not None
    if plain and s.lower() not in ("yes", "no", "on", "off", "true", "false", "null", "y", "n", "~"):
        return s
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """Minimal block-style YAML emitter (dicts, lists, scalars)."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append("%s%s:" % (pad, k))
                lines.append(to_yaml(v, indent + 2))
            elif isinstance(v, dict):
                lines.append("%s%s: {}" % (pad, k))
            elif isinstance(v, list):
                lines.append("%s%s: []" % (pad, k))
            else:
                lines.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                sub = to_yaml(item, indent + 2).split("\n")
                sub[0] = pad + "- " + sub[0].lstrip()
                lines.extend(sub)
            else:
                lines.append("%s- %s" % (pad, _yaml_scalar(item)))
    else:
        lines.append(pad + _yaml_scalar(obj))
    return "\n".join(lines)


DELETE = object()


def deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if v is DELETE:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def pings(c):
    """PING through redis-py client c: True when answered, False while the server is not up."""
    import redis
    try:
        return c.ping()
    except redis.exceptions.ConnectionError:
        return False


def upstream_info(direct, section):
    return direct.info(section)


def connected_clients(direct):
    return int(direct.info("clients")["connected_clients"])


def blocked_clients(direct):
    return int(direct.info("clients")["blocked_clients"])


def respguard_bin():
    b = os.environ.get("RESPGUARD_BIN") or os.path.join(ROOT, "build", "respguard")
    assert os.path.isfile(b) and os.access(b, os.X_OK), \
        "respguard binary not found at %s (build it: meson setup build && meson compile -C build," \
        " or set RESPGUARD_BIN)" % b
    return b


def built_tool(name, env_var):
    """Path of a test tool built by meson (tests/tools/NAME): $env_var, or the test build dirs.
    A missing tool fails the test (CI builds it), it never skips."""
    import pytest
    env = os.environ.get(env_var)
    # The tool of the build under test first (the one RESPGUARD_BIN comes from), so that a stale
    # tool of another build dir never judges a newer respguard.
    dirs = [os.path.dirname(os.environ["RESPGUARD_BIN"])] if os.environ.get("RESPGUARD_BIN") else []
    dirs += [os.path.join(ROOT, b) for b in ("build-test", "build")]
    candidates = [env] if env else [os.path.join(d, "tests", "tools", name) for d in dirs]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.fail("%s not found (tried %s): build it (meson compile -C build-test) or set %s"
                % (name, ", ".join(c for c in candidates if c), env_var))


def plain_redis_server(prefix):
    """Generator for a module fixture: a throwaway plaintext redis-server on a free loopback
    port (the differential tests ask Redis itself); yields the port, stops it afterwards."""
    import shutil
    import subprocess
    import tempfile
    d = tempfile.mkdtemp(prefix=prefix)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", d,
                             "--logfile", os.path.join(d, "redis.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 10, proc, "redis-server")
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


class _Summary:
    """Shows counts in pytest's terminal summary, where -q or captured output do not hide them
    (registered as a plugin, one per section, the first time a count is reported)."""

    def __init__(self, section):
        self.section = section
        self.lines = []

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section(self.section)
        for line in self.lines:
            terminalreporter.write_line(line)


def report_summary(request, section, text):
    print(text)
    pm = request.config.pluginmanager
    name = section.replace(" ", "-") + "-summary"
    plugin = pm.get_plugin(name)
    if plugin is None:
        plugin = _Summary(section)
        pm.register(plugin, name)
    plugin.lines.append(text)


def metric_value(m, name, **labels):
    """One sample's value from Proxy.metrics() (0 when the series is absent)."""
    return m.get((name, frozenset(labels.items())), 0.0)


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
