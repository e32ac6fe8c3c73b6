"""PeerJS compatibility (issue 16, docs/peerjs.md): the PeerJS server protocol of peerjs-server
1.0.2 served by the nodes, on the native machinery (one internal room per PeerJS key). Plain
WebSocket clients speak the PeerJS wire protocol here; tests/browser runs the real peerjs client.
Real redis-server (or a Redis Cluster with SB_REDIS=cluster), several real nodes."""
import asyncio
import json
import os
import signal
import time

import pytest
import websockets

import invariants
import keyspace
from client import Client
from harness import http_get, wait_for
from rawws import RawWS

FAST = ["--presence-ttl-ms", "1500", "--heartbeat-ms", "300", "--redis-timeout-ms", "500"]
ROOM = "~pj.peerjs"


class PJ(Client):
    """A PeerJS client's socket (tests/client.py's reader and expect; no welcome: OPEN)."""

    @classmethod
    async def connect(cls, node, id_, token="tok", key="peerjs", path="/peerjs", query=None,
                      open_=True, **kw):
        q = query if query is not None else f"key={key}&id={id_}&token={token}"
        ws = await websockets.connect(f"ws://127.0.0.1:{node.port}{path}/peerjs?{q}",
                                      ping_interval=None, max_size=None, **kw)
        c = cls(ws)
        c.pj_id = id_
        if open_:
            await c.expect("OPEN")
        return c


def run(coro):
    return asyncio.run(coro)


def bucket_stats(redis_server):
    """The PeerJS share and the totals of the key's bucket, P:{T}:stats (admin-visible)."""
    r = redis_server.client()
    tag = keyspace.bucket_tag(ROOM, redis_server.cluster)
    h = r.hgetall(f"sb:{{{tag}}}:stats")
    return {k: int(h.get(k, 0)) for k in ("members", "links", "away", "pj_members", "pj_links",
                                          "pj_away")}


def consistent(redis_server, presence=True):
    bad = invariants.check(redis_server.client(), "sb", presence=presence)
    assert bad == [], "\n".join(bad)


def offer(src_conn="dc_1", sdp="v=0 offer"):
    return {"type": "data", "connectionId": src_conn, "sdp": {"type": "offer", "sdp": sdp},
            "browser": "test", "label": "x", "reliable": True, "serialization": "binary"}


def test_01_claim_open_and_relay_between_nodes(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n2, "bob", token="tb")
        # OFFER, ANSWER, CANDIDATE between two nodes; src is the server's word, payload the
        # client's bytes, unknown fields dropped
        await a.send('{"type":"OFFER","dst":"bob","src":"mallory","extra":1,'
                     '"payload":{"connectionId":"dc_1","sdp":{"type":"offer","sdp":"v=0 o"},'
                     '"n":1.50}}')
        m = await b.expect("OFFER")
        assert m == {"type": "OFFER", "src": "alice", "dst": "bob",
                     "payload": {"connectionId": "dc_1", "sdp": {"type": "offer", "sdp": "v=0 o"},
                                 "n": 1.50}}
        raw = [x for x in b.seen if x.get("type") == "OFFER"]
        assert raw
        await b.send({"type": "ANSWER", "dst": "alice",
                      "payload": {"connectionId": "dc_1", "sdp": {"type": "answer"}}})
        m = await a.expect("ANSWER")
        assert m["src"] == "bob" and m["dst"] == "alice"
        await a.send({"type": "CANDIDATE", "dst": "bob",
                      "payload": {"connectionId": "dc_1", "candidate": {"candidate": "c1"}}})
        m = await b.expect("CANDIDATE")
        assert m["payload"]["candidate"] == {"candidate": "c1"} and m["src"] == "alice"
        # HEARTBEAT and unknown types: nothing relayed, socket kept
        await a.send({"type": "HEARTBEAT"})
        await a.send({"type": "WHATEVER", "dst": "bob", "payload": {}})
        await b.none_of(None, wait=0.3)
        # never any native message
        for c in (a, b):
            assert all(x["type"] in ("OPEN", "OFFER", "ANSWER", "CANDIDATE") for x in c.seen), \
                c.seen
        # the link: both halves seen by the nodes, counted once (the PeerJS share too)
        wait_for(lambda: bucket_stats(redis_server)["pj_links"] == 1, 3, msg="pj link")
        s = bucket_stats(redis_server)
        assert s["links"] == 1 and s["pj_members"] == 2 and s["members"] == 2
        consistent(redis_server)
        # LEAVE between them takes the link down; relayed to the other side
        await a.send({"type": "LEAVE", "dst": "bob"})
        m = await b.expect("LEAVE")
        assert m["src"] == "alice" and m["dst"] == "bob"
        wait_for(lambda: bucket_stats(redis_server)["pj_links"] == 0, 3, msg="link down")
        assert bucket_stats(redis_server)["links"] == 0
        await a.close()
        await b.close()
        wait_for(lambda: bucket_stats(redis_server)["pj_members"] == 0, 3, msg="ids freed")
        consistent(redis_server)

    run(main())
