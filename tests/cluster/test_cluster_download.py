"""test_cluster_download.py: downloads across the cluster (issue 16).

Real exo processes on loopback, each with its own EXO_HOME and EXO_OFFLINE=1
(no hub: peers are the only source), only one of them holding the catalogue
model "tiny" (exo-make-tiny-model's chat model, through $EXO_HOME/models.lua;
the node helpers are test_share.py's). What is checked:

- a chat request naming the model on a node that lacks it: that node fetches
  the model from its peer, the plan's members fetch theirs when the ring's
  open names it, and the answer equals one node's holding the whole model;
- POST /download on one node starts it on every node of the model's plan
  (all three; two when the entry's layer count gives a plan of two), and that
  node's /v1/download/progress lists them, keyed by node id, until complete;
- a download that fails before it starts (offline, no peer holds the model)
  is listed as failed with its message, on its own node and on the asker's;
- a ring member that cannot get the model answers the asker's open with an
  error naming the node and why (the chat fails with it, no hang);
- a member's fetch longer than the asker's open timeout (shortened to 2 s by
  EXO_RING_OPEN_TIMEOUT; a raw peer holding the model makes the fetch wait 4 s)
  succeeds, kept alive by the member's "fetching" messages (EXO_FETCH_KEEPALIVE
  0.5 s), and fails with the timeout when they come too seldom (the control);
  meanwhile the asker's /v1/download/progress lists the member's fetch (in
  progress, then complete), and a node asked for a model it lacks lists its
  own fetch while it runs. Fetches that never end: test_fetch_bound.py.

Run: build/venv/bin/python tests/cluster/test_cluster_download.py   (ctest runs it)
"""

import json
import os
import shutil
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as cluster  # noqa: E402  (its node helpers, not its tests)
import test_share as share  # noqa: E402

PROMPT = share.PROMPT


def progress(node):
    return json.loads(node.request("GET", "/v1/download/progress")[1])


def wait_progress(node, ids, timeout=60):
    """Polls node's progress until every id in ids has ended; returns the last answer."""
    deadline = time.time() + timeout
    last = {}
    while time.time() < deadline:
        last = progress(node)
        if all(i in last and last[i]["status"] in ("complete", "failed") for i in ids):
            return last
        time.sleep(0.1)
    raise AssertionError("the downloads did not all end: %r" % last)


class ClusterDownload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(share.TINY, "rb") as f:
            cls.data = f.read()
        cls.digest = share.sha256(share.TINY)
        cls.reference = share.reference_answer()

    def run_nodes(self, holders, check, env=None, prepare=None):
        """Three nodes n1..n3 (n1 holds the most memory); holders[i]: whether node i has the model;
        prepare(homes) runs before they start."""
        homes = [share.make_home(h) for h in holders]
        if prepare:
            prepare(homes)
        nodes = share.start_nodes([("n1", 12000, homes[0]), ("n2", 3000, homes[1]), ("n3", 1000, homes[2])],
                                  env=env)
        try:
            check(nodes, homes)
        finally:
            for n in nodes:
                n.stop()
            for h in homes:
                shutil.rmtree(h)

    def assert_has_model(self, home):
        self.assertEqual(share.sha256(share.model_file(home)), self.digest)
        self.assertFalse(os.path.exists(share.model_file(home) + ".partial"))

    def test_chat_fetches_what_the_plan_needs(self):
        def check(nodes, homes):
            # n2 is asked; n1 alone holds the model; n3 learns of it from the open.
            self.assertFalse(os.path.exists(share.model_file(homes[1])))
            self.assertEqual(cluster.chat(nodes[1], "tiny", PROMPT), self.reference)
            for h in homes:
                self.assert_has_model(h)
            # The plan used all three nodes (each holds a part).
            plan = json.loads(nodes[1].request("GET", "/v1/topology")[1])
            self.assertEqual(len(plan["nodes"]), 3)
            # And again, now every store holds it: the same answer.
            self.assertEqual(cluster.chat(nodes[2], "tiny", PROMPT), self.reference)
        self.run_nodes([True, False, False], check)

    def test_download_starts_on_every_node(self):
        def check(nodes, homes):
            status, raw, _ = nodes[1].request("POST", "/download", {"model": "tiny"})
            self.assertEqual(status, 200, raw)
            self.assertIn("2 peers", json.loads(raw)["message"])
            ev = wait_progress(nodes[1], ["n1", "n2", "n3"])
            self.assertEqual(sorted(ev), ["n1", "n2", "n3"])
            for nid in ("n1", "n2", "n3"):
                self.assertEqual(ev[nid]["status"], "complete", ev[nid])
                self.assertEqual(ev[nid]["model"], "tiny")
                self.assertEqual(ev[nid]["downloaded_bytes"], len(self.data), ev[nid])
            self.assertEqual(ev["n1"]["source"], "store")  # it had the model already
            self.assertTrue(ev["n2"]["source"].startswith("peer "), ev["n2"])
            self.assertTrue(ev["n3"]["source"].startswith("peer "), ev["n3"])
            for h in homes:
                self.assert_has_model(h)
        self.run_nodes([True, False, False], check)

    def test_download_starts_on_the_plans_nodes(self):
        # An entry that gives a layer count and size is planned before a byte is here:
        # two layers over memories 12000/3000/1000 MB give n1 layer 0 and the last
        # node, n3, layer 1 (n2's share rounds to no layer), so n2 is not told.
        entry = 'return { tiny = { file = "tiny-chat.gguf", n_layers = 2, size = %d } }\n' % len(self.data)

        def prepare(homes):
            for h in homes:
                with open(os.path.join(h, "models.lua"), "w") as f:
                    f.write(entry)

        def check(nodes, homes):
            status, raw, _ = nodes[0].request("POST", "/download", {"model": "tiny"})
            self.assertEqual(status, 200, raw)
            self.assertIn("and 1 peer", json.loads(raw)["message"])
            ev = wait_progress(nodes[0], ["n1", "n3"])
            self.assertEqual(sorted(ev), ["n1", "n3"])
            self.assertEqual(ev["n3"]["status"], "complete", ev["n3"])
            self.assertEqual(ev["n3"]["source"], "peer n1", ev["n3"])
            self.assert_has_model(homes[2])
            self.assertFalse(os.path.exists(share.model_file(homes[1])))
        self.run_nodes([True, False, False], check, prepare=prepare)

    def test_offline_failure_is_listed(self):
        # One node alone: the download fails before it starts, and says why: offline
        # (its entry names a hub repository), or an entry without one.
        for entry, why in (('return { tiny = { repo = "test-org/Tiny-GGUF", quants = { Q4_K_M = "tiny-chat.gguf" } } }\n',
                            "downloads are off (EXO_OFFLINE=1)"),
                           (None, "names no hub repository")):
            home = share.make_home(False)
            if entry:
                with open(os.path.join(home, "models.lua"), "w") as f:
                    f.write(entry)
            n = share.start_nodes([("solo", 4000, home)])[0]
            try:
                self.assertEqual(progress(n), {})
                ev = share.pull(n)
                self.assertEqual(ev["status"], "failed", ev)
                self.assertIn(why, ev["error"])
                self.assertEqual(ev["model"], "tiny")
                self.assertEqual(ev["total_files"], 0)
            finally:
                n.stop()
                shutil.rmtree(home)

        # Three nodes, none holds it: each node's failure reaches the asker.
        def check(nodes, homes):
            self.assertEqual(nodes[0].request("POST", "/download", {"model": "tiny"})[0], 200)
            ev = wait_progress(nodes[0], ["n1", "n2", "n3"])
            for nid in ("n1", "n2", "n3"):
                self.assertEqual(ev[nid]["status"], "failed", ev[nid])
                self.assertIn("no peer has it either", ev[nid]["error"])
        self.run_nodes([False, False, False], check)

        # A node whose catalogue lacks the model says so.
        def unknown_on_n3(homes):
            with open(os.path.join(homes[2], "models.lua"), "w") as f:
                f.write("return {}\n")

        def check_unknown(nodes, homes):
            self.assertEqual(nodes[0].request("POST", "/download", {"model": "tiny"})[0], 200)
            ev = wait_progress(nodes[0], ["n1", "n2", "n3"])
            self.assertEqual(ev["n2"]["status"], "complete", ev["n2"])
            self.assertEqual(ev["n3"]["status"], "failed", ev["n3"])
            self.assertEqual(ev["n3"]["error"], "node n3 does not know model 'tiny'")
        self.run_nodes([True, False, False], check_unknown, prepare=unknown_on_n3)

    def test_long_fetch_keeps_the_open_alive(self):
        # The asker waits 2 s for an answer to an open (EXO_RING_OPEN_TIMEOUT); n2's
        # fetch takes over 4 s, as a raw peer holding the model says share_wait and
        # answers only then. The member's "fetching" every 0.5 s keeps the open alive.
        def check(nodes, homes, env):
            self.assertEqual(cluster.chat(nodes[0], "tiny", PROMPT), self.reference)
            self.assert_has_model(homes[1])
        self.two_nodes_and_a_slow_holder(check, {"EXO_RING_OPEN_TIMEOUT": "2", "EXO_FETCH_KEEPALIVE": "0.5"})

    def test_long_fetch_without_keepalive_times_out(self):
        # The control: the same with the keepalive slower than the open's timeout.
        def check(nodes, homes, env):
            status, raw, _ = nodes[0].request("POST", "/v1/chat/completions", {
                "model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})
            self.assertNotEqual(status, 200, raw)
            self.assertIn("no answer from the ring for 2 s", raw.decode() if isinstance(raw, bytes) else raw)
            time.sleep(2.5)  # the raw peers answer at 4 s: not on a socket the test closed
        self.two_nodes_and_a_slow_holder(check, {"EXO_RING_OPEN_TIMEOUT": "2", "EXO_FETCH_KEEPALIVE": "30"})

    def chat_watching(self, asker, watched):
        """A chat on asker while polling its progress for node watched: (answer, events seen)."""
        out, seen = {}, []
        t = threading.Thread(target=lambda: out.update(answer=cluster.chat(asker, "tiny", PROMPT)))
        t.start()
        while t.is_alive():
            ev = progress(asker).get(watched)
            if ev:
                seen.append(ev)
            time.sleep(0.1)
        t.join()
        running = [e for e in seen if e["status"] == "in_progress"]
        self.assertTrue(running, seen)
        self.assertEqual((running[0]["model"], running[0]["source"]), ("tiny", "request"))
        return out.get("answer"), seen

    def test_long_fetch_is_listed_on_the_asker(self):
        # The same fetch, seen from n1 (the asker): its /v1/download/progress lists n2's
        # fetch as in progress while the chat waits (from n2's "fetching" answers), then
        # complete once n2 answered the open.
        def check(nodes, homes, env):
            answer, _ = self.chat_watching(nodes[0], "n2")
            self.assertEqual(answer, self.reference)
            final = progress(nodes[0])["n2"]
            self.assertEqual((final["status"], final["model"]), ("complete", "tiny"), final)
            self.assert_has_model(homes[1])
        self.two_nodes_and_a_slow_holder(check, {"EXO_FETCH_KEEPALIVE": "0.5"})

    def test_askers_own_fetch_is_listed(self):
        # Asked on n2, which lacks the model: n2 fetches it before it plans, and lists
        # that download under its own id while it runs, with its bytes once they come.
        def check(nodes, homes, env):
            answer, seen = self.chat_watching(nodes[1], "n2")
            self.assertEqual(answer, self.reference)
            self.assertTrue(all(e["source"] == "request" for e in seen), seen)
            self.assert_has_model(homes[1])
        self.two_nodes_and_a_slow_holder(check, {})

    def two_nodes_and_a_slow_holder(self, check, env):
        homes = [share.make_home(True), share.make_home(False)]
        nodes = share.start_nodes([("n1", 1000, homes[0]), ("n2", 12000, homes[1])], env=env)
        slow = [share.RawPeer(n.wire_port, "slow", share.holder(self.data, answer_after=4)) for n in nodes]
        try:
            for n in nodes:
                share.wait_peers(n, 3)
            check(nodes, homes, env)
        finally:
            for p in slow:
                p.close()
            for n in nodes:
                n.stop()
            for h in homes:
                shutil.rmtree(h)

    def test_member_that_cannot_fetch_says_why(self):
        # n1 and n2 hold the model; n3's model folder is a plain file, so the bytes
        # a peer offers have nowhere to go: the asker's open fails naming n3.
        def prepare(homes):
            with open(share.model_file(homes[2]).rsplit("/", 1)[0], "w") as f:
                f.write("not a folder")

        def check(nodes, homes):
            status, raw, _ = nodes[0].request("POST", "/v1/chat/completions", {
                "model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})
            text = raw.decode() if isinstance(raw, bytes) else raw
            self.assertNotEqual(status, 200, text)
            self.assertIn("node n3", text)
            self.assertIn("cannot get model 'tiny'", text)
            self.assertIn("from peers", text)
        self.run_nodes([True, True, False], check, prepare=prepare)


if __name__ == "__main__":
    unittest.main(verbosity=2)
