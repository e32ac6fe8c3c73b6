"""docker-compose.yml + docker-compose.cluster.yml (3 Redis primaries + 3 replicas) under a real
engine, tested through the published ports; Redis is read at the containers' addresses.

Run by tests/deploy/compose.sh (`test-cluster`, after `up-cluster`), inside the network
namespace where its dockerd runs; helpers from compose_stack.py.

c01 redis-init formed the cluster and exited 0; every Redis container says cluster_state:ok,
    3 primaries and 3 replicas, and the slot map hands out the containers' own (fixed) addresses
c02 through the LB: rooms on every primary, two clients on different node containers in each
    join and signal; the admin's figures are exact and not partial
c03 `docker kill -s KILL` of a primary's container: its replica takes over, signals in its room
    get at most `unavailable`, the other rooms never fail, no peer-left; figures exact after;
    the container started again rejoins as a replica under its node id and its address
c04 compose down: no container (redis-init's included), network or volume is left
"""
import asyncio
import os
import sys
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import keyspace  # noqa: E402
from compose_stack import (NODES, address, await_for, close_all, connect_spread,  # noqa: E402
                           container, docker, down_leaves_nothing, mesh, state, wait_for)
from failover import ride_failover  # noqa: E402

REDIS = ["redis", "redis2", "redis3", "redis4", "redis5", "redis6"]
RUNNING = REDIS + sorted(NODES) + ["admin", "lb"]


def rclient(service):
    return redis.Redis(host=address(service), port=6379, decode_responses=True, socket_timeout=3)


def slot_map(service=None):
    """[(lo, hi, primary service)] as one live Redis container sees it."""
    by_ip = {address(s): s for s in REDIS if state(s).startswith("running")}
    for s in ([service] if service else by_ip.values()):
        try:
            return [(r[0], r[1], by_ip.get(r[2][0], r[2][0]))
                    for r in rclient(s).execute_command("CLUSTER", "SLOTS")]
        except redis.RedisError:
            continue
    raise AssertionError("no Redis container answers CLUSTER SLOTS")


def owner(slot, service=None):
    return next(p for lo, hi, p in slot_map(service) if lo <= slot <= hi)


def room_on(primary, prefix, smap):
    """The first room name prefix0, prefix1, ... whose slot primary serves in smap (a slot_map():
    read once, since each read runs docker inspect per container, which took seconds here)."""
    def served_by(slot):
        return next(p for lo, hi, p in smap if lo <= slot <= hi)
    i = 0
    while served_by(keyspace.keyslot("{" + f"{prefix}{i}" + "}")) != primary:
        i += 1
    return f"{prefix}{i}"


def exact(expected):
    m = mesh()
    f = {"rooms": m["rooms"], "members": m["active_users"], "links": m["p2p_links"],
         "linked": m["p2p_users"]}
    return not m.get("partial") and f == expected


def test_c01_cluster_formed_with_container_addresses():
    init = container("redis-init")
    assert docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", init) == "exited 0"
    for s in RUNNING:
        assert state(s) == "running healthy", (s, state(s))
    roles = []
    for s in REDIS:
        info = docker("exec", container(s), "redis-cli", "cluster", "info")
        assert "cluster_state:ok" in info and "cluster_known_nodes:6" in info, (s, info)
        roles.append(rclient(s).info("replication")["role"])
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
    # What the nodes are handed: the containers' own addresses, every one routable.
    ips = {address(s) for s in REDIS}
    endpoints = set()
    for r in rclient("redis").execute_command("CLUSTER", "SLOTS"):
        endpoints |= {x[0] for x in r[2:]}
    assert endpoints == ips, (endpoints, ips)
    for s in REDIS:
        assert docker("inspect", "-f", "{{json .HostConfig.PortBindings}}", container(s)) \
            in ("{}", "null")


def pairs_on_every_primary(clients, prefix):
    async def go():
        by_node = {}
        for c in clients:
            by_node.setdefault(c.node, []).append(c)
        smap = slot_map()
        primaries = sorted({p for _, _, p in smap})
        assert len(primaries) == 3
        # Every room name first: the nodes close a socket that has not joined within
        # --join-timeout-ms (30 s), and a slot_map() per candidate name took longer than that
        # on a slow engine (one socket of the six was closed 4001 before its turn came).
        rooms = [room_on(p, f"{prefix}{i}-", smap) for i, p in enumerate(primaries)]
        out = {}
        for i, (p, room) in enumerate(zip(primaries, rooms)):
            a = by_node[sorted(NODES)[i]][0]
            b = by_node[sorted(NODES)[(i + 1) % 3]][1]
            assert (await a.join(room))["peers"] == []
            await b.join(room)
            await a.expect("peer-joined", id=b.id)
            ack = await a.request({"type": "signal", "to": b.id, "data": room}, timeout=5)
            assert ack["type"] == "signal-ack", ack
            assert (await b.expect("signal", timeout=5, **{"from": a.id}))["data"] == room
            assert rclient(p).hlen(f"sb:{{{room}}}:members") == 2
            out[p] = (room, a, b)
        return out
    return go()


async def spread_two_per_node():
    clients = await connect_spread(6)
    counts = {n: sum(c.node == n for c in clients) for n in NODES}
    assert all(v >= 2 for v in counts.values()), counts
    return clients


def test_c02_rooms_on_every_primary_signal_figures_exact():
    async def scenario():
        clients = await spread_two_per_node()
        try:
            await pairs_on_every_primary(clients, "cc")
            await await_for(lambda: exact({"rooms": 3, "members": 6, "links": 0, "linked": 0}),
                            10, "figures")
            assert {n["id"] for n in mesh()["nodes"]} == NODES
        finally:
            await close_all(clients)
        await await_for(lambda: exact({"rooms": 0, "members": 0, "links": 0, "linked": 0}),
                        10, "figures after close")
    asyncio.run(scenario())


def test_c03_kill_a_primary_container_replica_takes_over_it_rejoins():
    async def scenario():
        clients = await spread_two_per_node()
        try:
            pairs = await pairs_on_every_primary(clients, "cf")
            victim = sorted(pairs)[0]
            room, a, b = pairs[victim]
            others = [v for p, v in pairs.items() if p != victim]
            expected = {"rooms": 3, "members": 6, "links": 0, "linked": 0}
            await await_for(lambda: exact(expected), 10, "figures before")
            witness = next(s for s in REDIS if s != victim)
            node_id = rclient(victim).execute_command("CLUSTER", "MYID")
            old_ip = address(victim)
            slot = keyspace.keyslot("{" + room + "}")
            docker("kill", "-s", "KILL", container(victim))
            promoted, back, replies = await ride_failover(
                a, b, others, lambda: owner(slot, witness) not in (victim, old_ip))
            print(f"\nkill of the {victim} container (a primary): replica promoted after "
                  f"{promoted:.1f} s, its room signalling again after {back:.1f} s; {replies}")
            for c in clients:
                await c.none_of("peer-left", wait=0.05)
                assert c.closed is None
            await await_for(lambda: exact(expected), 20, "figures after the failover")
        finally:
            await close_all(clients)
        return victim, node_id, witness, old_ip

    victim, node_id, witness, old_ip = asyncio.run(scenario())
    t0 = time.monotonic()
    docker("start", container(victim))
    wait_for(lambda: state(victim) == "running healthy", 60, f"{victim} healthy again")
    # It kept its identity (nodes.conf outside the tmpfs) and its address, and became its
    # replacement's replica.
    assert address(victim) == old_ip
    assert rclient(victim).execute_command("CLUSTER", "MYID") == node_id
    wait_for(lambda: rclient(victim).info("replication").get("master_link_status") == "up", 30,
             f"{victim} in sync as a replica")
    ip = address(victim)
    line = next(x for x in rclient(witness).execute_command("CLUSTER", "NODES").splitlines()
                if x.startswith(node_id))
    assert line.split()[1].split(":")[0] == ip and "slave" in line, (line, ip)
    print(f"{victim} back as a replica after {time.monotonic() - t0:.1f} s")


def test_c04_compose_down_leaves_nothing():
    down_leaves_nothing(len(RUNNING) + 1)  # and the exited redis-init
