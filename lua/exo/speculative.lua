-- speculative.lua: speculative decoding that keeps the target model's distribution.
--
-- A small draft model proposes g tokens x_1..x_g, each drawn from the draft's
-- (warped) distribution q_i; the target scores the last accepted token and all
-- g drafts in one batched pass, giving p_1..p_{g+1}. Draft x_i is accepted when
-- u * q_i(x_i) < p_i(x_i) for a fresh uniform u; at the first rejection the
-- token emitted instead is drawn from norm(max(0, p_i - q_i)), and when every
-- draft is accepted a bonus token comes from p_{g+1}. Each emitted token then
-- follows the target's distribution exactly (Leviathan et al. 2023, Chen et
-- al. 2023): nothing is traded for speed. At temperature 0 the rule is exact
-- matching: drafts are kept while they equal the target's argmax.
--
-- Bookkeeping, the part that is easy to get wrong: with L tokens in context the
-- target's cache holds the first L-1 and the verify pass feeds token L and the
-- drafts, so row i of that pass scores x_i and row g+1 gives the bonus. After
-- the step both caches are cut back to what was accepted; the draft catches up
-- on whatever it has not seen (after a full acceptance: x_g and the bonus) at
-- the start of the next step. The C side fills the probability arrays
-- (native.sample_probs, _draw, _residual); the decision is here.
local ffi = require "ffi"
local native = require "exo.native"
local sampling = require "exo.sampling"
local generate = require "exo.generate"

local argmax, sample_draw, sample_residual = native.argmax, native.sample_draw, native.sample_residual
local sample_probs, sample_log_softmax = native.sample_probs, native.sample_log_softmax

local M = {}

-- ---- the acceptance rule ------------------------------------------------------------

-- drafts[1..g] token ids, q[1..g] and p[1..g+1] dense distributions (float*
-- of n), rng with :uniform(). Returns the emitted tokens, the number of drafts
-- accepted, and (when trace is a table) one record per decision in it.
function M.accept(drafts, q, p, n, rng, trace)
  local out = {}
  local g = #drafts
  for i = 1, g do
    local x = drafts[i]
    local qx, px = q[i][x], p[i][x]
    local u = rng:uniform()
    local ok = u * qx < px
    if trace then trace[#trace + 1] = { token = x, q = qx, p = px, ratio = qx > 0 and px / qx or math.huge, u = u, accepted = ok } end
    if not ok then
      local y = sample_residual(p[i], q[i], n, rng:uniform())
      -- p <= q everywhere means p == q up to rounding: then a rejection had
      -- probability ~0, and p itself is the residual's limit.
      local err
      if not y then y, err = sample_draw(p[i], n, rng:uniform()) end
      if not y then error("the target's distribution is empty: " .. err) end
      if trace then trace[#trace].resampled = y end
      out[#out + 1] = y
      return out, i - 1
    end
    out[#out + 1] = x
  end
  local bonus, err = sample_draw(p[g + 1], n, rng:uniform())
  if not bonus then error("the target's distribution is empty: " .. err) end
  if trace then trace[#trace + 1] = { bonus = bonus } end
  out[#out + 1] = bonus
  return out, g
end

-- Temperature 0: drafts are kept while they equal the target's argmax (best[i]
-- for row i); then the target's own choice is emitted.
function M.accept_greedy(drafts, best, trace)
  local out = {}
  for i = 1, #drafts do
    local ok = drafts[i] == best[i]
    if trace then trace[#trace + 1] = { token = drafts[i], target = best[i], accepted = ok } end
    out[#out + 1] = best[i]
    if not ok then return out, i - 1 end
  end
  if trace then trace[#trace + 1] = { bonus = best[#drafts + 1] } end
  out[#out + 1] = best[#drafts + 1]
  return out, #drafts
end

-- ---- drafts -----------------------------------------------------------------------------

-- "MODEL:layers=0-K" names a self-speculative draft: the target's own first K
-- layers, then its final norm and head. Returns model, start, stop (or just model).
function M.parse_draft(spec)
  local model, a, b = spec:match("^(.*):layers=(%d+)%-(%d+)$")
  if model then return model, tonumber(a), tonumber(b) end
  return spec
end

-- The draft for target (an exo.model): { shard, tokenizer, id }, or nil, err.
-- runner loads it (as exo.model's; default: on this thread).
function M.load_draft(spec, target, runner)
  local model_mod = require "exo.model"
  local name, start, stop = M.parse_draft(spec)
  if start then
    if start ~= 0 then return nil, "a self-speculative draft runs the first layers: write MODEL:layers=0-K" end
    local path, err = require("exo.models").resolve(name)
    if not path then return nil, err end
    if path ~= target.path then
      return nil, ("a layers= draft must be the target itself (%s), not %s"):format(target.id, name)
    end
    if stop < 1 or stop >= target.n_layers then
      return nil, ("layers=0-%d: K must be between 1 and %d"):format(stop, target.n_layers - 1)
    end
    local shard, serr = (runner or generate.sync_runner):load_shard(path,
      { start = 0, stop = stop, first = true, last = true })
    if not shard then return nil, serr end
    return { id = spec, shard = shard, tokenizer = target.tokenizer, path = path }
  end
  local draft, err = model_mod.load(name, { runner = runner })
  if not draft then return nil, err end
  local a, b = draft.tokenizer, target.tokenizer
  if a.n_vocab ~= b.n_vocab or draft.shard.n_vocab ~= target.tokenizer.n_vocab then
    return nil, ("the draft %s has %d tokens, the target %s %d: they must share a vocabulary"):format(name, a.n_vocab,
      target.id, b.n_vocab)
  end
  for id = 0, a.n_vocab - 1 do
    if a:text(id) ~= b:text(id) then
      return nil, ("the draft %s and the target %s differ at token %d (%q vs %q): they must share a vocabulary")
        :format(name, target.id, id, a:text(id) or "", b:text(id) or "")
    end
  end
  return draft
end

-- ---- generation ----------------------------------------------------------------------

local function debug_level() return tonumber(os.getenv("DEBUG") or "0") or 0 end

local function describe(tok, id)
  local piece = tok:piece(id) or "?"
  return ("%d %q"):format(id, piece)
end

-- Greedy drafts: ge tokens, each the draft's argmax (the draft session
-- catches up on ctx first). Returns the list or nil, err.
function M.draft_greedy(draft, ctx, ge, sampler)
  local drafts = {}
  if ge < 1 then return drafts end
  local _, err = draft:prefill(ctx)
  if err then return nil, "draft: " .. err end
  local hist = sampler and { unpack(ctx) }
  for i = 1, ge do
    -- Penalties apply before the argmax, as plain greedy decoding does.
    if sampler then sampler:penalize(draft.logits, hist) end
    drafts[i] = argmax(draft.logits, draft.shard.n_vocab)
    if hist then hist[#hist + 1] = drafts[i] end
    if i < ge then
      local ok, ferr = draft:feed(drafts[i])
      if not ok then return nil, "draft: " .. ferr end
    end
  end
  return drafts
end

-- Emits a step's tokens in order: an end-of-generation token, a stop string
-- or max_tokens inside the block ends it there (nothing past them comes out).
-- ctx grows by what was emitted. Returns stop (the answer is over), finish.
function M.emit(emitted, ctx, sink, tok, max_tokens, lp_of, finish)
  for i, id in ipairs(emitted) do
    if tok:is_eog(id) then return true, "stop" end
    ctx[#ctx + 1] = id
    if sink:push(id, lp_of and lp_of(i, id)) then return true, "stop" end
    if #sink.tokens >= max_tokens then return false, finish end
  end
  return false, finish
end

-- DEBUG >= 1: one line a step on stderr: each draft with q(x), p(x), the
-- ratio, the uniform draw and the decision, the token resampled from the
-- residual, the bonus token (greedy: the draft against the target's choice).
function M.print_trace(tok, trace, greedy, step)
  local parts = {}
  for _, t in ipairs(trace) do
    if t.bonus then
      parts[#parts + 1] = "bonus " .. describe(tok, t.bonus)
    elseif greedy then
      parts[#parts + 1] = ("draft %s target %s %s"):format(describe(tok, t.token), describe(tok, t.target),
        t.accepted and "accept" or "reject")
    else
      parts[#parts + 1] = ("draft %s q=%.4f p=%.4f p/q=%.3f u=%.4f %s%s"):format(describe(tok, t.token), t.q, t.p,
        t.ratio, t.u, t.accepted and "accept" or "reject",
        t.resampled and (" -> residual " .. describe(tok, t.resampled)) or "")
    end
  end
  io.stderr:write(("spec: step %d: %s\n"):format(step, table.concat(parts, "; ")))
end

-- Scratch per session pair: dense rows for p and q, and the sampler buffers.
local function scratch(self, g, n_vocab)
  local s = self.spec_scratch
  if s and s.g >= g then return s end
  s = { g = g, p = {}, q = {}, lp = ffi.new("float[?]", n_vocab) }
  for i = 1, g + 1 do s.p[i] = ffi.new("float[?]", n_vocab) end
  for i = 1, g do s.q[i] = ffi.new("float[?]", n_vocab) end
  self.spec_scratch = s
  return s
end

-- The warped distribution of a sampler over logits (penalised for history), dense.
local function dense(sampler, logits, history, out)
  sampler:penalize(logits, history)
  local ok, err = sample_probs(logits, sampler.n_vocab, sampler.temperature, sampler.top_k, sampler.top_p,
    sampler.min_p, sampler.ids, sampler.probs, out)
  if not ok then error(err) end
  return out
end

-- Generates like generate.Session:generate, with draft (a session on the
-- draft model) proposing g tokens a step. The result also carries
-- speculative = { drafted, accepted, passes }. carry (optional) gets the
-- text sink as carry.sink, so that a caller whose target failed part way (a
-- ring node dying) knows the tokens the client already has and can go on.
function M.generate(target, draft, prompt_ids, params, on_text, should_stop, g, carry)
  params = params or {}
  local t0 = native.now()
  local tok = target.tokenizer
  local n_vocab = target.shard.n_vocab
  local L = #prompt_ids
  if L < 1 then return nil, "empty prompt" end
  if L >= target:n_ctx() then
    return nil, ("prompt of %d tokens does not fit the context of %d"):format(L, target:n_ctx())
  end
  local ctx = {}
  for i = 1, L do ctx[i] = prompt_ids[i] end
  local head = { unpack(ctx, 1, L - 1) }
  local computed = L - generate.common_prefix(target.cached, head)
  local ok, err = target:sync(head)
  if not ok then return nil, err end

  local sampler = sampling.new(n_vocab, params)
  local greedy = sampler:greedy()
  local rng = sampler.rng
  local max_tokens = params.max_tokens or math.huge
  local sink = generate.text_sink(tok, params, on_text)
  if carry then carry.sink = sink end
  local sc = scratch(target, g, n_vocab)
  local dbg = debug_level() >= 1
  local stats = { drafted = 0, accepted = 0, passes = 0 }
  local finish, ttft = "length", nil

  while #sink.tokens < max_tokens do
    if should_stop and should_stop() then
      finish = "cancelled"
      break
    end
    L = #ctx
    -- This step may emit up to ge + 1 tokens: never more than max_tokens
    -- allows, nor more positions than the cache has.
    if L >= target:n_ctx() then break end
    local ge = math.max(0, math.min(g, max_tokens - #sink.tokens - 1, target:n_ctx() - 1 - L))

    -- Draft ge tokens from q (the draft catches up on what it has not seen).
    local drafts = {}
    if greedy then
      local derr
      drafts, derr = M.draft_greedy(draft, ctx, ge, sampler)
      if not drafts then return nil, derr end
    elseif ge > 0 then
      local _, derr = draft:prefill(ctx)
      if derr then return nil, "draft: " .. derr end
      local hist = { unpack(ctx) }
      for i = 1, ge do
        local x, xerr = sample_draw(dense(sampler, draft.logits, hist, sc.q[i]), n_vocab, rng:uniform())
        if not x then return nil, "draft: " .. xerr end
        drafts[i] = x
        hist[#hist + 1] = x
        if i < ge then
          local fok, ferr = draft:feed(x)
          if not fok then return nil, "draft: " .. ferr end
        end
      end
    end

    -- One target pass over token L and the drafts: rows p_1..p_{ge+1}.
    local feed = { ctx[L] }
    for i = 1, ge do feed[i + 1] = drafts[i] end
    -- A target spread over a ring answers a greedy verify with its argmax per
    -- row (a few bytes instead of the rows).
    local rows, best, verr
    if greedy and target.extend_argmax then
      best, verr = target:extend_argmax(feed)
      if not best then return nil, verr end
    else
      rows, verr = target:extend(feed)
      if not rows then return nil, verr end
    end
    stats.passes = stats.passes + 1
    stats.drafted = stats.drafted + ge

    -- Log-probabilities are the target's own, before penalties and warps.
    local lps
    if params.logprobs then
      lps = {}
      for i = 1, ge + 1 do
        sample_log_softmax(rows + (i - 1) * n_vocab, n_vocab, sc.lp)
        lps[i] = { buf = ffi.new("float[?]", n_vocab) }
        ffi.copy(lps[i].buf, sc.lp, n_vocab * 4)
      end
    end

    local trace = dbg and {} or nil
    local emitted, n_acc
    if greedy then
      if not best then
        best = {}
        local hist = { unpack(ctx) }
        for i = 1, ge + 1 do
          local row = rows + (i - 1) * n_vocab
          sampler:penalize(row, hist)
          best[i] = argmax(row, n_vocab)
          hist[#hist + 1] = drafts[i]
        end
      end
      emitted, n_acc = M.accept_greedy(drafts, best, trace)
    else
      local hist = { unpack(ctx) }
      for i = 1, ge + 1 do
        dense(sampler, rows + (i - 1) * n_vocab, hist, sc.p[i])
        hist[#hist + 1] = drafts[i]
      end
      emitted, n_acc = M.accept(drafts, sc.q, sc.p, n_vocab, rng, trace)
    end
    stats.accepted = stats.accepted + n_acc
    if dbg then M.print_trace(tok, trace, greedy, stats.passes) end

    -- The target keeps token L and the accepted drafts.
    local tok_ok, terr = target:truncate(L + n_acc)
    if not tok_ok then return nil, terr end

    -- Emit in order; EOS, a stop string or max_tokens inside the block end it there.
    ttft = ttft or native.now() - t0
    local stop
    stop, finish = M.emit(emitted, ctx, sink, tok, max_tokens, lps and function(i, id)
      return generate.logprob_entry(tok, lps[i].buf, n_vocab, id, params.top_logprobs or 0)
    end, finish)
    if stop then break end
    if #ctx >= target:n_ctx() then break end -- the cache is full
  end
  local res = sink:result(sink:finish(finish), finish, #prompt_ids, computed, t0, ttft)
  res.speculative = stats
  return res
end

return M
