"""PeerJS compatibility (issue 16, docs/peerjs.md): the PeerJS server protocol of peerjs-server
1.0.2 served by the nodes, on the native machinery (one internal room per PeerJS key). Plain
WebSocket clients speak the PeerJS wire protocol here; tests/browser runs the real peerjs client.
Real redis-server (or a Redis Cluster with SB_REDIS=cluster), several real nodes."""
import asyncio
import contextlib
import json
import re
import signal
import time

import pytest
import websockets

import invariants
import keyspace
from client import Client
from harness import http_get
from rawws import RawWS, frame

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
        OPEN.append(c)
        if open_:
            await c.expect("OPEN")
        return c


OPEN = []  # every socket of the running test: reset at its end, so the test does not wait


def run(coro):
    async def main():
        try:
            await coro
        finally:
            for c in OPEN:
                if c.closed is None:
                    c.abort()
            OPEN.clear()
    asyncio.run(main())


async def until(cond, timeout=3.0, msg="condition"):
    """wait_for inside a coroutine: polls without blocking the event loop (a socket aborted
    just before is only closed by the loop)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {msg}")
        await asyncio.sleep(0.02)


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
        # the payload's bytes as the client wrote them (1.50, an escape, spaces), seen raw
        rb = RawWS(n2.port, path="/peerjs/peerjs?key=peerjs&id=rawbob&token=t")
        assert rb.status == 101
        assert rb.recv_frame() == (1, b'{"type":"OPEN"}')
        await a.send('{"type":"OFFER","dst":"rawbob","payload":{"n":1.50, "s":"\\u00e9"}}')
        op, data = await asyncio.get_running_loop().run_in_executor(None, rb.recv_frame)
        assert data == (b'{"type":"OFFER","src":"alice","dst":"rawbob",'
                        b'"payload":{"n":1.50, "s":"\\u00e9"}}'), data
        rb.send_raw(frame(8, b"\x03\xe8"))  # a close frame, 1000: the id is freed at once
        code, _ = await asyncio.get_running_loop().run_in_executor(None, rb.recv_until_close)
        assert code == 1000
        rb.close()
        await until(lambda: bucket_stats(redis_server)["pj_members"] == 2, 3, msg="rawbob freed")
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
        await until(lambda: bucket_stats(redis_server)["pj_links"] == 1, 3, msg="pj link")
        s = bucket_stats(redis_server)
        assert s["links"] == 1 and s["pj_members"] == 2 and s["members"] == 2
        consistent(redis_server)
        # LEAVE between them takes the link down; relayed to the other side
        await a.send({"type": "LEAVE", "dst": "bob"})
        m = await b.expect("LEAVE")
        assert m["src"] == "alice" and m["dst"] == "bob"
        await until(lambda: bucket_stats(redis_server)["pj_links"] == 0, 3, msg="link down")
        assert bucket_stats(redis_server)["links"] == 0
        # an ANSWER with a connection id nobody offered forms no link
        await a.send({"type": "ANSWER", "dst": "bob", "payload": {"connectionId": "zz"}})
        await b.expect("ANSWER")
        await b.send({"type": "ANSWER", "dst": "alice", "payload": {"connectionId": "zz"}})
        await a.expect("ANSWER")
        await asyncio.sleep(0.3)
        assert bucket_stats(redis_server)["pj_links"] == 0
        r = redis_server.client()
        assert not r.exists(f"sb:{{{ROOM}}}:links:alice") and \
            not r.exists(f"sb:{{{ROOM}}}:links:bob")
        # formed again (the other way round, a new connection), then ended by a departure
        await b.send({"type": "OFFER", "dst": "alice", "payload": offer("mc_2")})
        await a.expect("OFFER")
        await a.send({"type": "ANSWER", "dst": "bob", "payload": {"connectionId": "mc_2"}})
        await b.expect("ANSWER")
        await until(lambda: bucket_stats(redis_server)["pj_links"] == 1, 3, msg="link again")
        await a.close()
        await until(lambda: bucket_stats(redis_server)["pj_links"] == 0, 3, msg="departure")
        assert bucket_stats(redis_server)["links"] == 0
        consistent(redis_server)
        await b.close()
        await until(lambda: bucket_stats(redis_server)["pj_members"] == 0, 3, msg="ids freed")
        consistent(redis_server)

    run(main())


def test_02_id_taken_on_the_same_and_on_another_node(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        for node in (n1, n2):
            x = await PJ.connect(node, "alice", token="other", open_=False)
            m = await x.expect("ID-TAKEN")
            assert m == {"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}
            assert (await x.wait_closed())[0] == 1000
            assert not any(y["type"] == "OPEN" for y in x.seen)
        # the holder is untouched and still relays
        b = await PJ.connect(n2, "bob", token="tb")
        await b.send({"type": "OFFER", "dst": "alice", "payload": offer()})
        assert (await a.expect("OFFER"))["src"] == "bob"
        assert a.closed is None
        assert bucket_stats(redis_server)["pj_members"] == 2
        consistent(redis_server)

    run(main())


def test_03_bad_input_gets_a_clear_error_and_harms_no_other_socket(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST + ["--max-message-bytes", "4096"]), \
        cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n2, "bob", token="tb")

        async def refused(query, msg):
            x = await PJ.connect(n1, None, query=query, open_=False)
            m = await x.expect("ERROR")
            assert m == {"type": "ERROR", "payload": {"msg": msg}}, m
            assert (await x.wait_closed())[0] == 1000
            return x

        none = "No id, token, or key supplied to websocket server"
        await refused("key=peerjs&id=x1", none)
        await refused("key=peerjs&token=t", none)
        await refused("id=x1&token=t", none)
        await refused("key=peerjs&id=&token=t", none)
        await refused("key=nope&id=x1&token=t", "Invalid key provided")
        await refused("key=" + "k" * 40 + "&id=x1&token=t", "Invalid key provided")
        for bad in ("a+b", "a%20b", "-ab", "ab-", "a--b", "a.b", "x" * 65, "%C3%A9t%C3%A9"):
            await refused(f"key=peerjs&id={bad}&token=t", "Invalid id")
        # percent-encoded values are decoded: "al%69ce2" is alice2
        c = await PJ.connect(n1, None, query="key=peer%6As&id=al%69ce2&token=t%2Bz")
        await c.send({"type": "OFFER", "dst": "bob", "payload": offer()})
        assert (await b.expect("OFFER"))["src"] == "alice2"
        # not JSON, not an object, no type, a binary frame: ERROR, the socket stays
        for junk in ("{nope", "[1,2]", '{"dst":"bob"}', '"OFFER"', b"\x00\x01"):
            await a.send(junk)
            m = await a.expect("ERROR")
            assert m == {"type": "ERROR", "payload": {"msg": "Invalid message"}}
        assert a.closed is None
        # a bad dst or none: dropped; src cannot be forged (test_01); other types ignored
        await a.send({"type": "OFFER", "dst": "not valid!", "payload": {}})
        await a.send({"type": "OFFER", "payload": {}})
        await b.none_of(None, wait=0.3)
        # oversized: close 1009, others keep relaying
        big = PJ.connect(n1, "big", token="tbig")
        big = await big
        await big.send(json.dumps({"type": "OFFER", "dst": "bob", "payload": "x" * 5000}))
        assert (await big.wait_closed())[0] == 1009
        await a.send({"type": "CANDIDATE", "dst": "bob", "payload": {"c": 1}})
        assert (await b.expect("CANDIDATE"))["src"] == "alice"
        await b.send({"type": "CANDIDATE", "dst": "alice", "payload": {"c": 2}})
        assert (await a.expect("CANDIDATE"))["payload"] == {"c": 2}
        # a native client on the same node is not disturbed either, and never sees PeerJS
        consistent(redis_server)

    run(main())


def test_04_reclaim_after_a_reset_on_another_node_gets_the_queue_after_open(cluster,
                                                                              redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n2, "bob", token="tb")
        a.abort()  # TCP reset: the id stays for the grace (away)
        await until(lambda: bucket_stats(redis_server)["pj_away"] == 1, 5, msg="alice away")
        assert bucket_stats(redis_server)["pj_members"] == 2
        # messages to the away id are queued, in order
        for i in range(3):
            await b.send({"type": "CANDIDATE", "dst": "alice", "payload": {"i": i}})
        await asyncio.sleep(0.3)
        # another token cannot take it
        x = await PJ.connect(n2, "alice", token="thief", open_=False)
        await x.expect("ID-TAKEN")
        # the same token takes it back on the other node: OPEN, then the queue
        a2 = await PJ.connect(n2, "alice", token="ta", open_=False)
        await a2.expect("OPEN")
        got = [await a2.expect("CANDIDATE") for _ in range(3)]
        assert [m["payload"]["i"] for m in got] == [0, 1, 2]
        assert a2.seen[0]["type"] == "OPEN" and all(m["src"] == "bob" for m in got)
        assert bucket_stats(redis_server)["pj_away"] == 0
        assert bucket_stats(redis_server)["pj_members"] == 2
        # and relays both ways
        await a2.send({"type": "OFFER", "dst": "bob", "payload": offer()})
        assert (await b.expect("OFFER"))["src"] == "alice"
        consistent(redis_server)

    run(main())


def test_05_reclaim_while_the_old_socket_is_open_closes_it_4000(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        for node in (n2, n1):  # on another node, then on the same one
            old = await PJ.connect(n1, "alice", token="ta")
            new = await PJ.connect(node, "alice", token="ta")
            assert (await old.wait_closed())[0] == 4000
            b = await PJ.connect(n2, "bob", token="tb")
            await b.send({"type": "OFFER", "dst": "alice", "payload": offer()})
            assert (await new.expect("OFFER"))["src"] == "bob"
            await new.close()
            await b.close()
            await until(lambda: bucket_stats(redis_server)["pj_members"] == 0, 3, msg="freed")
        consistent(redis_server)

    run(main())


def test_06_a_message_to_an_id_that_connects_a_second_later_is_delivered(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        await a.send({"type": "OFFER", "dst": "late", "payload": offer("dc_9")})
        await a.send({"type": "CANDIDATE", "dst": "late", "payload": {"n": 1}})
        # LEAVE and EXPIRE to an unconnected id are dropped
        await a.send({"type": "LEAVE", "dst": "late"})
        await asyncio.sleep(1.0)
        late = await PJ.connect(n2, "late", token="tl", open_=False)
        await late.expect("OPEN")
        m1 = await late.expect("OFFER")
        m2 = await late.expect("CANDIDATE")
        assert m1["src"] == "alice" and m1["payload"]["connectionId"] == "dc_9"
        assert m2["payload"] == {"n": 1}
        assert [m["type"] for m in late.seen] == ["OPEN", "OFFER", "CANDIDATE"]
        await late.none_of("LEAVE", wait=0.3)
        # the sender gets no EXPIRE: delivered in time
        await a.none_of("EXPIRE", wait=1.5)
        consistent(redis_server)

    run(main())


def test_07_expire_after_the_timeout(cluster, redis_server):
    args = FAST + ["--peerjs-expire-timeout-ms", "500"]
    n1, n2 = cluster.node("n1", args=args), cluster.node("n2", args=args)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        t0 = time.monotonic()
        await a.send({"type": "OFFER", "dst": "ghost", "payload": offer()})
        await a.send({"type": "CANDIDATE", "dst": "ghost", "payload": {}})
        await a.send({"type": "OFFER", "dst": "ghost2", "payload": offer()})
        got = [await a.expect("EXPIRE", timeout=4) for _ in range(2)]
        assert time.monotonic() - t0 >= 0.45
        assert sorted(m["src"] for m in got) == ["ghost", "ghost2"]
        assert all(m["dst"] == "alice" for m in got)
        await a.none_of("EXPIRE", wait=1.0)  # one per (src, dst) pair
        # dropped: ghost connecting now gets nothing queued
        g = await PJ.connect(n2, "ghost", token="tg")
        await g.none_of(None, wait=0.4)
        consistent(redis_server)
        assert not [k for k in redis_server.client().scan_iter("sb:{~pj.peerjs}:pjq*")]

    run(main())


def test_08_alive_timeout_closes_a_silent_socket_and_frees_the_id(cluster, redis_server):
    n1 = cluster.node("n1", args=FAST + ["--peerjs-alive-timeout-ms", "1500"])

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n1, "bob", token="tb")
        t0 = time.monotonic()
        for _ in range(5):  # bob's heartbeats keep him
            await asyncio.sleep(0.5)
            await b.send({"type": "HEARTBEAT"})
        code = (await a.wait_closed(timeout=3))[0]
        assert code == 1000 and time.monotonic() - t0 >= 1.4
        assert b.closed is None
        # freed at once (not away): another token may claim it
        await until(lambda: bucket_stats(redis_server)["pj_members"] == 1, 3, msg="alice freed")
        assert bucket_stats(redis_server)["pj_away"] == 0
        c = await PJ.connect(n1, "alice", token="new")
        assert c.closed is None
        consistent(redis_server)

    run(main())


def test_09_http_routes_and_cors(cluster, redis_server):
    n1 = cluster.node("n1", args=FAST)
    n2 = cluster.node("n2", args=FAST + ["--peerjs-discovery", "true",
                                         "--peerjs-path", "/signal/pj",
                                         "--allowed-origin", "https://ok.example"])
    st, body, h = http_get(n1.http + "/peerjs")
    assert st == 200 and json.loads(body) == {
        "name": "PeerJS Server",
        "description": "A server side element to broker connections between PeerJS clients.",
        "website": "https://peerjs.com/"}
    assert http_get(n1.http + "/peerjs/")[0] == 200
    ids = set()
    for _ in range(3):
        st, body, h = http_get(n1.http + "/peerjs/peerjs/id", headers={"Origin": "http://x.ex"})
        assert st == 200 and h["content-type"].startswith("text/html")
        u = body.decode()
        assert len(u) == 36 and u[14] == "4" and u[19] in "89ab" and u.count("-") == 4
        assert h["access-control-allow-origin"] == "http://x.ex" and h["vary"] == "Origin"
        ids.add(u)
    assert len(ids) == 3
    # discovery off: 401
    assert http_get(n1.http + "/peerjs/peerjs/peers")[0] == 401
    # preflight
    st, body, h = http_get(n1.http + "/peerjs/peerjs/id", method="OPTIONS",
                           headers={"Origin": "http://x.ex",
                                    "Access-Control-Request-Method": "GET",
                                    "Access-Control-Request-Headers": "x-a"})
    assert st == 204 and h["access-control-allow-origin"] == "http://x.ex"
    assert "GET" in h["access-control-allow-methods"] and h["access-control-allow-headers"] == "x-a"
    # no Origin: no CORS header; off-path: 404; the WebSocket path over plain HTTP: 426
    st, _, h = http_get(n1.http + "/peerjs/peerjs/id")
    assert st == 200 and "access-control-allow-origin" not in h
    assert http_get(n1.http + "/peerjs/peerjs/nope")[0] == 404
    assert http_get(n1.http + "/peerjs/peerjs")[0] == 426
    # another path, discovery on, an origin list: an origin outside it gets no CORS header
    assert http_get(n2.http + "/peerjs")[0] == 404
    st, _, h = http_get(n2.http + "/signal/pj/k/id", headers={"Origin": "https://evil.example"})
    assert st == 200 and "access-control-allow-origin" not in h
    st, _, h = http_get(n2.http + "/signal/pj/k/id", headers={"Origin": "https://ok.example"})
    assert h["access-control-allow-origin"] == "https://ok.example"

    async def main():
        st, body, _ = http_get(n2.http + "/signal/pj/peerjs/peers")
        assert st == 200 and json.loads(body) == []
        a = await PJ.connect(n2, "alice", path="/signal/pj", token="ta",
                             origin="https://ok.example")
        b = await PJ.connect(n1, "bob", token="tb")
        st, body, h = http_get(n2.http + "/signal/pj/peerjs/peers")
        assert st == 200 and sorted(json.loads(body)) == ["alice", "bob"]
        # the WebSocket under the origin list
        with pytest.raises(Exception):
            await PJ.connect(n2, "carol", path="/signal/pj", token="tc",
                             origin="https://evil.example")
        await a.close()
        await b.close()

    run(main())


def test_10_deliberate_ends_free_the_id_at_once(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n2, "bob", token="tb")
        # LEAVE without dst: the id is given up, the socket closed
        await a.send({"type": "LEAVE"})
        assert (await a.wait_closed())[0] == 1000
        await until(lambda: bucket_stats(redis_server)["pj_members"] == 1, 3, msg="alice left")
        a2 = await PJ.connect(n2, "alice", token="another")
        # a close frame 1000 frees it too
        await a2.close()
        await until(lambda: bucket_stats(redis_server)["pj_members"] == 1, 3, msg="alice closed")
        assert bucket_stats(redis_server)["pj_away"] == 0
        a3 = await PJ.connect(n1, "alice", token="third")
        assert a3.closed is None and b.closed is None
        consistent(redis_server)

    run(main())


def test_11_auth_jwt_in_a_cookie_or_the_query(cluster, redis_server, tmp_path):
    from test_06_auth import claims, make_jwt, secret_file
    n1 = cluster.node("n1", args=FAST + ["--auth-secret-file", secret_file(tmp_path)])
    good = make_jwt(claims(sub="u1"))

    async def main():
        # no JWT, a bad one, one for another room: unauthorized, closed, nothing written
        for headers in ({}, {"Cookie": "switchboard_jwt=" + make_jwt(claims(), secret=b"x" * 40)},
                        {"Cookie": "switchboard_jwt=" + make_jwt(claims(room="other"))}):
            x = await PJ.connect(n1, "alice", token="ta", open_=False, extra_headers=headers)
            assert await x.expect("ERROR") == {"type": "ERROR",
                                               "payload": {"msg": "unauthorized"}}
            assert (await x.wait_closed())[0] == 1008
        assert bucket_stats(redis_server)["pj_members"] == 0
        # the cookie among others, or the query parameter jwt: claimed
        a = await PJ.connect(n1, "alice", token="ta",
                             extra_headers={"Cookie": f"a=1; switchboard_jwt={good}; b=2"})
        b = await PJ.connect(n1, "bob", query=f"key=peerjs&id=bob&token=tb&jwt={good}")
        c = await PJ.connect(n1, "carol", token="tc", extra_headers={
            "Cookie": "switchboard_jwt=" + make_jwt(claims(room=ROOM))})
        await a.send({"type": "OFFER", "dst": "bob", "payload": offer()})
        assert (await b.expect("OFFER"))["src"] == "alice"
        # the token stays the reclaim secret: the right JWT with another token is ID-TAKEN
        x = await PJ.connect(n1, "alice", token="other", open_=False,
                             extra_headers={"Cookie": f"switchboard_jwt={good}"})
        await x.expect("ID-TAKEN")
        assert c.closed is None
        consistent(redis_server)

    run(main())


def test_12_native_and_peerjs_side_by_side_on_the_same_nodes(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n2, "bob", token="tb")
        # a native socket whose id is also a valid PeerJS id (most random ids are)
        pj_id = re.compile(r"[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*")
        c1 = await Client.connect(n1.ws_url)
        while not pj_id.fullmatch(c1.id):
            await c1.close()
            c1 = await Client.connect(n1.ws_url)
        c2 = await Client.connect(n2.ws_url)
        await c1.join("R")
        await c2.join("R")
        await c1.expect("peer-joined", id=c2.id)
        # a PeerJS id equal to a native socket's id on the same node touches neither
        twin = await PJ.connect(n1, c1.id, token="tw")
        await c1.request({"type": "signal", "to": c2.id, "data": {"x": 1}})
        assert (await c2.expect("signal"))["from"] == c1.id
        await a.send({"type": "OFFER", "dst": "bob", "payload": offer()})
        assert (await b.expect("OFFER"))["src"] == "alice"
        await b.send({"type": "CANDIDATE", "dst": c1.id, "payload": {}})
        assert (await twin.expect("CANDIDATE"))["src"] == "bob"
        await c1.none_of("CANDIDATE", wait=0.3)
        s = bucket_stats(redis_server) if not redis_server.cluster else None
        if s is not None:  # one bucket on a single Redis: the totals include both
            assert s["members"] == 5 and s["pj_members"] == 3
        for x in (a, b, twin):
            assert all(m["type"] in ("OPEN", "OFFER", "CANDIDATE") for m in x.seen), x.seen
        for x in (c1, c2):
            assert not any(m.get("type", "").isupper() for m in x.seen), x.seen
        await c1.close()
        await c2.close()
        # a close handshake ends before the node's leave script has run: wait for the room to go
        r = redis_server.client()
        await until(lambda: not r.exists("sb:{R}:members"), 3, msg="room R emptied")
        consistent(redis_server)

    run(main())


def test_13_node_killed_the_id_is_reclaimed_on_another_node(cluster, redis_server):
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n2, "bob", token="tb")
        n1.proc.signal(signal.SIGKILL)
        n1.proc.p.wait()
        n1.killed = True
        # PeerJS's reconnect(): the same id and token on a node that is alive
        a2 = await PJ.connect(n2, "alice", token="ta")
        await b.send({"type": "OFFER", "dst": "alice", "payload": offer()})
        assert (await a2.expect("OFFER"))["src"] == "bob"
        x = await PJ.connect(n2, "alice", token="other", open_=False)
        await x.expect("ID-TAKEN")
        assert bucket_stats(redis_server)["pj_members"] == 2
        consistent(redis_server)
        a.abort()

    run(main())


def test_14_the_nodes_last_connection_slot_answers_the_concurrent_limit(cluster, redis_server):
    n1 = cluster.node("n1", args=FAST + ["--max-connections", "3",
                                         "--max-connections-per-ip", "3"])

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n1, "bob", token="tb")
        x = await PJ.connect(n1, "carol", token="tc", open_=False)
        assert await x.expect("ERROR") == {
            "type": "ERROR", "payload": {"msg": "Server has reached its concurrent user limit"}}
        assert (await x.wait_closed())[0] == 1000
        await a.send({"type": "OFFER", "dst": "bob", "payload": offer()})
        assert (await b.expect("OFFER"))["src"] == "alice"
        await a.close()
        y = await PJ.connect(n1, "carol", token="tc")  # a slot is free again
        assert y.closed is None

    run(main())


def test_15_path_off_and_no_grace(cluster, redis_server):
    off = cluster.node("off", args=FAST + ["--peerjs-path", "off"])
    for p in ("/peerjs", "/peerjs/peerjs/id", "/peerjs/peerjs/peers"):
        assert http_get(off.http + p)[0] == 404, p
    rw = RawWS(off.port, path="/peerjs/peerjs?key=peerjs&id=a&token=t")
    assert rw.status == 404
    rw.close()
    n1 = cluster.node("n1", args=FAST + ["--resume-grace-ms", "0"])

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        a.abort()  # without a grace a lost socket frees its id at once
        await until(lambda: bucket_stats(redis_server)["pj_members"] == 0, 3, msg="freed")
        assert bucket_stats(redis_server)["pj_away"] == 0
        b = await PJ.connect(n1, "alice", token="another")
        assert b.closed is None
        consistent(redis_server)

    run(main())


def test_16_order_is_kept_behind_a_queued_message(cluster, redis_server):
    n1 = cluster.node("n1", args=FAST)

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n1, "bob", token="tb")  # on the same node: no Redis on the way
        # The first goes through Redis (nobody has that id: queued); those behind it follow it
        # there and come back to this node in order ("here"), then the rest go directly.
        await a.send({"type": "OFFER", "dst": "nobody", "payload": offer()})
        for i in range(20):
            await a.send({"type": "CANDIDATE", "dst": "bob", "payload": {"i": i}})
        got = [(await b.expect("CANDIDATE"))["payload"]["i"] for _ in range(20)]
        assert got == list(range(20))
        consistent(redis_server)

    run(main())


@pytest.mark.single_redis("kills the one Redis; on a cluster the key's shard may be another")
def test_17_redis_down_at_claim_is_retry_later(cluster, redis_server):
    n1 = cluster.node("n1", args=FAST)
    redis_server.kill()

    async def main():
        x = await PJ.connect(n1, "alice", token="ta", open_=False)
        assert await x.expect("ERROR") == {"type": "ERROR",
                                           "payload": {"msg": "Server unavailable, retry"}}
        assert (await x.wait_closed())[0] == 1013
        redis_server.start()
        await until(n1.ready, 15, msg="node ready again")
        a = await PJ.connect(n1, "alice", token="ta")
        assert a.closed is None
        consistent(redis_server)

    run(main())


@pytest.mark.single_redis("restarts the one Redis empty")
def test_18_a_link_is_counted_again_after_redis_lost_its_data(cluster, redis_server):
    """After a data loss each node re-asserts its sockets with the halves they hold; the half of
    whichever comes back first, towards the other, cannot be written then (not a member yet).
    Its node re-sends it when the other is back (docs/peerjs.md), so the link is counted again.
    The order is forced: n2 is stopped until n1 has re-asserted alice."""
    n1, n2 = cluster.node("n1", args=FAST), cluster.node("n2", args=FAST)
    r = redis_server.client()
    links = "sb:{" + ROOM + "}:links:"

    async def main():
        a = await PJ.connect(n1, "alice", token="ta")
        b = await PJ.connect(n2, "bob", token="tb")
        await a.send({"type": "OFFER", "dst": "bob", "payload": offer()})
        await b.expect("OFFER")
        await b.send({"type": "ANSWER", "dst": "alice",
                      "payload": {"connectionId": "dc_1", "sdp": {"type": "answer"}}})
        await a.expect("ANSWER")
        await until(lambda: bucket_stats(redis_server)["pj_links"] == 1, 3, msg="pj link")
        before = bucket_stats(redis_server)
        assert before["pj_members"] == 2 and before["links"] == 1
        n2.proc.signal(signal.SIGSTOP)
        try:
            redis_server.kill()
            redis_server.start()  # same port, empty
            await until(lambda: bucket_stats(redis_server)["pj_members"] == 1, 3,
                        msg="alice re-asserted by n1")
            # alice's half towards bob was skipped: bob is not a member yet
            assert r.smembers(links + "alice") == set()
        finally:
            n2.proc.signal(signal.SIGCONT)
        await until(lambda: bucket_stats(redis_server)["pj_members"] == 2, 3,
                    msg="bob re-asserted by n2")
        # bob's half came back with bob, and alice's was re-sent by n1: one link, counted once
        await until(lambda: bucket_stats(redis_server) == before, 3,
                    msg=f"figures back to {before}")
        assert r.smembers(links + "alice") == {"bob"} and r.smembers(links + "bob") == {"alice"}
        consistent(redis_server)
        # the sockets were never dropped, and still relay
        await a.send({"type": "CANDIDATE", "dst": "bob", "payload": {"connectionId": "dc_1"}})
        assert (await b.expect("CANDIDATE"))["src"] == "alice"
        assert a.closed is None and b.closed is None

    run(main())


@contextlib.contextmanager
def claim_window(cluster, redis_server):
    """(proxy, n1, n2): n1 reaches Redis through a reply-delaying proxy (set proxy.delay to
    hold a claim's answer), grace 1.5 s; n2 direct. Both nodes stopped before the proxy."""
    from harness import ReplyDelayProxy
    proxy = ReplyDelayProxy(redis_server.port, 0.0)
    try:
        n1 = cluster.node("n1", args=["--redis-timeout-ms", "3000", "--resume-grace-ms", "1500",
                                      "--presence-ttl-ms", "5000", "--heartbeat-ms", "1000"],
                          redis_url=proxy.url)
        n2 = cluster.node("n2", args=FAST)
        yield proxy, n1, n2
    finally:
        for n in cluster.nodes:
            n.proc.stop()
        proxy.stop()


@pytest.mark.single_redis("a reply-delaying proxy fronts one Redis; cluster redirects bypass it")
def test_19_the_old_socket_closing_during_a_reclaim_on_its_node_leaves_the_new_one(cluster,
                                                                                  redis_server):
    """A PeerJS id reclaimed on the node that still holds its old socket, and the old socket
    drops (a reset) while the claim is in flight. The id's hash is fixed (the token's), so the
    old socket's `session_away`, sent after the claim on the same connection, passed both its
    checks (this node, this hash) and marked the new holder away; the grace timer then removed
    it. Now a socket whose id another socket of its node is claiming does not go away at its
    close: the claim takes the id over. Here replies come 0.5 s late to widen the window; grace
    1.5 s; after 2.5 s the id is still a member, not away, and relays."""
    with claim_window(cluster, redis_server) as (proxy, n1, n2):

        async def main():
            old = await PJ.connect(n1, "alice", token="ta")
            bob = await PJ.connect(n2, "bob", token="tb")
            proxy.delay = 0.5
            new = await PJ.connect(n1, "alice", token="ta", open_=False)
            await asyncio.sleep(0.1)  # the claim is sent; its reply is on its way
            old.abort()
            await new.expect("OPEN", timeout=5)
            proxy.delay = 0.0
            await asyncio.sleep(2.5)  # past the grace
            st = bucket_stats(redis_server)
            assert (st["pj_members"], st["pj_away"]) == (2, 0), st
            await bob.send({"type": "OFFER", "dst": "alice", "payload": offer()})
            assert (await new.expect("OFFER"))["src"] == "bob"
            consistent(redis_server)
        run(main())


@pytest.mark.single_redis("a reply-delaying proxy fronts one Redis; cluster redirects bypass it")
def test_20_the_old_socket_closing_during_a_failed_claim_is_still_cleaned_up(cluster,
                                                                           redis_server):
    """The other side of test_19: the claim of the id by another socket of the node fails (a
    different token: ID-TAKEN), and the old socket closed while it was in flight. Its close
    left the cleanup to the claim (it could not tell the claim would fail); it used to stay
    undone until the id's presence lapsed and the admin reaped it (with no admin, never).
    Now the cleanup is kept and runs when the claim's answer says it did not take the id: a
    clean close frees the id at once, a reset makes it away for the grace, then frees it."""
    with claim_window(cluster, redis_server) as (proxy, n1, n2):

        async def main():
            bob = await PJ.connect(n2, "bob", token="tb")
            for how in ("close", "reset"):
                old = await PJ.connect(n1, "alice", token="ta")
                await until(lambda: bucket_stats(redis_server)["pj_members"] == 2, 3,
                            msg="alice and bob")
                proxy.delay = 0.5
                other = await PJ.connect(n1, "alice", token="not-ta", open_=False)
                await asyncio.sleep(0.1)  # the claim is sent; its reply is on its way
                if how == "close":
                    await old.close()
                else:
                    old.abort()
                await other.expect("ID-TAKEN", timeout=5)
                proxy.delay = 0.0
                if how == "reset":
                    await until(lambda: bucket_stats(redis_server)["pj_away"] == 1, 2,
                                msg="alice away for the grace")
                await until(lambda: bucket_stats(redis_server)["pj_members"] == 1, 4,
                            msg=f"alice freed after her socket's {how}")
                assert bucket_stats(redis_server)["pj_away"] == 0
                consistent(redis_server)
            # the id is free: a new socket takes it with any token
            again = await PJ.connect(n1, "alice", token="third")
            await bob.send({"type": "OFFER", "dst": "alice", "payload": offer()})
            assert (await again.expect("OFFER"))["src"] == "bob"
        run(main())
