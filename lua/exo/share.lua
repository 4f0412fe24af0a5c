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

-- Every file of a model in this node's store (all parts of a split GGUF),
-- as { path = "folder/file", size, sha256 }; waits on the coroutine.
function M.local_files(name)
  if type(name) ~= "string" or #name > 256 then return {} end
  local spec = models.lookup(name)
  local rel = spec and models.local_file(spec)
  if not rel then return {} end
  local folder = spec.dir:match("([^/]+)$")
  local rels = { rel }
  local stem, total = rel:match("^(.-)%-00001%-of%-(%d+)%.gguf$")
  if stem then
    rels = {}
    for i = 1, tonumber(total) do rels[i] = ("%s-%05d-of-%s.gguf"):format(stem, i, total) end
  end
  local out = {}
  for _, r in ipairs(rels) do
    local path, st = servable(folder .. "/" .. r)
    local sha = path and sha_of(path, st)
    if not sha then return {} end
    out[#out + 1] = { path = folder .. "/" .. r, size = st.size, sha256 = sha }
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
-- "refused").
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

-- Fetches spec's files from peers into the store; waits on the coroutine.
-- st: download.lua's status (files, source, done). Returns the real path of
-- the first file; or nil, err, asked (true when some peer held the model, so
-- the error is about them rather than "nobody has it").
function M.fetch(spec, st)
  if not M.available() then return nil, "no peers", false end
  local holders = ask_peers(spec.name)
  local folder = spec.dir:match("([^/]+)$")
  -- The files as the most holders describe them (a lone liar cannot outvote the rest).
  local votes, best, best_n = {}, nil, 0
  for peer, files in pairs(holders) do
    local ok = #files > 0 and #files <= 64
    for _, f in ipairs(files) do ok = ok and valid_file(f, folder) end
    if ok then
      local parts = {}
      for _, f in ipairs(files) do parts[#parts + 1] = ("%s %d %s"):format(f.path, f.size, f.sha256:lower()) end
      local key = table.concat(parts, "\n")
      local v = votes[key] or { files = files, peers = {}, key = key }
      votes[key] = v
      v.peers[#v.peers + 1] = peer
      if #v.peers > best_n or (#v.peers == best_n and key < best.key) then best, best_n = v, #v.peers end
    end
  end
  if not best then return nil, ("no peer has model '%s'"):format(spec.name), false end
  table.sort(best.peers)
  st.source = "peer " .. best.peers[1]
  st.files = {}
  for _, f in ipairs(best.files) do
    st.files[#st.files + 1] = { path = f.path:sub(#folder + 2), size = f.size, sha256 = f.sha256:lower(),
      remote = f.path, done = 0 }
  end
  uv.fs_mkdir(models.store(), 493)
  uv.fs_mkdir(spec.dir, 493)
  for _, f in ipairs(st.files) do
    local dest = spec.dir .. "/" .. f.path
    local sub = f.path:match("^(.*)/[^/]*$")
    if sub then uv.fs_mkdir(spec.dir .. "/" .. sub, 493) end
    local have = uv.fs_stat(dest)
    if have and have.size == f.size then
      f.done = f.size
    else
      local got, last_err = false, nil
      for _, peer in ipairs(best.peers) do
        local key = peer .. "\0" .. f.remote
        if not liars[key] and cluster.peers[peer] then
          st.source = "peer " .. peer
          local ok, why, kind = transfer(peer, { path = f.remote, size = f.size, sha256 = f.sha256 }, dest,
            function(bytes) f.done = bytes end)
          if ok then
            got = true
            f.done = f.size
            break
          end
          last_err = ("from peer %s: %s"):format(peer, why)
          if kind == "lied" then
            liars[key] = true
            cluster:note("error", "peer %s sent %s with the wrong bytes: it is not asked for it again", peer, f.path)
          end
          if kind == "local" then break end
        end
      end
      if not got then return nil, ("cannot get %s from peers: %s"):format(f.path, last_err or "no holder left"), true end
    end
  end
  local real = native.realpath(spec.dir .. "/" .. st.files[1].path)
  if not real then return nil, "fetched, but cannot find " .. st.files[1].path, true end
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
