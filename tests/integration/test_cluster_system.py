"""Switchboard on a real Redis Cluster (issue 12, Tests): nodes and the admin on 3 primaries +
3 replicas (tests/cluster.py) started by the test on loopback.

01 rooms spread over every primary; a room's traffic runs only on its primary (commandstats)
02 kill -9 of a primary mid-traffic: replica promoted, at most `unavailable`, no lost or
   repeated peer-left, no resurrected socket, figures equal the truth after one admin pass
03 slots holding live rooms moved to another primary mid-traffic: no event lost or repeated
06 room events published on the new owner before a node re-subscribed there are replayed
07 a whole shard lost (primary and replica): figures partial with the lost slots named
04 a seed list with a dead address still connects
09 a seed whose name never resolves: the node still connects, and again after its connections
   drop (lookups of that name do not pile up in libuv's thread pool)
05 a slot nobody serves: `unavailable` for its rooms only, mesh-status "partial"
"""
import asyncio
import json
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
from harness import BUILD, Admin, free_port, http_get, wait_for  # noqa: E402

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


# ---- 03 ----------------------------------------------------------------------------------------

def migrate_slot_in_batches(rc, slot, dst, batch=2, pause=0.05):
    """Moves slot to the primary at dst as redis-cli --cluster reshard does (IMPORTING on the
    target, MIGRATING on the source, MIGRATE ... KEYS in batches, SETSLOT NODE everywhere), with
    a pause after each batch so traffic meets the slot with its keys split between the two.
    Returns (source port, keys moved)."""
    src = rc.move_slot(slot, dst, finish=False)
    s = rc.client(src)
    moved = 0
    while True:
        keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
        if not keys:
            break
        s.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
        time.sleep(pause)
    rc.finish_slot(slot, dst)
    return src, moved


def test_03_slots_moved_mid_traffic(cluster, redis_server):
    rc = redis_server.rc
    na, nb = cluster.node("na", args=FAST_NODE), cluster.node("nb", args=FAST_NODE)
    admin = cluster.admin(args=FAST_ADMIN)
    r = redis_server.client()
    src, dst = rc.primaries()[0], rc.primaries()[1]
    rooms = rooms_on(rc, src, 3, prefix="mv")
    calm = rooms_on(rc, rc.primaries()[2], 1, prefix="still")[0]
    redirects0 = {n.name: n.metrics().get("switchboard_node_redis_redirects_total", 0)
                  for n in (na, nb)}
    errors, acked, churned = [], {}, {}

    async def main():
        members = {}
        for room in rooms + [calm]:
            members[room] = []
            for i in range(3):
                c = await Client.connect((na, nb)[i % 2].ws_url)
                await c.join(room)
                members[room].append(c)
            for c in members[room]:
                for o in members[room]:
                    if o is not c and o.id not in view(c):
                        await c.expect("peer-joined", id=o.id)
        stop = asyncio.Event()

        async def signals(room):
            """Every ordered pair of the room's steady members, in turn, one at a time."""
            cs, i = members[room], 0
            while not stop.is_set():
                a, b = cs[i % 3], cs[(i + 1 + (i // 3) % 2) % 3]
                rep = await a.request({"type": "signal", "to": b.id, "data": {"k": i}}, timeout=5)
                if rep["type"] == "signal-ack":
                    acked.setdefault((a.id, b.id), []).append(i)
                else:
                    errors.append((room, "signal", rep.get("code")))
                i += 1
                await asyncio.sleep(0.005)

        async def churn(room):
            """A fresh socket joins and leaves, over and over, on alternating nodes."""
            i = 0
            while not stop.is_set():
                c = await Client.connect((na, nb)[i % 2].ws_url)
                i += 1
                for _ in range(100):
                    rep = await c.request({"type": "join", "room": room}, timeout=5)
                    if rep["type"] == "joined":
                        break
                    errors.append((room, "join", rep.get("code")))
                    assert rep["code"] == "unavailable", rep
                    await asyncio.sleep(0.02)
                assert rep["type"] == "joined", rep
                await asyncio.sleep(0.02)
                for _ in range(100):
                    rep = await c.request({"type": "leave"}, timeout=5)
                    if rep["type"] == "left":
                        break
                    errors.append((room, "leave", rep.get("code")))
                    assert rep["code"] == "unavailable", rep
                    await asyncio.sleep(0.02)
                assert rep["type"] == "left", rep
                churned.setdefault(room, []).append(c.id)
                await c.close()
        tasks = [asyncio.create_task(f(room)) for room in rooms + [calm]
                 for f in (signals, churn)]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        report = []
        for room in rooms:
            report.append(await asyncio.to_thread(migrate_slot_in_batches, rc, room_slot(room),
                                                  dst))
        took = time.monotonic() - t0
        await asyncio.sleep(0.5)  # traffic goes on after the move
        stop.set()
        await asyncio.gather(*tasks)
        print(f"moved {len(rooms)} slots in {took:.2f} s (source, keys): {report}")
        for room in rooms:
            assert rc.owner(room_slot(room)) == dst
            assert rc.client(dst).hlen(f"sb:{{{room}}}:members") >= 3, room
            assert rc.client(src).execute_command("CLUSTER", "COUNTKEYSINSLOT",
                                                  room_slot(room)) == 0, room
        # The nodes' sharded subscriptions followed the slots: their channel of each moved
        # bucket is subscribed on the new owner, no longer on the old one.
        for room in rooms:
            for n in (na, nb):
                ch = keyspace.bucket("sb", room, f"node:{n.name}", cluster=True)
                wait_for(lambda: ch in rc.client(dst).execute_command("PUBSUB", "SHARDCHANNELS",
                                                                     ch), 3, msg=ch)
                assert ch not in rc.client(src).execute_command("PUBSUB", "SHARDCHANNELS", ch)
        # Joins, signals and leaves after the move, across the two nodes (events arrive
        # through the new owner).
        for room in rooms:
            x = await Client.connect(na.ws_url)
            y = await Client.connect(nb.ws_url)
            await x.join(room)
            await y.join(room)
            await x.expect("peer-joined", id=y.id)
            for c in members[room]:
                await c.expect("peer-joined", id=x.id)
                await c.expect("peer-joined", id=y.id)
            for k in range(5):
                assert (await x.request({"type": "signal", "to": y.id, "data": k}))["type"] == \
                    "signal-ack"
                assert (await y.request({"type": "signal", "to": x.id, "data": k}))["type"] == \
                    "signal-ack"
            for k in range(5):
                assert (await y.expect("signal", **{"from": x.id}))["data"] == k
                assert (await x.expect("signal", **{"from": y.id}))["data"] == k
            assert (await y.request({"type": "leave"}))["type"] == "left"
            await x.expect("peer-left", id=y.id)
            members[room].append(x)
            churned.setdefault(room, []).append(y.id)
            await y.close()
        await asyncio.sleep(0.3)
        # No event lost or repeated: every steady member saw each churned socket join once
        # and leave once, and its view is the room's steady members.
        for room in rooms + [calm]:
            ids = {c.id for c in members[room]}
            for k, c in enumerate(members[room]):
                assert view(c) == ids - {c.id}, (room, view(c) ^ (ids - {c.id}))
                joined, left = counts(c, "peer-joined"), counts(c, "peer-left")
                # The first 3 were members throughout; the one that joined after the move saw
                # only the last churner (y).
                for gone in churned.get(room, []) if k < 3 else churned[room][-1:]:
                    if gone == c.id:
                        continue
                    # A socket that joined after c was told of it in c's `joined` instead.
                    assert left.get(gone) == 1, (room, gone, left.get(gone), c.seen)
                    assert joined.get(gone, 0) <= 1, (room, gone, c.seen)
                assert all(v == 1 for v in joined.values()), (room, joined)
                assert all(v == 1 for v in left.values()), (room, left)
                assert c.closed is None
        # Per pair: every acknowledged signal arrived exactly once, in the order sent.
        by_id = {c.id: c for room in rooms + [calm] for c in members[room]}
        for (a, b), ks in acked.items():
            got = [m["data"]["k"] for m in by_id[b].seen
                   if m["type"] == "signal" and m["from"] == a and isinstance(m["data"], dict)]
            assert got == ks, (a, b, ks, got)
        print("signals acknowledged:", sum(len(v) for v in acked.values()),
              "churn cycles:", sum(len(v) for v in churned.values()))
        status, res = admin.post("/admin/reconcile")
        assert status == 200, res
        m = admin.mesh()
        t = invariants.truth(r)
        live = sum(len(members[room]) for room in rooms + [calm])
        assert (m["active_users"], m["rooms"]) == (live, 4) == (t["members"], t["rooms"]), (m, t)
        assert (m["p2p_links"], m["p2p_users"]) == (t["links"], t["linked"]), (m, t)
        assert not m.get("partial"), m
        check_invariants(r)
        for room in rooms + [calm]:
            for c in members[room]:
                await c.close()
    asyncio.run(main())
    redirects = {n.name: n.metrics().get("switchboard_node_redis_redirects_total", 0) -
                 redirects0[n.name] for n in (na, nb)}
    print("errors during the moves:", errors, "redirects followed:", redirects)
    assert sum(redirects.values()) > 0, redirects  # the nodes did meet MOVED/ASK
    assert all(code == "unavailable" for *_, code in errors), errors
    assert all(room in rooms for room, *_ in errors), errors


def test_06_events_nobody_received_after_a_move_are_replayed(cluster, redis_server):
    """The gap of test_03 made certain: another node's socket joins and leaves on the new owner
    after the target took the slot and before the source let it go, so na is still subscribed
    on the source and receives nothing. When the move completes, na re-subscribes on the new
    owner and replays its backlog: its client is told both, in order (the resync's difference
    alone would show nothing). Without the replay this fails (checked by hand)."""
    import lua_text
    rc = redis_server.rc
    na = cluster.node("na", args=FAST_NODE)
    src, dst = rc.primaries()[0], rc.primaries()[1]
    room = rooms_on(rc, src, 1, prefix="gap")[0]
    slot = room_slot(room)
    ghost = "G" * 22
    members_key = f"sb:{{{room}}}:members"
    stats_key = keyspace.bucket("sb", room, "stats", cluster=True)
    backlog = keyspace.bucket("sb", room, "node:na:backlog", cluster=True)

    async def main():
        a = await Client.connect(na.ws_url)
        await a.join(room)
        rc.move_slot(slot, dst, finish=False)
        rc.migrate_keys(slot, src, dst)
        d = rc.client(dst)
        join = d.script_load(lua_text.script("room_join"))
        remove = d.script_load(lua_text.script("room_remove"))
        keys = (2, members_key, stats_key, "sb", room, ghost)
        # On the importing target (ASKING: every key is there), as a node that followed ASK
        # would; the slot stays the source's, and so does na's subscription.
        p = d.pipeline(transaction=False)
        p.execute_command("ASKING")
        p.evalsha(join, *keys, "ghost", "e", "{}", 15000, 64)
        p.execute_command("ASKING")
        p.evalsha(remove, *keys, "leave", "ghost")
        p.execute_command("ASKING")
        p.lrange(backlog, 0, -1)
        res = p.execute()
        assert res[1][0] == "ok" and res[3][0] == "ok", res
        # Both reached no one (an event is kept only then): what na gets of them below comes
        # from the replay.
        assert [json.loads(e)["t"] for e in res[5]] == ["join", "left"]
        await a.none_of("peer-joined", wait=0.3)
        rc.finish_slot(slot, dst)
        assert (await a.expect("peer-joined", id=ghost))["meta"] == {}
        assert (await a.expect("peer-left", id=ghost))["reason"] == "leave"
        wait_for(lambda: d.exists(backlog) == 0, 3, msg="backlog emptied by the replay")
        assert counts(a, "peer-joined") == {ghost: 1} and counts(a, "peer-left") == {ghost: 1}
        # And the room works on the new owner.
        b = await Client.connect(na.ws_url)
        await b.join(room)
        await a.expect("peer-joined", id=b.id)
        await a.close()
        await b.close()
    asyncio.run(main())


# ---- 04 ----------------------------------------------------------------------------------------

def test_04_seed_list_with_a_dead_address_connects(cluster, redis_server, tmp_path):
    rc = redis_server.rc
    dead = free_port()  # nothing listens there
    url = f"redis-cluster://127.0.0.1:{dead},127.0.0.1:{rc.ports[0]}"
    na = cluster.node("na", redis_url=url)
    admin = Admin(url, str(tmp_path))
    cluster.admins.append(admin)

    async def main():
        a = await Client.connect(na.ws_url)
        b = await Client.connect(na.ws_url)
        rooms = [rooms_on(rc, p, 1, prefix=f"seed{p}-")[0] for p in rc.primaries()]
        for room in rooms:  # a room on each primary: the whole map was learnt
            await a.join(room)
            await b.join(room)
            await a.expect("peer-joined", id=b.id)
            assert (await a.request({"type": "signal", "to": b.id, "data": room}))["type"] == \
                "signal-ack"
            assert (await b.expect("signal"))["data"] == room
            assert (await a.request({"type": "leave"}))["type"] == "left"
            assert (await b.request({"type": "leave"}))["type"] == "left"
        await a.join(rooms[0])
        m = admin.mesh()
        assert m["active_users"] == 1 and not m.get("partial"), m
        await a.close()
        await b.close()
    asyncio.run(main())


# ---- 09 ----------------------------------------------------------------------------------------

def test_09_a_seed_name_that_never_resolves(cluster, redis_server, tmp_path):
    """A seed given by a name whose lookup hangs (a DNS that does not answer: Docker's forwards
    an unknown name upstream, 20 s per try; here tests/tools/slowdns.so makes every lookup of
    *.stall.invalid hang 15 s) beside one given by address. The node is ready through the
    address, and after every connection of it to the cluster is dropped it connects again at
    once. Before, each retry of the hanging seed started another lookup, libuv's 4 pool threads
    were all stuck in them within 5 s, and every other connection's lookup (of an address
    too) waited behind them: the node stayed unready for the length of the stall."""
    rc = redis_server.rc
    stalls, release = tmp_path / "stalls.log", tmp_path / "release"
    env = {"LD_PRELOAD": os.path.join(BUILD, "tests", "tools", "slowdns.so"),
           "SB_SLOWDNS_LOG": str(stalls), "SB_SLOWDNS_MS": "15000",
           "SB_SLOWDNS_RELEASE": str(release),
           "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:verify_asan_link_order=0"}
    url = f"redis-cluster://seed.stall.invalid:{rc.ports[0]},127.0.0.1:{rc.ports[0]}"
    na = cluster.node("na", redis_url=url, env=env, args=["--redis-timeout-ms", "500"])
    try:
        time.sleep(5.5)  # the hanging seed's client tries again and again meanwhile
        assert stalls.read_text().count("stall") == 1  # one lookup of the name at a time
        for port in rc.primaries():
            r = rc.client(port)
            r.execute_command("CLIENT", "KILL", "TYPE", "normal")
            r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        t0 = time.monotonic()
        wait_for(lambda: "connection lost" in na.proc.log(), 2, 0.01, "the node saw the drop")
        wait_for(lambda: http_get(na.http + "/readyz", timeout=0.5)[0] == 200, 3, 0.05,
                 "ready again, through the seed given by address")
        print("ready again after", round(time.monotonic() - t0, 3), "s")

        async def main():
            a = await Client.connect(na.ws_url)
            # /readyz can answer 200 before the node noticed every dropped connection (the
            # primaries are dropped one by one): as a client does, "unavailable" is retried;
            # through a stalled lookup this would take the 15 s of the stall.
            t1 = time.monotonic()
            while True:
                reply = await a.request({"type": "join", "room": "after-the-drop"})
                if reply["type"] == "joined" or time.monotonic() - t1 > 2:
                    break
                assert reply.get("code") == "unavailable", reply
                await asyncio.sleep(0.05)
            assert reply["type"] == "joined", reply
            await a.close()
        asyncio.run(main())
        assert stalls.read_text().count("stall") == 1
    finally:
        release.write_text("")  # the lookup still hanging ends: the node can exit


# ---- 05 ----------------------------------------------------------------------------------------

def test_05_uncovered_slots_unavailable_there_only_admin_partial(tmp_path):
    """3 primaries without replicas, cluster-require-full-coverage no: kill -9 one primary and
    its slots are served by nobody, while the cluster keeps serving the others."""
    from conftest import Cluster
    rc = RedisCluster(str(tmp_path), primaries=3, replicas_per_primary=0)
    c = Cluster(ClusterRedisServer(rc), str(tmp_path))
    try:
        na = c.node("na", args=FAST_NODE)
        admin = c.admin(args=FAST_ADMIN)
        # Not a kill: the global keys (node leases, P:nodes, the admin's lease, totals,
        # events) live in their own slots and 7 keys land on every one of 3 primaries, so a
        # dead primary makes mesh-status 503 (reported). One slot unassigned on every node
        # (CLUSTER DELSLOTS) is the uncovered slot here.
        victim = rc.primaries()[0]
        lost_room = rooms_on(rc, victim, 1, prefix="lost")[0]
        lost = [(room_slot(lost_room), room_slot(lost_room))]
        n_lost = 1
        fine_room = rooms_on(rc, next(p for p in rc.primaries() if p != victim), 1,
                             prefix="fine")[0]

        async def main():
            a = await Client.connect(na.ws_url)
            b = await Client.connect(na.ws_url)
            await a.join(fine_room)
            m = admin.mesh()
            assert not m.get("partial") and m["active_users"] == 1, m
            for p in [victim] + [p for p in rc.ports if p != victim]:
                rc.client(p).execute_command("CLUSTER", "DELSLOTS", lost[0][0])
            wait_for(lambda: all(rc.owner(lost[0][0], p) is None for p in rc.ports), 10,
                     msg="slot unassigned everywhere")
            t0 = time.monotonic()
            tries = 0
            while time.monotonic() - t0 < 1.5:  # answered at once, and stays so
                rep = await b.request({"type": "join", "room": lost_room}, timeout=5)
                assert rep["type"] == "error" and rep["code"] == "unavailable", rep
                tries += 1
                await asyncio.sleep(0.1)
            assert tries >= 5
            # Not every slot is served, but the others are: ready (docs/operations.md).
            assert na.ready()
            # The other rooms work: join, signal, leave.
            await b.join(fine_room)
            await a.expect("peer-joined", id=b.id)
            assert (await b.request({"type": "signal", "to": a.id, "data": 1}))["type"] == \
                "signal-ack"
            assert (await a.expect("signal"))["data"] == 1
            m = admin.mesh()
            print("mesh-status with a primary gone:", {k: m.get(k) for k in
                  ("partial", "missing_slots", "active_users")})
            assert m["partial"] is True, m
            assert m["missing_slots"] == {"count": n_lost, "first": lost[0][0]}, (m, lost)
            r = ClusterRedisServer(rc).client()
            print("counters:", invariants.counters(r))
            wait_for(lambda: admin.mesh()["active_users"] == 2, 3,
                     msg=f"both members of fine_room counted: {admin.mesh()} "
                     f"{invariants.counters(r)} {rc.slots()}")
            await a.close()
            await b.close()
        asyncio.run(main())
    finally:
        problems = c.stop()
        rc.stop()
    assert not problems, problems


# ---- 07 ----------------------------------------------------------------------------------------

def test_07_a_whole_shard_lost(tmp_path):
    """kill -9 of a primary and its replica (3+3, cluster-require-full-coverage no): its slots
    have no owner. The admin's figures are partial with the lost slots named (JSON, Prometheus),
    not a 503 and not silently low; the rooms of the other shards keep working; /readyz of the
    node and the admin say what docs/operations.md says."""
    from conftest import Cluster
    from harness import http_get, parse_metrics
    rc = RedisCluster(str(tmp_path), primaries=3, replicas_per_primary=1)
    c = Cluster(ClusterRedisServer(rc), str(tmp_path))
    try:
        prim = rc.primaries()
        # The victim does not hold P:instance; node "ok*" has its lease and home channel on the
        # other shards, node "hit*" its lease on the victim: one of each kind for /readyz.
        victim = next(p for p in prim if rc.owner(keyspace.keyslot("sb:instance")) != p)
        ids = [f"n{i}" for i in range(400)]
        ok = next(i for i in ids if rc.owner(keyspace.keyslot(f"sb:node:{i}")) != victim and
                  rc.owner(keyspace.keyslot(i)) != victim)
        hit = next(i for i in ids if rc.owner(keyspace.keyslot(f"sb:node:{i}")) == victim)
        na = c.node(ok, args=FAST_NODE)
        nb = c.node(hit, args=FAST_NODE)
        admin = c.admin(args=FAST_ADMIN)
        shard = [(lo, hi, reps) for lo, hi, p, reps in rc.slots() if p == victim]
        lost_slots = sum(hi - lo + 1 for lo, hi, _ in shard)
        first_lost = min(lo for lo, _, _ in shard)
        replicas = [r for _, _, reps in shard for r in reps]
        assert replicas
        rooms = {p: rooms_on(rc, p, 1, prefix=f"w{p}-")[0] for p in prim}

        async def main():
            members = {}
            for p, room in rooms.items():
                members[room] = [await Client.connect(na.ws_url), await Client.connect(nb.ws_url)]
                for m in members[room]:
                    await m.join(room)
            m = admin.mesh()
            assert (m["active_users"], m["rooms"], m.get("partial")) == (6, 3, False), m
            for port in [victim] + replicas:
                rc.kill(port)
            live = [room for p, room in rooms.items() if p != victim]
            dead = rooms[victim]
            wait_for(lambda: admin.get("/admin/mesh-status")[0] == 200 and
                     admin.mesh().get("missing_slots", {}).get("count") == lost_slots, 10,
                     msg=f"mesh-status partial: {admin.get('/admin/mesh-status')}")
            m = admin.mesh()
            print("mesh-status with a shard lost:", {k: m.get(k) for k in
                  ("partial", "missing_slots", "unreadable", "active_users", "rooms")})
            assert m["partial"] is True
            assert m["missing_slots"] == {"count": lost_slots, "first": first_lost}, m
            # The figures of the slots that answer are exact: the live rooms, 4 members.
            assert (m["active_users"], m["rooms"]) == (4, 2), m
            prom = parse_metrics(http_get(admin.http + "/metrics", headers={
                "Authorization": f"Bearer {admin.token}"})[1].decode())
            assert prom["switchboard_cluster_missing_slots"] == lost_slots, prom
            assert prom["switchboard_cluster_active_users"] == 4, prom
            assert prom["switchboard_cluster_unreadable"] == len(m["unreadable"]) > 0, prom
            # The rooms of the other shards work: signal, leave, join.
            for room in live:
                x, y = members[room]
                assert (await x.request({"type": "signal", "to": y.id, "data": 1}))["type"] == \
                    "signal-ack"
                assert (await y.expect("signal"))["data"] == 1
            z = await Client.connect(nb.ws_url)
            await z.join(live[0])
            rep = await z.request({"type": "join", "room": dead}, timeout=5)
            assert rep["type"] == "error"
            rep = await (await Client.connect(na.ws_url)).request(
                {"type": "join", "room": dead}, timeout=5)
            assert rep["type"] == "error" and rep["code"] == "unavailable", rep
            wait_for(lambda: admin.mesh()["active_users"] == 5, 3, msg="z counted")
            # /readyz (docs/operations.md): a node stays ready while it can serve some rooms, unless
            # its own lease, the instance key or its home channel (the probe) is on the lost shard;
            # the admin stays ready (it serves the partial figures).
            lost = {s for lo, hi, _ in shard for s in range(lo, hi + 1)}
            for n in (na, nb):
                mine = {keyspace.keyslot(f"sb:node:{n.name}"), keyspace.keyslot("sb:instance"),
                        keyspace.keyslot(n.name)}
                status, body = http_get(n.http + "/readyz")[:2]
                print("readyz", n.name, status, body, "own keys lost:", bool(mine & lost))
                assert bool(mine & lost) == (n is nb)
                if mine & lost:
                    assert status == 503 and json.loads(body)["reason"] in (
                        "lease not registered", "pubsub not proven"), (n.name, body)
                else:
                    wait_for(lambda: n.ready(), 3, msg=f"{n.name} ready")
            assert http_get(admin.http + "/readyz")[0] == 200
        return asyncio.run(main())
    finally:
        problems = c.stop()
        rc.stop()
        assert not problems, problems


# ---- 08 ----------------------------------------------------------------------------------------

def test_08_the_shard_holding_the_instance_key_lost(tmp_path):
    """The shard that holds P:instance (which every node reads) is lost with its replica: a
    node whose lease and home channel are on other shards stays ready throughout (it verified
    the instance before, and the other shards lost nothing: a shard that loses data shows as a
    topology change), so the load balancer still has somewhere to send clients of the rooms
    that work. Before, every node turned 503 "lease not registered" for the whole outage (one
    failover in three on a 3-primary cluster: docs/deploy.md). When the shard comes back
    (empty, as a primary) the node re-reads the instance and is ready again."""
    from conftest import Cluster
    from harness import http_get
    rc = RedisCluster(str(tmp_path), primaries=3, replicas_per_primary=1)
    c = Cluster(ClusterRedisServer(rc), str(tmp_path))
    try:
        prim = rc.primaries()
        victim = rc.owner(keyspace.keyslot("sb:instance"))
        ids = [f"n{i}" for i in range(400)]
        ok = next(i for i in ids if rc.owner(keyspace.keyslot(f"sb:node:{i}")) != victim and
                  rc.owner(keyspace.keyslot(i)) != victim)
        na = c.node(ok, args=FAST_NODE)
        shard = [(lo, hi, reps) for lo, hi, p, reps in rc.slots() if p == victim]
        replicas = [r for _, _, reps in shard for r in reps]
        live_room = rooms_on(rc, next(p for p in prim if p != victim), 1, prefix="i-")[0]

        async def main():
            x, y = await Client.connect(na.ws_url), await Client.connect(na.ws_url)
            await x.join(live_room)
            await y.join(live_room)
            assert na.ready()
            for port in [victim] + replicas:
                rc.kill(port)
            # Until the node notices (its next command to the shard fails) and for 3 s after.
            t_end = time.monotonic() + 3.0 + 2 * NODE_REDIS_TIMEOUT_MS / 1000
            samples = []
            while time.monotonic() < t_end:
                status, body = http_get(na.http + "/readyz")[:2]
                samples.append((status, body))
                await asyncio.sleep(0.1)
            bad = [s for s in samples if s[0] != 200]
            assert not bad, f"{len(bad)} of {len(samples)} /readyz not 200: {bad[:3]}"
            # It did notice: the instance cannot be read.
            assert (await x.request({"type": "signal", "to": y.id, "data": 1}))["type"] == \
                "signal-ack"
            assert (await y.expect("signal"))["data"] == 1
            rc.restart(victim)
            wait_for(lambda: na.ready(), 10, msg="ready after the shard came back")
            for m in (x, y):
                await m.close()
        return asyncio.run(main())
    finally:
        problems = c.stop()
        rc.stop()
        assert not problems, problems


# ---- 02 ----------------------------------------------------------------------------------------

def test_02_primary_killed_mid_traffic(cluster, redis_server):
    rc = redis_server.rc
    # A presence TTL above the failover time (node timeout 1 s + election, about 2-3 s here):
    # with 1.5 s the lease of a node on the dead primary lapses during the failover and the
    # admin reaps every socket of that node (closed 4000), which is expiry doing its job.
    slow_ttl = ["--presence-ttl-ms", "6000", "--heartbeat-ms", "1000",
                "--redis-timeout-ms", "500", "--rate", "1000", "--burst", "1000"]
    na, nb = cluster.node("na", args=slow_ttl), cluster.node("nb", args=slow_ttl)
    admin = cluster.admin(args=FAST_ADMIN)
    r = redis_server.client()
    victim = rc.primaries()[0]
    hit = rooms_on(rc, victim, 2, prefix="hit")
    calm = rooms_on(rc, rc.primaries()[1], 1, prefix="calm")
    errors = []

    async def main():
        members = {}
        for room in hit + calm:
            members[room] = []
            for i in range(3):
                c = await Client.connect((na, nb)[i % 2].ws_url)
                await c.join(room)
                members[room].append(c)
        gone = []
        stop = asyncio.Event()

        async def traffic(room):
            i = 0
            while not stop.is_set():
                cs = members[room]
                a, b = cs[i % len(cs)], cs[(i + 1) % len(cs)]
                rep = await a.request({"type": "signal", "to": b.id, "data": i}, timeout=5)
                if rep["type"] != "signal-ack":
                    errors.append((room, rep.get("code")))
                i += 1
                await asyncio.sleep(0.02)
        tasks = [asyncio.create_task(traffic(room)) for room in hit + calm]
        await asyncio.sleep(0.5)
        old = [rc.owner(room_slot(room)) for room in hit]
        assert old == [victim, victim]
        rc.kill(victim)
        wait_for(lambda: all(rc.owner(room_slot(room)) not in (None, victim) for room in hit),
                 15, msg="replica promoted")
        # Joins work again on the promoted replica (a retry on `unavailable` is the client's).
        for room in hit:
            c = await Client.connect(na.ws_url)
            for _ in range(50):
                rep = await c.request({"type": "join", "room": room}, timeout=5)
                if rep["type"] == "joined":
                    break
                assert rep["code"] == "unavailable", rep
                await asyncio.sleep(0.1)
            assert rep["type"] == "joined", rep
            members[room].append(c)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        # One member of each room leaves after the failover: exactly one peer-left each.
        for room in hit + calm:
            x = members[room].pop(0)
            assert (await x.request({"type": "leave"}))["type"] == "left"
            gone.append(x.id)
            for c in members[room]:
                await c.expect("peer-left", id=x.id, timeout=3)
        await asyncio.sleep((TTL_MS + 2 * INTERVAL_MS) / 1000)  # any resurrection would show
        status, res = admin.post("/admin/reconcile")
        assert status == 200, res
        live = [c for room in hit + calm for c in members[room]]
        for room in hit + calm:
            ids = {c.id for c in members[room]}
            for c in members[room]:
                assert view(c) == ids - {c.id}, (room, view(c) ^ (ids - {c.id}))
                assert all(n == 1 for n in counts(c, "peer-left").values()), c.seen
                assert not any(m["type"] == "peer-joined" and m["id"] in gone for m in c.seen
                               if m is not None)
                assert c.closed is None
        m = admin.mesh()
        t = invariants.truth(r)
        assert (m["active_users"], m["rooms"]) == (len(live), 3) == (t["members"], t["rooms"])
        assert not m.get("partial")
        check_invariants(r)
        for c in live:
            await c.close()
    asyncio.run(main())
    print("errors during the failover:", errors)
    assert all(code == "unavailable" for _, code in errors), errors
    assert all(room in hit for room, _ in errors), errors
