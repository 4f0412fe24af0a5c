"""test_failover.py: a stream that survives a dying node, and a plan that follows the cluster.

Real exo processes on loopback, each with its own EXO_HOME, configured by one peers file with
equal memories (so a 6-layer model is split across all of them). A long greedy stream is asked of
one node; the node in the middle of the plan is killed (SIGKILL, then SIGSTOP past the peer
timeout) after the first tokens: the stream must complete with the text of an undisturbed run,
as must a seeded sampled one (the last node's random state travels on). A fourth node joining
grows the plan and requests keep succeeding; a killed asker's routes are freed on the other
nodes; a second process with a live node's id stops with a clear message; a node whose view
differs refuses a plan with a plan id error and the asker retries.

Run: build/venv/bin/python tests/cluster/test_failover.py   (ctest runs it)
"""

import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as cluster  # noqa: E402  (its node helpers, not its tests)
from test_api import EXO  # noqa: E402
from test_discovery import topology, wait_until  # noqa: E402

MODEL = cluster.TINY_CHAT
PROMPT = "Tell me a long story about the sea."
TOKENS = 160


def body(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": TOKENS,
            "temperature": 0, **extra}


def answer(node, **extra):
    status, raw, _ = node.request("POST", "/v1/chat/completions", body(**extra))
    if status != 200:
        raise AssertionError("status %d: %s" % (status, raw[:300]))
    return json.loads(raw)["choices"][0]["message"]["content"]


class Stream:
    """A streaming chat request read event by event."""

    def __init__(self, node, **extra):
        self.conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body(stream=True, **extra)),
                          {"Content-Type": "application/json"})
        self.res = self.conn.getresponse()
        assert self.res.status == 200, self.res.status
        self.text, self.errors, self.done, self.times = [], [], False, []

    def read(self, n=None):
        """Reads events until n text pieces came (None: to the end)."""
        while not self.done and (n is None or len(self.text) < n):
            line = self.res.readline()
            if not line:
                break
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                self.done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                self.errors.append(event["error"])
                continue
            piece = event["choices"][0].get("delta", {}).get("content")
            if piece:
                self.text.append(piece)
                self.times.append(time.time())
        return "".join(self.text)

    def close(self):
        self.conn.close()


class Failover(unittest.TestCase):
    """Nodes a, b, c (and d, joining later) with one peers file; each test starts its own."""

    def setUp(self):
        self.home = tempfile.TemporaryDirectory()
        self.ports = {nid: cluster.free_port() for nid in ("a", "b", "c", "d")}
        self.peers = os.path.join(self.home.name, "peers.json")
        cluster.write_peers(self.peers, [(nid, port, 4000) for nid, port in self.ports.items()])
        self.nodes = {}

    def tearDown(self):
        for n in self.nodes.values():
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.proc.terminate()
                n.proc.wait(10)
        self.home.cleanup()

    def start(self, nid, *flags, peer_timeout=2):
        env = {"EXO_HOME": os.path.join(self.home.name, nid)}
        node = cluster.Node("--node-id", nid, "--discovery-config-path", self.peers, "--node-host", "127.0.0.1",
                            "--peer-timeout", str(peer_timeout), *flags, env=env)
        node.node_id = nid
        self.nodes[nid] = node
        return node

    def start_three(self):
        nodes = [self.start(nid) for nid in ("a", "b", "c")]
        cluster.wait_for_topology(nodes, 3)
        return nodes

    def plan(self, node):
        """The plan's node ids, in ring order, once the node has served the model."""
        parts = [p for p in topology(node)["partitions"] if p["model"] == MODEL or p["model"].endswith(".gguf")]
        return [p["node_id"] for p in sorted(parts, key=lambda p: p["start_layer"])]

    def asker_and_middle(self):
        """Asks a once (so the model is loaded and planned), and names the node in the middle of the plan."""
        a = self.nodes["a"]
        reference = answer(a)
        plan = self.plan(a)
        self.assertEqual(len(plan), 3, plan)
        middle = plan[1] if plan[1] != "a" else plan[0]
        return a, self.nodes[middle], reference

    def survive(self, stop, **extra):
        """A stream from a, the middle node stopped after its first tokens: the stream goes on."""
        a, victim, _ = self.asker_and_middle()
        reference = answer(a, **extra)
        self.assertGreater(len(reference), 40)
        stream = Stream(a, **extra)
        before = stream.read(8)
        t_kill = time.time()
        stop(victim)
        text = stream.read()
        stream.close()
        self.assertEqual(stream.errors, [])
        self.assertTrue(stream.done)
        self.assertTrue(text.startswith(before))
        self.assertEqual(text, reference)
        # The longest pause is the failure's detection and the re-plan; the log and /v1/topology say so.
        gaps = [t2 - t1 for t1, t2 in zip(stream.times, stream.times[1:])]
        after = [t for t in stream.times if t > t_kill]
        print("  %s: pause %.2f s, first token %.2f s after the stop" % (
            stop.__name__, max(gaps), after[0] - t_kill if after else -1), file=sys.stderr)
        topo = topology(a)
        me = [n for n in topo["nodes"] if n["id"] == "a"][0]
        self.assertGreaterEqual(me["ring"]["replans"], 1)
        texts = [e["text"] for e in topo["events"]]
        replanned = [t for t in texts if "re-planned" in t and victim.node_id in t]
        self.assertEqual(len(replanned), 1, texts)
        # It happened mid-stream: after some of the tokens, not all.
        after = int(re.search(r"after (\d+) tokens", replanned[0]).group(1))
        self.assertTrue(0 < after < TOKENS, replanned[0])
        self.assertTrue(any("lost peer " + victim.node_id in t for t in texts), texts)
        self.assertEqual(len(self.plan(a)), 2)
        return a, victim

    def test_sigkill_mid_stream(self):
        self.start_three()
        a, victim = self.survive(lambda n: n.proc.send_signal(signal.SIGKILL))
        victim.proc.wait()
        # Requests keep succeeding on the two left.
        self.assertEqual(answer(a, max_tokens=20), answer(self.nodes["c"], max_tokens=20))

    def test_seeded_sampling_continues_its_own_random_stream(self):
        self.start_three()
        a, _ = self.survive(lambda n: n.proc.send_signal(signal.SIGKILL), temperature=0.9, seed=1234)
        # Sampled indeed: another seed, another text.
        self.assertNotEqual(answer(a, temperature=0.9, seed=1234), answer(a, temperature=0.9, seed=99))

    def test_speculative_request_goes_on_plainly(self):
        # The asker drafts with the model's first layers; the verify passes go round the ring.
        draft = ["--enable-speculative", "--draft-model", MODEL + ":layers=0-2", "--draft-tokens", "3"]
        nodes = [self.start("a", *draft), self.start("b"), self.start("c")]
        cluster.wait_for_topology(nodes, 3)
        a, _ = self.survive(lambda n: n.proc.send_signal(signal.SIGKILL))
        # Before the death the request was speculative indeed.
        status, raw, _ = a.request("POST", "/v1/chat/completions", body(max_tokens=24))
        self.assertEqual(status, 200, raw)
        self.assertGreater(json.loads(raw)["usage"]["speculative"]["drafted"], 0)

    def test_sigstop_past_the_peer_timeout(self):
        self.start_three()

        def sigstop(n):
            n.proc.send_signal(signal.SIGSTOP)
        a, victim = self.survive(sigstop)
        # Woken, it rejoins cleanly with the same id.
        victim.proc.send_signal(signal.SIGCONT)
        cluster.wait_for_topology([a, victim], 3, timeout=30)
        answer(a, max_tokens=20)
        wait_until(lambda: len(self.plan(a)) == 3, what="the plan to take b back")

    def test_concurrent_streams_from_two_askers_all_survive(self):
        self.start_three()
        a, victim, reference = self.asker_and_middle()
        askers = [n for n in self.nodes.values() if n is not victim]
        streams = [Stream(n) for n in askers for _ in range(2)]
        for st in streams:
            st.read(4)
        victim.proc.send_signal(signal.SIGKILL)
        with concurrent.futures.ThreadPoolExecutor(len(streams)) as pool:
            texts = list(pool.map(lambda st: st.read(), streams))
        for st, text in zip(streams, texts):
            st.close()
            self.assertEqual(st.errors, [])
            self.assertEqual(text, reference)
        replans = [x["ring"]["replans"] for n in askers for x in topology(n)["nodes"] if x["id"] == n.node_id]
        self.assertGreaterEqual(sum(replans), 2, replans)

    def test_views_that_differ_are_retried_until_they_agree(self):
        # a drops a silent b after 2 s, c only after 8: a's new plan (without b) is refused by c,
        # whose view still has b, until c drops it too; then the stream goes on.
        a = self.start("a")
        b = self.start("b")
        c = self.start("c", peer_timeout=8)
        cluster.wait_for_topology([a, b, c], 3)
        reference = answer(a)
        self.assertEqual(self.plan(a), ["c", "b", "a"])
        stream = Stream(a)
        stream.read(8)
        b.proc.send_signal(signal.SIGSTOP)
        text = stream.read()
        stream.close()
        self.assertEqual(stream.errors, [])
        self.assertEqual(text, reference)
        texts = [e["text"] for e in topology(a)["events"]]
        refused = [t for t in texts if "trying again" in t]
        self.assertGreaterEqual(len(refused), 1, texts)
        self.assertIn("node c: its view (3 nodes: a, b, c) gives plan", refused[0])

    def test_a_fourth_node_grows_the_plan(self):
        a, b, c = self.start_three()
        first = answer(a)
        self.assertEqual(len(self.plan(a)), 3)
        d = self.start("d")
        cluster.wait_for_topology([a, b, c, d], 4)
        # The plan has four nodes now, and the answer has not changed.
        self.assertEqual(answer(a), first)
        self.assertEqual(len(self.plan(a)), 4)
        self.assertEqual(answer(d), first)
        texts = [e["text"] for e in topology(a)["events"]]
        self.assertTrue(any(t.startswith("plan for") and "peer d connected" in t for t in texts), texts)
        # a loaded its range of the new plan as the plan changed, before the request came.
        self.assertTrue(any(t.startswith("loaded layers") and "for the new plan" in t for t in texts), texts)
        # Every node computes the same plan id from the same view.
        ids = {p["plan_id"] for n in (a, b, c, d) for p in topology(n)["partitions"]}
        self.assertEqual(len(ids), 1, ids)

    def test_the_asker_dying_frees_its_routes(self):
        a, b, c = self.start_three()
        answer(b, max_tokens=4)
        stream = Stream(b, max_tokens=100000)
        stream.read(4)

        def held_for_b(n):
            me = [x for x in topology(n)["nodes"] if x["id"] == n.node_id][0]
            return (me["ring"].get("routes_by_asker") or {}).get("b", 0)
        self.assertGreaterEqual(held_for_b(a), 1)
        self.assertGreaterEqual(held_for_b(c), 1)
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        stream.close()
        for n in (a, c):
            wait_until(lambda n=n: held_for_b(n) == 0, timeout=10, what="%s to free b's routes" % n.node_id)
            me = [x for x in topology(n)["nodes"] if x["id"] == n.node_id][0]
            self.assertEqual(me["ring"]["routes"], 0)

    def test_no_partition_left_is_a_clear_error(self):
        # A policy that wants three nodes: with one dead, no partition of the two left holds the model.
        policy = os.path.join(self.home.name, "three.lua")
        with open(policy, "w") as f:
            # test_cluster's even split by sorted id, refusing fewer than three nodes.
            f.write(cluster.POLICY_REVERSED.replace("  table.sort(ids)\n", "  table.sort(ids)\n"
                    "  if #ids < 3 then return nil, 'this policy needs three nodes' end\n"))
        nodes = [self.start(nid, "--partitioning", policy) for nid in ("a", "b", "c")]
        cluster.wait_for_topology(nodes, 3)
        a, b = nodes[0], nodes[1]
        answer(a, max_tokens=4)
        stream = Stream(a, max_tokens=100000)
        stream.read(4)
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        stream.read()
        stream.close()
        self.assertEqual(len(stream.errors), 1, stream.errors)
        message = json.dumps(stream.errors[0])
        self.assertIn("node b left mid-request", message)
        self.assertIn("this policy needs three nodes", message)

    def test_two_processes_with_one_id(self):
        a, b, c = self.start_three()
        log = tempfile.TemporaryFile()
        env = dict(os.environ, EXO_HOME=os.path.join(self.home.name, "b2"))
        second = subprocess.Popen([EXO, "--chatgpt-api-port", str(cluster.free_port()), "--api-host", "127.0.0.1",
                                   "--node-id", "b", "--discovery-config-path", self.peers, "--node-host",
                                   "127.0.0.1", "--node-port", str(cluster.free_port())],
                                  stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
            raise AssertionError("the second process with id b did not stop")
        log.seek(0)
        text = log.read().decode()
        log.close()
        self.assertIn("duplicate node id b", text)
        self.assertEqual(text.count("this node stops"), 1, text)
        # The first b serves on; the others said it once each.
        cluster.wait_for_topology([a, b, c], 3, timeout=5)
        for n in (a, c):
            self.assertLessEqual(cluster.log_of(n).count("two nodes claim id b"), 1)
        answer(a, max_tokens=8)


if __name__ == "__main__":
    unittest.main(verbosity=2)
