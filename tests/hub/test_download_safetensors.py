"""test_download_safetensors.py: a hub repository in safetensors layout (issue 16).

The fake hub (tests/hub/fake_hub.py) serves a tiny model's Hugging Face
folder (config.json, tokenizer files, three .safetensors shards and their
index, written by exo-gguf-to-safetensors from a tiny GGUF with a real
tokenizer) and no GGUF. `exo pull org/name` fetches the folder and
`exo run org/name` answers the GGUF's greedy text; a layer-range pull
(exo.download.pull with opts.layers, as a ring member asks for its shard)
fetches only the shard files the index names for those layers, which the
hub's request log shows.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fake_hub import FakeHub  # noqa: E402

ROOT = os.environ.get("EXO_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
EXO = os.environ.get("EXO_BINARY", os.path.join(ROOT, "build", "exo"))
BUILD = os.path.dirname(EXO)
REPO = "test-org/Tiny-HF"
SHARDS = ["model-%05d-of-00003.safetensors" % i for i in (1, 2, 3)]
ARGS = ["--prompt", "hello", "--max-tokens", "8", "--temperature", "0"]


def tokenizer_source():
    """A GGUF with a byte-level BPE vocabulary (the default model's, else a tiny one's)."""
    found = sorted(glob.glob(os.path.expanduser("~/.cache/exo/downloads/smollm2-135m/*.gguf")))
    return found[0] if found else os.path.join(BUILD, "tiny-chat.gguf")


class SafetensorsHubTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.TemporaryDirectory()
        cls.gguf = os.path.join(cls.work.name, "m.gguf")
        folder = os.path.join(cls.work.name, "hf")
        subprocess.run([os.path.join(BUILD, "exo-make-tiny-model"), cls.gguf, "--tokenizer-from", tokenizer_source(),
                        "--tied", "0", "--layers", "3", "--type", "f32", "--embd-type", "f32"], check=True,
                       capture_output=True)
        subprocess.run([os.path.join(BUILD, "exo-gguf-to-safetensors"), cls.gguf, folder, "--shards", "3"],
                       check=True, capture_output=True)
        cls.files = {}
        for name in os.listdir(folder):
            with open(os.path.join(folder, name), "rb") as f:
                cls.files[name] = f.read()
        for need in SHARDS + ["config.json", "tokenizer.json", "model.safetensors.index.json"]:
            assert need in cls.files, "exo-gguf-to-safetensors wrote no " + need
        cls.files["README.md"] = b"# tiny\n"
        p = subprocess.run([EXO, "run", cls.gguf] + ARGS, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        cls.want = p.stdout.decode()

    @classmethod
    def tearDownClass(cls):
        cls.work.cleanup()

    def setUp(self):
        self.hub = FakeHub().start()
        self.hub.add_repo(REPO, self.files)
        self.home = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.hub.stop()
        self.home.cleanup()

    def env(self):
        env = dict(os.environ, EXO_HOME=self.home.name, HF_ENDPOINT=self.hub.url,
                   HF_HOME=os.path.join(self.home.name, "hf"), EXO_DOWNLOAD_BACKOFF="0.1")
        for k in ("HF_TOKEN", "EXO_OFFLINE", "HF_HUB_OFFLINE"):
            env.pop(k, None)
        return env

    def exo(self, *args):
        p = subprocess.run([EXO] + list(args), capture_output=True, env=self.env(), timeout=180)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def fetched(self):
        """Names of the files whose bytes the hub sent (resolve of small files, the CDN for LFS ones)."""
        out = set()
        for r in self.hub.requests():
            if r["method"] == "GET" and ("/resolve/" in r["path"] or r["path"].startswith("/cdn/")):
                out.add(r["path"].rsplit("/", 1)[1])
        return out

    def test_pull_then_run_answers_as_the_gguf(self):
        rc, out, err = self.exo("pull", REPO)
        self.assertEqual(rc, 0, err)
        folder = os.path.join(self.home.name, "downloads", REPO.replace("/", "--"))
        for name in SHARDS + ["config.json", "tokenizer.json", "tokenizer_config.json",
                              "model.safetensors.index.json"]:
            with open(os.path.join(folder, name), "rb") as f:
                self.assertEqual(f.read(), self.files[name], name)
        self.assertFalse(os.path.exists(os.path.join(folder, "README.md")))
        self.assertNotIn("README.md", self.fetched())
        # `exo show` on the folder: its files' bytes, not the folder entry's own size.
        rc, out, err = self.exo("show", REPO)
        self.assertEqual(rc, 0, err)
        total = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        self.assertIn("(%d bytes)" % total, out)
        rc, out, err = self.exo("run", REPO, *ARGS)
        self.assertEqual(rc, 0, err)
        self.assertTrue(self.want.strip())
        self.assertEqual(out, self.want)

    def lua(self, code):
        script = os.path.join(self.home.name, "t.lua")
        with open(script, "w") as f:
            f.write(code)
        return self.exo("lua", script)

    def range_pull(self, first, last):
        return self.lua('local d = require "exo.download"\n'
                        'local path, err = d.run_blocking(d.pull, "%s", { layers = { %d, %d } })\n'
                        'if not path then io.stderr:write(tostring(err) .. "\\n"); os.exit(1) end\n'
                        'print(path)\n' % (REPO, first, last))

    def test_layer_range_fetches_only_its_shards(self):
        wm = json.loads(self.files["model.safetensors.index.json"])["weight_map"]
        # What the converter put where (the test's premise): layer 1 lies in shard 2 only, the
        # embedding in shard 1, the head in shard 3.
        self.assertEqual({v for k, v in wm.items() if k.startswith("model.layers.1.")}, {SHARDS[1]})
        self.assertEqual(wm["model.embed_tokens.weight"], SHARDS[0])
        self.assertEqual(wm["lm_head.weight"], SHARDS[2])
        rc, out, err = self.range_pull(1, 2)
        self.assertEqual(rc, 0, err)
        folder = out.strip()
        got = self.fetched()
        self.assertIn(SHARDS[1], got)
        self.assertNotIn(SHARDS[0], got)
        self.assertNotIn(SHARDS[2], got)
        self.assertTrue({"config.json", "tokenizer.json", "model.safetensors.index.json"} <= got, got)
        self.assertEqual(sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")), [SHARDS[1]])
        # The folder opens for that range without the other shards' files.
        rc, out, err = self.lua('local native = require "exo.native"\n'
                                'local s = assert(native.load_shard("%s", { start = 1, stop = 2 }))\n'
                                'print("layers", s.n_layers or "?")\n' % folder)
        self.assertEqual(rc, 0, err)
        # The first range then takes the embedding's file and layer 0's, nothing already here.
        self.hub.clear_log()
        rc, out, err = self.range_pull(0, 1)
        self.assertEqual(rc, 0, err)
        self.assertEqual({f for f in self.fetched() if f.endswith(".safetensors")}, {SHARDS[0]})
        # The last range (an untied head) takes the head's file, not the embedding's, and opens.
        rc, out, err = self.lua('local native = require "exo.native"\n'
                                'local d = require "exo.download"\n'
                                'local idx = io.open("%s/model.safetensors.index.json"):read("*a")\n'
                                'local need = d.safetensors_needs(idx, 2, 3)\n'
                                'for f in pairs(need) do print(f) end\n' % folder)
        self.assertEqual(rc, 0, err)
        self.assertEqual(set(out.split()), {f for k, f in wm.items() if k.startswith("model.layers.2.")} | {SHARDS[2]})
        self.assertNotIn(SHARDS[0], out)
        # A whole pull completes the folder with the rest only, and it runs.
        self.hub.clear_log()
        rc, out, err = self.exo("pull", REPO)
        self.assertEqual(rc, 0, err)
        self.assertEqual({f for f in self.fetched() if f.endswith(".safetensors")}, {SHARDS[2]})
        rc, out, err = self.exo("run", REPO, *ARGS)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, self.want)


if __name__ == "__main__":
    unittest.main(verbosity=2)
