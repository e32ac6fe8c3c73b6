"""The HTTP/WebSocket edge under hostile input (issue 17, faults 2, 5, 6 and 7): CONNECT and
raw adoption refused at once, methods an endpoint does not serve refused, ill-formed or repeated
Content-Length refused (400), the admin's query-string token refusal not bypassable by the
shape of the query, Sec-WebSocket-Key checked, Origin compared whole, a client's own pings
counted as life, a 1-byte close payload answered 1002, header names lws stalls on, and
control characters in the URI refused.
Each test failed before its fix. Real redis-server, real node and admin, loopback only."""
import socket
import struct
import time

import pytest

from harness import WS_NATIVE, http_get, wait_for
from rawws import RawWS, frame, handshake_request


def exchange(port, data, timeout=3.0):
    """(first line of the answer or "", seconds until the server closed or answered)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        t0 = time.monotonic()
        buf = b""
        try:
            while b"\r\n" not in buf:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
        except socket.timeout:
            return "timeout", time.monotonic() - t0
        except ConnectionResetError:
            pass
        return buf.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - t0


def status_of(line):
    parts = line.split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def closed_within(port, data, timeout):
    """True when the server closes a connection that sent data within timeout seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout + 1) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                if not s.recv(4096):
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True
        return False


@pytest.fixture
def edge(cluster):
    node = cluster.node("edge", args=["--allowed-origin", "http://ok.example"])
    admin = cluster.admin()
    return node, admin


# ---- fault 2: CONNECT / raw adoption ---------------------------------------------------------

CONNECTS = [b"CONNECT 127.0.0.1:6379 HTTP/1.1\r\nHost: 127.0.0.1:6379\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"]


@pytest.mark.parametrize("data", CONNECTS, ids=["connect-redis", "connect-host"])
def test_01_connect_closed_at_once(edge, data):
    node, admin = edge
    for port in (node.port, admin.port):
        t0 = time.monotonic()
        assert closed_within(port, data, 1.0), port
        assert time.monotonic() - t0 < 1.0
    assert node.ready()


# ---- methods -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_02_node_serves_get_and_head_only(edge, method):
    node, _ = edge
    for path in ("/livez", "/readyz", "/metrics", "/", "/switchboard.js", "/ws"):
        data = b"" if method in ("POST", "PUT", "PATCH") else None
        status, _, headers = http_get(node.http + path, method=method, data=data)
        assert status == 405, (method, path, status)
        allow = {k.lower(): v for k, v in headers.items()}.get("allow")
        assert allow == "GET, HEAD", (method, path, headers)
    status, body, _ = http_get(node.http + "/livez", method="HEAD")
    assert status == 200 and body == b""


# ---- fault 5: Content-Length ---------------------------------------------------------------

BAD_LENGTHS = [
    ("duplicate", [b"Content-Length: 0", b"Content-Length: 44"]),
    ("duplicate-same", [b"Content-Length: 0", b"Content-Length: 0"]),
    ("list", [b"Content-Length: 0, 44"]),
    ("plus", [b"Content-Length: +44"]),
    ("minus", [b"Content-Length: -1"]),
    ("hex", [b"Content-Length: 0x2c"]),
    ("empty", [b"Content-Length: "]),
    ("chunked-and-length", [b"Transfer-Encoding: chunked", b"Content-Length: 44"]),
    ("chunked", [b"Transfer-Encoding: chunked"]),
]


@pytest.mark.parametrize("case,lines", BAD_LENGTHS, ids=[c[0] for c in BAD_LENGTHS])
def test_03_bad_content_length_400(edge, case, lines):
    node, admin = edge
    for port, path in ((node.port, b"/livez"), (admin.port, b"/livez"),
                       (admin.port, b"/admin/reconcile")):
        method = b"POST" if path == b"/admin/reconcile" else b"GET"
        req = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(lines) +
               b"\r\n\r\n" + b"x" * 44)
        line, _ = exchange(port, req)
        assert status_of(line) == 400, (case, port, path, line)
    # one well-formed length is still served
    line, _ = exchange(node.port, b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status_of(line) == 200, line
    # and on the WebSocket upgrade
    hs = handshake_request("127.0.0.1", node.port, "/ws", {"Content-Length": "+0"})
    line, _ = exchange(node.port, hs)
    assert status_of(line) == 400, line


# ---- fault 6: the admin's token-in-query refusal ----------------------------------------------

def test_04_query_token_refused_whatever_the_query(edge):
    _, admin = edge
    auth = {"Authorization": f"Bearer {admin.token}"}
    status, _, _ = http_get(admin.http + "/admin/mesh-status?limit=5", headers=auth)
    assert status == 200
    queries = {
        "after 32 parameters": "&".join(f"p{i}=1" for i in range(40)) + "&token=x",
        "after one of 600 bytes": "p=" + "a" * 600 + "&token=x",
        "after 1.5 KiB": "&".join(f"p{i}=" + "b" * 100 for i in range(15)) + "&token=x",
        "url-encoded name": "tok%65n=x",
        "access_token last": "a=1&b=2&access_token=x",
    }
    for name, q in queries.items():
        status, _, _ = http_get(admin.http + "/admin/mesh-status?" + q, headers=auth)
        assert status in (400, 401), (name, status)
    # parameters that hide nothing are still fine, however many
    q = "&".join(f"p{i}=1" for i in range(40))
    status, _, _ = http_get(admin.http + "/admin/mesh-status?" + q, headers=auth)
    assert status == 200, status


# ---- fault 7: Sec-WebSocket-Key, Origin ------------------------------------------------------

@pytest.mark.parametrize("key", ["abc", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=",
                                 "dGhlIHNhbXBsZSBub25jZQ===", "dGhlIHNhbXBsZSBub25jZR==",
                                 "dGhlIHNhbXBsZSBub25j!Q==", "x" * 40],
                         ids=["short", "no-pad", "one-pad", "three-pad", "trailing-bits",
                              "bad-char", "long"])
def test_05_websocket_key_must_be_16_bytes(edge, key):
    node, _ = edge
    hs = handshake_request("127.0.0.1", node.port, "/ws", {"Origin": "http://ok.example"},
                           key=key)
    line, _ = exchange(node.port, hs)
    assert status_of(line) == 400, (key, line)
    good = handshake_request("127.0.0.1", node.port, "/ws", {"Origin": "http://ok.example"},
                             key="dGhlIHNhbXBsZSBub25jZQ==")
    line, _ = exchange(node.port, good)
    assert status_of(line) == 101, line


def test_06_origin_compared_whole(edge):
    node, _ = edge
    for origin in ("http://ok.example\x00.evil.example", "http://ok.example\x00x"):
        hs = handshake_request("127.0.0.1", node.port, "/ws", {"Origin": origin})
        line, _ = exchange(node.port, hs)
        # lws takes the NUL into the value (403: not the allowed origin); the node's own layer
        # refuses a NUL in any header value (RFC 9110 5.5: 400). Never 101.
        assert status_of(line) in ((400, 403) if WS_NATIVE else (403,)), (repr(origin), line)
    hs = handshake_request("127.0.0.1", node.port, "/ws", {"Origin": "http://ok.example"})
    assert status_of(exchange(node.port, hs)[0]) == 101


# ---- fault 7: a client's pings are life; a 1-byte close is a protocol error -------------------

def test_07_client_pings_count_as_activity(cluster):
    """A client that pings the node every 150 ms but never answers the node's pings (a
    keep-alive done from the client side) is alive: the node must not hang it up as silent."""
    node = cluster.node("pinger", args=["--ping-interval-ms", "400", "--ping-timeout-ms", "900"])
    ws = RawWS(node.port)
    assert ws.status == 101
    silent = RawWS(node.port)  # the control: sends nothing, answers nothing
    assert silent.status == 101
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 3.0:
            ws.send_raw(frame(9, b"hi"))
            time.sleep(0.15)
        assert silent.closed_within(0.5), "the silent control socket was not hung up"
        ws.send_text('{"type":"ping"}')
        deadline = time.monotonic() + 2
        got = None
        while time.monotonic() < deadline:
            op, payload = ws.recv_frame(deadline - time.monotonic())
            if op == 1 and b'"pong"' in payload:
                got = payload
                break
        assert got, "the pinging client was hung up"
    finally:
        ws.close()
        silent.close()


def test_08_one_byte_close_payload_gets_1002(edge):
    node, _ = edge
    ws = RawWS(node.port, headers={"Origin": "http://ok.example"})
    assert ws.status == 101
    ws.recv_frame()  # welcome
    ws.send_raw(frame(8, b"\x03"))
    code = None
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        op, payload = ws.recv_frame(deadline - time.monotonic())
        if op == 8:
            assert len(payload) >= 2, payload
            code = struct.unpack("!H", payload[:2])[0]
            break
    ws.close()
    assert code == 1002, code
    # a well-formed close is still echoed with its code
    ws = RawWS(node.port, headers={"Origin": "http://ok.example"})
    ws.recv_frame()
    ws.send_raw(frame(8, struct.pack("!H", 1000)))
    code, _ = ws.recv_until_close(2)
    ws.close()
    assert code == 1000, code


# ---- fault 7: header names that are strict prefixes of names lws knows -----------------------

def test_09_header_name_prefix_stall_is_bounded(edge):
    """lws 4.1.6 matches header names against its table of known names; a name that ends where
    a longer known name goes on ("Acc" of Accept, "A", "X-Au") makes its parser take the ':'
    as part of an unknown name and wait for another ':'. Not fixable from our callbacks (it is
    before any of them); documented in docs/operations.md. What must hold: such a request
    holds only its own connection, everyone else is served, and the header timeout (10 s)
    ends it."""
    node, admin = edge
    stalled = []
    for port in (node.port, admin.port):
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nAcc: 1\r\n\r\n")
        stalled.append(s)
    t0 = time.monotonic()
    assert node.ready()
    assert http_get(admin.http + "/readyz")[0] == 200
    for s in stalled:
        s.settimeout(15)
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        assert not data.startswith(b"HTTP/1.1 200"), data
        s.close()
    took = time.monotonic() - t0
    assert took < 13, took


# ---- control characters in the URI ------------------------------------------------------------

CONTROL_URIS = [("query-lf", b"/livez?a=%0a"), ("query-crlf", b"/livez?a=%0d%0a"),
                ("query-nul", b"/livez?a=%00b"), ("query-name", b"/livez?%0a=1"),
                ("query-del", b"/livez?a=%7f"), ("path-lf", b"/livez%0a"),
                ("path-tab", b"/li%09vez")]


@pytest.mark.parametrize("case,uri", CONTROL_URIS, ids=[c[0] for c in CONTROL_URIS])
def test_10_control_characters_in_the_uri_400(edge, case, uri):
    """A url-decoded control character in the path or the query: 400 from the node's and the
    admin's HTTP routes, the admin's token-guarded ones included (before this, "%0a" ended
    lws's request line early: the admin answered /metrics?a=%0a with "HTTP/1.0 200" and the
    figures). Other requests on the same servers are served as before."""
    node, admin = edge
    auth = b"Authorization: Bearer " + admin.token.encode() + b"\r\n"
    metrics = uri.replace(b"/livez", b"/metrics").replace(b"/li%09vez", b"/met%09rics")
    for port, u, extra in ((node.port, uri, b""), (admin.port, uri, b""),
                           (admin.port, metrics, auth)):
        line, _ = exchange(port, b"GET " + u + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        if case == "query-nul":  # lws itself drops the connection at a decoded NUL, unanswered
            assert status_of(line) == 400 or line == "", (case, port, u, line)
        else:
            assert status_of(line) == 400, (case, port, u, line)
    line, _ = exchange(admin.port, b"GET /metrics?a=%20b HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    assert line.startswith("HTTP/1.1 200"), line
    # an HTTP/1.0 request (it has its version) is served as before
    line, _ = exchange(node.port, b"GET /livez HTTP/1.0\r\n\r\n")
    assert status_of(line) == 200, line
    assert http_get(admin.http + "/livez?a=b")[0] == 200
    assert node.ready()


def test_11_http2_over_tls_is_served_and_checked(cluster, tmp_path):
    """A node serving TLS itself offers HTTP/2 (ALPN h2, what browsers and curl pick): an h2
    request has no request line, so no HTTP version token, and the check of test_10 must not
    take that for a cut request line (it did: every h2 request was 400, found in review).
    Control characters in an h2 query are refused as over HTTP/1.1."""
    import shutil
    import subprocess
    if not shutil.which("curl"):
        pytest.fail("curl is needed (deploy/install-deps.sh installs it)")
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"], check=True,
                   capture_output=True)
    node = cluster.node("tls", args=["--tls-cert", cert, "--tls-key", key], wait=False)

    def curl(path, *flags):
        r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                            *flags, f"https://127.0.0.1:{node.port}{path}"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout
    wait_for(lambda: curl("/livez").startswith("200"), 10, msg="TLS node up")
    assert curl("/livez", "--http2") == "200 2", curl("/livez", "--http2")
    assert curl("/readyz", "--http2") == "200 2"
    assert curl("/livez", "--http1.1") == "200 1.1"
    assert curl("/livez?a=%0a", "--http2").startswith("400"), curl("/livez?a=%0a", "--http2")
    assert curl("/livez?a=%0a", "--http1.1").startswith("400")
