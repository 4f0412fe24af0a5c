"""test_cluster.py: three real exo processes serving one model together on loopback.

The nodes are configured only by a peers file (manual discovery) that gives
them different memories, so the default partitioning policy hands them
different layer ranges. Every node must answer exactly as a single node does
(greedy, and seeded sampling: the asker's settings travel with the request),
show the same complete plan at /v1/topology, hold in memory only its shard,
serve six concurrent requests correctly, shrug off malformed frames on its
wire port, and carry a stream on when a peer dies under it (test_failover.py
holds that to an undisturbed run's text).

Run: build/venv/bin/python tests/cluster/test_cluster.py   (ctest runs it)
"""

import concurrent.futures
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "api"))
from test_api import Node as ApiNode, assert_follows_llama_cpp, free_port  # noqa: E402  (the same real-process helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.environ.get("EXO_DEFAULT_MODEL", os.path.expanduser(
    "~/.cache/exo/downloads/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"))
TINY = os.environ.get("EXO_TINY_MODEL", os.path.join(ROOT, "build", "tiny.gguf"))
TINY_CHAT = TINY[:-len(".gguf")] + "-chat.gguf"
GEMMA = os.path.join(os.environ.get("EXO_HOME") or os.path.expanduser("~/.cache/exo"), "downloads", "gemma3-270m",
                     "gemma-3-270m-q4_k_m.gguf")

# A cluster key in the environment running the tests would key every node.
os.environ.pop("EXO_CLUSTER_KEY", None)

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Count from one to ten.",
           "Name three colours.", "Why is the sky blue?", "Say hello in Spanish."]


def write_peers(path, nodes):
    peers = {}
    for node_id, port, memory in nodes:
        peers[node_id] = {"address": "127.0.0.1", "port": port, "device_capabilities": {
            "model": "test machine", "chip": "loopback", "memory": memory,
            "flops": {"fp32": 1.0, "fp16": 1.0, "int8": 2.0}}}
    with open(path, "w") as f:
        json.dump({"peers": peers}, f)


def chat(node, model, prompt, max_tokens=24, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, **extra}
    status, raw, _ = node.request("POST", "/v1/chat/completions", body)
    if status != 200:
        raise AssertionError("status %d: %s" % (status, raw[:300]))
    return json.loads(raw)["choices"][0]["message"]["content"]


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0


def wait_for_topology(nodes, count, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(len(json.loads(n.request("GET", "/v1/topology")[1])["nodes"]) == count for n in nodes):
            return
        time.sleep(0.1)
    raise AssertionError("the nodes did not all see %d nodes" % count)


def Node(*flags, allow_paths=True, **kw):
    """A real node. These tests name model files outside each node's temporary
    store (the build's tiny models, the default model's file), as the operator
    may: so --allow-model-paths unless allow_paths is False."""
    return ApiNode(*(("--allow-model-paths",) if allow_paths else ()), *flags, **kw)


def start_cluster(home, specs, *flags, allow_paths=True, envs=None, wait=True):
    """specs: [(node_id, memory_mb)]; envs: an environment to add for each
    node; wait: until every node sees all of them. Returns the nodes, in order."""
    ports = [free_port() for _ in specs]
    peers = os.path.join(home, "peers.json")
    write_peers(peers, [(nid, port, mem) for (nid, mem), port in zip(specs, ports)])
    os.environ["EXO_HOME"] = home
    nodes = [Node("--node-id", nid, "--discovery-config-path", peers, "--node-host", "127.0.0.1", *flags,
                  allow_paths=allow_paths, env=env) for (nid, _), env in zip(specs, envs or [None] * len(specs))]
    for n, (nid, _), port in zip(nodes, specs, ports):
        n.node_id = nid
        n.wire_port = port
    if wait:
        wait_for_topology(nodes, len(specs))
    return nodes


class ThreeNodes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.home = tempfile.TemporaryDirectory()
        saved = os.environ.get("EXO_HOME")
        try:
            # One node alone gives the reference answers.
            os.environ["EXO_HOME"] = cls.home.name
            cls.single = Node("--node-id", "single")
            cls.reference = {}
            for model in (TINY_CHAT, DEFAULT_MODEL):
                for p in PROMPTS:
                    cls.reference[(model, p)] = chat(cls.single, model, p)
            cls.single_rss = rss_mb(cls.single.proc.pid)
            # n1 gets most layers, n2 a few, n3 the last two and the head.
            cls.nodes = start_cluster(cls.home.name, [("n1", 12000), ("n2", 3000), ("n3", 1000)])
        finally:
            if saved is None:
                os.environ.pop("EXO_HOME", None)
            else:
                os.environ["EXO_HOME"] = saved

    @classmethod
    def tearDownClass(cls):
        for n in cls.nodes + [cls.single]:
            n.stop()
        cls.home.cleanup()

    def test_greedy_equals_single_node_on_every_node(self):
        for model in (TINY_CHAT, DEFAULT_MODEL):
            for i, node in enumerate(self.nodes):
                for p in PROMPTS[:2]:
                    self.assertEqual(chat(node, model, p), self.reference[(model, p)],
                                     "%s asked of %s: %r" % (os.path.basename(model), node.node_id, p))

    def test_sampling_settings_travel_with_the_request(self):
        # The last node samples; with the asker's seed and temperature it must
        # draw exactly what a single node draws.
        for node in self.nodes:
            got = chat(node, DEFAULT_MODEL, PROMPTS[1], max_tokens=20, temperature=0.9, seed=1234, top_p=0.95)
            want = chat(self.single, DEFAULT_MODEL, PROMPTS[1], max_tokens=20, temperature=0.9, seed=1234,
                        top_p=0.95)
            self.assertEqual(got, want, node.node_id)

    def test_streaming_through_a_node_without_layer_zero(self):
        node = self.nodes[2]
        body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 24,
                "temperature": 0, "stream": True}
        status, raw, _ = node.request("POST", "/v1/chat/completions", body)
        self.assertEqual(status, 200)
        text = ""
        for line in raw.decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                self.assertNotIn("error", chunk)
                text += chunk["choices"][0]["delta"].get("content", "")
        self.assertEqual(text, self.reference[(DEFAULT_MODEL, PROMPTS[0])])

    def test_topology_shows_three_nodes_and_one_complete_plan(self):
        chat(self.nodes[0], DEFAULT_MODEL, PROMPTS[0], max_tokens=1)
        plans = []
        for node in self.nodes:
            topo = json.loads(node.request("GET", "/v1/topology")[1])
            self.assertEqual(sorted(n["id"] for n in topo["nodes"]), ["n1", "n2", "n3"])
            self.assertEqual(topo["answering_node"], node.node_id)
            parts = [p for p in topo["partitions"] if p["model"] == DEFAULT_MODEL]
            self.assertEqual([p["node_id"] for p in parts], ["n1", "n2", "n3"])  # by memory, descending
            self.assertEqual(parts[0]["start_layer"], 0)
            for a, b in zip(parts, parts[1:]):
                self.assertEqual(a["end_layer"], b["start_layer"])
            self.assertEqual(parts[-1]["end_layer"], parts[-1]["n_layers"])
            plans.append([(p["node_id"], p["start_layer"], p["end_layer"]) for p in parts])
        self.assertEqual(plans[0], plans[1])
        self.assertEqual(plans[0], plans[2])
        # memory 12000/16000 of 30 layers: n1 holds [0, 22)
        self.assertEqual(plans[0][0], ("n1", 0, 22))

    def test_memory_follows_the_shard(self):
        for node in self.nodes:
            chat(node, DEFAULT_MODEL, PROMPTS[3], max_tokens=4)
        rss = {n.node_id: rss_mb(n.proc.pid) for n in self.nodes}
        # n1 runs 22 layers, n2 runs 6: their resident weights differ by tens of MB.
        self.assertGreater(rss["n1"] - rss["n2"], 20, rss)
        for node_id, mb in rss.items():
            self.assertLess(mb, self.single_rss, "%s holds %.0f MB, the whole model's node %.0f MB"
                            % (node_id, mb, self.single_rss))

    def test_six_concurrent_requests(self):
        jobs = [(self.nodes[i % 3], PROMPTS[i]) for i in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda j: chat(j[0], DEFAULT_MODEL, j[1]), jobs))
        for (node, prompt), text in zip(jobs, results):
            self.assertEqual(text, self.reference[(DEFAULT_MODEL, prompt)], "%s: %r" % (node.node_id, prompt))

    def wire(self, node, data, read=True):
        """Sends raw bytes to a node's wire port; returns what came back before it closed."""
        with socket.create_connection(("127.0.0.1", node.wire_port), timeout=5) as s:
            s.sendall(data)
            if not read:
                return b""
            out = b""
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    out += b
            except socket.timeout:
                pass
            return out

    def test_malformed_frames_leave_the_node_serving(self):
        def header(ftype, payload_len, version=2, magic=b"EXOW", rid=0):
            return magic + struct.pack("<HBBQII", version, ftype, 0, rid, payload_len, 0)

        hello = json.dumps({"node_id": "stranger", "instance": "x", "port": 1}).encode()
        tensor_hdr = struct.pack("<iIIIII", 0, 0, 2, 576, 0, 0)  # f32 [2][576] ...
        cases = {
            "bad magic": header(2, 2, magic=b"GGUF") + b"{}",
            "wrong version": header(1, 2, version=9) + b"{}",
            "huge length": header(3, 0xFFFFFFF0),
            "unknown type": header(42, 0),
            "control before hello": header(2, 2) + b"{}",
            "truncated payload": header(1, 100) + b"{",
            "wrong shape": header(1, len(hello)) + hello + header(3, len(tensor_hdr) + 8, rid=7) + tensor_hdr
            + b"\0" * 8,
            "garbage hello": header(1, 5) + b"hello",
        }
        node = self.nodes[1]
        for name, data in cases.items():
            back = self.wire(node, data, read=name != "truncated payload")
            if name in ("bad magic", "wrong version", "huge length", "unknown type", "control before hello",
                        "wrong shape"):
                # The node says why, in an ERROR frame after its hello, then hangs up.
                self.assertIn(b"EXOW", back, name)
                frames, off = [], 0
                while off + 24 <= len(back):
                    ftype, plen = back[off + 6], struct.unpack("<I", back[off + 16:off + 20])[0]
                    frames.append((ftype, back[off + 24:off + 24 + plen]))
                    off += 24 + plen
                self.assertEqual(frames[0][0], 1, name)  # its hello
                self.assertEqual(frames[-1][0], 6, "%s: %r" % (name, frames))
        # Still serving, still in the cluster.
        self.assertEqual(chat(node, DEFAULT_MODEL, PROMPTS[0]), self.reference[(DEFAULT_MODEL, PROMPTS[0])])
        wait_for_topology(self.nodes, 3, timeout=5)


class GemmaRing(unittest.TestCase):
    def test_gemma_over_three_nodes_answers_as_llama_cpp_does(self):
        # Gemma 3 270M split over three nodes (18 layers, local and global ones
        # on each) continues Gemma's chat turns as llama.cpp did on the whole
        # file (tests/fixtures/llama_cpp/gemma3-270m/c) up to the first near-tie
        # (test_api's assert_follows_llama_cpp), asked of every node, and every
        # node gives the same answer. (Its own cluster: the memory test above
        # measures the default model alone.)
        with with_home() as home:
            nodes = start_cluster(home, [("g1", 8000), ("g2", 4000), ("g3", 2000)])
            try:
                answers = set()
                for node in nodes:
                    r = chat_full(node, GEMMA, "Write a haiku about the sea.", max_tokens=48, logprobs=True,
                                  top_logprobs=5)
                    self.assertEqual(r["usage"]["prompt_tokens"], 17, "asked of %s" % node.node_id)
                    steps = [(c["token"], c["logprob"], {t["token"]: t["logprob"] for t in c["top_logprobs"]})
                             for c in r["choices"][0]["logprobs"]["content"]]
                    assert_follows_llama_cpp(self, "c", 17, steps)
                    answers.add(r["choices"][0]["message"]["content"])
                self.assertEqual(len(answers), 1, answers)
            finally:
                for n in nodes:
                    n.stop()


class PeerVanishes(unittest.TestCase):
    def test_the_stream_goes_on_when_a_peer_dies(self):
        home = tempfile.TemporaryDirectory()
        saved = os.environ.get("EXO_HOME")
        try:
            a, b = start_cluster(home.name, [("a", 2000), ("b", 2000)])
            # A long stream from a; b (holding the last layers) is killed mid-way:
            # a re-plans (the whole model on itself) and the stream goes on.
            body = {"model": TINY_CHAT, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 400,
                    "temperature": 0, "stream": True}
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            res = conn.getresponse()
            self.assertEqual(res.status, 200)
            res.readline()
            # Frozen at once, then killed: every token needs b, so the stream
            # cannot finish before the death (the tiny model writes its 400
            # tokens in under 0.2 s on a quiet machine).
            b.proc.send_signal(signal.SIGSTOP)
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait()
            t0 = time.time()
            rest = res.read().decode()  # the stream must end, without an error event
            elapsed = time.time() - t0
            conn.close()
            self.assertLess(elapsed, 30)
            self.assertNotIn('"error"', rest)
            self.assertTrue(rest.rstrip().endswith("data: [DONE]"), rest[-300:])
            self.assertIn("re-planned", log_of(a))
            # a keeps serving (alone now: the whole model on itself).
            wait_for_topology([a], 1, timeout=15)
            self.assertTrue(chat(a, TINY_CHAT, "hello") is not None)
            a.stop()
            b.log.close()
        finally:
            if saved is None:
                os.environ.pop("EXO_HOME", None)
            else:
                os.environ["EXO_HOME"] = saved
            home.cleanup()


class with_home:
    """EXO_HOME set to a fresh directory for the nodes started inside."""

    def __enter__(self):
        self.dir = tempfile.TemporaryDirectory()
        self.saved = os.environ.get("EXO_HOME")
        os.environ["EXO_HOME"] = self.dir.name
        return self.dir.name

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("EXO_HOME", None)
        else:
            os.environ["EXO_HOME"] = self.saved
        self.dir.cleanup()


def log_of(node):
    node.log.seek(0)
    return node.log.read().decode(errors="replace")


def chat_full(node, model, prompt, max_tokens=40, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, **extra}
    status, raw, _ = node.request("POST", "/v1/chat/completions", body)
    if status != 200:
        raise AssertionError("status %d: %s" % (status, raw[:300]))
    return json.loads(raw)


class Speculative(unittest.TestCase):
    """Speculative decoding with a self-speculative draft (the default model's
    first 26 layers): greedy answers are exactly the plain greedy answers, on
    one node and with the target split over three; seeded sampled answers over
    three nodes are exactly one node's (the verify rows come back bit for bit)."""

    def test_one_node_and_three(self):
        draft = ["--enable-speculative", "--draft-model", DEFAULT_MODEL + ":layers=0-26", "--draft-tokens", "3"]
        with with_home() as home:
            plain = Node("--node-id", "plain")
            want = {p: chat(plain, DEFAULT_MODEL, p, max_tokens=40) for p in PROMPTS[:3]}
            plain.stop()
            solo = Node("--node-id", "solo", *draft)
            for p in PROMPTS[:3]:
                res = chat_full(solo, DEFAULT_MODEL, p)
                self.assertEqual(res["choices"][0]["message"]["content"], want[p], p)
                sp = res["usage"]["speculative"]
                self.assertGreater(sp["drafted"], 0)
                self.assertLessEqual(sp["accepted"], sp["drafted"])
                self.assertLessEqual(sp["passes"], res["usage"]["completion_tokens"])
            off = chat_full(solo, DEFAULT_MODEL, PROMPTS[0], speculative=False)
            self.assertNotIn("speculative", off["usage"])
            self.assertEqual(off["choices"][0]["message"]["content"], want[PROMPTS[0]])
            # Sampled: the same seed draws the same tokens wherever the target runs.
            sampled = {p: chat_full(solo, DEFAULT_MODEL, p, temperature=0.8, seed=7 + i)
                       for i, p in enumerate(PROMPTS[:2])}
            solo.stop()
            nodes = start_cluster(home, [("n1", 3000), ("n2", 2000), ("n3", 1000)], *draft)
            for node in nodes:
                for p in PROMPTS[:3]:
                    res = chat_full(node, DEFAULT_MODEL, p)
                    self.assertEqual(res["choices"][0]["message"]["content"], want[p], "%s: %r" % (node.node_id, p))
                    self.assertGreater(res["usage"]["speculative"]["passes"], 0)
            # Every draft length over the ring (a request may set its own).
            for g in (1, 2, 4, 8):
                for p in PROMPTS[:2]:
                    res = chat_full(nodes[g % 3], DEFAULT_MODEL, p, draft_tokens=g)
                    self.assertEqual(res["choices"][0]["message"]["content"], want[p], "g=%d: %r" % (g, p))
                    self.assertLessEqual(res["usage"]["speculative"]["drafted"],
                                         g * res["usage"]["speculative"]["passes"])
            for node in nodes:
                for i, p in enumerate(PROMPTS[:2]):
                    res = chat_full(node, DEFAULT_MODEL, p, temperature=0.8, seed=7 + i)
                    self.assertEqual(res["choices"][0]["message"]["content"],
                                     sampled[p]["choices"][0]["message"]["content"], "%s: %r" % (node.node_id, p))
                    self.assertEqual(res["usage"]["speculative"], sampled[p]["usage"]["speculative"])
            for n in nodes:
                n.stop()


def converse(node, model, turns, **extra):
    """A conversation turn by turn; returns [(answer, cached prompt tokens)]."""
    messages, out = [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        body = {"model": model, "messages": messages, "max_tokens": 24, "temperature": 0, **extra}
        status, raw, _ = node.request("POST", "/v1/chat/completions", body)
        if status != 200:
            raise AssertionError("status %d: %s" % (status, raw[:300]))
        res = json.loads(raw)
        answer = res["choices"][0]["message"]["content"]
        out.append((answer, res["usage"]["prompt_tokens_details"]["cached_tokens"]))
        messages.append({"role": "assistant", "content": answer})
    return out


class Conversations(unittest.TestCase):
    def test_the_next_turn_reuses_the_rings_caches(self):
        turns = ["Hi! My name is Ada.", "What is my name?", "Spell it backwards.", "Thanks, bye."]
        draft = ["--enable-speculative", "--draft-model", DEFAULT_MODEL + ":layers=0-26", "--draft-tokens", "3"]
        with with_home() as home:
            single = Node("--node-id", "single")
            want = [a for a, _ in converse(single, DEFAULT_MODEL, turns)]
            single.stop()
            a, b = start_cluster(home, [("a", 2000), ("b", 1000)], *draft)
            for k, extra in enumerate(({"speculative": False}, {}, {"stop": ["e"]})):
                got = converse(a, DEFAULT_MODEL, turns, **extra)
                if k == 0:
                    self.assertEqual(got[0][1], 0)  # a fresh ring holds nothing
                if "stop" not in extra:
                    self.assertEqual([x for x, _ in got], want, extra)
                # Every turn after the first finds most of its prompt in the ring.
                for i, (_, cached) in enumerate(got[1:], 2):
                    self.assertGreater(cached, 20, "turn %d, %s: %d cached" % (i, extra, cached))
            # Two conversations taking turns each keep their own cache.
            convs = [["Hi! My name is Ada.", "What is my name?", "Say it again."],
                     ["Hello, I live in Paris.", "Where do I live?", "Say it again."]]
            history = [[], []]
            for turn in range(3):
                for c in (0, 1):
                    history[c].append({"role": "user", "content": convs[c][turn]})
                    body = {"model": DEFAULT_MODEL, "messages": history[c], "max_tokens": 16, "temperature": 0,
                            "speculative": False}
                    res = json.loads(a.request("POST", "/v1/chat/completions", body)[1])
                    history[c].append({"role": "assistant", "content": res["choices"][0]["message"]["content"]})
                    if turn > 0:
                        cached = res["usage"]["prompt_tokens_details"]["cached_tokens"]
                        self.assertGreater(cached, 30, "conversation %d, turn %d: %d cached" % (c, turn + 1, cached))
            for n in (a, b):
                n.stop()


class LongPrompts(unittest.TestCase):
    def test_a_prompt_in_chunks(self):
        # Prompts go round the ring in chunks (EXO_RING_CHUNK=5 here): plain
        # and speculative answers still equal one node's.
        draft = ["--enable-speculative", "--draft-model", TINY_CHAT + ":layers=0-4", "--draft-tokens", "3"]
        prompt = "tell me a story about the sea and the stars and the wind, in many words"
        with with_home() as home:
            single = Node("--node-id", "single")
            want = chat(single, TINY_CHAT, prompt, max_tokens=30)
            single.stop()
            os.environ["EXO_RING_CHUNK"] = "5"
            try:
                nodes = start_cluster(home, [("a", 2000), ("b", 1000)], *draft)
            finally:
                del os.environ["EXO_RING_CHUNK"]
            for node in nodes:
                self.assertEqual(chat(node, TINY_CHAT, prompt, max_tokens=30, speculative=False), want)
                self.assertEqual(chat(node, TINY_CHAT, prompt, max_tokens=30), want)
            for n in nodes:
                n.stop()


class Identity(unittest.TestCase):
    def test_a_restart_keeps_the_node_id(self):
        with with_home():
            ids = []
            for _ in range(2):
                node = Node()
                topo = json.loads(node.request("GET", "/v1/topology")[1])
                ids.append(topo["answering_node"])
                node.stop()
            self.assertEqual(ids[0], ids[1])
            self.assertRegex(ids[0], r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

    def test_two_nodes_with_one_id_are_reported(self):
        with with_home() as home:
            x, dup = start_cluster(home, [("x", 1000), ("dup", 1000)])
            # A second process claiming "dup", on another port, dials x: x keeps
            # the first, and the second stops with a clear message.
            import subprocess
            from test_api import EXO
            log = tempfile.TemporaryFile()
            impostor = subprocess.Popen([EXO, "--chatgpt-api-port", str(free_port()), "--api-host", "127.0.0.1",
                                         "--node-id", "dup", "--discovery-config-path",
                                         os.path.join(home, "peers.json"), "--node-host", "127.0.0.1",
                                         "--node-port", str(free_port())],
                                        stdout=subprocess.DEVNULL, stderr=log)
            impostor.wait(20)
            self.assertIn("two nodes claim id dup", log_of(x))
            wait_for_topology([x], 2, timeout=5)  # the first "dup" stays
            log.seek(0)
            self.assertIn("duplicate node id dup", log.read().decode())
            for n in (x, dup):
                n.stop()


def start_with_own_file(home, node_id, peers):
    """A node whose peers file lists only `peers` ({id: port}), itself among them."""
    path = os.path.join(home, node_id + ".json")
    write_peers(path, [(nid, port, 1000) for nid, port in peers.items()])
    node = Node("--node-id", node_id, "--discovery-config-path", path, "--node-host", "127.0.0.1",
                "--peer-timeout", "2")
    node.node_id, node.wire_port, node.peers_file = node_id, peers[node_id], path
    return node


class Discovery(unittest.TestCase):
    def test_peers_of_peers_are_found_through_gossip(self):
        # a knows b, c knows b, b knows nobody: all three end up connected.
        with with_home() as home:
            pa, pb, pc = free_port(), free_port(), free_port()
            b = start_with_own_file(home, "b", {"b": pb})
            a = start_with_own_file(home, "a", {"a": pa, "b": pb})
            c = start_with_own_file(home, "c", {"c": pc, "b": pb})
            wait_for_topology([a, b, c], 3, timeout=15)
            for n in (a, b, c):
                n.stop()

    def test_a_peers_file_without_capabilities_still_splits_the_model(self):
        # The shape docs/cluster.md shows: addresses and ports only. Before, the file's empty
        # capabilities replaced what each peer reported at hello ("memory unknown"), and every
        # node ran the whole model alone.
        with with_home() as home:
            pa, pb = free_port(), free_port()
            path = os.path.join(home, "bare.json")
            with open(path, "w") as f:
                json.dump({"peers": {"a": {"address": "127.0.0.1", "port": pa},
                                     "b": {"address": "127.0.0.1", "port": pb}}}, f)
            a = Node("--node-id", "a", "--discovery-config-path", path, "--node-host", "127.0.0.1")
            b = Node("--node-id", "b", "--discovery-config-path", path, "--node-host", "127.0.0.1")
            try:
                wait_for_topology([a, b], 2, timeout=15)
                nodes = json.loads(a.request("GET", "/v1/topology")[1])["nodes"]
                peer = [n for n in nodes if n["id"] == "b"][0]
                self.assertGreater(peer["capabilities"].get("memory", 0), 0, peer)
                self.assertTrue(chat(a, TINY_CHAT, "Say hello.", max_tokens=4))
                parts = json.loads(a.request("GET", "/v1/topology")[1])["partitions"]
                self.assertEqual(sorted(p["node_id"] for p in parts), ["a", "b"])
            finally:
                a.stop()
                b.stop()

    def test_an_edited_peers_file_is_read_again(self):
        with with_home() as home:
            pa, pb = free_port(), free_port()
            a = start_with_own_file(home, "a", {"a": pa})
            b = start_with_own_file(home, "b", {"b": pb})
            time.sleep(0.5)
            wait_for_topology([a, b], 1, timeout=5)
            tmp = a.peers_file + ".new"  # as editors save: write aside, rename over
            write_peers(tmp, [("a", pa, 1000), ("b", pb, 1000)])
            os.rename(tmp, a.peers_file)
            wait_for_topology([a, b], 2, timeout=15)
            for n in (a, b):
                n.stop()

    def test_a_silent_peer_is_dropped_and_rejoins(self):
        # SIGSTOP keeps b's sockets open but it answers nothing: a must not hang
        # on it, and once b runs again the two find each other.
        with with_home() as home:
            pa, pb = free_port(), free_port()
            a = start_with_own_file(home, "a", {"a": pa, "b": pb})
            b = start_with_own_file(home, "b", {"a": pa, "b": pb})
            wait_for_topology([a, b], 2, timeout=15)
            import http.client
            body = {"model": TINY_CHAT, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 400,
                    "temperature": 0, "stream": True}
            conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            res = conn.getresponse()
            res.readline()
            b.proc.send_signal(signal.SIGSTOP)
            t0 = time.time()
            rest = res.read().decode()
            conn.close()
            self.assertLess(time.time() - t0, 30)  # --peer-timeout 2
            # The stream goes on without b (test_failover.py checks its text).
            self.assertNotIn('"error"', rest)
            self.assertIn("stopped answering pings", log_of(a))
            b.proc.send_signal(signal.SIGCONT)
            wait_for_topology([a, b], 2, timeout=20)
            self.assertTrue(chat(b, TINY_CHAT, "hello") is not None)
            for n in (a, b):
                n.stop()

    def test_wait_for_peers(self):
        with with_home():
            node = Node("--wait-for-peers", "1")
            status, raw, _ = node.request("POST", "/v1/chat/completions", {
                "model": TINY_CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            self.assertEqual(status, 503)
            self.assertIn("waiting for peers: 0 of 1", json.loads(raw)["error"]["message"])
            node.stop()


POLICY_REVERSED = """
-- Everything on the node with the smallest id first, whatever the memories.
return function(topology, model)
  local ids = {}
  for id in pairs(topology.nodes) do ids[#ids + 1] = id end
  table.sort(ids)
  local plan, per = {}, math.floor(model.n_layers / #ids)
  for i, id in ipairs(ids) do
    plan[i] = { node_id = id, start_layer = (i - 1) * per, end_layer = i == #ids and model.n_layers or i * per }
  end
  return plan
end
"""

POLICY_GAP = """
return function(topology, model)
  local plan = {}
  for id in pairs(topology.nodes) do plan[#plan + 1] = { node_id = id, start_layer = 1, end_layer = model.n_layers } end
  return plan
end
"""


class Policies(unittest.TestCase):
    def test_a_users_policy_file_decides_the_plan(self):
        with with_home() as home:
            path = os.path.join(home, "policy.lua")
            with open(path, "w") as f:
                f.write(POLICY_REVERSED)
            single = Node("--node-id", "solo")
            want = chat(single, TINY_CHAT, "hello there", max_tokens=30)
            single.stop()
            a, b = start_cluster(home, [("a", 1000), ("b", 9000)], "--partitioning", path)
            self.assertEqual(chat(b, TINY_CHAT, "hello there", max_tokens=30), want)
            parts = json.loads(b.request("GET", "/v1/topology")[1])["partitions"]
            self.assertEqual([(p["node_id"], p["start_layer"], p["end_layer"]) for p in parts],
                             [("a", 0, 3), ("b", 3, 6)])  # not by memory: by id
            a.stop()
            b.stop()

    def test_an_invalid_plan_is_a_clear_error(self):
        with with_home() as home:
            path = os.path.join(home, "gap.lua")
            with open(path, "w") as f:
                f.write(POLICY_GAP)
            a, b = start_cluster(home, [("a", 1000), ("b", 1000)], "--partitioning", path)
            status, raw, _ = a.request("POST", "/v1/chat/completions", {
                "model": TINY_CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            self.assertEqual(status, 500)
            self.assertIn("layer", json.loads(raw)["error"]["message"])
            a.stop()
            b.stop()

    def test_a_missing_policy_file_stops_the_node_at_start(self):
        with with_home():
            with self.assertRaises(RuntimeError) as cm:
                Node("--partitioning", "/nonexistent/policy.lua")
            self.assertIn("/nonexistent/policy.lua", str(cm.exception))


class WireOpenByPath(unittest.TestCase):
    """A peer's `open` names a model as a client does: an id or a file in the
    node's store. Before, {"t": "open", "model": "/etc/passwd"} made the node
    open any file (its answer: "bad magic 'root'")."""

    def open_reply(self, node, model):
        def frame(ftype, payload, rid=0):
            return b"EXOW" + struct.pack("<HBBQII", 2, ftype, 0, rid, len(payload), 0) + payload

        hello = json.dumps({"node_id": "stranger", "instance": "x", "port": 1}).encode()
        op = json.dumps({"t": "open", "model": model, "start": 0, "stop": 2, "n_ctx": 64, "first": "stranger",
                         "prompt": [1, 2], "sampling": {"temperature": 0}, "max_tokens": 1}).encode()
        with socket.create_connection(("127.0.0.1", node.wire_port), timeout=10) as s:
            s.sendall(frame(1, hello) + frame(2, op, rid=5))
            buf = b""
            while True:
                while len(buf) >= 24:
                    ftype, plen = buf[6], struct.unpack("<I", buf[16:20])[0]
                    if len(buf) < 24 + plen:
                        break
                    payload, buf = buf[24:24 + plen], buf[24 + plen:]
                    if ftype == 2:
                        msg = json.loads(payload)
                        if msg.get("t") in ("ready", "error"):
                            return msg
                    elif ftype == 6:
                        return {"t": "closed", "message": payload.decode()}
                b = s.recv(65536)
                if not b:
                    return {"t": "closed", "message": ""}
                buf += b

    def test_a_peer_cannot_open_a_path(self):
        with with_home() as home:
            victim = start_cluster(home, [("victim", 8000)], allow_paths=False)[0]
            try:
                for name in ("/etc/passwd", "/etc/shadow", TINY_CHAT, "../../../../../etc/passwd", "/nonexistent.gguf"):
                    msg = self.open_reply(victim, name)
                    self.assertEqual(msg["t"], "error", name)
                    self.assertIn("unknown model", msg["message"], name)
                    self.assertNotIn("root", msg["message"], name)
                    self.assertNotIn("magic", msg["message"], name)
                self.assertEqual(victim.request("GET", "/healthcheck")[0], 200)
            finally:
                victim.stop()

    def test_allow_model_paths_lets_a_peer_name_a_path(self):
        with with_home() as home:
            node = start_cluster(home, [("trusting", 8000)])[0]
            try:
                # Layers 0-2 are not the whole model: the node loads them, then
                # refuses the plan (a last node without the last layer).
                msg = self.open_reply(node, TINY_CHAT)
                self.assertIn("must hold the last layer", msg.get("message", ""), msg)
            finally:
                node.stop()


KEY = "test-cluster-key-0123456789"
OTHER_KEY = "another-test-key-9876543210"


def write_key_file(home, key):
    fd = os.open(os.path.join(home, "cluster.key"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


def topology(node):
    return json.loads(node.request("GET", "/v1/topology")[1])


class KeyedCluster(unittest.TestCase):
    """Cluster keys (docs/security.md): nodes holding one key form a cluster,
    from whichever source the key comes; a node with another key or none is
    refused, and each side's log says why."""

    SPECS = [("k1", 8000), ("k2", 4000)]

    def assert_one_cluster(self, nodes, source):
        # Both nodes serve one request between them, and say they are keyed.
        answers = [chat(n, TINY_CHAT, "Say hello.", max_tokens=8) for n in nodes]
        self.assertEqual(answers[0], answers[1])
        for n in nodes:
            topo = topology(n)
            self.assertEqual({p["node_id"] for p in topo["partitions"]}, {"k1", "k2"}, topo["partitions"])
            self.assertIs(topo["open_cluster"], False)
            self.assertEqual(topo["gossip_refused"], 0)  # loopback peers gossip loopback addresses
            me = [x for x in topo["nodes"] if x["id"] == n.node_id][0]
            self.assertIs(me["wire"]["keyed"], True)
            self.assertIn("cluster key from " + source, log_of(n))
            self.assertNotIn("open cluster", log_of(n))

    def stop(self, nodes):
        for n in nodes:
            n.stop()

    def test_the_flag_comes_first(self):
        with with_home() as home:
            write_key_file(home, OTHER_KEY)
            nodes = start_cluster(home, self.SPECS, "--cluster-key", KEY,
                                  envs=[{"EXO_CLUSTER_KEY": "yet-another-key-000000"}, None])
            self.assert_one_cluster(nodes, "--cluster-key")
            self.stop(nodes)

    def test_the_environment_comes_before_the_file(self):
        with with_home() as home:
            write_key_file(home, OTHER_KEY)
            nodes = start_cluster(home, self.SPECS, envs=[{"EXO_CLUSTER_KEY": KEY}] * 2)
            self.assert_one_cluster(nodes, "EXO_CLUSTER_KEY")
            self.stop(nodes)

    def test_the_key_file(self):
        with with_home() as home:
            write_key_file(home, "  " + KEY + "  ")  # whitespace around it is dropped
            os.chmod(os.path.join(home, "cluster.key"), 0o640)  # works, but the node says so
            nodes = start_cluster(home, self.SPECS)
            self.assert_one_cluster(nodes, os.path.join(home, "cluster.key"))
            self.assertIn("cluster.key is open to other users of this machine (mode 640)", log_of(nodes[0]))
            self.stop(nodes)

    def assert_apart(self, nodes, reasons):
        """Neither node ever sees the other, and each log says why."""
        deadline = time.time() + 15
        while time.time() < deadline and not all(r in log_of(n) for n, r in zip(nodes, reasons)):
            time.sleep(0.1)
        for n, r in zip(nodes, reasons):
            self.assertIn(r, log_of(n))
        for _ in range(2):  # refused on every redial too
            for n in nodes:
                self.assertEqual([x["id"] for x in topology(n)["nodes"]], [n.node_id])
            time.sleep(1.5)
        self.assertGreater(topology(nodes[0])["nodes"][0]["wire"]["auth_refused"], 0)

    def test_another_key_never_joins(self):
        with with_home() as home:
            nodes = start_cluster(home, self.SPECS, envs=[{"EXO_CLUSTER_KEY": KEY}, {"EXO_CLUSTER_KEY": OTHER_KEY}],
                                  wait=False)
            self.assert_apart(nodes, ["another cluster key", "another cluster key"])
            self.stop(nodes)

    def test_a_node_without_the_key_never_joins(self):
        with with_home() as home:
            keyed, open_node = start_cluster(home, self.SPECS, envs=[{"EXO_CLUSTER_KEY": KEY}, None], wait=False)
            self.assert_apart([keyed, open_node], ["needs its key", "open cluster (no cluster key)"])
            self.assertIs(topology(keyed)["open_cluster"], False)
            self.assertIs(topology(open_node)["open_cluster"], True)
            self.assertIn("warning: open cluster: any device on the network can join", log_of(open_node))
            self.assertIn("exo key", log_of(open_node))
            self.stop([keyed, open_node])


if __name__ == "__main__":
    unittest.main(verbosity=2)
