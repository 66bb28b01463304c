#!/usr/bin/env python3
"""Packs a root filesystem directory into an OCI image layout tarball (image-spec v1.0).

    oci_image.py --rootfs DIR --output FILE.tar --version VERSION --architecture DEB_ARCH

One gzip layer made with GNU tar (numeric owners, xattrs such as file capabilities, names
sorted), the image config (non-root User from the rootfs's `respguard` account, Entrypoint,
ExposedPorts, labels), its manifest, index.json and oci-layout, packed into FILE.tar the way
`podman load`, `docker load` (Docker 25 and later) and `skopeo copy oci-archive:` read it.
Standard library only: no Debian package writes an OCI layout from a directory without a
container engine.
"""

import argparse
import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

USER = "respguard"
ENTRYPOINT = ["respguard", "-c", "/etc/respguard/respguard.yaml"]
# What a container's listeners usually are: 6379 for clients (TLS, or plaintext on the pod's
# loopback for a sidecar), 9121 for the admin listener (metrics, /healthz, /readyz).
EXPOSED_PORTS = ["6379/tcp", "9121/tcp"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Debian architecture -> OCI (Go) architecture and variant.
ARCHITECTURES = {
    "amd64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "armhf": ("arm", "v7"),
    "i386": ("386", None),
    "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def account_ids(rootfs, name):
    """"uid:gid" of an account in the rootfs's /etc/passwd: numeric, so that a runtime (and
    Kubernetes' runAsNonRoot) can tell it is not root without looking inside the image."""
    with open(os.path.join(rootfs, "etc", "passwd")) as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == name:
                return "%s:%s" % (fields[2], fields[3])
    raise SystemExit("no user %r in %s/etc/passwd (the package's postinst creates it)"
                     % (name, rootfs))


def write_layer(rootfs, blobs):
    """The rootfs as one gzip layer in blobs/: returns (descriptor, diff_id)."""
    # The top-level entries by name rather than ".": members are "etc/...", not "./etc/...",
    # as in the layers registries serve. The PaxHeaders name is fixed (tar's default has the
    # pid in it) and atime/ctime are left out, so the same tree gives the same bytes.
    entries = sorted(os.listdir(rootfs))
    tar = subprocess.Popen(
        ["tar", "--create", "--file=-", "--directory=" + rootfs, "--sort=name", "--numeric-owner",
         "--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
         "--xattrs", "--xattrs-include=*", "--"] + entries,
        stdout=subprocess.PIPE)
    diff_id = hashlib.sha256()
    tmp = os.path.join(blobs, "layer.tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        for chunk in iter(lambda: tar.stdout.read(1 << 20), b""):
            diff_id.update(chunk)
            gz.write(chunk)
    if tar.wait() != 0:
        raise SystemExit("tar of %s failed" % rootfs)
    digest = sha256_file(tmp)
    blob = os.path.join(blobs, digest)
    os.rename(tmp, blob)
    descriptor = {"mediaType": MEDIA_LAYER, "digest": "sha256:" + digest,
                  "size": os.path.getsize(blob)}
    return descriptor, "sha256:" + diff_id.hexdigest()


def write_json_blob(blobs, media_type, obj):
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}


def build(rootfs, output, version, deb_arch):
    if deb_arch not in ARCHITECTURES:
        raise SystemExit("no OCI architecture known for Debian's %r" % deb_arch)
    architecture, variant = ARCHITECTURES[deb_arch]
    platform = {"architecture": architecture, "os": "linux"}
    if variant:
        platform["variant"] = variant
    # A tag may hold [A-Za-z0-9_.-] only; Debian versions may also have "+" and "~".
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", version)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    layout = tempfile.mkdtemp(prefix="oci-layout-", dir=os.path.dirname(output))
    try:
        blobs = os.path.join(layout, "blobs", "sha256")
        os.makedirs(blobs)
        layer, diff_id = write_layer(rootfs, blobs)
        config = dict(platform, created=created, config={
            "User": account_ids(rootfs, USER),
            "Env": ["PATH=" + PATH],
            "Entrypoint": ENTRYPOINT,
            "WorkingDir": "/",
            "ExposedPorts": {port: {} for port in EXPOSED_PORTS},
            # SIGTERM is what drains (limits.shutdown_timeout); said here so no runtime guesses.
            "StopSignal": "SIGTERM",
            "Labels": {
                "org.opencontainers.image.title": "respguard",
                "org.opencontainers.image.description":
                    "TLS-enforcing Redis protocol proxy with per-user ACLs",
                "org.opencontainers.image.version": version,
            },
        }, rootfs={"type": "layers", "diff_ids": [diff_id]}, history=[{
            "created": created,
            "created_by": "packaging/container/build.sh: mmdebstrap bookworm, respguard " + version,
        }])
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": write_json_blob(blobs, MEDIA_CONFIG, config),
            "layers": [layer],
            "annotations": {"org.opencontainers.image.version": version,
                            "org.opencontainers.image.created": created},
        }
        manifest_descriptor = write_json_blob(blobs, MEDIA_MANIFEST, manifest)
        # The image's name after a load: containerd (docker load) reads io.containerd.image.name;
        # podman takes org.opencontainers.image.ref.name for the whole name (a bare tag there
        # would become the image's name), so that one is name:tag too.
        manifest_descriptor["platform"] = platform
        manifest_descriptor["annotations"] = {
            "io.containerd.image.name": "docker.io/library/respguard:" + tag,
            "org.opencontainers.image.ref.name": "respguard:" + tag,
        }
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_descriptor]}
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump(index, f, sort_keys=True, separators=(",", ":"))
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

        tmp_output = output + ".tmp"
        with tarfile.open(tmp_output, "w", format=tarfile.PAX_FORMAT) as archive:
            for name in ("oci-layout", "index.json", "blobs"):
                archive.add(os.path.join(layout, name), arcname=name)
        os.replace(tmp_output, output)
    finally:
        shutil.rmtree(layout)
    return manifest_descriptor


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rootfs", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--version", required=True, help="respguard's (the package's) version")
    parser.add_argument("--architecture", required=True, help="Debian architecture of the package")
    args = parser.parse_args()
    descriptor = build(os.path.abspath(args.rootfs), os.path.abspath(args.output), args.version,
                       args.architecture)
    print("%s: %s %s" % (args.output, descriptor["annotations"]["org.opencontainers.image.ref.name"],
                         descriptor["digest"]))


if __name__ == "__main__":
    main()
