"""The admin under faults of Redis and of what Redis holds (docs/admin.md): a connection that
drops mid-walk, index entries and rooms that no script wrote, a lost shard, a corrupt bucket,
and the grace sweep's pace. Real redis-server (or Redis Cluster), real admin.

01 the connection drops while two lease GETs are in flight: no use of a freed error text
   (ASan build), the pass fails "unavailable" and the next one reaps both nodes
02 a dead node's socket index holds an entry whose room is invalid: it is dropped and logged,
   the other sockets reaped, mesh-status, /metrics and POST /admin/reconcile answer 200
02b a room whose members key has the wrong type: the pass counts it (rooms_failed), logs it,
   and goes on, so a drifted bucket is still repaired by stats_check
02c due entries of the away index that no script wrote: dropped by the grace sweep
03 (cluster) the slot of P:admin:totals served by nobody: the _total counters are left out of
   /metrics (and totals is null in mesh-status), never 0
04 (single Redis) the one bucket unreadable (a string at P:{#}:stats): mesh-status and /metrics
   answer 503, never zeros
05 70 away entries 10 minutes ahead: the grace sweep does not poll (ZRANGE calls counted in
   3 s after the first pass's sweep)
06 deadlines that pass while a (slowed) sweep runs: swept again 250 ms later, not at the next
   pass (ZRANGE calls counted)
07 (cluster) a node's lease, then P:nodes, unreadable (their slot served by nobody): no
   node-up event, during or after
08 an encoded NUL in the query or path: closed without an answer, with or without the token
   (libwebsockets refuses it before any route), as docs/admin.md says; a malformed escape 403"""
import asyncio
import json
import os
import re
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client import Client  # noqa: E402
from harness import Admin, http_get, parse_metrics, wait_for  # noqa: E402
import keyspace  # noqa: E402

SANITIZER = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")
FAST_ADMIN = ["--reconcile-interval-ms", "300"]
QUIET_ADMIN = ["--reconcile-interval-ms", "600000"]  # passes only when asked (and at start)
TTL_MS = 1500
FAST_NODE = ["--presence-ttl-ms", str(TTL_MS), "--heartbeat-ms", "300", "--redis-timeout-ms",
             "500"]


class CutProxy:
    """A TCP proxy to a Redis server that closes both sides of a connection when a request
    matching `pattern` (a bytes regex over the RESP the client sent) passes through, `cuts`
    times; after that it forwards everything. The matching request is not forwarded, so every
    command in flight on that connection fails with the drop."""

    def __init__(self, upstream_port, pattern, cuts=1):
        self.upstream_port = upstream_port
        self.pattern = re.compile(pattern)
        self.cuts_left = cuts
        self.cut = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.conns += [c, u]
            threading.Thread(target=self._up, args=(c, u), daemon=True).start()
            threading.Thread(target=self._down, args=(u, c), daemon=True).start()

    def _up(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    hit = self.cuts_left > 0 and self.pattern.search(data)
                    if hit:
                        self.cuts_left -= 1
                        self.cut += 1
                if hit:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    def _down(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    @staticmethod
    def _close(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.sock.close()
        self._close(*self.conns)
        for s in self.conns:
            s.close()


def authed(admin, path, method="GET"):
    status, body, _ = http_get(admin.http + path, method=method,
                               data=b"" if method == "POST" else None,
                               headers={"Authorization": f"Bearer {admin.token}"}, timeout=5)
    return status, body


@pytest.mark.single_redis("a proxy in front of one server; the cluster client is the same code")
def test_01_connection_drop_with_lease_gets_in_flight(cluster, redis_server):
    r = redis_server.client()
    r.sadd("sb:nodes", "na", "nb")  # two ids, no lease: two GETs in one batch
    # *2 $3 GET $N sb:node:<id>: the lease GETs of the node walk (not P:nodes, not buckets)
    proxy = CutProxy(redis_server.port, rb"\$3\r\nGET\r\n\$\d+\r\nsb:node:", cuts=1)
    try:
        a = Admin(proxy.url, cluster.tmpdir, args=FAST_ADMIN, wait=False)
        cluster.admins.append(a)
        wait_for(lambda: proxy.cut == 1, 10, msg="the connection cut on a lease GET")
        # the next passes (300 ms apart) read the leases again and reap both nodes
        wait_for(lambda: r.scard("sb:nodes") == 0, 10, msg="both nodes reaped after the drop")
        log = a.proc.log()
        assert not SANITIZER.search(log), log[-4000:]
        assert a.proc.alive(), log[-4000:]
        # the failure is reported as a literal, not a request's (freed) text
        assert "reconcile pass failed: unavailable\n" in log, log[-4000:]
        assert authed(a, "/admin/mesh-status")[0] == 200
    finally:
        proxy.stop()


def bucket(redis_server, room, suffix):
    return keyspace.bucket("sb", room, suffix, redis_server.cluster)


def test_02_an_invalid_index_entry_of_a_dead_node_is_dropped(cluster, redis_server, no_resume):
    """A socket index entry whose room is not a room name (no script writes one) used to fail
    the node's reap, and with it mesh-status, /metrics and every pass, for good."""
    n3 = cluster.node("n3", args=FAST_NODE)
    admin = cluster.admin(args=QUIET_ADMIN)
    r = redis_server.client()

    index = bucket(redis_server, "room1", "node:n3:sockets")
    bad = "bad!room AAAAAAAAAAAAAAAAAAAAAA"

    async def main():
        c = await Client.connect(n3.ws_url)
        await c.join("room1")
        r.sadd(index, bad)
        assert r.smembers(index) == {bad, "room1 " + c.id}
        n3.proc.kill()  # the socket stays in Redis: only the admin can remove it
        n3.killed = True
        return c.id
    sid = asyncio.run(main())
    wait_for(lambda: not r.exists("sb:node:n3"), TTL_MS / 1000 + 2, msg="n3's lease lapsed")
    wait_for(lambda: not r.exists("sb:{room1}:presence:" + sid), 2, msg="presence lapsed")
    status, body = authed(admin, "/admin/mesh-status")
    assert status == 200, body
    m = json.loads(body)
    assert m["active_users"] == 0 and m["rooms"] == 0, m
    assert m["nodes"] == [] and not m["partial"], m
    # the entry is gone with the valid one, and the node forgotten
    assert r.scard(index) == 0, r.smembers(index)
    assert not r.sismember("sb:nodes", "n3")
    status, body = authed(admin, "/metrics")
    assert status == 200, body
    status, body = authed(admin, "/admin/reconcile", method="POST")
    assert status == 200, body
    assert "reap: dropping malformed index entry of node n3" in admin.proc.log()


def test_02b_a_room_redis_refuses_does_not_stop_the_pass(cluster, redis_server):
    """room_check of a room whose members key is a string answers WRONGTYPE: the pass counts
    it, logs it and goes on, so stats_check still repairs the drifted bucket. (Planted before
    the admin starts: a POST during its first pass answers with that pass.)"""
    r = redis_server.client()
    rooms, stats = bucket(redis_server, "broken", "rooms"), bucket(redis_server, "broken", "stats")
    r.sadd(rooms, "broken")
    r.set("sb:{broken}:members", "not a hash")
    r.hset(stats, mapping={"rooms": 1, "members": 5})  # drifted: the room holds nobody
    admin = cluster.admin(args=QUIET_ADMIN)
    status, body = authed(admin, "/admin/reconcile", method="POST")
    assert status == 200, body
    res = json.loads(body)
    assert res["check_errors"] == 1, res
    assert res["stats_checked"] is True, res
    assert r.hget(stats, "members") == "0"  # repaired by stats_check
    assert "reconcile: room_check of broken refused: WRONGTYPE" in admin.proc.log()
    status, body = authed(admin, "/metrics")
    assert status == 200
    x = parse_metrics(body.decode())
    assert x["switchboard_reconcile_check_errors_total"] >= 1, x
    m = admin.mesh()
    assert m["last_reconcile"]["check_errors"] >= 1
    assert m["totals"]["check_errors"] >= 1


@pytest.mark.single_redis("maxmemory is set on the one Redis")
def test_02d_a_redis_that_says_not_now_fails_the_pass_not_a_check_error(cluster, redis_server):
    """A Redis at maxmemory refuses every room_check with OOM (the scripts may write): that is
    "not now", not a broken room. The pass fails (503) and the next one retries; check_errors,
    which operators alert on, stays 0. (Counted as check errors, an OOM spell added the number
    of rooms to it at every pass.)"""
    n = cluster.node("na")
    r = redis_server.client()

    async def main():
        c = await Client.connect(n.ws_url)
        await c.join("room1")
        admin = cluster.admin(args=QUIET_ADMIN)
        r.config_set("maxmemory", 1)
        try:
            status, body = authed(admin, "/admin/reconcile", method="POST")
        finally:
            r.config_set("maxmemory", 0)
        assert status == 503, (status, body)
        status, body = authed(admin, "/admin/reconcile", method="POST")
        assert status == 200, body
        res = json.loads(body)
        assert res["check_errors"] == 0 and res["rooms_checked"] >= 1, res
        assert admin.mesh()["totals"]["check_errors"] == 0
        await c.close()
    asyncio.run(main())


def test_02c_an_invalid_away_entry_is_dropped(cluster, redis_server):
    """The deadline index P:{T}:away holding entries no script writes (a bad room, no space):
    the grace sweep drops them (logged) instead of failing on them at every sweep."""
    admin = cluster.admin(args=FAST_ADMIN)
    r = redis_server.client()
    away = bucket(redis_server, "room1", "away")
    past = int(time.time() * 1000) - 10_000
    r.zadd(away, {"bad!room AAAAAAAAAAAAAAAAAAAAAA": past, "nospace": past})
    wait_for(lambda: r.zcard(away) == 0, 5, msg="the malformed away entries dropped")
    assert "grace: dropping a malformed entry of " + away in admin.proc.log()
    assert admin.post("/admin/reconcile")[0] == 200


TOTALS_SERIES = ("switchboard_stale_sockets_removed_total", "switchboard_stale_links_removed_total",
                 "switchboard_reconcile_runs_total", "switchboard_reconcile_check_errors_total",
                 "switchboard_invariant_violations_total")


@pytest.mark.cluster_only("a single key's shard can be lost only on a Redis Cluster")
def test_03_unread_totals_are_left_out_not_zero(cluster, redis_server):
    """On a Redis Cluster, P:admin:totals's slot served by nobody (CLUSTER DELSLOTS everywhere,
    as a lost shard): the _total counters are absent from /metrics and totals is null, never
    0 (a counter reset to Prometheus); back when the slot is served again."""
    rc = redis_server.rc
    admin = cluster.admin(args=QUIET_ADMIN)
    assert admin.post("/admin/reconcile")[0] == 200
    before = parse_metrics(authed(admin, "/metrics")[1].decode())
    assert before["switchboard_reconcile_runs_total"] >= 1, before
    slot = rc.keyslot("sb:admin:totals")
    owner = rc.unserve(slot)
    try:
        m = wait_for(lambda: (lambda m: m if "totals" in m.get("unreadable", []) else None)(
            admin.mesh()), 15, msg="totals unreadable")
        assert m["partial"] is True and m["totals"] is None, m
        status, body = authed(admin, "/metrics")
        assert status == 200, body
        text = body.decode()
        x = parse_metrics(text)
        assert x["switchboard_cluster_unreadable"] >= 1
        assert "switchboard_cluster_nodes" in x  # the rest is there
        left = [k for k in x if k.split("{")[0] in TOTALS_SERIES]
        assert left == [], left
    finally:
        rc.serve(slot, owner)
    wait_for(lambda: admin.mesh()["totals"] is not None, 15, msg="totals read again")
    after = parse_metrics(authed(admin, "/metrics")[1].decode())
    assert after["switchboard_reconcile_runs_total"] >= before["switchboard_reconcile_runs_total"]


@pytest.mark.single_redis("one bucket is the whole keyspace only on a single Redis")
def test_04_the_one_bucket_unreadable_is_a_503(cluster, redis_server):
    """A single Redis whose bucket P:{#}:stats cannot be read (a string there: bucket_read
    answers WRONGTYPE): every figure is unknown, so 503, not 200 with zeros and "1 slot
    missing"."""
    admin = cluster.admin(args=QUIET_ADMIN)
    r = redis_server.client()
    assert admin.mesh()["partial"] is False
    r.set("sb:{#}:stats", "corrupt")
    for path in ("/admin/mesh-status", "/metrics"):
        status, body = authed(admin, path)
        assert status == 503, (path, status, body[:300])
    assert "bucket_read failed" in admin.proc.log()
    r.delete("sb:{#}:stats")
    m = admin.mesh()
    assert m["partial"] is False and "missing_slots" not in m, m


def zrange_calls(redis_server):
    """ZRANGE calls Redis ran since the last reset (summed over the primaries on a cluster)."""
    if redis_server.cluster:
        rc = redis_server.rc
        return sum(rc.commandstats(p).get("zrange", 0) for p in rc.primaries())
    return redis_server.client().info("commandstats").get("cmdstat_zrange", {}).get("calls", 0)


def reset_stats(redis_server):
    if redis_server.cluster:
        redis_server.rc.reset_stats()
    else:
        redis_server.client().config_resetstat()


def sid(i):
    return f"{i:022d}"  # 22 characters, an id's shape


def test_05_away_entries_ahead_are_not_polled(cluster, redis_server):
    """70 away entries (more than the 64 a sweep reads) 10 minutes ahead: nothing is due, so
    the sweep after the pass is the last until the next pass, not one every 250 ms."""
    r = redis_server.client()
    away = bucket(redis_server, "room1", "away")
    ahead = int(time.time() * 1000) + 600_000
    r.zadd(away, {f"room1 {sid(i)}": ahead + i for i in range(70)})
    admin = cluster.admin(args=QUIET_ADMIN)
    wait_for(lambda: parse_metrics(authed(admin, "/metrics")[1].decode())
             ["switchboard_admin_lease_held"] == 1, 5, msg="the lease held")
    wait_for(lambda: admin.mesh()["last_reconcile"], 5, msg="the first pass")
    time.sleep(0.3)  # the sweep after it
    reset_stats(redis_server)
    time.sleep(3)
    calls = zrange_calls(redis_server)
    print(f"ZRANGE calls in 3 s with 70 away entries 10 min ahead: {calls}")
    assert calls <= 1, calls  # one sweep that started late on a loaded machine; the bug: 12
    assert r.zcard(away) == 70


@pytest.mark.single_redis("a proxy in front of one server slows the sweep; the timer is the same")
def test_06_a_deadline_passed_during_the_sweep_is_swept_soon(cluster, redis_server):
    """Every Redis reply 0.4 s late (a proxy), so a sweep takes over 0.8 s, and away entries
    due every 100 ms over 4 s: the earliest deadline still ahead when a sweep starts has
    passed when it ends. That gave a negative delay and no timer (nothing more until the next
    pass, here 10 minutes); it is now swept again GRACE_MIN_DELAY_MS later, and so on until
    the last one is due."""
    from harness import ReplyDelayProxy
    r = redis_server.client()
    away = bucket(redis_server, "room1", "away")
    t0 = int(time.time() * 1000)
    last = t0 + 1000 + 40 * 100
    r.zadd(away, {f"room1 {sid(i)}": t0 + 1000 + i * 100 for i in range(41)})
    r.config_resetstat()
    proxy = ReplyDelayProxy(redis_server.port, 0.4)
    try:
        admin = Admin(proxy.url, cluster.tmpdir, args=QUIET_ADMIN, wait=False)
        cluster.admins.append(admin)
        # past the last deadline, its slack and one slow sweep
        time.sleep(max(0, (last + 500 - time.time() * 1000) / 1000) + 2.5)
        calls = r.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0)
        print(f"ZRANGE calls while 41 deadlines 100 ms apart came due: {calls}")
        assert calls >= 2, calls  # 4 measured; without the clamp 1
        assert "grace: sweep incomplete" not in admin.proc.log()
    finally:
        proxy.stop()


def node_ups(admin):
    status, body = admin.get("/admin/events?limit=1000")
    assert status == 200, body
    return [e for e in body["events"] if e["type"] == "node-up"]


@pytest.mark.cluster_only("a single key's shard can be lost only on a Redis Cluster")
def test_07_no_node_up_from_a_partial_walk(cluster, redis_server):
    """On a Redis Cluster, a node's lease unreadable (its slot served by nobody), then P:nodes
    unreadable, for a few passes each, then back: no node-up at all (the nodes never changed).
    A partial walk used to log node-up with epoch "" for the unknown lease, and node-up for
    every node once the walk was whole again."""
    rc = redis_server.rc
    for n in ("na", "nb"):
        cluster.node(n)  # default TTL (15 s): no lease lapses during the outages
    admin = cluster.admin(args=FAST_ADMIN)
    wait_for(lambda: len(admin.mesh()["nodes"]) == 2, 10, msg="both nodes listed")
    time.sleep(1)  # a few passes: the lease holder has learned both nodes
    base = node_ups(admin)
    shared = {rc.keyslot(k) for k in ("sb:events", "sb:admin:lock", "sb:admin:last")}
    for key, what in (("sb:node:nb", "nodes"), ("sb:nodes", "nodes")):
        slot = rc.keyslot(key)
        assert slot not in shared, (key, slot)
        owner = rc.unserve(slot)
        try:
            wait_for(lambda: what in admin.mesh().get("unreadable", []), 10,
                     msg=f"{key} unreadable")
            time.sleep(1.2)  # four passes
        finally:
            rc.serve(slot, owner)
        wait_for(lambda: "unreadable" not in admin.mesh(), 15, msg="whole again")
        time.sleep(1.2)
        ups = node_ups(admin)
        assert ups == base, (key, [e["data"] for e in ups if e not in base])


def raw_request(port, target, token=None):
    """What the admin sends back for one raw request line (b"" when it closes unanswered)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
            if b"\r\n\r\n" in out:
                break
    return out


def test_08_an_encoded_nul_is_closed_unanswered(cluster, redis_server):
    """docs/admin.md: libwebsockets refuses an encoded NUL while it parses the request line,
    before any route or token check, and closes the connection without an answer (making it a
    400 would take a change to libwebsockets); a malformed escape is its 403. No data either
    way, with or without the token, and the admin serves on."""
    admin = cluster.admin(args=QUIET_ADMIN)
    for target in ("/admin/mesh-status?a=%00", "/admin/events?limit=1%00x",
                   "/admin/mesh-status?token=%00", "/metr%00ics"):
        for token in (admin.token, None):
            assert raw_request(admin.port, target, token) == b"", target
    for token in (admin.token, None):
        out = raw_request(admin.port, "/admin/mesh-status?a=%zz", token)
        assert out.split(b"\r\n")[0].split(b" ")[1] == b"403", out[:200]
        assert b"active_users" not in out
    assert http_get(admin.http + "/livez")[0] == 200
    assert admin.mesh()["partial"] is False
