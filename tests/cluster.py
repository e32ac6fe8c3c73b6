"""A real Redis Cluster for tests: redis-server --cluster-enabled yes processes on 127.0.0.1 free
ports in a temp dir (3 primaries + 3 replicas by default), joined with redis-cli --cluster create,
waited for until every node says cluster_state:ok, stopped by pid.

Importable by tests/integration/conftest.py (the harness puts tests/ on sys.path):

    from cluster import RedisCluster
    rc = RedisCluster(tmpdir)          # started and ok
    rc.url                             # redis-cluster://127.0.0.1:P1,127.0.0.1:P2
    rc.owner(slot) -> port             # the primary serving slot, as the cluster says
    rc.move_slot(slot, to_port)        # MIGRATING/IMPORTING + MIGRATE + SETSLOT NODE
    rc.kill(port)                      # kill -9
    rc.stop()
"""
import os
import subprocess
import time

from harness import Proc, free_port, wait_for


def _free_ports(n):
    """n distinct free loopback ports."""
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


class RedisCluster:
    def __init__(self, tmpdir, primaries=3, replicas_per_primary=1, node_timeout_ms=1000,
                 full_coverage=False, password=None, extra=()):
        self.dir = tmpdir
        self.n = primaries * (1 + replicas_per_primary)
        ports = _free_ports(2 * self.n)
        # Why an explicit cluster port: the default (port + 10000) may be above 65535 or taken.
        self.ports, self.bus_ports = ports[:self.n], ports[self.n:]
        self.procs = {}
        self.node_timeout_ms = node_timeout_ms
        self.replicas_per_primary = replicas_per_primary
        self.full_coverage = full_coverage
        self.password = password
        self.extra = list(extra)
        if password:
            self.extra += ["--requirepass", password, "--masterauth", password]
        try:
            for port, bus in zip(self.ports, self.bus_ports):
                self._start(port, bus)
            for port in self.ports:
                wait_for(lambda p=port: self.ping(p), 10, msg=f"redis {port}")
            out = subprocess.run(
                ["redis-cli", "--no-auth-warning"] + (["-a", password] if password else []) +
                ["--cluster", "create"] + [f"127.0.0.1:{p}" for p in self.ports] +
                ["--cluster-replicas", str(replicas_per_primary), "--cluster-yes"],
                capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def _start(self, port, bus):
        d = os.path.join(self.dir, f"redis-{port}")
        os.makedirs(d, exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", os.path.join(d, "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
                "--save", "", "--appendonly", "no", "--dir", d,
                # A replica syncs at once instead of waiting 5 s for others to join.
                "--repl-diskless-sync-delay", "0",
                # CLUSTER SLOTS lists a replica only once its replication offset is not 0, which
                # takes the primary's first ping to its replicas (every 10 s by default).
                "--repl-ping-replica-period", "1",
                "--maxmemory-policy", "noeviction", "--loglevel", "warning"] + self.extra
        self.procs[port] = Proc(argv, log=os.path.join(d, "redis.log"))

    @property
    def url(self):
        return "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def client(self, port):
        import redis
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True,
                           socket_timeout=5, password=self.password)

    def ping(self, port):
        try:
            return self.client(port).ping()
        except Exception:
            return False

    def alive(self):
        return [p for p in self.ports if self.procs[p].alive()]

    def info(self, port, section):
        return self.client(port).info(section)

    def wait_ok(self, timeout=30, replicas=None):
        """Until every live node says cluster_state:ok and sees every primary with its
        replicas (replicas per primary; default: as created), each replica in sync."""
        want = self.replicas_per_primary if replicas is None else replicas

        def ok():
            for p in self.alive():
                info = self.client(p).execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                if any(len(s[3]) < want for s in self.slots(p)):
                    return False
                repl = self.info(p, "replication")
                if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                    return False
            return True
        wait_for(ok, timeout, interval=0.1, msg="cluster_state:ok on every node")

    def slots(self, port=None):
        """[(start, end, primary_port, [replica ports])] as the node at port sees it."""
        port = port or self.alive()[0]
        out = []
        for r in self.client(port).execute_command("CLUSTER", "SLOTS"):
            out.append((r[0], r[1], r[2][1], [x[1] for x in r[3:]]))
        return out

    def primaries(self):
        return sorted({s[2] for s in self.slots()})

    def owner(self, slot, port=None):
        for lo, hi, p, _ in self.slots(port):
            if lo <= slot <= hi:
                return p
        return None

    def unserve(self, slot):
        """The slot served by nobody (CLUSTER DELSLOTS on every live node), as a lost shard
        looks to a client: returns its owner, for serve()."""
        owner = self.owner(slot)
        for p in self.alive():
            self.client(p).execute_command("CLUSTER", "DELSLOTS", slot)
        wait_for(lambda: all(self.owner(slot, p) is None for p in self.ports), 10,
                 msg=f"slot {slot} unassigned everywhere")
        return owner

    def serve(self, slot, owner):
        """The slot served by owner again (after unserve)."""
        self.client(owner).execute_command("CLUSTER", "ADDSLOTS", slot)
        wait_for(lambda: all(self.owner(slot, p) == owner for p in self.alive()), 20,
                 msg=f"slot {slot} served again")

    def keyslot(self, key):
        return self.client(self.alive()[0]).execute_command("CLUSTER", "KEYSLOT", key)

    def node_id(self, port):
        return self.client(port).execute_command("CLUSTER", "MYID")

    def move_slot(self, slot, to_port, finish=True):
        """Migrates slot (keys included) to the primary at to_port, the way redis-cli
        --cluster reshard does. With finish=False it stops half way (keys moved, slot still
        MIGRATING on the source and IMPORTING on the target) and returns the source port."""
        src = self.owner(slot)
        assert src != to_port
        s, d = self.client(src), self.client(to_port)
        src_id, dst_id = self.node_id(src), self.node_id(to_port)
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        if finish:
            self.migrate_keys(slot, src, to_port)
            self.finish_slot(slot, to_port)
        return src

    def migrate_keys(self, slot, src, dst, keys=None):
        s = self.client(src)
        if keys is None:
            keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        for k in keys:
            s.execute_command("MIGRATE", "127.0.0.1", dst, k, 0, 5000)

    def finish_slot(self, slot, to_port):
        dst_id = self.node_id(to_port)
        # The target first (it bumps its epoch), then every other node, as redis-cli does.
        self.client(to_port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for p in self.alive():
            if p != to_port:
                try:
                    self.client(p).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                except Exception:
                    pass  # a replica may refuse: it learns from gossip
        wait_for(lambda: all(self.owner(slot, p) == to_port for p in self.alive()), 10,
                 msg=f"every node sees slot {slot} on {to_port}")

    def commandstats(self, port):
        """{command: calls} on one node."""
        stats = self.client(port).info("commandstats")
        return {k[len("cmdstat_"):]: v["calls"] for k, v in stats.items()}

    def reset_stats(self):
        for p in self.alive():
            self.client(p).config_resetstat()

    def kill(self, port):
        """kill -9 of one node."""
        self.procs[port].kill()

    def restart(self, port):
        """Starts a killed node again on its port, empty (no persistence) but with its
        nodes.conf: it rejoins with its node id, as a primary of its slots if no replica took
        them over meanwhile (then its replica resyncs from it: the slots restarted empty),
        else as a replica."""
        assert not self.procs[port].alive()
        self._start(port, self.bus_ports[self.ports.index(port)])
        wait_for(lambda: self.ping(port), 10, msg=f"redis {port} restarted")

    def stop(self):
        for p in list(self.procs.values()):
            p.stop()


if __name__ == "__main__":
    # Manual use: python3 tests/cluster.py -> starts a cluster, prints its URL, Ctrl-C stops.
    import tempfile
    c = RedisCluster(tempfile.mkdtemp(prefix="sb-cluster-"))
    print(c.url, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        c.stop()
