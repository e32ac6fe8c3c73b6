"""The session-resume scripts (session_away, session_queue, session_resume, and room_remove's
"away" mode and reap of a dead node's socket) against a real redis-server: keys, counters, the
events, exactly-once expiry, takeover, and refusals that write nothing."""
import hashlib
import json
import time

import pytest

from conftest import PREFIX
import invariants

TTL = 15000
GRACE = 5000


def K(room, what):
    return f"{PREFIX}:{{{room}}}:{what}"


BK = f"{PREFIX}:{{#}}"


def h(token):
    return hashlib.sha256(token.encode()).hexdigest()


def join(sb, room, sid, node="n1", token=None, origin="http://o", sub="", grace=GRACE):
    return sb.room_call("room_join", room, sid, node, "e-" + node, '{"n":1}', TTL, 64,
                        h(token or "tok-" + sid), origin, sub, grace)


def away(sb, room, sid, node="n1", token=None):
    return sb.room_call("session_away", room, sid, node, h(token or "tok-" + sid))


def queue(sb, room, to, frm, data, mx=3, mxb=1000):
    return sb.room_call("session_queue", room, to, frm, data, mx, mxb)


def resume(sb, room, sid, token, node="n2", nxt="next", origin="http://o", sub="", grace=GRACE):
    return sb.room_call("session_resume", room, sid, h(token), origin, sub, node, "e-" + node,
                        h(nxt), grace, TTL)


def stats_away(r):
    return int(r.hget(f"{BK}:stats", "away") or 0)


@pytest.fixture
def room(r, sb, events):
    """Room a: A and B on n1, C on n2; A-B linked."""
    join(sb, "a", "A")
    join(sb, "a", "B")
    join(sb, "a", "C", node="n2")
    sb.link("a", "A", "B")
    sb.link("a", "B", "A")
    events.drain()
    return "a"


def test_join_stores_only_the_token_hash(r, sb, room):
    rec = r.hget(K("a", "resume"), "A")
    assert h("tok-A") in rec and "tok-A" not in rec.replace(h("tok-A"), "")
    assert json.loads(rec) == {"h": h("tok-A"), "o": "http://o", "u": "", "g": GRACE}


def test_join_retried_by_the_same_node_stores_the_new_token_hash(r, sb, room, events):
    """A join the node gave up on (timeout) ran; the node retries with a new token and gives the
    client that one. The retry answers ok without changes, and the stored hash is the new
    token's: the old one's was never given to anyone (before: away and leave were refused for
    the token the client holds)."""
    seq = r.hget(f"{BK}:stats", "seq")
    res = join(sb, "a", "A", token="tok-A2")
    assert res[0] == "ok"
    assert json.loads(r.hget(K("a", "resume"), "A"))["h"] == h("tok-A2")
    assert r.hget(f"{BK}:stats", "seq") == seq and events.drain() == []
    assert away(sb, "a", "A", token="tok-A")[0] == "gone"
    assert away(sb, "a", "A", token="tok-A2")[0] == "ok"


def test_away_keeps_member_and_links_and_publishes_once(r, sb, room, events, consistent):
    res = away(sb, "a", "A")
    assert res[0] == "ok"
    seq, deadline = res[1], res[2]
    now_ms = int(time.time() * 1000)
    assert now_ms + GRACE - 1000 < deadline <= now_ms + GRACE + 1000
    assert r.hexists(K("a", "members"), "A")
    assert r.sismember(K("a", "links:A"), "B")
    assert r.hget(K("a", "stats"), "links") == "1"
    assert r.hget(K("a", "stats"), "away") == "1" and stats_away(r) == 1
    assert r.zscore(f"{BK}:away", "a A") == deadline
    assert 0 < r.pttl(K("a", "presence:A")) <= GRACE
    ev = events.drain()
    assert sorted(n for n, _ in ev) == ["n1", "n2"]
    assert all(e == {"t": "away", "room": "a", "seq": seq, "id": "A"} for _, e in ev)
    # Idempotent: a second call changes nothing and publishes nothing.
    assert away(sb, "a", "A")[:3] == ["ok", seq, deadline]
    assert events.drain() == []
    consistent()
    # room_read lists it as away.
    read = sb.read("a")
    recs = dict(zip(read[1::2], read[2::2]))
    assert recs["A"].endswith(',"away":1}') and not recs["B"].endswith(',"away":1}')


def test_away_refused_for_another_node_or_token(r, sb, room, writes_nothing):
    with writes_nothing():
        assert away(sb, "a", "A", node="n2") == ["gone"]
        assert away(sb, "a", "A", token="other") == ["gone"]
        assert away(sb, "a", "Z") == ["gone"]


def test_away_without_grace_is_none(r, sb, events, writes_nothing):
    join(sb, "a", "A", grace=0)
    with writes_nothing():
        assert away(sb, "a", "A") == ["none"]


def test_queue_bounds_and_order(r, sb, room, consistent):
    assert queue(sb, "a", "A", "B", '{"x":1}')[0] == "present"
    assert queue(sb, "a", "A", "B", '{"x":1}')[1] == "n1"
    away(sb, "a", "A")
    assert queue(sb, "a", "A", "B", '"s1"') == ["ok", 1]
    assert queue(sb, "a", "A", "C", '"s2"') == ["ok", 2]
    assert queue(sb, "a", "A", "B", '"s3"') == ["ok", 3]
    assert queue(sb, "a", "A", "B", '"s4"') == ["full"]
    assert r.lrange(K("a", "queue:A"), 0, -1) == ['B "s1"', 'C "s2"', 'B "s3"']
    assert 0 < r.pttl(K("a", "queue:A")) <= GRACE
    assert queue(sb, "a", "Z", "B", '"x"') == ["gone"]
    consistent()


def test_queue_byte_bound(r, sb, room):
    away(sb, "a", "A")
    assert queue(sb, "a", "A", "B", '"' + "x" * 40 + '"', mx=100, mxb=100)[0] == "ok"
    assert queue(sb, "a", "A", "B", '"' + "y" * 60 + '"', mx=100, mxb=100) == ["full"]
    assert queue(sb, "a", "A", "B", '"z"', mx=100, mxb=100)[0] == "ok"
    assert r.llen(K("a", "queue:A")) == 2
    assert int(r.hget(K("a", "qbytes"), "A")) == len('B "' + "x" * 40 + '"') + len('B "z"')


def test_resume_of_away_takes_over_and_returns_queue_and_changes(r, sb, room, events,
                                                                   consistent):
    away(sb, "a", "A")
    queue(sb, "a", "A", "B", '"s1"')
    queue(sb, "a", "A", "B", '"s2"')
    join(sb, "a", "D", node="n2")          # joined while away
    sb.remove("a", "C", "leave", "n2")      # left while away
    events.drain()
    res = resume(sb, "a", "A", "tok-A")
    assert res[0] == "ok"
    seq, members, joined, left, halves, formed, queued = res[1:]
    recs = dict(zip(members[0::2], members[1::2]))
    assert sorted(recs) == ["A", "B", "D"]
    assert recs["A"] == '{"node":"n2","epoch":"e-n2","meta":{"n":1}}'
    assert joined == ["D"] and left == ["C"]
    assert halves == ["B"] and formed == ["B"]
    assert queued == ['B "s1"', 'B "s2"']
    assert r.get(K("a", "presence:A")) == "n2"
    assert not r.exists(K("a", "queue:A"))
    assert stats_away(r) == 0 and r.zcard(f"{BK}:away") == 0
    assert r.hget(K("a", "stats"), "links") == "1"
    assert r.hgetall(K("a", "nodes")) == {"n1": "1", "n2": "2"}
    ev = events.drain()
    back = {"t": "back", "room": "a", "seq": seq, "id": "A", "node": "n2", "meta": {"n": 1}}
    assert sorted(n for n, _ in ev) == ["n1", "n2"] and all(e == back for _, e in ev)
    consistent()
    # The token is spent; the next one works (and not from the old node's point of view).
    assert resume(sb, "a", "A", "tok-A") == ["unknown"]
    assert away(sb, "a", "A", node="n1") == ["gone"]            # the old node: not its own
    assert sb.room_call("room_remove", "a", "A", "disconnect", "n1", h("tok-A")) == ["gone"]
    assert resume(sb, "a", "A", "next", node="n1", nxt="n3")[0] == "ok"
    consistent()


def test_resume_of_present_socket_takes_over_and_tells_old_node(r, sb, events, consistent):
    join(sb, "a", "A", node="n1")
    join(sb, "a", "B", node="n2")
    events.drain()
    res = resume(sb, "a", "A", "tok-A", node="n2")
    assert res[0] == "ok" and res[3] == [] and res[4] == [] and res[7] == []
    ev = events.drain()
    # n1 has no member left, yet hears the takeover (to drop its stale copy).
    assert sorted(n for n, _ in ev) == ["n1", "n2"]
    assert r.hgetall(K("a", "nodes")) == {"n2": "2"}
    assert not r.sismember(f"{BK}:node:n1:sockets", "a A")
    # The old node's late cleanup cannot touch it.
    assert sb.room_call("room_remove", "a", "A", "disconnect", "n1", h("tok-A")) == ["gone"]
    consistent()


@pytest.mark.parametrize("why", ["token", "origin", "sub", "member"])
def test_resume_refusals_write_nothing(r, sb, room, writes_nothing, why):
    away(sb, "a", "A")
    args = {"token": dict(token="guess"), "origin": dict(token="tok-A", origin="http://evil"),
            "sub": dict(token="tok-A", sub="mallory"), "member": dict(token="tok-A")}[why]
    sid = "Z" if why == "member" else "A"
    with writes_nothing():
        assert resume(sb, "a", sid, **args) == ["unknown"]


def test_resume_after_the_deadline_is_refused(r, sb, room, writes_nothing):
    join(sb, "b", "X", grace=50)
    away(sb, "b", "X")
    time.sleep(0.08)
    with writes_nothing():
        assert resume(sb, "b", "X", "tok-X") == ["unknown"]


def test_grace_expiry_exactly_once(r, sb, room, events, consistent):
    r.hset(K("a", "resume"), "A", r.hget(K("a", "resume"), "A").replace(
        f'"g":{GRACE}', '"g":60'))
    away(sb, "a", "A")
    queue(sb, "a", "A", "B", '"s"')
    events.drain()
    assert sb.remove("a", "A", "away", "n1") == ["live"]  # not yet
    time.sleep(0.1)
    res = sb.remove("a", "A", "away", "n1")
    assert res[0] == "ok" and res[1] == 1
    assert sb.remove("a", "A", "away", "n1") == ["gone"]
    assert sb.remove("a", "A", "expired", "n1") == ["gone"]
    ev = events.drain()
    lefts = [e for _, e in ev if e["t"] == "left"]
    assert len(lefts) == 2 and {e["reason"] for e in lefts} == {"disconnect"}  # n1 and n2
    assert len({e["seq"] for e in lefts}) == 1
    assert r.hget(K("a", "stats"), "links") == "0" and stats_away(r) == 0
    assert not r.exists(K("a", "queue:A")) and not r.hexists(K("a", "resume"), "A")
    consistent()


def test_admin_expiry_after_presence_lapsed(r, sb, room, events, consistent):
    """The node that marked it away died: the presence set to lapse at the deadline is gone,
    and the admin's reap (mode expired) removes it with reason disconnect."""
    r.hset(K("a", "resume"), "A", r.hget(K("a", "resume"), "A").replace(
        f'"g":{GRACE}', '"g":60'))
    away(sb, "a", "A")
    events.drain()
    assert sb.remove("a", "A", "expired", "n1") == ["live"]
    time.sleep(0.1)
    assert not r.exists(K("a", "presence:A"))
    assert sb.remove("a", "A", "expired", "n1")[0] == "ok"
    ev = events.drain()
    assert {e["reason"] for _, e in ev if e["t"] == "left"} == {"disconnect"}
    consistent()


def test_reap_of_dead_node_marks_away_first(r, sb, room, events, consistent):
    r.delete(K("a", "presence:C"))  # n2 died: its presence lapsed
    res = sb.remove("a", "C", "expired", "n2")
    assert res[0] == "away"
    assert r.hexists(K("a", "away"), "C") and r.hexists(K("a", "members"), "C")
    assert r.get(K("a", "presence:C")) == "n2"
    ev = events.drain()
    assert {e["t"] for _, e in ev} == {"away"}
    # Its client resumes on n1 before the grace ends.
    assert resume(sb, "a", "C", "tok-C", node="n1")[0] == "ok"
    assert r.hgetall(K("a", "nodes")) == {"n1": "3"}
    consistent()


def test_removal_of_away_member_by_leave_path_clears_state(r, sb, room, consistent):
    away(sb, "a", "B")
    queue(sb, "a", "B", "A", '"s"')
    for s in ("A", "C"):
        sb.remove("a", s, "leave", "n1" if s == "A" else "n2")
    # Make its deadline pass.
    r.hset(K("a", "away"), "B", "1 A B C")
    r.zadd(f"{BK}:away", {"a B": 1})
    assert sb.remove("a", "B", "away", "n1")[0] == "ok"
    assert r.keys(f"{PREFIX}:{{a}}:*") == []
    assert invariants.check(r, PREFIX) == []


def test_assert_restores_the_resume_record_after_a_data_loss(r, sb, consistent):
    join(sb, "a", "A")
    record = r.hget(K("a", "resume"), "A")
    r.flushall()
    assert sb.assert_("a", "A", "n1", "e-n1", '{"n":1}', TTL, resume=record) == ["ok", 1]
    assert json.loads(r.hget(K("a", "resume"), "A")) == json.loads(record)
    consistent()
    # The socket is lost now: it gets its grace, and its token still works.
    assert away(sb, "a", "A")[0] == "ok"
    assert resume(sb, "a", "A", "tok-A")[0] == "ok"
    consistent()
    # An existing record is never replaced by a re-assert (the node's may be older).
    assert sb.assert_("a", "A", "n2", "e-n2", '{"n":1}', TTL, resume=record) == ["ok", 0]
    assert json.loads(r.hget(K("a", "resume"), "A"))["h"] == h("next")
