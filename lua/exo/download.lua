-- download.lua: getting models from the Hugging Face hub (or any server that
-- speaks its routes), and small HTTP requests for other modules.
--
-- The bytes move in C (native/download.c: libcurl on threads of its own,
-- resumable .partial files, size and SHA-256 checked before the rename); this
-- module decides what to fetch and reports on it. It lists a repository with
-- the hub's tree API (GET {endpoint}/api/models/{repo}/tree/{revision}?
-- recursive=true: path, size, and lfs.oid = the SHA-256 of LFS files), picks
-- the model's file (every part of a split GGUF), and downloads each from
-- {endpoint}/{repo}/resolve/{revision}/{path}, several at once. Completions
-- come back through one luv poll on the downloader's eventfd, so the loop
-- keeps serving while a model downloads; a caller on a coroutine simply
-- waits (M.request, M.pull), and M.run_blocking drives the loop for the CLI.
-- Settings from the environment, as huggingface_hub reads them: HF_ENDPOINT
-- (default https://huggingface.co), HF_TOKEN or the file $HF_HOME/token
-- (HF_HOME defaults to ~/.cache/huggingface); EXO_OFFLINE=1 (or
-- HF_HUB_OFFLINE=1) never touches the network. Before the hub, M.pull asks
-- the cluster's peers (exo.share): a model one node holds spreads over the
-- LAN, and with EXO_OFFLINE=1 peers are the only source.
local uv = require "luv"
local native = require "exo.native"
local json = require "exo.json"
local models = require "exo.models"

local M = {}

-- ---- settings -------------------------------------------------------------------

function M.endpoint()
  local e = os.getenv("HF_ENDPOINT")
  if not e or e == "" then e = "https://huggingface.co" end
  return (e:gsub("/+$", ""))
end

local function truthy(v) return v ~= nil and v ~= "" and v ~= "0" and v:lower() ~= "false" end

function M.offline() return truthy(os.getenv("EXO_OFFLINE")) or truthy(os.getenv("HF_HUB_OFFLINE")) end

-- The token and where it came from, or nil.
function M.token()
  local t = os.getenv("HF_TOKEN")
  if t and t ~= "" then return t, "HF_TOKEN" end
  local home = os.getenv("HF_HOME")
  if not home or home == "" then home = (os.getenv("HOME") or ".") .. "/.cache/huggingface" end
  local f = io.open(home .. "/token", "rb")
  if not f then return nil end
  t = (f:read("*a") or ""):match("^%s*(.-)%s*$")
  f:close()
  if t == "" then return nil end
  return t, home .. "/token"
end

local function auth_headers()
  local t = M.token()
  return t and { Authorization = "Bearer " .. t } or {}
end

-- Retries: EXO_DOWNLOAD_ATTEMPTS (5), EXO_DOWNLOAD_BACKOFF seconds (1,
-- doubling), EXO_DOWNLOAD_STALL seconds under 1 KB/s before a transfer
-- counts as cut (60). Applied to the jobs started after.
local configured = false
local function configure()
  if configured then return end
  configured = true
  native.download_configure(tonumber(os.getenv("EXO_DOWNLOAD_ATTEMPTS") or "") or 5,
    tonumber(os.getenv("EXO_DOWNLOAD_BACKOFF") or "") or 1, 60,
    tonumber(os.getenv("EXO_DOWNLOAD_STALL") or "") or 60)
end

-- ---- completions ------------------------------------------------------------------

local handlers, n_handlers, next_id = {}, 0, 1
local poll

local function on_ready()
  native.download_drain(function(id, ok, err, result)
    local h = handlers[id]
    if h then
      handlers[id] = nil
      n_handlers = n_handlers - 1
      h(ok, err, result)
    end
  end)
  -- No job left: let the loop end (the CLI's run_blocking relies on it).
  if n_handlers == 0 and poll then
    poll:stop()
    poll:close()
    poll = nil
  end
end

-- Starts a job with start(id) (a native call returning true or nil, err);
-- on_done(ok, err, result) runs on the loop thread when it ends. Returns the
-- job id, or nil, err.
local function submit(start, on_done)
  configure()
  local id = next_id
  next_id = next_id + 1
  local ok, err = start(id)
  if not ok then return nil, err end
  handlers[id] = on_done
  n_handlers = n_handlers + 1
  if not poll then
    poll = uv.new_poll(native.download_fd())
    poll:start("r", on_ready)
  end
  return id
end

local function running()
  local co = coroutine.running()
  assert(co, "exo.download: call from a coroutine (or use run_blocking)")
  return co
end

-- One bounded HTTP request, waiting on the calling coroutine. opts: url,
-- method ("GET", or "POST" with a body), headers ({ name = value }), body (a
-- string; a table is sent as JSON with Content-Type set), max_bytes (1 MiB),
-- timeout (seconds, 30). Returns { status, body, headers (lowercase names) }
-- for any HTTP status, or nil, err when no response came (or it was too big).
function M.request(opts)
  local co = running()
  if type(opts.body) == "table" then
    local headers = {}
    for k, v in pairs(opts.headers or {}) do headers[k] = v end
    headers["Content-Type"] = headers["Content-Type"] or "application/json"
    opts = { url = opts.url, method = opts.method, body = json.encode(opts.body), headers = headers,
      max_bytes = opts.max_bytes, timeout = opts.timeout }
  end
  local waiting = true
  local id, err = submit(function(id) return native.http_request(opts, id) end, function(ok, jerr, result)
    waiting = false
    local rok, rerr = coroutine.resume(co, ok and result or nil, jerr)
    if not rok then io.stderr:write("exo: " .. tostring(rerr) .. "\n") end
  end)
  if not id then return nil, err end
  if waiting then return coroutine.yield() end
end

-- Runs fn(...) on a coroutine and the loop until it returns (the CLI's way
-- in); returns what fn returned.
function M.run_blocking(fn, ...)
  local args, n = { ... }, select("#", ...)
  local out, finished, looping
  local co = coroutine.create(function()
    out = { pcall(fn, unpack(args, 1, n)) }
    finished = true
    if looping then uv.stop() end -- uv.stop outside uv.run would stop the host's own run later
  end)
  local ok, err = coroutine.resume(co)
  if not ok then error(err, 0) end
  if not finished then
    looping = true
    uv.run()
    looping = false
  end
  if not finished then return nil, "interrupted" end
  if not out[1] then error(out[2], 0) end
  return unpack(out, 2, table.maxn(out))
end

-- ---- the hub ----------------------------------------------------------------------

-- A path segment list escaped for a URL (the hub's names are plain, but a
-- space or '#' must not change the request).
local function escape_path(p)
  return (p:gsub("[^%w%-._~/]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function hub_error(status, repo, what, body)
  if status == 401 or status == 403 then
    local _, from = M.token()
    return ("the hub refused %s (HTTP %d): the repository is gated or private. Accept its terms on the hub, "
      .. "then give exo a token: set HF_TOKEN=hf_... or write it to $HF_HOME/token (~/.cache/huggingface/token)%s")
      :format(repo, status, from and (" (the token from " .. from .. " was not accepted)") or "")
  elseif status == 404 then
    return ("not found on the hub (%s): %s (HTTP 404)"):format(M.endpoint(), what)
  elseif status == 429 then
    return ("the hub is rate-limiting this address (HTTP 429) for %s; try again later or give a token (HF_TOKEN)")
      :format(what)
  end
  local detail = body and body:match('"error"%s*:%s*"([^"]*)"')
  return ("the hub answered HTTP %d for %s%s"):format(status, what, detail and (": " .. detail) or "")
end

local TREE_MAX = 16 * 1048576
local FILES_MAX = 100000 -- entries of one listing, over all its pages (bounds its memory)

-- A listing's path that stays inside the model's folder: relative, no '.'
-- or '..' segment, no empty one, no backslash or control character.
local function safe_path(p)
  if #p == 0 or #p > 1024 or p:find("[%c\\]") or p:sub(1, 1) == "/" then return false end
  for seg in (p .. "/"):gmatch("([^/]*)/") do
    if seg == "" or seg == "." or seg == ".." then return false end
  end
  return true
end

-- A byte count from the hub (a listing's size, X-Linked-Size): a whole
-- number from 0 to 2^53, else nil.
local function byte_count(v)
  v = tonumber(v)
  return v and v >= 0 and v <= 2 ^ 53 and v % 1 == 0 and v or nil
end

-- The repository's files at revision: { {path, size, sha256 (LFS only)} },
-- following the tree API's Link: rel="next" pages. Waits on the coroutine.
function M.list_files(repo, revision)
  revision = revision or "main"
  local url = ("%s/api/models/%s/tree/%s?recursive=true"):format(M.endpoint(), escape_path(repo),
    escape_path(revision))
  if M.offline() then return nil, "downloads are off (EXO_OFFLINE=1)" end
  local files = {}
  for _ = 1, 100 do
    local res, err = M.request { url = url, headers = auth_headers(), max_bytes = TREE_MAX, timeout = 60 }
    if not res then return nil, ("cannot list %s on %s: %s"):format(repo, M.endpoint(), err) end
    if res.status ~= 200 then return nil, hub_error(res.status, repo, "repository " .. repo, res.body) end
    local ok, list = pcall(json.decode, res.body)
    if not ok or type(list) ~= "table" then return nil, "the hub's file list for " .. repo .. " is not JSON" end
    for _, f in ipairs(list) do
      if type(f) == "table" and f.type == "file" and type(f.path) == "string" then
        -- The hub is trusted for its listing, but a path or size from it
        -- never reaches the disk unchecked (a hostile endpoint, HF_ENDPOINT).
        if not safe_path(f.path) then
          return nil, ("the hub's file list for %s has a path outside the repository: %q"):format(repo,
            f.path:sub(1, 200))
        end
        if #files >= FILES_MAX then
          return nil, ("the hub's file list for %s has more than %d files"):format(repo, FILES_MAX)
        end
        local lfs = type(f.lfs) == "table" and f.lfs or nil
        local sha = lfs and type(lfs.oid) == "string" and lfs.oid:lower() or nil
        if sha and not sha:match("^%x+$") or (sha and #sha ~= 64) then sha = nil end
        local size = lfs and lfs.size or f.size
        if size ~= nil and not byte_count(size) then
          return nil, ("the hub's file list for %s gives %s a bad size (%s)"):format(repo, f.path,
            tostring(size):sub(1, 40))
        end
        files[#files + 1] = { path = f.path, size = byte_count(size), sha256 = sha }
      end
    end
    local nxt = (res.headers["link"] or ""):match('<([^>]+)>%s*;%s*rel="?next"?')
    if not nxt then return files end
    -- The next page must come from the endpoint itself: the request carries
    -- the token, which goes to HF_ENDPOINT only.
    if nxt:sub(1, #M.endpoint() + 1) ~= M.endpoint() .. "/" then
      return nil, ("the hub's file list for %s sends its next page to another server (%s)"):format(repo,
        nxt:sub(1, 200))
    end
    url = nxt
  end
  return nil, "the hub's file list for " .. repo .. " has too many pages"
end

-- Every part of the split GGUF whose first part is file (or just file).
local function with_parts(files, file)
  local stem, total = file:match("^(.-)%-00001%-of%-(%d+)%.gguf$")
  local by_path = {}
  for _, f in ipairs(files) do by_path[f.path] = f end
  if not stem then return by_path[file] and { by_path[file] } or nil end
  local out = {}
  for i = 1, tonumber(total) do
    local part = by_path[("%s-%05d-of-%s.gguf"):format(stem, i, total)]
    if not part then return nil end
    out[#out + 1] = part
  end
  return out
end

-- A Hugging Face (safetensors) repository: config.json and *.safetensors
-- and no GGUF. Its files to fetch: every .safetensors (the index's choice
-- is narrowed later for a layer range), the index, config.json and the
-- tokenizer files; config.json is last (see M.pull), since its presence
-- is what makes the folder a model (exo.models).
local HF_SIDE = { ["config.json"] = true, ["tokenizer.json"] = true, ["tokenizer_config.json"] = true,
  ["generation_config.json"] = true, ["model.safetensors.index.json"] = true, ["special_tokens_map.json"] = true }

-- Whether a file of a safetensors folder is one a model needs (a weight
-- file at the top, or one of the side files above): what pulls fetch and
-- peers offer (exo.share).
function M.model_file(path)
  return HF_SIDE[path] == true or (path:match("%.safetensors$") ~= nil and not path:find("/", 1, true))
end

local function safetensors_plan(files)
  local out, has_config, has_st = {}, false, false
  for _, f in ipairs(files) do
    if f.path:match("%.gguf$") then return nil end
    if f.path == "config.json" then has_config = true end
    if f.path:match("^[^/]+%.safetensors$") then has_st = true end
    if M.model_file(f.path) then out[#out + 1] = f end
  end
  if not (has_config and has_st) then return nil end
  table.sort(out, function(a, b) return (a.path == "config.json" and 1 or 0) < (b.path == "config.json" and 1 or 0)
    or ((a.path == "config.json") == (b.path == "config.json") and a.path < b.path) end)
  out.safetensors = true
  return out
end

-- The .safetensors files of index (its JSON text) that a layer range
-- needs: those holding model.layers.N.* for first <= N < last, plus the
-- embedding's for the first range and the final norm's and head's for the
-- last (last >= the index's layer count). A set by file name, or nil, err.
function M.safetensors_needs(index, first, last)
  local ok, doc = pcall(json.decode, index)
  if not ok or type(doc) ~= "table" or type(doc.weight_map) ~= "table" then
    return nil, "model.safetensors.index.json has no weight_map"
  end
  local n_layers, has_head = 0, doc.weight_map["lm_head.weight"] ~= nil
  for name in pairs(doc.weight_map) do
    local n = tonumber(tostring(name):match("^model%.layers%.(%d+)%."))
    if n and n + 1 > n_layers then n_layers = n + 1 end
  end
  local need = {}
  for name, file in pairs(doc.weight_map) do
    if type(name) ~= "string" or type(file) ~= "string" then return nil, "model.safetensors.index.json: bad weight_map" end
    local n = tonumber(name:match("^model%.layers%.(%d+)%."))
    if n then
      if n >= first and n < last then need[file] = true end
    elseif name:match("^model%.embed_tokens%.") then
      -- a tied head reads the embedding too
      if first == 0 or last >= n_layers and not has_head then need[file] = true end
    elseif last >= n_layers or first == 0 and not name:match("^model%.norm%.") and not name:match("^lm_head%.") then
      need[file] = true
    end
  end
  return need
end

-- Whether the safetensors folder dir holds the weight files a layer range
-- ({first, last}; nil: the whole model) needs (an earlier pull may have
-- fetched another range only).
function M.safetensors_present(dir, layers)
  local fh = io.open(dir .. "/model.safetensors.index.json", "rb")
  if not fh then return uv.fs_stat(dir .. "/model.safetensors") ~= nil end
  local text = fh:read("*a")
  fh:close()
  local need = M.safetensors_needs(text or "", layers and layers[1] or 0, layers and layers[2] or math.huge)
  if not need then return false end
  for file in pairs(need) do
    if not uv.fs_stat(dir .. "/" .. file) then return false end
  end
  return true
end

-- The files spec needs from the listing, or nil, err.
function M.plan(spec, files)
  local file = spec.file
  if not file then
    local hf = safetensors_plan(files)
    if hf then return hf end
    local candidates, all = {}, {}
    for _, f in ipairs(files) do
      if f.path:match("%.gguf$") and models.is_first_part(f.path) and not f.path:find("mmproj", 1, true) then
        all[#all + 1] = f.path
        if models.matches_quant(f.path, spec.quant) then candidates[#candidates + 1] = f.path end
      end
    end
    table.sort(candidates)
    if #candidates == 0 and #all == 1 and spec.quant == "Q4_K_M" then candidates = all end
    if #candidates == 0 then
      table.sort(all)
      return nil, ("%s has no %s GGUF file (it has: %s); name one as %s:FILE.gguf"):format(spec.repo, spec.quant,
        #all > 0 and table.concat(all, ", ") or "no GGUF files", spec.repo)
    end
    file = candidates[1]
    spec.file = file
  end
  local parts = with_parts(files, file)
  if not parts then return nil, hub_error(404, spec.repo, spec.repo .. "/" .. file) end
  return parts
end

-- ---- pulling a model ----------------------------------------------------------------

-- Downloads in progress or finished, by the name asked for: what
-- /v1/download/progress and the CLI's bar show.
M.status = {}

local function mkdir_p(path)
  local at = ""
  for part in path:gmatch("[^/]+") do
    at = at .. "/" .. part
    local st = uv.fs_stat(at)
    if not st then
      local ok, err = uv.fs_mkdir(at, 493) -- 0755
      if not ok and not (err or ""):match("^EEXIST") then return nil, ("cannot create %s: %s"):format(at, err) end
    elseif st.type ~= "directory" then
      return nil, at .. " is not a folder"
    end
  end
  return true
end

local function size_of(path)
  local st = uv.fs_stat(path)
  return st and st.size or 0
end

-- Bytes done and total over a status's files, with its speed.
function M.totals(st)
  local done, total, speed = 0, 0, 0
  for _, f in ipairs(st.files) do
    if f.job then
      local d, _, s = native.download_progress(f.job)
      if d then f.done, f.speed = d, s end
    end
    done = done + (f.done or 0)
    total = total + (f.size or 0)
    speed = speed + (f.job and f.speed or 0)
  end
  return done, total, speed
end

-- Downloads one file; waits on the coroutine. Returns true or nil, err.
local function fetch_file(st, spec, f, revision)
  local dest = spec.dir .. "/" .. f.path
  local ok, err = mkdir_p(dest:match("^(.*)/[^/]*$"))
  if not ok then return nil, err end
  if size_of(dest) > 0 and (not f.size or size_of(dest) == f.size) then
    f.done = f.size or size_of(dest)
    return true -- already here (and checked when it was renamed into place)
  end
  local url = ("%s/%s/resolve/%s/%s"):format(M.endpoint(), escape_path(spec.repo), escape_path(revision),
    escape_path(f.path))
  if not f.sha256 then
    -- The listing gave no LFS hash: the resolve route's X-Linked-Etag (or ETag) is the file's
    -- SHA-256 when it is 64 hex digits (a 40-digit one is a git blob id: size only then).
    local head = M.request { url = url, method = "HEAD", headers = auth_headers(), max_bytes = 4096, timeout = 30 }
    local etag = head and (head.headers["x-linked-etag"] or head.headers["etag"])
    etag = etag and etag:gsub("^W/", ""):gsub('"', ""):lower()
    if etag and #etag == 64 and etag:match("^%x+$") then f.sha256 = etag end
    local size = head and byte_count(head.headers["x-linked-size"])
    if size and not f.size then f.size = size end
  end
  -- Without a size nothing would bound what the server writes to the disk.
  if not f.size then return nil, ("downloading %s: the hub gives no size for it"):format(f.path) end
  local co = running()
  local waiting = true
  local id, serr = submit(function(id)
    return native.download_file(url, dest, { headers = auth_headers(), size = f.size, sha256 = f.sha256 }, id)
  end, function(jok, jerr, result)
    waiting = false
    local rok, rerr = coroutine.resume(co, jok, jerr, result)
    if not rok then io.stderr:write("exo: " .. tostring(rerr) .. "\n") end
  end)
  if not id then return nil, serr end
  f.job = id
  local jok, jerr, result
  if waiting then jok, jerr, result = coroutine.yield() end
  f.job = nil
  if jok then
    f.done = f.size or size_of(dest)
    return true
  end
  f.done = size_of(dest .. ".partial")
  local status = result and result.status or 0
  if status >= 400 and jerr:find("HTTP %d+") then return nil, hub_error(status, spec.repo, spec.repo .. "/" .. f.path) end
  jerr = jerr:gsub("^E%u+: ", "")
  if jerr:find("No space left", 1, true) then
    jerr = jerr .. " (free some space: the partial file is kept and the next pull resumes it)"
  end
  return nil, ("downloading %s: %s"):format(f.path, jerr)
end

-- Waits while every function in fns runs on a coroutine of its own; returns
-- the first error.
local function all(fns, limit)
  local co = running()
  local first_err, left, next_i, active = nil, #fns, 1, 0
  if left == 0 then return true end
  local launch
  local function finish(ok, err)
    active = active - 1
    left = left - 1
    if not ok and not first_err then first_err = err end
    -- Every function may have ended without waiting (files already here):
    -- then co has not yielded yet and goes on by itself.
    if left == 0 and coroutine.status(co) == "suspended" then
      local rok, rerr = coroutine.resume(co)
      if not rok then io.stderr:write("exo: " .. tostring(rerr) .. "\n") end
    elseif left > 0 then
      launch()
    end
  end
  launch = function()
    while next_i <= #fns and active < limit do
      local fn = fns[next_i]
      next_i = next_i + 1
      active = active + 1
      local c = coroutine.create(function() finish(fn()) end)
      local ok, err = coroutine.resume(c)
      if not ok then finish(false, err) end
    end
  end
  launch()
  if left > 0 then coroutine.yield() end
  if first_err then return nil, first_err end
  return true
end

-- Free bytes where path lies, or nil when the system will not say.
function M.free_bytes(path)
  if not uv.fs_statfs then return nil end
  local s = uv.fs_statfs(path)
  return s and s.bavail and s.bsize and s.bavail * s.bsize or nil
end

-- Makes name's files present in the store; waits on the coroutine. opts:
-- revision ("main"), parallel (files at once, 4), layers ({first, last}:
-- of a safetensors repository, only the shard files the index names for
-- those layers). Returns the real path of the model's (first) file, or its
-- folder for a safetensors repository, or nil, err. Concurrent pulls of one name share
-- the first one's work.
function M.pull(name, opts)
  opts = opts or {}
  local spec, err = models.lookup(name)
  if not spec then return nil, err or select(2, models.resolve(name, false)) end
  local have = models.local_file(spec)
  if have == "." and not M.safetensors_present(spec.dir, opts.layers) then have = nil end
  local path = have and models.resolve(name, true)
  if path then return path end
  local st = M.status[name]
  if st and st.state == "downloading" then
    st.waiters[#st.waiters + 1] = running()
    return coroutine.yield()
  end
  -- Peers first (exo.share): a LAN copy beats the hub, and with no internet
  -- it is the only source.
  local share = require "exo.share"
  local from_peers = share.available()
  local no_repo = ("model '%s' names no hub repository (add repo and quants to its entry in $EXO_HOME/models.lua)")
    :format(name)
  local off = ("model '%s' is not in the store and downloads are off (EXO_OFFLINE=1)"):format(name)
  -- A pull that fails before it starts is still listed (failed, with why):
  -- /v1/download/progress and the page show it, not nothing.
  local function early(why)
    M.status[name] = { name = name, repo = spec.repo, state = "failed", error = why, files = {}, waiters = {},
      started = uv.now(), source = "none" }
    return nil, why
  end
  if not from_peers and not spec.repo then return early(no_repo) end
  if not from_peers and M.offline() then return early(off) end
  st = { name = name, repo = spec.repo, state = "downloading", files = {}, waiters = {}, started = uv.now(),
    source = "hub" }
  M.status[name] = st
  local function finish(result, ferr)
    st.state = result and "complete" or "failed"
    st.error = ferr
    st.path = result
    for _, co in ipairs(st.waiters) do
      local ok, rerr = coroutine.resume(co, result, ferr)
      if not ok then io.stderr:write("exo: " .. tostring(rerr) .. "\n") end
    end
    st.waiters = {}
    return result, ferr
  end
  -- A hub repository a peer named comes from peers only, unless the
  -- cluster's key admitted that peer (M.ensure's opts.hub).
  local peers_only = not spec.entry and opts.hub == "peers"
  local peers_why = ("hub repository '%s' is not in the store, and a node of an open cluster downloads a peer's "
    .. "hub repository from peers only (a cluster key lets it use the hub)"):format(name)
  if not from_peers and peers_only then return early(peers_why) end
  if from_peers then
    local path, perr, asked = share.fetch(spec, st, opts.layers)
    if path then return finish(path) end
    if not spec.repo or M.offline() or peers_only then
      if asked then return finish(nil, perr) end
      local why = peers_only and peers_why or spec.repo and off or no_repo
      return finish(nil, why .. "; no peer has it either")
    end
    st.files, st.source = {}, "hub"
  end
  local revision = opts.revision or "main"
  local listing, lerr = M.list_files(spec.repo, revision)
  if not listing then return finish(nil, lerr) end
  local files, perr = M.plan(spec, listing)
  if not files then return finish(nil, perr) end
  local ok, merr = mkdir_p(spec.dir)
  if not ok then return finish(nil, merr .. " (is the model store read-only? EXO_HOME moves it)") end
  if files.safetensors and opts.layers then
    -- A layer range of a sharded folder: the index first, then only the
    -- shard files it names for the range.
    local index
    for _, f in ipairs(files) do
      if f.path == "model.safetensors.index.json" then index = f end
    end
    if index then
      local entry = { path = index.path, size = index.size, sha256 = index.sha256, done = 0 }
      st.files[1] = entry
      local iok, ierr = fetch_file(st, spec, entry, revision)
      if not iok then return finish(nil, ierr) end
      local fh = io.open(spec.dir .. "/" .. index.path, "rb")
      local text = fh and fh:read("*a")
      if fh then fh:close() end
      local need, nerr = M.safetensors_needs(text or "", opts.layers[1], opts.layers[2])
      if not need then return finish(nil, nerr) end
      local kept = { safetensors = true }
      for _, f in ipairs(files) do
        if f ~= index and (need[f.path] or not f.path:match("%.safetensors$")) then kept[#kept + 1] = f end
      end
      files, st.files = kept, { entry }
    end
  end
  local need = 0
  for _, f in ipairs(files) do
    local entry = { path = f.path, size = f.size, sha256 = f.sha256, done = 0 }
    st.files[#st.files + 1] = entry
    need = need + math.max(0, (f.size or 0) - size_of(spec.dir .. "/" .. f.path .. ".partial"))
  end
  local free = M.free_bytes(spec.dir)
  if free and need > free then
    return finish(nil, ("not enough disk space for %s: %d MB more are needed, %d MB free in %s"):format(name,
      math.ceil(need / 1e6), math.floor(free / 1e6), spec.dir))
  end
  local fns, config = {}, nil
  for _, f in ipairs(st.files) do
    if files.safetensors and f.path == "config.json" then config = f
    elseif not f.done or f.done == 0 or f.path ~= "model.safetensors.index.json" then
      fns[#fns + 1] = function() return fetch_file(st, spec, f, revision) end
    end
  end
  local aok, aerr = all(fns, opts.parallel or 4)
  if not aok then return finish(nil, aerr) end
  if files.safetensors then
    -- config.json last: a folder with it is a model to exo.models.
    local cok, cerr = fetch_file(st, spec, config, revision)
    if not cok then return finish(nil, cerr) end
    local real = native.realpath(spec.dir)
    if not real then return finish(nil, "downloaded, but cannot find " .. spec.dir) end
    return finish(real)
  end
  local real = native.realpath(spec.dir .. "/" .. files[1].path)
  if not real then return finish(nil, "downloaded, but cannot find " .. files[1].path) end
  return finish(real)
end

-- Whether a request naming name can be served here: the model is in the
-- store, or it is a catalogue id and this node is in a cluster with peers,
-- so it fetches the model when the request comes (M.ensure). What the API
-- routes check before they queue a request.
function M.servable(name)
  if models.resolve(name) then return true end
  local spec = models.lookup(name)
  return spec ~= nil and spec.entry ~= nil and require("exo.share").available()
end

-- The name a peer's message means: an asker names a hub repository it holds
-- by its folder in the store ("org--name", "org--name/FILE.gguf": see
-- ring.peer_model_name), which is the hub id "org/name" ("org/name:FILE.gguf")
-- here, so it resolves, and is fetched, as that repository. Anything else
-- (a catalogue id, a file of another model) is itself. A folder name that is
-- no valid hub id stays a file name (unknown, as before).
function M.peer_name(name)
  if type(name) ~= "string" or models.registry[name] then return name end
  local org, repo, file = name:match("^([%w][%w._-]-)%-%-([%w][%w._-]*)/(.+%.gguf)$")
  if not org then org, repo = name:match("^([%w][%w._-]-)%-%-([%w][%w._-]*)$") end
  if not org then return name end
  local id = org .. "/" .. repo .. (file and (":" .. file) or "")
  local spec = models.lookup(id)
  if not spec or spec.entry or spec.dir ~= models.store() .. "/" .. org .. "--" .. repo then return name end
  return id
end

-- The real path of name when the store holds what layers ({first, last};
-- nil: the whole model) need: a safetensors folder may hold other ranges'
-- files only. Else nil, err (resolve's).
function M.present(name, layers)
  local path, err = models.resolve(name)
  if not path then return nil, err end
  local st = uv.fs_stat(path)
  if st and st.type == "directory" and not M.safetensors_present(path, layers) then
    return nil, ("model '%s' lacks the files of layers %s here"):format(name,
      layers and ("%d-%d"):format(layers[1], layers[2]) or "all")
  end
  return path
end

-- Seconds between the calls of ensure's on_wait while a model downloads
-- (EXO_FETCH_KEEPALIVE; tests shorten it).
M.KEEPALIVE_S = tonumber(os.getenv("EXO_FETCH_KEEPALIVE") or "") or 5

-- Makes a model a request names present, for a served node (a ring member
-- asked to open it, an asker in a cluster): pulls it as M.pull does (peers
-- first, then the hub), calling on_wait(status) every M.KEEPALIVE_S seconds
-- meanwhile, so a caller can tell whoever waits on it that it is alive.
-- opts go to M.pull (layers = {first, last}: of a safetensors repository,
-- only the files that range needs). A catalogue id is always fetched; a hub
-- repository id only with opts.hub: "peers" (peers only: a peer of an open
-- cluster, which anyone can be, never spends this node's hub access and
-- token) or "hub" (peers, then the hub: a peer that proved the cluster key).
-- A client's hub id is never fetched (its operator chooses repositories:
-- docs/security.md). Waits on the coroutine; returns the real path, or
-- nil, err.
function M.ensure(name, on_wait, opts)
  opts = opts or {}
  local path, err = M.present(name, opts.layers)
  if path then return path end
  local spec = models.lookup(name)
  if not (spec and (spec.entry or (spec.repo and opts.hub))) then return nil, err end
  local timer = uv.new_timer()
  local every = math.max(1, math.floor(M.KEEPALIVE_S * 1000))
  timer:start(every, every, function()
    if on_wait then on_wait(M.status[name]) end
  end)
  local got, perr = M.pull(name, opts)
  timer:stop()
  timer:close()
  if not got then return nil, ("cannot get model '%s': %s"):format(name, perr) end
  return got
end

-- Removes name's files (and partials) from the store. Returns the number of
-- files removed, or nil, err.
function M.remove(name)
  local spec, err = models.lookup(name)
  if not spec then return nil, err or ("unknown model '" .. tostring(name) .. "'") end
  local st = M.status[name]
  if st and st.state == "downloading" then return nil, ("model '%s' is downloading"):format(name) end
  local removed = 0
  local function rm_tree(path)
    local req = uv.fs_scandir(path)
    if not req then return end
    while true do
      local n, t = uv.fs_scandir_next(req)
      if not n then break end
      local p = path .. "/" .. n
      if t == "directory" then
        rm_tree(p)
        uv.fs_rmdir(p)
      elseif uv.fs_unlink(p) then
        removed = removed + 1
      end
    end
  end
  if spec.entry and spec.name ~= spec.id then
    -- One quantization of a catalogue model: only its files.
    for _, f in ipairs { spec.file, spec.file .. ".partial" } do
      if uv.fs_unlink(spec.dir .. "/" .. f) then removed = removed + 1 end
    end
  else
    rm_tree(spec.dir)
    uv.fs_rmdir(spec.dir)
  end
  M.status[name] = nil
  if removed == 0 then return nil, ("model '%s' has no files in the store"):format(name) end
  return removed
end

return M
