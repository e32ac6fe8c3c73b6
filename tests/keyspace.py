"""The key schema's arithmetic for tests (lua/README.md, common/keys.c): the Redis Cluster slot
of a key (CRC16/XMODEM of its hash tag, mod 16384) and the bucket tags. A room's figures and
indexes that span rooms live in its bucket P:{T}:..., with T = "#" on a single Redis and, on a
cluster, the tag "#<n>" of the room's slot (n the smallest number whose "#<n>" hashes to it)."""
import functools

SLOTS = 16384


def _crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def keyslot(key):
    """The slot of key (str or bytes), hash tags included."""
    k = key.encode() if isinstance(key, str) else key
    s = k.find(b"{")
    if s >= 0:
        e = k.find(b"}", s + 1)
        if e > s + 1:
            k = k[s + 1:e]
    return _crc16(k) % SLOTS


@functools.lru_cache(maxsize=1)
def slot_tags():
    """[tag of slot 0, ..., tag of slot 16383]."""
    tags = [None] * SLOTS
    left, n = SLOTS, 0
    while left:
        t = f"#{n}"
        s = _crc16(t.encode()) % SLOTS
        if tags[s] is None:
            tags[s] = t
            left -= 1
        n += 1
    return tags


def bucket_tag(room, cluster=False):
    return slot_tags()[keyslot("{" + room + "}")] if cluster else "#"


def bucket(prefix, room, suffix, cluster=False):
    """P:{T}:suffix, the room's bucket key (suffix "stats", "rooms", "node:N:sockets") or a
    node channel ("node:N")."""
    return f"{prefix}:{{{bucket_tag(room, cluster)}}}:{suffix}"
