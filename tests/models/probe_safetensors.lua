-- probe_safetensors.lua: what test_safetensors_hf.py asks exo about a model.
--   exo lua probe_safetensors.lua logits A B [QUANT] -> {"max_diff": d, "n": count} over a fixed sequence
--     (QUANT: safetensors models quantized at load, as --quantize does)
--   exo lua probe_safetensors.lua encode PATH TEXTS.json -> [[ids...], ...] (special tokens parsed, no BOS)
--   exo lua probe_safetensors.lua info PATH TEXTS.json -> the tokenizer's model, size, BOS/EOS, token
--     type counts, and each text's ids decoded again (control tokens left out)
local native = require "exo.native"
local cjson = require "cjson"
local arg = { ... }
local mode = arg[1]

if mode == "logits" then
  if arg[4] then assert(native.set_safetensors_quantize(arg[4])) end
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
elseif mode == "info" then
  local tok = assert(native.load_tokenizer(arg[2]))
  local f = assert(io.open(arg[3], "rb"))
  local texts = cjson.decode(f:read("*a"))
  f:close()
  local types, decoded = {}, {}
  for id = 0, tok.n_vocab - 1 do
    local t = tostring(tok:token_type(id))
    types[t] = (types[t] or 0) + 1
  end
  for i, t in ipairs(texts) do
    decoded[i] = tok:decode(assert(tok:encode(t, { special = true, add_bos = false })))
  end
  print(cjson.encode({ model = tok.model, n_vocab = tok.n_vocab, bos = tok.bos or -1, eos = tok.eos or -1,
    add_bos = tok.add_bos, types = types, decoded = decoded }))
else
  error("usage: probe_safetensors.lua logits A B | encode PATH TEXTS.json | info PATH TEXTS.json")
end
