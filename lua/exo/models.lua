-- models.lua: the model registry and the model store.
--
-- Model ids (smollm2-135m, llama-3.2-1b, ...) map to a file in the store,
-- $EXO_HOME/downloads/<id>/<file> (EXO_HOME defaults to ~/.cache/exo), and to
-- facts about the model; the catalogue (exo.catalogue) supplies the known
-- ids with their hub repository and a file per quantization, and
-- "id:QUANT" picks one (llama-3.2-1b:Q8_0). A hub repository id,
-- "org/name[:FILE.gguf|:QUANT]", works wherever an id does: its files live
-- in $EXO_HOME/downloads/org--name/. A name that looks like a path (it ends
-- in .gguf, or holds a '/' and names a file) names a file in the store:
-- relative to it, or absolute, and
-- after symlinks and '..' are followed (realpath) it must still lie inside.
-- Only the operator names files elsewhere (M.allow_paths: exo run, bench,
-- the REPL, and a server started with --allow-model-paths); a client or peer
-- that names anything else hears "unknown model", whether the file exists
-- or not, so the answer tells nothing about the file system. Users add entries in
-- $EXO_HOME/models.lua (or the file EXO_MODELS names): a Lua file that
-- returns a table { ["my-model"] = { file = "x.gguf", ... } } or calls
-- register(id, entry) on the module it receives as its argument
-- (docs/models.md shows the format).
local M = {}

local catalogue = require "exo.catalogue"

M.registry = {}
for id, entry in pairs(catalogue.entries) do M.registry[id] = entry end

M.default_id = "smollm2-135m"

function M.home()
  local home = os.getenv("EXO_HOME")
  if home and home ~= "" then return home end
  return (os.getenv("HOME") or ".") .. "/.cache/exo"
end

function M.store() return M.home() .. "/downloads" end

function M.register(id, entry)
  assert(type(id) == "string" and type(entry) == "table", "models.register(id, {file = ...})")
  catalogue.complete(entry)
  assert(type(entry.file) == "string", "models.register(id, {file = ...} or {repo = ..., quants = {...}})")
  assert(not entry.file:find("%.%.") and entry.file:sub(1, 1) ~= "/", "models.register: file must lie in the store")
  M.registry[id] = entry
end

-- Whether a path-shaped name may point outside the store (the operator's
-- own command line sets it; a server only with --allow-model-paths).
M.allow_paths = false

-- Names the operator gave a server (--default-model, --draft-model): paths
-- allowed wherever they point, as on the command line.
local trusted = {}
function M.trust(name) trusted[name] = true end

local real = require("exo.native").realpath

local function is_file(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local ok = f:read(0) ~= nil -- io.open succeeds on a directory; reading it does not
  f:close()
  return ok
end

-- The real path of a path-shaped name, or nil: inside the store unless
-- allow (a relative name is taken against the store, then, with allow,
-- against the current directory).
local function resolve_path(name, allow)
  local store = real(M.store())
  local candidates = {}
  if name:sub(1, 1) == "/" then
    candidates[1] = name
  else
    if allow then candidates[#candidates + 1] = name end
    if store then candidates[#candidates + 1] = store .. "/" .. name end
  end
  for _, c in ipairs(candidates) do
    local path = real(c)
    -- Inside first: nothing outside the store is opened (a FIFO would block).
    -- A Hugging Face folder (config.json + *.safetensors) loads like a .gguf.
    if path and (allow or (store and path:sub(1, #store + 1) == store .. "/")) and
      (is_file(path) or is_file(path .. "/config.json")) then
      return path
    end
  end
  return nil
end

-- Loads the user's registry file once; an error in it is reported, not fatal.
local user_loaded = false
function M.load_user_file()
  if user_loaded then return end
  user_loaded = true
  local path = os.getenv("EXO_MODELS") or (M.home() .. "/models.lua")
  local chunk, err = loadfile(path)
  if not chunk then
    if not err:match("No such file") and not err:match("cannot open") then
      io.stderr:write("exo: ignoring " .. path .. ": " .. err .. "\n")
    end
    return
  end
  local ok, result = pcall(chunk, M)
  if not ok then
    io.stderr:write("exo: ignoring " .. path .. ": " .. tostring(result) .. "\n")
    return
  end
  if type(result) == "table" then
    for id, entry in pairs(result) do
      local rok, rerr = pcall(M.register, id, entry)
      if not rok then io.stderr:write("exo: " .. path .. ": entry '" .. tostring(id) .. "': " .. rerr .. "\n") end
    end
  end
end

-- "org/name" with an optional ":FILE" or ":QUANT": a hub repository id, or nil.
local function parse_hub(name)
  local repo, rest = name:match("^([%w][%w._-]*/[%w][%w._-]*):(.+)$")
  if not repo and name:match("^[%w][%w._-]*/[%w][%w._-]*$") then repo = name end
  if not repo or repo:match("%.gguf$") or repo:find("..", 1, true) then return nil end
  if rest and (rest:find("..", 1, true) or rest:sub(1, 1) == "/" or not rest:match("^[%w._/-]+$")) then return nil end
  return repo, rest
end
M.parse_hub = parse_hub

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function unknown(name, allow)
  return nil, ("unknown model '%s' (`exo models` lists the %d known ids; or %s)"):format(name,
    #sorted_keys(M.registry), allow and "give a path to a .gguf or a hub repository org/name[:FILE]" or "a .gguf file in the model store")
end

-- What a name asks for, without touching the disk or the network: a spec
-- { id, entry (catalogue), repo, file (nil: pick from the hub's listing by
-- quant), quant, dir (its folder in the store), size (approximate) }, or
-- nil, err for a name that is neither a catalogue id nor a hub id.
function M.lookup(name)
  M.load_user_file()
  name = name or M.default_id
  local id, quant, entry = name, nil, M.registry[name]
  if not entry then
    local base, q = name:match("^([^/:]+):([%w_.-]+)$")
    if base and M.registry[base] then id, quant, entry = base, q, M.registry[base] end
  end
  if entry then
    local file, size = entry.file, entry.size
    if quant then
      local found
      for k, f in pairs(entry.quants or {}) do
        if k:upper() == quant:upper() then found, quant = f, k end
      end
      if not found then
        return nil, ("model '%s' has no quantization '%s' (it has: %s)"):format(id, quant,
          table.concat(sorted_keys(entry.quants), ", "))
      end
      file, size = found, entry.sizes and entry.sizes[quant] or nil
    end
    return { id = id, name = name, entry = entry, repo = entry.repo, file = file,
      quant = quant or entry.default_quant, dir = M.store() .. "/" .. id, size = size }
  end
  local repo, rest = parse_hub(name)
  if not repo then return nil end
  local spec = { id = name, name = name, repo = repo, dir = M.store() .. "/" .. repo:gsub("/", "--") }
  if rest and rest:match("%.gguf$") then spec.file = rest else spec.quant = rest or "Q4_K_M" end
  return spec
end

-- The first part of a split GGUF, or any unsplit one: the file a model loads from.
function M.is_first_part(file)
  local part = file:match("%-(%d+)%-of%-%d+%.gguf$")
  return part == nil or tonumber(part) == 1
end

-- Every part of the split GGUF that path is a part of (by gguf-split's names,
-- PREFIX-00001-of-0000N.gguf ...), in order; {path} for any other file.
function M.split_parts(path)
  local stem, total = path:match("^(.-)%-%d%d%d%d%d+%-of%-(%d%d%d%d%d+)%.gguf$")
  local n = tonumber(total)
  if not stem or n < 1 or n > 1000 then return { path } end
  local parts = {}
  for i = 1, n do parts[i] = ("%s-%05d-of-%s.gguf"):format(stem, i, total) end
  return parts
end

-- Whether every part of the (possibly split) GGUF at path is there.
local function all_parts(path)
  for _, p in ipairs(M.split_parts(path)) do
    if not is_file(p) then return false end
  end
  return true
end

-- Whether a hub file name carries quant (Q4_K_M matches "-Q4_K_M." and "q4_k_m").
function M.matches_quant(file, quant)
  local base = file:match("([^/]+)$"):lower()
  local q = quant:lower():gsub("%p", "%%%0")
  return base:find("[%-_.]" .. q .. "[%-_.]") ~= nil
end

-- .gguf files (relative paths) under dir and its direct subfolders.
local function local_ggufs(dir)
  local uv = require "luv"
  local out = {}
  local function scan(path, prefix, depth)
    local req = uv.fs_scandir(path)
    if not req then return end
    while true do
      local n, t = uv.fs_scandir_next(req)
      if not n then break end
      if t == "directory" and depth == 0 then scan(path .. "/" .. n, n .. "/", 1)
      elseif n:match("%.gguf$") then out[#out + 1] = prefix .. n end
    end
  end
  scan(dir, "", 0)
  table.sort(out)
  return out
end

-- The file of spec in the store (relative to spec.dir), or nil: a hub id
-- without a file takes the downloaded GGUF that matches its quant.
function M.local_file(spec)
  if spec.file then return all_parts(spec.dir .. "/" .. spec.file) and spec.file or nil end
  local files = local_ggufs(spec.dir)
  -- A hub repository in safetensors layout is its folder (exo.download
  -- writes its config.json last).
  if #files == 0 and not spec.entry and is_file(spec.dir .. "/config.json") then return "." end
  local firsts = {}
  for _, f in ipairs(files) do
    -- a split GGUF with parts still missing is not in the store yet
    if M.is_first_part(f) and all_parts(spec.dir .. "/" .. f) then firsts[#firsts + 1] = f end
  end
  for _, f in ipairs(firsts) do
    if M.matches_quant(f, spec.quant) then return f end
  end
  if #firsts == 1 then return firsts[1] end
  return nil
end

-- Resolves an id or path-shaped name to the real path of its file, the one
-- key for a loaded model however it is named. allow (default M.allow_paths)
-- lets a path point outside the store. Returns path or nil, err; err never
-- says whether a file outside the store exists, nor where the store is,
-- unless allow.
function M.resolve(name, allow)
  M.load_user_file()
  name = name or M.default_id
  if allow == nil then allow = M.allow_paths or trusted[name] == true end
  local spec, lerr = M.lookup(name)
  if lerr then return nil, lerr end
  if not (spec and spec.entry) and (name:match("%.gguf$") or name:find("/", 1, true)) then
    local path = resolve_path(name, allow)
    if path then return path end
    if allow and not spec then return nil, "model file not found: " .. name end
  end
  if not spec then return unknown(name, allow) end
  local rel = M.local_file(spec)
  local path = rel and real(spec.dir .. "/" .. rel)
  if path and (is_file(path) or rel == ".") then return path end
  if not allow then
    if not spec.entry then return unknown(name, allow) end
    return nil, ("model '%s' is not downloaded on this node"):format(name)
  end
  return nil, ("model '%s' is not in the store (%s); `exo pull %s` downloads it"):format(name,
    spec.dir .. "/" .. (spec.file or ("*" .. spec.quant .. "*.gguf")), name)
end

M.load_user_file()

return M
