#!/usr/bin/env bash
# Builds the Debian package from this checkout: packaging/build-deb.sh [OUTDIR] (default: .).
# dpkg-buildpackage wants debian/ at the source root, so the checkout's files (tracked and
# untracked, less what .gitignore ignores: no build dirs) are copied to a temporary directory
# with packaging/debian as debian/. Missing build dependencies (debian/control) are installed
# with apt-get. Leaves respguard_*.deb (and the .buildinfo and .changes) in OUTDIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-.}" && cd "${1:-.}" && pwd)
version=$(dpkg-parsechangelog -l "$root/packaging/debian/changelog" -S Version)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src="$tmp/respguard-$version"
mkdir "$src"
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard |
         grep -zv -e '^packaging/debian/' | xargs -0 cp --parents -t "$src" 2>/dev/null || true)
else
    tar -C "$root" --exclude='./build*' --exclude=./.git --exclude=./packaging/debian -cf - . | tar -C "$src" -xf -
fi
cp -r "$root/packaging/debian" "$src/debian"

cd "$src"
if ! dpkg-checkbuilddeps 2>/dev/null; then
    missing=$(dpkg-checkbuilddeps 2>&1 | sed -n 's/.*Unmet build dependencies: //p' |
                  sed -e 's/([^)]*)//g' -e 's/|[^ ]*//g')
    echo "installing build dependencies: $missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-parallel=$(nproc)}" dpkg-buildpackage -us -uc -b
shopt -s nullglob
mv "$tmp"/respguard_* "$tmp"/respguard-dbgsym_* "$out"/
ls "$out"/respguard_*.deb
