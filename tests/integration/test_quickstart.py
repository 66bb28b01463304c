"""The README's first command: scripts/quickstart.sh gives a new user a working REDIS_URL."""

import os
import re
import subprocess
import urllib.error
import urllib.request

import pytest

from helpers import free_port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.proxy_only


def test_quickstart_prints_a_working_redis_url(tmp_path):
    env = dict(os.environ, QUICKSTART_DIR=str(tmp_path / "qs"), RESPGUARD_PORT=str(free_port()),
               UPSTREAM_TLS_PORT=str(free_port()), ADMIN_PORT=str(free_port()))
    script = os.path.join(ROOT, "scripts", "quickstart.sh")
    try:
        out = subprocess.run([script, "--background"], env=env, capture_output=True, timeout=300, check=True)
        text = out.stdout.decode()
        url = re.search(r"REDIS_URL=(redis://\S+)", text).group(1)
        cli = re.search(r"^\s*(redis-cli .*)$", text, re.M).group(1)
        assert url.startswith("redis://app:") and url.endswith("@127.0.0.1:%s" % env["RESPGUARD_PORT"])
        # the printed redis-cli line works as printed
        got = subprocess.run(cli, shell=True, capture_output=True, timeout=10)
        assert got.stdout.strip() == b"PONG", got
        # and the URL works with a client library; the stand-in upstream is TLS only
        import redis
        r = redis.Redis.from_url(url, socket_timeout=5)
        assert r.set("quickstart:k", "v") and r.get("quickstart:k") == b"v"
        r.close()
        # the printed metrics address answers, and respguard is ready
        metrics_url = re.search(r"curl (http://\S+/metrics)", text).group(1)
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            assert b"respguard_commands_total{user=\"app\",category=\"write\",verdict=\"allowed\"} 1" in resp.read()
        ready_url = metrics_url.replace("/metrics", "/readyz")
        def ready():
            try:
                return urllib.request.urlopen(ready_url, timeout=5).status == 200
            except urllib.error.HTTPError:  # 503 until the first probe has succeeded
                return False
        wait_until(ready, 10, what="/readyz 200")
        upstream_pw = (tmp_path / "qs" / "upstream.password").read_text().strip()
        log = (tmp_path / "qs" / "respguard.log").read_text()
        assert upstream_pw not in log and upstream_pw not in text
    finally:
        subprocess.run([script, "--stop"], env=env, timeout=30)
