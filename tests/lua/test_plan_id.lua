-- test_plan_id.lua: plan ids (partition.view_id), what a node compares before serving a plan.
--
-- Two nodes with one view must compute one id whatever order they learned the
-- nodes in and however JSON rounded the capabilities on the way; any change a
-- policy could see (a node more or less, its memory or flops, the model, the
-- policy, a policy file's contents) must change it.
local partition = require "exo.partition"
local json = require "exo.json"

local checks, failures = 0, {}
local function check(name, fn)
  checks = checks + 1
  local ok, err = pcall(fn)
  if not ok then failures[#failures + 1] = name .. ": " .. tostring(err) end
end

local function topology(rows)
  local nodes = {}
  for _, r in ipairs(rows) do
    nodes[r[1]] = { id = r[1], address = "127.0.0.1", port = 1,
      capabilities = { memory = r[2], chip = "c", flops = { fp32 = r[3], fp16 = r[3], int8 = 2 * r[3] } } }
  end
  return { nodes = nodes }
end

local policy = partition.load()
local rows = { { "a", 4000, 1.2345678901234567 }, { "b", 2000, 0.5 }, { "c", 1000, 3 } }
local base = partition.view_id(topology(rows), "m.gguf", policy)

check("FNV-1a", function()
  assert(partition.hash("") == "cbf29ce484222325")
  assert(partition.hash("a") == "af63dc4c8601ec8c")
end)

check("an id is 16 hex digits", function() assert(base:match("^%x+$") and #base == 16, base) end)

check("the order nodes were learned in does not matter", function()
  local reversed = { rows[3], rows[2], rows[1] }
  assert(partition.view_id(topology(reversed), "m.gguf", policy) == base)
end)

check("capabilities that crossed JSON give the same id", function()
  local t = json.decode(json.encode(topology(rows)))
  assert(partition.view_id(t, "m.gguf", policy) == base)
end)

check("fields no policy reads do not count", function()
  local t = topology(rows)
  t.nodes.a.capabilities.chip = "another"
  t.nodes.a.rtt_us = 1234
  assert(partition.view_id(t, "m.gguf", policy) == base)
end)

check("a node more or less changes the id", function()
  local more = { rows[1], rows[2], rows[3], { "d", 1000, 1 } }
  assert(partition.view_id(topology(more), "m.gguf", policy) ~= base)
  assert(partition.view_id(topology { rows[1], rows[3] }, "m.gguf", policy) ~= base)
end)

check("memory and flops change the id", function()
  local t = topology(rows)
  t.nodes.b.capabilities.memory = 2001
  assert(partition.view_id(t, "m.gguf", policy) ~= base)
  t = topology(rows)
  t.nodes.c.capabilities.flops.fp16 = 4
  assert(partition.view_id(t, "m.gguf", policy) ~= base)
end)

check("the model and the policy change the id", function()
  assert(partition.view_id(topology(rows), "other.gguf", policy) ~= base)
  local flops = partition.load("flops_weighted")
  assert(partition.name_of(flops) == "flops_weighted")
  assert(partition.view_id(topology(rows), "m.gguf", flops) ~= base)
end)

check("a policy file goes by its contents", function()
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local function write(name, text)
    local f = assert(io.open(dir .. "/" .. name, "w"))
    f:write(text)
    f:close()
    return assert(partition.load(dir .. "/" .. name))
  end
  local one = "return function(t, m) return { { node_id = 'a', start_layer = 0, end_layer = m.n_layers } } end\n"
  local p1, p2 = write("one.lua", one), write("two.lua", one)
  local p3 = write("three.lua", one .. "-- changed\n")
  assert(partition.name_of(p1):match("^file:%x+$"))
  assert(partition.name_of(p1) == partition.name_of(p2))
  assert(partition.name_of(p1) ~= partition.name_of(p3))
  os.execute("rm -rf " .. dir)
end)

if #failures > 0 then
  io.stderr:write(#failures .. " of " .. checks .. " plan id checks failed:\n" .. table.concat(failures, "\n") .. "\n")
  return 1
end
print("plan id ok (" .. checks .. " checks)")
return 0
