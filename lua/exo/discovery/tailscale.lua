-- tailscale.lua: discovery through the Tailscale API, for devices that share a tailnet but no LAN.
--
-- Every `interval` seconds a node (1) finds its own device in the tailnet (--tailscale-device-id,
-- else the device whose addresses include one of this host's), (2) publishes its node id, wire
-- port and capabilities there as custom device posture attributes
-- (POST /api/v2/device/{id}/attributes/custom:exo_...), (3) lists the tailnet's devices
-- (GET /api/v2/tailnet/{tailnet}/devices) and, for each one seen recently (connectedToControl, or
-- lastSeen within `timeout` seconds), reads its attributes (GET /api/v2/device/{id}/attributes).
-- A device carrying exo's attributes becomes a candidate peer at its first Tailscale IPv4 address,
-- the same record udp.lua gives (capabilities come from the peer's hello); the cluster dials it
-- and admits it only after a hello (and the cluster key's proof in a keyed cluster). Requests
-- carry the API access token as a bearer token.
--
-- Tailscale limits attribute values to 50 characters of letters, digits, '_' and '.', and numbers
-- to integers: so the node id is escaped ('_' -> '_u', '-' -> '_d', ':' -> '_c'), flops are
-- published in GFLOPS and memory in whole MB. Nothing here is fatal: a missing key, a refused key
-- (401/403), a timeout or a malformed answer is logged once (again only when it changes) and
-- shown in stats(); the node keeps running, on its other discovery modules if it has any.
--
-- HTTP goes through a function given as opts.http(req, done): req = { method, url, headers
-- ({ name = value }), body, timeout (s), max_bytes }; done(status, body) on an answer,
-- done(nil, err) on a failure. By default it is exo.download's request (native.http_request:
-- libcurl on a thread of its own, completing on the loop); without it the module logs
-- "tailscale: HTTP client unavailable" and stays idle.
local uv = require "luv"
local json = require "exo.json"

local M = {}

M.DEFAULT_API_BASE = "https://api.tailscale.com"
-- "-" names the tailnet the access token belongs to.
M.DEFAULT_TAILNET = "-"

local PREFIX = "custom:exo_"
local MAX_DEVICES = 256   -- recent devices asked for their attributes in one round
local MAX_VALUE = 50      -- Tailscale's limit on an attribute string
local MAX_ANSWER = 4 * 1048576 -- bytes of one answer (a tailnet of thousands of devices fits)
local REPUBLISH_ROUNDS = 120   -- rounds between publishing our attributes again (10 min at 5 s)

local Discovery = {}
Discovery.__index = Discovery

--- tailscale.encode_id(id) -> id in Tailscale's attribute alphabet, or nil when it would not fit.
function M.encode_id(id)
  local s = id:gsub("_", "_u"):gsub("%-", "_d"):gsub(":", "_c")
  if #s > MAX_VALUE or s:find("[^%w_.]") then return nil end
  return s
end

--- tailscale.decode_id(s) -> the node id encode_id was given, or nil for a string it never makes.
function M.decode_id(s)
  if type(s) ~= "string" or s == "" or #s > MAX_VALUE or s:find("[^%w_.]") then return nil end
  local bad = false
  local id = s:gsub("_(.?)", function(c)
    local out = ({ u = "_", d = "-", c = ":" })[c]
    if not out then bad = true end
    return out
  end)
  if bad then return nil end
  return id
end

local function sanitize(v)
  if type(v) ~= "string" then return nil end
  local s = v:gsub("[^%w_.]", "_"):sub(1, MAX_VALUE)
  return s ~= "" and s or nil
end

--- tailscale.attributes(node_id, port, caps) -> { key = value } to publish, or nil, err.
function M.attributes(node_id, port, caps)
  local id = M.encode_id(node_id)
  if not id then
    return nil, ("node id '%s' does not fit a Tailscale attribute (%d characters once escaped)"):format(node_id,
      MAX_VALUE)
  end
  caps = caps or {}
  local a = { [PREFIX .. "node_id"] = id, [PREFIX .. "port"] = port, [PREFIX .. "chip"] = sanitize(caps.chip),
    [PREFIX .. "model"] = sanitize(caps.model) }
  if type(caps.memory) == "number" and caps.memory >= 1 then a[PREFIX .. "memory"] = math.floor(caps.memory) end
  for _, kind in ipairs { "fp32", "fp16", "int8" } do
    local t = type(caps.flops) == "table" and caps.flops[kind]
    if type(t) == "number" and t >= 0 and t < 1e9 then a[PREFIX .. "gflops_" .. kind] = math.floor(t * 1000 + 0.5) end
  end
  return a
end

local function int_in(v, lo, hi) return type(v) == "number" and v % 1 == 0 and v >= lo and v <= hi end

--- tailscale.capabilities(attrs) -> the capabilities a device's attributes carry (only the sane ones).
function M.capabilities(a)
  local caps = {}
  if int_in(a[PREFIX .. "memory"], 1, 2 ^ 24) then caps.memory = a[PREFIX .. "memory"] end
  for _, f in ipairs { "chip", "model" } do
    local v = a[PREFIX .. f]
    if type(v) == "string" and #v <= MAX_VALUE then caps[f] = v end
  end
  for _, kind in ipairs { "fp32", "fp16", "int8" } do
    local v = a[PREFIX .. "gflops_" .. kind]
    if int_in(v, 0, 1e9) then
      caps.flops = caps.flops or {}
      caps.flops[kind] = v / 1000
    end
  end
  return caps
end

--- tailscale.parse_time("2022-12-01T05:23:30Z") -> seconds since the epoch (UTC), or nil.
function M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)")
  if not y then return nil end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  -- Out of range is not a time (month 99 would land in the future, so a device would stay recent).
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or sec > 60 then return nil end
  -- Days from 1970-01-01 to the civil date (the proleptic Gregorian calendar), without os.time's local zone.
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (mo + (mo > 2 and -3 or 9)) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + h * 3600 + mi * 60 + sec
end

-- A unicast IPv4 address in dotted decimal, or nil: the API is not trusted to name one (octets
-- past 255, leading zeros that some parsers read as octal, 0.x, multicast and broadcast would
-- make the cluster dial nonsense or a whole network).
local function unicast_ipv4(a)
  if type(a) ~= "string" or #a > 15 then return nil end
  local o = { a:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #o ~= 4 then return nil end
  for _, s in ipairs(o) do
    if tonumber(s) > 255 or (#s > 1 and s:sub(1, 1) == "0") then return nil end
  end
  local first = tonumber(o[1])
  return first ~= 0 and first < 224 and a or nil
end

-- The first IPv4 address among a device's Tailscale addresses.
local function ipv4_of(device)
  if type(device.addresses) ~= "table" then return nil end
  for _, a in ipairs(device.addresses) do
    if unicast_ipv4(a) then return a end
  end
  return nil
end

local function device_id(d)
  local id = d.nodeId or d.id
  if type(id) == "number" then id = ("%d"):format(id) end
  return type(id) == "string" and id:match("^[%w%-_.]+$") and #id <= 64 and id or nil
end

local function url_escape(s)
  return (s:gsub("[^%w%-_.~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- The engine's HTTP client (exo.download: native.http_request, completions dispatched on the
-- loop; it waits on a coroutine, so each request gets one), adapted to the interface above; nil
-- when this build has none.
function M.native_http()
  local ok, download = pcall(require, "exo.download")
  if not ok or type(download) ~= "table" or type(download.request) ~= "function" then return nil end
  return function(req, done)
    coroutine.wrap(function()
      local result, err = download.request(req)
      if not result then return done(nil, err) end
      done(result.status, result.body)
    end)()
  end
end

-- opts: node_id, wire_port, capabilities, api_key, tailnet, api_base, device_id, interval (s, 5),
-- timeout (s: how recently a device must have been seen, 120), request_timeout (s, 10),
-- on_change(records), http, log.
function M.new(opts)
  assert(type(opts.on_change) == "function", "tailscale.new: opts.on_change must be a function")
  assert(type(opts.node_id) == "string", "tailscale.new: opts.node_id must be a string")
  local base = (opts.api_base or M.DEFAULT_API_BASE):gsub("/+$", "")
  return setmetatable({
    node_id = opts.node_id, wire_port = opts.wire_port, capabilities = opts.capabilities or {},
    api_key = opts.api_key ~= "" and opts.api_key or nil, tailnet = opts.tailnet or M.DEFAULT_TAILNET,
    api_base = base, device_id = opts.device_id, interval = opts.interval or 5, timeout = opts.timeout or 120,
    request_timeout = opts.request_timeout or 10, on_change = opts.on_change,
    http = opts.http or M.native_http(),
    log = opts.log or function(fmt, ...) io.stderr:write("exo: " .. fmt:format(...) .. "\n") io.stderr:flush() end,
    peers = {}, published = false, published_round = 0,
    counts = { rounds = 0, requests = 0, failures = 0, devices = 0 },
  }, Discovery)
end

function Discovery:stats()
  local s = { module = "tailscale", api_base = self.api_base, tailnet = self.tailnet, device_id = self.self_device,
    published = self.published, peers = 0, last_error = self.last_error }
  for k, v in pairs(self.counts) do s[k] = v end
  for _ in pairs(self.peers) do s.peers = s.peers + 1 end
  return s
end

-- Reports a problem once: again only when it changes, or after a round that went well.
function Discovery:fail(msg)
  self.counts.failures = self.counts.failures + 1
  if msg ~= self.last_error then self.log("tailscale: %s (the node keeps running)", msg) end
  self.last_error = msg
end

-- One API call: done(doc) with the decoded JSON on a 2xx answer; on anything else the round
-- stops there and the problem is reported.
function Discovery:call(method, path, body, done)
  self.counts.requests = self.counts.requests + 1
  local url = self.api_base .. path
  local headers = { Authorization = "Bearer " .. self.api_key, Accept = "application/json" }
  if body then headers["Content-Type"] = "application/json" end
  self.http({ method = method, url = url, headers = headers, body = body and json.encode(body),
    timeout = self.request_timeout, max_bytes = MAX_ANSWER }, function(status, text)
    if self.stopped then return end
    if not status then return self:round_done(("%s %s: %s"):format(method, url, tostring(text))) end
    if status == 401 or status == 403 then
      return self:round_done(("the API refused the access token (%d on %s %s): check --tailscale-api-key")
        :format(status, method, url))
    end
    if status < 200 or status > 299 then
      return self:round_done(("%s %s answered %d"):format(method, url, status))
    end
    local ok, doc = pcall(json.decode, text or "")
    if not ok or type(doc) ~= "table" then
      return self:round_done(("%s %s: the answer is not a JSON object"):format(method, url))
    end
    done(doc)
  end)
end

function Discovery:round_done(err)
  self.busy = false
  if err then return self:fail(err) end
  if self.last_error then self.log("tailscale: the API answers again") end
  self.last_error = nil
end

-- This host's non-loopback addresses, to find its own device when no id was given.
local function local_addresses()
  local set = {}
  for _, addrs in pairs(uv.interface_addresses() or {}) do
    for _, a in ipairs(addrs) do
      if not a.internal and a.ip then set[a.ip] = true end
    end
  end
  return set
end

function Discovery:find_self(devices)
  local mine = not self.device_id and local_addresses()
  for _, d in ipairs(devices) do
    local id = type(d) == "table" and device_id(d)
    if id then
      if self.device_id then
        if d.nodeId == self.device_id or tostring(d.id) == self.device_id then return id end
      elseif type(d.addresses) == "table" then
        for _, a in ipairs(d.addresses) do
          if mine[a] then return id end
        end
      end
    end
  end
  return nil
end

-- Posts each attribute in turn, then calls done().
function Discovery:publish(done)
  local attrs, err = M.attributes(self.node_id, self.wire_port, self.capabilities)
  if not attrs then return self:round_done(err) end
  local keys = {}
  for k in pairs(attrs) do keys[#keys + 1] = k end
  table.sort(keys)
  local i = 0
  local function next_key()
    i = i + 1
    if i > #keys then
      self.published = true
      return done()
    end
    self:call("POST", ("/api/v2/device/%s/attributes/%s"):format(url_escape(self.self_device), keys[i]),
      { value = attrs[keys[i]] }, next_key)
  end
  next_key()
end

function Discovery:recent(d, now)
  if d.connectedToControl == true then return true end
  local t = M.parse_time(d.lastSeen)
  return t ~= nil and now - t <= self.timeout
end

-- Reads the attributes of each recent device but ours, then publishes what it found.
function Discovery:collect(devices, done)
  local now = os.time()
  local todo = {}
  for _, d in ipairs(devices) do
    local id = type(d) == "table" and device_id(d)
    if id and id ~= self.self_device and ipv4_of(d) and self:recent(d, now) and #todo < MAX_DEVICES then
      todo[#todo + 1] = { id = id, address = ipv4_of(d) }
    end
  end
  self.counts.devices = #todo
  local found, i = {}, 0
  local function next_device()
    i = i + 1
    if i > #todo then return done(found) end
    local dev = todo[i]
    self:call("GET", ("/api/v2/device/%s/attributes"):format(url_escape(dev.id)), nil, function(doc)
      local a = type(doc.attributes) == "table" and doc.attributes or {}
      local node_id = M.decode_id(a[PREFIX .. "node_id"])
      local port = a[PREFIX .. "port"]
      if node_id and node_id ~= self.node_id and int_in(port, 1, 65535) then
        -- What the device advertises is informational only: the peer's hello reports its exact
        -- capabilities, and handing the cluster these rounded ones would make its view (and so its
        -- plan) differ from the peer's own.
        found[node_id] = { id = node_id, address = dev.address, port = port, advertised = M.capabilities(a) }
      end
      next_device()
    end)
  end
  next_device()
end

local function same_records(a, b)
  for id, r in pairs(a) do
    local o = b[id]
    if not o or o.address ~= r.address or o.port ~= r.port then return false end
  end
  for id in pairs(b) do
    if not a[id] then return false end
  end
  return true
end

-- One round: list, find ourselves and publish (once), read the others, report changes.
function Discovery:round()
  if self.busy or self.stopped then return end
  self.busy = true
  self.counts.rounds = self.counts.rounds + 1
  self:call("GET", ("/api/v2/tailnet/%s/devices"):format(url_escape(self.tailnet)), nil, function(doc)
    if type(doc.devices) ~= "table" then return self:round_done("the device list has no \"devices\" array") end
    local devices = doc.devices
    local function read_others()
      self:collect(devices, function(found)
        if not same_records(found, self.peers) then
          self.peers = found
          self.on_change(found)
        end
        self:round_done()
      end)
    end
    if not self.self_device then
      self.self_device = self:find_self(devices)
      if not self.self_device then
        return self:round_done(self.device_id
          and ("device %s is not in tailnet %s"):format(self.device_id, self.tailnet)
          or ("none of tailnet %s's devices has this host's addresses (give --tailscale-device-id)")
            :format(self.tailnet))
      end
    end
    -- Published once, then again now and then: a device re-added to the tailnet, or an admin
    -- clearing attributes, loses them.
    if self.published and (self.counts.rounds - self.published_round) < REPUBLISH_ROUNDS then return read_others() end
    self.published_round = self.counts.rounds
    self:publish(read_others)
  end)
end

-- Starts polling. Never fails: without a key or an HTTP client it logs why and stays idle.
function Discovery:start()
  if not self.api_key then
    self.last_error = "no API access token (--tailscale-api-key or TAILSCALE_API_KEY): Tailscale discovery is off"
    self.log("tailscale: %s", self.last_error)
    return true
  end
  if not self.http then
    self.last_error = "HTTP client unavailable: Tailscale discovery is off"
    self.log("tailscale: %s", self.last_error)
    return true
  end
  self.timer = uv.new_timer()
  self.timer:start(0, math.floor(self.interval * 1000), function() self:round() end)
  return true
end

function Discovery:stop()
  self.stopped = true
  if self.timer then
    self.timer:stop()
    self.timer:close()
    self.timer = nil
  end
end

return M
