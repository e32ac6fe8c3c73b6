"""Join authorization (docs/protocol.md, --auth-secret-file) and abuse limits: HS256 JWTs built
here with hmac and base64url, every way a token can be wrong refused with no write to Redis,
`sub` as the peers see it, the secret file's minimum length, --auth-timeout-ms (4001), and
join/leave churn throttled then closed with 4002 while the room stays responsive."""
import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import time

import pytest
import websockets

import invariants
from client import Client
from harness import node_binary, wait_for

SECRET = b"0123456789abcdef" * 3  # 48 bytes
# Long heartbeats: the node writes nothing on its own during a test (lease and presence
# refreshes are the only periodic writes), so Redis's dirty counter shows every write a join
# causes.
QUIET = ["--heartbeat-ms", "60000", "--presence-ttl-ms", "125000"]


def b64u(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(claims, secret=SECRET, alg="HS256", header=None, sign=None):
    """A compact JWS. sign: "HS256" / "HS384" / "HS512" / "none" (default: alg)."""
    head = header if header is not None else {"alg": alg, "typ": "JWT"}
    signing_input = (b64u(json.dumps(head, separators=(",", ":")).encode()) + "." +
                     b64u(json.dumps(claims, separators=(",", ":")).encode()))
    how = sign or alg
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    if how in digest:
        sig = b64u(hmac.new(secret, signing_input.encode(), digest[how]).digest())
    else:
        sig = ""
    return signing_input + "." + sig


def claims(**kw):
    c = {"exp": int(time.time()) + 300}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def secret_file(tmp_path, data=SECRET + b"\n"):
    f = tmp_path / f"auth-{len(data)}.secret"
    f.write_bytes(data)
    return str(f)


def auth_node(cluster, tmp_path, name="na", extra=()):
    return cluster.node(name, args=["--auth-secret-file", secret_file(tmp_path)] + QUIET +
                        list(extra))


def writes(r):
    """What would show a write: Redis's dirty counter, the number of keys, script calls."""
    stats = r.info("commandstats")
    scripts = sum(stats.get(k, {}).get("calls", 0)
                  for k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall"))
    return {"dirty": r.info("persistence")["rdb_changes_since_last_save"],
            "dbsize": r.dbsize(), "scripts": scripts, "keys": sorted(r.keys("*"))}


def test_01_good_token_joins_and_sub_reaches_peers(cluster, tmp_path, redis_server):
    a, b = auth_node(cluster, tmp_path, "na"), auth_node(cluster, tmp_path, "nb")
    r = redis_server.client()

    async def main():
        x = await Client.connect(a.ws_url)
        y = await Client.connect(b.ws_url)
        z = await Client.connect(b.ws_url)
        # sub from the token; a client-sent meta.sub is replaced by it
        jx = await x.join("A", meta={"name": "xavier", "sub": "forged"},
                          token=make_jwt(claims(sub="user-42", room="A")))
        assert jx["peers"] == []
        # no sub claim: the client's meta.sub is dropped, the rest kept
        jy = await y.join("A", meta={"name": "yolanda", "sub": "admin"},
                          token=make_jwt(claims()))
        assert jy["peers"] == [{"id": x.id, "meta": {"name": "xavier", "sub": "user-42"}}]
        pj = await x.expect("peer-joined", id=y.id)
        assert pj["meta"] == {"name": "yolanda"}
        # a later joiner on the other node sees both, as stored
        jz = await z.join("A", token=make_jwt(claims(sub="zed")))
        peers = {p["id"]: p["meta"] for p in jz["peers"]}
        assert peers == {x.id: {"name": "xavier", "sub": "user-42"}, y.id: {"name": "yolanda"}}
        assert (await x.expect("peer-joined", id=z.id))["meta"] == {"sub": "zed"}
        assert (await y.expect("peer-joined", id=z.id))["meta"] == {"sub": "zed"}
        rec = json.loads(r.hget("sb:{A}:members", x.id))
        assert rec["meta"]["sub"] == "user-42"
        # within the 30 s leeway: exp a little past, nbf a little ahead
        w = await Client.connect(a.ws_url)
        await w.join("A", token=make_jwt(claims(exp=int(time.time()) - 20,
                                                nbf=int(time.time()) + 20)))
        # non-integer numeric claims are numbers too
        v = await Client.connect(a.ws_url)
        await v.join("A", token=make_jwt(claims(exp=time.time() + 60.5)))
        for c in (x, y, z, w, v):
            await c.close()
    asyncio.run(main())
    wait_for(lambda: not r.exists("sb:{A}:members"), 3, msg="room empty")
    assert invariants.check(r) == []


def refused_tokens():
    now = int(time.time())
    other = b"another-secret-of-enough-length-0123456789"
    good = make_jwt(claims(room="R"))
    h, p, s = good.split(".")
    tampered_payload = b64u(json.dumps(claims(room="R", sub="root")).encode())
    return [
        ("bad-signature", make_jwt(claims(), secret=other)),
        ("tampered-payload", h + "." + tampered_payload + "." + s),
        ("signature-cut", h + "." + p + "." + s[:-2]),
        ("no-signature", h + "." + p + "."),
        ("alg-none", make_jwt(claims(), alg="none")),
        ("alg-none-with-hs256-signature", make_jwt(claims(), header={"alg": "none"},
                                                   sign="HS256")),
        ("alg-None", make_jwt(claims(), header={"alg": "None"}, sign="none")),
        ("alg-HS512", make_jwt(claims(), alg="HS512")),
        ("alg-HS384", make_jwt(claims(), alg="HS384")),
        ("alg-RS256-hmac", make_jwt(claims(), header={"alg": "RS256"}, sign="HS256")),
        ("alg-hs256-lowercase", make_jwt(claims(), header={"alg": "hs256"}, sign="HS256")),
        ("alg-missing", make_jwt(claims(), header={"typ": "JWT"}, sign="HS256")),
        ("alg-duplicate", b64u(b'{"alg":"HS256","alg":"none"}') + "." + p + "."),
        ("expired-beyond-leeway", make_jwt(claims(exp=now - 40))),
        ("expired-long-ago", make_jwt(claims(exp=1))),
        ("no-exp", make_jwt({"sub": "x"})),
        ("exp-string", make_jwt({"exp": str(now + 300)})),
        ("nbf-beyond-leeway", make_jwt(claims(nbf=now + 40))),
        ("nbf-string", make_jwt(claims(nbf="0"))),
        ("wrong-room", make_jwt(claims(room="other"))),
        ("room-not-string", make_jwt(claims(room=["R"]))),
        ("sub-not-string", make_jwt(claims(sub=42))),
        ("payload-not-object", make_jwt([1, 2])),
        ("duplicate-claims", h + "." + b64u(
            ('{"exp":%d,"exp":1}' % (now + 300)).encode()) + "." + b64u(
            hmac.new(SECRET, (h + "." + b64u(('{"exp":%d,"exp":1}' % (now + 300)).encode()))
                     .encode(), hashlib.sha256).digest())),
        ("garbage", "garbage"),
        ("empty", ""),
        ("dots", ".."),
        ("four-parts", good + ".x"),
        ("not-base64", "!!!." + p + "." + s),
        ("header-not-json", b64u(b"hello") + "." + p + "." + s),
        ("huge", "a" * 9000 + "." + p + "." + s),
        ("nul-inside", h + "\u0001." + p + "." + s),
    ]


def test_02_refused_tokens_write_nothing(cluster, tmp_path, redis_server):
    # every join is charged 10 tokens up front, refused or not: room for 40 of them
    a = auth_node(cluster, tmp_path, extra=["--rate", "1000", "--burst", "1000"])
    r = redis_server.client()
    cases = refused_tokens()

    async def main():
        c = await Client.connect(a.ws_url)
        watcher = await Client.connect(a.ws_url)
        await watcher.join("W", token=make_jwt(claims()))
        await asyncio.sleep(0.2)
        before = writes(r)
        for name, token in cases:
            t0 = time.monotonic()
            reply = await c.request({"type": "join", "room": "R", "token": token})
            assert reply["type"] == "error" and reply["code"] == "unauthorized", (name, reply)
            assert time.monotonic() - t0 < 1.0
        # no token at all, and null (the same as none)
        for msg in ({"type": "join", "room": "R"}, {"type": "join", "room": "R", "token": None}):
            reply = await c.request(msg)
            assert reply["code"] == "unauthorized", (msg, reply)
        # a token that is not a string is a mistyped field (docs/protocol.md: bad-message); refused
        # all the same, and writes nothing either
        for tok in (42, {"alg": "none"}, ["a.b.c"], True):
            reply = await c.request({"type": "join", "room": "R", "token": tok})
            assert reply["code"] == "bad-message", (tok, reply)
        after = writes(r)
        assert after == before, (before, after)
        assert not r.exists("sb:{R}:members") and not r.exists("sb:{R}:stats")
        # nothing reached the other members either
        await watcher.none_of("peer-joined", wait=0.2)
        # the refused socket is not harmed: a good token still joins
        await c.join("R", token=make_jwt(claims(room="R")))
        assert writes(r)["dirty"] > before["dirty"]  # the check above could see a write
        await c.close()
        await watcher.close()
    asyncio.run(main())
    m = a.metrics()
    assert m['switchboard_node_errors_total{code="unauthorized"}'] == len(cases) + 2
    assert "join refused" in a.proc.log()


@pytest.mark.parametrize("data", [b"x" * 31, b"x" * 31 + b"\n", b"", b"\n"],
                         ids=["31-bytes", "31-bytes-and-newline", "empty", "newline"])
def test_03_short_secret_exits_2(tmp_path, data):
    f = secret_file(tmp_path, data)
    p = subprocess.run([node_binary(), "--listen", "127.0.0.1:1", "--auth-secret-file", f],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--auth-secret-file" in lines[0] and "32" in lines[0], p.stderr


def test_04_secret_of_32_bytes_starts(cluster, tmp_path):
    a = cluster.node("na", args=["--auth-secret-file", secret_file(tmp_path, b"k" * 32)])

    async def main():
        c = await Client.connect(a.ws_url)
        await c.join("S", token=make_jwt(claims(), secret=b"k" * 32))
        await c.close()
    asyncio.run(main())


def test_05_auth_timeout_closes_4001(cluster, tmp_path):
    a = auth_node(cluster, tmp_path, extra=["--auth-timeout-ms", "500"])

    async def main():
        t0 = time.monotonic()
        idle = await Client.connect(a.ws_url)
        refused = await Client.connect(a.ws_url)  # tries, with a bad token
        joiner = await Client.connect(a.ws_url)
        assert (await refused.request({"type": "join", "room": "T", "token": "bad"}))[
            "code"] == "unauthorized"
        await asyncio.sleep(0.2)
        await joiner.join("T", token=make_jwt(claims()))
        # pings do not count as joining
        assert (await idle.request({"type": "ping"}))["type"] == "pong"
        code, _ = await idle.wait_closed(2)
        took = time.monotonic() - t0
        assert code == 4001, code
        assert 0.45 < took < 1.2, took
        code, _ = await refused.wait_closed(2)
        assert code == 4001, code
        # the one that joined in time stays, well past the timeout
        await asyncio.sleep(1.0)
        assert joiner.closed is None
        assert (await joiner.request({"type": "ping"}))["type"] == "pong"
        # and after a leave it is not timed out either (it did join)
        await joiner.request({"type": "leave"})
        await asyncio.sleep(0.8)
        assert joiner.closed is None
        await joiner.close()
        return took
    took = asyncio.run(main())
    print(f"auth timeout 500 ms: closed 4001 after {took*1000:.0f} ms")
    assert a.metrics()['switchboard_node_closes_total{code="4001"}'] == 2


def test_06_no_auth_timeout_without_auth(cluster):
    a = cluster.node("na", args=["--auth-timeout-ms", "200"])

    async def main():
        c = await Client.connect(a.ws_url)
        await asyncio.sleep(0.8)
        assert c.closed is None
        await c.close()
    asyncio.run(main())


def test_07_join_leave_churn_throttled_then_4002(cluster, tmp_path, redis_server):
    """Each accepted join or leave costs 10 tokens (burst 100, 50/s), and fans out to every
    member. A client that keeps churning is refused with rate-limited, then closed with 4002;
    meanwhile the other members' round trips stay short."""
    a = auth_node(cluster, tmp_path, "na")
    b = auth_node(cluster, tmp_path, "nb")
    r = redis_server.client()

    async def main():
        members = []
        for i in range(16):
            m = await Client.connect((a if i % 2 else b).ws_url)
            await m.join("churn", token=make_jwt(claims(sub=f"m{i}")))
            members.append(m)
        churner = await Client.connect(a.ws_url)
        token = make_jwt(claims(sub="churner"))
        stop = asyncio.Event()
        rtts = []

        async def prober(m):
            while not stop.is_set():
                t0 = time.monotonic()
                assert (await m.request({"type": "ping"}, timeout=2))["type"] == "pong"
                rtts.append(time.monotonic() - t0)
                await asyncio.sleep(0.02)

        probes = [asyncio.create_task(prober(m)) for m in members]
        accepted = limited = 0
        t0 = time.monotonic()
        first_limited = None
        try:
            inside = False
            while churner.closed is None and time.monotonic() - t0 < 10:
                msg = ({"type": "leave"} if inside else
                       {"type": "join", "room": "churn", "token": token})
                try:
                    reply = await churner.request(msg, timeout=2)
                except (AssertionError, websockets.ConnectionClosed):
                    break  # closed meanwhile
                if reply["type"] == "error" and reply["code"] == "rate-limited":
                    limited += 1
                    first_limited = first_limited or time.monotonic() - t0
                elif reply["type"] in ("joined", "left"):
                    accepted += 1
                    inside = reply["type"] == "joined"
                else:
                    raise AssertionError(reply)
                await asyncio.sleep(0.01)  # about 100 requests a second
            code, _ = await churner.wait_closed(3)
        finally:
            stop.set()
            await asyncio.gather(*probes)
        took = time.monotonic() - t0
        assert code == 4002, code
        # throttled first (the burst, then about 5 accepted a second), closed after more than
        # max(burst, 20) = 100 refusals within 10 s
        assert limited > 100 and 10 <= accepted <= 40, (accepted, limited)
        assert 0.5 < took < 5, took
        # every accepted join and leave reached every member
        for m in members:
            seen = [x for x in m.seen if x.get("id") == churner.id]
            assert len(seen) >= accepted - 1, (len(seen), accepted)
        rtts.sort()
        p99 = rtts[int(len(rtts) * 0.99) - 1]
        assert rtts[-1] < 0.2, f"max member round trip {rtts[-1]*1000:.0f} ms"
        # the room is consistent and the members were told of each churn, harmlessly
        for m in members:
            assert m.closed is None
            assert (await m.request({"type": "ping"}))["type"] == "pong"
        wait_for(lambda: r.hlen("sb:{churn}:members") == len(members), 3, msg="churner gone")
        assert invariants.check(r) == []
        for m in members:
            await m.close()
        return accepted, limited, first_limited, took, len(rtts), p99, rtts[-1]
    accepted, limited, first, took, n, p99, worst = asyncio.run(main())
    print(f"churn: {accepted} accepted, {limited} rate-limited (first after {first*1000:.0f} ms), "
          f"closed 4002 after {took*1000:.0f} ms; members' pings: {n}, p99 {p99*1000:.1f} ms, "
          f"max {worst*1000:.1f} ms")
    m = a.metrics()
    assert m['switchboard_node_closes_total{code="4002"}'] == 1
    assert m['switchboard_node_errors_total{code="rate-limited"}'] >= 1


def test_14_resume_bound_to_the_jwt_subject(cluster, tmp_path):
    """With auth on, a resume carries a JWT too, and the session's token only resumes for the
    JWT subject that joined: another subject's valid JWT gets resume-failed unknown and
    changes nothing; the joiner's subject resumes."""
    a_node = auth_node(cluster, tmp_path, "na")
    b_node = auth_node(cluster, tmp_path, "nb")

    async def main():
        a = await Client.connect(a_node.ws_url)
        b = await Client.connect(b_node.ws_url)
        ja = await a.join("jr", token=make_jwt(claims(sub="alice", room="jr")))
        await b.join("jr", token=make_jwt(claims(sub="bob", room="jr")))
        await a.expect("peer-joined", id=b.id)
        a.abort()
        await b.expect("peer-away", id=a.id)

        async def resume_as(sub):
            c = await Client.connect(b_node.ws_url)
            reply = await c.request({"type": "resume", "id": a.id, "room": "jr",
                                     "resume": ja["resume"],
                                     "token": make_jwt(claims(sub=sub, room="jr"))})
            return c, reply

        m, reply = await resume_as("mallory")
        assert reply["type"] == "error" and reply["code"] == "resume-failed", reply
        assert reply["reason"] == "unknown", reply
        await m.close()
        await b.none_of("peer-back", wait=0.2)
        c, reply = await resume_as("alice")  # the token was not spent by the refusal
        assert reply["type"] == "resumed" and reply["id"] == a.id, reply
        await b.expect("peer-back", id=a.id)
        await c.close()
        await b.close()
    asyncio.run(main())
