-- gen_cdef.lua: generates native.lua's ffi.cdef block from the public C headers.
--
-- The FFI declarations must match native/exo_defs.h and native/exo.h exactly,
-- so they are never edited by hand: this script strips comments and
-- preprocessor lines from the headers and writes the result between the
-- markers in lua/exo/native.lua. The boundary test calls extract() and checks
-- that native.lua holds the same text.
--
--   build/exo lua tools/gen_cdef.lua [SOURCE_DIR]          rewrite native.lua
--   build/exo lua tools/gen_cdef.lua [SOURCE_DIR] --check  exit 1 when stale

local M = {}

M.headers = { "native/exo_defs.h", "native/exo.h" }
M.begin_marker = "-- BEGIN GENERATED CDEF (tools/gen_cdef.lua)"
M.end_marker = "-- END GENERATED CDEF"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Declarations of one header: no comments, no preprocessor lines, no blank runs.
local function declarations(text)
  text = text:gsub("/%*.-%*/", "")
  local out = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do
    line = line:gsub("//.*$", ""):gsub("%s+$", "")
    if not line:match("^%s*#") and line:match("%S") then out[#out + 1] = line end
  end
  return table.concat(out, "\n")
end

function M.extract(source_dir)
  local parts = {}
  for _, h in ipairs(M.headers) do parts[#parts + 1] = declarations(read(source_dir .. "/" .. h)) end
  return table.concat(parts, "\n")
end

-- The text between the markers in native.lua (nil when the markers are missing).
function M.current(source_dir)
  local text = read(source_dir .. "/lua/exo/native.lua")
  local b = text:find(M.begin_marker, 1, true)
  local e = text:find(M.end_marker, 1, true)
  if not b or not e then return nil end
  local block = text:sub(b, e - 1)
  return block:match("%[%[\n(.-)\n%]%]")
end

function M.write(source_dir)
  local path = source_dir .. "/lua/exo/native.lua"
  local text = read(path)
  local b = text:find(M.begin_marker, 1, true)
  local e = text:find(M.end_marker, 1, true)
  assert(b and e, "markers not found in " .. path)
  local block = M.begin_marker .. "\nffi.cdef [[\n" .. M.extract(source_dir) .. "\n]]\n"
  local f = assert(io.open(path, "wb"))
  f:write(text:sub(1, b - 1), block, text:sub(e))
  f:close()
end

-- Run as a script (not when loaded by the test with dofile and a marker arg).
local args = { ... }
if args[1] ~= "--as-module" then
  local dir, check = ".", false
  for _, a in ipairs(args) do
    if a == "--check" then check = true else dir = a end
  end
  if check then
    if M.current(dir) ~= M.extract(dir) then
      io.stderr:write("native.lua's cdef is stale: run build/exo lua tools/gen_cdef.lua\n")
      os.exit(1)
    end
  else
    M.write(dir)
  end
end

return M
