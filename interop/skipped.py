#!/usr/bin/env python3
"""Counts iscsi-test-cu tests that passed only by skipping: a [SKIPPED] note between a
test's `Test: X ...` line and its `passed` verdict (text-mode output). CUnit sometimes
prints the next test's first note on the verdict line; such notes are carried over.

usage: skipped.py OUTPUT.txt [--list]
"""
import re
import sys

VERDICT = re.compile(r"(?<!\[)\b(passed|FAILED)\b(?!\])")

suite, test, skipped_now, carry, skipped = None, None, False, False, []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"Suite: (\S+)", line)
    if m:
        suite, test, carry = m.group(1), None, False
        continue
    m = re.match(r"\s+Test: (\S+) \.\.\.(.*)", line)
    if m:
        test, skipped_now, carry = f"{suite}.{m.group(1)}", carry, False
        line = m.group(2)
    if test is None:
        continue
    v = VERDICT.search(line)
    before, after = (line[: v.start()], line[v.end():]) if v else (line, "")
    if "[SKIPPED]" in before:
        skipped_now = True
    if v:
        if v.group(1) == "passed" and skipped_now:
            skipped.append(test)
        carry = "[SKIPPED]" in after
        test = None
if "--list" in sys.argv:
    print("\n".join(skipped))
print(len(skipped))
