-- manual.lua: discovery from a peers file that the operator writes by hand.
--
-- The file uses the original exo's manual discovery format:
--   {"peers": {"<id>": {"address": "10.0.0.2", "port": 5678, "device_capabilities":
--     {"model": "...", "chip": "...", "memory": MB, "flops": {"fp32": T, "fp16": T, "int8": T}}}}}
-- parse() checks it strictly and names the node and field of every fault. A watcher
-- polls the file's stat on a luv timer (editors replace files by rename, which a
-- file watch would miss) and re-reads it when it changes: a good file is announced
-- through on_change, a bad or missing one through on_error while the last good
-- config stays in force, so a typo never takes the cluster down. JSON null counts
-- as absent for the optional fields.
local uv = require "luv"
local json = require "exo.json"

local M = {}

local MAX_PEERS = 1024
local MAX_ID_BYTES = 128

-- lua-cjson decodes objects and arrays alike to tables: an object has only string keys.
local function is_object(v)
  if type(v) ~= "table" then return false end
  for k in pairs(v) do
    if type(k) ~= "string" then return false end
  end
  return true
end

local function absent(v) return v == nil or v == json.null end

local function is_count(v) return type(v) == "number" and v >= 0 and v < math.huge end

local function peer_record(id, peer)
  local function bad(field, what, got)
    local shown = got == nil and "nothing" or json.encode(got) or tostring(got)
    return nil, ("peers file: node '%s': %s %s (got %s)"):format(id, field, what, shown)
  end
  if not is_object(peer) then return bad("entry", "must be an object", peer) end
  local address, port = peer.address, peer.port
  if type(address) ~= "string" or address == "" then
    return bad("address", "must be a non-empty string", address)
  end
  if type(port) ~= "number" or port % 1 ~= 0 or port < 1 or port > 65535 then
    return bad("port", "must be an integer in 1..65535", port)
  end
  local caps, dc = {}, peer.device_capabilities
  if not absent(dc) then
    if not is_object(dc) then return bad("device_capabilities", "must be an object", dc) end
    for _, field in ipairs({ "model", "chip" }) do
      local v = dc[field]
      if not absent(v) then
        if type(v) ~= "string" then return bad("device_capabilities." .. field, "must be a string", v) end
        caps[field] = v
      end
    end
    if not absent(dc.memory) then
      if not is_count(dc.memory) then
        return bad("device_capabilities.memory", "must be a non-negative number of MB", dc.memory)
      end
      caps.memory = dc.memory
    end
    if not absent(dc.flops) then
      if not is_object(dc.flops) then return bad("device_capabilities.flops", "must be an object", dc.flops) end
      caps.flops = {}
      for _, kind in ipairs({ "fp32", "fp16", "int8" }) do
        local v = dc.flops[kind]
        if not absent(v) then
          if not is_count(v) then
            return bad("device_capabilities.flops." .. kind, "must be a non-negative number of TFLOPS", v)
          end
          caps.flops[kind] = v
        end
      end
    end
  end
  return { id = id, address = address, port = port, capabilities = caps }
end

-- Returns { self = record, peers = { [id] = record } } (peers without self), or
-- nil, err. Pure. Nodes are checked in id order so the first fault reported is
-- the same on every run.
function M.parse(text, self_id)
  assert(type(text) == "string", "manual.parse: text must be a string")
  assert(type(self_id) == "string", "manual.parse: self_id must be a string")
  local doc, err = json.decode(text)
  if doc == nil then return nil, "peers file: invalid JSON: " .. err end
  if not is_object(doc) or not is_object(doc.peers) then
    return nil, 'peers file: expected a top-level object with a "peers" object'
  end
  local ids = {}
  for id in pairs(doc.peers) do
    if #ids == MAX_PEERS then return nil, ("peers file: more than %d peers"):format(MAX_PEERS) end
    if id == "" or #id > MAX_ID_BYTES then
      return nil, ("peers file: node id '%s' must be 1..%d bytes"):format(id, MAX_ID_BYTES)
    end
    ids[#ids + 1] = id
  end
  table.sort(ids)
  local config = { peers = {} }
  for _, id in ipairs(ids) do
    local record, rerr = peer_record(id, doc.peers[id])
    if not record then return nil, rerr end
    if id == self_id then config.self = record else config.peers[id] = record end
  end
  if not config.self then return nil, ("peers file: this node's id '%s' is not in the peers file"):format(self_id) end
  return config
end

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- What identifies a version of the file without reading it; nil, err if it cannot be stat'ed.
local function signature(path)
  local st, err = uv.fs_stat(path)
  if not st then return nil, err end
  return table.concat({ st.ino, st.dev, st.size, st.mtime.sec, st.mtime.nsec, st.ctime.sec, st.ctime.nsec }, ":")
end

local function load(path, node_id)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read peers file: " .. err end
  local text = f:read("*a")
  f:close()
  if not text then return nil, "cannot read peers file " .. path end
  return M.parse(text, node_id)
end

local Watcher = {}
Watcher.__index = Watcher

-- Reads and checks the file now (nil, err if it is bad: the node should refuse
-- to start); start() then announces it and watches for changes.
function M.new(opts)
  assert(type(opts) == "table", "manual.new: opts must be a table")
  assert(type(opts.path) == "string", "manual.new: opts.path must be a string")
  assert(type(opts.node_id) == "string", "manual.new: opts.node_id must be a string")
  assert(type(opts.on_change) == "function", "manual.new: opts.on_change must be a function")
  local interval = opts.interval_ms or 1000
  assert(type(interval) == "number" and interval > 0, "manual.new: opts.interval_ms must be positive")
  -- Stat before reading: a change that lands in between is then seen by the next poll.
  local sig = signature(opts.path)
  local config, err = load(opts.path, opts.node_id)
  if not config then return nil, err end
  return setmetatable({
    path = opts.path, node_id = opts.node_id, interval = interval, sig = sig, current = config,
    on_change = opts.on_change,
    on_error = opts.on_error or function(msg) io.stderr:write("exo: discovery: " .. msg .. "\n") end,
  }, Watcher)
end

-- One poll: re-read only when the stat changed, and report each new fault once
-- (a file that stays missing or bad is not reported again every period).
function Watcher:poll()
  local sig, err = signature(self.path)
  local key = sig or ("missing:" .. tostring(err))
  if key == self.sig then return end
  self.sig = key
  if not sig then return self.on_error("cannot stat peers file (keeping the last good peers): " .. err) end
  local config, perr = load(self.path, self.node_id)
  if not config then return self.on_error(perr .. " (keeping the last good peers)") end
  if same(config, self.current) then return end
  self.current = config
  self.on_change(config)
end

function Watcher:start()
  assert(not self.timer, "manual watcher: already started")
  self.timer = uv.new_timer()
  local first = true
  self.timer:start(0, self.interval, function()
    if first then
      first = false
      return self.on_change(self.current)
    end
    self:poll()
  end)
  return self
end

function Watcher:stop()
  if self.timer and not self.timer:is_closing() then
    self.timer:stop()
    self.timer:close()
  end
end

function Watcher:config() return self.current end

return M
