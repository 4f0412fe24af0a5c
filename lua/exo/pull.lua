-- pull.lua: the CLI's model commands: exo models, pull, rm, show.
--
-- cli.lua routes the subcommands here; the work is exo.models (names),
-- exo.download (the hub) and the GGUF reader. `exo pull` (and `exo run` on a
-- model not in the store) draws a progress bar on stderr when it is a
-- terminal (size, speed, ETA) and writes plain lines every few seconds
-- otherwise, so logs and tests read the same facts.
local uv = require "luv"
local native = require "exo.native"
local json = require "exo.json"
local models = require "exo.models"
local download = require "exo.download"

local M = {}

local function mb(n) return ("%.1f MB"):format((n or 0) / 1e6) end

local function human(n)
  if not n then return "?" end
  if n >= 1e9 then return ("%.1f GB"):format(n / 1e9) end
  return ("%.0f MB"):format(n / 1e6)
end

local function eta(seconds)
  if not seconds or seconds ~= seconds or seconds == math.huge or seconds < 0 then return "--:--" end
  seconds = math.floor(seconds + 0.5)
  local h, m = math.floor(seconds / 3600), math.floor(seconds % 3600 / 60)
  if h > 0 then return ("%d:%02d:%02d"):format(h, m, seconds % 60) end
  return ("%d:%02d"):format(m, seconds % 60)
end

-- One progress line for a download status: percent, bytes, speed, ETA.
function M.progress_line(st, width)
  local done, total, speed = download.totals(st)
  if st.state ~= "downloading" or speed == 0 then
    -- Between speed samples, and once finished: the average since the pull began.
    local elapsed = (uv.now() - st.started) / 1000
    speed = elapsed > 0.2 and done / elapsed or 0
  end
  local pct = total > 0 and done / total or 0
  local text = ("%3d%% %s/%s  %s/s  ETA %s"):format(math.floor(pct * 100), mb(done), mb(total), mb(speed),
    eta(speed > 0 and (total - done) / speed or nil))
  if not width then return text end
  local bar_w = math.max(10, width - #text - #st.name - 6)
  local fill = math.floor(pct * bar_w)
  return ("%s [%s%s] %s"):format(st.name, ("="):rep(fill), (" "):rep(bar_w - fill), text)
end

-- Pulls name with a progress display; returns the path or nil, err. Runs
-- the loop until done (the caller is not on a coroutine).
function M.pull_with_progress(name)
  local tty = native.isatty(2)
  local timer = uv.new_timer()
  local last_plain = 0
  timer:start(250, 250, function()
    local st = download.status[name]
    if not st or st.state ~= "downloading" or #st.files == 0 then return end
    if tty then
      io.stderr:write("\r" .. M.progress_line(st, 78) .. "\27[K")
    elseif uv.now() - last_plain >= 2000 then
      last_plain = uv.now()
      io.stderr:write(("pulling %s: %s\n"):format(name, M.progress_line(st)))
    end
  end)
  local ok, path, err = pcall(download.run_blocking, download.pull, name)
  timer:stop()
  timer:close()
  if not ok then path, err = nil, tostring(path) end
  local st = download.status[name]
  if st and #st.files > 0 then
    io.stderr:write((tty and "\r" or "pulling " .. name .. ": ") .. M.progress_line(st, tty and 78 or nil)
      .. (tty and "\27[K\n" or "\n"))
  end
  return path, err
end

-- A subcommand over one MODEL: its usage when MODEL is missing, and
-- "exo CMD: err" with status 1 when fn(name) returns nil, err.
local function model_command(cmd, usage, fn)
  return function(args)
    if not args[1] then
      io.stderr:write(("usage: exo %s %s\n"):format(cmd, usage))
      return 2
    end
    local ok, err = fn(args[1])
    if not ok then
      io.stderr:write(("exo %s: %s\n"):format(cmd, err))
      return 1
    end
    return 0
  end
end

-- `exo pull MODEL[:QUANT]`
M.pull = model_command("pull", "MODEL[:QUANT] (a catalogue id, or a hub repository org/name[:FILE])", function(name)
  local path, err = M.pull_with_progress(name)
  if path then print(path) end
  return path, err
end)

-- Whether name needs a download before `exo run` can load it: a catalogue
-- or hub id whose file is not in the store.
function M.missing(name)
  if not name then name = models.default_id end
  local spec = models.lookup(name)
  if not spec or not spec.repo then return false end
  return models.local_file(spec) == nil
end

-- Bytes of the model file at path (every part of a split GGUF), or nil.
-- Bytes a local model takes: a file with its split parts, or a safetensors
-- folder's files (not the folder entry's own size; partial downloads left out).
local function local_size(path)
  local size = 0
  local st = uv.fs_stat(path)
  if st and st.type == "directory" then
    local dir = uv.fs_scandir(path)
    while dir do
      local name, kind = uv.fs_scandir_next(dir)
      if not name then break end
      if kind == "file" and not name:match("%.partial$") then
        local fst = uv.fs_stat(path .. "/" .. name)
        size = size + (fst and fst.size or 0)
      end
    end
    return size
  end
  for _, p in ipairs(models.split_parts(path)) do
    st = uv.fs_stat(p)
    if not st then return nil end
    size = size + st.size
  end
  return size
end

-- Every catalogue entry with what this node has of it.
function M.rows()
  local ids = {}
  for id in pairs(models.registry) do ids[#ids + 1] = id end
  table.sort(ids)
  local rows = {}
  for _, id in ipairs(ids) do
    local e = models.registry[id]
    local path = models.resolve(id, true)
    local size = path and local_size(path)
    rows[#rows + 1] = {
      id = id, repo = e.repo or json.null, file = e.file, quant = e.default_quant or json.null,
      quants = e.quants and (function()
        local q = {}
        for k in pairs(e.quants) do q[#q + 1] = k end
        table.sort(q)
        return q
      end)() or json.empty_array,
      arch = e.arch or json.null, n_layers = e.n_layers or json.null, n_ctx = e.n_ctx or json.null,
      size = size or e.size or json.null, size_approximate = not size,
      downloaded = path ~= nil, path = path or json.null, can_run = e.can_run ~= false,
      description = e.description or json.null,
    }
  end
  return rows
end

-- `exo models [--json]`
function M.models(args)
  local rows = M.rows()
  if args[1] == "--json" then
    print(json.encode { store = models.store(), models = rows })
    return 0
  end
  local fmt = "%-30s %-10s %-36s %9s %-9s %s"
  print(fmt:format("ID", "STATE", "DESCRIPTION", "SIZE", "ARCH", "CAN RUN"))
  for _, r in ipairs(rows) do
    local size = type(r.size) == "number" and ((r.size_approximate and "~" or "") .. human(r.size)) or "?"
    local desc = r.description ~= json.null and r.description or ""
    if #desc > 36 then desc = desc:sub(1, 33) .. "..." end
    print(fmt:format(r.id, r.downloaded and "downloaded" or "-", desc, size, r.arch ~= json.null and r.arch or "?",
      r.can_run and "yes" or "no"))
  end
  print("store: " .. models.store() .. "   (exo pull MODEL[:QUANT] downloads; sizes with ~ are estimates)")
  return 0
end

-- `exo rm MODEL`
M.rm = model_command("rm", "MODEL[:QUANT]", function(name)
  local n, err = download.remove(name)
  if n then print(("removed %s (%d file%s)"):format(name, n, n == 1 and "" or "s")) end
  return n, err
end)

-- `exo show MODEL`: what the local file says about itself.
M.show = model_command("show", "MODEL", function(name)
  local path, err = models.resolve(name, true)
  if not path then return nil, err end
  local f, ferr = native.open_file(path)
  if not f then return nil, ferr end
  local arch = f:get("general.architecture")
  local function meta(k) return type(arch) == "string" and f:get(arch .. "." .. k) or nil end
  local types, n_params, embd_rows = {}, 0, nil
  for _, t in ipairs(f:tensors() or {}) do
    local tn = t.dtype
    if t.name == "token_embd.weight" then embd_rows = t.shape and t.shape[2] end
    types[tn] = (types[tn] or 0) + 1
    local n = 1
    for _, d in ipairs(t.shape or {}) do n = n * d end
    n_params = n_params + n
  end
  local type_list = {}
  for k, v in pairs(types) do type_list[#type_list + 1] = ("%s x%d"):format(k, v) end
  table.sort(type_list)
  local parts, size = models.split_parts(path), local_size(path)
  local template = f:get("tokenizer.chat_template")
  local function line(k, v) print(("  %-16s %s"):format(k, tostring(v))) end
  print(name)
  line("file", path)
  line("size", size and ("%s (%d bytes)"):format(human(size), size) or "?")
  if #parts > 1 then line("parts", ("%d (split GGUF)"):format(#parts)) end
  line("name", f:get("general.name") or "?")
  line("architecture", arch or "?")
  line("layers", meta("block_count") or "?")
  line("context", meta("context_length") or "?")
  line("embedding", meta("embedding_length") or "?")
  line("heads", ("%s (kv %s)"):format(meta("attention.head_count") or "?", meta("attention.head_count_kv") or "?"))
  line("parameters", ("%.2f M"):format(n_params / 1e6))
  line("tensor types", table.concat(type_list, ", "))
  -- A file without a tokenizer (the tiny test models) still says its vocabulary
  -- size: the embedding table has a row per token.
  local n_vocab = f:array_len("tokenizer.ggml.tokens")
  if n_vocab then
    line("vocabulary", n_vocab)
  else
    n_vocab = meta("vocab_size") or embd_rows
    line("vocabulary", n_vocab and ("%d (no tokenizer in the file)"):format(n_vocab) or "? (no tokenizer in the file)")
  end
  line("can run", (arch and require("exo.catalogue").engine_archs[arch]) and "yes" or "no")
  if template then
    print("  template:")
    for l in (template .. "\n"):gmatch("(.-)\n") do print("    " .. l) end
  else
    line("template", "(none in the file: the family's default)")
  end
  f:close()
  return true
end)

return M
