-- share.lua: model files between peers, so a cluster where one node holds a
-- model serves it without the internet (issue 16, "Peers share model files").
--
-- Lua decides and C moves the bytes (docs/wire.md, "Sharing model files"):
-- a node missing a model asks its admitted peers who holds it (share_ask,
-- answered share_have with each file's path in the store, size and SHA-256),
-- then asks one holder for each file from where its .partial ends
-- (share_get); the holder's C side streams CHUNK frames, the asker's writes
-- them into the partial, hashes them, and renames the file into place once
-- the hash matches. This module grants credit as the bytes land (share_credit)
-- so the holder never has more than a window in flight, and falls back to
-- the next holder when one vanishes (the partial is kept) or lies (its file
-- is deleted and it is not asked for that file again). A node serves only
-- regular files inside its model store, by real path, and only to peers the
-- cluster admitted (with a cluster key: peers that proved it).
local uv = require "luv"
local native = require "exo.native"
local models = require "exo.models"

local M = {}

M.WINDOW = 8 * 1048576  -- bytes a holder may have in flight to us
M.ASK_TIMEOUT_MS = 3000 -- how long peers have to answer share_ask (or say share_wait)
M.HASH_TIMEOUT_MS = 600000 -- how long a peer that said share_wait may take (hashing gigabytes)
M.STALL_MS = 20000      -- a transfer with no byte for this long is given up (next source)

local cluster       -- the cluster this node serves in (M.attach)
local asks = {}     -- ask id -> { co, answers = { peer -> files }, waiting }
local transfers = {} -- transfer id -> { co, granted, conn, on_progress, last_ms }
local next_id = 1
local liars = {}    -- "peer\0path" -> true: a peer whose bytes failed their hash
local hashes = {}   -- real path -> { size, mtime, sha256 }

local function new_id()
  local id = next_id
  next_id = next_id + 1
  return id
end

-- ---- serving -------------------------------------------------------------------

local function store_real() return native.realpath(models.store()) end

-- The real path of a store-relative "folder/file" a peer names, or nil: a
-- plain relative path whose real path lies inside the store and is a
-- regular file (not a partial).
local function servable(rel)
  if type(rel) ~= "string" or #rel > 512 or rel:find("..", 1, true) or rel:sub(1, 1) == "/"
    or not rel:match("^[%w._-]+/[%w._/-]+$") or rel:match("%.partial$") then
    return nil
  end
  local store = store_real()
  local path = store and native.realpath(store .. "/" .. rel)
  if not path or path:sub(1, #store + 1) ~= store .. "/" then return nil end
  local st = uv.fs_stat(path)
  if not st or st.type ~= "file" then return nil end
  return path, st
end

-- The file's SHA-256, computed once per (size, mtime) on libuv's thread
-- pool (gigabytes take seconds: the loop keeps serving and answering pings);
-- waits on the coroutine. Askers of one file at once share one hash job.
local hashing = {}  -- job id -> path; path -> { coroutines waiting }
local function sha_of(path, st)
  local h = hashes[path]
  if h and h.size == st.size and h.mtime == st.mtime.sec then return h.sha256 end
  local waiting = hashing[path]
  if not waiting then
    local id = new_id()
    if not cluster.wire:hash_file(id, path) then return nil end
    waiting = {}
    hashing[path], hashing[id] = waiting, path
  end
  waiting[#waiting + 1] = coroutine.running()
  local sha = coroutine.yield()
  if sha then hashes[path] = { size = st.size, mtime = st.mtime.sec, sha256 = sha } end
  return sha
end

local function on_hashed(id, data, status)
  local path = hashing[id]
  if not path then return end
  local waiting = hashing[path]
  hashing[id], hashing[path] = nil, nil
  for _, co in ipairs(waiting) do
    local ok, err = coroutine.resume(co, status == 0 and data or nil)
    if not ok then io.stderr:write("exo: share: " .. tostring(err) .. "\n") end
  end
end

-- The store-relative files of name's model here: every part of a split
-- GGUF, or a safetensors folder's model files (exo.download.model_file:
-- the weight files it holds, which may be some layers' only, and the side
-- files), or nil.
local function model_rels(name)
  local spec = models.lookup(name)
  local rel = spec and models.local_file(spec)
  if not rel then return nil end
  local folder = spec.dir:match("([^/]+)$")
  local rels = {}
  if rel == "." then
    local download = require "exo.download"
    local req = uv.fs_scandir(spec.dir)
    while req do
      local n, t = uv.fs_scandir_next(req)
      if not n then break end
      if t == "file" and download.model_file(n) then rels[#rels + 1] = folder .. "/" .. n end
    end
    table.sort(rels)
    return rels
  end
  local stem, total = rel:match("^(.-)%-00001%-of%-(%d+)%.gguf$")
  if not stem then return { folder .. "/" .. rel } end
  for i = 1, tonumber(total) do rels[i] = ("%s/%s-%05d-of-%s.gguf"):format(folder, stem, i, total) end
  return rels
end

-- Every file of a model in this node's store (all parts of a split GGUF,
-- a safetensors folder's files), as { path = "folder/file", size, sha256 };
-- waits on the coroutine.
function M.local_files(name)
  if type(name) ~= "string" or #name > 256 then return {} end
  local out = {}
  for _, rel in ipairs(model_rels(name) or {}) do
    local path, st = servable(rel)
    local sha = path and sha_of(path, st)
    if not sha then return {} end
    out[#out + 1] = { path = rel, size = st.size, sha256 = sha }
  end
  return out
end

local function on_ask(from, _, msg)
  if type(msg.id) ~= "number" then return end
  -- The answer may wait on hashing a large file for the first time: say so,
  -- so the asker waits for it rather than giving up after a few seconds.
  cluster:send(from, 0, { t = "share_wait", id = msg.id })
  coroutine.wrap(function()
    local files = M.local_files(msg.name)
    local name = type(msg.name) == "string" and #msg.name <= 256 and msg.name or nil
    cluster:send(from, 0, { t = "share_have", id = msg.id, name = name, files = files[1] and files or nil })
  end)()
end

local function on_get(from, _, msg)
  local id = msg.id
  if type(id) ~= "number" or id < 1 or id >= 2 ^ 53 or id % 1 ~= 0 then return end
  local function refuse(why) cluster:send(from, 0, { t = "share_refused", id = id, message = why }) end
  local path = servable(msg.path)
  -- One answer for missing and forbidden alike: it tells nothing about the file system.
  if not path then return refuse(("no file %s in this node's model store"):format(tostring(msg.path):sub(1, 200))) end
  if type(msg.offset) ~= "number" or type(msg.size) ~= "number" or type(msg.credit) ~= "number" then
    return refuse("share_get needs offset, size and credit")
  end
  local conn = cluster:conn_of(from)
  if not conn or conn == 0 then return end
  local ok, err = cluster.wire:share_send(conn, id, path, msg.offset, msg.size, math.min(msg.credit, M.WINDOW))
  if not ok then refuse(err) end
end

local function on_credit(from, _, msg)
  local conn = cluster:conn_of(from)
  if conn and conn ~= 0 and type(msg.id) == "number" and type(msg.bytes) == "number" then
    cluster.wire:share_credit(conn, msg.id, math.min(msg.bytes, M.WINDOW))
  end
end

-- ---- fetching --------------------------------------------------------------------

local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then io.stderr:write("exo: share: " .. tostring(err) .. "\n") end
end

-- Whether a peer that said share_wait has not answered yet.
local function waiter_pending(a)
  for peer in pairs(a.waits) do
    if a.answers[peer] == nil and cluster.peers[peer] then return true end
  end
  return false
end

local function on_have(from, _, msg)
  local a = asks[msg.id]
  if not a or a.answers[from] ~= nil then return end
  a.answers[from] = type(msg.files) == "table" and msg.files or false
  a.left = a.left - 1
  if a.waiting and (a.left == 0 or (a.long and not waiter_pending(a))) then
    a.waiting = false
    resume(a.co)
  end
end

local function on_wait(from, _, msg)
  local a = asks[msg.id]
  if a then a.waits[from] = true end
end

local function transfer_done(id, ok, why, code)
  local t = transfers[id]
  if not t then return end
  transfers[id] = nil
  if t.waiting then resume(t.co, ok, why, code) end
end

local function on_refused(from, _, msg)
  local t = transfers[msg.id]
  if t and t.peer == from then
    cluster.wire:share_cancel(t.conn, msg.id)
    transfer_done(msg.id, false, tostring(msg.message), "refused")
  end
end

local function on_progress(id, _, bytes)
  local t = transfers[id]
  if not t then return end
  t.last_ms = uv.now()
  t.verifying = bytes >= t.size -- a resumed file is hashed whole now: no stall while that runs
  if t.on_progress then t.on_progress(bytes) end
  -- Grant more once half the window is used: the holder keeps streaming.
  if t.granted - bytes < M.WINDOW / 2 then
    local more = bytes + M.WINDOW - t.granted
    t.granted = t.granted + more
    cluster:send(t.peer, 0, { t = "share_credit", id = id, bytes = more })
  end
end

-- EFORMAT: the bytes were not the promised file's (a wrong hash, bytes out of
-- place); anything else (the connection, our disk) says nothing of the peer.
local function on_end(id, why, status)
  transfer_done(id, status == 0, why ~= "" and why or nil,
    status == 0 and "ok" or status == native.WIRE_SHARE_REJECTED and "lied" or "lost")
end

-- Who holds name: { peer = files } for the peers that answered with files.
local function ask_peers(name)
  local a = { co = coroutine.running(), answers = {}, waits = {}, left = 0 }
  local id = new_id()
  for peer in pairs(cluster.peers) do
    if cluster:send(peer, 0, { t = "share_ask", id = id, name = name }) then a.left = a.left + 1 end
  end
  if a.left == 0 then return {} end
  asks[id] = a
  local timer = uv.new_timer()
  local function expire()
    if not a.waiting then return end
    -- Peers that said share_wait get longer; those that said nothing (a
    -- node without this feature) are not waited for.
    if not a.long and waiter_pending(a) then
      a.long = true
      timer:start(M.HASH_TIMEOUT_MS, 0, expire)
      return
    end
    a.waiting = false
    resume(a.co)
  end
  timer:start(M.ASK_TIMEOUT_MS, 0, expire)
  a.waiting = true
  coroutine.yield()
  timer:stop()
  timer:close()
  asks[id] = nil
  local out = {}
  for peer, files in pairs(a.answers) do
    if files then out[peer] = files end
  end
  return out
end

-- Moves one file from peer into dest; waits on the coroutine. Returns true,
-- or nil, why, kind ("lost": the partial is kept; "lied": it was deleted;
-- "stale": a resumed file failed its hash and was deleted; "refused").
local function transfer(peer, f, dest, on_bytes)
  local conn = cluster:conn_of(peer)
  if not conn or conn == 0 then return nil, ("peer %s is gone"):format(peer), "lost" end
  local id = new_id()
  local offset, err = cluster.wire:share_receive(conn, id, dest, f.size, f.sha256)
  if not offset then return nil, err, "local" end
  local t = { co = coroutine.running(), peer = peer, conn = conn, granted = offset + M.WINDOW, last_ms = uv.now(),
    on_progress = on_bytes, size = f.size }
  transfers[id] = t
  if on_bytes then on_bytes(offset) end
  local sent = cluster:send(peer, 0, { t = "share_get", id = id, path = f.path, offset = offset, size = f.size,
    credit = M.WINDOW })
  if not sent then
    cluster.wire:share_cancel(conn, id)
    transfers[id] = nil
    return nil, ("peer %s is gone"):format(peer), "lost"
  end
  local watchdog = uv.new_timer()
  watchdog:start(1000, 1000, function()
    if transfers[id] and not t.verifying and uv.now() - t.last_ms > M.STALL_MS then
      cluster.wire:share_cancel(conn, id)
      transfer_done(id, false, ("no bytes from %s for %d s (the partial file is kept)"):format(peer,
        M.STALL_MS / 1000), "lost")
    end
  end)
  t.waiting = true
  local ok, why, kind = coroutine.yield()
  watchdog:stop()
  watchdog:close()
  if ok then return true end
  -- A resumed file that fails its hash may have failed for its first part:
  -- bytes an earlier try left (another version of the file, a disk that
  -- lied). That says nothing of this peer; the partial is gone now.
  if kind == "lied" and offset > 0 and tostring(why):match("^hash mismatch") then kind = "stale" end
  return nil, why, kind
end

-- Whether peers may be asked: this node is in a cluster with live peers.
function M.available()
  return cluster ~= nil and cluster.wire ~= nil and next(cluster.peers) ~= nil
end

-- A file a holder names, checked before it touches our disk: in spec's
-- folder, a plain relative name, with a size and a SHA-256.
local function valid_file(f, folder)
  if type(f) ~= "table" or type(f.path) ~= "string" or type(f.size) ~= "number" or f.size < 1
    or f.size % 1 ~= 0 or type(f.sha256) ~= "string" or not f.sha256:match("^%x+$") or #f.sha256 ~= 64 then
    return false
  end
  local rest = f.path:sub(#folder + 2)
  return f.path:sub(1, #folder + 1) == folder .. "/" and not rest:find("..", 1, true)
    and rest:match("^[%w._-][%w._/-]*$") ~= nil and not rest:match("%.partial$")
end

M.MAX_FILES = 256 -- files one holder may list (a safetensors repository's shards, a split GGUF's parts)

-- The files holders describe, as the most holders describe each (a lone
-- liar cannot outvote the rest): { path -> { path, size, sha256, peers
-- (sorted) } }. Holders may list different files (a safetensors folder that
-- holds some layers' shards only); one whose list is malformed counts for
-- nothing.
local function vote(holders, folder)
  local votes = {}
  for peer, files in pairs(holders) do
    local ok = #files > 0 and #files <= M.MAX_FILES
    for _, f in ipairs(files) do ok = ok and valid_file(f, folder) end
    for _, f in ipairs(ok and files or {}) do
      local key = ("%d %s"):format(f.size, f.sha256:lower())
      local by = votes[f.path] or {}
      votes[f.path] = by
      by[key] = by[key] or { path = f.path, size = f.size, sha256 = f.sha256:lower(), peers = {} }
      table.insert(by[key].peers, peer)
    end
  end
  local best = {}
  for path, by in pairs(votes) do
    local pick
    for key, v in pairs(by) do
      if not pick or #v.peers > #pick.peers or (#v.peers == #pick.peers and key < pick.key) then
        pick = v
        pick.key = key
      end
    end
    table.sort(pick.peers)
    best[path] = pick
  end
  return best
end

-- Moves one voted file into the store (unless it is there already);
-- waits on the coroutine. Returns true, or nil, err.
local function fetch_one(spec, st, folder, v)
  local f = { path = v.path:sub(#folder + 2), size = v.size, sha256 = v.sha256, remote = v.path, done = 0 }
  st.files[#st.files + 1] = f
  st.source = st.source:match("^peer ") and st.source or "peer " .. v.peers[1]
  local dest = spec.dir .. "/" .. f.path
  local sub = f.path:match("^(.*)/[^/]*$")
  if sub then uv.fs_mkdir(spec.dir .. "/" .. sub, 493) end
  local have = uv.fs_stat(dest)
  if have and have.size == f.size then
    f.done = f.size
    return true
  end
  local last_err
  for _, peer in ipairs(v.peers) do
    local key = peer .. "\0" .. f.remote
    if not liars[key] and cluster.peers[peer] then
      st.source = "peer " .. peer
      local function get()
        return transfer(peer, { path = f.remote, size = f.size, sha256 = f.sha256 }, dest,
          function(bytes) f.done = bytes end)
      end
      local ok, why, kind = get()
      -- Once more from the start: only whole bytes from this peer judge it.
      if kind == "stale" then ok, why, kind = get() end
      if ok then
        f.done = f.size
        return true
      end
      last_err = ("from peer %s: %s"):format(peer, why)
      if kind == "lied" then
        liars[key] = true
        cluster:note("error", "peer %s sent %s with the wrong bytes: it is not asked for it again", peer, f.remote)
      end
      if kind == "local" then break end
    end
  end
  return nil, ("cannot get %s from peers: %s"):format(f.path, last_err or "no holder left")
end

-- Fetches spec's files from peers into the store; waits on the coroutine.
-- st: download.lua's status (files, source, done). layers ({first, last}):
-- of a safetensors folder, only the weight files its index names for those
-- layers (the index comes first, config.json last: its presence makes the
-- folder a model). Returns the real path of the first file (a GGUF) or of
-- the folder; or nil, err, asked (true when some peer held the model, so
-- the error is about them rather than "nobody has it").
function M.fetch(spec, st, layers)
  if not M.available() then return nil, "no peers", false end
  local holders = ask_peers(spec.name)
  local folder = spec.dir:match("([^/]+)$")
  local offered = vote(holders, folder)
  if not next(offered) then return nil, ("no peer has model '%s'"):format(spec.name), false end
  local function get(name) return offered[folder .. "/" .. name] end
  st.files = {}
  uv.fs_mkdir(models.store(), 493)
  uv.fs_mkdir(spec.dir, 493)
  local want, config = {}, get("config.json")
  local download = require "exo.download"
  -- A safetensors folder: a hub id naming no file, whose holders list a
  -- config.json (a GGUF's list only its parts). The index says which
  -- weight files the layers need.
  if config and spec.file then config = nil end
  if config then
    local index = get("model.safetensors.index.json")
    local need
    if index then
      local ok, err = fetch_one(spec, st, folder, index)
      if not ok then return nil, err, true end
      local fh = io.open(spec.dir .. "/model.safetensors.index.json", "rb")
      local text = fh and fh:read("*a")
      if fh then fh:close() end
      local nerr
      need, nerr = download.safetensors_needs(text or "", layers and layers[1] or 0, layers and layers[2] or math.huge)
      if not need then return nil, "from peers: " .. nerr, true end
    else
      need = { ["model.safetensors"] = true }
    end
    for file in pairs(need) do
      if not get(file) then return nil, ("no peer has %s of model '%s'"):format(file, spec.name), true end
    end
    for path, v in pairs(offered) do
      local name = path:sub(#folder + 2)
      if v ~= index and v ~= config and download.model_file(name)
        and (need[name] or not name:match("%.safetensors$")) then
        want[#want + 1] = v
      end
    end
  else
    -- A GGUF: its file (spec.file, or the offered one of its quant) and the
    -- other parts of a split one; nothing else a holder lists.
    local first = spec.file
    if not first then
      local firsts = {}
      for path in pairs(offered) do
        local name = path:sub(#folder + 2)
        if name:match("%.gguf$") and models.is_first_part(name) then firsts[#firsts + 1] = name end
      end
      table.sort(firsts)
      for _, name in ipairs(firsts) do
        if not first and models.matches_quant(name, spec.quant or "") then first = name end
      end
      if not first and #firsts == 1 then first = firsts[1] end
    end
    for _, part in ipairs(first and models.split_parts(first) or {}) do
      if not get(part) then return nil, ("no peer has %s of model '%s'"):format(part, spec.name), true end
      want[#want + 1] = get(part)
    end
    if #want == 0 then return nil, ("no peer has a GGUF file of model '%s'"):format(spec.name), true end
  end
  table.sort(want, function(a, b) return a.path < b.path end)
  want[#want + 1] = config
  -- Room for it first, as for the hub: a holder's sizes are claims.
  local need = 0
  for _, v in ipairs(want) do
    local dest = spec.dir .. "/" .. v.path:sub(#folder + 2)
    local have, partial = uv.fs_stat(dest), uv.fs_stat(dest .. ".partial")
    if not (have and have.size == v.size) then need = need + math.max(0, v.size - (partial and partial.size or 0)) end
  end
  local free = download.free_bytes(spec.dir)
  if free and need > free then
    return nil, ("not enough disk space for %s: %d MB more are needed, %d MB free in %s"):format(spec.name,
      math.ceil(need / 1e6), math.floor(free / 1e6), spec.dir), true
  end
  for _, v in ipairs(want) do
    local ok, err = fetch_one(spec, st, folder, v)
    if not ok then return nil, err, true end
  end
  local real = native.realpath(config and spec.dir or (spec.dir .. "/" .. st.files[1].path))
  if not real then return nil, "fetched, but cannot find " .. (config and spec.dir or st.files[1].path), true end
  return real
end

-- Serves and fetches over cluster c (the cluster calls this once it starts).
function M.attach(c)
  cluster = c
  c:on("share_ask", on_ask)
  c:on("share_have", on_have)
  c:on("share_wait", on_wait)
  c:on("share_get", on_get)
  c:on("share_credit", on_credit)
  c:on("share_refused", on_refused)
  c:on("wire_share", on_progress)
  c:on("wire_share_end", on_end)
  c:on("wire_hashed", on_hashed)
  -- A peer that said share_wait and then left is not waited for.
  c:on_lost(function()
    for _, a in pairs(asks) do
      if a.waiting and a.long and not waiter_pending(a) then
        a.waiting = false
        resume(a.co)
      end
    end
  end)
end

return M
