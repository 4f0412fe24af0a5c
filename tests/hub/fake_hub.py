"""fake_hub.py: a local stand-in for the Hugging Face hub's download routes.

The hub is not reachable from the test machines, so this server speaks the
routes exo uses, in the hub's own shapes, over a real socket:

  GET  /api/models/{org}/{name}/tree/{revision}?recursive=true
       a JSON array of {"type": "file"|"directory", "oid", "size", "path"} with
       "lfs": {"oid": sha256, "size", "pointerSize"} on LFS files (every
       .gguf), paginated with a Link: <...>; rel="next" header past page_size
  HEAD/GET /{org}/{name}/resolve/{revision}/{path}
       LFS files: 302 to a CDN-like /cdn/... URL with X-Linked-Etag (the
       quoted sha256), X-Linked-Size, X-Repo-Commit; other files served here
  GET  /cdn/{org}/{name}/{path}
       the bytes, with ETag, Accept-Ranges and Range (206 + Content-Range)

Faults on demand (FakeHub.fault(path, kind, times)): "401" and "404" answers,
"429" with Retry-After, "cut" (a transfer closed halfway), "wrong_hash"
(other bytes of the right size), "short" (fewer bytes than the listing says,
honestly framed), and "slow" (bytes in small timed pieces, so transfers
overlap). A repository made gated answers 401 unless the request carries its
token. Every request is logged (method, path, Range, Authorization) for the
tests to inspect; concurrent file transfers are counted.
"""
import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, page_size=50):
        self.repos = {}          # repo -> {path: bytes}
        self.gated = {}          # repo -> token
        self.no_lfs = set()      # repos whose listing leaves out "lfs" (the hash only on resolve)
        self.faults = {}         # path -> [kind, times left]
        self.log = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.page_size = page_size
        # "slow" transfers: 8 pieces with this pause between them (the page's browser test
        # lengthens it so a progress bar is seen moving).
        self.slow_pause = 0.15
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._handle(self, head=False)

            def do_HEAD(self):
                hub._handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo, files, gated_token=None, lfs_in_listing=True):
        self.repos[repo] = dict(files)
        if not lfs_in_listing:
            self.no_lfs.add(repo)
        if gated_token:
            self.gated[repo] = gated_token

    def fault(self, path, kind, times=1):
        with self.lock:
            self.faults[path] = [kind, times]

    def requests(self, contains=""):
        with self.lock:
            return [r for r in self.log if contains in r["path"]]

    def clear_log(self):
        with self.lock:
            self.log = []
            self.max_active = 0

    # ---- internals -------------------------------------------------------

    def _take_fault(self, path, kinds=None):
        """The fault armed for path (one of kinds, when given), used up once."""
        with self.lock:
            f = self.faults.get(path)
            if not f or f[1] == 0 or (kinds and f[0] not in kinds):
                return None
            if f[1] > 0:
                f[1] -= 1
            return f[0]

    def _send(self, h, status, body=b"", headers=None, head=False):
        h.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _error(self, h, status, message, head=False, headers=None):
        hdrs = {"Content-Type": "application/json", "X-Error-Message": message}
        hdrs.update(headers or {})
        self._send(h, status, json.dumps({"error": message}).encode(), hdrs, head)

    def _authorized(self, h, repo):
        token = self.gated.get(repo)
        return token is None or h.headers.get("Authorization") == "Bearer " + token

    def _handle(self, h, head):
        url = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(url.path)
        with self.lock:
            self.log.append({"method": h.command, "path": path, "range": h.headers.get("Range"),
                             "auth": h.headers.get("Authorization")})
        parts = path.strip("/").split("/")
        try:
            if len(parts) >= 6 and parts[0] == "api" and parts[1] == "models" and parts[4] == "tree":
                return self._tree(h, parts[2] + "/" + parts[3], urllib.parse.parse_qs(url.query), head)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(h, parts[0] + "/" + parts[1], "/".join(parts[4:]), head)
            if len(parts) >= 4 and parts[0] == "cdn":
                return self._cdn(h, parts[1] + "/" + parts[2], "/".join(parts[3:]), head)
        except (BrokenPipeError, ConnectionResetError):
            return
        self._error(h, 404, "Entry not found", head)

    def _tree(self, h, repo, query, head):
        if repo not in self.repos:
            return self._error(h, 404, "Repository not found", head)
        if not self._authorized(h, repo):
            return self._error(h, 401, "Access to model %s is restricted." % repo, head)
        entries, dirs = [], set()
        for p, data in sorted(self.repos[repo].items()):
            d = p.rsplit("/", 1)[0] if "/" in p else None
            if d and d not in dirs:
                dirs.add(d)
                entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                "path": d})
            e = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": p}
            if p.endswith(".gguf") and repo not in self.no_lfs:
                e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(e)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.page_size]
        headers = {"Content-Type": "application/json"}
        if start + self.page_size < len(entries):
            nxt = "%s/api/models/%s/tree/main?recursive=true&cursor=%d" % (self.url, repo, start + self.page_size)
            headers["Link"] = '<%s>; rel="next"' % nxt
        self._send(h, 200, json.dumps(page).encode(), headers, head)

    def _resolve(self, h, repo, p, head):
        if repo not in self.repos:
            return self._error(h, 404, "Repository not found", head)
        if not self._authorized(h, repo):
            return self._error(h, 401, "Access to model %s is restricted." % repo, head)
        data = self.repos[repo].get(p)
        if data is None:
            return self._error(h, 404, "Entry not found", head)
        kind = self._take_fault(p, ("404", "401", "429"))
        if kind == "404":
            return self._error(h, 404, "Entry not found", head)
        if kind == "401":
            return self._error(h, 401, "Invalid credentials", head)
        if kind == "429":
            return self._error(h, 429, "Too many requests", head, {"Retry-After": "1"})
        if not p.endswith(".gguf"):
            return self._serve(h, p, data, self._take_fault(p), head)
        sha = hashlib.sha256(data).hexdigest()
        self._send(h, 302, b"", {"Location": "%s/cdn/%s/%s" % (self.url, repo, urllib.parse.quote(p)),
                                 "X-Linked-Etag": '"%s"' % sha, "X-Linked-Size": str(len(data)),
                                 "X-Repo-Commit": COMMIT, "ETag": '"%s"' % sha}, head)

    def _cdn(self, h, repo, p, head):
        data = self.repos.get(repo, {}).get(p)
        if data is None:
            return self._error(h, 404, "Not found", head)
        self._serve(h, p, data, self._take_fault(p), head)

    def _serve(self, h, p, data, kind, head):
        size = len(data)
        if kind == "wrong_hash":
            data = bytes(255 - b for b in data)
        if kind == "short":
            data = data[: size // 2]
            size = len(data)
        start = 0
        rng = h.headers.get("Range")
        headers = {"ETag": '"%s"' % hashlib.sha256(data).hexdigest(), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status = 200
        if rng and rng.startswith("bytes="):
            a = rng[6:].split("-")[0]
            start = int(a) if a else 0
            if start >= size:
                return self._send(h, 416, b"", {"Content-Range": "bytes */%d" % size}, head)
            status = 206
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, size - 1, size)
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if kind == "cut":
                h.wfile.write(body[: len(body) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            if kind == "slow":
                step = max(1, len(body) // 8)
                for i in range(0, len(body), step):
                    h.wfile.write(body[i:i + step])
                    h.wfile.flush()
                    time.sleep(self.slow_pause)
                return
            h.wfile.write(body)
        finally:
            with self.lock:
                self.active -= 1


if __name__ == "__main__":
    import sys

    hub = FakeHub()
    for arg in sys.argv[1:]:
        repo, _, path = arg.partition("=")
        with open(path, "rb") as f:
            hub.add_repo(repo, {path.rsplit("/", 1)[-1]: f.read()})
    hub.start()
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
