-- node.lua: orchestration on one node: models, sessions and requests.
--
-- Requests run as coroutines on the loop thread. A forward pass is submitted
-- to the engine thread and the coroutine yields until the engine's completion
-- comes back through its eventfd (watched by a luv poll handle), so the loop
-- keeps serving sockets while tokens are computed, and concurrent requests
-- interleave step by step. Each model keeps a small pool of sessions (KV
-- caches): a request takes the idle session sharing the longest prefix with
-- its prompt, so a conversation's next turn recomputes only the new tokens;
-- when every session is busy, requests wait in a FIFO queue.
--
-- In a cluster (attach_ring) a model is loaded text side only (tokenizer and
-- template); when the plan gives every layer to this node the request runs
-- here as above (the shard loaded then), otherwise it goes around the ring
-- (exo.ring).
local uv = require "luv"
local native = require "exo.native"
local models = require "exo.models"
local generate = require "exo.generate"
local prompt = require "exo.prompt"

local M = {}

local Node = {}
Node.__index = Node

-- ---- the engine runner -------------------------------------------------------------

local Runner = {}
Runner.__index = Runner

local function new_runner()
  local r = setmetatable({ waiting = {}, next_id = 1 }, Runner)
  r.poll = uv.new_poll(native.engine_fd())
  r.poll:start("r", function()
    native.engine_drain(function(id, ok, err)
      local co = r.waiting[id]
      r.waiting[id] = nil
      if co then
        local resumed, perr = coroutine.resume(co, ok, err)
        if not resumed then io.stderr:write("exo: request failed: " .. tostring(perr) .. "\n") end
      end
    end)
  end)
  return r
end

-- Runs on a request's coroutine: submit, yield, return what the engine said.
function Runner:forward(shard, seq, tokens, n, out, all_logits)
  local co = coroutine.running()
  assert(co, "the engine runner must be called from a coroutine")
  local id = self.next_id
  self.next_id = id + 1
  local ok, err = shard:submit(seq, tokens, nil, n, all_logits, out, id)
  if not ok then return nil, err end
  self.waiting[id] = co
  local done, ferr = coroutine.yield()
  if not done then return nil, ferr end
  return out
end

function Runner:close()
  if self.poll then
    self.poll:stop()
    self.poll:close()
    self.poll = nil
  end
end

-- ---- models and sessions --------------------------------------------------------

-- opts: max_sessions (per model), n_ctx, chat_template (function or text),
-- speculative ({ draft = spec, g = N }: every request on this node drafts
-- with it unless it says "speculative": false; "draft_tokens" overrides g).
function M.new(opts)
  opts = opts or {}
  local self = setmetatable({
    opts = opts,
    loaded = {},          -- model id -> { model, idle = {sessions}, busy = n, queue = {co...} }
    runner = new_runner(),
    max_sessions = opts.max_sessions or 2,
    n_ctx = opts.n_ctx or 2048,
  }, Node)
  return self
end

-- The model for id, loading it on first use. Returns entry or nil, err, status.
function Node:model(id)
  local entry = self.loaded[id]
  if entry then return entry end
  local path, err = models.resolve(id)
  if not path then
    local status = (err:match("^unknown model") or err:match("not found")) and 404 or 503
    return nil, err, status
  end
  local model, lerr = require("exo.model").load(id, { chat_template = self.opts.chat_template,
    text_only = self.ring ~= nil })
  if not model then return nil, lerr, 500 end
  entry = { model = model, idle = {}, busy = 0, queue = {} }
  self.loaded[id] = entry
  return entry
end

-- A session for prompt ids, waiting (yielding) while all are busy.
function Node:acquire(entry, ids)
  while #entry.idle == 0 and entry.busy >= self.max_sessions do
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
    if not session then return nil, err end
  end
  entry.busy = entry.busy + 1
  return session
end

function Node:release(entry, session, keep)
  entry.busy = entry.busy - 1
  if keep then
    entry.idle[#entry.idle + 1] = session
  else
    session:free()
  end
  local waiter = table.remove(entry.queue, 1)
  if waiter then
    -- Resume on the next loop turn, not inside this request's coroutine.
    local t = uv.new_timer()
    t:start(0, 0, function()
      t:close()
      coroutine.resume(waiter)
    end)
  end
end

-- Runs one generation on the calling coroutine.
-- req: model, messages (chat) or prompt (completion), sampling params.
-- on_text(piece), should_stop() as in generate.
-- Returns result, or nil, err, status.
function Node:generate(req, on_text, should_stop)
  local entry, err, status = self:model(req.model)
  if not entry then return nil, err, status end
  local tok = entry.model.tokenizer
  local ids, perr, warning
  if req.messages then
    ids, perr, warning = prompt.build(tok, req.messages,
      { template = entry.model.chat_template, family = entry.model.chat_family })
    -- Once per model: a file without a usable template gets its family's format.
    if warning and not entry.template_warned then
      entry.template_warned = true
      io.stderr:write(("exo: %s: %s\n"):format(req.model or "model", warning))
    end
  else
    ids = tok:encode(req.prompt, { add_bos = tok.add_bos, special = false })
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
      return res
    end
  end
  if not entry.model.shard then
    local ok, serr = require("exo.model").load_shard(entry.model)
    if not ok then return nil, serr, 500 end
  end
  local spec = self.opts.speculative
  if spec and not entry.draft then
    local draft, derr = require("exo.speculative").load_draft(spec.draft, entry.model)
    if not draft then return nil, "draft model: " .. derr, 500 end
    entry.draft = draft
  end
  local session, serr = self:acquire(entry, ids)
  if not session then return nil, serr, 503 end
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
    res, gerr = session:generate(ids, req, on_text, should_stop)
  end
  self:release(entry, session, res ~= nil)
  if not res then return nil, gerr, 500 end
  return res
end

-- A draft session for ring requests (the draft runs on the asking node),
-- reused across requests so its cache keeps the conversation's prefix.
function Node:draft_session(entry)
  entry.draft_idle = entry.draft_idle or {}
  local s = table.remove(entry.draft_idle)
  if s then return s end
  if not entry.draft then
    local draft, err = require("exo.speculative").load_draft(self.opts.speculative.draft, entry.model)
    if not draft then return nil, "draft model: " .. err end
    entry.draft = draft
  end
  return generate.session(entry.draft, { n_ctx = self.n_ctx, runner = self.runner })
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
  local ids, rendered = prompt.build(entry.model.tokenizer, req.messages,
    { template = entry.model.chat_template, family = entry.model.chat_family })
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
