"""test_wire_memory.py: a peer on the wire cannot make a node hold unbounded memory.

Two attacks from a raw client speaking docs/wire.md against a real node on
loopback (issue 12, finding 4), each measured by the node's resident memory:
- a ping flood whose pongs are never read: every ping used to queue a pong
  (about 250 bytes of memory each, counted as 32 against a 256 MiB cut), so
  200,000 pings grew the node by ~50 MB and a long flood by gigabytes;
- many connections each holding an incomplete large tensor frame: each used
  to buffer up to 64 MiB, 3 GB for 80 connections.
The node now counts queued writes in the bytes they hold, sends no pong while
a peer has more than 1 MiB of our writes unread, and holds at most 256 MiB of
frames in flight over all connections. After each attack it still answers.

Run: build/venv/bin/python tests/cluster/test_wire_memory.py   (ctest runs it)
"""

import json
import os
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as cluster  # noqa: E402  (its node and peers-file helpers, not its tests)

PING, HELLO, TENSOR = 4, 1, 3


def header(ftype, payload_len, rid=0):
    return b"EXOW" + struct.pack("<HBBQII", 2, ftype, 0, rid, payload_len, 0)  # wire version 2


def hello(node_id):
    body = json.dumps({"node_id": node_id, "instance": "x", "port": 1}).encode()
    return header(HELLO, len(body)) + body


class WireMemory(unittest.TestCase):
    # A fresh node for each attack: memory one attack made the node hold and
    # free stays in its allocator and would hide the next one's.
    def setUp(self):
        self.home = cluster.with_home()
        home = self.home.__enter__()
        self.node = cluster.start_cluster(home, [("victim", 8000)])[0]
        self.want = cluster.chat(self.node, cluster.TINY_CHAT, "Say hello.", max_tokens=8)

    def tearDown(self):
        self.node.stop()
        self.home.__exit__(None, None, None)

    def rss(self):
        return cluster.rss_mb(self.node.proc.pid)

    def still_serves(self):
        self.assertEqual(cluster.chat(self.node, cluster.TINY_CHAT, "Say hello.", max_tokens=8), self.want)

    def test_a_ping_flood_that_never_reads_its_pongs(self):
        before = self.rss()
        pings = (header(PING, 8) + b"\0" * 8) * 1000
        s = socket.create_connection(("127.0.0.1", self.node.wire_port))
        s.sendall(hello("mallory"))
        sent, start = 0, time.time()
        try:
            while time.time() - start < 6:  # read nothing back
                s.sendall(pings)
                sent += 1000
        except OSError:
            pass  # the node may hang up on us: that is a fine answer too
        time.sleep(0.5)
        grown = self.rss() - before
        s.close()
        print("ping flood: %d pings in 6 s, node grew %.1f MB" % (sent, grown))
        # Before: 8.7 million pings grew the node by 2 GB before it cut the peer.
        self.assertLess(grown, 20, "the node grew %.1f MB under %d unread pongs" % (grown, sent))
        self.still_serves()

    def test_many_connections_holding_incomplete_frames(self):
        before = self.rss()
        conns, chunk = [], b"\0" * (1 << 20)
        for i in range(16):
            try:
                s = socket.create_connection(("127.0.0.1", self.node.wire_port), timeout=10)
                s.sendall(hello("mallory-%d" % i) + header(TENSOR, 60 << 20, rid=i + 1))
                for _ in range(40):  # 40 of the 60 MiB announced, then silence
                    s.sendall(chunk)
                conns.append(s)
            except OSError:
                pass  # cut off: the node refused to hold this one's frame
        time.sleep(0.5)
        grown = self.rss() - before
        for s in conns:
            s.close()
        print("incomplete frames: 16 connections x 40 MiB sent, node grew %.0f MB" % grown)
        # 16 x 40 MiB would be 640 MB; the budget lets at most 256 MiB be held.
        self.assertLess(grown, 300, "the node holds %.0f MB of incomplete frames" % grown)
        self.still_serves()


if __name__ == "__main__":
    unittest.main(verbosity=2)
