"""The PeerJS scripts (pj_claim, pj_send, pj_expire; docs/peerjs.md) and the PeerJS share of
the bucket figures (pj_members, pj_links, pj_away, kept by lib/room.lua with the totals) against
a real redis-server: keys, replies, events, refusals that write nothing, and the recounts."""
import hashlib
import json

from conftest import PREFIX
import keyspace

TTL = 15000
GRACE = 5000
R = "~pj.k"


def K(what, room=R):
    return f"{PREFIX}:{{{room}}}:{what}"


BK = f"{PREFIX}:{{#}}"


def h(token):
    return hashlib.sha256(token.encode()).hexdigest()


def claim(sb, sid, token="t", node="n1", sub="", want_list=True, grace=GRACE):
    return sb.room_call("pj_claim", R, sid, node, "e-" + node, h(token), TTL, grace, sub,
                        "1" if want_list else "0")


def send(sb, src, dst, frame=None, queue_it=True, mx=3, mxb=1000, life=10000, caller="n9"):
    frame = frame or json.dumps({"type": "OFFER", "src": src, "dst": dst, "payload": {}})
    return sb.room_call("pj_send", R, src, dst, frame, "1" if queue_it else "0", mx, mxb, life,
                        caller)


def expire(sb, src, dst):
    return sb.room_call("pj_expire", R, src, dst)


def bstats(r):
    st = r.hgetall(f"{BK}:stats")
    return {k: int(st.get(k, 0)) for k in ("rooms", "members", "links", "linked", "away",
                                           "pj_members", "pj_links", "pj_away")}


def test_claim_joins_a_new_id_with_its_token_hash(r, sb, events, consistent):
    assert keyspace.bucket(PREFIX, R, "stats") == f"{BK}:stats"
    res = claim(sb, "alice", want_list=True)
    assert res[0] == "ok" and res[2] == "new" and res[3] == [] and res[4] == []
    assert res[5] == ["alice", '{"node":"n1","epoch":"e-n1","meta":{}}']
    seq = res[1]
    assert json.loads(r.hget(K("resume"), "alice")) == {"h": h("t"), "o": "", "u": "",
                                                          "g": GRACE}
    assert r.get(K("presence:alice")) == "n1" and 0 < r.pttl(K("presence:alice")) <= TTL
    assert r.sismember(f"{BK}:node:n1:sockets", f"{R} alice")
    assert bstats(r) == dict(rooms=1, members=1, links=0, linked=0, away=0, pj_members=1,
                             pj_links=0, pj_away=0)
    assert events.drain() == [("n1", {"t": "join", "room": R, "seq": seq, "id": "alice",
                                      "node": "n1", "meta": {}})]
    # The member list only when asked: the key's room may hold thousands of ids.
    res = claim(sb, "bob", node="n2", want_list=False)
    assert res[0] == "ok" and res[2] == "new" and res[5] == []
    assert bstats(r)["pj_members"] == 2 and bstats(r)["members"] == 2
    consistent()


def test_claim_ignores_max_room_members(r, sb, consistent):
    for i in range(80):  # room_join's default max is 64; a claim has none
        assert claim(sb, f"p{i}", want_list=False)[0] == "ok"
    assert bstats(r)["pj_members"] == 80
    consistent()


def test_another_token_or_subject_is_taken_and_writes_nothing(r, sb, writes_nothing):
    claim(sb, "alice", token="t", sub="u1")
    with writes_nothing():
        assert claim(sb, "alice", token="other", sub="u1") == ["taken"]
        assert claim(sb, "alice", token="t", sub="u2") == ["taken"]
        assert claim(sb, "alice", token="other", node="n2", sub="u1") == ["taken"]


def test_same_token_takes_a_live_id_over_on_another_node(r, sb, events, consistent):
    claim(sb, "alice")
    claim(sb, "bob", node="n2")
    sb.link(R, "alice", "bob", "up", "n1")
    sb.link(R, "bob", "alice", "up", "n2")
    events.drain()
    before = bstats(r)
    res = claim(sb, "alice", node="n2", want_list=False)
    assert res[0] == "ok" and res[2] == "reclaimed" and res[4] == ["bob"]
    assert json.loads(r.hget(K("members"), "alice"))["node"] == "n2"
    assert r.hgetall(K("nodes")) == {"n2": "2"}
    assert r.get(K("presence:alice")) == "n2"
    assert not r.sismember(f"{BK}:node:n1:sockets", f"{R} alice")
    assert r.sismember(f"{BK}:node:n2:sockets", f"{R} alice")
    assert bstats(r) == before and before["pj_links"] == 1  # nothing counted twice
    ev = events.drain()
    # "back" to every node of the room (n2) and to the old node (n1, which drops its copy)
    assert sorted(n for n, _ in ev) == ["n1", "n2"]
    assert all(e["t"] == "back" and e["id"] == "alice" and e["node"] == "n2" for _, e in ev)
    consistent()


def test_away_id_reclaimed_gets_its_queue_in_order(r, sb, events, consistent):
    claim(sb, "alice")
    claim(sb, "bob")
    assert sb.room_call("session_away", R, "alice", "n1", h("t"))[0] == "ok"
    assert bstats(r)["pj_away"] == 1 and bstats(r)["away"] == 1
    # to an away id: queued (not delivered), bounded, in order
    frames = [json.dumps({"type": "CANDIDATE", "src": "bob", "dst": "alice", "payload": i})
              for i in range(3)]
    for i, f in enumerate(frames):
        assert send(sb, "bob", "alice", f) == ["queued", i + 1]
    assert send(sb, "bob", "alice", frames[0]) == ["full"]
    assert 0 < r.pttl(K("pjq:alice")) <= 10000
    assert int(r.get(K("pjqb:alice"))) == sum(len("bob " + f) for f in frames)
    res = claim(sb, "alice", node="n2")
    assert res[0] == "ok" and res[2] == "reclaimed"
    assert res[3] == ["bob " + f for f in frames]
    assert not r.exists(K("pjq:alice")) and not r.exists(K("pjqb:alice"))
    assert bstats(r)["pj_away"] == 0 and bstats(r)["away"] == 0
    consistent()


def test_send_to_a_present_id_publishes_on_its_nodes_channel(r, sb, events, writes_nothing):
    claim(sb, "alice")
    claim(sb, "bob", node="n2")
    events.drain()
    frame = '{"type":"OFFER","src":"alice","dst":"bob","payload":{"sdp":"x"}}'
    assert send(sb, "alice", "bob", frame) == ["sent", "n2"]
    ev = events.drain()
    assert ev == [("n2", {"t": "signal", "room": R, "from": "alice", "to": "bob",
                          "data": json.loads(frame)})]
    assert not r.exists(K("pjq:bob"))
    # On the caller's own node: handed back to the caller (in order with its direct deliveries)
    with writes_nothing():
        assert send(sb, "alice", "bob", frame, caller="n2") == ["here"]
    # LEAVE / EXPIRE to an id not connected: dropped, nothing written
    with writes_nothing():
        assert send(sb, "alice", "nobody", queue_it=False) == ["dropped"]


def test_send_to_an_unknown_id_queues_and_a_new_claim_takes_it(r, sb, consistent):
    claim(sb, "alice")
    assert send(sb, "alice", "late") == ["queued", 1]
    assert send(sb, "alice", "late", mxb=10) == ["full"]  # bytes bound
    res = claim(sb, "late", node="n2")
    assert res[2] == "new" and len(res[3]) == 1 and res[3][0].startswith("alice {")
    consistent()


def test_expire_drops_only_the_senders_messages(r, sb, writes_nothing, consistent):
    claim(sb, "alice")
    claim(sb, "bob")
    send(sb, "alice", "late", '{"a":1}', mx=10)
    send(sb, "bob", "late", '{"b":1}', mx=10)
    send(sb, "alice", "late", '{"a":2}', mx=10)
    assert expire(sb, "alice", "late") == [2]
    assert r.lrange(K("pjq:late"), 0, -1) == ['bob {"b":1}']
    assert int(r.get(K("pjqb:late"))) == len('bob {"b":1}')
    assert r.pttl(K("pjq:late")) > 0
    with writes_nothing():
        assert expire(sb, "alice", "late") == [0]
    assert expire(sb, "bob", "late") == [1]
    assert not r.exists(K("pjq:late")) and not r.exists(K("pjqb:late"))
    consistent()


def test_pj_figures_follow_links_departures_and_recounts(r, sb, consistent):
    claim(sb, "alice")
    claim(sb, "bob")
    sb.join("a", "N1" * 11)  # a native room beside: its figures are not PeerJS
    sb.join("a", "N2" * 11)
    sb.link("a", "N1" * 11, "N2" * 11)
    sb.link("a", "N2" * 11, "N1" * 11)
    sb.link(R, "alice", "bob")
    assert bstats(r)["pj_links"] == 0  # one half: no link yet
    sb.link(R, "bob", "alice")
    s = bstats(r)
    assert (s["links"], s["pj_links"], s["members"], s["pj_members"]) == (2, 1, 4, 2)
    consistent()
    sb.link(R, "alice", "bob", "down")
    assert bstats(r)["pj_links"] == 0 and bstats(r)["links"] == 1
    sb.link(R, "alice", "bob")
    sb.link(R, "bob", "alice")
    assert sb.remove(R, "bob", "leave", "n1")[0:2] == ["ok", 1]  # its links go with it
    s = bstats(r)
    assert (s["links"], s["pj_links"], s["members"], s["pj_members"]) == (1, 0, 3, 1)
    # Drift in the bucket's PeerJS share is repaired by stats_check from the rooms' figures.
    r.hset(f"{BK}:stats", mapping={"pj_members": 7, "pj_links": 5})
    assert sb.stats_check("a") == [2]
    assert bstats(r)["pj_members"] == 1 and bstats(r)["pj_links"] == 0
    # room_check repairs a PeerJS room's own figures and applies the delta to both shares.
    r.hset(K("stats"), "members", 3)
    r.hincrby(f"{BK}:stats", "members", 2)
    r.hincrby(f"{BK}:stats", "pj_members", 2)
    assert sb.check(R)[0] == 1
    assert bstats(r)["pj_members"] == 1 and bstats(r)["members"] == 3
    sb.remove(R, "alice", "leave", "n1")
    s = bstats(r)
    assert (s["pj_members"], s["pj_links"], s["pj_away"], s["rooms"]) == (0, 0, 0, 1)
    consistent()


def test_departure_uses_the_reverse_index_of_halves(r, sb, consistent):
    for s in ("alice", "bob", "carol", "dave"):
        claim(sb, s)
    sb.link(R, "bob", "alice")  # one-sided halves towards alice
    sb.link(R, "carol", "alice")
    sb.link(R, "alice", "carol")  # and a formed link alice-carol
    assert r.smembers(K("rlinks:alice")) == {"bob", "carol"}
    assert r.smembers(K("rlinks:carol")) == {"alice"}
    consistent()
    # A native room keeps no reverse index.
    sb.join("a", "N1" * 11)
    sb.join("a", "N2" * 11)
    sb.link("a", "N1" * 11, "N2" * 11)
    assert not r.exists(K("rlinks:" + "N2" * 11, room="a"))
    # alice leaves: every half towards her goes, found through rlinks:alice (the walk over
    # members is not done: a half that the index does not list stays, and room_check finds it)
    r.sadd(K("links:dave"), "alice")  # a half written behind the scripts' back
    res = sb.remove(R, "alice", "leave", "n1")
    assert res[:2] == ["ok", 1]
    assert not r.exists(K("links:bob")) and not r.exists(K("links:carol"))
    assert not r.exists(K("rlinks:alice")) and not r.exists(K("rlinks:carol"))
    assert r.smembers(K("links:dave")) == {"alice"}
    assert bstats(r)["pj_links"] == 0 and bstats(r)["links"] == 0
    # room_check repairs that stray half and a wrong reverse index
    sb.link(R, "bob", "carol")
    r.srem(K("rlinks:carol"), "bob")
    r.sadd(K("rlinks:dave"), "carol")
    assert sb.check(R)[1] == 3
    assert r.smembers(K("rlinks:carol")) == {"bob"} and not r.exists(K("rlinks:dave"))
    assert not r.exists(K("links:dave"))
    consistent()
    # link down removes the reverse entries too
    sb.link(R, "bob", "carol", "down")
    assert not r.exists(K("rlinks:carol"))
    consistent()


def test_check_in_slices_repairs_the_reverse_index(r, sb, consistent):
    # A key of 700 ids is checked a slice at a time (the admin's way past its slice size): each
    # slice repairs the halves and reverse entries of its own ids. (Past Redis's
    # hash-max-listpack-entries: a smaller hash is one listpack, which HSCAN returns at once.)
    ids = [f"p{i}" for i in range(700)]
    for s in ids:
        claim(sb, s, want_list=False)
    sb.link(R, "p1", "p2")
    sb.link(R, "p3", "p2")
    consistent()
    r.srem(K("rlinks:p2"), "p3")  # a missing reverse entry
    r.sadd(K("rlinks:p9"), "p4")  # a reverse entry without its half
    r.sadd(K("rlinks:p9"), "ghost")  # one from a non-member
    r.sadd(K("links:p7"), "ghost")  # a half towards a non-member
    assert r.object("encoding", K("members")) == "hashtable"
    replies = sb.check_slices(R, 100)
    assert len(replies) >= 3
    assert sum(rep[1] for rep in replies) == 4
    assert r.smembers(K("rlinks:p2")) == {"p1", "p3"}
    assert not r.exists(K("rlinks:p9")) and not r.exists(K("links:p7"))
    consistent()
    again = sb.check_slices(R, 100)
    assert [rep[:3] for rep in again] == [[0, 0, 0]] * len(again)
