"""test_ring_batch.py: six clients on a ring of three nodes share tensor frames.

When a node's engine runs one pass for several requests, the hidden states
going to the next node travel as one TENSOR_BATCH frame (docs/wire.md), and
the next node runs that frame's parts as one pass again. Three real nodes
(a peers file gives them different layer ranges) serve six concurrent greedy
clients, two asking each node: every answer must equal what one node alone
answers for that prompt, and the nodes' wire counters (/v1/topology) must
show batch frames sent and received, with no frame refused.

Run: build/venv/bin/python tests/cluster/test_ring_batch.py   (ctest runs it)
"""

import concurrent.futures
import json
import os
import socket
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cluster import DEFAULT_MODEL, PROMPTS, Node, chat, start_cluster, with_home  # noqa: E402


def frame(ftype, payload, rid=0):
    return b"EXOW" + struct.pack("<HBBQII", 2, ftype, 0, rid, len(payload), 0) + payload


def frames_until_closed(port, data):
    """Sends data to a node's wire port; the frames it sent back before hanging up."""
    back = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            back += chunk
    frames, off = [], 0
    while off + 24 <= len(back):
        ftype, plen = back[off + 6], struct.unpack("<I", back[off + 16:off + 20])[0]
        frames.append((ftype, back[off + 24:off + 24 + plen]))
        off += 24 + plen
    return frames


def own_wire(node):
    topo = json.loads(node.request("GET", "/v1/topology")[1])
    return [x for x in topo["nodes"] if x["id"] == node.node_id][0]["wire"]


class SixClientsOnThreeNodes(unittest.TestCase):
    def test_answers_equal_solo_and_frames_carry_several_requests(self):
        with with_home() as home:
            single = Node("--node-id", "single")
            try:
                solo = {p: chat(single, DEFAULT_MODEL, p, max_tokens=32) for p in PROMPTS}
            finally:
                single.stop()
            nodes = start_cluster(home, [("b1", 12000), ("b2", 3000), ("b3", 1000)])
            try:
                self.check_six_clients(nodes, solo)
                self.check_a_bad_batch_is_refused(nodes, solo)
            finally:
                for n in nodes:
                    n.stop()

    def check_six_clients(self, nodes, solo):
        before = {n.node_id: own_wire(n) for n in nodes}
        jobs = [(nodes[i % 3], PROMPTS[i]) for i in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda j: chat(j[0], DEFAULT_MODEL, j[1], max_tokens=32), jobs))
        for (node, prompt), text in zip(jobs, answers):
            self.assertEqual(text, solo[prompt], "asked of %s: %r" % (node.node_id, prompt))
        after = {n.node_id: own_wire(n) for n in nodes}
        sent = sum(after[k]["batch_frames_sent"] - before[k]["batch_frames_sent"] for k in after)
        parts = sum(after[k]["batch_parts_sent"] - before[k]["batch_parts_sent"] for k in after)
        received = sum(after[k]["batch_frames_received"] - before[k]["batch_frames_received"] for k in after)
        self.assertGreater(sent, 0, after)
        self.assertGreaterEqual(parts, 2 * sent, after)  # a batch is only sent for two requests or more
        # Every one is read (a request's last token may still be going round
        # when its answer is back, so some may still be on their way).
        self.assertGreater(received, 0, after)
        self.assertLessEqual(received, sent, after)
        for k, w in after.items():
            self.assertEqual(w["frames_rejected"], 0, k)

    def check_a_bad_batch_is_refused(self, nodes, solo):
        # A stranger's batch naming one request twice: the node says why and
        # hangs up on it, and serves on. Its hello lists the batch frame.
        hello = json.dumps({"node_id": "stranger", "instance": "x", "port": 1}).encode()
        rows = struct.pack("<IIII", 26, 1, 2, 0) + struct.pack("<QiIII", 5, 0, 1, 0, 0) * 2 + b"\0" * 8
        got = frames_until_closed(nodes[1].wire_port, frame(1, hello) + frame(9, rows))
        self.assertEqual(got[0][0], 1, got)
        self.assertEqual(json.loads(got[0][1])["wire_features"], ["tensor_batch"])
        self.assertEqual(got[-1][0], 6, got)
        self.assertIn(b"twice", got[-1][1])
        self.assertGreater(own_wire(nodes[1])["frames_rejected"], 0)
        self.assertEqual(chat(nodes[1], DEFAULT_MODEL, PROMPTS[0], max_tokens=32), solo[PROMPTS[0]])


if __name__ == "__main__":
    unittest.main()
