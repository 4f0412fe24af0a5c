-- sampling.lua: the sampling policy and its seedable random generator.
--
-- C fills the arrays (penalties, the truncated and renormalised candidate
-- distribution, argmax); this module decides and draws. Temperature 0 is
-- greedy. A sampler owns its generator, so the same seed and the same
-- logits give the same tokens on every machine (splitmix64 over uint64
-- cdata, no dependence on Lua's math.random).
local ffi = require "ffi"
local bit = require "bit"
local native = require "exo.native"

-- Bound once: these run for every token.
local argmax, sample_penalties, sample_candidates = native.argmax, native.sample_penalties, native.sample_candidates
local sample_probs, sample_draw = native.sample_probs, native.sample_draw

local M = {}

-- ---- random numbers ------------------------------------------------------------

local Rng = {}
Rng.__index = Rng

local GOLDEN = 0x9e3779b97f4a7c15ULL
local MIX1, MIX2 = 0xbf58476d1ce4e5b9ULL, 0x94d049bb133111ebULL

function M.rng(seed)
  local state = ffi.new("uint64_t[1]")
  -- Without a seed, 64 bits from the operating system: requests in the same
  -- second must not draw alike (seeding from the clock made them).
  state[0] = seed and (ffi.cast("uint64_t", seed) + 0ULL) or native.random_u64()
  return setmetatable({ state = state }, Rng)
end

-- Next 64 random bits (uint64 cdata).
function Rng:next_u64()
  local z = self.state[0] + GOLDEN
  self.state[0] = z
  z = bit.bxor(z, bit.rshift(z, 30)) * MIX1
  z = bit.bxor(z, bit.rshift(z, 27)) * MIX2
  return bit.bxor(z, bit.rshift(z, 31))
end

-- Uniform in [0, 1) with 53 random bits.
function Rng:uniform()
  return tonumber(bit.rshift(self:next_u64(), 11)) / 9007199254740992
end

-- ---- samplers ------------------------------------------------------------------

local Sampler = {}
Sampler.__index = Sampler

local DEFAULTS = {
  temperature = 1.0, top_k = 0, top_p = 1.0, min_p = 0.0,
  repeat_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, penalty_last_n = 64,
}

-- opts: temperature, top_k, top_p, min_p, seed, repeat_penalty,
-- presence_penalty, frequency_penalty, penalty_last_n, grammar (a
-- native.json_grammar: only tokens it allows are drawn, and each drawn token
-- advances it). Invalid values raise: callers (the CLI, the API) validate user
-- input before this point.
function M.new(n_vocab, opts)
  opts = opts or {}
  local s = setmetatable({ n_vocab = n_vocab }, Sampler)
  for k, v in pairs(DEFAULTS) do s[k] = opts[k] == nil and v or opts[k] end
  assert(s.temperature >= 0, "temperature must be >= 0")
  assert(s.top_p > 0 and s.top_p <= 1, "top_p must be in (0, 1]")
  assert(s.min_p >= 0 and s.min_p < 1, "min_p must be in [0, 1)")
  s.rng = M.rng(opts.seed)
  s.grammar = opts.grammar
  s.ids = ffi.new("int32_t[?]", n_vocab)
  s.probs = ffi.new("float[?]", n_vocab)
  s.recent = ffi.new("int32_t[?]", math.max(1, s.penalty_last_n))
  return s
end

function Sampler:greedy() return self.temperature == 0 end

-- Applies the penalties for the last penalty_last_n tokens of history (a Lua
-- array) to logits, in place.
function Sampler:penalize(logits, history)
  if self.repeat_penalty == 1 and self.presence_penalty == 0 and self.frequency_penalty == 0 then return end
  local n = math.min(#history, self.penalty_last_n)
  for i = 1, n do self.recent[i - 1] = history[#history - n + i] end
  sample_penalties(logits, self.n_vocab, self.recent, n, self.repeat_penalty, self.presence_penalty,
    self.frequency_penalty)
end

-- The distribution the next token is drawn from: ids, probs (cdata owned by
-- the sampler, valid until the next call) and their count. Greedy: the
-- argmax with probability 1.
function Sampler:distribution(logits)
  if self:greedy() then
    self.ids[0] = argmax(logits, self.n_vocab)
    self.probs[0] = 1
    return self.ids, self.probs, 1
  end
  local n, err = sample_candidates(logits, self.n_vocab, self.temperature, self.top_k, self.top_p, self.min_p,
    self.ids, self.probs, self.n_vocab)
  if not n then error(err, 0) end
  return self.ids, self.probs, n
end

-- Draws from a distribution (ids, probs, n) with this sampler's generator.
function Sampler:draw(ids, probs, n)
  local u, acc = self.rng:uniform(), 0
  for i = 0, n - 1 do
    acc = acc + probs[i]
    if u < acc then return ids[i], probs[i] end
  end
  return ids[n - 1], probs[n - 1] -- rounding left u past the last sum
end

-- Whether no top-k, top-p or min-p cuts the distribution (then it is a plain
-- softmax, drawn in O(n_vocab) without sorting the vocabulary).
function Sampler:untruncated()
  return (self.top_k <= 0 or self.top_k >= self.n_vocab) and self.top_p >= 1 and self.min_p <= 0
end

-- One token from logits (modified in place by penalties and the grammar),
-- given the history.
function Sampler:sample(logits, history)
  if history then self:penalize(logits, history) end
  local grammar = self.grammar
  if grammar then
    assert(grammar:mask(logits, self.n_vocab))
    local id, p = self:draw_from(logits)
    assert(grammar:accept(id))
    return id, p
  end
  return self:draw_from(logits)
end

-- A token drawn from logits as this sampler's settings say (greedy, a plain
-- softmax, or a truncated distribution).
function Sampler:draw_from(logits)
  if not self:greedy() and self:untruncated() then
    self.dense = self.dense or ffi.new("float[?]", self.n_vocab)
    local ok, err = sample_probs(logits, self.n_vocab, self.temperature, 0, 1, 0, nil, nil, self.dense)
    if not ok then error(err, 0) end
    local id, derr = sample_draw(self.dense, self.n_vocab, self.rng:uniform())
    if not id then error(derr, 0) end
    return id, self.dense[id]
  end
  return self:draw(self:distribution(logits))
end

return M
