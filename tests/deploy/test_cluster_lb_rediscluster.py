"""The native cluster's Redis Cluster variant behind HAProxy, end to end:
SB_REDIS_MODE=cluster deploy/cluster.sh up, clients ONLY through the load balancer's port,
then deploy/cluster.sh down.

01 up forms 3 primaries + 3 replicas: `redis-cli -c cluster info` says ok, status shows the
   roles, the nodes and the admin run with redis-cluster:// seeds naming all six
02 clients spread over the three nodes; rooms on every primary, two clients on different nodes
   in each join and signal across nodes; mesh-status equals the truth read from the cluster's
   sets and is not partial
03 kill -9 of the primary holding one room (by the pid cluster.sh recorded): its replica takes
   over; signals in that room get at most `unavailable` meanwhile, rooms on the other
   primaries never fail; no peer-left, no close; after the failover the figures equal the truth
   and are not partial (timings printed: the figures docs/deploy.md quotes)
04 down stops every recorded process (the six Redis last) and frees the ports

Skipped only while the binaries are not built.
"""
import asyncio
import json
import os
import re
import subprocess
import sys

import pytest
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import invariants  # noqa: E402
import keyspace  # noqa: E402
from client import Client  # noqa: E402
from clusterview import ClusterRedis  # noqa: E402
from failover import ride_failover  # noqa: E402
from test_cluster_lb import (Cluster, NODE_IDS, http_status, listening,  # noqa: E402
                             pytestmark, running, wait_for)

REDIS = ["redis", "redis2", "redis3", "redis4", "redis5", "redis6"]
pytestmark = pytestmark  # skipped while the binaries are not built (as test_cluster_lb)


def port_var(name):
    return f"SB_REDIS{name[len('redis'):]}_PORT"


class Nodes:
    """The six cluster.sh Redis processes as tests/clusterview.py wants a cluster: alive(),
    slots(port), password; all on 127.0.0.1."""
    password = None

    def __init__(self, ports):
        self.ports = ports

    def client(self, port):
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2)

    def alive(self):
        out = []
        for p in self.ports:
            try:
                if self.client(p).ping():
                    out.append(p)
            except redis.RedisError:
                pass
        return out

    def slots(self, port):
        return [(r[0], r[1], r[2][1], [x[1] for x in r[3:]])
                for r in self.client(port).execute_command("CLUSTER", "SLOTS")]

    def owner(self, slot, port=None):
        for lo, hi, p, _ in self.slots(port or self.alive()[0]):
            if lo <= slot <= hi:
                return p
        return None

    def primaries(self, port=None):
        return sorted({s[2] for s in self.slots(port or self.alive()[0])})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("rcluster")))
    c.env["SB_REDIS_MODE"] = "cluster"
    c.up()
    c.redis = Nodes([c.ports[port_var(n)] for n in REDIS])
    try:
        yield c
    finally:
        c.run("down", timeout=60)
        c.kill_leftovers()


def mesh(cluster):
    status, body = http_status(f"http://127.0.0.1:{cluster.ports['SB_ADMIN_PORT']}"
                               "/admin/mesh-status",
                               headers={"Authorization": f"Bearer {cluster.token}"})
    return status, (json.loads(body) if status == 200 else body)


def figures_equal_truth(cluster, expected):
    status, m = mesh(cluster)
    if status != 200 or m.get("partial"):
        return False
    f = {"rooms": m["rooms"], "members": m["active_users"], "links": m["p2p_links"],
         "linked": m["p2p_users"]}
    r = ClusterRedis(cluster.redis)
    t = invariants.truth(r)
    if f != t or t != expected:
        return False
    bad = invariants.check(r)
    assert not bad, "\n".join(bad)
    return True


def room_on(nodes, port, prefix):
    """A room name whose slot the primary at port serves."""
    i = 0
    while nodes.owner(keyspace.keyslot("{" + f"{prefix}{i}" + "}")) != port:
        i += 1
    return f"{prefix}{i}"


def test_01_up_forms_three_primaries_three_replicas(cluster):
    r = subprocess.run(["redis-cli", "-c", "-p", str(cluster.redis.ports[0]), "cluster", "info"],
                       capture_output=True, text=True, timeout=10)
    info = dict(line.split(":", 1) for line in r.stdout.split() if ":" in line)
    assert info["cluster_state"] == "ok", r.stdout
    assert info["cluster_size"] == "3" and info["cluster_known_nodes"] == "6", r.stdout
    assert info["cluster_slots_assigned"] == info["cluster_slots_ok"] == "16384", r.stdout
    st = cluster.run("status")
    assert st.returncode == 0, st.stdout + st.stderr
    roles = [m.group(1) for m in re.finditer(r"^redis\d?\s+\d+\s+healthy \(redis-cluster \d+\) "
                                             r"(\w+)$", st.stdout, re.M)]
    assert sorted(roles) == ["primary"] * 3 + ["replica"] * 3, st.stdout
    # Every replica is in sync with its primary (a replica that is not cannot take over).
    for p in cluster.redis.ports:
        repl = cluster.redis.client(p).info("replication")
        assert repl["role"] == "master" or repl["master_link_status"] == "up", (p, repl)
    seeds = "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster.redis.ports)
    for name, var in (("node1", "SWITCHBOARD_REDIS"), ("node3", "SWITCHBOARD_REDIS"),
                      ("admin", "SWITCHBOARD_ADMIN_REDIS")):
        pid, _ = cluster.pids[name]
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(e.decode().split("=", 1) for e in f.read().split(b"\0") if b"=" in e)
        assert env[var] == seeds, (name, env[var])


async def pairs_on_every_primary(cluster, prefix):
    """Two clients on different nodes per primary, in one room of that primary, signalling;
    returns {primary port: (room, a, b)} and every client."""
    clients, by_node = [], {}
    # leastconn: six sockets take two per node; a few more if another test's are closing.
    while len(clients) < 12 and min(len(by_node.get(n, [])) for n in NODE_IDS) < 2:
        c = await Client.connect(cluster.ws_url, open_timeout=5)
        clients.append(c)
        by_node.setdefault(c.node, []).append(c)
    assert min(len(by_node.get(n, [])) for n in NODE_IDS) >= 2, [c.node for c in clients]
    out = {}
    for i, port in enumerate(cluster.redis.primaries()):
        room = room_on(cluster.redis, port, f"{prefix}{i}-")
        n1, n2 = sorted(NODE_IDS)[i], sorted(NODE_IDS)[(i + 1) % 3]
        a, b = by_node[n1][0], by_node[n2][1]
        assert (await a.join(room))["peers"] == []
        assert [p["id"] for p in (await b.join(room))["peers"]] == [a.id]
        await a.expect("peer-joined", id=b.id)
        ack = await a.request({"type": "signal", "to": b.id, "data": {"sdp": room}})
        assert ack["type"] == "signal-ack", ack
        assert (await b.expect("signal", **{"from": a.id}))["data"] == {"sdp": room}
        out[port] = (room, a, b)
    return out, clients


def test_02_rooms_on_every_primary_signal_across_nodes_figures_exact(cluster):
    async def scenario():
        pairs, clients = await pairs_on_every_primary(cluster, "spread")
        try:
            assert len(pairs) == 3
            for port, (room, _, _) in pairs.items():
                # The room's keys are on the primary its slot says, nowhere else.
                assert cluster.redis.client(port).hlen(f"sb:{{{room}}}:members") == 2, room
                slot = keyspace.keyslot("{" + room + "}")
                for other in cluster.redis.primaries():
                    if other != port:
                        with pytest.raises(redis.ResponseError, match=f"MOVED {slot} .*:{port}$"):
                            cluster.redis.client(other).exists(f"sb:{{{room}}}:members")
            # Rooms are on more than one primary (here: on all three).
            owners = {cluster.redis.owner(keyspace.keyslot("{" + r + "}"))
                      for r, _, _ in pairs.values()}
            assert len(owners) == 3, owners
            expected = {"rooms": 3, "members": 6, "links": 0, "linked": 0}
            wait_for(lambda: figures_equal_truth(cluster, expected), 10, "figures")
            status, m = mesh(cluster)
            assert {n["id"] for n in m["nodes"]} == NODE_IDS
            assert "missing_slots" not in m, m
        finally:
            for c in clients:
                await c.close()
        wait_for(lambda: figures_equal_truth(
            cluster, {"rooms": 0, "members": 0, "links": 0, "linked": 0}), 10, "empty")

    asyncio.run(scenario())


def test_03_kill_a_primary_its_replica_takes_over(cluster):
    nodes = cluster.redis

    async def scenario():
        pairs, clients = await pairs_on_every_primary(cluster, "fail")
        try:
            victim = sorted(pairs)[0]
            room, a, b = pairs[victim]
            others = [v for p, v in pairs.items() if p != victim]
            expected = {"rooms": 3, "members": 6, "links": 0, "linked": 0}
            wait_for(lambda: figures_equal_truth(cluster, expected), 10, "figures before")
            name = next(n for n in REDIS if cluster.ports[port_var(n)] == victim)
            pid, start = cluster.pids[name]
            survivor = next(p for p in nodes.ports if p != victim)
            slot = keyspace.keyslot("{" + room + "}")
            meshes, ready = {}, {}

            def poll_mesh():
                status, m = mesh(cluster)
                key = f"{status} {m}" if status != 200 else \
                    ("200 partial" if m.get("partial") else "200")
                meshes[key] = meshes.get(key, 0) + 1
                # What the load balancer sees meanwhile: node1's /readyz, HAProxy's /healthz.
                for what, port, path in (("node1 /readyz", cluster.ports["SB_NODE1_PORT"],
                                          "/readyz"),
                                         ("lb /healthz", cluster.ports["SB_LB_MONITOR_PORT"],
                                          "/healthz")):
                    k = f"{what} {http_status(f'http://127.0.0.1:{port}{path}')[0]}"
                    ready[k] = ready.get(k, 0) + 1

            os.kill(pid, 9)
            promoted, ok_again, replies = await ride_failover(
                a, b, others, lambda: nodes.owner(slot, survivor) not in (victim, None),
                each=poll_mesh)
            print(f"\nkill -9 of primary {name} ({victim}): replica promoted after "
                  f"{promoted:.1f} s, signals in its room acked again after {ok_again:.1f} s; "
                  f"replies meanwhile {replies}; mesh-status meanwhile {meshes}; health checks {ready}")
            for c in clients:
                await c.none_of("peer-left", wait=0.05)
                assert c.closed is None
            wait_for(lambda: figures_equal_truth(cluster, expected), 20, "figures after")
            assert not running(pid, start)
            st = cluster.run("status")
            assert st.returncode == 1 and f"{name} " in st.stdout and "STOPPED" in st.stdout
        finally:
            for c in clients:
                await c.close()

    asyncio.run(scenario())


def test_04_down_stops_every_recorded_pid(cluster):
    assert set(cluster.pids) == set(REDIS) | {"node1", "node2", "node3", "admin", "lb"}
    r = cluster.run("down", timeout=60)
    assert r.returncode == 0, f"cluster.sh down failed:\n{r.stdout}\n{r.stderr}"
    left = {n: p for n, (p, s) in cluster.pids.items() if running(p, s)}
    assert not left, f"still running after down: {left}"
    assert not os.listdir(os.path.join(cluster.state, "pids"))
    for var in ("SB_LB_PORT", "SB_ADMIN_PORT", "SB_NODE2_PORT", *map(port_var, REDIS),
                "SB_REDIS_BUS_PORT", "SB_REDIS6_BUS_PORT"):
        assert not listening(cluster.ports[var]), f"{var} {cluster.ports[var]} still open"
    assert cluster.run("status").returncode == 3
