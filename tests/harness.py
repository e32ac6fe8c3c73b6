"""Test harness: real redis-server, real node and admin processes, deadlines instead of sleeps.

Everything started here is recorded and stopped by pid (never by name), also when a test fails.
Binaries come from $SWITCHBOARD_BUILD (default build/). Only loopback addresses are used.
"""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import urllib.error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SWITCHBOARD_BUILD", os.path.join(ROOT, "build"))
# Which WebSocket layer the nodes serve plain sockets with (--websocket; SWITCHBOARD_WEBSOCKET
# is also what the node itself reads): where the two differ on purpose, tests ask this.
WS_NATIVE = os.environ.get("SWITCHBOARD_WEBSOCKET", "native") == "native"


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout=5.0, interval=0.02, msg="condition"):
    """Poll cond() until it returns a truthy value; return it, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:  # a probe may fail while a process starts
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {msg} (last: {last!r})")
        time.sleep(interval)


def http_get(url, headers=None, timeout=2.0, method="GET", data=None):
    """(status, body bytes, headers) of one HTTP request; never raises for an HTTP status."""
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class Proc:
    """A child process we own; stopped by pid."""

    def __init__(self, argv, env=None, log=None):
        self.argv = argv
        self.log_path = log
        self.logf = open(log, "ab") if log else subprocess.DEVNULL
        self.p = subprocess.Popen(argv, env=env, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.p.pid, sig)

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after timeout; returns the exit status."""
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode

    def kill(self):
        if self.alive():
            self.p.kill()
            self.p.wait()

    def log(self):
        if not self.log_path:
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class RedisServer:
    """A private redis-server on a free loopback port in a temp directory."""
    cluster = False  # see tests/integration/conftest.py, ClusterRedisServer

    def __init__(self, tmpdir=None, port=None, extra=()):
        self.dir = tmpdir or tempfile.mkdtemp(prefix="sb-redis-")
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self):
        """(Re)start on the same port, empty (no persistence)."""
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--maxmemory-policy", "noeviction", "--loglevel", "warning"] + self.extra
        self.proc = Proc(argv, log=os.path.join(self.dir, "redis.log"))
        wait_for(self.ping, 10, msg=f"redis on port {self.port}")

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                # a server with requirepass answers -NOAUTH: up all the same
                return s.recv(16)[:1] in (b"+", b"-")
        except OSError:
            return False

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def kill(self):
        self.proc.kill()

    def stop(self):
        if self.proc:
            self.proc.stop()


def node_binary():
    return os.path.join(BUILD, "node", "switchboard-node")


def admin_binary():
    return os.path.join(BUILD, "admin", "switchboard-admin")


class Node:
    """A switchboard-node on a free loopback port."""

    def __init__(self, redis_url, tmpdir, name=None, args=(), env=None, port=None, wait=True):
        self.port = port or free_port()
        self.name = name or f"n{self.port}"
        self.tmpdir = tmpdir
        self.redis_url = redis_url
        self.args = list(args)
        self.env = env
        self.proc = None
        self.start(wait)

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait=True):
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        if self.env:
            env.update(self.env)
        argv = [node_binary(), "--listen", f"127.0.0.1:{self.port}", "--redis", self.redis_url,
                "--id", self.name, "--log-level", "debug"] + self.args
        self.proc = Proc(argv, env=env, log=os.path.join(self.tmpdir, f"node-{self.name}.log"))
        if wait:
            self.wait_ready()

    def ready(self):
        return http_get(self.http + "/readyz", timeout=0.5)[0] == 200

    def wait_ready(self, timeout=10):
        wait_for(lambda: (self.ready() or (not self.proc.alive() and
                 (_ for _ in ()).throw(AssertionError("node exited: " + self.proc.log()[-2000:])))),
                 timeout, msg=f"node {self.name} ready")

    def metrics(self):
        status, body, _ = http_get(self.http + "/metrics")
        assert status == 200
        return parse_metrics(body.decode())


def parse_metrics(text):
    """{'name{labels}': float} from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        out[key] = float(val)
    return out


class Admin:
    """A switchboard-admin on a free loopback port, with a random token."""

    def __init__(self, redis_url, tmpdir, args=(), env=None, port=None, token=None, wait=True):
        self.port = port or free_port()
        self.tmpdir = tmpdir
        self.redis_url = redis_url
        self.args = list(args)
        self.env = env
        self.token = token or os.urandom(16).hex()
        self.proc = None
        self.start(wait)

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait=True):
        env = dict(os.environ)
        env["SWITCHBOARD_ADMIN_TOKEN"] = self.token
        if self.env:
            env.update(self.env)
        argv = [admin_binary(), "--listen", f"127.0.0.1:{self.port}", "--redis", self.redis_url,
                "--log-level", "debug"] + self.args
        self.proc = Proc(argv, env=env, log=os.path.join(self.tmpdir, f"admin-{self.port}.log"))
        if wait:
            wait_for(lambda: http_get(self.http + "/readyz", timeout=0.5)[0] == 200, 10,
                     msg="admin ready")

    def get(self, path, token=True):
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        status, body, _ = http_get(self.http + path, headers=headers)
        return status, (json.loads(body) if body and body[:1] in (b"{", b"[") else body)

    def post(self, path, timeout=2.0):
        status, body, _ = http_get(self.http + path, method="POST", data=b"",
                                   headers={"Authorization": f"Bearer {self.token}"},
                                   timeout=timeout)
        return status, (json.loads(body) if body and body[:1] in (b"{", b"[") else body)

    def mesh(self):
        status, body = self.get("/admin/mesh-status")
        assert status == 200, body
        return body


class ReplyDelayProxy:
    """A TCP proxy to a Redis server that holds back the server's replies by `delay` seconds
    on every connection except pub/sub ones (those that sent SUBSCRIBE): a node behind it gets
    its script replies late while its pub/sub events arrive on time, the order a loaded network
    can produce. Threads; stopped with stop()."""

    def __init__(self, upstream_port, delay, pace=None, pace_requests=False):
        """pace: (n, seconds): while self.pacing is true, replies are forwarded n bytes at a time
        with that pause between pieces (a Redis that answers, only slowly); with pace_requests
        the requests are, instead (a Redis slow to run what it is sent: everything queues before
        it runs)."""
        import threading
        self.upstream_port = upstream_port
        self.delay = delay
        self.pace = pace
        self.pace_requests = pace_requests
        self.pacing = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = False
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.conns += [c, u]
            state = {"pubsub": False}
            self._threading.Thread(target=self._up, args=(c, u, state), daemon=True).start()
            self._threading.Thread(target=self._down, args=(u, c, state), daemon=True).start()

    def _up(self, src, dst, state):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if b"SUBSCRIBE" in data.upper():
                    state["pubsub"] = True
                while self.pace_requests and self.pacing and not state["pubsub"] and data:
                    dst.sendall(data[:self.pace[0]])
                    data = data[self.pace[0]:]
                    time.sleep(self.pace[1])
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    def _down(self, src, dst, state):
        import queue
        q = queue.Queue()

        def sender():
            while True:
                item = q.get()
                if item is None:
                    break
                due, data = item
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                try:
                    while (self.pace and self.pacing and not self.pace_requests and
                           not state["pubsub"] and data):
                        dst.sendall(data[:self.pace[0]])
                        data = data[self.pace[0]:]
                        time.sleep(self.pace[1])
                    dst.sendall(data)
                except OSError:
                    break
            self._close(src, dst)
        self._threading.Thread(target=sender, daemon=True).start()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                q.put((time.monotonic() + (0 if state["pubsub"] else self.delay), data))
        except OSError:
            pass
        q.put(None)

    @staticmethod
    def _close(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        self.sock.close()
        self._close(*self.conns)
        for s in self.conns:
            s.close()
