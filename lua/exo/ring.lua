-- ring.lua: one model served by several nodes, each running a range of its layers.
--
-- The node a client asks (the asker) tokenizes, computes the plan (the
-- partitioning policy over the live topology) and opens the request on every
-- node of the plan: each loads its shard, opens a KV sequence and a wire
-- route (native/wire.c), and answers "ready". The asker then sends the prompt
-- tokens to the node holding layer 0. From there the data plane is C: hidden
-- states go from route to route without touching Lua; the last node's route
-- raises an "output" event, its Lua samples with the asker's settings (they
-- travel in the open message), sends the token back to the asker, and feeds
-- it to the first node for the next step. The asker streams text and ends the
-- turn (a stop string, a client gone, the last node saying done); it then
-- either closes the request everywhere or keeps it open, so the
-- conversation's next turn sends only what is new (kept requests, below).
-- Requests are independent, so several are in flight at once at different
-- places around the ring. Speculative decoding runs its draft on the asker
-- and sends each verify pass round the ring as one multi-row frame (Remote).
--
-- Failure is prompt and loud: a route that fails, a peer that vanishes or
-- stays silent past the step timeout fails the request with a message naming
-- the node; nothing waits forever.
local uv = require "luv"
local ffi = require "ffi"
local native = require "exo.native"
local models = require "exo.models"
local partition = require "exo.partition"
local sampling = require "exo.sampling"
local generate = require "exo.generate"
local json = require "exo.json"

local M = {}

local Ring = {}
Ring.__index = Ring

-- Request settings the last node needs to sample as the client asked.
local SAMPLING_FIELDS = { "temperature", "top_k", "top_p", "min_p", "seed", "repeat_penalty", "presence_penalty",
  "frequency_penalty", "penalty_last_n" }

-- ---- what a peer may hold on this node (issue 12) ------------------------------------
--
-- An admitted peer's open makes this node load layers, keep a route and a KV
-- cache: without a bound one peer could take all of its memory. Each peer
-- (never this node itself: its own requests are bounded by its API) may have
-- at most max_requests requests open or opening here, on at most max_ranges
-- layer ranges, with KV caches of at most max_kv bytes; all peers together
-- total_requests, total_ranges and total_kv. A
-- refusal answers the asker with an `error`, takes nothing from anyone else,
-- and is logged once per peer and limit; closing a request (or losing its
-- peer) gives its share back.
M.PEER_MAX_REQUESTS = 64
M.TOTAL_MAX_REQUESTS = 256
-- Each layer range of a model is a shard of its own in memory; a plan uses
-- one range per model on a node (two while it changes).
M.PEER_MAX_RANGES = 4
M.TOTAL_MAX_RANGES = 16

--- ring.kv_bytes(shard, n_ctx) -> the bytes of a KV sequence of n_ctx positions
--- on shard (exo_seq_new's arithmetic: K and V, f16, each of the shard's
--- layers n_ctx x n_head_kv x head_dim).
function M.kv_bytes(shard, n_ctx)
  return 2 * 2 * n_ctx * shard.n_head_kv * shard.head_dim * (shard.layer_end - shard.layer_start)
end

local Quotas = {}
Quotas.__index = Quotas

-- limits: max_requests, total_requests, max_kv, total_kv (bytes), max_ranges,
-- total_ranges (layer ranges held for peers: Ring:range_refusal). The KV
-- defaults: a quarter of this machine's memory per peer, half for all peers.
function M.new_quotas(limits)
  limits = limits or {}
  local mem
  if not (limits.max_kv and limits.total_kv) then mem = require("exo.cluster").total_memory_mb() * 2 ^ 20 end
  return setmetatable({
    max_requests = limits.max_requests or M.PEER_MAX_REQUESTS,
    total_requests = limits.total_requests or M.TOTAL_MAX_REQUESTS,
    max_kv = limits.max_kv or math.max(mem / 4, 2 ^ 30),
    total_kv = limits.total_kv or math.max(mem / 2, 2 ^ 30),
    max_ranges = limits.max_ranges or M.PEER_MAX_RANGES,
    total_ranges = limits.total_ranges or M.TOTAL_MAX_RANGES,
    peers = {},  -- peer id -> { requests, kv }
    requests = 0, kv = 0,
  }, Quotas)
end

local function mib(bytes) return ("%.0f MiB"):format(bytes / 2 ^ 20) end

--- quotas:take(peer, requests, kv) -> true, or nil, why (a refusal takes nothing).
function Quotas:take(peer, requests, kv)
  local use = self.peers[peer] or { requests = 0, kv = 0 }
  if requests > 0 and use.requests + requests > self.max_requests then
    return nil, ("peer %s has %d requests open on this node (the limit)"):format(peer, use.requests), "requests"
  end
  if requests > 0 and self.requests + requests > self.total_requests then
    return nil, ("peers have %d requests open on this node (the limit)"):format(self.requests), "total_requests"
  end
  if kv > 0 and use.kv + kv > self.max_kv then
    return nil, ("peer %s would hold %s of KV cache on this node (the limit is %s)"):format(peer,
      mib(use.kv + kv), mib(self.max_kv)), "kv"
  end
  if kv > 0 and self.kv + kv > self.total_kv then
    return nil, ("peers would hold %s of KV cache on this node (the limit is %s)"):format(mib(self.kv + kv),
      mib(self.total_kv)), "total_kv"
  end
  self.peers[peer] = use
  use.requests, use.kv = use.requests + requests, use.kv + kv
  self.requests, self.kv = self.requests + requests, self.kv + kv
  return true
end

--- quotas:give(peer, requests, kv): gives back what take took.
function Quotas:give(peer, requests, kv)
  local use = self.peers[peer]
  if not use then return end
  use.requests, use.kv = use.requests - requests, use.kv - kv
  self.requests, self.kv = self.requests - requests, self.kv - kv
  if use.requests <= 0 and use.kv <= 0 then self.peers[peer] = nil end
end

--- quotas:usage(peer) -> requests, kv bytes the peer holds.
function Quotas:usage(peer)
  local use = self.peers[peer]
  return use and use.requests or 0, use and use.kv or 0
end

-- node: the exo.node (models, n_ctx); cluster: the exo.cluster; opts: policy
-- (a partitioning function), wire_dtype ("f32", "f16", "q8_0"), open_timeout
-- and step_timeout (seconds), quotas (new_quotas' limits for what peers hold here).
function M.new(node, cluster, opts)
  opts = opts or {}
  local self = setmetatable({
    node = node, cluster = cluster, policy = opts.policy, wire_dtype = opts.wire_dtype or "f32",
    open_timeout = opts.open_timeout or 120, step_timeout = opts.step_timeout or 120,
    asking = {},   -- request id -> the asker's state
    kept = {},     -- model path -> requests kept open between turns (see take_kept)
    max_kept = opts.max_kept or 2,
    routes = {},   -- request id -> this node's part in a request
    opening = {},  -- request id -> { asker, closed } while its open waits for a load
    shards = {},   -- "model@start-stop" -> { shard, refs }
    salt = tonumber(require("exo.cluster").random_hex(4), 16) % (2 ^ 28 - 1) + 1, counter = 0,
    quotas = M.new_quotas(opts.quotas),
    quota_warned = {}, -- peer id -> { limit kind -> true }: refusals logged once
  }, Ring)
  -- Opening may wait for a shard or tokenizer to load: on a coroutine of its own.
  cluster:on("open", function(from, rid, msg) self:spawn(self.on_open, from, rid, msg) end)
  cluster:on("resume", function(from, rid, msg) self:spawn(self.on_resume, from, rid, msg) end)
  cluster:on("stop", function(from, rid) self:on_stop(from, rid) end)
  cluster:on("close", function(from, rid)
    local route = self.routes[rid]
    if route and route.asker == from then self:close_route(rid) end
    local opening = self.opening[rid]
    if opening and opening.asker == from then opening.closed = true end
  end)
  for _, kind in ipairs { "ready", "token", "done", "error", "verified", "prefilled", "stopped" } do
    cluster:on(kind, function(from, rid, msg)
      msg.from = from
      self:deliver(rid, msg)
    end)
  end
  cluster:on("wire_output", function(rid) self:on_output(rid) end)
  cluster:on("wire_failed", function(rid, why) self:on_failed(rid, why) end)
  cluster:on_lost(function(id, why) self:on_lost(id, why) end)
  -- Shards a plan change retired go once no pass runs on them.
  self.sweeper = uv.new_timer()
  self.sweeper:start(2000, 2000, function()
    self:sweep_kept()
    for key, entry in pairs(self.shards) do
      if entry.retired then self:drop_shard(key) end
    end
  end)
  self.sweeper:unref()
  return self
end

-- Runs fn(self, ...) on a coroutine of its own, which may wait for the engine.
function Ring:spawn(fn, ...)
  local ok, err = coroutine.resume(coroutine.create(fn), self, ...)
  if not ok then io.stderr:write("exo: " .. tostring(err) .. "\n") end
end

-- The plan for a model entry (exo.node's) over the live topology.
function Ring:plan(model)
  return partition.plan(self.policy, self.cluster:topology(),
    { id = model.id, n_layers = model.n_layers, layer_bytes = model.layer_bytes })
end

-- Unique across nodes without coordination: a random salt per process and a
-- counter, below 2^53 so it stays exact in a Lua number.
function Ring:new_request_id()
  self.counter = self.counter + 1
  return self.salt * 2 ^ 24 + self.counter % 2 ^ 24
end

-- ---- the asker ---------------------------------------------------------------------

function Ring:deliver(rid, msg)
  local st = self.asking[rid]
  if not st then return end
  -- Only the request's own nodes speak for it (msg.from is nil for local news).
  if msg.from and not st.nodes[msg.from] then return end
  st.inbox[#st.inbox + 1] = msg
  if st.waiting then
    st.waiting = false
    local ok, err = coroutine.resume(st.co)
    if not ok then io.stderr:write("exo: request failed: " .. tostring(err) .. "\n") end
  end
end

-- The next message for request st, waiting (yielding) up to timeout seconds.
function Ring:wait(st, timeout)
  if #st.inbox == 0 then
    local timer = uv.new_timer()
    timer:start(timeout * 1000, 0, function()
      self:deliver(st.id, { t = "error", message = ("no answer from the ring for %d s"):format(timeout) })
    end)
    st.waiting = true
    coroutine.yield()
    timer:stop()
    timer:close()
  end
  return table.remove(st.inbox, 1)
end

-- lua-cjson turns [] into {}: the logprob entries' lists must stay lists.
local function fix_logprob_entry(e)
  if type(e) ~= "table" then return nil end
  if type(e.bytes) ~= "table" or #e.bytes == 0 then e.bytes = json.empty_array end
  if type(e.top_logprobs) ~= "table" or #e.top_logprobs == 0 then
    e.top_logprobs = json.empty_array
  else
    for _, t in ipairs(e.top_logprobs) do
      if type(t.bytes) ~= "table" or #t.bytes == 0 then t.bytes = json.empty_array end
    end
  end
  return e
end

-- Whether a request can be decoded speculatively over the ring (logprobs
-- are not carried back from a verify pass).
function M.can_speculate(req)
  return not req.logprobs
end

-- The logits of request R come back to its asker as request R + REPLY_OFFSET.
local REPLY_OFFSET = native.WIRE_REPLY_OFFSET

-- How a speculative verify pass answers: the target's argmax per row for
-- greedy requests without penalties, the logits rows otherwise.
local function verify_mode(req)
  local penalties = (req.repeat_penalty or 1) ~= 1 or (req.presence_penalty or 0) ~= 0
    or (req.frequency_penalty or 0) ~= 0
  return (req.temperature == 0 and not penalties) and "argmax" or "rows"
end

local function plan_signature(plan)
  local parts = {}
  for i, p in ipairs(plan) do parts[i] = ("%s:%d-%d"):format(p.node_id, p.start_layer, p.end_layer) end
  return table.concat(parts, ",")
end

local common_prefix = generate.common_prefix

-- ---- kept requests: a conversation's caches across turns ---------------------------------
--
-- After a turn the asker may keep the request open on every node (its routes
-- and KV sequences), remembering which tokens the ring holds. The next request
-- on the same plan that shares a prefix with them resumes it: only the new
-- tokens go round (the first frame's position rolls every cache back to the
-- common prefix). At most max_kept per model; the oldest is closed first.

function Ring:close_everywhere(rid, plan)
  self.cluster.wire:route_close(rid + REPLY_OFFSET)
  for _, p in ipairs(plan) do self.cluster:send(p.node_id, rid, { t = "close" }) end
end

-- The idle kept request for this model, plan and mode sharing the longest
-- prefix with ids, taken out of the pool; kept requests of other plans go.
function Ring:take_kept(model_path, sig, mode, ids)
  local list = self.kept[model_path]
  if not list then return nil end
  local best, best_len
  for i = #list, 1, -1 do
    local k = list[i]
    if k.sig ~= sig then
      table.remove(list, i)
      self:close_everywhere(k.rid, k.plan)
    elseif k.mode == mode then
      -- Worth resuming only when the prompt continues this conversation (it
      -- shares most of what the ring holds); a prompt sharing just the
      -- template opens a fresh request, so another conversation's cache lives on.
      local len = common_prefix(k.cached, ids)
      if len > 0 and len * 2 >= #k.cached and (not best or len > best_len) then best, best_len = i, len end
    end
  end
  return best and table.remove(list, best) or nil
end

-- Kept requests go after 10 idle minutes, or when the plan for their model
-- changed (they pin KV caches and shards on every node of the old plan).
function Ring:sweep_kept()
  local now = uv.now()
  for model_path, list in pairs(self.kept) do
    local entry = self.node.loaded[model_path]
    local plan = entry and self:plan(entry.model)
    local sig = plan and plan_signature(plan)
    for i = #list, 1, -1 do
      local k = list[i]
      if now - k.used > 600000 or k.sig ~= sig then
        table.remove(list, i)
        self:close_everywhere(k.rid, k.plan)
      end
    end
  end
end

function Ring:keep(model_path, k)
  local list = self.kept[model_path] or {}
  self.kept[model_path] = list
  k.used = uv.now()
  -- One cache per conversation: a kept request this one extends (two turns
  -- of one conversation at once) goes.
  for i = #list, 1, -1 do
    local other = list[i]
    if other.sig == k.sig and common_prefix(other.cached, k.cached) == math.min(#other.cached, #k.cached) then
      table.remove(list, i)
      self:close_everywhere(other.rid, other.plan)
    end
  end
  list[#list + 1] = k
  while #list > self.max_kept do
    local old = table.remove(list, 1)
    self:close_everywhere(old.rid, old.plan)
  end
end

--- ring.peer_model_name(requested, path) -> how peers are told of the model
--- a request named `requested` (nil: the default) whose file is `path` (its
--- real path): the catalogue id when the request named one, else the file
--- relative to the model store; never the client's spelling (a peer resolves
--- names as its clients' are, docs/wire.md's `open`). A file outside the store
--- (this node runs with --allow-model-paths, or the operator named it) goes
--- by its real path: a peer takes it only if it allows paths too.
function M.peer_model_name(requested, path)
  requested = requested or models.default_id
  models.load_user_file()
  if models.registry[requested] then return requested end
  local store = native.realpath(models.store())
  if store and path:sub(1, #store + 1) == store .. "/" then return path:sub(#store + 2) end
  return path
end

-- Runs one request over plan on the calling coroutine; the same contract as
-- generate.Session:generate (model: exo.model with its tokenizer). With draft
-- (a local session on a draft model) and g, the request is decoded
-- speculatively: the draft runs here, the target's verify pass goes round the
-- ring as one multi-row frame.
function Ring:generate(model, ids, req, plan, on_text, should_stop, draft, g)
  local mode = draft and verify_mode(req) or "plain"
  local sig = plan_signature(plan)
  local kept = self:take_kept(model.path, sig, mode, ids)
  while true do
    local rid = kept and kept.rid or self:new_request_id()
    -- A kept request goes on under the name its nodes opened it by.
    local st = { id = rid, co = coroutine.running(), inbox = {}, plan = plan, nodes = {}, kept = kept, mode = mode,
      n_vocab = kept and kept.n_vocab,
      peer_model = kept and kept.peer_model or M.peer_model_name(req.model, model.path) }
    for _, p in ipairs(plan) do st.nodes[p.node_id] = true end
    self.asking[rid] = st
    -- Whatever happens (an error raised on the way included), the request is
    -- either kept with a known cache or closed on every node it was opened on.
    local ok, res, err = pcall(self.run_request, self, st, model, ids, req, on_text, should_stop, draft, g)
    self.asking[rid] = nil
    if ok and res and st.cached then
      self:keep(model.path, { rid = rid, sig = sig, mode = mode, plan = plan, cached = st.cached, n_vocab = st.n_vocab,
        peer_model = st.peer_model })
    else
      self:close_everywhere(rid, plan)
    end
    -- A node that no longer holds its part of a kept request: start afresh.
    if not (ok and not res and st.resume_refused) then
      if not ok then return nil, "the request failed: " .. tostring(res) end
      return res, err
    end
    kept = nil
  end
end

-- A prompt goes round the ring in chunks whose hidden states fit a frame
-- (EXO_RING_CHUNK makes them smaller, for tests).
function Ring:chunk_size(model)
  local fit = math.floor(16 * 2 ^ 20 / math.max(model.n_embd or 4096, 1)) - 1
  return math.max(1, math.min(tonumber(os.getenv("EXO_RING_CHUNK") or "") or 2048, fit))
end

function Ring:run_request(st, model, ids, req, on_text, should_stop, draft, g)
  local t0 = native.now()
  local rid, plan, cluster = st.id, st.plan, self.cluster

  local sampling_params = {}
  for _, k in ipairs(SAMPLING_FIELDS) do sampling_params[k] = req[k] end
  for i, p in ipairs(plan) do
    -- A kept request is resumed: every node checks it still holds its part,
    -- the last one takes this turn's settings.
    local msg = { t = st.kept and "resume" or "open", model = st.peer_model, start = p.start_layer, stop = p.end_layer,
      next = plan[i + 1] and plan[i + 1].node_id or nil, prev = plan[i - 1] and plan[i - 1].node_id or nil,
      last = plan[#plan].node_id, first = plan[1].node_id, n_ctx = self.node.n_ctx, wire_dtype = self.wire_dtype }
    if i == #plan and draft then
      -- Greedy needs only the target's choice per row; sampling needs the rows.
      msg.verify = st.mode
    elseif i == #plan then
      msg.sampling = sampling_params
      msg.prompt = ids
      msg.max_tokens = req.max_tokens
      msg.logprobs = req.logprobs and (req.top_logprobs or 0) or nil
    end
    local ok, err = cluster:send(p.node_id, rid, msg)
    if not ok then
      return nil, ("cannot reach node %s: %s"):format(p.node_id, err)
    end
  end
  for _ = 1, #plan do
    local m = self:wait(st, self.open_timeout)
    if m.t ~= "ready" then
      st.resume_refused = st.kept ~= nil and m.t == "error"
      return nil, m.message or ("node %s answered %s"):format(tostring(m.from), tostring(m.t))
    end
    if type(m.n_vocab) == "number" then st.n_vocab = m.n_vocab end
  end
  if draft then
    local res, serr = self:speculate(st, model, ids, req, on_text, should_stop, draft, g)
    return res, serr
  end
  -- Only what the ring does not hold yet goes round (the last prompt token
  -- always: its logits start the answer). All but the last chunk of a long
  -- prompt are answered "prefilled".
  local common = st.kept and math.min(common_prefix(st.kept.cached, ids), #ids - 1) or 0
  local first_conn, chunk = cluster:conn_of(plan[1].node_id), self:chunk_size(model)
  local at = common
  while #ids - at > chunk do
    local ok, err = self.cluster.wire:send_tokens(first_conn, rid, at, { unpack(ids, at + 1, at + chunk) })
    if not ok then return nil, "cannot send the prompt: " .. err end
    local m = self:wait(st, self.step_timeout)
    if m.t ~= "prefilled" then return nil, m.message or "the ring failed during the prompt" end
    at = at + chunk
  end
  local ok, err = self.cluster.wire:send_tokens(first_conn, rid, at, { unpack(ids, at + 1) })
  if not ok then
    return nil, "cannot send the prompt: " .. err
  end

  local sink = generate.text_sink(model.tokenizer, req, on_text)
  local finish, ttft
  while true do
    local m = self:wait(st, self.step_timeout)
    if m.t == "token" then
      ttft = ttft or native.now() - t0
      if type(m.id) ~= "number" or m.id ~= math.floor(m.id) or m.id < 0 or m.id >= model.tokenizer.n_vocab then
        return nil, "a malformed token came back from the ring"
      end
      if sink:push(m.id, req.logprobs and fix_logprob_entry(m.lp)) then
        finish = "stop"
        break
      end
      if m.finish then
        finish = m.finish
        break
      end
    elseif m.t == "done" then
      ttft = ttft or native.now() - t0
      finish = m.finish or "stop"
      break
    else
      return nil, m.message or "the ring failed"
    end
    if should_stop and should_stop() then
      finish = "cancelled"
      break
    end
  end
  local text = sink:finish(finish)
  -- Keep the caches for the next turn: once the last node has stopped and no
  -- token of this turn is going round, the ring holds the prompt and every
  -- token but (maybe) the last.
  if cluster:send(plan[#plan].node_id, rid, { t = "stop" }) then
    local m
    repeat m = self:wait(st, self.step_timeout) until m.t ~= "token" and m.t ~= "done" -- sampled before the stop
    if m.t == "stopped" then
      st.cached = { unpack(ids) }
      for i = 1, #sink.tokens - 1 do st.cached[#st.cached + 1] = sink.tokens[i] end
    end
  end
  local res = sink:result(text, finish, #ids, #ids - common, t0, ttft)
  res.plan = plan
  return res
end

-- The target as speculative.generate sees it when its layers are spread over
-- the ring: a verify pass is a multi-row frame to the first node, and its
-- answer comes back as the target's argmax per row (greedy) or as the logits
-- rows themselves (sampling; into a collector route here). Truncating only
-- forgets here: the next frame starts at the accepted position, and every
-- shard rolls its cache back to it as the frame arrives (wire.c).
local Remote = {}
Remote.__index = Remote

function Remote:n_ctx() return self.n_ctx_ end

function Remote:truncate(n)
  for i = #self.cached, n + 1, -1 do self.cached[i] = nil end
  return true
end

-- Sends tokens at the end of the cached context and waits for the answer.
function Remote:pass(tokens, all_logits)
  local ring, st = self.ring, self.st
  local ok, err = ring.cluster.wire:send_tokens(self.first, st.id, #self.cached, tokens, nil, all_logits)
  if not ok then return nil, "cannot reach the first node: " .. err end
  local m = ring:wait(st, ring.step_timeout)
  if m.t ~= "verified" and m.t ~= "rows" then return nil, m.message or "the ring failed" end
  for i = 1, #tokens do self.cached[#self.cached + 1] = tokens[i] end
  return m
end

function Remote:sync(ids)
  self:truncate(common_prefix(self.cached, ids))
  while #self.cached < #ids do
    local from = #self.cached
    local m, err = self:pass({ unpack(ids, from + 1, math.min(#ids, from + self.chunk)) }, false)
    if not m then return nil, err end
  end
  return true
end

function Remote:extend_argmax(tokens)
  local m, err = self:pass(tokens, true)
  if not m then return nil, err end
  if type(m.best) ~= "table" or #m.best ~= #tokens then return nil, "a malformed verify answer" end
  for _, b in ipairs(m.best) do
    if type(b) ~= "number" or b < 0 or b >= self.shard.n_vocab then return nil, "a malformed verify answer" end
  end
  return m.best
end

function Remote:extend(tokens)
  local m, err = self:pass(tokens, true)
  if not m then return nil, err end
  local rows, n = self.ring.cluster.wire:route_output(m.rows_id)
  if not rows or n ~= #tokens then return nil, "the verify pass returned the wrong rows" end
  return ffi.cast("float*", rows)
end

-- The asker's speculative decoding: the draft runs here, the target round the ring.
function Ring:speculate(st, model, ids, req, on_text, should_stop, draft, g)
  local wire = self.cluster.wire
  local n_vocab = st.n_vocab or model.tokenizer.n_vocab -- the head's rows, as the last node said
  if not st.kept then
    local ok, err = wire:collect_open(st.id + REPLY_OFFSET, n_vocab)
    if not ok then return nil, err end
  end
  local target = setmetatable({ ring = self, st = st, first = self.cluster:conn_of(st.plan[1].node_id),
    n_ctx_ = self.node.n_ctx, cached = st.kept and { unpack(st.kept.cached) } or {}, tokenizer = model.tokenizer,
    shard = { n_vocab = n_vocab }, chunk = self:chunk_size(model) }, Remote)
  local res, serr = require("exo.speculative").generate(target, draft, ids, req, on_text, should_stop, g)
  if res then
    res.plan = st.plan
    st.cached = target.cached -- verify passes run one at a time: nothing is still going round
  end
  return res, serr
end

-- ---- a node's part in a request --------------------------------------------------------

-- The loaded range [start, stop) of a model, loaded on the engine thread
-- while the calling coroutine waits (once, however many opens ask for it at
-- the same time).
-- Keyed by the file's real path, so every spelling of one file shares it; a
-- peer's name resolves as a client's does (the store only, without
-- --allow-model-paths).
function Ring:shard_for(model_id, start, stop)
  local path, err = models.resolve(model_id)
  if not path then return nil, err end
  local key = ("%s@%d-%d"):format(path, start, stop)
  local entry = self.shards[key]
  if not entry then
    local runner = self.node.runner
    local shard, serr = runner:once("shard " .. key, runner.load_shard, runner, path, { start = start, stop = stop })
    if not shard then return nil, serr end
    -- An open that waited on another's load finds the entry that one made
    -- (unless a plan change dropped it since).
    if not shard.handle then return nil, "the plan changed while the layers loaded" end
    entry = self.shards[key]
    if not entry then
      entry = { shard = shard, refs = 0, key = key, model = path }
      -- A plan change leaves the model's other ranges unused: they go once
      -- nothing runs on them.
      for k, other in pairs(self.shards) do
        if other.model == path then other.retired = true end
        if other.retired and other.refs == 0 then self:drop_shard(k) end
      end
      self.shards[key] = entry
    end
  end
  entry.retired = nil
  return entry
end

function Ring:drop_shard(key)
  local entry = self.shards[key]
  if entry and entry.refs == 0 and self.cluster.wire:stats().in_flight == 0 then
    self.shards[key] = nil
    entry.shard:free()
  end
end

local function is_int(v, lo, hi) return type(v) == "number" and v == math.floor(v) and v >= lo and v <= hi end

-- An asker opens request rid here: load the range, open a route, say
-- "ready". The asker may close the request (or leave) while the range loads:
-- then nothing opens.
function Ring:on_open(from, rid, msg)
  local cluster = self.cluster
  local function refuse(why)
    cluster:send(from, rid, { t = "error", message = ("node %s: %s"):format(cluster.id, why) })
  end
  if self.routes[rid] or self.opening[rid] then return refuse("request already open") end
  -- A peer's open counts against its quota from now (it may wait on a load).
  local opening = { asker = from, counted = from ~= cluster.id, kv = 0 }
  if opening.counted then
    local qok, qerr, kind = self.quotas:take(from, 1, 0)
    if not qok then return self:refuse_quota(from, rid, qerr, kind) end
  end
  self.opening[rid] = opening
  local ok, err = pcall(self.open_route, self, from, rid, msg, opening, refuse)
  self.opening[rid] = nil
  -- An open that made no route gives its share back; a route keeps it until closed.
  if opening.counted and not opening.opened then self.quotas:give(from, 1, opening.kv) end
  if not ok then refuse(tostring(err)) end
end

-- Why peer `from` may not make this node hold the layer range `key` (a
-- shard's key), or nil: only so many ranges per peer, and for all peers.
function Ring:range_refusal(from, key)
  local mine, all, n_mine, n_all = {}, {}, 0, 0
  local function count(asker, k)
    if not k then return end
    if not all[k] then all[k], n_all = true, n_all + 1 end
    if asker == from and not mine[k] then mine[k], n_mine = true, n_mine + 1 end
  end
  for _, route in pairs(self.routes) do
    if route.quota_kv then count(route.asker, route.quota_key) end
  end
  for _, o in pairs(self.opening) do
    if o.counted then count(o.asker, o.key) end
  end
  local q = self.quotas
  if not mine[key] and n_mine >= q.max_ranges then
    return ("peer %s has %d layer ranges loaded on this node (the limit)"):format(from, n_mine), "ranges"
  end
  if not all[key] and n_all >= q.total_ranges then
    return ("peers have %d layer ranges loaded on this node (the limit)"):format(n_all), "total_ranges"
  end
  return nil
end

-- Refuses a peer's open over its quota: the asker hears why, the log says it once.
function Ring:refuse_quota(from, rid, why, kind)
  local warned = self.quota_warned[from] or {}
  self.quota_warned[from] = warned
  if not warned[kind] then
    warned[kind] = true
    io.stderr:write(("exo: refusing requests of peer %s: %s\n"):format(from, why))
  end
  self.cluster:send(from, rid, { t = "error", message = ("node %s: %s"):format(self.cluster.id, why) })
end

function Ring:open_route(from, rid, msg, opening, refuse)
  local cluster = self.cluster
  if rid >= REPLY_OFFSET then return refuse(("request ids stay below %.0f"):format(REPLY_OFFSET)) end
  if msg.next == cluster.id then return refuse("a plan cannot pass a request to the same node twice") end
  if type(msg.model) ~= "string" or not is_int(msg.start, 0, 1e6) or not is_int(msg.stop, msg.start + 1, 1e6)
    or not is_int(msg.n_ctx, 1, 1e7) or type(msg.first) ~= "string"
    or (msg.next ~= nil and type(msg.next) ~= "string") or (msg.prev ~= nil and type(msg.prev) ~= "string") then
    return refuse("malformed open message")
  end
  local dtype = native.WIRE_DTYPES[msg.wire_dtype or "f32"]
  if not dtype then return refuse("unknown wire dtype " .. tostring(msg.wire_dtype)) end
  if msg.next and not cluster:conn_of(msg.next) then
    return refuse("the next node " .. msg.next .. " is not connected")
  end
  -- Before anything loads: a new range of a model is a new shard in memory.
  if opening.counted then
    local key = ("%s@%d-%d"):format(models.resolve(msg.model) or msg.model, msg.start, msg.stop)
    local why, kind = self:range_refusal(from, key)
    if why then return self:refuse_quota(from, rid, why, kind) end
    opening.key = key
  end
  -- What may wait comes first: the last node's tokenizer (start_last reads
  -- it), then the range. From the range's arrival to the route's opening
  -- nothing waits, so no plan change can retire the range in between.
  if not msg.next and not msg.verify then
    local _, terr = self.node:model(msg.model)
    if opening.closed then return end
    if terr then return refuse(terr) end
  end
  local entry, err = self:shard_for(msg.model, msg.start, msg.stop)
  if opening.closed then return end
  if not entry then return refuse(err) end
  local shard = entry.shard
  if msg.n_ctx > math.max(self.node.n_ctx, shard.n_ctx_train) then
    return refuse(("a context of %d is more than this node gives (%d)"):format(msg.n_ctx,
      math.max(self.node.n_ctx, shard.n_ctx_train)))
  end
  if shard.is_last ~= (msg.next == nil) then return refuse("the plan's last node must hold the last layer") end
  if opening.counted then
    local kv = M.kv_bytes(shard, msg.n_ctx)
    local qok, qerr, kind = self.quotas:take(from, 0, kv)
    if not qok then return self:refuse_quota(from, rid, qerr, kind) end
    opening.kv = kv
  end
  local route = { asker = from, shard_key = entry.key, range = msg.start .. "-" .. msg.stop, model = msg.model,
    n_ctx = msg.n_ctx, first = msg.first,
    n_vocab = shard.n_vocab, quota_kv = opening.counted and opening.kv or nil, quota_key = opening.key }
  if shard.is_last then
    local serr = self:start_last(route, msg)
    if serr then return refuse(serr) end
  end
  local next_conn = 0
  if route.verify == "rows" then
    -- Verify rows go back to the asker's collector (or stay here when it is us).
    next_conn = cluster:conn_of(from) or 0
  elseif msg.next then
    next_conn = cluster:conn_of(msg.next)
    if not next_conn then return refuse("the next node " .. msg.next .. " left while its part loaded") end
  end
  local seq, serr = shard:new_seq(msg.n_ctx)
  if not seq then return refuse(serr) end
  local ok, rerr = cluster.wire:route_open(rid, shard, seq, next_conn, dtype)
  if not ok then
    seq:free()
    return refuse(rerr)
  end
  -- Rows come from the previous node; the first node's from the asker (the
  -- prompt, speculative verify passes) and the last node (sampled tokens).
  local sources = msg.prev and { msg.prev } or { from, msg.last }
  for _, id in ipairs(sources) do
    local conn = type(id) == "string" and cluster:conn_of(id)
    if conn then cluster.wire:route_allow(rid, conn) end
  end
  entry.refs = entry.refs + 1
  self.routes[rid] = route
  opening.opened = true
  cluster:send(from, rid, { t = "ready", n_vocab = shard.is_last and shard.n_vocab or nil })
end

-- The last node's part of a request: how to turn logits into tokens. Set at
-- open, and again at "resume" when the asker reuses the request's caches for
-- its next turn. Returns nil or an error message.
function Ring:start_last(route, msg)
  route.done, route.in_ring, route.stopping = nil, nil, nil
  if msg.verify then
    if msg.verify ~= "argmax" and msg.verify ~= "rows" then return "unknown verify mode" end
    if route.verify_fixed and route.verify_fixed ~= msg.verify then return "another verify mode than at open" end
    route.verify, route.verify_fixed, route.sampler = msg.verify, msg.verify, nil
    return nil
  end
  if route.verify_fixed == "rows" then return "this request returns rows" end
  route.verify = nil
  local text_side, terr = self.node:model(route.model)
  if not text_side then return terr end
  if type(msg.prompt) ~= "table" or #msg.prompt < 1 or #msg.prompt >= route.n_ctx then return "no prompt" end
  for _, id in ipairs(msg.prompt) do
    if not is_int(id, 0, route.n_vocab - 1) then return "a prompt token outside the vocabulary" end
  end
  if type(msg.sampling) ~= "table" then return "no sampling settings" end
  local ok, sampler = pcall(sampling.new, route.n_vocab, msg.sampling)
  if not ok then return "bad sampling settings: " .. tostring(sampler) end
  route.sampler = sampler
  route.tokenizer = text_side.model.tokenizer
  route.history = {}
  for i, id in ipairs(msg.prompt) do route.history[i] = id end
  route.pos = #msg.prompt
  route.max_tokens = type(msg.max_tokens) == "number" and msg.max_tokens or math.huge
  route.generated = 0
  route.top_logprobs, route.lp_buf = nil, nil
  if type(msg.logprobs) == "number" then
    route.top_logprobs = msg.logprobs
    route.lp_buf = ffi.new("float[?]", route.n_vocab)
  end
  return nil
end

-- The asker reuses this request's caches for another turn: new settings.
function Ring:on_resume(from, rid, msg)
  local route = self.routes[rid]
  local function refuse(why)
    self.cluster:send(from, rid, { t = "error", message = ("node %s: %s"):format(self.cluster.id, why) })
  end
  if not route or route.asker ~= from or route.in_ring then return refuse("nothing to resume") end
  if route.model ~= msg.model or route.range ~= ("%s-%s"):format(msg.start, msg.stop) then
    return refuse("this node holds another part of the request")
  end
  if route.sampler or route.verify then -- the last node: this turn's settings
    local err = self:start_last(route, msg)
    if err then return refuse(err) end
  end
  self.cluster:send(from, rid, { t = "ready", n_vocab = (route.sampler or route.verify) and route.n_vocab or nil })
end

-- The asker is done with a turn but keeps the caches: generate no further,
-- and say "stopped" once no token of ours is still going round.
function Ring:on_stop(from, rid)
  local route = self.routes[rid]
  if not route or route.asker ~= from then
    return self.cluster:send(from, rid, { t = "error", message = "nothing to stop" })
  end
  route.done = true
  if route.in_ring then
    route.stopping = true
  else
    self.cluster:send(from, rid, { t = "stopped" })
  end
end

function Ring:close_route(rid)
  local route = self.routes[rid]
  if not route then return end
  self.routes[rid] = nil
  self.cluster.wire:route_close(rid)
  if route.quota_kv then self.quotas:give(route.asker, 1, route.quota_kv) end
  local entry = self.shards[route.shard_key]
  if entry then
    entry.refs = entry.refs - 1
    if entry.retired then self:drop_shard(route.shard_key) end
  end
end

-- The last node: logits are ready; sample, tell the asker, feed the first node.
function Ring:on_output(rid)
  if rid >= REPLY_OFFSET then
    -- Logits rows for one of our own speculative requests.
    return self:deliver(rid - REPLY_OFFSET, { t = "rows", rows_id = rid })
  end
  local t0 = native.now()
  self:handle_output(rid)
  -- What the control plane adds to each token on the last node (bench-cluster reads it).
  self.output_count = (self.output_count or 0) + 1
  self.output_seconds = (self.output_seconds or 0) + native.now() - t0
end

function Ring:handle_output(rid)
  local route = self.routes[rid]
  if not route then return end
  route.in_ring = nil
  if route.stopping then
    route.stopping = nil
    self.cluster:send(route.asker, rid, { t = "stopped" })
  end
  if route.done then return end
  local cluster = self.cluster
  local logits, rows, position = cluster.wire:route_output(rid)
  if not logits then return end
  if route.verify == "rows" then
    -- We are the asker as well: the rows are read from this route.
    return self:deliver(rid, { t = "rows", rows_id = rid })
  elseif route.verify then
    -- A speculative verify pass: the target's choice for every row.
    local best = {}
    for i = 1, rows do best[i] = native.argmax(logits + (i - 1) * route.n_vocab, route.n_vocab) end
    cluster:send(route.asker, rid, { t = "verified", best = best })
    return
  end
  if not route.sampler then return end
  if position + rows < route.pos then
    -- A chunk of a long prompt: not the end of it yet.
    cluster:send(route.asker, rid, { t = "prefilled" })
    return
  end
  logits = ffi.cast("float*", logits)
  local lp
  if route.lp_buf then
    native.sample_log_softmax(logits, route.n_vocab, route.lp_buf)
  end
  local id = route.sampler:sample(logits, route.history)
  if route.tokenizer:is_eog(id) then
    route.done = true
    cluster:send(route.asker, rid, { t = "done", finish = "stop" })
    return
  end
  if route.lp_buf then lp = generate.logprob_entry(route.tokenizer, route.lp_buf, route.n_vocab, id, route.top_logprobs) end
  route.history[#route.history + 1] = id
  route.generated = route.generated + 1
  local finish
  if route.generated >= route.max_tokens or route.pos >= route.n_ctx - 1 then finish = "length" end
  cluster:send(route.asker, rid, { t = "token", id = id, lp = lp, finish = finish })
  if finish then
    route.done = true
    return
  end
  local conn = cluster:conn_of(route.first)
  local ok, err = conn and cluster.wire:send_tokens(conn, rid, route.pos, { id })
  if not ok then
    route.done = true
    cluster:send(route.asker, rid, { t = "error", message = "cannot reach the first node: " .. tostring(err) })
    return
  end
  route.in_ring = true
  route.pos = route.pos + 1
end

function Ring:on_failed(rid, why)
  if rid >= REPLY_OFFSET then
    return self:deliver(rid - REPLY_OFFSET, { t = "error", message = "the verify rows did not fit: " .. why })
  end
  local route = self.routes[rid]
  if not route then return end
  route.done = true
  self.cluster:send(route.asker, rid, { t = "error", message = ("node %s: %s"):format(self.cluster.id, why) })
end

function Ring:on_lost(id, why)
  for _, list in pairs(self.kept) do
    for i = #list, 1, -1 do
      local k = list[i]
      for _, p in ipairs(k.plan) do
        if p.node_id == id then
          table.remove(list, i)
          self:close_everywhere(k.rid, k.plan)
          break
        end
      end
    end
  end
  for rid, st in pairs(self.asking) do
    if st.nodes[id] then self:deliver(rid, { t = "error", message = ("node %s left mid-request: %s"):format(id, why) }) end
  end
  for rid, route in pairs(self.routes) do
    if route.asker == id then self:close_route(rid) end
  end
  for _, opening in pairs(self.opening) do
    if opening.asker == id then opening.closed = true end
  end
  self.quota_warned[id] = nil
end

return M
