"""An asyncio WebSocket client for the Switchboard protocol, for tests.

A background task reads every frame into `seen` (all messages, in order) and a backlog that
`expect` consumes, so a test can wait for one message without losing the others.
"""
import asyncio
import itertools
import json

import websockets

_rids = itertools.count(1)


class Client:
    def __init__(self, ws):
        self.ws = ws
        self.seen = []
        self.backlog = []
        self.cond = asyncio.Condition()
        self.closed = None  # (code, reason) once the server closed us
        self.welcome = None
        self.reader = asyncio.get_event_loop().create_task(self._read())

    @classmethod
    async def connect(cls, url, subprotocols=("switchboard.v1",), **kw):
        ws = await websockets.connect(url, subprotocols=list(subprotocols) if subprotocols else None,
                                      max_size=None, ping_interval=None, **kw)
        c = cls(ws)
        c.welcome = await c.expect("welcome")
        return c

    @property
    def id(self):
        return self.welcome["id"]

    @property
    def node(self):
        return self.welcome["node"]

    async def _read(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                async with self.cond:
                    self.seen.append(msg)
                    self.backlog.append(msg)
                    self.cond.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            async with self.cond:
                self.closed = (self.ws.close_code, self.ws.close_reason)
                self.cond.notify_all()

    async def send(self, obj):
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def expect(self, type_=None, timeout=3.0, **fields):
        """The first backlog message of that type with those fields (removed from the backlog)."""
        def match(m):
            if type_ is not None and m.get("type") != type_:
                return False
            return all(m.get(k) == v for k, v in fields.items())

        async def wait():
            async with self.cond:
                while True:
                    for i, m in enumerate(self.backlog):
                        if match(m):
                            return self.backlog.pop(i)
                    if self.closed is not None:
                        raise AssertionError(
                            f"closed {self.closed} while waiting for {type_} {fields}; "
                            f"backlog {self.backlog}")
                    await self.cond.wait()
        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {type_} {fields} within {timeout}s; backlog {self.backlog}")

    async def request(self, obj, timeout=3.0):
        """Sends obj with a fresh rid; returns the reply or error carrying that rid."""
        rid = f"r{next(_rids)}"
        obj = dict(obj, rid=rid)
        await self.send(obj)
        return await self.expect(None, timeout=timeout, rid=rid)

    async def join(self, room, meta=None, **extra):
        msg = {"type": "join", "room": room, **extra}
        if meta is not None:
            msg["meta"] = meta
        reply = await self.request(msg)
        assert reply["type"] == "joined", reply
        return reply

    async def wait_closed(self, timeout=3.0):
        async def wait():
            async with self.cond:
                while self.closed is None:
                    await self.cond.wait()
                return self.closed
        return await asyncio.wait_for(wait(), timeout)

    async def none_of(self, type_, wait=0.2, **fields):
        """Asserts that no such message arrives within `wait` seconds."""
        try:
            m = await self.expect(type_, timeout=wait, **fields)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {m}")

    async def close(self):
        await self.ws.close()
        self.reader.cancel()

    def abort(self):
        """A TCP reset: no close frame."""
        import socket as _s, struct
        sock = self.ws.transport.get_extra_info("socket")
        try:
            sock.setsockopt(_s.SOL_SOCKET, _s.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
        self.ws.transport.abort()
        self.reader.cancel()
