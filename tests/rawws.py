"""A raw WebSocket client over a plain socket, for what a well-behaved library will not do:
not answering pings, not reading, fragmenting, sending malformed frames or handshakes."""
import base64
import os
import socket
import struct
import time


def handshake_request(host, port, path="/ws", headers=None, key=None):
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    hdrs = dict(h.split(": ", 1) for h in lines[1:])
    for k, v in (headers or {}).items():
        if v is None:
            hdrs.pop(k, None)
        else:
            hdrs[k] = v
    return (lines[0] + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) +
            "\r\n").encode()


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length_override=None):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length_override is None else length_override
    if n < 126:
        hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return hdr + payload
    k = os.urandom(4)
    return hdr + k + bytes(c ^ k[i % 4] for i, c in enumerate(payload))


class RawWS:
    def __init__(self, port, host="127.0.0.1", path="/ws", headers=None, connect=True):
        self.s = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        self.status = None
        if connect:
            self.s.sendall(handshake_request(host, port, path, headers))
            self.status = self.read_http_head()

    def read_http_head(self):
        while b"\r\n\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                break
            self.buf += d
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        first = head.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = first.split(" ")
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    def send_text(self, text, **kw):
        self.s.sendall(frame(1, text.encode() if isinstance(text, str) else text, **kw))

    def send_raw(self, data):
        self.s.sendall(data)

    def _need(self, n, deadline):
        while len(self.buf) < n:
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            d = self.s.recv(65536)
            if not d:
                raise EOFError("connection closed")
            self.buf += d

    def recv_frame(self, timeout=3.0):
        """(opcode, payload) of the next frame from the server."""
        deadline = time.monotonic() + timeout
        self._need(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        self._need(off + n, deadline)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0F, payload

    def recv_until_close(self, timeout=3.0):
        """Reads frames until a close frame; returns (close code or None, [text frames])."""
        texts = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                op, payload = self.recv_frame(deadline - time.monotonic())
                if op == 8:
                    return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None,
                            texts)
                if op == 1:
                    texts.append(payload.decode())
        except (EOFError, ConnectionResetError, socket.timeout, OSError):
            return None, texts
        return None, texts

    def closed_within(self, timeout):
        """True when the server closes the TCP connection within timeout seconds."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.s.settimeout(max(0.01, deadline - time.monotonic()))
                d = self.s.recv(65536)
                if not d:
                    return True
                self.buf += d
        except socket.timeout:
            return False
        except (ConnectionResetError, OSError):
            return True
        return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass
