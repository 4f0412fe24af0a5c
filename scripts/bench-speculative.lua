-- bench-speculative.lua: what speculative decoding buys on this machine.
--
--   build/exo lua scripts/bench-speculative.lua [MODEL] [--reps 3] [--tokens 96]
--
-- 1. The cost of a verify pass of g+1 positions (all logits) relative to a
--    1-token pass, medians over reps: speculation pays only when it is small.
-- 2. For self-speculative drafts (the model's first K layers), at temperature
--    0 and 0.7: acceptance rate, tokens per target pass, decode tok/s with and
--    without speculation (medians over reps; seeded, the same prompts).
-- Prints a table and one JSON line.
local native = require "exo.native"
local json = require "exo.json"
local generate = require "exo.generate"
local speculative = require "exo.speculative"
local prompt_mod = require "exo.prompt"

local args = { ... }
local model_name, reps, tokens = nil, 3, 96
local i = 1
while i <= #args do
  if args[i] == "--reps" then reps, i = tonumber(args[i + 1]), i + 1
  elseif args[i] == "--tokens" then tokens, i = tonumber(args[i + 1]), i + 1
  else model_name = args[i] end
  i = i + 1
end

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

local model = assert(require("exo.model").load(model_name))
local shard = model.shard
local out = { model = model.path, threads = native.threads(), verify = {}, drafts = {} }

-- 1. verify cost
do
  local seq = assert(shard:new_seq(1024))
  local ctx = {}
  for k = 1, 64 do ctx[k] = (k * 97) % 40000 + 100 end
  assert(shard:forward(seq, ctx, nil, false))
  local base
  for _, n in ipairs { 1, 2, 3, 5, 9 } do
    local toks = {}
    for k = 1, n do toks[k] = (k * 31) % 40000 + 100 end
    local buf = shard:output_buffer(n, true)
    local times = {}
    for r = 1, reps * 3 do
      local t0 = native.now()
      assert(shard:forward(seq, toks, nil, true, buf))
      times[r] = native.now() - t0
      assert(seq:truncate(64))
    end
    local ms = median(times) * 1e3
    base = base or ms
    out.verify[#out.verify + 1] = { positions = n, ms = ms, ratio = ms / base }
    print(("verify pass of %d positions: %.2f ms, %.2f x a 1-token pass"):format(n, ms, ms / base))
  end
  seq:free()
end

-- 2. drafts
local prompts = { "Write a short poem about the sea.", "Explain why the sky is blue.", "List five animals." }
local function encode(text)
  return assert(prompt_mod.build(model.tokenizer, { { role = "user", content = text } }, { template = model.chat_template }))
end

local function run(temperature, draft, g)
  local rates, acc, drafted, passes, generated = {}, 0, 0, 0, 0
  for r = 1, reps do
    for k, text in ipairs(prompts) do
      local ids = encode(text)
      local target = assert(generate.session(model, { n_ctx = 1024 }))
      local params = { temperature = temperature, seed = 1000 * r + k, max_tokens = tokens }
      local res
      if draft then
        local d = assert(generate.session(draft, { n_ctx = 1024 }))
        res = assert(speculative.generate(target, d, ids, params, nil, nil, g))
        d:free()
        acc, drafted, passes = acc + res.speculative.accepted, drafted + res.speculative.drafted,
          passes + res.speculative.passes
      else
        res = assert(target:generate(ids, params))
      end
      generated = generated + res.n_generated
      rates[#rates + 1] = (res.n_generated - 1) / math.max(res.seconds - res.ttft, 1e-9)
      target:free()
    end
  end
  return { tok_s = median(rates), acceptance = drafted > 0 and acc / drafted or nil,
    tokens_per_pass = passes > 0 and generated / passes or nil }
end

print("draft            T    g  acceptance  tokens/pass  tok/s  (plain tok/s)")
for _, temperature in ipairs { 0, 0.7 } do
  local plain = run(temperature)
  for _, K in ipairs { 16, 26, 28 } do
    local draft = assert(speculative.load_draft(model.path .. ":layers=0-" .. K, model))
    for _, g in ipairs { 2, 4 } do
      local r = run(temperature, draft, g)
      r.draft, r.temperature, r.g, r.plain_tok_s = "layers=0-" .. K, temperature, g, plain.tok_s
      out.drafts[#out.drafts + 1] = r
      print(("%-15s %4.1f %3d  %9.1f%%  %11.2f  %5.1f  (%.1f)"):format(r.draft, temperature, g, 100 * r.acceptance,
        r.tokens_per_pass, r.tok_s, plain.tok_s))
    end
    draft.shard:free()
  end
end
print(json.encode(out))
