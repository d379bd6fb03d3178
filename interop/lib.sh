# Shared by the interop scripts: start a fresh `dreadnought up` (MDM, three SDS and
# the gateway, all on free loopback ports) in a temp dir, then a second gateway
# (`dreadnought target --mdm`, SDC gateway2) on the same MDM, and stop both on exit.
# Demo mode is off: the initiator map admits libiscsi's two test initiators and
# QEMU's default name. Target $DN_IQN LUN 0 is a thin volume on the mirrored pool,
# LUN 1 a read-only mapping of another, through either gateway (two paths to the
# same logical units: portal group 1 and 2); $DN_IQN-local LUN 0 is a local file
# volume of the same size (first gateway only). Sets DN_DIR, DN_PORT, DN_PORT2,
# DN_IQN, DN_LOG, DN_LOG2.
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
# libiscsi's test tool answers no NOP-In while it sleeps between polls (once a minute
# in Sanitize.Reset): a dropped connection would greet every poll with a fresh unit
# attention, so idle initiators get longer than that here.
nop_timeout_secs = 90
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
    dn_wait_ready "$DN_LOG" "$DN_PID" || return 1
    DN_PORT=$(grep -o 'portals=127.0.0.1:[0-9]*' "$DN_LOG" | head -1 | cut -d: -f2)
    local mdm
    mdm=$(grep -o 'mdm=127.0.0.1:[0-9]*' "$DN_LOG" | head -1 | cut -d= -f2)
    DN_LOG2=$DN_DIR/gateway2.log
    cat >"$DN_DIR/gateway2.toml" <<TOML
data_dir = "$DN_DIR/data-gateway2"
[iscsi]
listen = ["127.0.0.1:0"]
nop_timeout_secs = 90
[[target]]
name = "$DN_IQN"
mapped = true
TOML
    "$DN_BIN" target --mdm "$mdm" --name gateway2 --sdc-ip 127.0.0.1 \
        --config "$DN_DIR/gateway2.toml" >"$DN_LOG2" 2>&1 &
    DN_PID2=$!
    dn_wait_ready "$DN_LOG2" "$DN_PID2" || return 1
    DN_PORT2=$(grep -o 'portals=127.0.0.1:[0-9]*' "$DN_LOG2" | head -1 | cut -d: -f2)
}

# dn_wait_ready LOG PID: waits for the gateway's ready line.
dn_wait_ready() {
    for _ in $(seq 300); do
        grep -q "ready: iSCSI target listening" "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1: the gateway did not become ready; log:" >&2
    cat "$1" >&2
    return 1
}

dn_stop() {
    local pid
    for pid in ${DN_PID2:-} ${DN_PID:-}; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${DN_KEEP:-0}" = 1 ]; then echo "kept $DN_DIR" >&2; else rm -rf "$DN_DIR"; fi
}
