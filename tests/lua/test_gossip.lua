-- test_gossip.lua: what a topology message may make this node dial (issue 12).
--
-- Only unicast IP literals with a TCP port; a loopback or link-local address
-- only from a peer connected over loopback (or, for link-local, the link);
-- at most 64 new nodes per message and 256 known overall (a gossiped node we
-- keep failing to reach makes room); refusals counted in topology() and
-- logged once per peer.
local cluster = require "exo.cluster"

local scope = cluster.address_scope
for _, a in ipairs { "192.168.1.7", "10.0.0.1", "8.8.8.8", "1.2.3.4", "2001:db8::1", "::ffff:10.1.2.3",
  "1:2:3:4:5:6:7:8", "2001:db8::192.168.0.1", "fd00::5" } do
  assert(scope(a) == "global", a)
end
for _, a in ipairs { "127.0.0.1", "127.5.5.5", "::1", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1" } do
  assert(scope(a) == "loopback", a)
end
for _, a in ipairs { "169.254.1.1", "fe80::1", "fe80::1%eth0", "febf::9" } do
  assert(scope(a) == "link-local", a)
end
for _, a in ipairs { "0.0.0.0", "0.1.2.3", "::", "::0", "255.255.255.255", "240.0.0.1", "224.0.0.1", "239.1.1.1",
  "ff02::1", "ff05::2", "localhost", "example.com", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", "1.2.3.4:80",
  "::ffff:0.0.0.0", "::ffff:255.255.255.255", "::ffff:224.0.0.9", "1:2:3:4:5:6:7:8:9", "1::2::3", "1:2:3:4:5:6:7",
  "12345::1", "10.0.0.1%eth0", "2001:db8::1%eth0", "", "::127.0.0.1", "[::1]", " 1.2.3.4", ("1"):rep(80) } do
  assert(scope(a) == nil, a)
end
assert(scope(nil) == nil and scope(5) == nil)

local refusal = cluster.gossip_refusal
assert(refusal("10.0.0.2", 5000, "global") == nil)
for _, port in ipairs { 0, -1, 65536, 1.5, "80" } do assert(refusal("10.0.0.2", port, "global"), tostring(port)) end
assert(refusal("127.0.0.1", 5000, "global"):match("loopback"))
assert(refusal("127.0.0.1", 5000, "link-local"))
assert(refusal("127.0.0.1", 5000, nil))
assert(refusal("127.0.0.1", 5000, "loopback") == nil)
assert(refusal("fe80::2", 5000, "global"):match("link%-local"))
assert(refusal("169.254.0.9", 5000, "link-local") == nil)
assert(refusal("fe80::2", 5000, "loopback") == nil)
assert(refusal("0.0.0.0", 5000, "loopback"))

-- A cluster that is never started: dials are recorded, not made.
local logs, dialed = {}, {}
local c = cluster.new { node_id = "me", capabilities = {}, log = function(fmt, ...) logs[#logs + 1] = fmt:format(...) end }
local next_conn = 0
c.wire = { connect = function(_, address, port)
  dialed[#dialed + 1] = address .. ":" .. port
  next_conn = next_conn + 1
  return next_conn
end }
c.peers.lan = { id = "lan", address = "192.168.1.5", remote = "192.168.1.5", port = 9000 }
c.peers.lo = { id = "lo", address = "127.0.0.1", remote = "127.0.0.1", port = 9001 }
c.peers.ll = { id = "ll", address = "fe80::1", remote = "fe80::1", port = 9002 }

local function node(id, address, port) return { id = id, address = address, port = port or 7000 } end
local function count_known()
  local n = 0
  for _ in pairs(c.known) do n = n + 1 end
  return n
end

-- A remote peer cannot point us at our own localhost, nor at non-unicast addresses.
c:on_topology({ t = "topology", nodes = { node("a", "127.0.0.1", 22), node("b", "10.0.0.9"), node("c", "fe80::2"),
  node("d", "0.0.0.0"), node("e", "224.0.0.1"), node("f", "255.255.255.255"), node("g", "10.0.0.10", 0),
  node("h", "some.host"), node("lan", "127.0.0.1"), node("me", "127.0.0.1"), "junk" } }, "lan")
assert(c.known.b and c.known.b.address == "10.0.0.9")
for _, id in ipairs { "a", "c", "d", "e", "f", "g", "h" } do assert(not c.known[id], id) end
assert(c:topology().gossip_refused == 8, c:topology().gossip_refused) -- a, c..h, and "junk"
assert(#logs == 1 and logs[1]:match("from lan") and logs[1]:match("127%.0%.0%.1:22"), logs[1])
-- Further refusals from that peer are counted, not logged.
c:on_topology({ t = "topology", nodes = { node("a2", "127.0.0.2") } }, "lan")
assert(c:topology().gossip_refused == 9 and #logs == 1)
-- A peer on this host may name loopback; one on the link, link-local but not loopback.
c:on_topology({ t = "topology", nodes = { node("a", "127.0.0.1", 7001), node("c2", "fe80::3") } }, "lo")
assert(c.known.a and c.known.c2)
c:on_topology({ t = "topology", nodes = { node("c", "fe80::2"), node("a3", "127.0.0.3") } }, "ll")
assert(c.known.c and not c.known.a3)
assert(c:topology().gossip_refused == 10 and #logs == 2 and logs[2]:match("from ll"))
-- A record that only repeats what we know refreshes it, and is no new node.
local before = count_known()
c:on_topology({ t = "topology", nodes = { node("b", "10.0.0.9") } }, "lan")
assert(count_known() == before and c:topology().gossip_refused == 10)
-- No dial went anywhere refused.
for _, d in ipairs(dialed) do
  assert(d ~= "127.0.0.1:22" and not d:match("^0%.") and not d:match("^224") and not d:match("^255"), d)
end

-- At most 64 new nodes from one message.
local many = {}
for i = 1, 100 do many[i] = node("m" .. i, "10.1.0." .. i) end
before = count_known()
c:on_topology({ t = "topology", nodes = many }, "lan")
assert(count_known() == before + cluster.GOSSIP_MAX_NEW, count_known())
assert(c:topology().gossip_refused == 10 + 100 - cluster.GOSSIP_MAX_NEW)

-- At most 256 known nodes overall.
for m = 1, 5 do
  local batch = {}
  for i = 1, 60 do batch[i] = node(("n%d-%d"):format(m, i), ("10.2.%d.%d"):format(m, i)) end
  c:on_topology({ t = "topology", nodes = batch }, "lan")
end
assert(count_known() == cluster.MAX_KNOWN, count_known())
local refused = c:topology().gossip_refused
c:on_topology({ t = "topology", nodes = { node("late", "10.3.0.1") } }, "lan")
assert(not c.known.late and c:topology().gossip_refused == refused + 1)
-- A gossiped node we keep failing to reach makes room.
c.known.m1.backoff = 10
c:on_topology({ t = "topology", nodes = { node("late", "10.3.0.1") } }, "lan")
assert(c.known.late and not c.known.m1 and count_known() == cluster.MAX_KNOWN)

-- What we tell each peer: only the nodes it would take from us.
local told = {}
c.send = function(_, to, _, msg) told[to] = msg end
c.advertise, c.port = "192.168.1.2", 9100
c:gossip()
local function ids(msg)
  local out = {}
  for _, r in ipairs(msg.nodes) do out[r.id] = r.address end
  return out
end
local lan, lo, ll = ids(told.lan), ids(told.lo), ids(told.ll)
assert(lan.me and lan.lan and not lan.lo and not lan.ll, "a remote peer hears of no local-only node")
assert(lo.lan == "192.168.1.5" and lo.ll == "fe80::1" and lo.lo == "127.0.0.1")
assert(ll.lan and ll.me and ll.ll and not ll.lo)
print("gossip ok")
