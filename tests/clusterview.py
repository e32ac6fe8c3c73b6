"""A redis.Redis look-alike over a tests/cluster.py RedisCluster, for tests and
tests/invariants.py: a key command goes to the primary of its key's slot (the first key; EVAL
and EVALSHA by their first KEYS entry), scan_iter walks every primary, and the few server-wide
commands the suites use (dbsize, flushall, config_set, script_load/flush, client_kill_filter,
slowlog_*) go to every primary. MOVED, ASK, TRYAGAIN, CLUSTERDOWN and a refused connection
re-read the slot map (from any live node) and retry for a few seconds, so a test can read
across a failover or a slot move. Test-only: no production path walks keys this way.

Why not redis.cluster.RedisCluster (redis-py 4.3.4): it caches its own map and its own idea of
which nodes are primaries, and its pipeline refuses EVALSHA; a test that kills primaries and
moves slots wants every read to follow what the cluster says now."""
import time

import redis

import keyspace

# Commands that do not name a key: run on every primary; the result is combined by kind.
_SUM = {"dbsize"}
_FIRST = {"script_load"}  # every primary gets it; the results (the sha) are equal
_CONCAT = {"slowlog_get"}
_ALL = {"flushall", "flushdb", "config_set", "config_resetstat", "script_flush",
        "client_kill_filter", "slowlog_reset"}


def _retryable(e):
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
        return True
    msg = str(e)
    return isinstance(e, redis.ResponseError) and msg.split(" ", 1)[0] in (
        "MOVED", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "ASK")


class ClusterRedis:
    cluster = True

    def __init__(self, rc, retry_s=15.0):
        self.rc = rc
        self.retry_s = retry_s
        self._clients = {}
        self._map = None

    # ---- topology ----------------------------------------------------------------------------
    def _client(self, port):
        c = self._clients.get(port)
        if c is None:
            c = self._clients[port] = redis.Redis(host="127.0.0.1", port=port,
                                                  decode_responses=True, socket_timeout=5,
                                                  password=self.rc.password)
        return c

    def refresh(self):
        for p in self.rc.alive():
            try:
                self._map = [(lo, hi, port) for lo, hi, port, _ in self.rc.slots(p)]
                return
            except redis.RedisError:
                continue
        raise redis.ConnectionError("no live cluster node answers CLUSTER SLOTS")

    def primaries(self):
        if self._map is None:
            self.refresh()
        return sorted({p for _, _, p in self._map})

    def port_of(self, key):
        if self._map is None:
            self.refresh()
        slot = keyspace.keyslot(key)
        for lo, hi, p in self._map:
            if lo <= slot <= hi:
                return p
        raise redis.ResponseError(f"CLUSTERDOWN slot {slot} is not served (test map)")

    def _retry(self, fn):
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return fn()
            except redis.RedisError as e:
                if not _retryable(e) or time.monotonic() > deadline:
                    raise
                if str(e).startswith("ASK "):
                    return ("ASK", int(str(e).rsplit(":", 1)[1]))
                time.sleep(0.05)
                self.refresh()

    def _on_key(self, key, name, args, kwargs):
        def once():
            return getattr(self._client(self.port_of(key)), name)(*args, **kwargs)
        res = self._retry(once)
        if isinstance(res, tuple) and len(res) == 2 and res[0] == "ASK":
            # Half-way migration: the key is on the target, which serves it after ASKING on
            # the same connection (a pipeline holds one connection for both).
            p = self._client(res[1]).pipeline(transaction=False)
            p.execute_command("ASKING")
            getattr(p, name)(*args, **kwargs)
            return p.execute()[1]
        return res

    def _on_primaries(self, name, args, kwargs):
        out = []
        for p in self.primaries():
            out.append(self._retry(lambda p=p: getattr(self._client(p), name)(*args, **kwargs)))
        return out

    # ---- commands ----------------------------------------------------------------------------
    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _SUM:
            return lambda *a, **kw: sum(self._on_primaries(name, a, kw))
        if name in _FIRST:
            return lambda *a, **kw: self._on_primaries(name, a, kw)[0]
        if name in _CONCAT:
            return lambda *a, **kw: [x for r in self._on_primaries(name, a, kw) for x in r]
        if name in _ALL:
            return lambda *a, **kw: all(self._on_primaries(name, a, kw))

        def on_key(*a, **kw):
            key = a[2] if name in ("eval", "evalsha") else a[0]
            return self._on_key(key, name, a, kw)
        return on_key

    def config_get(self, *a, **kw):
        return self._on_primaries("config_get", a, kw)[0]

    def scan_iter(self, match=None, count=None, **kw):
        # Every primary, each to the end of its own cursor; a key is on exactly one primary.
        for p in self.primaries():
            yield from self._client(p).scan_iter(match=match, count=count, **kw)

    def pipeline(self, transaction=False):
        assert not transaction, "a MULTI spans one slot; not needed by the suites"
        return _Pipeline(self)


class _Pipeline:
    """Buffers key commands; execute() sends one pipeline per primary and returns the replies
    in the order the commands were given (order is kept per primary, which is per key)."""

    def __init__(self, cr):
        self.cr = cr
        self.cmds = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def add(*a, **kw):
            key = a[2] if name in ("eval", "evalsha") else a[0]
            self.cmds.append((key, name, a, kw))
            return self
        return add

    def execute(self):
        by_port = {}
        for i, (key, name, a, kw) in enumerate(self.cmds):
            by_port.setdefault(self.cr.port_of(key), []).append((i, name, a, kw))
        out = [None] * len(self.cmds)
        for port, cmds in by_port.items():
            p = self.cr._client(port).pipeline(transaction=False)
            for _, name, a, kw in cmds:
                getattr(p, name)(*a, **kw)
            for (i, *_), res in zip(cmds, p.execute()):
                out[i] = res
        self.cmds = []
        return out
