"""Fixtures for integration tests: a private redis-server per test, nodes that are stopped and
checked at the end (clean exit, no sanitizer report), and invariants checked after each test."""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import Admin, Node, RedisServer  # noqa: E402

SANITIZER = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")


@pytest.fixture
def redis_server(tmp_path):
    r = RedisServer(str(tmp_path))
    yield r
    r.stop()


class Cluster:
    def __init__(self, redis, tmpdir):
        self.redis = redis
        self.tmpdir = tmpdir
        self.nodes = []
        self.admins = []

    def node(self, name=None, args=(), redis_url=None, **kw):
        n = Node(redis_url or self.redis.url, self.tmpdir, name=name, args=args, **kw)
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
