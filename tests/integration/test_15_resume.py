"""Session resume (issue 15, docs/protocol.md "Session resume"): a lost socket comes back on
any node within its grace with the same id, room, meta and links, and gets what was sent to it
meanwhile; peers see peer-away/peer-back and never peer-left; the grace ends with exactly one
peer-left; tokens are single use and bound to origin and subject. Real redis-server, several
real nodes."""
import asyncio
import signal
import time

import pytest

import invariants
from client import Client
from harness import wait_for

FAST = ["--presence-ttl-ms", "1500", "--heartbeat-ms", "300", "--redis-timeout-ms", "500"]


def figures(r):
    return invariants.counters(r)


def consistent(r, presence=True):
    bad = invariants.check(r, "sb", presence=presence)
    assert bad == [], "\n".join(bad)


async def resume(url, old, joined, **kw):
    """A new socket on url that asks to resume `old` (a Client) with the token of `joined`
    (its joined/resumed reply): (new client, reply)."""
    c = await Client.connect(url, **kw)
    reply = await c.request({"type": "resume", "id": old.id if hasattr(old, "id") else old,
                             "room": joined["room"], "resume": joined["resume"]})
    return c, reply


async def linked_pair(a_url, b_url, room="R"):
    a = await Client.connect(a_url)
    b = await Client.connect(b_url)
    ja = await a.join(room, meta={"name": "ann"})
    await b.join(room, meta={"name": "bob"})
    await a.expect("peer-joined", id=b.id)
    await a.request({"type": "link", "peer": b.id, "state": "up"})
    await b.request({"type": "link", "peer": a.id, "state": "up"})
    await a.expect("link-state", peer=b.id, state="up")
    await b.expect("link-state", peer=a.id, state="up")
    return a, b, ja


def test_01_reset_then_resume_on_another_node(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        assert a.welcome["limits"]["resume_grace_ms"] == 15000
        assert len(a.welcome["resume"]) >= 22 and len(ja["resume"]) >= 22
        before = figures(r)
        assert before == {"rooms": 1, "members": 2, "links": 1, "linked": 2}
        a.abort()
        await b.expect("peer-away", id=a.id)
        assert invariants.away(r) == (1, 1)
        assert figures(r) == before  # links stay formed while away
        for i in range(5):
            ack = await b.request({"type": "signal", "to": a.id, "data": {"n": i}})
            assert ack["type"] == "signal-ack", ack
        t0 = time.monotonic()
        a2, reply = await resume(n2.ws_url, a, ja)
        took = time.monotonic() - t0
        assert reply["type"] == "resumed", reply
        assert reply["id"] == a.id and reply["room"] == "R"
        assert [p["id"] for p in reply["peers"]] == [b.id]
        assert reply["peers"][0]["meta"] == {"name": "bob"}
        assert reply["links"] == [b.id] and reply["joined"] == [] and reply["left"] == []
        assert reply["resume"] != ja["resume"]
        for i in range(5):
            m = await a2.expect("signal")
            assert m == {"type": "signal", "from": b.id, "data": {"n": i}}
        await b.expect("peer-back", id=a.id)
        # Live traffic both ways, under the old id.
        await b.request({"type": "signal", "to": a.id, "data": "live"})
        assert (await a2.expect("signal"))["data"] == "live"
        await a2.request({"type": "signal", "to": b.id, "data": "hi"})
        m = await b.expect("signal", data="hi")
        assert m["from"] == a.id
        await b.none_of("peer-left", wait=0.3)
        assert figures(r) == before and invariants.away(r) == (0, 0)
        assert r.hget("sb:{R}:members", a.id).startswith('{"node":"n2"')
        consistent(r)
        # The link is still a link: down from the resumed side ends it for both.
        await a2.request({"type": "link", "peer": b.id, "state": "down"})
        await b.expect("link-state", peer=a.id, state="down")
        assert figures(r)["links"] == 0
        assert took < 1.0, took
        await a2.close()
        await b.close()
    asyncio.run(main())


def test_02_resume_on_the_same_node_and_chained(cluster, redis_server):
    n1 = cluster.node("n1", args=FAST)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n1.ws_url)
        a.abort()
        await b.expect("peer-away", id=a.id)
        await b.request({"type": "signal", "to": a.id, "data": 1})
        a2, reply = await resume(n1.ws_url, a, ja)
        assert reply["type"] == "resumed" and reply["links"] == [b.id], reply
        assert (await a2.expect("signal"))["data"] == 1
        await b.expect("peer-back", id=a.id)
        # Lose it again and resume with the new token.
        a2.abort()
        await b.expect("peer-away", id=a.id)
        a3, reply3 = await resume(n1.ws_url, a.id, reply)
        assert reply3["type"] == "resumed", reply3
        await b.expect("peer-back", id=a.id)
        await b.request({"type": "signal", "to": a.id, "data": 2})
        assert (await a3.expect("signal"))["data"] == 2
        consistent(r)
        await a3.close()
        await b.close()
    asyncio.run(main())


def test_03_grace_expiry_gives_exactly_one_peer_left(cluster, redis_server):
    args = FAST + ["--resume-grace-ms", "700"]
    n1, n2 = cluster.node("n1", args=args), cluster.node("n2", args=args)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        a.abort()
        await b.expect("peer-away", id=a.id)
        m = await b.expect("peer-left", id=a.id, timeout=3)
        assert m["reason"] == "disconnect"
        await b.none_of("peer-left", wait=1.0)
        assert figures(r) == {"rooms": 1, "members": 1, "links": 0, "linked": 0}
        assert invariants.away(r) == (0, 0)
        consistent(r)
        # Too late: the token is useless now, and nothing changes.
        a2, reply = await resume(n2.ws_url, a, ja)
        assert reply["type"] == "error" and reply["code"] == "resume-failed", reply
        assert reply["reason"] == "unknown"
        await a2.join("R")  # the socket is the fresh one of its welcome
        assert (await b.expect("peer-joined"))["id"] == a2.id
        await a2.close()
        await b.close()
    asyncio.run(main())


def test_04_refusals_change_nothing(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        a.abort()
        await b.expect("peer-away", id=a.id)
        state = sorted(r.scan_iter("sb:{R}:*"))
        snap = {k: r.dump(k) for k in state}
        other_last = "A" if ja["resume"][-1] != "A" else "B"  # one character off
        bad = [dict(ja, resume="x" * 44), dict(ja, resume=ja["resume"][:-1] + other_last),
               dict(ja, room="other")]
        for j in bad:
            c, reply = await resume(n2.ws_url, a, j)
            assert reply["type"] == "error" and reply["code"] == "resume-failed", reply
            assert reply["reason"] == "unknown"
            await c.close()
        # Another origin.
        c, reply = await resume(n2.ws_url, a, ja, origin="http://evil.example")
        assert reply["reason"] == "unknown", reply
        await c.close()
        # Another socket's id with this token.
        c, reply = await resume(n2.ws_url, b, ja)
        assert reply["reason"] == "unknown", reply
        await c.close()
        assert {k: r.dump(k) for k in sorted(r.scan_iter("sb:{R}:*"))} == snap
        await b.none_of("peer-back", wait=0.2)
        # The right one works once; replayed, it is refused.
        a2, reply = await resume(n1.ws_url, a, ja)
        assert reply["type"] == "resumed", reply
        c, again = await resume(n2.ws_url, a, ja)
        assert again["type"] == "error" and again["reason"] == "unknown", again
        await c.close()
        await b.expect("peer-back", id=a.id)
        # A resume that is not the first thing a socket does is refused.
        d = await Client.connect(n2.ws_url)
        await d.join("Q")
        rep = await d.request({"type": "resume", "id": a.id, "room": "R",
                               "resume": reply["resume"]})
        assert rep["type"] == "error" and rep["reason"] == "unknown"
        consistent(r)
        for x in (a2, b, d):
            await x.close()
    asyncio.run(main())


def test_05_queue_bound(cluster, redis_server):
    args = FAST + ["--resume-queue-max", "3"]
    n1, n2 = cluster.node("n1", args=args), cluster.node("n2", args=args)

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        a.abort()
        await b.expect("peer-away", id=a.id)
        for i in range(3):
            assert (await b.request({"type": "signal", "to": a.id, "data": i}))["type"] == \
                "signal-ack"
        for i in range(3, 6):
            err = await b.request({"type": "signal", "to": a.id, "data": i})
            assert err["type"] == "error" and err["code"] == "peer-queue-full", err
        a2, reply = await resume(n2.ws_url, a, ja)
        assert reply["type"] == "resumed"
        got = [(await a2.expect("signal"))["data"] for _ in range(3)]
        assert got == [0, 1, 2]
        await a2.none_of("signal", wait=0.3)
        await a2.close()
        await b.close()
    asyncio.run(main())


@pytest.mark.parametrize("how", ["leave", 1000, 1001])
def test_06_deliberate_end_has_no_grace(cluster, redis_server, how):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        if how == "leave":
            await a.request({"type": "leave"})
        else:
            await a.ws.close(code=how)
        m = await b.expect("peer-left", id=a.id, timeout=2)
        assert m["reason"] == ("leave" if how == "leave" else "disconnect")
        assert not any(x.get("type") == "peer-away" for x in b.seen)
        assert figures(r)["members"] == 1 and invariants.away(r) == (0, 0)
        c, reply = await resume(n2.ws_url, ja["id"], ja)
        assert reply["type"] == "error" and reply["reason"] == "unknown"
        consistent(r)
        await c.close()
        await b.close()
    asyncio.run(main())


def test_07_drain_closes_1012_and_clients_resume_elsewhere(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        before = figures(r)
        n1.proc.signal(signal.SIGTERM)
        code, _ = await a.wait_closed(5)
        assert code == 1012
        await b.expect("peer-away", id=a.id)
        a2, reply = await resume(n2.ws_url, a, ja)
        assert reply["type"] == "resumed" and reply["links"] == [b.id], reply
        await b.expect("peer-back", id=a.id)
        await b.none_of("peer-left", wait=0.3)
        assert figures(r) == before
        wait_for(lambda: not n1.proc.alive(), 10, msg="drained node exited")
        consistent(r)
        await a2.close()
        await b.close()
    asyncio.run(main())


def test_08_kill_9_clients_resume_at_once(cluster, redis_server):
    n1, n2, n3 = (cluster.node(n, args=FAST) for n in ("n1", "n2", "n3"))
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        c = await Client.connect(n1.ws_url)
        jc = await c.join("R")
        before = figures(r)
        n1.proc.kill()
        n1.killed = True
        # The browser notices at once (its TCP connection died): it resumes before any TTL.
        t0 = time.monotonic()
        a2, ra = await resume(n2.ws_url, a, ja)
        c2, rc = await resume(n3.ws_url, c, jc)
        assert ra["type"] == "resumed" and rc["type"] == "resumed", (ra, rc)
        assert time.monotonic() - t0 < 1.0
        assert ra["links"] == [b.id]
        assert sorted(p["id"] for p in ra["peers"]) == sorted([b.id, c.id])
        await b.request({"type": "signal", "to": a.id, "data": "x"})
        assert (await a2.expect("signal"))["data"] == "x"
        await c2.request({"type": "signal", "to": b.id, "data": "y"})
        assert (await b.expect("signal", data="y"))["from"] == c.id
        # Long past n1's presence TTL: nobody left.
        await asyncio.sleep(2.5)
        assert not any(x.get("type") == "peer-left" for x in b.seen + a2.seen + c2.seen)
        assert figures(r) == before
        consistent(r)
        for x in (a2, b, c2):
            await x.close()
    asyncio.run(main())


def test_09_dead_node_sockets_go_away_then_the_admin_ends_the_grace(cluster, redis_server):
    """kill -9 and no client comes back: the admin's reap marks the dead node's socket away
    (peer-away, not peer-left), counts it as away, and once the grace is over removes it with
    exactly one peer-left disconnect; figures right throughout."""
    args = FAST + ["--resume-grace-ms", "1500"]
    n1, n2 = cluster.node("n1", args=args), cluster.node("n2", args=args)
    admin = cluster.admin(args=["--reconcile-interval-ms", "300"])
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        m = admin.mesh()
        assert m["away_sockets"] == 0 and m["p2p_links"] == 1
        n1.proc.kill()
        n1.killed = True
        t0 = time.monotonic()
        await b.expect("peer-away", id=a.id, timeout=6)
        assert not any(x.get("type") == "peer-left" for x in b.seen)
        wait_for(lambda: admin.mesh()["away_sockets"] == 1, 3, msg="admin counts it away")
        m = admin.mesh()
        assert m["active_users"] == 2 and m["p2p_links"] == 1
        status, text, _ = __import__("harness").http_get(
            admin.http + "/metrics", headers={"Authorization": f"Bearer {admin.token}"})
        assert b"switchboard_cluster_away_sockets 1" in text
        left = await b.expect("peer-left", id=a.id, timeout=8)
        assert left["reason"] == "disconnect"
        assert time.monotonic() - t0 > 1.4  # not before the grace
        await b.none_of("peer-left", wait=1.0)
        wait_for(lambda: admin.mesh()["away_sockets"] == 0, 3, msg="away count back to 0")
        m = admin.mesh()
        assert m["active_users"] == 1 and m["p2p_links"] == 0
        assert invariants.away(r) == (0, 0)
        consistent(r)
        await b.close()
    asyncio.run(main())


def dead_node_with_an_away_socket(cluster, grace):
    """Two nodes with a grace of `grace` s and an admin whose passes are 30 s apart. start()
    links a (n1) and b (n2), kills n1 with kill -9 and reads mesh-status (which reaps lapsed
    nodes first) until b hears peer-away: (a, b, when b heard it)."""
    args = FAST + ["--resume-grace-ms", str(int(grace * 1000))]
    n1, n2 = cluster.node("n1", args=args), cluster.node("n2", args=args)
    admin = cluster.admin(args=["--reconcile-interval-ms", "30000"])

    async def start():
        a, b, _ = await linked_pair(n1.ws_url, n2.ws_url)
        assert admin.mesh()["p2p_links"] == 1
        n1.proc.kill()
        n1.killed = True
        deadline = time.monotonic() + 6
        while not any(x.get("type") == "peer-away" for x in b.seen):
            assert time.monotonic() < deadline, "no peer-away within 6 s"
            admin.mesh()  # reaps n1 once its lease lapsed: a is marked away
            await asyncio.sleep(0.1)
        return a, b, time.monotonic()
    return n1, admin, start


def test_09b_the_admin_ends_a_grace_at_its_deadline_not_at_its_next_pass(cluster, redis_server):
    """The admin removes a dead node's away socket when its grace ends (a timer for the earliest
    deadline of the buckets' P:{T}:away index), not when a later pass finds its presence key
    lapsed: with passes 30 s apart, peer-left comes about one grace after peer-away. The mark
    comes from mesh-status, which reaps lapsed nodes before it reads."""
    grace = 1.5
    n1, admin, start = dead_node_with_an_away_socket(cluster, grace)
    r = redis_server.client()

    async def main():
        a, b, t_away = await start()
        left = await b.expect("peer-left", id=a.id, timeout=6)
        took = time.monotonic() - t_away
        assert left["reason"] == "disconnect"
        # the grace, plus the admin's slack (0.5 s), plus the 0.1 s polling above
        print(f"peer-left {took:.2f} s after peer-away (grace {grace} s)")
        assert grace - 0.2 < took < grace + 1.5, f"peer-left {took:.2f} s after peer-away"
        await b.none_of("peer-left", wait=0.5)
        m = admin.mesh()
        assert m["away_sockets"] == 0 and m["active_users"] == 1 and m["p2p_links"] == 0
        assert invariants.away(r) == (0, 0)
        consistent(r)
        await b.close()
    asyncio.run(main())


def test_09c_a_grace_the_admin_ends_early_is_tried_again_soon(cluster, redis_server):
    """The admin's clock runs ahead of Redis's (here: the away entry's deadline, which
    room_remove checks by Redis's clock, is moved 1 s later than the deadline index the admin
    reads, as if Redis's clock were 1 s behind): its timer's removal finds the grace not over
    (`live`) and is tried again every 250 ms, not at the next pass (30 s away), so peer-left
    comes about a second after the grace."""
    grace = 1.5
    n1, admin, start = dead_node_with_an_away_socket(cluster, grace)
    r = redis_server.client()

    async def main():
        a, b, t_away = await start()
        entry = r.hget("sb:{R}:away", a.id).split()
        r.hset("sb:{R}:away", a.id, " ".join([str(int(entry[0]) + 1000)] + entry[1:]))
        left = await b.expect("peer-left", id=a.id, timeout=6)
        took = time.monotonic() - t_away
        print(f"peer-left {took:.2f} s after peer-away (grace {grace} s, Redis's deadline +1 s)")
        assert left["reason"] == "disconnect"
        assert grace + 0.6 < took < grace + 2.5, took
        assert admin.mesh()["away_sockets"] == 0
        consistent(r)
        await b.close()
    asyncio.run(main())


def test_10_resume_after_redis_restarted_empty(cluster, redis_server):
    """After a data loss the nodes re-assert their sockets with their resume records, so a
    socket lost afterwards still gets its grace and its token still works."""
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        redis_server.kill()
        redis_server.start()
        r2 = redis_server.client()
        def reasserted():
            try:
                return (r2.hlen("sb:{R}:resume"), figures(r2))
            except Exception as e:  # noqa: BLE001 - a cluster may still be failing over
                return repr(e)
        want = (2, {"rooms": 1, "members": 2, "links": 1, "linked": 2})
        wait_for(lambda: reasserted() == want, 20, msg=f"state re-asserted: {reasserted()}")
        a.abort()
        await b.expect("peer-away", id=a.id, timeout=5)
        # As a client does: "retry" (on a cluster the failover may still be settling) means
        # the same token again after retry_ms.
        for _ in range(20):
            a2, reply = await resume(n2.ws_url, a, ja)
            if reply.get("reason") != "retry":
                break
            await a2.close()
            await asyncio.sleep(reply["retry_ms"] / 1000)
        assert reply["type"] == "resumed" and reply["links"] == [b.id], reply
        await b.expect("peer-back", id=a.id)
        consistent(r2)
        await a2.close()
        await b.close()
    asyncio.run(main())


@pytest.mark.parametrize("where", ["other node", "same node"])
def test_11_takeover_of_a_socket_its_node_still_holds(cluster, redis_server, where):
    """The client's socket is dead on its side but its node has not noticed (no reset reached
    it): the resume takes the session over at once; the node closes its stale copy (4000,
    "resumed elsewhere") without any cleanup, and nothing it does later touches the session."""
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        before = figures(r)
        url = n2.ws_url if where == "other node" else n1.ws_url
        a2, reply = await resume(url, a, ja)
        assert reply["type"] == "resumed" and reply["links"] == [b.id], reply
        assert reply["joined"] == [] and reply["left"] == []
        code, why = await a.wait_closed(3)
        assert (code, why) == (4000, "resumed elsewhere")
        await b.expect("peer-back", id=a.id)
        await asyncio.sleep(0.5)  # the stale copy's close has been handled by now
        assert not any(x.get("type") in ("peer-left", "peer-away") for x in b.seen)
        assert figures(r) == before
        await b.request({"type": "signal", "to": a.id, "data": "z"})
        assert (await a2.expect("signal"))["data"] == "z"
        consistent(r)
        await a2.close()
        await b.close()
    asyncio.run(main())



@pytest.mark.parametrize("how", ["presence deleted", "node stopped past the TTL"])
def test_12_a_socket_whose_presence_lapsed_resumes(cluster, redis_server, how):
    """A joined socket's presence key vanished while it was connected: its node's heartbeat
    finds it gone ("presence deleted": the node's own refresh sees the 0 first), or the node
    was stopped past the TTL and the admin reaped it meanwhile ("node stopped": the node sees
    the away event first). With resume on, both end the same way: the session is marked away
    (peer-away, never peer-left), the node closes the socket with 1012 "resume", and the
    client resumes it with the token of its last `joined`, keeping its id and links (4000
    "session expired" is for resume off: docs/protocol.md, "Errors and closes")."""
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)
    admin = cluster.admin(args=["--reconcile-interval-ms", "300"])
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n2.ws_url)
        before = figures(r)
        if how == "presence deleted":
            assert r.delete(f"sb:{{R}}:presence:{a.id}") == 1
        else:
            n1.proc.signal(signal.SIGSTOP)
            try:
                await b.expect("peer-away", id=a.id, timeout=8)
                wait_for(lambda: admin.mesh()["away_sockets"] == 1, 3, msg="admin counts it away")
            finally:
                n1.proc.signal(signal.SIGCONT)
        code, why = await a.wait_closed(5)
        assert (code, why) == (1012, "resume")
        if how == "presence deleted":
            await b.expect("peer-away", id=a.id, timeout=3)
        a2, reply = await resume(n2.ws_url, a, ja)
        assert reply["type"] == "resumed" and reply["id"] == a.id, reply
        assert reply["links"] == [b.id]
        await b.expect("peer-back", id=a.id)
        await b.request({"type": "signal", "to": a.id, "data": "after the lapse"})
        assert (await a2.expect("signal"))["data"] == "after the lapse"
        assert not any(x.get("type") == "peer-left" for x in b.seen)
        wait_for(lambda: figures(r) == before, 3, msg="figures as before the lapse")
        consistent(r)
        await a2.close()
        await b.close()
    asyncio.run(main())


def stop_behind(cluster, proxy):
    """Stops the nodes, then the proxy they reach Redis through."""
    for n in cluster.nodes:
        n.proc.stop()
    proxy.stop()


def _sha256(text):
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.single_redis("a reply-delaying proxy fronts one Redis; cluster redirects bypass it")
def test_13_a_join_retried_after_its_timeout_can_leave(cluster, redis_server):
    """A join answered `unavailable` on its timer still ran (Redis was slow); the client asks
    again on the same socket, as docs/protocol.md invites. The retry is answered `joined` with a
    new resume token, and Redis now holds that token's hash: the socket can leave (peers get
    `peer-left`) and would resume with it. Before, Redis kept the first attempt's hash, which
    nobody held: the leave was refused as for a reaped socket (closed 4000, no reply) and the
    member stayed in Redis, its peers told nothing."""
    from harness import ReplyDelayProxy
    proxy = ReplyDelayProxy(redis_server.port, 0.0)
    try:
        na = cluster.node("na", args=["--redis-timeout-ms", "300"], redis_url=proxy.url)
        r = redis_server.client()

        async def main():
            b = await Client.connect(na.ws_url)
            await b.join("J")
            a = await Client.connect(na.ws_url)
            proxy.delay = 0.8
            first = await a.request({"type": "join", "room": "J"}, timeout=3)
            assert first["type"] == "error" and first["code"] == "unavailable", first
            proxy.delay = 0.0
            await asyncio.sleep(1.0)  # the first join has run meanwhile
            assert r.hexists("sb:{J}:members", a.id)
            joined = await a.join("J")
            rec = r.hget("sb:{J}:resume", a.id)
            assert _sha256(joined["resume"]) in rec, rec
            left = await a.request({"type": "leave"})
            assert left["type"] == "left", left
            await b.expect("peer-left", id=a.id, timeout=3)
            assert a.closed is None
            assert not r.hexists("sb:{J}:members", a.id)
            consistent(r)
            await a.close()
            await b.close()
        asyncio.run(main())
    finally:
        stop_behind(cluster, proxy)


async def queue_joins(url, n):
    """n sockets on url that each send a join (to a room of their own) without waiting: behind
    a request-pacing proxy their script calls queue up, so a request sent next waits past the
    Redis timeout (600 ms) while replies keep coming well within it (the connection stays
    up). The sockets."""
    cs = [await Client.connect(url) for _ in range(n)]
    for i, c in enumerate(cs):
        await c.send({"type": "join", "room": f"bg{i}", "rid": f"bg{i}"})
    return cs


@pytest.mark.single_redis("a request-pacing proxy fronts one Redis; cluster redirects bypass it")
def test_14_a_socket_closed_while_its_join_times_out_is_removed(cluster, redis_server):
    """The client closes while its join is in flight; Redis is slow to run what it is sent
    (requests reach it 32 bytes every 10 ms, behind 16 other joins: about 2 s, with a reply
    every 0.15 s or sooner), so the join is answered
    "timeout" on its timer while the connection stays up, and runs later. The node sends the
    removal after it (same connection, so it runs second): the peer sees `peer-joined` then
    `peer-left`, and the member is gone. Before, the timeout answer was dropped for a closed
    socket and the member stayed, present to its peers, until its presence lapsed and an admin
    reaped it (with no admin, for good). (When the connection itself drops nothing can be
    sent, and that cleanup is the admin's, as for every socket closed while Redis is away.)"""
    from harness import ReplyDelayProxy
    proxy = ReplyDelayProxy(redis_server.port, 0, pace=(32, 0.01), pace_requests=True)
    try:
        na = cluster.node("na", args=["--redis-timeout-ms", "600", "--presence-ttl-ms", "20000"],
                          redis_url=proxy.url)
        r = redis_server.client()

        async def main():
            b = await Client.connect(na.ws_url)
            await b.join("J")
            a = await Client.connect(na.ws_url)
            aid = a.id
            proxy.pacing = True
            bg = await queue_joins(na.ws_url, 16)
            await a.send({"type": "join", "room": "J"})
            await asyncio.sleep(0.1)
            await a.close()
            await b.expect("peer-joined", id=aid, timeout=8)
            await b.expect("peer-left", id=aid, timeout=5)
            proxy.pacing = False
            wait_for(lambda: not r.hexists("sb:{J}:members", aid), 2, msg="member removed")
            assert "connection lost" not in na.proc.log()
            consistent(r)
            for c in bg + [b]:
                await c.close()
        asyncio.run(main())
    finally:
        stop_behind(cluster, proxy)


@pytest.mark.single_redis("maxmemory is set on the one Redis")
def test_15_a_resume_answered_retry_is_retried_on_the_same_socket(cluster, redis_server):
    """`resume-failed` with reason `retry` means what it says: the same token again on the same
    socket (what client/switchboard.js does) resumes. Forced with Redis refusing writes (OOM)
    for the first try. Before, the second try was refused `unknown` (the socket counted as
    having asked already), and the reference client gave the session up."""
    n1 = cluster.node("n1", args=FAST)
    r = redis_server.client()

    async def main():
        a, b, ja = await linked_pair(n1.ws_url, n1.ws_url)
        a.abort()
        await b.expect("peer-away", id=a.id, timeout=5)
        # `unknown` is final for its socket: a resume must be its first request
        w = await Client.connect(n1.ws_url)
        wrong = await w.request({"type": "resume", "id": a.id, "room": "R", "resume": "nope"})
        assert wrong["reason"] == "unknown", wrong
        again = await w.request({"type": "resume", "id": a.id, "room": "R",
                                 "resume": ja["resume"]})
        assert again["reason"] == "unknown", again
        await w.close()
        c = await Client.connect(n1.ws_url)
        r.config_set("maxmemory", 1)
        try:
            first = await c.request({"type": "resume", "id": a.id, "room": "R",
                                     "resume": ja["resume"]})
        finally:
            r.config_set("maxmemory", 0)
        assert first["type"] == "error" and first["reason"] == "retry", first
        again = await c.request({"type": "resume", "id": a.id, "room": "R",
                                 "resume": ja["resume"]})
        assert again["type"] == "resumed" and again["id"] == a.id, again
        assert again["links"] == [b.id]
        await b.expect("peer-back", id=a.id)
        consistent(r)
        await c.close()
        await b.close()
    asyncio.run(main())


@pytest.mark.single_redis("a request-pacing proxy fronts one Redis; cluster redirects bypass it")
def test_16_a_resume_that_timed_out_but_ran_goes_away(cluster, redis_server):
    """A resume answered `retry` on its timer (Redis slow to run what it is sent, as in test_14;
    the connection stays up) still ran: it moved the session to this node, with the hash of a
    next token nobody got, and no socket holds it. The node marks it away at once (peers get
    `peer-back`, then `peer-away`, and its grace runs), as for a PeerJS claim. Before, it
    stayed present on that node, to its peers and in Redis, until its presence lapsed and an
    admin reaped it."""
    from harness import ReplyDelayProxy
    proxy = ReplyDelayProxy(redis_server.port, 0, pace=(32, 0.01), pace_requests=True)
    try:
        n1 = cluster.node("n1", args=["--presence-ttl-ms", "20000"])
        n2 = cluster.node("n2", args=["--redis-timeout-ms", "600", "--presence-ttl-ms", "20000"],
                          redis_url=proxy.url)
        r = redis_server.client()

        async def main():
            a, b, ja = await linked_pair(n1.ws_url, n1.ws_url)
            a.abort()
            await b.expect("peer-away", id=a.id, timeout=5)
            c = await Client.connect(n2.ws_url)
            proxy.pacing = True
            bg = await queue_joins(n2.ws_url, 16)
            first = await c.request({"type": "resume", "id": a.id, "room": "R",
                                     "resume": ja["resume"]}, timeout=3)
            assert first["type"] == "error" and first["reason"] == "retry", first
            await b.expect("peer-back", id=a.id, timeout=8)
            await b.expect("peer-away", id=a.id, timeout=5)
            proxy.pacing = False
            wait_for(lambda: r.hexists("sb:{R}:away", a.id), 2, msg="away in Redis")
            assert r.hexists("sb:{R}:members", a.id)
            assert "connection lost" not in n2.proc.log()
            consistent(r, presence=False)
            for x in bg + [c, b]:
                await x.close()
        asyncio.run(main())
    finally:
        stop_behind(cluster, proxy)


@pytest.mark.single_redis("a request-pacing proxy fronts one Redis; cluster redirects bypass it")
def test_17_signal_order_is_kept_across_a_resume(cluster, redis_server):
    """X signals k to S while X's view says S is away (k goes to session_queue); S resumes
    before that script runs, so it answers "present" and k is sent on only then. X's node has
    meanwhile seen S come back, and X signals k+1. k+1 must not overtake k: while a signal of X
    is in flight to session_queue, the next ones go the same way and are sent on in reply order.
    Here X's node reaches Redis through a proxy that passes requests 16 bytes every 50 ms, to
    widen that window. Before: S got k+1, then k."""
    from harness import ReplyDelayProxy
    proxy = ReplyDelayProxy(redis_server.port, 0, pace=(16, 0.05), pace_requests=True)
    try:
        args = ["--redis-timeout-ms", "8000", "--presence-ttl-ms", "30000", "--heartbeat-ms",
                "5000"]
        n1 = cluster.node("n1", args=args, redis_url=proxy.url)
        n2 = cluster.node("n2", args=args)

        async def main():
            x = await Client.connect(n1.ws_url)
            await x.join("R")
            a = await Client.connect(n2.ws_url)
            ja = await a.join("R")
            await x.expect("peer-joined", id=a.id)
            a.abort()
            await x.expect("peer-away", id=a.id, timeout=5)
            proxy.pacing = True
            await x.send({"type": "signal", "to": a.id, "data": "k", "rid": "k"})
            await asyncio.sleep(0.05)
            a2, reply = await resume(n2.ws_url, a, ja)
            assert reply["type"] == "resumed", reply
            await x.expect("peer-back", id=a.id, timeout=5)
            await x.send({"type": "signal", "to": a.id, "data": "k+1", "rid": "k1"})
            got = [(await a2.expect("signal", timeout=15))["data"] for _ in range(2)]
            assert got == ["k", "k+1"], got
            await x.expect("signal-ack", rid="k", timeout=5)
            await x.expect("signal-ack", rid="k1", timeout=5)
            proxy.pacing = False
            for c in (x, a2):
                await c.close()
        asyncio.run(main())
    finally:
        stop_behind(cluster, proxy)
