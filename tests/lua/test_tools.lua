-- test_tools.lua: tool calls found in canned answers of each format, and what streams before them.
--
-- The answers are written the way each family's template teaches its model to call (the
-- templates in tests/lua/templates): Hermes-style blocks (Qwen 2.5), Mistral's [TOOL_CALLS]
-- list, Llama 3's bare JSON object. Also: answers that only look like calls stay text, and
-- a streaming answer never shows the start of a call.
package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local files = require "reference_files"
local tools = require "exo.tools"
local json = require "exo.json"

local source = os.getenv("EXO_SOURCE_DIR")
local function template(name) return files.read(source .. "/tests/lua/templates/" .. name) end

-- Which format each real template teaches; templates without tools have none.
local formats = {
  ["qwen2.5-7b-instruct.jinja"] = "hermes", ["qwen3-0.6b.jinja"] = "hermes", ["smollm3-3b.jinja"] = false,
  ["mistral-nemo-instruct-2407.jinja"] = "mistral", ["llama-3.1-8b-instruct.jinja"] = "llama3",
  ["llama-3.2-3b-instruct.jinja"] = "llama3", ["smollm2-135m-instruct.jinja"] = false, ["gemma-2-2b-it.jinja"] = false,
}
for name, want in pairs(formats) do
  local got = tools.format_of(template(name))
  assert(got == (want or nil), ("%s: format %s, want %s"):format(name, tostring(got), tostring(want)))
end

local function args(call) return json.decode(call.arguments) end

-- Hermes: two calls, text around them kept.
local content, calls = tools.parse('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
  .. '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', "hermes")
assert(content == "Let me check." and #calls == 2, tostring(content))
assert(calls[1].name == "get_weather" and args(calls[1]).city == "Paris")
assert(calls[2].name == "get_time" and calls[2].arguments == "{}")
-- An unterminated last block (the model stopped at its end token) still counts.
content, calls = tools.parse('<tool_call>\n{"name": "f", "arguments": {"x": 1}}', "hermes")
assert(content == nil and #calls == 1 and args(calls[1]).x == 1)
-- Not JSON inside the tags: plain text.
content, calls = tools.parse("Use <tool_call> tags to call tools.", "hermes")
assert(content == "Use <tool_call> tags to call tools." and #calls == 0)

-- Mistral.
content, calls = tools.parse('[TOOL_CALLS][{"name": "add", "arguments": {"a": 2, "b": 3}}, '
  .. '{"name": "neg", "arguments": "{\\"a\\": 1}"}]', "mistral")
assert(content == nil and #calls == 2 and args(calls[1]).b == 3 and calls[2].arguments == '{"a": 1}')
content, calls = tools.parse("[TOOL_CALLS] not json", "mistral")
assert(content == "[TOOL_CALLS] not json" and #calls == 0)

-- Llama 3: the whole answer, with "parameters"; after <|python_tag|> too.
content, calls = tools.parse('{"name": "search", "parameters": {"q": "exo"}}', "llama3")
assert(content == nil and #calls == 1 and args(calls[1]).q == "exo")
content, calls = tools.parse('<|python_tag|>{"name": "search", "parameters": {"q": "x"}}', "llama3")
assert(#calls == 1)
content, calls = tools.parse('The answer is {"name": "x"}', "llama3")
assert(#calls == 0 and content == 'The answer is {"name": "x"}')
content, calls = tools.parse('{"key": "not a call"}', "llama3")
assert(#calls == 0)

-- Streaming: text before a call shows, the call's opening never does.
assert(tools.hold("Let me check.\n<tool_", "hermes") == #"Let me check.\n")
assert(tools.hold("Let me check.\n<tool_call>{", "hermes") == #"Let me check.\n")
assert(tools.hold("Plain answer.", "hermes") == #"Plain answer.")
assert(tools.hold("x [TOOL", "mistral") == 2)
assert(tools.hold('  {"name"', "llama3") == 2)
assert(tools.hold("Hello", "llama3") == 5)
assert(tools.hold("anything <tool_call>", nil) == #"anything <tool_call>")
print("test_tools: ok")
