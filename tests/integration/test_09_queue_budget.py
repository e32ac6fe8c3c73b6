"""Availability under hostile load, the send side (issue 17, faults 3 and 4, and the
idle-before-join timeout of 7): a node-wide budget for queued bytes (--queue-budget-bytes), the
largest queues shed first with 4003, a bounded stall (--queue-stall-ms), the 4003 close frame
actually reaching a reader that reads again, sockets that never join closed with 4001
(--join-timeout-ms), and the node's log bounded when a client floods what it logs.

Readers that do not read are raw sockets with a 4 KiB receive buffer: the kernel still absorbs
about 1.9 to 2.8 MB per socket on loopback (32 to 46 signals of 60 KB, measured) before anything
queues in the node."""
import asyncio
import json
import os
import socket
import threading
import time

from client import Client
from harness import Node, http_get, wait_for
from rawws import RawWS, handshake_request

PAD = "z" * 60000  # a 60 KB signal, as in the issue (under the 64 KiB message limit)
BUDGET = 6 * 1024 * 1024


def slow_reader(port, room):
    """A raw client with a tiny receive buffer that joins room and then does not read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    ws = RawWS(port, connect=False)
    ws.s.close()
    ws.s = s
    s.sendall(handshake_request("127.0.0.1", port))
    assert ws.read_http_head() == 101
    sid = json.loads(ws.recv_frame()[1])["id"]
    ws.send_text(json.dumps({"type": "join", "room": room}))
    return ws, sid


async def pair(node, room):
    """A sender (a normal client) and a reader that does not read, both in room."""
    sender = await Client.connect(node.ws_url)
    await sender.join(room)
    reader, rid = await asyncio.to_thread(slow_reader, node.port, room)
    await sender.expect("peer-joined", id=rid)
    return sender, reader, rid


async def push(sender, to, count):
    for _ in range(count):
        await sender.send({"type": "signal", "to": to, "data": PAD})


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_all(ws, timeout, until=None):
    """Reads until the node closes: (close code or None for EOF without one, text frames);
    ("open", texts) when the connection is still open at the deadline, or once until(texts)."""
    texts = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not (until and until(texts)):
            op, payload = ws.recv_frame(deadline - time.monotonic())
            if op == 8:
                return (int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None,
                        texts)
            if op == 1:
                texts.append(json.loads(payload))
    except socket.timeout:
        return "open", texts
    except (EOFError, ConnectionResetError, OSError):
        return None, texts
    return "open", texts


async def signal_latency(a, b, tag):
    t0 = time.monotonic()
    ack = await a.request({"type": "signal", "to": b.id, "data": {"t": tag}}, timeout=3)
    assert ack["type"] == "signal-ack", ack
    assert (await b.expect("signal", timeout=3))["data"] == {"t": tag}
    return time.monotonic() - t0


def test_01_amplification_sheds_the_largest_queues(cluster):
    """The issue's amplification, scaled: 40 pairs, each a sender pushing 60 KB signals within
    its burst to a reader that does not read. 4 light readers get 40 signals (0 to 0.5 MB each
    queued in the node: the kernel's share varies), then 30 heavy ones get 64 (1 to 1.6 MB
    each): 31 MB queued without the budget (RSS +33 MB, measured). With a budget of 6 MiB the
    node sheds the largest queues, i.e. heavy readers only (when it is over, at most 2 MB are
    the lights', so the rest is in 2 or 3 heavy queues of over 1 MB); queued bytes and RSS
    stay bounded; a legitimate pair keeps its latency; /readyz answers."""
    # Why no ASan quarantine for this node: ASan keeps freed memory aside (256 MB by default)
    # instead of reusing it, which is what this test measures; its checks stay on.
    node = cluster.node("budget", args=["--queue-budget-bytes", str(BUDGET),
                                        "--max-send-queue-bytes", str(4 << 20)],
                        env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1:"
                                             "quarantine_size_mb=0"})
    peak = {"queued": 0, "rss": 0}
    stop = threading.Event()

    def sample(base):
        while not stop.is_set():
            try:
                m = node.metrics()
                peak["queued"] = max(peak["queued"], m["switchboard_node_send_queue_bytes"])
                peak["rss"] = max(peak["rss"], rss_kb(node.proc.pid) - base)
            except Exception:
                pass
            time.sleep(0.02)

    async def main():
        a = await Client.connect(node.ws_url)
        b = await Client.connect(node.ws_url)
        await a.join("legit")
        await b.join("legit")
        await a.expect("peer-joined", id=b.id)
        before = min([await signal_latency(a, b, f"pre{i}") for i in range(5)])
        lights = [await pair(node, f"light{i}") for i in range(4)]
        heavies = [await pair(node, f"heavy{i}") for i in range(30)]
        base = rss_kb(node.proc.pid)
        sampler = threading.Thread(target=sample, args=(base,), daemon=True)
        sampler.start()
        try:
            for sender, _, rid in lights:
                await push(sender, rid, 40)
            for sender, _, rid in heavies:
                await push(sender, rid, 64)
            sent = len(lights) * 40 + len(heavies) * 64 + 5  # and the 5 latency probes

            def received():
                return node.metrics()['switchboard_node_messages_received_total'
                                      '{type="signal"}'] >= sent
            await asyncio.to_thread(wait_for, received, 20, 0.05, "every signal at the node")
            await asyncio.sleep(0.3)
            during = max([await signal_latency(a, b, f"during{i}") for i in range(5)])
            st, body, _ = await asyncio.to_thread(http_get, node.http + "/readyz")
            assert st == 200, body
        finally:
            stop.set()
            sampler.join(5)
        m = node.metrics()
        sheds = m['switchboard_node_send_queue_sheds_total{budget="node"}']
        print(f"latency {before*1000:.1f} -> {during*1000:.1f} ms; sheds {sheds:.0f}; peak "
              f"queued {peak['queued']/1e6:.2f} MB; peak RSS growth {peak['rss']/1024:.1f} MB")
        assert during < max(0.25, 5 * before), (before, during)
        assert m["switchboard_node_send_queue_budget_bytes"] == BUDGET
        assert peak["queued"] <= BUDGET + 2 * 65536, peak  # the budget, and the frame over it
        assert m["switchboard_node_send_queue_bytes"] <= BUDGET
        assert peak["rss"] < 20 * 1024, peak  # 50 MB would have queued without the budget
        assert sheds >= 3, sheds  # how many depends on the kernel's share (9 to 28 seen)
        assert m['switchboard_node_send_queue_sheds_total{budget="socket"}'] == 0
        # the light readers (smaller queues) were all kept: each reads its 40 signals, then
        # still talks
        def signals(texts):
            return sum(1 for t in texts if t.get("type") == "signal")

        def pong(texts):
            return any(t.get("type") == "pong" for t in texts)

        for _, reader, _ in lights:
            code, texts = await asyncio.to_thread(read_all, reader, 3,
                                                  lambda t: signals(t) == 40)
            assert code == "open" and signals(texts) == 40, (code, len(texts))
            reader.send_text(json.dumps({"type": "ping", "rid": "p"}))
            code, texts = await asyncio.to_thread(read_all, reader, 1.0, pong)
            assert code == "open" and pong(texts), (code, texts)
        # the shed ones are heavy readers: closed (within 2 s of the shed, no reading needed)
        closed = codes = 0
        still_open = [reader for _, reader, _ in heavies]
        # A shed reader is gone within 2 s of its shed; the last sheds may come while we look
        # (senders' frames still in flight; a heavy reader left unread past --queue-stall-ms,
        # 20 s, would be shed too): look again at the open ones until the counts agree, 6 s
        # at most (on a loaded box 2 of 25 were still within their 2 s at the first look).
        deadline = time.monotonic() + 6
        while True:
            left = []
            for reader in still_open:
                code, texts = await asyncio.to_thread(read_all, reader, 0.2,
                                                      lambda t: signals(t) == 64)
                # 4003, or EOF when the kernel's buffer for it stayed full for the 2 s the
                # close frame is given (docs/protocol.md); test_02 checks the close frame itself
                assert code in ("open", 4003, None), code
                if code == "open":
                    left.append(reader)
                closed += code != "open"
                codes += code == 4003
            still_open = left
            m = node.metrics()
            sheds = m['switchboard_node_send_queue_sheds_total{budget="node"}']
            stalled = m['switchboard_node_send_queue_sheds_total{budget="stall"}']
            if closed == sheds + stalled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        print(f"shed heavy readers: {closed}, of which {codes} read the 4003 close frame")
        assert closed == sheds + stalled, (closed, sheds, stalled)
        assert peak["queued"] <= BUDGET + 2 * 65536 and m["switchboard_node_send_queue_bytes"] \
            <= BUDGET
        assert (await signal_latency(a, b, "after")) < 0.5
        for sender, reader, _ in lights + heavies:
            reader.close()
            await sender.close()
        await a.close()
        await b.close()

    asyncio.run(main())


def test_02_shed_reader_that_reads_again_sees_4003(cluster):
    """Fault 4: a reader shed with 4003 gets the close frame once it reads again, after the
    frames the kernel already held (it used to get EOF: the node killed the socket)."""
    node = cluster.node("shed", args=["--max-send-queue-bytes", str(512 * 1024)])

    async def main():
        sender, reader, rid = await pair(node, "R")
        # 5.4 MB: the kernel absorbs 1.9 to 2.8 MB (more when the node writes without waiting
        # for WRITEABLE), then the node's queue passes 512 KiB
        await push(sender, rid, 90)
        await asyncio.to_thread(
            wait_for, lambda: node.metrics()['switchboard_node_send_queue_sheds_total'
                                             '{budget="socket"}'] == 1, 5, 0.02, "the shed")
        assert node.metrics()["switchboard_node_send_queue_bytes"] == 0
        code, texts = await asyncio.to_thread(read_all, reader, 3)
        print(f"read {len(texts)} frames, then close {code}")
        assert code == 4003, (code, len(texts))
        assert len(texts) >= 20  # what the kernel held came first
        assert node.metrics()['switchboard_node_closes_total{code="4003"}'] == 1
        await sender.expect("peer-left", id=rid, timeout=3)
        reader.close()
        await sender.close()

    asyncio.run(main())


def test_03_stalled_queue_closed_after_queue_stall_ms(cluster):
    """A reader whose queue is under every budget but has not drained for --queue-stall-ms is
    shed too (and sees 4003 when it reads); a reader that reads is not, however much it got."""
    node = cluster.node("stall", args=["--queue-stall-ms", "600",
                                       "--max-send-queue-bytes", str(4 << 20)])

    async def main():
        sender, reader, rid = await pair(node, "S")
        fast = await Client.connect(node.ws_url)
        await fast.join("S")
        await sender.expect("peer-joined", id=fast.id)
        # 3.6 MB: 0.8 to 1.7 MB queued past what the kernel absorbs, under the 4 MiB per socket
        await push(sender, rid, 60)
        t0 = time.monotonic()
        await asyncio.to_thread(
            wait_for, lambda: node.metrics()["switchboard_node_send_queue_bytes"] > 0, 3, 0.02,
            "a queue")
        await asyncio.to_thread(
            wait_for, lambda: node.metrics()['switchboard_node_send_queue_sheds_total'
                                             '{budget="stall"}'] == 1, 4, 0.02, "the stall shed")
        took = time.monotonic() - t0
        print(f"stalled queue shed after {took*1000:.0f} ms (stall 600 ms, sweep up to 1 s)")
        assert 0.5 < took < 2.5, took
        code, _ = await asyncio.to_thread(read_all, reader, 3)
        assert code == 4003, code
        # a reader that reads: 3 s of signals to it, never shed
        for i in range(60):
            await sender.send({"type": "signal", "to": fast.id, "data": PAD[:20000]})
            await fast.expect("signal")
            await asyncio.sleep(0.05)
        assert fast.closed is None
        m = node.metrics()
        assert m['switchboard_node_send_queue_sheds_total{budget="stall"}'] == 1
        reader.close()
        await fast.close()
        await sender.close()

    asyncio.run(main())


def test_04_join_timeout_closes_4001(cluster):
    """Auth off: a socket that has not joined within --join-timeout-ms is closed 4001 ("join
    timeout"); pings do not count; one that joined is kept, also after it leaves."""
    node = cluster.node("jt", args=["--join-timeout-ms", "400"])
    never = cluster.node("jt0", args=["--join-timeout-ms", "0"])

    async def main():
        t0 = time.monotonic()
        idle = await Client.connect(node.ws_url)
        pinger = await Client.connect(node.ws_url)
        joiner = await Client.connect(node.ws_url)
        await joiner.join("J")
        keeps = await Client.connect(never.ws_url)
        assert (await pinger.request({"type": "ping"}))["type"] == "pong"
        code, reason = await idle.wait_closed(3)
        took = time.monotonic() - t0
        assert (code, reason) == (4001, "join timeout"), (code, reason)
        assert 0.35 < took < 1.5, took
        assert (await pinger.wait_closed(2))[0] == 4001
        await joiner.request({"type": "leave"})
        await asyncio.sleep(0.8)
        assert joiner.closed is None and keeps.closed is None
        assert (await joiner.request({"type": "ping"}))["type"] == "pong"
        assert (await keeps.request({"type": "ping"}))["type"] == "pong"
        await joiner.close()
        await keeps.close()
        return took

    took = asyncio.run(main())
    print(f"join timeout 400 ms: closed 4001 after {took*1000:.0f} ms")
    assert node.metrics()['switchboard_node_closes_total{code="4001"}'] == 2


def test_05_default_join_timeout_and_budget(cluster):
    """Defaults: the budget is a quarter of the memory the node may use (its cgroup's limit,
    else the RAM), shown on /metrics; an unjoined socket outlives a second (30 s default)."""
    node = cluster.node("defaults")
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")
    limit = 0
    with open(f"/proc/{node.proc.pid}/cgroup") as fh:
        for line in fh.read().splitlines():
            if line.startswith("0::"):
                path = "/sys/fs/cgroup" + line[3:].rstrip("/") + "/memory.max"
            elif ":memory:" in line:
                path = ("/sys/fs/cgroup/memory" + line.split(":memory:")[1].rstrip("/") +
                        "/memory.limit_in_bytes")
            else:
                continue
            try:
                with open(path) as f:
                    limit = int(f.read().strip())
                    break
            except (OSError, ValueError):
                continue
    mem = limit if 0 < limit < ram else ram
    assert node.metrics()["switchboard_node_send_queue_budget_bytes"] == mem // 4

    async def main():
        c = await Client.connect(node.ws_url)
        await asyncio.sleep(1.0)
        assert c.closed is None
        await c.close()

    asyncio.run(main())


def test_06_log_flood_stays_small(cluster):
    """Every line a client can make the node log is rate limited (10 a second per call site):
    for 2.5 s, clients connect, join, signal a peer that is not there, leave and close, 50 at a
    time, at --log-level debug (the most a node logs). Before, each client was logged as
    connected, joined, left and closed (and cleanup on a reset), one line each."""
    node = Node(cluster.redis.url, cluster.tmpdir, name="flood")
    cluster.nodes.append(node)

    async def one(i):
        c = await Client.connect(node.ws_url)
        await c.join(f"F{i % 10}")
        await c.request({"type": "signal", "to": "x" * 22, "data": {}})
        await c.request({"type": "leave"})
        await c.close()

    async def main():
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            await asyncio.gather(*[one(i) for i in range(n, n + 50)])
            n += 50
        return n

    start = os.path.getsize(node.proc.log_path)
    t0 = time.monotonic()
    clients = asyncio.run(main())
    took = time.monotonic() - t0
    time.sleep(0.3)
    with open(node.proc.log_path, errors="replace") as fh:
        fh.seek(start)
        lines = [ln for ln in fh.read().splitlines() if " session " in ln]
    print(f"{clients} clients in {took:.1f} s: {len(lines)} session lines logged")
    assert clients >= 300
    # at most 10 lines a second per call site: connected, joined, left, closed, cleanup and
    # closing are 6 sites
    assert len(lines) <= 6 * 10 * (int(took) + 2), len(lines)
    assert len(lines) < clients  # one line per client per site would be 4 x clients
    assert any("similar lines not logged" in ln for ln in lines)  # and it says so
