#!/usr/bin/env python3
"""test_models_page.py: getting a model from the chat page (issue 16), in headless Chromium.

A real `exo` process with an empty model store downloads from tests/hub/fake_hub.py
(the hub's routes over a real socket, HF_ENDPOINT pointing at it) a tiny chat model
that exo-make-tiny-model wrote, listed in the catalogue through $EXO_HOME/models.lua.
In the browser, as a person would: the page says the store is empty and offers the
picker; the picker shows sizes and marks a model this engine cannot run as not
selectable; choosing the tiny model asks, then downloads it with a progress bar
(seen between 0 and 100 %, then at 100 %: the hub sends the file in slow pieces);
the model becomes the selected one and a chat with it gets an answer; a gated
repository (401) shows the node's message and how to give a token, a missing one
(404) says so, as does a full disk (a 1 MB tmpfs as the model's folder: root only,
else "SKIPPED disk full" is printed); the picker and the panel fit a phone's width; the panel draws a bar
per node the progress route lists; the remove button asks, then deletes the files;
a page opened while another client's download runs follows it. Screenshots:
build/models_page.png (the bar mid-download), build/models_page_narrow.png.

Reuses the chat page test's node, browser and bookkeeping helpers; like it, prints
SKIPPED and exits 0 only when Chromium or chromedriver is missing.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "hub"))
import test_chat_page as page  # noqa: E402  (exits 0 with SKIPPED without a browser)
from fake_hub import FakeHub  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

check, wait_for = page.check, page.wait_for
EXO = os.environ.get("EXO_BIN", os.path.join(page.ROOT, "build", "exo"))
TINY_CHAT = os.path.join(os.path.dirname(EXO), "tiny-chat.gguf")
REPO, FILE = "test-org/Tiny-Chat-GGUF", "Tiny-Chat-Q4_K_M.gguf"
GATED_REPO, GATED_FILE = "test-org/Gated-GGUF", "Gated-Q4_K_M.gguf"

MODELS_LUA = """return {
  ["tiny-hub"] = { repo = "%s", quants = { Q4_K_M = "%s" }, arch = "llama", n_layers = 6, size = %d,
                   description = "a tiny chat model on the fake hub" },
  ["tiny-gated"] = { repo = "%s", quants = { Q4_K_M = "%s" }, arch = "llama", n_layers = 6, size = %d },
  ["tiny-cannot"] = { repo = "%s", quants = { Q4_K_M = "%s" }, arch = "no-such-arch", size = %d },
  ["tiny-full"] = { repo = "%s", quants = { Q4_K_M = "%s" }, arch = "llama", n_layers = 6, size = %d },
  ["tiny-missing"] = { repo = "test-org/No-Such-GGUF", quants = { Q4_K_M = "x.gguf" }, arch = "llama", size = 1000 },
}
"""

# window.confirm answers yes and records what it asked.
CONFIRM_JS = "window.__asked = []; window.confirm = function (q) { window.__asked.push(q); return true; };"

# The download panel as the page shows it.
DOWNLOAD_JS = r"""
const box = document.getElementById('downloads');
if (!box || box.hidden) return null;
const t = (e, s) => { const x = e.querySelector(s); return x ? x.textContent : null; };
return {
  title: t(box, '.dl-what'),
  nodes: Array.from(box.querySelectorAll('.dl-node')).map(n => ({
    id: n.dataset.nodeId, pct: Number(n.querySelector('.dl-bar').getAttribute('aria-valuenow')),
    width: n.querySelector('.dl-bar span').style.width, text: t(n, '.dl-text'), shown: t(n, '.dl-pct')})),
  message: t(box, '.dl-message'), hint: t(box, '.dl-hint'),
};
"""


def options(driver):
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#model option')).map(o => ({
          value: o.value, text: o.text, disabled: o.disabled,
          group: o.parentElement.tagName === 'OPTGROUP' ? o.parentElement.label : null}));""")


def option(driver, value):
    return next((o for o in options(driver) if o["value"] == value), None)


def asked(driver):
    return driver.execute_script("return window.__asked.slice()")


def run(driver, hub, home, chat, disk_full):
    node = page.Node(["--node-port", "0"], url="", env={
        "EXO_HOME": home, "HF_ENDPOINT": hub.url, "HF_HOME": os.path.join(home, "hf"), "HF_TOKEN": "",
        "EXO_DOWNLOAD_ATTEMPTS": "2", "EXO_DOWNLOAD_BACKOFF": "0.2",
        # One node: a peer found on the LAN (another test's) would not know tiny-hub.
        "EXO_DISCOVERY_MODULE": "none"})
    try:
        node.start()
        driver.get(node.url + "/")
        wait_for(driver, lambda d: d.execute_script(
            "return !!window.exoChat && !document.getElementById('model').disabled"), 30, "the model list")

        # -- an empty store: said clearly, with the picker offered -------------------------------
        wait_for(driver, lambda d: d.find_element(By.ID, "status").get_attribute("textContent")
                 == "no model downloaded", 15, "the status to say no model is downloaded")
        hint = driver.execute_script("const e = document.querySelector('#messages .empty-missing');"
                                     "return e && e.textContent")
        check("empty store: the page says no model is in the store and offers the picker",
              bool(hint) and "No model is in this node's store" in hint and "Model picker" in hint
              and "is the node running" not in hint, repr(hint))
        offer = driver.execute_script("const b = document.querySelector('.empty-download'); return b && b.textContent")
        check("empty store: a button downloads the picked model, with its size", bool(offer)
              and offer.startswith("Download ") and ("B)" in offer), repr(offer))
        o = option(driver, "tiny-hub")
        size_mb = "~%.1f MB" % (len(chat) / 1e6)
        check("picker: a model not in the store is listed with its size and can be chosen",
              bool(o) and o["text"] == "tiny-hub (not downloaded, %s)" % size_mb and not o["disabled"]
              and o["group"].startswith("Not downloaded"), repr(o))
        o = option(driver, "tiny-cannot")
        check("picker: a model this engine cannot run is listed but not selectable",
              bool(o) and o["disabled"] and "cannot run here: no-such-arch" in o["text"], repr(o))
        check("remove button: disabled while the picked model is not downloaded",
              not driver.find_element(By.ID, "remove-model").is_enabled())

        # -- choosing it downloads it, with a progress bar per node ------------------------------
        driver.execute_script(CONFIRM_JS)
        Select(driver.find_element(By.ID, "model")).select_by_value("tiny-hub")
        q = asked(driver)
        check("choosing a model not in the store asks first, naming its size",
              len(q) == 1 and "tiny-hub" in q[0] and size_mb in q[0], repr(q))
        mids = []  # the panel each time the bar was seen between 0 and 100 %

        def progressed(d):
            st = d.execute_script(DOWNLOAD_JS)
            n = st and st["nodes"] and st["nodes"][0]
            if n and 0 < n["pct"] < 100:
                if not mids:
                    d.save_screenshot(os.path.join(page.ROOT, "build", "models_page.png"))
                mids.append(st)
            return st if n and n["pct"] == 100 and "downloaded" in (st["title"] or "") else None
        done = wait_for(driver, progressed, 90, "the download's bar to reach 100 %")
        mid = mids[0] if mids else None
        mid_node = mid and mid["nodes"][0]
        check("progress: a bar between 0 and 100 % with bytes and percent while it runs",
              bool(mid_node) and mid_node["width"] == "%d%%" % mid_node["pct"] and mid_node["shown"].endswith(" %")
              and " of %s" % ("%.1f MB" % (len(chat) / 1e6)) in mid_node["text"]
              and mid["title"] == "Downloading tiny-hub (%s)" % REPO, repr(mid))
        timed = [m for m in mids if "/s" in m["nodes"][0]["text"] and " left" in m["nodes"][0]["text"]]
        check("progress: speed and time left shown while it runs", bool(timed), repr(mids[-1:]))
        check("progress: one bar per node the progress route reports (this one)",
              len(done["nodes"]) == 1 and bool(done["nodes"][0]["id"]), repr(done))
        check("progress: the bar reaches 100 % and says the model is downloaded",
              done["nodes"][0]["pct"] == 100 and done["nodes"][0]["width"] == "100%"
              and done["title"] == "tiny-hub (%s) is downloaded and selected" % REPO, repr(done))
        with open(os.path.join(home, "downloads", "tiny-hub", FILE), "rb") as f:
            check("the file in the store is the hub's", f.read() == chat)
        wait_for(driver, lambda d: (option(d, "tiny-hub") or {}).get("group") == "In this node's store"
                 and d.find_element(By.ID, "model").get_attribute("value") == "tiny-hub", 15,
                 "the downloaded model to be listed as in the store and picked")
        check("remove button: enabled for a downloaded model", driver.find_element(By.ID, "remove-model").is_enabled())

        # -- and chat works with it -------------------------------------------------------------------
        page.send_message(driver, "Hello?")
        a = page.wait_answer_done(driver, 0, timeout=120)
        check("chat: the downloaded model answers", not a["error"] and bool(a["tokens"]) and not a["stopped"], repr(a))
        model = driver.execute_script("const s = exoChat.state, c = s.convs.find(c => c.id === s.current);"
                                      "return c.messages[c.messages.length - 1].model")
        check("chat: the answer came from the downloaded model", model == "tiny-hub", repr(model))

        # -- a gated repository: the node's message and how to give a token -----------------------
        Select(driver.find_element(By.ID, "model")).select_by_value("tiny-gated")
        failed = wait_for(driver, lambda d: (lambda st: st if st and st["message"] else None)(
            d.execute_script(DOWNLOAD_JS)), 60, "the gated download to fail")
        check("401: the failure is shown in words with how to give a token",
              failed["title"] == "Download of tiny-gated (%s) failed" % GATED_REPO and "HTTP 401" in failed["message"] and "HF_TOKEN" in failed["message"]
              and "HF_TOKEN=hf_" in failed["hint"] and "gated" in failed["hint"], repr(failed))
        check("401: nothing is left in the store under the real name",
              not os.path.exists(os.path.join(home, "downloads", "tiny-gated", GATED_FILE)))
        o = option(driver, "tiny-gated")
        check("401: the model stays listed as not downloaded", bool(o) and "not downloaded" in o["text"], repr(o))

        # -- at phone width the picker, its Remove button and the panel stay on screen -------------
        driver.set_window_size(390, 844)
        spill = wait_for(driver, lambda d: d.execute_script("""
            const w = document.documentElement.clientWidth;
            if (w > 420) return null;
            return ['model', 'remove-model', 'downloads'].map(id => {
              const r = document.getElementById(id).getBoundingClientRect();
              return [id, Math.round(r.left), Math.round(r.right), w]; });"""), 10, "the narrow layout")
        driver.save_screenshot(os.path.join(page.ROOT, "build", "models_page_narrow.png"))
        check("phone width: the picker, Remove and the download panel fit the screen",
              all(left >= 0 and right <= w + 1 for _, left, right, w in spill), repr(spill))
        driver.set_window_size(1280, 860)

        # -- a repository the hub does not have: 404 in words --------------------------------------
        Select(driver.find_element(By.ID, "model")).select_by_value("tiny-missing")
        failed = wait_for(driver, lambda d: (lambda st: st if st and st["message"] and "tiny-missing" in st["title"]
                                             else None)(d.execute_script(DOWNLOAD_JS)), 60, "the 404 to be shown")
        check("404: the failure names what the hub did not have",
              "HTTP 404" in failed["message"] and "No-Such-GGUF" in failed["message"]
              and "does not have" in failed["hint"], repr(failed))

        # -- a full disk: the node's message and what to do --------------------------------------------
        if disk_full:
            Select(driver.find_element(By.ID, "model")).select_by_value("tiny-full")
            failed = wait_for(driver, lambda d: (lambda st: st if st and st["message"] and "tiny-full" in st["title"]
                                                 else None)(d.execute_script(DOWNLOAD_JS)), 60, "the disk-full error")
            check("disk full: the failure says so and what to do",
                  "not enough disk space" in failed["message"] and "disk is full" in failed["hint"], repr(failed))
        else:
            print("SKIPPED disk full: needs root and a tmpfs mount", flush=True)

        # -- several nodes: the route reports this node only today, so two nodes' events are given
        #    to the page's own renderer: one bar each, in the route's shape -------------------------
        bars = driver.execute_script("""
            const s = exoChat.state, keep = s.download;
            const ev = (got) => ({model: 'tiny-hub', repo_id: 'test-org/Tiny-Chat-GGUF', status: 'in_progress',
              downloaded_bytes: got, total_bytes: 1000, overall_speed: 0, overall_eta: 0, total_files: 1,
              completed_files: 0});
            s.download = {model: 'tiny-hub', events: {'node-a': ev(250), 'node-b': ev(750)}, done: false, failed: false};
            exoChat.renderDownload();
            const out = Array.from(document.querySelectorAll('#downloads .dl-node')).map(n =>
              [n.dataset.nodeId, n.querySelector('.dl-bar').getAttribute('aria-valuenow')]);
            s.download = keep;
            exoChat.renderDownload();
            return out;""")
        check("progress: one bar per node in the route's answer",
              bars == [["node-a", "25"], ["node-b", "75"]], repr(bars))

        # -- removing a model asks, then deletes its files ------------------------------------------
        Select(driver.find_element(By.ID, "model")).select_by_value("tiny-hub")
        before = len(asked(driver))
        driver.find_element(By.ID, "remove-model").click()
        wait_for(driver, lambda d: "not downloaded" in (option(d, "tiny-hub") or {}).get("text", ""), 15,
                 "tiny-hub to be listed as not downloaded after removal")
        q = asked(driver)[before:]
        check("remove: asks first, then the files are gone and the picker says so",
              len(q) == 1 and q[0].startswith("Remove tiny-hub")
              and not os.path.exists(os.path.join(home, "downloads", "tiny-hub", FILE)), repr(q))

        # -- a download another client started: a page opened meanwhile follows it ------------------
        req = urllib.request.Request(node.url + "/download", data=json.dumps({"model": "tiny-hub"}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            check("another client's POST /download is taken", r.status == 200)
        driver.get(node.url + "/")
        followed = wait_for(driver, lambda d: (lambda st: st if st and st["nodes"] else None)(
            d.execute_script(DOWNLOAD_JS)), 20, "the page to show the running download")
        done = wait_for(driver, lambda d: (lambda st: st if st and st["nodes"] and st["nodes"][0]["pct"] == 100
                                           else None)(d.execute_script(DOWNLOAD_JS)), 60, "it to complete")
        check("a page opened during a download follows it to the end",
              followed["title"].startswith("Downloading tiny-hub") and "is downloaded" in done["title"],
              "%r %r" % (followed, done))
    except Exception:
        if node.log:
            print("---- node log ----\n" + node.log_text())
        raise
    finally:
        node.stop()


def main():
    with open(TINY_CHAT, "rb") as f:
        chat = f.read()
    hub = FakeHub().start()
    hub.add_repo(REPO, {FILE: chat, "README.md": b"# tiny\n"})
    hub.add_repo(GATED_REPO, {GATED_FILE: chat}, gated_token="hf_not_given")
    # The file comes in 8 slow pieces (about 6 s), so the bar is seen moving.
    hub.fault(FILE, "slow", -1)
    hub.slow_pause = 0.8
    home = tempfile.mkdtemp(prefix="exo-models-page-")
    with open(os.path.join(home, "models.lua"), "w") as f:
        f.write(MODELS_LUA % (REPO, FILE, len(chat), GATED_REPO, GATED_FILE, len(chat), REPO, FILE, len(chat),
                              REPO, FILE, len(chat)))
    # tiny-full's folder is a 1 MB tmpfs (root only): the 2.3 MB model does not fit.
    full = os.path.join(home, "downloads", "tiny-full")
    os.makedirs(full)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full],
                                                   capture_output=True).returncode == 0
    driver = None
    try:
        driver = page.make_driver()
        run(driver, hub, home, chat, mounted)
    except Exception as e:  # a check that could not run is a failure
        check("test ran to the end", False, "%s: %s" % (type(e).__name__, e))
        traceback.print_exc()
        if driver:
            try:
                driver.save_screenshot(os.path.join(page.ROOT, "build", "models_page_failure.png"))
            except Exception:
                pass
    finally:
        if driver:
            driver.quit()
        hub.stop()
        if mounted:
            subprocess.run(["umount", full])
        shutil.rmtree(home, ignore_errors=True)
    print("%d passed, %d failed" % (len(page.passed), len(page.failed)))
    return 1 if page.failed else 0


if __name__ == "__main__":
    sys.exit(main())
