"""The Redis invariants of lua/README.md, checked from outside by SCAN.

Test-only code: it walks the whole keyspace, which no production path may do. `check` returns
human readable violations (an empty list means the state is consistent); `truth` computes the
cluster figures from the sets and hashes alone, ignoring every counter.
Key names follow lua/README.md. Room names, socket ids and node ids never contain '{', '}' or
a space, so key names and socket index entries split unambiguously.
"""
import json
import re

import keyspace


def _room_keys(r, prefix):
    """{room: {"members", "nodes", "degree", "stats", "presence": [S], "links": [S]}}."""
    pat = re.compile(re.escape(prefix) + r":\{([^}#]*)\}:(members|nodes|degree|stats|"
                     r"resume|away|qbytes|presence:(.+)|links:(.+)|queue:(.+)|pjqb?:(.+)|rlinks:(.+))$")
    rooms = {}
    for key in r.scan_iter(match=f"{prefix}:{{*}}:*", count=1000):
        if key.startswith(prefix + ":{#"):
            continue  # a bucket (_buckets)
        m = pat.match(key)
        if not m:
            rooms.setdefault("?", {}).setdefault("unknown", []).append(key)
            continue
        room, kind = m.group(1), m.group(2)
        ent = rooms.setdefault(room, {"presence": [], "links": [], "unknown": [], "queue": [],
                                      "pjq": []})
        if m.group(7) is not None:
            ent.setdefault("rlinks", []).append(m.group(7))
        elif m.group(6) is not None:
            # PeerJS messages waiting for an id that may not be a member yet (docs/peerjs.md)
            ent["pjq"].append(m.group(6))
        elif m.group(5) is not None:
            ent["queue"].append(m.group(5))
        elif m.group(3) is not None:
            ent["presence"].append(m.group(3))
        elif m.group(4) is not None:
            ent["links"].append(m.group(4))
        else:
            ent[kind] = True
    return rooms


def _buckets(r, prefix):
    """{tag: {"stats": {...}, "rooms": set, "sockets": {node: set}}} of every bucket P:{#...}."""
    pat = re.compile(re.escape(prefix) + r":\{(#[^}]*)\}:(stats|rooms|away|node:(.+):sockets)$")
    out = {}
    backlog = re.compile(re.escape(prefix) + r":\{#[^}]*\}:node:.+:backlog$")
    for key in r.scan_iter(match=f"{prefix}:{{#*}}:*", count=1000):
        m = pat.match(key)
        if not m and backlog.match(key):
            continue  # events nobody received, kept 10 s for their node (lua/README.md)
        if not m:
            out.setdefault("?", {}).setdefault("unknown", []).append(key)
            continue
        b = out.setdefault(m.group(1), {"stats": {}, "rooms": set(), "sockets": {}, "away": {}})
        if m.group(2) == "stats":
            b["stats"] = r.hgetall(key)
        elif m.group(2) == "away":
            b["away"] = dict(r.zrange(key, 0, -1, withscores=True))
        elif m.group(2) == "rooms":
            b["rooms"] = set(r.smembers(key))
        else:
            b["sockets"][m.group(3)] = set(r.smembers(key))
    return out


def _node_of(rec):
    try:
        node = json.loads(rec).get("node")
    except (ValueError, AttributeError):
        return None
    return node if isinstance(node, str) else None


def _room_truth(r, prefix, room, link_owners):
    """(members {S: record}, halves {S: set}, degree {S: n}, links) of one room;
    link_owners: the S of every P:{R}:links:S key."""
    base = f"{prefix}:{{{room}}}:"
    members = r.hgetall(base + "members")
    halves = {s: set(r.smembers(base + "links:" + s)) for s in link_owners}
    degree = {}
    for s in members:
        d = sum(1 for b in halves.get(s, ()) if b in members and b != s
                and s in halves.get(b, ()))
        if d:
            degree[s] = d
    return members, halves, degree, sum(degree.values()) // 2


def truth(r, prefix="sb"):
    """Cluster figures from the sets: rooms with members, members, formed links, linked."""
    out = {"rooms": 0, "members": 0, "links": 0, "linked": 0}
    for room, ent in _room_keys(r, prefix).items():
        if room == "?":
            continue
        members, _, degree, links = _room_truth(r, prefix, room, ent["links"])
        if members:
            out["rooms"] += 1
        out["members"] += len(members)
        out["links"] += links
        out["linked"] += len(degree)
    return out


def _int_fields(h, fields):
    out = {}
    for f in fields:
        v = h.get(f)
        try:
            out[f] = int(v) if v is not None else 0
        except ValueError:
            out[f] = v
    return out


def check(r, prefix="sb", presence=True):
    """Violations of the invariants, as readable strings; [] when consistent.

    presence=False skips "every member has a live presence key" (tests that look before the
    admin's reconcile has reaped a dead node's sockets)."""
    bad = []
    rooms = _room_keys(r, prefix)
    for key in rooms.pop("?", {}).get("unknown", []):
        bad.append(f"unexpected key {key}")
    expected_entries = {}  # node -> set of "R S"
    sums = {"rooms": 0, "members": 0, "links": 0, "linked": 0, "away": 0}
    away_entries = {}  # tag-less: "R S" -> deadline of every away member
    nonempty = set()
    room_figures = {}  # room -> its true figures
    for room, ent in sorted(rooms.items()):
        base = f"{prefix}:{{{room}}}:"
        members, halves, degree, links = _room_truth(r, prefix, room, ent["links"])
        if not members:
            for kind in ("members", "nodes", "degree", "stats"):
                if ent.get(kind):
                    bad.append(f"room {room}: no members but {base}{kind} exists")
            for s in ent["presence"]:
                bad.append(f"room {room}: presence of {s} in an empty room")
            for s in ent["links"]:
                bad.append(f"room {room}: links of {s} in an empty room")
            for s in ent.get("rlinks", []):
                bad.append(f"room {room}: rlinks of {s} in an empty room")
            for kind in ("resume", "away", "qbytes"):
                if ent.get(kind):
                    bad.append(f"room {room}: no members but {base}{kind} exists")
            for s in ent["queue"]:
                bad.append(f"room {room}: queue of {s} in an empty room")
            continue
        nonempty.add(room)
        # Halves: from members, towards members, never to oneself (invariant 1).
        for s, hs in sorted(halves.items()):
            if s not in members:
                bad.append(f"room {room}: {s} holds halves {sorted(hs)} but is not a member")
            for b in sorted(hs):
                if b not in members:
                    bad.append(f"room {room}: half {s}->{b} points at a non-member")
                if b == s:
                    bad.append(f"room {room}: half {s}->{s} points at itself")
        # PeerJS rooms: P:{R}:rlinks:B is exactly who holds a half towards B (docs/peerjs.md).
        if room.startswith("~pj."):
            rev = {}
            for s, hs in halves.items():
                for b in hs:
                    rev.setdefault(b, set()).add(s)
            for b in sorted(set(rev) | set(ent.get("rlinks", []))):
                have = set(r.smembers(base + "rlinks:" + b))
                if have != rev.get(b, set()):
                    bad.append(f"room {room}: rlinks of {b} {sorted(have)} != holders of a half "
                               f"towards it {sorted(rev.get(b, set()))}")
        elif ent.get("rlinks"):
            bad.append(f"room {room}: rlinks keys in a native room: {ent['rlinks']}")
        # Presence (invariant 2): members have it, with their node and a TTL; nobody else does.
        for s in sorted(ent["presence"]):
            if s not in members:
                bad.append(f"room {room}: presence key of non-member {s}")
        for s, rec in sorted(members.items()):
            node = _node_of(rec)
            if node is None:
                bad.append(f"room {room}: record of {s} has no node: {rec!r}")
                continue
            expected_entries.setdefault(node, set()).add(f"{room} {s}")
            pkey = base + "presence:" + s
            val = r.get(pkey)
            if val is None:
                if presence:
                    bad.append(f"room {room}: member {s} has no presence key")
                continue
            if val != node:
                bad.append(f"room {room}: presence of {s} is {val!r}, record says {node!r}")
            if r.pttl(pkey) < 0:
                bad.append(f"room {room}: presence of {s} has no TTL")
        # Degree hash.
        stored = {k: v for k, v in r.hgetall(base + "degree").items()}
        want = {k: str(v) for k, v in degree.items()}
        if stored != want:
            bad.append(f"room {room}: degree hash {stored} != {want}")
        # Nodes hash.
        per_node = {}
        for rec in members.values():
            node = _node_of(rec)
            if node is not None:
                per_node[node] = per_node.get(node, 0) + 1
        stored = r.hgetall(base + "nodes")
        want = {k: str(v) for k, v in per_node.items()}
        if stored != want:
            bad.append(f"room {room}: nodes hash {stored} != {want}")
        # Away state (session resume): away sockets are members (a link needs two members,
        # present or away: the halves check above covers it); resume records, queues and
        # queued bytes belong to members, queues and bytes to away ones.
        away = r.hgetall(base + "away")
        for s, v in sorted(away.items()):
            if s not in members:
                bad.append(f"room {room}: away entry of non-member {s}")
                continue
            try:
                away_entries[f"{room} {s}"] = int(v.split(" ", 1)[0])
            except ValueError:
                bad.append(f"room {room}: away entry of {s} has no deadline: {v!r}")
        for s in r.hkeys(base + "resume"):
            if s not in members:
                bad.append(f"room {room}: resume record of non-member {s}")
        for s in sorted(ent["queue"]):
            if s not in away:
                bad.append(f"room {room}: queue of {s}, which is not away")
        for s, v in sorted(r.hgetall(base + "qbytes").items()):
            if s not in away:
                bad.append(f"room {room}: queued bytes of {s}, which is not away")
            elif int(v) != sum(len(x.encode()) for x in r.lrange(base + "queue:" + s, 0, -1)):
                bad.append(f"room {room}: queued bytes of {s} {v} != its queue's")
        # Room figures (invariant 3).
        st = r.hgetall(base + "stats")
        have = _int_fields(st, ("members", "links", "linked", "away"))
        want = {"members": len(members), "links": links, "linked": len(degree),
                "away": len(away)}
        if have != want:
            bad.append(f"room {room}: stats {have} != truth {want}")
        try:
            if int(st.get("seq", "0")) <= 0:
                raise ValueError
        except ValueError:
            bad.append(f"room {room}: no valid seq in stats: {st.get('seq')!r}")
        room_figures[room] = want
        for k in want:
            sums[k] += want[k]
    sums["rooms"] = len(nonempty)

    # Buckets: each room's cross-room figures and index entries are in its bucket, P:{#} on a
    # single Redis or P:{#n} (the tag of the room's slot) on a cluster; every bucket's figures
    # are the sums over its rooms, so their total is the sum over all rooms.
    buckets = _buckets(r, prefix)
    for key in buckets.pop("?", {}).get("unknown", []):
        bad.append(f"unexpected bucket key {key}")
    cluster = any(t != "#" for t in buckets)

    def tag_of(room):
        return keyspace.bucket_tag(room, cluster)

    total = {"rooms": 0, "members": 0, "links": 0, "linked": 0, "away": 0}
    fig = ("rooms", "members", "links", "linked", "away", "pj_members", "pj_links", "pj_away")
    want_b = {}
    for room in nonempty:
        w = want_b.setdefault(tag_of(room), dict({k: 0 for k in fig}, set=set()))
        w["rooms"] += 1
        w["set"].add(room)
        for k in ("members", "links", "linked", "away"):
            w[k] += room_figures[room][k]
            # The PeerJS share (docs/peerjs.md): the same figures of the "~pj.K" rooms.
            if room.startswith("~pj.") and k != "linked":
                w["pj_" + k] += room_figures[room][k]
    for tag in sorted(set(buckets) | set(want_b)):
        b = buckets.get(tag, {"stats": {}, "rooms": set(), "sockets": {}, "away": {}})
        w = want_b.get(tag, dict({k: 0 for k in fig}, set=set()))
        have = _int_fields(b["stats"], fig)
        want = {k: w[k] for k in fig}
        if have != want:
            bad.append(f"bucket {tag} stats {have} != sum of its rooms {want}")
        idx = {e: int(d) for e, d in b.get("away", {}).items()}
        mine = {e: d for e, d in away_entries.items() if tag_of(e.split(" ", 1)[0]) == tag}
        if idx != mine:
            bad.append(f"bucket {tag} away index {idx} != its away members {mine}")
        if b["rooms"] != w["set"]:
            bad.append(f"bucket {tag} rooms {sorted(b['rooms'])} != its non-empty rooms "
                       f"{sorted(w['set'])}")
        for k in total:
            total[k] += have.get(k, 0)
    if total != sums:
        bad.append(f"buckets' total {total} != sum of rooms {sums}")

    # Socket index: P:{T}:node:N:sockets holds exactly "R S" for each member of a room of
    # bucket T hosted by N.
    indexed = {}
    for tag, b in buckets.items():
        for node, entries in b["sockets"].items():
            for e in entries:
                room = e.split(" ", 1)[0]
                if tag_of(room) != tag:
                    bad.append(f"socket index of {node} in bucket {tag}: {e!r} belongs to "
                               f"bucket {tag_of(room)}")
            indexed.setdefault(node, set()).update(entries)
    for node in sorted(set(indexed) | set(expected_entries)):
        have, want = indexed.get(node, set()), expected_entries.get(node, set())
        for e in sorted(have - want):
            bad.append(f"socket index of {node}: {e!r} is not a member hosted there")
        for e in sorted(want - have):
            bad.append(f"socket index of {node}: {e!r} missing")
    return bad


def counters(r, prefix="sb"):
    """The buckets' figures as maintained by the scripts, summed (missing fields as 0): what
    the admin reports."""
    s = {"rooms": 0, "members": 0, "links": 0, "linked": 0}
    for b in _buckets(r, prefix).values():
        for k, v in b.get("stats", {}).items():
            if k in s:
                s[k] += int(v)
    return s


def away(r, prefix="sb"):
    """(away members by their entries, the buckets' away figure summed): the first from the
    rooms' away hashes, the second as maintained by the scripts (what the admin reports)."""
    truth_n = 0
    for room, ent in _room_keys(r, prefix).items():
        if room != "?":
            members = r.hkeys(f"{prefix}:{{{room}}}:members")
            truth_n += sum(1 for s in r.hkeys(f"{prefix}:{{{room}}}:away") if s in members)
    counted = sum(int(b.get("stats", {}).get("away", 0)) for b in _buckets(r, prefix).values())
    return truth_n, counted
