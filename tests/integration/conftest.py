"""Fixtures for integration tests: a private redis-server per test, nodes that are stopped and
checked at the end (clean exit, no sanitizer report), and invariants checked after each test.

SB_REDIS=cluster runs the same tests on a Redis Cluster (3 primaries + 3 replicas, tests/
cluster.py) instead: one cluster per test module, FLUSHALL on every primary (and replicas
caught up) before each test; `redis_server.url` is then the redis-cluster:// seed list and
`redis_server.client()` a tests/clusterview.py client that routes by slot and scans every
primary. `redis_server.cluster` tells a test which it got (for bucket key names, via
tests/keyspace.py). A test that has no meaning on a cluster carries
@pytest.mark.single_redis("why") and is deselected in cluster mode (listed at the end); one
that has meaning only on a cluster carries @pytest.mark.cluster_only("why") and is deselected
otherwise (run by .ci/run's cluster suite)."""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import Admin, Node, RedisServer  # noqa: E402

SANITIZER = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")
MODE = os.environ.get("SB_REDIS", "single")
assert MODE in ("single", "cluster"), f"SB_REDIS={MODE!r}: single or cluster"
_deselected = []


def pytest_configure(config):
    config.addinivalue_line("markers", "single_redis(why): meaningless on a Redis Cluster; "
                            "deselected when SB_REDIS=cluster")
    config.addinivalue_line("markers", "cluster_only(why): meaningful only on a Redis Cluster; "
                            "deselected unless SB_REDIS=cluster")


def pytest_collection_modifyitems(config, items):
    marker = "single_redis" if MODE == "cluster" else "cluster_only"
    keep, drop = [], []
    for it in items:
        (drop if it.get_closest_marker(marker) else keep).append(it)
    if drop:
        items[:] = keep
        config.hook.pytest_deselected(items=drop)
        for it in drop:
            _deselected.append(f"{it.nodeid}: {it.get_closest_marker(marker).args[0]}")


def pytest_terminal_summary(terminalreporter):
    if _deselected:
        terminalreporter.write_sep("-", "single-Redis only, not run on the cluster"
                                   if MODE == "cluster" else "Redis Cluster only, not run here")
        for line in _deselected:
            terminalreporter.write_line(line)


class ClusterRedisServer:
    """What a test sees of the module's cluster: the RedisServer interface (url, client(),
    kill() and start()) plus rc, the tests/cluster.py RedisCluster. kill() is kill -9 of one
    primary (in turn) and start() restarts it empty on its port, so it comes back as the
    primary of its slots with no data if no replica took over yet (the cluster's "Redis
    restarted empty"), else as a replica."""
    cluster = True

    def __init__(self, rc):
        self.rc = rc
        self.killed = []
        self.turn = 0

    @property
    def url(self):
        return self.rc.url

    def client(self):
        from clusterview import ClusterRedis
        return ClusterRedis(self.rc)

    def kill(self):
        prim = [p for p in self.rc.primaries() if self.rc.procs[p].alive()]
        port = prim[self.turn % len(prim)]
        self.turn += 1
        self.rc.kill(port)
        self.killed.append(port)

    def start(self):
        while self.killed:
            self.rc.restart(self.killed.pop())

    def reset(self):
        """Before a test: every node up, the cluster whole, no keys, replicas caught up."""
        self.start()
        for p in self.rc.ports:
            if not self.rc.procs[p].alive():
                self.rc.restart(p)
        self.rc.wait_ok(60)
        for p in self.rc.primaries():
            c = self.rc.client(p)
            c.flushall()
            c.config_set("maxmemory", "0")
            c.execute_command("WAIT", self.rc.replicas_per_primary, 5000)


@pytest.fixture(scope="module")
def _module_redis_cluster(tmp_path_factory):
    if MODE != "cluster":
        yield None
        return
    from cluster import RedisCluster
    rc = RedisCluster(str(tmp_path_factory.mktemp("rediscluster")))
    yield ClusterRedisServer(rc)
    rc.stop()


@pytest.fixture
def redis_server(tmp_path, _module_redis_cluster):
    if _module_redis_cluster is not None:
        _module_redis_cluster.reset()
        yield _module_redis_cluster
        return
    r = RedisServer(str(tmp_path))
    yield r
    r.stop()


class Cluster:
    def __init__(self, redis, tmpdir):
        self.redis = redis
        self.tmpdir = tmpdir
        self.nodes = []
        self.admins = []
        self.default_args = []  # put before every node's own args (the no_resume fixture)

    def node(self, name=None, args=(), redis_url=None, **kw):
        n = Node(redis_url or self.redis.url, self.tmpdir, name=name,
                 args=list(self.default_args) + list(args), **kw)
        self.nodes.append(n)
        return n

    def admin(self, args=(), **kw):
        a = Admin(self.redis.url, self.tmpdir, args=args, **kw)
        self.admins.append(a)
        return a

    def stop(self):
        problems = []
        for p in self.nodes + self.admins:
            killed = not p.proc.alive() or getattr(p, "killed", False)
            rc = p.proc.stop()
            log = p.proc.log()
            if SANITIZER.search(log):
                problems.append(f"{p.proc.argv[0]} ({p.proc.log_path}): sanitizer report")
            elif rc not in (0, -9) and not killed:
                problems.append(f"{p.proc.argv[0]} ({p.proc.log_path}) exited {rc}")
        return problems


@pytest.fixture
def cluster(redis_server, tmp_path):
    c = Cluster(redis_server, str(tmp_path))
    yield c
    problems = c.stop()
    assert not problems, "\n".join(problems)


@pytest.fixture
def no_resume(cluster):
    """Nodes of this test run with session resume off (--resume-grace-ms 0): for tests of what
    a lost socket or a dead node does without a grace (peer-left at once, reaping as expired,
    drain with 1001 and cleanup). test_15_resume.py covers the same events with resume on."""
    cluster.default_args = ["--resume-grace-ms", "0"]
    return cluster
