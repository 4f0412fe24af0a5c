"""test_peers_file.py: a cluster configured by peers files follows edits to them, without restarts.

Real nodes with manual discovery (--discovery-config-path), each reading its own file, as devices
configured by hand do. Editing the files (written aside and renamed over, as editors save) adds a
node: every node sees it and the plan grows to span it; editing it out again removes it: its
live connections close, it is not gossiped back, and the plan shrinks, all in the same processes.
Files in the shape docs/cluster.md shows (addresses and ports, no device_capabilities) split the
model by the memory each node reports at hello, in proportion (test_cluster checks the two-node
case with measured memory).

Run: build/venv/bin/python tests/cluster/test_peers_file.py   (ctest runs it)
"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# test_cluster's node helpers, not its tests
from test_cluster import Node, TINY_CHAT, chat, free_port, wait_for_topology, with_home  # noqa: E402


def write_bare(path, ports):
    """A peers file with addresses and ports only ({id: port}), replaced atomically."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump({"peers": {nid: {"address": "127.0.0.1", "port": port} for nid, port in ports.items()}}, f)
    os.rename(tmp, path)


def topology(node):
    return json.loads(node.request("GET", "/v1/topology")[1])


def ids(node):
    return sorted(n["id"] for n in topology(node)["nodes"])


def plan(node):
    return [(p["node_id"], p["start_layer"], p["end_layer"]) for p in topology(node)["partitions"]
            if p["model"] == TINY_CHAT]


class Edits(unittest.TestCase):
    def start(self, home, node_id, ports, *flags):
        path = os.path.join(home, node_id + ".json")
        write_bare(path, ports)
        node = Node("--node-id", node_id, "--discovery-config-path", path, "--node-host", "127.0.0.1",
                    "--peer-timeout", "2", *flags)
        node.node_id, node.peers_file = node_id, path
        self.addCleanup(node.stop)  # stop() fails the test if the node died on the way
        return node

    def test_an_edit_adds_a_peer_and_another_removes_it(self):
        with with_home() as home:
            p = {n: free_port() for n in ("a", "b", "c")}
            a = self.start(home, "a", {"a": p["a"], "b": p["b"]})
            b = self.start(home, "b", {"a": p["a"], "b": p["b"]})
            c = self.start(home, "c", {"c": p["c"]})
            pids = [n.proc.pid for n in (a, b, c)]
            wait_for_topology([a, b], 2, timeout=15)
            self.assertEqual(ids(c), ["c"])
            want = chat(a, TINY_CHAT, "Say hello.", max_tokens=8)
            self.assertEqual(sorted(e[0] for e in plan(a)), ["a", "b"])

            # c joins: every file lists all three.
            for n in (a, b, c):
                write_bare(n.peers_file, p)
            wait_for_topology([a, b, c], 3, timeout=20)
            self.assertEqual(chat(a, TINY_CHAT, "Say hello.", max_tokens=8), want)
            self.assertEqual(sorted(e[0] for e in plan(a)), ["a", "b", "c"])
            self.assertEqual(chat(c, TINY_CHAT, "Say hello.", max_tokens=8), want)

            # c leaves: a and b no longer list it, and c lists only itself.
            write_bare(a.peers_file, {"a": p["a"], "b": p["b"]})
            write_bare(b.peers_file, {"a": p["a"], "b": p["b"]})
            write_bare(c.peers_file, {"c": p["c"]})
            wait_for_topology([a, b], 2, timeout=20)
            wait_for_topology([c], 1, timeout=20)
            # It stays out: no redial, nobody gossips it back (several polls and backoffs later). c
            # does not knock again either: a and b refused it, so the addresses it learned from
            # them are forgotten (were it to redial, each hello would flap them into its view).
            joins = self.log(c).count("peer a connected") + self.log(c).count("peer b connected")
            time.sleep(4)
            self.assertEqual(self.log(c).count("peer a connected") + self.log(c).count("peer b connected"), joins)
            self.assertEqual(ids(a), ["a", "b"])
            self.assertEqual(ids(b), ["a", "b"])
            self.assertEqual(ids(c), ["c"])
            self.assertEqual(chat(b, TINY_CHAT, "Say hello.", max_tokens=8), want)
            self.assertEqual(sorted(e[0] for e in plan(b)), ["a", "b"])
            self.assertEqual(chat(c, TINY_CHAT, "Say hello.", max_tokens=8), want)  # alone, the whole model
            self.assertEqual(plan(c), [("c", 0, 6)])
            self.assertIn("removed from the peers file", self.log(a))
            # Listed again, it comes back.
            for n in (a, b, c):
                write_bare(n.peers_file, p)
            wait_for_topology([a, b, c], 3, timeout=20)
            self.assertEqual([n.proc.pid for n in (a, b, c)], pids)  # never restarted

    def log(self, node):
        node.log.seek(0)
        text = node.log.read().decode()
        node.log.seek(0, 2)
        return text

    def test_a_file_without_capabilities_splits_by_reported_memory(self):
        with with_home() as home:
            p = {n: free_port() for n in ("big", "mid", "small")}
            memory = {"big": 12000, "mid": 6000, "small": 3000}
            nodes = [self.start(home, n, p, "--device-memory", str(memory[n])) for n in ("small", "big", "mid")]
            wait_for_topology(nodes, 3, timeout=20)
            for n in nodes:
                reported = {x["id"]: x["capabilities"].get("memory") for x in topology(n)["nodes"]}
                self.assertEqual(reported, memory, n.node_id)
            self.assertTrue(chat(nodes[0], TINY_CHAT, "Say hello.", max_tokens=4))
            got = plan(nodes[0])
            # By memory, descending; the shares follow it (6 layers: 12000:6000:3000 of 21000).
            self.assertEqual([e[0] for e in got], ["big", "mid", "small"])
            sizes = [e[2] - e[1] for e in got]
            self.assertGreater(sizes[0], sizes[2])
            self.assertGreaterEqual(sizes[0], sizes[1])
            self.assertGreaterEqual(sizes[1], sizes[2])
            for n in nodes[1:]:
                chat(n, TINY_CHAT, "Say hello.", max_tokens=4)
                self.assertEqual(plan(n), got, n.node_id)


if __name__ == "__main__":
    unittest.main(verbosity=2)
