#!/usr/bin/env bash
# Installs the Debian packages corral, its tests and its demo need. Run as root; a second run
# installs nothing when everything is there already.
set -euo pipefail

PACKAGES=(
  qemu-system-x86   # the hypervisor (TCG here; KVM where it works)
  qemu-utils        # qemu-img
  busybox-static    # the test guest's userland
  iproute2          # ip netns, veth, bridges, taps
  iputils-ping      # ping from the client namespace
  cpio              # reads back initramfs archives in the tests
  glusterfs-server  # the lab's shared storage (corral lab up --storage glusterfs)
  glusterfs-client
  procps            # ps, pgrep
  iperf3            # the benchmarks' link measurement
  kmod              # modprobe
  make
  prometheus        # the metrics test scrapes an agent with a real Prometheus
  etcd-server       # --state etcd: the lab runs a 3-member etcd cluster
  chromium          # the dashboard's browser test (headless)
  chromium-driver
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if ! python3 -m venv --help >/dev/null 2>&1; then
  missing+=(python3-venv)
fi

need_update=0
# The test guest's kernel is found through apt's package lists.
apt-cache show linux-image-amd64 >/dev/null 2>&1 || need_update=1
if [ ${#missing[@]} -gt 0 ] || [ $need_update -eq 1 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: root is needed to install: ${missing[*]:-package lists}" >&2
    exit 1
  fi
  apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  # No service of these packages starts (Prometheus would listen on every address): the
  # tests start what they need themselves, in their own namespaces.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all Debian packages present"
fi
