-- cluster.lua: this node's peers: who they are, how to reach them, whether they live.
--
-- The wire (native/wire.c) carries frames; this module decides whom to talk
-- to. Peers come from discovery (a peers file) and from gossip (each node
-- tells its peers whom it knows), and every pair of nodes keeps one
-- connection. Both sides may dial at once; the rule that settles it is the
-- same on both ends (keep the connection the smaller id dialed), so they
-- agree without a round trip. A hello carries the node's id, a random
-- instance tag (two processes claiming one id are told apart and reported),
-- its wire port and its capabilities. Pings every second measure round trips;
-- a peer silent for `peer_timeout` seconds is dropped. Control messages are
-- JSON objects with a `t` field, dispatched to handlers registered with on().
-- Joins and leaves are cluster events (exo.activity: the log, the terminal
-- view, /v1/topology), with the reason; the ring re-plans on them.
--
-- One id, two live processes: the one that started later stops, told once
-- (the hello carries when each started; a third node that already has the
-- id refuses the newcomer with a reason that says so).
local uv = require "luv"
local native = require "exo.native"
local json = require "exo.json"
local activity = require "exo.activity"

local M = {}

local Cluster = {}
Cluster.__index = Cluster

local function log(fmt, ...)
  io.stderr:write("exo: " .. fmt:format(...) .. "\n")
  io.stderr:flush()
end

function M.random_hex(n)
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(n) or tostring(os.time()) .. tostring(os.clock())
  if f then f:close() end
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end)):sub(1, 2 * n)
end

-- A version 4 UUID from /dev/urandom.
function M.uuid()
  local h = M.random_hex(16)
  local variant = ("89ab"):sub(tonumber(h:sub(17, 17), 16) % 4 + 1, tonumber(h:sub(17, 17), 16) % 4 + 1)
  return ("%s-%s-4%s-%s%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(14, 16), variant, h:sub(18, 20),
    h:sub(21, 32))
end

-- This node's id: kept in $EXO_HOME/node_id so a restart keeps it.
function M.persistent_id(home)
  local path = home .. "/node_id"
  local f = io.open(path, "r")
  if f then
    local id = (f:read("*a") or ""):match("^%s*(%S+)%s*$")
    f:close()
    if id and #id <= 128 then return id end
  end
  local id = M.uuid()
  os.execute(("mkdir -p '%s'"):format(home:gsub("'", "'\\''")))
  f = io.open(path, "w")
  if f then
    f:write(id, "\n")
    f:close()
  end
  return id
end

-- ---- this machine's capabilities ---------------------------------------------------

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return text
end
M.read_file = read_file

function M.total_memory_mb()
  local kb = tonumber((read_file("/proc/meminfo") or ""):match("MemTotal:%s+(%d+)")) or 0
  return math.floor(kb / 1024)
end

function M.cpu_name()
  return (read_file("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "cpu"
end

-- TFLOPS measured at start (a few milliseconds of sgemm on the compute
-- threads). The CPU path has no fp16 arithmetic (fp16 = fp32), and its int8
-- dot products run at about twice the fp32 rate (VNNI/maddubs): that one is
-- an estimate, as the original exo's table of chips is.
function M.cpu_flops()
  local fp32 = native.flops_fp32_gflops(5) / 1000
  return { fp32 = fp32, fp16 = fp32, int8 = 2 * fp32 }
end

function M.local_capabilities(overrides)
  overrides = overrides or {}
  return {
    model = overrides.model or ("exo " .. native.version()),
    chip = overrides.chip or M.cpu_name(),
    memory = overrides.memory or M.total_memory_mb(),
    flops = overrides.flops or M.cpu_flops(),
  }
end

-- ---- the cluster -----------------------------------------------------------------

-- opts: node_id, host (listen address), port (0: a free one), advertise
-- (the address peers should dial; default host, or 127.0.0.1 for 0.0.0.0),
-- capabilities, peer_timeout (s), log, cluster_key (a string: only peers that
-- prove they hold it are admitted, and frames are sealed; nil: an open cluster).
function M.new(opts)
  local self = setmetatable({
    id = opts.node_id, instance = M.random_hex(8), host = opts.host or "0.0.0.0", port = opts.port or 0,
    started = M.wall_clock(),
    advertise = opts.advertise, cluster_key = opts.cluster_key,
    capabilities = opts.capabilities or M.local_capabilities(),
    peers = {},        -- id -> live peer { id, address, port, capabilities, conn, instance, rtt_us, last_heard }
    known = {},        -- id -> { id, address, port, capabilities, source, next_try, backoff }
    conns = {},        -- conn -> { dialed = id or nil, peer = id once its hello came }
    handlers = {},     -- message type -> fn(from_id, request_id, msg)
    lost_handlers = {}, change_handlers = {},
    peer_timeout = opts.peer_timeout or 5,
    log = opts.log or log,
  }, Cluster)
  return self
end

function Cluster:hello()
  return json.encode { node_id = self.id, instance = self.instance, version = native.version(), port = self.port,
    address = self.advertise, capabilities = self.capabilities, started = self.started }
end

-- Seconds since the epoch, to the microsecond: when a process started, to
-- tell which of two processes with one id came second.
function M.wall_clock()
  local sec, usec = uv.gettimeofday()
  return sec + usec / 1e6
end

-- A cluster event: logged (through exo.activity, so the terminal view and
-- /v1/topology see it too) and remembered as the latest change's reason.
function Cluster:note(kind, fmt, ...)
  local text = fmt:format(...)
  if self.log == log then activity.event(kind, text) else self.log("%s", text) end
  if kind == "join" or kind == "leave" then self.last_change = text end
end

-- This process holds an id another live process had first: say so once and
-- stop (cli's SIGTERM path closes everything cleanly).
function Cluster:stop_duplicate(why)
  if self.duplicate then return end
  self.duplicate = why
  self:note("error", "%s: this node stops; give one of them another --node-id (or another EXO_HOME)", why)
  if self.on_duplicate then return self.on_duplicate(why) end
  uv.kill(uv.os_getpid(), "sigterm")
end

function Cluster:start()
  local wire, err = native.wire_new("{}")
  if not wire then return nil, err end
  self.wire = wire
  if self.cluster_key then
    local ok, kerr = wire:set_key(self.cluster_key)
    if not ok then
      wire:free()
      return nil, "cannot use the cluster key: " .. kerr
    end
  end
  local port, lerr = wire:listen(self.host, self.port)
  if not port then
    wire:free()
    if lerr:match("^EBUSY") then
      return nil, ("the node port %d is in use (another exo on this machine?): pick another with --node-port, "
        .. "or 0 for any free port (%s)"):format(self.port, lerr)
    end
    return nil, "cannot open the node port: " .. lerr
  end
  self.port = port
  self.advertise = self.advertise or (self.host == "0.0.0.0" and "127.0.0.1" or self.host)
  -- The hello names the port we listen on, known only now.
  wire:set_hello(self:hello())
  self.poll = uv.new_poll(wire:fd())
  self.poll:start("r", function() self:drain() end)
  self.timer = uv.new_timer()
  self.timer:start(200, 1000, function() self:tick() end)
  require("exo.share").attach(self) -- peers may fetch model files from our store, and we from theirs
  require("exo.api.models_api").attach(self) -- POST /download starts on every node; their progress comes back
  return true
end

function Cluster:stop()
  if self.poll then
    self.poll:stop()
    self.poll:close()
    self.timer:stop()
    self.timer:close()
    self.poll = nil
  end
  if self.wire then self.wire:free() end
  self.wire = nil
end

function Cluster:on(kind, fn) self.handlers[kind] = fn end
function Cluster:on_lost(fn) self.lost_handlers[#self.lost_handlers + 1] = fn end
function Cluster:on_change(fn) self.change_handlers[#self.change_handlers + 1] = fn end

local function changed(self)
  for _, fn in ipairs(self.change_handlers) do fn() end
end

-- Peers a discovery module knows of (id -> record); replaces what it said before.
function Cluster:set_discovered(records)
  for id, k in pairs(self.known) do
    if k.source == "discovery" and not records[id] then self.known[id] = nil end
  end
  for id, r in pairs(records) do
    if id ~= self.id then self:learn(r, "discovery") end
  end
end

function Cluster:learn(r, source)
  local k = self.known[r.id]
  if k and k.source == "discovery" and source ~= "discovery" then return end
  if k and k.address == r.address and k.port == r.port then
    k.capabilities = r.capabilities or k.capabilities
    k.source = source
    return
  end
  -- The smaller id dials first; the other waits a little before dialing too,
  -- so both dialing at once is rare (and settled by the rule in on_peer).
  self.known[r.id] = { id = r.id, address = r.address, port = r.port, capabilities = r.capabilities,
    source = source, backoff = 0.5, next_try = uv.now() + (self.id < r.id and 0 or 2000) }
  self:dial_due()
end

function Cluster:dialing(id)
  for _, c in pairs(self.conns) do
    if c.dialed == id and not c.peer then return true end
  end
  return false
end

function Cluster:dial_due()
  local now = uv.now()
  for id, k in pairs(self.known) do
    if not self.peers[id] and not self:dialing(id) and now >= k.next_try then
      local conn, err = self.wire:connect(k.address, k.port)
      if conn then
        self.conns[conn] = { dialed = id }
      else
        self.log("cannot dial %s at %s:%s: %s", id, k.address, tostring(k.port), err)
      end
      k.next_try = now + k.backoff * 1000
      k.backoff = math.min(k.backoff * 2, 10)
    end
  end
end

function Cluster:tick()
  self:dial_due()
  local now = uv.now()
  for id, p in pairs(self.peers) do
    if now - p.last_heard > self.peer_timeout * 1000 then
      self.wire:close_conn(p.conn, ("no answer to pings for %d s"):format(self.peer_timeout))
      self:lose(id, ("%s stopped answering pings"):format(id))
    else
      self.wire:ping(p.conn)
    end
  end
end

-- Sends msg (a table with a `t` field) to node id (this node too). Returns
-- true or nil, err.
function Cluster:send(id, request_id, msg)
  local conn = self:conn_of(id)
  if not conn then return nil, ("node %s is not connected"):format(id) end
  return self.wire:send_control(conn, request_id or 0, json.encode(msg))
end

-- The connection to node id (0 for this node), or nil.
function Cluster:conn_of(id)
  if id == self.id then return 0 end
  local p = self.peers[id]
  return p and p.conn
end

function Cluster:lose(id, why)
  local p = self.peers[id]
  if not p then return end
  self.peers[id] = nil
  local k = self.known[id]
  if k then
    k.backoff = 0.5
    k.next_try = uv.now() + 500
  end
  self:note("leave", "lost peer %s: %s", id, why)
  for _, fn in ipairs(self.lost_handlers) do fn(id, why) end
  changed(self)
end

--- cluster.KEPT_OUT: the reason a node gives a peer its peers file no longer lists (discovery.keep_out).
M.KEPT_OUT = "removed from the peers file"

-- Peer id closed our connection because its peers file no longer lists us.
-- Knocking again would only flap it in and out of the view (each hello is
-- admitted here before its refusal arrives), so an address learned from
-- gossip or a hello is forgotten: the peer dials us when it lists us again.
-- One this node's own discovery gives is the operator's say: it is tried
-- again, at the longest backoff.
function Cluster:kept_out_by(id)
  local k = self.known[id]
  if not k then return end
  if k.source ~= "discovery" then
    self.known[id] = nil
  else
    k.backoff = 10
    k.next_try = uv.now() + 10000
  end
end

-- What a peer says of itself is bounded before anything uses it: JSON null
-- (decoded as a sentinel, not nil) or a wrong type counts as absent, and
-- numbers must be finite and plausible (a node of 1 MB or of 10^30 TFLOPS is
-- a lie or a bug, and would skew every node's plan).
--- cluster.merge_capabilities(reported, given) -> reported with given's fields laid over it
-- (flops field by field).
function M.merge_capabilities(reported, given)
  local out = {}
  for k, v in pairs(reported or {}) do out[k] = v end
  for k, v in pairs(given or {}) do
    if k == "flops" and type(v) == "table" and type(out.flops) == "table" then
      local f = {}
      for fk, fv in pairs(out.flops) do f[fk] = fv end
      for fk, fv in pairs(v) do f[fk] = fv end
      out.flops = f
    else
      out[k] = v
    end
  end
  return out
end

local MAX_MEMORY_MB = 2 ^ 24       -- 16 TiB
local MAX_TFLOPS = 1e6
local function bounded(v, lo, hi)
  return type(v) == "number" and v == v and v >= lo and v <= hi and v or nil
end
local function short_string(v)
  return type(v) == "string" and #v <= 128 and v or nil
end

--- cluster.sane_capabilities(caps) -> a new table with only the fields that pass.
function M.sane_capabilities(c)
  if type(c) ~= "table" then return {} end
  local out = { memory = bounded(c.memory, 1, MAX_MEMORY_MB), chip = short_string(c.chip),
    model = short_string(c.model), engine = short_string(c.engine) }
  if type(c.flops) == "table" then
    local f = { fp32 = bounded(c.flops.fp32, 0, MAX_TFLOPS), fp16 = bounded(c.flops.fp16, 0, MAX_TFLOPS),
      int8 = bounded(c.flops.int8, 0, MAX_TFLOPS) }
    if next(f) then out.flops = f end
  end
  return out
end

--- cluster.valid_hello(h): node_id a short string, instance a string, port a TCP port.
function M.valid_hello(h)
  return type(h) == "table" and type(h.node_id) == "string" and #h.node_id > 0 and #h.node_id <= 128
    and type(h.instance) == "string" and #h.instance <= 128 and bounded(h.port, 1, 65535) ~= nil
    and h.port % 1 == 0
end
local valid_hello = M.valid_hello

function Cluster:on_peer(conn, data, address)
  local ok, h = pcall(json.decode, data)
  if not ok or not valid_hello(h) then
    self.wire:close_conn(conn, "a hello must be JSON with node_id, instance and port")
    return
  end
  local c = self.conns[conn] or {}
  self.conns[conn] = c
  if h.node_id == self.id then
    self.wire:close_conn(conn, "duplicate node id " .. self.id)
    if h.instance ~= self.instance then
      -- Both ends see both hellos: the one that started later stops.
      local theirs = bounded(h.started, 0, math.huge)
      if theirs and (theirs < self.started or (theirs == self.started and h.instance < self.instance)) then
        self:stop_duplicate(("another node at %s has used this node's id %s since before this one started")
          :format(address, self.id))
      elseif not theirs then
        self.log("another node at %s uses this node's id %s: give one of them another --node-id", address, self.id)
      end
    end
    return
  end
  local existing = self.peers[h.node_id]
  if existing then
    if existing.instance ~= h.instance then
      -- Once per newcomer, not at each of its redials; it hears why and stops.
      self.dup_warned = self.dup_warned or { n = 0 }
      if self.dup_warned.n >= 256 then self.dup_warned = { n = 0 } end -- bounded, whoever churns instances
      if not self.dup_warned[h.instance] then
        self.dup_warned.n = self.dup_warned.n + 1
        self.dup_warned[h.instance] = true
        self:note("error", "two nodes claim id %s (at %s and %s): keeping the first", h.node_id, existing.address,
          address)
      end
      self.wire:close_conn(conn, ("duplicate node id %s: %s is in use by the node at %s"):format(h.node_id,
        h.node_id, existing.address))
      return
    end
    -- Both of us dialed: keep the connection the smaller id dialed.
    local smaller_dialed_new = (c.dialed ~= nil) == (self.id < h.node_id)
    if not smaller_dialed_new then
      self.wire:close_conn(conn, "duplicate connection")
      return
    end
    self.conns[existing.conn].superseded = true
    self.wire:close_conn(existing.conn, "duplicate connection")
  end
  c.peer = h.node_id
  local host = address:match("^(.*):%d+$") or address
  local caps = M.sane_capabilities(h.capabilities)
  local k = self.known[h.node_id]
  -- Capabilities written in a peers file win where it gives them; what the peer
  -- reports at hello fills the rest (a file without device_capabilities used to
  -- leave the peer "memory unknown", so the model was never split).
  if k and k.source == "discovery" and k.capabilities then caps = M.merge_capabilities(caps, k.capabilities) end
  -- remote: where the connection comes from, whatever we were told (gossip trusts it).
  self.peers[h.node_id] = { id = h.node_id, address = k and k.address or host, port = h.port, remote = host,
    capabilities = caps, conn = conn, instance = h.instance, last_heard = uv.now(), version = h.version }
  if not existing then self:note("join", "peer %s connected (%s)", h.node_id, address) end
  self:gossip()
  changed(self)
end

-- Tells every peer whom we know, so peers of peers find each other. A peer
-- hears only of the nodes it would dial (on_topology's rules: our loopback
-- peers only when it is on this host too).
function Cluster:gossip()
  local me = { id = self.id, address = self.advertise, port = self.port, capabilities = self.capabilities }
  for to, q in pairs(self.peers) do
    local scope = M.address_scope(q.remote or q.address)
    local list = { me }
    for id, p in pairs(self.peers) do
      if not M.gossip_refusal(p.address, p.port, scope) then
        list[#list + 1] = { id = id, address = p.address, port = p.port, capabilities = p.capabilities }
      end
    end
    self:send(to, 0, { t = "topology", nodes = list })
  end
end

-- ---- what gossip may make this node dial (issue 12) ----------------------------------
--
-- A topology message makes us connect to the addresses it names, so a peer
-- could point us at any host and port (a scan, a service on our localhost).
-- We dial only unicast IP literals; a loopback or link-local address only
-- when the peer saying it is itself connected to us over loopback or
-- link-local (a remote peer has no business naming our own localhost); and
-- at most GOSSIP_MAX_NEW new or changed entries per message, MAX_KNOWN known
-- nodes overall. Refusals are counted (topology().gossip_refused) and logged
-- once per peer.
local GOSSIP_MAX_NEW = 64
local MAX_KNOWN = 256
M.GOSSIP_MAX_NEW, M.MAX_KNOWN = GOSSIP_MAX_NEW, MAX_KNOWN

-- The four bytes of a dotted IPv4 literal as libuv's inet_pton reads it
-- (decimal, no leading zeros), or nil.
local function ipv4_bytes(s)
  local parts = { s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts ~= 4 then return nil end
  for i, p in ipairs(parts) do
    if #p > 3 or (#p > 1 and p:sub(1, 1) == "0") or tonumber(p) > 255 then return nil end
    parts[i] = tonumber(p)
  end
  return parts
end

-- The eight 16-bit words of an IPv6 literal (with "::" and a dotted IPv4
-- tail), or nil.
local function ipv6_words(s)
  local function groups(part, allow_v4)
    local out = {}
    if part == "" then return out end
    local items = {}
    for g in (part .. ":"):gmatch("([^:]*):") do items[#items + 1] = g end
    for i, g in ipairs(items) do
      local v4 = allow_v4 and i == #items and ipv4_bytes(g)
      if v4 then
        out[#out + 1] = v4[1] * 256 + v4[2]
        out[#out + 1] = v4[3] * 256 + v4[4]
      elseif g:match("^%x%x?%x?%x?$") then
        out[#out + 1] = tonumber(g, 16)
      else
        return nil
      end
    end
    return out
  end
  local head, tail = s:match("^(.-)::(.*)$")
  if head then
    if tail:find("::", 1, true) then return nil end
    local h, t = groups(head, false), groups(tail, true)
    if not h or not t or #h + #t > 7 then return nil end
    local words = {}
    for _, w in ipairs(h) do words[#words + 1] = w end
    for _ = 1, 8 - #h - #t do words[#words + 1] = 0 end
    for _, w in ipairs(t) do words[#words + 1] = w end
    return words
  end
  local words = groups(s, true)
  return words and #words == 8 and words or nil
end

local function ipv4_scope(b)
  if b[1] == 0 then return nil, "an unspecified address" end
  if b[1] == 127 then return "loopback" end
  if b[1] == 169 and b[2] == 254 then return "link-local" end
  if b[1] >= 224 and b[1] <= 239 then return nil, "a multicast address" end
  if b[1] >= 240 then return nil, "a broadcast or reserved address" end
  return "global"
end

--- cluster.address_scope(address) -> "global", "loopback" or "link-local"
--- for a unicast IP literal this node may dial, or nil, why.
function M.address_scope(address)
  if type(address) ~= "string" or #address > 64 then return nil, "not an IP address" end
  local b = ipv4_bytes(address)
  if b then return ipv4_scope(b) end
  local ip, zone = address:match("^([^%%]+)%%([%w_.-]+)$")
  local w = ipv6_words(ip or address)
  if not w then return nil, "not an IP address" end
  local zeros5 = w[1] == 0 and w[2] == 0 and w[3] == 0 and w[4] == 0 and w[5] == 0
  local scope, why
  if zeros5 and w[6] == 0xffff then -- IPv4-mapped
    scope, why = ipv4_scope { math.floor(w[7] / 256), w[7] % 256, math.floor(w[8] / 256), w[8] % 256 }
  elseif zeros5 and w[6] == 0 and w[7] == 0 and w[8] <= 1 then
    if w[8] == 0 then return nil, "an unspecified address" end
    scope = "loopback"
  elseif zeros5 and w[6] == 0 then
    return nil, "a deprecated IPv4-compatible address"
  elseif w[1] >= 0xff00 then
    return nil, "a multicast address"
  elseif w[1] >= 0xfe80 and w[1] <= 0xfebf then
    scope = "link-local"
  else
    scope = "global"
  end
  if zone and scope ~= "link-local" then return nil, "a zone on an address that is not link-local" end
  return scope, why
end

--- cluster.gossip_refusal(address, port, sender_scope) -> nil when a peer
--- connected from an address of sender_scope (address_scope's) may make us
--- dial address:port, else why not.
function M.gossip_refusal(address, port, sender_scope)
  if not (bounded(port, 1, 65535) and port % 1 == 0) then return "not a TCP port" end
  local scope, why = M.address_scope(address)
  if not scope then return why end
  if scope == "loopback" and sender_scope ~= "loopback" then
    return "a loopback address from a peer that is not on this host"
  end
  if scope == "link-local" and sender_scope ~= "loopback" and sender_scope ~= "link-local" then
    return "a link-local address from a peer that is not on this link"
  end
  return nil
end

-- Room for one more known node: under MAX_KNOWN, or by forgetting a gossiped
-- node we have failed to reach for a while (never a live or configured one).
function Cluster:known_room()
  local n, stale = 0, nil
  for id, k in pairs(self.known) do
    n = n + 1
    if not stale and k.source == "gossip" and not self.peers[id] and k.backoff >= 8 and not self:dialing(id) then
      stale = id
    end
  end
  if n < MAX_KNOWN then return true end
  if stale then
    self.known[stale] = nil
    return true
  end
  return false
end

-- from: the peer that sent msg.
function Cluster:on_topology(msg, from)
  if type(msg.nodes) ~= "table" then return end
  local sender = from and self.peers[from]
  local sender_scope = sender and M.address_scope(sender.remote or sender.address)
  local taken, refused, first_why = 0, 0, nil
  for _, r in ipairs(msg.nodes) do
    if type(r) == "table" and type(r.id) == "string" and #r.id <= 128 and r.id ~= self.id
      and short_string(r.address) and bounded(r.port, 1, 65535) and r.port % 1 == 0 and not self.peers[r.id] then
      local k = self.known[r.id]
      local record = { id = r.id, address = r.address, port = r.port,
        capabilities = M.sane_capabilities(r.capabilities) }
      if k and (k.source == "discovery" or (k.address == r.address and k.port == r.port)) then
        self:learn(record, "gossip") -- nothing new to dial
      else
        local why = M.gossip_refusal(r.address, r.port, sender_scope)
        if not why and taken >= GOSSIP_MAX_NEW then
          why = ("more than %d new nodes in one message"):format(GOSSIP_MAX_NEW)
        end
        if not why and not k and not self:known_room() then
          why = ("this node knows %d nodes (the limit)"):format(MAX_KNOWN)
        end
        if why then
          refused = refused + 1
          first_why = first_why or ("%s:%s: %s"):format(r.address, tostring(r.port), why)
        else
          taken = taken + 1
          self:learn(record, "gossip")
        end
      end
    elseif not (type(r) == "table" and (r.id == self.id or (type(r.id) == "string" and self.peers[r.id]))) then
      refused = refused + 1
      first_why = first_why or "a malformed entry"
    end
  end
  if refused > 0 then
    self.gossip_refused = (self.gossip_refused or 0) + refused
    self.gossip_warned = self.gossip_warned or {}
    local who = from or "?"
    if not self.gossip_warned[who] then
      self.gossip_warned[who] = true
      self.log("refused %d gossiped node(s) from %s (first: %s); further refusals are only counted", refused, who,
        first_why)
    end
  end
end

function Cluster:drain()
  if not self.wire then return end
  self.wire:drain(function(kind, conn, request_id, data, value, address)
    local ok, err = pcall(self.event, self, kind, conn, request_id, data, value, address)
    if not ok then self.log("cluster event %s failed: %s", kind, tostring(err)) end
  end)
end

function Cluster:peer_of_conn(conn)
  if conn == 0 then return self.id end
  local c = self.conns[conn]
  return c and c.peer
end

function Cluster:event(kind, conn, request_id, data, value, address)
  if kind == "peer" then
    self:on_peer(conn, data, address)
  elseif kind == "closed" then
    local c = self.conns[conn]
    self.conns[conn] = nil
    -- A peer that already knows another process by our id refused us.
    local taken = data:find(("duplicate node id %s: %s is in use"):format(self.id, self.id), 1, true)
    if taken then self:stop_duplicate(data:sub(taken)) end
    if c and c.peer and not c.superseded and self.peers[c.peer] and self.peers[c.peer].conn == conn then
      self:lose(c.peer, data)
      local kept_out = " refused us: " .. M.KEPT_OUT
      if data:sub(-#kept_out) == kept_out then self:kept_out_by(c.peer) end
    elseif not (c and c.peer) and not (c and c.dialed and data:match("^cannot connect"))
      and data ~= "duplicate connection"
      and not data:match("duplicate connection$") then
      -- A connection refused before its hello (a stranger, another protocol
      -- version, a bad frame): say why. Failed dials are retried quietly.
      if c and c.dialed then
        -- Once per peer and reason: a node with another key is redialed with backoff forever.
        local reason = data:gsub("^.-: ", "", 1)
        self.refusals_logged = self.refusals_logged or {}
        if self.refusals_logged[c.dialed] ~= reason then
          self.refusals_logged[c.dialed] = reason
          self.log("connection to %s closed before its hello: %s", c.dialed, data)
        end
      else
        -- Once per address and reason too (a stranger's ephemeral ports left out), the record
        -- bounded: a flood of strangers must not grow it.
        local key = data:gsub(":%d+:", ":", 1)
        self.strangers_logged = self.strangers_logged or { n = 0 }
        local seen = self.strangers_logged
        if not seen[key] then
          if seen.n >= 256 then seen = { n = 0 } self.strangers_logged = seen end
          seen[key], seen.n = true, seen.n + 1
          self.log("closed a connection before its hello: %s", data)
        end
      end
    end
  elseif kind == "pong" then
    local id = self:peer_of_conn(conn)
    local p = id and self.peers[id]
    if p then
      p.last_heard = uv.now()
      p.rtt_us = value
    end
  elseif kind == "control" then
    local from = self:peer_of_conn(conn)
    if not from then return end
    local p = self.peers[from]
    if p then p.last_heard = uv.now() end
    local ok, msg = pcall(json.decode, data)
    if not ok or type(msg) ~= "table" or type(msg.t) ~= "string" then
      self.log("ignoring a malformed control message from %s", from)
      return
    end
    if msg.t == "topology" then return self:on_topology(msg, from) end
    local h = self.handlers[msg.t]
    if h then h(from, request_id, msg) end
  else
    local h = self.handlers["wire_" .. kind] -- output, failed: for the ring
    if h then h(request_id, data, value) end
  end
end

-- The topology a partitioning policy sees: this node and the live peers.
function Cluster:topology()
  local nodes = { [self.id] = { id = self.id, address = self.advertise, port = self.port,
    capabilities = self.capabilities } }
  for id, p in pairs(self.peers) do
    nodes[id] = { id = id, address = p.address, port = p.port, capabilities = p.capabilities, rtt_us = p.rtt_us }
  end
  return { nodes = nodes, open_cluster = not self.cluster_key, gossip_refused = self.gossip_refused or 0 }
end

function Cluster:peer_count()
  local n = 0
  for _ in pairs(self.peers) do n = n + 1 end
  return n
end

return M
