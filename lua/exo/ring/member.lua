-- exo.ring.member: a node's part in a request: its layer range, KV sequence and wire route.
local native = require "exo.native"
local models = require "exo.models"
local download = require "exo.download"

local REPLY_OFFSET = native.WIRE_REPLY_OFFSET

return function(Ring, M)

-- A number that is an integer in [lo, hi] (what a peer's message may carry).
function M.is_int(v, lo, hi) return type(v) == "number" and v == math.floor(v) and v >= lo and v <= hi end
local is_int = M.is_int

-- The loaded range [start, stop) of a model, loaded on the engine thread
-- while the calling coroutine waits (once, however many opens ask for it at
-- the same time).
-- Keyed by the file's real path, so every spelling of one file shares it; a
-- peer's name resolves as a client's does (the store only, without
-- --allow-model-paths), a hub repository's folder as its hub id.
function Ring:shard_for(model_id, start, stop)
  local path, err = models.resolve(download.peer_name(model_id))
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
  -- The asker's plan came from its view; ours must give the same, or the
  -- nodes would run a mix of two plans. It tries again once views agree.
  if msg.plan_id ~= nil then
    local mine = self:plan_id(msg.model)
    if msg.plan_id ~= mine then
      return cluster:send(from, rid, { t = "error", code = "plan_mismatch", message = ("node %s: its view "
        .. "(%s) gives plan %s, not %s"):format(cluster.id, self:view_summary(), mine, tostring(msg.plan_id)) })
    end
  end
  if msg.next and not cluster:conn_of(msg.next) then
    return refuse("the next node " .. msg.next .. " is not connected")
  end
  -- The model as this node names it: a hub repository the asker holds
  -- comes as its folder in the store, which means the hub id here.
  local model = download.peer_name(msg.model)
  -- A model this store lacks (or whose folder lacks this range's files) is
  -- fetched first, for this range only (download.ensure: peers, then the
  -- hub; a hub repository from the hub only for a peer that proved the
  -- cluster key); meanwhile the asker hears "ready" with fetching set every
  -- few seconds, which keeps its open alive however long the download takes.
  -- The last node too: its text side (tokenizer, facts) opens a folder that
  -- lacks other ranges' weight files (safetensors_model.c's open_weights).
  -- A name that is neither a catalogue id nor a hub repository is no
  -- download: it goes on to shard_for, which opens it or says why not.
  local layers = { msg.start, msg.stop }
  if not download.present(model, layers) and models.lookup(model) then
    local keyed = cluster.wire:stats().keyed
    local _, ferr = download.ensure(model, function(st)
      if opening.closed then return end
      local done, total = 0, 0
      if st and st.files then done, total = download.totals(st) end
      cluster:send(from, rid, { t = "ready", fetching = msg.model, done = done, total = total })
    end, { layers = layers, hub = keyed and "hub" or "peers" })
    if opening.closed then return end
    if ferr then return refuse(ferr) end
  end
  -- Before anything loads: a new range of a model is a new shard in memory.
  if opening.counted then
    local key = ("%s@%d-%d"):format(models.resolve(model) or model, msg.start, msg.stop)
    local why, kind = self:range_refusal(from, key)
    if why then return self:refuse_quota(from, rid, why, kind) end
    opening.key = key
  end
  -- What may wait comes first: the last node's tokenizer (start_last reads
  -- it), then the range. From the range's arrival to the route's opening
  -- nothing waits, so no plan change can retire the range in between.
  if not msg.next and not msg.verify then
    local _, terr = self.node:model(model)
    if opening.closed then return end
    if terr then return refuse(terr) end
  end
  local entry, err = self:shard_for(model, msg.start, msg.stop)
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
  local route = { asker = from, shard_key = entry.key, range = msg.start .. "-" .. msg.stop, model = model,
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

-- The asker reuses this request's caches for another turn: new settings.
function Ring:on_resume(from, rid, msg)
  local route = self.routes[rid]
  local function refuse(why)
    self.cluster:send(from, rid, { t = "error", message = ("node %s: %s"):format(self.cluster.id, why) })
  end
  if not route or route.asker ~= from or route.in_ring then return refuse("nothing to resume") end
  if route.model ~= download.peer_name(msg.model) or route.range ~= ("%s-%s"):format(msg.start, msg.stop) then
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
function Ring:on_failed(rid, why)
  if rid >= REPLY_OFFSET then
    return self:deliver(rid - REPLY_OFFSET, { t = "error", message = "the verify rows did not fit: " .. why })
  end
  local route = self.routes[rid]
  if not route then return end
  route.done = true
  self.cluster:send(route.asker, rid, { t = "error", message = ("node %s: %s"):format(self.cluster.id, why) })
end

end
