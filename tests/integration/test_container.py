"""The container image (packaging/container): its OCI layout, and the image run as a container
would run it.

packaging/container/build.sh builds the image once for the module from the suite's .deb (the
session's `deb` fixture, shared with test_packaging.py). Container runtimes cannot run on these
machines (crun may not set rlimits or cgroups here), so the image is run the way a runtime would:
umoci, an OCI tool, unpacks the image tarball into a runtime bundle (root filesystem plus the
runtime config it derives from the image config: user, args, environment), and unshare + chroot
run that bundle's process in its own mount and PID namespaces (respguard is PID 1, as in a
container) on the image's root mounted read-only (`docker run --read-only`), with a minimal /dev,
/proc, the runtime's /etc/hosts, and the config and CA certificate mounted read-only at
/etc/respguard the way a Kubernetes ConfigMap is. The network namespace is the host's, so the
suite's TLS upstream on 127.0.0.1 is reachable.

scripts/test.sh runs this module once, in the last run (like test_packaging.py): mmdebstrap
fetches the image's packages from the Debian mirror (~20s).
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

import pytest
import redis

from helpers import PASSWORDS, ROOT, blocked_clients, default_users, free_port, to_yaml, unique, \
    wait_port, wait_until
from resp_util import RawConn, bulk

pytestmark = pytest.mark.proxy_only

ENTRYPOINT = ["respguard", "-c", "/etc/respguard/respguard.yaml"]

# Runs in the new mount and PID namespaces: $1 is the image's root filesystem, $2 the config
# directory, $3 the hosts file, $4 uid:gid; the rest is the command.
RUN_CONTAINER = r"""
set -eu
root=$1 config=$2 hosts=$3 user=$4
shift 4
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,noexec,mode=0755 tmpfs "$root/dev"
for node in null zero full random urandom; do
    : >"$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mount --bind -o ro "$hosts" "$root/etc/hosts"
mount --bind -o ro "$config" "$root/etc/respguard"
exec chroot --userspec="$user" "$root" "$@"
"""


@pytest.fixture(scope="module")
def image(deb, tmp_path_factory):
    """packaging/container/build.sh with the suite's .deb: the rootfs and the OCI tarball."""
    out = tmp_path_factory.mktemp("container")
    t0 = time.monotonic()
    r = subprocess.run([os.path.join(ROOT, "packaging", "container", "build.sh"), str(out)],
                       env=dict(os.environ, RESPGUARD_DEB=deb["deb"]), capture_output=True,
                       timeout=600)
    assert r.returncode == 0, "container/build.sh failed:\n%s\n%s" % (r.stdout.decode()[-4000:],
                                                                    r.stderr.decode()[-4000:])
    print("image built in %.0fs" % (time.monotonic() - t0))
    version = subprocess.run(["dpkg-deb", "-f", deb["deb"], "Version"], capture_output=True,
                             check=True, timeout=30).stdout.decode().strip()
    return {"dir": str(out), "rootfs": str(out / "rootfs"), "oci": str(out / "respguard-oci.tar"),
            "version": version}


def _blob(files, descriptor):
    """The blob a descriptor points at; its size and digest checked."""
    algorithm, digest = descriptor["digest"].split(":")
    assert algorithm == "sha256", descriptor
    name = "blobs/sha256/" + digest
    assert name in files, "%s missing from the image tarball" % name
    data = files[name]
    assert len(data) == descriptor["size"], (name, len(data), descriptor["size"])
    assert hashlib.sha256(data).hexdigest() == digest, "%s does not match its digest" % name
    return data


def test_oci_layout(image):
    """index.json -> manifest -> config and the one gzip layer, every digest and size right; the
    config runs respguard as the package's non-root user; the layer is build.sh's rootfs."""
    with tarfile.open(image["oci"]) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1, index
    descriptor = index["manifests"][0]
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    ref = descriptor["annotations"]["org.opencontainers.image.ref.name"]
    assert ref == "respguard:" + image["version"], ref

    manifest = json.loads(_blob(files, descriptor))
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(_blob(files, manifest["config"]))
    layers = manifest["layers"]
    assert [l["mediaType"] for l in layers] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    layer = gzip.decompress(_blob(files, layers[0]))
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}

    assert (config["os"], config["architecture"]) == ("linux", descriptor["platform"]["architecture"])
    run = config["config"]
    assert run["Entrypoint"] == ENTRYPOINT and "Cmd" not in run
    assert run["ExposedPorts"] == {"6379/tcp": {}, "9121/tcp": {}}
    assert run["Labels"]["org.opencontainers.image.version"] == image["version"]
    # User is numeric (Kubernetes' runAsNonRoot can only check a number) and is the package's
    # respguard account in the layer's own /etc/passwd.
    uid, gid = run["User"].split(":")
    assert uid.isdigit() and gid.isdigit() and uid != "0" and gid != "0", run["User"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as rootfs:
        members = {m.name: m for m in rootfs.getmembers()}
        passwd = rootfs.extractfile("etc/passwd").read().decode()
    assert "respguard:x:%s:%s:" % (uid, gid) in passwd, passwd
    binary = members["usr/bin/respguard"]
    assert binary.uid == 0 and binary.mode & 0o111 and not binary.mode & 0o6000
    assert not [n for n, m in members.items() if m.ischr() or m.isblk()], "device nodes in the layer"
    # Minimal: no apt nor its state, no downloaded packages, no man pages.
    leftovers = [n for n in members if n in ("usr/bin/apt", "usr/bin/apt-get") or n.endswith(".deb")
                 or n.startswith(("var/lib/apt", "var/cache/apt", "usr/share/man/"))]
    assert not leftovers, leftovers
    on_disk = set()
    for d, dirs, names in os.walk(image["rootfs"]):
        on_disk.update(os.path.relpath(os.path.join(d, n), image["rootfs"]) for n in dirs + names)
    assert set(members) == on_disk, set(members) ^ on_disk


@pytest.fixture(scope="module")
def bundle(image):
    """The image unpacked by umoci into a runtime bundle: rootfs/ and config.json."""
    layout = os.path.join(image["dir"], "layout")
    with tarfile.open(image["oci"]) as archive:
        archive.extractall(layout)
    with open(os.path.join(layout, "index.json")) as f:
        ref = json.load(f)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    path = os.path.join(image["dir"], "bundle")
    r = subprocess.run(["umoci", "unpack", "--image", "%s:%s" % (layout, ref), path],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, "umoci unpack failed:\n" + r.stderr.decode()
    with open(os.path.join(path, "config.json")) as f:
        process = json.load(f)["process"]
    return {"rootfs": os.path.join(path, "rootfs"), "process": process}


def _status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _root_mount_options(pid):
    """The options of the mount the process sees as / (the last one there is on top)."""
    with open("/proc/%d/mountinfo" % pid) as f:
        roots = [line.split()[5].split(",") for line in f if line.split()[4] == "/"]
    assert roots, "no mount at / in the container's mountinfo"
    return roots[-1]


def _touch_inside(pid, path, ids):
    """touch PATH in the container's mount namespace and root, as ids (uid, gid), or None: root."""
    setids = ["--setuid", str(ids[0]), "--setgid", str(ids[1])] if ids else []
    return subprocess.run(["nsenter", "--target", str(pid), "--mount", "--root"] + setids
                          + ["touch", path], capture_output=True, timeout=30)


def test_image_runs_read_only_as_non_root(bundle, upstream, certs, tmp_path):
    """The unpacked image under unshare + chroot as its user: starts on a read-only root, serves
    through the TLS upstream, and on SIGTERM drains an in-flight BLPOP and exits 0."""
    process = bundle["process"]
    assert process["args"] == ENTRYPOINT, process
    uid, gid = process["user"]["uid"], process["user"]["gid"]
    assert uid != 0 and gid != 0, process["user"]

    # The ConfigMap: config and upstream CA, readable by the container's group only.
    config = tmp_path / "config"
    config.mkdir()
    port = free_port()
    cfg = {
        "listeners": [{"bind": "127.0.0.1:%d" % port}],
        "upstream": {"url": "rediss://default:${UPSTREAM_PW}@localhost:%d" % upstream.tls_port,
                     "ca_file": "/etc/respguard/ca.crt", "connect_timeout": "2s"},
        "users": default_users(),
        "limits": {"login_timeout": "2s", "shutdown_timeout": "5s"},
    }
    (config / "respguard.yaml").write_text(to_yaml(cfg) + "\n")
    shutil.copy(certs.path("ca.crt"), config / "ca.crt")
    for path, mode in ((config, 0o750), (config / "respguard.yaml", 0o640),
                       (config / "ca.crt", 0o640)):
        os.chown(path, 0, gid)
        os.chmod(path, mode)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")

    env = dict(e.split("=", 1) for e in process["env"])
    env["UPSTREAM_PW"] = upstream.password
    err_path = tmp_path / "stderr.log"
    with open(err_path, "wb") as err:
        # --kill-child: if the test kills unshare, the container goes with it.
        container = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", RUN_CONTAINER, "sh",
             bundle["rootfs"], str(config), str(hosts), "%d:%d" % (uid, gid)] + process["args"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
    direct = upstream.client()
    try:
        try:
            wait_port(port, 15, container, "respguard in the container")
        except AssertionError as e:
            raise AssertionError("%s; stderr:\n%s" % (e, err_path.read_text()))
        with open("/proc/%d/task/%d/children" % (container.pid, container.pid)) as f:
            pid = int(f.read().split()[0])
        status = _status(pid)
        assert status["Name"] == "respguard", status
        assert status["Uid"].split() == [str(uid)] * 4, status["Uid"]
        assert status["Gid"].split() == [str(gid)] * 4, status["Gid"]
        assert int(status["CapEff"], 16) == 0, status["CapEff"]
        assert status["NSpid"].split()[-1] == "1", "not PID 1 in its namespace: " + status["NSpid"]

        assert "ro" in _root_mount_options(pid)
        # Nowhere to write, not even in /tmp; root is stopped too: read-only, not permissions.
        for path, ids in (("/probe", (uid, gid)), ("/tmp/probe", (uid, gid)), ("/probe", None)):
            r = _touch_inside(pid, path, ids)
            assert r.returncode != 0 and b"Read-only file system" in r.stderr, (path, ids, r)

        c = redis.Redis(host="127.0.0.1", port=port, username="web", password=PASSWORDS["web"],
                        socket_timeout=10, socket_connect_timeout=5)
        assert c.ping() is True
        key = unique("container")
        assert c.set(key, "through the image") is True
        assert direct.get(key) == b"through the image"
        c.close()

        # SIGTERM drains: the BLPOP in flight is answered, then respguard exits 0.
        q = unique("q")
        base = blocked_clients(direct)
        raw = RawConn(port, timeout=15)
        raw.send_cmd("AUTH", "web", PASSWORDS["web"])
        assert raw.read_raw() == b"+OK\r\n"
        raw.send_cmd("BLPOP", q, "20")
        wait_until(lambda: blocked_clients(direct) >= base + 1, 5, what="BLPOP blocked on the upstream")
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: '"phase":"begin"' in err_path.read_text(), 5, what="shutdown begin")
        direct.rpush(q, "drained")
        assert raw.read_raw() == b"*2\r\n" + bulk(q) + bulk("drained")
        raw.close()
        # unshare exits with its child's status.
        assert container.wait(15) == 0, err_path.read_text()
    finally:
        if container.poll() is None:
            container.kill()
            container.wait(10)
        direct.close()
    log = [json.loads(line) for line in err_path.read_text().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "start" and e.get("pid") == 1 for e in log), log
    assert any(e.get("event") == "shutdown" and e.get("phase") == "end" for e in log), log
