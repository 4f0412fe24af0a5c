-- topology.lua: the cluster as /v1/topology shows it.
--
-- The nodes this node knows to be alive (itself and its connected peers, with
-- their capabilities and the measured round trip), and for every model it
-- has served, the plan the partitioning policy gives over those nodes: which
-- node holds which layers. Every node computes the same plan from the same
-- view, so asking any node gives the same answer. open_cluster says whether
-- the cluster runs without a key (docs/security.md). Each plan shows its id
-- (partition.view_id: nodes whose views differ show different ids), this
-- node shows what it holds for requests (ring), and events lists the recent
-- joins, leaves and re-plans with their reasons; serving shows this node's
-- own models (sessions, queue, KV pool, preemptions).
local native = require "exo.native"
local json = require "exo.json"
local activity = require "exo.activity"

local M = {}

-- ctx: node (exo.node), cluster (exo.cluster), ring (exo.ring).
function M.view(ctx)
  local cluster = ctx.cluster
  local ids = {}
  local topo = cluster:topology()
  for id in pairs(topo.nodes) do ids[#ids + 1] = id end
  table.sort(ids)
  local nodes = {}
  for _, id in ipairs(ids) do
    local n = topo.nodes[id]
    local caps = {}
    for k, v in pairs(n.capabilities or {}) do caps[k] = v end
    local wire
    if id == cluster.id then
      caps.engine = "cpu"
      caps.threads = native.threads()
      caps.kernels = native.cpu_features()
      wire = cluster.wire and cluster.wire:stats()
      if wire and ctx.ring then
        wire.outputs_handled = ctx.ring.output_count or 0
        wire.output_handling_ns = math.floor((ctx.ring.output_seconds or 0) * 1e9)
      end
    end
    nodes[#nodes + 1] = { id = id, address = n.address, port = n.port, capabilities = caps, rtt_us = n.rtt_us,
      wire = wire, ring = id == cluster.id and ctx.ring and ctx.ring:stats() or nil }
  end
  local partitions = {}
  -- Each loaded model by the name it was first asked by (never its path on disk).
  local loaded = {}
  for _, entry in pairs(ctx.node.loaded) do loaded[#loaded + 1] = entry.model end
  table.sort(loaded, function(a, b) return a.id < b.id end)
  local errors = {}
  for _, model in ipairs(loaded) do
    local id = model.id
    local plan, err = ctx.ring:plan(model)
    if plan then
      local plan_id = ctx.ring:plan_id(require("exo.ring").peer_model_name(id, model.path))
      for _, p in ipairs(plan) do
        partitions[#partitions + 1] = { model = id, node_id = p.node_id, start_layer = p.start_layer,
          end_layer = p.end_layer, n_layers = model.n_layers, plan_id = plan_id }
      end
    else
      errors[#errors + 1] = id .. ": " .. err
    end
  end
  local serving = ctx.node:serving_stats()
  return {
    nodes = nodes,
    -- A node that has loaded nothing yet still reports partitions as a list.
    partitions = #partitions > 0 and partitions or json.empty_array,
    answering_node = cluster.id,
    -- No cluster key: any device that reaches the node port may join.
    open_cluster = topo.open_cluster == true,
    -- Gossiped nodes this node would not dial (docs/security.md).
    gossip_refused = topo.gossip_refused,
    -- How this node finds peers, and what it heard (counts of refused datagrams too).
    discovery = cluster.discovery and cluster.discovery.stats and cluster.discovery:stats() or nil,
    plan_errors = #errors > 0 and errors or nil,
    -- Each model served on this node: sessions, queue, KV pool, preemptions (docs/serving.md).
    serving = #serving > 0 and serving or json.empty_array,
    -- Joins, leaves, re-plans and errors, oldest first (exo.activity keeps the last 64).
    events = #activity.events() > 0 and activity.events() or json.empty_array,
  }
end

return M
