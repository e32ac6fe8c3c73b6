"""Section 7 of `make bench` (issue 12, Benchmark): one Redis against a Redis Cluster of 3
primaries (each with a replica), with the same 2 release nodes and the same load.

Measures relay across nodes and state changes (join / link / leave) on both, the Redis CPU of
every redis-server process (utime+stime of /proc/PID/stat) and its INFO commandstats over the
measured window, hence the Redis CPU per operation on each shard; the spread of 10,000 room names
over the 3 primaries (from each room's slot, checked against the keys after joining a sample);
and the projection this gives: operations per Redis CPU-second per shard x 3 primaries, next to
what the nodes, the clients and the machine's cores cost per operation. With `perf` present, it
also samples the busiest primary during an extra relay run (`perf record`, top symbols).

Called from bench.py with the bench module itself (`run(bench)`, `render(a, results)`), so that
it uses bench.py's process bookkeeping (Proc: stopped by pid), loadgen helpers and node class.
Starts its own redis-server processes on loopback (a plain one, and 6 with --cluster-enabled
yes joined by `redis-cli --cluster create`) and stops them by pid. Sizes: ENV below."""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keyspace  # noqa: E402  (tests/keyspace.py: the slot of a key, bucket tags)

SECTION = "7"


def _num(name, default):
    """The environment variable name as the type of default (int or float), else default."""
    v = os.environ.get(name)
    return type(default)(v) if v not in (None, "") else default


ENV = {
    "SB_BENCH_CL_PAIRS": _num("SB_BENCH_CL_PAIRS", 60),  # relay pairs (rooms), across nodes
    "SB_BENCH_CL_CHURN_PAIRS": _num("SB_BENCH_CL_CHURN_PAIRS", 60),
    "SB_BENCH_CL_SECONDS": _num("SB_BENCH_CL_SECONDS", 10.0),
    "SB_BENCH_CL_WARMUP": _num("SB_BENCH_CL_WARMUP", 2.0),
    "SB_BENCH_CL_ROOMS": _num("SB_BENCH_CL_ROOMS", 10000),  # spread: room names by slot
    "SB_BENCH_CL_SAMPLE": _num("SB_BENCH_CL_SAMPLE", 2000),  # of them joined (2 sockets each)
    "SB_BENCH_CL_NODE_TIMEOUT_MS": _num("SB_BENCH_CL_NODE_TIMEOUT_MS", 5000),
    "SB_BENCH_CL_PERF_SECONDS": _num("SB_BENCH_CL_PERF_SECONDS", 4.0),  # 0: no perf
    # also 1 Redis + a replica, and 3 primaries without replicas
    "SB_BENCH_CL_REPLICA_RUN": _num("SB_BENCH_CL_REPLICA_RUN", 1),
    "SB_BENCH_CL_REPEATS": _num("SB_BENCH_CL_REPEATS", 3),  # runs of each; the median is shown
    "SB_BENCH_CL_SAT_N": _num("SB_BENCH_CL_SAT_N", 1000000),  # SPUBLISH flat out; 0: skip
}
NODE_ARGS = ["--rate", "1000000", "--burst", "1000000"]  # as sections 2 and 3
KEYS = ("single", "replica", "cluster0", "cluster")  # the topologies, in the tables' order
CLUSTER_FN = re.compile(r"(crc16|keyHashSlot|getNodeByQuery|slotToKey|cluster|.*[Ss]lot)")


# ---- Redis: one server, or 3 primaries + 3 replicas --------------------------------------------

class Server:
    """One redis-server process we started (stopped by pid through bench.Proc)."""

    def __init__(self, B, port, argv, name):
        import redis
        self.port = port
        self.proc = B.Proc(argv, name)
        self.r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True,
                             socket_timeout=60)
        B.wait_for(lambda: self.r.ping(), 10, f"redis {port}")

    @property
    def pid(self):
        return self.proc.pid


class Topology:
    """primaries / replicas: lists of Server; url: what the nodes get as --redis."""

    def __init__(self, label, url, primaries, replicas, slots):
        self.label = label
        self.url = url
        self.primaries = primaries
        self.replicas = replicas  # replicas[i] replicates primaries[i] (or None)
        self.slots = slots  # [(lo, hi, primary port)]

    def servers(self):
        return self.primaries + [x for x in self.replicas if x]

    def owner_of_slot(self):
        """[primary index of slot 0..16383]."""
        idx = {p.port: i for i, p in enumerate(self.primaries)}
        out = [0] * keyspace.SLOTS
        for lo, hi, port in self.slots:
            for s in range(lo, hi + 1):
                out[s] = idx[port]
        return out

    def stop(self):
        for s in reversed(self.servers()):
            s.proc.stop(10)


def _base_argv(B, port, d):
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", d, "--maxmemory-policy", "noeviction",
            "--loglevel", "warning"]


def start_single(B, with_replica=False):
    """One redis-server; with_replica: and a replica of it (--replicaof), in sync."""
    servers = []
    for role in ("primary", "replica")[:1 + with_replica]:
        port = B.free_port()
        d = os.path.join(B.WORK, f"cl-single-{port}")
        os.makedirs(d, exist_ok=True)
        argv = _base_argv(B, port, d)
        if servers:
            argv += ["--replicaof", "127.0.0.1", str(servers[0].port),
                     "--repl-diskless-sync-delay", "0"]
        servers.append(Server(B, port, argv, f"cl-redis-{port}"))
    if with_replica:
        B.wait_for(lambda: servers[1].r.info("replication").get("master_link_status") == "up",
                   30, "replica in sync")
    return Topology("1 Redis + 1 replica" if with_replica else "1 Redis",
                    f"redis://127.0.0.1:{servers[0].port}", servers[:1],
                    [servers[1] if with_replica else None],
                    [(0, keyspace.SLOTS - 1, servers[0].port)])


def start_cluster(B, primaries=3, replicas=1):
    """primaries, each with `replicas` replicas, joined by redis-cli --cluster create; returns
    once every node says cluster_state:ok and every replica is in sync."""
    n = primaries * (1 + replicas)
    ports = set()
    while len(ports) < 2 * n:
        ports.add(B.free_port())
    ports = sorted(ports)
    data_ports, bus_ports = ports[:n], ports[n:]
    servers = []
    try:
        for port, bus in zip(data_ports, bus_ports):
            d = os.path.join(B.WORK, f"cl-cluster-{port}")
            os.makedirs(d, exist_ok=True)
            argv = _base_argv(B, port, d) + [
                "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", os.path.join(d, "nodes.conf"),
                "--cluster-node-timeout", str(ENV["SB_BENCH_CL_NODE_TIMEOUT_MS"]),
                "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"]
            servers.append(Server(B, port, argv, f"cl-redis-{port}"))
        out = subprocess.run(["redis-cli", "--cluster", "create"] +
                             [f"127.0.0.1:{p}" for p in data_ports] +
                             ["--cluster-replicas", str(replicas), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create: {out.stdout[-800:]}{out.stderr}")
        by_port = {s.port: s for s in servers}

        def whole():
            for s in servers:
                if "cluster_state:ok" not in s.r.execute_command("CLUSTER", "INFO"):
                    return None
                rows = s.r.execute_command("CLUSTER", "SLOTS")
                if any(len(r) < 3 + replicas for r in rows):
                    return None
                repl = s.r.info("replication")
                if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                    return None
            return rows
        rows = B.wait_for(whole, 60, "cluster_state:ok, replicas in sync", interval=0.1)
        slots = sorted((r[0], r[1], r[2][1]) for r in rows)
        prim_ports = sorted({p for _, _, p in slots})
        prims = [by_port[p] for p in prim_ports]
        reps = []
        for p in prim_ports:
            rep = [r[3][1] for r in rows if r[2][1] == p and len(r) > 3]
            reps.append(by_port[rep[0]] if rep else None)
    except BaseException:
        for s in servers:
            s.proc.stop(5)
        raise
    url = "redis-cluster://" + ",".join(f"127.0.0.1:{p.port}" for p in prims[:2])
    label = (f"{primaries} primaries + {primaries * replicas} replicas" if replicas else
             f"{primaries} primaries, no replicas")
    return Topology(label, url, prims, reps, slots)


# ---- measurement -------------------------------------------------------------------------------

def snapshot(B, topo, pids):
    """CPU seconds of every Redis server and of each pid in pids; commandstats of the servers."""
    snap = {"t": time.monotonic(), "cpu": {}, "cmd": {}}
    for s in topo.servers():
        snap["cpu"][s.port] = B.cpu_s(s.pid)
        snap["cmd"][s.port] = {k[len("cmdstat_"):]: (int(v["calls"]), float(v["usec"]))
                               for k, v in s.r.info("commandstats").items()}
    for pid in pids:
        snap["cpu"][f"pid{pid}"] = B.cpu_s(pid)
    return snap


def delta(topo, s0, s1, op_cmd, nodes, client_pid):
    """Per server over [s0, s1]: CPU share, calls and Redis usec of every command; the shards'
    figures per operation (op_cmd: the command that is one operation: spublish or evalsha)."""
    dt = s1["t"] - s0["t"]
    out = {"seconds": dt, "shards": []}
    for i, p in enumerate(topo.primaries):
        row = {"port": p.port}
        for role, srv in (("primary", p), ("replica", topo.replicas[i])):
            if not srv:
                continue
            cpu = s1["cpu"][srv.port] - s0["cpu"][srv.port]
            cmds = {}
            for name, (calls, usec) in s1["cmd"][srv.port].items():
                c0, u0 = s0["cmd"][srv.port].get(name, (0, 0.0))
                if calls - c0 > 0:
                    cmds[name] = {"calls": calls - c0, "usec": usec - u0}
            row[role] = {"port": srv.port, "cpu_s": cpu, "cpu_pct": cpu / dt * 100,
                         "cmds": cmds, "calls": sum(c["calls"] for c in cmds.values())}
        op = row["primary"]["cmds"].get(op_cmd, {"calls": 0, "usec": 0.0})
        row["ops"] = op["calls"]
        row["ops_per_s"] = op["calls"] / dt
        row["redis_us_per_op"] = op["usec"] / op["calls"] if op["calls"] else None
        cpu = row["primary"]["cpu_s"]
        row["cpu_us_per_op"] = cpu * 1e6 / op["calls"] if op["calls"] else None
        row["ops_per_cpu_s"] = op["calls"] / cpu if cpu > 0 else None
        if "replica" in row:
            rc = row["replica"]["cpu_s"]
            row["replica_cpu_us_per_op"] = rc * 1e6 / op["calls"] if op["calls"] else None
        out["shards"].append(row)
    ops = sum(r["ops"] for r in out["shards"])
    for r in out["shards"]:
        r["share"] = r["ops"] / ops if ops else 0.0
    out["ops"] = ops
    out["ops_per_s"] = ops / dt
    prim_cpu = sum(r["primary"]["cpu_s"] for r in out["shards"])
    rep_cpu = sum(r["replica"]["cpu_s"] for r in out["shards"] if "replica" in r)
    node_cpu = sum(s1["cpu"][f"pid{x.pid}"] - s0["cpu"][f"pid{x.pid}"] for x in nodes)
    client_cpu = s1["cpu"][f"pid{client_pid}"] - s0["cpu"][f"pid{client_pid}"]
    out["primaries_cpu_pct"] = prim_cpu / dt * 100
    out["replicas_cpu_pct"] = rep_cpu / dt * 100
    out["nodes_cpu_pct"] = node_cpu / dt * 100
    out["client_cpu_pct"] = client_cpu / dt * 100
    if ops:
        out["us_per_op"] = {"primaries": prim_cpu * 1e6 / ops, "replicas": rep_cpu * 1e6 / ops,
                            "nodes": node_cpu * 1e6 / ops, "client": client_cpu * 1e6 / ops}
    return out


def measured_run(B, topo, nodes, scenario, pairs, extra, tag, op_cmd):
    """One loadgen run against the 2 nodes; Redis, node and client CPU over 0.9 x the measured
    window (started after the warm-up, as bench.relay_run does)."""
    secs, warm = ENV["SB_BENCH_CL_SECONDS"], ENV["SB_BENCH_CL_WARMUP"]
    urls = []
    for x in nodes:
        urls += ["--url", x.url]
    p = B.loadgen(["--scenario", scenario, *urls, "--src", B.sources(2), "--conns", 2 * pairs,
                   "--seconds", secs, "--warmup", warm] + extra, tag)
    B.wait_event([p], "ready", 120)
    time.sleep(warm)
    s0 = snapshot(B, topo, [x.pid for x in nodes] + [p.pid])
    time.sleep(secs * 0.9)
    s1 = snapshot(B, topo, [x.pid for x in nodes] + [p.pid])
    p.wait(secs + 60)
    res = p.event("result")
    if not res:
        raise RuntimeError(f"{tag}: no result from the load generator: {p.stderr_tail()}")
    res["window"] = delta(topo, s0, s1, op_cmd, nodes, p.pid)
    return res


def repeated(run):
    """SB_BENCH_CL_REPEATS runs; the one with the median primary CPU per operation, with that
    figure of every run under "repeats" (the machine is shared: one run can be an outlier)."""
    runs = [run() for _ in range(max(1, ENV["SB_BENCH_CL_REPEATS"]))]
    runs.sort(key=lambda r: r["window"].get("us_per_op", {}).get("primaries", 1e18))
    med = runs[len(runs) // 2]
    med["repeats"] = [r["window"].get("us_per_op", {}).get("primaries") for r in runs]
    return med


def saturated(B, topo):
    """What one primary passes flat out: redis-benchmark -c 50 -P 16 SPUBLISH (200 B, no
    subscriber) on a channel of its first slot; its CPU (and its replica's) per message."""
    p, rep_ = topo.primaries[0], topo.replicas[0]
    chan = f"bench:{{{keyspace.slot_tags()[topo.slots[0][0]]}}}"
    n = ENV["SB_BENCH_CL_SAT_N"]
    pids = [p.pid] + ([rep_.pid] if rep_ else [])
    c0 = [B.cpu_s(x) for x in pids]
    t0 = time.monotonic()
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(p.port), "-n", str(n),
                          "-c", "50", "-P", "16", "--csv", "SPUBLISH", chan, "x" * 200],
                         capture_output=True, text=True, timeout=600)
    dt = time.monotonic() - t0
    c1 = [B.cpu_s(x) for x in pids]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith('"') and "rps" not in ln]
    if not rows:
        return {"error": (out.stderr or out.stdout)[-300:]}
    rps = float(rows[-1].split('","')[1])
    return {"n": n, "rps": rps, "primary_cpu_pct": (c1[0] - c0[0]) / dt * 100,
            "primary_us_per_op": (c1[0] - c0[0]) * 1e6 / n,
            "replica_us_per_op": (c1[1] - c0[1]) * 1e6 / n if rep_ else None}


def idle(B, topo, nodes, seconds=3.0):
    """CPU share of each Redis server with the nodes connected and no clients."""
    s0 = snapshot(B, topo, [])
    time.sleep(seconds)
    s1 = snapshot(B, topo, [])
    dt = s1["t"] - s0["t"]
    return {str(s.port): (s1["cpu"][s.port] - s0["cpu"][s.port]) / dt * 100
            for s in topo.servers()}


def perf_top(B, pid, seconds, n=8):
    """Where pid spends its CPU over `seconds` of perf record: the kernel's share of the
    samples and the top user-space and kernel symbols (self time, % of samples)."""
    data = os.path.join(B.WORK, f"perf-{pid}.data")
    rec = subprocess.run(["perf", "record", "-q", "-F", "999", "-o", data, "-p", str(pid), "--",
                          "sleep", f"{seconds:.1f}"], capture_output=True, text=True,
                         timeout=seconds + 60)
    if rec.returncode != 0:
        return {"error": (rec.stderr or rec.stdout)[-300:]}
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                          "--sort", "dso,symbol"], capture_output=True, text=True, timeout=120)
    rows = []
    for line in rep.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(\S+)", line)
        if m:
            rows.append({"pct": float(m.group(1)), "dso": m.group(2), "kernel": m.group(3) == "k",
                         "symbol": m.group(4)})
    m = re.search(r"# Samples: (\S+)", rep.stdout)
    os.unlink(data)
    by_dso = {}
    for r in rows:
        if r["dso"] == "redis-check-rdb":  # Debian: redis-server is a link to it
            r["dso"] = "redis-server"
        by_dso[r["dso"]] = by_dso.get(r["dso"], 0.0) + r["pct"]
        if r["symbol"].startswith("0x"):  # no symbols for this library
            r["symbol"] = f"({r['dso']})"
    return {"samples": m.group(1) if m else None,  # as perf says it ("1K" is about 1000)
            "by_dso": sorted(by_dso.items(), key=lambda kv: -kv[1])[:4],
            # Redis's cluster-mode code: slot of a key, slot checks, per-slot key index, bus
            "cluster_pct": sum(r["pct"] for r in rows if not r["kernel"] and CLUSTER_FN.match(
                r["symbol"])),
            "kernel_pct": sum(r["pct"] for r in rows if r["kernel"]),
            "top_user": [r for r in rows if not r["kernel"]][:n],
            "top_kernel": [r for r in rows if r["kernel"]][:3]}


def perf_run(B, topo, nodes, scenario, extra, pairs, op_cmd):
    """An extra run (not measured) with perf on the busiest primary for part of it."""
    urls = []
    for x in nodes:
        urls += ["--url", x.url]
    secs = ENV["SB_BENCH_CL_PERF_SECONDS"] + 3
    p = B.loadgen(["--scenario", scenario, *urls, "--src", B.sources(2), "--conns", 2 * pairs,
                   "--seconds", secs, "--warmup", 1] + extra, "clperf")
    B.wait_event([p], "ready", 120)
    time.sleep(1)

    def calls(s):
        return s.r.info("commandstats").get(f"cmdstat_{op_cmd}", {}).get("calls", 0)
    s0 = {s.port: calls(s) for s in topo.primaries}
    time.sleep(0.5)
    busiest = max(topo.primaries, key=lambda s: calls(s) - s0[s.port])
    out = {"port": busiest.port, "redis": perf_top(B, busiest.pid,
                                                   ENV["SB_BENCH_CL_PERF_SECONDS"])}
    p.wait(secs + 60)
    res = p.event("result") or {}
    out["errors"] = res.get("errors")
    out["error_codes"] = res.get("error_codes")
    return out


# ---- spread ----------------------------------------------------------------------------------

def spread(B, topo, nodes):
    """10,000 room names (as the load generator names them) by slot over the primaries, then a
    sample of them joined and counted on each primary: room hashes (SCAN), rooms in the buckets
    (SCARD of P:{T}:rooms) and DBSIZE."""
    n, k = ENV["SB_BENCH_CL_ROOMS"], min(ENV["SB_BENCH_CL_SAMPLE"], ENV["SB_BENCH_CL_ROOMS"])
    owner = topo.owner_of_slot()
    R = {"rooms": n, "sample": k, "primaries": []}
    dbsize0 = [s.r.dbsize() for s in topo.primaries]
    urls = []
    for x in nodes:
        urls += ["--url", x.url]
    lg = B.loadgen(["--scenario", "connect", *urls, "--src", B.sources(2), "--conns", 2 * k,
                    "--concurrency", 200, "--hold", 0, "--timeout", 30], "clspread")
    setup = B.wait_event([lg], "setup", 600)[0]
    prefix = lg.lines()[0]["room_prefix"]
    time.sleep(1.0)
    names = [f"{prefix}-{i}" for i in range(n)]
    by_slot = [0] * len(topo.primaries)
    sample_pred = [0] * len(topo.primaries)
    for i, name in enumerate(names):
        o = owner[keyspace.keyslot("{" + name + "}")]
        by_slot[o] += 1
        if i < k:
            sample_pred[o] += 1
    for i, s in enumerate(topo.primaries):
        found = sum(1 for _ in s.r.scan_iter(match=f"sb:{{{prefix}-*}}:members", count=1000))
        in_buckets = sum(s.r.scard(b) for b in s.r.scan_iter(match="sb:{#*}:rooms", count=1000))
        nslots = sum(hi - lo + 1 for lo, hi, p in topo.slots if p == s.port)
        R["primaries"].append({"port": s.port, "slots": nslots, "rooms": by_slot[i],
                               "share": by_slot[i] / n, "sample_predicted": sample_pred[i],
                               "sample_found": found, "bucket_rooms": in_buckets,
                               "dbsize_delta": s.r.dbsize() - dbsize0[i]})
    B.finish_loadgens([lg])
    R["joined"] = setup["ok"]
    R["failed"] = setup["failed"]
    R["min_max"] = min(by_slot) / max(by_slot) if max(by_slot) else None
    R["verified"] = all(p["sample_found"] == p["sample_predicted"] for p in R["primaries"])
    return R


# ---- the section -----------------------------------------------------------------------------

def run(B, red=None):
    """Section 7; `red` (bench.py's own Redis) is not used: this section starts its own."""
    R = {"env": dict(ENV), "loadavg_start": B.sh("cut -d' ' -f1-3 /proc/loadavg")}
    have_perf = ENV["SB_BENCH_CL_PERF_SECONDS"] > 0 and bool(B.sh("command -v perf"))
    tops = [("single", start_single), ("cluster", start_cluster)]
    if ENV["SB_BENCH_CL_REPLICA_RUN"]:  # what replication costs without cluster mode, and
        # cluster mode without replication
        tops[1:1] = [("replica", lambda B: start_single(B, with_replica=True)),
                     ("cluster0", lambda B: start_cluster(B, replicas=0))]
    for key, start in tops:
        B.log(f"section {SECTION}: {key}: starting Redis")
        topo = start(B)
        nodes = []
        try:
            nodes = [B.Node(topo, f"bench-cl{i}", NODE_ARGS) for i in range(2)]
            time.sleep(1.0)
            T = {"label": topo.label, "primaries": [s.port for s in topo.primaries],
                 "replicas": [s.port if s else None for s in topo.replicas]}
            T["idle_cpu_pct"] = idle(B, topo, nodes)
            if ENV["SB_BENCH_CL_SAT_N"]:
                B.log(f"section {SECTION}: {key}: redis-benchmark SPUBLISH -P 16 on one primary")
                T["saturated"] = saturated(B, topo)
            B.log(f"section {SECTION}: {key}: relay across 2 nodes, "
                  f"{ENV['SB_BENCH_CL_PAIRS']} pairs, flat out")
            T["relay"] = repeated(lambda: measured_run(
                B, topo, nodes, "relay", ENV["SB_BENCH_CL_PAIRS"],
                ["--cross", "--window", B.ENV["SB_BENCH_WINDOW"], "--payload",
                 B.ENV["SB_BENCH_PAYLOAD"]], "clrelay", "spublish"))
            B.log(f"section {SECTION}: {key}: state changes on 2 nodes, "
                  f"{ENV['SB_BENCH_CL_CHURN_PAIRS']} pairs")
            T["churn"] = repeated(lambda: measured_run(
                B, topo, nodes, "churn", ENV["SB_BENCH_CL_CHURN_PAIRS"], [], "clchurn",
                "evalsha"))
            if have_perf:
                B.log(f"section {SECTION}: {key}: perf on the busiest primary (relay, churn)")
                T["perf"] = {
                    "relay": perf_run(B, topo, nodes, "relay", ["--cross"],
                                      ENV["SB_BENCH_CL_PAIRS"], "spublish"),
                    "churn": perf_run(B, topo, nodes, "churn", [],
                                      ENV["SB_BENCH_CL_CHURN_PAIRS"], "evalsha")}
            if key == "cluster":  # last: its mass close of sockets loads the nodes for a while
                B.log(f"section {SECTION}: spread of {ENV['SB_BENCH_CL_ROOMS']} rooms, "
                      f"{ENV['SB_BENCH_CL_SAMPLE']} joined")
                R["spread"] = spread(B, topo, nodes)
            R[key] = T
        finally:
            for x in nodes:
                x.stop()
            topo.stop()
    R["loadavg_end"] = B.sh("cut -d' ' -f1-3 /proc/loadavg")
    R["nproc"] = os.cpu_count()
    return R


# ---- the report ------------------------------------------------------------------------------

def _f(x, d=0):
    return "n/a" if x is None else f"{x:,.{d}f}"


def projection(R, run, ckey="cluster"):
    """Per-shard ops per Redis CPU-second, x 3; with the spread (the fullest shard saturates
    first); the whole-box bound on 2 cores from the measured CPU per operation."""
    c, s = R[ckey][run]["window"], R["single"][run]["window"]
    caps = [r["ops_per_cpu_s"] for r in c["shards"] if r["ops_per_cpu_s"]]
    P = {"single_cap": s["shards"][0]["ops_per_cpu_s"], "shard_caps": caps,
         "mean_cap": sum(caps) / len(caps) if caps else None}
    P["x3"] = P["mean_cap"] * len(c["shards"]) if caps else None
    sp = R.get("spread")
    if sp and caps:  # the primary with the most of the 10,000 rooms saturates first
        P["with_spread"] = P["mean_cap"] / max(p["share"] for p in sp["primaries"])
    for key, w in (("single", s), ("cluster", c)):
        u = w.get("us_per_op")
        if u:
            total = u["primaries"] + u["replicas"] + u["nodes"] + u["client"]
            P[f"{key}_us_total"] = total
            P[f"{key}_box_bound"] = (R.get("nproc") or 2) * 1e6 / total
            P[f"{key}_node_us"] = u["nodes"]
    if P.get("x3") and P.get("cluster_node_us"):
        P["node_cores_at_x3"] = P["x3"] * P["cluster_node_us"] / 1e6
    return P


def _runs(R):
    """(run, "relay" or "state changes", Redis key, its results) in the order of the tables."""
    for run, label in (("relay", "relay"), ("churn", "state changes")):
        for key in KEYS:
            if R.get(key):
                yield run, label, key, R[key]


def _cmd_summary(cmds, n=5):
    top = sorted(cmds.items(), key=lambda kv: -kv[1]["calls"])[:n]
    return ", ".join(f"{k} {v['calls']:,} ({v['usec'] / v['calls']:.1f} us)" for k, v in top)


def render(a, R):
    """Appends section 7 (markdown lines) through a(line)."""
    E = R["env"]
    a(f"## {SECTION}. One Redis against a Redis Cluster of 3 primaries")
    a("")
    a("The same 2 nodes (release build, `--rate 1000000 --burst 1000000`) on one `redis-server` "
      "(`redis://`), "
      + ("on one with a replica (`--replicaof`: what replication costs without cluster mode), "
         if R.get("replica") else "")
      + ("on 3 primaries without replicas (cluster mode without replication), "
         if R.get("cluster0") else "") +
      f"then on a cluster of 3 primaries and 3 replicas (`redis-cluster://`, "
      f"`--cluster-node-timeout {E['SB_BENCH_CL_NODE_TIMEOUT_MS']}`), all on this machine's "
      f"{R.get('nproc') or 2} cores with the load generator. Relay: {E['SB_BENCH_CL_PAIRS']} "
      "pairs (rooms) across the 2 nodes, flat out, each signal one `SPUBLISH` to the recipient "
      f"node's channel in the room's bucket (so on the room's shard). State changes: "
      f"{E['SB_BENCH_CL_CHURN_PAIRS']} pairs cycling join, link, leave (section 3's cycle), each "
      "one `EVALSHA` on the room's shard. Measured over "
      f"{0.9 * E['SB_BENCH_CL_SECONDS']:.0f} s after {E['SB_BENCH_CL_WARMUP']:.0f} s of warm-up; "
      "Redis CPU is utime+stime of each redis-server process (/proc/PID/stat), operations per "
      "shard are the `SPUBLISH` or `EVALSHA` calls in its `INFO commandstats` over the same "
      f"window. Load average at the start / end of this section: {R['loadavg_start']} / "
      f"{R['loadavg_end']} (the machine is shared: figures per operation are steadier than "
      "rates).")
    a("")
    a(f"Each run {E.get('SB_BENCH_CL_REPEATS', 1)} times; shown is the run with the median "
      "primary CPU per operation, and that figure of every run.")
    a("")
    a("| run | Redis | ops/s at the client | Redis CPU (primaries + replicas) | node CPU (2 nodes) "
      "| client CPU | CPU per op: primaries / replicas / nodes / client | primaries' CPU per op, "
      "every run |")
    a("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run, label, key, T in _runs(R):
        res, w = T[run], T[run]["window"]
        if run == "relay":
            rate = f"{_f(res['msgs_per_s'])} msgs/s"
            label = "relay across 2 nodes"
        else:
            rate = (f"{_f(res['ops_per_s'])} ops/s ({_f(res['join_per_s'] + res['leave_per_s'])}"
                    f" join+leave/s, {_f(res['link_per_s'])} link/s)")
        u = w.get("us_per_op", {})
        rep = f" + {_f(w['replicas_cpu_pct'])}%" if T["replicas"][0] else ""
        a(f"| {label} | {T['label']} | {rate} | {_f(w['primaries_cpu_pct'])}%{rep} | "
          f"{_f(w['nodes_cpu_pct'])}% | {_f(w['client_cpu_pct'])}% | "
          f"{_f(u.get('primaries'), 1)} / {_f(u.get('replicas'), 1)} / "
          f"{_f(u.get('nodes'), 1)} / {_f(u.get('client'), 1)} us | "
          + (", ".join(_f(x, 1) for x in res.get("repeats", [])) or "n/a") + " us |")
    a("")
    errs = [f"{label} on {T['label']}: {T[run]['errors']} {T[run]['error_codes']}"
            for run, label, key, T in _runs(R) if T[run].get("errors")]
    if errs:
        a("Requests answered with an error in the shown runs: " + "; ".join(errs) + ".")
        a("")
    a("Per shard (a *message* is one `SPUBLISH`, a *script call* one `EVALSHA`; *Redis us* is "
      "commandstats' time inside the command, wall clock, so on a busy box it includes waiting "
      "for a core; *CPU us* is the process's whole CPU, event loop, network, replication and "
      "cluster bus included):")
    a("")
    a("| run | Redis | shard (primary port) | ops/s on it | share | primary CPU | CPU us per op "
      "| Redis us per op | ops per CPU-second | replica CPU | replica CPU us per op |")
    a("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run, label, key, T in _runs(R):
        unit = "message" if run == "relay" else "script call"
        for i, r in enumerate(T[run]["window"]["shards"]):
            rep = r.get("replica")
            a(f"| {label} ({unit}) | {T['label']} | "
              f"{i + 1} ({r['port']}) | {_f(r['ops_per_s'])} | {r['share'] * 100:.0f}% | "
              f"{_f(r['primary']['cpu_pct'])}% | {_f(r['cpu_us_per_op'], 1)} | "
              f"{_f(r['redis_us_per_op'], 1)} | {_f(r['ops_per_cpu_s'])} | "
              f"{_f(rep['cpu_pct']) + '%' if rep else '-'} | "
              f"{_f(r.get('replica_cpu_us_per_op'), 1) if rep else '-'} |")
    a("")
    idle_c = R.get("cluster", {}).get("idle_cpu_pct", {})
    idle_s = R.get("single", {}).get("idle_cpu_pct", {})
    if idle_c:
        a(f"Idle (the 2 nodes connected, no clients, 3 s): one Redis "
          f"{', '.join(_f(v, 1) + '%' for v in idle_s.values())}; the cluster's 6 processes "
          f"{', '.join(_f(v, 1) + '%' for v in idle_c.values())} of a core (cluster bus pings, "
          "replication pings, the nodes' heartbeats); included in the figures above, not "
          "subtracted.")
        a("")
    a("Commands per shard over the window (`INFO commandstats`: calls, Redis us per call; top 5 "
      "by calls; inside scripts the commands a script runs are counted too):")
    a("")
    a("| run | server | commands |")
    a("| --- | --- | --- |")
    for run, label, key, T in _runs(R):
        for i, r in enumerate(T[run]["window"]["shards"]):
            for role in ("primary", "replica"):
                if role in r:
                    a(f"| {label}, {T['label']} | {role} {i + 1} ({r[role]['port']}) | "
                      f"{_cmd_summary(r[role]['cmds']) or 'none'} |")
    a("")
    sp = R.get("spread")
    if sp:
        a(f"Spread of {sp['rooms']:,} rooms (named as the load generator names them, "
          "`<prefix>-<i>`) over the 3 primaries, from each room's slot (CRC16 of the room name, "
          f"its hash tag) and the slot map; then the first {sp['sample']:,} of them joined (2 "
          f"sockets each, {sp['joined']:,} joined, {sp['failed']} failed) and counted on each "
          "primary: room hashes `sb:{R}:members` (SCAN), rooms in its buckets (SCARD of every "
          "`sb:{T}:rooms`) and its DBSIZE growth.")
        a("")
        a("| primary (port) | slots | rooms of the 10,000 (by slot) | share | sample: by slot | "
          "sample: room hashes found | sample: rooms in its buckets | DBSIZE growth |")
        a("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for i, p in enumerate(sp["primaries"]):
            a(f"| {i + 1} ({p['port']}) | {p['slots']:,} | {p['rooms']:,} | "
              f"{p['share'] * 100:.1f}% | {p['sample_predicted']:,} | {p['sample_found']:,} | "
              f"{p['bucket_rooms']:,} | {p['dbsize_delta']:,} |")
        a("")
        a(f"Min/max ratio of rooms per primary: **{sp['min_max']:.3f}**. The joined sample is "
          f"{'exactly where the slots say' if sp['verified'] else '**not** where the slots say'}"
          " on every primary.")
        a("")
    for run, what in (("relay", "messages"), ("churn", "script calls")):
        if not (R.get("single") and R.get("cluster")):
            break
        R.setdefault("projection", {})[run] = projection(R, run)
        if R.get("cluster0"):
            R.setdefault("projection0", {})[run] = projection(R, run, "cluster0")
    P = R.get("projection", {})
    if P:
        a("Projection: the operations one shard serves per second of its own CPU, times 3 "
          "primaries (each on a core of its own), against one Redis; \"with the spread\" lets "
          "the primary with the most of the 10,000 rooms saturate first (mean per shard / its "
          "share). The whole-box bound is this "
          f"machine's {R.get('nproc') or 2} cores divided by the measured CPU per operation of "
          "every process (Redis, replicas, nodes, client).")
        a("")
        a("| workload | cluster | 1 Redis: ops per Redis CPU-second | cluster: per shard (each "
          "primary) | x 3 primaries | with the spread | whole box, 1 Redis / cluster | node "
          "cores needed at x 3 |")
        a("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for run, label in (("relay", "relay (messages/s)"),
                           ("churn", "state changes (script calls/s)")):
            for ckey, PP in (("cluster", P), ("cluster0", R.get("projection0", {}))):
                p = PP.get(run)
                if not p:
                    continue
                a(f"| {label} | {R[ckey]['label']} | {_f(p['single_cap'])} | "
                  f"{', '.join(_f(c) for c in p['shard_caps'])} | {_f(p['x3'])} | "
                  f"{_f(p.get('with_spread'))} | {_f(p.get('single_box_bound'))} / "
                  f"{_f(p.get('cluster_box_bound'))} | {_f(p.get('node_cores_at_x3'), 1)} |")
        a("")
        sat = [(R[k]["label"], R[k]["saturated"]) for k in KEYS
               if R.get(k, {}).get("saturated", {}).get("rps")]
        if sat:
            a("One primary flat out, for reference (`redis-benchmark -c 50 -P 16 SPUBLISH`, 200 B, "
              "no subscriber, on a channel of the primary's slots; its CPU over the run): "
              + "; ".join(f"{lab}: {_f(x['rps'])} messages/s, {_f(x['primary_cpu_pct'])}% of a "
                          f"core, {x['primary_us_per_op']:.2f} us per message"
                          + (f" (replica {x['replica_us_per_op']:.2f} us)"
                             if x.get("replica_us_per_op") is not None else "")
                          for lab, x in sat) + ".")
            a("")
        _limits(a, R, P)
    pf = [(k, R[k]["perf"]) for k in KEYS
          if R.get(k, {}).get("perf")]
    if pf:
        a(f"`perf record -F 999` of the busiest primary for {E['SB_BENCH_CL_PERF_SECONDS']:.0f} s "
          "of an extra run of each workload (self time, % of samples; this VM has no hardware "
          "counters, so perf samples on the cpu-clock timer and kernel time that runs with "
          "interrupts off lands on the next point they are on, e.g. `finish_task_switch`):")
        a("")
        a("| workload | Redis | primary | samples | by binary | cluster-mode functions | top "
          "user-space symbols | top kernel symbols |")
        a("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for run in ("relay", "churn"):
            for k, x in pf:
                if run not in x:
                    continue
                pr = x[run]["redis"]
                if "error" in pr:
                    a(f"| {run} | {R[k]['label']} | {x[run]['port']} | perf failed: "
                      f"`{pr['error'].strip()}` | | | | |")
                    continue
                if (_samples(pr["samples"]) or 0) < PERF_MIN_SAMPLES:
                    a(f"| {run} | {R[k]['label']} | {x[run]['port']} | {pr['samples']} | "
                      "too few samples to tell: the primary hardly ran (machine busy) | | | |")
                    continue
                a(f"| {'relay' if run == 'relay' else 'state changes'} | {R[k]['label']} | "
                  f"{x[run]['port']} | {pr['samples']} | "
                  + ", ".join(f"{d} {v:.0f}%" for d, v in pr["by_dso"])
                  + f" | {pr.get('cluster_pct', 0):.1f}% | "
                  + "; ".join(f"{t['symbol']} {t['pct']:.1f}%" for t in pr["top_user"]) + " | "
                  + "; ".join(f"{t['symbol']} {t['pct']:.1f}%" for t in pr["top_kernel"]) + " |")
        a("")


PERF_MIN_SAMPLES = 100


def _samples(txt):
    """perf's sample count ("312", "1K") as a number."""
    m = re.match(r"([\d.]+)([KM]?)$", str(txt or ""))
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6}[m.group(2)] if m else None


def _per_op(R, key, run):
    """(primary CPU us, replica CPU us, Redis us inside the command) per operation of one
    topology and workload, over all its shards."""
    w = R.get(key, {}).get(run, {}).get("window")
    if not w or not w["ops"]:
        return None
    u = w["us_per_op"]
    redis_us = sum(r["redis_us_per_op"] * r["ops"] for r in w["shards"] if r["ops"]) / w["ops"]
    return u["primaries"], u["replicas"], redis_us


def _limits(a, R, P):
    """What limits it, from the figures of this run."""
    rl, ch = P.get("relay", {}), P.get("churn", {})
    c_u = R["cluster"]["relay"]["window"].get("us_per_op", {})
    s_u = R["single"]["relay"]["window"].get("us_per_op", {})
    n = R.get("nproc") or 2
    a("**What limits it.**")
    a("")
    if rl and c_u and s_u:
        a(f"- *The machine's cores, not Redis.* Per relayed message this run spent "
          f"{_f(s_u['primaries'], 1)} us in one Redis ({_f(c_u['primaries'], 1)} us in the "
          f"cluster's primaries) against {_f(c_u['nodes'], 1)} us in the nodes and "
          f"{_f(c_u['client'], 1)} us in the client. On {n} cores the whole box cannot pass "
          f"about {_f(rl.get('single_box_bound'))} messages/s with one Redis and "
          f"{_f(rl.get('cluster_box_bound'))} with the cluster (and "
          f"{_f(ch.get('single_box_bound'))} / {_f(ch.get('cluster_box_bound'))} script "
          "calls/s), whatever the number of shards: 3 shards add processes, not cores, and "
          "each costs more per operation than one Redis (below).")
    if rl.get("node_cores_at_x3"):
        a(f"- *The nodes' CPU.* At the projected {_f(rl['x3'])} messages/s the nodes would need "
          f"about {_f(rl['node_cores_at_x3'], 1)} cores (at {_f(rl['cluster_node_us'], 1)} us "
          f"per message, both nodes together), and {_f(ch.get('node_cores_at_x3'), 1)} cores "
          f"for the projected {_f(ch.get('x3'))} script calls/s: the tier that runs out first "
          "is the nodes, which scale out behind the load balancer.")
    rows = []
    for run, what in (("relay", "message"), ("churn", "script call")):
        cells = []
        for key in KEYS:
            x = _per_op(R, key, run)
            if x:
                cells.append(f"{R[key]['label']} {x[0]:.1f} us (inside the command {x[2]:.1f} us"
                             + (f"; replica {x[1]:.1f} us" if R[key]["replicas"][0] else "")
                             + ")")
        rows.append(f"per {what}: " + ", ".join(cells))
    if rl.get("single_cap") and rl.get("mean_cap"):
        a(f"- *Cluster mode costs more per operation.* Primary CPU {'; '.join(rows)}. So one "
          f"shard serves {_f(rl['mean_cap'])} messages per CPU-second against "
          f"{_f(rl['single_cap'])} for one Redis ({rl['mean_cap'] / rl['single_cap']:.2f} x), "
          f"and {_f(ch.get('mean_cap'))} script calls against {_f(ch.get('single_cap'))} "
          f"({ch['mean_cap'] / ch['single_cap']:.2f} x): 3 primaries give "
          f"{rl['x3'] / rl['single_cap']:.1f} x and {ch['x3'] / ch['single_cap']:.1f} x one "
          "Redis, not 3 x.")
        s1, r1, z1, c1 = (_per_op(R, k, "churn") for k in KEYS)
        sm, rm, zm, cm = (_per_op(R, k, "relay") for k in KEYS)
        sat = {k: R[k].get("saturated", {}).get("primary_us_per_op") for k in KEYS if R.get(k)}
        if s1 and r1 and z1 and c1 and sm and rm and zm and cm:
            def pf(key, run, what):
                x = R[key].get("perf", {}).get(run, {}).get("redis", {})
                ok = (_samples(x.get("samples")) or 0) >= PERF_MIN_SAMPLES
                return x.get(what) if ok else None
            cz, rc = pf("cluster0", "churn", "cluster_pct"), pf("cluster", "relay", "cluster_pct")
            a(f"  Where it goes, from the four setups (primary CPU per operation): per script "
              f"call cluster mode alone adds {z1[0] - s1[0]:.1f} us (3 primaries without "
              f"replicas against one Redis), a replica adds {r1[0] - s1[0]:.1f} us to one Redis "
              f"and {c1[0] - z1[0]:.1f} us to a shard (the primary feeds each writing script's "
              "effects to its replica, which applies them as one `MULTI`/`EXEC`: the "
              "commandstats rows). Per message cluster mode alone adds "
              f"{zm[0] - sm[0]:.1f} us, a replica {rm[0] - sm[0]:.1f} us to one Redis (the "
              f"`SPUBLISH` goes down the replication stream) but {cm[0] - zm[0]:.1f} us to a "
              "shard: in cluster mode a `SPUBLISH` reaches the shard's replica as a message of "
              "its own on the cluster bus (`clusterSendMessage`, `clusterBuildMessageHdr`"
              + (f", cluster-mode functions {rc:.1f}% of the relay samples" if rc is not None
                 else "") + ")."
              + (f" Flat out the difference is plainest: one primary costs "
                 f"{sat['single']:.2f} us per `SPUBLISH` alone, {sat['cluster0']:.2f} us in a "
                 f"cluster without replicas, {sat['replica']:.2f} us with a replica and "
                 f"{sat['cluster']:.2f} us in a cluster with one: the cluster-bus copy to the "
                 "replica is what makes a shard's relay dearer, not the slot logic."
                 if all(sat.get(k) for k in KEYS) else "")
              + (f" For script calls the slot checks (`crc16`, `getNodeByQuery`) and the "
                 "per-slot key index that Redis 7 keeps in cluster mode are, by name, "
                 f"{cz:.1f}% of the busiest shard's samples without replicas, about "
                 f"{cz * z1[0] / 100:.1f} us of the {z1[0] - s1[0]:.1f} us cluster mode adds; "
                 "the rest is not one function in this profile." if cz is not None else ""))
    busy = [r["primary"]["cpu_pct"] for k in KEYS if R.get(k)
            for r in R[k]["relay"]["window"]["shards"]]
    if busy:
        a(f"- *Per-message figures at low load are pessimistic.* A primary relaying here is "
          f"{min(busy):.0f}-{max(busy):.0f}% busy and is woken for a few messages at a time, so "
          "most of its CPU is the kernel's (wake-ups, loopback TCP: the perf table): a "
          "saturated shard reads more commands per wake-up and passes more messages per "
          "CPU-second (the `redis-benchmark -P 16` line above is that ceiling, for `SPUBLISH` "
          "alone). Script calls are mostly the script's own work (the kernel is under 15% of "
          "their samples) and scale as measured.")
    a("- *Cross-slot fan-out.* None per operation: a signal is one `SPUBLISH` on the room's "
      "shard and a room's events are published by its script on the same shard, so the rooms' "
      "load divides by the spread above. What spans shards is per node, not per operation: a "
      "connection and a sharded subscriber per primary, the lease and `P:nodes` on one shard "
      "(the `set`/`sadd` rows), the heartbeats' `PEXPIRE` on each room's shard, and the admin's "
      "bucket reads on every primary.")
    sp = R.get("spread")
    if sp and rl.get("with_spread") and rl.get("x3"):
        a(f"- *Spread.* With rooms at a min/max ratio of {sp['min_max']:.3f}, the fullest primary "
          f"saturates first: {_f(rl['with_spread'])} instead of {_f(rl['x3'])} messages/s. The "
          f"{R['env']['SB_BENCH_CL_PAIRS']} rooms of the relay run spread less evenly (the share "
          "column), which is why the measured per-shard rates differ.")
    a("")
