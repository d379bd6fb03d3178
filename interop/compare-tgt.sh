#!/usr/bin/env bash
# iscsi-test-cu against tgt (the userspace target most of our users run today) and
# against `dreadnought up`, in one run, on same-sized file-backed LUNs. Prints both
# counts; exits non-zero if Dreadnought passes fewer tests than tgt.
set -euo pipefail
cd "$(dirname "$0")/.."
. interop/lib.sh

command -v tgtd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tgt >/dev/null; }

dn_start
TGT_DIR=$DN_DIR/tgt
mkdir -p "$TGT_DIR/cu" "$DN_DIR/cu"
TGT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CTL=$((20000 + RANDOM % 10000))
truncate -s 1G "$TGT_DIR/disk.img"
tgtd -f --iscsi portal=127.0.0.1:$TGT_PORT -C $CTL >"$TGT_DIR/tgtd.log" 2>&1 &
TGT_PID=$!
trap 'kill $TGT_PID 2>/dev/null; dn_stop' EXIT
sleep 1
TGT_IQN=iqn.2001-04.com.example:tgt
tgtadm -C $CTL --lld iscsi --op new --mode target --tid 1 -T $TGT_IQN
tgtadm -C $CTL --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$TGT_DIR/disk.img"
tgtadm -C $CTL --lld iscsi --op bind --mode target --tid 1 -I ALL

(cd "$TGT_DIR/cu" && timeout 900 iscsi-test-cu -d -x -t ALL "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1" >output.txt 2>&1) || true
(cd "$DN_DIR/cu" && timeout 900 iscsi-test-cu -d -x -t ALL "iscsi://127.0.0.1:$DN_PORT/$DN_IQN/0" >output.txt 2>&1) || true
# A second, text-mode pass tells which passes were only skips.
(cd "$TGT_DIR/cu" && timeout 900 iscsi-test-cu -d -t ALL "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1" >text.txt 2>&1) || true
(cd "$DN_DIR/cu" && timeout 900 iscsi-test-cu -d -t ALL "iscsi://127.0.0.1:$DN_PORT/$DN_IQN/0" >text.txt 2>&1) || true
tgt=$(python3 interop/ratchet.py --summary "$TGT_DIR/cu/CUnitAutomated-Results.xml")
dn=$(python3 interop/ratchet.py --summary "$DN_DIR/cu/CUnitAutomated-Results.xml")
skips() { python3 interop/skipped.py "$1" | tail -1; }
echo "tgt:         $tgt ($(skips "$TGT_DIR/cu/text.txt") of the passes only skipped)"
echo "dreadnought: $dn ($(skips "$DN_DIR/cu/text.txt") of the passes only skipped)"
[ "${dn%% *}" -gt "${tgt%% *}" ]
