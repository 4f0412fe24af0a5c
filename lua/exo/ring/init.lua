-- exo.ring: one model served by several nodes, each running a range of its layers.
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
--
-- This module makes the ring and holds what every role shares; each role's
-- methods live in a module of their own under exo/ring/: asker.lua (a
-- client's request going round), kept.lua (a conversation's caches across
-- turns), member.lua (a node's part in a request), last.lua (the last node's
-- sampling) and quotas.lua (what a peer may hold here).
local uv = require "luv"
local partition = require "exo.partition"
local activity = require "exo.activity"
local quotas = require "exo.ring.quotas"

local M = {}

local Ring = {}
Ring.__index = Ring

M.PEER_MAX_REQUESTS, M.TOTAL_MAX_REQUESTS = quotas.PEER_MAX_REQUESTS, quotas.TOTAL_MAX_REQUESTS
M.PEER_MAX_RANGES, M.TOTAL_MAX_RANGES = quotas.PEER_MAX_RANGES, quotas.TOTAL_MAX_RANGES
M.kv_bytes, M.new_quotas = quotas.kv_bytes, quotas.new

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
    quotas = quotas.new(opts.quotas),
    quota_warned = {}, -- peer id -> { limit kind -> true }: refusals logged once
    plans = {},    -- model path -> the plan signature last seen (re-plans are events)
    replans = 0,   -- requests started again on a new plan
  }, Ring)
  -- (A stand-in cluster in a unit test may have no change events.)
  if cluster.on_change then cluster:on_change(function() self:check_plans() end) end
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

-- The id of the plan this node's view gives for the model as peers name it
-- (partition.view_id): every open carries the asker's, and a node whose
-- own differs refuses the plan.
function Ring:plan_id(model_name)
  return partition.view_id(self.cluster:topology(), model_name, self.policy)
end

-- The nodes this node sees, for a refusal's message.
function Ring:view_summary()
  local ids = {}
  for id in pairs(self.cluster:topology().nodes) do ids[#ids + 1] = id end
  table.sort(ids)
  return ("%d nodes: %s"):format(#ids, table.concat(ids, ", "))
end

-- A request started again on another plan: an event, with the reason.
function Ring:note_replan(text)
  if text:match("re%-planned") then self.replans = self.replans + 1 end
  activity.event("plan", text)
end

-- After a join or a leave: each loaded model's plan is recomputed, and a
-- change is an event naming the join or leave that caused it. This node's
-- range of the new plan starts loading at once (on the engine thread), so
-- the next request on it does not wait for the load; the other nodes load
-- theirs when it opens there (or now, if they serve the model too).
function Ring:check_plans()
  for path, entry in pairs(self.node.loaded or {}) do
    local plan, err = self:plan(entry.model)
    local sig = plan and M.plan_signature(plan) or ("none (" .. tostring(err) .. ")")
    local old = self.plans[path]
    if old ~= sig then
      self.plans[path] = sig
      if old then
        activity.event("plan", ("plan for %s: %s -> %s (%s)"):format(entry.model.id or path, old, sig,
          self.cluster.last_change or "the topology changed"))
        self:preload(entry.model, plan)
      end
    end
  end
end

-- Loads this node's range of plan (a whole-model plan runs outside the ring).
function Ring:preload(model, plan)
  if not plan or #plan < 2 then return end
  for _, p in ipairs(plan) do
    if p.node_id == self.cluster.id then
      self:spawn(function()
        local t0 = uv.now()
        local ok, err = self:shard_for(M.peer_model_name(model.id, model.path), p.start_layer, p.end_layer)
        local what = ("layers %d-%d of %s for the new plan"):format(p.start_layer, p.end_layer, model.id or model.path)
        if ok then
          activity.event("load", ("loaded %s (%.2f s)"):format(what, (uv.now() - t0) / 1000))
        else
          activity.event("error", ("cannot load %s: %s"):format(what, tostring(err)))
        end
      end)
    end
  end
end

--- ring:stats() -> what this node holds for requests now (for /v1/topology):
--- its routes (by asker), opens waiting, its own requests, kept requests,
--- re-plans so far and the last resume's delay.
function Ring:stats()
  local by_asker, routes, opening, asking, kept = {}, 0, 0, 0, 0
  for _, r in pairs(self.routes) do
    routes = routes + 1
    by_asker[r.asker] = (by_asker[r.asker] or 0) + 1
  end
  for _ in pairs(self.opening) do opening = opening + 1 end
  for _ in pairs(self.asking) do asking = asking + 1 end
  for _, list in pairs(self.kept) do kept = kept + #list end
  return { routes = routes, routes_by_asker = next(by_asker) and by_asker or nil, opening = opening,
    asking = asking, kept = kept, replans = self.replans, last_resume_s = self.last_resume_s }
end

-- Unique across nodes without coordination: a random salt per process and a
-- counter, below 2^53 so it stays exact in a Lua number.
function Ring:new_request_id()
  self.counter = self.counter + 1
  return self.salt * 2 ^ 24 + self.counter % 2 ^ 24
end

-- A lost peer touches every role: its requests, routes and kept caches here.
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
  -- Each request hit starts again on a new plan (asker.lua) as it hears this,
  -- which changes self.asking: so the list first, the news after.
  local hit = {}
  for rid, st in pairs(self.asking) do
    if st.nodes[id] then hit[#hit + 1] = rid end
  end
  for _, rid in ipairs(hit) do
    self:deliver(rid, { t = "error", message = ("node %s left mid-request: %s"):format(id, why) })
  end
  for rid, route in pairs(self.routes) do
    if route.asker == id then self:close_route(rid) end
  end
  for _, opening in pairs(self.opening) do
    if opening.asker == id then opening.closed = true end
  end
  self.quota_warned[id] = nil
end

require("exo.ring.kept")(Ring, M)
require("exo.ring.asker")(Ring, M)
require("exo.ring.member")(Ring, M)
require("exo.ring.last")(Ring, M)

return M
