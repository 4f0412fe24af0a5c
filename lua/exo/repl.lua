-- repl.lua: `exo repl`, a LuaJIT prompt with the runtime loaded.
--
-- For experiments: load a model, tokenize, run a shard, look at logits. The
-- environment has `exo` (every exo module, lazily required) and a few helpers
-- (load, top, help). Input that is not yet a complete chunk continues on the next
-- line; an expression's values are printed (tables and cdata readably).
-- History is kept in $EXO_HOME/repl_history when libreadline is present.
local ffi = require "ffi"
local native = require "exo.native"
local models = require "exo.models"

local M = {}

-- Readable one-line rendering of a value, tables to a bounded depth.
function M.show(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" then return ("%q"):format(v) end
  if t == "table" then
    if depth > 1 then return "{...}" end
    local parts, n = {}, 0
    for k, x in pairs(v) do
      n = n + 1
      if n > 20 then
        parts[#parts + 1] = "..."
        break
      end
      local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. M.show(k, depth + 1) .. "]"
      parts[#parts + 1] = key .. " = " .. M.show(x, depth + 1)
    end
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  if t == "cdata" then return tostring(ffi.typeof(v)) .. ": " .. tostring(v) end
  return tostring(v)
end

-- What help() prints: a recipe that runs as written (test_cli feeds it back).
local HELP = [[
exo repl: LuaJIT with the exo runtime. A session, line by line:
  m = load("%s")
  ids = m.tokenizer:encode("The capital of France is")
  m.tokenizer:decode(ids)
  seq = m.shard:new_seq(64)
  logits = m.shard:forward(seq, ids)
  best = top(logits, m.shard.n_vocab, 5)
  m.tokenizer:piece(best[1][1])
load(name, {start = 0, stop = 4}) loads layers [0, 4) only (a shard's output is then
hidden states); seq:pos() is where the sequence stands, seq:truncate(n) rolls it back.
`exo` holds every module: exo.native (the C runtime), exo.sampling, exo.chat, exo.template,
exo.models (exo.models.registry lists the catalogue), exo.partition. Ctrl-D ends the session.
]]

local function environment()
  local exo = setmetatable({}, {
    __index = function(self, name)
      local ok, mod = pcall(require, "exo." .. name)
      if not ok then return nil end
      rawset(self, name, mod)
      return mod
    end,
  })
  local env = setmetatable({ exo = exo }, { __index = _G })
  -- load("smollm2-135m") -> model (shard, tokenizer, chat_template)
  env.load = function(name, opts) return assert(exo.model.load(name, opts)) end
  -- top(logits, n_vocab, k) -> the k largest logits as { id, logit } pairs
  env.top = function(logits, n_vocab, k)
    local best = {}
    for i = 0, n_vocab - 1 do
      local x = logits[i]
      if #best < (k or 5) or x > best[#best][2] then
        best[#best + 1] = { i, x }
        table.sort(best, function(a, b) return a[2] > b[2] end)
        if #best > (k or 5) then best[#best] = nil end
      end
    end
    return best
  end
  env.help = function() io.write(HELP:format(models.default_id)) end
  return env
end

local function is_incomplete(err) return err and err:match("<eof>") ~= nil end

function M.run()
  local env = environment()
  local history = models.home() .. "/repl_history"
  native.load_history(history)
  io.stderr:write(("exo %s repl (LuaJIT, kernels: %s). `exo` holds the modules; load(\"%s\") loads a model;"
    .. " help() shows a session.\n"):format(native.version(), native.cpu_features(), models.default_id))
  -- Ctrl-C drops the line being typed, or stops the code running (between
  -- Lua instructions: a long C call finishes first), never the session.
  native.catch_interrupt(true)
  while true do
    local line = native.readline("exo> ")
    if native.interrupted(true) then
      io.stderr:write("(Ctrl-D ends the session)\n")
      line = ""
    end
    if not line then break end
    local chunk = line
    local fn, err = load("return " .. chunk, "=repl")
    if not fn then fn, err = load(chunk, "=repl") end
    while not fn and is_incomplete(err) do
      local more = native.readline("...> ")
      if not more then break end
      chunk = chunk .. "\n" .. more
      fn, err = load("return " .. chunk, "=repl")
      if not fn then fn, err = load(chunk, "=repl") end
    end
    if not fn then
      io.stderr:write(tostring(err) .. "\n")
    else
      setfenv(fn, env)
      local function report(ok, ...)
        if not ok then
          io.stderr:write(tostring((...)) .. "\n")
          return
        end
        local n = select("#", ...)
        if n == 0 then return end
        local out = {}
        for i = 1, n do out[i] = M.show((select(i, ...))) end
        print(table.concat(out, "\t"))
      end
      -- Hooks run only in the interpreter: the user's code is not compiled.
      jit.off(fn, true)
      debug.sethook(function()
        if native.interrupted(true) then error("interrupted (Ctrl-C)", 2) end
      end, "", 10000)
      report(xpcall(fn, function(e)
        if tostring(e):find("interrupted (Ctrl-C)", 1, true) then return "interrupted (Ctrl-C)" end
        return debug.traceback(e)
      end))
      debug.sethook()
    end
  end
  native.catch_interrupt(false)
  os.execute("mkdir -p '" .. models.home() .. "'")
  native.save_history(history)
  return 0
end

return M
