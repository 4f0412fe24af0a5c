-- reference_files.lua: reading the reference outputs in tests/fixtures/llama_cpp.
--
-- The files llama.cpp's outputs were saved in (tools/reference/llama_refdump.c
-- writes them): token ids separated by anything, and top-k rows
-- "pos id:logit id:logit ...". Shared by the tests that compare with them;
-- tests require it after adding tests/lua to package.path. It also holds
-- what the Lua tests share: a checker that counts failures, and run().
local M = {}

-- The .gguf file of a catalogue id in the model store ($EXO_HOME/downloads/ID), or nil.
function M.model_file(id)
  local home = os.getenv("EXO_HOME")
  if not home or home == "" then home = os.getenv("HOME") .. "/.cache/exo" end
  local p = io.popen("ls " .. home .. "/downloads/" .. id .. "/*.gguf 2>/dev/null")
  local path = p:read("*l")
  p:close()
  return path
end

-- Whether two id lists are equal, element for element.
function M.same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

function M.read(path)
  local h = assert(io.open(path, "rb"))
  local s = h:read("*a")
  h:close()
  return s
end

-- Every integer in the file, in order.
function M.ids(path)
  local t = {}
  for id in M.read(path):gmatch("%d+") do t[#t + 1] = tonumber(id) end
  return t
end

-- One row per line: { {id, logit}, ... } best first, row i for position i - 1.
function M.topk(path)
  local rows = {}
  for line in M.read(path):gmatch("[^\n]+") do
    local pos, rest = line:match("^(%d+)%s+(.*)$")
    local row = {}
    for id, logit in rest:gmatch("(%d+):(%S+)") do row[#row + 1] = { tonumber(id), tonumber(logit) } end
    rows[tonumber(pos) + 1] = row
  end
  return rows
end

-- Teacher-forced rows against llama.cpp's: a tally of positions whose top
-- token agrees and of how far exo's gaps below the top token differ from
-- llama.cpp's for its other top-k tokens (gaps, not logits: a common offset
-- of all logits changes no probability). Where the top tokens differ,
-- check(...) is told whether llama.cpp's top two were within `tie` (a
-- near-tie, where engines may part). add(row, ref, n_vocab, where) returns
-- exo's top token; `where` names the position in a failure.
function M.gap_tally(argmax, check, tie)
  local t = { agree = 0, worst = 0, sum = 0, n = 0 }
  function t.add(row, ref, n_vocab, where)
    for k = 2, #ref do
      local d = math.abs((row[ref[k][1]] - row[ref[1][1]]) - (ref[k][2] - ref[1][2]))
      t.worst, t.sum, t.n = math.max(t.worst, d), t.sum + d, t.n + 1
    end
    local top = argmax(row, n_vocab)
    if top == ref[1][1] then
      t.agree = t.agree + 1
    else
      check(ref[1][2] - ref[2][2] <= tie, "%s: exo's top token %d, llama.cpp's %d (margin %.3f)", where, top,
        ref[1][1], ref[1][2] - ref[2][2])
    end
    return top
  end
  function t.mean() return t.n > 0 and t.sum / t.n or 0 end
  return t
end

-- A checker that counts failures and reports each on stderr; done() raises
-- when any failed.
function M.checker()
  local c = { failures = 0 }
  -- Returns cond, so a test can skip what depends on a failed check.
  function c.check(cond, fmt, ...)
    if not cond then
      c.failures = c.failures + 1
      io.stderr:write("FAIL: " .. fmt:format(...) .. "\n")
    end
    return cond
  end
  function c.done()
    if c.failures > 0 then error(c.failures .. " check(s) failed") end
  end
  return c
end

-- Runs a shell command with its output in log; a failure raises with the log.
function M.run(cmd, log)
  local ok = os.execute(cmd .. " >" .. log .. " 2>&1")
  if ok ~= true and ok ~= 0 then
    local f = io.open(log)
    error(cmd .. " failed: " .. (f and f:read("*a") or ""))
  end
end

return M
