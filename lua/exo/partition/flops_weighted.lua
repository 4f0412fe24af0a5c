-- flops_weighted.lua: a partitioning policy that weighs nodes by compute.
--
-- The same ring split as ring_memory_weighted, but each node's share follows its
-- fp16 TFLOPS, so a fast GPU takes more layers than a slow laptop with more
-- memory. It does not check that the layers fit in memory. The metric is chosen
-- for the whole cluster, not per node: fp16 when every node reports it, else fp32
-- when every node does, else memory. Mixing them per node would weigh one node's
-- TFLOPS against another's megabytes.
local ring = require "exo.partition.ring_memory_weighted"

local M = {}

M.description = "layers in proportion to each node's fp16 TFLOPS (fp32, then memory, when some node lacks them)"

local function flops(node, precision)
  local f = node.capabilities and node.capabilities.flops
  local v = type(f) == "table" and f[precision]
  return type(v) == "number" and v > 0 and v < math.huge and v or nil
end

local function everyone_reports(topology, precision)
  for _, node in pairs(topology.nodes) do
    if not flops(node, precision) then return false end
  end
  return true
end

-- The precision whose TFLOPS every node reports, or nil (then: memory).
function M.metric(topology)
  for _, precision in ipairs({ "fp16", "fp32" }) do
    if everyone_reports(topology, precision) then return precision end
  end
  return nil
end

function M.partition(topology, model)
  local precision = M.metric(topology)
  if not precision then return ring.partition(topology, model) end
  return ring.weighted(topology, model, function(node) return flops(node, precision) end)
end

return M
