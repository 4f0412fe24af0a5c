-- partition_fastest_first.lua: an example of writing your own partitioning policy.
--
-- Use it by giving its path to every node of the cluster:
--
--     exo --partitioning examples/partition_fastest_first.lua
--
-- (A path is anything with a "/" in it or ending in ".lua"; a bare name picks a
-- built-in policy, such as ring_memory_weighted, the default, or flops_weighted.)
--
-- What it does: the node with the most fp16 compute takes as many layers as its
-- memory holds, then the next fastest takes as many as it holds, and so on until
-- every layer has a home. Fast devices do the work; slow ones join only when the
-- model does not fit on the fast ones.
--
-- What a policy is. The file returns a function(topology, model) (or a table
-- with a `partition` field holding one) that returns a plan:
--
--   topology.nodes  node id -> { id, address, port, capabilities = { model, chip,
--                   memory = MB, flops = { fp32 = TFLOPS, fp16 = ..., int8 = ... } } }
--   model           { id = "smollm2-135m", n_layers = 30,
--                     layer_bytes = weight bytes per layer (may be nil) }
--   plan            an ordered list of { node_id = "...", start_layer = s, end_layer = e },
--                   end exclusive: the first entry holds layer 0, each next entry
--                   starts where the previous one ended, the last ends at n_layers.
--                   Activations travel the ring in this order.
--
-- Rules, because no node asks another for its plan:
--   * Be deterministic: every node runs this on the same topology and must get the
--     same plan. Sort the nodes; never depend on pairs() order, clocks or random.
--   * Leave out nodes that get no layers (an entry with an empty range is invalid).
--   * Return nil, "why" to refuse; raising works too. exo checks every plan and
--     says what is wrong with a bad one, so mistakes show up as clear errors.
--
-- Other modules are at hand through require: here the built-in policy is the
-- fallback when we cannot tell how big a layer is, or when the model is too big
-- for this greedy fill.
local ring_memory_weighted = require "exo.partition.ring_memory_weighted"

-- Share of a node's memory that may hold weights; the rest is left for the
-- operating system, the KV cache and activations.
local USABLE_MEMORY = 0.8

local function fp16_tflops(node)
  local flops = node.capabilities and node.capabilities.flops
  return flops and tonumber(flops.fp16) or 0
end

-- How many layers of layer_bytes each fit in the node's usable memory.
local function layers_that_fit(node, layer_bytes)
  local memory_mb = node.capabilities and tonumber(node.capabilities.memory) or 0
  return math.floor(memory_mb * 1024 * 1024 * USABLE_MEMORY / layer_bytes)
end

local function partition(topology, model)
  local layer_bytes = model.layer_bytes
  if not layer_bytes or layer_bytes <= 0 then
    return ring_memory_weighted.partition(topology, model)
  end

  -- Fastest first; equal speed: node id, so every node breaks the tie the same way.
  local nodes = {}
  for id, node in pairs(topology.nodes) do
    nodes[#nodes + 1] = { id = id, tflops = fp16_tflops(node), fits = layers_that_fit(node, layer_bytes) }
  end
  table.sort(nodes, function(a, b)
    if a.tflops ~= b.tflops then return a.tflops > b.tflops end
    return a.id < b.id
  end)

  local plan, next_layer = {}, 0
  for _, node in ipairs(nodes) do
    if next_layer == model.n_layers then break end
    local take = math.min(node.fits, model.n_layers - next_layer)
    if take > 0 then
      plan[#plan + 1] = { node_id = node.id, start_layer = next_layer, end_layer = next_layer + take }
      next_layer = next_layer + take
    end
  end

  -- The cluster as a whole is too small for this greedy fill: spread the layers in
  -- proportion to memory instead, which is the best a memory-bound cluster can do.
  -- (A stricter policy could return nil, "the model does not fit" here.)
  if next_layer < model.n_layers then
    return ring_memory_weighted.partition(topology, model)
  end
  return plan
end

return {
  description = "fill the node with the most fp16 TFLOPS first, up to what its memory holds, then the next",
  partition = partition,
}
