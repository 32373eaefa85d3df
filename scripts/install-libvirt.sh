#!/usr/bin/env bash
# Installs libvirt for `make bench-libvirt` (the comparison with the tool most users would
# otherwise pick). No libvirtd is started here: the benchmark runs one per lab node, in that
# node's namespaces, and stops them itself. Run as root; a second run installs nothing.
set -euo pipefail

PACKAGES=(libvirt-daemon-system libvirt-clients)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && { echo "install-libvirt: present"; exit 0; }
[ "$(id -u)" -eq 0 ] || { echo "install-libvirt: root is needed" >&2; exit 1; }
# Keep the package scripts from starting a host-wide libvirtd (policy-rc.d, as in containers).
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ $created_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
