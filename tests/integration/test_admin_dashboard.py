"""The admin dashboard in real headless Chromium (tests/browser/dashboard.mjs, driven by
playwright-core) against a real redis-server, node and admin started here. The script makes its
own change through the node (WebSocket clients opened in the browser) and prints
`N passed, N failed`; screenshots go to $SB_ARTIFACTS (default tests/artifacts/browser)."""
import os
import re
import shutil
import subprocess

import pytest

from harness import ROOT

BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
CHROMIUM = os.environ.get("SB_CHROMIUM", "/usr/bin/chromium")


def test_01_dashboard_in_headless_chromium(cluster):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        pytest.skip("playwright-core is not installed (cd tests/browser && npm ci)")
    node_bin = shutil.which("node")
    if not node_bin:
        pytest.skip("no node on PATH")
    node = cluster.node("dash-node")
    admin = cluster.admin(args=["--reconcile-interval-ms", "500"])
    env = dict(os.environ, SB_ADMIN_URL=admin.http, SB_ADMIN_TOKEN=admin.token,
               SB_NODE_WS=node.ws_url,
               SB_ARTIFACTS=os.environ.get("SB_ARTIFACTS",
                                           os.path.join(ROOT, "tests", "artifacts", "browser")))
    r = subprocess.run([node_bin, "dashboard.mjs"], cwd=BROWSER_DIR, env=env,
                       capture_output=True, text=True, timeout=180)
    print(r.stdout)
    print(r.stderr[-3000:])
    m = re.search(r"^(\d+) passed, (\d+) failed", r.stdout, re.M)
    assert m, f"no summary line; exit {r.returncode}"
    assert r.returncode == 0 and m.group(2) == "0" and int(m.group(1)) >= 7, r.stdout
