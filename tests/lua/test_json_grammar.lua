-- test_json_grammar.lua: sampling under the JSON grammar gives JSON objects, as cjson reads them.
--
-- Random logits over the default model's real vocabulary (49,152 BPE tokens, multi-byte
-- pieces, tokens that carry several JSON characters at once, like `":` or `},`), drawn at
-- temperature 1 with the grammar: every finished sample must decode with cjson (an independent
-- parser) to an object, and until it finishes the grammar must refuse end-of-generation. A
-- growing bias towards closing tokens lets most samples finish within the step budget. Also:
-- greedy sampling whose argmax the grammar forbids still yields JSON, and a stale grammar is
-- refused with a clear error, not a crash.
local ffi = require "ffi"
local cjson = require "cjson"
local native = require "exo.native"
local sampling = require "exo.sampling"

package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local model = require("reference_files").model_file("smollm2-135m")
assert(model, "the default model is not installed (scripts/setup)")
local tok = assert(native.load_tokenizer(model))
local n_vocab = tok.n_vocab

-- Tokens whose piece closes something, and the end-of-generation ones.
local closing, eog = {}, {}
for id = 0, n_vocab - 1 do
  local piece = tok:piece(id) or ""
  if piece:find("[}%]\"]") then closing[#closing + 1] = id end
  if tok:is_eog(id) then eog[#eog + 1] = id end
end

local logits = ffi.new("float[?]", n_vocab)
local rng = sampling.rng(12345)
local finished, objects = 0, 0
for sample = 1, 30 do
  local grammar = assert(native.json_grammar(tok))
  local sampler = sampling.new(n_vocab, { temperature = 1, seed = sample, grammar = grammar })
  local ids, done = {}, false
  for step = 1, 400 do
    for i = 0, n_vocab - 1 do logits[i] = 4 * rng:uniform() end
    for _, id in ipairs(closing) do logits[id] = logits[id] + step * 0.04 end
    for _, id in ipairs(eog) do logits[id] = logits[id] + 20 end
    local id = sampler:sample(logits)
    if tok:is_eog(id) then
      assert(grammar:done(), "end of generation drawn before the object was complete")
      done = true
      break
    end
    ids[#ids + 1] = id
  end
  if done then
    finished = finished + 1
    local text = assert(tok:decode(ids))
    local ok, value = pcall(cjson.decode, text)
    assert(ok and type(value) == "table", ("sample %d is not a JSON object: %q (%s)"):format(sample, text, tostring(value)))
    assert(native.json_object_check(text))
    objects = objects + 1
  end
end
print(("%d of 30 samples finished within 400 tokens; all %d are JSON objects"):format(finished, objects))
assert(finished >= 10, "too few samples finished to say anything")

-- Greedy: the argmax is a token the grammar refuses at the start (a letter); the draw is '{'-led.
local grammar = assert(native.json_grammar(tok))
local greedy = sampling.new(n_vocab, { temperature = 0, grammar = grammar })
for i = 0, n_vocab - 1 do logits[i] = 0 end
logits[tok:find("Hello")] = 100
local id = greedy:sample(logits)
assert(tok:piece(id):sub(1, 1) == "{", "greedy drew " .. tostring(tok:piece(id)))

-- A grammar asked to take a token it refuses says why.
local g2 = assert(native.json_grammar(tok))
local ok, err = g2:accept(tok:find("Hello"))
assert(not ok and err:find("cannot continue the JSON", 1, true), tostring(err))
ok, err = g2:accept(eog[1])
assert(not ok and err:find("before the JSON object was complete", 1, true), tostring(err))
print("test_json_grammar: ok")
