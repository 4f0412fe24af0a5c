-- ring_memory_weighted.lua: the default partitioning policy, as exo (Python) had it.
--
-- Each node takes a share of the layers in proportion to its memory, walking the
-- nodes from the most memory to the least (ties: node id, descending). The
-- arithmetic follows exo's RingMemoryWeightedPartitioningStrategy and
-- map_partitions_to_shards step for step, down to rounding each boundary of [0, 1)
-- to 5 decimals the way Python's round() does, so every node, in Lua or Python,
-- puts the layer boundaries in the same places. M.weighted is the same split with
-- any weight, for policies that weigh nodes by something other than memory.
local M = {}

M.description = "layers in proportion to each node's memory, most memory first (exo's default)"

local floor = math.floor

-- Python's round(x, 5). Python rounds the exact binary value of x to the nearest
-- 5-decimal number, ties to even. LuaJIT's "%.5f" is exact too, but rounds ties
-- away from zero, so ties are handled here. A tie means x * 1e5 = n + 1/2 exactly;
-- for a double that happens exactly when x * 64 is an odd integer (x = j/64 with
-- j odd, then x * 1e5 = j * 1562.5), and x * 64 is computed exactly.
function M.round5(x)
  local s = x * 64
  if s == floor(s) and s % 2 == 1 then
    local n = floor(s * 1562.5)             -- x * 1e5 = n + 1/2
    if n % 2 == 1 then n = n + 1 end        -- to even
    return n / 1e5                          -- nearest double, as float(str) gives
  end
  return tonumber(string.format("%.5f", x))
end

-- A usable weight is a finite number above 0; anything else (nil, negative,
-- NaN, infinite, a string) counts as 0.
local function weight_or_zero(w)
  if type(w) ~= "number" or w ~= w or w <= 0 or w == math.huge then return 0 end
  return w
end

-- Splits model.n_layers layers over topology.nodes in proportion to
-- weight_of(node). Returns the plan, or nil, err for an empty topology. When
-- every weight is 0 the nodes share equally (Python would divide by zero).
-- Nodes whose share rounds to no layer are left out of the plan.
function M.weighted(topology, model, weight_of)
  local n_layers = model.n_layers
  local nodes = {}
  for id, node in pairs(topology.nodes) do
    nodes[#nodes + 1] = { id = id, weight = weight_or_zero(weight_of(node)) }
  end
  if #nodes == 0 then return nil, "the topology has no nodes" end
  table.sort(nodes, function(a, b)
    if a.weight ~= b.weight then return a.weight > b.weight end
    return a.id > b.id
  end)
  -- Summed in sorted order, as exo does, since float addition depends on order.
  -- (Python 3.12's sum() compensates rounding; whole-MB memories sum exactly anyway.)
  local total = 0
  for _, n in ipairs(nodes) do total = total + n.weight end
  if total == 0 then
    for _, n in ipairs(nodes) do n.weight = 1 end
    total = #nodes
  end

  local plan, start = {}, 0
  for i, n in ipairs(nodes) do
    local finish = M.round5(start + n.weight / total)
    local first = floor(start * n_layers)
    local last = floor(finish * n_layers) - 1          -- inclusive, as exo's shards
    if i == #nodes then last = n_layers - 1 end
    -- Only matters past 100,000 layers, where a boundary rounded to 1.00001 would
    -- reach beyond the model.
    last = math.min(last, n_layers - 1)
    if first <= last then
      plan[#plan + 1] = { node_id = n.id, start_layer = first, end_layer = last + 1 }
    end
    start = finish
  end
  -- The last node's range is empty when the boundaries reached 1 before it (its
  -- weight was 0): the last kept range then stretches to the end.
  if #plan > 0 then plan[#plan].end_layer = n_layers end
  return plan
end

local function memory_of(node)
  return node.capabilities and node.capabilities.memory
end

function M.partition(topology, model)
  return M.weighted(topology, model, memory_of)
end

return M
