"""Sums JUnit XML files (pytest, ctest) and the 'N passed, N failed' lines of browser-test
logs in a results directory; prints one line 'N passed, N failed, N skipped'; exits 1 on any
failure or when nothing ran."""
import glob
import os
import re
import sys
import xml.etree.ElementTree as ET

d = sys.argv[1]
passed = failed = skipped = 0
for path in sorted(glob.glob(os.path.join(d, "*.xml"))):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        print(f"{os.path.basename(path)}: unreadable")
        failed += 1
        continue
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    p = f = s = 0
    for suite in suites:
        for case in suite.findall("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                f += 1
            elif case.find("skipped") is not None or case.get("status") in ("notrun", "disabled"):
                s += 1
            else:
                p += 1
    print(f"{os.path.basename(path)}: {p} passed, {f} failed, {s} skipped")
    passed, failed, skipped = passed + p, failed + f, skipped + s
for path in sorted(glob.glob(os.path.join(d, "*.log"))):
    text = open(path, errors="replace").read()
    m = re.findall(r"^(?:[\w-]+: )?(\d+) passed, (\d+) failed", text, re.M)
    if not m:
        print(f"{os.path.basename(path)}: no result line")
        failed += 1
        continue
    p, f = map(int, m[-1])
    print(f"{os.path.basename(path)}: {p} passed, {f} failed")
    passed, failed = passed + p, failed + f
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or passed == 0 else 0)
