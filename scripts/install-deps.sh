#!/usr/bin/env bash
# Installs what the test suite needs on a bare Debian bookworm machine: libiscsi's
# tools (the conformance judge and initiator utilities) and QEMU's iSCSI block driver
# from bookworm-backports, matching the installed qemu-utils. Idempotent.
set -euo pipefail

need=()
command -v iscsi-test-cu >/dev/null || need+=(libiscsi-bin)
command -v qemu-img >/dev/null || need+=(qemu-utils)
qemu_iscsi() { ls /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so >/dev/null 2>&1; }
qemu_iscsi || need+=(qemu-block-extra)
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' |
        $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi
$SUDO apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
for p in "${need[@]}"; do
    case "$p" in
    qemu-block-extra | qemu-utils)
        # Must match qemu-utils' version; the machine's qemu comes from backports.
        $SUDO apt-get install -y -qq -t bookworm-backports qemu-utils qemu-block-extra >/dev/null ;;
    *) $SUDO apt-get install -y -qq "$p" >/dev/null ;;
    esac
done
