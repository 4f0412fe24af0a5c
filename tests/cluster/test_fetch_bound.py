"""test_fetch_bound.py: a ring member fetching the model an open names, as its asker sees it (issue 16).

A member whose store lacks the model answers the asker's open with `ready`
+ `fetching` (done and total bytes) every few seconds until it has it; each
restarts the open's wait. What is checked, with real exo processes on
loopback (EXO_OFFLINE=1, the catalogue entry "tiny" from test_share.py's
homes):

- a peer that lies, answering every open with "fetching" forever (a raw wire
  peer written from docs/wire.md, test_hostile_peer.py's WirePeer, that
  claims room for the whole model so the plan puts it there), holds the
  request only until a bound: `--fetch-timeout` while its bytes grow, and
  `--fetch-stall` while they do not; the client gets an error naming the node,
  the model and the limit, and the peer is told to close the request;
- while it lasts, the asker's GET /v1/download/progress lists the fetch under
  the peer's node id (model, bytes, total, a speed, "source": "request"), and
  afterwards as failed with the same message.
A real member's fetch listed on its asker: test_cluster_download.py.

Run: build/venv/bin/python tests/cluster/test_fetch_bound.py   (ctest runs it)
"""

import json
import os
import shutil
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as cluster  # noqa: E402  (its node helpers, not its tests)
import test_hostile_peer as hostile  # noqa: E402  (its wire client)
import test_share as share  # noqa: E402  (homes holding "tiny", raw holders)

PROMPT = share.PROMPT
CLAIMED_TOTAL = 50 * 1000 * 1000


def progress(node):
    return json.loads(node.request("GET", "/v1/download/progress")[1])


def chat_status(node, max_tokens=4):
    status, raw, _ = node.request("POST", "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens})
    return status, raw.decode() if isinstance(raw, bytes) else raw


class Liar(threading.Thread):
    """A peer that says it has room for the whole model and answers every open
    with `ready` + `fetching` every 0.2 s until the asker closes the request:
    its `done` grows by 1 MB a message when grow, else stays put."""

    def __init__(self, port, grow):
        super().__init__(daemon=True)
        self.grow = grow
        self.peer = hostile.WirePeer(port, timeout=1)
        self.lock = threading.Lock()
        self.opens, self.closes, self.stopped = [], [], False
        hello = {"node_id": "liar", "instance": "raw-liar", "port": 1, "address": "127.0.0.1", "version": "test",
                 "capabilities": {"memory": 200000, "flops": {"fp32": 1.0, "fp16": 1.0, "int8": 2.0}}}
        self.send(hostile.HELLO, json.dumps(hello).encode())
        self.start()

    def send(self, ftype, payload, rid=0):
        with self.lock:
            self.peer.send(self.peer.frame(ftype, payload, rid))

    def keep_fetching(self, rid):
        done = 1000 * 1000
        while not self.stopped and rid not in self.closes:
            msg = {"t": "ready", "fetching": "tiny", "done": done, "total": CLAIMED_TOTAL}
            try:
                self.send(hostile.CONTROL, json.dumps(msg).encode(), rid)
            except OSError:
                return
            if self.grow:
                done += 1000 * 1000
            time.sleep(0.2)

    def run(self):
        while not self.stopped:
            try:
                ftype, rid, payload, _ = self.peer.read_frame()
            except socket.timeout:
                continue
            except (hostile.Closed, OSError):
                return
            if ftype == hostile.PING:
                self.send(hostile.PONG, payload)
            elif ftype == hostile.CONTROL:
                msg = json.loads(payload)
                if msg.get("t") == "open":
                    self.opens.append(rid)
                    threading.Thread(target=self.keep_fetching, args=(rid,), daemon=True).start()
                elif msg.get("t") == "close":
                    self.closes.append(rid)

    def close(self):
        self.stopped = True
        self.peer.close()


class FetchBound(unittest.TestCase):
    def with_liar(self, grow, flags, check):
        home = share.make_home(True)  # the asker has the model (it tokenizes); the liar "fetches" it
        node = share.start_nodes([("a", 1000, home)], *flags)[0]
        liar = Liar(node.wire_port, grow)
        try:
            share.wait_peers(node, 2)
            check(node, liar)
        finally:
            liar.close()
            node.stop()
            shutil.rmtree(home)

    def ended_by(self, node, liar, why, flag):
        """Chats on node while polling its progress: the chat must fail with why and flag, the
        fetch be listed while it ran and as failed after. Returns the events seen while it ran."""
        out, seen = {}, []
        t = threading.Thread(target=lambda: out.update(zip(("status", "text"), chat_status(node))))
        t.start()
        while t.is_alive():
            ev = progress(node).get("liar")
            if ev:
                seen.append(ev)
            time.sleep(0.1)
        t.join()
        self.assertNotEqual(out["status"], 200, out["text"])
        self.assertIn(why, out["text"])
        self.assertIn(flag, out["text"])
        running = [e for e in seen if e["status"] == "in_progress"]
        self.assertTrue(running, seen)
        ev = running[-1]
        self.assertEqual((ev["model"], ev["source"], ev["total_bytes"]), ("tiny", "request", CLAIMED_TOTAL))
        self.assertGreaterEqual(ev["downloaded_bytes"], 1000 * 1000)
        final = progress(node)["liar"]
        self.assertEqual(final["status"], "failed", final)
        self.assertIn(flag, final["error"])
        return seen

    def test_endless_fetch_ends_at_the_total_bound(self):
        def check(node, liar):
            seen = self.ended_by(node, liar, "node liar has been fetching model 'tiny' for 3 s", "--fetch-timeout 3")
            self.assertTrue(any(e["overall_speed"] > 0 for e in seen), seen)  # its bytes grew
            # The asker closed the request on the liar.
            self.assertTrue(liar.opens)
            deadline = time.time() + 10
            while time.time() < deadline and not set(liar.opens) <= set(liar.closes):
                time.sleep(0.1)
            self.assertLessEqual(set(liar.opens), set(liar.closes))
        self.with_liar(True, ["--fetch-timeout", "3"], check)

    def test_stalled_fetch_ends_at_the_stall_bound(self):
        def check(node, liar):
            seen = self.ended_by(node, liar, "node liar's fetch of model 'tiny' made no progress for 2 s",
                                 "--fetch-stall 2")
            self.assertTrue(all(e["downloaded_bytes"] == 1000 * 1000 for e in seen), seen)
        self.with_liar(False, ["--fetch-stall", "2", "--fetch-timeout", "600"], check)

    def test_bad_bounds_are_refused(self):
        for flag in ("--fetch-timeout", "--fetch-stall"):
            home = share.make_home(False)
            try:
                with self.assertRaises(Exception) as caught:
                    share.start_nodes([("a", 1000, home)], flag, "0")
                self.assertIn("%s must be a number of seconds above 0" % flag, str(caught.exception))
            finally:
                shutil.rmtree(home)


if __name__ == "__main__":
    unittest.main(verbosity=2)
