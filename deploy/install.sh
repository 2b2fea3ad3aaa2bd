#!/bin/sh
# Make a Raspberry Pi-class device (Raspberry Pi OS / Debian) boot straight into the canvas:
# the app in a virtual environment, its system users, settings, and two systemd units
# (hwr-edge, and hwr-kiosk showing the canvas full screen). Run it again at any time: it
# changes only what differs and keeps the settings a teacher has made.
#
#   sudo deploy/install.sh [--wheel FILE.whl] [--no-kiosk] [--root DIR] [--pip-option OPT]...
#
# --wheel    the package to install (default: a wheel built from this checkout)
# --no-kiosk the app only (a device used from another screen)
# --root     install into DIR instead of / (an image being prepared); nothing is started
# --pip-option  passed to pip (e.g. --no-index --find-links DIR for an offline install)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=/
wheel=
kiosk=1
pip_opts=
prefix=/opt/hwr-edge

while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) wheel=$2; shift 2 ;;
    --no-kiosk) kiosk=0; shift ;;
    --root) root=$2; shift 2 ;;
    --pip-option) pip_opts="$pip_opts $2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo), it creates users and system units" >&2
  exit 2
fi
root=$(cd "$root" && pwd)
dest="${root%/}$prefix"
say() { echo "install.sh: $*"; }

# 1. The package, as a wheel (so the device does not depend on this checkout's layout).
if [ -z "$wheel" ]; then
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  python3 -m pip wheel --no-deps --quiet -w "$build" "$here/.."
  wheel=$(ls "$build"/classroom_hwr-*.whl)
fi
[ -f "$wheel" ] || { echo "install.sh: no wheel at $wheel" >&2; exit 2; }

# 2. Users, from the sysusers file (systemd-sysusers understands --root).
install -D -m 0644 "$here/sysusers.conf" "$root/usr/lib/sysusers.d/hwr-edge.conf"
install -d -m 0755 "$root/etc"
systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/hwr-edge.conf"

# 3. The virtual environment and the app in it.
if [ ! -x "$dest/venv/bin/python" ]; then
  say "creating $dest/venv"
  python3 -m venv "$dest/venv"
fi
# shellcheck disable=SC2086  # pip options are words
"$dest/venv/bin/python" -m pip install --quiet --disable-pip-version-check $pip_opts "$wheel[edge]"
# The same version number may be a newer build: make sure this wheel's files are the ones installed.
# shellcheck disable=SC2086
"$dest/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall $pip_opts "$wheel"

# 4. Settings: written once; a teacher's changes are kept on the next run.
install -d -m 0755 "$root/etc/hwr-edge"
if [ ! -f "$root/etc/hwr-edge/edge.toml" ]; then
  install -m 0644 "$here/edge.toml" "$root/etc/hwr-edge/edge.toml"
fi
if [ ! -f "$root/etc/hwr-edge/environment" ]; then
  install -m 0640 /dev/null "$root/etc/hwr-edge/environment"
  gid=$(awk -F: '$1 == "hwr-edge" { print $3 }' "$root/etc/group")
  chgrp "$gid" "$root/etc/hwr-edge/environment"
fi

# 5. The units, with the install prefix written in.
render() { sed "s|@PREFIX@|$prefix|g" "$1" > "$2.tmp" && chmod "$3" "$2.tmp" && mv "$2.tmp" "$2"; }
install -d "$root/etc/systemd/system" "$dest/bin"
render "$here/hwr-edge.service" "$root/etc/systemd/system/hwr-edge.service" 0644
units=hwr-edge.service
if [ "$kiosk" = 1 ]; then
  render "$here/hwr-kiosk" "$dest/bin/hwr-kiosk" 0755
  render "$here/hwr-kiosk.service" "$root/etc/systemd/system/hwr-kiosk.service" 0644
  units="$units hwr-kiosk.service"
fi
# shellcheck disable=SC2086
systemctl --root="$root" enable $units >/dev/null 2>&1 || systemctl --root="$root" enable $units
if [ "$kiosk" = 1 ]; then
  systemctl --root="$root" set-default graphical.target >/dev/null 2>&1 || true
fi

# 6. On the running device: the browser and compositor, then start.
if [ "$root" = / ]; then
  if [ "$kiosk" = 1 ] && { ! command -v cage >/dev/null || ! command -v chromium >/dev/null; }; then
    apt-get install -y -q cage chromium
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    # shellcheck disable=SC2086
    systemctl restart $units
  fi
fi
say "installed $(basename "$wheel") in $dest; units: $units"
