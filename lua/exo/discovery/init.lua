-- exo.discovery: which discovery modules a node runs, and how their findings reach the cluster.
--
-- A node runs one module (udp, the default; manual, a peers file; tailscale, the Tailscale API)
-- or several at once (--discovery-module udp,tailscale), or none. Each module reports the whole
-- set of peers it knows (id -> { id, address, port, capabilities }) whenever it changes; the
-- merger keeps each module's latest set and hands the cluster their union, so one module
-- dropping a peer does not drop what another still finds (the first module named wins for an id
-- both find). A group puts the running modules behind one start/stop/stats, so /v1/topology
-- shows every module's counters.
local M = {}

M.builtin = { "udp", "manual", "tailscale", "none" }

local known = {}
for _, name in ipairs(M.builtin) do known[name] = true end

--- discovery.parse("udp,tailscale") -> { "udp", "tailscale" }, or nil, err. "none" stands alone.
function M.parse(spec)
  if type(spec) ~= "string" then error("discovery.parse: expected a string, got " .. type(spec), 2) end
  local names, seen = {}, {}
  for name in spec:gmatch("[^,%s]+") do
    if not known[name] then
      return nil, ("--discovery-module %s is not available (%s, or several joined by commas)")
        :format(name, table.concat(M.builtin, ", "))
    end
    if not seen[name] then
      seen[name] = true
      names[#names + 1] = name
    end
  end
  if #names == 0 then return nil, "--discovery-module needs a module name" end
  if seen.none and #names > 1 then return nil, "--discovery-module none cannot be combined with other modules" end
  return names
end

--- discovery.merger(names, publish) -> feed(name, records): each call replaces module name's
--- records and calls publish(union) with the union, earlier names first.
function M.merger(names, publish)
  local by_module = {}
  return function(name, records)
    by_module[name] = records or {}
    local union = {}
    for i = #names, 1, -1 do
      for id, r in pairs(by_module[names[i]] or {}) do union[id] = r end
    end
    publish(union)
  end
end

--- discovery.keep_out(cluster) -> update(peers): call it with every version of the peers file's
--- peers (id -> record). A peer the file listed and no longer lists is kept out until it is listed
--- again: its connection is closed now, it is not dialed (a gossiped address for it is forgotten),
--- and a connection it makes is closed as soon as its hello arrives. Without this a removed peer
--- stays: the live connection survives the edit, and a peer that still knows it gossips it back.
function M.keep_out(cluster)
  local listed, out = {}, {}
  local why = require("exo.cluster").KEPT_OUT
  local function enforce()
    for id in pairs(out) do
      local k = cluster.known[id]
      if k and k.source ~= "discovery" then cluster.known[id] = nil end
      local p = cluster.peers[id]
      if p then
        cluster.wire:close_conn(p.conn, why)
        cluster:lose(id, why)
      end
    end
  end
  cluster:on_change(enforce)
  return function(peers)
    for id in pairs(listed) do
      if not peers[id] then out[id] = true end
    end
    listed = {}
    for id in pairs(peers) do
      listed[id] = true
      out[id] = nil
    end
    enforce()
  end
end

local Group = {}
Group.__index = Group

--- discovery.group(list) -> one object over the running modules (nil when there are none).
function M.group(list)
  if #list == 0 then return nil end
  return setmetatable({ list = list }, Group)
end

function Group:stop()
  for _, w in ipairs(self.list) do w:stop() end
end

-- One module: its own stats (the shape /v1/topology has always shown); several: each by name.
function Group:stats()
  local all, n, only = {}, 0, nil
  for _, w in ipairs(self.list) do
    if w.stats then
      local s = w:stats()
      all[s.module or ("module" .. n)] = s
      n, only = n + 1, s
    end
  end
  if n == 0 then return nil end
  if n == 1 then return only end
  local names = {}
  for name in pairs(all) do names[#names + 1] = name end
  table.sort(names)
  all.module = table.concat(names, ",")
  return all
end

return M
