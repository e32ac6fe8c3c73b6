"""Riding out the failover of one Redis Cluster primary, as a client sees it: shared by the
native (test_cluster_lb_rediscluster.py) and the compose (compose_cluster_stack.py) tests."""
import asyncio
import time


async def ride_failover(a, b, others, promoted_now, each=None, limit_s=60):
    """Call right after killing the primary of a's and b's room. Every 200 ms: a signals b
    (only `signal-ack` or `unavailable` may come back), each (room, x, y) of `others` (rooms on
    other primaries) signals and must be acked, and `each()` runs if given; until
    promoted_now() has been true once and a's signal is acked again. Returns (seconds to the
    promotion, seconds until the room worked again, {reply kind: count})."""
    t0 = time.monotonic()
    promoted = back = None
    replies, n = {}, 0
    while time.monotonic() - t0 < limit_s:
        n += 1
        rep = await a.request({"type": "signal", "to": b.id, "data": n}, timeout=5)
        kind = rep["type"] if rep["type"] != "error" else rep["code"]
        replies[kind] = replies.get(kind, 0) + 1
        assert kind in ("signal-ack", "unavailable"), rep
        for room, x, y in others:  # the other shards never fail
            rep = await x.request({"type": "signal", "to": y.id, "data": n})
            assert rep["type"] == "signal-ack", (room, rep)
        if each:
            each()
        if promoted is None and promoted_now():
            promoted = time.monotonic() - t0
        if promoted is not None and kind == "signal-ack":
            back = time.monotonic() - t0
            break
        await asyncio.sleep(0.2)
    assert promoted is not None, f"no replica took over within {limit_s}s: {replies}"
    assert back is not None, f"the room never worked again within {limit_s}s: {replies}"
    return promoted, back, replies
