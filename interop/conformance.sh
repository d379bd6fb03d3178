#!/usr/bin/env bash
# libiscsi's iscsi-test-cu against a freshly started `dreadnought up` and a second
# gateway with demo mode off (the initiator map admits libiscsi's two test
# initiators): all tests, SANITIZE included, on a thin pool volume (mirrored over
# three SDS) reached through both gateways (multipath: the MultipathIO tests use the
# second path), all on a local file volume, and the ReadOnly suite on a read-only
# mapping; judged by a ratchet: every test in interop/ratchet.txt must pass, and no
# run may print more [SKIPPED] notes than interop/skips.txt allows (a command that
# stops being advertised makes its tests skip, not fail). Prints regressions, newly
# passing tests, and `N passed, N failed` as its last line.
#
# Sanitize.Reset cannot pass in libiscsi's multipath mode: Sanitize.Reservations,
# just before it, takes a RESERVE(6) through the second path and never releases it
# (single-path, that session is dropped after the test; multipath, it lives until
# the suite ends), so the SANITIZE that Sanitize.Reset starts correctly meets
# RESERVATION CONFLICT. It is run once more on its own, single-path, as
# `single/Sanitize.Reset`.
#   interop/conformance.sh            run and check the ratchet
#   interop/conformance.sh --update   also rewrite the ratchet with today's passes
set -euo pipefail
cd "$(dirname "$0")/.."
. interop/lib.sh

dn_start
RUN=$DN_DIR/cu
mkdir -p "$RUN" "$RUN/ro" "$RUN/local"
(cd "$RUN" && timeout 900 iscsi-test-cu -d -S -x -t ALL \
    "iscsi://127.0.0.1:$DN_PORT/$DN_IQN/0" \
    "iscsi://127.0.0.1:$DN_PORT2/$DN_IQN/0" >"$RUN/output.txt" 2>&1) || true
(cd "$RUN/local" && timeout 900 iscsi-test-cu -d -S -x -t ALL \
    "iscsi://127.0.0.1:$DN_PORT/$DN_IQN-local/0" >"$RUN/local/output.txt" 2>&1) || true
mkdir -p "$RUN/single"
(cd "$RUN/single" && timeout 300 iscsi-test-cu -d -S -x -t ALL.Sanitize.Reset \
    "iscsi://127.0.0.1:$DN_PORT/$DN_IQN/0" >"$RUN/single/output.txt" 2>&1) || true
(cd "$RUN/ro" && timeout 300 iscsi-test-cu -d -x -t ALL.ReadOnly \
    "iscsi://127.0.0.1:$DN_PORT/$DN_IQN/1" >"$RUN/ro/output.txt" 2>&1) || true
RESULTS="$RUN/CUnitAutomated-Results.xml,local=$RUN/local/CUnitAutomated-Results.xml,readonly=$RUN/ro/CUnitAutomated-Results.xml,single=$RUN/single/CUnitAutomated-Results.xml"
skips_ok=true
while read -r run allowed; do
    case $run in ''|'#'*) continue ;; esac
    dir=$RUN; [ "$run" = pool ] || dir=$RUN/$run
    n=$(grep -c '\[SKIPPED\]' "$dir/output.txt" || true)
    echo "$run: $n [SKIPPED] notes (at most $allowed allowed)"
    if [ "$n" -gt "$allowed" ]; then
        echo "SKIP REGRESSION in the $run run: $n [SKIPPED] notes, interop/skips.txt allows $allowed; see $dir/output.txt" >&2
        grep '\[SKIPPED\]' "$dir/output.txt" | sort | uniq -c >&2
        skips_ok=false
    fi
done <interop/skips.txt
python3 interop/ratchet.py "$RESULTS" interop/ratchet.txt "$@" || {
    status=$?
    cp "$RUN/output.txt" /tmp/iscsi-test-cu-output.txt
    cp "$DN_LOG" /tmp/iscsi-test-cu-dreadnought.log
    cp "$DN_LOG2" /tmp/iscsi-test-cu-gateway2.log
    echo "full output: /tmp/iscsi-test-cu-output.txt, server logs: /tmp/iscsi-test-cu-dreadnought.log, /tmp/iscsi-test-cu-gateway2.log" >&2
    python3 interop/ratchet.py --summary "$RESULTS"
    exit $status
}
$skips_ok
