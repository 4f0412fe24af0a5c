-- generate.lua: from prompt tokens to streamed text on one model.
--
-- A session owns a KV-cache sequence and remembers which tokens the cache
-- holds, so a conversation reuses it: each turn renders the whole
-- conversation, keeps the longest common prefix with what the cache holds,
-- truncates the rest and feeds only the new tokens. A session may also start
-- from another's prefix (share_from: the same system prompt, held once). Generation stops at an
-- end-of-generation token, at a stop string (never emitted: text that might
-- be the start of one is held back until it cannot be), or at max_tokens.
--
-- A node whose KV pool runs full may preempt a running session (exo.node):
-- it takes the session's blocks, and the session's next forward fails with
-- `preempted` set. generate then waits for readmission (on_preempted, set by
-- the node) and recomputes the prompt and the tokens generated so far, whose
-- last logits are those the interrupted step would have given (the forward
-- pass is batch-invariant), and goes on: the sampler, its history and the
-- text sink are untouched, so the answer is the one it would have been.
--
-- The forward pass is pluggable: by default it blocks (exo run, bench); the
-- server passes a runner that submits to the engine thread and yields the
-- calling coroutine until the completion arrives. Loading goes through the
-- same runners (exo.model).
local ffi = require "ffi"
local native = require "exo.native"
local sampling = require "exo.sampling"
local json = require "exo.json"

local M = {}

local Session = {}
Session.__index = Session

-- The blocking runner: forward passes and loads on the calling thread (exo
-- run, bench, the REPL). exo.node's runner has the same methods and yields
-- the calling coroutine instead.
M.sync_runner = {
  forward = function(_, shard, seq, tokens, n, out, all_logits)
    return shard:forward(seq, tokens, n, all_logits, out)
  end,
  load_shard = function(_, path, opts) return native.load_shard(path, opts) end,
  load_tokenizer = function(_, path) return native.load_tokenizer(path) end,
}

-- model: { shard = exo.native shard, tokenizer = exo.tokenizer object }.
-- opts: n_ctx (cache size), runner.
function M.session(model, opts)
  opts = opts or {}
  local shard = model.shard
  local seq, err = shard:new_seq(opts.n_ctx or math.min(shard.n_ctx_train, 4096))
  if not seq then return nil, err end
  return setmetatable({
    model = model, shard = shard, tokenizer = model.tokenizer, seq = seq,
    cached = {},                      -- token ids whose keys/values the cache holds, in order
    logits = shard:output_buffer(1, false),
    runner = opts.runner or M.sync_runner,
    token_buf = ffi.new("int32_t[?]", seq:n_ctx()),  -- a prompt never exceeds the cache
  }, Session)
end

function Session:n_ctx() return self.seq:n_ctx() end

-- How many leading entries two token lists share.
function M.common_prefix(a, b)
  local n = 0
  while n < #a and n < #b and a[n + 1] == b[n + 1] do n = n + 1 end
  return n
end

-- How many leading ids the cache already holds.
function Session:common_prefix(ids) return M.common_prefix(self.cached, ids) end

-- The error of a forward on a preempted session (exo.batcher's).
M.PREEMPTED = require("exo.batcher").PREEMPTED

-- Keeps the first `common` cached positions and computes ids[common+1..] in
-- one pass (the logits of the last land in self.logits). Returns the count
-- computed, or nil, err.
function Session:recompute_from(ids, common)
  if self.preempted then return nil, M.PREEMPTED end
  local ok, err = self:truncate(common)
  if not ok then return nil, err end
  local todo = #ids - common
  if todo == 0 then return 0 end
  for i = 1, todo do self.token_buf[i - 1] = ids[common + i] end
  ok, err = self.runner:forward(self.shard, self.seq, self.token_buf, todo, self.logits)
  if not ok then
    -- A failed pass leaves the cache in an unknown state past `common`
    -- (a preempted session's holds nothing now).
    if not self.preempted then self.seq:truncate(common) end
    return nil, err
  end
  for i = common + 1, #ids do self.cached[i] = ids[i] end
  return todo
end

-- Makes the cache hold exactly `ids` and leaves the logits of the last one in
-- self.logits. Returns the number of tokens that had to be computed, or nil, err.
function Session:prefill(ids)
  local n = #ids
  if n == 0 then return nil, "empty prompt" end
  if n >= self:n_ctx() then
    return nil, ("prompt of %d tokens does not fit the context of %d"):format(n, self:n_ctx())
  end
  -- The last prompt token is always run again: its logits start the answer.
  return self:recompute_from(ids, math.min(self:common_prefix(ids), n - 1))
end

-- Makes the cache hold exactly ids (which may be empty), computing only what
-- it lacks.
function Session:sync(ids)
  local done, err = self:recompute_from(ids, self:common_prefix(ids))
  if not done then return nil, err end
  return true
end

-- Feeds one generated token; its logits land in self.logits.
function Session:feed(id)
  if self.preempted then return nil, M.PREEMPTED end
  self.token_buf[0] = id
  local ok, err = self.runner:forward(self.shard, self.seq, self.token_buf, 1, self.logits)
  if not ok then return nil, err end
  self.cached[#self.cached + 1] = id
  return true
end

-- Empties this session and starts its cache as the first n positions of
-- other's (a session of the same model, idle or running), computing nothing:
-- the two hold the prefix's full KV blocks together, and only a partial last
-- block is copied (exo_seq_share_prefix). Returns true or nil, err.
function Session:share_from(other, n)
  if n > #other.cached then
    return nil, ("cannot share %d positions of a session holding %d"):format(n, #other.cached)
  end
  local ok, err = self:truncate(0)
  if not ok then return nil, err end
  ok, err = self.seq:share_prefix(other.seq, n)
  if not ok then return nil, err end
  for i = 1, n do self.cached[i] = other.cached[i] end
  return true
end

-- Gives every KV block back to the shard's pool (an idle, kept
-- conversation making room for others): the next turn recomputes its prompt.
function Session:evict() return self:truncate(0) end

-- Forgets cached positions from n on (speculative rollback).
function Session:truncate(n)
  local ok, err = self.seq:truncate(n)
  if not ok then return nil, err end
  for i = #self.cached, n + 1, -1 do self.cached[i] = nil end
  return true
end

-- Appends tokens (a Lua list) and returns the logits of every one of them
-- ([#tokens][n_vocab], owned by the session until the next call).
function Session:extend(tokens)
  local n = #tokens
  if not self.all_logits or self.all_logits_rows < n then
    self.all_logits = self.shard:output_buffer(n, true)
    self.all_logits_rows = n
  end
  for i = 1, n do self.token_buf[i - 1] = tokens[i] end
  if self.preempted then return nil, M.PREEMPTED end
  local before = #self.cached
  local ok, err = self.runner:forward(self.shard, self.seq, self.token_buf, n, self.all_logits, true)
  if not ok then
    if not self.preempted then self.seq:truncate(before) end
    return nil, err
  end
  for i = 1, n do self.cached[before + i] = tokens[i] end
  return self.all_logits
end

-- Longest suffix of s that is a proper prefix of some stop string: that much
-- text must wait, it may yet become a stop string.
local function held_back(s, stops)
  local hold = 0
  for _, stop in ipairs(stops) do
    for len = math.min(#stop - 1, #s), 1, -1 do
      if len > hold and s:sub(-len) == stop:sub(1, len) then
        hold = len
        break
      end
    end
  end
  return hold
end

-- ---- from sampled tokens to text ------------------------------------------------

-- A text sink turns sampled token ids into final text: streaming UTF-8-safe
-- decode, stop strings (never emitted: text that might be the start of one is
-- held back until it cannot be), and the logprob entries that travel with
-- each piece. The local loop below and the ring (where another node samples
-- and only token ids come back) share it.
local Sink = {}
Sink.__index = Sink

-- on_text(piece, logprobs): called with each piece of text as it becomes final
-- (and, when params.logprobs, the entries of the tokens it came from).
function M.text_sink(tokenizer, params, on_text)
  return setmetatable({
    stops = params.stop or {}, on_text = on_text, stream = tokenizer:stream(),
    pending = "", parts = {}, tokens = {}, logprobs = params.logprobs and {} or nil, lp_unsent = {},
    lp_starts = {}, -- where each unsent entry's token text starts in pending
  }, Sink)
end

function Sink:emit(s)
  if s == "" then return end
  self.parts[#self.parts + 1] = s
  local lps = nil
  if self.logprobs then
    lps, self.lp_unsent, self.lp_starts = self.lp_unsent, {}, {}
  end
  if self.on_text then self.on_text(s, lps) end
end

-- Takes one generated (not end-of-generation) token. Returns true when a stop
-- string ended the answer.
function Sink:push(id, lp_entry)
  if lp_entry and self.logprobs then
    self.logprobs[#self.logprobs + 1] = lp_entry
    self.lp_unsent[#self.lp_unsent + 1] = lp_entry
    self.lp_starts[#self.lp_unsent] = #self.pending
  end
  self.tokens[#self.tokens + 1] = id
  local pending = self.pending .. self.stream:push(id)
  -- A stop string anywhere in the unemitted text ends the answer before it.
  local cut
  for _, stop in ipairs(self.stops) do
    local at = pending:find(stop, 1, true)
    if at and (not cut or at < cut) then cut = at end
  end
  if cut then
    -- The tokens whose text starts at or after the stop string are not part
    -- of the answer, nor are their logprobs.
    if self.logprobs then
      while #self.lp_unsent > 0 and self.lp_starts[#self.lp_unsent] >= cut - 1 do
        self.lp_starts[#self.lp_unsent] = nil
        self.lp_unsent[#self.lp_unsent] = nil
        self.logprobs[#self.logprobs] = nil
      end
    end
    self:emit(pending:sub(1, cut - 1))
    self.pending = ""
    return true
  end
  local hold = held_back(pending, self.stops)
  self:emit(pending:sub(1, #pending - hold))
  self.pending = pending:sub(#pending - hold + 1)
  return false
end

-- Ends the answer and returns its text: what was held back for a stop string
-- that never came is emitted, unless a stop string ended it.
function Sink:finish(reason)
  if reason ~= "stop" then self:emit(self.pending .. self.stream:flush()) end
  self.pending = ""
  return table.concat(self.parts)
end

-- The answer as every generation path returns it, once finish() gave text.
function Sink:result(text, finish, n_prompt, computed, t0, ttft)
  local seconds = native.now() - t0
  return {
    text = text, tokens = self.tokens, finish_reason = finish, logprobs = self.logprobs,
    n_prompt = n_prompt, n_computed = computed, n_generated = #self.tokens,
    ttft = ttft or seconds, seconds = seconds,
  }
end

-- Generates an answer to prompt ids.
-- params: max_tokens, stop (list of strings), temperature, top_k, top_p,
--   min_p, seed, presence/frequency/repeat penalties, logprobs.
-- on_text(piece, logprobs): as for text_sink.
-- should_stop(): polled between tokens (a client that went away).
-- Returns { text, tokens, finish_reason = "stop" | "length" | "cancelled",
--   n_prompt, n_computed, n_generated, ttft, seconds } or nil, err.
function Session:generate(prompt_ids, params, on_text, should_stop)
  params = params or {}
  local t0 = native.now()
  local computed, err = self:prefill(prompt_ids)
  computed, err = self:resume_preempted(computed, err, prompt_ids)
  if not computed then return nil, err end
  local ttft
  local tok = self.tokenizer
  local sampler = sampling.new(self.shard.n_vocab, params)
  local max_tokens = params.max_tokens or math.huge
  local sink = M.text_sink(tok, params, on_text)
  local finish = "length"
  local history = {}
  for i = 1, #prompt_ids do history[i] = prompt_ids[i] end

  while #sink.tokens < max_tokens do
    if should_stop and should_stop() then
      finish = "cancelled"
      break
    end
    -- Log-probabilities are the model's own distribution, before penalties
    -- and sampling warps (as OpenAI reports them).
    local lp_buf = params.logprobs and self:logprob_buffer()
    if lp_buf then native.sample_log_softmax(self.logits, self.shard.n_vocab, lp_buf) end
    local id = sampler:sample(self.logits, history)
    if not ttft then ttft = native.now() - t0 end
    if tok:is_eog(id) then
      finish = "stop"
      break
    end
    history[#history + 1] = id
    local lp = lp_buf and M.logprob_entry(tok, lp_buf, self.shard.n_vocab, id, params.top_logprobs or 0)
    if sink:push(id, lp) then
      finish = "stop"
      break
    end
    if #sink.tokens >= max_tokens then break end
    if #self.cached >= self:n_ctx() - 1 then break end -- the cache is full
    local ok, ferr = self:feed(id)
    -- history is the prompt and every token so far, id included: recomputing it
    -- leaves id's logits, as the feed would have.
    if not ok then ok, ferr = self:resume_preempted(ok, ferr, history) end
    if not ok then return nil, ferr end
  end
  return sink:result(sink:finish(finish), finish, #prompt_ids, computed, t0, ttft)
end

function Session:logprob_buffer()
  if not self.logprob_buf then self.logprob_buf = ffi.new("float[?]", self.shard.n_vocab) end
  return self.logprob_buf
end

-- A token's text as valid UTF-8: a token may hold part of a character (its
-- exact bytes travel in `bytes`), and JSON text must not carry broken UTF-8.
local function valid_utf8(s)
  if not s:find("[\128-\255]") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
      or (c >= 0xF0 and c <= 0xF4) and 4 or 0
    local ok = len > 0 and i + len - 1 <= n
    for j = i + 1, ok and i + len - 1 or 0 do
      local b = s:byte(j)
      if b < 0x80 or b > 0xBF then ok = false end
    end
    if ok and len == 3 then
      local b = s:byte(i + 1)
      if (c == 0xE0 and b < 0xA0) or (c == 0xED and b > 0x9F) then ok = false end
    elseif ok and len == 4 then
      local b = s:byte(i + 1)
      if (c == 0xF0 and b < 0x90) or (c == 0xF4 and b > 0x8F) then ok = false end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = "\239\191\189" -- U+FFFD
      i = i + 1
    end
  end
  return table.concat(out)
end

-- OpenAI's logprobs entry for a chosen token: its text, log-probability, bytes,
-- and the top_n most likely alternatives, from lp (n_vocab log-probabilities).
function M.logprob_entry(tok, lp, n_vocab, id, top_n)
  local function entry(t)
    local piece = tok:piece(t) or ""
    local bytes = {}
    for i = 1, #piece do bytes[i] = piece:byte(i) end
    return { token = valid_utf8(piece), logprob = lp[t], bytes = bytes }
  end
  local e = entry(id)
  local top = {}
  if top_n > 0 then
    local best = {}
    for t = 0, n_vocab - 1 do
      local v = lp[t]
      if #best < top_n or v > lp[best[#best]] then
        local i = #best + 1
        while i > 1 and lp[best[i - 1]] < v do
          best[i] = best[i - 1]
          i = i - 1
        end
        best[i] = t
        if #best > top_n then best[#best] = nil end
      end
    end
    for i, t in ipairs(best) do top[i] = entry(t) end
  end
  e.top_logprobs = #top > 0 and top or json.empty_array
  if #e.bytes == 0 then e.bytes = json.empty_array end
  return e
end

-- After a forward that returned ok, err: while it failed because the node
-- preempted this session, waits for readmission (on_preempted(ids): true or
-- nil, err) and makes the cache hold ids again, the logits of the last in
-- self.logits. Returns what prefill does (or ok, err unchanged).
function Session:resume_preempted(ok, err, ids)
  while not ok and self.preempted and self.on_preempted do
    local back, berr = self.on_preempted(ids)
    if not back then return nil, berr end
    ok, err = self:prefill(ids)
  end
  return ok, err
end

function Session:free()
  if self.seq then self.seq:free() end
  self.seq = nil
  if self.draft then self.draft:free() end
  self.draft = nil
end

return M
