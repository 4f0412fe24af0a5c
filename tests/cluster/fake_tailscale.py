"""fake_tailscale.py: a local stand-in for the Tailscale API (v2), for tests that cannot reach it.

It speaks the routes exo's Tailscale discovery uses, with Tailscale's JSON shapes and rules:
  GET    /api/v2/tailnet/{tailnet}/devices                  -> {"devices": [device, ...]}
  GET    /api/v2/device/{deviceId}/attributes               -> {"attributes": {key: value}}
  POST   /api/v2/device/{deviceId}/attributes/{key}         body {"value": v} -> {}
  DELETE /api/v2/device/{deviceId}/attributes/{key}         -> {}
A device is found by its nodeId or its legacy numeric id. Every request must carry the access
token (as a bearer token, or as the user of HTTP basic auth): a wrong or missing one is a 401.
Attribute keys must be custom:, at most 50 characters of letters, digits, '_' and ':'; string
values at most 50 characters of letters, digits, '_' and '.'; numbers integers; a key keeps the
type its first value had. Writing an attribute marks the device seen now (as a device that is
online is). `delay` makes every answer wait that many seconds (a stalled API).

Run alone: python3 tests/cluster/fake_tailscale.py PORT KEY   (serves an empty tailnet)
"""

import base64
import datetime
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY_RE = re.compile(r"^custom:[A-Za-z0-9_:]+$")
STRING_RE = re.compile(r"^[A-Za-z0-9_.]*$")


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeTailscale:
    def __init__(self, key, tailnet="example.com", port=0, delay=0.0):
        self.key, self.tailnet, self.delay = key, tailnet, delay
        self.devices = {}      # nodeId -> device object (Tailscale's shape)
        self.attributes = {}   # nodeId -> {key: value}
        self.types = {}        # attribute key -> the type of its first value
        self.requests = []     # (method, path, status)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self, "GET")

            def do_POST(self):
                fake.handle(self, "POST")

            def do_DELETE(self):
                fake.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = "http://127.0.0.1:%d" % self.port

    def start(self):
        """Serves on a thread of its own; returns self."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def add_device(self, node_id, addresses, hostname, last_seen=None, numeric_id=None, attributes=None):
        """A device in the tailnet; last_seen: seconds since the epoch (now if None)."""
        with self.lock:
            self.devices[node_id] = {
                "addresses": list(addresses), "id": str(numeric_id or abs(hash(node_id)) % 10 ** 12),
                "nodeId": node_id, "user": "tester@example.com", "name": hostname + ".tail0000.ts.net",
                "hostname": hostname, "clientVersion": "1.76.0", "updateAvailable": False, "os": "linux",
                "created": iso(time.time() - 86400),
                "lastSeen": iso(last_seen if last_seen is not None else time.time()),
                "keyExpiryDisabled": True, "expires": iso(time.time() + 86400 * 90), "authorized": True,
                "isExternal": False, "machineKey": "", "nodeKey": "nodekey:" + "0" * 64,
                "blocksIncomingConnections": False, "tags": [], "tailnetLockError": "", "tailnetLockKey": "",
            }
            self.attributes[node_id] = dict(attributes or {})

    def custom(self, node_id):
        with self.lock:
            return {k: v for k, v in self.attributes.get(node_id, {}).items() if k.startswith("custom:")}

    def count(self, method, prefix, status=None):
        with self.lock:
            return sum(1 for m, p, s in self.requests if m == method and p.startswith(prefix)
                       and (status is None or s == status))

    def find(self, device_id):
        for node_id, d in self.devices.items():
            if device_id in (node_id, d["id"]):
                return node_id
        return None

    def authorized(self, handler):
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:] == self.key
        if auth.startswith("Basic "):
            try:
                user = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except Exception:
                return False
            return user == self.key
        return False

    def handle(self, h, method):
        if self.delay:
            time.sleep(self.delay)
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if not self.authorized(h):
            status, doc = 401, {"message": "API token invalid"}
        else:
            with self.lock:
                status, doc = self.route(method, path, body)
        with self.lock:
            self.requests.append((method, path, status))
        raw = json.dumps(doc).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(raw)))
            h.end_headers()
            h.wfile.write(raw)
        except OSError:
            pass  # the client gave up (a timeout test)

    def route(self, method, path, body):
        m = re.match(r"^/api/v2/tailnet/([^/]+)/devices$", path)
        if m and method == "GET":
            if m.group(1) not in ("-", self.tailnet):
                return 404, {"message": "tailnet not found"}
            return 200, {"devices": list(self.devices.values())}
        m = re.match(r"^/api/v2/device/([^/]+)/attributes$", path)
        if m and method == "GET":
            node_id = self.find(m.group(1))
            if not node_id:
                return 404, {"message": "device not found"}
            return 200, {"attributes": dict(self.attributes[node_id], **{"node:os": "linux"})}
        m = re.match(r"^/api/v2/device/([^/]+)/attributes/([^/]+)$", path)
        if m and method in ("POST", "DELETE"):
            node_id = self.find(m.group(1))
            key = m.group(2).replace("%3A", ":").replace("%3a", ":")
            if not node_id:
                return 404, {"message": "device not found"}
            if len(key) > 50 or not KEY_RE.match(key):
                return 400, {"message": "invalid attribute key %r" % key}
            if method == "DELETE":
                self.attributes[node_id].pop(key, None)
                return 200, {}
            try:
                value = json.loads(body)["value"]
            except (ValueError, KeyError, TypeError):
                return 400, {"message": "body must be {\"value\": ...}"}
            if isinstance(value, bool):
                kind = "bool"
            elif isinstance(value, int):
                kind = "number"
                if abs(value) > 2 ** 53 - 1:
                    return 400, {"message": "number out of range"}
            elif isinstance(value, str):
                kind = "string"
                if len(value) > 50 or not STRING_RE.match(value):
                    return 400, {"message": "invalid string value %r" % value}
            else:
                return 400, {"message": "value must be a string, an integer or a boolean"}
            if self.types.setdefault(key, kind) != kind:
                return 400, {"message": "attribute %s holds %s values" % (key, self.types[key])}
            self.attributes[node_id][key] = value
            self.devices[node_id]["lastSeen"] = iso(time.time())
            return 200, {}
        return 404, {"message": "not found"}


if __name__ == "__main__":
    fake = FakeTailscale(sys.argv[2], port=int(sys.argv[1]))
    print("fake Tailscale API on", fake.base, flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        fake.server.server_close()
