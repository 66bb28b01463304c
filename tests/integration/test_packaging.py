"""Operability: systemd notification, the man pages, and the Debian package.

- NOTIFY_SOCKET: respguard tells the service manager READY=1 once its listeners accept, and
  STOPPING=1 when SIGTERM starts the drain (src/notify.c, sd_notify(3)).
- The man pages (docs/man/*.scd, built by meson with scdoc) render without a groff or man
  warning.
- packaging/build-deb.sh builds the .deb once for the session (conftest's `deb` fixture, which
  test_container.py shares; packaging/debian, dh with meson): its contents, its conffile,
  lintian, and the unit under systemd-analyze verify and security.

scripts/test.sh runs this module once, against the build users run (not under the sanitizers,
not once per pool mode): the package build is the slow part (~1 minute).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
import redis

from helpers import PASSWORDS, default_users, free_port, respguard_bin, to_yaml

pytestmark = pytest.mark.proxy_only

# ---------------------------------------------------------------------------
# systemd notification
# ---------------------------------------------------------------------------


def _recv_state(sock, timeout):
    """The next sd_notify datagram as a dict of its KEY=VALUE lines."""
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n") if "=" in line)


@pytest.mark.parametrize("address", ["path", "abstract"])
def test_notify_ready_then_stopping(tmp_path, certs, upstream, address):
    """READY=1 arrives once the listener accepts (a connection made right after it succeeds at
    once, no retry), nothing before it; SIGHUP gives RELOADING=1 then READY=1; STOPPING=1
    arrives on SIGTERM, then a clean exit."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if address == "path":
        target = str(tmp_path / "notify.sock")
        sock.bind(target)
    else:  # sd_notify(3): a leading '@' names a socket in the abstract namespace
        name = "respguard-test-notify-" + uuid.uuid4().hex
        sock.bind("\0" + name)
        target = "@" + name
    port = free_port()
    cfg = {
        "listeners": [{"bind": "127.0.0.1:%d" % port}],
        "upstream": {"url": "rediss://default:${UPSTREAM_PW}@localhost:%d" % upstream.tls_port,
                     "ca_file": certs.path("ca.crt"), "connect_timeout": "2s"},
        "users": default_users(),
        "limits": {"login_timeout": "2s", "shutdown_timeout": "5s"},
    }
    path = tmp_path / "respguard.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    env = dict(os.environ, UPSTREAM_PW=upstream.password, NOTIFY_SOCKET=target)
    err_path = tmp_path / "stderr.log"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([respguard_bin(), "-c", str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        try:
            ready = _recv_state(sock, 15)
        except socket.timeout:
            raise AssertionError("no sd_notify message within 15s (built without libsystemd? "
                                 "meson -Dsystemd=enabled); stderr:\n" + err_path.read_text())
        assert ready.get("READY") == "1", "the first message must be READY=1, got %r" % ready
        # The listener is bound and accepting now: no retry loop.
        c = redis.Redis(host="127.0.0.1", port=port, username="web", password=PASSWORDS["web"],
                        socket_timeout=10, socket_connect_timeout=2)
        assert c.ping() is True
        c.close()
        # Nothing else was said while serving.
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(4096)

        # A reload (systemctl reload: SIGHUP) is RELOADING=1 then READY=1, whether the file
        # is good or not (a bad one keeps the running configuration: respguard stays ready).
        for text in (to_yaml(cfg) + "\n", to_yaml(cfg) + "\nno_such_key: 1\n"):
            path.write_text(text)
            proc.send_signal(signal.SIGHUP)
            reloading = _recv_state(sock, 10)
            assert reloading.get("RELOADING") == "1", "expected RELOADING=1 on SIGHUP, got %r" % reloading
            again = _recv_state(sock, 10)
            assert again.get("READY") == "1", "expected READY=1 after the reload, got %r" % again
        path.write_text(to_yaml(cfg) + "\n")

        proc.send_signal(signal.SIGTERM)
        stopping = _recv_state(sock, 10)
        assert stopping.get("STOPPING") == "1", "expected STOPPING=1 on SIGTERM, got %r" % stopping
        assert proc.wait(15) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sock.close()
    log = err_path.read_text()
    assert '"event":"ready"' in log and '"phase":"end"' in log, log


def test_no_notify_socket_is_fine(tmp_path, certs, upstream):
    """Without NOTIFY_SOCKET (respguard outside systemd) `check` and a run behave as always;
    an unreachable NOTIFY_SOCKET does not stop respguard either."""
    port = free_port()
    cfg = {
        "listeners": [{"bind": "127.0.0.1:%d" % port}],
        "upstream": {"url": "rediss://default:${UPSTREAM_PW}@localhost:%d" % upstream.tls_port,
                     "ca_file": certs.path("ca.crt")},
        "users": default_users(),
        "limits": {"shutdown_timeout": "5s"},
    }
    path = tmp_path / "respguard.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    env = dict(os.environ, UPSTREAM_PW=upstream.password,
               NOTIFY_SOCKET=str(tmp_path / "nobody-listens.sock"))
    proc = subprocess.Popen([respguard_bin(), "-c", str(path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "respguard did not start"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


# ---------------------------------------------------------------------------
# man pages
# ---------------------------------------------------------------------------

MAN_PAGES = ["respguard.8", "respguard.yaml.5"]


def _assert_renders(page):
    """groff with every warning on and man's own check: no output on stderr."""
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80")
    r = subprocess.run(["man", "--warnings=all", "-l", page], capture_output=True, env=env, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), "%s: man warnings:\n%s" % (page, r.stderr.decode())
    assert b"SEE ALSO" in r.stdout
    if not page.endswith(".gz"):
        r = subprocess.run(["groff", "-man", "-ww", "-z", page], capture_output=True, timeout=60)
        assert r.returncode == 0 and not r.stderr.strip(), "%s: groff warnings:\n%s" % (page, r.stderr.decode())
    return r


@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_renders(page):
    """The pages meson built next to the binary under test (scdoc is a test dependency, so the
    `man` feature is on in every test build)."""
    built = os.path.join(os.path.dirname(respguard_bin()), page)
    assert os.path.isfile(built), ("%s was not built next to %s: install scdoc (scripts/deps.sh) and "
                                   "reconfigure (meson setup --reconfigure)" % (page, respguard_bin()))
    _assert_renders(built)
    text = subprocess.run(["man", "-l", built], capture_output=True, timeout=60,
                          env=dict(os.environ, MANWIDTH="200")).stdout.decode()
    if page == "respguard.8":
        for word in ("check", "dryrun", "passwd", "--generate", "SIGTERM", "SIGHUP", "READY=1"):
            assert word in text, "respguard(8) does not mention %s" % word
    else:
        for key in ("listeners", "upstream", "users", "guard", "limits", "max_clients", "10000",
                    "shutdown_timeout", "anomaly", "admin", "probe_interval", "acquire_timeout"):
            assert key in text, "respguard.yaml(5) does not mention %s" % key


# ---------------------------------------------------------------------------
# the Debian package
# ---------------------------------------------------------------------------


UNIT = "lib/systemd/system/respguard.service"


def test_deb_contents(deb):
    r = subprocess.run(["dpkg-deb", "-c", deb["deb"]], capture_output=True, check=True, timeout=60)
    paths = {line.split()[-1].lstrip(".") for line in r.stdout.decode().splitlines()}
    for p in ("/usr/bin/respguard", "/usr/share/man/man8/respguard.8.gz",
              "/usr/share/man/man5/respguard.yaml.5.gz", "/etc/respguard/respguard.yaml.example",
              "/" + UNIT, "/usr/share/doc/respguard/copyright"):
        assert p in paths, "%s missing from the package:\n%s" % (p, "\n".join(sorted(paths)))
    # The operator's file is not the package's: nothing runs before it is written.
    assert "/etc/respguard/respguard.yaml" not in paths
    for page in ("usr/share/man/man8/respguard.8.gz", "usr/share/man/man5/respguard.yaml.5.gz"):
        _assert_renders(os.path.join(deb["tree"], page))
    # The packaged binary is the real thing.
    b = os.path.join(deb["tree"], "usr/bin/respguard")
    v = subprocess.run([b, "--version"], capture_output=True, timeout=30)
    assert v.returncode == 0 and v.stdout.startswith(b"respguard "), v
    ldd = subprocess.run(["ldd", b], capture_output=True, timeout=30).stdout.decode()
    assert "libsystemd.so" in ldd, "the packaged binary must be built with sd_notify:\n" + ldd


def test_deb_control_and_conffiles(deb):
    info = subprocess.run(["dpkg-deb", "-I", deb["deb"]], capture_output=True, check=True,
                          timeout=60).stdout.decode()
    assert re.search(r"^ Package: respguard$", info, re.M), info
    assert "conffiles" in info, info
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb["deb"]], capture_output=True,
                               check=True, timeout=60).stdout
    ctrl = os.path.join(deb["dir"], "control")
    os.makedirs(ctrl, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", ctrl], input=conffiles, check=True, timeout=60)
    with open(os.path.join(ctrl, "conffiles")) as f:
        listed = f.read().split()
    assert "/etc/respguard/respguard.yaml.example" in listed, listed
    with open(os.path.join(ctrl, "postinst")) as f:
        postinst = f.read()
    assert "adduser" in postinst and "respguard" in postinst, postinst


def test_packaged_example_config_is_safe(deb):
    """The shipped example must not serve by accident: every line is a comment, so even copied
    as is it is rejected (no listeners), and nothing in it binds a non-loopback address."""
    ex = os.path.join(deb["tree"], "etc/respguard/respguard.yaml.example")
    with open(ex) as f:
        lines = f.read().splitlines()
    active = [l for l in lines if l.strip() and not l.lstrip().startswith("#")]
    assert not active, "uncommented lines in the shipped example: %r" % active
    r = subprocess.run([respguard_bin(), "check", "-c", ex], capture_output=True, timeout=30)
    assert r.returncode != 0
    # Uncommented (the operator's first step), it is a valid configuration.
    uncommented = os.path.join(deb["dir"], "uncommented.yaml")
    with open(uncommented, "w") as f:
        for l in lines:
            m = re.match(r"^#( |$)(.*)", l)
            if m and not l.startswith("##"):
                f.write(m.group(2) + "\n")
    env = dict(os.environ, UPSTREAM_PASSWORD="x" * 16, WEB_TOKEN="y" * 16)
    r = subprocess.run([respguard_bin(), "check", "-c", uncommented], capture_output=True, env=env,
                       timeout=30)
    assert r.returncode == 0, r.stderr.decode() + open(uncommented).read()
    assert b"listener 127.0.0.1:" in r.stdout, r.stdout


def test_lintian_no_errors(deb):
    r = subprocess.run(["lintian", "--tag-display-limit", "0", deb["deb"]], capture_output=True,
                       timeout=300)
    out = r.stdout.decode() + r.stderr.decode()
    errors = [l for l in out.splitlines() if l.startswith("E:")]
    assert not errors, "lintian errors:\n" + out
    print("lintian:\n" + out)


def test_unit_verifies(deb):
    """systemd-analyze verify with the package's file tree as the root: ExecStart's binary is the
    packaged one, Documentation='s man pages are the packaged ones (MANPATH). The host's units
    (sysinit.target, ...) and /bin/kill (ExecReload) are copied in beside them."""
    root = os.path.join(deb["dir"], "verify-root")
    shutil.copytree(deb["tree"], root, symlinks=True)
    shutil.copytree("/lib/systemd/system", os.path.join(root, "lib/systemd/system"), symlinks=True,
                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("respguard*"))
    os.symlink("usr/bin", os.path.join(root, "bin"))
    shutil.copy("/bin/kill", os.path.join(root, "usr/bin/kill"))
    env = dict(os.environ, MANPATH=os.path.join(root, "usr/share/man"))
    r = subprocess.run(["systemd-analyze", "verify", "--root=" + root, "/" + UNIT],
                       capture_output=True, env=env, timeout=120)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0 and not out.strip(), "systemd-analyze verify:\n" + out


def test_unit_security_exposure(deb):
    unit = os.path.join(deb["tree"], UNIT)
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit],
                       capture_output=True, timeout=120)
    out = r.stdout.decode() + r.stderr.decode()
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert m, "no exposure level in:\n" + out
    score = float(m.group(1))
    print("systemd-analyze security: %.1f" % score)
    assert score <= 2.0, "exposure %.1f > 2.0:\n%s" % (score, out)


def test_unit_settings(deb):
    """What the unit promises the operator (README "Deploy")."""
    with open(os.path.join(deb["tree"], UNIT)) as f:
        text = f.read()
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), []).append(v.strip())
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == ["/usr/bin/respguard -c /etc/respguard/respguard.yaml"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["User"] == ["respguard"]
    assert int(settings["LimitNOFILE"][0]) >= 2 * 10000 + 1024  # clients + upstream connections
    assert "/etc/respguard/respguard.yaml" in settings["ConditionPathExists"]
    # Every command the unit runs is executable inside its sandbox (NoExecPaths=/).
    assert settings["NoExecPaths"] == ["/"]
    allowed = " ".join(settings["ExecPaths"]).split()
    for key in ("ExecStart", "ExecReload"):
        binary = settings[key][0].split()[0]
        assert binary in allowed or "-" + binary in allowed, "%s %s not in ExecPaths" % (key, binary)
    # TimeoutStopSec covers limits.shutdown_timeout's default (10s) with room to spare.
    assert int(settings["TimeoutStopSec"][0].rstrip("s")) > 10
