-- test_discovery_registry.lua: choosing discovery modules, merging their finds, keeping removed
-- peers out, and the Tailscale module's pure parts (id escaping, attributes, times).
local discovery = require "exo.discovery"
local tailscale = require "exo.discovery.tailscale"

-- ---- --discovery-module -------------------------------------------------------------
local names = assert(discovery.parse("udp"))
assert(#names == 1 and names[1] == "udp")
names = assert(discovery.parse("udp, tailscale,udp"))
assert(#names == 2 and names[1] == "udp" and names[2] == "tailscale", "duplicates dropped, order kept")
local ok, err = discovery.parse("bonjour")
assert(not ok and err:find("bonjour is not available", 1, true) and err:find("tailscale", 1, true), err)
ok, err = discovery.parse("none,udp")
assert(not ok and err:find("cannot be combined", 1, true), err)
ok, err = discovery.parse(" , ")
assert(not ok and err:find("needs a module name", 1, true), err)
assert(not pcall(discovery.parse, nil), "a non-string is misuse")

-- ---- the union the cluster sees ------------------------------------------------------
local seen
local feed = discovery.merger({ "manual", "udp" }, function(u) seen = u end)
feed("udp", { x = { id = "x", address = "10.0.0.9", port = 1 }, y = { id = "y", address = "10.0.0.8", port = 2 } })
assert(seen.x.address == "10.0.0.9" and seen.y)
feed("manual", { x = { id = "x", address = "192.168.1.9", port = 3 } })
assert(seen.x.address == "192.168.1.9", "the module named first wins an id both find")
feed("udp", {})
assert(seen.x and seen.x.port == 3 and not seen.y, "udp dropping y leaves manual's x")
feed("manual", nil)
assert(next(seen) == nil)

-- ---- stats of one module or several ----------------------------------------------------
assert(discovery.group({}) == nil)
local function fake(name, n)
  return { stats = function() return { module = name, peers = n } end, stop = function() end }
end
local g = discovery.group { fake("udp", 2) }
assert(g:stats().module == "udp" and g:stats().peers == 2, "one module: its own stats, as before")
g = discovery.group { fake("udp", 2), { stop = function() end }, fake("tailscale", 1) }
local s = g:stats()
assert(s.module == "tailscale,udp" and s.udp.peers == 2 and s.tailscale.peers == 1)
assert(discovery.group({ { stop = function() end } }):stats() == nil, "manual alone has no counters")

-- ---- keep_out: a peer the file stops listing is disconnected and not dialed ---------------
local closed, lost = {}, {}
local cl = { known = {}, peers = {}, handlers = {} }
cl.wire = { close_conn = function(_, conn, why) closed[#closed + 1] = { conn, why } end }
function cl:lose(id, why)
  self.peers[id] = nil
  lost[#lost + 1] = id .. ": " .. why
  for _, fn in ipairs(self.handlers) do fn() end
end
function cl:on_change(fn) self.handlers[#self.handlers + 1] = fn end
local keep = discovery.keep_out(cl)
keep { a = {}, c = {} }
cl.peers.c = { conn = 7 }
keep { a = {} }
assert(#closed == 1 and closed[1][1] == 7 and closed[1][2] == "removed from the peers file")
assert(lost[1] == "c: removed from the peers file" and cl.peers.c == nil)
-- c comes back by gossip: forgotten, and dropped again at its hello.
cl.known.c = { source = "gossip" }
cl.peers.c = { conn = 8 }
for _, fn in ipairs(cl.handlers) do fn() end
assert(cl.known.c == nil and cl.peers.c == nil and closed[2][1] == 8)
-- Listed again: left alone.
keep { a = {}, c = {} }
cl.peers.c = { conn = 9 }
for _, fn in ipairs(cl.handlers) do fn() end
assert(cl.peers.c and #closed == 2)
-- A node the file never listed (found through gossip) is not kept out.
cl.peers.g = { conn = 10 }
keep { a = {}, c = {} }
assert(cl.peers.g and #closed == 2)

-- ---- Tailscale: ids in the attribute alphabet --------------------------------------------
for _, id in ipairs { "a", "node-1", "x_y", "host:5", "a.b", "_-:_", ("z"):rep(50) } do
  local enc = tailscale.encode_id(id)
  assert(enc and not enc:find("[^%w_.]") and #enc <= 50, id)
  assert(tailscale.decode_id(enc) == id, id)
end
assert(tailscale.encode_id(("z"):rep(51)) == nil and tailscale.encode_id(("-"):rep(26)) == nil, "over 50 once escaped")
for _, bad in ipairs { "a_", "a_x", "a-b", "", ("a"):rep(51), 5 } do
  assert(tailscale.decode_id(bad) == nil, tostring(bad))
end

local attrs = assert(tailscale.attributes("n-1", 5000, { memory = 16384.9, chip = "Apple M2 (8)",
  flops = { fp32 = 3.55, int8 = 1e12 } }))
assert(attrs["custom:exo_node_id"] == "n_d1" and attrs["custom:exo_port"] == 5000)
assert(attrs["custom:exo_memory"] == 16384 and attrs["custom:exo_chip"] == "Apple_M2__8_")
assert(attrs["custom:exo_gflops_fp32"] == 3550 and attrs["custom:exo_gflops_int8"] == nil, "implausible flops left out")
for k, v in pairs(attrs) do
  assert(#k <= 50 and k:match("^custom:[%w_:]+$"), k)
  assert(type(v) ~= "string" or (#v <= 50 and not v:find("[^%w_.]")), v)
  assert(type(v) ~= "number" or v % 1 == 0, k)
end
local caps = tailscale.capabilities(attrs)
assert(caps.memory == 16384 and caps.flops.fp32 == 3.55 and caps.chip == "Apple_M2__8_")
caps = tailscale.capabilities { ["custom:exo_memory"] = -1, ["custom:exo_gflops_fp16"] = 1.5 }
assert(caps.memory == nil and caps.flops == nil, "only sane values")
assert(tailscale.attributes(("q"):rep(60), 1, {}) == nil)

assert(tailscale.parse_time("1970-01-01T00:00:00Z") == 0)
assert(tailscale.parse_time("2022-12-01T05:23:30Z") == 1669872210)
assert(tailscale.parse_time("2024-02-29T23:59:59Z") == 1709251199)
assert(tailscale.parse_time("yesterday") == nil and tailscale.parse_time(nil) == nil)

print("ok")
