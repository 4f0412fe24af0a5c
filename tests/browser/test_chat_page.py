#!/usr/bin/env python3
"""test_chat_page.py: the chat page (web/) in headless Chromium against a real node.

Starts `build/exo` on a free port, opens the page with Selenium and checks what
a person would: the model picker, a streamed answer with its figures, Markdown
rendering that cannot inject HTML, conversations that survive a reload, copying
an answer, regenerating it, editing and resending a question, exporting as
Markdown and JSON, the stop button, the drawers at phone width (and no scrim
left after widening), a node that goes away (a clear message, then Retry), the
cluster panel (two nodes: flops and round trip), a model missing from the store,
and the open-cluster notice. Screenshots go to build/chat_page.png
(wide) and build/chat_page_narrow.png (phone width).

Needs Debian's `chromium` and `chromium-driver`, and Selenium (PyPI `selenium`).
If Selenium is not importable here, the script re-runs itself with
build/venv-browser/bin/python when that exists. Prints SKIPPED and exits 0 only
when Chromium or chromedriver is missing; any failed check exits 1.

Environment: EXO_BIN (default build/exo), EXO_TEST_URL (test a node that is
already running instead of starting one), EXO_TEST_KEEP_LOG=1 (print the
node's log at the end).
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_PY = os.path.join(ROOT, "build", "venv-browser", "bin", "python")
MODEL = "smollm2-135m"
QUESTION = "Write a Python function that adds two numbers.\nShow it in a code block."


def find_tool(names, fallbacks):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    for p in fallbacks:
        if os.path.exists(p):
            return p
    return None


CHROMIUM = find_tool(["chromium", "chromium-browser"], ["/usr/bin/chromium", "/usr/lib/chromium/chromium"])
DRIVER = find_tool(["chromedriver"], ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
if not CHROMIUM or not DRIVER:
    print("SKIPPED: browser test of the chat page needs Debian's chromium and chromium-driver "
          "(apt-get install -y chromium chromium-driver); found chromium=%s chromedriver=%s" % (CHROMIUM, DRIVER))
    sys.exit(0)

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    if os.path.exists(VENV_PY) and not os.environ.get("EXO_BROWSER_REEXEC"):
        os.environ["EXO_BROWSER_REEXEC"] = "1"
        os.execv(VENV_PY, [VENV_PY] + sys.argv)
    print("FAIL: Selenium is not installed. Install it with:\n"
          "  python3 -m venv build/venv-browser && build/venv-browser/bin/pip install selenium", file=sys.stderr)
    sys.exit(2)


# ---- the checks' bookkeeping --------------------------------------------------------

passed, failed = [], []


def check(name, ok, detail=""):
    (passed if ok else failed).append(name)
    print("%s %s%s" % ("ok  " if ok else "FAIL", name, (": " + detail) if detail else ""), flush=True)
    return ok


# ---- the node ------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(url, timeout=5):
    """GET over a keep-alive HTTP/1.1 connection, as a browser sends it."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path or "/")
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


class Node:
    def __init__(self, extra_args=(), url=None, port=None, env=None):
        self.proc = None
        self.log = None
        self.extra_args = list(extra_args)
        self.port = port
        self.env = env
        self.url = (os.environ.get("EXO_TEST_URL", "") if url is None else url).rstrip("/")

    def start(self):
        if self.url:
            return
        exe = os.environ.get("EXO_BIN", os.path.join(ROOT, "build", "exo"))
        if not os.path.exists(exe):
            raise RuntimeError("no node binary at %s (build it: cmake --build build)" % exe)
        port = self.port or free_port()
        self.port = port
        self.log = tempfile.NamedTemporaryFile(prefix="exo-browser-test-", suffix=".log", delete=False)
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen([exe, "--chatgpt-api-port", str(port), "--api-host", "127.0.0.1"] + self.extra_args,
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        self.url = "http://127.0.0.1:%d" % port
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the node exited with status %d:\n%s" % (self.proc.returncode, self.log_text()))
            try:
                if http_get(self.url + "/healthcheck", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the node did not answer /healthcheck within 60 s:\n" + self.log_text())

    def log_text(self):
        if not self.log:
            return ""
        self.log.flush()
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            if os.environ.get("EXO_TEST_KEEP_LOG"):
                print("---- node log ----\n" + self.log_text())
            self.log.close()
            os.unlink(self.log.name)


# ---- the browser ------------------------------------------------------------------

def make_driver(width=1280, height=860):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=%d,%d" % (width, height), "--force-prefers-reduced-motion", "--lang=en-US"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def wait_for(driver, fn, timeout, what):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: fn(d))
    except TimeoutException:
        raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def last_answer(driver):
    """The last assistant message as {busy, text, stats, error, stopped} or None."""
    return driver.execute_script("""
        const all = document.querySelectorAll('#messages .msg.assistant');
        const m = all[all.length - 1];
        if (!m) return null;
        const q = (s) => { const e = m.querySelector(s); return e ? e.textContent : null; };
        return { busy: m.getAttribute('aria-busy') === 'true', text: m.querySelector('.msg-body').textContent,
                 ttft: q('.stat-ttft'), tps: q('.stat-tps'), tokens: q('.stat-tokens'),
                 stopped: !!m.querySelector('.stat-finish.stopped'), error: q('.msg-error'), count: all.length };
    """)


def set_field(driver, el_id, value):
    el = driver.find_element(By.ID, el_id)
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(str(value))
    el.send_keys(Keys.TAB)  # commits it ("change")
    got = el.get_attribute("value")
    if got != str(value):
        raise AssertionError("could not set #%s to %s (it holds %r)" % (el_id, value, got))


def send_message(driver, text):
    box = driver.find_element(By.ID, "prompt")
    box.click()
    lines = text.split("\n")
    for i, line in enumerate(lines):
        box.send_keys(line)
        if i < len(lines) - 1:
            box.send_keys(Keys.SHIFT, Keys.ENTER)
    box.send_keys(Keys.ENTER)


def wait_answer_done(driver, n_before, timeout=120):
    seen = {}

    def done(d):
        a = seen["a"] = last_answer(d)
        return a if a and a["count"] > n_before and not a["busy"] else None
    try:
        return wait_for(driver, done, timeout, "the answer to complete")
    except AssertionError as e:
        a = dict(seen.get("a") or {})
        if a.get("text") and len(a["text"]) > 300:
            a["text"] = a["text"][:150] + " ... " + a["text"][-150:]
        raise AssertionError("%s; last answer seen: %r" % (e, a))


def last_answer_id(driver):
    return driver.execute_script(
        "const all = document.querySelectorAll('#messages .msg.assistant');"
        "return all.length ? all[all.length - 1].dataset.msgId : null")


def wait_new_answer(driver, old_id, timeout=60):
    """Waits for the last answer to be a new message (not old_id) that has completed."""
    def done(d):
        a = last_answer(d)
        return a if a and not a["busy"] and last_answer_id(d) not in (None, old_id) else None
    return wait_for(driver, done, timeout, "a new answer in place of %s" % old_id)


def stored_messages(driver):
    """The current conversation's messages as the page keeps them: [(role, content)]."""
    return driver.execute_script("""
        const s = exoChat.state, c = s.convs.find(c => c.id === s.current);
        return c ? c.messages.map(m => [m.role, m.content]) : [];
    """)


COPY_JS = r"""
// A stub for the Clipboard API (headless Chromium's needs a permission), then
// the page's fallback: no Clipboard API, execCommand('copy') on a hidden textarea.
window.__copied = [];
Object.defineProperty(navigator, 'clipboard', {configurable: true, value: {
  writeText: (t) => { window.__copied.push(['clipboard', t]); return Promise.resolve(); }}});
const answers = document.querySelectorAll('#messages .msg.assistant');
const btn = answers[answers.length - 1].querySelector('.msg-actions .copy-answer');
if (!btn) return null;
btn.click();
return btn.getAttribute('aria-label');
"""

COPY_FALLBACK_JS = r"""
Object.defineProperty(navigator, 'clipboard', {configurable: true, value: undefined});
document.execCommand = function (cmd) {
  const ta = document.activeElement && document.activeElement.tagName === 'TEXTAREA' ? document.activeElement
    : document.querySelector('textarea[readonly]');
  window.__copied.push([cmd, ta ? ta.value.substring(ta.selectionStart, ta.selectionEnd) : null]);
  return true;
};
const answers = document.querySelectorAll('#messages .msg.assistant');
answers[answers.length - 1].querySelector('.msg-actions .copy-answer').click();
"""

# Catches the page's downloads: the Blob each export makes and the link's name.
EXPORT_HOOK_JS = r"""
window.__exports = [];
const create = URL.createObjectURL;
URL.createObjectURL = function (blob) {
  const url = create.call(URL, blob);
  window.__exports.push({blob: blob, url: url});
  return url;
};
const click = HTMLAnchorElement.prototype.click;
HTMLAnchorElement.prototype.click = function () {
  const e = window.__exports[window.__exports.length - 1];
  if (this.hasAttribute('download') && e && e.url === this.href) { e.name = this.download; return; }
  return click.call(this);
};
"""

EXPORT_READ_JS = r"""
const done = arguments[arguments.length - 1];
Promise.all(window.__exports.map(e => e.blob.text().then(t => ({name: e.name || null, type: e.blob.type, text: t}))))
  .then(done, (err) => done(String(err)));
"""


def page_ready(driver, url):
    driver.get(url + "/")
    wait_for(driver, lambda d: d.execute_script(
        "return !!window.exoChat && !document.getElementById('model').disabled"), 30, "the page and its model list")


MARKDOWN_JS = r"""
window.__exoAlerted = false;
window.alert = function () { window.__exoAlerted = true; };
const md = [
  '# Title', '',
  'Some **bold**, a [bad link](javascript:alert(1)), a [good one](https://example.com/) and `inline code`.', '',
  '```python', 'def add(x, y):', '    # comment', '    return x + y', '```', '',
  '<img src=x onerror=alert(1)>', '',
  'Inline <script>alert(1)</script> and <kbd><img/src=x/onerror=alert(1)></kbd>', '',
  '<div onmouseover="alert(1)">hover</div>', '',
  '![pic](https://example.com/a.png)', '',
  '| a | b |', '|---|---|', '| 1 | 2 |',
].join('\n');
const div = document.createElement('div');
div.id = 'md-test';
document.body.appendChild(div);
exoChat.renderMarkdownInto(div, md);
const partial = document.createElement('div');
exoChat.renderMarkdownInto(partial, 'Streaming:\n\n```js\nconst x = 1;\nfunction f(');
const all = Array.from(div.querySelectorAll('*'));
const out = {
  code: !!div.querySelector('pre code.hljs'),
  codeClass: (div.querySelector('pre code') || {}).className || '',
  spans: div.querySelectorAll('pre code.hljs span[class^="hljs-"]').length,
  h1: !!div.querySelector('h1'), strong: !!div.querySelector('strong'), table: !!div.querySelector('table'),
  inlineCode: !!div.querySelector('p code'),
  imgs: document.querySelectorAll('img').length,
  scripts: div.querySelectorAll('script').length,
  divs: div.querySelectorAll('div:not(.code-bar)').length,
  onAttrs: all.filter(e => Array.from(e.attributes).some(a => /^on/i.test(a.name))).length,
  jsLinks: Array.from(div.querySelectorAll('a')).filter(a => /^\s*javascript:/i.test(a.getAttribute('href') || '')).length,
  goodLink: !!div.querySelector('a[href="https://example.com/"]'),
  text: div.textContent,
  partialCode: !!partial.querySelector('pre code.hljs'),
};
return out;
"""


def check_cluster_and_missing_model(driver):
    home = tempfile.mkdtemp(prefix="exo-browser-home-")
    peers_path = os.path.join(home, "peers.json")
    ids = ["page-a", "page-b"]
    # A node measures its own flops at start; a peer's come from the peers
    # file (manual discovery), so page-b's are given there.
    peers = {i: {"address": "127.0.0.1", "port": free_port()} for i in ids}
    peers["page-b"]["device_capabilities"] = {"flops": {"fp32": 1.5, "fp16": 3.0, "int8": 6.0}}
    with open(peers_path, "w") as f:
        json.dump({"peers": peers}, f)
    nodes = [Node(["--node-id", i, "--discovery-config-path", peers_path, "--node-host", "127.0.0.1"], url="",
                  env={"EXO_HOME": home}) for i in ids]
    try:
        for n in nodes:
            n.start()
        url = nodes[0].url

        def topo_ready(_):
            t = json.loads(http_get(url + "/v1/topology")[1])
            ns = {n["id"]: n for n in t.get("nodes", [])}
            return t if len(ns) == 2 and isinstance(ns.get("page-b", {}).get("rtt_us"), (int, float)) else None
        topo = wait_for(driver, topo_ready, 30, "two nodes and a round trip in /v1/topology")
        driver.get(url + "/")
        wait_for(driver, lambda d: d.execute_script(
            "return !!window.exoChat && !document.getElementById('model').disabled"), 30, "the model list")
        driver.execute_script("exoChat.refreshTopology()")
        cards = wait_for(driver, lambda d: d.execute_script("""
            const cards = Array.from(document.querySelectorAll('#topology .node'));
            const t = (c, s) => { const e = c.querySelector(s); return e ? e.textContent : null; };
            const out = cards.map(c => ({id: c.dataset.nodeId, flops: t(c, '.node-flops'), rtt: t(c, '.node-rtt')}));
            return out.length === 2 && out.every(c => c.flops) ? out : null;
        """), 20, "two nodes with their flops in the cluster panel")
        api = {n["id"]: n for n in topo["nodes"]}

        def flops_ok(c):
            fp32 = api[c["id"]]["capabilities"]["flops"]["fp32"]
            try:
                shown = float(c["flops"].split()[0])
            except ValueError:
                return False
            return c["flops"].endswith("TFLOPS fp32") and abs(shown - fp32) <= 0.05 * fp32
        check("cluster panel: each node's fp32 TFLOPS from /v1/topology", all(flops_ok(c) for c in cards),
              repr(cards) + " api: " + repr({k: v["capabilities"].get("flops") for k, v in api.items()}))
        peer = [c for c in cards if c["id"] == "page-b"]
        check("cluster panel: a peer's round trip (rtt_us)",
              len(peer) == 1 and bool(peer[0]["rtt"]) and (peer[0]["rtt"].endswith(" ms") or peer[0]["rtt"].endswith(" \u00b5s")),
              repr(cards))

        status = driver.find_element(By.ID, "status").get_attribute("textContent")
        options = driver.execute_script("return Array.from(document.querySelectorAll('#model option')).map(o => o.text)")
        check("missing model: the picker and the status say nothing is downloaded",
              status == "no model downloaded" and any(o.startswith(MODEL + " (not downloaded") for o in options),
              "%r %r" % (status, options))
        hint = driver.execute_script("const e = document.querySelector('#messages .empty-missing'); return e && e.textContent")
        check("missing model: the empty conversation says how to get one", bool(hint) and "exo models" in hint, repr(hint))
        send_message(driver, "Hello?")
        a = wait_answer_done(driver, 0, timeout=20)
        err = a["error"] or ""
        check("missing model: sending says the model is missing and how to get it",
              "not downloaded" in err and MODEL in err and "exo models" in err and "is the node running" not in err,
              repr(err))
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(home, ignore_errors=True)


def main():
    node = Node()
    driver = None
    shots = os.path.join(ROOT, "build")
    os.makedirs(shots, exist_ok=True)
    try:
        node.start()
        url = node.url
        print("node at %s" % url, flush=True)
        driver = make_driver()

        # -- the page, the model picker -------------------------------------------------
        page_ready(driver, url)
        check("page title", driver.title == "exo chat", driver.title)
        options = driver.execute_script(
            "return Array.from(document.querySelectorAll('#model option')).map(o => o.value)")
        check("model picker lists %s" % MODEL, MODEL in options, repr(options))
        check("model picker selects it", driver.find_element(By.ID, "model").get_attribute("value") == MODEL)

        # -- Markdown: highlighted, sanitised -----------------------------------------------------
        r = driver.execute_script(MARKDOWN_JS)
        check("markdown: code block highlighted", r["code"] and r["spans"] > 0 and "language-python" in r["codeClass"],
              "class=%r spans=%d" % (r["codeClass"], r["spans"]))
        check("markdown: heading, bold, table, inline code", r["h1"] and r["strong"] and r["table"] and r["inlineCode"])
        check("markdown: no <img>, <script>, on* attribute or raw <div> injected",
              r["imgs"] == 0 and r["scripts"] == 0 and r["onAttrs"] == 0 and r["divs"] == 0, json.dumps(
                  {k: r[k] for k in ("imgs", "scripts", "onAttrs", "divs")}))
        check("markdown: javascript: link dropped, https link kept", r["jsLinks"] == 0 and r["goodLink"])
        check("markdown: injected HTML shown as text", "<img src=x onerror=alert(1)>" in r["text"])
        check("markdown: unfinished code fence renders while streaming", r["partialCode"])
        time.sleep(0.5)
        check("markdown: nothing ran", driver.execute_script("return window.__exoAlerted") is False)
        driver.execute_script("document.getElementById('md-test').remove()")

        # -- the topology panel --------------------------------------------------------------
        mem = wait_for(driver, lambda d: d.execute_script(
            "const e = document.querySelector('#topology .node .node-memory'); return e && e.textContent"),
            20, "a node in the cluster panel")
        check("topology panel shows a node with its memory", mem.endswith("GiB") or mem.endswith("MiB"), mem)
        # The open-cluster notice follows what the node says (a node with a
        # cluster key in its EXO_HOME is keyed, one without is open).
        open_cluster = json.loads(http_get(url + "/v1/topology")[1]).get("open_cluster")
        notice = driver.execute_script(
            "const e = document.getElementById('open-cluster'); return e && [!e.hidden, e.textContent]")
        check("open-cluster notice shown exactly when the node has no cluster key",
              notice is not None and open_cluster in (True, False) and notice[0] == open_cluster
              and "exo key" in notice[1], "open_cluster=%r notice=%r" % (open_cluster, notice))

        # -- a streamed answer, with figures; Shift+Enter makes a new line ------------------------
        # Temperature 0 (greedy) keeps the answers, and so this test, repeatable.
        driver.find_element(By.ID, "temperature").send_keys(Keys.HOME)
        check("temperature slider set from the keyboard",
              driver.find_element(By.ID, "temperature-out").text == "0.00")
        set_field(driver, "max-tokens", 160)
        n0 = driver.execute_script("return document.querySelectorAll('#messages .msg.assistant').length")
        send_message(driver, QUESTION)
        user_text = wait_for(driver, lambda d: d.execute_script(
            "const u = document.querySelectorAll('#messages .msg.user .msg-body'); return u.length && u[u.length-1].textContent"),
            10, "the question to show")
        check("Shift+Enter keeps a newline, Enter sends", user_text == QUESTION, repr(user_text))
        check("stop button shown while generating", driver.find_element(By.ID, "stop").is_displayed()
              or last_answer(driver)["busy"] is False)
        a = wait_answer_done(driver, n0)
        check("answer streamed and completed", bool(a["text"].strip()) and not a["error"], repr(a["text"][:120]))
        check("answer figures: TTFT and tok/s", bool(a["ttft"]) and bool(a["tps"]),
              "%s | %s | %s" % (a["ttft"], a["tps"], a["tokens"]))
        check("send button back after the answer", driver.find_element(By.ID, "send").is_displayed()
              and not driver.find_element(By.ID, "stop").is_displayed())
        first_answer = a["text"]

        layers = wait_for(driver, lambda d: d.execute_script(
            "const e = document.querySelector('#topology .partition'); return e && e.textContent"),
            20, "the loaded model's layers in the cluster panel")
        check("topology panel shows the layers the node holds", MODEL in layers and "layers" in layers, layers)

        # -- the conversation survives a reload ---------------------------------------------------
        page_ready(driver, url)
        texts = driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages .msg .msg-body')).map(e => e.textContent)")
        title = driver.execute_script(
            "const e = document.querySelector('#chat-list .chat-item.active .chat-open'); return e && e.textContent")
        check("conversation survives a reload",
              len(texts) >= 2 and texts[-2] == QUESTION and texts[-1] == first_answer,
              repr(texts[-2:]))
        check("conversation titled from its first message", bool(title) and QUESTION.startswith(title[:20]),
              repr(title))
        check("figures survive a reload", bool(last_answer(driver)["ttft"]))
        driver.save_screenshot(os.path.join(shots, "chat_page.png"))

        # -- copy a whole answer: its Markdown source, through the Clipboard API or the fallback --
        stored = stored_messages(driver)
        label = driver.execute_script(COPY_JS)
        copied = wait_for(driver, lambda d: d.execute_script("return window.__copied.length && window.__copied"),
                          5, "the copy button to copy")
        check("copy: a labelled button per answer copies the whole answer (Markdown source)",
              label == "Copy answer" and copied == [["clipboard", stored[-1][1]]] and "```" in copied[0][1],
              "label=%r copied=%r" % (label, copied))
        check("copy: the button says it copied", wait_for(driver, lambda d: d.execute_script(
            "const a = document.querySelectorAll('#messages .msg.assistant .copy-answer');"
            "return a[a.length - 1].textContent === 'Copied'"), 3, "'Copied'"))
        driver.execute_script("window.__copied = []")
        driver.execute_script(COPY_FALLBACK_JS)
        copied = wait_for(driver, lambda d: d.execute_script("return window.__copied.length && window.__copied"),
                          5, "the fallback copy")
        check("copy: without the Clipboard API, execCommand copies the answer from a hidden textarea",
              copied == [["copy", stored[-1][1]]], repr(copied)[:200])
        check("copy: the hidden textarea is gone", not driver.execute_script("return document.querySelector('textarea[readonly]')"))

        # -- regenerate the last answer ---------------------------------------------------------------
        set_field(driver, "max-tokens", 24)
        n = last_answer(driver)["count"]
        send_message(driver, "Thanks!")
        wait_answer_done(driver, n, timeout=60)
        regen = driver.execute_script("return Array.from(document.querySelectorAll('#messages .regenerate'))"
                                      ".map(b => [b.closest('.msg').dataset.msgId, b.getAttribute('aria-label')])")
        old_id = last_answer_id(driver)
        check("regenerate: one labelled button, on the last answer only",
              len(regen) == 1 and regen[0] == [old_id, "Regenerate answer"], repr(regen))
        before = stored_messages(driver)
        driver.find_element(By.CSS_SELECTOR, "#messages .msg.assistant:last-child .regenerate").click()
        a = wait_new_answer(driver, old_id)
        after = stored_messages(driver)
        check("regenerate: the last answer is replaced by a new one",
              len(after) == len(before) == 4 and after[:3] == before[:3] and a["count"] == 2 and not a["error"]
              and bool(a["ttft"]), "%d -> %d messages, %r" % (len(before), len(after), a["text"][:60]))

        # -- edit a question and send it again: what followed it is dropped -------------------------
        first_user = driver.find_element(By.CSS_SELECTOR, "#messages .msg.user .edit-msg")
        check("edit: a labelled button per question", first_user.get_attribute("aria-label") == "Edit and resend this message")
        first_user.click()
        box = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .msg-edit textarea"), 5,
                       "the edit box")[0]
        check("edit: the box holds the question", box.get_attribute("value") == QUESTION)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("What is 2 + 2?")
        old_id = last_answer_id(driver)
        box.send_keys(Keys.ENTER)
        a = wait_new_answer(driver, old_id)
        after = stored_messages(driver)
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages .msg .msg-body')).map(e => e.textContent)")
        check("edit: the conversation after the question is dropped and the answer regenerated",
              len(after) == 2 and after[0] == ["user", "What is 2 + 2?"] and after[1][0] == "assistant"
              and len(shown) == 2 and shown[0] == "What is 2 + 2?" and not a["error"] and bool(a["ttft"]),
              repr(after)[:200])
        title = driver.execute_script(
            "const e = document.querySelector('#chat-list .chat-item.active .chat-open'); return e && e.textContent")
        check("edit: the first question's edit renames the conversation", title == "What is 2 + 2?", repr(title))

        # -- export the conversation as Markdown and as JSON ------------------------------------------
        driver.execute_script(EXPORT_HOOK_JS)
        md_btn, json_btn = driver.find_element(By.ID, "export-md"), driver.find_element(By.ID, "export-json")
        check("export: labelled buttons", md_btn.get_attribute("aria-label") == "Export conversation as Markdown"
              and json_btn.get_attribute("aria-label") == "Export conversation as JSON")
        md_btn.click()
        json_btn.click()
        driver.set_script_timeout(10)
        files = driver.execute_async_script(EXPORT_READ_JS)
        ok = isinstance(files, list) and len(files) == 2
        check("export: two downloads through Blob links", ok, repr(files)[:200])
        if ok:
            md, js = files
            answer = after[1][1]
            check("export: Markdown file with the title, the question and the answer",
                  md["name"].endswith(".md") and md["type"].startswith("text/markdown")
                  and md["text"].startswith("# What is 2 + 2?\n") and "## You\n\nWhat is 2 + 2?" in md["text"]
                  and "## exo (%s)" % MODEL in md["text"] and answer.strip() in md["text"],
                  "%s %s %r" % (md["name"], md["type"], md["text"][:200]))
            try:
                doc = json.loads(js["text"])
            except ValueError:
                doc = {}
            msgs = doc.get("messages") or []
            check("export: JSON file with the messages in the chat API's shape",
                  js["name"].endswith(".json") and js["type"] == "application/json"
                  and doc.get("title") == "What is 2 + 2?"
                  and [(m.get("role"), m.get("content")) for m in msgs] == [tuple(x) for x in after]
                  and msgs[1].get("model") == MODEL and "tokens" in (msgs[1].get("stats") or {}),
                  "%s %r" % (js["name"], js["text"][:300]))

        # -- a second conversation, and the stop button -------------------------------------------
        n_chats = len(driver.find_elements(By.CSS_SELECTOR, "#chat-list .chat-item"))
        driver.find_element(By.ID, "new-chat").click()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .empty"), 5, "an empty conversation")
        set_field(driver, "max-tokens", 2000)
        # A prompt the model answers at length (600+ greedy tokens; a counting
        # prompt stopped after 51 or 121 tokens depending on last-bit numerics,
        # too soon to press stop).
        send_message(driver, "Write a very long essay about the history of the Roman Empire.")
        seen = set()

        def growing(d):
            a = last_answer(d)
            if a and a["text"]:
                seen.add(len(a["text"]))
            return len(seen) >= 3 and max(seen) >= 20
        wait_for(driver, growing, 90, "the long answer to start streaming")
        check("answer renders incrementally while streaming", len(seen) >= 3, "lengths seen: %s" % sorted(seen)[:6])
        check("a new conversation is listed",
              len(driver.find_elements(By.CSS_SELECTOR, "#chat-list .chat-item")) == n_chats + 1)
        busy_before = last_answer(driver)["busy"]
        driver.find_element(By.ID, "stop").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "send").is_displayed(), 10, "the UI to be ready after stop")
        a1 = last_answer(driver)
        time.sleep(1.5)
        a2 = last_answer(driver)
        check("stop cancels the generation", busy_before and a1["stopped"] and not a2["busy"]
              and a1["text"] == a2["text"], "%d chars, stopped=%s" % (len(a2["text"]), a1["stopped"]))
        check("stop: prompt box usable again",
              driver.find_element(By.ID, "prompt").is_enabled() and not driver.find_element(By.ID, "stop").is_displayed())
        # The node must be free again: a short follow-up is answered promptly.
        set_field(driver, "max-tokens", 16)
        n1 = a2["count"]
        t0 = time.time()
        send_message(driver, "Thanks!")
        a3 = wait_answer_done(driver, n1, timeout=60)
        # The answer itself may be empty: after a cut-off reply, greedy decoding
        # can end the turn at once. What matters is that it completes, unerrored,
        # with its figures (the stream ran to its end).
        check("after stop the node answers the next message", not a3["error"] and bool(a3["ttft"]),
              "%.1f s, TTFT %s, text %r" % (time.time() - t0, a3["ttft"], a3["text"][:40]))

        # -- delete a conversation ---------------------------------------------------------------
        n_chats = len(driver.find_elements(By.CSS_SELECTOR, "#chat-list .chat-item"))
        driver.find_element(By.CSS_SELECTOR, "#chat-list .chat-item.active .chat-delete").click()
        driver.switch_to.alert.accept()
        check("delete removes a conversation",
              len(driver.find_elements(By.CSS_SELECTOR, "#chat-list .chat-item")) == n_chats - 1)

        # -- no errors in the console (highlight.js 9 prints an EOL notice at info level) ---------
        logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"
                and "chat/completions" not in e.get("message", "")]
        check("no errors in the browser console", not logs, "; ".join(e["message"][:160] for e in logs[:3]))

        # -- phone width --------------------------------------------------------------------------
        driver.set_window_size(390, 844)
        time.sleep(0.3)
        toggle = driver.find_element(By.ID, "toggle-chats")
        check("narrow: conversations behind a menu button", toggle.is_displayed() and not driver.find_element(
            By.ID, "new-chat").is_displayed())
        driver.save_screenshot(os.path.join(shots, "chat_page_narrow.png"))
        toggle.click()
        time.sleep(0.4)
        check("narrow: menu button opens the conversations",
              driver.find_element(By.ID, "new-chat").is_displayed() and toggle.get_attribute("aria-expanded") == "true")
        # Widened with the drawer open: the drawer is a column again, and no
        # scrim may be left over the page to swallow clicks.
        driver.set_window_size(900, 860)
        time.sleep(0.4)
        covered = driver.execute_script("""
            const p = document.getElementById('prompt').getBoundingClientRect();
            const e = document.elementFromPoint(p.left + p.width / 2, p.top + p.height / 2);
            return e && e.id !== 'prompt' ? (e.id || e.className || e.tagName) : null;
        """)
        try:
            driver.find_element(By.ID, "prompt").click()
            clicked = True
        except Exception as e:
            clicked = "%s" % type(e).__name__
        check("widening with the drawer open leaves nothing over the page",
              covered is None and clicked is True and toggle.get_attribute("aria-expanded") == "false",
              "covered by %r, click %r" % (covered, clicked))
        driver.set_window_size(390, 844)
        time.sleep(0.3)
        narrow = driver.execute_script("""
            const vis = (e) => { if (!e) return false; const r = e.getBoundingClientRect();
                                 return r.width > 0 && r.left >= 0 && r.right <= innerWidth + 1; };
            const q = (s) => Array.from(document.querySelectorAll(s));
            return { overflow: document.documentElement.scrollWidth - innerWidth,
                     actions: q('#messages .msg-actions button').length > 0 && q('#messages .msg-actions button').every(vis),
                     exports: vis(document.getElementById('export-md')) && vis(document.getElementById('export-json')) };
        """)
        check("narrow: message buttons and export buttons fit the screen",
              narrow["overflow"] <= 0 and narrow["actions"] and narrow["exports"], repr(narrow))
        driver.set_window_size(1280, 860)

        # -- the node goes away: a clear message and a Retry that works once it is back ---------------
        if not os.environ.get("EXO_TEST_URL"):
            port = node.port
            node.stop()
            before = stored_messages(driver)
            n = last_answer(driver)["count"]
            send_message(driver, "Are you there?")
            a = wait_answer_done(driver, n, timeout=30)
            err = a["error"] or ""
            check("network error: says the node cannot be reached, not 'Failed to fetch'",
                  "Cannot reach the node" in err and "Failed to fetch" not in err, repr(err))
            retry = driver.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant:last-child .msg-error .retry-btn")
            check("network error: a labelled Retry button", len(retry) == 1 and retry[0].is_displayed()
                  and retry[0].get_attribute("aria-label") == "Retry this answer")
            node = Node(port=port)
            node.start()
            old_id = last_answer_id(driver)
            retry[0].click()
            a = wait_new_answer(driver, old_id)
            after = stored_messages(driver)
            check("network error: Retry answers once the node is back",
                  not a["error"] and bool(a["ttft"]) and len(after) == len(before) + 2
                  and after[-2] == ["user", "Are you there?"], "%r, %d -> %d messages" % (a, len(before), len(after)))

        # -- two nodes with an empty model store: the cluster panel's flops and round trips, and a
        #    missing model that says it is missing and how to get it ------------------------------
        if not os.environ.get("EXO_TEST_URL"):
            check_cluster_and_missing_model(driver)

        # -- a node with an API key: the page asks for it, then uses it -------------------------
        if not os.environ.get("EXO_TEST_URL"):
            keyed = Node(["--api-key", "test-key-123"], url="")
            try:
                keyed.start()
                driver.get(keyed.url + "/")
                wait_for(driver, lambda d: d.find_element(By.ID, "status").get_attribute("textContent")
                         == "API key needed", 20, "the page to ask for the API key")
                check("API key: a keyed node is reported as needing one", True)
                set_field(driver, "api-key", "test-key-123")
                wait_for(driver, lambda d: d.find_element(By.ID, "model").get_attribute("value") == MODEL,
                         20, "the model list with the key")
                check("API key: sent as a Bearer token (models listed)", True)
            finally:
                keyed.stop()
    except Exception as e:  # a check that could not run is a failure
        check("test ran to the end", False, "%s: %s" % (type(e).__name__, e))
        traceback.print_exc()
        if driver:
            try:
                driver.save_screenshot(os.path.join(shots, "chat_page_failure.png"))
            except Exception:
                pass
        if node.log:
            print("---- node log ----\n" + node.log_text())
    finally:
        if driver:
            driver.quit()
        node.stop()

    print("%d passed, %d failed" % (len(passed), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
