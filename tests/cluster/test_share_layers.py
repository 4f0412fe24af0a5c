"""test_share_layers.py: ring members fetch only their layers, and peers resume transfers (issue 16).

Real exo processes on loopback, each with its own EXO_HOME and EXO_OFFLINE=1
(no hub: peers are the only source; node helpers are test_share.py's).

- Layers: a tiny model's Hugging Face folder (config.json, tokenizer files,
  three .safetensors shards and their index, written by
  exo-gguf-to-safetensors from a 3-layer GGUF; layer N lies in shard N+1,
  the embedding in shard 1, the untied head in shard 3) sits in one node's
  store as the hub repository test-org/Tiny-HF, as `exo pull` leaves it. A
  chat naming that hub id on it runs over three nodes of equal memory (a
  layer each): the two others fetch the repository from it when the ring's
  open names it, each only the shard files the index names for its own
  layers, plus config and tokenizer files (asserted per store), the last
  one too (its text side opens a folder missing the other ranges' shards),
  and the answer equals one node's holding the whole folder. The same with the
  repository as one GGUF (test-org/Tiny-GGUF:FILE): each member fetches the
  file whole.
- Resume: a raw wire peer (docs/wire.md's frames) claiming the model sends
  the first MiB of it and hangs up; a real exo node holding the model then
  serves the rest from where the partial ends: its wire sent fewer bytes
  than the file holds, and the fetched file has the right SHA-256. A
  partial holding other bytes (left by an earlier try) fails the resumed
  file's hash: the holder is not blamed for it and sends the file whole.
- A holder's list is not taken whole: only the model's own files are
  asked for, and a claimed size past the free disk is refused up front.
- Trust: download.ensure fetches a hub repository from the hub (a local
  fake of its routes) only for a peer that proved the cluster key; a
  client's hub id and an open cluster's peer's never reach it.

Run: build/venv/bin/python tests/cluster/test_share_layers.py   (ctest runs it)
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as cluster  # noqa: E402  (its node helpers, not its tests)
import test_share as share  # noqa: E402

BUILD = os.path.join(cluster.ROOT, "build")
HF_REPO, HF_FOLDER = "test-org/Tiny-HF", "test-org--Tiny-HF"
GGUF_REPO, GGUF_FOLDER, GGUF_FILE = "test-org/Tiny-GGUF", "test-org--Tiny-GGUF", "tiny-chat.gguf"
SHARDS = ["model-%05d-of-00003.safetensors" % i for i in (1, 2, 3)]
SIDE = {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"}


def tokenizer_source():
    """A GGUF with a byte-level BPE vocabulary (the default model's, else the tiny chat model's)."""
    found = sorted(glob.glob(os.path.expanduser("~/.cache/exo/downloads/smollm2-135m/*.gguf")))
    return found[0] if found else share.TINY


def make_home(folder=None, name=None):
    """An EXO_HOME whose store holds folder (copied as downloads/name) or nothing."""
    home = tempfile.mkdtemp(prefix="exo-layers-")
    os.makedirs(os.path.join(home, "downloads"))
    if folder:
        shutil.copytree(folder, os.path.join(home, "downloads", name))
    return home


def store_files(home, name):
    folder = os.path.join(home, "downloads", name)
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def needs(tensor, start, end):
    """Whether the layer range [start, end) of the 3-layer model needs tensor (an HF name)."""
    if tensor.startswith("model.layers."):
        return start <= int(tensor.split(".")[2]) < end
    if tensor.startswith("model.embed_tokens."):
        return start == 0
    return end == 3  # the final norm and the untied head


def topology(node):
    return json.loads(node.request("GET", "/v1/topology")[1])


class ShareLayers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="exo-layers-src-")
        gguf = os.path.join(cls.work, "m.gguf")
        cls.hf = os.path.join(cls.work, "hf")
        subprocess.run([os.path.join(BUILD, "exo-make-tiny-model"), gguf, "--tokenizer-from", tokenizer_source(),
                        "--tied", "0", "--layers", "3", "--type", "f32", "--embd-type", "f32"], check=True,
                       capture_output=True)
        subprocess.run([os.path.join(BUILD, "exo-gguf-to-safetensors"), gguf, cls.hf, "--shards", "3"],
                       check=True, capture_output=True)
        with open(os.path.join(cls.hf, "model.safetensors.index.json")) as f:
            wm = json.load(f)["weight_map"]
        # The test's premise: a middle range needs one shard, so a member's store shows what it skipped.
        assert {v for k, v in wm.items() if k.startswith("model.layers.1.")} == {SHARDS[1]}, wm
        cls.weight_map = wm
        cls.gguf_dir = os.path.join(cls.work, "gguf")
        os.makedirs(cls.gguf_dir)
        shutil.copy(share.TINY, os.path.join(cls.gguf_dir, GGUF_FILE))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work)

    def reference(self, folder, name, model):
        home = make_home(folder, name)
        ref = cluster.Node("--node-id", "ref", allow_paths=False, env={"EXO_HOME": home, "EXO_OFFLINE": "1"})
        try:
            return cluster.chat(ref, model, share.PROMPT)
        finally:
            ref.stop()
            shutil.rmtree(home)

    def ring_of_three(self, folder, name, model, check, holder_last=False):
        """n1 holds folder as downloads/name; n1..n3 answer a chat naming model on n1, n1 with the
        first layers (the most memory) or, holder_last, the last ones; check(homes, ranges) then
        looks at the stores (ranges: node id -> (start, end))."""
        want = self.reference(folder, name, model)
        homes = [make_home(folder, name), make_home(), make_home()]
        memory = [2000, 3000, 5000] if holder_last else [5000, 3000, 2000]
        nodes = share.start_nodes([("n%d" % (i + 1), memory[i], homes[i]) for i in range(3)])
        try:
            self.assertEqual(cluster.chat(nodes[0], model, share.PROMPT), want)
            parts = [p for p in topology(nodes[0])["partitions"] if p["model"] == model]
            ranges = {p["node_id"]: (p["start_layer"], p["end_layer"]) for p in parts}
            # A layer or more each, together all of them.
            self.assertEqual(len(ranges), 3, parts)
            bounds = sorted(ranges.values())
            self.assertEqual([b[0] for b in bounds[1:]], [b[1] for b in bounds[:-1]], parts)
            self.assertEqual((bounds[0][0], bounds[-1][1]), (0, parts[0]["n_layers"]), parts)
            check(homes, ranges)
            # The members answer again from what they fetched.
            self.assertEqual(cluster.chat(nodes[0], model, share.PROMPT), want)
        finally:
            for n in nodes:
                n.stop()
            for h in homes:
                shutil.rmtree(h)

    def check_layer_files(self, homes, ranges):
        self.assertEqual(store_files(homes[0], HF_FOLDER), set(os.listdir(self.hf)))
        for i, home in enumerate(homes[1:], 2):
            start, end = ranges["n%d" % i]
            files = store_files(home, HF_FOLDER)
            # The shards holding its layers, the first range's the embedding too, the last
            # range's the final norm and the head.
            want = {f for k, f in self.weight_map.items() if needs(k, start, end)}
            self.assertLess(len(want), len(SHARDS), (i, start, end))
            self.assertEqual({f for f in files if f.endswith(".safetensors")}, want, (i, files))
            self.assertTrue(SIDE <= files, files)
            self.assertFalse([f for f in files if f.endswith(".partial")], files)
            for f in files:
                with open(os.path.join(home, "downloads", HF_FOLDER, f), "rb") as a, \
                        open(os.path.join(self.hf, f), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f)

    def test_members_fetch_only_their_layers_files(self):
        # n3 the first layers (the embedding's shard), n2 the middle one, n1 (the holder) the last.
        def check(homes, ranges):
            self.assertEqual(ranges["n1"][1], 3, ranges)
            self.check_layer_files(homes, ranges)
        self.ring_of_three(self.hf, HF_FOLDER, HF_REPO, check, holder_last=True)

    def test_last_member_fetches_only_its_layers_files(self):
        # n1 (the holder) the first layers, n2 the middle one (its shard only), n3 the last (its shards only).
        def check(homes, ranges):
            self.assertEqual(ranges["n3"][1], 3, ranges)
            self.check_layer_files(homes, ranges)
        self.ring_of_three(self.hf, HF_FOLDER, HF_REPO, check)

    def test_members_fetch_a_hub_gguf_whole(self):
        def check(homes, _):
            for home in homes[1:]:
                self.assertEqual(store_files(home, GGUF_FOLDER), {GGUF_FILE})
                self.assertEqual(share.sha256(os.path.join(home, "downloads", GGUF_FOLDER, GGUF_FILE)),
                                 share.sha256(share.TINY))
        self.ring_of_three(self.gguf_dir, GGUF_FOLDER, GGUF_REPO + ":" + GGUF_FILE, check)

    def test_resume_from_a_real_holder(self):
        with open(share.TINY, "rb") as f:
            data = f.read()
        cut_at = 1 << 20
        self.assertGreater(len(data), 2 * cut_at)
        homes = [share.make_home(False), share.make_home(True)]
        nodes = share.start_nodes([("fetcher", 4000, homes[0]), ("z-holder", 4000, homes[1])])
        fetcher, holder = nodes
        # "a-cut" sorts before "z-holder": the fetcher asks it first.
        cut = share.RawPeer(fetcher.wire_port, "a-cut", share.holder(data, "cut", cut_at))
        try:
            share.wait_peers(fetcher, 3)

            def sent():
                me = [n for n in topology(holder)["nodes"] if n["id"] == "z-holder"][0]
                return me["wire"]["bytes_sent"]
            before = sent()
            ev = share.pull(fetcher)
            self.assertEqual(ev["status"], "complete", ev)
            self.assertEqual(ev["source"], "peer z-holder", ev)
            self.assertEqual(share.sha256(share.model_file(homes[0])), share.sha256(share.TINY))
            self.assertFalse(os.path.exists(share.model_file(homes[0]) + ".partial"))
            self.assertEqual([g["offset"] for g in cut.gets], [0])
            # The holder sent the rest only: at least the bytes after the cut, fewer than the file.
            delta = sent() - before
            self.assertGreaterEqual(delta, len(data) - cut_at)
            self.assertLess(delta, len(data))
        finally:
            cut.close()
            for n in nodes:
                n.stop()
            for h in homes:
                shutil.rmtree(h)

    def test_stale_partial_is_not_the_holders_fault(self):
        # A partial an earlier try left with other bytes (another version of the file): the resumed
        # transfer fails its hash, the partial is deleted, and the same holder sends it whole; it is
        # still asked next time (a holder blamed for our partial would be skipped from then on).
        homes = [share.make_home(False), share.make_home(True)]
        os.makedirs(os.path.join(homes[0], "downloads", "tiny"))
        with open(share.model_file(homes[0]) + ".partial", "wb") as f:
            f.write(b"\x5a" * (1 << 20))
        nodes = share.start_nodes([("fetcher", 4000, homes[0]), ("z-holder", 4000, homes[1])])
        fetcher = nodes[0]
        try:
            for _ in range(2):
                ev = share.pull(fetcher)
                self.assertEqual(ev["status"], "complete", ev)
                self.assertEqual(ev["source"], "peer z-holder", ev)
                self.assertEqual(share.sha256(share.model_file(homes[0])), share.sha256(share.TINY))
                self.assertEqual(fetcher.request("DELETE", "/models/tiny")[0], 200)
        finally:
            for n in nodes:
                n.stop()
            for h in homes:
                shutil.rmtree(h)

    def raw_holder(self, files, check):
        """A real node without the model and a raw wire peer whose share_have lists files
        ({path: bytes}, served honestly when asked); check(node, home, peer) once it is seen."""
        def on_control(peer, msg):
            if msg.get("t") == "share_ask":
                peer.control({"t": "share_have", "id": msg["id"], "name": msg["name"], "files": [
                    {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in files.items()]})
            elif msg.get("t") == "share_get":
                data = files[msg["path"]]
                for at in range(msg["offset"], len(data), 256 << 10):
                    peer.chunk(msg["id"], at, data[at:at + (256 << 10)])
        home = share.make_home(False)
        node = share.start_nodes([("fetcher", 4000, home)])[0]
        peer = share.RawPeer(node.wire_port, "raw", on_control)
        try:
            share.wait_peers(node, 2)
            check(node, home, peer)
        finally:
            peer.close()
            node.stop()
            shutil.rmtree(home)

    def test_only_the_models_files_are_taken(self):
        # A holder listing more than the model's file: only the catalogue entry's file is asked for.
        with open(share.TINY, "rb") as f:
            data = f.read()

        def check(node, home, peer):
            ev = share.pull(node)
            self.assertEqual(ev["status"], "complete", ev)
            self.assertEqual([g["path"] for g in peer.gets], ["tiny/tiny-chat.gguf"])
            self.assertEqual(os.listdir(os.path.join(home, "downloads", "tiny")), ["tiny-chat.gguf"])
        self.raw_holder({"tiny/tiny-chat.gguf": data, "tiny/other.gguf": b"x" * 1000, "tiny/notes.txt": b"hi"},
                        check)

    def test_no_room_for_a_holders_claim(self):
        # A size past the free disk is refused before any byte is asked for.
        def check(node, home, peer):
            def on_control(p, msg):
                if msg.get("t") == "share_ask":
                    p.control({"t": "share_have", "id": msg["id"], "name": msg["name"], "files": [
                        {"path": "tiny/tiny-chat.gguf", "size": 2 ** 52, "sha256": "ab" * 32}]})
            peer.on_control = on_control
            ev = share.pull(node)
            self.assertEqual(ev["status"], "failed", ev)
            self.assertIn("not enough disk space", ev["error"])
            self.assertEqual(peer.gets, [])
            self.assertFalse(os.path.exists(share.model_file(home) + ".partial"))
        self.raw_holder({}, check)

    def test_who_may_make_a_node_fetch_a_hub_repository(self):
        # download.ensure, as a ring member calls it, against the fake hub: a client's hub id
        # (no opts.hub) and a peer's in an open cluster ("peers") never reach the hub; a peer that
        # proved the cluster key ("hub") makes the node download it.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hub"))
        from fake_hub import FakeHub
        hub = FakeHub().start()
        with open(share.TINY, "rb") as f:
            hub.add_repo(GGUF_REPO, {GGUF_FILE: f.read()})
        home = make_home()
        script = os.path.join(home, "t.lua")
        with open(script, "w") as f:
            f.write('local d = require "exo.download"\n'
                    'for _, hub in ipairs { "none", "peers", "hub" } do\n'
                    '  local path, err = d.run_blocking(d.ensure, "%s:%s", nil,\n'
                    '    { hub = hub ~= "none" and hub or nil })\n'
                    '  print(hub, path ~= nil, err)\n'
                    'end\n' % (GGUF_REPO, GGUF_FILE))
        env = dict(os.environ, EXO_HOME=home, HF_ENDPOINT=hub.url, HF_HOME=os.path.join(home, "hf"),
                   EXO_DISCOVERY_MODULE="none")
        for k in ("HF_TOKEN", "EXO_OFFLINE", "HF_HUB_OFFLINE"):
            env.pop(k, None)
        try:
            p = subprocess.run([os.path.join(BUILD, "exo"), "lua", script], capture_output=True, env=env,
                               timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr.decode())
            lines = p.stdout.decode().splitlines()
            self.assertEqual([line.split("\t")[:2] for line in lines],
                             [["none", "false"], ["peers", "false"], ["hub", "true"]], lines)
            self.assertIn("peers only", lines[1])
            # Only the last one listed the repository and fetched the file.
            self.assertEqual(len(hub.requests("/api/models/")), 1)
            self.assertEqual(share.sha256(os.path.join(home, "downloads", GGUF_FOLDER, GGUF_FILE)),
                             share.sha256(share.TINY))
        finally:
            hub.stop()
            shutil.rmtree(home)


if __name__ == "__main__":
    unittest.main(verbosity=2)
