"""test_serving.py: many clients at once on one real exo node (issue 17).

Starts `build/exo` with --parallel and --max-queue and talks to it over HTTP
from several threads at once: concurrent streaming clients at temperature 0
get exactly the answers each gets alone (the node batches their decode steps
and prompt chunks into shared forward passes, which must not change a
result), a client that disconnects mid-stream does not disturb the others,
requests past the queue bound get a 503 that says why, KV caches that
--parallel and --ctx would not fit in memory are refused, and a second client
with the same system prompt reuses the first one's cached prefix
(usage.prompt_tokens_details.cached_tokens). With a KV pool smaller than
--parallel x --ctx (--kv-tokens), a request whose prompt's blocks are taken
by a running one gets a 503 past the queue bound (or waits within it) while
the running one is undisturbed, and a prompt larger than the pool is a 400;
three concurrent streaming clients whose answers together outgrow the pool
(each alone fits) all get 200 and their solo answers: the node preempts a
running one and recomputes it later instead of failing it mid-stream, and
/v1/topology counts the preemptions.
Two concurrent clients with the same long system prompt: the second, sent
while the first streams, starts from the first one's KV blocks (shared, not
recomputed), and both get their solo answers.

Run: build/venv/bin/python tests/api/test_serving.py   (ctest runs it)
"""

import http.client
import json
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_api import MODEL, Node  # noqa: E402 - the same real-process harness

SYSTEM = ("You are a careful assistant for a public library. You answer questions about opening hours, "
          "membership, borrowing rules, fines and events in short, friendly sentences.")
# Over two KV blocks (64 positions each) of system prompt, used by one test only.
LONG_SYSTEM = (
    "You are the help desk of a small town library that opened in 1921 and moved to its present building by the "
    "river in 1987. The library lends books, magazines, films and board games, and runs a reading club for "
    "children on Saturday mornings, a language cafe on Tuesday evenings and a repair cafe on the first Sunday of "
    "every month. Members may borrow up to twelve items for three weeks and renew them twice, online or at the "
    "desk, unless another member has reserved them. Late items cost ten cents a day, capped at five dollars per "
    "item. A membership is free for residents and twenty dollars a year for visitors. The building is open from "
    "nine to seven on weekdays and from ten to four on Saturdays, and closed on Sundays and public holidays. "
    "Answer in a few friendly sentences, and say so when you do not know.")
QUESTIONS = ["What is a library card?", "Name three fruits.", "Why is the sky blue?", "Count to five.",
             "What do cats eat?", "Say hello in French."]


def chat_messages(question, system=SYSTEM):
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def chat_body(question, max_tokens, stream, system=SYSTEM):
    return json.dumps({"model": MODEL, "temperature": 0, "max_tokens": max_tokens, "stream": stream,
                       "messages": chat_messages(question, system)}).encode()


def stream_text(port, question, max_tokens, results, key, stop_after=None, system=SYSTEM):
    """Streams one chat answer; stores (status, text or error body) under key.
    stop_after: close the connection after that many content chunks."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/chat/completions", body=chat_body(question, max_tokens, True, system),
                     headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        if res.status != 200:
            results[key] = (res.status, res.read().decode())
            return
        parts = []
        while True:
            line = res.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                parts.append(delta["content"])
                if stop_after is not None and len(parts) >= stop_after:
                    conn.sock.close()
                    break
        results[key] = (200, "".join(parts))
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported by the caller's assertions
        results[key] = (None, repr(e))


def ask(port, question, max_tokens=24, system=SYSTEM):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body=chat_body(question, max_tokens, False, system),
                 headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    body = json.loads(res.read().decode())
    conn.close()
    return res.status, body


def run_threads(targets):
    threads = [threading.Thread(target=t[0], args=t[1:]) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)


class Serving(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node("--disable-tui", "--parallel", "4", "--max-queue", "8")

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def solo(self, question, max_tokens):
        results = {}
        stream_text(self.node.port, question, max_tokens, results, 0)
        self.assertEqual(results[0][0], 200, results[0][1])
        return results[0][1]

    def test_concurrent_streams_equal_solo_runs(self):
        """Four streaming clients at once (plus a fifth and sixth that queue, then
        join as others leave) get exactly their solo answers; a client that hangs
        up after two chunks disturbs nobody."""
        lengths = [24, 40, 16, 32, 20, 28]
        expect = [self.solo(q, n) for q, n in zip(QUESTIONS, lengths)]
        for text in expect:
            self.assertTrue(text.strip(), expect)
        results = {}
        targets = [(stream_text, self.node.port, q, n, results, i) for i, (q, n) in enumerate(zip(QUESTIONS, lengths))]
        targets.append((stream_text, self.node.port, "Tell me a long story.", 200, results, "quitter", 2))
        run_threads(targets)
        for i in range(len(QUESTIONS)):
            self.assertEqual(results[i][0], 200, results[i][1])
            self.assertEqual(results[i][1], expect[i], "client %d's answer changed when batched" % i)
        self.assertEqual(results["quitter"][0], 200, results["quitter"][1])
        # The node goes on serving after the disconnect.
        self.assertEqual(self.solo(QUESTIONS[0], lengths[0]), expect[0])

    def test_prefix_reuse_across_clients(self):
        """Two different clients (different questions, the same system prompt):
        the second one's prompt reuses the cached system prompt."""
        status, first = ask(self.node.port, "Is the library open on Sunday?", 4)
        self.assertEqual(status, 200, first)
        status, second = ask(self.node.port, "Can I renew a book online?", 4)
        self.assertEqual(status, 200, second)
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        prompt = second["usage"]["prompt_tokens"]
        # At least the system prompt's ~35 tokens, never the whole prompt (the question differs).
        self.assertGreaterEqual(cached, 30, second["usage"])
        self.assertLess(cached, prompt, second["usage"])


    def test_concurrent_clients_share_the_system_prompt(self):
        """A second client sent while the first is still streaming, with the same
        long system prompt (held by no idle session: only the running one has it):
        it starts from the running session's KV blocks, so cached_tokens covers
        the prompts' common prefix, and both answers equal their solo answers."""
        port, qa, qb = self.node.port, "Tell me a long story about the library.", "When is the library open?"
        ids_a, ids_b = encode_chat(self.node, qa, LONG_SYSTEM), encode_chat(self.node, qb, LONG_SYSTEM)
        common = 0
        while ids_a[common] == ids_b[common]:
            common += 1
        self.assertGreater(common, 2 * 64, "the system prompt spans several KV blocks")
        results, seen = {}, {}

        def second(parts):
            results["b"] = ask(port, qb, 8, system=LONG_SYSTEM)
            seen["a_chunks"], seen["a_parts"] = len(parts), parts  # what A had streamed when B's answer came
        during(port, qa, 160, results, "a", second, system=LONG_SYSTEM)
        status, body = results["b"]
        self.assertEqual(status, 200, body)
        self.assertEqual(results["a"][0], 200, results["a"])
        # A was still streaming after B's answer came: B's prefix came from a running session.
        self.assertLess(seen["a_chunks"], len(seen["a_parts"]), "A ended before B did")
        self.assertEqual(body["usage"]["prompt_tokens_details"]["cached_tokens"], min(common, len(ids_b) - 1),
                         body["usage"])
        # Both answers are their solo ones.
        solo_a = {}
        stream_text(port, qa, 160, solo_a, "a", system=LONG_SYSTEM)
        self.assertEqual(results["a"], solo_a["a"], "A's answer changed when B shared its prefix")
        status, solo_b = ask(port, qb, 8, system=LONG_SYSTEM)
        self.assertEqual(status, 200, solo_b)
        self.assertEqual(body["choices"][0]["message"]["content"], solo_b["choices"][0]["message"]["content"])


class QueueBound(unittest.TestCase):
    def test_past_the_queue_bound_is_503(self):
        """--parallel 1 --max-queue 1: of several requests at once, one runs, one
        waits, and the rest get a 503 that names the limits; the admitted ones
        finish normally."""
        node = Node("--disable-tui", "--parallel", "1", "--max-queue", "1")
        try:
            status, body = ask(node.port, "Warm up.", 1)  # the model loads once
            self.assertEqual(status, 200, body)
            results = {}

            def one(i):
                results[i] = ask(node.port, QUESTIONS[i % len(QUESTIONS)], 48)
            run_threads([(one, i) for i in range(6)])
            statuses = sorted(s for s, _ in results.values())
            self.assertGreaterEqual(statuses.count(200), 2, results)
            busy = [b for s, b in results.values() if s == 503]
            self.assertGreaterEqual(len(busy), 1, statuses)
            for b in busy:
                self.assertIn("--max-queue 1", b["error"]["message"])
            self.assertEqual(set(statuses) - {200, 503}, set(), results)
        finally:
            node.stop()

    def test_kv_caches_that_do_not_fit_are_refused(self):
        """--parallel 64 --ctx 1000000 would need terabytes of KV cache: the
        request gets an error that says so, and the node keeps running."""
        node = Node("--disable-tui", "--parallel", "64", "--ctx", "1000000")
        try:
            status, body = ask(node.port, "Hello?", 4)
            self.assertGreaterEqual(status, 500, body)
            self.assertIn("lower --parallel or --ctx", body["error"]["message"])
            self.assertIn("GiB of KV cache", body["error"]["message"])
        finally:
            node.stop()


WORDS = ["apple", "river", "window", "garden", "pencil", "mountain", "candle", "silver", "harbor", "meadow"]


def encode_chat(node, question, system=SYSTEM):
    """The token ids of a chat prompt, from the node's tokenizer (/v1/chat/token/encode)."""
    status, raw, _ = node.request("POST", "/v1/chat/token/encode",
                                  {"model": MODEL, "messages": chat_messages(question, system)})
    assert status == 200, raw
    return json.loads(raw)["encoded_tokens"]


def question_of(node, lo, hi, lead="Repeat these words: "):
    """A question whose chat prompt (system prompt and template included) is
    lo to hi tokens."""
    words = []
    while True:
        question = lead + " ".join(words)
        length = len(encode_chat(node, question))
        if lo <= length <= hi:
            return question
        assert length < lo, "no question of %d to %d tokens" % (lo, hi)
        words.append(WORDS[len(words) % len(WORDS)])


def during(port, question, max_tokens, results, key, then, system=SYSTEM):
    """Streams one answer under key, running then(parts) once its first chunk
    came (the request is running: its KV blocks are taken); parts: the
    content chunks received so far, growing as they come."""
    started = threading.Event()
    parts = []

    def first_chunk_then():
        started.wait(600)
        then(parts)
    waiter = threading.Thread(target=first_chunk_then)
    waiter.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/chat/completions", body=chat_body(question, max_tokens, True, system),
                     headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        for line in res:
            line = line.strip()
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                content = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if content:
                    parts.append(content)
                    started.set()
        results[key] = (res.status, "".join(parts))
        conn.close()
    finally:
        started.set()
        waiter.join()


class KVPool(unittest.TestCase):
    """--kv-tokens 256: one KV pool of four 64-position blocks shared by the
    model's sessions. A runs (a prompt of 65-100 tokens, then up to 120 more:
    at least two blocks once it streams); B's prompt of 129-180 tokens needs
    three, which only A's blocks can give (the two share the system prompt,
    under one block, so B could start from A's prefix but shares no block)."""

    def run_a_then_b(self, *flags):
        node = Node("--disable-tui", "--parallel", "2", "--kv-tokens", "256", *flags)
        qa, qb = question_of(node, 65, 100), question_of(node, 129, 180, lead="Say these words back: ")
        expect = {}
        stream_text(node.port, qa, 120, expect, "a")  # solo; also loads the model
        self.assertEqual(expect["a"][0], 200, expect["a"][1])
        results = {}
        during(node.port, qa, 120, results, "a", lambda _: results.__setitem__("b", ask(node.port, qb, 8)))
        self.assertEqual(results["a"], expect["a"], "the running request was disturbed")
        return node, qb, results["b"]

    def test_exhausted_pool_is_503_for_the_new_request(self):
        """--max-queue 0: B gets a 503 that says the KV pool is exhausted while A
        runs undisturbed; after A, B evicts A's kept conversation and runs."""
        node, qb, (status, body) = self.run_a_then_b("--max-queue", "0")
        try:
            self.assertEqual(status, 503, body)
            self.assertIn("KV pool exhausted", body["error"]["message"])
            status, body = ask(node.port, qb, 8)
            self.assertEqual(status, 200, body)
        finally:
            node.stop()

    def test_request_waits_for_kv_blocks(self):
        """--max-queue 1: B waits in the queue until A's blocks come back, then runs."""
        node, _, (status, body) = self.run_a_then_b("--max-queue", "1")
        try:
            self.assertEqual(status, 200, body)
            self.assertTrue(body["choices"][0]["message"]["content"], body)
        finally:
            node.stop()

    def test_answers_outgrowing_the_pool_preempt_instead_of_failing(self):
        """--parallel 3 --kv-tokens 320: three streaming greedy clients, each a
        prompt of about 54 tokens (one block) and 160 answer tokens: four blocks
        each at the end, twelve together, in a pool of five. All are admitted by
        their prompts; as they grow, running ones are preempted (their blocks
        freed) and recomputed once others end. Every client gets 200 and its solo
        answer (without preemption one fails mid-stream with a 503)."""
        node = Node("--disable-tui", "--parallel", "3", "--kv-tokens", "320", "--max-queue", "4")
        try:
            questions = ["Tell me a long story about a dragon.", "Write a long poem about the sea.",
                         "Explain in detail how a library works."]
            expect = {}
            for i, q in enumerate(questions):
                status, body = ask(node.port, q, 160)
                self.assertEqual(status, 200, body)
                # Precondition: the answer runs to max_tokens, so together they outgrow the pool.
                self.assertEqual(body["usage"]["completion_tokens"], 160, body["usage"])
                expect[i] = body["choices"][0]["message"]["content"]
            results = {}
            run_threads([(stream_text, node.port, q, 160, results, i) for i, q in enumerate(questions)])
            for i in range(len(questions)):
                self.assertEqual(results[i][0], 200, results[i][1])
                self.assertEqual(results[i][1], expect[i], "client %d's answer changed by preemption" % i)
            status, raw, _ = node.request("GET", "/v1/topology")
            self.assertEqual(status, 200, raw)
            serving = json.loads(raw)["serving"]
            self.assertEqual(len(serving), 1, serving)
            self.assertGreaterEqual(serving[0]["preemptions"], 1, serving)
            self.assertEqual((serving[0]["running"], serving[0]["waiting"]), (0, 0), serving)
            self.assertEqual(serving[0]["kv"]["blocks"], 5, serving)
        finally:
            node.stop()

    def test_prompt_larger_than_the_pool_is_400(self):
        """A prompt that could never fit the pool is refused at once."""
        node = Node("--disable-tui", "--kv-tokens", "64", "--ctx", "2048")
        try:
            status, body = ask(node.port, question_of(node, 70, 90), 4)
            self.assertEqual(status, 400, body)
            self.assertIn("--kv-tokens", body["error"]["message"])
        finally:
            node.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
