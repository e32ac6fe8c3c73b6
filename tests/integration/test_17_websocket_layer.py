"""The node's own WebSocket layer (node/conn.c, `--websocket native`; docs/design.md "The node's
own WebSocket layer"). Every node here is started with `--websocket native` explicitly, so these
run whatever the default is. What they pin is what a byte-level layer gets wrong: frames and
heads cut anywhere by the network, frames right behind the head, control frames between the
fragments of a message, the close handshake both ways, plain HTTP on the same port (handed to
libwebsockets untouched, keep-alive included), and the connection caps and counts, which the
layer must give back when its connections close."""
import json
import socket
import struct
import time

from harness import wait_for
from rawws import RawWS, frame, handshake_request

NATIVE = ["--websocket", "native"]


def welcome_of(ws):
    op, payload = ws.recv_frame()
    assert op == 1, op
    msg = json.loads(payload)
    assert msg["type"] == "welcome", msg
    return msg


def next_text(ws, timeout=3.0):
    """The next text frame (parsed), and the pong payloads seen before it."""
    pongs = []
    deadline = time.monotonic() + timeout
    while True:
        op, payload = ws.recv_frame(max(0.05, deadline - time.monotonic()))
        if op == 10:
            pongs.append(payload)
        elif op == 1:
            return json.loads(payload), pongs


def test_01_frames_cut_at_every_byte(cluster):
    """A fragmented text message with a ping between its fragments, then a whole message: cut
    in two at every byte, with a pause between the halves (so the node reads them separately).
    Every cut gives the pong with the ping's payload and both replies, in order."""
    a = cluster.node("na", args=NATIVE + ["--rate", "100000", "--burst", "100000"])
    ping_msg = b'{"type":"ping","rid":"frag"}'
    data = (frame(1, ping_msg[:7], fin=False) + frame(9, b"mid") +
            frame(0, ping_msg[7:20], fin=False) + frame(0, ping_msg[20:]) +
            frame(1, b'{"type":"ping","rid":2}') + frame(9, b""))
    for cut in range(1, len(data)):
        ws = RawWS(a.port)
        try:
            assert ws.status == 101
            welcome_of(ws)
            ws.send_raw(data[:cut])
            time.sleep(0.01)
            ws.send_raw(data[cut:])
            first, pongs = next_text(ws)
            assert first == {"type": "pong", "rid": "frag"}, (cut, first)
            second, more = next_text(ws)
            assert second == {"type": "pong", "rid": 2}, (cut, second)
            # the client's pings are answered by the layer, with their payloads
            pongs += more
            deadline = time.monotonic() + 2
            while len(pongs) < 2 and time.monotonic() < deadline:
                op, payload = ws.recv_frame(2)
                if op == 10:
                    pongs.append(payload)
            assert pongs == [b"mid", b""], (cut, pongs)
        finally:
            ws.close()


def test_02_head_cut_and_frames_behind_it(cluster):
    """A request head that arrives in pieces is still answered (the layer looks at it again),
    and frames sent in the same segment as the head are read after the 101."""
    a = cluster.node("na", args=NATIVE)
    head = handshake_request("127.0.0.1", a.port)
    for cut in (1, 5, len(head) // 2, len(head) - 2, len(head) - 1):
        s = socket.create_connection(("127.0.0.1", a.port), timeout=3)
        try:
            s.sendall(head[:cut])
            time.sleep(0.05)
            s.sendall(head[cut:] + frame(1, b'{"type":"ping","rid":"behind"}'))
            ws = RawWS.__new__(RawWS)
            ws.s, ws.buf = s, b""
            assert ws.read_http_head() == 101, cut
            welcome_of(ws)
            msg, _ = next_text(ws)
            assert msg == {"type": "pong", "rid": "behind"}, (cut, msg)
        finally:
            s.close()


def test_03_close_handshake_both_ways(cluster):
    a = cluster.node("na", args=NATIVE + ["--join-timeout-ms", "300"])
    # the client closes: its code is echoed and the TCP connection ends
    ws = RawWS(a.port)
    welcome_of(ws)
    ws.send_raw(frame(8, struct.pack("!H", 1000) + b"bye"))
    code, _ = ws.recv_until_close(2)
    assert code == 1000, code
    assert ws.closed_within(1)
    ws.close()
    # the node closes (the join timeout, 4001): the client answers, the TCP connection ends
    ws = RawWS(a.port)
    welcome_of(ws)
    t0 = time.monotonic()
    code, _ = ws.recv_until_close(3)
    assert code == 4001, code
    ws.send_raw(frame(8, struct.pack("!H", 4001)))
    assert ws.closed_within(1)
    assert time.monotonic() - t0 < 2
    ws.close()
    # a client that never answers our close is dropped within a second or so
    ws = RawWS(a.port)
    welcome_of(ws)
    code, _ = ws.recv_until_close(3)
    assert code == 4001
    t0 = time.monotonic()
    assert ws.closed_within(3)
    assert time.monotonic() - t0 < 2.5
    ws.close()
    m = a.metrics()
    assert m['switchboard_node_closes_total{code="4001"}'] == 2, m


def test_04_plain_http_on_the_same_port(cluster):
    """HTTP goes to libwebsockets untouched: keep-alive requests, HEAD, a body sent with the
    head, and a WebSocket upgrade after keep-alive requests on one connection (then served by
    libwebsockets) all work beside the layer's own sockets."""
    a = cluster.node("na", args=NATIVE)
    own = RawWS(a.port)
    welcome_of(own)
    s = socket.create_connection(("127.0.0.1", a.port), timeout=3)
    buf = b""

    def response():
        nonlocal buf
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            assert d, "closed"
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += s.recv(65536)
        buf = rest[length:]
        return int(head.split(b" ")[1]), rest[:length]

    for path in (b"/livez", b"/readyz", b"/metrics", b"/livez"):
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = response()
        assert status == 200, (path, status)
    s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert response()[0] == 200
    s.sendall(handshake_request("127.0.0.1", a.port))
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    assert buf.startswith(b"HTTP/1.1 101"), buf[:40]
    ws = RawWS.__new__(RawWS)
    ws.s, ws.buf = s, buf.partition(b"\r\n\r\n")[2]
    welcome_of(ws)
    ws.send_text('{"type":"ping","rid":"lws"}')
    assert next_text(ws)[0] == {"type": "pong", "rid": "lws"}
    own.send_text('{"type":"ping","rid":"own"}')
    assert next_text(own)[0] == {"type": "pong", "rid": "own"}
    s.close()
    own.close()


def test_05_caps_count_and_give_back(cluster):
    """The per-source cap counts the layer's connections like any other, and each one closed
    gives its place back (the open-connections gauge returns to where it was)."""
    a = cluster.node("na", args=NATIVE + ["--max-connections-per-ip", "4"])
    base = a.metrics()["switchboard_node_connections"]
    socks = []
    for _ in range(3):
        ws = RawWS(a.port)
        welcome_of(ws)
        socks.append(ws)
    # the fourth place is the metrics request's own; a fourth WebSocket then has none
    extra = socket.create_connection(("127.0.0.1", a.port), timeout=3)
    extra.sendall(handshake_request("127.0.0.1", a.port))
    time.sleep(0.2)
    refused = RawWS(a.port, connect=False)
    refused.s.sendall(handshake_request("127.0.0.1", a.port))
    assert refused.closed_within(2)
    refused.close()
    extra.close()
    for ws in socks:
        ws.close()
    wait_for(lambda: a.metrics()["switchboard_node_connections"] <= base, 5,
             msg="connections given back")
    m = a.metrics()
    assert m['switchboard_node_connections_refused_total{cap="max-connections-per-ip"}'] >= 1
    # and every place is usable again
    again = [RawWS(a.port) for _ in range(3)]
    for ws in again:
        assert ws.status == 101
        welcome_of(ws)
        ws.close()


def test_06_bad_upgrades_answered_by_the_layer(cluster):
    """What the layer refuses itself: a head with a NUL in a value or without a colon (400), an
    upgrade that is not a GET or has no `Connection: Upgrade` (400), a head over 4 KiB (431),
    a pipelined second request is not read as frames. The node keeps serving."""
    a = cluster.node("na", args=NATIVE)

    def status(raw):
        s = socket.create_connection(("127.0.0.1", a.port), timeout=3)
        try:
            s.sendall(raw)
            data = b""
            while b"\r\n" not in data:
                d = s.recv(4096)
                if not d:
                    return None
                data += d
            return int(data.split(b" ")[1])
        finally:
            s.close()

    good = handshake_request("127.0.0.1", a.port).decode()
    assert status(good.replace("Host:", "X: a\x00b\r\nHost:").encode()) == 400
    assert status(good.replace("Host:", "Broken\r\nHost:").encode()) == 400
    assert status(good.replace("GET ", "POST ", 1).encode()) == 400
    assert status(good.replace("Connection: Upgrade", "Connection: keep-alive").encode()) == 400
    assert status(good.replace("Host:", "X-Big: " + "b" * 5000 + "\r\nHost:").encode()) == 431
    ws = RawWS(a.port)
    welcome_of(ws)
    ws.send_text('{"type":"ping","rid":"still"}')
    assert next_text(ws)[0] == {"type": "pong", "rid": "still"}
    ws.close()


def test_07_close_frames_checked(cluster):
    """RFC 6455 7.4 and 8.1: a close code no client may send is a protocol error (1002), a
    reason that is not UTF-8 is 1007; a valid one is echoed."""
    a = cluster.node("na", args=NATIVE)
    cases = [(struct.pack("!H", 999), 1002), (struct.pack("!H", 1005), 1002),
             (struct.pack("!H", 1006), 1002), (struct.pack("!H", 2999), 1002),
             (struct.pack("!H", 5000), 1002), (struct.pack("!H", 1000) + b"\xff", 1007),
             (struct.pack("!H", 4321) + "né".encode(), 4321), (b"", None)]
    for payload, want in cases:
        ws = RawWS(a.port)
        welcome_of(ws)
        ws.send_raw(frame(8, payload))
        code, _ = ws.recv_until_close(2)
        assert code == want, (payload, code)
        assert ws.closed_within(2), payload
        ws.close()


def test_08_pings_without_reading_hold_one_pong(cluster):
    """A client that pings and never reads: while the node's bytes to it are held, only the
    latest ping waits for a pong, so the node's memory does not follow the pings."""
    a = cluster.node("na", args=NATIVE + ["--rate", "1000000", "--burst", "1000000"])

    def rss_kb():
        with open(f"/proc/{a.proc.pid}/status") as f:
            return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", a.port))
    s.sendall(handshake_request("127.0.0.1", a.port))
    time.sleep(0.3)  # the 101 and the welcome sit unread from here on
    before = rss_kb()
    ping = frame(9, b"p" * 125)
    s.settimeout(30)
    sent = 0
    for _ in range(1600):
        # 13.1 KB a time: 21 MB of pings, 20 MB of pongs owed, far more than the kernel's
        # socket buffers hold for the node
        s.sendall(ping * 100)
        sent += 100
    time.sleep(0.5)
    grown = rss_kb() - before
    assert grown < 1024, f"{grown} KB for {sent} pings"
    assert a.ready()
    s.close()


def test_09_nothing_after_our_close_frame(cluster):
    """RFC 6455 5.5.1: after its close frame the node sends nothing, not even a pong. Here the
    node closes 1007 (a text message that is not UTF-8) and the client then pings: no pong
    comes back. Before, every ping was answered, and a client that kept pinging while reading
    slowly held the closing connection (and its slot) open for as long as it liked."""
    a = cluster.node("na", args=NATIVE)
    ws = RawWS(a.port)
    welcome_of(ws)
    ws.send_raw(frame(1, b"\xff"))
    code, _ = ws.recv_until_close(2)
    assert code == 1007
    try:
        ws.send_raw(frame(9, b"after"))
    except OSError:
        pass  # already gone: nothing can come back either
    seen = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            op, payload = ws.recv_frame(0.2)
        except (EOFError, OSError):
            break  # timed out or closed: nothing more came
        seen.append(op)
    assert 10 not in seen, seen
    ws.close()
    assert a.ready()


def test_10_binary_frames_pay_the_rate_like_any_message(cluster):
    """A binary frame (part of neither protocol) is answered `bad-message` and costs 1 from the
    socket's rate bucket like a text message: a flood of them gets `rate-limited`, then 4002.
    Before, binary frames were answered without being charged: 500 got 500 replies and no
    close, on both WebSocket layers."""
    a = cluster.node("na", args=NATIVE)
    ws = RawWS(a.port)
    welcome_of(ws)
    try:
        for _ in range(500):
            ws.send_raw(frame(2, b""))
    except OSError:
        pass  # closed while sending: what is asserted below
    codes = []
    close = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            op, payload = ws.recv_frame(max(0.05, deadline - time.monotonic()))
        except (EOFError, OSError):
            break
        if op == 8:
            close = struct.unpack("!H", payload[:2])[0]
            break
        if op == 1:
            codes.append(json.loads(payload).get("code"))
    assert codes and codes[0] == "bad-message", codes[:3]
    assert "rate-limited" in codes, set(codes)
    assert close == 4002, (close, len(codes))
    ws.close()
    assert a.ready()


def test_11_a_message_left_unfinished_is_closed_1008(cluster):
    """A client that starts a fragmented message and never finishes it, while answering the
    node's pings (so it is not silent), held up to --max-message-bytes of the node's memory for
    as long as it liked. A message unfinished for --ping-timeout-ms is now closed with 1008.
    Here: ping interval 300 ms, timeout 1000 ms; the client answers every ping; closed 1008
    after about 1 s (before: still open after 3 s, and the final fragment was processed)."""
    a = cluster.node("na", args=NATIVE + ["--ping-interval-ms", "300", "--ping-timeout-ms",
                                          "1000"])
    ws = RawWS(a.port)
    welcome_of(ws)
    ws.send_raw(frame(1, b'{"type":"ping","p":"' + b"x" * 30000, fin=False))
    t0 = time.monotonic()
    close = None
    while time.monotonic() - t0 < 4:
        try:
            op, payload = ws.recv_frame(0.2)
        except socket.timeout:
            continue
        except (EOFError, OSError):
            break
        if op == 9:
            ws.send_raw(frame(10, payload))  # alive: answers the node's pings
        elif op == 8:
            close = struct.unpack("!H", payload[:2])[0]
            break
    took = time.monotonic() - t0
    assert close == 1008, close
    assert 0.9 <= took < 2.5, took
    ws.close()
    assert a.ready()


def test_12_connection_split_over_two_lines(cluster):
    """RFC 9110 5.3: `Connection: keep-alive` and `Connection: Upgrade` on two field lines are
    one list, holding "upgrade" (a proxy may add its own line). Before: 400."""
    a = cluster.node("na", args=NATIVE)
    good = handshake_request("127.0.0.1", a.port).decode()
    two = good.replace("Connection: Upgrade", "Connection: keep-alive\r\nConnection: Upgrade")
    assert two != good
    s = socket.create_connection(("127.0.0.1", a.port), timeout=3)
    try:
        s.sendall(two.encode())
        data = b""
        while b"\r\n" not in data:
            d = s.recv(4096)
            if not d:
                break
            data += d
        assert data.startswith(b"HTTP/1.1 101"), data[:100]
    finally:
        s.close()
