"""Presence and the four rules of lua/README.md: no resurrection after a reap, data loss
told apart from reaping, re-assert after Redis restarts empty."""
import asyncio
import signal
import time

import pytest

import invariants
import lua_text
from client import Client
from harness import wait_for

FAST = ["--presence-ttl-ms", "1500", "--heartbeat-ms", "300", "--redis-timeout-ms", "500"]


stats = invariants.counters


def reap_like_admin(r, node):
    """Stands in for the admin: reaps every socket of node whose presence is gone."""
    sha = r.script_load(lua_text.script("room_remove"))
    reaped = 0
    for entry in r.smembers(f"sb:{{#}}:node:{node}:sockets"):
        room, sid = entry.split(" ")
        res = r.evalsha(sha, 2, f"sb:{{{room}}}:members", "sb:{#}:stats", "sb", room, sid,
                        "expired", node)
        reaped += res[0] == "ok"
    return reaped


def test_01_stopped_node_is_reaped_and_never_resurrects(cluster, redis_server, no_resume):
    a, b = cluster.node("na", args=FAST), cluster.node("nb", args=FAST)
    r = redis_server.client()

    async def main():
        xs = [await Client.connect(a.ws_url) for _ in range(3)]
        y = await Client.connect(b.ws_url)
        await y.join("S")
        for x in xs:
            await x.join("S")
            await x.request({"type": "link", "peer": y.id, "state": "up"})
            await y.request({"type": "link", "peer": x.id, "state": "up"})
        assert stats(r)["links"] == 3
        a.proc.signal(signal.SIGSTOP)
        try:
            # past the TTL every presence key of node a is gone
            wait_for(lambda: all(not r.exists(f"sb:{{S}}:presence:{x.id}") for x in xs), 5,
                     msg="presence expired")
            assert reap_like_admin(r, "na") == 3
            for x in xs:
                m = await y.expect("peer-left", id=x.id)
                assert m["reason"] == "expired"
            assert stats(r) == {"rooms": 1, "members": 1, "links": 0, "linked": 0}
        finally:
            a.proc.signal(signal.SIGCONT)
        for x in xs:
            code, _ = await x.wait_closed(5)
            assert code == 4000
        await asyncio.sleep(1.0)  # several heartbeats of node a after it resumed
        for x in xs:
            assert not r.exists(f"sb:{{S}}:presence:{x.id}")
            assert not r.hexists("sb:{S}:members", x.id)
        assert stats(r) == {"rooms": 1, "members": 1, "links": 0, "linked": 0}
        assert invariants.check(r) == []
        # node a still serves
        z = await Client.connect(a.ws_url)
        await z.join("S")
        await y.expect("peer-joined", id=z.id)
        await z.close()
        await y.close()
    asyncio.run(main())
    m = a.metrics()
    assert m['switchboard_node_closes_total{code="4000"}'] == 3


def test_02_redis_restarted_empty_state_is_reasserted(cluster, redis_server):
    hb = 1.0
    args = ["--presence-ttl-ms", "3000", "--heartbeat-ms", str(int(hb * 1000)),
            "--redis-timeout-ms", "500"]
    a, b = cluster.node("na", args=args), cluster.node("nb", args=args)
    r = redis_server.client()
    N = 20

    async def main():
        cs = [await Client.connect((a if i % 2 else b).ws_url) for i in range(N)]
        for c in cs:
            await c.join("R", meta={"n": c.id[:4]})
        # a ring of links plus a few chords: 24 links
        pairs = [(i, (i + 1) % N) for i in range(N)] + [(0, 10), (5, 15), (2, 12), (7, 17)]
        for i, j in pairs:
            await cs[i].request({"type": "link", "peer": cs[j].id, "state": "up"})
            await cs[j].request({"type": "link", "peer": cs[i].id, "state": "up"})
        before = stats(r)
        assert before == {"rooms": 1, "members": N, "links": len(pairs), "linked": N}
        for c in cs:
            c.backlog.clear()
        old_instance = r.get("sb:instance")
        redis_server.kill()
        redis_server.start()  # same port, empty (the nodes may refill it at once)
        t0 = time.monotonic()
        wait_for(lambda: stats(r) == before, 2 * hb, msg=f"state back to {before} in 2 heartbeats")
        assert r.get("sb:instance") not in (None, old_instance)
        took = time.monotonic() - t0
        wait_for(lambda: invariants.check(r) == [], 3, msg="invariants")
        for c in cs:
            assert r.exists(f"sb:{{R}}:presence:{c.id}")
        # nobody was disconnected, nobody was told a peer left
        await asyncio.sleep(1.0)
        for c in cs:
            assert c.closed is None
            assert not [m for m in c.backlog if m["type"] == "peer-left"], c.backlog
        # and everything still works
        await cs[0].request({"type": "signal", "to": cs[1].id, "data": "after"})
        assert (await cs[1].expect("signal"))["data"] == "after"
        for c in cs:
            await c.close()
        return took
    took = asyncio.run(main())
    print(f"state back {took*1000:.0f} ms after Redis restarted empty")


def restart_empty_refusing_scripts(redis_server):
    """Restarts Redis empty, with every script call refused (NOPERM) until the test allows them
    (ACL SETUSER default +evalsha +eval). A client of it."""
    redis_server.kill()
    saved = redis_server.extra
    redis_server.extra = saved + ["--user", "default", "on", "nopass", "~*", "&*", "+@all",
                                  "-evalsha", "-eval"]
    try:
        redis_server.start()
    finally:
        redis_server.extra = saved
    return redis_server.client()


@pytest.mark.single_redis("the ACL is set on the one Redis it restarts")
def test_02b_a_refused_reassert_is_sent_again(cluster, redis_server):
    """A re-assert that Redis refuses (on a cluster, a primary that restarted empty answers
    CLUSTERDOWN for a moment: test_15_resume test_10 met it) is sent again when a presence
    refresh finds the key still missing, instead of taking the socket for reaped (4000).
    Forced here: the restarted Redis refuses scripts (an ACL) until the test allows them."""
    args = ["--presence-ttl-ms", "3000", "--heartbeat-ms", "300", "--redis-timeout-ms", "500"]
    a, b = cluster.node("na", args=args), cluster.node("nb", args=args)
    r = redis_server.client()

    async def main():
        x, y = await Client.connect(a.ws_url), await Client.connect(b.ws_url)
        await x.join("R")
        await y.join("R")
        await x.request({"type": "link", "peer": y.id, "state": "up"})
        await y.request({"type": "link", "peer": x.id, "state": "up"})
        before = stats(r)
        assert before == {"rooms": 1, "members": 2, "links": 1, "linked": 2}
        r2 = restart_empty_refusing_scripts(redis_server)
        # several heartbeats: each finds the presence keys missing, and re-asserts (refused)
        await asyncio.sleep(1.5)
        assert r2.exists("sb:{R}:members") == 0
        assert x.closed is None and y.closed is None
        r2.execute_command("ACL", "SETUSER", "default", "+evalsha", "+eval")
        try:
            wait_for(lambda: stats(r2) == before, 3, msg=f"state back to {before}")
        except AssertionError:
            print("state when it timed out:", stats(r2), sorted(r2.keys("*")))
            raise
        wait_for(lambda: invariants.check(r2) == [], 3, msg="invariants")
        await asyncio.sleep(0.6)
        for c in (x, y):
            assert c.closed is None
            assert not [m for m in c.backlog if m["type"] == "peer-left"], c.backlog
        await x.request({"type": "signal", "to": y.id, "data": "after"})
        assert (await y.expect("signal"))["data"] == "after"
        await x.close()
        await y.close()
    asyncio.run(main())


@pytest.mark.single_redis("the ACL is set on the one Redis it restarts")
def test_02c_a_request_during_a_refused_reassert_is_not_a_reaping(cluster, redis_server):
    """After Redis restarted empty, a socket's re-assert was refused and awaits its next try (the
    next presence refresh that finds the key missing). A `link` sent meanwhile meets the
    missing presence key (`gone`): that may be the data loss, not a reaping. The request is
    answered `unavailable`, the next presence refresh re-asserts the socket, and the same link
    then succeeds. Before, the socket was closed 4000 "session expired" with no reply, never
    re-asserted."""
    args = ["--presence-ttl-ms", "8000", "--heartbeat-ms", "2500", "--redis-timeout-ms", "500"]
    a, b = cluster.node("na", args=args), cluster.node("nb", args=args)

    async def main():
        x, y = await Client.connect(a.ws_url), await Client.connect(b.ws_url)
        await x.join("R")
        await y.join("R")
        r2 = restart_empty_refusing_scripts(redis_server)
        # the nodes reconnect and find the loss; their re-asserts are refused
        wait_for(lambda: "re-assert failed" in a.proc.log(), 5, msg="na's re-assert refused")
        r2.execute_command("ACL", "SETUSER", "default", "+evalsha", "+eval")
        assert r2.exists(f"sb:{{R}}:presence:{x.id}") == 0
        reply = await x.request({"type": "link", "peer": y.id, "state": "up"})
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        # the next presence refresh finds the key missing and re-asserts it
        wait_for(lambda: r2.exists(f"sb:{{R}}:presence:{x.id}") == 1, 4,
                 msg="x re-asserted by its next refresh")
        assert x.closed is None
        # y's node re-asserts at its next heartbeat; then the same link goes through
        wait_for(lambda: r2.hlen("sb:{R}:members") == 2, 4, msg="both members back")
        reply = await x.request({"type": "link", "peer": y.id, "state": "up"})
        assert reply["type"] == "link-ack", reply
        await x.close()
        await y.close()
    asyncio.run(main())


def test_03_socket_closed_while_redis_down_then_redis_empty(cluster, redis_server):
    """A socket that closes while Redis is unreachable cannot be cleaned up then; if Redis then
    comes back empty its record is gone for good, and its peers must still hear peer-left."""
    args = ["--presence-ttl-ms", "3000", "--heartbeat-ms", "1000", "--redis-timeout-ms", "500"]
    a, b = cluster.node("na", args=args), cluster.node("nb", args=args)

    async def main():
        stay = await Client.connect(a.ws_url)
        gone_local = await Client.connect(a.ws_url)
        gone_remote = await Client.connect(b.ws_url)
        other = await Client.connect(b.ws_url)
        for c in (stay, gone_local, gone_remote, other):
            await c.join("D")
        redis_server.kill()
        await asyncio.sleep(0.1)
        gone_local.abort()
        gone_remote.abort()
        await asyncio.sleep(0.2)
        redis_server.start()
        for c in (stay, other):
            for g in (gone_local, gone_remote):
                await c.expect("peer-left", id=g.id, timeout=5)
        for c in (stay, other):
            await c.close()
    asyncio.run(main())


PINGS = ["--ping-interval-ms", "200", "--ping-timeout-ms", "400"]


def test_04_stall_past_ping_timeout_drops_nobody(cluster, redis_server):
    """Issue 11, fault 2: after the node itself stalls for longer than --ping-timeout-ms (but
    less than the presence TTL) no client is hung up: it pings first, and clients answer. (It
    used to close every socket with no close frame on the first sweep after the stall.)"""
    args = ["--presence-ttl-ms", "4000", "--heartbeat-ms", "500", "--redis-timeout-ms", "500"]
    a, b = cluster.node("na", args=args + PINGS), cluster.node("nb", args=args + PINGS)

    async def main():
        xs = [await Client.connect(a.ws_url) for _ in range(3)]
        y = await Client.connect(b.ws_url)
        await y.join("T")
        for x in xs:
            await x.join("T")
        a.proc.signal(signal.SIGSTOP)
        await asyncio.sleep(1.2)  # three ping timeouts, well under the TTL
        a.proc.signal(signal.SIGCONT)
        await asyncio.sleep(1.0)  # several sweeps, pings and answers after the stall
        for x in xs:
            assert x.closed is None, f"client dropped after a stall: {x.closed}"
            assert (await x.request({"type": "ping"}))["type"] == "pong"
        await y.none_of("peer-left", wait=0.3)
        await xs[0].send({"type": "signal", "to": y.id, "data": {"n": 1}})
        m = await y.expect("signal")
        assert m["from"] == xs[0].id
        for c in xs + [y]:
            await c.close()
    asyncio.run(main())


def test_05_stall_past_ttl_and_reap_closes_4000(cluster, redis_server, no_resume):
    """The other half of fault 2: a stall past the TTL, reaped meanwhile, ends with 4000 for
    every client of the stalled node even though the stall also passed the ping timeout."""
    a = cluster.node("na", args=FAST + PINGS)
    b = cluster.node("nb", args=FAST)
    r = redis_server.client()

    async def main():
        xs = [await Client.connect(a.ws_url) for _ in range(3)]
        y = await Client.connect(b.ws_url)
        await y.join("U")
        for x in xs:
            await x.join("U")
        a.proc.signal(signal.SIGSTOP)
        try:
            wait_for(lambda: all(not r.exists(f"sb:{{U}}:presence:{x.id}") for x in xs), 5,
                     msg="presence expired")
            assert reap_like_admin(r, "na") == 3
        finally:
            a.proc.signal(signal.SIGCONT)
        for x in xs:
            code, _ = await x.wait_closed(5)
            assert code == 4000
        await y.close()
    asyncio.run(main())
