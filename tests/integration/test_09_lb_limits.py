"""The load balancer as the first line of defence (issue 17): deploy/haproxy.cfg, as shipped,
in front of a real node, holds one client address to 200 open connections while another
address still gets through. Loopback only; HAProxy is installed by deploy/install-deps.sh."""
import os
import shutil
import socket
import time

import pytest

from harness import ROOT, Proc, free_port, http_get, wait_for
from rawws import handshake_request

PER_SOURCE_OPEN = 200  # deploy/haproxy.cfg: reject if sc0_conn_cur gt 200


def upgrade_from(src, port):
    """A WebSocket upgrade through the LB from source address src: the socket, or None when
    the LB closed it."""
    s = socket.socket()
    s.settimeout(5)
    s.bind((src, 0))
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(handshake_request("127.0.0.1", port, "/ws"))
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(4096)
            if not d:
                break
            head += d
        if head.startswith(b"HTTP/1.1 101"):
            return s
    except OSError:
        pass
    s.close()
    return None


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy not installed")
def test_01_haproxy_caps_open_connections_per_source(cluster, tmp_path):
    node = cluster.node("behind-lb")
    lb_port, mon_port = free_port(), free_port()
    env = dict(os.environ, SB_LB_BIND=f"127.0.0.1:{lb_port}",
               SB_LB_MONITOR_BIND=f"127.0.0.1:{mon_port}",
               SB_NODE1_ADDR=f"127.0.0.1:{node.port}", SB_NODE2_ADDR=f"127.0.0.1:{node.port}",
               SB_NODE3_ADDR=f"127.0.0.1:{node.port}")
    lb = Proc(["haproxy", "-db", "-f", os.path.join(ROOT, "deploy", "haproxy.cfg")], env=env,
              log=str(tmp_path / "haproxy.log"))
    held = []
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{mon_port}/healthz", timeout=0.5)[0] == 200,
                 15, 0.1, "haproxy sees a ready node")
        refused = 0
        for _ in range(PER_SOURCE_OPEN + 40):
            s = upgrade_from("127.0.0.40", lb_port)
            if s:
                held.append(s)
            else:
                refused += 1
        assert len(held) == PER_SOURCE_OPEN, (len(held), refused)
        # another address is not affected
        other = upgrade_from("127.0.0.41", lb_port)
        assert other is not None
        other.close()
        # the node never saw more than the LB let through
        text = http_get(node.http + "/metrics")[1].decode()
        sockets = [line for line in text.splitlines()
                   if line.startswith("switchboard_node_sockets ")]
        assert float(sockets[0].split()[1]) <= PER_SOURCE_OPEN + 1
    finally:
        for s in held:
            s.close()
        lb.stop()
