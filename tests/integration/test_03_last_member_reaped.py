"""Issue 11, fault 1 (use after free): a `left` event for the node's last local member of a room
(the admin reaped it while the node was stopped) used to free the room in the middle of
applying the event (`apply_event` -> `expire_session` dropped the room's last reference, then
`r->seq` was written and `drain_buffer` went on). Expected: the node closes that socket with
4000 and keeps serving; under the ASan build, no report (the teardown fails the test on one)."""
import asyncio
import signal

import lua_text
from client import Client
from harness import http_get, wait_for
from test_03_presence import FAST, reap_like_admin

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:")


def ghost(i):
    """A socket id (22 characters of [A-Za-z0-9_-]) that no client holds."""
    return f"ghost{i}".ljust(22, "x")


def join_in_redis(r, room, sid, node):
    """room_join for a socket that exists only in Redis, listed under node (as a socket whose
    removal has not reached Redis yet would be): keeps node in the room's nodes count. The
    KEYS and ARGV are lua/room_join.lua's (keep them in step with its legend)."""
    sha = r.script_load(lua_text.script("room_join"))
    res = r.evalsha(sha, 2, f"sb:{{{room}}}:members", "sb:{#}:stats", "sb", room, sid, node,
                    "e0", "{}", 60000, 64)
    assert res[0] == "ok", res


def reap_in_redis(r, sockets, node):
    """The admin's reap of sockets [(room, sid)] of node: their presence keys deleted (as if
    they had lapsed), then test_03_presence's stand-in for the admin."""
    for room, sid in sockets:
        r.delete(f"sb:{{{room}}}:presence:{sid}")
    return reap_like_admin(r, node)


def test_01_left_event_for_last_local_member(cluster, redis_server, no_resume):
    """The node is running when the `left` arrives on its pub/sub connection. room_remove tells
    only the nodes still in the room, so node a must still count there when its last local
    socket is reaped: a second member listed under node a, whose removal has not reached Redis
    (made here with room_join directly), stands for the socket that just closed on node a. The
    event goes through the view's event path, not through a resync."""
    a, b = cluster.node("na", args=FAST), cluster.node("nb", args=FAST)
    r = redis_server.client()

    async def main():
        rooms = ["W1", "W2", "W3"]
        xs, ys = [], []
        for i, room in enumerate(rooms):
            y = await Client.connect(b.ws_url)
            await y.join(room)
            x = await Client.connect(a.ws_url)
            await x.join(room)
            await y.expect("peer-joined", id=x.id)
            join_in_redis(r, room, ghost(i), "na")
            await y.expect("peer-joined", id=ghost(i))
            await x.expect("peer-joined", id=ghost(i))
            xs.append(x)
            ys.append(y)
        assert reap_in_redis(r, [(room, x.id) for room, x in zip(rooms, xs)], "na") == 3
        for x, y in zip(xs, ys):
            assert (await y.expect("peer-left", id=x.id))["reason"] == "expired"
            code, _ = await x.wait_closed(5)
            assert code == 4000
        await serves(a, rooms[0], ys[0])
        assert reap_in_redis(r, [(room, ghost(i)) for i, room in enumerate(rooms)], "na") == 3
        for y in ys:
            await y.close()
    asyncio.run(main())
    log = a.proc.log()
    assert not any(mark in log for mark in SANITIZER_MARKS), log[-4000:]
    assert a.proc.alive()


async def serves(a, room, y):
    """Node a is alive and serves: health, a new socket in room, signals both ways with y."""
    assert a.proc.alive(), a.proc.log()[-3000:]
    await asyncio.to_thread(wait_for, lambda: http_get(a.http + "/readyz", timeout=0.5)[0] == 200,
                            5, 0.05, "node a ready")
    z = await Client.connect(a.ws_url)
    await z.join(room)
    await y.expect("peer-joined", id=z.id)
    await z.send({"type": "signal", "to": y.id, "data": {"n": 1}})
    assert (await y.expect("signal"))["from"] == z.id
    await y.send({"type": "signal", "to": z.id, "data": {"n": 2}})
    assert (await z.expect("signal"))["from"] == y.id
    await z.close()


def test_02_last_local_member_reaped_during_stall(cluster, redis_server, no_resume):
    """The issue's own scenario: the admin reaps the node's last local member of each room
    while the node is stopped. On resume the node's pub/sub probe has timed out, so it learns
    of the removal by re-reading the rooms (the view's resync path), not by a `left` event (none
    is sent to a node with no member left in the room); test_01 covers the event path."""
    a, b = cluster.node("na", args=FAST), cluster.node("nb", args=FAST)
    r = redis_server.client()

    async def main():
        # Rooms where node a holds exactly one socket (its last local member), each with a
        # peer on node b so the room lives on in Redis and node a is told of the removal.
        rooms = ["V1", "V2", "V3"]
        xs, ys = [], []
        for room in rooms:
            y = await Client.connect(b.ws_url)
            await y.join(room)
            x = await Client.connect(a.ws_url)
            await x.join(room)
            await y.expect("peer-joined", id=x.id)
            xs.append(x)
            ys.append(y)
        a.proc.signal(signal.SIGSTOP)
        try:
            wait_for(lambda: all(not r.exists(f"sb:{{{room}}}:presence:{x.id}")
                                 for room, x in zip(rooms, xs)), 5, msg="presence expired")
            # the admin's reap: `left` (expired) goes out to every node of the room, node a's
            # included, and waits in its pub/sub connection until it resumes
            assert reap_like_admin(r, "na") == len(rooms)
            for x, y in zip(xs, ys):
                m = await y.expect("peer-left", id=x.id)
                assert m["reason"] == "expired"
        finally:
            a.proc.signal(signal.SIGCONT)
        for x in xs:
            code, _ = await x.wait_closed(5)
            assert code == 4000
        await serves(a, rooms[0], ys[0])
        for y in ys:
            await y.close()
    asyncio.run(main())
    log = a.proc.log()
    assert not any(mark in log for mark in SANITIZER_MARKS), log[-4000:]
    assert a.proc.alive()
