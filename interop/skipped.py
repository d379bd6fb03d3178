#!/usr/bin/env python3
"""Counts iscsi-test-cu tests that passed only by skipping: a [SKIPPED] note between a
test's `Test: X ...` line and its `passed` verdict (text-mode output).

usage: skipped.py OUTPUT.txt [--list]
"""
import re
import sys

suite, test, skipped_now, skipped = None, None, False, []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"Suite: (\S+)", line)
    if m:
        suite, test = m.group(1), None
        continue
    m = re.match(r"\s+Test: (\S+) \.\.\.(.*)", line)
    if m:
        test, skipped_now = f"{suite}.{m.group(1)}", False
        line = m.group(2)
    if test is None:
        continue
    if "[SKIPPED]" in line:
        skipped_now = True
    verdict = re.search(r"(passed|FAILED)\s*$", line)
    if verdict:
        if verdict.group(1) == "passed" and skipped_now:
            skipped.append(test)
        test = None
if "--list" in sys.argv:
    print("\n".join(skipped))
print(len(skipped))
