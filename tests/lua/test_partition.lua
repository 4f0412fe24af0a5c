-- test_partition.lua: partitioning policies and the checks around them.
--
-- The default policy against plans worked out by hand (exo's Python arithmetic,
-- rounding included), the edge cases (one node, more nodes than layers, nodes
-- without memory), determinism whatever the order nodes were added in,
-- flops_weighted, the example policy in examples/, user policies loaded from a
-- file, and bad plans and bad files refused with messages that say why.
local partition = require "exo.partition"
local ring = require "exo.partition.ring_memory_weighted"
local flops_weighted = require "exo.partition.flops_weighted"

local checks, failures = 0, {}
local function check(name, fn)
  checks = checks + 1
  local ok, err = pcall(fn)
  if not ok then failures[#failures + 1] = name .. ": " .. tostring(err) end
end

local GB = 1024 -- capabilities.memory is in MB
local MB = 1024 * 1024

-- A topology from { id, memory MB, fp16, fp32 } rows, added in the order given.
local function topology(rows)
  local nodes = {}
  for _, r in ipairs(rows) do
    local flops = (r[3] or r[4]) and { fp16 = r[3], fp32 = r[4] } or nil
    nodes[r[1]] = { id = r[1], address = "10.0.0.1", port = 5678,
      capabilities = { model = "test", chip = "test", memory = r[2], flops = flops } }
  end
  return { nodes = nodes }
end

local function show(plan)
  local out = {}
  for _, e in ipairs(plan) do out[#out + 1] = ("%s[%d,%d)"):format(e.node_id, e.start_layer, e.end_layer) end
  return table.concat(out, " ")
end

local function run(spec, topo, n_layers, layer_bytes)
  local policy = assert(partition.load(spec))
  return assert(partition.plan(policy, topo, { id = "test", n_layers = n_layers, layer_bytes = layer_bytes }))
end

local function expect(plan, want)
  assert(show(plan) == want, "got " .. show(plan) .. ", want " .. want)
end

-- Memories 4, 3, 2, 1 GB (total 10), 32 layers. Most memory first, so bravo,
-- delta, alpha, charlie. Boundaries: 0.4, 0.4 + 0.3 = 0.7, 0.9, 1.0.
--   bravo   [0.0, 0.4): floor(0 * 32) = 0,     floor(0.4 * 32) = floor(12.8) = 12
--   delta   [0.4, 0.7): floor(12.8) = 12,      floor(0.7 * 32) = floor(22.4) = 22
--   alpha   [0.7, 0.9): floor(22.4) = 22,      floor(0.9 * 32) = floor(28.8) = 28
--   charlie [0.9, 1.0): floor(28.8) = 28,      the last one ends at 32
local four = topology({ { "alpha", 2 * GB }, { "bravo", 4 * GB }, { "charlie", 1 * GB }, { "delta", 3 * GB } })
local FOUR = "bravo[0,12) delta[12,22) alpha[22,28) charlie[28,32)"

check("memory weighted, 4/3/2/1 GB over 32 layers", function()
  expect(run("ring_memory_weighted", four, 32), FOUR)
  expect(run(nil, four, 32), FOUR) -- the default
end)

-- Equal memory: node id descending (c, b, a). Boundaries round to 5 decimals:
-- 1/3 -> 0.33333, 0.33333 + 1/3 -> 0.66666, so floor(0.33333 * 30) = floor(9.9999)
-- = 9 and floor(0.66666 * 30) = 19: exo gives 9, 10 and 11 layers, not 10 each.
check("ties broken by node id, descending", function()
  expect(run(nil, topology({ { "a", 8 * GB }, { "b", 8 * GB }, { "c", 8 * GB } }), 30), "c[0,9) b[9,19) a[19,30)")
end)

check("one node holds every layer", function()
  expect(run(nil, topology({ { "solo", 16 * GB } }), 30), "solo[0,30)")
end)

-- Five equal nodes, 2 layers: boundaries 0.2 .. 1.0, so e, d, b get floor(x * 2)
-- ranges that are empty and are left out; c gets [floor(0.8), floor(1.2)) = [0, 1)
-- and a, the last, [floor(1.6), 2) = [1, 2).
check("more nodes than layers", function()
  local five = topology({ { "a", GB }, { "b", GB }, { "c", GB }, { "d", GB }, { "e", GB } })
  expect(run(nil, five, 2), "c[0,1) a[1,2)")
  expect(run(nil, five, 1), "a[0,1)")
end)

-- b has 0 MB, d reports no memory and e no capabilities: all weigh 0, sort last,
-- and get no layers; the boundaries reach 1.0 with a.
check("nodes without memory get no layers", function()
  local topo = topology({ { "a", 4 * GB }, { "b", 0 }, { "c", 4 * GB }, { "d", nil } })
  topo.nodes.e = { id = "e", address = "10.0.0.5", port = 5678 }
  expect(run(nil, topo, 32), "c[0,16) a[16,32)")
end)

check("all memories zero: an equal split", function()
  expect(run(nil, topology({ { "a", 0 }, { "b", 0 }, { "c", 0 } }), 30), "c[0,9) b[9,19) a[19,30)")
end)

-- 41/64 = 0.640625 is a tie at 5 decimals. Python's round() takes it to even,
-- 0.64062, and 0.64062 * 64 = 40.99968, so big gets 40 layers; rounding the tie
-- away from zero (as "%.5f" in LuaJIT does) would give it 41.
check("rounding ties go to even, as in Python", function()
  expect(run(nil, topology({ { "big", 41 }, { "small", 23 } }), 64), "big[0,40) small[40,64)")
  assert(ring.round5(0.015625) == 0.01562)
  assert(ring.round5(0.640625) == 0.64062)
  assert(ring.round5(0.984375) == 0.98438)
  assert(ring.round5(0.7000049999999999) == 0.7) -- just below a tie
  assert(ring.round5(1 / 3) == 0.33333 and ring.round5(2 / 3) == 0.66667)
end)

check("the same plan whatever order nodes were added in", function()
  local rows = {}
  for i = 1, 16 do rows[i] = { ("node-%02d"):format(i), (i % 4 + 1) * GB, i % 3 + 1 } end
  local want = show(run(nil, topology(rows), 61))
  local seed = 12345
  for _ = 1, 20 do
    local shuffled = {}
    for i, r in ipairs(rows) do shuffled[i] = r end
    for i = #shuffled, 2, -1 do -- Fisher-Yates with a fixed linear congruential generator
      seed = (seed * 1103515245 + 12345) % 2147483648
      local j = seed % i + 1
      shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    end
    -- Nodes added and removed again change the hash table's layout, not the plan.
    local topo = topology(shuffled)
    for k = 1, seed % 7 do topo.nodes["gone-" .. k] = { id = "gone" } end
    for k = 1, seed % 7 do topo.nodes["gone-" .. k] = nil end
    expect(run(nil, topo, 61), want)
    expect(run("flops_weighted", topo, 61), show(run("flops_weighted", topology(rows), 61)))
  end
end)

-- gpu 100 TFLOPS, cpu 20: 100/120 = 0.83333, floor(0.83333 * 30) = 24.
check("flops_weighted", function()
  local topo = topology({ { "cpu", 64 * GB, 20, 10 }, { "gpu", 8 * GB, 100, 50 } })
  assert(flops_weighted.metric(topo) == "fp16")
  expect(run("flops_weighted", topo, 30), "gpu[0,24) cpu[24,30)")
  -- cpu lacks fp16: both use fp32, 50 against 10, the same shares.
  topo.nodes.cpu.capabilities.flops.fp16 = nil
  assert(flops_weighted.metric(topo) == "fp32")
  expect(run("flops_weighted", topo, 30), "gpu[0,24) cpu[24,30)")
  -- cpu reports no flops at all: memory decides, as the default does.
  topo.nodes.cpu.capabilities.flops = nil
  assert(flops_weighted.metric(topo) == nil)
  expect(run("flops_weighted", topo, 30), "cpu[0,26) gpu[26,30)")
end)

-- gpu (100 TFLOPS, 8000 MB) holds floor(8000 * 0.8 / 500) = 12 layers of 500 MiB,
-- laptop (10 TFLOPS, 16000 MB) floor(25.6) = 25 and takes the other 20; phone none.
check("the example policy in examples/", function()
  local path = (os.getenv("EXO_SOURCE_DIR") or ".") .. "/examples/partition_fastest_first.lua"
  local topo = topology({ { "phone", 4000, 2 }, { "laptop", 16000, 10 }, { "gpu", 8000, 100 } })
  expect(run(path, topo, 32, 500 * MB), "gpu[0,12) laptop[12,32)")
  expect(run(path, topo, 10, 500 * MB), "gpu[0,10)")
  -- Layer size unknown, or the model too big: the memory-weighted split.
  local by_memory = "laptop[0,18) gpu[18,27) phone[27,32)"
  expect(run(nil, topo, 32), by_memory)
  expect(run(path, topo, 32), by_memory)
  expect(run(path, topo, 32, 2000 * MB), by_memory)
end)

local function write_temp(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

check("a policy from a user's file", function()
  -- Every layer to the node whose id sorts first.
  local path = write_temp([[
    return function(topology, model)
      local ids = {}
      for id in pairs(topology.nodes) do ids[#ids + 1] = id end
      table.sort(ids)
      return { { node_id = ids[1], start_layer = 0, end_layer = model.n_layers } }
    end
  ]])
  expect(run(path, four, 32), "alpha[0,32)")
  os.remove(path)
  -- The table form, reusing a built-in policy.
  path = write_temp([[return { partition = require("exo.partition.ring_memory_weighted").partition }]])
  expect(run(path, four, 32), FOUR)
  os.remove(path)
end)

-- A policy that returns `plan` must be refused with a message matching `pattern`.
local function refused(plan, pattern, topo)
  local got, err = partition.plan(function() return plan end, topo or four, { id = "test", n_layers = 32 })
  assert(got == nil, "accepted " .. tostring(plan))
  assert(err:find(pattern, 1, true), "message '" .. err .. "' lacks '" .. pattern .. "'")
end

local function entry(id, s, e) return { node_id = id, start_layer = s, end_layer = e } end

check("invalid plans are refused", function()
  refused({ entry("alpha", 0, 10), entry("bravo", 11, 32) },
    "plan entry 2 starts at layer 11 but the previous one ended at 10 (a gap)")
  refused({ entry("alpha", 0, 10), entry("bravo", 9, 32) },
    "plan entry 2 starts at layer 9 but the previous one ended at 10 (an overlap)")
  refused({ entry("alpha", 0, 10), entry("x", 10, 32) }, "plan entry 2: unknown node 'x'")
  refused({ entry("alpha", 0, 10), entry("bravo", 10, 10), entry("delta", 10, 32) },
    "plan entry 2 (node 'bravo') has an empty range [10, 10)")
  refused({ entry("alpha", 0, 10), entry("bravo", 10, 31) }, "the plan ends at layer 31 but the model has 32 layers")
  refused({ entry("alpha", 0, 10), entry("bravo", 10, 33) }, "plan entry 2 ends at layer 33 but the model has only 32")
  refused({ entry("alpha", 1, 32) }, "plan entry 1 starts at layer 1, but the plan must start at layer 0")
  refused({ entry("alpha", 0, 10), entry("bravo", 10, 20), entry("alpha", 20, 32) },
    "plan entry 3: node 'alpha' appears twice (also in entry 1)")
  refused({ entry("alpha", 0, 10.5), entry("bravo", 10.5, 32) }, "start_layer and end_layer must be integers")
  refused({ { start_layer = 0, end_layer = 32 } }, "plan entry 1: node_id must be a string")
  refused({ "alpha" }, "plan entry 1 must be a table")
  refused({ entry("alpha", 0, 32), extra = 1 }, "the plan must be a list")
  refused({}, "the plan is empty")
  refused("alpha", "the plan must be a list of { node_id, start_layer, end_layer }, got string")
  refused(42, "got number")
  local _, err = partition.plan(function() error("no GPU here") end, four, { n_layers = 32 })
  assert(err:find("raised an error", 1, true) and err:find("no GPU here", 1, true), err)
  _, err = partition.plan(function() return nil, "the model does not fit" end, four, { n_layers = 32 })
  assert(err == "the partitioning policy gave no plan: the model does not fit", err)
  _, err = partition.plan(ring.partition, four, { n_layers = 0 })
  assert(err:find("model.n_layers must be a positive integer", 1, true), err)
  _, err = partition.plan(ring.partition, { nodes = {} }, { n_layers = 32 })
  assert(err:find("the topology has no nodes", 1, true), err)
  assert(partition.validate({ entry("alpha", 0, 32) }, four, { n_layers = 32 }) == true)
end)

check("bad policy files and names are refused", function()
  local missing = os.tmpname() .. "-missing.lua"
  local p, err = partition.load(missing)
  assert(p == nil and err:find(missing, 1, true) and err:find("cannot", 1, true), err)

  local path = write_temp("return function(topology, model) return {\n")
  p, err = partition.load(path)
  assert(p == nil and err:find("cannot load partitioning policy '" .. path .. "'", 1, true), err)
  os.remove(path)

  path = write_temp("return 42\n")
  p, err = partition.load(path)
  assert(p == nil and err:find(path, 1, true) and err:find("but returned number", 1, true), err)
  os.remove(path)

  path = write_temp("return { description = 'no function' }\n")
  p, err = partition.load(path)
  assert(p == nil and err:find("a table without one", 1, true), err)
  os.remove(path)

  path = write_temp("error('broken on purpose')\n")
  p, err = partition.load(path)
  assert(p == nil and err:find(path, 1, true) and err:find("broken on purpose", 1, true), err)
  os.remove(path)

  p, err = partition.load("fastest")
  assert(p == nil and err:find("unknown partitioning policy 'fastest'", 1, true)
    and err:find("ring_memory_weighted", 1, true), err)
  assert(type(partition.load("flops_weighted")) == "function")
  assert(not pcall(partition.load, 42), "a number is misuse and raises")
end)

if #failures > 0 then
  io.stderr:write(#failures .. " of " .. checks .. " partition checks failed:\n" .. table.concat(failures, "\n") .. "\n")
  return 1
end
print("partition ok (" .. checks .. " checks)")
return 0
