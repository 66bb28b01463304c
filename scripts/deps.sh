#!/usr/bin/env bash
# Installs what respguard needs to build and test on Debian 12, and nothing when it is all there.
set -euo pipefail
pkgs=(build-essential meson ninja-build pkg-config libuv1-dev libssl-dev libyaml-dev
      libmicrohttpd-dev libjansson-dev libcmocka-dev redis-server redis-tools openssl python3-pytest python3-redis
      python3-prometheus-client nodejs npm libasan8 libubsan1 libtsan2
      libsystemd-dev scdoc man-db groff-base systemd debhelper dpkg-dev fakeroot lintian python3-yaml
      mmdebstrap umoci)
[ "${1:-}" = "--runtime-only" ] && pkgs=(build-essential meson ninja-build pkg-config libuv1-dev libssl-dev
      libyaml-dev libmicrohttpd-dev libjansson-dev redis-server redis-tools openssl)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm may come from elsewhere than Debian's packages: accept working binaries.
if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<<"${missing[*]:-}"
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
