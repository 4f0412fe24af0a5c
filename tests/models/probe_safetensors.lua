-- probe_safetensors.lua: what test_safetensors_hf.py asks exo about a model.
--   exo lua probe_safetensors.lua logits A B    -> {"max_diff": d, "n": count} over a fixed sequence
--   exo lua probe_safetensors.lua encode PATH TEXTS.json -> [[ids...], ...] (special tokens parsed, no BOS)
local native = require "exo.native"
local cjson = require "cjson"
local arg = { ... }
local mode = arg[1]

if mode == "logits" then
  local ids = { 1, 17, 5, 99, 3, 250, 42, 7, 64, 128, 2, 31 }
  local function run(path)
    local shard = assert(native.load_shard(path))
    local seq = assert(shard:new_seq(#ids + 4))
    local p = assert(shard:forward(seq, ids, nil, true))
    local out = {}
    for i = 0, #ids * shard.n_vocab - 1 do out[i + 1] = p[i] end
    return out
  end
  local a, b = run(arg[2]), run(arg[3])
  assert(#a == #b, "logit counts differ")
  local worst = 0
  for i = 1, #a do worst = math.max(worst, math.abs(a[i] - b[i])) end
  print(cjson.encode({ max_diff = worst, n = #a }))
elseif mode == "encode" then
  local tok = assert(native.load_tokenizer(arg[2]))
  local f = assert(io.open(arg[3], "rb"))
  local texts = cjson.decode(f:read("*a"))
  f:close()
  local out = {}
  for i, t in ipairs(texts) do
    local ids = assert(tok:encode(t, { special = true, add_bos = false }))
    out[i] = ids
  end
  print(cjson.encode(out))
else
  error("usage: probe_safetensors.lua logits A B | encode PATH TEXTS.json")
end
