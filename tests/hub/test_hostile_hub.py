"""test_hostile_hub.py: `exo pull` against a hub that answers anything (issue 16's trust rule).

docs/security.md trusts the hub (HF_ENDPOINT) for what it lists, never for its bytes, and sends
the token to HF_ENDPOINT only. Here a real `exo pull org/repo` meets a local server that plays a
broken or malicious hub over a real socket: a listing whose paths leave the model's folder, one
whose next page lies on another server (which must never see the token), sizes that are
negative, missing or lies, a listing of endless pages of files, redirect loops and redirects to
file:// and ftp://, a Content-Length far past the body, and a redirect to another port of the
same address (which must not get the token either). Each must end in one clear error (exit
status 1, the reason in words), with nothing written outside the store and nothing renamed into
it. The download API gets odd ids (paths, hub ids, non-strings, deep JSON) and refuses them all
without touching the hub, and keeps answering.

The Tailscale API is an outside service too (lua/exo/discovery/tailscale.lua, over the engine's
own HTTP client): a hostile one answering garbage devices, addresses that are no unicast IPv4
(999.1.1.1, 0.0.0.0, 255.255.255.255, multicast, leading zeros), odd attribute types, JSON nested
past the reader's depth, an answer past its size limit or a redirect to file:// leaves the module
running with its error in stats(), and makes the node dial only sane addresses.
"""
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("EXO_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
EXO = os.environ.get("EXO_BINARY", os.path.join(ROOT, "build", "exo"))
REPO = "evil-org/Evil-GGUF"
TOKEN = "hf_hostile_hub_test_token"
BLOB = bytes(range(256)) * 40  # what the hub serves for any file it is asked for


class Hostile(http.server.ThreadingHTTPServer):
    """A hub whose answers each test sets: tree(handler) and resolve(handler, path) write them."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server_address[1]
        self.log, self.lock = [], threading.Lock()
        self.tree = lambda h: h.answer(200, b"[]")
        self.resolve = lambda h, path: h.answer(200, BLOB)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def seen(self):
        with self.lock:
            return list(self.log)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=(), length=None):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except OSError:
                pass
        self.close_connection = True

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length < 1048576:
            self.rfile.read(length)
        with self.server.lock:
            self.server.log.append({"method": self.command, "path": self.path,
                                    "authorization": self.headers.get("Authorization")})
        if self.path.startswith("/api/models/"):
            self.server.tree(self)
        else:
            self.server.resolve(self, self.path)

    do_GET = do_HEAD = do_POST = handle_any


def entry(path, size=len(BLOB), lfs=True):
    e = {"type": "file", "oid": "0" * 40, "size": size, "path": path}
    if lfs:
        e["lfs"] = {"oid": hashlib.sha256(BLOB).hexdigest(), "size": size, "pointerSize": 134}
    return e


def listing(*entries):
    return lambda h: h.answer(200, json.dumps(list(entries)).encode(), [("Content-Type", "application/json")])


class HostileHubTest(unittest.TestCase):
    def setUp(self):
        self.hub = Hostile()
        self.tmp = tempfile.TemporaryDirectory()
        # EXO_HOME three folders down, so that a path climbing out of the store still lands in tmp.
        self.home = os.path.join(self.tmp.name, "a", "b", "home")
        os.makedirs(self.home)
        self.hf_home = os.path.join(self.tmp.name, "hf")

    def tearDown(self):
        self.hub.shutdown()
        self.hub.server_close()
        self.tmp.cleanup()

    def env(self):
        env = dict(os.environ, EXO_HOME=self.home, HF_ENDPOINT=self.hub.url, HF_HOME=self.hf_home, HF_TOKEN=TOKEN,
                   EXO_DOWNLOAD_BACKOFF="0.05", EXO_DOWNLOAD_ATTEMPTS="2", EXO_DOWNLOAD_STALL="2")
        for k in ("EXO_OFFLINE", "HF_HUB_OFFLINE"):
            env.pop(k, None)
        return env

    def pull(self, name=REPO, timeout=120):
        p = subprocess.run([EXO, "pull", name], capture_output=True, env=self.env(), timeout=timeout)
        return p.returncode, p.stderr.decode(errors="replace")

    def files_under_tmp(self):
        out = []
        for d, _, names in os.walk(self.tmp.name):
            out += [os.path.relpath(os.path.join(d, n), self.tmp.name) for n in names]
        return sorted(out)

    def assert_nothing_stored(self):
        # No model file (nor a partial of one) anywhere: in the store or outside it.
        self.assertEqual([f for f in self.files_under_tmp() if ".gguf" in f], [])

    # ---- the listing ---------------------------------------------------------------

    def test_paths_that_leave_the_folder(self):
        for bad in ("../../../escape-Q4_K_M.gguf", "sub/../../../../escape-Q4_K_M.gguf",
                    "./escape-Q4_K_M.gguf", "a//escape-Q4_K_M.gguf", "a\\..\\escape-Q4_K_M.gguf"):
            with self.subTest(path=bad):
                self.hub.tree = listing(entry("README.md"), entry(bad))
                rc, err = self.pull()
                self.assertEqual(rc, 1, err)
                self.assertIn("path outside the repository", err)
                self.assert_nothing_stored()
                self.assertEqual([r for r in self.hub.seen() if "resolve" in r["path"] or "escape" in r["path"]],
                                 [], "a file was fetched")

    def test_next_page_on_another_server_never_gets_the_token(self):
        other = Hostile()
        try:
            other.tree = listing(entry("Evil-Q4_K_M.gguf"))
            nxt = "%s/api/models/%s/tree/main?cursor=1" % (other.url, REPO)
            self.hub.tree = lambda h: h.answer(200, b"[]", [("Link", '<%s>; rel="next"' % nxt)])
            rc, err = self.pull()
            self.assertEqual(rc, 1, err)
            self.assertIn("another server", err)
            self.assertEqual(other.seen(), [], "the next page was asked of another server")
            self.assertTrue(all(r["authorization"] == "Bearer " + TOKEN for r in self.hub.seen()))
        finally:
            other.shutdown()
            other.server_close()
        self.assert_nothing_stored()

    def test_bad_sizes(self):
        for size in (-5, 1.5, 1e300, "lots", [1]):
            with self.subTest(size=size):
                self.hub.tree = listing(entry("Evil-Q4_K_M.gguf", size=size, lfs=False))
                rc, err = self.pull()
                self.assertEqual(rc, 1, err)
                self.assertIn("bad size", err)
                self.assert_nothing_stored()

    def list_without_size(self):
        e = entry("Evil-Q4_K_M.gguf", lfs=False)
        del e["size"]
        self.hub.tree = listing(e)

    def test_no_size_anywhere(self):
        # Neither the listing nor the resolve route's X-Linked-Size: nothing bounds the bytes.
        self.list_without_size()
        rc, err = self.pull()
        self.assertEqual(rc, 1, err)
        self.assertIn("gives no size", err)
        self.assert_nothing_stored()

    def test_linked_size_lie(self):
        # The HEAD's X-Linked-Size says 100 bytes; the GET sends all of BLOB: stopped at 100.
        self.list_without_size()
        self.hub.resolve = lambda h, path: h.answer(200, BLOB, [("X-Linked-Size", "100")])
        rc, err = self.pull()
        self.assertEqual(rc, 1, err)
        self.assertIn("sent more than the 100 bytes", err)
        store = os.path.join(self.home, "downloads", "evil-org--Evil-GGUF")
        self.assertFalse(os.path.exists(os.path.join(store, "Evil-Q4_K_M.gguf")))
        partial = os.path.join(store, "Evil-Q4_K_M.gguf.partial")
        self.assertLessEqual(os.path.getsize(partial) if os.path.exists(partial) else 0, 100)

    def test_endless_pages(self):
        page = json.dumps([entry("f%06d.txt" % i, size=1, lfs=False) for i in range(30000)]).encode()
        n = [0]

        def tree(h):
            n[0] += 1
            nxt = "%s/api/models/%s/tree/main?cursor=%d" % (self.hub.url, REPO, n[0])
            h.answer(200, page, [("Link", '<%s>; rel="next"' % nxt)])
        self.hub.tree = tree
        rc, err = self.pull()
        self.assertEqual(rc, 1, err)
        self.assertIn("more than 100000 files", err)
        self.assertLessEqual(n[0], 4)

    def test_content_length_past_the_body(self):
        self.hub.tree = lambda h: h.answer(200, b"[]", length=10 ** 15)
        rc, err = self.pull()
        self.assertEqual(rc, 1, err)
        self.assertIn("cannot list", err)

    def test_odd_repository_ids(self):
        # Names that would put the model's folder (or file) outside the store never reach the hub.
        for name in ("../../x", "evil-org/..", "evil-org/../x", "../evil-org/x", REPO + ":../../x.gguf",
                     REPO + ":/etc/x.gguf", REPO + ":a/../../x.gguf", "/evil-org/x", "evil-org/x/y", ".x/y"):
            with self.subTest(name=name):
                rc, err = self.pull(name)
                self.assertEqual(rc, 1, err)
                self.assertIn("unknown model", err)
        self.assertEqual(self.hub.seen(), [])
        self.assertEqual(self.files_under_tmp(), [])

    # ---- the file's route ------------------------------------------------------------

    def test_redirects(self):
        self.hub.tree = listing(entry("Evil-Q4_K_M.gguf"))
        trap = socket.socket()
        trap.bind(("127.0.0.1", 0))
        trap.listen(4)
        trap.setblocking(False)
        targets = {"loop": lambda h: "%s/again%d" % (self.hub.url, time.monotonic_ns()),
                   "file": lambda h: "file:///etc/passwd",
                   "ftp": lambda h: "ftp://127.0.0.1:%d/Evil-Q4_K_M.gguf" % trap.getsockname()[1],
                   "gopher": lambda h: "gopher://127.0.0.1:%d/" % trap.getsockname()[1]}
        try:
            for name, target in targets.items():
                with self.subTest(redirect=name):
                    self.hub.resolve = lambda h, path: h.answer(302, b"", [("Location", target(h))])
                    rc, err = self.pull(timeout=60)
                    self.assertEqual(rc, 1, err)
                    self.assertIn("downloading Evil-Q4_K_M.gguf", err)
                    self.assert_nothing_stored_but_partials()
                    with self.assertRaises(BlockingIOError, msg="a redirect reached the %s target" % name):
                        trap.accept()
        finally:
            trap.close()

    def test_token_stays_with_the_endpoint_port(self):
        # A redirect to the same address on another port is another server: it gets no token.
        cdn = Hostile()
        try:
            self.hub.tree = listing(entry("Evil-Q4_K_M.gguf"))
            self.hub.resolve = lambda h, path: h.answer(302, b"", [("Location", cdn.url + "/cdn/Evil-Q4_K_M.gguf")])
            rc, err = self.pull()
            self.assertEqual(rc, 0, err)
            self.assertEqual([r["authorization"] for r in cdn.seen()], [None])
            self.assertTrue(all(r["authorization"] == "Bearer " + TOKEN for r in self.hub.seen()))
        finally:
            cdn.shutdown()
            cdn.server_close()

    def assert_nothing_stored_but_partials(self):
        self.assertEqual([f for f in self.files_under_tmp() if f.endswith(".gguf")], [])

    # ---- the download API --------------------------------------------------------------

    def test_download_api_odd_ids(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        node = subprocess.Popen([EXO, "--disable-tui", "--chatgpt-api-port", str(port), "--api-host", "127.0.0.1",
                                 "--node-port", "0"], env=self.env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        base = "http://127.0.0.1:%d" % port

        def call(method, path, data=None):
            req = urllib.request.Request(base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        try:
            for _ in range(300):
                try:
                    if call("GET", "/healthcheck") == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            odd = ["../../x", "/etc/passwd", REPO, REPO + ":../../x.gguf", "smollm2-135m:../../x",
                   "smollm2-135m:Q4_K_M/../../x", "", "\u0000", "a" * 100000, 5, None, ["smollm2-135m"],
                   {"model": "smollm2-135m"}]
            for model in odd:
                with self.subTest(model=str(model)[:40]):
                    self.assertEqual(call("POST", "/download", json.dumps({"model": model}).encode()), 404)
            for body in (b"", b"{", b"[" * 100000 + b"]" * 100000, b'{"model":' * 50000, b"\xff\xfe"):
                self.assertEqual(call("POST", "/download", body), 404)
            for raw in ("..%2F..%2Fx", "%2Fetc%2Fpasswd", "evil-org%2FEvil-GGUF", "%00", "smollm2-135m%3A..%2Fx"):
                with self.subTest(delete=raw):
                    self.assertEqual(call("DELETE", "/models/" + raw), 404)
            self.assertEqual(call("GET", "/healthcheck"), 200)
            self.assertEqual(self.hub.seen(), [], "a refused id reached the hub")
        finally:
            node.terminate()
            node.wait(timeout=30)


# Runs the Tailscale module for `seconds` against the API at argv[1] through the engine's HTTP
# client and prints what it found and its stats as JSON (tests/cluster/test_tailscale.py's
# driver does the same against the honest fake).
TAILSCALE_DRIVER = r"""
local uv = require "luv"
local json = require "exo.json"
local tailscale = require "exo.discovery.tailscale"
local base, seconds = ...
local found = {}
local d = tailscale.new { node_id = "me", wire_port = 4321, api_key = "tskey-hostile", tailnet = "t",
  api_base = base, device_id = "nSELF", interval = 0.2, timeout = 60, request_timeout = 1,
  http = assert(tailscale.native_http()), on_change = function(records) found = records end,
  log = function() end }
d:start()
local t = uv.new_timer()
t:start(tonumber(seconds) * 1000, 0, function() d:stop(); t:close() end)
uv.run()
local out = {}
for id, r in pairs(found) do out[#out + 1] = { id = id, address = r.address, port = r.port } end
print(json.encode { found = out, stats = d:stats() })
"""

EXO_ATTRS = {"custom:exo_node_id": "peer", "custom:exo_port": 5000}


def device(node_id, addresses, **extra):
    d = {"nodeId": node_id, "id": node_id, "addresses": addresses, "connectedToControl": True}
    d.update(extra)
    return d


class HostileTailscaleTest(unittest.TestCase):
    def run_module(self, devices_answer, attributes=lambda h, node: EXO_ATTRS, seconds=2.0):
        api = Hostile()

        def route(h, path):
            if h.command == "POST":
                return h.answer(200, b"{}")
            if path.startswith("/api/v2/tailnet/"):
                return devices_answer(h)
            node = path.split("/")[4] if path.startswith("/api/v2/device/") else ""
            return h.answer(200, json.dumps({"attributes": attributes(h, node)}).encode())
        api.resolve = route
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(TAILSCALE_DRIVER)
        try:
            p = subprocess.run([EXO, "lua", f.name, api.url, str(seconds)], capture_output=True, text=True,
                               timeout=60)
        finally:
            os.unlink(f.name)
            api.shutdown()
            api.server_close()
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout.strip().splitlines()[-1])
        return out["found"] or [], out["stats"], api.seen()  # an empty Lua table encodes as {}

    def test_garbage_devices_and_addresses(self):
        bad_addresses = ["999.1.1.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "010.0.0.1", "1.2.3",
                         "1.2.3.4.5", " 100.64.0.7", "100.64.0.7\n", {"a": 1}, 7, None]
        devices = [device("nSELF", ["100.64.0.1"]), 1, "x", None, [], {"nodeId": {"x": 1}},
                   device("../x", ["100.64.0.8"]), device("n" * 5000, ["100.64.0.8"]),
                   device("nLATE", ["100.64.0.10"], connectedToControl="yes", lastSeen="2022-99-99T99:99:99Z"),
                   device("nGOOD", ["fd7a:115c:a1e0::9", "100.64.0.9"])]
        devices += [device("nBAD%d" % i, [a]) for i, a in enumerate(bad_addresses)]
        body = json.dumps({"devices": devices}).encode()

        def attributes(h, node):
            return dict(EXO_ATTRS, **{"custom:exo_node_id": "peer_d" + node.lower()})
        found, stats, seen = self.run_module(lambda h: h.answer(200, body), attributes)
        # Only the sane device is dialled, at its unicast address.
        self.assertEqual([(r["id"], r["address"], r["port"]) for r in found], [("peer-ngood", "100.64.0.9", 5000)])
        self.assertIsNone(stats.get("last_error"), stats)
        self.assertGreaterEqual(stats["rounds"], 2)

    def test_odd_attributes(self):
        body = json.dumps({"devices": [device("nSELF", ["100.64.0.1"])] + [
            device("nA%d" % i, ["100.64.1.%d" % (i + 1)]) for i in range(6)]}).encode()
        odd = [{"custom:exo_node_id": "peer", "custom:exo_port": "5000"},
               {"custom:exo_node_id": "peer", "custom:exo_port": 1e300},
               {"custom:exo_node_id": "peer", "custom:exo_port": 5000.5},
               {"custom:exo_node_id": "pe-er", "custom:exo_port": 5000},
               {"custom:exo_node_id": ["peer"], "custom:exo_port": 5000},
               {"custom:exo_node_id": "peer_x", "custom:exo_port": 5000}]
        found, stats, _ = self.run_module(lambda h: h.answer(200, body),
                                          lambda h, node: odd[int(node[2:])] if node.startswith("nA") else {})
        self.assertEqual(found, [])
        self.assertIsNone(stats.get("last_error"), stats)

    def test_broken_answers_are_one_error_and_the_module_keeps_polling(self):
        cases = {"not a JSON object": lambda h: h.answer(200, b"[" * 100000 + b"]" * 100000),
                 "larger than": lambda h: h.answer(200, b" " * (5 * 1048576)),
                 "Unsupported protocol": lambda h: h.answer(302, b"", [("Location", "file:///etc/passwd")]),
                 "no \"devices\" array": lambda h: h.answer(200, b'{"devices": "all"}'),
                 "is not in tailnet": lambda h: h.answer(200, b'{"devices": {"a": 1}}')}
        for words, answer in cases.items():
            with self.subTest(case=words):
                found, stats, seen = self.run_module(answer)
                self.assertEqual(found, [])
                self.assertIn(words, stats.get("last_error") or "", stats)
                self.assertGreaterEqual(stats["rounds"], 2, "the module stopped polling")


if __name__ == "__main__":
    unittest.main(verbosity=2)
