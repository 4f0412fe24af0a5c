"""test_peer_quotas.py: an admitted peer cannot hold unbounded requests on a node,
and peers are told a model by its store name (issue 12).

- A raw peer speaking docs/wire.md to a real node (an open cluster, on
  loopback) opens more requests than its quota (64 per peer): past it every
  open is answered `error` ("peer mallory has 64 requests open on this node
  (the limit)"), the node logs it once and still serves its API; closing
  requests gives their share back, and so does losing the peer. A context
  beyond the model's is refused, and so is a fifth layer range (each is a
  shard in memory). Before, every open made a route and a KV cache, and
  every new range loaded a shard, without end.
- Two nodes whose model stores lie in different places: a client names the
  model by its path in the asking node's store, and the other node is told
  the store-relative name. Before, it was told the client's spelling (a path
  into another machine's store) and answered "unknown model".

The topology rules for gossip (what a peer may make us dial: loopback only
from a peer on this host, ...) cannot be tried on loopback alone:
tests/lua/test_gossip.lua covers them.

Run: build/venv/bin/python tests/cluster/test_peer_quotas.py   (ctest runs it)
"""

import json
import os
import queue
import re
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as cluster  # noqa: E402  (its node helpers, not its tests)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO, CONTROL, PING, PONG, ERROR = 1, 2, 4, 5, 6
LIMIT = 64  # ring.PEER_MAX_REQUESTS


def wire_version():
    """The protocol version as docs/wire.md states it (the header's version field)."""
    with open(os.path.join(ROOT, "docs", "wire.md")) as f:
        m = re.search(r"\| version \| protocol version, \*\*(\d+)\*\*", f.read())
    assert m, "docs/wire.md no longer states the protocol version"
    return int(m.group(1))


VERSION = wire_version()


def frame(ftype, payload, rid=0):
    return b"EXOW" + struct.pack("<HBBQII", VERSION, ftype, 0, rid, len(payload), 0) + payload


class Peer:
    """A raw peer on a node's wire port: says hello, answers pings (or the node
    drops it after 5 s), and queues the control messages it receives."""

    def __init__(self, port, node_id="mallory"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.inbox = queue.Queue()
        self.lock = threading.Lock()
        hello = {"node_id": node_id, "instance": os.urandom(4).hex(), "port": 1}  # no memory: in no plan
        self.send(HELLO, json.dumps(hello).encode())
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def send(self, ftype, payload, rid=0):
        with self.lock:
            self.sock.sendall(frame(ftype, payload, rid))

    def control(self, rid, msg):
        self.send(CONTROL, json.dumps(msg).encode(), rid)

    def read(self):
        buf = b""
        try:
            while True:
                b = self.sock.recv(1 << 16)
                if not b:
                    break
                buf += b
                while len(buf) >= 24:
                    ftype, rid, plen = buf[6], struct.unpack("<Q", buf[8:16])[0], struct.unpack("<I", buf[16:20])[0]
                    if len(buf) < 24 + plen:
                        break
                    payload, buf = buf[24:24 + plen], buf[24 + plen:]
                    if ftype == PING:
                        self.send(PONG, payload)
                    elif ftype == CONTROL:
                        msg = json.loads(payload)
                        if msg.get("t") != "topology":
                            self.inbox.put((rid, msg))
                    elif ftype == ERROR:
                        self.inbox.put((0, {"t": "closed", "message": payload.decode()}))
        except OSError:
            pass
        self.inbox.put((0, {"t": "closed", "message": ""}))

    def answers(self, rids, timeout=60):
        """The reply (ready or error) to each open in rids."""
        got, deadline = {}, time.time() + timeout
        while len(got) < len(rids):
            rid, msg = self.inbox.get(timeout=max(0.1, deadline - time.time()))
            if msg["t"] == "closed":
                raise AssertionError("the node closed the connection: %s" % msg["message"])
            if rid in rids and msg["t"] in ("ready", "error"):
                got[rid] = msg
        return got

    def open(self, rid, n_ctx=64, stop=3):
        self.control(rid, {"t": "open", "model": "tiny-chat.gguf", "start": 0, "stop": stop, "n_ctx": n_ctx,
                           "first": "mallory", "next": "mallory"})

    def close(self):
        self.sock.close()


def store_model(home):
    os.makedirs(os.path.join(home, "downloads"), exist_ok=True)
    path = os.path.join(home, "downloads", "tiny-chat.gguf")
    shutil.copyfile(cluster.TINY_CHAT, path)
    return path


class PeerQuotas(unittest.TestCase):
    def test_a_peer_cannot_open_requests_without_end(self):
        with cluster.with_home() as home:
            store_model(home)
            node = cluster.start_cluster(home, [("victim", 8000)], allow_paths=False)[0]
            peer = None
            try:
                want = cluster.chat(node, "tiny-chat.gguf", "Say hello.", max_tokens=8)
                peer = Peer(node.wire_port)
                # A context beyond the model's (and the node's) is refused, and counts for nothing.
                peer.open(1000, n_ctx=10 ** 6)
                msg = peer.answers({1000})[1000]
                self.assertEqual(msg["t"], "error")
                self.assertIn("a context of 1000000", msg["message"])

                rids = set(range(1, LIMIT + 7))
                for rid in sorted(rids):
                    peer.open(rid)
                got = peer.answers(rids)
                ready = [rid for rid in rids if got[rid]["t"] == "ready"]
                refused = [got[rid]["message"] for rid in rids if got[rid]["t"] == "error"]
                self.assertEqual(len(ready), LIMIT, refused[:3])
                self.assertEqual(len(refused), 6)
                for m in refused:
                    self.assertIn("peer mallory has 64 requests open on this node (the limit)", m)

                # The node still serves its own clients, as before.
                self.assertEqual(node.request("GET", "/healthcheck")[0], 200)
                self.assertEqual(cluster.chat(node, "tiny-chat.gguf", "Say hello.", max_tokens=8), want)
                self.assertEqual(cluster.log_of(node).count("refusing requests of peer mallory"), 1)

                # Closing requests gives their share back: as many opens succeed again.
                for rid in ready[:4]:
                    peer.control(rid, {"t": "close"})
                more = set(range(200, 206))
                for rid in sorted(more):
                    peer.open(rid)
                got = peer.answers(more)
                self.assertEqual(sorted(m["t"] for m in got.values()), ["error"] * 2 + ["ready"] * 4)

                # Losing the peer gives back all it held.
                peer.close()
                deadline = time.time() + 20
                while True:
                    peer = Peer(node.wire_port)
                    try:
                        peer.open(300)
                        if peer.answers({300}, timeout=10)[300]["t"] == "ready":
                            break
                    except (AssertionError, queue.Empty):
                        pass  # the node had not yet seen the old connection go
                    peer.close()
                    self.assertLess(time.time(), deadline, "a lost peer's requests still count")
                    time.sleep(0.3)
                again = set(range(301, 300 + LIMIT))
                for rid in sorted(again):
                    peer.open(rid)
                got = peer.answers(again)
                self.assertTrue(all(m["t"] == "ready" for m in got.values()),
                                [m.get("message") for m in got.values() if m["t"] != "ready"][:3])
            finally:
                if peer:
                    peer.close()
                node.stop()

    def test_a_peer_cannot_make_a_node_load_range_after_range(self):
        # Each layer range is a shard of its own in memory: 4 per peer.
        with cluster.with_home() as home:
            store_model(home)
            node = cluster.start_cluster(home, [("victim", 8000)], allow_paths=False)[0]
            peer = Peer(node.wire_port)
            try:
                for stop in range(1, 6):
                    peer.open(stop, stop=stop)
                got = peer.answers(set(range(1, 6)))
                self.assertEqual([got[r]["t"] for r in range(1, 6)], ["ready"] * 4 + ["error"])
                self.assertIn("peer mallory has 4 layer ranges loaded on this node (the limit)", got[5]["message"])
                peer.open(6, stop=2)  # one it holds already
                self.assertEqual(peer.answers({6})[6]["t"], "ready")
                self.assertEqual(node.request("GET", "/healthcheck")[0], 200)
            finally:
                peer.close()
                node.stop()


class StoreNames(unittest.TestCase):
    def test_peers_are_told_the_store_name_not_the_clients_path(self):
        with cluster.with_home() as home, tempfile.TemporaryDirectory() as store_a, \
                tempfile.TemporaryDirectory() as store_b:
            path_a = store_model(store_a)
            store_model(store_b)
            nodes = cluster.start_cluster(home, [("asker", 8000), ("helper", 8000)], allow_paths=False,
                                          envs=[{"EXO_HOME": store_a}, {"EXO_HOME": store_b}])
            try:
                # The asker's own path to the file, first (a loaded model keeps the
                # name it was first asked by): the helper's store is elsewhere.
                by_path = cluster.chat(nodes[0], path_a, "Say hello.", max_tokens=8)
                by_name = cluster.chat(nodes[0], "tiny-chat.gguf", "Say hello.", max_tokens=8)
                self.assertEqual(by_path, by_name)
                self.assertNotIn(store_a, cluster.log_of(nodes[1]))
            finally:
                for n in nodes:
                    n.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
