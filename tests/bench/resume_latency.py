#!/usr/bin/python3
"""Session resume benchmark (issue 15): resume latency and what an away socket costs Redis.

Standalone, loopback only: starts a private redis-server and two nodes from SWITCHBOARD_BUILD
(use a release build), and prints a markdown table:

- reset -> `resumed` latency, p50/p99, on the same node and across nodes: a joined, linked
  socket is reset (TCP RST), a new socket connects and sends `resume` at once; measured from
  the reset to the `resumed` reply (the new connection's handshake and `welcome` included);
- Redis memory (INFO used_memory deltas) and Redis CPU (INFO used_cpu_user + sys deltas) per
  away socket (SB_BENCH_AWAY sockets reset together, each in a room with one peer) and per
  queued signal (SB_BENCH_QUEUED signals of ~SB_BENCH_SIGNAL_BYTES bytes to each away socket).

Every process it starts is stopped by pid. Usage:
  SWITCHBOARD_BUILD=build-release tests/bench/resume_latency.py
"""
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from client import Client  # noqa: E402
from harness import Node, RedisServer  # noqa: E402

ROUNDS = int(os.environ.get("SB_BENCH_ROUNDS", "200"))
AWAY = int(os.environ.get("SB_BENCH_AWAY", "500"))
QUEUED = int(os.environ.get("SB_BENCH_QUEUED", "20"))
SIGNAL_BYTES = int(os.environ.get("SB_BENCH_SIGNAL_BYTES", "200"))
NODE_ARGS = ["--log-level", "warn", "--rate", "1000000", "--burst", "1000000",
             "--resume-grace-ms", "600000", "--resume-queue-max", str(max(QUEUED, 1)),
             "--max-connections", "10000"]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def latency(first_url, resume_url, room):
    """ROUNDS resets of one socket, each resumed on resume_url: latencies in ms."""
    a = await Client.connect(first_url)
    b = await Client.connect(first_url)
    ja = await a.join(room)
    await b.join(room)
    await a.request({"type": "link", "peer": b.id, "state": "up"})
    await b.request({"type": "link", "peer": a.id, "state": "up"})
    sid, token, out = a.id, ja["resume"], []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        a.abort()
        a = await Client.connect(resume_url)
        reply = await a.request({"type": "resume", "id": sid, "room": room, "resume": token})
        out.append((time.perf_counter() - t0) * 1000)
        assert reply["type"] == "resumed" and reply["links"] == [b.id], reply
        token = reply["resume"]
    a.abort()
    b.abort()
    return out


def used(r):
    info = r.info()
    return info["used_memory"], info["used_cpu_user"] + info["used_cpu_sys"]


def away_count(r):
    return int(r.hget("sb:{#}:stats", "away") or 0)


async def costs(n1, r):
    """(bytes, cpu us) per away socket, (bytes, cpu us) per queued signal."""
    pairs = []
    for i in range(AWAY):
        a, b = await Client.connect(n1.ws_url), await Client.connect(n1.ws_url)
        await a.join(f"m{i}")
        await b.join(f"m{i}")
        pairs.append((a, b))
    await asyncio.sleep(0.5)
    mem0, cpu0 = used(r)
    base = away_count(r)
    for a, _ in pairs:
        a.abort()  # the socket is closed (RST) once the loop runs
    deadline = time.monotonic() + 60
    while away_count(r) - base < AWAY:
        assert time.monotonic() < deadline, f"away {away_count(r)}, before {base}"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    mem1, cpu1 = used(r)
    data = '"' + "x" * max(SIGNAL_BYTES - 2, 0) + '"'
    for a, b in pairs:
        for k in range(QUEUED):
            rid = f"q{k}"
            await b.send(f'{{"type":"signal","to":"{a.id}","data":{data},"rid":"{rid}"}}')
        for k in range(QUEUED):
            ack = await b.expect(None, timeout=10, rid=f"q{k}")
            assert ack["type"] == "signal-ack", ack
    await asyncio.sleep(0.5)
    mem2, cpu2 = used(r)
    for _, b in pairs:
        b.abort()
    away = ((mem1 - mem0) / AWAY, (cpu1 - cpu0) * 1e6 / AWAY)
    queued = ((mem2 - mem1) / (AWAY * QUEUED), (cpu2 - cpu1) * 1e6 / (AWAY * QUEUED))
    return away, queued


def measure():
    """Runs the whole measurement; returns the figures (plain data, for bench-results.json)."""
    tmp = tempfile.mkdtemp(prefix="sb-resume-bench-")
    rs = RedisServer(tmp)
    nodes = []
    try:
        nodes = [Node(rs.url, tmp, name=f"b{i}", args=NODE_ARGS) for i in (1, 2)]
        r = rs.client()
        same = asyncio.run(latency(nodes[0].ws_url, nodes[0].ws_url, "lat-same"))
        across = asyncio.run(latency(nodes[0].ws_url, nodes[1].ws_url, "lat-across"))
        (mem_away, cpu_away), (mem_q, cpu_q) = asyncio.run(costs(nodes[1], r))
    finally:
        for n in nodes:
            n.proc.stop()
        rs.stop()
    return {"rounds": ROUNDS, "away": AWAY, "queued": QUEUED, "signal_bytes": SIGNAL_BYTES,
            "same": same, "across": across, "mem_away": mem_away, "cpu_away": cpu_away,
            "mem_q": mem_q, "cpu_q": cpu_q}


def render(a, R):
    """The markdown of R (measure()'s figures), one line per call of a."""
    a(f"{R['rounds']} resumes per row: a joined, linked socket is reset (TCP RST), a new "
      "socket connects and sends `resume` at once; from the reset to the `resumed` reply (the "
      "new connection's handshake and `welcome` included). `tests/bench/resume_latency.py`.")
    a("")
    a("| reset -> resumed | p50 | p99 | max |")
    a("| --- | --- | --- | --- |")
    for name, xs in (("same node", R["same"]), ("across nodes", R["across"])):
        a(f"| {name} | {pct(xs, 50):.2f} ms | {pct(xs, 99):.2f} ms | {max(xs):.2f} ms |")
    a("")
    a(f"Redis cost ({R['away']} sockets away at once, each in a room of 2; {R['queued']} "
      f"signals of {R['signal_bytes']} bytes of data queued to each; INFO used_memory and "
      "used_cpu deltas):")
    a("")
    a("| | Redis memory | Redis CPU |")
    a("| --- | --- | --- |")
    a(f"| per away socket | {R['mem_away']:.0f} B | {R['cpu_away']:.1f} us |")
    a(f"| per queued signal | {R['mem_q']:.0f} B | {R['cpu_q']:.1f} us |")


# make bench (tests/bench/bench.py, MODULE_SECTIONS): section 11, on the Release build.
def section11(b, red):
    os.environ["SWITCHBOARD_BUILD"] = b.BUILD
    b.log("section 11: session resume latency and Redis cost")
    return measure()


def render11(b, a, S):
    a("## 11. Session resume")
    a("")
    render(a, S)
    a("")


def main():
    render(print, measure())


if __name__ == "__main__":
    main()
