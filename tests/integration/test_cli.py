"""The command line: check, passwd, --version, --help."""

import hashlib
import os
import re
import subprocess

import pytest

from helpers import PASSWORDS, default_users, free_port, respguard_bin, to_yaml

pytestmark = pytest.mark.proxy_only


def run(args, stdin=b"", env=None, timeout=15):
    e = dict(os.environ)
    e.update(env or {})
    try:
        return subprocess.run([respguard_bin()] + args, input=stdin, capture_output=True,
                              env=e, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("respguard %s did not finish within %ds" % (" ".join(args), timeout))


@pytest.fixture
def valid_config(tmp_path, certs, upstream):
    cfg = {
        "listeners": [{"bind": "127.0.0.1:%d" % free_port()}],
        "upstream": {"url": "rediss://default:${UPSTREAM_PW}@localhost:%d" % upstream.tls_port,
                     "ca_file": certs.path("ca.crt"), "connect_timeout": "2s"},
        "users": default_users(),
        "limits": {"login_timeout": "2s", "shutdown_timeout": "5s"},
    }
    path = tmp_path / "ok.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    return str(path), {"UPSTREAM_PW": upstream.password}


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def assert_error_at(r, path, line):
    err = r.stderr.decode()
    pat = re.compile(r"^%s:%d:(\d+): \S.*$" % (re.escape(path), line), re.M)
    m = pat.search(err)
    assert m, "expected an error '%s:%d:<column>: message' on stderr, got:\n%s" % (path, line, err)
    assert int(m.group(1)) >= 1


def test_check_valid_config(valid_config, upstream):
    path, env = valid_config
    r = run(["check", "-c", path], env=env)
    assert r.returncode == 0, r.stderr.decode()
    out = (r.stdout + r.stderr).decode()
    assert "web" in out and "ops" in out, "check should print the effective users:\n" + out
    for secret in list(PASSWORDS.values()) + [upstream.password]:
        assert secret not in out, "check printed a secret: %r" % secret


def test_check_long_option(valid_config):
    path, env = valid_config
    assert run(["check", "--config", path], env=env).returncode == 0


def test_check_rejects_plaintext_upstream(tmp_path, certs):
    text = ("listeners:\n"
            "  - bind: 127.0.0.1:%d\n"
            "upstream:\n"
            "  url: redis://default:pw@localhost:6379\n"
            "users:\n"
            "  web:\n"
            "    acl: \"on >webpass ~* +@all\"\n") % free_port()
    path = write(tmp_path, "plain-upstream.yaml", text)
    r = run(["check", "-c", path])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert_error_at(r, path, 4)
    assert b"pw@" not in r.stderr


def test_check_rejects_plaintext_listener_off_loopback(tmp_path, certs, upstream):
    text = ("listeners:\n"
            "  - bind: 0.0.0.0:%d\n"
            "upstream:\n"
            "  url: rediss://default:secret@localhost:%d\n"
            "  ca_file: %s\n"
            "users:\n"
            "  web:\n"
            "    acl: \"on >webpass ~* +@all\"\n") % (free_port(), upstream.tls_port, certs.path("ca.crt"))
    path = write(tmp_path, "open-listener.yaml", text)
    r = run(["check", "-c", path])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert_error_at(r, path, 2)


def test_check_rejects_unknown_key(tmp_path, certs, upstream):
    text = ("listeners:\n"
            "  - bind: 127.0.0.1:%d\n"
            "upstream:\n"
            "  url: rediss://default:secret@localhost:%d\n"
            "  ca_fiel: %s\n"
            "users:\n"
            "  web:\n"
            "    acl: \"on >webpass ~* +@all\"\n") % (free_port(), upstream.tls_port, certs.path("ca.crt"))
    path = write(tmp_path, "typo.yaml", text)
    r = run(["check", "-c", path])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert_error_at(r, path, 5)


def test_run_with_invalid_config_exits_nonzero(tmp_path):
    text = ("listeners:\n"
            "  - bind: 127.0.0.1:%d\n"
            "upstream:\n"
            "  url: redis://localhost:6379\n") % free_port()
    path = write(tmp_path, "bad.yaml", text)
    r = run(["-c", path])
    assert r.returncode != 0
    assert_error_at(r, path, 4)


def test_check_missing_file(tmp_path):
    r = run(["check", "-c", str(tmp_path / "nope.yaml")])
    assert r.returncode == 1
    assert r.stderr.strip()


def _hash(secret):
    return "#" + hashlib.sha256(secret).hexdigest()


def test_passwd_from_stdin():
    for stdin, secret in [(b"hashedpass", b"hashedpass"), (b"hashedpass\n", b"hashedpass"),
                          (b"hashedpass\n\n", b"hashedpass\n"), (b"p w\xc3\xa9!", b"p w\xc3\xa9!")]:
        r = run(["passwd"], stdin=stdin)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().strip() == _hash(secret), (stdin, r.stdout)


def test_passwd_hash_logs_in(respguard):
    r = run(["passwd"], stdin=b"Cli-Made-Secret\n")
    h = r.stdout.decode().strip()
    p = respguard(users={"cli": {"acl": "on %s ~* +@all" % h}})
    with p.login("cli", "Cli-Made-Secret") as c:
        assert c.call_raw("PING") == b"+PONG\r\n"


def test_passwd_generate():
    seen = set()
    for _ in range(2):
        r = run(["passwd", "--generate"])
        assert r.returncode == 0, r.stderr
        tokens = r.stdout.decode().split()
        hashes = [t for t in tokens if re.fullmatch(r"#[0-9a-f]{64}", t)]
        assert len(hashes) == 1, r.stdout
        others = [t for t in tokens if t not in hashes]
        match = [t for t in others if _hash(t.encode()) == hashes[0]]
        assert match, "no printed secret hashes to %s: %r" % (hashes[0], r.stdout)
        secret = match[0]
        assert len(secret) >= 32, "a 256-bit secret printed in %d characters" % len(secret)
        seen.add(secret)
    assert len(seen) == 2, "two --generate runs printed the same secret"


def test_version_and_help():
    r = run(["--version"])
    assert r.returncode == 0
    out = (r.stdout + r.stderr).decode()
    assert "respguard" in out and re.search(r"\d+\.\d+", out), out
    r = run(["--help"])
    assert r.returncode == 0
    out = (r.stdout + r.stderr).decode()
    for word in ("check", "passwd", "-c"):
        assert word in out, (word, out)


def test_check_names_the_position_of_an_unknown_guard_command(tmp_path):
    text = ("listeners:\n"
            "  - bind: 127.0.0.1:%d\n"
            "upstream:\n"
            "  url: rediss://localhost:6379\n"
            "users:\n"
            "  web:\n"
            "    acl: \"on >webpass ~* +@all\"\n"
            "guard:\n"
            "  never_by_category: [flushall, flushal]\n") % free_port()
    path = write(tmp_path, "guard.yaml", text)
    r = run(["check", "-c", path])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.decode().strip() == (
        "%s:9:33: guard.never_by_category[1]: unknown command 'flushal'" % path), r.stderr
