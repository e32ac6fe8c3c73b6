"""Sections 8-10 of tests/bench/bench.py.

8 (issue 14): Switchboard beside peerjs-server 1.0.2 and Socket.IO 4.8 + @socket.io/redis-adapter,
  in one run, with one neutral load client (tests/bench/js/load.mjs, Node.js `ws`).
9 (issue 11): rooms of 1,000 members: the join of the 1,000th member, a signal in such a room,
  and a resync of such a room (the node's subscriber connection killed: every room re-read with
  room_read), beside a room of 2.
10 (issue 17): node RSS and CPU under the queue-amplification load (senders pushing 60 KB signals
  to receivers that never read) with the node-wide send-queue budget on, and with it off.

`b` is the bench module (its Proc, Node, Redis, ENV, helpers); nothing here runs on its own.
"""
import base64
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import threading
import time

JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")
RAISED = ["--rate", "1000000", "--burst", "1000000"]


# ---- the Node.js side: reference servers and the load client ---------------------------------

def js_ready(b):
    if not os.path.isdir(os.path.join(JS, "node_modules", "peer")):
        raise RuntimeError("tests/bench/js/node_modules is missing: run deploy/install-deps.sh "
                           "(make deps), which runs npm ci there")


class JsServer:
    """peerjs-server (one process), one Socket.IO + redis-adapter process, or the floor relay
    (tests/bench/floor.c: the PeerJS wire subset the load client uses, on raw epoll; with hop
    = (redis, its channel, the other floor's channel), one of two floors joined by pub/sub)."""

    def __init__(self, b, kind, red=None, hop=None):
        self.port = b.free_port()
        if kind == "floor":
            argv = [os.path.join(b.BUILD, "bench", "sb-floor"), "--listen",
                    f"127.0.0.1:{self.port}"]
            if hop:
                argv += ["--redis", f"127.0.0.1:{hop[0].port}", "--me", hop[1], "--peer", hop[2]]
        else:
            script = "peerjs-server.mjs" if kind == "peerjs" else "sio-server.mjs"
            argv = ["node", os.path.join(JS, script), str(self.port)] + (
                [red.url] if red else [])
        out = os.path.join(b.WORK, f"{kind}-{self.port}.jsonl")
        self.proc = b.Proc(argv, f"{kind}-{self.port}", stdout=out)
        b.wait_for(lambda: self.proc.event("listening") or (not self.proc.alive() and (
            _ for _ in ()).throw(RuntimeError(f"{kind} exited: {self.proc.stderr_tail()}"))),
            30, f"{kind} listening")
        self.url = (f"ws://127.0.0.1:{self.port}/peerjs" if kind in ("peerjs", "floor")
                    else f"http://127.0.0.1:{self.port}")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        self.proc.stop()


_n = [0]


def client(b, stack, mode, urls, args):
    _n[0] += 1
    name = f"js-{stack}-{mode}-{_n[0]}"
    argv = ["node", os.path.join(JS, "load.mjs"), "--stack", stack, "--mode", mode,
            "--prefix", f"c{_n[0]}x{os.getpid()}"]
    for u in urls:
        argv += ["--url", u]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return b.Proc(argv, name, stdout=os.path.join(b.WORK, name + ".jsonl"))


def wait_ev(b, p, ev, timeout):
    def have():
        if p.event("error"):
            raise RuntimeError(f"{p.name}: {p.event('error')['error']}")
        if not p.alive() and not p.event(ev):
            raise RuntimeError(f"{p.name} exited early: {p.stderr_tail()}")
        return p.event(ev)
    return b.wait_for(have, timeout, f"{ev} from {p.name}", interval=0.02)


# ---- section 8: the comparison -----------------------------------------------------------------

# "floor": not a system anyone would pick, the least any relay costs on this machine and load
# (tests/bench/floor.c); it tells which targets no server could meet here. "floor-cross": two
# floors joined through the same redis-server by pub/sub, the least any relay with that hop
# costs (side a on one, side b on the other, as sb-cross).
STACKS = ("peerjs", "sio", "sb-same", "sb-cross", "floor", "floor-cross")
IDLE_OF = {"peerjs": "peerjs", "sio": "sio", "sb-same": "sb", "floor": "floor"}  # idle columns
PROFILED = (("sb-same", "relay"), ("sb-same", "rate"), ("sb-cross", "relay"), ("sb-cross", "rate"))


def start_stack(b, red, stack):
    """(servers to stop, pids whose CPU counts, urls of side a and side b, client stack)."""
    red.flush()
    if stack in ("peerjs", "floor"):
        s = JsServer(b, stack)
        return [s], [s.pid], [s.url], "peerjs"
    if stack == "floor-cross":
        f1 = JsServer(b, "floor", hop=(red, "f1", "f2"))
        f2 = JsServer(b, "floor", hop=(red, "f2", "f1"))
        return [f1, f2], [f1.pid, f2.pid, red.proc.pid], [f1.url, f2.url], "peerjs"
    if stack == "sio":
        s1, s2 = JsServer(b, "sio", red), JsServer(b, "sio", red)
        return [s1, s2], [s1.pid, s2.pid, red.proc.pid], [s1.url, s2.url], "sio"
    n1, n2 = b.Node(red, "n1", RAISED), b.Node(red, "n2", RAISED)
    urls = [n1.url] if stack == "sb-same" else [n1.url, n2.url]
    return [n1, n2], [n1.pid, n2.pid, red.proc.pid], urls, "sb"


def schedstat(pid):
    """(run ns, run-queue wait ns, times switched in) summed over the threads of pid."""
    tot = [0, 0, 0]
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                v = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for i in range(3):
            tot[i] += v[i]
    return tot


def perf_start(b, pids, tag):
    """perf record -g on the given pids (the nodes) for the measured window, or None."""
    data = os.path.join(b.WORK, f"perf-{tag}.data")
    return b.Proc(["perf", "record", "-g", "-F", "997", "-o", data, "-p",
                   ",".join(str(p) for p in pids)], f"perf-{tag}"), data


def perf_report(b, rec):
    """The top entries (self time) of a recording: by symbol, and by DSO (kernel vs user)."""
    proc, data = rec
    proc.signal(2)  # SIGINT: perf writes its file and exits
    proc.wait(60)
    out = {}
    for key, sort in (("symbols", "dso,symbol"), ("dsos", "dso")):
        r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                            "--sort", sort, "--percent-limit", "1", "-g", "none"],
                           capture_output=True, text=True, timeout=300)
        rows = []
        for line in r.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s*(?:\[\S\]\s+(.*))?$", line)
            if m:
                sym = re.sub(r"(\s+-)+\s*$", "", (m.group(3) or "")).strip()
                rows.append([float(m.group(1)), m.group(2), sym])
        out[key] = rows[:25]
    # inclusive time of the system calls (children): which calls the kernel time comes from
    r = subprocess.run(["perf", "report", "-i", data, "--children", "--stdio", "--sort",
                        "symbol", "-g", "none", "--percent-limit", "0.5"],
                       capture_output=True, text=True, timeout=300)
    calls = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[\S\]\s+(__x64_sys_\w+|ksys_\w+)", line)
        if m:
            n_ = re.sub("^(__x64_sys_|ksys_)", "", m.group(3))
            if n_ not in [c[1] for c in calls]:
                calls.append([float(m.group(1)), n_])
    out["syscalls"] = calls[:10]
    return out


# System calls of the server processes by kind, counted by `perf stat` on the syscall
# tracepoints (in extra runs: a traced system call takes the kernel's slower path).
SYSCALLS = {"reads": ("read", "recvfrom", "recvmsg", "readv"),
            "writes": ("write", "writev", "sendto", "sendmsg"),
            "polls": ("epoll_wait", "epoll_pwait")}


def syscalls_start(b, pids, tag):
    evs = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for v in SYSCALLS.values()
                                        for n in v]
    out = os.path.join(b.WORK, f"syscalls-{tag}.csv")
    return b.Proc(["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(evs), "-p",
                   ",".join(str(p) for p in pids)], f"perf-stat-{tag}"), out


def syscalls_report(rec, msgs):
    """{kind: system calls per message} from a perf stat run, kinds of SYSCALLS and "all"."""
    proc, out = rec
    proc.signal(2)
    proc.wait(60)
    counts = {}
    with open(out) as f:
        for line in f:
            v = line.split(",")
            if len(v) > 2 and v[0].strip().isdigit():
                counts[v[2].strip()] = int(v[0])
    res = {"all": counts.get("raw_syscalls:sys_enter", 0) / msgs}
    for kind, names in SYSCALLS.items():
        res[kind] = sum(counts.get(f"syscalls:sys_enter_{n}", 0) for n in names) / msgs
    return res


def cmp_run(b, red, stack, mode, profile=False, start=start_stack, syscalls=False):
    """One relay or rate run of a stack; start(b, red, stack) starts its servers (start_stack's
    return; section 12 passes its own). syscalls: count the servers' system calls instead of
    timing them (an extra run)."""
    E = b.ENV
    servers, pids, urls, cstack = start(b, red, stack)
    try:
        args = {"pairs": E["SB_BENCH_CMP_PAIRS"], "window": E["SB_BENCH_CMP_WINDOW"],
                "seconds": E["SB_BENCH_CMP_SECONDS"], "warmup": E["SB_BENCH_WARMUP"],
                "rate": E["SB_BENCH_CMP_RATE"]}
        p = client(b, cstack, mode, urls, args)
        wait_ev(b, p, "window", 120)
        rec = perf_start(b, [s.pid for s in servers], f"{stack}-{mode}") if profile else None
        sys_rec = syscalls_start(b, pids, f"{stack}-{mode}") if syscalls else None
        c0 = {pid: b.cpu_s(pid) for pid in pids + [p.pid]}
        q0 = {pid: schedstat(pid) for pid in pids}
        t0 = time.monotonic()
        wait_ev(b, p, "window-end", E["SB_BENCH_CMP_SECONDS"] + 60)
        dt = time.monotonic() - t0
        cpu = {pid: (b.cpu_s(pid) - c0[pid]) / dt for pid in pids + [p.pid]}
        q1 = {pid: schedstat(pid) for pid in pids}
        res = dict(wait_ev(b, p, "result", 60))
        p.signal(15)
        p.wait(60)
        res["cpu_each_pct"] = [cpu[pid] * 100 for pid in pids]
        res["server_cpu"] = sum(cpu[pid] for pid in pids)  # cores
        res["client_cpu_pct"] = cpu[p.pid] * 100
        rate = res["msgs_per_s"] or 1
        res["msgs_per_cpu_s"] = rate / res["server_cpu"] if res["server_cpu"] else None
        res["cpu_us_per_msg"] = res["server_cpu"] * 1e6 / rate
        # from /proc/PID/schedstat of the server processes (every thread): time runnable but
        # waiting for a core, and how often they were switched in (~ wake-ups)
        res["runq_wait_ms_per_s"] = sum(q1[x][1] - q0[x][1] for x in pids) / 1e6 / dt
        res["switches_per_msg"] = sum(q1[x][2] - q0[x][2] for x in pids) / (rate * dt)
        if rec:
            res["profile"] = perf_report(b, rec)
        if sys_rec:
            res["syscalls_per_msg"] = syscalls_report(sys_rec, rate * dt)
        return res
    finally:
        for s in servers:
            s.stop()


def idle_server(b, red, stack):
    """(server, url its clients connect to, client stack, pids whose CPU counts) for cmp_idle."""
    red.flush()
    if stack in ("peerjs", "floor"):
        s = JsServer(b, stack)
        return s, s.url, "peerjs", [s.pid]
    if stack == "sio":
        s = JsServer(b, "sio", red)
        return s, s.url, "sio", [s.pid, red.proc.pid]
    s = b.Node(red, "n1", RAISED)
    return s, s.url, "sb", [s.pid, red.proc.pid]


def cmp_idle(b, red, stack, profile=False, server=idle_server):
    """RSS per idle connection and connect (+join) rate against one server process (started by
    server(b, red, stack), idle_server's return; section 12 passes its own)."""
    E = b.ENV
    s, url, cstack, pids = server(b, red, stack)
    try:
        time.sleep(2)
        rss0 = b.rss_kb(s.pid)
        n = E["SB_BENCH_CMP_IDLE"]
        rec = perf_start(b, [s.pid], f"{stack}-connect") if profile else None
        k = max(1, E["SB_BENCH_CMP_IDLE_CLIENTS"])
        ps = [client(b, cstack, "idle", [url], {"conns": n // k, "inflight": 100})
              for _ in range(k)]
        c0 = {x: b.cpu_s(x) for x in pids + [q.pid for q in ps]}
        t0 = time.monotonic()
        readies = [wait_ev(b, q, "ready", 300) for q in ps]
        dt = time.monotonic() - t0
        c1 = {x: b.cpu_s(x) for x in pids + [q.pid for q in ps]}
        prof = perf_report(b, rec) if rec else None
        time.sleep(E["SB_BENCH_CMP_IDLE_HOLD"])
        rss1 = b.rss_kb(s.pid)
        for q in ps:
            q.signal(15)
        for q in ps:
            q.wait(30)
        opened = sum(r["opened"] for r in readies)
        res = {"opened": opened, "failed": sum(r["failed"] for r in readies),
               "clients": k,
               # every client's connections over the time the slowest took
               "connects_per_s": opened / max(r["seconds"] for r in readies),
               "server_cpu_us_per_connect": sum(c1[x] - c0[x] for x in pids) * 1e6 / opened,
               "client_cpu_pct": sum(c1[q.pid] - c0[q.pid] for q in ps) / dt * 100,
               "server_cpu_pct": sum(c1[x] - c0[x] for x in pids) / dt * 100}
        res.update({"rss0_kb": rss0, "rss_kb": rss1,
                    "bytes_per_conn": (rss1 - rss0) * 1024 / max(1, opened),
                    "open_at_end": sum((q.event("result") or {}).get("open_at_end", 0)
                                       for q in ps)})
        if prof:
            res["profile"] = prof
        return res
    finally:
        s.stop()


def websocket_layer():
    """Who serves the nodes' WebSockets in this run (--websocket, read from the environment the
    nodes inherit)."""
    return os.environ.get("SWITCHBOARD_WEBSOCKET", "native")


def layer_text(S):
    return ("the node's own WebSocket layer, `--websocket native`" if S.get("layer", "lws") ==
            "native" else "libwebsockets, `--websocket lws`")


def section8(b, red):
    js_ready(b)
    E = b.ENV
    R = {"runs": {s: {"relay": [], "rate": []} for s in STACKS}, "idle": {},
         "layer": websocket_layer()}
    for rep in range(E["SB_BENCH_CMP_REPEATS"]):  # noqa: the figures of one repeat go together
        for mode in ("relay", "rate"):
            for stack in STACKS:  # interleaved, so each repeat compares neighbours in time
                b.log(f"section 8: {stack} {mode} (repeat {rep + 1})")
                R["runs"][stack][mode].append(cmp_run(b, red, stack, mode))
    if E["SB_BENCH_CMP_PERF"] and shutil.which("perf"):
        # extra runs, not counted above (perf costs CPU): where the nodes spend it
        R["profiles"] = {}
        for stack, mode in PROFILED:
            b.log(f"section 8: {stack} {mode} under perf record -g")
            r = cmp_run(b, red, stack, mode, True)
            R["profiles"][f"{stack} {mode}"] = {"profile": r.pop("profile"), "run": r}
        R["syscalls"] = {}
        for mode in ("relay", "rate"):
            for stack in STACKS:
                b.log(f"section 8: {stack} {mode} under perf stat (system calls)")
                r = cmp_run(b, red, stack, mode, syscalls=True)
                R["syscalls"][f"{stack} {mode}"] = r["syscalls_per_msg"]
    for stack in ("peerjs", "sio", "sb", "floor"):
        b.log(f"section 8: {stack} idle connections ({E['SB_BENCH_CMP_IDLE']})")
        R["idle"][stack] = cmp_idle(b, red, stack)
    if E["SB_BENCH_CMP_PERF"] and shutil.which("perf"):  # an extra run, not counted above
        b.log("section 8: sb idle connections under perf record -g")
        r = cmp_idle(b, red, "sb", True)
        R.setdefault("profiles", {})["sb connect+join"] = {
            "profile": r.pop("profile"), "run": {"msgs_per_s": r["connects_per_s"],
                                                 "server_cpu": None}}
    return R


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def span(v, fmt):
    v = [x for x in v if x is not None]
    if not v:
        return "n/a"
    lo, hi = min(v), max(v)
    return fmt(lo) if len(v) == 1 or fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def per_repeat_ratio(S, s1, s2, mode, key):
    a, c = S["runs"][s1][mode], S["runs"][s2][mode]
    return [x[key] / y[key] for x, y in zip(a, c) if x.get(key) and y.get(key)]


def render8(b, a, S):
    E = b.ENV
    f0, f2 = b.f0, b.f2
    names = {"peerjs": "peerjs-server 1.0.2", "sio": "Socket.IO 4.8 + redis-adapter",
             "sb-same": "Switchboard same node", "sb-cross": "Switchboard across nodes",
             "floor": "floor (reference: a C relay on raw epoll)",
             "floor-cross": "floor across (reference: two floors through Redis pub/sub)"}
    cols = [s for s in STACKS if S["runs"].get(s)]  # results saved before a stack was added lack it
    a("## 8. Beside peerjs-server and Socket.IO + redis-adapter")
    a("")
    a(f"One load client for every stack (`tests/bench/js/load.mjs`: Node.js `ws`, socket.io-client "
      f"for Socket.IO), {E['SB_BENCH_CMP_PAIRS']} pairs; flat out each pair keeps "
      f"{E['SB_BENCH_CMP_WINDOW']} messages in flight (a sends, b echoes each one back, a sends "
      "the next on each echo; every delivery counts); at a fixed rate, "
      f"{E['SB_BENCH_CMP_RATE']:,} messages/s open loop, directions alternating. Messages are a "
      "fake ICE candidate, about 210 B of JSON on the wire "
      f"({span([r.get('frame_bytes') for s in cols for r in S['runs'][s]['relay']], f0)} B per "
      f"frame). {E['SB_BENCH_CMP_SECONDS']:g} s measured after {E['SB_BENCH_WARMUP']:g} s of "
      "warm-up; a fresh set of servers per run; "
      f"{E['SB_BENCH_CMP_REPEATS']} repeats, the stacks interleaved. Server CPU counts every server "
      "process and Redis: peerjs-server is one Node.js process; Socket.IO is two processes on one "
      "redis-server, side a of each pair on the first and side b on the second; Switchboard is two "
      f"nodes (`--rate 1000000 --burst 1000000`; WebSockets served by {layer_text(S)}) on one "
      "redis-server, both sides on node 1 (node 2 "
      "idles) or side a on node 1 and side b on node 2. Ranges are over the repeats.")
    a("")
    a("The floor is not a server anyone would pick: `tests/bench/floor.c`, one process on raw "
      "epoll with no library, speaks the part of the PeerJS wire protocol the load client uses "
      "(it is driven as peerjs-server is) and relays a message by finding `\"dst\"` in its text "
      "and putting `\"src\"` in front, with no JSON parsed or checked and no per-socket state "
      "beyond its id. It reads everything a socket has at once and writes each message with one "
      "`sendmsg`. What it costs is about what the kernel, the loopback TCP path and the "
      "WebSocket framing cost with this client on this machine: a target that the floor itself "
      "misses against peerjs-server is one no server could meet here."
      + (" The floor across is two such processes on the redis-server the nodes use, side a on "
         "one and side b on the other: a message for a socket the floor does not hold is "
         "PUBLISHed, already relayed, to the other floor's channel, and the other floor, "
         "subscribed to its own, writes it to the socket. Its publishing connection runs `CLIENT "
         "REPLY OFF` (no reply to read, which a server that wants to know a message was received "
         "cannot do) and the PUBLISHes of one `epoll_wait` batch go out in one `send`: the least "
         "any relay with a Redis pub/sub hop costs here, so an across-node target it misses is "
         "one no server built on that hop could meet here." if "floor-cross" in cols else ""))
    a("")
    a("| figure | " + " | ".join(names[s] for s in cols) + " |")
    a("| --- |" + " --- |" * len(cols))

    def row(label, mode, key, fmt):
        a(f"| {label} | " + " | ".join(span([r.get(key) for r in S['runs'][s][mode]], fmt)
                                        for s in cols) + " |")
    row("messages/s flat out", "relay", "msgs_per_s", f0)
    row("messages per server CPU-second (Redis included)", "relay", "msgs_per_cpu_s", f0)
    a("| server CPU flat out (% of a core, each process) | " + " | ".join(
        "; ".join("+".join(f0(c) for c in r["cpu_each_pct"]) for r in S["runs"][s]["relay"])
        for s in cols) + " |")
    row("client CPU flat out (%)", "relay", "client_cpu_pct", f0)
    row("server switches-in per message flat out", "relay", "switches_per_msg", f2)
    row(f"server switches-in per message at {E['SB_BENCH_CMP_RATE']:,} msg/s", "rate",
        "switches_per_msg", f2)
    row(f"server time waiting for a core at {E['SB_BENCH_CMP_RATE']:,} msg/s (ms/s)", "rate",
        "runq_wait_ms_per_s", lambda x: f"{x:.1f}")
    row(f"server CPU per message at {E['SB_BENCH_CMP_RATE']:,} msg/s (us)", "rate",
        "cpu_us_per_msg", f0)
    sc = S.get("syscalls") or {}
    for mode, label in (("relay", "flat out"), ("rate", f"at {E['SB_BENCH_CMP_RATE']:,} msg/s")):
        if any(f"{s} {mode}" in sc for s in cols):
            a(f"| server system calls per message {label}: all (reads, writes, polls) | " +
              " | ".join(syscalls_cell(sc.get(f"{s} {mode}")) for s in cols) + " |")
    row(f"one-way latency p50 at {E['SB_BENCH_CMP_RATE']:,} msg/s (ms)", "rate", "lat_p50_us",
        lambda x: f"{x / 1000:.2f}")
    row(f"one-way latency p99 at {E['SB_BENCH_CMP_RATE']:,} msg/s (ms)", "rate", "lat_p99_us",
        lambda x: f"{x / 1000:.2f}")
    row(f"one-way latency p99.9 at {E['SB_BENCH_CMP_RATE']:,} msg/s (ms)", "rate", "lat_p999_us",
        lambda x: f"{x / 1000:.2f}")
    I = S.get("idle", {})

    def idle(stack, key, fmt):
        return fmt(I[stack][key]) if stack in I and I[stack].get(key) is not None else "n/a"
    def idle_row(key):
        return " | ".join(idle(IDLE_OF[s], key, f0) if s in IDLE_OF else "" for s in cols)
    a("| RSS per idle connection (joined, for us; B) | " + idle_row("bytes_per_conn") + " |")
    for key, label in (("connects_per_s", "connects (+ join for us) per second"),
                       ("server_cpu_us_per_connect",
                        "server CPU per connect (+ join; Redis included; us)"),
                       ("server_cpu_pct", "server CPU while connecting (%)"),
                       ("client_cpu_pct", "client CPU while connecting (%, all client processes)")):
        a(f"| {label} | " + idle_row(key) + " |")
    a("")
    if I:
        a("Idle connections: " + "; ".join(
            f"{names.get(s, 'Switchboard (one node)')}: {I[s]['opened']:,} opened "
            f"({I[s]['failed']} failed) from {I[s]['clients']} client processes x 100 "
            f"handshakes in flight, {I[s].get('open_at_end')} open after "
            f"{E['SB_BENCH_CMP_IDLE_HOLD']} s, RSS {I[s]['rss0_kb'] / 1024:.1f} -> "
            f"{I[s]['rss_kb'] / 1024:.1f} MiB"
            for s in I if s in ("peerjs", "sio", "sb", "floor")) +
          ". Socket.IO: one process; peerjs-server and the floor: their clients send HEARTBEAT "
          "every 5 s; "
          "Switchboard: pair rooms, default ping policy. RSS is read after the hold, with no "
          "garbage collection forced in the Node.js servers.")
        a("")
    T = []

    def target(label, vals, ok):
        m = med(vals)
        T.append((label, ("n/a" if m is None else
                          f"{m:.2f} x ({span(vals, lambda x: f'{x:.2f}')})"),
                  None if m is None else ok(m)))
    target("same node msgs per server CPU-s >= 2 x peerjs",
           per_repeat_ratio(S, "sb-same", "peerjs", "relay", "msgs_per_cpu_s"), lambda m: m >= 2)
    target("(reference, not a target: the floor's msgs per server CPU-s / peerjs')",
           per_repeat_ratio(S, "floor", "peerjs", "relay", "msgs_per_cpu_s"), lambda m: None)
    target("across nodes msgs per server CPU-s >= 1 x peerjs",
           per_repeat_ratio(S, "sb-cross", "peerjs", "relay", "msgs_per_cpu_s"), lambda m: m >= 1)
    target("across nodes msgs per server CPU-s >= 4 x Socket.IO",
           per_repeat_ratio(S, "sb-cross", "sio", "relay", "msgs_per_cpu_s"), lambda m: m >= 4)
    if "floor-cross" in cols:
        target("(reference, not a target: the floor across's msgs per server CPU-s / peerjs')",
               per_repeat_ratio(S, "floor-cross", "peerjs", "relay", "msgs_per_cpu_s"),
               lambda m: None)
        target("(reference, not a target: the floor across's msgs per server CPU-s / "
               "Socket.IO's)", per_repeat_ratio(S, "floor-cross", "sio", "relay",
                                                 "msgs_per_cpu_s"), lambda m: None)
    target(f"same node CPU per msg at {E['SB_BENCH_CMP_RATE']:,}/s <= 0.5 x peerjs",
           per_repeat_ratio(S, "sb-same", "peerjs", "rate", "cpu_us_per_msg"),
           lambda m: m <= 0.5)
    target(f"(reference, not a target: the floor's CPU per msg at {E['SB_BENCH_CMP_RATE']:,}/s "
           "/ peerjs')", per_repeat_ratio(S, "floor", "peerjs", "rate", "cpu_us_per_msg"),
           lambda m: None)
    target(f"across nodes CPU per msg at {E['SB_BENCH_CMP_RATE']:,}/s <= 1 x peerjs",
           per_repeat_ratio(S, "sb-cross", "peerjs", "rate", "cpu_us_per_msg"),
           lambda m: m <= 1)
    if "floor-cross" in cols:
        target(f"(reference, not a target: the floor across's CPU per msg at "
               f"{E['SB_BENCH_CMP_RATE']:,}/s / peerjs')",
               per_repeat_ratio(S, "floor-cross", "peerjs", "rate", "cpu_us_per_msg"),
               lambda m: None)
    for stack, bound, label in (("sb-same", 1.0, "same node"), ("sb-cross", 1.5, "across nodes"),
                                ("floor-cross", None, "(reference, not a target: the floor "
                                 "across's)")):
        if stack not in cols:
            continue
        v = [r["lat_p99_us"] / 1000 for r in S["runs"][stack]["rate"] if r.get("lat_p99_us")]
        m = med(v)
        T.append((f"{label} p99 at {E['SB_BENCH_CMP_RATE']:,}/s" +
                  (f" <= {bound:g} ms" if bound else ""),
                  "n/a" if m is None else f"{m:.2f} ms ({span(v, lambda x: f'{x:.2f}')})",
                  None if m is None or bound is None else m <= bound))
    if "sb" in I:
        v = I["sb"]["bytes_per_conn"]
        T.append(("RSS per idle joined socket <= 2,048 B", f"{v:,.0f} B", v <= 2048))
    if "floor" in I:
        T.append(("(reference, not a target: the floor's RSS per idle connection)",
                  f"{I['floor']['bytes_per_conn']:,.0f} B", None))
    if "sb" in I and "peerjs" in I and I["peerjs"].get("connects_per_s"):
        x = I["sb"]["connects_per_s"] / I["peerjs"]["connects_per_s"]
        T.append(("connects + joins/s >= 2 x peerjs connects/s", f"{x:.2f} x", x >= 2))
        x = I["sb"]["server_cpu_us_per_connect"] / I["peerjs"]["server_cpu_us_per_connect"]
        T.append(("(not a target: server CPU per connect + join / peerjs' per connect)",
                  f"{x:.2f} x", None))
    if "floor" in I and "peerjs" in I and I["peerjs"].get("connects_per_s"):
        x = I["floor"]["connects_per_s"] / I["peerjs"]["connects_per_s"]
        T.append(("(reference, not a target: the floor's connects/s / peerjs')", f"{x:.2f} x",
                  None))
    verdicts(a, "target (issue 14) | figure: median of the per-repeat ratios (range)", T,
             b.verdict)
    S["targets"] = [{"target": t, "figure": f, "met": ok} for t, f, ok in T]
    why(b, a, S, T)
    render_profiles(a, S.get("profiles", {}))


def verdicts(a, head, rows, word):
    """A table of (label, figure, verdict or None) rows; word(verdict) says it in words."""
    a(f"| {head} | |")
    a("| --- | --- | --- |")
    for label, fig, ok in rows:
        a(f"| {label} | {fig} | {'n/a' if ok is None else word(ok)} |")
    a("")


def render_profiles(a, profiles):
    """The perf tables of the extra profiled runs ({name: {"profile", "run"}})."""
    for name, P in profiles.items():
        r = P["run"]
        if r["server_cpu"] is None:
            a(f"Profile of the node, {name} (`perf record -g -F 997` on the node while the idle "
              f"connections above connected and joined in an extra run, {r['msgs_per_s']:,.0f}/s with perf on, not "
              "counted above); self time, entries of 1% or more:")
        else:
            a(f"Profile of the nodes, {name} (`perf record -g -F 997` on the nodes over an extra"
              f" run of {r['msgs_per_s']:,.0f} msgs/s at {r['server_cpu'] * 100:.0f}% server "
              "CPU, not counted above); self time, entries of 1% or more:")
        a("")
        a("| % of samples | where | symbol |")
        a("| --- | --- | --- |")
        for pct_, dso, sym in P["profile"]["symbols"][:15]:
            a(f"| {pct_:.1f} | {dso} | `{sym}` |")
        a("")
        a("By binary: " + ", ".join(f"{d} {p_:.1f}%" for p_, d, _ in P["profile"]["dsos"][:8])
          + ". System calls, inclusive of the kernel work under them: " + (", ".join(
              f"{n} {p_:.1f}%" for p_, n in P["profile"].get("syscalls", [])) or "n/a") + ".")
        a("")


# ---- section 9: rooms of 1,000 members -----------------------------------------------------------

def metric(node, name):
    st, body = _get(f"http://127.0.0.1:{node.port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
    return None


def _get(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def section9(b, red):
    js_ready(b)
    E = b.ENV
    R = {}
    for size in [int(x) for x in E["SB_BENCH_ROOM_SIZES"].split()]:
        red.flush()
        args = RAISED + ["--max-room-members", str(max(64, size + 1))]
        n1, n2 = b.Node(red, "n1", args), b.Node(red, "n2", args)
        try:
            b.log(f"section 9: a room of {size} members over 2 nodes")
            p = client(b, "sb", "room", [n1.url, n2.url],
                       {"members": size, "joins": E["SB_BENCH_ROOM_JOINS"],
                        "signals": E["SB_BENCH_ROOM_SIGNALS"]})
            res = dict(wait_ev(b, p, "result", 300))
            wait_ev(b, p, "holding", 60)
            time.sleep(0.5)
            # resync: kill the nodes' subscriber connections; each node re-reads its room
            # (room_read) once its subscription is back
            rs = []
            for _ in range(E["SB_BENCH_ROOM_RESYNCS"]):
                before = [metric(n, "switchboard_node_pubsub_resyncs_total") for n in (n1, n2)]
                c0 = [b.cpu_s(n.pid) for n in (n1, n2)]
                calls0, us0 = red.cmdstat("evalsha")
                t0 = time.monotonic()
                red.r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

                def done():
                    return all(metric(n, "switchboard_node_pubsub_resyncs_total") > x
                               for n, x in zip((n1, n2), before))
                b.wait_for(done, 30, "resync of both nodes", interval=0.002)
                wall = time.monotonic() - t0
                cpu = sum(b.cpu_s(n.pid) - c for n, c in zip((n1, n2), c0))
                calls1, us1 = red.cmdstat("evalsha")
                rs.append({"wall_ms": wall * 1000, "node_cpu_ms": cpu * 1000,
                           "redis_evalsha_us": us1 - us0, "evalsha_calls": calls1 - calls0})
                time.sleep(0.5)
            res["resync"] = rs
            res["node_rss_kb"] = [b.rss_kb(n.pid) for n in (n1, n2)]
            p.signal(15)
            p.wait(30)
            R[str(size)] = res
        finally:
            n1.stop()
            n2.stop()
    return R


def render9(b, a, S):
    E = b.ENV
    a("## 9. Rooms of 1,000 members")
    a("")
    a("One room filled over 2 nodes (members alternate between them, 20 joins in flight), "
      "measured with the Node.js client of section 8. **Join**: one more member (on node 2) "
      f"joins the full room and leaves again, {E['SB_BENCH_ROOM_JOINS']} times: the time to its "
      "`joined` (listing every member), and to the moment the last of the others got its "
      f"`peer-joined` (fan-out). **Signal**: {E['SB_BENCH_ROOM_SIGNALS']} signals, one at a time, "
      "from a member on node 1 to the last member (node 2), one-way. **Resync**: the nodes' subscriber "
      "connections killed (`CLIENT KILL TYPE pubsub`); each node reconnects and re-reads its room "
      "with `room_read`; the time until both counted the resync "
      "(`switchboard_node_pubsub_resyncs_total`, polled every 2 ms: it includes the reconnect), "
      f"the CPU both nodes spent meanwhile and Redis' EVALSHA time; {E['SB_BENCH_ROOM_RESYNCS']} "
      "times, medians. The room of 2 is the reference.")
    a("")
    a("| members | join: `joined` p50 / p99 | join: fan-out done p50 / p99 | signal p50 / p99 | "
      "resync: wall | resync: node CPU (2 nodes) | resync: Redis EVALSHA time | node RSS |")
    a("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, r in S.items():
        rs = r["resync"]
        a(f"| {int(size):,} | {r['join_ms']['p50']:.2f} / {r['join_ms']['p99']:.2f} ms | "
          f"{r['fanout_ms']['p50']:.2f} / {r['fanout_ms']['p99']:.2f} ms | "
          f"{r['signal_ms']['p50']:.3f} / {r['signal_ms']['p99']:.3f} ms | "
          f"{med([x['wall_ms'] for x in rs]):.1f} ms | "
          f"{med([x['node_cpu_ms'] for x in rs]):.0f} ms | "
          f"{med([x['redis_evalsha_us'] for x in rs]) / 1000:.2f} ms "
          f"({med([x['evalsha_calls'] for x in rs]):.0f} calls) | "
          f"{' + '.join(f'{k / 1024:.1f}' for k in r['node_rss_kb'])} MiB |")
    a("")
    a("Node CPU for a resync is read from /proc in clock ticks (10 ms), so small values are "
      "coarse; it includes the subscriber's reconnect and both nodes' ordinary work meanwhile.")
    a("")


# ---- section 10: queue amplification with the send-queue budget --------------------------------

def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        c = s.recv(n - len(buf))
        if not c:
            raise EOFError
        buf += c
    return buf


class Raw:
    """A minimal WebSocket client on a plain socket: masked frames with key 0 (allowed by RFC 6455;
    the payload goes out as is, so 60 KB frames cost Python nothing to mask)."""

    def __init__(self, port, rcvbuf=None):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"handshake: {head[:80]!r}")
        self.s = s
        self.id = self.recv()["id"]

    def recv(self):
        h = _recv_exact(self.s, 2)
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", _recv_exact(self.s, 2))[0]
        elif n == 127:
            n = struct.unpack(">Q", _recv_exact(self.s, 8))[0]
        data = _recv_exact(self.s, n)
        return json.loads(data) if h[0] & 0x0F == 1 else {"type": f"op{h[0] & 0x0F}"}

    @staticmethod
    def frame(text):
        p = text.encode()
        n = len(p)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                               bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                               bytes([0x80 | 127]) + struct.pack(">Q", n))
        return hdr + b"\0\0\0\0" + p

    def send(self, obj):
        self.s.sendall(self.frame(json.dumps(obj)))

    def expect(self, typ):
        while True:
            m = self.recv()
            if m.get("type") == typ:
                return m

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def amp_run(b, red, budget):
    E = b.ENV
    red.flush()
    args = ["--queue-budget-bytes", str(budget)] if budget else []
    node = b.Node(red, "amp", args)
    socks = []
    try:
        pairs = []
        for i in range(E["SB_BENCH_AMP_PAIRS"]):
            s = Raw(node.port)
            s.send({"type": "join", "room": f"amp-{i}"})
            s.expect("joined")
            r = Raw(node.port, rcvbuf=4096)  # joins, then never reads again
            r.send({"type": "join", "room": f"amp-{i}"})
            s.expect("peer-joined")
            pairs.append((s, r))
            socks += [s, r]
        time.sleep(0.5)
        rss0 = b.rss_kb(node.pid)
        cpu0 = b.cpu_s(node.pid)
        peak = {"rss": rss0, "queued": 0}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak["rss"] = max(peak["rss"], b.rss_kb(node.pid))
                    q = metric(node, "switchboard_node_send_queue_bytes")
                    peak["queued"] = max(peak["queued"], q or 0)
                except Exception:
                    pass
                time.sleep(0.02)
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        pad = "z" * E["SB_BENCH_AMP_BYTES"]
        t0 = time.monotonic()
        for s, r in pairs:
            s.s.sendall(Raw.frame(json.dumps({"type": "signal", "to": r.id, "data": pad}))
                        * E["SB_BENCH_AMP_SIGNALS"])
        push_s = time.monotonic() - t0
        sent = E["SB_BENCH_AMP_PAIRS"] * E["SB_BENCH_AMP_SIGNALS"]

        def all_in():
            v = metric(node, 'switchboard_node_messages_received_total{type="signal"}')
            return v is None or v >= sent
        try:
            b.wait_for(all_in, 60, "every signal at the node", interval=0.05)
        except RuntimeError:
            pass
        time.sleep(2)
        busy_s = time.monotonic() - t0
        stop.set()
        th.join(2)
        cpu = b.cpu_s(node.pid) - cpu0
        sheds = {k: metric_label(node, "switchboard_node_send_queue_sheds_total", k)
                 for k in ("node", "socket", "stall")}
        return {"budget": budget, "resolved_budget": metric(
                    node, "switchboard_node_send_queue_budget_bytes"),
                "rss0_kb": rss0, "peak_rss_kb": peak["rss"], "end_rss_kb": b.rss_kb(node.pid),
                "peak_queued": peak["queued"],
                "queued_end": metric(node, "switchboard_node_send_queue_bytes"),
                "offered_bytes": sent * (E["SB_BENCH_AMP_BYTES"] + 40),
                "push_s": push_s, "seconds": busy_s, "cpu_s": cpu, "sheds": sheds}
    finally:
        for s in socks:
            s.close()
        node.stop()


def metric_label(node, name, label):
    st, body = _get(f"http://127.0.0.1:{node.port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and f'"{label}"' in line.split("}")[0]:
            return float(line.rsplit(" ", 1)[1])
    return None


def section10(b, red):
    E = b.ENV
    R = {"runs": []}
    for budget in (E["SB_BENCH_AMP_BUDGET"], 0):
        b.log(f"section 10: amplification, {E['SB_BENCH_AMP_PAIRS']} pairs, budget "
              f"{budget or 'default'}")
        R["runs"].append(amp_run(b, red, budget))
    return R


def render10(b, a, S):
    E = b.ENV
    a("## 10. Queue amplification with the send-queue budget")
    a("")
    a(f"The load of issue 17: {E['SB_BENCH_AMP_PAIRS']} pairs on one node, each a sender pushing "
      f"{E['SB_BENCH_AMP_SIGNALS']} signals of {E['SB_BENCH_AMP_BYTES']:,} B at once (within the "
      "default burst) to a receiver that joined and then never reads (a raw socket with a 4 KiB "
      "receive buffer; the kernel still takes up to about 2 MB per socket before anything queues "
      "in the node). Other options at their defaults (`--max-send-queue-bytes` 1 MiB, "
      "`--queue-stall-ms` 20 s). RSS and queued bytes (`switchboard_node_send_queue_bytes`) are "
      "sampled every 20 ms from the push until 2 s after every signal reached the node; CPU is "
      "the node's over that time. The budget bounds the bytes queued to clients (what the "
      "metric counts); RSS also holds the 200 senders' incoming 60 KB messages while they are "
      "reassembled and relayed, libwebsockets' buffers and what the allocator keeps after a "
      "shed, so its growth is not the queued bytes (without the budget it grew less than what "
      "was queued: freed queues are reused).")
    a("")
    a("| budget (`--queue-budget-bytes`) | offered | node RSS before / peak / after | peak queued "
      "| node CPU (s) over | sheds node / socket / stall | queued <= budget + one frame | "
      "peak RSS growth |")
    a("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in S["runs"]:
        grow = (r["peak_rss_kb"] - r["rss0_kb"]) * 1024
        bud = r["resolved_budget"] or 0
        sh = r["sheds"]
        label = (f"{r['budget'] / 1048576:.0f} MiB" if r["budget"] else
                 f"default ({bud / 1048576:,.0f} MiB: a quarter of the RAM)")
        a(f"| {label} | {r['offered_bytes'] / 1e6:,.0f} MB | {r['rss0_kb'] / 1024:.1f} / "
          f"{r['peak_rss_kb'] / 1024:.1f} / {r['end_rss_kb'] / 1024:.1f} MiB | "
          f"{r['peak_queued'] / 1048576:.1f} MiB | {r['cpu_s']:.2f} s over {r['seconds']:.1f} s | "
          f"{b.f0(sh['node'])} / {b.f0(sh['socket'])} / {b.f0(sh['stall'])} | "
          + (b.verdict(r["peak_queued"] <= bud + 65536 + 64) if r["budget"] else "(no budget)")
          + f" | {grow / 1048576:.1f} MiB |")
    a("")


def syscalls_cell(v):
    if not v:
        return "n/a"
    return f"{v['all']:.2f} ({v['reads']:.2f}, {v['writes']:.2f}, {v['polls']:.2f})"


def _prof(S, name):
    return (S.get("profiles", {}).get(name) or {}).get("profile") or {}


def _share(prof, names):
    return sum(p for p, _, sym in (prof.get("symbols") or []) if sym in names)


def why(b, a, S, T):
    """The measured reason of each missed target, from this run's figures and profiles."""
    E = b.ENV
    rate = f"{E['SB_BENCH_CMP_RATE']:,}"
    missed = {t for t, _, ok in T if ok is False}
    runs = S["runs"]

    def m(stack, mode, key):
        return med([r.get(key) for r in runs[stack][mode]])

    def hit(prefix):
        return any(t.startswith(prefix) for t in missed)

    def floor_ratio(mode, key, floor="floor", other="peerjs"):
        v = per_repeat_ratio(S, floor, other, mode, key) if runs.get(floor) else []
        return med(v), span(v, lambda x: f"{x:.2f}")

    def redis_share(stack, mode):
        """Redis's share of the server CPU (the last of the counted processes), median."""
        return med([r["cpu_each_pct"][-1] / sum(r["cpu_each_pct"]) * 100
                    for r in runs[stack][mode] if sum(r.get("cpu_each_pct") or [0])])

    def floor_cross_cpu_text():
        fr, fspan = floor_ratio("rate", "cpu_us_per_msg", "floor-cross")
        if fr is None:
            return ""
        return (f" The floor across (two floors through the same Redis, no reply read) spent "
                f"{m('floor-cross', 'rate', 'cpu_us_per_msg'):.0f} us per message at this rate, "
                f"{fr:.2f} x peerjs-server's ({fspan}), Redis {redis_share('floor-cross', 'rate'):.0f}"
                f"% of it, with {m('floor-cross', 'rate', 'switches_per_msg'):.2f} switches-in per "
                "message: " + ("over the target in the median, so on this machine a relay whose "
                               "messages cross processes through Redis pub/sub is at the target "
                               "at best, in its best runs; " if fr > 1 else "within the target; ")
                + f"the nodes spent {m('sb-cross', 'rate', 'cpu_us_per_msg') - m('floor-cross', 'rate', 'cpu_us_per_msg'):.0f}"
                " us more per message than it (each PUBLISH's reply written by Redis and read, "
                "JSON checked, order and delivery kept).")
    out = []
    pr = _prof(S, "sb-cross rate")
    kern = next((p for p, d, _ in pr.get("dsos", []) if d.startswith("[kernel")), None)
    sysc = ", ".join(f"{n} {p:.0f}%" for p, n in pr.get("syscalls", [])[:4])
    fts = _share(pr, ("finish_task_switch.isra.0", "finish_task_switch"))
    if hit("across nodes CPU per msg"):
        out.append(
            f"**Across nodes, CPU per message at {rate}/s.** At this rate messages seldom arrive "
            "together, so each one wakes every process on its path: node 1 (the client's frame, "
            "then a PUBLISH; its reply is read at node 1's next wake-up, not by a wake-up of "
            "its own: --redis-lazy-reply-ms), Redis, node 2 (the message, then the write to the "
            "client): "
            f"{m('sb-cross', 'rate', 'switches_per_msg'):.2f} switches-in of a server process per "
            f"message, against {m('peerjs', 'rate', 'switches_per_msg'):.2f} for peerjs-server "
            "(one process, no hop) and "
            f"{m('sb-same', 'rate', 'switches_per_msg'):.2f} for one node. A wake-up is a context "
            "switch, a return from `epoll_wait` and the read and write system calls of that one "
            "message, shared with no other message. `perf record -g` of both nodes in this "
            "run's extra across-node run at this rate: "
            + (f"{kern:.0f}% of the samples in the kernel, " if kern is not None else "")
            + (f"{fts:.0f}% self time in `finish_task_switch` (the return into a process that "
               "slept; with no hardware PMU in this VM, time with interrupts off is charged "
               "there), " if fts else "")
            + (f"system calls inclusive of the kernel work under them: {sysc}; " if sysc else "")
            + "the nodes' own code is a few percent (table below). Flat out the wake-ups are "
            f"shared ({m('sb-cross', 'relay', 'switches_per_msg'):.2f} per message) and the "
            "across-node relay per CPU-second is near or above peerjs-server's. So the cost is "
            "the Redis hop itself (three processes per message instead of one), not the node's "
            "code; fewer wake-ups would need messages held back to batch them (latency), or no "
            "hop. The PUBLISH's reply no longer wakes node 1 on its own (docs/design.md, \"Lazy "
            "PUBLISH replies\": 9-24% less server CPU per message at this rate); Redis still "
            "writes it."
            + floor_cross_cpu_text())
    ps_rate = _prof(S, "sb-same rate")
    k_same = next((p for p, d, _ in ps_rate.get("dsos", []) if d.startswith("[kernel")), None)
    lib_same = sum(p for p, d, _ in ps_rate.get("dsos", [])
                   if d.startswith(("libwebsockets", "libuv", "libc")))
    own_same = sum(p for p, d, _ in ps_rate.get("dsos", []) if d.startswith("switchboard"))
    sc = S.get("syscalls") or {}
    sc_same, sc_pj = sc.get("sb-same rate"), sc.get("peerjs rate")
    def floor_cpu_text():
        fr, fspan = floor_ratio("rate", "cpu_us_per_msg")
        if fr is None:
            return ""
        gap = m("sb-same", "rate", "cpu_us_per_msg") - m("floor", "rate", "cpu_us_per_msg")
        return (f" The floor (no library, no JSON) spent {m('floor', 'rate', 'cpu_us_per_msg'):.0f}"
                f" us per message at this rate, {fr:.2f} x peerjs-server's ({fspan}), with "
                f"{m('floor', 'rate', 'switches_per_msg'):.2f} switches-in per message: "
                + ("more than the target allows, so no relay meets it on this machine. "
                   if fr > 0.5 else "below the target. ")
                + f"The node spent {gap:.0f} us more per message than the floor: "
                + ("libwebsockets (its frame parser goes byte by byte and logs with logging off), "
                   "libuv, and " if S.get("layer", "lws") == "lws" else "libuv, and ")
                + "the node's own decoding, checks and routing (the profile below).")
    if hit("same node CPU per msg"):
        out.append(
            f"**Same node, CPU per message at {rate}/s** (the ratio of each repeat: "
            f"{span(per_repeat_ratio(S, 'sb-same', 'peerjs', 'rate', 'cpu_us_per_msg'), lambda x: f'{x:.2f}')}"
            "). At this rate both servers are woken for nearly every message: "
            f"{m('sb-same', 'rate', 'switches_per_msg'):.2f} switches-in per message for the node, "
            f"{m('peerjs', 'rate', 'switches_per_msg'):.2f} for peerjs-server, so a good part of "
            "each one's cost per message is the same kernel work (a wake-up, a read, a write), "
            "which no server code can halve"
            + (f": in this run's profile of the node at this rate {k_same:.0f}% of the samples "
               "are in the kernel, libwebsockets, libuv and libc " f"{lib_same:.0f}%, the node's "
               f"own code {own_same:.0f}% (table below)" if k_same is not None else "")
            + (f"; system calls per message (an extra run under `perf stat`): the node "
               f"{sc_same['all']:.2f}, peerjs-server {sc_pj['all']:.2f}" if sc_same and sc_pj
               else "") + "."
            + floor_cpu_text())
    for stack, label, hops in (("sb-same", "same node", "one server process (and the client)"),
                               ("sb-cross", "across nodes", "three server processes (node 1, "
                                "Redis, node 2)")):
        if not hit(f"{label} p99"):
            continue
        out.append(
            f"**{label.capitalize()}, p99 at {rate}/s.** A message crosses {hops}, each of which "
            "may have to wait for one of the 2 cores that every process (the client included, "
            "and other work on the machine: see the load average) shares. The servers spent "
            f"{m(stack, 'rate', 'runq_wait_ms_per_s'):.0f} ms per second runnable but waiting "
            "for a core (`/proc/PID/schedstat`), peerjs-server "
            f"{m('peerjs', 'rate', 'runq_wait_ms_per_s'):.0f} ms/s; the p50 "
            f"({m(stack, 'rate', 'lat_p50_us') / 1000:.2f} ms) shows the path itself is cheap, "
            "the tail is waiting for a core. peerjs-server's own p99 in the same run: "
            f"{m('peerjs', 'rate', 'lat_p99_us') / 1000:.2f} ms."
            + (f" The floor across, on the same three-process path: p99 "
               f"{m('floor-cross', 'rate', 'lat_p99_us') / 1000:.2f} ms, p50 "
               f"{m('floor-cross', 'rate', 'lat_p50_us') / 1000:.2f} ms."
               if stack == "sb-cross" and runs.get("floor-cross") else ""))
    def floor_relay_text():
        fr, fspan = floor_ratio("relay", "msgs_per_cpu_s")
        if fr is None:
            return ""
        xr, xspan = floor_ratio("relay", "msgs_per_cpu_s", "floor-cross", "sio")
        return (f" The floor relayed {fr:.2f} x peerjs-server's messages per CPU-second ({fspan})"
                f", switched in {m('floor', 'relay', 'switches_per_msg'):.2f} times per message"
                + (": under 2 x, so with this client on this machine no relay shows the same-node "
                   "target." if fr < 2 else ".")
                + ("" if xr is None else floor_cross_relay_text(xr, xspan)))

    def floor_cross_relay_text(xr, xspan):
        node = med(per_repeat_ratio(S, "sb-cross", "sio", "relay", "msgs_per_cpu_s"))
        text = (f" The floor across relayed {xr:.2f} x Socket.IO's messages per CPU-second "
                f"({xspan}; Redis {redis_share('floor-cross', 'relay'):.0f}% of its server CPU, "
                f"{m('floor-cross', 'relay', 'switches_per_msg'):.2f} switches-in per message)")
        if node is not None and xr < node:
            return text + (
                f", less than the nodes' {node:.2f} x: flat out the fewest system calls per "
                "message is not the least CPU per message (the nodes, switched in "
                f"{m('sb-cross', 'relay', 'switches_per_msg'):.2f} times per message, share "
                "their wake-ups across more messages), so here the floor across bounds nothing; "
                "it shows that relaying through one Redis costs the same order of CPU whoever "
                "relays.")
        return text + (": under 4 x, so no relay through Redis pub/sub shows the Socket.IO "
                       "target on this machine." if xr < 4 else ".")
    if hit("across nodes msgs per server CPU-s") or hit("same node msgs"):
        ps_ = _prof(S, "sb-same relay")
        ew = next((p for p, n in ps_.get("syscalls", []) if n == "epoll_wait"), None)
        own = sum(p for p, d, _ in ps_.get("dsos", [])
                  if d.startswith("switchboard-node") or d.startswith("libwebsockets"))
        px = _prof(S, "sb-cross relay")
        libc = next((p for p, d, _ in px.get("dsos", []) if d.startswith("libc")), None)
        alloc = _share(px, ("_int_malloc", "_int_free", "malloc", "free", "__libc_calloc",
                            "cfree", "malloc_consolidate", "__libc_malloc", "__libc_free"))
        span_ = _share(px, ("sb_json_member_span",))
        out.append(
            "**Flat out, messages per server CPU-second.** These ratios move with the machine's "
            "other work from run to run (see the ranges). The client, not the server, is the "
            "bottleneck here (its CPU above), so a fast server runs out of work and sleeps: "
            f"the node was switched in {m('sb-same', 'relay', 'switches_per_msg'):.2f} times per "
            f"message on one node ({m('sb-cross', 'relay', 'switches_per_msg'):.2f} across), "
            f"peerjs-server {m('peerjs', 'relay', 'switches_per_msg'):.2f} (a Node.js process "
            "this busy always has the next batch waiting). Each sleep and wake-up is paid in the "
            "kernel: in the profile of the same-node flat-out run "
            + (f"`epoll_wait` holds {ew:.0f}% of the node's samples inclusive (mostly the "
               "context switch back in), " if ew else "")
            + (f"the node's own code and libwebsockets together {own:.0f}% "
               if own else "") + "(table below). "
            + (f"System calls per message (an extra run under `perf stat`, reads in brackets): "
               f"the node {sc['sb-same relay']['all']:.2f} "
               f"({sc['sb-same relay']['reads']:.2f}), peerjs-server "
               f"{sc['peerjs relay']['all']:.2f} ({sc['peerjs relay']['reads']:.2f}): "
               "peerjs-server, never idle, finds many frames waiting at each read, the node finds "
               "about one, and each read and each return from `epoll_wait` is kernel work per "
               "message that a busier server shares. "
               if sc.get("sb-same relay") and sc.get("peerjs relay") else "")
            + ("Across nodes, in addition: " + "; ".join(x for x in (
                (f"libc {libc:.0f}% of the nodes' samples, {alloc:.0f}% in the allocator "
                 "(not attributed to callers: user-space call chains do not resolve in these "
                 "profiles, the libraries have no frame pointers)" if libc else ""),
                (f"`sb_json_member_span` {span_:.0f}% (the fields of each relayed message "
                 "located in its text)" if span_ else "")) if x) + "." if libc or span_ else "")
            + floor_relay_text())
    if "RSS per idle joined socket <= 2,048 B" in missed and S.get("layer", "lws") == "native":
        out.append(
            f"**RSS per idle joined socket** ({S['idle']['sb']['bytes_per_conn']:,.0f} B). "
            "Memory, not CPU: section 1 breaks it down by state. The node's own WebSocket layer "
            "holds about 270 B per connection; the rest is the node's session, seat, room view "
            "and maps, and with fewer connections (this section) the node's fixed growth (maps, "
            "allocator arenas).")
    elif "RSS per idle joined socket <= 2,048 B" in missed:
        out.append(
            f"**RSS per idle joined socket** ({S['idle']['sb']['bytes_per_conn']:,.0f} B). "
            "Memory, not CPU: section 1 breaks it down by state "
            "against the bare libwebsockets server with the node's settings. libwebsockets "
            "4.1.6 alone holds about 1,810 B of heap per connection (massif, docs/design.md: "
            "its wsi 864 B, the ws state and the 512 B receive buffer 788 B, the libuv poll "
            "handle 160 B), which leaves under 250 B of the 2,048 B for the node's session, seat, "
            "room view and maps (about 1,160 B now): the target needs libwebsockets to hold "
            "less per connection. With fewer connections (this section) the figure also carries "
            "the node's fixed growth (maps, allocator arenas)."
            + (f" The floor held {S['idle']['floor']['bytes_per_conn']:,.0f} B per idle "
               "connection (its record and id; socket buffers are the kernel's, not in RSS): on "
               "a WebSocket layer of its own instead of libwebsockets, the node would have about "
               f"{2048 - S['idle']['floor']['bytes_per_conn']:,.0f} B of the 2,048 B for its "
               "records."
               if "floor" in S["idle"] else ""))
    if "connects + joins/s >= 2 x peerjs connects/s" in missed:
        I = S["idle"]
        out.append(
            "**Connects + joins per second.** The rate is what the whole box does: the client "
            f"processes used {I['sb']['client_cpu_pct']:.0f}% of a core against Switchboard and "
            f"{I['peerjs']['client_cpu_pct']:.0f}% against peerjs-server, the node and Redis "
            f"{I['sb']['server_cpu_pct']:.0f}%, peerjs-server "
            f"{I['peerjs']['server_cpu_pct']:.0f}%, on 2 cores: the Node.js client (a WebSocket "
            "handshake and, for us, a join and its reply per connection) is the larger cost, so "
            "this figure cannot show a 2 x server advantage on this machine. Server CPU per "
            f"connect: {I['sb']['server_cpu_us_per_connect']:,.0f} us for a connect and a join "
            "(with its `room_join` script in Redis) against "
            f"{I['peerjs']['server_cpu_us_per_connect']:,.0f} us for peerjs-server's connect. "
            + (f"The floor, a handshake and nothing else, reached "
               f"{I['floor']['connects_per_s'] / I['peerjs']['connects_per_s']:.2f} x "
               f"peerjs-server's connects per second at {I['floor']['server_cpu_us_per_connect']:,.0f}"
               " us of server CPU per connect, its clients using "
               f"{I['floor']['client_cpu_pct']:.0f}%: the client bounds this figure. "
               if "floor" in I and I["peerjs"].get("connects_per_s") else "")
            + "The profile of the node while connecting is below.")
    if out:
        a("Why the missed targets are missed (measured in this run):")
        a("")
        for o in out:
            a("- " + o)
        a("")
