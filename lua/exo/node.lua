-- node.lua: orchestration on one node: models, sessions and requests.
--
-- Requests run as coroutines on the loop thread. A forward pass is submitted
-- to the engine thread and the coroutine yields until the engine's completion
-- comes back through its eventfd (watched by a luv poll handle), so the loop
-- keeps serving sockets while tokens are computed, and concurrent requests
-- interleave step by step. Each model keeps a small pool of sessions (KV
-- caches): a request takes the idle session sharing the longest prefix with
-- its prompt, so a conversation's next turn recomputes only the new tokens;
-- when another session, running or idle, holds a longer prefix (the same
-- system prompt), the request's session starts from it instead, sharing its
-- KV blocks; when every session is busy, requests wait in a FIFO queue.
-- When the KV pool runs full under a running request and no idle
-- conversation is left to evict, another running request is preempted: its
-- blocks are taken, it waits at the head of the queue, and once readmitted
-- recomputes its prompt and answer so far and goes on (docs/serving.md).
--
-- Loading never blocks the loop: a model's tokenizer and weights load on the
-- engine thread while the request's coroutine waits (Runner:load_shard), and
-- requests that need the same model at once share one load (Runner:once).
-- A model is loaded text side first (tokenizer and template); when the plan
-- gives every layer to this node the request runs here as above (the whole
-- shard loaded then), otherwise it goes around the ring (exo.ring), whose
-- nodes load their ranges the same way.
local uv = require "luv"
local native = require "exo.native"
local models = require "exo.models"
local generate = require "exo.generate"
local prompt = require "exo.prompt"
local tools = require "exo.tools"
local batcher = require "exo.batcher"

local M = {}

local Node = {}
Node.__index = Node

-- ---- the engine runner -------------------------------------------------------------

local Runner = {}
Runner.__index = Runner

-- Runs fn on the next loop turn, not inside the coroutine that asks.
local function defer(fn)
  local t = uv.new_timer()
  t:start(0, 0, function()
    t:close()
    fn()
  end)
end

local function pack(...) return { n = select("#", ...), ... } end

local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then io.stderr:write("exo: request failed: " .. tostring(err) .. "\n") end
end

local function new_runner(opts)
  local r = setmetatable({ waiting = {}, joining = {}, next_id = 1, chunk = opts and opts.chunk,
    batchers = setmetatable({}, { __mode = "k" }) }, Runner)
  -- One function for every completion: the per-token path makes no closure.
  -- A pass of a shard's batcher completes to the batcher, a load to its coroutine.
  local function on_completion(id, ok, err, loaded)
    local w = r.waiting[id]
    r.waiting[id] = nil
    if type(w) == "table" then w:complete(ok, err)
    elseif w then resume(w, ok, err, loaded) end
  end
  r.poll = uv.new_poll(native.engine_fd())
  r.poll:start("r", function() native.engine_drain(on_completion) end)
  return r
end

-- Waits (yields co) for job id's completion: ok, err, and what a load loaded.
function Runner:await(co, id)
  self.waiting[id] = co
  return coroutine.yield()
end

function Runner:new_id()
  local id = self.next_id
  self.next_id = id + 1
  return id
end

local function running()
  local co = coroutine.running()
  assert(co, "the engine runner must be called from a coroutine")
  return co
end

-- The shard's batcher (one per shard: its passes carry every request's rows).
function Runner:batcher(shard)
  local b = self.batchers[shard]
  if not b then
    b = batcher.new(shard, self, { chunk = self.chunk })
    self.batchers[shard] = b
  end
  return b
end

-- Runs on a request's coroutine: its rows join the shard's next batched
-- pass; returns out (the logits or hidden states) or nil, err.
function Runner:forward(shard, seq, tokens, n, out, all_logits)
  return self:batcher(shard):forward(running(), seq, tokens, n, out, all_logits)
end

-- A load on the engine thread (submit(path, opts, job_id) queues it) while
-- the calling coroutine waits: the loop goes on serving meanwhile.
local function load(self, submit, path, opts)
  local co = running()
  local id = self:new_id()
  local ok, err = submit(path, opts, id)
  if not ok then return nil, err end
  local done, lerr, loaded = self:await(co, id)
  if not done then return nil, lerr end
  return loaded
end

local function submit_load_tokenizer(path, _, id) return native.submit_load_tokenizer(path, id) end

-- native.load_shard's arguments; returns the Shard or nil, err.
function Runner:load_shard(path, opts) return load(self, native.submit_load_shard, path, opts) end

-- Returns the tokenizer of the GGUF file at path, or nil, err.
function Runner:load_tokenizer(path) return load(self, submit_load_tokenizer, path) end

-- Runs fn(...) on the calling coroutine, unless a call under the same key is
-- running already: then waits for that one and returns what it returned. So a
-- request for a model another request is loading waits for that load rather
-- than starting a second. An error fn raises reaches its own caller; the
-- waiters get nil and the message.
function Runner:once(key, fn, ...)
  local waiters = self.joining[key]
  if waiters then
    waiters[#waiters + 1] = running()
    return coroutine.yield()
  end
  waiters = {}
  self.joining[key] = waiters
  local res = pack(pcall(fn, ...)) -- res[1]: whether fn returned
  self.joining[key] = nil
  if #waiters > 0 then
    defer(function()
      for _, co in ipairs(waiters) do
        if res[1] then resume(co, unpack(res, 2, res.n)) else resume(co, nil, tostring(res[2])) end
      end
    end)
  end
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

function Runner:close()
  if self.poll then
    self.poll:stop()
    self.poll:close()
    self.poll = nil
  end
end

-- ---- models and sessions --------------------------------------------------------

-- opts: max_sessions (per model: how many sequences decode at once, --parallel),
-- max_queue (requests waiting for a session beyond which a request gets a
-- 503), chunk (prompt rows per batched pass), n_ctx, chat_template (function or text),
-- speculative ({ draft = spec, g = N }: every request on this node drafts
-- with it unless it says "speculative": false; "draft_tokens" overrides g).
-- A served model's state: its sessions and queue. running maps the sessions
-- of requests in progress (a new request may share their prefix) to their
-- admission number (preemption takes the latest first); requeued counts
-- preempted requests not yet readmitted, preempted_out holds those of them
-- not in the queue.
function M.new_entry(model)
  return { model = model, idle = {}, busy = 0, running = {}, queue = {}, admitted = 0, requeued = 0,
    preempted_out = {}, preemptions = 0 }
end

function M.new(opts)
  opts = opts or {}
  local self = setmetatable({
    opts = opts,
    loaded = {},          -- real path -> { model, idle = {sessions}, busy = n, queue = {co...} }
    runner = new_runner(opts),
    max_sessions = opts.max_sessions or 2,
    max_queue = opts.max_queue or 64,
    n_ctx = opts.n_ctx or 2048,
    kv_tokens = opts.kv_tokens,  -- the KV pool per model (--kv-tokens); nil: --parallel x --ctx
  }, Node)
  return self
end

-- The model for id, loading its text side (metadata, tokenizer, template) on
-- first use; its weights come with the first request that runs here. Runs on
-- a request's coroutine, which waits while the engine thread loads; a request
-- for a model that is loading waits for that load. Returns entry or nil, err,
-- status.
-- Models are keyed by their file's real path: every spelling of one file
-- (an id, ./ or .. in a path, a symlink) shares one loaded copy.
function Node:model(id)
  local path, err = models.resolve(id)
  -- In a cluster, a catalogue model this node lacks is fetched (peers first,
  -- then the hub) while the request waits, as each ring member does for its part.
  if not path and self.ring and require("exo.share").available() then
    path, err = require("exo.download").ensure(id)
  end
  if not path then
    local status = (err:match("^unknown model") or err:match("not found")) and 404 or 503
    return nil, err, status
  end
  local entry = self.loaded[path]
  if entry then return entry end
  return self.runner:once("model " .. path, self.load_model, self, id, path)
end

function Node:load_model(id, path)
  local model, lerr = require("exo.model").load(id, { chat_template = self.opts.chat_template, text_only = true,
    runner = self.runner, path = path })
  if not model then return nil, lerr, 500 end
  local entry = M.new_entry(model)
  self.loaded[path] = entry
  return entry
end

-- The whole model's shard for entry, loaded on the engine thread once
-- however many requests ask at the same time. Returns true or nil, err.
function Node:load_weights(entry)
  local model = entry.model
  if model.shard then return true end
  return self.runner:once("weights " .. model.path, function()
    local t0 = native.now()
    local ok, err = require("exo.model").load_shard(model, nil, nil, self.runner)
    if ok then
      ok, err = self:check_kv(model)
      if ok then ok, err = model.shard:set_kv_tokens(self:kv_budget(model.shard)) end
      if ok then
        -- A running sequence that finds the pool full evicts an idle kept conversation first,
        -- else preempts another running request.
        self.runner:batcher(model.shard).on_exhausted = function(seq)
          return self:evict_idle(entry) or self:preempt(entry, seq)
        end
      end
      if not ok then
        model.shard:free()
        model.shard = nil
        return nil, err
      end
    end
    if ok then
      io.stderr:write(("exo: %s: loaded %d layers in %.2f s\n"):format(model.id, model.shard.n_layer,
        native.now() - t0))
    end
    return ok, err
  end)
end

-- Bytes of memory the kernel reports available, or nil.
local function mem_available()
  local f = io.open("/proc/meminfo", "r")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local kb = tonumber(text:match("MemAvailable:%s+(%d+)"))
  return kb and kb * 1024
end

-- Positions of a model's KV pool (docs/serving.md): --kv-tokens, or by
-- default room for --parallel sequences of --ctx positions each (whole
-- blocks), so that nothing waits for KV memory unless the operator asks for
-- a smaller pool.
function Node:kv_budget(shard)
  if self.kv_tokens then return self.kv_tokens end
  local block = shard:kv_info().block_len
  return self.max_sessions * math.ceil(self.n_ctx / block) * block
end

-- The sessions of a model share its KV pool (f16 keys and values for each
-- layer, kv_budget() positions): refuse, with the numbers, a pool that would
-- not fit in memory now, rather than run into the out-of-memory killer later.
function Node:check_kv(model)
  local sh = model.shard
  local per_token = 2 * 2 * (sh.layer_end - sh.layer_start) * sh.n_head_kv * sh.head_dim
  local need, avail = per_token * self:kv_budget(sh), mem_available()
  if avail and need > avail then
    local what = self.kv_tokens and ("--kv-tokens %d"):format(self.kv_tokens)
      or ("--parallel %d x --ctx %d"):format(self.max_sessions, self.n_ctx)
    return nil, ("%s needs %.2f GiB of KV cache for %s, and %.2f GiB of memory is available: "
      .. "lower %s"):format(what, need / 2 ^ 30, model.id, avail / 2 ^ 30,
        self.kv_tokens and "--kv-tokens" or "--parallel or --ctx")
  end
  return true
end

-- Gives the KV blocks of the least recently used idle conversation of entry
-- back to the pool; whether there was one holding any. One whose blocks all
-- have other holders would free nothing: those go last (evicting one leaves
-- the other holders alone with the blocks, so repeated calls still free them).
function Node:evict_idle(entry)
  local frees_nothing
  for _, s in ipairs(entry.idle) do
    if s.seq:pos() > 0 then
      if assert(s.seq:kv_need(0, 0)) < 0 then return s:evict() end
      frees_nothing = frees_nothing or s
    end
  end
  if frees_nothing then return frees_nothing:evict() end
  return false
end

-- Makes room in entry's full KV pool for the running request of seq, which
-- cannot grow and finds no idle conversation to evict: preempts another
-- running request, the most recently admitted first (as vLLM does), among
-- those that would really give a block back (blocks shared with others free
-- nothing) and can resume (plain generations: on_preempted set). Its blocks
-- go back to the pool at once; its request, waiting for a pass in the
-- batcher, is taken out of the passes (none is in flight now: this runs
-- between them), and generate sees `preempted`, waits in readmit and
-- recomputes. A request alone keeps the pool-exhausted error. Returns
-- whether one was preempted.
function Node:preempt(entry, seq)
  local victim
  for s, order in pairs(entry.running) do
    if s.seq ~= seq and s.on_preempted and (not victim or order > entry.running[victim])
      and assert(s.seq:kv_need(0, 0)) < 0 then
      victim = s
    end
  end
  if not victim then return false end
  local held = #victim.cached
  victim.preempted = true
  self.runner:batcher(entry.model.shard):preempt(victim.seq)
  assert(victim:truncate(0)) -- to 0 never copies a shared block, so never needs one
  entry.busy = entry.busy - 1
  entry.running[victim] = nil
  entry.requeued = entry.requeued + 1
  entry.preempted_out[victim] = true
  entry.preemptions = entry.preemptions + 1
  io.stderr:write(("exo: %s: KV pool full: preempted a running request holding %d positions; it resumes when "
    .. "blocks come back (%d preemptions so far)\n"):format(entry.model.id or "model", held, entry.preemptions))
  return true
end

-- KV blocks the pool of entry's model lacks for session to hold ids, when it
-- keeps its first `keep` positions, or, with from, when it is emptied and
-- starts from from's first `keep` (whose full blocks it shares, costing
-- none). Only blocks really taken or given back count: blocks the session
-- shares with others free nothing when it lets go of them.
local function kv_shortfall(entry, session, ids, keep, from)
  local info = entry.model.shard:kv_info()
  local need
  if from then
    need = assert(session.seq:kv_need(0, 0)) + math.ceil(#ids / info.block_len) - math.floor(keep / info.block_len)
  else
    need = assert(session.seq:kv_need(keep, #ids))
  end
  return need - info.free, info
end

-- How session, keeping its first `keep` positions, would hold ids: when a
-- running session holds more of them, session starts from that one's prefix
-- instead (keep, from). Idle conversations are evicted while the pool lacks
-- blocks for it. Returns the blocks still lacking (<= 0: it fits), the
-- pool's kv_info, keep and from.
function Node:fit(entry, session, ids, keep)
  local from
  for s in pairs(entry.running) do
    local len = math.min(generate.common_prefix(s.cached, ids), #ids - 1)
    if len > keep then keep, from = len, s end
  end
  local short, info = kv_shortfall(entry, session, ids, keep, from)
  while short > 0 and self:evict_idle(entry) do short, info = kv_shortfall(entry, session, ids, keep, from) end
  return short, info, keep, from
end

-- The draft model of --draft for entry (loaded once, as the weights are).
function Node:draft_model(entry)
  if entry.draft then return entry.draft end
  local draft, err = self.runner:once("draft " .. entry.model.path, require("exo.speculative").load_draft,
    self.opts.speculative.draft, entry.model, self.runner)
  if not draft then return nil, "draft model: " .. err end
  entry.draft = draft
  return draft
end

-- A session for prompt ids, waiting (yielding) while all are busy or the
-- model's KV pool lacks the blocks for the prompt (idle conversations' blocks
-- are taken back first, least recently used first); nil, err, status when
-- max_queue requests wait already (503) or the prompt can never fit the pool
-- (400).
function Node:acquire(entry, ids)
  local function busy(why)
    return nil, ("server busy: %d requests running and %d waiting%s (--parallel %d, --max-queue %d); retry later")
      :format(entry.busy, #entry.queue, why, self.max_sessions, self.max_queue), 503
  end
  if #entry.idle == 0 and entry.busy >= self.max_sessions and #entry.queue >= self.max_queue then return busy("") end
  while true do
    -- Preempted requests waiting for readmission go first (they wait at the queue's head).
    while (#entry.idle == 0 and entry.busy >= self.max_sessions) or entry.requeued > 0 do
      if #entry.queue >= self.max_queue + entry.requeued then
        return busy(", a preempted request waiting for KV blocks")
      end
      entry.queue[#entry.queue + 1] = coroutine.running()
      coroutine.yield()
    end
    local best, best_len = nil, -1
    for i, s in ipairs(entry.idle) do
      local len = generate.common_prefix(s.cached, ids)
      if len > best_len then best, best_len = i, len end
    end
    local session
    if best then
      session = table.remove(entry.idle, best)
    else
      local err
      session, err = generate.session(entry.model, { n_ctx = self.n_ctx, runner = self.runner })
      if not session then return nil, err, 503 end
    end
    -- What prefill will keep (its last prompt token is always run again).
    local short, info, keep, from = self:fit(entry, session, ids, math.min(math.max(best_len, 0), #ids - 1))
    if short <= 0 then
      -- Should the share fail after all, the session is empty and prefill computes the whole prompt.
      if from then session:share_from(from, keep) end
      entry.busy = entry.busy + 1
      entry.admitted = entry.admitted + 1
      session.admitted = entry.admitted
      entry.running[session] = entry.admitted
      return session
    end
    -- The running requests hold the blocks it lacks: wait for one to end.
    table.insert(entry.idle, 1, session)
    if math.ceil(#ids / info.block_len) > info.blocks then
      return nil, ("the prompt of %d tokens does not fit the KV pool of %d positions (--kv-tokens)")
        :format(#ids, info.blocks * info.block_len), 400
    end
    if entry.busy == 0 then return busy(", KV pool exhausted") end
    if #entry.queue >= self.max_queue then return busy(", KV pool exhausted") end
    entry.queue[#entry.queue + 1] = coroutine.running()
    coroutine.yield()
  end
end

-- A preempted session comes back (generate's on_preempted): it waits at the
-- head of the queue, ahead of new requests, until a request ends (its blocks
-- were just taken for another: coming back at once would take them again),
-- then is admitted as acquire admits, keeping its first admission's place
-- among the running: a slot, the blocks for ids (its prompt and answer so
-- far), idle conversations evicted first, a running session's prefix shared.
-- Returns true, or nil, err when even a pool with nothing running cannot hold it.
function Node:readmit(entry, session, ids)
  while true do
    if session.wake then
      session.wake = nil
    else
      entry.preempted_out[session] = nil
      table.insert(entry.queue, 1, coroutine.running())
      coroutine.yield()
    end
    if entry.busy < self.max_sessions then
      local short, info, keep, from = self:fit(entry, session, ids, 0)
      local fits = short <= 0
      if fits or entry.busy == 0 then
        entry.requeued = entry.requeued - 1
        entry.preempted_out[session] = nil
        if not fits then
          return nil, ("KV pool exhausted: a preempted request of %d positions does not fit the %d blocks "
            .. "(%d positions) left to it"):format(#ids, info.free, info.free * info.block_len)
        end
        if from then session:share_from(from, keep) end
        session.preempted = nil
        entry.busy = entry.busy + 1
        entry.running[session] = session.admitted
        return true
      end
    end
  end
end

function Node:release(entry, session, keep)
  -- A preempted session that could not come back holds no slot.
  if not session.preempted then
    entry.busy = entry.busy - 1
    entry.running[session] = nil
  end
  session.preempted, session.on_preempted = nil, nil
  -- A preempted request not yet back in the queue retries when it gets there.
  for s in pairs(entry.preempted_out) do s.wake = true end
  if keep then
    entry.idle[#entry.idle + 1] = session
  else
    session:free()
  end
  local waiter = table.remove(entry.queue, 1)
  if waiter then defer(function() resume(waiter) end) end
end

-- Runs one generation on the calling coroutine.
-- req: model, messages (chat) or prompt (completion), sampling params.
-- on_text(piece), should_stop() as in generate.
-- Returns result, or nil, err, status.
-- The prompt options a chat request carries (prompt.build's).
local function prompt_opts(entry, req)
  return { template = entry.model.chat_template, family = entry.model.chat_family,
    add_generation_prompt = req.add_generation_prompt, continue_final_message = req.continue_final_message,
    vars = req.tools and { tools = req.tools } or nil }
end

-- Tool calls and JSON mode around a generation: the template must teach a call format
-- (tools.lua); a streaming answer shows no call's text; the answer is parsed for calls.
-- Returns the on_text to generate with and a function that finishes the result, or nil,
-- nil, err.
local function tool_wrapper(entry, req, on_text)
  if not req.tools then return on_text, function(res) return res end end
  local format = tools.format_of(entry.model.chat_template)
  if not format then
    return nil, nil, ("the chat template of %s does not support tools"):format(tostring(req.model))
  end
  local holder = tools.holder(format, function(text) if on_text then on_text(text) end end)
  return function(piece) holder:push(piece) end, function(res)
    local content, calls = holder:finish()
    if #calls > 0 then
      res.text, res.tool_calls = content or "", calls
      if res.finish_reason == "stop" then res.finish_reason = "tool_calls" end
    end
    return res
  end
end

function Node:generate(req, on_text, should_stop)
  local entry, err, status = self:model(req.model)
  if not entry then return nil, err, status end
  local tok = entry.model.tokenizer
  local finish_tools, terr
  on_text, finish_tools, terr = tool_wrapper(entry, req, on_text)
  if terr then return nil, terr, 400 end
  local ids, perr, warning
  if req.messages then
    ids, perr, warning = prompt.build(tok, req.messages, prompt_opts(entry, req))
    -- Once per model: a file without a usable template gets its family's format.
    if warning and not entry.template_warned then
      entry.template_warned = true
      io.stderr:write(("exo: %s: %s\n"):format(req.model or "model", warning))
    end
  else
    -- A raw prompt's control tokens are parsed, as llama.cpp's completion route does:
    -- a client that writes "<|im_start|>" means the token (docs/api.md).
    ids = tok:encode(req.prompt, { add_bos = tok.add_bos, special = true })
  end
  if not ids then return nil, perr, 400 end
  if #ids >= self.n_ctx then
    return nil, ("the prompt is %d tokens; this node's context is %d"):format(#ids, self.n_ctx), 400
  end
  if self.ring then
    local peers = self.ring.cluster:peer_count()
    if self.wait_for_peers and peers < self.wait_for_peers then
      return nil, ("waiting for peers: %d of %d connected"):format(peers, self.wait_for_peers), 503
    end
    local plan, plan_err = self.ring:plan(entry.model)
    if not plan then return nil, plan_err, 500 end
    if #plan > 1 or plan[1].node_id ~= self.ring.cluster.id then
      if req.json_object then
        return nil, "response_format json_object is not available yet when the model is split across nodes", 400
      end
      self:unload_local(entry)
      local spec = self.opts.speculative
      local draft
      if spec and req.speculative ~= false and require("exo.ring").can_speculate(req) then
        local derr
        draft, derr = self:draft_session(entry)
        if not draft then return nil, derr, 500 end
      end
      local g = req.draft_tokens or (spec and spec.g)
      local res, rerr = self.ring:generate(entry.model, ids, req, plan, on_text, should_stop, draft, g)
      if draft then table.insert(entry.draft_idle, draft) end
      if not res then return nil, rerr, 503 end
      return finish_tools(res)
    end
  end
  local ok, serr = self:load_weights(entry)
  if not ok then return nil, serr, 500 end
  local spec = self.opts.speculative
  if req.json_object then
    -- Sampling under the JSON grammar (json_grammar.c); a draft's tokens would not be.
    local grammar, gerr = native.json_grammar(tok, req.json_schema)
    if not grammar then return nil, "response_format: " .. gerr, 400 end
    req.grammar, spec = grammar, nil
  end
  if spec then
    local draft, derr = self:draft_model(entry)
    if not draft then return nil, derr, 500 end
  end
  local session, serr, sstatus = self:acquire(entry, ids)
  if not session then return nil, serr, sstatus end
  local res, gerr
  if spec and req.speculative ~= false then
    if not session.draft then
      session.draft, gerr = generate.session(entry.draft, { n_ctx = self.n_ctx, runner = self.runner })
    end
    if session.draft then
      res, gerr = require("exo.speculative").generate(session, session.draft, ids, req, on_text, should_stop,
        req.draft_tokens or spec.g)
    end
  else
    -- Only a plain generation can be preempted: it knows how to come back.
    session.on_preempted = function(all_ids) return self:readmit(entry, session, all_ids) end
    res, gerr = session:generate(ids, req, on_text, should_stop)
  end
  self:release(entry, session, res ~= nil)
  -- A running sequence that could not grow (the pool full of other running ones) fails alone.
  if not res then return nil, gerr, tostring(gerr):match("KV pool exhausted") and 503 or 500 end
  return finish_tools(res)
end

-- What /v1/topology shows of each model served here: its sessions, queue,
-- KV pool (exo_kv_info) and how many running requests were preempted.
function Node:serving_stats()
  local out = {}
  for _, entry in pairs(self.loaded) do
    local shard = entry.model.shard
    out[#out + 1] = { model = entry.model.id, running = entry.busy, idle = #entry.idle, waiting = #entry.queue,
      preemptions = entry.preemptions, kv = shard and shard:kv_info() or nil }
  end
  table.sort(out, function(a, b) return a.model < b.model end)
  return out
end

-- A draft session for ring requests (the draft runs on the asking node),
-- reused across requests so its cache keeps the conversation's prefix.
function Node:draft_session(entry)
  entry.draft_idle = entry.draft_idle or {}
  local s = table.remove(entry.draft_idle)
  if s then return s end
  local draft, err = self:draft_model(entry)
  if not draft then return nil, err end
  return generate.session(draft, { n_ctx = self.n_ctx, runner = self.runner })
end

-- Serves models through the ring from now on. opts: wait_for_peers.
function Node:attach_ring(ring, opts)
  self.ring = ring
  self.wait_for_peers = opts and opts.wait_for_peers
end

-- The ring serves this model now: the whole-model shard and its sessions go
-- (when idle), so memory holds only what the plan gives this node.
function Node:unload_local(entry)
  if not entry.model.shard or entry.busy > 0 then return end
  for _, s in ipairs(entry.idle) do s:free() end
  entry.idle = {}
  entry.model.shard:free()
  entry.model.shard = nil
end

-- The token ids a chat request's messages render to (for /v1/chat/token/encode).
function Node:encode_chat(req)
  local entry, err, status = self:model(req.model)
  if not entry then return nil, err, status end
  local ids, rendered = prompt.build(entry.model.tokenizer, req.messages, prompt_opts(entry, req))
  if not ids then return nil, rendered, 400 end
  return ids, rendered
end

function Node:close()
  self.runner:close()
  for _, entry in pairs(self.loaded) do
    for _, s in ipairs(entry.idle) do s:free() end
  end
end

return M
