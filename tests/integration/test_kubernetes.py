"""The Kubernetes examples in packaging/kubernetes: every document parses, and what the manifests
say about ports, paths, timeouts, files and pod security agrees with the respguard configuration
they mount. No cluster is needed: the projected volume is laid out in a temporary directory as
the kubelet lays it out, and `respguard check` reads the configuration there."""

import functools
import hashlib
import os
import posixpath
import re
import subprocess
import urllib.parse

import pytest
import yaml

from helpers import ROOT, openssl, respguard_bin

pytestmark = pytest.mark.proxy_only

EXAMPLES_DIR = os.path.join(ROOT, "packaging", "kubernetes")
EXAMPLES = ["sidecar.yaml", "gateway.yaml"]
KINDS = {
    "sidecar.yaml": {"ConfigMap", "Secret", "Deployment"},
    "gateway.yaml": {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                     "NetworkPolicy"},
}
API_VERSIONS = {"ConfigMap": "v1", "Secret": "v1", "Service": "v1", "Deployment": "apps/v1",
                "PodDisruptionBudget": "policy/v1", "NetworkPolicy": "networking.k8s.io/v1"}
# The container image's entrypoint is `respguard -c /etc/respguard/respguard.yaml`.
CONFIG_DIR = "/etc/respguard"
CONFIG_PATH = CONFIG_DIR + "/respguard.yaml"
PLACEHOLDER = "REPLACE-ME"
# *_file keys that name a secret: such a file must come from a Secret, never from a ConfigMap.
SECRET_FILE_KEYS = {"password_file", "acl_file", "key_file"}
DEFAULT_SHUTDOWN_TIMEOUT = "10s"
DEFAULT_REDIS_PORT = 6379


class MountedFile:
    """One key of a ConfigMap or Secret as a file: kind/name/key is where it comes from, mount
    and path where it is (path relative to the mount)."""

    def __init__(self, kind, name, key, content, mount, path):
        self.kind, self.name, self.key, self.content = kind, name, key, content
        self.mount, self.path = mount, path


class Example:
    """One example file: its documents, its Deployment's pod, the respguard container, the files
    that container sees (path in the container -> MountedFile) and the configuration it reads."""

    def __init__(self, name):
        self.name = name
        with open(os.path.join(EXAMPLES_DIR, name)) as f:
            self.docs = [d for d in yaml.safe_load_all(f) if d is not None]
        self.deployment = self.one("Deployment")
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        self.containers = self.pod.get("initContainers", []) + self.pod["containers"]
        named = [c for c in self.containers if c["name"] == "respguard"]
        assert len(named) == 1, "%s: expected one container named respguard" % name
        self.respguard = named[0]
        self.files = self._mounted_files()
        assert CONFIG_PATH in self.files, "%s: nothing mounted at %s" % (name, CONFIG_PATH)
        self.config_text = self.files[CONFIG_PATH].content.decode()
        self.config = yaml.safe_load(self.config_text)

    def all(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, name=None):
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, "%s: expected one %s%s, found %d" % (
            self.name, kind, " named " + name if name else "", len(found))
        return found[0]

    def source_data(self, kind, name):
        """The keys of a ConfigMap's data or a Secret's stringData, as bytes."""
        doc = self.one(kind, name)
        field = "stringData" if kind == "Secret" else "data"
        return {k: v.encode() for k, v in doc.get(field, {}).items()}

    def _mounted_files(self):
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        files = {}
        for mount in self.respguard.get("volumeMounts", []):
            # A subPath mount is never updated by the kubelet, and would lay out files otherwise.
            assert "subPath" not in mount, "%s: %s is mounted with subPath" % (self.name, mount["name"])
            volume = volumes[mount["name"]]
            assert "projected" in volume, "%s: the examples mount projected volumes" % self.name
            for source in volume["projected"]["sources"]:
                (kind_key, ref), = source.items()
                kind = {"configMap": "ConfigMap", "secret": "Secret"}[kind_key]
                data = self.source_data(kind, ref["name"])
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    assert item["key"] in data, "%s: %s %s has no key %s" % (
                        self.name, kind, ref["name"], item["key"])
                    path = posixpath.join(mount["mountPath"], item["path"])
                    assert path not in files, "%s: two sources project %s" % (self.name, path)
                    files[path] = MountedFile(kind, ref["name"], item["key"], data[item["key"]],
                                              mount["mountPath"], item["path"])
        return files

    def file_references(self):
        """(YAML path, key, value) of every *_file key in the configuration."""
        def walk(node, path):
            if isinstance(node, dict):
                for k, v in node.items():
                    p = "%s.%s" % (path, k) if path else k
                    if k.endswith("_file"):
                        yield p, k, v
                    else:
                        yield from walk(v, p)
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    yield from walk(v, "%s[%d]" % (path, i))
        return list(walk(self.config, ""))

    def secret_value(self, name, key):
        return self.source_data("Secret", name)[key].decode()

    def user_acl(self, user):
        return self.files[in_container(self.config["users"][user]["acl_file"])].content.decode()

    def admin_port(self):
        return bind_port(self.config["admin"]["bind"])

    def listener_ports(self, tls):
        return {bind_port(l["bind"]) for l in self.config["listeners"] if ("tls" in l) == tls}


@functools.lru_cache(maxsize=None)
def load_example(name):
    return Example(name)


@pytest.fixture(params=EXAMPLES)
def example(request):
    return load_example(request.param)


@pytest.fixture
def sidecar():
    return load_example("sidecar.yaml")


@pytest.fixture
def gateway():
    return load_example("gateway.yaml")


def in_container(path):
    """Where a file name of the configuration points inside the container: relative names are
    relative to the configuration's directory."""
    return posixpath.normpath(posixpath.join(CONFIG_DIR, path))


def bind_port(bind):
    return int(str(bind).rsplit(":", 1)[1])


def bind_host(bind):
    return str(bind).rsplit(":", 1)[0].strip("[]")


def duration_seconds(value):
    """respguard's duration syntax: a bare number of seconds, or digits with ms, s, m or h."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(value))
    assert m, "not a respguard duration: %r" % value
    return int(m.group(1)) * {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def container_port(container, port):
    """A probe's, Service's or NetworkPolicy's port: a number the container declares, or the name
    of one of its ports."""
    declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, int):
        assert port in declared.values(), "%s does not declare port %d" % (container["name"], port)
        return port
    assert port in declared, "%s has no port named %s" % (container["name"], port)
    return declared[port]


def selects(selector, labels):
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def redis_password_hashes(acl):
    return set(re.findall(r"(?:^|\s)#([0-9a-f]{64})(?=\s|$)", acl))


# ---------------------------------------------------------------------------
# both examples
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXAMPLES)
def test_documents_parse_with_known_kinds(name):
    with open(os.path.join(EXAMPLES_DIR, name)) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    seen = set()
    for d in docs:
        kind = d.get("kind")
        assert kind in API_VERSIONS, "%s: unexpected kind %r" % (name, kind)
        assert d.get("apiVersion") == API_VERSIONS[kind], "%s: %s needs apiVersion %s, not %r" % (
            name, kind, API_VERSIONS[kind], d.get("apiVersion"))
        ident = (kind, d["metadata"]["name"])
        assert ident not in seen, "%s: %s %s twice" % (name, *ident)
        seen.add(ident)
        # Namespace-free, so that `kubectl apply -n` puts everything in one namespace.
        assert "namespace" not in d["metadata"], "%s: %s %s names a namespace" % (name, *ident)
    assert {k for k, _ in seen} == KINDS[name]


def test_config_mounted_from_configmap_and_secrets(example):
    c = example.respguard
    # The image's entrypoint reads CONFIG_PATH; an override could read anything else.
    assert "command" not in c and "args" not in c, "%s: respguard's command is overridden" % example.name
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert CONFIG_DIR in mounts and mounts[CONFIG_DIR].get("readOnly") is True, mounts
    # The kubelet writes the files as root: a non-root respguard reads them through the pod's
    # fsGroup (group read) or not at all.
    volumes = {v["name"]: v for v in example.pod["volumes"]}
    mode = volumes[mounts[CONFIG_DIR]["name"]]["projected"].get("defaultMode", 0o644)
    group_reads = mode & 0o040 and example.pod.get("securityContext", {}).get("fsGroup") is not None
    assert mode & 0o004 or group_reads, "%s: respguard cannot read its files (mode %o)" % (
        example.name, mode)
    assert example.files[CONFIG_PATH].kind == "ConfigMap"
    refs = example.file_references()
    assert refs, "%s: the configuration names no file" % example.name
    for path, key, value in refs:
        # Relative names keep the configuration valid wherever the volume is mounted (and here,
        # in a temporary directory).
        assert not value.startswith("/"), "%s: %s is absolute: %s" % (example.name, path, value)
        target = in_container(value)
        assert target in example.files, "%s: %s names %s, which no mounted key provides" % (
            example.name, path, target)
        if key in SECRET_FILE_KEYS:
            assert example.files[target].kind == "Secret", "%s: %s (%s) comes from a %s" % (
                example.name, path, target, example.files[target].kind)


def test_watch_is_on_and_secrets_are_files(example):
    assert example.config.get("watch") is True, "%s: watch is not on" % example.name
    # An environment variable never changes in a running pod: rotation needs files.
    assert "${" not in example.config_text, "%s: the configuration uses ${VAR}" % example.name
    assert not {"env", "envFrom"} & set(example.respguard), "%s: respguard gets secrets from " \
        "its environment" % example.name
    assert urllib.parse.urlsplit(example.config["upstream"]["url"]).password is None, \
        "%s: the upstream password is in the url instead of password_file" % example.name
    assert "password_file" in example.config["upstream"]
    for user, spec in example.config["users"].items():
        assert "acl_file" in spec, "%s: user %s's password is in the ConfigMap" % (example.name, user)


def test_probes_use_admin_paths_and_port(example):
    admin = example.config["admin"]
    port = example.admin_port()
    # The kubelet connects to the pod's IP: a loopback admin listener would fail every probe.
    assert bind_host(admin["bind"]) in ("0.0.0.0", "::"), admin
    assert admin.get("allow_from"), "a non-loopback admin listener needs allow_from"
    c = example.respguard
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert probe in c, "%s: respguard has no %s" % (example.name, probe)
        get = c[probe]["httpGet"]
        assert get["path"] == path, "%s: %s on %s" % (example.name, probe, get["path"])
        assert container_port(c, get["port"]) == port, "%s: %s's port is not admin's %d" % (
            example.name, probe, port)
    annotations = example.deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(port)
    assert annotations.get("prometheus.io/path") == "/metrics"


def test_termination_grace_exceeds_drain(example):
    grace = example.pod["terminationGracePeriodSeconds"]
    shutdown = duration_seconds(example.config.get("limits", {}).get("shutdown_timeout",
                                                                    DEFAULT_SHUTDOWN_TIMEOUT))
    # The grace period also covers the preStop hook, which runs before SIGTERM.
    pause = example.respguard.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert grace > pause + shutdown, "%s: terminationGracePeriodSeconds %s <= preStop %ss + " \
        "shutdown_timeout %ss" % (example.name, grace, pause, shutdown)


def test_pod_security(example):
    pod_sc = example.pod.get("securityContext", {})
    assert example.pod.get("automountServiceAccountToken") is False, "respguard needs no API token"
    for c in example.containers:
        sc = c.get("securityContext", {})
        where = "%s: container %s" % (example.name, c["name"])
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert "add" not in sc.get("capabilities", {}), where
        resources = c.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
        assert "memory" in resources.get("limits", {}), where


def test_secrets_hold_only_placeholders(example):
    """Every secret value is a marked placeholder, and every password hash in an ACL is the hash
    of user U's placeholder password REPLACE-ME-U-password (README.md says so): a real password
    or hash is never shipped, and the README's instructions hold."""
    acl_keys = {}
    for user, spec in example.config["users"].items():
        f = example.files[in_container(spec["acl_file"])]
        acl_keys[(f.name, f.key)] = user
    for secret in example.all("Secret"):
        name = secret["metadata"]["name"]
        # stringData, so that the placeholders read as what they are.
        assert "data" not in secret and secret.get("stringData"), "%s: Secret %s" % (example.name, name)
        for key, value in secret["stringData"].items():
            if (name, key) not in acl_keys:
                assert PLACEHOLDER in value, "%s: %s/%s is not a placeholder" % (example.name, name, key)
                continue
            user = acl_keys[(name, key)]
            placeholder_hash = hashlib.sha256(("%s-%s-password" % (PLACEHOLDER, user)).encode()).hexdigest()
            assert redis_password_hashes(value) == {placeholder_hash}, \
                "%s: %s/%s: the hash is not that of %s-%s-password" % (example.name, name, key,
                                                                      PLACEHOLDER, user)
            assert not re.search(r"(?:^|\s)>", value), "%s: %s/%s has a plaintext password" % (
                example.name, name, key)


def _self_signed(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "tls.key", "-out", "tls.crt", "-days", "2", "-subj", "/CN=respguard-gateway",
            "-addext", "subjectAltName=DNS:respguard-gateway.default.svc", cwd=d)
    with open(os.path.join(d, "tls.crt"), "rb") as crt, open(os.path.join(d, "tls.key"), "rb") as key:
        return crt.read(), key.read()


def _lay_out_as_kubelet(example, root):
    """The mounted files under root, as the kubelet writes a projected volume: the keys in a
    timestamped directory, ..data a symlink to it, and each top-level entry a symlink through
    ..data (the layout whose swap watch must see)."""
    for f in example.files.values():
        mount = root + f.mount
        data_dir = os.path.join(mount, "..2024_01_01_00_00_00.000000001")
        target = os.path.join(data_dir, f.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(f.content)
        if not os.path.islink(os.path.join(mount, "..data")):
            os.symlink(os.path.basename(data_dir), os.path.join(mount, "..data"))
        top = f.path.split("/")[0]
        if not os.path.islink(os.path.join(mount, top)):
            os.symlink(os.path.join("..data", top), os.path.join(mount, top))


def test_respguard_check_accepts_mounted_config(example, tmp_path):
    """respguard itself validates the configuration as mounted, with its files; where the
    example has placeholder certificates, a throwaway pair stands in."""
    root = str(tmp_path / "root")
    _lay_out_as_kubelet(example, root)
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = _self_signed(str(certs))
    # Placeholder passwords are valid as they are; placeholder PEM files are not.
    stand_ins = {"cert_file": cert, "client_ca_file": cert, "ca_file": cert, "key_file": key}
    for _, k, value in example.file_references():
        target = os.path.realpath(root + in_container(value))
        with open(target, "rb") as f:
            placeholder = PLACEHOLDER.encode() in f.read()
        if k in stand_ins and placeholder:
            with open(target, "wb") as f:
                f.write(stand_ins[k])
    # The pod gives respguard no environment of its own (test_watch_is_on_and_secrets_are_files).
    r = subprocess.run([respguard_bin(), "check", "-c", root + CONFIG_PATH], capture_output=True,
                       timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    out = r.stdout.decode()
    assert r.returncode == 0, "%s: respguard check failed:\n%s%s" % (example.name, out, r.stderr.decode())
    for listener in example.config["listeners"]:
        assert "listener %s " % listener["bind"] in out, out
    assert "admin http://%s " % example.config["admin"]["bind"] in out, out


# ---------------------------------------------------------------------------
# the sidecar
# ---------------------------------------------------------------------------

def test_sidecar_is_native(sidecar):
    init = {c["name"]: c for c in sidecar.pod.get("initContainers", [])}
    assert "respguard" in init, "respguard is not an init container"
    # restartPolicy: Always is what makes an init container a sidecar that keeps running.
    assert init["respguard"].get("restartPolicy") == "Always"
    assert all(c["name"] != "respguard" for c in sidecar.pod["containers"])
    # Plaintext in: the listener must be loopback-only, the pod's own.
    assert sidecar.listener_ports(tls=True) == set()
    assert all(bind_host(l["bind"]).startswith("127.") for l in sidecar.config["listeners"])


def test_sidecar_app_logs_in_as_configured_user(sidecar):
    """The app's REDIS_URL reaches respguard's listener as a configured user, with the password
    whose hash that user's ACL holds."""
    apps = [c for c in sidecar.pod["containers"] if c["name"] != "respguard"]
    assert len(apps) == 1, apps
    env = apps[0]["env"]
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    url = urllib.parse.urlsplit(by_name["REDIS_URL"]["value"])
    assert url.scheme == "redis", url
    binds = {l["bind"] for l in sidecar.config["listeners"]}
    assert "%s:%d" % (url.hostname, url.port) in binds, (url.netloc, binds)
    assert url.username in sidecar.config["users"], url.username
    m = re.fullmatch(r"\$\((\w+)\)", url.password or "")
    assert m, "the password in REDIS_URL is not a $(VAR) reference to a Secret"
    var = m.group(1)
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert var in names and names.index(var) < names.index("REDIS_URL"), names
    ref = by_name[var]["valueFrom"]["secretKeyRef"]
    password = sidecar.secret_value(ref["name"], ref["key"])
    assert hashlib.sha256(password.encode()).hexdigest() in redis_password_hashes(
        sidecar.user_acl(url.username)), "the app's password is not one of %s's" % url.username
    # The app's plaintext password is the app's alone: it is not projected for respguard.
    assert all((f.name, f.key) != (ref["name"], ref["key"]) for f in sidecar.files.values())


# ---------------------------------------------------------------------------
# the gateway
# ---------------------------------------------------------------------------

def test_gateway_replicas_spread_and_disruption_budget(gateway):
    spec = gateway.deployment["spec"]
    assert spec["replicas"] == 2
    assert selects(spec["selector"], gateway.labels)
    pdb = gateway.one("PodDisruptionBudget")["spec"]
    assert pdb.get("minAvailable") == 1, pdb
    assert selects(pdb["selector"], gateway.labels), "the PodDisruptionBudget selects no gateway pod"
    spread = [t for t in gateway.pod.get("topologySpreadConstraints", [])
              if t["topologyKey"] == "kubernetes.io/hostname"]
    assert spread and spread[0]["whenUnsatisfiable"] == "DoNotSchedule", \
        "the replicas are not kept on different nodes"
    assert selects(spread[0]["labelSelector"], gateway.labels)
    # A rollout must not take the only other replica away.
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gateway_service_reaches_tls_listener(gateway):
    service = gateway.one("Service")["spec"]
    assert selects({"matchLabels": service["selector"]}, gateway.labels), "the Service selects no gateway pod"
    tls_ports = gateway.listener_ports(tls=True)
    assert tls_ports, "the gateway has no TLS listener"
    for port in service["ports"]:
        target = container_port(gateway.respguard, port.get("targetPort", port["port"]))
        assert target in tls_ports, "Service port %s reaches %d, not a TLS listener (%s)" % (
            port["port"], target, tls_ports)


def test_gateway_network_policy_ports(gateway):
    policy = gateway.one("NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], gateway.labels), "the NetworkPolicy selects no gateway pod"
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    listener_ports = gateway.listener_ports(tls=True)
    admin_port = gateway.admin_port()
    ingress_ports = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), "an ingress rule without from admits every source"
        for p in rule["ports"]:
            ingress_ports[container_port(gateway.respguard, p["port"])] = rule["from"]
    assert set(ingress_ports) == listener_ports | {admin_port}, ingress_ports
    for port in listener_ports:
        assert all(peer.get("podSelector", {}).get("matchLabels") for peer in ingress_ports[port]), \
            "the listener admits pods without a client label"
    assert all(peer.get("namespaceSelector", {}).get("matchLabels") and "podSelector" not in peer
               for peer in ingress_ports[admin_port]), "the admin port admits more than a namespace"

    upstream_port = urllib.parse.urlsplit(gateway.config["upstream"]["url"]).port or DEFAULT_REDIS_PORT
    egress = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {("TCP", upstream_port), ("UDP", 53), ("TCP", 53)}, egress
    for rule in policy["egress"]:
        if any(p["port"] == 53 for p in rule["ports"]):
            assert rule.get("to"), "DNS is open to every destination"
