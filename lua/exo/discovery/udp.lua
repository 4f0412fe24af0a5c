-- udp.lua: zero-configuration discovery: nodes announce themselves by UDP broadcast.
--
-- Every `interval` seconds a node sends one announcement per IPv4 interface its wire listens
-- on, to that interface's broadcast address (and once to 255.255.255.255), on
-- `broadcast_port`; it listens on `listen_port` with SO_REUSEADDR, so several nodes of one host
-- (different wire ports, their own EXO_HOME) hear each other and every other node on the LAN.
-- An announcement is the original exo's JSON (type "discovery", node_id, grpc_port: the wire
-- port, device_capabilities, priority, interface_name, interface_type) plus time and seq;
-- a keyed cluster seals it with the cluster key (native announce.c, docs/discovery.md), an
-- open one sends it in the clear. A peer heard is only a candidate: the cluster dials it and
-- admits it after a hello over the wire (with the key's proof in a keyed cluster). Heard on
-- several interfaces, the highest-priority one wins (Ethernet over Wi-Fi over the rest over
-- loopback). A peer silent for `timeout` seconds is dropped. Malformed, oversized, forged,
-- replayed or foreign datagrams are ignored and counted (stats(), shown in /v1/topology);
-- none of them is ever fatal.
local uv = require "luv"
local json = require "exo.json"

local M = {}

local Discovery = {}
Discovery.__index = Discovery

-- Interface types as the original exo names them, and their priorities.
local PRIORITY = { Ethernet = 4, WiFi = 3, Other = 2, Loopback = 1 }

local read_file = require("exo.cluster").read_file

-- "Ethernet", "WiFi", "Loopback" or "Other" for a Linux interface name.
function M.interface_type(name, internal)
  if internal or name == "lo" then return "Loopback" end
  if uv.fs_stat("/sys/class/net/" .. name .. "/wireless") or uv.fs_stat("/sys/class/net/" .. name .. "/phy80211") then
    return "WiFi"
  end
  local t = read_file("/sys/class/net/" .. name .. "/type")
  if t and tonumber(t) == 1 then return "Ethernet" end
  return "Other"
end

local function ipv4_int(ip)
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

local function ipv4_str(n)
  return ("%d.%d.%d.%d"):format(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

-- The IPv4 interfaces to announce on: those the wire's listen address covers.
-- Each: { name, ip, broadcast, type, priority }.
function M.interfaces(listen_host)
  local out = {}
  for name, addrs in pairs(uv.interface_addresses() or {}) do
    for _, a in ipairs(addrs) do
      local ip, mask = ipv4_int(a.ip or ""), ipv4_int(a.netmask or "")
      if (a.family == "inet" or a.family == 2) and ip and mask then
        if listen_host == "0.0.0.0" or listen_host == a.ip or (listen_host:match("^127%.") and a.internal) then
          local kind = M.interface_type(name, a.internal)
          -- ip | ~mask, in arithmetic (bit ops would go negative past 2^31)
          local broadcast = ip - ip % (4294967296 - mask) + (4294967296 - mask - 1)
          out[#out + 1] = { name = name, ip = a.ip, broadcast = ipv4_str(broadcast), type = kind,
            priority = PRIORITY[kind] }
        end
      end
    end
  end
  table.sort(out, function(x, y) return x.name < y.name end)
  return out
end

local function set_of(list)
  if not list then return nil end
  local set = {}
  for item in tostring(list):gmatch("[^,%s]+") do set[item] = true end
  return next(set) and set or nil
end

-- opts: node_id, wire (seals and opens datagrams with the cluster's key), wire_port,
-- listen_host (the wire's listen address), capabilities, listen_port, broadcast_port,
-- interval (s, default 2.5), timeout (s, default 30), node_id_filter and
-- interface_type_filter (comma-separated lists), on_change(records), log.
function M.new(opts)
  assert(type(opts.on_change) == "function", "udp.new: opts.on_change must be a function")
  return setmetatable({
    node_id = opts.node_id, wire = opts.wire, wire_port = opts.wire_port, listen_host = opts.listen_host or "0.0.0.0",
    capabilities = opts.capabilities or {}, listen_port = opts.listen_port or 5678,
    broadcast_port = opts.broadcast_port or 5678, interval = opts.interval or 2.5, timeout = opts.timeout or 30,
    id_filter = set_of(opts.node_id_filter), type_filter = set_of(opts.interface_type_filter),
    on_change = opts.on_change, log = opts.log or function(fmt, ...) io.stderr:write("exo: " .. fmt:format(...) .. "\n") end,
    peers = {},    -- id -> { id, address, port, priority, interface_type, last_seen }
    last = {},     -- id -> { time, seq }: the newest announcement taken from it
    seq = 0,
    counts = { received = 0, accepted = 0, malformed = 0, oversized = 0, forged = 0, other_cluster = 0, replayed = 0,
      filtered = 0 },
  }, Discovery)
end

function Discovery:stats()
  local s = { module = "udp", listen_port = self.listen_port, peers = 0 }
  for k, v in pairs(self.counts) do s[k] = v end
  for _ in pairs(self.peers) do s.peers = s.peers + 1 end
  return s
end

local function now_ms()
  local sec, usec = uv.gettimeofday()
  return sec * 1000 + math.floor(usec / 1000)
end

function Discovery:announce()
  local ifaces = M.interfaces(self.listen_host)
  local time = now_ms()
  local sent_global = false
  for _, iface in ipairs(ifaces) do
    self.seq = self.seq + 1
    local text = json.encode {
      type = "discovery", node_id = self.node_id, grpc_port = self.wire_port,
      device_capabilities = self.capabilities, priority = iface.priority, interface_name = iface.name,
      interface_type = iface.type, time = time, seq = self.seq,
    }
    local datagram, err = self.wire:announce_seal(text)
    if not datagram then
      self.log("discovery: cannot announce: %s", err)
      return
    end
    self.udp:send(datagram, iface.broadcast, self.broadcast_port, function() end)
    if iface.type ~= "Loopback" and not sent_global then
      sent_global = true
      self.udp:send(datagram, "255.255.255.255", self.broadcast_port, function() end)
    end
  end
end

local function valid_id(v) return type(v) == "string" and #v >= 1 and #v <= 128 and v:match("^[%w%._:%-]+$") ~= nil end
local function int_in(v, lo, hi) return type(v) == "number" and v % 1 == 0 and v >= lo and v <= hi end
local function short(v, n) return type(v) == "string" and #v <= n end

-- A decoded announcement's fields, checked; nil when anything is off.
function M.valid_announcement(a)
  if type(a) ~= "table" or a.type ~= "discovery" then return nil end
  if not valid_id(a.node_id) or not int_in(a.grpc_port, 1, 65535) then return nil end
  if not int_in(a.time, 0, 2 ^ 53) or not int_in(a.seq, 0, 2 ^ 53) then return nil end
  if not (short(a.interface_type, 32) and short(a.interface_name, 64)) then return nil end
  if not int_in(a.priority, 0, 100) then return nil end
  return true
end

function Discovery:receive(data, ip)
  local c = self.counts
  c.received = c.received + 1
  local text, err, code = self.wire:announce_open(data)
  if not text then
    if code == "ERANGE" then c.oversized = c.oversized + 1
    elseif code == "ESTATE" then c.forged = c.forged + 1
    elseif code == "ENOTSUP" then c.other_cluster = c.other_cluster + 1
    else c.malformed = c.malformed + 1 end
    return
  end
  local a = json.decode(text)
  if not M.valid_announcement(a) then
    c.malformed = c.malformed + 1
    return
  end
  if a.node_id == self.node_id then return end -- our own, heard back
  if (self.id_filter and not self.id_filter[a.node_id]) or (self.type_filter and not self.type_filter[a.interface_type]) then
    c.filtered = c.filtered + 1
    return
  end
  local last = self.last[a.node_id]
  if last and (a.time < last.time or (a.time == last.time and a.seq <= last.seq)) then
    c.replayed = c.replayed + 1
    return
  end
  self.last[a.node_id] = { time = a.time, seq = a.seq }
  c.accepted = c.accepted + 1
  local p = self.peers[a.node_id]
  local now = uv.now()
  -- The best interface wins; a worse one is only used once the best goes quiet.
  if p and a.priority < p.priority and now - p.best_seen <= self.interval * 2000 then
    p.last_seen = now
    return
  end
  local changed = not p or p.address ~= ip or p.port ~= a.grpc_port
  self.peers[a.node_id] = { id = a.node_id, address = ip, port = a.grpc_port, priority = a.priority,
    interface_type = a.interface_type, last_seen = now, best_seen = now }
  if changed then self:publish() end
end

function Discovery:publish()
  local records = {}
  for id, p in pairs(self.peers) do records[id] = { id = id, address = p.address, port = p.port } end
  self.on_change(records)
end

function Discovery:expire()
  local now, dropped = uv.now(), false
  for id, p in pairs(self.peers) do
    if now - p.last_seen > self.timeout * 1000 then
      self.peers[id] = nil
      self.last[id] = nil
      dropped = true
      self.log("discovery: %s silent for %d s, dropped", id, self.timeout)
    end
  end
  if dropped then self:publish() end
end

function Discovery:start()
  local udp = uv.new_udp()
  local ok, err = udp:bind("0.0.0.0", self.listen_port, { reuseaddr = true })
  if not ok then
    udp:close()
    return nil, ("cannot listen for discovery on UDP port %d: %s (--listen-port)"):format(self.listen_port, tostring(err))
  end
  udp:set_broadcast(true)
  self.udp = udp
  udp:recv_start(function(rerr, data, addr)
    if rerr or not data or not addr then return end
    local ok2, perr = pcall(self.receive, self, data, addr.ip)
    if not ok2 then
      self.counts.malformed = self.counts.malformed + 1
      self.log("discovery: a datagram from %s: %s", tostring(addr.ip), tostring(perr))
    end
  end)
  self.timer = uv.new_timer()
  self.timer:start(0, math.floor(self.interval * 1000), function()
    self:expire()
    self:announce()
  end)
  return true
end

function Discovery:stop()
  if self.timer then
    self.timer:stop()
    self.timer:close()
    self.timer = nil
  end
  if self.udp then
    self.udp:recv_stop()
    self.udp:close()
    self.udp = nil
  end
end

return M
