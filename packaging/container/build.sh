#!/usr/bin/env bash
# Builds respguard's container image from the Debian package: packaging/container/build.sh [OUTDIR]
# (default: .). RESPGUARD_DEB=path/to/respguard_*.deb takes that package; otherwise
# packaging/build-deb.sh builds one into OUTDIR/deb.
#
# No base image is downloaded: mmdebstrap makes a minimal Debian 12 root filesystem from the
# Debian mirror (bookworm with its updates and security suites): the Essential:yes set (dpkg and
# the shell the package's maintainer scripts run with), ca-certificates (for upstreams verified
# against the system trust store) and the package with its dependencies; no apt, and no
# documentation but the copyright files. The package's postinst creates the `respguard` system
# user the image runs as (oci_image.py fails if it is missing). Leaves
#   OUTDIR/rootfs              the image's root filesystem, a directory
#   OUTDIR/respguard-oci.tar   an OCI image layout tarball of it (oci_image.py beside this file)
# Runs as root (mmdebstrap's root mode). Rebuilds both from scratch on every run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-.}" && cd "${1:-.}" && pwd)
SECONDS=0

if ! command -v mmdebstrap >/dev/null; then
    echo "installing mmdebstrap" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

deb=${RESPGUARD_DEB:-}
if [ -z "$deb" ]; then
    "$here/../build-deb.sh" "$out/deb" >&2
    version=$(dpkg-parsechangelog -l "$here/../debian/changelog" -S Version)
    deb="$out/deb/respguard_${version}_$(dpkg --print-architecture).deb"
fi
deb=$(realpath "$deb")
version=$(dpkg-deb -f "$deb" Version)

rootfs="$out/rootfs.new"
# --one-file-system: a run killed inside mmdebstrap may leave /proc or the package mounted there.
rm -rf --one-file-system "$rootfs"
# merged-usr: the /usr symlinks plus usr-is-merged, as debootstrap does; otherwise apt satisfies
# init-system-helpers with usrmerge, which brings all of perl (50 MB).
# file-mirror-automount: makes the local .deb visible to dpkg inside the chroot.
mmdebstrap --variant=essential --include=ca-certificates --include="$deb" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$rootfs"

# apt ran from outside the chroot and is not in the image: its state and sources go.
rm -rf "$rootfs/var/lib/apt" "$rootfs/var/cache/apt" "$rootfs/var/log/apt" \
    "$rootfs/etc/apt/sources.list"
# Runtimes mount their own /dev; device nodes in a layer cannot be unpacked without CAP_MKNOD
# (rootless podman, for one).
find "$rootfs/dev" -mindepth 1 -delete
# mmdebstrap copied the build host's resolv.conf and hostname in. Runtimes bind-mount their own
# over these and /etc/hosts, so the image has them as empty files: mountpoints on a read-only root.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/hosts"

rm -rf --one-file-system "$out/rootfs"
mv "$rootfs" "$out/rootfs"
python3 "$here/oci_image.py" --rootfs "$out/rootfs" --output "$out/respguard-oci.tar" \
    --version "$version" --architecture "$(dpkg-deb -f "$deb" Architecture)"
echo "respguard $version image built in ${SECONDS}s: $out/rootfs, $out/respguard-oci.tar" >&2
