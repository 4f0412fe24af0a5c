-- cli.lua: the `exo` default script: flags and subcommands.
--
-- The host runs this file with the command-line arguments. Each subcommand is
-- a function of its parsed flags; it returns the process exit status. Users
-- may replace this script (EXO_LUA_DIR) or run their own with `exo lua FILE`.
local M = {}

local USAGE = [[
usage: exo <command> [options]

commands:
  run [MODEL] [--prompt TEXT] [--system-prompt TEXT] [--max-tokens N] [--temperature T]
      [--top-p P] [--top-k K] [--min-p P] [--seed S] [--stop TEXT] [--chat-template FILE.lua] [--verbose]
                      answer one prompt (streamed to stdout), or chat when no --prompt is
                      given and stdin is a terminal
  repl                a LuaJIT REPL with the runtime loaded (exo.model, exo.tokenizer, ...)
  bench MODEL [-p 512] [-n 128] [-r 5] [-t THREADS] [--json]
                      prompt (pp) and generation (tg) speed, medians over -r runs
  models              the model registry and what is in the store
  lua FILE [ARGS...]  run a Lua file inside the runtime (tests, experiments)
  version             print the version and the CPU kernels in use
  help                this text

MODEL is a model id (smollm2-135m) or a path to a .gguf file.
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

function commands.help()
  io.write(USAGE)
  return 0
end

function commands.version()
  local native = require "exo.native"
  print(("exo %s (kernels: %s, threads: %d)"):format(native.version(), native.cpu_features(), native.threads()))
  return 0
end

function commands.models()
  local models = require "exo.models"
  local ids = {}
  for id in pairs(models.registry) do ids[#ids + 1] = id end
  table.sort(ids)
  for _, id in ipairs(ids) do
    local path = models.resolve(id)
    print(("%-16s %-12s %s"):format(id, path and "downloaded" or "missing", models.registry[id].description or ""))
  end
  print("store: " .. models.store())
  return 0
end

function commands.bench(args)
  local opts, pos = M.parse(args, { p = "number", n = "number", r = "number", threads = "number", json = "boolean" },
    { t = "threads" })
  if not opts then
    io.stderr:write("exo bench: " .. pos .. "\n")
    return 2
  end
  local bench = require "exo.bench"
  local res, err = bench.run { model = pos[1], p = opts.p or 512, n = opts.n or 128, r = opts.r or 5,
    threads = opts.threads }
  if not res then
    io.stderr:write("exo bench: " .. err .. "\n")
    return 1
  end
  bench.print(res, opts.json)
  return 0
end

local RUN_FLAGS = {
  prompt = "string", system_prompt = "string", max_tokens = "number", temperature = "number", top_p = "number",
  top_k = "number", min_p = "number", seed = "number", stop = "string", chat_template = "string",
  verbose = "boolean", threads = "number", ctx = "number",
}

-- Checks sampling flags the way the API checks request fields: a clear
-- message naming the flag, before anything is loaded.
local function check_run_flags(o)
  if o.temperature and o.temperature < 0 then return "--temperature must be >= 0" end
  if o.top_p and not (o.top_p > 0 and o.top_p <= 1) then return "--top-p must be in (0, 1]" end
  if o.min_p and not (o.min_p >= 0 and o.min_p < 1) then return "--min-p must be in [0, 1)" end
  if o.top_k and o.top_k < 0 then return "--top-k must be >= 0" end
  if o.max_tokens and o.max_tokens < 1 then return "--max-tokens must be >= 1" end
end

function commands.run(args)
  local opts, pos = M.parse(args, RUN_FLAGS, { p = "prompt", n = "max_tokens", t = "threads" })
  if not opts then
    io.stderr:write("exo run: " .. pos .. "\n")
    return 2
  end
  local bad = check_run_flags(opts)
  if bad then
    io.stderr:write("exo run: " .. bad .. "\n")
    return 2
  end
  local native = require "exo.native"
  local verbose = opts.verbose or (tonumber(os.getenv("DEBUG") or "0") or 0) >= 1
  if opts.threads then native.set_threads(opts.threads) end
  local template
  if opts.chat_template then
    local chat = require "exo.chat"
    local fn, terr = chat.load_template_file(opts.chat_template)
    if not fn then
      io.stderr:write("exo run: " .. terr .. "\n")
      return 1
    end
    template = fn
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
  local params = {
    max_tokens = opts.max_tokens, temperature = opts.temperature == nil and 0.7 or opts.temperature,
    top_p = opts.top_p, top_k = opts.top_k, min_p = opts.min_p, seed = opts.seed,
    stop = opts.stop and { opts.stop } or nil,
  }
  local messages = {}
  if opts.system_prompt then messages[1] = { role = "system", content = opts.system_prompt } end

  local warned = false
  local function answer(user_text)
    messages[#messages + 1] = { role = "user", content = user_text }
    local ids, rendered, warning = prompt.build(model.tokenizer, messages, { template = model.chat_template })
    if not ids then return nil, rendered end
    if warning and not warned then
      io.stderr:write("exo run: " .. warning .. "\n")
      warned = true
    end
    local res, gerr = session:generate(ids, params, function(piece)
      io.stdout:write(piece)
      io.stdout:flush()
    end)
    if not res then return nil, gerr end
    io.stdout:write("\n")
    messages[#messages + 1] = { role = "assistant", content = res.text }
    if verbose then
      local decode_s = res.seconds - res.ttft
      io.stderr:write(("prompt %d tokens (%d computed), TTFT %.3f s; %d tokens, %.1f tok/s; finish: %s\n"):format(
        res.n_prompt, res.n_computed, res.ttft, res.n_generated,
        res.n_generated > 1 and (res.n_generated - 1) / math.max(decode_s, 1e-9) or 0, res.finish_reason))
    end
    return res
  end

  if opts.prompt then
    local res, aerr = answer(opts.prompt)
    if not res then
      io.stderr:write("exo run: " .. aerr .. "\n")
      return 1
    end
    return 0
  end
  if not native.isatty(0) then
    -- Piped input: the whole of stdin is one prompt.
    local text = io.read("*a") or ""
    if not text:match("%S") then
      io.stderr:write("exo run: no prompt (give --prompt or pipe text in)\n")
      return 2
    end
    local res, aerr = answer(text)
    if not res then
      io.stderr:write("exo run: " .. aerr .. "\n")
      return 1
    end
    return 0
  end
  io.stderr:write(("chatting with %s; an empty line or Ctrl-D ends\n"):format(model.id))
  while true do
    local line = native.readline(">>> ")
    if not line or line == "" then break end
    local res, aerr = answer(line)
    if not res then io.stderr:write("exo run: " .. aerr .. "\n") end
  end
  return 0
end

function commands.repl(args)
  return require("exo.repl").run(args)
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
  local name = table.remove(args, 1) or "help"
  local cmd = commands[name]
  if not cmd then
    io.stderr:write(("exo: unknown command '%s'\n\n"):format(name))
    io.stderr:write(USAGE)
    return 2
  end
  return cmd(args)
end

return M.main(...)
