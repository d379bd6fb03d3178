# Shared by the interop scripts: start a fresh `dreadnought up` (MDM, three SDS and
# the gateway, all on free loopback ports) in a temp dir and stop it on exit.
# Demo mode is off: the initiator map admits libiscsi's two test initiators and
# QEMU's default name. Target $DN_IQN LUN 0 is a thin volume on the mirrored pool,
# LUN 1 a read-only mapping of another; $DN_IQN-local LUN 0 is a local file volume of
# the same size. Sets DN_DIR, DN_PORT, DN_IQN, DN_LOG.
DN_INITIATORS="iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2 iqn.2008-11.org.linux-kvm"
DN_BIN=${DN_BIN:-$(pwd)/target/debug/dreadnought}
DN_IQN=${DN_IQN:-iqn.2026-11.io.dreadnought:interop}

dn_start() {
    local extra=${1:-}
    DN_DIR=$(mktemp -d /tmp/dreadnought-interop.XXXXXX)
    DN_LOG=$DN_DIR/dreadnought.log
    : >"$DN_DIR/initiators.toml"
    local n=0 allowed=""
    for iqn in $DN_INITIATORS; do
        n=$((n + 1))
        allowed="$allowed\"$iqn\", "
        cat >>"$DN_DIR/initiators.toml" <<TOML
[[initiator]]
name = "host$n"
iqn = "$iqn"
[[initiator.mapping]]
volume = "lun0"
lun = 0
[[initiator.mapping]]
volume = "ro0"
lun = 1
access_mode = "ReadOnly"
TOML
    done
    cat >"$DN_DIR/dreadnought.toml" <<TOML
data_dir = "$DN_DIR/data"
[iscsi]
listen = ["127.0.0.1:0"]
[[target]]
name = "$DN_IQN"
mapped = true
[[target]]
name = "$DN_IQN-local"
allowed_initiators = [$allowed]
volumes = ["lun0"]
$extra
[[volume]]
name = "lun0"
size = "${DN_SIZE:-1GiB}"
[cluster]
mdm_listen = "127.0.0.1:0"
sds_listen = ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"]
device_size = "8GiB"
[[cluster.volume]]
name = "lun0"
size = "${DN_SIZE:-1GiB}"
thin = true
[[cluster.volume]]
name = "ro0"
size = "64MiB"
TOML
    [ -x "$DN_BIN" ] || cargo build --bins
    "$DN_BIN" up --config "$DN_DIR/dreadnought.toml" >"$DN_LOG" 2>&1 &
    DN_PID=$!
    trap dn_stop EXIT
    for _ in $(seq 300); do
        if grep -q "ready: iSCSI target listening" "$DN_LOG"; then
            DN_PORT=$(grep -o 'portals=127.0.0.1:[0-9]*' "$DN_LOG" | head -1 | cut -d: -f2)
            return 0
        fi
        kill -0 "$DN_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "dreadnought up did not become ready; log:" >&2
    cat "$DN_LOG" >&2
    return 1
}

dn_stop() {
    if [ -n "${DN_PID:-}" ]; then
        kill "$DN_PID" 2>/dev/null || true
        wait "$DN_PID" 2>/dev/null || true
    fi
    if [ "${DN_KEEP:-0}" = 1 ]; then echo "kept $DN_DIR" >&2; else rm -rf "$DN_DIR"; fi
}
