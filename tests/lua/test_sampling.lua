-- test_sampling.lua: the sampling policy in Lua over the C primitives.
--
-- Same seed, same draws; different seeds, different draws; temperature 0 is
-- the argmax; and draws follow the candidate distribution (a chi-square test
-- on 200,000 draws at a significance level of 1e-4, so an honest sampler
-- fails it about once in ten thousand runs). The per-token path compiles:
-- sampling through native.lua's wrappers leaves no trace aborted on a
-- construct the JIT does not implement (NYI).
local ffi = require "ffi"
local sampling = require "exo.sampling"

local n_vocab = 16
local logits = ffi.new("float[?]", n_vocab)
local function fill(t) for i = 0, n_vocab - 1 do logits[i] = t[i + 1] end end
local base = { 2.0, 1.0, 0.5, 0.0, -1.0, 3.0, 0.2, 0.1, -0.5, 1.5, 0.7, 0.3, -2.0, 0.0, 1.1, 0.9 }

-- Greedy.
fill(base)
local g = sampling.new(n_vocab, { temperature = 0 })
assert(g:sample(logits) == 5)

-- Determinism by seed.
local function draws(seed, n)
  local s = sampling.new(n_vocab, { temperature = 1, seed = seed })
  local out = {}
  for i = 1, n do
    fill(base)
    out[i] = s:sample(logits)
  end
  return table.concat(out, ",")
end
assert(draws(42, 50) == draws(42, 50), "same seed, different draws")
assert(draws(42, 50) ~= draws(43, 50), "different seeds, same draws")
-- Unseeded generators made at once draw differently (they were seeded from
-- os.time(): 40 requests in one second drew the same first token).
local firsts = {}
for _ = 1, 40 do
  local v = tostring(sampling.rng():next_u64())
  assert(not firsts[v], "two unseeded generators drew the same first number")
  firsts[v] = true
end

-- Uniform generator sanity: mean of many uniforms near 1/2, all in [0, 1).
local rng = sampling.rng(7)
local sum = 0
for _ = 1, 100000 do
  local u = rng:uniform()
  assert(u >= 0 and u < 1)
  sum = sum + u
end
assert(math.abs(sum / 100000 - 0.5) < 0.01, "uniform mean " .. sum / 100000)

-- Chi-square: draws against the candidate probabilities (top_k 8, temperature 0.8).
local s = sampling.new(n_vocab, { temperature = 0.8, top_k = 8, seed = 1 })
fill(base)
local ids, probs, n = s:distribution(logits)
local expected = {}
for i = 0, n - 1 do expected[ids[i]] = probs[i] end
local counts, N = {}, 200000
for _ = 1, N do
  local id = s:draw(ids, probs, n)
  assert(expected[id], "drew a token outside the candidates: " .. id)
  counts[id] = (counts[id] or 0) + 1
end
local chi2 = 0
for id, p in pairs(expected) do
  local e = N * p
  chi2 = chi2 + ((counts[id] or 0) - e) ^ 2 / e
end
-- 7 degrees of freedom: the 1e-4 upper quantile of chi-square is 29.88.
assert(chi2 < 29.88, "chi-square " .. chi2 .. " over 7 dof")

-- Chi-square: sample() without truncation (the dense O(n) path) against the
-- exact softmax at temperature 0.9; 15 degrees of freedom, 1e-4 quantile 44.26.
do
  local t = 0.9
  local u = sampling.new(n_vocab, { temperature = t, seed = 9 })
  assert(u:untruncated())
  local z, want = 0, {}
  for i = 1, n_vocab do z = z + math.exp(base[i] / t) end
  for i = 1, n_vocab do want[i - 1] = math.exp(base[i] / t) / z end
  local got = {}
  for _ = 1, N do
    fill(base)
    local id = u:sample(logits)
    got[id] = (got[id] or 0) + 1
  end
  local c2 = 0
  for id = 0, n_vocab - 1 do c2 = c2 + ((got[id] or 0) - N * want[id]) ^ 2 / (N * want[id]) end
  assert(c2 < 44.26, "untruncated chi-square " .. c2 .. " over 15 dof")
end

-- Penalties change the distribution through the C primitive.
local p = sampling.new(n_vocab, { temperature = 0, presence_penalty = 10 })
fill(base)
assert(p:sample(logits, { 5 }) == 0, "presence penalty should move greedy off token 5")
-- The per-token path is JIT-compiled: traces start in the sampler and
-- native.lua's wrappers, and none aborts on something not yet implemented.
do
  local jutil, vmdef = require "jit.util", require "jit.vmdef"
  local started, nyi = 0, {}
  local function on_trace(what, _, func, pc, err, info)
    local fi = func and jutil.funcinfo(func, pc)
    local where = fi and fi.source or ""
    if what == "start" and (where:match("sampling%.lua$") or where:match("native%.lua$")) then
      started = started + 1
    elseif what == "abort" then
      local why = type(err) == "number" and vmdef.traceerr[err] or tostring(err)
      local ok, text = pcall(string.format, why, info)
      if ok then why = text end
      if why:match("^NYI") then nyi[#nyi + 1] = ("%s:%s: %s"):format(where, tostring(fi and fi.currentline), why) end
    end
  end
  jit.attach(on_trace, "trace")
  for _, opts in ipairs { { temperature = 0, repeat_penalty = 1.1 }, { temperature = 0.8, seed = 3 },
    { temperature = 0.8, top_k = 5, top_p = 0.9, seed = 3, presence_penalty = 0.5 } } do
    local s = sampling.new(n_vocab, opts)
    local history = { 1, 2, 3 }
    for i = 1, 2000 do
      fill(base)
      history[4] = s:sample(logits, history) + i % 2
    end
  end
  jit.attach(on_trace)
  assert(started > 0, "no trace started in the sampler")
  assert(#nyi == 0, "the sampler's path hits NYI:\n" .. table.concat(nyi, "\n"))
end
-- A failure in C reaches the caller as C wrote it: the error's name and
-- message, no Lua position in front (issue 12: an error() call once raised
-- "bad argument #2 to 'error'" in its place).
for _, opts in ipairs { { temperature = 0.7 }, { temperature = 0.7, top_k = 5 } } do
  local s = sampling.new(0, opts)
  local ok, err = pcall(s.sample, s, logits)
  assert(not ok and (err == "EINVAL: exo_sample_probs: bad arguments"
    or err == "EINVAL: exo_sample_candidates: bad arguments"), tostring(err))
end
print("sampling ok, chi2 = " .. chi2)
