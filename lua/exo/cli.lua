-- cli.lua: the `exo` default script: flags and subcommands.
--
-- The host runs this file with the command-line arguments. Each subcommand is
-- a function of its parsed flags; it returns the process exit status. Users
-- may replace this script (EXO_LUA_DIR) or run their own with `exo lua FILE`.
local M = {}

local USAGE = [[
usage: exo [serve] [--chatgpt-api-port 52415] [--api-host 0.0.0.0] [--api-key KEY]
           [--default-model MODEL] [--system-prompt TEXT] [--max-generate-tokens N]
           [--default-temp T] [--chatgpt-api-response-timeout S] [--disable-tui]
           [--max-sessions N] [--ctx N] [--cors-origin ORIGIN]
           [--parallel N] [--max-queue N] [--kv-tokens N]
           [--http-head-timeout S] [--http-idle-timeout S] [--max-body-mb N]
           [--node-id ID] [--node-host 0.0.0.0] [--node-port PORT]
           [--discovery-module udp|manual|tailscale|none|udp,tailscale] [--discovery-config-path PEERS.json]
           [--listen-port 5678] [--broadcast-port 5678] [--discovery-timeout 30]
           [--tailscale-api-key KEY] [--tailnet-name NAME] [--tailscale-api-base URL]
           [--tailscale-device-id ID]
           [--node-id-filter ID,ID] [--interface-type-filter Ethernet,WiFi,Other,Loopback]
           [--wait-for-peers N] [--partitioning NAME|FILE.lua] [--inference-engine cpu]
           [--device-memory MB] [--wire-dtype f32|f16|q8_0] [--peer-timeout S]
           [--fetch-timeout S] [--fetch-stall S]
           [--enable-speculative --draft-model MODEL|MODEL:layers=0-K] [--draft-tokens 4]
           [--allow-model-paths] [--cluster-key KEY]
           [--max-connections N] [--max-connections-per-address N]
           [--quantize q8_0|q4_0|q4_k]
       exo <command> [options]

With no command, exo starts a node: the ChatGPT-compatible API and the chat
page on http://localhost:52415.

commands:
  run [MODEL] [--prompt TEXT] [--system-prompt TEXT] [--max-tokens N] [--temperature T]
      [--top-p P] [--top-k K] [--min-p P] [--seed S] [--stop TEXT] [--chat-template FILE.lua] [--verbose]
      [--enable-speculative --draft-model MODEL|MODEL:layers=0-K] [--draft-tokens 4]
      [--quantize q8_0|q4_0|q4_k]
                      answer one prompt (streamed to stdout), or chat when no --prompt is
                      given and stdin is a terminal
  repl                a LuaJIT REPL with the runtime loaded (exo.model, exo.tokenizer, ...)
  bench MODEL [-p 512] [-n 128] [-r 5] [-d DEPTH] [-t THREADS] [--json]
                      prompt (pp) and generation (tg) speed, medians over -r runs; -d
                      decodes after a context of DEPTH tokens
  models [--json]     the model catalogue: downloaded or not, size, whether this engine runs it
  pull MODEL[:QUANT]  download a model from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN) with
                      a progress bar; MODEL is a catalogue id or a hub repo org/name[:FILE]
  rm MODEL[:QUANT]    remove a model's files from the store
  show MODEL          a local model file's architecture, layers, types, template and size
  key [--new]         make this device's cluster key ($EXO_HOME/cluster.key) or show the
                      one it has, and how to give it to the other devices; --new replaces it
  lua FILE [ARGS...]  run a Lua file inside the runtime (tests, experiments)
  version             print the version and the CPU kernels in use
  help                this text

MODEL is a model id (smollm2-135m, llama-3.2-1b:Q8_0), a hub repository
(bartowski/Llama-3.2-1B-Instruct-GGUF[:FILE]) or a path to a .gguf file. A node's clients and
peers name only ids and .gguf files inside the model store ($EXO_HOME/downloads),
unless it runs with --allow-model-paths.

A cluster key admits to the cluster only the devices that hold it, and seals their
traffic. It comes from --cluster-key, else EXO_CLUSTER_KEY, else $EXO_HOME/cluster.key;
without one the cluster is open (docs/security.md).
]]

-- Parses "-x V", "--long V" and "--flag" style options against a spec of
-- { name = "number" | "string" | "boolean" }; aliases map short names.
function M.parse(args, spec, aliases)
  local opts, positional = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name = a:match("^%-%-?([%w%-_]+)$")
    if name and not tonumber(a) then
      name = (aliases and aliases[name]) or name:gsub("%-", "_")
      local kind = spec[name]
      if not kind then return nil, "unknown option " .. a end
      if kind == "boolean" then
        opts[name] = true
      else
        local v = args[i + 1]
        if v == nil then return nil, "option " .. a .. " needs a value" end
        if kind == "number" then
          v = tonumber(v)
          if not v then return nil, "option " .. a .. " needs a number" end
        end
        opts[name] = v
        i = i + 1
      end
    else
      positional[#positional + 1] = a
    end
    i = i + 1
  end
  return opts, positional
end

local commands = {}

-- Each command's own usage (`exo COMMAND --help`): its lines of USAGE.
local function usage_of(name)
  if name == "serve" or name == "help" then return USAGE end
  local lines, taking = {}, false
  for line in USAGE:gmatch("[^\n]*\n?") do
    local cmd = line:match("^  (%l+)")
    if cmd then taking = cmd == name
    elseif not line:match("^      ") and not line:match("^%s*$") then taking = false end
    if taking and line:match("%S") then lines[#lines + 1] = line end
  end
  if #lines == 0 then return USAGE end
  return "usage: exo " .. table.concat(lines):gsub("^%s+", "") .. "\n(exo --help lists every command)\n"
end

function commands.help()
  io.write(USAGE)
  return 0
end

function commands.version()
  local native = require "exo.native"
  print(("exo %s (kernels: %s, threads: %d)"):format(native.version(), native.cpu_features(), native.threads()))
  return 0
end

function commands.models(args) return require("exo.pull").models(args) end
function commands.pull(args) return require("exo.pull").pull(args) end
function commands.rm(args) return require("exo.pull").rm(args) end
function commands.show(args) return require("exo.pull").show(args) end

-- ---- the cluster key ----------------------------------------------------------------

-- The wire's own floor (it refuses shorter keys), checked here first so the
-- message can say where the key came from.
local KEY_MIN = 16

local function key_file() return require("exo.models").home() .. "/cluster.key" end

local function trim(s) return (s:match("^%s*(.-)%s*$")) end

-- The key file's content, trimmed, and its permission bits when group or
-- others have any (else nil); nil when there is no file; nil, err when it
-- cannot be read.
local function read_key_file(path)
  local bit = require "bit"
  local st = require("luv").fs_stat(path)
  if not st then return nil end
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read the cluster key: " .. err end
  local text = f:read("*a") or ""
  f:close()
  return trim(text), bit.band(st.mode, 63) ~= 0 and bit.band(st.mode, 511) or nil -- 0077, 0777
end

local function exposed_warning(path, mode)
  return ("%s is open to other users of this machine (mode %03o): chmod 600 it"):format(path, mode)
end

-- The cluster key: the --cluster-key flag, else EXO_CLUSTER_KEY, else
-- $EXO_HOME/cluster.key. Returns { key, source, warning }, or nil when none
-- is given (an open cluster), or nil, err. An empty or short key is an
-- error, never an open cluster: a slip must not leave the node open.
-- Whitespace around a key is dropped, so the file's newline and a pasted
-- key agree.
function M.cluster_key(flag)
  local key, source, warning = flag, "--cluster-key", nil
  if key == nil and os.getenv("EXO_CLUSTER_KEY") then key, source = os.getenv("EXO_CLUSTER_KEY"), "EXO_CLUSTER_KEY" end
  if key == nil then
    source = key_file()
    local exposed
    key, exposed = read_key_file(source)
    if not key then return nil, exposed end
    if exposed then warning = exposed_warning(source, exposed) end
  end
  key = trim(key)
  if #key < KEY_MIN then
    return nil, ("the cluster key from %s is %s: a key has at least %d characters (`exo key` makes one)")
      :format(source, #key == 0 and "empty" or ("only " .. #key .. " characters"), KEY_MIN)
  end
  return { key = key, source = source, warning = warning }
end

-- Writes the key file as mode 0600 in one step: a fresh file beside it
-- (O_EXCL, so nothing already there is followed), then renamed over it.
local function write_key_file(path, key)
  local uv = require "luv"
  os.execute(("mkdir -p '%s'"):format(path:match("^(.*)/[^/]*$"):gsub("'", "'\\''")))
  local tmp = path .. ".new"
  uv.fs_unlink(tmp)
  local fd, err = uv.fs_open(tmp, "wx", 384) -- 0600
  if not fd then return nil, "cannot write " .. tmp .. ": " .. tostring(err) end
  local ok, werr = uv.fs_write(fd, key .. "\n", 0)
  if ok then ok, werr = uv.fs_fsync(fd) end
  uv.fs_close(fd)
  if ok then ok, werr = uv.fs_rename(tmp, path) end
  if not ok then
    uv.fs_unlink(tmp)
    return nil, "cannot write " .. path .. ": " .. tostring(werr)
  end
  return true
end

-- `exo key [--new]`: this device's key, made if absent, and how to give it
-- to the others. The key alone goes to stdout (KEY=$(exo key) works).
function commands.key(args)
  local opts, pos = M.parse(args, { new = "boolean" })
  if opts and #pos > 0 then opts, pos = nil, "unexpected argument '" .. pos[1] .. "'" end
  if not opts then
    io.stderr:write("exo key: " .. pos .. "\n")
    return 2
  end
  local path = key_file()
  local key, exposed
  if not opts.new then
    key, exposed = read_key_file(path)
    if not key and exposed then
      io.stderr:write("exo key: " .. exposed .. "\n")
      return 1
    end
    if key and #key < KEY_MIN then
      io.stderr:write(("exo key: %s holds no usable key (%d characters, at least %d needed); `exo key --new` "
        .. "replaces it\n"):format(path, #key, KEY_MIN))
      return 1
    end
  end
  local what = "the cluster key in " .. path .. " (kept; `exo key --new` replaces it)"
  if not key then
    local bytes = require("exo.native").random_bytes(32)
    key = "exo-" .. bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
    local ok, err = write_key_file(path, key)
    if not ok then
      io.stderr:write("exo key: " .. err .. "\n")
      return 1
    end
    what = (opts.new and "a new cluster key in %s (nodes already running keep the old one until restarted)"
      or "a cluster key in %s"):format(path)
    exposed = nil
  end
  io.write(key, "\n")
  io.stderr:write(("exo: %s\n"):format(what))
  if exposed then io.stderr:write("exo: warning: " .. exposed_warning(path, exposed) .. "\n") end
  if os.getenv("EXO_CLUSTER_KEY") then
    io.stderr:write("exo: note: EXO_CLUSTER_KEY is set here, and a node takes it before the file\n")
  end
  io.stderr:write(([[
Nodes started on this device use it. Every other device of the cluster needs the same key; on each, either
  copy this file to its $EXO_HOME/cluster.key (~/.cache/exo/cluster.key) with mode 0600, or
  start it with  EXO_CLUSTER_KEY=%s exo
  or             exo --cluster-key %s
(a key on the command line is visible to other users in `ps`; see docs/security.md)
]]):format(key, key))
  return 0
end

function commands.bench(args)
  local opts, pos = M.parse(args, { p = "number", n = "number", r = "number", d = "number", threads = "number",
    json = "boolean" }, { t = "threads" })
  if not opts then
    io.stderr:write("exo bench: " .. pos .. "\n")
    return 2
  end
  local bench = require "exo.bench"
  local res, err = bench.run { model = pos[1], p = opts.p or 512, n = opts.n or 128, r = opts.r or 5,
    d = opts.d or 0, threads = opts.threads,
    progress = function(line) io.stderr:write("exo bench: " .. line .. "\n") end }
  if not res then
    io.stderr:write("exo bench: " .. err .. "\n")
    return 1
  end
  bench.print(res, opts.json)
  return 0
end

-- The --chat-template FILE (a Lua function or Jinja text), or nil; nil, err
-- when the file is unusable.
local function load_chat_template(opts)
  if not opts.chat_template then return nil end
  local fn, err = require("exo.chat").load_template_file(opts.chat_template)
  if not fn then return nil, err end
  return fn
end

local RUN_FLAGS = {
  prompt = "string", system_prompt = "string", max_tokens = "number", temperature = "number", top_p = "number",
  top_k = "number", min_p = "number", seed = "number", stop = "string", chat_template = "string",
  verbose = "boolean", threads = "number", ctx = "number", quantize = "string",
  enable_speculative = "boolean", draft_model = "string", draft_tokens = "number",
}

-- --enable-speculative --draft-model MODEL --draft-tokens N, as `exo run` and
-- `exo serve` take them: nil (off), or { draft = spec, g = N }, or nil, err.
local function speculative_opts(o)
  if not o.enable_speculative then
    if o.draft_model or o.draft_tokens then return nil, "--draft-model and --draft-tokens need --enable-speculative" end
    return nil
  end
  if not o.draft_model then
    return nil, "--enable-speculative needs --draft-model MODEL (another model, or MODEL:layers=0-K)"
  end
  local g = o.draft_tokens or 4
  if g < 1 or g > 32 or g ~= math.floor(g) then return nil, "--draft-tokens must be an integer from 1 to 32" end
  return { draft = o.draft_model, g = g }
end

-- Checks sampling flags the way the API checks request fields: a clear
-- message naming the flag, before anything is loaded.
local function check_run_flags(o)
  if o.temperature and o.temperature < 0 then return "--temperature must be >= 0" end
  if o.top_p and not (o.top_p > 0 and o.top_p <= 1) then return "--top-p must be in (0, 1]" end
  if o.min_p and not (o.min_p >= 0 and o.min_p < 1) then return "--min-p must be in [0, 1)" end
  if o.top_k and o.top_k < 0 then return "--top-k must be >= 0" end
  if o.max_tokens and o.max_tokens < 1 then return "--max-tokens must be >= 1" end
end

-- The chat's slash commands, as Ollama users know them. Returns false to end the chat.
local CHAT_HELP = [[
/set temperature|top_p|top_k|min_p|seed|max_tokens VALUE    change a sampling setting
/set system TEXT    the system prompt (the conversation starts over)
/show               the model and the settings
/clear              forget the conversation (the system prompt stays)
/bye                end the chat (Ctrl-D too)
]]
local SETTABLE = { temperature = true, top_p = true, top_k = true, min_p = true, seed = true, max_tokens = true }

local function chat_command(line, chat)
  local cmd, rest = line:match("^%s*/(%S+)%s*(.-)%s*$")
  local messages = chat.messages
  local function restart()
    for i = #messages, 1, -1 do messages[i] = nil end
    if chat.system() then messages[1] = { role = "system", content = chat.system() } end
  end
  if cmd == "bye" or cmd == "exit" then return false end
  if cmd == "?" or cmd == "help" then
    io.stderr:write(CHAT_HELP)
  elseif cmd == "clear" then
    restart()
    io.stderr:write("Cleared the conversation.\n")
  elseif cmd == "show" then
    local p = chat.params
    io.stderr:write(("model %s (%s)\ntemperature %s, top_p %s, top_k %s, min_p %s, seed %s, max_tokens %s\n"
      .. "system prompt: %s\n%d messages in the conversation\n"):format(chat.model.id, chat.model.path,
      tostring(p.temperature), tostring(p.top_p or 1), tostring(p.top_k or 0), tostring(p.min_p or 0),
      tostring(p.seed or "random"), tostring(p.max_tokens or "the model's"), chat.system() or "none", #messages))
  elseif cmd == "set" then
    local key, value = rest:match("^(%S+)%s*(.-)$")
    if key == "system" and value ~= "" then
      chat.set_system(value)
      restart()
      io.stderr:write("Set the system prompt (the conversation starts over).\n")
    elseif key and SETTABLE[key] and tonumber(value) then
      local trial = {}
      for k, v in pairs(chat.params) do trial[k] = v end
      trial[key] = tonumber(value)
      local bad = check_run_flags(trial)
      if bad then
        io.stderr:write(bad .. "\n")
      else
        chat.params[key] = tonumber(value)
        io.stderr:write(("Set %s to %s.\n"):format(key, value))
      end
    else
      io.stderr:write("usage: /set temperature|top_p|top_k|min_p|seed|max_tokens NUMBER, or /set system TEXT\n")
    end
  else
    io.stderr:write(("unknown command /%s (/? lists them)\n"):format(tostring(cmd)))
  end
  return true
end

function commands.run(args)
  local opts, pos = M.parse(args, RUN_FLAGS, { p = "prompt", n = "max_tokens", t = "threads" })
  if not opts then
    io.stderr:write("exo run: " .. pos .. "\n")
    return 2
  end
  local bad = check_run_flags(opts)
  local spec, spec_err = speculative_opts(opts)
  bad = bad or spec_err
  if bad then
    io.stderr:write("exo run: " .. bad .. "\n")
    return 2
  end
  local native = require "exo.native"
  local verbose = opts.verbose or (tonumber(os.getenv("DEBUG") or "0") or 0) >= 1
  if opts.threads then native.set_threads(opts.threads) end
  -- A safetensors folder's matrices, quantized as its shard loads (docs/models.md).
  local qok, qerr = native.set_safetensors_quantize(opts.quantize)
  if not qok then
    io.stderr:write("exo run: " .. qerr .. "\n")
    return 2
  end
  local template, terr = load_chat_template(opts)
  if terr then
    io.stderr:write("exo run: " .. terr .. "\n")
    return 1
  end
  -- A catalogue or hub model that is not in the store yet: download it first.
  if require("exo.pull").missing(pos[1]) then
    local _, perr = require("exo.pull").pull_with_progress(pos[1] or require("exo.models").default_id)
    if perr then
      io.stderr:write("exo run: " .. perr .. "\n")
      return 1
    end
  end
  local t_load = native.now()
  local model, err = require("exo.model").load(pos[1], { chat_template = template })
  if not model then
    io.stderr:write("exo run: " .. err .. "\n")
    return 1
  end
  if verbose then io.stderr:write(("loaded %s in %.2f s\n"):format(model.path, native.now() - t_load)) end
  local generate = require "exo.generate"
  local prompt = require "exo.prompt"
  local session, serr = generate.session(model, { n_ctx = opts.ctx })
  if not session then
    io.stderr:write("exo run: " .. serr .. "\n")
    return 1
  end
  local speculative = spec and require "exo.speculative"
  local draft_session
  if spec then
    local draft, derr = speculative.load_draft(spec.draft, model)
    if draft then draft_session, derr = generate.session(draft, { n_ctx = session:n_ctx() }) end
    if not draft_session then
      io.stderr:write("exo run: draft: " .. derr .. "\n")
      return 1
    end
  end
  local params = {
    max_tokens = opts.max_tokens, temperature = opts.temperature == nil and 0.7 or opts.temperature,
    top_p = opts.top_p, top_k = opts.top_k, min_p = opts.min_p, seed = opts.seed,
    stop = opts.stop and { opts.stop } or nil,
  }
  local messages = {}
  if opts.system_prompt then messages[1] = { role = "system", content = opts.system_prompt } end

  local warned = false
  local function answer(user_text, should_stop)
    messages[#messages + 1] = { role = "user", content = user_text }
    local ids, rendered, warning = prompt.build(model.tokenizer, messages,
      { template = model.chat_template, family = model.chat_family })
    if not ids then return nil, rendered end
    if warning and not warned then
      io.stderr:write("exo run: " .. warning .. "\n")
      warned = true
    end
    local function on_text(piece)
      io.stdout:write(piece)
      io.stdout:flush()
    end
    local res, gerr
    if draft_session then
      res, gerr = speculative.generate(session, draft_session, ids, params, on_text, should_stop, spec.g)
    else
      res, gerr = session:generate(ids, params, on_text, should_stop)
    end
    if not res then return nil, gerr end
    io.stdout:write("\n")
    messages[#messages + 1] = { role = "assistant", content = res.text }
    if verbose then
      local decode_s = res.seconds - res.ttft
      io.stderr:write(("prompt %d tokens (%d computed), TTFT %.3f s; %d tokens, %.1f tok/s; finish: %s\n"):format(
        res.n_prompt, res.n_computed, res.ttft, res.n_generated,
        res.n_generated > 1 and (res.n_generated - 1) / math.max(decode_s, 1e-9) or 0, res.finish_reason))
      local sp = res.speculative
      if sp then
        io.stderr:write(("speculative: %d drafted, %d accepted (%.1f%%), %.2f tokens per target pass over %d passes\n")
          :format(sp.drafted, sp.accepted, sp.drafted > 0 and 100 * sp.accepted / sp.drafted or 0,
            res.n_generated / math.max(sp.passes, 1), sp.passes))
      end
    end
    return res
  end

  local once = opts.prompt
  if not once and not native.isatty(0) then
    -- Piped input: the whole of stdin is one prompt.
    once = io.read("*a") or ""
    if not once:match("%S") then
      io.stderr:write("exo run: no prompt (give --prompt or pipe text in)\n")
      return 2
    end
  end
  if once then
    local res, aerr = answer(once)
    if not res then
      io.stderr:write("exo run: " .. aerr .. "\n")
      return 1
    end
    return 0
  end
  io.stderr:write(("chatting with %s: /? lists commands, Ctrl-C stops an answer, Ctrl-D or /bye ends\n")
    :format(model.id))
  native.catch_interrupt(true)
  local system = opts.system_prompt
  local function stopped() return native.interrupted() end
  while true do
    local line = native.readline(">>> ")
    if native.interrupted(true) then
      io.stderr:write("(Ctrl-D or /bye ends the chat)\n")
    elseif not line then
      break
    elseif line:match("^%s*/") then
      if not chat_command(line, { params = params, messages = messages, model = model,
        set_system = function(text) system = text end, system = function() return system end }) then
        break
      end
    elseif line:match("%S") then
      local res, aerr = answer(line, stopped)
      if native.interrupted(true) then io.stdout:write("\n") end -- the answer so far stays in the conversation
      if not res then io.stderr:write("exo run: " .. aerr .. "\n") end
    end
  end
  native.catch_interrupt(false)
  return 0
end

function commands.repl(args)
  return require("exo.repl").run(args)
end

local SERVE_FLAGS = {
  chatgpt_api_port = "number", api_host = "string", api_key = "string", default_model = "string",
  system_prompt = "string", max_generate_tokens = "number", default_temp = "number",
  chatgpt_api_response_timeout = "number", discovery_module = "string", disable_tui = "boolean",
  max_sessions = "number", parallel = "number", max_queue = "number", kv_tokens = "number",
  ctx = "number", threads = "number", cors_origin = "string", chat_template = "string", quantize = "string",
  http_head_timeout = "number", http_idle_timeout = "number", max_body_mb = "number",
  node_id = "string", node_host = "string", node_port = "number", discovery_config_path = "string",
  wait_for_peers = "number", partitioning = "string", inference_engine = "string", device_memory = "number",
  wire_dtype = "string", peer_timeout = "number", fetch_timeout = "number", fetch_stall = "number",
  enable_speculative = "boolean", draft_model = "string", draft_tokens = "number", allow_model_paths = "boolean",
  cluster_key = "string", max_connections = "number", max_connections_per_address = "number",
  listen_port = "number", broadcast_port = "number", discovery_timeout = "number", node_id_filter = "string",
  interface_type_filter = "string", tailscale_api_key = "string", tailnet_name = "string",
  tailscale_api_base = "string", tailscale_device_id = "string",
}

-- The cluster side of `exo serve`: identity, wire, discovery, partitioning.
-- key: M.cluster_key's answer (nil: an open cluster). Returns cluster, ring
-- or nil, err.
local function start_cluster(opts, node, key)
  local uv = require "luv"
  local models = require "exo.models"
  local cluster_mod = require "exo.cluster"
  -- UDP broadcasts unless told otherwise (a peers file means manual; EXO_DISCOVERY_MODULE sets
  -- the default, as the tests do to keep their nodes apart).
  local discovery = opts.discovery_module or (opts.discovery_config_path and "manual")
    or os.getenv("EXO_DISCOVERY_MODULE") or "udp"
  local registry = require "exo.discovery"
  local modules, derr = registry.parse(discovery)
  if not modules then return nil, derr end
  local use = {}
  for _, name in ipairs(modules) do use[name] = true end
  for _, flag in ipairs { "listen_port", "broadcast_port" } do
    local v = opts[flag]
    if v and (v < 1 or v > 65535 or v % 1 ~= 0) then
      return nil, ("--%s must be a port number"):format(flag:gsub("_", "-"))
    end
  end
  if opts.discovery_timeout and opts.discovery_timeout <= 0 then return nil, "--discovery-timeout must be positive" end
  if use.manual and not opts.discovery_config_path then
    return nil, "--discovery-module manual needs --discovery-config-path FILE"
  end
  if opts.inference_engine and opts.inference_engine ~= "cpu" then
    return nil, "--inference-engine " .. opts.inference_engine .. " is not available (cpu is)"
  end
  local wire_dtype = opts.wire_dtype or "f32"
  if not require("exo.native").WIRE_DTYPES[wire_dtype] then
    return nil, "--wire-dtype must be f32, f16 or q8_0"
  end
  -- How long a request waits on a ring member fetching the model its open names
  -- (default 6 h), and with no new bytes from it (default 10 min): lua/exo/ring/asker.lua.
  for _, k in ipairs { "fetch_timeout", "fetch_stall" } do
    if opts[k] and not (opts[k] > 0) then return nil, ("--%s must be a number of seconds above 0"):format((k:gsub("_", "-"))) end
  end
  local port = opts.node_port or 0
  if port < 0 or port > 65535 or port ~= math.floor(port) then return nil, "--node-port must be a port number" end
  local policy, perr = require("exo.partition").load(opts.partitioning)
  if not policy then return nil, perr end
  local node_id = opts.node_id or cluster_mod.persistent_id(models.home())
  if #node_id > 128 or not node_id:match("^[%w%._:%-]+$") then
    return nil, "--node-id must be 1 to 128 letters, digits, '.', '_', ':' or '-'"
  end
  local watcher, config, cluster, keep_out
  local feed = registry.merger(modules, function(records) cluster:set_discovered(records) end)
  if use.manual then
    local werr
    watcher, werr = require("exo.discovery.manual").new { path = opts.discovery_config_path, node_id = node_id,
      on_change = function(c)
        feed("manual", c.peers)
        -- A peer taken out of the file leaves, live connection and all (when the file is the
        -- only module: another module may still find it, and that is the operator's say too).
        if keep_out then keep_out(c.peers) end
      end }
    if not watcher then return nil, werr end
    config = watcher:config()
  end
  -- Capabilities: measured here, unless the peers file or a flag says otherwise.
  local given = config and config.self.capabilities or {}
  local caps = cluster_mod.local_capabilities {
    model = given.model, chip = given.chip, memory = opts.device_memory or given.memory, flops = given.flops,
  }
  local host = opts.node_host or "0.0.0.0"
  cluster = cluster_mod.new { node_id = node_id, host = host, port = config and port == 0 and config.self.port
    or port, advertise = config and config.self.address, capabilities = caps, peer_timeout = opts.peer_timeout,
    cluster_key = key and key.key }
  local ok, cerr = cluster:start()
  if not ok then return nil, cerr end
  -- EXO_RING_OPEN_TIMEOUT: seconds the asker waits for a node's answer to an open (120; tests shorten it).
  local ring = require("exo.ring").new(node, cluster, { policy = policy, wire_dtype = wire_dtype,
    max_kept = opts.max_sessions, open_timeout = tonumber(os.getenv("EXO_RING_OPEN_TIMEOUT") or "") })
  ring.fetch_timeout, ring.fetch_stall = opts.fetch_timeout, opts.fetch_stall
  node:attach_ring(ring, { wait_for_peers = opts.wait_for_peers })
  local watchers = {}
  if watcher then
    if #modules == 1 then keep_out = registry.keep_out(cluster) end
    watcher:start()
    watchers[#watchers + 1] = watcher
  end
  if use.udp then
    watcher = require("exo.discovery.udp").new { node_id = node_id, wire = cluster.wire, wire_port = cluster.port,
      listen_host = host, capabilities = caps, listen_port = opts.listen_port, broadcast_port = opts.broadcast_port,
      timeout = opts.discovery_timeout, node_id_filter = opts.node_id_filter,
      interface_type_filter = opts.interface_type_filter,
      on_change = function(records) feed("udp", records) end }
    local ok2, uerr = watcher:start()
    if not ok2 then
      cluster:stop()
      return nil, uerr
    end
    watchers[#watchers + 1] = watcher
  end
  if use.tailscale then
    -- Never stops the node: a missing key or an unreachable API is logged and the node runs on.
    watcher = require("exo.discovery.tailscale").new { node_id = node_id, wire_port = cluster.port,
      capabilities = caps, api_key = opts.tailscale_api_key or os.getenv("TAILSCALE_API_KEY"),
      tailnet = opts.tailnet_name or os.getenv("TAILSCALE_TAILNET"),
      api_base = opts.tailscale_api_base or os.getenv("EXO_TAILSCALE_API_BASE"),
      device_id = opts.tailscale_device_id, timeout = opts.discovery_timeout,
      on_change = function(records) feed("tailscale", records) end }
    watcher:start()
    watchers[#watchers + 1] = watcher
  end
  watcher = registry.group(watchers)
  cluster.discovery = watcher
  io.stderr:write(("exo: node %s on port %d (discovery %s, partitioning %s, %s)\n"):format(node_id, cluster.port,
    discovery, opts.partitioning or "ring_memory_weighted", key and "cluster key from " .. key.source or "open cluster"))
  if not key then
    io.stderr:write("exo: warning: open cluster: any device on the network can join it and run models on this node; "
      .. "run `exo key` and give the key to every device (docs/security.md)\n")
  end
  if opts.wait_for_peers then
    io.stderr:write(("exo: waiting for %d peers\n"):format(opts.wait_for_peers))
    local t = uv.new_timer()
    t:start(200, 200, function()
      if cluster:peer_count() >= opts.wait_for_peers then
        io.stderr:write(("exo: %d peers connected\n"):format(cluster:peer_count()))
        t:stop()
        t:close()
      end
    end)
  end
  return cluster, ring, watcher
end

function commands.serve(args)
  local opts, pos = M.parse(args, SERVE_FLAGS)
  if not opts then
    io.stderr:write("exo: " .. pos .. "\n")
    return 2
  end
  if #pos > 0 then
    io.stderr:write("exo: unexpected argument '" .. pos[1] .. "'\n")
    return 2
  end
  local port = opts.chatgpt_api_port or 52415
  if port < 0 or port > 65535 or port ~= math.floor(port) then
    io.stderr:write("exo: --chatgpt-api-port must be a port number\n")
    return 2
  end
  for _, flag in ipairs { "max_connections", "max_connections_per_address" } do
    local n = opts[flag]
    if n and (n < 1 or n ~= math.floor(n)) then
      io.stderr:write(("exo: --%s must be a whole number of at least 1\n"):format(flag:gsub("_", "-")))
      return 2
    end
  end
  local key, key_err = M.cluster_key(opts.cluster_key)
  if key_err then
    io.stderr:write("exo: " .. key_err .. "\n")
    return 2
  end
  if key and key.warning then io.stderr:write("exo: warning: " .. key.warning .. "\n") end
  local uv = require "luv"
  local native = require "exo.native"
  local models = require "exo.models"
  if opts.threads then native.set_threads(opts.threads) end
  local qok, qerr = native.set_safetensors_quantize(opts.quantize)
  if not qok then
    io.stderr:write("exo: " .. qerr .. "\n")
    return 2
  end
  local template, terr = load_chat_template(opts)
  if terr then
    io.stderr:write("exo: " .. terr .. "\n")
    return 1
  end
  local spec, spec_err = speculative_opts(opts)
  if spec_err then
    io.stderr:write("exo: " .. spec_err .. "\n")
    return 2
  end
  -- Clients and peers name models by id or a file in the store; paths
  -- elsewhere only with --allow-model-paths, or the operator's own names.
  models.allow_paths = opts.allow_model_paths == true
  if opts.default_model then models.trust(opts.default_model) end
  if spec then models.trust((require("exo.speculative").parse_draft(spec.draft))) end
  local node = require("exo.node").new { max_sessions = opts.parallel or opts.max_sessions, n_ctx = opts.ctx,
    max_queue = opts.max_queue, kv_tokens = opts.kv_tokens, chat_template = template, speculative = spec }
  local ctx = {
    node = node, api_key = opts.api_key, default_model = opts.default_model or models.default_id,
    default_temperature = opts.default_temp or 0.7, max_tokens = opts.max_generate_tokens or 1024,
    max_tokens_cap = opts.max_generate_tokens, system_prompt = opts.system_prompt,
    response_timeout = opts.chatgpt_api_response_timeout or 900,
  }
  local cluster, ring, watcher = start_cluster(opts, node, key)
  if not cluster then
    io.stderr:write("exo: " .. ring .. "\n")
    return 2
  end
  ctx.cluster, ctx.ring = cluster, ring
  ctx.topology = function() return require("exo.topology").view(ctx) end
  local http_defaults = require("exo.api.http").DEFAULTS
  local server, err = require("exo.api.server").start(ctx, {
    host = opts.api_host or "0.0.0.0", port = port, cors_origin = opts.cors_origin or "*",
    head_timeout = opts.http_head_timeout and opts.http_head_timeout * 1000 or http_defaults.head_timeout,
    body_timeout = opts.http_head_timeout and opts.http_head_timeout * 3000 or http_defaults.body_timeout,
    idle_timeout = opts.http_idle_timeout and opts.http_idle_timeout * 1000 or http_defaults.idle_timeout,
    max_body = opts.max_body_mb and opts.max_body_mb * 1048576 or http_defaults.max_body,
    -- Unset: the defaults, or EXO_HTTP_MAX_CONNECTIONS[_PER_ADDRESS].
    max_conns = opts.max_connections, max_conns_per_addr = opts.max_connections_per_address,
  })
  if not server then
    io.stderr:write("exo: " .. err .. "\n")
    return 1
  end
  io.stderr:write(("exo: serving the ChatGPT-compatible API and the chat page on http://%s:%d (model %s)\n")
    :format(opts.api_host == "0.0.0.0" and "localhost" or opts.api_host or "localhost", server.port, ctx.default_model))
  io.stderr:flush()
  -- The terminal view, when a person is watching (stdout a terminal).
  local view
  if not opts.disable_tui and require("exo.native").isatty(1) then
    os.execute("mkdir -p '" .. models.home() .. "'")
    view = require("exo.tui").start { topology = ctx.topology, log_path = models.home() .. "/exo.log",
      api_url = ("http://%s:%d"):format(opts.api_host == "0.0.0.0" and "localhost" or opts.api_host or "localhost",
        server.port) }
  end
  -- SIGINT / SIGTERM stop the loop cleanly.
  local signals = {}
  for _, name in ipairs { "sigint", "sigterm" } do
    local sig = uv.new_signal()
    sig:start(name, function()
      if view then view:stop() end
      server.close()
      node:close()
      if watcher then watcher:stop() end
      cluster:stop()
      for _, s in ipairs(signals) do s:close() end
      -- Requests still waiting on peers hold timers: do not wait for them.
      uv.stop()
    end)
    signals[#signals + 1] = sig
  end
  uv.run()
  return 0
end

commands["lua"] = function(args)
  local file = args[1]
  if not file then
    io.stderr:write("usage: exo lua FILE [ARGS...]\n")
    return 2
  end
  local chunk, err = loadfile(file)
  if not chunk then
    io.stderr:write("exo lua: " .. err .. "\n")
    return 1
  end
  local rest = {}
  for i = 2, #args do rest[#rest + 1] = args[i] end
  local result = chunk(unpack(rest))
  return type(result) == "number" and result or 0
end

function M.main(...)
  local args = { ... }
  -- No command, or flags first: start a node, as exo does.
  local name = (#args == 0 or args[1]:sub(1, 1) == "-") and "serve" or table.remove(args, 1)
  local cmd = commands[name]
  -- --help or -h before any script's own arguments: the command's usage.
  for i = 1, name == "lua" and 1 or #args do
    if args[i] == "--help" or args[i] == "-h" then
      if not cmd then break end
      io.write(usage_of(name))
      return 0
    end
  end
  -- Every other command is the operator's own: a model path may be anywhere.
  if name ~= "serve" then require("exo.models").allow_paths = true end
  if not cmd then
    io.stderr:write(("exo: unknown command '%s'\n\n"):format(name))
    io.stderr:write(USAGE)
    return 2
  end
  return cmd(args)
end

return M.main(...)
