"""test_download.py: getting models from a hub, end to end (issue 16).

Real `exo` processes download from tests/hub/fake_hub.py (the hub's tree and
resolve routes over a real socket, serving tiny GGUF models that
exo-make-tiny-model wrote) into a temporary EXO_HOME: a full download after
which `exo run` answers, resume after a cut transfer (the retry carries
Range), a hash mismatch rejected and never renamed into place, a truncated
transfer kept as a partial, several files at once (a split GGUF's parts),
HF_ENDPOINT honoured, EXO_OFFLINE=1 touching nothing, 401/404/429 answers,
`exo models --json`, `exo show`, `exo rm`, and the HTTP API's /download,
/v1/download/progress and DELETE /models/{id}.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fake_hub import FakeHub  # noqa: E402

ROOT = os.environ.get("EXO_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
EXO = os.environ.get("EXO_BINARY", os.path.join(ROOT, "build", "exo"))
BUILD = os.path.dirname(EXO)
TINY_CHAT = os.path.join(BUILD, "tiny-chat.gguf")
TINY = os.environ.get("EXO_TINY_MODEL", os.path.join(BUILD, "tiny.gguf"))
REPO = "test-org/Tiny-Chat-GGUF"
FILE = "Tiny-Chat-Q4_K_M.gguf"


def read(path):
    with open(path, "rb") as f:
        return f.read()


class HubTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.chat = read(TINY_CHAT)
        cls.tiny = read(TINY)

    def setUp(self):
        self.hub = FakeHub(page_size=3).start()
        self.hub.add_repo(REPO, {FILE: self.chat, "Tiny-Chat-Q8_0.gguf": self.tiny, "README.md": b"# tiny\n",
                                 "config.json": b"{}"})
        self.home = tempfile.TemporaryDirectory()
        self.hf_home = tempfile.TemporaryDirectory()
        with open(os.path.join(self.home.name, "models.lua"), "w") as f:
            f.write('return { ["tiny-hub"] = { repo = "%s", quants = { Q4_K_M = "%s", Q8_0 = "Tiny-Chat-Q8_0.gguf" },'
                    ' arch = "llama", n_layers = 6, description = "a tiny model on the fake hub" } }\n'
                    % (REPO, FILE))

    def tearDown(self):
        self.hub.stop()
        self.home.cleanup()
        self.hf_home.cleanup()

    def env(self, **extra):
        env = dict(os.environ, EXO_HOME=self.home.name, HF_ENDPOINT=self.hub.url, HF_HOME=self.hf_home.name,
                   EXO_DOWNLOAD_BACKOFF="0.1", EXO_DOWNLOAD_ATTEMPTS="4", EXO_DOWNLOAD_STALL="5")
        env.pop("HF_TOKEN", None)
        env.pop("EXO_OFFLINE", None)
        env.pop("HF_HUB_OFFLINE", None)
        env.update(extra)
        return env

    def exo(self, *args, timeout=120, **extra):
        p = subprocess.run([EXO] + list(args), capture_output=True, env=self.env(**extra), timeout=timeout)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def store(self, *parts):
        return os.path.join(self.home.name, "downloads", *parts)

    def file_gets(self, name):
        return [r for r in self.hub.requests("/cdn/") if r["path"].endswith("/" + name)]

    # ---- downloads ---------------------------------------------------------

    def test_full_download_then_run_answers(self):
        rc, out, err = self.exo("run", "tiny-hub", "--prompt", "hello", "--max-tokens", "4", "--seed", "1")
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.strip(), "exo run printed no answer")
        self.assertEqual(read(self.store("tiny-hub", FILE)), self.chat)
        self.assertFalse(os.path.exists(self.store("tiny-hub", FILE + ".partial")))
        # Not a tty: plain progress lines with the size.
        self.assertIn("pulling tiny-hub: 100%", err)
        self.assertIn("%.1f MB" % (len(self.chat) / 1e6), err)
        # Only the model's file came down (not README, config, nor the other quant).
        self.assertEqual(len(self.file_gets(FILE)), 1)
        self.assertEqual(self.file_gets("Tiny-Chat-Q8_0.gguf"), [])
        # The tree listing was followed across its pages (page_size 3, five entries).
        self.assertGreaterEqual(len(self.hub.requests("/api/models/" + REPO + "/tree/main")), 2)
        # A second run needs nothing from the hub.
        self.hub.clear_log()
        rc, out, err = self.exo("run", "tiny-hub", "--prompt", "hello", "--max-tokens", "2")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.hub.requests(), [])

    def test_quant_and_hub_ids(self):
        rc, out, err = self.exo("pull", "tiny-hub:Q8_0")
        self.assertEqual(rc, 0, err)
        self.assertEqual(read(self.store("tiny-hub", "Tiny-Chat-Q8_0.gguf")), self.tiny)
        # A hub repository id with a quantization, and with a file name.
        rc, out, err = self.exo("pull", REPO + ":Q4_K_M")
        self.assertEqual(rc, 0, err)
        local = self.store("test-org--Tiny-Chat-GGUF", FILE)
        self.assertEqual(out.strip(), os.path.realpath(local))
        self.assertEqual(read(local), self.chat)
        rc, out, err = self.exo("run", REPO, "--prompt", "hi", "--max-tokens", "2")
        self.assertEqual(rc, 0, err)
        rc, out, err = self.exo("pull", "tiny-hub:Q3_K")
        self.assertEqual(rc, 1)
        self.assertIn("no quantization 'Q3_K'", err)

    def test_resume_after_a_cut(self):
        self.hub.fault(FILE, "cut", 1)
        rc, out, err = self.exo("pull", "tiny-hub")
        self.assertEqual(rc, 0, err)
        self.assertEqual(read(self.store("tiny-hub", FILE)), self.chat)
        gets = self.file_gets(FILE)
        self.assertEqual(len(gets), 2, gets)
        self.assertIsNone(gets[0]["range"])
        self.assertRegex(gets[1]["range"] or "", r"^bytes=[1-9]\d*-$")
        start = int(gets[1]["range"][6:-1])
        self.assertGreater(start, 0)
        self.assertLess(start, len(self.chat))

    def test_resume_across_runs(self):
        # A partial left by an earlier run (its first half) is resumed, not restarted.
        os.makedirs(self.store("tiny-hub"))
        half = len(self.chat) // 2
        with open(self.store("tiny-hub", FILE + ".partial"), "wb") as f:
            f.write(self.chat[:half])
        rc, out, err = self.exo("pull", "tiny-hub")
        self.assertEqual(rc, 0, err)
        gets = self.file_gets(FILE)
        self.assertEqual([g["range"] for g in gets], ["bytes=%d-" % half])
        self.assertEqual(read(self.store("tiny-hub", FILE)), self.chat)

    def test_hash_mismatch_is_rejected(self):
        self.hub.fault(FILE, "wrong_hash", -1)
        rc, out, err = self.exo("pull", "tiny-hub")
        self.assertEqual(rc, 1)
        self.assertIn("hash mismatch", err)
        self.assertIn(hashlib.sha256(self.chat).hexdigest(), err)
        self.assertFalse(os.path.exists(self.store("tiny-hub", FILE)), "a corrupt file was renamed into place")
        self.assertFalse(os.path.exists(self.store("tiny-hub", FILE + ".partial")), "corrupt bytes kept for resume")
        self.assertNotIn("Traceback", err)

    def test_hash_from_the_resolve_etag(self):
        # A listing without lfs.oid: the SHA-256 comes from X-Linked-Etag on the resolve route.
        self.hub.add_repo("test-org/Plain-GGUF", {"Plain-Q4_K_M.gguf": self.tiny}, lfs_in_listing=False)
        self.hub.fault("Plain-Q4_K_M.gguf", "wrong_hash", 1)
        rc, out, err = self.exo("pull", "test-org/Plain-GGUF")
        self.assertEqual(rc, 1)
        self.assertIn("hash mismatch", err)
        self.assertTrue([r for r in self.hub.requests("/resolve/") if r["method"] == "HEAD"])
        self.assertFalse(os.path.exists(self.store("test-org--Plain-GGUF", "Plain-Q4_K_M.gguf")))
        rc, out, err = self.exo("pull", "test-org/Plain-GGUF")
        self.assertEqual(rc, 0, err)
        self.assertEqual(read(self.store("test-org--Plain-GGUF", "Plain-Q4_K_M.gguf")), self.tiny)

    def test_disk_full(self):
        # A store on a 1 MB tmpfs (root only; skipped by name elsewhere): the 2 MB model does not fit.
        mnt = os.path.join(self.home.name, "downloads")
        os.makedirs(mnt)
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
                                               capture_output=True).returncode != 0:
            self.skipTest("test_disk_full needs root and tmpfs mounts")
        try:
            rc, out, err = self.exo("pull", "tiny-hub")
            self.assertEqual(rc, 1)
            self.assertIn("not enough disk space", err)
            self.assertFalse(os.path.exists(self.store("tiny-hub", FILE)))
        finally:
            subprocess.run(["umount", mnt])

    def test_truncated_transfer_keeps_the_partial(self):
        self.hub.fault(FILE, "short", -1)
        rc, out, err = self.exo("pull", "tiny-hub", EXO_DOWNLOAD_ATTEMPTS="2")
        self.assertEqual(rc, 1)
        self.assertIn("truncated", err)
        self.assertIn("resume", err)
        self.assertFalse(os.path.exists(self.store("tiny-hub", FILE)))
        self.assertTrue(os.path.exists(self.store("tiny-hub", FILE + ".partial")))
        # The hub mends: the next pull resumes the partial and finishes.
        self.hub.fault(FILE, "short", 0)
        self.hub.clear_log()
        rc, out, err = self.exo("pull", "tiny-hub")
        self.assertEqual(rc, 0, err)
        self.assertEqual(read(self.store("tiny-hub", FILE)), self.chat)
        self.assertTrue(self.file_gets(FILE)[0]["range"])

    def test_split_gguf_parts_in_parallel(self):
        data = os.urandom(3 * 200000 + 17)
        n = 3
        size = (len(data) + n - 1) // n
        parts = {"Big-Q4_K_M/Big-Q4_K_M-%05d-of-%05d.gguf" % (i + 1, n): data[i * size:(i + 1) * size]
                 for i in range(n)}
        self.hub.add_repo("test-org/Big-GGUF", dict(parts, **{"Big-Q8_0.gguf": b"x" * 10}))
        for p in parts:
            self.hub.fault(p, "slow", -1)
        rc, out, err = self.exo("pull", "test-org/Big-GGUF")
        self.assertEqual(rc, 0, err)
        for p, body in parts.items():
            self.assertEqual(read(self.store("test-org--Big-GGUF", p)), body, p)
        self.assertTrue(out.strip().endswith("-00001-of-00003.gguf"), out)
        self.assertGreater(self.hub.max_active, 1, "the parts were fetched one after another")
        self.assertEqual(self.file_gets("Big-Q8_0.gguf"), [])

    def test_hf_endpoint_is_honoured(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = "http://127.0.0.1:%d" % s.getsockname()[1]
        rc, out, err = self.exo("pull", "tiny-hub", HF_ENDPOINT=dead)
        self.assertEqual(rc, 1)
        self.assertIn(dead, err)
        self.assertEqual(self.hub.requests(), [])
        rc, out, err = self.exo("pull", "tiny-hub")
        self.assertEqual(rc, 0, err)
        self.assertTrue(self.hub.requests("/api/models/"))

    def test_offline_never_touches_the_network(self):
        rc, out, err = self.exo("pull", "tiny-hub", EXO_OFFLINE="1")
        self.assertEqual(rc, 1)
        self.assertIn("EXO_OFFLINE", err)
        rc, out, err = self.exo("run", "tiny-hub", "--prompt", "hi", EXO_OFFLINE="1")
        self.assertEqual(rc, 1)
        self.assertIn("EXO_OFFLINE", err)
        self.assertEqual(self.hub.requests(), [])
        # What is in the store still runs offline.
        self.assertEqual(self.exo("pull", "tiny-hub")[0], 0)
        self.hub.clear_log()
        rc, out, err = self.exo("run", "tiny-hub", "--prompt", "hi", "--max-tokens", "2", EXO_OFFLINE="1")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.hub.requests(), [])

    def test_gated_repo_wants_a_token(self):
        self.hub.add_repo("gated-org/Secret-GGUF", {"Secret-Q4_K_M.gguf": self.tiny}, gated_token="hf_s3cret")
        rc, out, err = self.exo("pull", "gated-org/Secret-GGUF")
        self.assertEqual(rc, 1)
        self.assertIn("401", err)
        self.assertIn("HF_TOKEN", err)
        self.assertIn("token", err.lower())
        # The token from the environment, then from $HF_HOME/token.
        rc, out, err = self.exo("pull", "gated-org/Secret-GGUF", HF_TOKEN="hf_wrong")
        self.assertEqual(rc, 1)
        self.assertIn("was not accepted", err)
        with open(os.path.join(self.hf_home.name, "token"), "w") as f:
            f.write("hf_s3cret\n")
        self.hub.clear_log()
        rc, out, err = self.exo("pull", "gated-org/Secret-GGUF")
        self.assertEqual(rc, 0, err)
        self.assertTrue(all(r["auth"] == "Bearer hf_s3cret" for r in self.hub.requests("/gated-org/")))

    def test_token_stays_with_the_endpoint(self):
        # The hub redirects downloads to its CDN on another host: the token must not follow.
        self.hub.add_repo("gated-org/Secret-GGUF", {"Secret-Q4_K_M.gguf": self.tiny}, gated_token="hf_s3cret")
        endpoint = self.hub.url.replace("127.0.0.1", "localhost")  # the CDN URL says 127.0.0.1
        rc, out, err = self.exo("pull", "gated-org/Secret-GGUF", HF_ENDPOINT=endpoint, HF_TOKEN="hf_s3cret")
        self.assertEqual(rc, 0, err)
        hub_side = [r for r in self.hub.requests("/gated-org/") if not r["path"].startswith("/cdn/")]
        self.assertTrue(hub_side and all(r["auth"] == "Bearer hf_s3cret" for r in hub_side), hub_side)
        cdn = self.hub.requests("/cdn/")
        self.assertTrue(cdn)
        self.assertTrue(all(r["auth"] is None for r in cdn), cdn)

    def test_not_found_and_rate_limited(self):
        rc, out, err = self.exo("pull", "test-org/No-Such-GGUF")
        self.assertEqual(rc, 1)
        self.assertIn("not found", err)
        self.assertIn("404", err)
        rc, out, err = self.exo("pull", REPO + ":Missing-Q4_K_M.gguf")
        self.assertEqual(rc, 1)
        self.assertIn("not found", err)
        rc, out, err = self.exo("pull", REPO + ":IQ1_S")
        self.assertEqual(rc, 1)
        self.assertIn("has no IQ1_S GGUF file", err)
        # 429 with Retry-After: waited out, then the file comes.
        self.hub.fault(FILE, "429", 1)
        rc, out, err = self.exo("pull", "tiny-hub")
        self.assertEqual(rc, 0, err)
        resolves = [r for r in self.hub.requests("/resolve/") if r["path"].endswith(FILE)]
        self.assertEqual(len(resolves), 2)

    def test_read_only_store(self):
        if os.geteuid() == 0:
            # root writes through permission bits: use a path under a file instead.
            blocker = os.path.join(self.home.name, "downloads")
            open(blocker, "w").close()
        else:
            os.chmod(self.home.name, 0o555)
        rc, out, err = self.exo("pull", "tiny-hub")
        self.assertEqual(rc, 1)
        self.assertIn("downloads", err)
        self.assertNotIn("Traceback", err)

    # ---- the CLI's listing ---------------------------------------------------

    def test_models_json_show_and_rm(self):
        rc, out, err = self.exo("models", "--json")
        self.assertEqual(rc, 0, err)
        listing = json.loads(out)
        ids = {m["id"]: m for m in listing["models"]}
        for known in ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-3.3-70b", "mistral-7b", "mistral-nemo",
                      "qwen-2.5-0.5b", "qwen-2.5-72b", "qwen-3-8b", "deepseek-r1-distill-qwen-1.5b",
                      "deepseek-r1-distill-llama-70b", "gemma-3-4b", "phi-3.5-mini", "phi-4-mini", "smollm2-135m",
                      "smollm2-360m", "smollm2-1.7b", "tiny-hub"):
            self.assertIn(known, ids)
        self.assertEqual(ids["llama-3.2-1b"]["quant"], "Q4_K_M")
        self.assertEqual(ids["llama-3.2-1b"]["n_layers"], 16)
        self.assertTrue(ids["llama-3.2-1b"]["can_run"])
        self.assertFalse(ids["qwen-3-30b-a3b"]["can_run"])
        self.assertGreater(ids["llama-3.1-8b"]["size"], 4e9)
        self.assertFalse(ids["tiny-hub"]["downloaded"])
        self.assertEqual(self.exo("pull", "tiny-hub")[0], 0)
        ids = {m["id"]: m for m in json.loads(self.exo("models", "--json")[1])["models"]}
        self.assertTrue(ids["tiny-hub"]["downloaded"])
        self.assertEqual(ids["tiny-hub"]["size"], len(self.chat))
        rc, out, err = self.exo("models")
        self.assertRegex(out, r"tiny-hub\s+downloaded")
        rc, out, err = self.exo("show", "tiny-hub")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"architecture\s+llama")
        self.assertRegex(out, r"layers\s+6")
        self.assertIn("size", out)
        self.assertIn("template", out)
        self.assertRegex(out, r"vocabulary\s+512\n")
        # A file without a tokenizer (tiny.gguf) still says its vocabulary size, not "?".
        rc, out, err = self.exo("show", TINY)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"vocabulary\s+512 \(no tokenizer in the file\)")
        rc, out, err = self.exo("rm", "tiny-hub")
        self.assertEqual(rc, 0, err)
        self.assertFalse(os.path.exists(self.store("tiny-hub", FILE)))
        rc, out, err = self.exo("rm", "tiny-hub")
        self.assertEqual(rc, 1)
        self.assertIn("no files", err)

    # ---- the HTTP API ----------------------------------------------------------

    def test_api_download_progress_and_delete(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.hub.fault(FILE, "slow", -1)
        node = subprocess.Popen([EXO, "--disable-tui", "--chatgpt-api-port", str(port), "--api-host", "127.0.0.1",
                                 "--node-port", "0"], env=self.env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        base = "http://127.0.0.1:%d" % port

        def call(method, path, body=None):
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read() or b"null")
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"null")

        try:
            for _ in range(300):
                try:
                    if call("GET", "/healthcheck")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            status, body = call("POST", "/download", {"model": "tiny-hub"})
            self.assertEqual(status, 200, body)
            self.assertEqual(body["status"], "success")
            seen_progress = False
            for _ in range(600):
                status, progress = call("GET", "/v1/download/progress")
                self.assertEqual(status, 200)
                # Keyed by node id, as the original exo's; one event, this node's latest download.
                self.assertLessEqual(len(progress), 1)
                ev = next(iter(progress.values()), None)
                self.assertEqual(ev["model"], "tiny-hub")
                self.assertEqual(ev["repo_id"], REPO)
                if ev and ev["status"] == "in_progress" and ev["total_bytes"] == len(self.chat):
                    seen_progress = True
                if ev and ev["status"] == "complete":
                    break
                time.sleep(0.05)
            self.assertTrue(seen_progress, progress)
            self.assertEqual(ev["status"], "complete", progress)
            self.assertEqual(ev["downloaded_bytes"], len(self.chat))
            self.assertEqual(read(self.store("tiny-hub", FILE)), self.chat)
            # The node answers with the model it just downloaded.
            status, chat = call("POST", "/v1/chat/completions", {"model": "tiny-hub", "max_tokens": 3,
                                                                 "messages": [{"role": "user", "content": "hi"}]})
            self.assertEqual(status, 200, chat)
            # A client may not name a hub repository to download, nor an unknown id.
            status, body = call("POST", "/download", {"model": "evil/Repo-GGUF"})
            self.assertEqual(status, 404)
            status, body = call("DELETE", "/models/tiny-hub")
            self.assertEqual(status, 200, body)
            self.assertEqual(body["status"], "success")
            self.assertFalse(os.path.exists(self.store("tiny-hub", FILE)))
            status, body = call("DELETE", "/models/tiny-hub")
            self.assertEqual(status, 404)
        finally:
            node.terminate()
            node.wait(timeout=30)


if __name__ == "__main__":
    unittest.main(verbosity=2)
