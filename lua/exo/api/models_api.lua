-- models_api.lua: downloading and deleting models over HTTP, as the original exo's API does.
--
--   POST   /download              {"model": ID}: starts downloading a catalogue model on this
--                                 node and every peer (200 {"status": "success", "message"};
--                                 404 unknown id)
--   GET    /v1/download/progress  {NODE_ID: event} for this node's latest download and the
--                                 peers' it started (their download_event messages), the
--                                 original's RepoProgressEvent shape: repo_id, repo_revision,
--                                 completed_files, total_files, downloaded_bytes,
--                                 downloaded_bytes_this_session, total_bytes, overall_speed,
--                                 overall_eta, file_progress, status ("in_progress",
--                                 "complete", "failed"), plus model and error; and the
--                                 fetches a request started: this node's own, and each ring
--                                 member's that an open of this node's made fetch the model
--                                 (their `fetching` answers, lua/exo/ring/asker.lua), with
--                                 "source": "request"
--   DELETE /models/{id}           removes a catalogue model's files (200; 404 when none)
--
-- A client names catalogue ids only (docs/security.md: clients never pick what a node
-- fetches from the internet nor which folder it deletes); hub repository ids are the
-- operator's, on the command line. Unlike the original, a finished or failed download stays
-- listed (with its status) until the next one starts, so a page polling late still sees it.
local uv = require "luv"
local json = require "exo.json"
local models = require "exo.models"
local download = require "exo.download"
local openai = require "exo.api.openai"

local M = {}

-- A catalogue id (or "id:QUANT"), or nil.
local function catalogue_name(name)
  if type(name) ~= "string" then return nil end
  local spec = models.lookup(name)
  return spec and spec.entry and name or nil
end

local latest -- the name of this node's most recent download
local remote = {} -- node id -> { model, event }: other nodes' progress, from download_event
local asked = {}  -- node id -> the model this node asked it to download (only that is listed)
local attached -- the cluster (M.attach)

-- ---- across the cluster --------------------------------------------------------------
-- POST /download on one node starts the download on every node of the cluster
-- (control message download_start {model}); each pulls its files (peers first,
-- then the hub: download.pull) and sends the node that asked its progress
-- (download_event {model, event}) twice a second and once more when it ends,
-- so that node's /v1/download/progress lists every node, keyed by node id, as
-- the original exo's does. A plan may put a model on any of the nodes, and a
-- GGUF's shard is its whole file today, so every node fetches it.

local REPORT_MS = 500

-- One download's status in the original exo's RepoProgressEvent shape.
function M.event(st)
  local done, total, speed = download.totals(st)
  local completed, files = 0, {}
  for _, f in ipairs(st.files) do
    local finished = f.size and (f.done or 0) >= f.size and not f.job
    if finished then completed = completed + 1 end
    files[f.path] = { repo_id = st.repo, repo_revision = "main", file_path = f.path, downloaded = f.done or 0,
      downloaded_this_session = f.done or 0, total = f.size or 0, speed = f.speed or 0,
      eta = (f.speed or 0) > 0 and ((f.size or 0) - (f.done or 0)) / f.speed or 0,
      status = finished and "complete" or (st.state == "downloading" and "in_progress" or "not_started") }
  end
  local status = st.state == "downloading" and "in_progress" or st.state
  return {
    model = st.name, repo_id = st.repo, repo_revision = "main", completed_files = completed,
    total_files = #st.files, downloaded_bytes = done, downloaded_bytes_this_session = done, total_bytes = total,
    overall_speed = speed, overall_eta = speed > 0 and (total - done) / speed or 0,
    file_progress = files, status = status,
    error = st.error or json.null, source = st.source,
  }
end

-- A ring member's fetch as its asker follows it (ring/asker.lua's fetches:
-- bytes and speed from the member's `fetching` answers; no per-file detail).
function M.fetch_event(f)
  local eta = f.status == "in_progress" and f.speed > 0 and math.max(0, f.total - f.done) / f.speed or 0
  local spec = models.lookup(f.model)
  return {
    model = f.model, repo_id = spec and spec.entry and spec.repo or json.null, repo_revision = "main",
    completed_files = 0, total_files = 0, downloaded_bytes = f.done, downloaded_bytes_this_session = f.done,
    total_bytes = f.total, overall_speed = f.speed, overall_eta = eta, file_progress = {},
    status = f.status, error = f.error or json.null, source = "request",
  }
end

local function node_id(ctx)
  local c = ctx.cluster or attached
  return c and (c.node_id or c.id) or "local"
end

-- Pulls name on a coroutine of its own; report(event) is called every
-- REPORT_MS while it runs and once when it ends (nil: no reports).
-- name's download status; a model that was in the store already has none,
-- and is complete (source "store").
local function status_of(name)
  local st = download.status[name]
  if st then return st end
  local path = models.resolve(name, false)
  if not path then return nil end
  local size = uv.fs_stat(path)
  size = size and size.size or 0
  return { name = name, repo = (models.lookup(name) or {}).repo, state = "complete",
    files = { { path = path:match("[^/]+$"), size = size, done = size } }, source = "store" }
end

local function start_pull(name, report)
  latest = name
  local finished = false
  local timer = report and uv.new_timer()
  local function status()
    return status_of(name) or { name = name, state = "failed", files = {}, error = "no status" }
  end
  coroutine.wrap(function()
    local path, err = download.pull(name)
    finished = true
    if not path then io.stderr:write(("exo: download of %s failed: %s\n"):format(name, err)) end
    if timer then
      timer:stop()
      timer:close()
      report(M.event(status()))
    end
  end)()
  if timer and not finished then
    timer:start(REPORT_MS, REPORT_MS, function() report(M.event(status())) end)
  end
end

-- The node ids of name's plan over the cluster as this node sees it, planned
-- from the catalogue's layer count and size (the file is not here yet), or
-- nil when the entry lacks them (then every node fetches it). An estimate: a
-- node the real plan adds fetches the model when its open comes.
local function plan_nodes(ring, name)
  local spec = models.lookup(name)
  local entry = spec and spec.entry
  local n_layers, size = entry and tonumber(entry.n_layers), spec and tonumber(spec.size or entry.size)
  if not (ring and n_layers and n_layers >= 1 and size and size > 0) then return nil end
  local ok, plan = pcall(ring.plan, ring, { id = name, n_layers = n_layers, layer_bytes = math.floor(size / n_layers) })
  if not ok or type(plan) ~= "table" or #plan == 0 then return nil end
  local ids = {}
  for _, p in ipairs(plan) do ids[p.node_id] = true end
  return ids
end

-- A peer's download_start: pull the model, reporting to that peer.
local function on_start(from, _, msg)
  local name = catalogue_name(msg.model)
  if not name then
    -- Catalogues may differ between nodes ($EXO_HOME/models.lua): the asker hears which lacks it.
    local given = tostring(msg.model):sub(1, 200)
    return attached:send(from, 0, { t = "download_event", model = given, event = M.event({ name = given,
      state = "failed", files = {}, error = ("node %s does not know model '%s'"):format(attached.id, given) }) })
  end
  start_pull(name, function(event) attached:send(from, 0, { t = "download_event", model = name, event = event }) end)
end

local function on_event(from, _, msg)
  if type(msg.model) == "string" and asked[from] == msg.model and type(msg.event) == "table" then
    remote[from] = { model = msg.model, event = msg.event }
  end
end

-- Serves download_start and download_event over cluster c (the cluster calls this once it starts).
function M.attach(c)
  attached = c
  c:on("download_start", on_start)
  c:on("download_event", on_event)
end

function M.register(routes)
  routes["POST /download"] = function(ctx, req, res)
    local ok, body = pcall(json.decode, req.body or "")
    local name = ok and type(body) == "table" and catalogue_name(body.model)
    if not name then
      local given = ok and type(body) == "table" and body.model
      return res:json(openai.error(404, ("unknown model '%s': POST /download takes a catalogue id (GET /v1/models)")
        :format(tostring(given)), "not_found_error", "model", "model_not_found"))
    end
    -- Every other node of the model's plan starts too; their progress comes back here.
    remote, asked = {}, {}
    local c = ctx.cluster or attached
    local n = 0
    if c and c.peers then
      local in_plan = plan_nodes(ctx.ring, name)
      for peer in pairs(c.peers) do
        if (not in_plan or in_plan[peer]) and c:send(peer, 0, { t = "download_start", model = name }) then
          n, asked[peer] = n + 1, name
        end
      end
    end
    -- The download runs on its own coroutine; the route answers at once.
    start_pull(name)
    res:json(200, { status = "success", message = "Download started for model: " .. name
      .. (n > 0 and (" on this node and %d peer%s"):format(n, n == 1 and "" or "s") or "") })
  end

  routes["GET /v1/download/progress"] = function(ctx, _, res)
    local st = latest and status_of(latest)
    local out = {}
    if st then out[node_id(ctx)] = M.event(st) end
    for id, r in pairs(remote) do
      if r.model == latest then out[id] = r.event end
    end
    -- Downloads a request started: this node's (download.ensure, before it
    -- plans) and the ring members' its opens wait on. A node's running
    -- download shows before an ended one.
    local function offer(id, event)
      local had = out[id]
      if not had or (had.status ~= "in_progress" and event.status == "in_progress") then out[id] = event end
    end
    local here = node_id(ctx)
    for name, d in pairs(download.status) do
      if name ~= latest and d.state == "downloading" then
        local event = M.event(d)
        event.source = "request"
        offer(here, event)
      end
    end
    for id, f in pairs(ctx.ring and ctx.ring.fetches or {}) do offer(id, M.fetch_event(f)) end
    res:json(200, out) -- {} when nothing was downloaded
  end
end

-- DELETE /models/{id} (the id URL-decoded).
function M.delete(_, _, res, raw)
  local id = raw:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  if not catalogue_name(id) then
    return res:json(openai.error(404, ("unknown model '%s'"):format(id), "not_found_error", "model",
      "model_not_found"))
  end
  local n, err = download.remove(id)
  if not n then
    local status = err:find("downloading", 1, true) and 409 or 404
    return res:json(status, { detail = err })
  end
  res:json(200, { status = "success", message = ("Model %s deleted successfully"):format(id),
    path = models.store() .. "/" .. id, files = n })
end


return M
