-- batcher.lua: continuous batching of one shard's forward passes on one node.
--
-- Requests run as coroutines; each asks for a forward pass of its own
-- sequence (a prompt, or one decode token) and waits. Rather than one engine
-- job per request, which the engine runs one after another, the batcher keeps
-- one pass in flight per shard and, each time the engine is free, gathers
-- every waiting request's rows into ONE multi-sequence pass
-- (exo_shard_forward_batch): every decode step waiting, then chunks of
-- waiting prompts, fewest rows left first, up to `chunk` rows (chunked
-- prefill), so a long prompt is spread over several passes and never stalls
-- the other streams for more than one chunk. Sequences join and leave
-- between passes. The engine is
-- batch-invariant, so each request's results are exactly those of running it
-- alone. Resuming the waiting coroutines happens with the batcher marked busy:
-- each one samples and asks for its next token before the next pass is
-- gathered, so that pass carries all of them.
--
-- A failed pass (all or nothing in C: no sequence moved) is retried with each
-- of its requests alone, so one bad request fails by itself. A request that
-- fails alone because the shard's KV pool has no free block (a running
-- sequence that cannot grow) first asks on_exhausted(seq) (set by the node:
-- it evicts an idle kept conversation, or preempts another running request)
-- and goes again while that frees blocks. A preempted request waiting here
-- is taken out (preempt) before the next pass is gathered, so no pass writes
-- into the blocks taken from it, and resumed with M.PREEMPTED.
local native = require "exo.native"

local M = {}

local Batcher = {}
Batcher.__index = Batcher

-- Prompt rows gathered into one pass at most (besides decode rows), and
-- the fewer while other sequences are decoding: a pass's time grows with its
-- prompt rows (attention over a long prompt most), and every stream waits
-- for it, so a long prompt then advances in smaller steps.
M.DEFAULT_CHUNK = 256
M.DEFAULT_CHUNK_WHILE_DECODING = 64

-- The error a preempted request's forward returns (its blocks went to another).
M.PREEMPTED = "preempted: the KV pool is full and another running request took this one's blocks"

-- shard: an exo.native Shard; runner: exo.node's runner (new_id, await,
-- and waiting[id] for completions). opts: chunk, chunk_decoding.
function M.new(shard, runner, opts)
  opts = opts or {}
  local cap = shard.max_batch
  return setmetatable({
    shard = shard, runner = runner, chunk = opts.chunk or M.DEFAULT_CHUNK,
    chunk_decoding = opts.chunk_decoding or math.min(opts.chunk or M.DEFAULT_CHUNK, M.DEFAULT_CHUNK_WHILE_DECODING),
    pending = {},           -- requests waiting for a pass, oldest first
    batch = native.new_batch(cap), cap = cap,
    members = {},           -- the requests in the pass in flight, with the rows each has in it
    preempted = {},         -- requests taken out of pending by preempt, resumed after the pass
    busy = false,           -- a pass is in flight, or its requests are being resumed
    width = shard.is_last and shard.n_vocab or shard.n_embd,
    passes = 0, rows = 0,   -- counters (docs/serving.md)
  }, Batcher)
end

-- Runs n rows of seq (input: int32_t* token ids for a first shard, else
-- float* hidden states) on the calling coroutine co, with the others waiting
-- then. Output: the logits of the last row (all_logits: of every row) or
-- every row's hidden state, in out. Returns out, or nil, err.
function Batcher:forward(co, seq, input, n, out, all_logits)
  local req = { co = co, seq = seq, input = input, n = n, out = out, done = 0,
    all = all_logits or not self.shard.is_last }
  self.pending[#self.pending + 1] = req
  if not self.busy then self:dispatch() end
  local ok, err = coroutine.yield()
  if not ok then return nil, err end
  return out
end

-- The rows req puts in this pass (from req.done on, at most budget) and what
-- it wants back; returns how many.
local function add(self, req, budget)
  local left = req.n - req.done
  local take = left < budget and left or budget
  local is_first, width = self.shard.is_first, self.width
  local input = is_first and req.input + req.done or req.input + req.done * self.shard.n_embd
  local n_logits, out
  if req.all then
    n_logits, out = take, req.out + req.done * width
  elseif req.done + take == req.n then
    n_logits, out = 1, req.out
  else
    n_logits, out = 0, nil
  end
  self.batch:add(req.seq, input, take, n_logits, out)
  req.take = take
  self.members[#self.members + 1] = req
  return take
end

-- Gathers the next pass from the waiting requests and submits it: decode
-- steps (one row) first, then prompt chunks while the chunk budget lasts. A request marked `alone` (its pass failed with others) goes
-- by itself.
function Batcher:dispatch()
  if #self.pending == 0 then
    self.busy = false
    return
  end
  self.busy = true
  self.batch:clear()
  self.members = {}
  local rest = {}
  local lone
  for i, req in ipairs(self.pending) do
    if req.alone then
      lone = i
      break
    end
  end
  if lone then
    add(self, table.remove(self.pending, lone), math.huge)
  else
    -- Decode steps first; prompts get what is left of one pass's rows.
    local decode = 0
    for _, req in ipairs(self.pending) do
      if req.n - req.done == 1 and #self.members < self.cap then
        add(self, req, 1)
        decode = decode + 1
        req.taken = true
      end
    end
    -- Then prompts, the fewest rows left first (ties: oldest first): a short
    -- prompt gets its first token in the next pass while a long one goes on
    -- with what remains of the budget.
    local prompts = {}
    for i, req in ipairs(self.pending) do
      if req.taken then
        req.taken = nil
      else
        req.order = i
        prompts[#prompts + 1] = req
      end
    end
    table.sort(prompts, function(x, y)
      local lx, ly = x.n - x.done, y.n - y.done
      if lx ~= ly then return lx < ly end
      return x.order < y.order
    end)
    local budget = math.min(decode > 0 and self.chunk_decoding or self.chunk, self.cap - decode)
    for _, req in ipairs(prompts) do
      if budget > 0 and #self.members < self.cap then
        budget = budget - add(self, req, budget)
      else
        rest[#rest + 1] = req
      end
    end
    table.sort(rest, function(x, y) return x.order < y.order end)
    self.pending = rest
  end
  local id = self.runner:new_id()
  local ok, err = self.shard:submit_batch(self.batch, id)
  if not ok then return self:finish(false, err) end
  self.runner.waiting[id] = self
  self.passes = self.passes + 1
end

-- The in-flight pass's completion (called by the runner's drain with the
-- pass's ok, err).
function Batcher:complete(ok, err) self:finish(ok, err) end

-- Ends the pass: requests with rows left wait for the next one (ahead of
-- newer ones), finished ones resume; then the next pass is gathered.
function Batcher:finish(ok, err)
  local members = self.members
  self.members = {}
  local resume, carry = {}, {}
  if not ok and #members == 1 and self.on_exhausted and tostring(err):match("KV pool exhausted")
    and self.on_exhausted(members[1].seq) then
    members[1].alone = true
    carry[1] = members[1]
  elseif not ok and #members > 1 then
    -- All or nothing: nobody moved. Each goes again by itself.
    for _, req in ipairs(members) do
      req.alone = true
      carry[#carry + 1] = req
    end
  else
    for _, req in ipairs(members) do
      if ok then
        req.done = req.done + req.take
        self.rows = self.rows + req.take
        if req.done < req.n then carry[#carry + 1] = req else resume[#resume + 1] = req end
      else
        resume[#resume + 1] = req
      end
    end
  end
  for i = #carry, 1, -1 do table.insert(self.pending, 1, carry[i]) end
  -- Busy while resuming: each coroutine asks for its next step, which only
  -- queues, and the pass below takes them all.
  self.busy = true
  for _, req in ipairs(resume) do
    local co_ok, co_err = coroutine.resume(req.co, ok, err)
    if not co_ok then io.stderr:write("exo: request failed: " .. tostring(co_err) .. "\n") end
  end
  self:dispatch()
  -- After the dispatch: the preempted go back to their node's queue, never into this pass.
  local preempted = self.preempted
  if #preempted > 0 then
    self.preempted = {}
    local was_busy = self.busy
    self.busy = true
    for _, req in ipairs(preempted) do
      local co_ok, co_err = coroutine.resume(req.co, false, M.PREEMPTED)
      if not co_ok then io.stderr:write("exo: request failed: " .. tostring(co_err) .. "\n") end
    end
    self.busy = was_busy
    if not was_busy then self:dispatch() end
  end
end

-- Takes seq's waiting request (if any) out of the next passes: its blocks
-- are about to go to another request. Called between passes (from
-- on_exhausted, while the failed pass's finish runs), so no pass in flight
-- holds it; finish resumes it with M.PREEMPTED once the next pass is out.
-- Whether seq had a request waiting.
function Batcher:preempt(seq)
  for i, req in ipairs(self.pending) do
    if req.seq == seq then
      table.remove(self.pending, i)
      self.preempted[#self.preempted + 1] = req
      return true
    end
  end
  return false
end

-- Requests waiting or in the pass: the node's view of how busy the engine is.
function Batcher:load() return #self.pending + #self.members end

return M
