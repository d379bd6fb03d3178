#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and integration tests, the libiscsi
# conformance ratchet and the QEMU round trip. Installs its apt packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --bins
cargo test
interop/conformance.sh
interop/qemu-roundtrip.sh
echo "all tests passed"
