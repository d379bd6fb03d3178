#!/usr/bin/env bash
# QEMU's iSCSI driver (libiscsi inside qemu-img/qemu-io) against `dreadnought up`:
# write patterns, read them back from a second process, and copy an image in and out.
set -euo pipefail
cd "$(dirname "$0")/.."
. interop/lib.sh

DN_SIZE=64MiB dn_start
URL="iscsi://127.0.0.1:$DN_PORT/$DN_IQN/0"
size=$(qemu-img info --output=json "$URL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
[ "$size" = 67108864 ] || { echo "qemu-img sees $size bytes, expected 67108864"; exit 1; }

qemu-io -f raw -c "write -P 0xa5 0 1M" -c "write -P 0x5a 33M 4M" -c "write -P 0x3c 67104768 4k" "$URL" >/dev/null
qemu-io -f raw -c "read -P 0xa5 0 1M" -c "read -P 0x5a 33M 4M" -c "read -P 0x3c 67104768 4k" \
    -c "read -P 0 1M 1M" "$URL" | tee "$DN_DIR/read.txt"
grep -q "Pattern verification failed" "$DN_DIR/read.txt" && { echo "pattern mismatch"; exit 1; }

head -c 8M /dev/urandom >"$DN_DIR/in.img"
qemu-img convert -n -f raw -O raw -t none "$DN_DIR/in.img" "$URL"
qemu-img convert -f raw -O raw "$URL" "$DN_DIR/out.img"
cmp -n 8388608 "$DN_DIR/in.img" "$DN_DIR/out.img"
# The same through QEMU's CRC32C header digests.
qemu-io --image-opts "driver=iscsi,transport=tcp,portal=127.0.0.1:$DN_PORT,target=$DN_IQN,lun=0,header-digest=crc32c" \
    -c "write -P 0x77 2M 1M" -c "read -P 0x77 2M 1M" | tee "$DN_DIR/digest.txt"
grep -q "Pattern verification failed" "$DN_DIR/digest.txt" && { echo "pattern mismatch with header digests"; exit 1; }
grep -q "header_digest=true" "$DN_LOG" || { echo "QEMU did not negotiate CRC32C header digests"; exit 1; }
echo "qemu round trip: ok (64 MiB LUN, patterns and an 8 MiB image verified)"
