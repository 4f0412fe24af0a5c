-- topology.lua: the peers we know and their capabilities.
--
-- For now a single node: itself, with its memory and the layers it holds of
-- each loaded model. The cluster issue adds peers learned from discovery.
local native = require "exo.native"
local json = require "exo.json"

local M = {}

local function total_memory_mb()
  local f = io.open("/proc/meminfo", "r")
  if not f then return 0 end
  local text = f:read("*a")
  f:close()
  local kb = tonumber(text:match("MemTotal:%s+(%d+)")) or 0
  return math.floor(kb / 1024)
end

local function cpu_name()
  local f = io.open("/proc/cpuinfo", "r")
  if not f then return "cpu" end
  local text = f:read("*a")
  f:close()
  return text:match("model name%s*:%s*([^\n]+)") or "cpu"
end

-- The topology as /v1/topology shows it, for a node serving alone.
function M.single(ctx)
  local partitions, nodes = {}, {}
  for id, entry in pairs(ctx.node.loaded) do
    local shard = entry.model.shard
    partitions[#partitions + 1] = { model = id, node_id = "self", start_layer = shard.layer_start,
      end_layer = shard.layer_end, n_layers = shard.n_layer }
  end
  nodes[1] = {
    id = "self", address = "127.0.0.1",
    capabilities = { model = "exo " .. native.version(), chip = cpu_name(), memory = total_memory_mb(),
      engine = "cpu", threads = native.threads(), kernels = native.cpu_features() },
  }
  -- A node that has loaded nothing yet still reports partitions as a list.
  return { nodes = nodes, partitions = #partitions > 0 and partitions or json.empty_array, answering_node = "self" }
end

return M
