"""Redis memory per joined socket, per link and per room on the native cluster, for the sizing
table of docs/deploy.md. By hand (not collected by pytest):

    SB_REDIS_MODE=cluster SB_PORTS=auto SB_CLUSTER_DIR=/tmp/sbmem deploy/cluster.sh up
    SB_CLUSTER_DIR=/tmp/sbmem /usr/bin/python3 tests/deploy/cluster_memory.py [SOCKETS] [PER_ROOM]
    SB_CLUSTER_DIR=/tmp/sbmem deploy/cluster.sh down

(the same with SB_REDIS_MODE unset measures the single Redis). Opens SOCKETS (default 1200)
WebSockets to the three nodes in turn (not through HAProxy, which admits 200 connections and
300 per 10 s from one source), joins them into rooms of PER_ROOM (default 4), then links
every member with the next one in its room (a ring: PER_ROOM links per room); prints INFO memory
used_memory summed over the primaries (replicas hold as much again) before, after the joins and
after the links, and the differences per socket, per link and per room (less the replication
backlog and client buffers, which do not grow with the sockets; with latency-tracking off and
the stats reset on the primaries while it measures, see docs/deploy.md).
"""
import asyncio
import os
import sys

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from client import Client  # noqa: E402


def ports(state):
    out = {}
    with open(os.path.join(state, "ports.env")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            out[k] = int(v)
    return out


def primaries(p):
    rs = [v for k, v in p.items() if k.startswith("SB_REDIS") and "BUS" not in k]
    out = []
    for port in rs:
        r = redis.Redis(host="127.0.0.1", port=port)
        if r.info("replication")["role"] == "master":
            out.append(r)
    return out


def used(rs):
    """used_memory of the primaries less what is not the keyspace: the replication backlog
    (filled by the writes up to repl-backlog-size, 1 MB, a fixed cost per primary once full)
    and client buffers."""
    total = 0
    for r in rs:
        m = r.info("memory")
        total += (m["used_memory"] - m.get("mem_replication_backlog", 0)
                  - m.get("mem_clients_slaves", 0) - m.get("mem_clients_normal", 0))
    return total


async def main(n, per_room):
    p = ports(os.environ["SB_CLUSTER_DIR"])
    rs = primaries(p)
    urls = [f"ws://127.0.0.1:{p[f'SB_NODE{i}_PORT']}/ws" for i in (1, 2, 3)]
    # Redis 7 allocates a latency histogram (about 24.7 KB) the first time a process runs each
    # command, kept until CONFIG RESETSTAT: a fixed cost per process that the joins would
    # otherwise put on the sockets (3 times over on a cluster). Off while measuring.
    tracking = [r.config_get("latency-tracking").get("latency-tracking", "yes") for r in rs]
    for r in rs:
        r.config_set("latency-tracking", "no")
        r.config_resetstat()
    base = used(rs)
    clients = []
    for i in range(n):
        clients.append(await Client.connect(urls[i % 3], open_timeout=10))
    rooms = n // per_room
    for i, c in enumerate(clients):
        await c.join(f"mem{i // per_room}")
    await asyncio.sleep(1)
    joined = used(rs)
    links = 0
    for r in range(rooms):
        group = clients[r * per_room:(r + 1) * per_room]
        for j, a in enumerate(group):
            b = group[(j + 1) % per_room]
            for x, y in ((a, b), (b, a)):
                ack = await x.request({"type": "link", "peer": y.id, "state": "up"}, timeout=10)
                assert ack["type"] == "link-ack", ack
            links += 1
    await asyncio.sleep(1)
    linked = used(rs)
    print(f"{len(rs)} primaries; {n} sockets in {rooms} rooms of {per_room}, {links} links")
    print(f"used_memory less backlog and client buffers (primaries): base {base}, joined {joined}, linked {linked}")
    print(f"per joined socket {(joined - base) / n:.0f} B (rooms included: "
          f"{(joined - base) / rooms:.0f} B per room of {per_room}); "
          f"per link {(linked - joined) / links:.0f} B")
    for c in clients:
        await c.close()
    for r, t in zip(rs, tracking):
        r.config_set("latency-tracking", t)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1200,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 4))
