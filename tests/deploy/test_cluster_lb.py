"""The native cluster behind HAProxy, end to end: deploy/cluster.sh up, clients ONLY through
the load balancer's port, then deploy/cluster.sh down.

01 clients spread over the three nodes (leastconn), and two of them on different nodes join
   one room and signal each other across nodes (protocol: docs/protocol.md)
02 the LB forwards /ws, the demo page (/, /index.html, /switchboard.js, /demo.js, /demo.css)
   and the PeerJS routes (/peerjs and below: GET, OPTIONS preflights) only; the admin sees the
   three nodes
03 a node that stops is taken out of rotation: new clients land on the other two
04 down stops exactly the recorded processes and frees the ports

Skipped only while the binaries are not built. Every process is started by cluster.sh and
stopped by pid (cluster.sh down, then a check here, then SIGKILL by pid as a last resort).
"""
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "deploy", "cluster.sh")
BUILD = os.environ.get("SWITCHBOARD_BUILD", os.path.join(ROOT, "build"))
NODE_BIN = os.environ.get("SB_NODE_BIN", os.path.join(BUILD, "node", "switchboard-node"))
ADMIN_BIN = os.environ.get("SB_ADMIN_BIN", os.path.join(BUILD, "admin", "switchboard-admin"))
NODE_IDS = {"node1", "node2", "node3"}
SUBPROTOCOL = "switchboard.v1"


def _missing_binaries():
    return [b for b in (NODE_BIN, ADMIN_BIN) if not os.access(b, os.X_OK)]


pytestmark = pytest.mark.skipif(
    bool(_missing_binaries()),
    reason="switchboard binaries not built yet: " + ", ".join(_missing_binaries()))

websockets = pytest.importorskip("websockets")


# ---- helpers ------------------------------------------------------------------------------

def proc_stamp(pid):
    """(state, starttime) of pid from /proc, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def running(pid, start):
    """True while pid is the process cluster.sh recorded (same start time, not a zombie)."""
    st = proc_stamp(pid)
    return st is not None and st[0] != "Z" and st[1] == start


def http_status(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(cond, timeout, msg):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:  # a probe may fail while things settle
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {msg} (last: {last!r})")


def listening(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    def __init__(self, state):
        self.state = state
        self.env = {k: v for k, v in os.environ.items()
                    if not (k.startswith("SB_") and k.endswith("_PORT"))
                    and k not in ("SWITCHBOARD_ADMIN_TOKEN", "SB_REDIS_MODE")}
        self.env.update(SB_CLUSTER_DIR=state, SB_PORTS="auto",
                        SB_NODE_BIN=NODE_BIN, SB_ADMIN_BIN=ADMIN_BIN)
        self.ports = {}
        self.pids = {}
        self.token = None

    def run(self, cmd, timeout=120):
        return subprocess.run([CLUSTER, cmd], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def up(self):
        r = self.run("up")
        assert r.returncode == 0, f"cluster.sh up failed:\n{r.stdout}\n{r.stderr}\n{self.logs()}"
        with open(os.path.join(self.state, "ports.env")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                self.ports[k] = int(v)
        for name in os.listdir(os.path.join(self.state, "pids")):
            with open(os.path.join(self.state, "pids", name)) as f:
                pid, start = f.read().split()[:2]
            self.pids[name] = (int(pid), start)
        with open(os.path.join(self.state, "admin.token")) as f:
            self.token = f.read().strip()
        assert self.token and self.token in r.stdout, "up must print the admin token"
        return r

    def logs(self):
        out = []
        logdir = os.path.join(self.state, "logs")
        for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
            with open(os.path.join(logdir, name), errors="replace") as f:
                out.append(f"--- {name} ---\n" + f.read()[-3000:])
        return "\n".join(out)

    def kill_leftovers(self):
        """Last resort after a failed down: SIGKILL, by pid, only what we recorded."""
        for pid, start in self.pids.values():
            if running(pid, start):
                os.kill(pid, signal.SIGKILL)

    @property
    def lb(self):
        return self.ports["SB_LB_PORT"]

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.lb}/ws"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("cluster")))
    c.up()
    try:
        yield c
    finally:
        c.run("down", timeout=60)
        c.kill_leftovers()


async def recv_type(ws, wanted, timeout=5.0):
    """The next message of type wanted (others skipped); fails on an error message."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {wanted!r} within {timeout}s")
        msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        if msg.get("type") == wanted:
            return msg
        assert msg.get("type") != "error", f"unexpected error while waiting for {wanted}: {msg}"


async def connect(url):
    ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL], open_timeout=5,
                                  close_timeout=2)
    welcome = await recv_type(ws, "welcome")
    return ws, welcome


# ---- scenarios ----------------------------------------------------------------------------

def test_01_clients_spread_and_signal_across_nodes(cluster):
    async def scenario():
        clients = []
        try:
            for _ in range(6):
                clients.append(await connect(cluster.ws_url))
            nodes = [w["node"] for _, w in clients]
            # leastconn over three ready nodes: six concurrent sockets take every node.
            assert set(nodes) == NODE_IDS, f"clients landed on {nodes}"

            (a, wa) = clients[0]
            (b, wb) = next(c for c in clients[1:] if c[1]["node"] != wa["node"])
            room = f"deploy-{os.getpid()}"
            await a.send(json.dumps({"type": "join", "room": room, "rid": 1}))
            ja = await recv_type(a, "joined")
            assert ja["room"] == room and ja["id"] == wa["id"] and ja["peers"] == []
            await b.send(json.dumps({"type": "join", "room": room, "rid": 2}))
            jb = await recv_type(b, "joined")
            assert [p["id"] for p in jb["peers"]] == [wa["id"]]
            pj = await recv_type(a, "peer-joined")
            assert pj["id"] == wb["id"]

            offer = {"sdp": "v=0 offer from a", "kind": "offer"}
            await a.send(json.dumps({"type": "signal", "to": wb["id"], "data": offer,
                                     "rid": "s1"}))
            ack = await recv_type(a, "signal-ack")
            assert ack.get("rid") == "s1"
            got = await recv_type(b, "signal")
            assert got["from"] == wa["id"] and got["data"] == offer

            answer = {"sdp": "v=0 answer from b", "kind": "answer"}
            await b.send(json.dumps({"type": "signal", "to": wa["id"], "data": answer}))
            got = await recv_type(a, "signal")
            assert got["from"] == wb["id"] and got["data"] == answer
        finally:
            for ws, _ in clients:
                await ws.close()

    asyncio.run(scenario())


def test_02_lb_forwards_only_ws_demo_peerjs_and_admin_sees_nodes(cluster):
    base = f"http://127.0.0.1:{cluster.lb}"
    for page in ("/", "/index.html", "/switchboard.js", "/demo.js", "/demo.css"):
        assert http_status(base + page)[0] == 200, page
    for private in ("/metrics", "/readyz", "/livez", "/admin/", "/admin/mesh-status", "/ws/x",
                    "/index.htm"):
        assert http_status(base + private)[0] in (403, 404), private
    assert http_status(base + "/", method="POST")[0] in (403, 404, 405)
    # PeerJS (docs/peerjs.md): /peerjs and below reach the nodes, GET and the CORS preflight.
    status, body = http_status(base + "/peerjs")
    assert status == 200 and json.loads(body)["name"] == "PeerJS Server", (status, body)
    status, body = http_status(base + "/peerjs/peerjs/id")
    assert status == 200 and re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", body), (status, body)
    status, _ = http_status(base + "/peerjs/peerjs/id", method="OPTIONS",
                            headers={"Origin": "http://app.test", "Access-Control-Request-Method": "GET"})
    assert status == 204, status
    assert http_status(base + "/peerjs/peerjs/id", method="POST")[0] in (403, 404, 405)
    assert http_status(base + "/peerjsx")[0] == 404

    admin = f"http://127.0.0.1:{cluster.ports['SB_ADMIN_PORT']}"
    assert http_status(admin + "/admin/mesh-status")[0] == 401
    status, body = http_status(admin + "/admin/mesh-status",
                               headers={"Authorization": f"Bearer {cluster.token}"})
    assert status == 200, body
    assert {n["id"] for n in json.loads(body)["nodes"]} == NODE_IDS


def test_03_drained_node_sends_clients_elsewhere_and_leaves_no_stale_link(cluster):
    """Linked clients spread over the three nodes; node1 is drained (SIGTERM): its clients are
    closed with 1012 (session resume is on by default), resume through the load balancer on
    node2 and node3 with the same id, their peers see peer-away then peer-back and never
    peer-left, and every link stays counted throughout (none is stale, none lost)."""
    admin = f"http://127.0.0.1:{cluster.ports['SB_ADMIN_PORT']}"
    auth = {"Authorization": f"Bearer {cluster.token}"}

    def mesh():
        status, body = http_status(admin + "/admin/mesh-status", headers=auth)
        assert status == 200, body
        return json.loads(body)

    async def scenario():
        room = f"drain-{os.getpid()}"
        clients, tokens = [], {}
        for _ in range(9):
            clients.append(await connect(cluster.ws_url))
        assert {w["node"] for _, w in clients} == NODE_IDS
        for ws, w in clients:
            await ws.send(json.dumps({"type": "join", "room": room, "rid": "j"}))
            tokens[w["id"]] = (await recv_type(ws, "joined"))["resume"]
        # a ring of links, every hop on its own pair of sockets
        n = len(clients)
        for i in range(n):
            (a, wa), (b, wb) = clients[i], clients[(i + 1) % n]
            await a.send(json.dumps({"type": "link", "peer": wb["id"], "state": "up"}))
            await b.send(json.dumps({"type": "link", "peer": wa["id"], "state": "up"}))
        wait_for(lambda: mesh()["p2p_links"] == n, 5, f"{n} links")
        on1 = [(ws, w) for ws, w in clients if w["node"] == "node1"]
        rest = [(ws, w) for ws, w in clients if w["node"] != "node1"]
        assert on1 and rest
        pid, start = cluster.pids["node1"]
        os.kill(pid, signal.SIGTERM)
        for ws, _ in on1:
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1012
        # each resumes at once through the load balancer, on another node, as itself
        back = []
        for _, w in on1:
            # Until HAProxy's check marks node1 down (up to 2 s), a new connection may still
            # be sent there and get the draining node's 503: a client retries (switchboard.js
            # does, with backoff), as here.
            for attempt in range(30):
                try:
                    ws, welcome = await connect(cluster.ws_url)
                    break
                except (ValueError, OSError, websockets.exceptions.InvalidHandshake):
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("no connection through the load balancer for 3 s")
            assert welcome["node"] in NODE_IDS - {"node1"}, welcome
            await ws.send(json.dumps({"type": "resume", "id": w["id"], "room": room,
                                      "resume": tokens[w["id"]], "rid": "r"}))
            r = await recv_type(ws, "resumed")
            assert r["id"] == w["id"] and r["room"] == room and len(r["links"]) == 2, r
            back.append((ws, welcome))
        gone = {w["id"] for _, w in on1}
        for ws, _ in rest:  # every away has its back, and nobody left
            backs, deadline = set(), time.monotonic() + 10
            while backs != gone:
                m = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
                assert m.get("type") not in ("peer-left", "error"), m
                if m.get("type") == "peer-back":
                    backs.add(m["id"])
        wait_for(lambda: not running(pid, start), 15, "node1 to exit after its drain")
        m = mesh()
        assert (m["p2p_links"], m["active_users"], m.get("away_sockets")) == (n, n, 0), m
        for ws, _ in back + rest:
            await ws.close()

    asyncio.run(scenario())

    async def landings():
        clients = []
        try:
            for _ in range(6):
                clients.append(await connect(cluster.ws_url))
            return {w["node"] for _, w in clients}
        finally:
            for ws, _ in clients:
                await ws.close()

    # The health check (inter 1s, fall 2) has taken node1 out: new clients spread over the rest.
    def only_live_nodes():
        try:
            return asyncio.run(landings()) == NODE_IDS - {"node1"}
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
            return False
    wait_for(only_live_nodes, 10, "new clients to land on node2 and node3 only")


def test_04_down_stops_every_recorded_pid(cluster):
    assert set(cluster.pids) == {"redis", "node1", "node2", "node3", "admin", "lb"}
    r = cluster.run("down", timeout=60)
    assert r.returncode == 0, f"cluster.sh down failed:\n{r.stdout}\n{r.stderr}"
    left = {n: p for n, (p, s) in cluster.pids.items() if running(p, s)}
    assert not left, f"still running after down: {left}"
    assert not os.listdir(os.path.join(cluster.state, "pids"))
    for var in ("SB_LB_PORT", "SB_ADMIN_PORT", "SB_REDIS_PORT", "SB_NODE2_PORT"):
        assert not listening(cluster.ports[var]), f"{var} {cluster.ports[var]} still open"
    # A second down is harmless.
    assert cluster.run("down", timeout=30).returncode == 0
