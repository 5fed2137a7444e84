#!/bin/sh
# Install etcd (the server the registry tests start) from Debian's packages, if it is missing.
set -eu

if command -v etcd >/dev/null 2>&1; then
    echo "etcd already installed: $(command -v etcd)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "setup-etcd.sh: need root (or sudo) to install etcd-server" >&2
    exit 1
fi

# One update: a fresh image has no package lists, so install alone would fail.
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends etcd-server

# The package's service is not needed; tests start their own etcd.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

etcd --version
