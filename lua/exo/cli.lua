-- cli.lua: the `exo` default script: flags and subcommands.
--
-- The host runs this file with the command-line arguments. Each subcommand is
-- a function of its parsed flags; it returns the process exit status. Users
-- may replace this script (EXO_LUA_DIR) or run their own with `exo lua FILE`.
local M = {}

local USAGE = [[
usage: exo <command> [options]

commands:
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
