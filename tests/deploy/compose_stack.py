"""docker-compose.yml running under a real engine, tested through its published ports.

Run by tests/deploy/compose.sh (`test`), inside the network namespace where its dockerd runs,
after `up`; not collected by the other suites (the name does not start with test_). Clients
reach the stack only through the load balancer's published port (127.0.0.1:8000) and the
admin's (127.0.0.1:9090); Redis is read directly at its container address (routable in this
namespace only) to compute the truth the admin's figures must equal.

00 podman-compose passes the LB's health check so that it still works (no engine needed)
01 the engine granted what the file asks (open files, read-only root, user, published ports)
02 sockets through the LB land on all three node containers; two clients on different nodes
   join one room, exchange offer/answer and bring a link up; figures equal the truth
03 SIGKILL of a node container: its peers on the other nodes get peer-left `expired`, the
   admin's figures equal the truth, and the node comes back healthy under the same id
04 the Redis container restarted with its data gone: the nodes re-assert, clients see
   nothing, figures right, signalling works
05 compose down: no container, network or new volume of the project is left
"""
import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import invariants  # noqa: E402
from client import Client  # noqa: E402

DOCKER = os.environ.get("SB_DOCKER", "/usr/bin/docker")
# A command line: "/usr/bin/docker-compose" (1.29, compose.sh) or "docker compose" (v2).
COMPOSE = shlex.split(os.environ.get("SB_COMPOSE", "/usr/bin/docker-compose"))
PROJECT = os.environ["COMPOSE_PROJECT_NAME"]
TOKEN = os.environ["SWITCHBOARD_ADMIN_TOKEN"]
LB_PORT = int(os.environ.get("SB_LB_PORT", "8000"))
ADMIN_PORT = int(os.environ.get("SB_ADMIN_PORT", "9090"))
WS = f"ws://127.0.0.1:{LB_PORT}/ws"
ADMIN = f"http://127.0.0.1:{ADMIN_PORT}"
NODES = {"node1", "node2", "node3"}
# deploy/cluster.env: presence TTL 15 s, reconcile every 5 s; a dead node's sockets are reaped
# within about 20 s, and with session resume on (default grace 15 s) removed 15 s later.
REAP_S = 45


# ---- the engine ---------------------------------------------------------------------------

def docker(*args, check=True, timeout=60):
    r = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr}"
    return r.stdout.strip()


# The files of the variant under test (compose.sh: the cluster variant adds its override).
FILES = os.environ.get("SB_COMPOSE_FILES", "docker-compose.yml").split(":")


def compose(*args, timeout=120):
    env_file = os.environ.get("SB_COMPOSE_ENV_FILE")
    cmd = [*COMPOSE, *(["--env-file", env_file] if env_file else []),
           *[x for f in FILES for x in ("-f", os.path.join(ROOT, f))], *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{shlex.join(cmd)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def container(service):
    """The id of the service's container (running or not)."""
    out = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                 "--filter", f"label=com.docker.compose.service={service}").split()
    assert len(out) == 1, f"{service}: containers {out}"
    return out[0]


def state(service):
    fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}"
    return docker("inspect", "-f", fmt, container(service))


def address(service):
    return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                  container(service))


def wait_for(cond, timeout, msg, step=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:  # a probe may fail while things settle
            last = e
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {msg} (last: {last!r})")


async def await_for(cond, timeout, msg, step=0.2):
    """wait_for for a coroutine's loop: the clients' readers keep running meanwhile."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:
            last = e
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {msg} (last: {last!r})")


# ---- the stack's state --------------------------------------------------------------------

def redis_client():
    return redis.Redis(host=address("redis"), port=6379, decode_responses=True,
                       socket_timeout=3)


def mesh():
    req = urllib.request.Request(ADMIN + "/admin/mesh-status",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.loads(r.read())


def figures(m):
    """The admin's figures under invariants.truth's names."""
    return {"rooms": m["rooms"], "members": m["active_users"], "links": m["p2p_links"],
            "linked": m["p2p_users"]}


def figures_equal_truth(expected=None):
    """True when the admin's figures equal the truth computed from Redis's sets (and
    `expected`, when given) and the invariants hold."""
    r = redis_client()
    t = invariants.truth(r)
    f = figures(mesh())
    if f != t or (expected is not None and t != expected):
        return False
    bad = invariants.check(r)
    assert not bad, "\n".join(bad)
    return True


async def connect_spread(n):
    """n clients through the LB; asserts that they landed on all three nodes."""
    clients = [await Client.connect(WS, open_timeout=10) for _ in range(n)]
    nodes = [c.node for c in clients]
    assert set(nodes) == NODES, f"clients landed on {nodes}"
    return clients


async def close_all(clients):
    for c in clients:
        if c.closed is None:
            await c.close()


async def ring(clients, room):
    """Every client joins room and links with the next one (a ring); returns the links."""
    for c in clients:
        await c.join(room)
    n = len(clients)
    links = [(clients[i], clients[(i + 1) % n]) for i in range(n)]
    for a, b in links:
        for x, y in ((a, b), (b, a)):
            ack = await x.request({"type": "link", "peer": y.id, "state": "up"}, timeout=5)
            assert ack["type"] == "link-ack", ack
    for a, b in links:
        await a.expect("link-state", timeout=5, peer=b.id, state="up")
        await b.expect("link-state", timeout=5, peer=a.id, state="up")
    return links


def restart_wait_healthy(service, timeout=60):
    wait_for(lambda: state(service) == "running healthy", timeout, f"{service} healthy")


@pytest.fixture(autouse=True)
def stack_healthy(request):
    """Every test of the stack starts from six healthy containers."""
    if "stack" not in request.node.name:
        return
    for s in ("redis", "node1", "node2", "node3", "admin", "lb"):
        restart_wait_healthy(s)


# ---- podman-compose's quoting (no engine needed) -----------------------------------------

PODMAN_COMPOSE = os.environ.get("SB_PODMAN_COMPOSE", "/usr/bin/podman-compose")
FAKE_PODMAN = """#!/usr/bin/python3
import json, sys
a = sys.argv
if "run" in a and any(x.endswith("_lb_1") for x in a if x.startswith("--name=")):
    json.dump(a[a.index("--healthcheck-command") + 1], open(sys.argv[0] + ".json", "w"))
print("0" * 64)
"""
FAKE_MONITOR = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(int(sys.argv[1]) if self.path == "/healthz" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", 8404), H).serve_forever()
"""


@pytest.mark.parametrize("monitor,healthy", [(200, True), (503, False)])
def test_00_lb_health_check_survives_podman_compose(tmp_path, monitor, healthy):
    """podman-compose 1.0.3 passes a health check to podman as one string that podman runs
    with /bin/sh -c; it mangled the quoting of the old ["CMD", "bash", "-c", ...] form. Here
    podman-compose writes the LB's `podman run` for a fake podman, and the health check it
    passes is run against a fake HAProxy monitor in an empty network namespace."""
    fake = tmp_path / "podman"
    fake.write_text(FAKE_PODMAN)
    fake.chmod(0o755)
    env = dict(os.environ, SWITCHBOARD_ADMIN_TOKEN="x" * 24)
    r = subprocess.run([PODMAN_COMPOSE, "--podman-path", str(fake), "-p", "pc",
                        "-f", os.path.join(ROOT, "docker-compose.yml"), "up", "-d"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert os.path.exists(str(fake) + ".json"), r.stdout + r.stderr
    with open(str(fake) + ".json") as f:
        check = json.load(f)
    script = (f"ip link set lo up; {shlex.quote(sys.executable)} -c {shlex.quote(FAKE_MONITOR)} "
              f"{monitor} & srv=$!; "
              "for i in $(seq 50); do bash -c 'exec 3<>/dev/tcp/127.0.0.1/8404' 2>/dev/null && break; sleep 0.1; done; "
              f"/bin/sh -c {shlex.quote(check)}; rc=$?; kill $srv; exit $rc")
    r = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True,
                       timeout=30)
    assert (r.returncode == 0) == healthy, f"{check!r}: rc {r.returncode} {r.stderr}"


# ---- scenarios ----------------------------------------------------------------------------

def test_01_stack_engine_grants_what_compose_asks():
    nofile = os.environ.get("SB_NOFILE", "1048576")
    for n in sorted(NODES):
        assert docker("exec", container(n), "sh", "-c", "ulimit -n") == nofile
        # read_only and the user from the Dockerfile: the container cannot write its root.
        r = subprocess.run([DOCKER, "exec", container(n), "touch", "/x"], capture_output=True)
        assert r.returncode != 0
        assert docker("exec", container(n), "id", "-u") == "10001"
    # Only the LB and the admin are published, the admin on loopback only.
    ports = docker("inspect", "-f", "{{json .HostConfig.PortBindings}}", container("admin"))
    assert json.loads(ports) == {"9090/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(ADMIN_PORT)}]}
    for s in ("redis", "node1", "node2", "node3"):
        assert docker("inspect", "-f", "{{json .HostConfig.PortBindings}}", container(s)) in ("{}", "null")
    # The LB's health check is the one compose declares, and it passes.
    hc = json.loads(docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}", container("lb")))
    assert hc[0] == "CMD-SHELL" and "/healthz" in hc[1]
    # The demo page through the LB; the nodes' private routes are not.
    with urllib.request.urlopen(f"http://127.0.0.1:{LB_PORT}/", timeout=3) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{LB_PORT}/metrics", timeout=3)
    assert e.value.code == 404


def test_02_stack_signal_and_link_across_node_containers():
    async def scenario():
        clients = await connect_spread(6)
        try:
            a = clients[0]
            b = next(c for c in clients if c.node != a.node)
            room = "compose-01"
            ja = await a.join(room)
            assert ja["peers"] == []
            jb = await b.join(room)
            assert [p["id"] for p in jb["peers"]] == [a.id]
            await a.expect("peer-joined", id=b.id)
            offer = {"kind": "offer", "sdp": "v=0 offer from a"}
            ack = await a.request({"type": "signal", "to": b.id, "data": offer})
            assert ack["type"] == "signal-ack", ack
            got = await b.expect("signal", **{"from": a.id})
            assert got["data"] == offer
            answer = {"kind": "answer", "sdp": "v=0 answer from b"}
            await b.send({"type": "signal", "to": a.id, "data": answer})
            got = await a.expect("signal", **{"from": b.id})
            assert got["data"] == answer
            for x, y in ((a, b), (b, a)):
                ack = await x.request({"type": "link", "peer": y.id, "state": "up"})
                assert ack["type"] == "link-ack", ack
            await a.expect("link-state", peer=b.id, state="up")
            await b.expect("link-state", peer=a.id, state="up")
            await await_for(lambda: figures_equal_truth(
                {"rooms": 1, "members": 2, "links": 1, "linked": 2}), 10, "figures")
            assert {n["id"] for n in mesh()["nodes"]} == NODES
        finally:
            await close_all(clients)
        await await_for(lambda: figures_equal_truth(
            {"rooms": 0, "members": 0, "links": 0, "linked": 0}), 10, "figures after close")

    asyncio.run(scenario())


def test_03_stack_sigkill_of_a_node_container():
    async def scenario():
        clients = await connect_spread(6)
        try:
            await ring(clients, "compose-02")
            victim = clients[0].node
            gone = [c for c in clients if c.node == victim]
            alive = [c for c in clients if c.node != victim]
            await await_for(lambda: figures_equal_truth(
                {"rooms": 1, "members": 6, "links": 6, "linked": 6}), 10, "figures before")
            t0 = time.monotonic()
            docker("kill", "-s", "KILL", container(victim))
            for c in alive:
                for g in gone:
                    # Session resume is on (default grace 15 s): the admin's reap turns the
                    # dead node's sockets away, and when nobody resumes them the grace ends
                    # with peer-left "disconnect" (docs/protocol.md), once.
                    m = await c.expect("peer-left", timeout=REAP_S, id=g.id)
                    assert m["reason"] == "disconnect", m
            told = time.monotonic() - t0
            after = state(victim)
            ids = [c.id for c in clients]
            dead = {g.id for g in gone}
            links = sum(1 for i in range(6)
                        if ids[i] not in dead and ids[(i + 1) % 6] not in dead)
            linked = sum(1 for i in range(6) if ids[i] not in dead and (
                ids[(i + 1) % 6] not in dead or ids[i - 1] not in dead))
            await await_for(lambda: figures_equal_truth(
                {"rooms": 1, "members": len(alive), "links": links, "linked": linked}),
                10, "figures after the kill")
            print(f"\npeers told peer-left disconnect {told:.1f} s after SIGKILL of {victim}"
                  f" (its container then: {after})")
        finally:
            await close_all(clients)

    asyncio.run(scenario())
    # The restart policy (unless-stopped) does not restart a killed container on its own in
    # every engine; start it as an operator would, under the same id.
    for n in sorted(NODES):
        if state(n).startswith("exited"):
            docker("start", container(n))
    for n in sorted(NODES):
        restart_wait_healthy(n, 60)
    wait_for(lambda: {x["id"] for x in mesh()["nodes"]} == NODES, 30, "three nodes in the admin")


def test_04_stack_redis_restarted_with_its_data_gone():
    async def scenario():
        clients = await connect_spread(6)
        try:
            links = await ring(clients, "compose-03")
            before = {"rooms": 1, "members": 6, "links": len(links), "linked": 6}
            await await_for(lambda: figures_equal_truth(before), 10, "figures before")
            r = redis_client()
            instance, run_id = r.get("sb:instance"), r.info("server")["run_id"]
            assert instance
            docker("kill", "-s", "KILL", container("redis"))
            docker("start", container("redis"))

            def reasserted():
                r2 = redis_client()
                return (r2.info("server")["run_id"] != run_id
                        and r2.get("sb:instance") not in (None, instance)
                        and figures_equal_truth(before))
            await await_for(reasserted, 30, "the nodes to re-assert into the new Redis")
            # Clients saw nothing: no peer-left, no close.
            for c in clients:
                await c.none_of("peer-left", wait=0.1)
                assert c.closed is None
            # And signalling across nodes works as before.
            a = clients[0]
            b = next(c for c in clients if c.node != a.node)
            ack = await a.request({"type": "signal", "to": b.id, "data": {"n": 3}}, timeout=5)
            assert ack["type"] == "signal-ack", ack
            got = await b.expect("signal", timeout=5, **{"from": a.id})
            assert got["data"] == {"n": 3}
        finally:
            await close_all(clients)

    asyncio.run(scenario())


def test_05_stack_compose_down_leaves_nothing():
    down_leaves_nothing(6)


def down_leaves_nothing(containers):
    """The stack has that many containers; after compose down none, and no network or volume
    (also used by compose_cluster_stack.py)."""
    label = f"label=com.docker.compose.project={PROJECT}"
    ids = docker("ps", "-aq", "--filter", label).split()
    assert len(ids) == containers
    # docker-compose.yml declares no volume, and no container of the stack mounts one (not
    # even the anonymous volume the redis image declares for /data: a tmpfs takes its place).
    mounts = docker("inspect", "-f", '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} '
                    '{{end}}{{end}}', *ids).split()
    assert mounts == [], f"volumes mounted by the stack: {mounts}"
    compose("down", "--timeout", "20")
    assert docker("ps", "-aq", "--filter", label) == ""
    assert docker("network", "ls", "-q", "--filter", label) == ""
    assert docker("volume", "ls", "-q", "--filter", label) == ""
    for i in ids:
        assert docker("inspect", i, check=False) in ("", "[]"), f"container {i} still exists"
    before = os.environ.get("SB_COMPOSE_VOLUMES_BEFORE")
    if before:  # compose.sh's own engine: nothing else creates volumes there
        with open(before) as f:
            assert set(docker("volume", "ls", "-q").split()) - set(f.read().split()) == set()
    for port in (LB_PORT, ADMIN_PORT):
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
