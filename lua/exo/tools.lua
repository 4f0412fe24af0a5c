-- tools.lua: tool calls in a model's answer, in the formats of the families exo runs.
--
-- A chat template that supports tools renders their definitions into the prompt and
-- teaches the model one way of calling them; the answer then carries the calls as text,
-- which this module finds and turns into OpenAI's `tool_calls`. The formats:
--   hermes   <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one block per call
--            (Qwen 2.5/3, SmolLM3, Hermes fine-tunes)
--   mistral  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] (Mistral Nemo and later)
--   llama3   the whole answer is {"name": ..., "parameters": {...}}, optionally after
--            <|python_tag|> (Llama 3.1 and 3.2)
-- format_of(template) says which one a template teaches (nil: it renders no tools), and
-- parse(text, format) returns the answer's text and its calls. While an answer streams,
-- hold(text, format) says how much of it can be shown: never the start of a call.
local json = require "exo.json"

local M = {}

--- tools.format_of(template_text) -> "hermes" | "mistral" | "llama3" | nil
function M.format_of(template)
  if type(template) ~= "string" or not template:find("tools", 1, true) then return nil end
  if template:find("<tool_call>", 1, true) then return "hermes" end
  if template:find("[TOOL_CALLS]", 1, true) then return "mistral" end
  if template:find("<|python_tag|>", 1, true) or template:find("<|eom_id|>", 1, true)
    or (template:find("<|start_header_id|>", 1, true) and template:find("parameters", 1, true)) then
    return "llama3"
  end
  return nil
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

-- A call from a decoded JSON object, or nil: a name, and arguments as a JSON text.
local function call_of(obj)
  if type(obj) ~= "table" or type(obj.name) ~= "string" or obj.name == "" then return nil end
  local args = obj.arguments
  if args == nil or args == json.null then args = obj.parameters end
  if args == nil or args == json.null then args = {} end
  local text
  if type(args) == "string" then
    -- Some models write the arguments already encoded: keep them if they are JSON.
    text = json.decode(args) ~= nil and args or json.encode(args)
  else
    text = json.encode(args)
  end
  return { name = obj.name, arguments = text }
end

local function decode_object(text)
  local v = json.decode(text)
  return type(v) == "table" and v or nil
end

local parsers = {}

function parsers.hermes(text)
  local calls, kept, pos = {}, {}, 1
  while true do
    local a, b = text:find("<tool_call>", pos, true)
    if not a then break end
    local c, d = text:find("</tool_call>", b + 1, true)
    local body = text:sub(b + 1, (c or #text + 1) - 1)
    local call = call_of(decode_object(trim(body)))
    if not call then break end -- not a call after all: leave the text as it is
    kept[#kept + 1] = text:sub(pos, a - 1)
    calls[#calls + 1] = call
    pos = (d or #text) + 1
  end
  kept[#kept + 1] = text:sub(pos)
  return table.concat(kept), calls
end

function parsers.mistral(text)
  local a, b = text:find("[TOOL_CALLS]", 1, true)
  if not a then return text, {} end
  local list = decode_object(trim(text:sub(b + 1)))
  if not list then return text, {} end
  if list.name then list = { list } end
  local calls = {}
  for _, obj in ipairs(list) do
    local call = call_of(obj)
    if not call then return text, {} end
    calls[#calls + 1] = call
  end
  return text:sub(1, a - 1), calls
end

function parsers.llama3(text)
  local body = trim(text)
  local tagged = body:find("<|python_tag|>", 1, true) == 1
  if tagged then body = trim(body:sub(#"<|python_tag|>" + 1)) end
  if body:sub(1, 1) ~= "{" then return text, {} end
  local call = call_of(decode_object(body))
  if not call then return text, {} end
  return "", { call }
end

--- tools.parse(text, format) -> content (nil when only calls remain), calls
-- calls: a list of { name, arguments (a JSON text) }; empty when the answer calls nothing.
function M.parse(text, format)
  local parser = parsers[format]
  if not parser then return text, {} end
  local content, calls = parser(text)
  if #calls == 0 then return text, calls end
  content = trim(content)
  return content ~= "" and content or nil, calls
end

-- The text that opens a call, by format (llama3's is the answer's first "{").
local OPENERS = { hermes = "<tool_call>", mistral = "[TOOL_CALLS]", llama3 = "<|python_tag|>" }

--- tools.hold(text, format) -> n: the first n bytes of a streaming answer can be shown; the
-- rest may be (the start of) a call and waits until the answer is complete.
function M.hold(text, format)
  local opener = OPENERS[format]
  if not opener then return #text end
  if format == "llama3" then
    local first = text:find("%S")
    if first and (text:sub(first, first) == "{" or text:sub(first, first) == "<") then return first - 1 end
  end
  local at = text:find(opener, 1, true)
  if at then return at - 1 end
  -- A partial opener at the very end.
  for k = math.min(#opener - 1, #text), 1, -1 do
    if text:sub(-k) == opener:sub(1, k) then return #text - k end
  end
  return #text
end

--- tools.holder(format, emit) -> holder: a streaming answer's pieces go to holder:push(piece),
-- which passes emit the text that cannot be (the start of) a call; holder:finish() then
-- emits what was held back if it was no call after all, and returns parse()'s content, calls.
function M.holder(format, emit)
  local h = { parts = {}, emitted = 0 }
  function h:push(piece)
    self.parts[#self.parts + 1] = piece
    local full = table.concat(self.parts)
    self.parts = { full }
    local n = M.hold(full, format)
    if n > self.emitted then
      emit(full:sub(self.emitted + 1, n))
      self.emitted = n
    end
  end
  function h:finish()
    local full = table.concat(self.parts)
    local content, calls = M.parse(full, format)
    if #calls == 0 and #full > self.emitted then emit(full:sub(self.emitted + 1)) end
    return content, calls
  end
  return h
end

return M
