"""The admin under faults of Redis and of what Redis holds (docs/admin.md): a connection that
drops mid-walk, index entries and rooms that no script wrote, a lost shard, a corrupt bucket,
and the grace sweep's pace. Real redis-server (or Redis Cluster), real admin.

01 the connection drops while two lease GETs are in flight: no use of a freed error text
   (ASan build), the pass fails "unavailable" and the next one reaps both nodes
02 a dead node's socket index holds an entry whose room is invalid: it is dropped and logged,
   the other sockets reaped, mesh-status, /metrics and POST /admin/reconcile answer 200
02b a room whose members key has the wrong type: the pass counts it (rooms_failed), logs it,
   and goes on, so a drifted bucket is still repaired by stats_check
03 (cluster) the shard of P:admin:totals lost: the _total counters are left out of /metrics
   (and totals is null in mesh-status), never 0
04 (single Redis) the one bucket unreadable: mesh-status and /metrics answer 503, never zeros
05 70 away entries 10 minutes ahead: the grace sweep does not poll (ZRANGE calls counted)
06 a deadline passed while the sweep ran: the sweep runs again soon (no lost timer)
07 (cluster) P:nodes unreadable: no node-up event for nodes whose lease is unknown, nor when
   the shard returns
08 an encoded NUL in the query: what docs/admin.md says happens"""
import os
import re
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import Admin, http_get, parse_metrics, wait_for  # noqa: E402
import keyspace  # noqa: E402

SANITIZER = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")
FAST_ADMIN = ["--reconcile-interval-ms", "300"]


class CutProxy:
    """A TCP proxy to a Redis server that closes both sides of a connection when a request
    matching `pattern` (a bytes regex over the RESP the client sent) passes through, `cuts`
    times; after that it forwards everything. The matching request is not forwarded, so every
    command in flight on that connection fails with the drop."""

    def __init__(self, upstream_port, pattern, cuts=1):
        self.upstream_port = upstream_port
        self.pattern = re.compile(pattern)
        self.cuts_left = cuts
        self.cut = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.conns += [c, u]
            threading.Thread(target=self._up, args=(c, u), daemon=True).start()
            threading.Thread(target=self._down, args=(u, c), daemon=True).start()

    def _up(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    hit = self.cuts_left > 0 and self.pattern.search(data)
                    if hit:
                        self.cuts_left -= 1
                        self.cut += 1
                if hit:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    def _down(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    @staticmethod
    def _close(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.sock.close()
        self._close(*self.conns)
        for s in self.conns:
            s.close()


def authed(admin, path, method="GET"):
    status, body, _ = http_get(admin.http + path, method=method,
                               data=b"" if method == "POST" else None,
                               headers={"Authorization": f"Bearer {admin.token}"}, timeout=5)
    return status, body


@pytest.mark.single_redis("a proxy in front of one server; the cluster client is the same code")
def test_01_connection_drop_with_lease_gets_in_flight(cluster, redis_server):
    r = redis_server.client()
    r.sadd("sb:nodes", "na", "nb")  # two ids, no lease: two GETs in one batch
    # *2 $3 GET $N sb:node:<id>: the lease GETs of the node walk (not P:nodes, not buckets)
    proxy = CutProxy(redis_server.port, rb"\$3\r\nGET\r\n\$\d+\r\nsb:node:", cuts=1)
    try:
        a = Admin(proxy.url, cluster.tmpdir, args=FAST_ADMIN, wait=False)
        cluster.admins.append(a)
        wait_for(lambda: proxy.cut == 1, 10, msg="the connection cut on a lease GET")
        # the next passes (300 ms apart) read the leases again and reap both nodes
        wait_for(lambda: r.scard("sb:nodes") == 0, 10, msg="both nodes reaped after the drop")
        log = a.proc.log()
        assert not SANITIZER.search(log), log[-4000:]
        assert a.proc.alive(), log[-4000:]
        # the failure is reported as a literal, not a request's (freed) text
        assert "reconcile pass failed: unavailable\n" in log, log[-4000:]
        assert authed(a, "/admin/mesh-status")[0] == 200
    finally:
        proxy.stop()
