-- test_text_sink.lua: what a stop string leaves of the text and of the logprobs, on the default
-- model's tokenizer. The content ends before the stop string, and so do the logprobs: the token
-- that carried the stop string (and any after it) has no entry (before, it had one).
package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local native = require "exo.native"
local generate = require "exo.generate"

local model = require("reference_files").model_file("smollm2-135m")
assert(model, "the default model is not installed (scripts/setup)")
local tok = assert(native.load_tokenizer(model))

local function run(text, stop)
  local ids = assert(tok:encode(text))
  local streamed, streamed_lps = {}, 0
  local sink = generate.text_sink(tok, { stop = { stop }, logprobs = true }, function(piece, lps)
    streamed[#streamed + 1] = piece
    streamed_lps = streamed_lps + (lps and #lps or 0)
  end)
  local stopped = false
  for _, id in ipairs(ids) do
    if sink:push(id, { token = tok:piece(id) }) then
      stopped = true
      break
    end
  end
  local out = sink:finish(stopped and "stop" or "length")
  return out, sink.logprobs, table.concat(streamed), streamed_lps
end

-- " world" ends before ".", the token "." and " Bye" are not in the answer.
local text, lps, streamed, n_streamed = run("Hello world. Bye now.", ".")
assert(text == "Hello world" and streamed == text, text)
local joined = {}
for i, e in ipairs(lps) do joined[i] = e.token end
assert(table.concat(joined) == "Hello world", "logprobs cover " .. table.concat(joined, "|"))
assert(n_streamed == #lps)
-- A stop string inside a token: the token whose text starts before it is kept.
text, lps = run("abc defghi jkl", "fgh")
joined = {}
for i, e in ipairs(lps) do joined[i] = e.token end
assert(text == "abc de", text)
assert(table.concat(joined):sub(1, #text) == text and #table.concat(joined) >= #text, table.concat(joined, "|"))
-- No stop string: every token has its entry.
text, lps = run("Hello world", "zzz")
assert(text == "Hello world" and #lps == #assert(tok:encode("Hello world")))
print("test_text_sink: ok")
