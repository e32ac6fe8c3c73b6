"""Switchboard on a real Redis Cluster (issue 12, Tests): nodes and the admin on 3 primaries +
3 replicas (tests/cluster.py) started by the test on loopback.

01 rooms spread over every primary; a room's traffic runs only on its primary (commandstats)
02 kill -9 of a primary mid-traffic: replica promoted, at most `unavailable`, no lost or
   repeated peer-left, no resurrected socket, figures equal the truth after one admin pass
03 slots holding live rooms moved to another primary mid-traffic: no event lost or repeated
04 a seed list with a dead address still connects
05 a slot nobody serves: `unavailable` for its rooms only, mesh-status "partial"
"""
import asyncio
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invariants  # noqa: E402
import keyspace  # noqa: E402
from client import Client  # noqa: E402
from cluster import RedisCluster  # noqa: E402
from conftest import ClusterRedisServer  # noqa: E402
from harness import Admin, free_port, wait_for  # noqa: E402

TTL_MS, HEARTBEAT_MS, NODE_REDIS_TIMEOUT_MS, INTERVAL_MS = 1500, 300, 500, 300
FAST_NODE = ["--presence-ttl-ms", str(TTL_MS), "--heartbeat-ms", str(HEARTBEAT_MS),
             "--redis-timeout-ms", str(NODE_REDIS_TIMEOUT_MS), "--rate", "1000",
             "--burst", "1000"]
FAST_ADMIN = ["--reconcile-interval-ms", str(INTERVAL_MS)]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    rc = RedisCluster(str(tmp_path_factory.mktemp("rc")))
    yield ClusterRedisServer(rc)
    rc.stop()


@pytest.fixture
def redis_server(shared):
    """conftest's `cluster` fixture runs its nodes and admin on this module's cluster."""
    shared.reset()
    return shared


def room_slot(room):
    return keyspace.keyslot("{" + room + "}")


def rooms_on(rc, port, n, prefix="r", avoid=()):
    """n room names whose slot the primary at port serves (distinct slots)."""
    out, slots, i = [], set(avoid), 0
    while len(out) < n:
        name = f"{prefix}{i}"
        s = room_slot(name)
        if s not in slots and rc.owner(s) == port:
            out.append(name)
            slots.add(s)
        i += 1
    return out


def view(c):
    """Peers a client was told about since its last joined (peer-joined minus peer-left)."""
    v = set()
    for m in c.seen:
        if m["type"] == "joined":
            v = {p["id"] for p in m["peers"]}
        elif m["type"] == "peer-joined":
            v.add(m["id"])
        elif m["type"] == "peer-left":
            v.discard(m["id"])
    return v


def counts(c, kind):
    """{peer id: how many `kind` events the client got about it}."""
    out = {}
    for m in c.seen:
        if m["type"] == kind:
            out[m["id"]] = out.get(m["id"], 0) + 1
    return out


def check_invariants(r):
    bad = invariants.check(r)
    assert bad == [], "\n".join(bad[:20])


# ---- 01 ----------------------------------------------------------------------------------------

def test_01_rooms_spread_and_traffic_stays_on_the_rooms_primary(cluster, redis_server):
    rc = redis_server.rc
    prim = rc.primaries()
    assert len(prim) == 3
    # Node ids whose home bucket (the probe's channel) is on the measured room's primary, so
    # their probes do not count as traffic elsewhere.
    target = prim[1]
    ids = [f"n{i}" for i in range(200) if rc.owner(keyspace.keyslot(f"n{i}")) == target][:2]
    na, nb = cluster.node(ids[0]), cluster.node(ids[1])
    r = redis_server.client()
    names = [f"spread{i}" for i in range(30)]

    async def main():
        cs = []
        for i, room in enumerate(names):
            c = await Client.connect((na, nb)[i % 2].ws_url)
            await c.join(room)
            cs.append(c)
        owners = {}
        for room in names:
            p = rc.owner(room_slot(room))
            # The room's keys are on that primary, its bucket too.
            assert rc.client(p).hlen(f"sb:{{{room}}}:members") == 1, room
            assert rc.client(p).exists(keyspace.bucket("sb", room, "stats", cluster=True))
            owners.setdefault(p, []).append(room)
        print("rooms per primary:", {p: len(v) for p, v in owners.items()})
        assert sorted(owners) == prim, owners  # every primary holds rooms
        assert invariants.counters(r)["rooms"] == 30
        # Now traffic in one room of the target primary only: joins, signals, links, leave.
        # The other sockets go first, so no heartbeat of theirs runs elsewhere meanwhile.
        room = owners[target][0]
        x = cs[names.index(room)]
        for c in cs:
            if c is not x:
                await c.close()
        await asyncio.sleep(0.1)
        assert invariants.counters(r)["members"] == 1
        before = {p: rc.commandstats(p) for p in prim}
        y = await Client.connect((nb if x.node == na.name else na).ws_url)
        await y.join(room)
        await x.expect("peer-joined", id=y.id)
        for i in range(50):
            assert (await x.request({"type": "signal", "to": y.id, "data": i}))["type"] == \
                "signal-ack"
        for i in range(50):
            assert (await y.expect("signal"))["data"] == i
        for a, b in ((x, y), (y, x)):
            assert (await a.request({"type": "link", "peer": b.id, "state": "up"}))["type"] == \
                "link-ack"
        assert (await y.request({"type": "leave"}))["type"] == "left"
        await x.expect("peer-left", id=y.id)
        after = {p: rc.commandstats(p) for p in prim}
        moved = {p: {k: after[p].get(k, 0) - before[p].get(k, 0)
                     for k in ("evalsha", "spublish")} for p in prim}
        print("evalsha/spublish per primary during the room's traffic:", moved)
        # join + 50 signals (spublish) + 2 links + leave, plus heartbeats: all on the owner
        assert moved[target]["evalsha"] >= 4 and moved[target]["spublish"] >= 50, moved
        for p in prim:
            if p != target:
                assert moved[p] == {"evalsha": 0, "spublish": 0}, moved
        await x.close()
        await y.close()
    asyncio.run(main())
    wait_for(lambda: invariants.counters(r)["members"] == 0, 3, msg="everyone gone")
    check_invariants(r)
