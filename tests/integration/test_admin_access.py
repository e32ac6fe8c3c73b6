"""Admin access: the bearer-token gate on every data route and method, the open routes
(/livez, /readyz, the dashboard's static files), 404/405, and start-up refusals (no token, bad
options: exit 2 with one line naming the option). Real redis-server, real admin."""
import json
import os
import signal
import subprocess
import time

import pytest

from harness import ROOT, admin_binary, http_get, wait_for

DATA_ROUTES = {  # path -> the one method it serves
    "/admin/mesh-status": "GET",
    "/admin/reconcile": "POST",
    "/admin/events": "GET",
    "/metrics": "GET",
}
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
STATIC = {"/admin/": "index.html", "/admin/index.html": "index.html",
          "/admin/dashboard.js": "dashboard.js", "/admin/dashboard.css": "dashboard.css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:")
DATA_FIELDS = ("nodes", "rooms", "active_users", "p2p_links", "events", "totals",
               "last_reconcile", "switchboard_")


def bad_credentials(token):
    """(name, headers, query) for every way of not presenting the token."""
    wrong = "".join("a" if c != "a" else "b" for c in token)  # same length, every byte differs
    last_differs = token[:-1] + ("0" if token[-1] != "0" else "1")
    return [
        ("no header", {}, ""),
        ("empty bearer", {"Authorization": "Bearer "}, ""),
        ("bare scheme", {"Authorization": "Bearer"}, ""),
        ("empty header", {"Authorization": ""}, ""),
        ("wrong token", {"Authorization": f"Bearer {wrong}"}, ""),
        ("last byte differs", {"Authorization": f"Bearer {last_differs}"}, ""),
        ("upper-cased token", {"Authorization": f"Bearer {token.upper()}"}, ""),
        ("basic scheme", {"Authorization": f"Basic {token}"}, ""),
        ("token without scheme", {"Authorization": token}, ""),
        ("token in query", {}, f"?token={token}"),
        ("access_token in query", {}, f"?access_token={token}"),
        ("token in query and header", {"Authorization": f"Bearer {token}"}, f"?token={token}"),
        ("token plus one char", {"Authorization": f"Bearer {token}x"}, ""),
        ("prefix (len-1)", {"Authorization": f"Bearer {token[:-1]}"}, ""),
        ("prefix (half)", {"Authorization": f"Bearer {token[:len(token) // 2]}"}, ""),
        ("prefix (1 char)", {"Authorization": f"Bearer {token[:1]}"}, ""),
    ]


def hdr(headers, name):
    """A response header, whatever its case (lws sends lower-case names)."""
    return {k.lower(): v for k, v in headers.items()}.get(name.lower(), "")


def request(admin, method, path, headers=None, query=""):
    data = b"" if method in ("POST", "PUT", "PATCH") else None
    return http_get(admin.http + path + query, headers=headers or {}, method=method, data=data)


def test_01_every_data_route_and_method_refuses_bad_credentials(cluster):
    admin = cluster.admin(args=["--reconcile-interval-ms", "60000"])
    checked = 0
    for path in DATA_ROUTES:
        for method in METHODS:
            for name, headers, query in bad_credentials(admin.token):
                status, body, hdrs = request(admin, method, path, headers, query)
                what = f"{method} {path} with {name}"
                assert status == 401, f"{what}: {status} {body[:200]!r}"
                assert "Bearer" in hdr(hdrs, "WWW-Authenticate"), what
                assert hdr(hdrs, "Cache-Control") == "no-store", what
                if method != "HEAD":
                    assert json.loads(body) == {"error": "unauthorized"}, f"{what}: {body!r}"
                text = body.decode()
                assert not any(f in text for f in DATA_FIELDS), f"{what} leaked: {text}"
                checked += 1
    assert checked == len(DATA_ROUTES) * len(METHODS) * len(bad_credentials(admin.token))


def test_02_right_token_right_method_and_405_otherwise(cluster):
    admin = cluster.admin(args=["--reconcile-interval-ms", "60000"])
    auth = {"Authorization": f"Bearer {admin.token}"}
    for path, allowed in DATA_ROUTES.items():
        for method in METHODS:
            status, body, hdrs = request(admin, method, path, auth)
            if method == allowed:
                assert status == 200, f"{method} {path}: {status} {body[:200]!r}"
            else:
                assert status == 405, f"{method} {path}: {status}"
                assert allowed in hdr(hdrs, "Allow"), f"{method} {path}: {hdrs}"
    # The scheme is case-insensitive (RFC 7235); the token is not.
    status, _, _ = request(admin, "GET", "/admin/mesh-status",
                           {"Authorization": f"bearer {admin.token}"})
    assert status == 200
    # Events: limit bounds.
    for q, want in (("?limit=0", 400), ("?limit=-1", 400), ("?limit=abc", 400), ("?limit=", 400),
                    ("?limit=5", 200), ("?limit=99999999999", 200), ("", 200)):
        status, body, _ = request(admin, "GET", "/admin/events", auth, q)
        assert status == want, f"limit {q}: {status} {body!r}"


def test_03_open_routes_and_static_dashboard(cluster):
    admin = cluster.admin(args=["--reconcile-interval-ms", "60000"])
    assert http_get(admin.http + "/livez")[0] == 200
    status, body, _ = http_get(admin.http + "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    for path, file in STATIC.items():
        status, body, hdrs = http_get(admin.http + path)
        assert status == 200, path
        with open(os.path.join(ROOT, "admin", "www", file), "rb") as f:
            assert body == f.read(), f"{path} is not admin/www/{file}"
        assert hdr(hdrs, "Cache-Control") == "no-store", path
        assert hdr(hdrs, "X-Content-Type-Options") == "nosniff", path
        if file.endswith(".html"):
            assert hdr(hdrs, "Content-Security-Policy").startswith(CSP), hdrs
            assert "text/html" in hdr(hdrs, "Content-Type")
            text = body.decode()
            # No inline script or style (the CSP would block them), no CDN, no data.
            assert "<script>" not in text and "<style" not in text and "style=" not in text
            assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
            assert admin.token not in text
    assert "javascript" in hdr(http_get(admin.http + "/admin/dashboard.js")[2], "Content-Type")
    assert "text/css" in hdr(http_get(admin.http + "/admin/dashboard.css")[2], "Content-Type")
    # /admin redirects to the page; other methods on static files are 405.
    status, _, hdrs = http_get(admin.http + "/admin")
    assert status in (200, 308)
    status, _, _ = http_get(admin.http + "/admin/", method="POST", data=b"")
    assert status == 405
    for path in ("/", "/nope", "/admin/nope", "/admin/mesh-status/", "/metricsx", "/ws"):
        status, body, _ = http_get(admin.http + path)
        assert status == 404, path
        assert json.loads(body) == {"error": "not found"}, path


@pytest.mark.single_redis("killing one primary leaves the other shards answering, and the admin "
                          "stays ready by design (docs/admin.md); test_cluster_system test_07 "
                          "checks /readyz with a shard lost")
def test_04_readyz_follows_redis(cluster, redis_server):
    admin = cluster.admin(args=["--redis-timeout-ms", "300", "--reconcile-interval-ms", "60000"])
    redis_server.kill()
    wait_for(lambda: http_get(admin.http + "/readyz")[0] == 503, 3.0, msg="readyz 503")
    assert http_get(admin.http + "/livez")[0] == 200
    auth = {"Authorization": f"Bearer {admin.token}"}
    assert http_get(admin.http + "/admin/mesh-status", headers=auth)[0] == 503
    assert http_get(admin.http + "/admin/mesh-status")[0] == 401
    redis_server.start()
    wait_for(lambda: http_get(admin.http + "/readyz")[0] == 200, 3.0, msg="readyz 200")
    wait_for(lambda: http_get(admin.http + "/admin/mesh-status", headers=auth)[0] == 200, 3.0,
             msg="mesh-status back")
    # A stopped Redis still accepts connections: readiness needs replies, not a socket.
    redis_server.proc.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_for(lambda: http_get(admin.http + "/readyz")[0] == 503, 3.0, msg="readyz 503 (stop)")
        print(f"readyz 503 {(time.monotonic() - t0) * 1000:.0f} ms after SIGSTOP")
        for _ in range(10):  # and it stays so, reconnects notwithstanding
            assert http_get(admin.http + "/readyz")[0] == 503
            time.sleep(0.1)
    finally:
        redis_server.proc.signal(signal.SIGCONT)
    wait_for(lambda: http_get(admin.http + "/readyz")[0] == 200, 3.0, msg="readyz 200 (cont)")


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}


def run_admin(args, env=None, timeout=5):
    e = clean_env()
    e.update(env or {})
    return subprocess.run([admin_binary()] + args, env=e, capture_output=True, text=True,
                          timeout=timeout)


def test_05_refuses_to_start_without_a_usable_token(tmp_path):
    r = run_admin(["--listen", "127.0.0.1:1"])
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token-file" in lines[0] and "SWITCHBOARD_ADMIN_TOKEN" in lines[0]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    short = tmp_path / "short"
    short.write_text("abc\n")
    good = tmp_path / "good"
    good.write_text("x" * 32 + "\n")
    cases = [
        (["--token-file", str(empty)], {}, "--token-file"),
        (["--token-file", str(short)], {}, "--token-file"),
        (["--token-file", str(tmp_path / "missing")], {}, "--token-file"),
        (["--token-file", str(tmp_path)], {}, "--token-file"),
        ([], {"SWITCHBOARD_ADMIN_TOKEN": ""}, "SWITCHBOARD_ADMIN_TOKEN"),
        ([], {"SWITCHBOARD_ADMIN_TOKEN": "short"}, "SWITCHBOARD_ADMIN_TOKEN"),
        ([], {"SWITCHBOARD_ADMIN_TOKEN": "has a space in it 0123456789"}, "SWITCHBOARD_ADMIN_TOKEN"),
        ([], {"SWITCHBOARD_ADMIN_TOKEN_FILE": str(empty)}, "token-file"),
    ]
    for args, env, name in cases:
        r = run_admin(args, env)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, env, r)
        assert len(lines) == 1 and name in lines[0], (args, env, r.stderr)
        assert "x" * 32 not in r.stderr


BAD_OPTIONS = [
    (["--listen", "nope"], "--listen"),
    (["--listen", "127.0.0.1:99999"], "--listen"),
    (["--redis", "http://127.0.0.1:6379"], "--redis"),
    (["--redis-timeout-ms", "0"], "--redis-timeout-ms"),
    (["--prefix", "a b"], "--prefix"),
    (["--prefix", "{x}"], "--prefix"),
    (["--reconcile-interval-ms", "abc"], "--reconcile-interval-ms"),
    (["--reconcile-interval-ms", "10"], "--reconcile-interval-ms"),
    (["--events-max", "-1"], "--events-max"),
    (["--events-max", "1"], "--events-max"),
    (["--log-level", "loud"], "--log-level"),
    (["--nope", "1"], "--nope"),
    (["--events-max"], "--events-max"),
    (["stray"], "stray"),
]


def test_06_bad_options_exit_2_with_one_line():
    token = {"SWITCHBOARD_ADMIN_TOKEN": "t" * 24}
    for args, name in BAD_OPTIONS:
        r = run_admin(args, token)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, r)
        assert len(lines) == 1 and name in lines[0], (args, r.stderr)
    # The environment is checked the same way, and names the variable and the option.
    r = run_admin([], dict(token, SWITCHBOARD_ADMIN_EVENTS_MAX="many"))
    assert r.returncode == 2 and "SWITCHBOARD_ADMIN_EVENTS_MAX" in r.stderr
    assert "--events-max" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_admin(["--help"])
    assert r.returncode == 0
    for opt in ("--listen", "--redis", "--redis-timeout-ms", "--prefix", "--token-file",
                "--reconcile-interval-ms", "--events-max", "--log-level",
                "SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:9090", "5000", "1000"):
        assert opt in r.stdout, opt


def test_07_token_file_and_clean_shutdown(cluster, tmp_path):
    f = tmp_path / "token"
    f.write_text("file-token-0123456789abcdef\n")
    # The file wins over the environment variable (the harness sets a random one).
    admin = cluster.admin(args=["--token-file", str(f)])
    ok = {"Authorization": "Bearer file-token-0123456789abcdef"}
    assert http_get(admin.http + "/admin/mesh-status", headers=ok)[0] == 200
    env_tok = {"Authorization": f"Bearer {admin.token}"}
    assert http_get(admin.http + "/admin/mesh-status", headers=env_tok)[0] == 401
    rc = admin.proc.stop()
    assert rc == 0, admin.proc.log()[-2000:]
    assert "uv_loop_close=0" in admin.proc.log()
