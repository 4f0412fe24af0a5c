"""test_clients.py: the APIs clients bring, each spoken by its official client library, unchanged.

One real node serves the default model; the `ollama`, `anthropic` and `openai` packages from
PyPI talk to it as they would to Ollama, Anthropic and OpenAI. Every API answers the same
greedy text for the same conversation as the chat completions route (one engine behind all of
them), streamed pieces join to the whole answer, counters add up, and errors come in each
API's own shape. A second node with --api-key takes Anthropic's x-api-key header and refuses
every one of these routes without a key.

Run: build/venv/bin/python tests/api/test_clients.py   (ctest runs it)
"""

import json
import os
import sys
import unittest
import urllib.error
import urllib.request

import anthropic
import ollama
import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_api import MODEL, ROOT, Node  # noqa: E402  (its node helper, not its tests)

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count from one to twenty."}]
MAX = 12


class Clients(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node()
        base = "http://127.0.0.1:%d" % cls.node.port
        cls.base = base
        cls.openai = openai.OpenAI(base_url=base + "/v1", api_key="unused")
        cls.ollama = ollama.Client(host=base)
        cls.anthropic = anthropic.Anthropic(base_url=base, api_key="unused")
        # The reference: the chat completions route, greedy.
        r = cls.openai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX, temperature=0)
        cls.want = r.choices[0].message.content
        cls.want_usage = r.usage
        cls.cut = r.choices[0].finish_reason == "length"  # the answer ran into max_tokens

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    # ---- Ollama ----

    def test_ollama_chat(self):
        r = self.ollama.chat(model=MODEL, messages=MESSAGES, options={"temperature": 0, "num_predict": MAX})
        self.assertEqual(r.message.role, "assistant")
        self.assertEqual(r.message.content, self.want)
        self.assertTrue(r.done)
        self.assertEqual(r.done_reason, "length" if self.cut else "stop")
        self.assertEqual(r.eval_count, self.want_usage.completion_tokens)
        self.assertEqual(r.prompt_eval_count, self.want_usage.prompt_tokens)
        self.assertGreater(r.total_duration, 0)

    def test_ollama_chat_stream_and_latest_tag(self):
        parts = list(self.ollama.chat(model=MODEL + ":latest", messages=MESSAGES, stream=True,
                                      options={"temperature": 0, "num_predict": MAX}))
        self.assertGreater(len(parts), 2)
        self.assertTrue(all(not p.done for p in parts[:-1]) and parts[-1].done)
        self.assertEqual("".join(p.message.content for p in parts), self.want)
        self.assertEqual(parts[-1].eval_count, self.want_usage.completion_tokens)

    def test_ollama_generate(self):
        r = self.ollama.generate(model=MODEL, system=MESSAGES[0]["content"], prompt=MESSAGES[1]["content"],
                                 options={"temperature": 0, "num_predict": MAX})
        self.assertEqual(r.response, self.want)
        pieces = list(self.ollama.generate(model=MODEL, system=MESSAGES[0]["content"], prompt=MESSAGES[1]["content"],
                                           stream=True, options={"temperature": 0, "num_predict": MAX}))
        self.assertEqual("".join(p.response for p in pieces), self.want)
        # An empty prompt loads the model and answers at once, as Ollama does.
        self.assertEqual(self.ollama.generate(model=MODEL, prompt="").done_reason, "load")

    def test_ollama_models(self):
        names = [m.model for m in self.ollama.list().models]
        self.assertIn(MODEL + ":latest", names)
        entry = [m for m in self.ollama.list().models if m.model == MODEL + ":latest"][0]
        self.assertEqual(entry.details.format, "gguf")
        self.assertEqual(entry.details.quantization_level, "Q4_1")
        self.assertGreater(entry.size, 50_000_000)
        shown = self.ollama.show(MODEL)
        self.assertEqual(shown.details.family, "llama")
        self.assertIn("<|im_start|>", shown.template)
        self.assertIn(MODEL + ":latest", [m.model for m in self.ollama.ps().models])
        with urllib.request.urlopen(self.base + "/api/version") as r:
            self.assertIn("version", json.loads(r.read()))

    def test_ollama_errors(self):
        with self.assertRaises(ollama.ResponseError) as e:
            self.ollama.chat(model="no-such-model", messages=MESSAGES)
        self.assertEqual(e.exception.status_code, 404)
        self.assertIn("not found", e.exception.error)
        with self.assertRaises(ollama.ResponseError) as e:  # a schema the grammar cannot follow
            self.ollama.chat(model=MODEL, messages=MESSAGES, format={"type": "object", "properties": {
                "a": {"anyOf": [{"type": "string"}]}}})
        self.assertEqual(e.exception.status_code, 400)
        self.assertIn("anyOf", e.exception.error)

    # ---- Anthropic ----

    def anthropic_args(self):
        return dict(model=MODEL, max_tokens=MAX, system=MESSAGES[0]["content"],
                    messages=[MESSAGES[1]], extra_body={"temperature": 0})

    def test_anthropic_messages(self):
        m = self.anthropic.messages.create(**self.anthropic_args())
        self.assertEqual(m.type, "message")
        self.assertEqual(m.role, "assistant")
        self.assertEqual(m.content[0].type, "text")
        self.assertEqual(m.content[0].text, self.want)
        self.assertEqual(m.stop_reason, "max_tokens" if self.cut else "end_turn")
        self.assertEqual(m.usage.output_tokens, self.want_usage.completion_tokens)
        self.assertEqual(m.usage.input_tokens, self.want_usage.prompt_tokens)
        self.assertTrue(m.id.startswith("msg_"))

    def test_anthropic_stream(self):
        kinds = []
        with self.anthropic.messages.stream(**self.anthropic_args()) as s:
            for event in s:
                kinds.append(event.type)
            final = s.get_final_message()
        self.assertEqual(final.content[0].text, self.want)
        self.assertEqual(final.stop_reason, "max_tokens" if self.cut else "end_turn")
        for kind in ("message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"):
            self.assertIn(kind, kinds)
        self.assertEqual(kinds[0], "message_start")
        self.assertEqual(kinds[-1], "message_stop")

    def test_anthropic_errors(self):
        with self.assertRaises(anthropic.NotFoundError) as e:
            self.anthropic.messages.create(model="no-such-model", max_tokens=4, messages=[MESSAGES[1]])
        self.assertEqual(e.exception.body["error"]["type"], "not_found_error")
        with self.assertRaises(anthropic.BadRequestError) as e:
            self.anthropic.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
        self.assertIn("not supported", e.exception.body["error"]["message"])

    # ---- OpenAI Responses ----

    def test_responses(self):
        r = self.openai.responses.create(model=MODEL, instructions=MESSAGES[0]["content"],
                                         input=MESSAGES[1]["content"], max_output_tokens=MAX, temperature=0)
        self.assertEqual(r.output_text, self.want)
        self.assertEqual(r.status, "incomplete" if self.cut else "completed")
        if self.cut:
            self.assertEqual(r.incomplete_details.reason, "max_output_tokens")
        self.assertEqual(r.usage.output_tokens, self.want_usage.completion_tokens)

    def test_responses_stream(self):
        kinds, deltas = [], []
        with self.openai.responses.stream(model=MODEL, instructions=MESSAGES[0]["content"],
                                          input=[{"role": "user", "content": MESSAGES[1]["content"]}],
                                          max_output_tokens=MAX, temperature=0) as s:
            for event in s:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = s.get_final_response()
        self.assertEqual("".join(deltas), self.want)
        self.assertEqual(final.output_text, self.want)
        self.assertEqual(kinds[0], "response.created")
        self.assertEqual(kinds[-1], "response.completed")

    def test_responses_refuses_what_it_lacks(self):
        with self.assertRaises(openai.BadRequestError):
            self.openai.responses.create(model=MODEL, input="hi", previous_response_id="resp_123")


class ChatFeatures(unittest.TestCase):
    """JSON mode, tools, the prompt's end and raw prompts, through the official openai client."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node()
        cls.client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % cls.node.port, api_key="unused")
        # The default model with a template that teaches tools (Qwen 2.5's: ChatML like its own).
        qwen = os.path.join(ROOT, "tests", "lua", "templates", "qwen2.5-7b-instruct.jinja")
        cls.tool_node = Node("--chat-template", qwen)
        cls.tool_client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % cls.tool_node.port, api_key="unused")

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        cls.tool_node.stop()

    def encode(self, node, body):
        req = urllib.request.Request("http://127.0.0.1:%d/v1/chat/token/encode" % node.port,
                                     data=json.dumps(dict(body, model=MODEL)).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def test_json_mode_answers_are_json_objects(self):
        prompts = ["Give me a JSON object describing a cat.", "List three fruits as JSON.",
                   "Describe Paris in JSON with keys name and country.", "Return your name as JSON.",
                   "Weather report as JSON.", "A JSON object with a title and a year.",
                   "Describe a car in JSON.", "Your favourite colour, as JSON."]
        finished = 0
        for i, prompt in enumerate(prompts):
            r = self.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                    response_format={"type": "json_object"}, temperature=0.7,
                                                    seed=i, max_tokens=160)
            choice = r.choices[0]
            self.assertTrue(choice.message.content.lstrip().startswith("{"), choice.message.content)
            if choice.finish_reason == "stop":
                finished += 1
                self.assertIsInstance(json.loads(choice.message.content), dict, choice.message.content)
        self.assertGreaterEqual(finished, 3, "too few answers finished to say anything")

    def test_json_schema_answers_follow_the_schema(self):
        schema = {"type": "object", "additionalProperties": False, "required": ["city", "country", "population"],
                  "properties": {"city": {"type": "string"}, "country": {"type": "string", "enum": ["France", "Spain"]},
                                 "population": {"type": "integer"}}}
        finished = 0
        for i, prompt in enumerate(["Describe Paris.", "Describe Madrid.", "Tell me about Lyon.", "A city, please.",
                                    "Give me facts about Seville.", "Describe Nice."]):
            r = self.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0.7, seed=i, max_tokens=120,
                response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
            choice = r.choices[0]
            if choice.finish_reason != "stop":
                continue
            finished += 1
            v = json.loads(choice.message.content)
            self.assertEqual(sorted(v), ["city", "country", "population"], v)
            self.assertIn(v["country"], ("France", "Spain"))
            self.assertIsInstance(v["population"], int)
            self.assertIsInstance(v["city"], str)
        self.assertGreaterEqual(finished, 2, "too few answers finished to say anything")
        # Ollama's format takes a schema too.
        o = ollama.Client(host="http://127.0.0.1:%d" % self.node.port)
        r = o.chat(model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}], format=schema,
                   options={"temperature": 0, "num_predict": 120})
        if r.done_reason == "stop":
            self.assertIn(json.loads(r.message.content)["country"], ("France", "Spain"))

    def test_tools(self):
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                   "parameters": {"type": "object",
                                                                  "properties": {"city": {"type": "string"}}}}}]
        # The default model's own template renders no tools: a clear 400.
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                tools=tools)
        self.assertIn("does not support tools", str(e.exception))
        # A template that does: the tools, an earlier call (arguments as the client sends them, a JSON
        # text) and its result reach the prompt as the template writes them.
        messages = [{"role": "user", "content": "What is the weather in Paris?"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]
        prompt = self.encode(self.tool_node, {"messages": messages, "tools": tools})["encoded_prompt"]
        self.assertIn('"name": "get_weather"', prompt)
        self.assertIn('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', prompt)
        self.assertIn("<tool_response>\n18 C and sunny\n</tool_response>", prompt)
        r = self.tool_client.chat.completions.create(model=MODEL, messages=messages, tools=tools, temperature=0,
                                                     max_tokens=24)
        choice = r.choices[0]
        self.assertIn(choice.finish_reason, ("stop", "length", "tool_calls"))
        for call in choice.message.tool_calls or []:
            json.loads(call.function.arguments)
        # tool_choice "none" renders no tools.
        prompt = self.encode(self.tool_node, {"messages": messages[:1], "tools": tools, "tool_choice": "none"})
        self.assertNotIn("get_weather", prompt["encoded_prompt"])

    def test_prefill_and_generation_prompt(self):
        start = [{"role": "user", "content": "What is the capital of France?"}]
        prefill = start + [{"role": "assistant", "content": "The capital of France is"}]
        enc = self.encode(self.node, {"messages": prefill})
        self.assertTrue(enc["encoded_prompt"].endswith("<|im_start|>assistant\nThe capital of France is"))
        enc = self.encode(self.node, {"messages": start, "add_generation_prompt": False})
        self.assertTrue(enc["encoded_prompt"].endswith("What is the capital of France?<|im_end|>\n"))
        r = self.client.chat.completions.create(model=MODEL, messages=prefill, temperature=0, max_tokens=6)
        self.assertNotIn("The capital of France is", r.choices[0].message.content)

    def test_raw_prompts_parse_control_tokens(self):
        # As llama.cpp's completion route: a hand-written ChatML prompt is its 10 tokens (28 as text).
        r = self.client.completions.create(model=MODEL, prompt="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                                           max_tokens=2, temperature=0)
        self.assertEqual(r.usage.prompt_tokens, 10)


class ClientsWithKey(unittest.TestCase):
    def test_every_api_needs_the_key(self):
        node = Node("--api-key", "sekrit")
        try:
            base = "http://127.0.0.1:%d" % node.port
            for method, path, body in (("POST", "/api/chat", {"model": MODEL, "messages": MESSAGES}),
                                       ("POST", "/api/generate", {"model": MODEL, "prompt": "hi"}),
                                       ("GET", "/api/tags", None), ("POST", "/api/show", {"model": MODEL}),
                                       ("GET", "/api/ps", None), ("GET", "/api/version", None),
                                       ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 4,
                                                                 "messages": [MESSAGES[1]]}),
                                       ("POST", "/v1/responses", {"model": MODEL, "input": "hi"})):
                data = json.dumps(body).encode() if body is not None else None
                req = urllib.request.Request(base + path, data=data, method=method,
                                             headers={"Content-Type": "application/json"})
                with self.assertRaises(urllib.error.HTTPError, msg=path) as e:
                    urllib.request.urlopen(req)
                self.assertEqual(e.exception.code, 401, path)
            # With the key: Anthropic's header and Ollama's client (Bearer) both work.
            a = anthropic.Anthropic(base_url=base, api_key="sekrit")
            # Greedy: at Anthropic's default temperature (1.0) an early end of turn is a fair draw.
            m = a.messages.create(model=MODEL, max_tokens=4, messages=[MESSAGES[1]], extra_body={"temperature": 0})
            self.assertEqual(m.usage.output_tokens, 4)
            o = ollama.Client(host=base, headers={"Authorization": "Bearer sekrit"})
            self.assertIn(MODEL + ":latest", [x.model for x in o.list().models])
        finally:
            node.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
