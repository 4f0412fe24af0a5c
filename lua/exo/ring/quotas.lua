-- exo.ring.quotas: what a peer may hold on this node (issue 12).
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
local M = {}

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
function M.new(limits)
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

return M
