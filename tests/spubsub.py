"""A sharded pub/sub subscriber (SSUBSCRIBE, "smessage") on a raw socket: redis-py 4.3 has no
sharded pub/sub. Enough RESP2 to read what Redis sends a subscriber."""
import socket
import time


class ShardedSubscriber:
    def __init__(self, host, port, channels, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.channels = list(channels)
        self._send("SSUBSCRIBE", *self.channels)
        for _ in self.channels:
            kind, _ch, _n = self._read_item(time.monotonic() + timeout)
            assert kind == b"ssubscribe", kind

    def _send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("sharded pub/sub: nothing arrived")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("sharded pub/sub: connection closed")
        self.buf += data

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read_item(self, deadline):
        line = self._line(deadline)
        t, rest = line[:1], line[1:]
        if t == b"*":
            return [self._read_item(deadline) for _ in range(int(rest))]
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill(deadline)
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        if t == b":":
            return int(rest)
        if t == b"-":
            raise RuntimeError(rest.decode())
        return rest

    def get(self, timeout=5.0):
        """(channel, payload) of the next message, as str; TimeoutError when none."""
        deadline = time.monotonic() + timeout
        while True:
            item = self._read_item(deadline)
            if isinstance(item, list) and item and item[0] == b"smessage":
                return item[1].decode(), item[2].decode()

    def close(self):
        self.sock.close()
