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
-- One sample under grammar: random logits, closing tokens ever more likely; the text, or nil
-- when it did not finish within 400 tokens.
local function draw(grammar, seed)
  local sampler = sampling.new(n_vocab, { temperature = 1, seed = seed, grammar = grammar })
  local ids = {}
  for step = 1, 400 do
    for i = 0, n_vocab - 1 do logits[i] = 4 * rng:uniform() end
    for _, id in ipairs(closing) do logits[id] = logits[id] + step * 0.04 end
    for _, id in ipairs(eog) do logits[id] = logits[id] + 20 end
    local id = sampler:sample(logits)
    if tok:is_eog(id) then
      assert(grammar:done(), "end of generation drawn before the object was complete")
      return assert(tok:decode(ids))
    end
    ids[#ids + 1] = id
  end
end

local finished, objects = 0, 0
for sample = 1, 30 do
  local text = draw(assert(native.json_grammar(tok)), sample)
  if text then
    finished = finished + 1
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
-- A JSON schema: every finished sample has only the schema's keys, all required ones, each
-- value of its type (integers without a fraction, strings of the enum), arrays of their items.
local schema = {
  type = "object",
  properties = {
    name = { type = "string" }, age = { type = "integer" }, ok = { type = "boolean" },
    colour = { type = "string", enum = { "red", "green", "blue" } },
    tags = { type = "array", items = { type = "string", enum = { "a", "b\"c" } } },
    inner = { type = "object", properties = { x = { type = "number" } }, required = { "x" } },
  },
  required = { "name", "colour", "inner" },
}
local function valid(v)
  if type(v) ~= "table" then return false, "not an object" end
  for k in pairs(v) do if not schema.properties[k] then return false, "key " .. k end end
  for _, k in ipairs(schema.required) do if v[k] == nil then return false, "missing " .. k end end
  if v.name ~= nil and type(v.name) ~= "string" then return false, "name" end
  if v.age ~= nil and (type(v.age) ~= "number" or v.age % 1 ~= 0) then return false, "age" end
  if v.ok ~= nil and type(v.ok) ~= "boolean" then return false, "ok" end
  if v.colour ~= "red" and v.colour ~= "green" and v.colour ~= "blue" then return false, "colour" end
  for _, t in ipairs(v.tags or {}) do if t ~= "a" and t ~= 'b"c' then return false, "tag " .. tostring(t) end end
  if type(v.inner) ~= "table" or type(v.inner.x) ~= "number" then return false, "inner" end
  for k in pairs(v.inner) do if k ~= "x" then return false, "inner key " .. k end end
  return true
end
local finished_schema = 0
for sample = 1, 20 do
  local text = draw(assert(native.json_grammar(tok, schema)), 100 + sample)
  if text then
    local ok, value = pcall(cjson.decode, text)
    assert(ok, ("sample %d is not JSON: %q"):format(sample, text))
    local good, why = valid(value)
    assert(good, ("sample %d breaks the schema (%s): %s"):format(sample, tostring(why), text))
    finished_schema = finished_schema + 1
  end
end
print(("schema: %d of 20 samples finished; all follow the schema"):format(finished_schema))
assert(finished_schema >= 5, "too few schema samples finished to say anything")
-- What it cannot follow is named.
local none, err = native.json_grammar(tok, { type = "object", properties = { a = { anyOf = {} } } })
assert(not none and err:find("anyOf", 1, true), tostring(err))
none, err = native.json_grammar(tok, { type = "array" })
assert(not none and err:find("object", 1, true), tostring(err))

print("test_json_grammar: ok")
