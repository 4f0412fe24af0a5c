"""test_netns.py: nodes on separate network stacks find each other by UDP broadcast, with no flags.

The test builds its own small LAN out of Linux network namespaces (iproute2's `ip netns`): one
namespace holds a bridge, and each node's namespace is joined to it by a veth pair (eth0,
10.77.<n>.x/24). Three `exo` processes start there with no discovery flags at all (no
EXO_DISCOVERY_MODULE either: UDP is the default), each with its own EXO_HOME, as three devices
on one Ethernet would; they must find each other and serve a request split across all three
(/v1/topology: 3 nodes, the plan spans them). A fourth joins: the plan grows to four and
requests keep succeeding. One is SIGKILLed during a streaming request: the stream completes,
identical to an undisturbed greedy run, and the three left serve on. The namespaces (and with
them every veth and the bridge) are deleted whatever happens. Needs root and iproute2;
elsewhere it prints why and exits 77, which ctest reports as skipped.

Run: sudo build/venv/bin/python tests/cluster/test_netns.py   (ctest runs it)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXO = os.environ.get("EXO_BINARY") or os.path.join(ROOT, "build", "exo")
TINY = os.environ.get("EXO_TINY_MODEL", os.path.join(ROOT, "build", "tiny.gguf"))
TINY_CHAT = TINY[:-len(".gguf")] + "-chat.gguf"
API_PORT = 52415
SKIP = 77


def skip(reason):
    print("SKIPPED netns: " + reason, flush=True)
    sys.exit(SKIP)


def sh(*args, check=True):
    p = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args), p.stderr.strip()))
    return p


class Lan:
    """A bridge in a namespace of its own, and one namespace per node wired to it."""

    def __init__(self):
        tag = "%x" % (os.getpid() % 0xfffff)
        self.tag = tag
        self.subnet = "10.77.%d" % (os.getpid() % 250 + 1)
        self.bridge_ns = "exo%sbr" % tag
        self.namespaces = []
        sh("ip", "netns", "add", self.bridge_ns)
        self.namespaces.append(self.bridge_ns)
        self.in_ns(self.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
        self.in_ns(self.bridge_ns, "ip", "link", "set", "br0", "up")

    def in_ns(self, ns, *args, check=True):
        return sh("ip", "netns", "exec", ns, *args, check=check)

    def add_host(self, n):
        """Namespace exo<tag>n<n> with eth0 at <subnet>.<n>/24 on the bridge; returns its name and address."""
        ns = "exo%sn%d" % (self.tag, n)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        outer = "v%s%d" % (self.tag, n)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", outer, "netns", self.bridge_ns)
        self.in_ns(self.bridge_ns, "ip", "link", "set", outer, "master", "br0")
        self.in_ns(self.bridge_ns, "ip", "link", "set", outer, "up")
        address = "%s.%d" % (self.subnet, n)
        self.in_ns(ns, "ip", "addr", "add", address + "/24", "broadcast", self.subnet + ".255", "dev", "eth0")
        self.in_ns(ns, "ip", "link", "set", "eth0", "up")
        self.in_ns(ns, "ip", "link", "set", "lo", "up")
        return ns, address

    def delete(self):
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


class Device:
    """One exo node alone in its namespace, started as a user would: no discovery flags."""

    def __init__(self, lan, n):
        self.ns, self.address = lan.add_host(n)
        self.lan = lan
        self.node_id = "dev%d" % n
        self.home = tempfile.mkdtemp(prefix="exo-netns-")
        self.log = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if k not in ("EXO_DISCOVERY_MODULE", "EXO_CLUSTER_KEY")}
        env["EXO_HOME"] = self.home
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, EXO, "--node-id", self.node_id, "--allow-model-paths",
             "--chatgpt-api-port", str(API_PORT), "--disable-tui", "--discovery-timeout", "10"],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env)

    def request(self, method, path, body=None, timeout=120):
        """An HTTP request from inside the node's namespace (curl there), as a client on that LAN."""
        args = ["ip", "netns", "exec", self.ns, "curl", "-s", "-m", str(timeout), "-X", method,
                "-w", "\n%{http_code}", "http://%s:%d%s" % (self.address, API_PORT, path)]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 10)
        text, _, status = p.stdout.rpartition("\n")
        return int(status or 0), text

    def topology(self):
        status, text = self.request("GET", "/v1/topology", timeout=10)
        return json.loads(text) if status == 200 else None

    def log_text(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.home, ignore_errors=True)


def wait_until(what, predicate, devices, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for d in devices:
            if d.proc.poll() is not None:
                raise AssertionError("%s exited while waiting for %s:\n%s" % (d.node_id, what, d.log_text()))
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n".join("--- %s\n%s" % (d.node_id, d.log_text()[-2000:]) for d in devices)
    raise AssertionError("timed out waiting for %s\n%s" % (what, logs))


def sees(devices, count):
    def check():
        for d in devices:
            t = d.topology()
            if not t or len(t["nodes"]) != count:
                return False
        return True
    return check


def chat(device, prompt="Say hello.", max_tokens=8):
    status, text = device.request("POST", "/v1/chat/completions", {
        "model": TINY_CHAT, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0})
    if status != 200:
        raise AssertionError("%s answered %d: %s" % (device.node_id, status, text[:300]))
    return json.loads(text)["choices"][0]["message"]["content"]


def stream_through_a_death(asker, victim, prompt, max_tokens):
    """A streaming greedy request to asker (curl in its namespace, read event by event); victim is
    SIGKILLed after the first 8 pieces of text. Returns (text, errors, finished)."""
    p = subprocess.Popen(["ip", "netns", "exec", asker.ns, "curl", "-sN", "-m", "120", "-H",
                          "Content-Type: application/json", "--data-binary", json.dumps({
                              "model": TINY_CHAT, "messages": [{"role": "user", "content": prompt}],
                              "max_tokens": max_tokens, "temperature": 0, "stream": True}),
                          "http://%s:%d/v1/chat/completions" % (asker.address, API_PORT)],
                         stdout=subprocess.PIPE, text=True)
    pieces, errors, finished = [], [], False
    for line in p.stdout:
        line = line.strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            finished = True
            break
        event = json.loads(line[6:])
        if "error" in event:
            errors.append(event["error"])
            continue
        piece = event["choices"][0].get("delta", {}).get("content")
        if piece:
            pieces.append(piece)
            if len(pieces) == 8:
                victim.proc.send_signal(signal.SIGKILL)
    p.wait(30)
    return "".join(pieces), errors, finished


def plan_of(device):
    return sorted(p["node_id"] for p in device.topology()["partitions"] if p["model"] == TINY_CHAT)


def plan_in_ring_order(device):
    parts = [p for p in device.topology()["partitions"] if p["model"] == TINY_CHAT]
    return [p["node_id"] for p in sorted(parts, key=lambda p: p["start_layer"])]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def main():
    if os.geteuid() != 0:
        skip("needs root to make network namespaces")
    for tool in ("ip", "curl"):
        if not shutil.which(tool):
            skip("needs `%s` (Debian: %s)" % (tool, "iproute2" if tool == "ip" else tool))
    probe = "exo%xprobe" % (os.getpid() % 0xfffff)
    p = sh("ip", "netns", "add", probe, check=False)
    if p.returncode != 0:
        skip("this system does not allow `ip netns add`: " + p.stderr.strip())
    sh("ip", "netns", "del", probe, check=False)
    if not os.path.exists(TINY_CHAT):
        raise AssertionError("missing test model " + TINY_CHAT)

    lan, devices = None, []
    try:
        lan = Lan()
        devices = [Device(lan, n) for n in (1, 2, 3)]
        t0 = time.time()
        wait_until("three nodes to find each other", sees(devices, 3), devices)
        formed = time.time() - t0
        for d in devices:
            t = d.topology()
            check(t["discovery"]["module"] == "udp", t["discovery"])
            peers = {n["id"]: n["address"] for n in t["nodes"] if n["id"] != d.node_id}
            # Found over the bridge, at their LAN addresses (not loopback).
            for other in devices:
                if other is not d:
                    check(peers.get(other.node_id) == other.address, (d.node_id, peers))
        answers = [chat(d) for d in devices]
        check(all(answers), answers)
        check(len(set(answers)) == 1, "greedy answers differ by the asking node: %r" % answers)
        for d in devices:
            check(plan_of(d) == ["dev1", "dev2", "dev3"], (d.node_id, plan_of(d)))
        print("three nodes formed a cluster in %.1f s and served a split request" % formed, flush=True)

        fourth = Device(lan, 4)
        devices.append(fourth)
        wait_until("the fourth node to join", sees(devices, 4), devices)
        wait_until("a plan over four nodes", lambda: (chat(devices[0]) is not None
                                                       and plan_of(devices[0]) == ["dev1", "dev2", "dev3", "dev4"]),
                   devices, timeout=60)
        for d in devices:
            check(chat(d) == answers[0], "%s's answer changed with the fourth node" % d.node_id)
            check(plan_of(d) == ["dev1", "dev2", "dev3", "dev4"], (d.node_id, plan_of(d)))
        print("a fourth node joined; the plan spans four and requests still succeed", flush=True)

        # One dies mid-stream (SIGKILL, not the asker): the stream completes, as an undisturbed run.
        story = "Tell me a long story about the sea."
        reference = chat(devices[0], story, max_tokens=160)
        victim = [d for d in devices if d.node_id == [p for p in plan_in_ring_order(devices[0])
                                                      if p != devices[0].node_id][0]][0]
        text, errors, finished = stream_through_a_death(devices[0], victim, story, 160)
        victim.proc.wait(10)
        check(errors == [] and finished, "the stream broke: %r" % errors)
        # Mid-stream: the asker re-planned after some of the tokens, not after all of them.
        replans = [l for l in devices[0].log_text().splitlines() if "re-planned" in l and victim.node_id in l]
        check(len(replans) == 1, "no single re-plan for %s in the asker's log: %r" % (victim.node_id, replans))
        check(text == reference, "the stream differs from an undisturbed run:\n%r\n%r" % (text, reference))
        survivors = [d for d in devices if d is not victim]
        wait_until("the others to drop %s" % victim.node_id, sees(survivors, 3), survivors, timeout=30)
        for d in survivors:
            check(chat(d) == answers[0], "%s's answer changed after %s died" % (d.node_id, victim.node_id))
            check(len(plan_of(d)) == 3 and victim.node_id not in plan_of(d), (d.node_id, plan_of(d)))
        print("%s was killed mid-stream; the stream completed as an undisturbed run" % victim.node_id, flush=True)
        devices.remove(victim)
        victim.stop()
        for d in devices:
            check(d.proc.poll() is None, "%s exited:\n%s" % (d.node_id, d.log_text()))
    finally:
        for d in devices:
            d.stop()
        if lan:
            lan.delete()
    left = [ns for ns in sh("ip", "netns", "list").stdout.split() if ns.startswith("exo%s" % lan.tag)]
    check(left == [], "namespaces left behind: %r" % left)
    print("OK", flush=True)


if __name__ == "__main__":
    main()
