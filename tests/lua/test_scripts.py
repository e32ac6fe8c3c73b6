"""The Lua scripts of lua/, each run through a real redis-server: the keys it writes, TTLs,
the events it publishes, its reply, and the invariants of lua/README.md after every call."""
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import time

import pytest
import redis

from conftest import LUA_DIR, PREFIX, ROOT, script_files, script_text, snapshot
from spubsub import ShardedSubscriber
import invariants
import keyspace

TTL = 15000
SCRIPTS = {"room_join", "room_remove", "link_set", "room_read", "room_assert", "room_check",
           "session_away", "session_queue", "session_resume",
           "stats_check", "admin_lock", "bucket_read", "pj_claim", "pj_send", "pj_expire"}


def K(room, what):
    return f"{PREFIX}:{{{room}}}:{what}"


# The single-Redis bucket every room's cross-room figures and indexes are in (lua/README.md).
BK = f"{PREFIX}:{{#}}"


def rec(node="n1", epoch="e1", meta="{}"):
    return '{"node":%s,"epoch":%s,"meta":%s}' % (json.dumps(node), json.dumps(epoch), meta)


def ints(h):
    return {k: int(v) for k, v in h.items()}


def now_us():
    return int(time.time() * 1e6)


# --- files ------------------------------------------------------------------------------------

def test_every_script_exists_starts_with_shebang_and_has_a_legend():
    names = {f[:-4] for f in script_files()}
    assert names == SCRIPTS
    for f in script_files():
        with open(os.path.join(LUA_DIR, f)) as fh:
            lines = fh.read().split("\n")
        want = {"room_read.lua": "#!lua flags=no-writes",
                "bucket_read.lua": "#!lua flags=no-writes,allow-cross-slot-keys"}.get(f, "#!lua")
        assert lines[0] == want, f
        legend = []
        for line in lines[1:]:
            if not line.startswith("--"):
                break
            legend.append(line)
        text = "\n".join(legend)
        assert legend[0].startswith(f"-- {f[:-4]}: "), f
        for word in ("KEYS", "ARGV[1]", "Returns", "Does:", "Does not:"):
            assert word in text, (f, word)
        assert all(ord(c) < 128 for c in "\n".join(lines)), f"{f}: keep the scripts ASCII"


def test_writing_scripts_are_refused_under_oom_before_running(r, sb, consistent):
    sb.join("a", "A")
    r.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError, match="OOM"):
            sb.join("a", "B")
        with pytest.raises(redis.ResponseError, match="OOM"):
            sb.link("a", "A", "A")
        assert sb.read("a")[1:] == ["A", rec()]  # no-writes: still served
    finally:
        r.config_set("maxmemory", 0)
    assert r.hkeys(K("a", "members")) == ["A"]
    consistent()


def test_embedded_sha1_matches_script_load(r, tmp_path):
    """cmake/embed.cmake embeds each script with its --@include lines expanded, and computes the
    SHA1 that EVALSHA uses: the bytes must be exactly what these tests load (script_text), and
    the SHA1 Redis's."""
    assert shutil.which("cmake"), "cmake is installed by deploy/install-deps.sh"
    files = [os.path.join(LUA_DIR, f) for f in script_files()]
    out = tmp_path / "lua_scripts.c"
    subprocess.run(["cmake", f"-DOUT={out}", "-DSYMBOL=sb_lua_files", "-DFILES=" + ";".join(files),
                    "-P", os.path.join(ROOT, "cmake", "embed.cmake")], check=True)
    text = out.read_text()
    arrays = {int(i): bytes(int(x, 16) for x in body.split(",") if x.strip())
              for i, body in re.findall(r"data_(\d+)\[\] = \{([^}]*)\}", text)}
    for f in files:
        name = os.path.basename(f)
        data = script_text(name).encode()
        sha = r.script_load(data.decode())
        assert sha == hashlib.sha1(data).hexdigest()
        m = re.search(r'\{"%s", \(const char \*\)data_(\d+), %d, "%s"\}' %
                      (re.escape(name), len(data), sha), text)
        assert m, name
        assert arrays[int(m.group(1))] == data + b"\0", name


def test_lib_is_pasted_where_declared_and_the_shebang_stays_first(r, sb):
    """lua/lib/*.lua is written once and pasted into the scripts that --@include it: the
    expanded script keeps its #!lua line first (Redis reads flags only there), no directive is
    left, and a script that declares the lib cannot run without it (so the paste is what
    ships, not a leftover copy)."""
    lib_dir = os.path.join(LUA_DIR, "lib")
    libs = sorted(f for f in os.listdir(lib_dir) if f.endswith(".lua"))
    assert libs == ["room.lua"]
    with open(os.path.join(lib_dir, "room.lua")) as fh:
        lib = fh.read()
    assert "#!" not in lib.split("\n")[0] and "\n--@include" not in lib
    users = set()
    for f in script_files():
        with open(os.path.join(LUA_DIR, f)) as fh:
            raw = fh.read()
        shipped = script_text(f)
        assert shipped.split("\n")[0] == raw.split("\n")[0], f
        assert "\n--@include" not in shipped, f
        if "\n--@include lib/room.lua\n" in raw:
            users.add(f[:-4])
            assert lib.rstrip("\n") in shipped, f
    # Without the paste each script calls helpers that do not exist. (Setup: room "a" with A
    # and B, A's half towards B, and a room figure to repair.)
    calls = {"room_join": ("C", "n1", "e1", "{}", TTL, 64),
             "room_assert": ("A", "n1", "e1", "{}", TTL),
             "link_set": ("B", "A", "up", "n1"),
             "room_remove": ("A", "leave", "n1"),
             "room_check": (),
             "session_away": ("A", "n1", ""),
             "session_queue": ("A", "B", "1", 10, 100),
             "session_resume": ("A", "h", "", "", "n2", "e2", "h2", 1000, TTL)}
    # The PeerJS scripts take a PeerJS key's room (docs/peerjs.md).
    pj_calls = {"pj_claim": ("A", "n1", "e1", "h", TTL, 0, "", "1"),
                "pj_send": ("B", "A", '{"type":"OFFER"}', "1", 10, 1000, 5000),
                "pj_expire": ("B", "A")}
    assert set(calls) | set(pj_calls) == users
    for name, args in pj_calls.items():
        r.flushall()
        room = "~pj.k"
        with open(os.path.join(LUA_DIR, name + ".lua")) as fh:
            raw = fh.read()
        bk = f"{PREFIX}:{{{keyspace.bucket_tag(room, False)}}}:stats"
        with pytest.raises(redis.ResponseError, match="nonexistent global"):
            r.eval(raw, 2, K(room, "members"), bk, PREFIX, room, *args)
        r.evalsha(sb.sha[name], 2, K(room, "members"), bk, PREFIX, room, *args)
    for name, args in calls.items():
        r.flushall()
        sb.join("a", "A")
        sb.join("a", "B")
        sb.link("a", "A", "B")
        r.hset(K("a", "stats"), "members", 5)
        with open(os.path.join(LUA_DIR, name + ".lua")) as fh:
            raw = fh.read()
        with pytest.raises(redis.ResponseError, match="nonexistent global"):
            r.eval(raw, 2, K("a", "members"), f"{BK}:stats", PREFIX, "a", *args)
        r.evalsha(sb.sha[name], 2, K("a", "members"), f"{BK}:stats", PREFIX, "a", *args)
    # The helpers once copied between these scripts now live in the lib only.
    for f in users:
        with open(os.path.join(LUA_DIR, f + ".lua")) as fh:
            raw = fh.read()
        for helper in ("local function int(", "local function node_of(",
                       "local function count_link(", "redis.call('TIME')"):
            assert helper not in raw, (f, helper)


def test_wrong_members_key_is_an_error(r, sb):
    for name in ("room_join", "room_remove", "link_set", "room_read", "room_assert",
                 "room_check"):
        with pytest.raises(redis.ResponseError, match="KEYS\\[1\\] must be"):
            r.evalsha(sb.sha[name], 2, K("other", "members"), f"{BK}:stats", PREFIX, "a", "A",
                      "n1", "e1", "{}", TTL, 64)
    assert r.dbsize() == 0


def test_wrong_bucket_key_is_an_error(r, sb):
    """KEYS[2] must be a bucket P:{#...}:stats: a room's own stats, a global key or another
    prefix would put the cross-room figures where the admin never sums them."""
    for bad in (K("a", "stats"), f"{PREFIX}:stats", "other:{#}:stats", f"{BK}:rooms",
                f"{PREFIX}:{{#}}"):
        for name, args in (("room_join", ("A", "n1", "e1", "{}", TTL, 64)),
                           ("room_remove", ("A", "leave", "n1")),
                           ("link_set", ("A", "B", "up", "n1")),
                           ("room_assert", ("A", "n1", "e1", "{}", TTL)),
                           ("room_check", ())):
            with pytest.raises(redis.ResponseError, match="bucket"):
                r.evalsha(sb.sha[name], 2, K("a", "members"), bad, PREFIX, "a", *args)
        with pytest.raises(redis.ResponseError, match="bucket"):
            r.evalsha(sb.sha["stats_check"], 1, bad, PREFIX)
    assert r.dbsize() == 0


def test_bucket_tags_follow_the_cluster_slot(r, sb, consistent):
    """With the tag of the room's slot (what a node on a Redis Cluster passes) every key a
    script touches hashes to the room's slot."""
    import keyspace
    room = "x7"
    tag = keyspace.bucket_tag(room, cluster=True)
    assert tag.startswith("#") and keyspace.keyslot("{%s}" % tag) == keyspace.keyslot("{x7}")
    bk = f"{PREFIX}:{{{tag}}}:stats"
    r.evalsha(sb.sha["room_join"], 2, K(room, "members"), bk, PREFIX, room, "A", "n1", "e1",
              "{}", TTL, 64)
    r.evalsha(sb.sha["room_join"], 2, K(room, "members"), bk, PREFIX, room, "B", "n2", "e1",
              "{}", TTL, 64)
    r.evalsha(sb.sha["link_set"], 2, K(room, "members"), bk, PREFIX, room, "A", "B", "up", "n1")
    r.evalsha(sb.sha["link_set"], 2, K(room, "members"), bk, PREFIX, room, "B", "A", "up", "n2")
    slots = {keyspace.keyslot(k) for k in r.scan_iter(count=1000)}
    assert slots == {keyspace.keyslot("{x7}")}
    assert ints(r.hgetall(bk)) == {"rooms": 1, "members": 2, "links": 1, "linked": 2}
    assert r.smembers(f"{PREFIX}:{{{tag}}}:node:n2:sockets") == {"x7 B"}
    consistent()


# --- room_join --------------------------------------------------------------------------------

def test_join_creates_room_and_member(r, sb, events, consistent):
    t0 = now_us()
    meta = '{"name":"a\\u00e9\\"x","tags":[],"o":{}}'
    reply = sb.join("a", "A", "n1", "ep1", meta, TTL, 64)
    t1 = now_us()
    assert reply[0] == "ok"
    seq = reply[1]
    assert isinstance(seq, int) and t0 + 1 <= seq <= t1 + 1
    assert reply[2:] == ["A", rec("n1", "ep1", meta)]
    # keys
    assert r.hgetall(K("a", "members")) == {"A": rec("n1", "ep1", meta)}
    assert r.get(K("a", "presence:A")) == "n1"
    assert 0 < r.pttl(K("a", "presence:A")) <= TTL
    assert ints(r.hgetall(K("a", "nodes"))) == {"n1": 1}
    assert r.smembers(f"{BK}:node:n1:sockets") == {"a A"}
    assert r.exists(f"{PREFIX}:nodes") == 0  # the reap index is the heartbeat's (other slot)
    assert r.smembers(f"{BK}:rooms") == {"a"}
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 1, "seq": seq}
    assert ints(r.hgetall(f"{BK}:stats")) == {"rooms": 1, "members": 1}
    assert r.exists(K("a", "degree"), K("a", "links:A")) == 0
    # event, meta relayed verbatim ([] stays [])
    ev = events.drain()
    assert ev == [("n1", {"t": "join", "room": "a", "seq": seq, "id": "A", "node": "n1",
                          "meta": json.loads(meta)})]
    consistent()


def test_join_event_text_is_exact_and_keeps_empty_arrays(r, server, sb):
    ps = ShardedSubscriber("127.0.0.1", server.port, [f"{BK}:node:n1"])
    seq = sb.join("a", "A", "n1", "e", '{"x":[],"y":{}}')[1]
    channel, data = ps.get(timeout=5)
    assert channel == f"{BK}:node:n1"
    assert data == ('{"t":"join","room":"a","seq":%d,"id":"A","node":"n1",'
                         '"meta":{"x":[],"y":{}}}' % seq)
    ps.close()


def test_events_nobody_received_wait_in_the_nodes_backlog(r, server, sb):
    """An event published to a node channel nobody subscribes to (the node re-subscribing after
    its slot moved) is kept in that node's backlog of the bucket, in order, capped and
    expiring; with the node subscribed nothing is kept (lua/README.md, "Slot migrations")."""
    b1, b2 = f"{BK}:node:n1:backlog", f"{BK}:node:n2:backlog"
    s = sb.join("a", "A", "n1")[1]
    sb.join("a", "B", "n2")
    assert sb.remove("a", "B", node="n2")[0] == "ok"
    got = [json.loads(e) for e in r.lrange(b1, 0, -1)]
    assert [(e["t"], e.get("id"), e["seq"]) for e in got] == \
        [("join", "A", s), ("join", "B", s + 1), ("left", "B", s + 2)]
    # n2 left the room with B: the left event goes to the nodes still in it.
    assert [json.loads(e)["id"] for e in r.lrange(b2, 0, -1)] == ["B"]
    assert 0 < r.pttl(b1) <= 10000
    r.delete(b1, b2)
    ps = ShardedSubscriber("127.0.0.1", server.port, [f"{BK}:node:n1"])
    sb.join("a", "C", "n1")
    assert json.loads(ps.get(timeout=5)[1])["id"] == "C"
    assert r.exists(b1) == 0
    ps.close()
    # At most the last 1024.
    for i in range(1030):
        sb.join("b", f"X{i}", "n1", max_members=2000)
    kept = r.lrange(b1, 0, -1)
    assert len(kept) == 1024 and json.loads(kept[-1])["id"] == "X1029"


def test_second_join_on_other_node_notifies_both_nodes(r, sb, events, consistent):
    s1 = sb.join("a", "A", "n1")[1]
    events.drain()
    reply = sb.join("a", "B", "n2", "e2", '{"k":1}')
    assert reply[0] == "ok" and reply[1] == s1 + 1
    assert dict(zip(reply[2::2], reply[3::2])) == {"A": rec(), "B": rec("n2", "e2", '{"k":1}')}
    ev = events.drain()
    want = {"t": "join", "room": "a", "seq": s1 + 1, "id": "B", "node": "n2", "meta": {"k": 1}}
    assert sorted(n for n, _ in ev) == ["n1", "n2"] and all(e == want for _, e in ev)
    assert ints(r.hgetall(K("a", "nodes"))) == {"n1": 1, "n2": 1}
    assert ints(r.hgetall(f"{BK}:stats")) == {"rooms": 1, "members": 2}
    # a third member on n1: one event per node, not per member
    sb.join("a", "C", "n1")
    assert sorted(n for n, _ in events.drain()) == ["n1", "n2"]
    assert ints(r.hgetall(K("a", "nodes"))) == {"n1": 2, "n2": 1}
    consistent()


def test_join_retried_by_the_same_node_answers_ok_without_changes(r, raw, sb, events,
                                                                  consistent):
    """A join the node gave up on (command timeout) may have run: asking again from the same
    node, while the presence key lives, answers like the first call and changes nothing but
    the presence TTL."""
    seq = sb.join("a", "A", "n1", "e1", '{"m":1}')[1]
    sb.join("a", "B", "n2")
    seq += 1
    events.drain()
    r.pexpire(K("a", "presence:A"), 1000)
    before = snapshot(raw)
    reply = sb.join("a", "A", "n1", "e1", '{"m":1}', TTL)
    assert reply[:2] == ["ok", seq]
    assert dict(zip(reply[2::2], reply[3::2])) == {"A": rec("n1", "e1", '{"m":1}'),
                                                   "B": rec("n2")}
    assert snapshot(raw) == before
    assert 1000 < r.pttl(K("a", "presence:A")) <= TTL
    assert events.drain() == []
    consistent()


def test_join_exists_writes_nothing(r, sb, writes_nothing, consistent):
    sb.join("a", "A")
    with writes_nothing():
        assert sb.join("a", "A", "n2") == ["exists"]  # another node
    r.delete(K("a", "presence:A"))
    with writes_nothing():
        assert sb.join("a", "A") == ["exists"]  # reaped or expiring: never re-created by join
    r.set(K("a", "presence:A"), "n1", px=TTL)
    # a presence key alone (no record) also means exists
    r.set(K("b", "presence:X"), "n1", px=TTL)
    with writes_nothing():
        assert sb.join("b", "X") == ["exists"]
    r.delete(K("b", "presence:X"))
    consistent()


def test_join_room_full_writes_nothing(r, sb, writes_nothing, consistent):
    assert sb.join("a", "A", max_members=2)[0] == "ok"
    assert sb.join("a", "B", max_members=2)[0] == "ok"
    with writes_nothing():
        assert sb.join("a", "C", max_members=2) == ["room-full"]
    assert sb.join("a", "C", max_members=3)[0] == "ok"
    consistent()


def test_join_rejects_bad_arguments(r, sb):
    with pytest.raises(redis.ResponseError):
        sb.join("a", "A", ttl=0)
    with pytest.raises(redis.ResponseError):
        sb.join("a", "A", meta="[]")
    with pytest.raises(redis.ResponseError):
        sb.join("a", "A", meta="")
    assert r.dbsize() == 0


# --- link_set ---------------------------------------------------------------------------------

def three(sb):
    sb.join("a", "A", "n1")
    sb.join("a", "B", "n2")
    return sb.join("a", "C", "n1")[1]


def test_link_up_from_one_side_forms_nothing(r, sb, events, consistent):
    seq = three(sb)
    events.drain()
    assert sb.link("a", "A", "B", "up", "n1") == ["ok", 0]
    assert r.smembers(K("a", "links:A")) == {"B"}
    assert r.exists(K("a", "links:B"), K("a", "degree")) == 0
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 3, "seq": seq}
    assert events.drain() == []
    consistent()


def test_link_up_from_both_sides_forms_one_link(r, sb, events, writes_nothing, consistent):
    seq = three(sb)
    sb.link("a", "A", "B", "up", "n1")
    events.drain()
    assert sb.link("a", "B", "A", "up", "n2") == ["ok", 1]
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 3, "links": 1, "linked": 2, "seq": seq}
    assert ints(r.hgetall(f"{BK}:stats")) == {"rooms": 1, "members": 3, "links": 1,
                                                   "linked": 2}
    assert ints(r.hgetall(K("a", "degree"))) == {"A": 1, "B": 1}
    want = {"t": "link", "room": "a", "seq": seq, "a": "B", "b": "A", "state": "up"}
    assert sorted(events.drain(), key=lambda x: x[0]) == [("n1", want), ("n2", want)]
    consistent()
    # repeated up from either side changes nothing
    with writes_nothing():
        assert sb.link("a", "A", "B", "up", "n1") == ["ok", 0]
        assert sb.link("a", "B", "A", "up", "n2") == ["ok", 0]
    # a second link: A's degree 2, linked 3 (C joins the linked)
    sb.link("a", "A", "C", "up", "n1")
    assert sb.link("a", "C", "A", "up", "n1") == ["ok", 1]
    ev = events.drain()
    assert ev == [("n1", {"t": "link", "room": "a", "seq": seq, "a": "C", "b": "A",
                          "state": "up"})]  # same node: once
    assert ints(r.hgetall(K("a", "degree"))) == {"A": 2, "B": 1, "C": 1}
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 3, "links": 2, "linked": 3, "seq": seq}
    consistent()


@pytest.mark.parametrize("side", ["A", "B"])
def test_link_down_from_either_side_removes_both_halves(r, sb, events, writes_nothing,
                                                        consistent, side):
    seq = three(sb)
    sb.link("a", "A", "B", "up", "n1")
    sb.link("a", "B", "A", "up", "n2")
    events.drain()
    other = "B" if side == "A" else "A"
    node = {"A": "n1", "B": "n2"}
    assert sb.link("a", side, other, "down", node[side]) == ["ok", 1]
    assert r.exists(K("a", "links:A"), K("a", "links:B"), K("a", "degree")) == 0
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 3, "links": 0, "linked": 0, "seq": seq}
    assert ints(r.hgetall(f"{BK}:stats")) == {"rooms": 1, "members": 3, "links": 0,
                                                   "linked": 0}
    want = {"t": "link", "room": "a", "seq": seq, "a": side, "b": other, "state": "down"}
    assert sorted(events.drain(), key=lambda x: x[0]) == [("n1", want), ("n2", want)]
    consistent()
    with writes_nothing():
        assert sb.link("a", side, other, "down", node[side]) == ["ok", 0]
        assert sb.link("a", other, side, "down", node[other]) == ["ok", 0]


def test_link_down_of_a_lone_half_removes_it_without_event(r, sb, events, consistent):
    three(sb)
    sb.link("a", "A", "B", "up", "n1")
    events.drain()
    # B takes back a link it never reported: A's half goes (both halves are removed); no link
    # had formed, so no link event, only an "unlink" to A's node (which keeps A's halves for a
    # re-assert after data loss and must forget this one)
    assert sb.link("a", "B", "A", "down", "n2") == ["ok", 0]
    assert r.exists(K("a", "links:A")) == 0
    assert events.drain() == [("n1", {"t": "unlink", "room": "a", "a": "B", "b": "A"})]
    # and nothing at all when there was no half to remove
    assert sb.link("a", "B", "A", "down", "n2") == ["ok", 0]
    assert events.drain() == []
    consistent()


def test_link_refusals_write_nothing(r, sb, writes_nothing, consistent):
    three(sb)
    sb.link("a", "A", "B", "up", "n1")
    with writes_nothing():
        assert sb.link("a", "A", "Z", "up", "n1") == ["peer-not-found"]
        assert sb.link("a", "A", "A", "up", "n1") == ["peer-not-found"]
        assert sb.link("a", "A", "B", "up", "n2") == ["gone"]  # presence held by n1
        assert sb.link("a", "Z", "A", "up", "n1") == ["gone"]
    r.delete(K("a", "presence:B"))
    with writes_nothing():
        assert sb.link("a", "B", "A", "up", "n2") == ["gone"]
        assert sb.link("a", "B", "A", "down", "n2") == ["gone"]
    with pytest.raises(redis.ResponseError):
        sb.link("a", "A", "B", "sideways", "n1")
    consistent(presence=False)


# --- room_remove ------------------------------------------------------------------------------

def mesh(sb, events):
    """A(n1) B(n2) C(n1) D(n2) E(n3). Formed: A-B, A-C, B-C. Halves: D->A, A->E."""
    for s, n in (("A", "n1"), ("B", "n2"), ("C", "n1"), ("D", "n2"), ("E", "n3")):
        seq = sb.join("a", s, n)[1]
    node = {"A": "n1", "B": "n2", "C": "n1", "D": "n2", "E": "n3"}
    for x, y in (("A", "B"), ("B", "A"), ("A", "C"), ("C", "A"), ("B", "C"), ("C", "B"),
                 ("D", "A"), ("A", "E")):
        sb.link("a", x, y, "up", node[x])
    events.drain()
    return seq


@pytest.mark.parametrize("mode", ["leave", "disconnect"])
def test_remove_with_links_in_both_directions(r, sb, events, consistent, mode):
    seq = mesh(sb, events)
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 5, "links": 3, "linked": 3, "seq": seq}
    consistent()
    assert sb.remove("a", "A", mode, "n1") == ["ok", 2, seq + 1]
    # every half to or from A is gone, both directions
    assert r.exists(K("a", "links:A")) == 0
    assert r.exists(K("a", "links:D")) == 0
    assert r.smembers(K("a", "links:B")) == {"C"} and r.smembers(K("a", "links:C")) == {"B"}
    assert ints(r.hgetall(K("a", "degree"))) == {"B": 1, "C": 1}
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 4, "links": 1, "linked": 2,
                                                "seq": seq + 1}
    assert ints(r.hgetall(f"{BK}:stats")) == {"rooms": 1, "members": 4, "links": 1,
                                                   "linked": 2}
    assert r.exists(K("a", "presence:A")) == 0
    assert "A" not in r.hkeys(K("a", "members"))
    assert ints(r.hgetall(K("a", "nodes"))) == {"n1": 1, "n2": 2, "n3": 1}
    assert r.smembers(f"{BK}:node:n1:sockets") == {"a C"}
    assert invariants.truth(r) == {"rooms": 1, "members": 4, "links": 1, "linked": 2}
    # one "left" per node still in the room
    want = {"t": "left", "room": "a", "seq": seq + 1, "id": "A", "reason": mode}
    assert sorted(events.drain(), key=lambda x: x[0]) == [("n1", want), ("n2", want),
                                                          ("n3", want)]
    # the activity log is the caller's (P:events is in another slot)
    assert r.exists(f"{PREFIX}:events") == 0
    consistent()


def test_remove_without_formed_links_logs_nothing(r, sb, events, consistent):
    sb.join("a", "A", "n1")
    sb.join("a", "B", "n1")
    sb.link("a", "A", "B", "up", "n1")
    assert sb.remove("a", "A", "leave", "n1")[:2] == ["ok", 0]
    assert r.exists(f"{PREFIX}:events", K("a", "links:A")) == 0
    consistent()


def test_remove_twice_is_harmless(r, sb, events, writes_nothing, consistent):
    seq = mesh(sb, events)
    assert sb.remove("a", "B", "leave", "n2") == ["ok", 2, seq + 1]
    with writes_nothing():
        assert sb.remove("a", "B", "leave", "n2") == ["gone"]
        assert sb.remove("a", "B", "disconnect", "n2") == ["gone"]
    # expired for a socket no longer a member: gone, and nothing else to drop
    with writes_nothing():
        assert sb.remove("a", "B", "expired", "n2") == ["gone"]
    consistent()


def test_remove_refuses_when_presence_is_gone_or_foreign(r, sb, events, writes_nothing,
                                                         consistent):
    mesh(sb, events)
    with writes_nothing():
        assert sb.remove("a", "A", "leave", "n2") == ["gone"]  # not the owner
    r.delete(K("a", "presence:A"))
    with writes_nothing():
        assert sb.remove("a", "A", "leave", "n1") == ["gone"]
        assert sb.remove("a", "A", "disconnect", "n1") == ["gone"]
        assert sb.link("a", "A", "B", "down", "n1") == ["gone"]
    consistent(presence=False)


def test_expired_refuses_while_live_then_reaps(r, sb, events, writes_nothing, consistent):
    seq = mesh(sb, events)
    with writes_nothing():
        assert sb.remove("a", "B", "expired", "n2") == ["live"]
        assert sb.remove("a", "B", "expired", "") == ["live"]
    r.delete(K("a", "presence:B"))  # as if its TTL ran out
    assert sb.remove("a", "B", "expired", "n2") == ["ok", 2, seq + 1]
    want = {"t": "left", "room": "a", "seq": seq + 1, "id": "B", "reason": "expired"}
    assert sorted(events.drain(), key=lambda x: x[0]) == [("n1", want), ("n2", want),
                                                          ("n3", want)]
    assert sb.remove("a", "B", "expired", "n2") == ["gone"]
    consistent()


def test_expired_drops_a_stale_index_entry(r, sb, consistent):
    sb.join("a", "A", "n1")
    r.sadd(f"{BK}:node:n1:sockets", "a GHOST")
    assert sb.remove("a", "GHOST", "expired", "n1") == ["gone"]
    assert r.smembers(f"{BK}:node:n1:sockets") == {"a A"}
    assert sb.remove("a", "GHOST", "expired", "") == ["gone"]
    consistent()


def test_presence_without_record_is_dropped_by_its_owner(r, sb, consistent):
    r.set(K("a", "presence:X"), "n1", px=TTL)
    r.sadd(f"{BK}:node:n1:sockets", "a X")
    assert sb.remove("a", "X", "leave", "n1") == ["gone"]
    assert r.dbsize() == 0


def test_last_member_deletes_room_and_seq_restarts_higher(r, sb, events, consistent):
    sb.join("a", "A", "n1")
    sb.join("a", "B", "n2")
    sb.link("a", "A", "B", "up", "n1")
    seq = sb.link("a", "B", "A", "up", "n2") and int(r.hget(K("a", "stats"), "seq"))
    sb.join("b", "X", "n1")
    assert sb.remove("a", "A", "leave", "n1") == ["ok", 1, seq + 1]
    events.drain()
    assert sb.remove("a", "B", "disconnect", "n2") == ["ok", 0, 0]
    assert events.drain() == []  # nobody left to tell
    for what in ("members", "nodes", "degree", "stats", "links:A", "links:B", "presence:B"):
        assert r.exists(K("a", what)) == 0, what
    assert r.smembers(f"{BK}:rooms") == {"b"}
    assert ints(r.hgetall(f"{BK}:stats")) == {"rooms": 1, "members": 1, "links": 0,
                                                   "linked": 0}
    assert r.smembers(f"{BK}:node:n2:sockets") == set()
    assert sb.read("a") == [0]
    consistent()
    # the room comes back with a sequence above anything it used before
    again = sb.join("a", "C", "n1")[1]
    assert again > seq + 1
    consistent()


def test_remove_rejects_bad_mode(r, sb):
    sb.join("a", "A")
    with pytest.raises(redis.ResponseError):
        sb.remove("a", "A", "kick", "n1")
    assert r.hexists(K("a", "members"), "A")


# --- room_read --------------------------------------------------------------------------------

def test_read(r, sb, writes_nothing):
    with writes_nothing():
        assert sb.read("a") == [0]
    sb.join("a", "A", "n1", "e", '{"n":[]}')
    seq = sb.join("a", "B", "n2")[1]
    with writes_nothing():
        reply = sb.read("a")
    assert reply[0] == seq
    assert dict(zip(reply[1::2], reply[2::2])) == {"A": rec("n1", "e", '{"n":[]}'),
                                                   "B": rec("n2")}


# --- room_assert ------------------------------------------------------------------------------

def state(r):
    """Everything room_assert must restore: records, presence owners, halves, figures."""
    out = {}
    for k in r.scan_iter(count=1000):
        t = r.type(k)
        if k.endswith(":stats") and t == "hash":
            out[k] = {f: v for f, v in r.hgetall(k).items() if f != "seq"}
        elif t == "hash":
            out[k] = r.hgetall(k)
        elif t == "set":
            out[k] = r.smembers(k)
        elif t == "string":
            out[k] = r.get(k)
    return out


def test_assert_after_data_loss_restores_everything(r, sb, events, consistent):
    # A(n1) B(n2) C(n1); formed A-B and A-C; B holds a lone half towards C.
    metas = {"A": '{"name":"a","l":[]}', "B": "{}", "C": '{"c":1}'}
    nodes = {"A": "n1", "B": "n2", "C": "n1"}
    for s in "ABC":
        sb.join("a", s, nodes[s], "ep-" + nodes[s], metas[s])
    sb.join("b", "X", "n2", "ep-n2")
    for x, y in (("A", "B"), ("B", "A"), ("A", "C"), ("C", "A"), ("B", "C")):
        sb.link("a", x, y, "up", nodes[x])
    halves = {s: r.smembers(K("a", "links:" + s)) for s in "ABC"}
    halves["X"] = set()
    rooms = {"A": "a", "B": "a", "C": "a", "X": "b"}
    nodes["X"] = "n2"
    metas["X"] = "{}"
    before = state(r)
    old_seq = int(r.hget(K("a", "stats"), "seq"))
    consistent()

    r.flushall()
    events.drain()
    # Each node re-asserts its sockets; the nodes run concurrently, in any order.
    for s in ("B", "A", "X", "C"):
        n = nodes[s]
        assert sb.assert_(rooms[s], s, n, "ep-" + n, metas[s], TTL, sorted(halves[s])) == \
            ["ok", 1]
        consistent()
    # A half towards a peer not yet re-asserted was skipped; the holder's node re-sends it
    # with link_set when it sees that peer's "join" (what the C node does), and only then.
    ev = events.drain()
    joins = [(n, e["id"]) for n, e in ev if e["t"] == "join"]
    for node, joined in joins:
        for s, hs in halves.items():
            if nodes[s] == node and joined in hs:
                assert sb.link(rooms[s], s, joined, "up", node)[0] == "ok"
    assert {e["t"] for _, e in events.drain()} == {"link"}
    consistent()
    assert state(r) == before
    assert 0 < r.pttl(K("a", "presence:A")) <= TTL
    assert int(r.hget(K("a", "stats"), "seq")) > old_seq

    # Asserting again changes nothing but presence.
    for s in "ABCX":
        n = nodes[s]
        assert sb.assert_(rooms[s], s, n, "ep-" + n, metas[s], TTL, sorted(halves[s])) == \
            ["ok", 0]
    assert state(r) == before
    assert [e for _, e in events.drain()] == []
    consistent()


def test_assert_forms_link_and_publishes(r, sb, events, consistent):
    sb.join("a", "A", "n1")
    sb.join("a", "B", "n2")
    sb.link("a", "B", "A", "up", "n2")
    seq = int(r.hget(K("a", "stats"), "seq"))
    events.drain()
    # A's presence lapsed (as after a long Redis outage); its node re-asserts it with its half
    r.delete(K("a", "presence:A"))
    assert sb.assert_("a", "A", "n1", "e1", "{}", 5000, ["B", "NOBODY", "A"]) == ["ok", 0]
    assert 0 < r.pttl(K("a", "presence:A")) <= 5000
    assert r.smembers(K("a", "links:A")) == {"B"}
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 2, "links": 1, "linked": 2, "seq": seq}
    want = {"t": "link", "room": "a", "seq": seq, "a": "A", "b": "B", "state": "up"}
    assert sorted(events.drain(), key=lambda x: x[0]) == [("n1", want), ("n2", want)]
    consistent()


def test_assert_restores_a_missing_index_entry(r, sb, consistent):
    sb.join("a", "A", "n1")
    r.delete(f"{BK}:node:n1:sockets")
    assert sb.assert_("a", "A", "n1") == ["ok", 0]
    assert r.smembers(f"{BK}:node:n1:sockets") == {"a A"}
    consistent()


# --- room_check -------------------------------------------------------------------------------

def test_check_of_a_consistent_room_fixes_nothing(r, sb, events, writes_nothing):
    mesh(sb, events)
    with writes_nothing():
        assert sb.check("a") == [0, 0, 0]


def test_check_repairs_planted_corruption(r, sb, events, consistent):
    seq = mesh(sb, events)  # formed A-B, A-C, B-C; halves D->A, A->E
    sb.join("b", "X", "n1")
    # wrong room counter, with P:stats carrying the same error (a buggy delta applied to both)
    r.hset(K("a", "stats"), "members", 7)
    r.hincrby(f"{BK}:stats", "members", 2)
    # a wrong counter in the other room alone (P:stats right): the check brings P:stats along
    r.hset(K("b", "stats"), "linked", 4)
    # half link towards a non-member, and to oneself
    r.sadd(K("a", "links:B"), "GHOST", "B")
    # wrong degree (C is 2), an extra field (D has no formed link), a missing one (B)
    r.hset(K("a", "degree"), mapping={"C": 5, "D": 1})
    r.hdel(K("a", "degree"), "B")
    # wrong nodes hash: wrong count, extra node, missing node
    r.hset(K("a", "nodes"), mapping={"n2": 5, "n9": 1})
    r.hdel(K("a", "nodes"), "n3")
    # a missing socket index entry
    r.srem(f"{BK}:node:n1:sockets", "a C")
    # a member whose node died
    r.delete(K("a", "presence:D"))
    assert invariants.check(r, PREFIX, presence=False) != []

    reply = sb.check("a")
    # counters: members, n2, n9, n3, index entry = 5; halves: 2; degree: C, D, B = 3
    assert reply == [5, 2, 3, "D"]
    # the other room: its stats says linked 4, P:stats does not; the check applies -4 to both,
    # which leaves P:stats short by 4 until stats_check (P:stats had no error to remove)
    assert sb.check("b") == [1, 0, 0]
    assert ints(r.hgetall(K("a", "stats"))) == {"members": 5, "links": 3, "linked": 3, "seq": seq}
    assert ints(r.hgetall(K("a", "degree"))) == {"A": 2, "B": 2, "C": 2}
    assert ints(r.hgetall(K("a", "nodes"))) == {"n1": 2, "n2": 2, "n3": 1}
    assert r.smembers(K("a", "links:B")) == {"A", "C"}
    assert sb.stats_check() == [1]
    consistent(presence=False)
    assert invariants.truth(r) == {"rooms": 2, "members": 6, "links": 3, "linked": 3}
    # the admin reaps what the check returned
    assert sb.remove("a", "D", "expired", "n2")[0] == "ok"
    consistent()
    assert sb.check("a") == [0, 0, 0]
    assert sb.check("b") == [0, 0, 0]
    assert sb.stats_check() == [0]


def test_check_with_a_slice_of_a_small_room_is_the_whole_check(r, sb, events, writes_nothing):
    mesh(sb, events)
    with writes_nothing():
        assert sb.check_slice("a", 200) == [0, 0, 0, "0"]
    r.hset(K("a", "degree"), "C", 5)  # a room-wide figure: recounted, the room fits one slice
    assert sb.check_slice("a", 200) == [0, 0, 1, "0"]
    # a room over the slice that is still one listpack: one HSCAN step has it all, so the whole
    # check runs (room-wide figures included)
    r.hset(K("a", "degree"), "C", 5)
    assert r.object("encoding", K("a", "members")) == "listpack"
    assert sb.check_slice("a", 2) == [0, 0, 1, "0"]


def test_check_of_a_big_room_goes_a_slice_at_a_time(r, sb, consistent):
    # 600 members on 3 nodes (past hash-max-listpack-entries: a smaller hash is one listpack,
    # which HSCAN returns at once, and the check is then whole), a formed link A0-A1, then
    # planted damage of the kinds a slice
    # repairs: the members figure, half links to a non-member and to oneself, missing socket
    # index entries, and lapsed presence (every 7th member).
    ids = [f"A{i}" for i in range(600)]
    p = r.pipeline(transaction=False)
    for i, s in enumerate(ids):
        p.evalsha(sb.sha["room_join"], 2, sb.members_key("big"), sb.bucket_key("big"), PREFIX,
                  "big", s, f"n{1 + i % 3}", "e1", "{}", 15000, 1000)
    p.execute()
    sb.link("big", "A0", "A1")
    sb.link("big", "A1", "A0", "up", "n2")
    consistent()
    for key in (K("big", "stats"), f"{BK}:stats"):
        r.hincrby(key, "members", 4)
    r.sadd(K("big", "links:A5"), "GHOST", "A5")
    r.srem(f"{BK}:node:n1:sockets", "big A3", "big A300")
    seq = r.hget(K("big", "stats"), "seq")
    r.hdel(K("big", "stats"), "seq")  # restored from the clock (greater than any it had)
    lapsed = set(ids[::7])
    for s in lapsed:
        r.delete(K("big", f"presence:{s}"))

    assert r.object("encoding", K("big", "members")) == "hashtable"
    replies = sb.check_slices("big", 100)
    assert len(replies) >= 4  # 600 members in slices of about 100 (HSCAN's COUNT is a hint)
    found = [x for rep in replies for x in rep[4:]]
    assert set(found) == lapsed
    # each call reports only its own slice's members: about 100 of 600, of which 1 in 7 lapsed
    assert max(len(rep) - 4 for rep in replies) < len(lapsed)
    assert sum(rep[0] for rep in replies) == 4  # the members figure, seq, 2 index entries
    assert int(r.hget(K("big", "stats"), "seq")) > int(seq)
    assert sum(rep[1] for rep in replies) == 2  # GHOST, A5 -> A5
    assert all(rep[2] == 0 for rep in replies)  # room-wide figures are not recounted here
    assert ints(r.hgetall(K("big", "stats")))["members"] == 600
    assert r.smembers(K("big", "links:A5")) == set()
    assert {"big A3", "big A300"} <= r.smembers(f"{BK}:node:n1:sockets")
    assert ints(r.hgetall(K("big", "degree"))) == {"A0": 1, "A1": 1}
    consistent(presence=False)
    # a second round finds nothing to repair, only the same lapsed members
    again = sb.check_slices("big", 100)
    assert [rep[:3] for rep in again] == [[0, 0, 0]] * len(again)
    assert {x for rep in again for x in rep[4:]} == lapsed
    # without a slice it is the whole check, in one call
    whole = sb.check("big")
    assert whole[:3] == [0, 0, 0] and set(whole[3:]) == lapsed


def test_check_repairs_a_global_error_shared_with_the_room(r, sb, consistent):
    sb.join("a", "A", "n1")
    sb.join("a", "B", "n1")
    sb.link("a", "A", "B", "up", "n1")
    sb.link("a", "B", "A", "up", "n1")
    for key in (K("a", "stats"), f"{BK}:stats"):
        r.hincrby(key, "links", 3)
        r.hincrby(key, "linked", -1)
    assert sb.check("a") == [2, 0, 0]
    consistent()


def test_check_deletes_an_empty_room(r, sb, consistent):
    sb.join("b", "X", "n1")
    # leftovers of room z: listed, counted, with figures, no members
    r.hset(K("z", "stats"), mapping={"members": 2, "links": 0, "linked": 1, "seq": 5})
    r.hset(K("z", "degree"), "Q", 1)
    r.hset(K("z", "nodes"), "n1", 2)
    r.sadd(f"{BK}:rooms", "z")
    for f, v in (("rooms", 1), ("members", 2), ("linked", 1)):
        r.hincrby(f"{BK}:stats", f, v)
    assert sb.check("z") == [3, 0, 1]  # members, linked, nodes n1; degree Q
    for what in ("stats", "degree", "nodes", "members"):
        assert r.exists(K("z", what)) == 0
    consistent()
    # only listed: no figure to fix
    r.sadd(f"{BK}:rooms", "y")
    r.hincrby(f"{BK}:stats", "rooms", 1)
    assert sb.check("y") == [0, 0, 0]
    consistent()
    # a room that never existed
    assert sb.check("never") == [0, 0, 0]
    consistent()


def test_check_deletes_an_empty_room_with_its_resume_state(r, sb, consistent):
    """The leftovers of a room whose last member was away: its resume record, away entry,
    queue and byte count, the bucket's deadline index entry and away figure. room_check deletes
    them with the room, as room_remove does (before: the away figure stayed in the bucket and
    the keys stayed for good)."""
    sb.join("b", "X", "n1")
    r.hset(K("z", "stats"), mapping={"members": 1, "away": 1, "seq": 5})
    r.hset(K("z", "resume"), "Q", '{"h":"x","o":"","u":"","g":1000}')
    r.hset(K("z", "away"), "Q", "{}")
    r.rpush(K("z", "queue:Q"), "F data")
    r.hset(K("z", "qbytes"), "Q", 6)
    r.zadd(f"{BK}:away", {"z Q": 1})
    r.sadd(f"{BK}:rooms", "z")
    for f in ("rooms", "members", "away"):
        r.hincrby(f"{BK}:stats", f, 1)
    assert sb.check("z") == [2, 0, 0]  # members, away
    for what in ("stats", "resume", "away", "qbytes", "queue:Q"):
        assert r.exists(K("z", what)) == 0, what
    assert r.zscore(f"{BK}:away", "z Q") is None
    assert int(r.hget(f"{BK}:stats", "away") or 0) == 0
    consistent()


def test_check_adds_a_missing_seq_and_room_listing(r, sb, consistent):
    sb.join("a", "A", "n1")
    r.hdel(K("a", "stats"), "seq")
    r.srem(f"{BK}:rooms", "a")
    r.hincrby(f"{BK}:stats", "rooms", -1)
    t0 = now_us()
    assert sb.check("a") == [2, 0, 0]
    assert int(r.hget(K("a", "stats"), "seq")) >= t0
    consistent()


# --- stats_check ------------------------------------------------------------------------------

def test_stats_check(r, sb, events, writes_nothing, consistent):
    with writes_nothing():
        assert sb.stats_check() == [0]
    mesh(sb, events)
    sb.join("b", "X", "n1")
    sb.join("c", "Y", "n2")
    with writes_nothing():
        assert sb.stats_check() == [0]
    r.hset(f"{BK}:stats", mapping={"rooms": 9, "members": 1, "links": 3})
    r.hdel(f"{BK}:stats", "linked")
    assert sb.stats_check() == [3]
    assert ints(r.hgetall(f"{BK}:stats")) == {"rooms": 3, "members": 7, "links": 3,
                                                   "linked": 3}
    assert sb.stats_check() == [0]
    consistent()


# --- admin_lock -------------------------------------------------------------------------------

def test_admin_lock(r, sb):
    lock = f"{PREFIX}:admin:lock"
    assert sb.admin_lock("adm1", 10000) == 1
    assert r.get(lock) == "adm1" and 0 < r.pttl(lock) <= 10000
    r.pexpire(lock, 100)
    assert sb.admin_lock("adm1", 10000) == 1  # renewed
    assert 100 < r.pttl(lock) <= 10000
    assert sb.admin_lock("adm2", 10000) == 0
    assert r.get(lock) == "adm1" and r.pttl(lock) > 100
    r.delete(lock)  # lapsed
    assert sb.admin_lock("adm2", 10000) == 1
    assert r.get(lock) == "adm2"
    with pytest.raises(redis.ResponseError):
        sb.admin_lock("adm2", 0)


# --- randomized -------------------------------------------------------------------------------

class Model:
    """What the scripts should leave behind, kept independently of them."""

    def __init__(self):
        self.rooms = {}  # room -> {sid: node}
        self.halves = {}  # sid -> set of peers
        self.where = {}  # sid -> room
        self.dead = set()  # members whose presence is gone (not yet reaped)

    def figures(self):
        out = {"rooms": 0, "members": 0, "links": 0, "linked": 0}
        for room, mem in self.rooms.items():
            if not mem:
                continue
            out["rooms"] += 1
            out["members"] += len(mem)
            for s in mem:
                d = sum(1 for b in self.halves.get(s, ()) if s in self.halves.get(b, ()))
                out["links"] += d
                out["linked"] += 1 if d else 0
        out["links"] //= 2
        return out

    def remove(self, s):
        room = self.where.pop(s)
        del self.rooms[room][s]
        self.halves.pop(s, None)
        for b in self.rooms[room]:
            self.halves.get(b, set()).discard(s)
        self.dead.discard(s)


def test_randomized_operations_keep_the_invariants(r, sb, events):
    rnd = random.Random(20240611)
    rooms = ["r0", "r1", "r2", "r3"]
    nodes = ["n1", "n2", "n3"]
    m = Model()
    next_id = 0
    last_seq = {}  # (node, room) -> last membership seq seen
    counts = {}

    def live_members():
        return [s for s in m.where if s not in m.dead]

    def pick_peer(s):
        room = m.where[s]
        choices = [b for b in m.rooms[room] if b != s]
        if not choices or rnd.random() < 0.05:
            return "nobody"
        return rnd.choice(choices)

    for batch in range(40):
        for _ in range(100):
            op = rnd.choices(["join", "link", "leave", "die", "reap", "stale", "check"],
                             [25, 45, 10, 5, 6, 5, 4])[0]
            counts[op] = counts.get(op, 0) + 1
            if op == "join" or not m.where:
                room, node = rnd.choice(rooms), rnd.choice(nodes)
                s = f"s{next_id}"
                next_id += 1
                reply = sb.join(room, s, node, "e" + node, '{"i":%d}' % next_id, TTL, 8)
                mem = m.rooms.setdefault(room, {})
                if len(mem) >= 8:
                    assert reply == ["room-full"]
                else:
                    assert reply[0] == "ok"
                    mem[s] = node
                    m.where[s] = room
                    assert sorted(reply[2::2]) == sorted(mem)
            elif op == "link":
                alive = live_members()
                if not alive:
                    continue
                s = rnd.choice(alive)
                room, node = m.where[s], m.rooms[m.where[s]][s]
                b = pick_peer(s)
                state = "up" if rnd.random() < 0.7 else "down"
                reply = sb.link(room, s, b, state, node)
                if b not in m.rooms[room]:
                    assert reply == ["peer-not-found"]
                    continue
                mine, theirs = m.halves.setdefault(s, set()), m.halves.setdefault(b, set())
                if state == "up":
                    changed = b not in mine and s in theirs
                    mine.add(b)
                else:
                    changed = b in mine and s in theirs
                    mine.discard(b)
                    theirs.discard(s)
                assert reply == ["ok", int(changed)]
            elif op == "leave":
                alive = live_members()
                if not alive:
                    continue
                s = rnd.choice(alive)
                room, node = m.where[s], m.rooms[m.where[s]][s]
                mode = rnd.choice(["leave", "disconnect"])
                mine = m.halves.get(s, set())
                formed = sum(1 for b in mine if s in m.halves.get(b, set()))
                reply = sb.remove(room, s, mode, node)
                m.remove(s)
                assert reply[:2] == ["ok", formed]
                assert (reply[2] == 0) == (not m.rooms[room])
            elif op == "die":
                alive = live_members()
                if not alive:
                    continue
                s = rnd.choice(alive)
                r.delete(K(m.where[s], "presence:" + s))
                m.dead.add(s)
            elif op == "reap":
                target = rnd.choice(sorted(m.where))
                room, node = m.where[target], m.rooms[m.where[target]][target]
                reply = sb.remove(room, target, "expired", node)
                if target in m.dead:
                    formed = sum(1 for b in m.halves.get(target, ())
                                 if target in m.halves.get(b, set()))
                    m.remove(target)
                    assert reply[:2] == ["ok", formed]
                else:
                    assert reply == ["live"]
            elif op == "stale":
                # a script for a socket whose presence is gone, or that left already
                if m.dead and rnd.random() < 0.5:
                    s = rnd.choice(sorted(m.dead))
                    room, node = m.where[s], m.rooms[m.where[s]][s]
                else:
                    s, room, node = "left-long-ago", rnd.choice(rooms), rnd.choice(nodes)
                assert sb.link(room, s, "x", "up", node) == ["gone"]
                assert sb.remove(room, s, "leave", node) == ["gone"]
            elif op == "check":
                room = rnd.choice(rooms)
                dead = sorted(s for s in m.dead if m.where[s] == room)
                reply = sb.check(room)
                assert reply[:3] == [0, 0, 0]
                assert sorted(reply[3:]) == dead
                assert sb.stats_check() == [0]
        bad = invariants.check(r, PREFIX, presence=False)
        assert bad == [], f"batch {batch}:\n" + "\n".join(bad)
        want = m.figures()
        assert invariants.truth(r) == want
        g = r.hgetall(f"{BK}:stats")
        assert {k: int(g.get(k, 0)) for k in want} == want
        # events: per node and room, membership sequence numbers only go up; a link event
        # carries the sequence of the last membership change
        for node, e in events.drain():
            key = (node, e["room"])
            if e["t"] in ("join", "left"):
                assert e["seq"] > last_seq.get(key, 0), (key, e)
                last_seq[key] = e["seq"]
            elif e["t"] == "unlink":
                assert set(e) == {"t", "room", "a", "b"}, e
            else:
                assert e["t"] == "link" and e["seq"] <= max(
                    v for (n, rm), v in last_seq.items() if rm == e["room"])
    # every kind of operation ran many times
    assert all(counts.get(op, 0) > 50 for op in ("join", "link", "leave", "die", "reap"))
    # reap everything that died; the state stays consistent with presence required
    for s in sorted(m.dead):
        room, node = m.where[s], m.rooms[m.where[s]][s]
        assert sb.remove(room, s, "expired", node)[0] == "ok"
        m.remove(s)
    bad = invariants.check(r, PREFIX)
    assert bad == [], "\n".join(bad)
    assert invariants.truth(r) == m.figures()


# --- the checker itself -----------------------------------------------------------------------

CORRUPTIONS = {
    "room counter": lambda r: r.hincrby(K("a", "stats"), "links", 1),
    "global counter": lambda r: r.hincrby(f"{BK}:stats", "members", 1),
    "global rooms": lambda r: r.hincrby(f"{BK}:stats", "rooms", 1),
    "rooms set": lambda r: r.sadd(f"{BK}:rooms", "zz"),
    "missing seq": lambda r: r.hdel(K("a", "stats"), "seq"),
    "half to non-member": lambda r: r.sadd(K("a", "links:A"), "GHOST"),
    "half to self": lambda r: r.sadd(K("a", "links:A"), "A"),
    "half of non-member": lambda r: r.sadd(K("a", "links:GHOST"), "A"),
    "degree": lambda r: r.hset(K("a", "degree"), "D", 1),
    "nodes hash": lambda r: r.hset(K("a", "nodes"), "n1", 5),
    "presence missing": lambda r: r.delete(K("a", "presence:A")),
    "presence foreign": lambda r: r.set(K("a", "presence:A"), "n9", px=TTL),
    "presence without TTL": lambda r: r.persist(K("a", "presence:A")),
    "presence of non-member": lambda r: r.set(K("a", "presence:GHOST"), "n1", px=TTL),
    "index extra": lambda r: r.sadd(f"{BK}:node:n1:sockets", "a GHOST"),
    "index missing": lambda r: r.srem(f"{BK}:node:n1:sockets", "a A"),
    "empty room leftovers": lambda r: r.hset(K("empty", "stats"), "seq", 1),
    "record without node": lambda r: r.hset(K("a", "members"), "A", '{"meta":{}}'),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_invariants_check_sees_each_violation(r, sb, events, kind):
    mesh(sb, events)
    assert invariants.check(r, PREFIX) == []
    before = invariants.truth(r)
    assert before == {"rooms": 1, "members": 5, "links": 3, "linked": 3}
    CORRUPTIONS[kind](r)
    assert invariants.check(r, PREFIX) != []
    if kind == "presence missing":
        assert invariants.check(r, PREFIX, presence=False) == []


# --- bucket_read ------------------------------------------------------------------------------

def test_bucket_read_sums_buckets_and_lists_the_nonempty(r, sb, writes_nothing):
    """What the admin reads instead of walking rooms: the buckets' figures summed, and which
    buckets hold a given set (rooms, or a node's socket index)."""
    sb.join("a", "A", "n1")
    sb.join("a", "B", "n2")
    sb.link("a", "A", "B", "up", "n1")
    sb.link("a", "B", "A", "up", "n2")
    sb.join("b", "C", "n1")
    # Another bucket (the tag of some cluster slot: on a single Redis any tag is a key like any)
    r.hset(f"{PREFIX}:{{#7}}:stats", mapping={"rooms": 2, "members": 3, "links": 0, "linked": 0})
    sha = sb.sha["bucket_read"]
    with writes_nothing():
        assert r.evalsha(sha, 0, PREFIX, "rooms", "#", "#7", "#8") == \
            [4, 6, 1, 2, 0, 0, 0, 0, "#", "#7"]
        assert r.evalsha(sha, 0, PREFIX, "node:n2:sockets", "#", "#7") == \
            [4, 6, 1, 2, 0, 0, 0, 0, "#"]
        assert r.evalsha(sha, 0, PREFIX, "node:n9:sockets", "#", "#7") == [4, 6, 1, 2, 0, 0, 0, 0]
        assert r.evalsha(sha, 0, PREFIX, "", "#8") == [0, 0, 0, 0, 0, 0, 0, 0]
    r.hset(f"{PREFIX}:{{#7}}:stats", "away", 2)  # the away figure is summed too
    assert r.evalsha(sha, 0, PREFIX, "", "#", "#7") == [4, 6, 1, 2, 2, 0, 0, 0]
    # and the PeerJS share (docs/peerjs.md), after the totals
    r.hset(f"{PREFIX}:{{#7}}:stats", mapping={"pj_members": 3, "pj_links": 1, "pj_away": 1})
    assert r.evalsha(sha, 0, PREFIX, "", "#", "#7") == [4, 6, 1, 2, 2, 3, 1, 1]
    with pytest.raises(redis.ResponseError, match="bad arguments"):
        r.evalsha(sha, 0, "")
