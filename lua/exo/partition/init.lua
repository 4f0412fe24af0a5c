-- exo.partition: choosing, running and checking partitioning policies.
--
-- A policy is a pure function (topology, model) -> plan that says which node runs
-- which layers. Every node runs the same policy on the same topology and must get
-- the same plan without asking anyone, so policies sort nodes rather than trust
-- pairs() order. A plan is an ordered list of { node_id, start_layer, end_layer }
-- (end exclusive) that covers [0, model.n_layers) once, in ring order. Policies
-- are built in (exo/partition/<name>.lua) or a user's Lua file; M.plan runs one
-- and refuses a bad plan with a message saying what is wrong with it.
--
-- A plan's id (M.view_id) names the view it came from, so a node asked to
-- serve a plan can tell whether its own view would give the same one.
local bit = require "bit"

local M = {}

M.default = "ring_memory_weighted"
M.builtin = { "flops_weighted", "ring_memory_weighted" }

local is_builtin = {}
for _, name in ipairs(M.builtin) do is_builtin[name] = true end

local function is_int(x)
  return type(x) == "number" and x == math.floor(x) and x > -math.huge and x < math.huge
end

-- What each loaded policy is called in a plan id: a built-in's name, or a
-- user's file by its contents (nodes may keep it at different paths).
local names = setmetatable({}, { __mode = "k" })

--- partition.hash(s) -> 16 hex digits (FNV-1a, 64 bits): a short, stable name
--- for a string, not a defence against anyone forging one.
function M.hash(s)
  local h = 0xcbf29ce484222325ULL
  for i = 1, #s do h = bit.bxor(h, s:byte(i) + 0ULL) * 0x100000001b3ULL end
  return bit.tohex(h)
end

-- A user's policy file returns a function, or a table with a partition function.
local function load_file(path)
  local chunk, err = loadfile(path)
  if not chunk then
    return nil, ("cannot load partitioning policy '%s': %s"):format(path, err)
  end
  local ok, result = pcall(chunk)
  if not ok then
    return nil, ("partitioning policy '%s' raised an error while loading: %s"):format(path, tostring(result))
  end
  local fn = type(result) == "function" and result or type(result) == "table" and type(result.partition) == "function"
    and result.partition
  if fn then
    local f = io.open(path, "rb")
    names[fn] = "file:" .. M.hash(f and f:read("*a") or path)
    if f then f:close() end
    return fn
  end
  return nil, ("partitioning policy '%s' must return a function(topology, model) or a table with a "
    .. "partition function, but returned %s"):format(path, type(result) == "table" and "a table without one"
    or type(result))
end

-- spec: nil (the default policy), a built-in name, a path to a Lua file (it
-- contains "/" or ends in ".lua"), or a policy function. Returns the policy
-- function, or nil, err.
function M.load(spec)
  if spec == nil then spec = M.default end
  if type(spec) == "function" then return spec end
  if type(spec) ~= "string" then
    error("partition.load: expected a policy name or path, got " .. type(spec), 2)
  end
  if spec:find("/", 1, true) or spec:sub(-4) == ".lua" then return load_file(spec) end
  if not is_builtin[spec] then
    return nil, ("unknown partitioning policy '%s' (built in: %s; or give the path to a .lua file)")
      :format(spec, table.concat(M.builtin, ", "))
  end
  local fn = require("exo.partition." .. spec).partition
  names[fn] = spec
  return fn
end

--- partition.name_of(policy) -> what the policy is called in a plan id.
function M.name_of(policy)
  return names[policy] or "unnamed"
end

local function num(v) return type(v) == "number" and ("%.6g"):format(v) or "-" end

--- partition.view_id(topology, model_name, policy) -> the id of the plan a
--- node with this view computes: a hash of the policy, the model as peers
--- are told of it, and every node's id with the capabilities a policy reads
--- (memory and flops, rounded to 6 digits: they cross JSON). Two nodes with
--- one view compute one id and, policies being pure, one plan.
function M.view_id(topology, model_name, policy)
  local ids = {}
  for id in pairs(topology.nodes) do ids[#ids + 1] = id end
  table.sort(ids)
  local parts = { M.name_of(policy), tostring(model_name) }
  for _, id in ipairs(ids) do
    local c = topology.nodes[id].capabilities or {}
    local f = type(c.flops) == "table" and c.flops or {}
    parts[#parts + 1] = ("%s|%s|%s|%s|%s"):format(id, num(c.memory), num(f.fp32), num(f.fp16), num(f.int8))
  end
  return M.hash(table.concat(parts, "\n"))
end

local function check_inputs(topology, model)
  if type(topology) ~= "table" or type(topology.nodes) ~= "table" then
    return nil, "topology.nodes must be a table of nodes by id"
  end
  if type(model) ~= "table" or not is_int(model.n_layers) or model.n_layers < 1 then
    return nil, ("model.n_layers must be a positive integer, got %s")
      :format(type(model) == "table" and tostring(model.n_layers) or type(model))
  end
  return true
end

-- Checks that plan is a non-empty ordered list of { node_id, start_layer,
-- end_layer } covering [0, model.n_layers) exactly, in order, each range
-- non-empty, each node known to the topology and used once. Returns true, or
-- nil, err naming the first problem.
function M.validate(plan, topology, model)
  local ok, err = check_inputs(topology, model)
  if not ok then return nil, err end
  local n_layers = model.n_layers
  if type(plan) ~= "table" then
    return nil, "the plan must be a list of { node_id, start_layer, end_layer }, got " .. type(plan)
  end
  if #plan == 0 then return nil, "the plan is empty" end
  for k in pairs(plan) do
    if not (is_int(k) and k >= 1 and k <= #plan) then
      return nil, ("the plan must be a list, but has the key %s"):format(tostring(k))
    end
  end
  local seen, previous_end = {}, 0
  for i, entry in ipairs(plan) do
    local where = "plan entry " .. i
    if type(entry) ~= "table" then
      return nil, ("%s must be a table { node_id, start_layer, end_layer }, got %s"):format(where, type(entry))
    end
    local id, first, stop = entry.node_id, entry.start_layer, entry.end_layer
    if type(id) ~= "string" then
      return nil, ("%s: node_id must be a string, got %s"):format(where, type(id))
    end
    if topology.nodes[id] == nil then return nil, ("%s: unknown node '%s'"):format(where, id) end
    if seen[id] then
      return nil, ("%s: node '%s' appears twice (also in entry %d)"):format(where, id, seen[id])
    end
    seen[id] = i
    if not is_int(first) or not is_int(stop) then
      return nil, ("%s (node '%s'): start_layer and end_layer must be integers, got %s and %s")
        :format(where, id, tostring(first), tostring(stop))
    end
    if first >= stop then
      return nil, ("%s (node '%s') has an empty range [%d, %d)"):format(where, id, first, stop)
    end
    if i == 1 and first ~= 0 then
      return nil, ("%s starts at layer %d, but the plan must start at layer 0"):format(where, first)
    elseif first ~= previous_end then
      return nil, ("%s starts at layer %d but the previous one ended at %d (%s)")
        :format(where, first, previous_end, first > previous_end and "a gap" or "an overlap")
    end
    if stop > n_layers then
      return nil, ("%s ends at layer %d but the model has only %d layers"):format(where, stop, n_layers)
    end
    previous_end = stop
  end
  if previous_end ~= n_layers then
    return nil, ("the plan ends at layer %d but the model has %d layers"):format(previous_end, n_layers)
  end
  return true
end

-- Runs policy on (topology, model) and validates what it returns. A policy may
-- return nil, err to refuse (the model does not fit, say); one that raises is
-- caught. Returns the plan, or nil, err.
function M.plan(policy, topology, model)
  if type(policy) ~= "function" then
    error("partition.plan: policy must be a function, got " .. type(policy), 2)
  end
  local ok, err = check_inputs(topology, model)
  if not ok then return nil, err end
  local done, plan, refusal = pcall(policy, topology, model)
  if not done then return nil, "the partitioning policy raised an error: " .. tostring(plan) end
  if plan == nil then
    return nil, "the partitioning policy gave no plan" .. (refusal ~= nil and (": " .. tostring(refusal)) or "")
  end
  local valid, verr = M.validate(plan, topology, model)
  if not valid then return nil, "the partitioning policy returned an invalid plan: " .. verr end
  return plan
end

return M
