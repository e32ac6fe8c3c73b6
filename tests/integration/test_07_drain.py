"""Graceful drain on SIGTERM (issue 5): /readyz turns 503 at once, new upgrades are refused,
the node's clients get 1001, their peers on another node get peer-left (disconnect) and the
links are removed, the lease goes, and the process exits 0 within --drain-timeout-ms."""
import asyncio
import json
import signal
import socket
import threading
import time

import invariants
from client import Client
from harness import http_get, wait_for
from rawws import RawWS, handshake_request


stats = invariants.counters


class ReadyPoller:
    """Polls a node's /readyz every few ms from a thread; records when it first saw 503."""

    def __init__(self, node):
        self.node = node
        self.first_503 = None
        self.body = None
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            try:
                status, body, _ = http_get(self.node.http + "/readyz", timeout=0.2)
            except OSError:
                status, body = None, None
            if status == 503 and self.first_503 is None:
                self.first_503 = time.monotonic()
                self.body = body
            time.sleep(0.002)

    def close(self):
        self.stop.set()
        self.t.join()


def upgrade_status(port):
    """The status line of a fresh upgrade request (None: connection refused or closed)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None
    try:
        s.sendall(handshake_request("127.0.0.1", port))
        buf = b""
        while b"\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                return None
            buf += d
        return int(buf.split(b" ")[1])
    except OSError:
        return None
    finally:
        s.close()


def slow_reader(node, room):
    """A raw client with a tiny receive buffer that joins room and then never reads."""
    ws = RawWS(node.port, connect=False)
    ws.s.close()
    # the buffer size before connecting, so that the advertised window stays small
    ws.s = socket.socket()
    ws.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws.s.settimeout(5)
    ws.s.connect(("127.0.0.1", node.port))
    ws.s.sendall(handshake_request("127.0.0.1", node.port))
    assert ws.read_http_head() == 101
    op, payload = ws.recv_frame()
    sid = json.loads(payload)["id"]
    ws.send_text(json.dumps({"type": "join", "room": room}))
    return ws, sid


async def stall_slow_reader(a, sender, slow_id):
    """Signals from sender to the slow reader until frames pile up in node a's send queue (the
    kernel's socket buffers, which grow to a few MB, must fill first)."""
    pad = "q" * 16000
    for i in range(1000):
        await sender.send({"type": "signal", "to": slow_id, "data": pad})
        if i % 20 == 19:
            await asyncio.sleep(0.05)
            if a.metrics()["switchboard_node_send_queue_bytes"] > 300000:
                break
    await asyncio.sleep(0.3)
    assert a.metrics()["switchboard_node_send_queue_bytes"] > 100000


# A send queue large enough for the stalled reader (the default 1 MiB would close it 4003).
BIG_QUEUE = ["--max-send-queue-bytes", "67108864"]
FAST = ["--rate", "100000", "--burst", "100000"]


def test_01_sigterm_drains_linked_sockets(cluster, redis_server, no_resume):
    a = cluster.node("na", args=["--drain-timeout-ms", "6000"] + BIG_QUEUE)
    b = cluster.node("nb", args=FAST)
    r = redis_server.client()
    N = 5

    async def main():
        xs = [await Client.connect(a.ws_url) for _ in range(N)]  # on the draining node
        ys = [await Client.connect(b.ws_url) for _ in range(N)]  # their peers elsewhere
        idle = await Client.connect(a.ws_url)  # connected, never joined
        for x in xs:
            await x.join("D")
        for y in ys:
            await y.join("D")
        for x, y in zip(xs, ys):
            await x.request({"type": "link", "peer": y.id, "state": "up"})
            await y.request({"type": "link", "peer": x.id, "state": "up"})
            await x.expect("link-state", peer=y.id, state="up")
        # one more link that stays: between two sockets of node b
        await ys[0].request({"type": "link", "peer": ys[1].id, "state": "up"})
        await ys[1].request({"type": "link", "peer": ys[0].id, "state": "up"})
        assert stats(r)["links"] == N + 1
        # A client that does not read, with frames queued for it, keeps the drain going for a
        # while (its close waits behind them until lws gives up on it): the window in which
        # /readyz and new upgrades are observed.
        slow, slow_id = await asyncio.to_thread(slow_reader, a, "D")
        await ys[0].expect("peer-joined", id=slow_id)
        await stall_slow_reader(a, ys[0], slow_id)
        assert r.exists("sb:node:na")
        for c in ys:
            c.backlog.clear()

        poller = ReadyPoller(a)
        try:
            await asyncio.sleep(0.05)
            assert poller.first_503 is None
            t0 = time.monotonic()
            a.proc.signal(signal.SIGTERM)
            # the node's clients are told to go elsewhere
            for x in xs + [idle]:
                code, reason = await x.wait_closed(2)
                assert code == 1001, code
            closed_s = time.monotonic() - t0
            # their peers hear of it, as a disconnect
            for x, y in zip(xs, ys):
                for other in ys:
                    m = await other.expect("peer-left", id=x.id, timeout=2)
                    assert m["reason"] == "disconnect", m
            notified_s = time.monotonic() - t0
            await asyncio.sleep(0.1)
            for y in ys:
                assert not [m for m in y.backlog if m["type"] == "link-state"], y.backlog
            # while still draining (the slow reader is not gone yet)
            assert a.proc.alive(), "drain ended before it could be observed"
            status = await asyncio.to_thread(upgrade_status, a.port)
            assert status != 101, status
            assert http_get(a.http + "/livez")[0] == 200
            assert poller.first_503 is not None
            ready_s = poller.first_503 - t0
            assert b"draining" in poller.body, poller.body
            still_draining = a.proc.alive()
        finally:
            poller.close()
        # the process exits 0 within the drain timeout
        rc = await asyncio.to_thread(a.proc.p.wait, 8)
        exit_s = time.monotonic() - t0
        assert rc == 0, rc
        assert exit_s < 6.0, exit_s
        # the slow reader was cleaned up as well
        m = await ys[0].expect("peer-left", id=slow_id, timeout=3)
        assert m["reason"] == "disconnect"
        slow.close()
        # only node b's own link is left; node a's lease and socket index are gone
        s = stats(r)
        assert s["links"] == 1 and s["members"] == N, s
        for x, y in zip(xs, ys):
            assert not r.exists(f"sb:{{D}}:links:{x.id}")
            assert not r.sismember(f"sb:{{D}}:links:{y.id}", x.id)
        assert not r.exists("sb:node:na")
        assert not r.exists("sb:{#}:node:na:sockets")
        assert "na" not in r.smembers("sb:nodes")
        assert invariants.check(r) == []
        for y in ys:
            assert (await y.request({"type": "ping"}))["type"] == "pong"
            await y.close()
        return ready_s, closed_s, notified_s, exit_s, status, still_draining
    ready_s, closed_s, notified_s, exit_s, status, still = asyncio.run(main())
    print(f"drain: readyz 503 after {ready_s*1000:.1f} ms, clients closed 1001 within "
          f"{closed_s*1000:.0f} ms, peers told within {notified_s*1000:.0f} ms, new upgrade "
          f"answered {status}, exit 0 after {exit_s*1000:.0f} ms (slow reader held it)")
    assert ready_s < 0.1, ready_s
    assert status == 503
    log = a.proc.log()
    assert "draining: closing" in log and "drain: lease removed" in log
    assert "uv_loop_close=0" in log


def test_02_quick_drain_without_stragglers(cluster, redis_server, no_resume):
    """Clients that read: the drain takes no longer than their cleanup."""
    a = cluster.node("na", args=["--drain-timeout-ms", "10000"])
    b = cluster.node("nb")
    r = redis_server.client()

    async def main():
        x = await Client.connect(a.ws_url)
        y = await Client.connect(b.ws_url)
        await x.join("Q")
        await y.join("Q")
        await x.request({"type": "link", "peer": y.id, "state": "up"})
        await y.request({"type": "link", "peer": x.id, "state": "up"})
        await y.expect("link-state", peer=x.id, state="up")
        t0 = time.monotonic()
        a.proc.signal(signal.SIGTERM)
        assert (await x.wait_closed(2))[0] == 1001
        m = await y.expect("peer-left", id=x.id, timeout=2)
        told = time.monotonic() - t0
        assert m["reason"] == "disconnect"
        rc = await asyncio.to_thread(a.proc.p.wait, 10)
        took = time.monotonic() - t0
        assert rc == 0
        assert stats(r) == {"rooms": 1, "members": 1, "links": 0, "linked": 0}
        assert not r.exists("sb:node:na")
        assert invariants.check(r) == []
        await y.close()
        return told, took
    told, took = asyncio.run(main())
    print(f"quick drain: peer told after {told*1000:.1f} ms, exit 0 after {took*1000:.0f} ms")
    assert took < 1.0, took  # nothing to wait for: not the 10 s drain timeout


def test_03_drain_timeout_bounds_exit(cluster, redis_server, no_resume):
    """A client that never lets the node write its close: the drain still ends within
    --drain-timeout-ms (here shorter than lws's own 3 s give-up) with exit status 0, and the
    straggler is cleaned up like the others."""
    a = cluster.node("na", args=["--drain-timeout-ms", "1000", "--presence-ttl-ms", "3000",
                                 "--heartbeat-ms", "500", "--redis-timeout-ms", "500"] + BIG_QUEUE)
    b = cluster.node("nb", args=FAST)
    r = redis_server.client()

    async def main():
        y = await Client.connect(b.ws_url)
        await y.join("T")
        slow, slow_id = await asyncio.to_thread(slow_reader, a, "T")
        await y.expect("peer-joined", id=slow_id)
        await stall_slow_reader(a, y, slow_id)
        t0 = time.monotonic()
        a.proc.signal(signal.SIGTERM)
        rc = await asyncio.to_thread(a.proc.p.wait, 5)
        took = time.monotonic() - t0
        assert rc == 0, rc
        slow.close()
        # the straggler was dropped a Redis timeout before the deadline, so that its cleanup
        # ran: its peer is told at once, not after the admin reaps it
        m = await y.expect("peer-left", id=slow_id, timeout=0.5)
        assert m["reason"] == "disconnect", m
        assert stats(r) == {"rooms": 1, "members": 1, "links": 0, "linked": 0}
        assert not r.exists("sb:node:na") and not r.exists("sb:{#}:node:na:sockets")
        assert invariants.check(r) == []
        await y.close()
        return took, m["reason"]
    took, reason = asyncio.run(main())
    print(f"drain timeout 1000 ms with a stuck client: exit 0 after {took*1000:.0f} ms; "
          f"its peer was told '{reason}'")
    # dropped at 1000 - 500 ms, cleaned up, then the lease released: before the deadline
    assert 0.45 < took < 1.1, took
    assert "drain timeout" not in a.proc.log()


def test_04_stopped_node_resumes_and_closes_4000(cluster, redis_server, no_resume):
    """The ungraceful counterpart: a node cut off (SIGSTOP) past its presence TTL, with no admin
    running to reap it. Its peers are told nothing while it is away (nobody can know it will
    not come back). On SIGCONT its first heartbeat finds the presence keys gone (rule 1: never
    re-created): it removes its sockets itself (reason expired), closes them with 4000, and
    serves new clients again."""
    fast = ["--presence-ttl-ms", "1500", "--heartbeat-ms", "300", "--redis-timeout-ms", "500"]
    a, b = cluster.node("na", args=fast), cluster.node("nb", args=fast)
    r = redis_server.client()

    async def main():
        xs = [await Client.connect(a.ws_url) for _ in range(3)]
        y = await Client.connect(b.ws_url)
        await y.join("C")
        for x in xs:
            await x.join("C")
            await x.request({"type": "link", "peer": y.id, "state": "up"})
            await y.request({"type": "link", "peer": x.id, "state": "up"})
            await y.expect("link-state", peer=x.id, state="up")
        assert stats(r)["links"] == 3
        a.proc.signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            wait_for(lambda: all(not r.exists(f"sb:{{C}}:presence:{x.id}") for x in xs), 5,
                     msg="presence expired")
            expired_s = time.monotonic() - stopped
            assert not r.exists("sb:node:na")  # the lease lapsed too
            await y.none_of("peer-left", wait=0.3)
        finally:
            t0 = time.monotonic()
            a.proc.signal(signal.SIGCONT)
        for x in xs:
            code, _ = await x.wait_closed(3)
            assert code == 4000, code
        closed_s = time.monotonic() - t0
        for x in xs:
            m = await y.expect("peer-left", id=x.id, timeout=3)
            assert m["reason"] == "expired", m
        told_s = time.monotonic() - t0
        assert stats(r) == {"rooms": 1, "members": 1, "links": 0, "linked": 0}
        for x in xs:
            assert not r.exists(f"sb:{{C}}:presence:{x.id}")
        wait_for(lambda: r.exists("sb:node:na"), 2, msg="lease back")
        wait_for(a.ready, 2, msg="node a ready again")
        assert invariants.check(r) == []
        z = await Client.connect(a.ws_url)
        await z.join("C")
        await y.expect("peer-joined", id=z.id)
        await z.close()
        await y.close()
        return expired_s, closed_s, told_s
    expired_s, closed_s, told_s = asyncio.run(main())
    print(f"SIGSTOP: presence gone after {expired_s*1000:.0f} ms (TTL 1500); after SIGCONT: "
          f"4000 within {closed_s*1000:.0f} ms, peers told within {told_s*1000:.0f} ms")
    assert closed_s < 1.0 and told_s < 1.0, (closed_s, told_s)
    assert a.metrics()['switchboard_node_closes_total{code="4000"}'] == 3
