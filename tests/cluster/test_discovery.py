"""test_discovery.py: nodes that find each other with no configuration, over real UDP broadcasts.

Three real nodes on this host, each with its own EXO_HOME and wire port, run the UDP discovery
module (on a free UDP port, so parallel test runs do not meet): they find each other and split a
model without a peers file; a node that stops is dropped; keyed nodes find only nodes with their
key; datagrams a stranger sends (garbage, oversized, forged, replayed, another cluster's, a clear
announcement to a keyed node) are counted in /v1/topology and change nothing.

Run: build/venv/bin/python tests/cluster/test_discovery.py   (ctest runs it)
"""

import json
import os
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as cluster  # noqa: E402  (its node helpers, not its tests)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def topology(node):
    return json.loads(node.request("GET", "/v1/topology")[1])


def wait_until(predicate, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


def send(port, payload, dest="127.255.255.255"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(payload, (dest, port))


class Discovery(unittest.TestCase):
    def start(self, node_id, udp_port, *flags, key=None):
        home = tempfile.mkdtemp(prefix="exo-disc-")
        env = {"EXO_HOME": home}
        if key:
            env["EXO_CLUSTER_KEY"] = key
        node = cluster.Node("--node-id", node_id, "--discovery-module", "udp", "--listen-port", str(udp_port),
                            "--broadcast-port", str(udp_port), "--node-host", "127.0.0.1",
                            "--discovery-timeout", "6", *flags, env=env)
        node.node_id = node_id
        self.nodes.append(node)
        return node

    def setUp(self):
        self.nodes = []

    def tearDown(self):
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.terminate()
                n.proc.wait(10)

    def ids(self, node):
        return sorted(n["id"] if isinstance(n, dict) else n for n in topology(node)["nodes"])

    def test_three_nodes_find_each_other_and_split_a_model(self):
        port = free_udp_port()
        a, b, c = (self.start(i, port) for i in ("disc-a", "disc-b", "disc-c"))
        for n in (a, b, c):
            wait_until(lambda n=n: len(topology(n)["nodes"]) == 3, what="%s to see 3 nodes" % n.node_id)
        # No peers file, yet the model is split across all three (the default policy by memory).
        answer = cluster.chat(a, cluster.TINY_CHAT, "Say hello.", max_tokens=8)
        self.assertTrue(answer)
        parts = [p for p in topology(a)["partitions"] if p["model"] == cluster.TINY_CHAT]
        self.assertEqual(sorted(p["node_id"] for p in parts), ["disc-a", "disc-b", "disc-c"])
        d = topology(a)["discovery"]
        self.assertEqual(d["module"], "udp")
        self.assertGreaterEqual(d["accepted"], 2)
        # A node that stops is dropped by the others.
        c.proc.terminate()
        c.proc.wait(10)
        for n in (a, b):
            wait_until(lambda n=n: len(topology(n)["nodes"]) == 2, timeout=20, what="%s to drop c" % n.node_id)
        self.assertEqual(cluster.chat(a, cluster.TINY_CHAT, "Say hello.", max_tokens=8) != "", True)

    def test_keyed_nodes_find_only_their_cluster(self):
        port = free_udp_port()
        key1, key2 = "exo-disc-key-" + "1" * 32, "exo-disc-key-" + "2" * 32
        a = self.start("key-a", port, key=key1)
        b = self.start("key-b", port, key=key1)
        x = self.start("key-x", port, key=key2)
        o = self.start("open-o", port)
        for n in (a, b):
            wait_until(lambda n=n: len(topology(n)["nodes"]) == 2, what="%s to see its peer" % n.node_id)
        time.sleep(3)  # more announcements go round: still only the pair
        self.assertEqual(len(topology(a)["nodes"]), 2)
        self.assertEqual(len(topology(x)["nodes"]), 1)
        self.assertEqual(len(topology(o)["nodes"]), 1)
        self.assertGreater(topology(a)["discovery"]["other_cluster"], 0)  # x's sealed announcements
        self.assertGreater(topology(a)["discovery"]["forged"], 0)  # o's clear ones
        self.assertGreater(topology(o)["discovery"]["other_cluster"], 0)

    def test_hostile_datagrams_are_counted_and_change_nothing(self):
        port = free_udp_port()
        a = self.start("host-a", port, key="exo-disc-key-" + "3" * 32)
        o = self.start("host-o", port)
        wait_until(lambda: topology(a)["discovery"]["received"] > 0, what="a to hear something")
        fake = {"type": "discovery", "node_id": "mallory", "grpc_port": 1, "device_capabilities": {"memory": 1},
                "priority": 4, "interface_name": "eth0", "interface_type": "Ethernet", "time": 1, "seq": 1}
        before_a, before_o = topology(a)["discovery"], topology(o)["discovery"]
        send(port, b"\xff\x00garbage")
        send(port, b"{" + b" " * 9000 + b"}")  # oversized
        send(port, json.dumps(fake).encode())  # in the clear: forged for a, taken by the open o
        send(port, b"EXOA\x01\x00\x00\x00" + b"\x11" * 8 + b"\x22" * 24 + b"\x33" * 80)  # another key's id
        send(port, json.dumps(dict(fake, node_id="bad id!")).encode())  # malformed field
        time.sleep(1.5)
        da, do = topology(a)["discovery"], topology(o)["discovery"]
        # The keyed node: whatever is not sealed with its key is forged, or another cluster's.
        self.assertGreaterEqual(da["forged"] - before_a["forged"], 3)  # garbage, the clear fake, the bad id
        self.assertGreater(da["oversized"], before_a["oversized"])
        self.assertGreater(da["other_cluster"], before_a["other_cluster"])
        # The open node: garbage and a bad field are malformed, the sealed one another cluster's.
        self.assertGreaterEqual(do["malformed"] - before_o["malformed"], 2)
        self.assertGreater(do["oversized"], before_o["oversized"])
        self.assertGreater(do["other_cluster"], before_o["other_cluster"])
        self.assertEqual([n for n in self.ids(a) if n == "mallory"], [])
        # The open node takes the clear announcement as a candidate, but "mallory" never
        # completes a hello (nothing listens on its port), so it is never a peer.
        self.assertGreater(do["accepted"], before_o["accepted"])
        time.sleep(2)
        self.assertNotIn("mallory", self.ids(o))
        # Replaying the same announcement again counts as a replay.
        send(port, json.dumps(fake).encode())
        wait_until(lambda: topology(o)["discovery"]["replayed"] > do["replayed"], timeout=10, what="a replay count")
        # Both nodes still serve.
        self.assertTrue(cluster.chat(a, cluster.TINY_CHAT, "Say hello.", max_tokens=4))
        self.assertTrue(cluster.chat(o, cluster.TINY_CHAT, "Say hello.", max_tokens=4))


if __name__ == "__main__":
    unittest.main(verbosity=2)
