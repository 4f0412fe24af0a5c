-- test_speculative.lua: speculative decoding keeps the target's distribution.
--
-- 1. The acceptance rule on small synthetic distributions (draft q and target
--    p that differ in every way that matters: equal, disjoint supports, a
--    one-hot q, q = 0 where p > 0, unrelated): drafts drawn from q, the full
--    step run 2 x 10^5 times; the emitted tokens pass a chi-square test
--    against p at significance 1e-4 and stay within a total-variation bound,
--    the acceptance rate matches sum(min(p, q)), and tokens per target pass
--    match (1 - a^(g+1)) / (1 - a).
-- 2. The tiny model end to end: the first sampled token with speculation
--    follows the target's exact softmax; with another model as the draft, the
--    second token's statistics match plain sampling's and greedy is plain
--    greedy.
-- 3. The default model (when installed): greedy output with speculation is
--    the plain greedy output, token for token, for g in {1, 2, 4, 8}; also
--    across a multi-turn conversation on reused sessions, with a stop string
--    and an end-of-generation token inside an accepted block, and max_tokens
--    never exceeded.
local ffi = require "ffi"
local native = require "exo.native"
local sampling = require "exo.sampling"
local speculative = require "exo.speculative"
local generate = require "exo.generate"

local C = native.C
local failures, checks = 0, 0
local function check(cond, msg)
  checks = checks + 1
  if not cond then
    failures = failures + 1
    io.stderr:write("FAIL: " .. msg .. "\n")
  end
end

-- Chi-square critical value for df degrees of freedom at significance 1e-4
-- (Wilson-Hilferty; z = 3.719).
local function chi2_critical(df)
  local z = 3.719
  local a = 2 / (9 * df)
  return df * (1 - a + z * math.sqrt(a)) ^ 3
end

local function dense(values)
  local n = #values
  local d = ffi.new("float[?]", n)
  local sum = 0
  for _, v in ipairs(values) do sum = sum + v end
  for i = 1, n do d[i - 1] = values[i] / sum end
  return d, n
end

-- ---- 1. the rule on synthetic distributions ------------------------------------------

local function run_rule(name, pv, qv, g, steps)
  local p, n = dense(pv)
  local q = dense(qv)
  local rng = sampling.rng(12345)
  local prow, qrow = {}, {}
  for i = 1, g + 1 do prow[i] = p end
  for i = 1, g do qrow[i] = q end
  local counts = {}
  for i = 0, n - 1 do counts[i] = 0 end
  local total, accepted, decisions = 0, 0, 0
  local drafts = {}
  for _ = 1, steps do
    for i = 1, g do drafts[i] = C.exo_sample_draw(q, n, rng:uniform()) end
    local out, n_acc = speculative.accept(drafts, qrow, prow, n, rng)
    accepted = accepted + n_acc
    decisions = decisions + (n_acc < g and n_acc + 1 or g)
    for _, t in ipairs(out) do
      counts[t] = counts[t] + 1
      total = total + 1
    end
  end
  local chi2, df, tv = 0, -1, 0
  for i = 0, n - 1 do
    local expect = p[i] * total
    if expect > 0 then
      chi2 = chi2 + (counts[i] - expect) ^ 2 / expect
      df = df + 1
    else
      check(counts[i] == 0, ("%s: token %d has p = 0 but was emitted %d times"):format(name, i, counts[i]))
    end
    tv = tv + math.abs(counts[i] / total - p[i]) / 2
  end
  check(chi2 < chi2_critical(math.max(df, 1)), ("%s: chi-square %.1f over %d df (critical %.1f)"):format(name, chi2, df,
    chi2_critical(math.max(df, 1))))
  check(tv < 0.01, ("%s: total variation %.4f"):format(name, tv))
  local alpha = 0
  for i = 0, n - 1 do alpha = alpha + math.min(p[i], q[i]) end
  local rate = decisions > 0 and accepted / decisions or 1
  check(math.abs(rate - alpha) < 0.01, ("%s: acceptance %.4f, sum(min(p, q)) = %.4f"):format(name, rate, alpha))
  local per_pass = total / steps
  local want = alpha < 1 and (1 - alpha ^ (g + 1)) / (1 - alpha) or g + 1
  check(math.abs(per_pass - want) < 0.02 * want, ("%s: %.3f tokens per pass, expected %.3f"):format(name, per_pass, want))
end

local STEPS = 200000
do
  local V = 16
  local p, q_same, q_disjoint, q_onehot, q_partial, q_other = {}, {}, {}, {}, {}, {}
  for i = 1, V do
    p[i] = i <= 8 and (9 - i) or 0                 -- support 1..8, decreasing
    q_same[i] = p[i]
    q_disjoint[i] = i > 8 and 1 or 0               -- support 9..16
    q_onehot[i] = i == 3 and 1 or 0
    q_partial[i] = (i >= 5 and i <= 12) and 1 or 0 -- q = 0 on 1..4 where p > 0
    q_other[i] = (i * 7) % 5 + 1
  end
  run_rule("p == q", p, q_same, 3, STEPS)
  run_rule("disjoint supports", p, q_disjoint, 2, STEPS)
  run_rule("one-hot q", p, q_onehot, 4, STEPS)
  run_rule("q = 0 where p > 0", p, q_partial, 3, STEPS)
  run_rule("unrelated q", p, q_other, 2, STEPS)
  local p32, q32 = {}, {}
  for i = 1, 32 do
    p32[i] = math.exp(-((i - 10) / 6) ^ 2)
    q32[i] = math.exp(-((i - 14) / 9) ^ 2)
  end
  run_rule("vocab 32", p32, q32, 8, STEPS)
end

-- Greedy: drafts kept while they equal the target's argmax.
do
  local out, n = speculative.accept_greedy({ 5, 6, 7 }, { 5, 6, 9, 1 })
  check(n == 2 and #out == 3 and out[3] == 9, "greedy: two accepted, the target's token third")
  out, n = speculative.accept_greedy({ 5, 6 }, { 5, 6, 4 })
  check(n == 2 and #out == 3 and out[3] == 4, "greedy: all accepted, then the bonus")
  out, n = speculative.accept_greedy({}, { 8 })
  check(n == 0 and #out == 1 and out[1] == 8, "greedy: no drafts is a plain step")
end

-- ---- 2. the tiny model: the first token follows the exact softmax -----------------------

local tiny_chat = (os.getenv("EXO_TINY_MODEL") or "build/tiny.gguf"):gsub("%.gguf$", "-chat.gguf")
do
  local model = assert(require("exo.model").load(tiny_chat))
  local draft = assert(speculative.load_draft(tiny_chat .. ":layers=0-3", model))
  local target = assert(generate.session(model, { n_ctx = 64 }))
  local dsess = assert(generate.session(draft, { n_ctx = 64 }))
  local prompt = model.tokenizer:encode("hello there", { add_bos = true })
  -- The exact distribution of the first token at temperature 1.
  local seq = assert(model.shard:new_seq(64))
  local logits = assert(model.shard:forward(seq, prompt, nil, false))
  local nv = model.shard.n_vocab
  local exact = ffi.new("float[?]", nv)
  assert(C.exo_sample_probs(logits, nv, 1.0, 0, 1.0, 0.0, nil, nil, exact) == 0)
  seq:free()
  local counts, N = {}, 4000
  for seed = 1, N do
    local res = assert(speculative.generate(target, dsess, prompt, { temperature = 1.0, seed = seed, max_tokens = 3 },
      nil, nil, 2))
    local first = res.tokens[1] or -1 -- an end-of-generation first token is not in tokens
    counts[first] = (counts[first] or 0) + 1
  end
  -- Pool rare tokens into one bin so every expected count is >= 5.
  local chi2, df, rare_obs, rare_exp = 0, -1, 0, 0
  local function bin(o, e) -- one bin of its own, or into the rare pool
    if e >= 5 then
      chi2 = chi2 + (o - e) ^ 2 / e
      df = df + 1
    else
      rare_obs, rare_exp = rare_obs + o, rare_exp + e
    end
  end
  local eog = 0
  for t = 0, nv - 1 do
    if model.tokenizer:is_eog(t) then
      eog = eog + exact[t] * N
    else
      bin(counts[t] or 0, exact[t] * N)
    end
  end
  bin(counts[-1] or 0, eog)
  if rare_exp > 0 then
    chi2 = chi2 + (rare_obs - rare_exp) ^ 2 / rare_exp
    df = df + 1
  end
  check(df > 5 and chi2 < chi2_critical(df), ("tiny model: first-token chi-square %.1f over %d df (critical %.1f)")
    :format(chi2, df, chi2_critical(math.max(df, 1))))

  -- The second token, with another model as the draft: speculative and plain
  -- sampling agree (a two-sample chi-square over the tokens both drew).
  local other = assert(speculative.load_draft(tiny_chat:gsub("%.gguf$", "-draft.gguf"), model))
  local osess = assert(generate.session(other, { n_ctx = 64 }))
  local plain = assert(generate.session(model, { n_ctx = 64 }))
  local a, b = {}, {}
  local M2 = 3000
  for seed = 1, M2 do
    local params = { temperature = 1.0, seed = seed, max_tokens = 2 }
    local r1 = assert(speculative.generate(target, osess, prompt, params, nil, nil, 3))
    local r2 = assert(plain:generate(prompt, { temperature = 1.0, seed = 100000 + seed, max_tokens = 2 }))
    local t1, t2 = r1.tokens[2] or -1, r2.tokens[2] or -1
    a[t1] = (a[t1] or 0) + 1
    b[t2] = (b[t2] or 0) + 1
  end
  local c2, dof, pooled_a, pooled_b = 0, -1, 0, 0
  local seen = {}
  for t in pairs(a) do seen[t] = true end
  for t in pairs(b) do seen[t] = true end
  for t in pairs(seen) do
    local x, y = a[t] or 0, b[t] or 0
    if x + y >= 10 then
      c2 = c2 + (x - y) ^ 2 / (x + y)
      dof = dof + 1
    else
      pooled_a, pooled_b = pooled_a + x, pooled_b + y
    end
  end
  if pooled_a + pooled_b > 0 then
    c2 = c2 + (pooled_a - pooled_b) ^ 2 / (pooled_a + pooled_b)
    dof = dof + 1
  end
  check(dof > 5 and c2 < chi2_critical(dof), ("tiny model, another draft: second-token two-sample chi-square %.1f "
    .. "over %d df (critical %.1f)"):format(c2, dof, chi2_critical(math.max(dof, 1))))
  -- And greedy with that draft is plain greedy.
  local g1 = assert(speculative.generate(target, osess, prompt, { temperature = 0, max_tokens = 30 }, nil, nil, 4))
  local g2 = assert(plain:generate(prompt, { temperature = 0, max_tokens = 30 }))
  check(table.concat(g1.tokens, ",") == table.concat(g2.tokens, ","), "tiny model, another draft: greedy differs")
  target:free()
  dsess:free()
  osess:free()
  plain:free()
end

-- ---- 3. the default model, greedy --------------------------------------------------------

local default = os.getenv("EXO_DEFAULT_MODEL")
local f = default and io.open(default, "rb")
if not f then
  print("test_speculative: the default model is not installed; skipping its greedy checks")
else
  f:close()
  local prompt_mod = require "exo.prompt"
  local model = assert(require("exo.model").load(default))
  local draft = assert(speculative.load_draft(default .. ":layers=0-26", model))
  local function encode(messages)
    return assert(prompt_mod.build(model.tokenizer, messages, { template = model.chat_template }))
  end
  local plain = assert(generate.session(model, { n_ctx = 1024 }))
  local function fresh_pair()
    return assert(generate.session(model, { n_ctx = 1024 })), assert(generate.session(draft, { n_ctx = 1024 }))
  end
  local prompts = { "Write a short poem about the sea.", "What is the capital of France?", "List three fruits." }
  for _, text in ipairs(prompts) do
    local ids = encode { { role = "user", content = text } }
    local want = assert(plain:generate(ids, { temperature = 0, max_tokens = 40 }))
    for _, g in ipairs { 1, 2, 4, 8 } do
      local t, d = fresh_pair()
      local got = assert(speculative.generate(t, d, ids, { temperature = 0, max_tokens = 40 }, nil, nil, g))
      check(table.concat(got.tokens, ",") == table.concat(want.tokens, ","),
        ("greedy g=%d %q: speculative tokens differ"):format(g, text))
      check(got.finish_reason == want.finish_reason, ("greedy g=%d %q: finish %s vs %s"):format(g, text,
        got.finish_reason, want.finish_reason))
      check(got.speculative.passes <= want.n_generated, "no more target passes than tokens")
      t:free()
      d:free()
    end
  end

  -- Greedy with penalties: they apply to the draft's and the target's rows
  -- before the argmax, as in plain decoding.
  do
    local ids = encode { { role = "user", content = prompts[1] } }
    local params = { temperature = 0, max_tokens = 40, repeat_penalty = 1.5, frequency_penalty = 0.5 }
    local want = assert(plain:generate(ids, params))
    local t, d = fresh_pair()
    local got = assert(speculative.generate(t, d, ids, params, nil, nil, 4))
    check(table.concat(got.tokens, ",") == table.concat(want.tokens, ","), "greedy with penalties differs")
    t:free()
    d:free()
  end

  -- A conversation on reused sessions: no lost context, no duplicated token.
  do
    local t, d = fresh_pair()
    local p2 = assert(generate.session(model, { n_ctx = 1024 }))
    local a, b = {}, {}
    for _, turn in ipairs { "Hi! My name is Ada.", "What is my name?", "Spell it backwards." } do
      a[#a + 1] = { role = "user", content = turn }
      b[#b + 1] = { role = "user", content = turn }
      local ra = assert(p2:generate(encode(a), { temperature = 0, max_tokens = 30 }))
      local rb = assert(speculative.generate(t, d, encode(b), { temperature = 0, max_tokens = 30 }, nil, nil, 4))
      check(ra.text == rb.text, ("multi-turn: %q vs %q"):format(ra.text, rb.text))
      a[#a + 1] = { role = "assistant", content = ra.text }
      b[#b + 1] = { role = "assistant", content = rb.text }
    end
    t:free()
    d:free()
    p2:free()
  end

  -- Stop strings and end-of-generation inside an accepted block; max_tokens.
  do
    local ids = encode { { role = "user", content = prompts[1] } }
    local full = assert(plain:generate(ids, { temperature = 0, max_tokens = 40 }))
    local stop = full.text:sub(25, 30)
    local want = assert(plain:generate(ids, { temperature = 0, max_tokens = 40, stop = { stop } }))
    local t, d = fresh_pair()
    local got = assert(speculative.generate(t, d, ids, { temperature = 0, max_tokens = 40, stop = { stop } }, nil, nil, 8))
    check(got.text == want.text and got.finish_reason == "stop", ("stop string %q: %q vs %q"):format(stop, got.text,
      want.text))
    local short = encode { { role = "user", content = "Say just the word yes." } }
    local w = assert(plain:generate(short, { temperature = 0, max_tokens = 60 }))
    local s = assert(speculative.generate(t, d, short, { temperature = 0, max_tokens = 60 }, nil, nil, 8))
    check(w.finish_reason == "stop" and s.finish_reason == "stop" and s.text == w.text,
      ("end of generation inside a block: %q (%s) vs %q (%s)"):format(s.text, s.finish_reason, w.text, w.finish_reason))
    for n = 1, 9 do
      local r = assert(speculative.generate(t, d, ids, { temperature = 0, max_tokens = n }, nil, nil, 4))
      check(r.n_generated == n, ("max_tokens %d: %d generated"):format(n, r.n_generated))
      local pr = assert(plain:generate(ids, { temperature = 0, max_tokens = n }))
      check(r.text == pr.text, ("max_tokens %d: text differs"):format(n))
    end
    t:free()
    d:free()
  end
  plain:free()

  -- A draft that does not share the vocabulary is refused at load.
  local ok, err = speculative.load_draft(tiny_chat, model)
  check(not ok and err:match("vocabulary"), "a draft with another vocabulary is refused: " .. tostring(err))
end

if failures > 0 then
  io.stderr:write(("test_speculative: %d of %d checks failed\n"):format(failures, checks))
  return 1
end
print(("speculative ok (%d checks)"):format(checks))
return 0
