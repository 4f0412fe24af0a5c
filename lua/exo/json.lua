-- json.lua: one configured lua-cjson instance for everything exo sends and receives.
--
-- Strict on input (no NaN/Infinity literals, nesting depth capped so a
-- hostile body cannot exhaust the C stack) and as exact on output as lua-cjson allows (14 significant digits). lua-cjson encodes every empty table as {}, so a list that must be
-- [] when empty is marked with M.empty_array.
local cjson = require "cjson"

local M = {}
local codec = cjson.new()
codec.decode_max_depth(64)
codec.encode_max_depth(64)
codec.decode_invalid_numbers(false)
codec.encode_invalid_numbers(false)
codec.encode_number_precision(14)
codec.encode_sparse_array(false, 0, 0)

M.null = codec.null
local EMPTY = "__exo_json_empty_array__"
M.empty_array = EMPTY

-- Returns the JSON text, or nil, err for values JSON cannot hold.
function M.encode(value)
  local ok, text = pcall(codec.encode, value)
  if not ok then return nil, text end
  if text:find(EMPTY, 1, true) then text = text:gsub('"' .. EMPTY .. '"', "[]") end
  return text
end

-- Returns the value, or nil, err with lua-cjson's message for malformed text.
function M.decode(text)
  local ok, value = pcall(codec.decode, text)
  if not ok then return nil, (tostring(value):gsub("^.-:%d+: ", "")) end
  return value
end

return M
