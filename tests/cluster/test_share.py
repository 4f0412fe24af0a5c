"""test_share.py: peers share model files over the wire (issue 16, "Peers share model files").

Real exo processes on loopback, each with its own EXO_HOME and EXO_OFFLINE=1
(the hub is never touched): only one holds the model (a tiny GGUF made by
exo-make-tiny-model, registered as the catalogue entry "tiny" through
$EXO_HOME/models.lua). The others get it from that node with POST /download,
and the three answer a chat as one node holding the whole model does; the
same with a cluster key. Raw wire peers written from docs/wire.md alone (open
cluster: plain frames) play the parts a real node cannot: one asks for paths
outside the store (refused, no bytes), one lies about its bytes (its file is
rejected, the next holder serves it, and the liar is not asked again), one
is cut off half way (the partial is kept and the next holder, or else the
hub, a local fake of its routes, is asked from where it ends).

Run: build/venv/bin/python tests/cluster/test_share.py   (ctest runs it)
"""

import hashlib
import json
import os
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

HELLO, CONTROL, PING, PONG, ERROR, CHUNK = 1, 2, 4, 5, 6, 8
TINY = os.path.join(cluster.ROOT, "build", "tiny-chat.gguf")
KEY = "share-test-cluster-key-0123456789"
PROMPT = "Say hello."


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_home(with_model):
    home = tempfile.mkdtemp(prefix="exo-share-")
    with open(os.path.join(home, "models.lua"), "w") as f:
        f.write('return { tiny = { file = "tiny-chat.gguf" } }\n')
    os.makedirs(os.path.join(home, "downloads"))
    if with_model:
        os.makedirs(os.path.join(home, "downloads", "tiny"))
        shutil.copy(TINY, os.path.join(home, "downloads", "tiny", "tiny-chat.gguf"))
    return home


def reference_answer():
    """The answer to PROMPT of one node holding the whole model."""
    home = make_home(True)
    ref = cluster.Node("--node-id", "ref", allow_paths=False, env={"EXO_HOME": home, "EXO_OFFLINE": "1"})
    try:
        return cluster.chat(ref, "tiny", PROMPT)
    finally:
        ref.stop()
        shutil.rmtree(home)


def model_file(home):
    return os.path.join(home, "downloads", "tiny", "tiny-chat.gguf")


def pull(node, timeout=60):
    """POST /download for "tiny", then waits for its progress to end; returns the last event."""
    status, raw, _ = node.request("POST", "/download", {"model": "tiny"})
    assert status == 200, raw
    deadline = time.time() + timeout
    while time.time() < deadline:
        # Every node of the cluster downloads too; this node's own entry is under its id.
        ev = json.loads(node.request("GET", "/v1/download/progress")[1]).get(node.node_id)
        if ev and ev["status"] in ("complete", "failed"):
            return ev
        time.sleep(0.1)
    raise AssertionError("the download did not end")


def frame(ftype, payload, rid=0):
    return b"EXOW" + struct.pack("<HBBQII", 2, ftype, 0, rid, len(payload), 0) + payload


class RawPeer:
    """A peer from docs/wire.md: says hello, answers pings, and hands control
    messages to on_control(self, msg); CHUNK frames it receives are kept."""

    def __init__(self, port, node_id, on_control):
        self.node_id = node_id
        self.on_control = on_control
        self.controls, self.chunks, self.gets = [], [], []
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.lock = threading.Lock()
        hello = {"node_id": node_id, "instance": "raw-" + node_id, "port": 1, "address": "127.0.0.1",
                 "version": "test", "capabilities": {}}
        self.send(HELLO, json.dumps(hello).encode())
        self.closed = False
        self.thread = threading.Thread(target=self.read_loop, daemon=True)
        self.thread.start()

    def send(self, ftype, payload):
        with self.lock:
            self.sock.sendall(frame(ftype, payload))

    def control(self, msg):
        self.send(CONTROL, json.dumps(msg).encode())

    def chunk(self, tid, offset, data):
        self.send(CHUNK, struct.pack("<QQ", tid, offset) + data)

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            b = self.sock.recv(n - len(buf))
            if not b:
                raise EOFError
            buf += b
        return buf

    def read_loop(self):
        try:
            while True:
                h = self.recv_exact(24)
                ftype, plen = h[6], struct.unpack_from("<I", h, 16)[0]
                payload = self.recv_exact(plen)
                if ftype == PING:
                    self.send(PONG, payload)
                elif ftype == CONTROL:
                    msg = json.loads(payload)
                    self.controls.append(msg)
                    if msg.get("t") == "share_get":
                        self.gets.append(msg)
                    self.on_control(self, msg)
                elif ftype == CHUNK:
                    self.chunks.append(payload)
        except (EOFError, OSError):
            pass
        self.closed = True

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def holder(data, mode="good", cut_at=0, answer_after=0):
    """on_control for a peer that claims to hold the tiny model's bytes data:
    good serves them, liar sends other bytes, cut sends cut_at of them and
    hangs up; answer_after (s): share_wait at once, the files only then (a
    large file being hashed)."""
    digest = hashlib.sha256(data).hexdigest()

    def on_control(peer, msg):
        if msg.get("t") == "share_ask":
            have = {"t": "share_have", "id": msg["id"], "name": msg["name"],
                    "files": [{"path": "tiny/tiny-chat.gguf", "size": len(data), "sha256": digest}]}
            if answer_after:
                peer.control({"t": "share_wait", "id": msg["id"]})
                threading.Timer(answer_after, peer.control, (have,)).start()
            else:
                peer.control(have)
        elif msg.get("t") == "share_get":
            tid, at = msg["id"], msg["offset"]
            end = cut_at if mode == "cut" else len(data)
            while at < end:
                n = min(256 << 10, end - at)
                body = data[at:at + n] if mode != "liar" else bytes(reversed(data[at:at + n]))
                peer.chunk(tid, at, body)
                at += n
            if mode == "cut":
                peer.close()
    return on_control


def start_nodes(specs, *flags, env=None):
    """specs: [(node_id, memory, home)]; each node its own EXO_HOME, EXO_OFFLINE=1 (env adds to it)."""
    ports = [cluster.free_port() for _ in specs]
    peers = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    cluster.write_peers(peers.name, [(nid, port, mem) for (nid, mem, _), port in zip(specs, ports)])
    nodes = []
    for (nid, _, home), port in zip(specs, ports):
        n = cluster.Node("--node-id", nid, "--discovery-config-path", peers.name, "--node-host", "127.0.0.1",
                         "--node-port", str(port), *flags, allow_paths=False,
                         env=dict({"EXO_HOME": home, "EXO_OFFLINE": "1"}, **(env or {})))
        n.node_id, n.wire_port, n.home = nid, port, home
        nodes.append(n)
    cluster.wait_for_topology(nodes, len(nodes))
    return nodes


def wait_peers(node, count, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(json.loads(node.request("GET", "/v1/topology")[1])["nodes"]) == count:
            return
        time.sleep(0.1)
    raise AssertionError("the node did not see %d nodes" % count)


class Share(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(TINY, "rb") as f:
            cls.data = f.read()
        cls.digest = hashlib.sha256(cls.data).hexdigest()
        cls.reference = reference_answer()

    def three_nodes(self, *flags):
        homes = [make_home(True), make_home(False), make_home(False)]
        nodes = start_nodes([("n1", 12000, homes[0]), ("n2", 3000, homes[1]), ("n3", 1000, homes[2])], *flags)
        try:
            for n in nodes[1:]:
                ev = pull(n)
                self.assertEqual(ev["status"], "complete", ev)
                self.assertEqual(ev["source"], "peer n1", ev)
                self.assertEqual(ev["downloaded_bytes"], len(self.data))
                self.assertEqual(sha256(model_file(n.home)), self.digest)
                self.assertFalse(os.path.exists(model_file(n.home) + ".partial"))
            # Every node runs its part of the model it fetched; the answer is one node's.
            for n in nodes:
                self.assertEqual(cluster.chat(n, "tiny", PROMPT), self.reference)
            plan = json.loads(nodes[0].request("GET", "/v1/topology")[1])
            self.assertEqual(len(plan["nodes"]), 3)
        finally:
            for n in nodes:
                n.stop()
            for h in homes:
                shutil.rmtree(h)

    def test_three_nodes_open(self):
        self.three_nodes()

    def test_three_nodes_keyed(self):
        self.three_nodes("--cluster-key", KEY)

    def test_no_holder_offline(self):
        homes = [make_home(False), make_home(False)]
        nodes = start_nodes([("m1", 4000, homes[0]), ("m2", 4000, homes[1])])
        try:
            ev = pull(nodes[0])
            self.assertEqual(ev["status"], "failed")
            self.assertIn("no peer has it either", ev["error"])
            self.assertFalse(os.path.exists(model_file(homes[0]) + ".partial"))
        finally:
            for n in nodes:
                n.stop()
            for h in homes:
                shutil.rmtree(h)

    def test_paths_outside_the_store_are_refused(self):
        home = make_home(True)
        os.symlink("/etc/passwd", os.path.join(home, "downloads", "tiny", "evil.gguf"))
        with open(os.path.join(home, "secret.gguf"), "w") as f:
            f.write("not for peers")
        n = start_nodes([("holder", 4000, home)])[0]
        prober = RawPeer(n.wire_port, "prober", lambda peer, msg: None)
        try:
            wait_peers(n, 2)
            bad = ["../../etc/passwd", "/etc/passwd", "tiny/../../secret.gguf", "../secret.gguf", "tiny/evil.gguf",
                   "tiny/tiny-chat.gguf.partial", "tiny", 7]
            for i, path in enumerate(bad, 1):
                prober.control({"t": "share_get", "id": i, "path": path, "offset": 0, "size": 13, "credit": 1 << 20})
            # And the model itself, as a peer may: a positive control.
            prober.control({"t": "share_get", "id": 99, "path": "tiny/tiny-chat.gguf", "offset": 0,
                            "size": len(self.data), "credit": 1 << 30})
            deadline = time.time() + 10
            while time.time() < deadline and sum(len(c) - 16 for c in prober.chunks) < len(self.data):
                time.sleep(0.05)
            refused = {m["id"] for m in prober.controls if m.get("t") == "share_refused"}
            self.assertEqual(refused, set(range(1, len(bad) + 1)))
            got = b"".join(c[16:] for c in prober.chunks)
            ids = {struct.unpack_from("<Q", c)[0] for c in prober.chunks}
            self.assertEqual(ids, {99})
            self.assertEqual(got, self.data)
            self.assertTrue(all(len(c) - 16 <= 256 << 10 for c in prober.chunks))
            # A share_ask for a name it lacks is answered with no files.
            prober.control({"t": "share_ask", "id": 5, "name": "../secret"})
            deadline = time.time() + 5
            while time.time() < deadline and not any(m.get("t") == "share_have" for m in prober.controls):
                time.sleep(0.05)
            have = [m for m in prober.controls if m.get("t") == "share_have"]
            self.assertEqual(len(have), 1)
            self.assertNotIn("files", have[0])
        finally:
            prober.close()
            n.stop()
            shutil.rmtree(home)

    def with_raw_holders(self, holders, check, env=None, entry=None):
        """A real node without the model and raw peers [(node_id, on_control)]
        dialing it; check(node, home, peers) runs once it sees them all."""
        home = make_home(False)
        if entry:
            with open(os.path.join(home, "models.lua"), "w") as f:
                f.write(entry)
        n = start_nodes([("fetcher", 4000, home)], env=env)[0]
        peers = [RawPeer(n.wire_port, nid, on_control) for nid, on_control in holders]
        try:
            wait_peers(n, 1 + len(peers))
            check(n, home, peers)
        finally:
            for p in peers:
                p.close()
            n.stop()
            shutil.rmtree(home)

    def test_liar_rejected_then_good_peer(self):
        def check(n, home, peers):
            liar, good = peers
            ev = pull(n)
            self.assertEqual(ev["status"], "complete", ev)
            self.assertEqual(sha256(model_file(home)), self.digest)
            self.assertEqual(len(liar.gets), 1)  # asked first (ids sort), rejected
            self.assertEqual([g["offset"] for g in good.gets], [0])  # its file was deleted: from the start
            # Again, after removing the model: the liar is not asked for it.
            self.assertEqual(n.request("DELETE", "/models/tiny")[0], 200)
            ev = pull(n)
            self.assertEqual(ev["status"], "complete", ev)
            self.assertEqual(len(liar.gets), 1)
            self.assertEqual(len(good.gets), 2)
        self.with_raw_holders([("a-liar", holder(self.data, "liar")), ("b-good", holder(self.data))], check)

    def test_only_a_liar(self):
        def check(n, home, _):
            ev = pull(n)
            self.assertEqual(ev["status"], "failed", ev)
            self.assertIn("hash mismatch", ev["error"])
            self.assertFalse(os.path.exists(model_file(home)))
            self.assertFalse(os.path.exists(model_file(home) + ".partial"))
        self.with_raw_holders([("liar", holder(self.data, "liar"))], check)

    def test_cut_sender_resumes_elsewhere(self):
        cut_at = 1 << 20

        def check(n, home, peers):
            cut, good = peers
            ev = pull(n)
            self.assertEqual(ev["status"], "complete", ev)
            self.assertEqual(sha256(model_file(home)), self.digest)
            self.assertEqual(len(cut.gets), 1)
            # The partial the cut peer left is kept: the next holder continues where it ends.
            self.assertEqual([g["offset"] for g in good.gets], [cut_at])
            self.assertEqual(ev["source"], "peer b-good")
        self.with_raw_holders([("a-cut", holder(self.data, "cut", cut_at)), ("b-good", holder(self.data))], check)

    def test_slow_holder_that_said_wait(self):
        # A holder still hashing past the first 3 s is waited for once it said share_wait.
        def check(n, home, peers):
            ev = pull(n)
            self.assertEqual(ev["status"], "complete", ev)
            self.assertEqual(sha256(model_file(home)), self.digest)
            self.assertEqual(len(peers[0].gets), 1)
        self.with_raw_holders([("slow", holder(self.data, answer_after=4))], check)

    def test_cut_peer_then_hub(self):
        # The only holder vanishes half way: the hub (a local fake of its routes) gets
        # the rest, resuming the partial the peer left with a Range request.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hub"))
        from fake_hub import FakeHub
        hub = FakeHub().start()
        hub.add_repo("test-org/Tiny-GGUF", {"tiny-chat.gguf": self.data})
        cut_at = 1 << 20
        hf_home = tempfile.mkdtemp()  # no token file
        entry = 'return { tiny = { repo = "test-org/Tiny-GGUF", quants = { Q4_K_M = "tiny-chat.gguf" } } }\n'

        def check(n, home, peers):
            ev = pull(n)
            self.assertEqual(ev["status"], "complete", ev)
            self.assertEqual(ev["source"], "hub")
            self.assertEqual(sha256(model_file(home)), self.digest)
            self.assertEqual(len(peers[0].gets), 1)
            gets = [r for r in hub.requests("/cdn/") if r["path"].endswith("/tiny-chat.gguf")]
            self.assertEqual([g["range"] for g in gets], ["bytes=%d-" % cut_at])
        try:
            self.with_raw_holders([("cut", holder(self.data, "cut", cut_at))], check, entry=entry,
                                  env={"EXO_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": hf_home,
                                       "HF_TOKEN": ""})
        finally:
            hub.stop()
            shutil.rmtree(hf_home)


if __name__ == "__main__":
    unittest.main(verbosity=2)
