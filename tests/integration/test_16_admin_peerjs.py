"""The admin's PeerJS figures (issue 16, docs/admin.md): mesh-status's "native" and "peerjs"
shares beside the unchanged totals, and the /metrics series labelled by protocol. Real
redis-server, real nodes, real admin.

01 the admin alone: PeerJS fields written in the buckets' stats (P:{T}:stats pj_members,
   pj_links, pj_away, what the room scripts keep) beside real native members and a link; the
   shares and the totals as the buckets say, on a cluster summed over two buckets
02 real PeerJS sockets on two nodes (claim, OFFER and ANSWER with a connectionId, LEAVE,
   close) beside a native pair in a room: PeerJS users 2 and links 1 beside native users 2 and
   links 1, the totals their sum; after LEAVE no PeerJS link; a reset socket's id away until
   reclaimed on the other node; after both closed no PeerJS user
03 figures that cannot be read: on a Redis Cluster the PeerJS room's slot unassigned (CLUSTER
   DELSLOTS everywhere) makes the figures partial with that slot named, its PeerJS figures
   missing and the other slots' figures intact, and whole again once the slot is served; on
   one Redis a dead Redis is a 503 for mesh-status and /metrics, never zeros
04 the reconcile pass reaps a killed node's PeerJS ids with its native sockets"""
import asyncio
import os
import sys

import websockets

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client import Client  # noqa: E402
from harness import http_get, parse_metrics, wait_for  # noqa: E402
import keyspace  # noqa: E402

PJ_ROOM = "~pj.peerjs"  # the internal room of the default PeerJS key
QUIET_ADMIN = ["--reconcile-interval-ms", "60000"]  # no pass repairs planted figures meanwhile


def metrics(admin):
    status, body, _ = http_get(admin.http + "/metrics",
                               headers={"Authorization": f"Bearer {admin.token}"})
    assert status == 200, body
    return parse_metrics(body.decode())


def shares(m):
    return {"total": {"users": m["active_users"], "links": m["p2p_links"],
                      "away": m["away_sockets"]},
            "native": m["native"], "peerjs": m["peerjs"]}


def metric_shares(x):
    out = {}
    for p in ("native", "peerjs"):
        out[p] = {k: x[f'switchboard_cluster_{n}_by_protocol{{protocol="{p}"}}']
                  for k, n in (("users", "active_users"), ("links", "p2p_links"),
                               ("away", "away_sockets"))}
    out["total"] = {"users": x["switchboard_cluster_active_users"],
                    "links": x["switchboard_cluster_p2p_links"],
                    "away": x["switchboard_cluster_away_sockets"]}
    return out


def until_mesh(admin, want, timeout=5.0):
    seen = []

    def probe():
        m = admin.mesh()
        seen[:] = [shares(m)]
        return m if shares(m) == want else None
    try:
        return wait_for(probe, timeout, msg=f"mesh-status {want}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last {seen}") from None


def plant(r, redis_server, room, **fields):
    """Adds to the figures of room's bucket, as the room scripts would."""
    key = keyspace.bucket("sb", room, "stats", cluster=redis_server.cluster)
    for f, v in fields.items():
        r.hincrby(key, f, v)
    return key


async def native_pair(node):
    a = await Client.connect(node.ws_url)
    b = await Client.connect(node.ws_url)
    for x in (a, b):
        await x.join("nat")
    for x, y in ((a, b), (b, a)):
        r = await x.request({"type": "link", "peer": y.id, "state": "up"})
        assert r["type"] == "link-ack", r
    return a, b


def test_01_admin_splits_the_buckets_figures_by_protocol(cluster, redis_server):
    node = cluster.node("n1")
    admin = cluster.admin(args=QUIET_ADMIN)
    # The lease holder's first pass runs at once: plant only after it, so no stats_check
    # rewrites the planted totals before the next pass (a minute away).
    wait_for(lambda: admin.mesh()["last_reconcile"] is not None, 10, msg="first pass")
    r = redis_server.client()
    zero = {"users": 0, "links": 0, "away": 0}
    assert shares(admin.mesh()) == {"total": zero, "native": zero, "peerjs": zero}

    async def main():
        a, b = await native_pair(node)
        await asyncio.to_thread(until_mesh, admin,
                                {"total": {"users": 2, "links": 1, "away": 0},
                                 "native": {"users": 2, "links": 1, "away": 0}, "peerjs": zero})
        # Three PeerJS ids (one of them away) and one PeerJS link, in the PeerJS room's bucket:
        # the totals count them too (the scripts add to both).
        plant(r, redis_server, PJ_ROOM, members=3, links=1, away=1, pj_members=3, pj_links=1,
              pj_away=1)
        want = {"total": {"users": 5, "links": 2, "away": 1},
                "native": {"users": 2, "links": 1, "away": 0},
                "peerjs": {"users": 3, "links": 1, "away": 1}}
        m = await asyncio.to_thread(until_mesh, admin, want)
        assert m["partial"] is False and "missing_slots" not in m
        assert metric_shares(metrics(admin)) == want
        # A second PeerJS key's room, in another bucket on a cluster: summed over buckets.
        plant(r, redis_server, "~pj.other", members=2, links=1, pj_members=2, pj_links=1)
        want = {"total": {"users": 7, "links": 3, "away": 1},
                "native": {"users": 2, "links": 1, "away": 0},
                "peerjs": {"users": 5, "links": 2, "away": 1}}
        await asyncio.to_thread(until_mesh, admin, want)
        assert metric_shares(metrics(admin)) == want
        # The native pair leaves: only the native share drops.
        await a.close()
        await b.close()
        want["total"] = {"users": 5, "links": 2, "away": 1}
        want["native"] = zero
        await asyncio.to_thread(until_mesh, admin, want)
        assert metric_shares(metrics(admin)) == want
    asyncio.run(main())
    # Each labelled series is one gauge with a HELP and a TYPE line.
    status, body, _ = http_get(admin.http + "/metrics",
                               headers={"Authorization": f"Bearer {admin.token}"})
    text = body.decode()
    for n in ("active_users", "p2p_links", "away_sockets"):
        assert f"# TYPE switchboard_cluster_{n}_by_protocol gauge" in text
        assert text.count(f"switchboard_cluster_{n}_by_protocol{{") == 2


async def peerjs(node, id_, token):
    """A PeerJS client's WebSocket (what the `peerjs` browser client opens), once OPEN came."""
    ws = await websockets.connect(f"ws://127.0.0.1:{node.port}/peerjs/peerjs?key=peerjs&id={id_}"
                                  f"&token={token}", max_size=None, ping_interval=None)
    c = Client(ws)
    await c.expect("OPEN")
    return c


def test_02_real_peerjs_sockets_beside_a_native_pair(cluster, redis_server):
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    admin = cluster.admin()
    zero = {"users": 0, "links": 0, "away": 0}

    async def both(want):
        """mesh-status shows want, and /metrics the same figures (polled in a thread: the
        loop keeps running the sockets meanwhile, an abort's reset included)."""
        await asyncio.to_thread(until_mesh, admin, want)
        assert metric_shares(await asyncio.to_thread(metrics, admin)) == want

    async def main():
        na, nb = await native_pair(n1)
        a = await peerjs(n1, "alice-1", "ta")
        b = await peerjs(n2, "bob_2", "tb")
        await both({"total": {"users": 4, "links": 1, "away": 0},
              "native": {"users": 2, "links": 1, "away": 0},
              "peerjs": {"users": 2, "links": 0, "away": 0}})
        # A data connection as the peerjs client opens it: OFFER with a connectionId, ANSWER
        # with the same one; each node sets the half of its own socket.
        offer = {"type": "OFFER", "dst": "bob_2",
                 "payload": {"type": "data", "connectionId": "dc_x1", "label": "dc_x1",
                             "sdp": {"type": "offer", "sdp": "v=0"}, "browser": "test"}}
        await a.send(offer)
        got = await b.expect("OFFER")
        assert got["src"] == "alice-1" and got["payload"]["connectionId"] == "dc_x1", got
        await b.send({"type": "ANSWER", "dst": "alice-1",
                      "payload": {"type": "data", "connectionId": "dc_x1",
                                  "sdp": {"type": "answer", "sdp": "v=0"}, "browser": "test"}})
        got = await a.expect("ANSWER")
        assert got["src"] == "bob_2", got
        want = {"total": {"users": 4, "links": 2, "away": 0},
                "native": {"users": 2, "links": 1, "away": 0},
                "peerjs": {"users": 2, "links": 1, "away": 0}}
        await both(want)
        # LEAVE between them takes the PeerJS link down; both ids stay.
        await a.send({"type": "LEAVE", "dst": "bob_2"})
        assert (await b.expect("LEAVE"))["src"] == "alice-1"
        await both({"total": {"users": 4, "links": 1, "away": 0},
              "native": {"users": 2, "links": 1, "away": 0},
              "peerjs": {"users": 2, "links": 0, "away": 0}})
        # A lost socket (TCP reset) keeps its id, away, until reclaimed with its token.
        b.abort()
        await both({"total": {"users": 4, "links": 1, "away": 1},
              "native": {"users": 2, "links": 1, "away": 0},
              "peerjs": {"users": 2, "links": 0, "away": 1}})
        b = await peerjs(n1, "bob_2", "tb")
        await both({"total": {"users": 4, "links": 1, "away": 0},
              "native": {"users": 2, "links": 1, "away": 0},
              "peerjs": {"users": 2, "links": 0, "away": 0}})
        # A deliberate close (1000) frees the id at once (as peerjs-server does on close).
        await a.close()
        await b.close()
        await both({"total": {"users": 2, "links": 1, "away": 0},
              "native": {"users": 2, "links": 1, "away": 0}, "peerjs": zero})
        await na.close()
        await nb.close()
        await both({"total": zero, "native": zero, "peerjs": zero})
    asyncio.run(main())


def test_03_unreadable_slot_peerjs_figures_partial(cluster, redis_server):
    admin = cluster.admin(args=QUIET_ADMIN + ["--redis-timeout-ms", "300"])
    wait_for(lambda: admin.mesh()["last_reconcile"] is not None, 10, msg="first pass")
    r = redis_server.client()
    plant(r, redis_server, PJ_ROOM, members=2, links=1, pj_members=2, pj_links=1)
    plant(r, redis_server, "nat", members=3, links=1)
    both = {"total": {"users": 5, "links": 2, "away": 0},
            "native": {"users": 3, "links": 1, "away": 0},
            "peerjs": {"users": 2, "links": 1, "away": 0}}
    until_mesh(admin, both)
    auth = {"Authorization": f"Bearer {admin.token}"}
    if not redis_server.cluster:
        redis_server.kill()
        wait_for(lambda: admin.get("/admin/mesh-status")[0] == 503, 10, msg="mesh-status 503")
        assert http_get(admin.http + "/metrics", headers=auth)[0] == 503
        return
    rc = redis_server.rc
    slot = keyspace.keyslot("{" + PJ_ROOM + "}")
    assert slot != keyspace.keyslot("{nat}")
    owner = rc.unserve(slot)
    try:
        # The PeerJS figures of that slot are missing, and said so; the others are intact.
        m = until_mesh(admin, {"total": {"users": 3, "links": 1, "away": 0},
                               "native": {"users": 3, "links": 1, "away": 0},
                               "peerjs": {"users": 0, "links": 0, "away": 0}}, timeout=15)
        assert m["partial"] is True and m["missing_slots"] == {"count": 1, "first": slot}, m
        x = metrics(admin)
        assert x["switchboard_cluster_missing_slots"] == 1
        assert metric_shares(x)["peerjs"] == {"users": 0, "links": 0, "away": 0}
    finally:
        rc.serve(slot, owner)
    m = until_mesh(admin, both, timeout=15)
    assert m["partial"] is False and "missing_slots" not in m, m


# Short TTLs (the node requires ttl >= 2 x heartbeat + redis timeout) and a fast pass.
FAST_NODE = ["--presence-ttl-ms", "1500", "--heartbeat-ms", "300", "--redis-timeout-ms", "500"]
FAST_ADMIN = ["--reconcile-interval-ms", "300"]


def test_04_the_admin_reaps_peerjs_ids_like_native_sockets(cluster, redis_server, no_resume):
    """A PeerJS key's room ("~pj.K") goes through the reconcile pass as a native room does:
    the ids of a node killed with kill -9 are reaped with its native sockets (the node's socket
    index names "~pj.K S" entries), and the figures follow an id whose presence was deleted on
    a live node (its node's heartbeat or the pass's room_check, whichever comes first, removes
    it). (The pass took "~pj.K" for an invalid room name: it skipped the PeerJS rooms, and a
    dead node's reap failed on its first PeerJS entry, native sockets and all, every pass:
    mesh-status answered "redis unavailable" and the dead node's sockets stayed counted.)
    test_admin_reconcile test_10 has room_check reap a PeerJS key's lapsed ids on a live node."""
    n1 = cluster.node("n1", args=FAST_NODE)
    n2 = cluster.node("n2", args=FAST_NODE)
    admin = cluster.admin(args=FAST_ADMIN)
    r = redis_server.client()
    zero = {"users": 0, "links": 0, "away": 0}

    async def main():
        na, nb = await native_pair(n1)
        a = await peerjs(n1, "alice-1", "ta")
        b = await peerjs(n2, "bob_2", "tb")
        c = await peerjs(n2, "carol_3", "tc")
        await asyncio.to_thread(until_mesh, admin, {
            "total": {"users": 5, "links": 1, "away": 0},
            "native": {"users": 2, "links": 1, "away": 0},
            "peerjs": {"users": 3, "links": 0, "away": 0}})
        # carol's presence lapses while n2 lives (what a stalled node leaves): room_check
        # returns her, the pass reaps her. n2's heartbeat would refresh the key, so it is
        # deleted outright; the pass's reap re-checks presence and finds it gone.
        r.delete(f"sb:{{{PJ_ROOM}}}:presence:carol_3")
        await asyncio.to_thread(until_mesh, admin, {
            "total": {"users": 4, "links": 1, "away": 0},
            "native": {"users": 2, "links": 1, "away": 0},
            "peerjs": {"users": 2, "links": 0, "away": 0}}, 10.0)
        # kill -9 of n1: its native pair and alice go, bob stays
        n1.proc.signal(9)
        n1.proc.p.wait()
        n1.killed = True
        await asyncio.to_thread(until_mesh, admin, {
            "total": {"users": 1, "links": 0, "away": 0}, "native": zero,
            "peerjs": {"users": 1, "links": 0, "away": 0}}, 15.0)
        assert r.hkeys(f"sb:{{{PJ_ROOM}}}:members") == ["bob_2"]
        for x in (na, nb, a, b, c):
            x.ws.transport.abort()

    asyncio.run(main())
