"""Chaos with fixed seeds and bounded time (issue: faults and hostile input).

3 nodes, the admin and Redis; ~200 clients in 20 rooms doing random operations (join, link up
and down, signal, leave, TCP reset, TCP reset then session resume on a random node, going
silent on pings) while faults rotate: kill -9 a node
and restart it, SIGSTOP a node past its TTL then SIGCONT it, kill -9 Redis and restart it
empty, SCRIPT FLUSH, CLIENT KILL TYPE pubsub. After the load stops and TTL plus a reconcile
have passed: zero invariant violations, mesh-status equal to the truth computed from the
test's own live clients, and every surviving client's view of its room equal to the live
members (so it was told peer-left for each peer that vanished); no session is left away (every
grace ended or was resumed), and the invariants include the away state (tests/invariants.py).

SB_CHAOS_SEEDS (default "1,2") and SB_CHAOS_OPS (default 5000) / SB_CHAOS_CLIENTS (200) tune it.
"""
import asyncio
import faulthandler
import os
import random
import signal
import time

import pytest

import invariants
from client import Client
from harness import wait_for

faulthandler.register(signal.SIGUSR1, all_threads=True)
SEEDS = [int(s) for s in os.environ.get("SB_CHAOS_SEEDS", "1,2").split(",") if s]
OPS = int(os.environ.get("SB_CHAOS_OPS", "5000"))
CLIENTS = int(os.environ.get("SB_CHAOS_CLIENTS", "200"))
ROOMS = 20
TTL_MS, HB_MS, TIMEOUT_MS, RECONCILE_MS, GRACE_MS = 1500, 300, 400, 300, 1500
NODE_ARGS = ["--presence-ttl-ms", str(TTL_MS), "--heartbeat-ms", str(HB_MS),
             "--resume-grace-ms", str(GRACE_MS),
             "--redis-timeout-ms", str(TIMEOUT_MS), "--ping-interval-ms", "1000",
             "--ping-timeout-ms", "2000", "--rate", "1000", "--burst", "1000",
             "--max-room-members", "64"]


class Actor:
    """One test client and what it believes: its room and the link halves it holds."""

    def __init__(self, c):
        self.c = c
        self.sid = c.id  # the session's id: after a resume, c's own welcome id is another
        self.token = None  # the resume token of its last joined / resumed
        self.room = None
        self.halves = set()
        self.dead = False

    @property
    def id(self):
        return self.sid

    @property
    def alive(self):
        return not self.dead and self.c.closed is None

    def view(self):
        """Peers this client was told about since its last joined."""
        v = None
        for m in self.c.seen:
            t = m.get("type")
            if t in ("joined", "resumed"):
                v = {p["id"] for p in m["peers"]}
            elif t == "left":
                v = None
            elif v is not None and t == "peer-joined":
                v.add(m["id"])
            elif v is not None and t == "peer-left":
                v.discard(m["id"])
        return v or set()


async def safe(coro, timeout=2.0):
    try:
        return await asyncio.wait_for(coro, timeout)
    except Exception as e:  # noqa: BLE001 - faults make any request fail; the model says how
        return {"type": "error", "code": "no-reply", "why": type(e).__name__}


def uncertain(a, rep):
    """No reply (its node stopped or died): the request may still run later, so the model
    cannot know this client's state. It is reset and counted as gone; the server cleans up."""
    if rep.get("code") == "no-reply":
        a.c.abort()
        a.dead = True
        return True
    return False


@pytest.mark.parametrize("seed", SEEDS)
def test_chaos(cluster, redis_server, seed):
    rng = random.Random(seed)
    r = redis_server.client()
    nodes = [cluster.node(f"n{i}", args=NODE_ARGS) for i in range(3)]
    admin = cluster.admin(args=["--reconcile-interval-ms", str(RECONCILE_MS)])
    actors = []
    counts = {"ops": 0, "faults": 0, "resumes": 0, "refused": 0}
    stopped = set()  # names of SIGSTOPped nodes: their clients get no ops meanwhile

    async def new_actor():
        node = rng.choice([n for n in nodes if n.proc.alive() and n.name not in stopped])
        try:
            c = await asyncio.wait_for(Client.connect(node.ws_url), 2)
        except Exception:  # noqa: BLE001 - the node may be stopped or restarting
            return None
        a = Actor(c)
        actors.append(a)
        return a

    async def op(a):
        # One operation at a time, each awaited: the model applies a reply in the order the
        # server ran the request, which concurrent requests from several clients would not.
        others = lambda: [b for b in actors if b.alive and b.room == a.room and b is not a]  # noqa: E731
        kind = rng.random()
        if a.room is None:
            room = f"room{rng.randrange(ROOMS)}"
            rep = await safe(a.c.request({"type": "join", "room": room}))
            if not uncertain(a, rep) and rep.get("type") == "joined":
                a.room, a.halves, a.token = room, set(), rep["resume"]
        elif kind < 0.35:
            peers = others()
            if peers:
                b = rng.choice(peers)
                state = "up" if rng.random() < 0.8 else "down"
                rep = await safe(a.c.request({"type": "link", "peer": b.id, "state": state}))
                if not uncertain(a, rep) and rep.get("type") == "link-ack":
                    (a.halves.add if state == "up" else a.halves.discard)(b.id)
                    if state == "down":
                        b.halves.discard(a.id)
        elif kind < 0.70:
            peers = others()
            if peers:
                await safe(a.c.send({"type": "signal", "to": rng.choice(peers).id,
                                     "data": {"n": counts["ops"]}}))
        elif kind < 0.78:
            rep = await safe(a.c.request({"type": "leave"}))
            if not uncertain(a, rep) and rep.get("type") == "left":
                for b in actors:
                    b.halves.discard(a.id)
                a.room, a.halves = None, set()
        elif kind < 0.79:
            a.c.abort()  # TCP reset
            a.dead = True
            if a.room and rng.random() < 0.6:
                await resume(a)
        elif kind < 0.795:
            a.c.ws.transport.pause_reading()  # silent: pings go unanswered
            a.dead = True
        elif kind < 0.805:
            await safe(a.c.close())
            a.dead = True
        else:
            rep = await safe(a.c.request({"type": "ping"}))
            uncertain(a, rep)

    async def resume(a):
        """The client comes back on a random node with its token: same id, room and halves."""
        node = rng.choice([n for n in nodes if n.proc.alive() and n.name not in stopped])
        try:
            c = await asyncio.wait_for(Client.connect(node.ws_url), 2)
        except Exception:  # noqa: BLE001 - the node may be stopped or restarting
            return
        rep = await safe(c.request({"type": "resume", "id": a.id, "room": a.room,
                                    "resume": a.token}))
        if rep.get("type") == "resumed":
            counts["resumes"] += 1
            a.c, a.token, a.dead = c, rep["resume"], False
            assert rep["id"] == a.id and rep["room"] == a.room, rep
        elif rep.get("code") == "resume-failed" and rep.get("reason") == "unknown":
            # Its grace ended meanwhile (a fault stalled things): a fresh socket, no room.
            counts["refused"] += 1
            a.c, a.sid, a.dead, a.room, a.halves = c, c.id, False, None, set()
        else:
            c.abort()  # no reply or retry: the session stays away and its grace ends

    async def fault(i):
        counts["faults"] += 1
        which = i % 5
        if which == 0:
            n = rng.choice(nodes)
            n.proc.kill()
            await asyncio.sleep(0.3)
            n.start(wait=False)
        elif which == 1:
            n = rng.choice([n for n in nodes if n.proc.alive()])
            stopped.add(n.name)
            n.proc.signal(signal.SIGSTOP)
            await asyncio.sleep((TTL_MS + 2 * RECONCILE_MS) / 1000)
            n.proc.signal(signal.SIGCONT)
            await asyncio.sleep(2 * HB_MS / 1000)  # its reaped sockets are closed with 4000
            stopped.discard(n.name)
        elif which == 2:
            redis_server.kill()
            await asyncio.sleep(0.2)
            redis_server.start()
        elif which == 3:
            try:
                r.script_flush()
            except Exception:  # noqa: BLE001
                pass
        else:
            try:
                r.client_kill_filter(_type="pubsub")
            except Exception:  # noqa: BLE001
                pass

    async def main():
        for _ in range(CLIENTS):
            await new_actor()
        t0 = time.monotonic()
        t_end = t0 + 120
        fault_task = None
        fault_i = 0
        # Faults rotate back to back (each kind at least twice) while the operations run.
        while (counts["ops"] < OPS or fault_i < 10) and time.monotonic() < t_end:
            if fault_task is None or fault_task.done():
                if fault_task is not None:
                    fault_task.result()  # a broken fault is a broken test
                fault_task = asyncio.create_task(fault(fault_i))
                fault_i += 1
            live = [a for a in actors if a.alive]
            if len(live) < CLIENTS:
                await new_actor()
                continue
            ready = [a for a in live if a.c.node not in stopped]
            if not ready:
                await asyncio.sleep(0.01)
                continue
            await op(rng.choice(ready))
            counts["ops"] += 1
            await asyncio.sleep(0.002)  # spread the load over the faults
            if counts["ops"] % 500 == 0:
                print(f"  {time.monotonic() - t0:6.1f}s ops {counts['ops']} faults "
                      f"{counts['faults']} live {len(live)} stopped {sorted(stopped)}", flush=True)
        if fault_task:
            await fault_task
        for n in nodes:
            n.proc.signal(signal.SIGCONT)
            if not n.proc.alive():
                n.start(wait=False)
        # let everything settle: TTL + a reconcile, nodes ready, then a pass on demand
        for n in nodes:
            n.wait_ready(15)
        # silent clients go at the ping timeout (2 s, counted in whole seconds); the sockets of
        # a stopped or killed node at TTL + a reconcile
        # an away session (reset, drained, its node killed or reaped) at its grace's end, plus
        # a reconcile when the admin ends it (its node is gone)
        await asyncio.sleep(max(TTL_MS + GRACE_MS + 4 * RECONCILE_MS + 2 * HB_MS, 6000) / 1000)
        # clients closed by the server (4000, node killed) are dead too
        for a in actors:
            if a.c.closed is not None:
                a.dead = True
        live = [a for a in actors if a.alive and a.room]
        by_id = {a.id: a for a in live}
        status, res = admin.post("/admin/reconcile")
        assert status == 200, res

        def truth_links():
            links = set()
            for a in live:
                for p in a.halves:
                    b = by_id.get(p)
                    if b and b.room == a.room and a.id in b.halves:
                        links.add(frozenset((a.id, p)))
            return links

        links = truth_links()
        users = {x for pair in links for x in pair}
        mesh = admin.mesh()
        got = (mesh["active_users"], mesh["p2p_links"], mesh["p2p_users"])
        want = (len(live), len(links), len(users))
        viol = invariants.check(r)
        print(f"seed {seed}: {counts['ops']} ops, {counts['faults']} faults, "
              f"{len(actors)} clients ({len(live)} live), {counts['resumes']} resumes "
              f"({counts['refused']} refused), mesh {got}, truth {want}, violations {len(viol)}")
        assert viol == [], viol[:10]
        assert invariants.away(r) == (0, 0)
        assert mesh["away_sockets"] == 0
        assert counts["resumes"] > 0
        assert got == want
        for a in live:
            expected = {b.id for b in live if b.room == a.room and b is not a}
            assert a.view() == expected, (a.id, a.view() ^ expected)
        for a in actors:
            a.c.abort()  # a close handshake with hundreds of half-dead clients takes long
    asyncio.run(main())
