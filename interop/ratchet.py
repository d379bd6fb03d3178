#!/usr/bin/env python3
"""Judges an iscsi-test-cu XML result against the ratchet of tests that must pass.

usage: ratchet.py RESULTS.xml[,PREFIX=RESULTS.xml...] RATCHET.txt [--update]
       ratchet.py --summary RESULTS.xml[,PREFIX=RESULTS.xml...]
Results of a PREFIX= run are named PREFIX/Suite.Test (e.g. runs against other LUNs).
Last line printed is always `N passed, N failed`.
"""
import sys
import xml.etree.ElementTree as ET


def results(path):
    """Suite.Test -> True (passed) / False (failed)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"cannot read {path}: {e} (did iscsi-test-cu crash?)", file=sys.stderr)
        return {}
    out = {}
    for suite in root.iter("CUNIT_RUN_SUITE"):
        for s in suite:
            name_el = s.find("SUITE_NAME")
            if name_el is None:
                continue
            sname = name_el.text.strip()
            for rec in s.iter("CUNIT_RUN_TEST_RECORD"):
                for r in rec:
                    t = r.find("TEST_NAME").text.strip()
                    out[f"{sname}.{t}"] = r.tag == "CUNIT_RUN_TEST_SUCCESS"
    return out


def all_results(spec):
    """Merges comma-separated result files, prefixing names of PREFIX=PATH entries."""
    out = {}
    for part in spec.split(","):
        prefix, _, path = part.rpartition("=")
        for name, ok in results(path).items():
            out[f"{prefix}/{name}" if prefix else name] = ok
    return out


def summary(res):
    passed = sum(1 for v in res.values() if v)
    return f"{passed} passed, {len(res) - passed} failed"


def main(argv):
    if argv[1] == "--summary":
        print(summary(all_results(argv[2])))
        return 0
    res = all_results(argv[1])
    ratchet_path = argv[2]
    update = "--update" in argv
    with open(ratchet_path) as f:
        expected = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    failed = sorted(t for t, ok in res.items() if not ok)
    regressions = [t for t in expected if not res.get(t, False)]
    new = sorted(t for t, ok in res.items() if ok and t not in expected)
    for t in failed:
        print(f"FAILED     {t}")
    for t in regressions:
        print(f"REGRESSION {t} (in the ratchet, did not pass)")
    if new:
        print(f"{len(new)} test(s) pass that the ratchet does not list yet:")
        for t in new:
            print(f"  new pass {t}")
    if update:
        with open(ratchet_path, "w") as f:
            f.write("# iscsi-test-cu tests that must pass (interop/conformance.sh).\n")
            f.write("# Regenerate with: interop/conformance.sh --update\n")
            for t in sorted(t for t, ok in res.items() if ok):
                f.write(t + "\n")
        print(f"ratchet updated: {ratchet_path}")
        regressions = []
    print(summary(res))
    return 1 if regressions or not res else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
