-- test_cluster_records.lua: what a peer says of itself is bounded before use.
--
-- A hello's or a gossip record's capabilities: JSON null counts as absent
-- (cjson decodes it to a sentinel that is not nil, which used to be taken as
-- a value), wrong types are dropped, numbers must be finite and plausible;
-- a hello's port must be a TCP port.
local json = require "exo.json"
local cluster = require "exo.cluster"

local function decode(s) return json.decode(s) end

local c = cluster.sane_capabilities(decode('{"memory": null, "chip": null, "flops": {"fp32": null, "fp16": 2.5}}'))
assert(c.memory == nil and c.chip == nil, "null fields must count as absent")
assert(c.flops and c.flops.fp32 == nil and c.flops.fp16 == 2.5)

c = cluster.sane_capabilities(decode('{"memory": 16000, "chip": "Apple M2", "flops": {"fp32": 3.5, "fp16": 7, "int8": 14}}'))
assert(c.memory == 16000 and c.chip == "Apple M2" and c.flops.fp32 == 3.5 and c.flops.int8 == 14)

for _, bad in ipairs { '{"memory": -5}', '{"memory": 0}', '{"memory": 1e30}', '{"memory": "lots"}',
  '{"memory": [1]}' } do
  assert(cluster.sane_capabilities(decode(bad)).memory == nil, bad)
end
assert(cluster.sane_capabilities(decode('{"flops": {"fp32": 1e300}}')).flops == nil)
assert(cluster.sane_capabilities(decode('{"flops": "fast"}')).flops == nil)
assert(cluster.sane_capabilities(decode('{"chip": "' .. ("x"):rep(200) .. '"}')).chip == nil)
assert(next(cluster.sane_capabilities(decode('null'))) == nil)
assert(next(cluster.sane_capabilities(decode('"x"'))) == nil)

local function hello(s) return cluster.valid_hello(decode(s)) end
assert(hello('{"node_id": "a", "instance": "x", "port": 5000}'))
assert(not hello('{"node_id": "a", "instance": "x", "port": null}'))
assert(not hello('{"node_id": "a", "instance": "x", "port": 70000}'))
assert(not hello('{"node_id": "a", "instance": "x", "port": 50.5}'))
assert(not hello('{"node_id": null, "instance": "x", "port": 5000}'))
assert(not hello('{"node_id": "a", "instance": null, "port": 5000}'))
assert(not hello('{"node_id": "", "instance": "x", "port": 5000}'))
-- A peers file's capabilities win where it gives them; the peer's hello fills the rest (a file
-- without device_capabilities left peers "memory unknown" and the model unsplit).
local merged = cluster.merge_capabilities({ memory = 16000, chip = "reported", flops = { fp32 = 1, fp16 = 2 } },
  { chip = "from the file", flops = { fp16 = 9 } })
assert(merged.memory == 16000 and merged.chip == "from the file" and merged.flops.fp32 == 1 and merged.flops.fp16 == 9)
assert(cluster.merge_capabilities({ memory = 8 }, {}).memory == 8)
print("cluster records ok")
