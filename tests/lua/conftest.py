"""Fixtures for the Lua script tests: one real redis-server per module (tests/harness.py),
FLUSHALL before each test, the scripts of lua/ loaded with SCRIPT LOAD and called with EVALSHA,
a sharded pub/sub listener on the node channels the tests use, and a "wrote nothing" check."""
import contextlib
import json
import os
import sys
import time
import uuid

import pytest
import redis

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
# SB_LUA_DIR: run the tests against other copies of the scripts (e.g. mutated ones, to see
# that the tests catch a broken script).
LUA_DIR = os.environ.get("SB_LUA_DIR") or os.path.join(ROOT, "lua")
sys.path.insert(0, TESTS)

from harness import RedisServer  # noqa: E402
import invariants  # noqa: E402
import keyspace  # noqa: E402
from spubsub import ShardedSubscriber  # noqa: E402
import lua_text  # noqa: E402

PREFIX = "sb"
# The node ids the tests use: the Events listener subscribes to their channels.
NODES = ("n1", "n2", "n3", "n9")


def script_files():
    return sorted(f for f in os.listdir(LUA_DIR) if f.endswith(".lua"))


def script_text(name):
    """The script as it ships, --@include lines expanded (tests/lua_text.py)."""
    return lua_text.expand(os.path.join(LUA_DIR, name))


class Scripts:
    """EVALSHA wrappers named after the scripts; arguments in the order of their legends."""

    def __init__(self, r, prefix=PREFIX):
        self.r = r
        self.prefix = prefix
        self.sha = {}
        for f in script_files():
            self.sha[f[:-4]] = r.script_load(script_text(f))

    def members_key(self, room):
        return f"{self.prefix}:{{{room}}}:members"

    def bucket_key(self, room, suffix="stats"):
        return keyspace.bucket(self.prefix, room, suffix)

    def room_call(self, name, room, *args):
        return self.r.evalsha(self.sha[name], 2, self.members_key(room), self.bucket_key(room),
                              self.prefix, room, *args)

    def join(self, room, sid, node="n1", epoch="e1", meta="{}", ttl=15000, max_members=64):
        return self.room_call("room_join", room, sid, node, epoch, meta, ttl, max_members)

    def remove(self, room, sid, mode="leave", node="n1"):
        return self.room_call("room_remove", room, sid, mode, node)

    def link(self, room, sid, peer, state="up", node="n1"):
        return self.room_call("link_set", room, sid, peer, state, node)

    def read(self, room):
        return self.r.evalsha(self.sha["room_read"], 1, self.members_key(room), self.prefix, room)

    def assert_(self, room, sid, node="n1", epoch="e1", meta="{}", ttl=15000, peers=(),
                resume=""):
        return self.room_call("room_assert", room, sid, node, epoch, meta, ttl, resume, *peers)

    def check(self, room):
        return self.room_call("room_check", room)

    def check_slice(self, room, slice_, cursor="0"):
        return self.room_call("room_check", room, slice_, cursor)

    def check_slices(self, room, slice_):
        """room_check a slice at a time from cursor "0" to "0", as the admin does: the replies
        of every call."""
        replies, cursor = [], "0"
        while True:
            replies.append(self.check_slice(room, slice_, cursor))
            cursor = replies[-1][3]
            if cursor == "0":
                return replies

    def stats_check(self, room_in_bucket="a"):
        return self.r.evalsha(self.sha["stats_check"], 1, self.bucket_key(room_in_bucket),
                              self.prefix)

    def admin_lock(self, holder, ttl_ms):
        return self.r.evalsha(self.sha["admin_lock"], 1, f"{self.prefix}:admin:lock",
                              self.prefix, holder, ttl_ms)


class Events:
    """Everything published on the bucket's node channels P:{#}:node:N (N in NODES; sharded
    pub/sub has no patterns), read up to a sentinel so nothing is left in flight: Redis
    delivers one subscriber's messages in publish order, so once the sentinel (published after
    the calls under test returned) arrives, every earlier event has arrived too."""

    def __init__(self, server, prefix=PREFIX):
        self.prefix = prefix
        self.client = server.client()
        self.head = keyspace.bucket(prefix, "a", "node:")
        self.sentinel = self.head + "__sentinel__"
        self.sub = ShardedSubscriber("127.0.0.1", server.port,
                                     [self.head + n for n in NODES] + [self.sentinel])

    def drain(self):
        """[(node, event dict)] published since the last drain, in order."""
        nonce = uuid.uuid4().hex
        self.client.execute_command("SPUBLISH", self.sentinel, nonce)
        out = []
        deadline = time.monotonic() + 5.0
        while True:
            try:
                channel, data = self.sub.get(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError("pub/sub sentinel never arrived")
            if channel == self.sentinel:
                if data == nonce:
                    return out
                continue
            out.append((channel[len(self.head):], json.loads(data)))

    def close(self):
        self.sub.close()
        self.client.close()


@pytest.fixture(scope="module")
def server():
    s = RedisServer()
    yield s
    s.stop()


@pytest.fixture
def r(server):
    c = server.client()
    c.config_set("maxmemory", 0)
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def raw(server):
    """A client without decoding, for DUMP."""
    c = redis.Redis(host="127.0.0.1", port=server.port)
    yield c
    c.close()


@pytest.fixture
def sb(r):
    return Scripts(r)


@pytest.fixture
def events(server, r):
    e = Events(server)
    yield e
    e.close()


def snapshot(raw):
    """{key: (DUMP, has a TTL)} of the whole keyspace (test-only SCAN)."""
    out = {}
    for k in raw.scan_iter(count=1000):
        out[k] = (raw.dump(k), raw.pttl(k) >= 0)
    return out


def dirty(r):
    """Redis's count of writes since the last save: unchanged when a script wrote nothing."""
    return r.info("persistence")["rdb_changes_since_last_save"]


@pytest.fixture
def writes_nothing(r, raw, events):
    """Context manager: the block writes no key and publishes no event."""
    @contextlib.contextmanager
    def guard():
        events.drain()
        before, d0 = snapshot(raw), dirty(r)
        yield
        assert dirty(r) == d0, "the script wrote"
        assert snapshot(raw) == before
        assert events.drain() == []
    return guard


@pytest.fixture
def consistent(r):
    """Asserts the invariants hold (presence optional)."""
    def ok(presence=True):
        bad = invariants.check(r, PREFIX, presence=presence)
        assert bad == [], "\n".join(bad)
    return ok
