-- template.lua: the Jinja2 subset that chat templates use, compiled once into Lua closures.
--
-- Chat templates ship inside model files (GGUF `tokenizer.chat_template`) and are written for
-- Hugging Face's renderer: Jinja2 with trim_blocks and lstrip_blocks on, the loopcontrols
-- extension, raise_exception/strftime_now globals and a tojson that does not HTML-escape. We
-- parse the text into an AST, turn the AST into a tree of closures once, and run that tree for
-- every request. Values follow Python's rules wherever a template can tell the difference
-- (truthiness, `and`/`or` returning an operand, negative indices and slices, str() of booleans,
-- lists and None, per-iteration loop scopes), because templates are tested against Python.
-- Tags, filters and tests we do not implement are rejected at compile time, unknown methods
-- when a render reaches them (the receiver's type is known only then), always with a line and
-- column, so a caller can fall back knowingly instead of rendering a subtly wrong prompt.
-- Known gaps: no include/import/extends/block/call tags, recursive loops, *args, groupby or
-- other rarely used filters; `|safe` gives a plain string (Markup's escaping of what is added
-- to it is not emulated); string case methods are ASCII-only.
--
-- Values: Lua strings, numbers, booleans; template.null (= cjson.null) is Python None; nil and
-- template.undefined are Jinja's Undefined. A table is a list when it has t[1] or is empty,
-- else a dict; template.list / template.dict mark a table explicitly (and give a dict its key
-- order, which tojson and items() follow; unmarked dicts iterate in sorted key order because
-- Lua tables have none). Numbers print as integers when integral: unlike Python we do not keep
-- 2.0 apart from 2.
local cjson = require "cjson"

local M = {}

local type, tostring, tonumber, pairs, ipairs, next = type, tostring, tonumber, pairs, ipairs, next
local setmetatable, getmetatable, rawget, rawset = setmetatable, getmetatable, rawget, rawset
local error, pcall, select = error, pcall, select
local sub, find, byte, char, format, rep, gsub, upper, lower, match =
  string.sub, string.find, string.byte, string.char, string.format, string.rep, string.gsub,
  string.upper, string.lower, string.match
local concat, sort, unpack = table.concat, table.sort, unpack
local floor, huge = math.floor, math.huge

-- Sentinels and markers ------------------------------------------------------------------

local NONE = cjson.null
local UNDEF_MT = { __tostring = function() return "Undefined" end }
local UNDEF = setmetatable({}, UNDEF_MT)
local NS_MT, LOOP_MT, MACRO_MT, BUILTIN_MT = {}, {}, {}, {}
-- Explicit list/dict marks and dict key order live beside the tables (weak keys), so marking
-- never touches a caller's metatables.
local marks = setmetatable({}, { __mode = "k" })
local dict_order = setmetatable({}, { __mode = "k" })
-- Tuples behave as lists and only print differently: (1, 2).
local tuples = setmetatable({}, { __mode = "k" })
local function new_tuple(t)
  marks[t] = "list"
  tuples[t] = true
  return t
end

M.null = NONE
M.undefined = UNDEF

--- template.list(t) -> t, marked as a list (an empty table is a list anyway).
function M.list(t)
  t = t or {}
  marks[t] = "list"
  return t
end

--- template.dict(t, keys) -> t, marked as a dict; keys (optional) is its key order.
function M.dict(t, keys)
  t = t or {}
  marks[t] = "dict"
  if keys then dict_order[t] = keys end
  return t
end

local new_list, new_dict = M.list, M.dict

local function kind(v)
  local tv = type(v)
  if tv == "string" then return "string" end
  if tv == "number" then return "number" end
  if tv == "boolean" then return "boolean" end
  if tv == "table" then
    local mt = getmetatable(v)
    if mt == UNDEF_MT then return "undefined" end
    if mt == NS_MT then return "namespace" end
    if mt == LOOP_MT then return "loop" end
    if mt == MACRO_MT or mt == BUILTIN_MT then return "callable" end
    local m = marks[v]
    if m then return m end
    if v[1] ~= nil or next(v) == nil then return "list" end
    return "dict"
  end
  if v == nil then return "undefined" end
  if v == NONE then return "none" end
  if tv == "function" then return "callable" end
  return "other"
end
M.kind = kind

-- Python's names for our kinds, for error messages that match what template authors know.
local PYTYPE = { string = "str", number = "int", boolean = "bool", list = "list", dict = "dict",
  none = "NoneType", undefined = "Undefined", namespace = "Namespace", loop = "LoopContext",
  callable = "function", other = "object" }
local function pytype(v)
  local k = kind(v)
  if k == "number" and v ~= floor(v) then return "float" end
  return PYTYPE[k]
end

local function truthy(v)
  if v == true then return true end
  if v == false or v == nil or v == 0 or v == "" or v == NONE or v == UNDEF then return false end
  if type(v) == "table" then
    local mt = getmetatable(v)
    if mt == NS_MT or mt == LOOP_MT or mt == MACRO_MT or mt == BUILTIN_MT then return true end
    return next(v) ~= nil
  end
  return true
end
M.truthy = truthy

local function dict_keys(t)
  local order = dict_order[t]
  if order then
    local ks = {}
    for _, k in ipairs(order) do if t[k] ~= nil then ks[#ks + 1] = k end end
    if #ks == #order then return ks end
    -- Keys were added after the order was recorded (namespaces): keep the order, append the rest.
    local seen = {}
    for _, k in ipairs(ks) do seen[k] = true end
    local extra = {}
    for k in pairs(t) do if not seen[k] then extra[#extra + 1] = k end end
    sort(extra, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(extra) do ks[#ks + 1] = k end
    return ks
  end
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    return a < b
  end)
  return ks
end

-- Errors ---------------------------------------------------------------------------------

-- R holds the node being evaluated when a builtin runs, so errors raised deep inside a filter
-- or method still name a position; render is not re-entrant across coroutines, so one
-- register is enough.
local R = { node = nil, depth = 0, steps = 0, marks = nil }

-- Marked rendering -------------------------------------------------------------------------
-- A caller that must know which bytes of the output came from some input strings (prompt.lua:
-- a message's content is never read as control tokens) renders with those strings replaced
-- by marks: U+E000, a number, U+E001. A mark travels through the template like the string it
-- stands for, and is output as itself; whatever looks inside a string (a filter, a method, a
-- test, a comparison, a subscript, a loop) sees the real text, and a string derived from marked
-- text (trimmed, split, sliced, tojson'ed) is marked in its turn. marks:expand() then gives
-- the text and the spans of marked bytes. A construct this does not follow shows as a
-- difference from the plain rendering, which the caller checks.
local MARK_OPEN, MARK_CLOSE = "\238\128\128", "\238\128\129"
local MARK_PATTERN = "\238\128\128(%d+)\238\128\129"
local Marks = {}
Marks.__index = Marks

--- template.marks() -> a mark set for tmpl:render(vars, marks).
function M.marks() return setmetatable({ texts = {} }, Marks) end

--- marks:mark(text) -> the mark that stands for text in a marked render.
function Marks:mark(text)
  local texts = self.texts
  texts[#texts + 1] = text
  return MARK_OPEN .. #texts .. MARK_CLOSE
end

--- marks:expand(rendered) -> text, spans: the marks replaced by their texts, and the
-- {first, last} byte spans (1-based, inclusive, in order, adjacent ones joined) they fill.
function Marks:expand(rendered)
  local texts, out, spans, pos, len = self.texts, {}, {}, 1, 0
  while true do
    local a, b, i = find(rendered, MARK_PATTERN, pos)
    local plain = sub(rendered, pos, (a or 0) - 1)
    out[#out + 1] = plain
    len = len + #plain
    if not a then break end
    local text = texts[tonumber(i)] or ""
    if #text > 0 then
      local last = spans[#spans]
      if last and last[2] == len then last[2] = len + #text
      else spans[#spans + 1] = { len + 1, len + #text } end
      out[#out + 1] = text
      len = len + #text
    end
    pos = b + 1
  end
  return concat(out), spans
end

--- template.has_mark_chars(s) -> whether s holds the characters marks are made of (such input
-- cannot be marked unambiguously).
function M.has_mark_chars(s)
  return find(s, MARK_OPEN, 1, true) ~= nil or find(s, MARK_CLOSE, 1, true) ~= nil
end

-- v with its marks expanded, and whether it had any (a no-op outside a marked render).
local function unmark(v)
  local set = R.marks
  if not set or type(v) ~= "string" or not find(v, MARK_OPEN, 1, true) then return v, false end
  local texts = set.texts
  return (gsub(v, MARK_PATTERN, function(i) return texts[tonumber(i)] or "" end)), true
end

-- A value derived from marked text, marked: a string, or a list's strings.
local function remark(v)
  if type(v) == "string" then
    if v == "" then return v end
    return R.marks:mark(v)
  end
  if type(v) == "table" and marks[v] == "list" then
    for i = 1, #v do
      if type(v[i]) == "string" and v[i] ~= "" then v[i] = R.marks:mark(v[i]) end
    end
  end
  return v
end

-- Calls fn(v, a, kw) (a filter or a string method) on expanded text; its result is marked
-- when the value or an argument was.
local function marked_call(fn, v, a, kw)
  local any
  v, any = unmark(v)
  for i = 1, #a do
    local had
    a[i], had = unmark(a[i])
    any = any or had
  end
  if kw then
    for k, x in pairs(kw) do
      local had
      kw[k], had = unmark(x)
      any = any or had
    end
  end
  local r = fn(v, a, kw)
  if any then r = remark(r) end
  return r
end
local ERR_MT = {}

local function raise(kind_, msg, pos)
  error(setmetatable({ kind = kind_, msg = msg, pos = pos }, ERR_MT), 0)
end
-- A runtime failure at node n (or at the builtin currently running).
local function fail(msg, n)
  n = n or R.node
  raise("error", msg, n and n.pos)
end
local function unsupported(msg, n)
  n = n or R.node
  raise("unsupported", msg, n and n.pos)
end

local function line_col(src, pos)
  local line, last = 1, 0
  local i = 1
  while true do
    local nl = find(src, "\n", i, true)
    if not nl or nl >= pos then break end
    line, last, i = line + 1, nl, nl + 1
  end
  -- Columns count characters, not bytes, so they match what an editor shows.
  local seg = sub(src, last + 1, pos - 1)
  local _, cont = gsub(seg, "[\128-\191]", "")
  return line, #seg - cont + 1
end

-- Turns an error object into "template:LINE:COL: message" plus an info table.
local function format_error(src, e)
  if getmetatable(e) ~= ERR_MT then
    local n = R.node
    e = { kind = "internal", msg = "internal error: " .. tostring(e), pos = n and n.pos }
  end
  local info = { kind = e.kind, message = e.msg, construct = e.construct }
  if e.pos then
    info.line, info.col = line_col(src, e.pos)
    return format("template:%d:%d: %s", info.line, info.col, e.msg), info
  end
  return "template: " .. e.msg, info
end

-- Strings and numbers as Python prints them ----------------------------------------------

local function is_ascii(s) return not find(s, "[\128-\255]") end

-- Python's whitespace for str.strip()/split() (ASCII plus the \x1c-\x1f separators). Stripping
-- scans bytes: a pattern like "%s+$" is quadratic on long runs of spaces, and message text is
-- user input.
local WS_BYTE = { [9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true,
  [28] = true, [29] = true, [30] = true, [31] = true }
local function rstrip_ws(s)
  local e = #s
  while e > 0 and WS_BYTE[byte(s, e)] do e = e - 1 end
  return sub(s, 1, e)
end
local function lstrip_ws(s)
  local b, n = 1, #s
  while b <= n and WS_BYTE[byte(s, b)] do b = b + 1 end
  return sub(s, b)
end
M.strip = function(s) return rstrip_ws(lstrip_ws(s)) end

local function utf8_chars(s)
  local out, n = {}, 0
  for c in s:gmatch("[%z\1-\127\192-\255][\128-\191]*") do n = n + 1; out[n] = c end
  return out, n
end

local function ulen(s)
  if is_ascii(s) then return #s end
  local _, cont = gsub(s, "[\128-\191]", "")
  return #s - cont
end

local function num_str(x)
  if x ~= x then return "nan" end
  if x == huge then return "inf" end
  if x == -huge then return "-inf" end
  if x == floor(x) and x > -2^53 and x < 2^53 then return format("%d", x) end
  for p = 1, 17 do
    local s = format("%." .. p .. "g", x)
    if tonumber(s) == x then
      -- Python writes 1e-05 and 1e+20 like C; only make sure a float keeps a decimal point.
      return s
    end
  end
  return format("%.17g", x)
end

local tostr
local function py_repr(v)
  local k = kind(v)
  if k == "string" then
    local q = "'"
    if find(v, "'", 1, true) and not find(v, '"', 1, true) then q = '"' end
    local s = gsub(v, "[\\\n\r\t" .. q .. "]", function(c)
      if c == "\n" then return "\\n" elseif c == "\r" then return "\\r"
      elseif c == "\t" then return "\\t" else return "\\" .. c end
    end)
    return q .. s .. q
  elseif k == "list" then
    local parts = {}
    for i = 1, #v do parts[i] = py_repr(v[i]) end
    if tuples[v] then
      return "(" .. concat(parts, ", ") .. (#v == 1 and ",)" or ")")
    end
    return "[" .. concat(parts, ", ") .. "]"
  elseif k == "dict" or k == "namespace" then
    local parts = {}
    for i, key in ipairs(dict_keys(v)) do parts[i] = py_repr(key) .. ": " .. py_repr(v[key]) end
    local body = "{" .. concat(parts, ", ") .. "}"
    if k == "namespace" then return "<Namespace " .. body .. ">" end
    return body
  end
  if k == "undefined" then return "Undefined" end
  return tostr(v)
end
M.repr = py_repr

-- Python's str(): what {{ value }} prints.
tostr = function(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then return num_str(v) end
  if v == true then return "True" end
  if v == false then return "False" end
  if v == nil or v == UNDEF then return "" end
  if v == NONE then return "None" end
  local k = kind(v)
  if k == "list" or k == "dict" or k == "namespace" then return py_repr(v) end
  if k == "loop" then return "<LoopContext>" end
  if k == "callable" then return "<function>" end
  return tostring(v)
end
M.tostr = tostr

-- JSON as Python's json.dumps writes it (HF's tojson: ensure_ascii=False by default).
local JSON_ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
  ["\b"] = "\\b", ["\f"] = "\\f" }

local function utf8_decode_at(s, i)
  local c = byte(s, i)
  local n, cp
  if c < 0x80 then return c, 1
  elseif c >= 0xF0 and c < 0xF8 then n, cp = 4, c - 0xF0
  elseif c >= 0xE0 then n, cp = 3, c - 0xE0
  elseif c >= 0xC0 then n, cp = 2, c - 0xC0
  else return 0xFFFD, 1 end
  for j = 1, n - 1 do
    local cc = byte(s, i + j)
    if not cc or cc < 0x80 or cc > 0xBF then return 0xFFFD, 1 end
    cp = cp * 64 + (cc - 0x80)
  end
  return cp, n
end

local function json_string(s, ensure_ascii)
  if not find(s, '[%c"\\\128-\255]') then return '"' .. s .. '"' end
  local parts, n, i, len = {}, 0, 1, #s
  while i <= len do
    local c = byte(s, i)
    local piece, step = nil, 1
    if c >= 0x80 then
      if ensure_ascii then
        local cp, used = utf8_decode_at(s, i)
        step = used
        if cp >= 0x10000 then
          cp = cp - 0x10000
          piece = format("\\u%04x\\u%04x", 0xD800 + floor(cp / 1024), 0xDC00 + cp % 1024)
        else
          piece = format("\\u%04x", cp)
        end
      else
        piece = char(c)
      end
    else
      local ch = char(c)
      piece = JSON_ESC[ch]
      if not piece then
        if c < 0x20 or (c == 0x7F and ensure_ascii) then piece = format("\\u%04x", c) else piece = ch end
      end
    end
    n = n + 1; parts[n] = piece
    i = i + step
  end
  return '"' .. concat(parts) .. '"'
end

local function json_encode(v, o, level, out)
  local k = kind(v)
  if k == "string" then out[#out + 1] = json_string(v, o.ensure_ascii); return end
  if k == "number" then
    if v ~= v then out[#out + 1] = "NaN"
    elseif v == huge then out[#out + 1] = "Infinity"
    elseif v == -huge then out[#out + 1] = "-Infinity"
    else out[#out + 1] = num_str(v) end
    return
  end
  if v == true then out[#out + 1] = "true"; return end
  if v == false then out[#out + 1] = "false"; return end
  if k == "none" then out[#out + 1] = "null"; return end
  if level > 64 then fail("tojson: value nested too deeply (a cycle?)") end
  local is_list = k == "list"
  local keys
  if not is_list then
    if k ~= "dict" and k ~= "namespace" then
      fail("Object of type " .. pytype(v) .. " is not JSON serializable")
    end
    keys = dict_keys(v)
    if o.sort_keys then sort(keys, function(a, b) return tostring(a) < tostring(b) end) end
  end
  local count = is_list and #v or #keys
  if count == 0 then out[#out + 1] = is_list and "[]" or "{}"; return end
  out[#out + 1] = is_list and "[" or "{"
  local nl
  if o.indent then nl = "\n" .. rep(o.indent, level + 1) end
  for i = 1, count do
    if i > 1 then out[#out + 1] = o.item_sep end
    if nl then out[#out + 1] = nl end
    if is_list then
      json_encode(v[i], o, level + 1, out)
    else
      local key = keys[i]
      local ks
      if type(key) == "string" then ks = key
      elseif type(key) == "number" then ks = num_str(key)
      elseif key == true then ks = "true" elseif key == false then ks = "false"
      else fail("tojson: keys must be str, int, float or bool") end
      out[#out + 1] = json_string(ks, o.ensure_ascii)
      out[#out + 1] = o.key_sep
      json_encode(v[key], o, level + 1, out)
    end
  end
  if nl then out[#out + 1] = "\n" .. rep(o.indent, level) end
  out[#out + 1] = is_list and "]" or "}"
end

--- template.tojson(v, {indent=, ensure_ascii=, separators={item, key}, sort_keys=}) -> string
function M.tojson(v, opts)
  opts = opts or {}
  local indent = opts.indent
  if indent == NONE then indent = nil end
  if type(indent) == "number" then indent = rep(" ", indent) end
  local o = { indent = indent, ensure_ascii = truthy(opts.ensure_ascii), sort_keys = truthy(opts.sort_keys) }
  local seps = opts.separators
  if seps ~= nil and seps ~= NONE then
    o.item_sep, o.key_sep = seps[1], seps[2]
  elseif indent then
    o.item_sep, o.key_sep = ",", ": "
  else
    o.item_sep, o.key_sep = ", ", ": "
  end
  local out = {}
  json_encode(v, o, 0, out)
  return concat(out)
end

-- Lexer ----------------------------------------------------------------------------------

-- Longest operators first; brackets also track nesting, so `}}` inside a dict literal does not
-- end a `{{ }}` tag (Jinja's lexer keeps the same balance).
local OPS2 = { ["//"] = true, ["**"] = true, ["=="] = true, ["!="] = true, ["<="] = true, [">="] = true }
local OPS1 = { ["+"] = true, ["-"] = true, ["*"] = true, ["/"] = true, ["%"] = true, ["~"] = true,
  ["<"] = true, [">"] = true, ["="] = true, ["("] = true, [")"] = true, ["["] = true, ["]"] = true,
  ["{"] = true, ["}"] = true, [","] = true, ["."] = true, [":"] = true, ["|"] = true }
local OPEN = { ["("] = true, ["["] = true, ["{"] = true }
local CLOSE = { [")"] = true, ["]"] = true, ["}"] = true }

local ESCAPES = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"', b = "\b",
  f = "\f", v = "\v", a = "\a", ["\n"] = "" }

local function utf8_encode(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64,
    0x80 + cp % 64)
end

-- Python unicode-escape semantics: known escapes are decoded, unknown ones kept as written.
local function unescape(s)
  if not find(s, "\\", 1, true) then return s end
  local out, n, i, len = {}, 0, 1, #s
  while i <= len do
    local bs = find(s, "\\", i, true)
    if not bs then n = n + 1; out[n] = sub(s, i); break end
    n = n + 1; out[n] = sub(s, i, bs - 1)
    local c = sub(s, bs + 1, bs + 1)
    local e = ESCAPES[c]
    if e then
      n = n + 1; out[n] = e; i = bs + 2
    elseif c == "x" or c == "u" or c == "U" then
      local w = c == "x" and 2 or c == "u" and 4 or 8
      local hex = sub(s, bs + 2, bs + 1 + w)
      if #hex == w and hex:match("^%x+$") then
        n = n + 1; out[n] = utf8_encode(tonumber(hex, 16)); i = bs + 2 + w
      else
        n = n + 1; out[n] = "\\" .. c; i = bs + 2
      end
    elseif c:match("^[0-7]$") then
      local oct = s:match("^[0-7][0-7]?[0-7]?", bs + 1)
      n = n + 1; out[n] = utf8_encode(tonumber(oct, 8)); i = bs + 1 + #oct
    else
      n = n + 1; out[n] = "\\" .. c; i = bs + 2
    end
  end
  return concat(out)
end

-- Splits the template into tokens: data, tag delimiters and the expression tokens inside tags,
-- applying whitespace control the way HF configures Jinja (trim_blocks: a block or comment tag
-- eats the newline after it; lstrip_blocks: spaces and tabs before a block or comment tag on its
-- own line are dropped; `-` strips all whitespace on that side; `+` keeps it).
local function lex(src)
  local toks, nt = {}, 0
  local function push(t) nt = nt + 1; toks[nt] = t end
  local pos, len = 1, #src
  local line_starting = true -- the text that follows starts at the beginning of a line

  local function lex_error(msg, at) raise("syntax", msg, at) end

  -- After a tag's closing delimiter: `-` eats all following whitespace, a plain block/comment
  -- end eats one newline (trim_blocks), `+` and `}}` eat nothing.
  local function after_end(p, modifier, is_block)
    if modifier == "-" then
      local ws = match(src, "^%s*", p)
      line_starting = #ws > 0 and sub(ws, -1) == "\n"
      return p + #ws
    end
    if is_block and modifier ~= "+" and sub(src, p, p) == "\n" then
      line_starting = true
      return p + 1
    end
    line_starting = false
    return p
  end

  -- Text before a tag starting at `s`, with the tag's left-side whitespace control applied.
  local function emit_text(text, modifier, is_block)
    if modifier == "-" then
      text = rstrip_ws(text)
    elseif modifier ~= "+" and is_block then
      local l_pos = 0
      local from = 1
      while true do
        local nl = find(text, "\n", from, true)
        if not nl then break end
        l_pos, from = nl, nl + 1
      end
      if (l_pos > 0 or line_starting) and l_pos < #text and not find(text, "[^ \t\v\f\r]", l_pos + 1) then
        text = sub(text, 1, l_pos)
      end
    end
    if text ~= "" then push({ type = "data", value = text }) end
  end

  while pos <= len do
    local s = find(src, "{[{%%#]", pos)
    if not s then
      emit_text(sub(src, pos), nil, false)
      break
    end
    local kind_ch = sub(src, s + 1, s + 1)
    local modifier = sub(src, s + 2, s + 2)
    if modifier ~= "-" and modifier ~= "+" then modifier = nil end
    local text = sub(src, pos, s - 1)

    if kind_ch == "#" then
      emit_text(text, modifier, true)
      local body = s + 2 + (modifier and 1 or 0)
      local e = find(src, "#}", body, true)
      if not e then lex_error("unclosed comment", s) end
      local m = e > body and sub(src, e - 1, e - 1) or ""
      if m ~= "-" and m ~= "+" then m = nil end
      pos = after_end(e + 2, m, true)
    elseif kind_ch == "%" and find(src, "^{%%[-+]?%s*raw%s*[-+]?%%}", s) then
      emit_text(text, modifier, true)
      local _, hdr_end = find(src, "^{%%[-+]?%s*raw%s*[-+]?%%}", s)
      local p = hdr_end + 1
      if sub(src, hdr_end - 2, hdr_end - 2) == "-" then p = p + #match(src, "^%s*", p) end
      local es, ee = find(src, "{%%[-+]?%s*endraw%s*[-+]?%%}", p)
      if not es then lex_error("unclosed raw block", s) end
      local emod = sub(src, es + 2, es + 2)
      if emod ~= "-" and emod ~= "+" then emod = nil end
      line_starting = false
      emit_text(sub(src, p, es - 1), emod, true)
      local m = sub(src, ee - 2, ee - 2)
      if m ~= "-" and m ~= "+" then m = nil end
      pos = after_end(ee + 1, m, true)
    else
      local is_block = kind_ch == "%"
      emit_text(text, modifier, is_block)
      push({ type = is_block and "block_begin" or "var_begin", pos = s })
      local p = s + 2 + (modifier and 1 or 0)
      local depth = 0
      local closer = is_block and "%}" or "}}"
      while true do
        p = p + #match(src, "^%s*", p)
        if p > len then lex_error("unclosed '" .. sub(src, s, s + 1) .. "' tag", s) end
        local c = sub(src, p, p)
        if depth == 0 then
          local m
          if sub(src, p, p + 1) == closer then
            m = ""
          elseif (c == "-" or (c == "+" and is_block)) and sub(src, p + 1, p + 2) == closer then
            m = c
          end
          if m then
            push({ type = is_block and "block_end" or "var_end", pos = p })
            pos = after_end(p + 2 + #m, m ~= "" and m or nil, is_block)
            break
          end
        end
        local tok
        if find(c, "^[%a_]") then
          local name = match(src, "^[%w_]+", p)
          tok = { type = "name", value = name, pos = p }
          p = p + #name
        elseif find(c, "^%d") then
          local num = match(src, "^%d[%d_]*", p)
          local q = p + #num
          local is_float = false
          local frac = match(src, "^%.%d[%d_]*", q)
          if frac then num, q, is_float = num .. frac, q + #frac, true end
          local ex = match(src, "^[eE][-+]?%d[%d_]*", q)
          if ex then num, q, is_float = num .. ex, q + #ex, true end
          tok = { type = "number", value = tonumber((gsub(num, "_", ""))), float = is_float, pos = p }
          p = q
        elseif c == "'" or c == '"' then
          local q = p + 1
          while true do
            local e = find(src, "[\\" .. c .. "]", q)
            if not e then lex_error("unterminated string", p) end
            if sub(src, e, e) == "\\" then q = e + 2 else q = e; break end
          end
          tok = { type = "string", value = unescape(sub(src, p + 1, q - 1)), pos = p }
          p = q + 1
        else
          local two = sub(src, p, p + 1)
          local op
          if OPS2[two] then op = two elseif OPS1[c] then op = c end
          if not op then lex_error("unexpected character '" .. c .. "'", p) end
          if OPEN[op] then depth = depth + 1 elseif CLOSE[op] then depth = depth - 1 end
          tok = { type = "op", value = op, pos = p }
          p = p + #op
        end
        push(tok)
      end
    end
  end
  push({ type = "eof", pos = len + 1 })
  return toks
end

-- Parser ---------------------------------------------------------------------------------

-- Tags Jinja has that chat templates do not need; reported by name so a caller can say which.
local KNOWN_UNSUPPORTED_TAGS = { include = true, import = true, from = true, extends = true,
  block = true, call = true, ["do"] = true, trans = true, autoescape = true, pluralize = true }
local CONST_NAMES = { ["true"] = true, ["True"] = true, ["false"] = false, ["False"] = false,
  ["none"] = NONE, ["None"] = NONE }

local Parser = {}
Parser.__index = Parser

function Parser:peek(k) return self.toks[self.i + (k or 0)] end
function Parser:advance() local t = self.toks[self.i]; self.i = self.i + 1; return t end
function Parser:is_op(v, k) local t = self.toks[self.i + (k or 0)]; return t.type == "op" and t.value == v end
function Parser:is_name(v, k) local t = self.toks[self.i + (k or 0)]; return t.type == "name" and t.value == v end

local function describe_tok(t)
  if t.type == "eof" then return "end of template" end
  if t.type == "block_end" then return "end of statement '%}'" end
  if t.type == "var_end" then return "end of expression '}}'" end
  if t.type == "string" then return "string " .. py_repr(t.value) end
  if t.value ~= nil then return "'" .. tostring(t.value) .. "'" end
  return t.type
end

function Parser:error(msg, t)
  t = t or self:peek()
  raise("syntax", msg, t.pos)
end

function Parser:unsupported(msg, t, construct)
  t = t or self:peek()
  error(setmetatable({ kind = "unsupported", msg = msg, pos = t.pos, construct = construct }, ERR_MT), 0)
end

function Parser:expect_op(v)
  local t = self:peek()
  if t.type ~= "op" or t.value ~= v then self:error("expected '" .. v .. "', got " .. describe_tok(t)) end
  return self:advance()
end

function Parser:expect_name(v)
  local t = self:peek()
  if t.type ~= "name" or (v and t.value ~= v) then
    self:error("expected " .. (v and ("'" .. v .. "'") or "a name") .. ", got " .. describe_tok(t))
  end
  return self:advance()
end

function Parser:expect_block_end(what)
  local t = self:peek()
  if t.type ~= "block_end" then
    self:error("expected end of '" .. what .. "' tag, got " .. describe_tok(t))
  end
  self:advance()
end

-- Expressions, in Jinja's precedence order (lowest first).

function Parser:parse_expression(no_condexpr)
  if no_condexpr then return self:parse_or() end
  local t = self:peek()
  local expr = self:parse_or()
  while self:is_name("if") do
    self:advance()
    local cond = self:parse_or()
    local other
    if self:is_name("else") then
      self:advance()
      other = self:parse_expression()
    end
    expr = { t = "condexpr", cond = cond, a = expr, b = other, pos = t.pos }
  end
  return expr
end

function Parser:parse_or()
  local left = self:parse_and()
  while self:is_name("or") do
    local t = self:advance()
    left = { t = "or", l = left, r = self:parse_and(), pos = t.pos }
  end
  return left
end

function Parser:parse_and()
  local left = self:parse_not()
  while self:is_name("and") do
    local t = self:advance()
    left = { t = "and", l = left, r = self:parse_not(), pos = t.pos }
  end
  return left
end

function Parser:parse_not()
  if self:is_name("not") then
    local t = self:advance()
    return { t = "not", e = self:parse_not(), pos = t.pos }
  end
  return self:parse_compare()
end

local CMP = { ["=="] = true, ["!="] = true, ["<"] = true, ["<="] = true, [">"] = true, [">="] = true }

function Parser:parse_compare()
  local first = self:parse_math1()
  local ops
  while true do
    local t = self:peek()
    local op
    if t.type == "op" and CMP[t.value] then
      op = t.value; self:advance()
    elseif self:is_name("in") then
      op = "in"; self:advance()
    elseif self:is_name("not") and self:is_name("in", 1) then
      op = "notin"; self:advance(); self:advance()
    else
      break
    end
    ops = ops or {}
    ops[#ops + 1] = { op = op, e = self:parse_math1(), pos = t.pos }
  end
  if not ops then return first end
  return { t = "compare", first = first, ops = ops, pos = first.pos }
end

function Parser:parse_math1()
  local left = self:parse_concat()
  while self:is_op("+") or self:is_op("-") do
    local t = self:advance()
    left = { t = "binop", op = t.value, l = left, r = self:parse_concat(), pos = t.pos }
  end
  return left
end

function Parser:parse_concat()
  local first = self:parse_math2()
  if not self:is_op("~") then return first end
  local items = { first }
  local pos = self:peek().pos
  while self:is_op("~") do
    self:advance()
    items[#items + 1] = self:parse_math2()
  end
  return { t = "concat", items = items, pos = pos }
end

function Parser:parse_math2()
  local left = self:parse_pow()
  while self:is_op("*") or self:is_op("/") or self:is_op("//") or self:is_op("%") do
    local t = self:advance()
    left = { t = "binop", op = t.value, l = left, r = self:parse_pow(), pos = t.pos }
  end
  return left
end

function Parser:parse_pow()
  local left = self:parse_unary()
  while self:is_op("**") do
    local t = self:advance()
    left = { t = "binop", op = "**", l = left, r = self:parse_unary(), pos = t.pos }
  end
  return left
end

function Parser:parse_unary(no_filter)
  local t = self:peek()
  local node
  if self:is_op("-") then
    self:advance()
    node = { t = "neg", e = self:parse_unary(true), pos = t.pos }
  elseif self:is_op("+") then
    self:advance()
    node = { t = "pos", e = self:parse_unary(true), pos = t.pos }
  else
    node = self:parse_primary()
  end
  node = self:parse_postfix(node)
  if not no_filter then node = self:parse_filter_expr(node) end
  return node
end

function Parser:parse_primary()
  local t = self:peek()
  if t.type == "name" then
    self:advance()
    local c = CONST_NAMES[t.value]
    if c ~= nil then return { t = "const", v = c, pos = t.pos } end
    return { t = "name", name = t.value, pos = t.pos }
  elseif t.type == "string" then
    self:advance()
    local s = t.value
    -- Adjacent literals concatenate, as in Python.
    while self:peek().type == "string" do s = s .. self:advance().value end
    return { t = "const", v = s, pos = t.pos }
  elseif t.type == "number" then
    self:advance()
    return { t = "const", v = t.value, pos = t.pos }
  elseif self:is_op("(") then
    self:advance()
    if self:is_op(")") then
      self:advance()
      return { t = "list", items = {}, pos = t.pos, tuple = true }
    end
    local e = self:parse_tuple(false, true)
    self:expect_op(")")
    return e
  elseif self:is_op("[") then
    self:advance()
    local items = {}
    while not self:is_op("]") do
      if #items > 0 then
        self:expect_op(",")
        if self:is_op("]") then break end
      end
      items[#items + 1] = self:parse_expression()
    end
    self:expect_op("]")
    return { t = "list", items = items, pos = t.pos }
  elseif self:is_op("{") then
    self:advance()
    local keys, values = {}, {}
    while not self:is_op("}") do
      if #keys > 0 then
        self:expect_op(",")
        if self:is_op("}") then break end
      end
      keys[#keys + 1] = self:parse_expression()
      self:expect_op(":")
      values[#values + 1] = self:parse_expression()
    end
    self:expect_op("}")
    return { t = "dict", keys = keys, values = values, pos = t.pos }
  end
  self:error("unexpected " .. describe_tok(t))
end

-- A comma-separated expression list: a tuple when it has a comma (bare `a, b` in set and
-- output statements, or `(a, b)`), else the single expression.
local TUPLE_END = { block_end = true, var_end = true, eof = true }
function Parser:parse_tuple(no_condexpr, in_parens, stop_names)
  local items = {}
  local pos = self:peek().pos
  local is_tuple = false
  while true do
    if #items > 0 then
      if not self:is_op(",") then break end
      self:advance()
      is_tuple = true
      local t = self:peek()
      if TUPLE_END[t.type] or (t.type == "op" and CLOSE[t.value])
        or (stop_names and t.type == "name" and stop_names[t.value]) then
        break
      end
    end
    items[#items + 1] = self:parse_expression(no_condexpr)
  end
  if not is_tuple then return items[1] end
  return { t = "list", items = items, pos = pos, tuple = true }
end

function Parser:parse_postfix(node)
  while true do
    local t = self:peek()
    if self:is_op(".") then
      self:advance()
      local a = self:advance()
      if a.type == "name" then
        node = { t = "getattr", obj = node, name = a.value, pos = a.pos }
      elseif a.type == "number" and not a.float then
        node = { t = "getitem", obj = node, key = { t = "const", v = a.value, pos = a.pos }, pos = a.pos }
      else
        self:error("expected an attribute name after '.', got " .. describe_tok(a), a)
      end
    elseif self:is_op("[") then
      self:advance()
      node = self:parse_subscript(node, t)
      self:expect_op("]")
    elseif self:is_op("(") then
      node = self:parse_call(node)
    else
      return node
    end
  end
end

function Parser:parse_subscript(obj, t)
  local start, stop, step
  if not self:is_op(":") then
    start = self:parse_expression()
    if not self:is_op(":") then
      if self:is_op(",") then
        self:unsupported("tuple subscripts are not supported", self:peek(), "tuple subscript")
      end
      return { t = "getitem", obj = obj, key = start, pos = t.pos }
    end
  end
  self:expect_op(":")
  if not self:is_op("]") and not self:is_op(":") then stop = self:parse_expression() end
  if self:is_op(":") then
    self:advance()
    if not self:is_op("]") then step = self:parse_expression() end
  end
  return { t = "slice", obj = obj, start = start, stop = stop, step = step, pos = t.pos }
end

function Parser:parse_call_args()
  self:expect_op("(")
  local args, kwargs, kwnames = {}, nil, nil
  while not self:is_op(")") do
    if #args > 0 or kwargs then
      self:expect_op(",")
      if self:is_op(")") then break end
    end
    if self:is_op("*") or self:is_op("**") then
      self:unsupported("*args/**kwargs in calls are not supported", self:peek(), "*args")
    end
    if self:peek().type == "name" and self:is_op("=", 1) then
      local name = self:advance().value
      self:advance()
      kwargs = kwargs or {}
      kwnames = kwnames or {}
      kwnames[#kwnames + 1] = name
      kwargs[#kwnames] = self:parse_expression()
    else
      if kwargs then self:error("positional argument follows keyword argument") end
      args[#args + 1] = self:parse_expression()
    end
  end
  self:expect_op(")")
  return args, kwnames, kwargs
end

function Parser:parse_call(fn)
  local t = self:peek()
  local args, kwnames, kwvalues = self:parse_call_args()
  -- Errors in a call point at what is called, not at its parenthesis.
  return { t = "call", fn = fn, args = args, kwnames = kwnames, kwvalues = kwvalues, pos = fn.pos or t.pos }
end

function Parser:parse_filter_expr(node)
  while true do
    if self:is_op("|") then
      self:advance()
      node = self:parse_filter(node)
    elseif self:is_name("is") then
      node = self:parse_test(node)
    elseif self:is_op("(") then
      node = self:parse_call(node)
    else
      return node
    end
  end
end

function Parser:parse_filter(node)
  local t = self:expect_name()
  local args, kwnames, kwvalues = {}, nil, nil
  if self:is_op("(") then args, kwnames, kwvalues = self:parse_call_args() end
  return { t = "filter", e = node, name = t.value, args = args, kwnames = kwnames, kwvalues = kwvalues, pos = t.pos }
end

local TEST_ARG_START = { name = true, string = true, number = true }
function Parser:parse_test(node)
  local is_tok = self:advance()
  local negate = false
  if self:is_name("not") then self:advance(); negate = true end
  local t = self:expect_name()
  local args, kwnames, kwvalues = {}, nil, nil
  local nx = self:peek()
  if self:is_op("(") then
    args, kwnames, kwvalues = self:parse_call_args()
  elseif (TEST_ARG_START[nx.type] or self:is_op("[") or self:is_op("{"))
    and not (nx.type == "name" and (nx.value == "else" or nx.value == "or" or nx.value == "and")) then
    -- `x is divisibleby 3`, `x is sameas false`: one bare argument.
    if nx.type == "name" and nx.value == "is" then self:error("cannot chain tests with 'is'") end
    args = { self:parse_postfix(self:parse_primary()) }
  end
  return { t = "test", e = node, name = t.value, args = args, kwnames = kwnames, kwvalues = kwvalues,
    negate = negate, pos = is_tok.pos }
end

-- Statements.

function Parser:parse_body(end_tags, opener)
  local body = {}
  while true do
    local t = self:peek()
    if t.type == "data" then
      self:advance()
      body[#body + 1] = { t = "text", v = t.value }
    elseif t.type == "var_begin" then
      self:advance()
      local e = self:parse_tuple()
      local et = self:peek()
      if et.type ~= "var_end" then self:error("expected '}}', got " .. describe_tok(et)) end
      self:advance()
      body[#body + 1] = { t = "output", e = e, pos = t.pos }
    elseif t.type == "block_begin" then
      local nt = self:peek(1)
      if nt.type ~= "name" then self:error("expected a statement name after '{%'", nt) end
      if end_tags and end_tags[nt.value] then
        self:advance(); self:advance()
        return body, nt.value, nt
      end
      self:advance(); self:advance()
      local stmt = self["stmt_" .. nt.value]
      if not stmt then
        if KNOWN_UNSUPPORTED_TAGS[nt.value] then
          self:unsupported("unsupported tag '" .. nt.value .. "'", nt, "tag '" .. nt.value .. "'")
        end
        if nt.value:match("^end") or nt.value == "else" or nt.value == "elif" then
          self:error("unexpected '" .. nt.value .. "'", nt)
        end
        self:unsupported("unknown tag '" .. nt.value .. "'", nt, "tag '" .. nt.value .. "'")
      end
      body[#body + 1] = stmt(self, nt)
    elseif t.type == "eof" then
      if end_tags then
        self:error("unclosed '" .. opener.value .. "' tag (missing end tag)", opener)
      end
      return body
    else
      self:error("unexpected " .. describe_tok(t))
    end
  end
end

function Parser:stmt_if(tag)
  local node = { t = "if", branches = {}, pos = tag.pos }
  local cond = self:parse_tuple()
  self:expect_block_end("if")
  local ends = { elif = true, ["else"] = true, endif = true }
  while true do
    local body, which = self:parse_body(ends, tag)
    node.branches[#node.branches + 1] = { cond = cond, body = body }
    if which == "elif" then
      cond = self:parse_tuple()
      self:expect_block_end("elif")
    elseif which == "else" then
      self:expect_block_end("else")
      node.else_body = self:parse_body({ endif = true }, tag)
      self:expect_block_end("endif")
      return node
    else
      self:expect_block_end("endif")
      return node
    end
  end
end

function Parser:parse_target()
  local names = {}
  local paren = self:is_op("(")
  if paren then self:advance() end
  repeat
    if #names > 0 then self:advance() end
    if paren and self:is_op(")") then break end
    names[#names + 1] = self:expect_name().value
  until not self:is_op(",")
  if paren then self:expect_op(")") end
  return names
end

function Parser:stmt_for(tag)
  local targets = self:parse_target()
  self:expect_name("in")
  local iter = self:parse_tuple(true, false, { ["if"] = true, recursive = true })
  local filter
  if self:is_name("if") then
    self:advance()
    filter = self:parse_expression()
  end
  if self:is_name("recursive") then
    self:unsupported("recursive loops are not supported", self:peek(), "recursive loop")
  end
  self:expect_block_end("for")
  self.loop_depth = self.loop_depth + 1
  local body, which = self:parse_body({ ["else"] = true, endfor = true }, tag)
  self.loop_depth = self.loop_depth - 1
  local else_body
  if which == "else" then
    self:expect_block_end("else")
    else_body = self:parse_body({ endfor = true }, tag)
  end
  self:expect_block_end("endfor")
  return { t = "for", targets = targets, iter = iter, filter = filter, body = body,
    else_body = else_body, pos = tag.pos }
end

function Parser:stmt_set(tag)
  local first = self:expect_name()
  local node = { t = "set", pos = tag.pos }
  if self:is_op(".") then
    self:advance()
    node.ns, node.attr = first.value, self:expect_name().value
  else
    node.names = { first.value }
    while self:is_op(",") do
      self:advance()
      node.names[#node.names + 1] = self:expect_name().value
    end
  end
  if self:is_op("=") then
    self:advance()
    node.e = self:parse_tuple()
    self:expect_block_end("set")
    return node
  end
  -- Block set: {% set x %}...{% endset %}, optionally through filters.
  if node.ns or #node.names > 1 then self:error("block set takes a single name", tag) end
  local filters = {}
  while self:is_op("|") do
    self:advance()
    filters[#filters + 1] = self:parse_filter(nil)
  end
  self:expect_block_end("set")
  node.body = self:parse_body({ endset = true }, tag)
  node.filters = filters
  self:expect_block_end("endset")
  return node
end

function Parser:stmt_macro(tag)
  local name = self:expect_name().value
  self:expect_op("(")
  local params, defaults = {}, {}
  while not self:is_op(")") do
    if #params > 0 then
      self:expect_op(",")
      if self:is_op(")") then break end
    end
    params[#params + 1] = self:expect_name().value
    if self:is_op("=") then
      self:advance()
      defaults[#params] = self:parse_expression()
    end
  end
  self:expect_op(")")
  self:expect_block_end("macro")
  local depth = self.loop_depth
  self.loop_depth = 0
  local body = self:parse_body({ endmacro = true }, tag)
  self.loop_depth = depth
  self:expect_block_end("endmacro")
  return { t = "macro", name = name, params = params, defaults = defaults, body = body, pos = tag.pos }
end

function Parser:stmt_break(tag)
  if self.loop_depth == 0 then self:error("'break' outside a loop", tag) end
  self:expect_block_end("break")
  return { t = "break", pos = tag.pos }
end

function Parser:stmt_continue(tag)
  if self.loop_depth == 0 then self:error("'continue' outside a loop", tag) end
  self:expect_block_end("continue")
  return { t = "continue", pos = tag.pos }
end

function Parser:stmt_filter(tag)
  local filters = {}
  repeat
    if #filters > 0 then self:advance() end
    filters[#filters + 1] = self:parse_filter(nil)
  until not self:is_op("|")
  self:expect_block_end("filter")
  local body = self:parse_body({ endfilter = true }, tag)
  self:expect_block_end("endfilter")
  return { t = "filterblock", filters = filters, body = body, pos = tag.pos }
end

function Parser:stmt_with(tag)
  local names, values = {}, {}
  while not (self:peek().type == "block_end") do
    if #names > 0 then self:expect_op(",") end
    names[#names + 1] = self:expect_name().value
    self:expect_op("=")
    values[#values + 1] = self:parse_expression()
  end
  self:expect_block_end("with")
  local body = self:parse_body({ endwith = true }, tag)
  self:expect_block_end("endwith")
  return { t = "with", names = names, values = values, body = body, pos = tag.pos }
end

-- HF's AssistantTracker extension marks assistant text for training masks; rendering just
-- emits the body.
function Parser:stmt_generation(tag)
  self:expect_block_end("generation")
  local body = self:parse_body({ endgeneration = true }, tag)
  self:expect_block_end("endgeneration")
  return { t = "with", names = {}, values = {}, body = body, pos = tag.pos }
end

-- Runtime operations ---------------------------------------------------------------------

local function describe(n)
  if not n then return "value" end
  if n.t == "name" then return n.name end
  if n.t == "getattr" then return describe(n.obj) .. "." .. n.name end
  if n.t == "getitem" and n.key.t == "const" then return describe(n.obj) .. "[" .. py_repr(n.key.v) .. "]" end
  if n.t == "call" then return describe(n.fn) .. "(...)" end
  return "value"
end

-- Python's slice.indices(): clamps start/stop for a sequence of length n; returns 1-based
-- start and inclusive bounds to iterate with step.
local function slice_range(n, start, stop, step)
  if step == 0 then fail("slice step cannot be zero") end
  if step > 0 then
    start = start == nil and 0 or (start < 0 and math.max(start + n, 0) or math.min(start, n))
    stop = stop == nil and n or (stop < 0 and math.max(stop + n, 0) or math.min(stop, n))
  else
    start = start == nil and n - 1 or (start < 0 and math.max(start + n, -1) or math.min(start, n - 1))
    stop = stop == nil and -1 or (stop < 0 and math.max(stop + n, -1) or math.min(stop, n - 1))
  end
  return start, stop, step
end

local function do_slice(v, start, stop, step)
  if R.marks then
    local text, had = unmark(v)
    if had then return remark(do_slice(text, start, stop, step)) end
  end
  local k = kind(v)
  local items, n
  if k == "list" then items, n = v, #v
  elseif k == "string" then
    if is_ascii(v) and (step == nil or step == 1) then
      local a, b = slice_range(#v, start, stop, 1)
      if b <= a then return "" end
      return sub(v, a + 1, b)
    end
    items, n = utf8_chars(v)
  elseif k == "undefined" then fail("cannot slice an undefined value")
  else fail("'" .. pytype(v) .. "' object is not subscriptable") end
  local a, b, s = slice_range(n, start, stop, step or 1)
  local out, m = {}, 0
  if s > 0 then
    for i = a, b - 1, s do m = m + 1; out[m] = items[i + 1] end
  else
    for i = a, b + 1, s do m = m + 1; out[m] = items[i + 1] end
  end
  if k == "string" then return concat(out) end
  return new_list(out)
end

local function loop_get(l, key)
  local v = rawget(l, key)
  if v == nil then return UNDEF end
  return v
end

local function getattr(o, key, n)
  local t = type(o)
  if t == "table" then
    if o == UNDEF then fail("'" .. describe(n and n.obj) .. "' is undefined", n) end
    local mt = getmetatable(o)
    if mt == LOOP_MT then return loop_get(o, key) end
    local v = rawget(o, key)
    if v == nil then
      if mt ~= nil and mt ~= NS_MT and mt ~= MACRO_MT and mt ~= BUILTIN_MT then v = o[key] end
      if v == nil then return UNDEF end
    end
    return v
  end
  if o == nil then fail("'" .. describe(n and n.obj) .. "' is undefined", n) end
  return UNDEF
end

local function getitem(o, key, n)
  local t = type(o)
  if t == "table" then
    if o == UNDEF then fail("'" .. describe(n and n.obj) .. "' is undefined", n) end
    local k = kind(o)
    if k == "list" then
      if type(key) == "number" then
        if key ~= floor(key) then fail("list indices must be integers, not float", n) end
        if key < 0 then key = key + #o end
        local v = o[key + 1]
        if v == nil then return UNDEF end
        return v
      end
      if type(key) == "boolean" then return getitem(o, key and 1 or 0, n) end
      return UNDEF
    end
    if k == "loop" then return loop_get(o, key) end
    local v = o[key]
    if v == nil then return UNDEF end
    return v
  elseif t == "string" then
    if type(key) ~= "number" then return UNDEF end
    if R.marks then
      local text, had = unmark(o)
      if had then return remark(getitem(text, key, n)) end
    end
    local chars, len = o, #o
    if not is_ascii(o) then chars, len = utf8_chars(o) end
    if key < 0 then key = key + len end
    if key < 0 or key >= len then return UNDEF end
    if type(chars) == "string" then return sub(o, key + 1, key + 1) end
    return chars[key + 1]
  end
  if o == nil then fail("'" .. describe(n and n.obj) .. "' is undefined", n) end
  return UNDEF
end

-- Python ==: deep for lists and dicts, True == 1.
local function eq(a, b)
  if a == b then return true end
  if R.marks then
    local ua, ha = unmark(a)
    local ub, hb = unmark(b)
    if ha or hb then return ua == ub end
  end
  local ta, tb = type(a), type(b)
  if ta == "table" and tb == "table" then
    local ka, kb = kind(a), kind(b)
    if ka ~= kb then return false end
    if ka == "list" then
      local n = #a
      if n ~= #b then return false end
      for i = 1, n do if not eq(a[i], b[i]) then return false end end
      return true
    elseif ka == "dict" then
      for k, v in pairs(a) do if not eq(v, b[k]) then return false end end
      for k in pairs(b) do if a[k] == nil then return false end end
      return true
    end
    return false
  end
  if ta == "boolean" and tb == "number" then return (a and 1 or 0) == b end
  if tb == "boolean" and ta == "number" then return (b and 1 or 0) == a end
  return false
end

local function lt(a, b, n, op)
  if R.marks then a, b = unmark(a), (unmark(b)) end
  local ta, tb = type(a), type(b)
  if (ta == "number" and tb == "number") or (ta == "string" and tb == "string") then return a < b end
  if ta == "boolean" then a, ta = (a and 1 or 0), "number" end
  if tb == "boolean" then b, tb = (b and 1 or 0), "number" end
  if ta == "number" and tb == "number" then return a < b end
  local ka, kb = kind(a), kind(b)
  if ka == "list" and kb == "list" then
    for i = 1, math.min(#a, #b) do
      if not eq(a[i], b[i]) then return lt(a[i], b[i], n, op) end
    end
    return #a < #b
  end
  fail("'" .. (op or "<") .. "' not supported between instances of '" .. pytype(a) .. "' and '"
    .. pytype(b) .. "'", n)
end

local function contains(container, item, n)
  if R.marks then container, item = unmark(container), (unmark(item)) end
  local k = kind(container)
  if k == "string" then
    if type(item) ~= "string" then
      fail("'in <string>' requires string as left operand, not " .. pytype(item), n)
    end
    return find(container, item, 1, true) ~= nil
  elseif k == "list" then
    for i = 1, #container do if eq(container[i], item) then return true end end
    return false
  elseif k == "dict" or k == "namespace" then
    if item == nil or item == UNDEF then return false end
    return rawget(container, item) ~= nil
  elseif k == "undefined" then
    return false
  end
  fail("argument of type '" .. pytype(container) .. "' is not iterable", n)
end

-- Items of an iterable as an array (for loops, filters): dicts give their keys, strings their
-- characters, Undefined nothing.
local function iter_items(v, n)
  local k = kind(v)
  if k == "list" then return v, #v end
  if k == "dict" or k == "namespace" then
    local ks = dict_keys(v)
    return ks, #ks
  end
  if k == "string" then
    local text, had = unmark(v)
    local chars, count = utf8_chars(text)
    if had then remark(new_list(chars)) end
    return chars, count
  end
  if k == "undefined" then return {}, 0 end
  fail("'" .. pytype(v) .. "' object is not iterable", n)
end

local function dict_items(d)
  local out = {}
  if kind(d) == "undefined" then return new_list(out) end
  for i, key in ipairs(dict_keys(d)) do out[i] = new_tuple({ key, d[key] }) end
  return new_list(out)
end

local function arith_error(op, a, b, n)
  if type(a) == "table" and a == UNDEF or a == nil then fail("'" .. describe(n.l) .. "' is undefined", n) end
  if type(b) == "table" and b == UNDEF or b == nil then fail("'" .. describe(n.r) .. "' is undefined", n) end
  if op == "+" and type(a) == "string" then
    fail('can only concatenate str (not "' .. pytype(b) .. '") to str', n)
  end
  fail("unsupported operand type(s) for " .. op .. ": '" .. pytype(a) .. "' and '" .. pytype(b) .. "'", n)
end

local function num_of(v)
  if type(v) == "number" then return v end
  if v == true then return 1 end
  if v == false then return 0 end
  return nil
end

-- printf-style `"%s" % x` and the format filter: %s %r %d %i %f %e %g %x %o %c, flags, width,
-- precision, and %(name)s with a dict.
local function percent_format(fmt, args, n)
  local list = tuples[args] and args or { args }
  local out, i, used = {}, 1, 0
  local len = #fmt
  while i <= len do
    local p = find(fmt, "%", i, true)
    if not p then out[#out + 1] = sub(fmt, i); break end
    out[#out + 1] = sub(fmt, i, p - 1)
    local q = p + 1
    local key
    if sub(fmt, q, q) == "(" then
      local close = find(fmt, ")", q, true)
      if not close then fail("incomplete format key", n) end
      key = sub(fmt, q + 1, close - 1)
      q = close + 1
    end
    local spec = match(fmt, "^[-+ #0]*%d*%.?%d*", q)
    q = q + #spec
    local conv = sub(fmt, q, q)
    if conv == "%" then
      out[#out + 1] = "%"
    else
      local v
      if key then
        v = getitem(args, key, n)
      else
        used = used + 1
        v = list[used]
      end
      if v == nil then fail("not enough arguments for format string", n) end
      if conv == "s" then out[#out + 1] = format("%" .. spec .. "s", tostr(v))
      elseif conv == "r" then out[#out + 1] = format("%" .. spec .. "s", py_repr(v))
      elseif conv == "c" then out[#out + 1] = type(v) == "number" and utf8_encode(v) or tostr(v)
      elseif find(conv, "^[dioxXeEfFgG]$") then
        local x = num_of(v)
        if not x then fail("%" .. conv .. " format: a real number is required, not " .. pytype(v), n) end
        if find(conv, "^[dixXo]$") then
          out[#out + 1] = format("%" .. spec .. (conv == "i" and "d" or conv), x < 0 and -floor(-x) or floor(x))
        else
          out[#out + 1] = format("%" .. spec .. conv, x)
        end
      else
        fail("unsupported format character '" .. conv .. "'", n)
      end
    end
    i = q + 1
  end
  -- Python only complains about leftovers for a tuple or a scalar (a list or dict argument
  -- counts as a mapping there).
  if used < #list and (tuples[args] or type(args) ~= "table") then
    fail("not all arguments converted during string formatting", n)
  end
  return concat(out)
end

-- Filters, tests, methods, globals -------------------------------------------------------

-- Positional-or-keyword argument lookup for builtins.
local function arg(a, kw, i, name, default)
  local v = a[i]
  if v == nil and kw then v = kw[name] end
  if v == nil then return default end
  return v
end

local function expect_string(v, what)
  if type(v) ~= "string" then fail(what .. " expects a string, got " .. pytype(v)) end
  return v
end


local function py_strip(s, chars, left, right)
  if chars == nil or chars == NONE then
    if left then s = lstrip_ws(s) end
    if right then s = rstrip_ws(s) end
    return s
  end
  chars = expect_string(chars, "strip")
  if chars == "" then return s end
  local set = {}
  for _, c in ipairs((utf8_chars(chars))) do set[c] = true end
  local cs, n = utf8_chars(s)
  local a, b = 1, n
  if left then while a <= b and set[cs[a]] do a = a + 1 end end
  if right then while b >= a and set[cs[b]] do b = b - 1 end end
  return concat(cs, "", a, b)
end

local function py_split(s, sep, maxsplit)
  maxsplit = maxsplit or -1
  local out = {}
  if sep == nil or sep == NONE then
    local count = 0
    local i = 1
    while true do
      local a, b = find(s, "[^%s\28-\31]+", i)
      if not a then break end
      if maxsplit >= 0 and count >= maxsplit then
        out[#out + 1] = rstrip_ws(sub(s, a))
        break
      end
      out[#out + 1] = sub(s, a, b)
      count = count + 1
      i = b + 1
    end
    return new_list(out)
  end
  sep = expect_string(sep, "split")
  if sep == "" then fail("empty separator") end
  local i, count = 1, 0
  while true do
    if maxsplit >= 0 and count >= maxsplit then break end
    local a, b = find(s, sep, i, true)
    if not a then break end
    out[#out + 1] = sub(s, i, a - 1)
    i = b + 1
    count = count + 1
  end
  out[#out + 1] = sub(s, i)
  return new_list(out)
end

local function py_replace(s, old, new, count)
  old, new = expect_string(old, "replace"), tostr(new)
  count = (count == nil or count == NONE) and -1 or count
  if old == "" then
    local cs, n = utf8_chars(s)
    local out = { new }
    for i = 1, n do
      out[#out + 1] = cs[i]
      if count < 0 or i < count then out[#out + 1] = new end
    end
    return concat(out)
  end
  local out, i, done = {}, 1, 0
  while count < 0 or done < count do
    local a, b = find(s, old, i, true)
    if not a then break end
    out[#out + 1] = sub(s, i, a - 1)
    out[#out + 1] = new
    i = b + 1
    done = done + 1
  end
  out[#out + 1] = sub(s, i)
  return concat(out)
end

local function capitalize(s)
  return upper(sub(s, 1, 1)) .. lower(sub(s, 2))
end

-- Python str.title(): a letter after a non-letter starts a word.
local function py_title(s)
  return (gsub(lower(s), "()(%a)", function(p, c)
    local prev = p > 1 and sub(s, p - 1, p - 1) or ""
    if prev:match("%a") then return c end
    return upper(c)
  end))
end

-- Jinja's title filter: words start after whitespace, '-', or an opening bracket.
local function jinja_title(s)
  local out = {}
  for sep, word in s:gmatch("([-%s%(%[{<]*)([^-%s%(%[{<]*)") do
    out[#out + 1] = sep
    if word ~= "" then out[#out + 1] = upper(sub(word, 1, 1)) .. lower(sub(word, 2)) end
  end
  return concat(out)
end

local function py_count(s, subs)
  if subs == "" then return ulen(s) + 1 end
  local c, i = 0, 1
  while true do
    local a, b = find(s, subs, i, true)
    if not a then return c end
    c, i = c + 1, b + 1
  end
end

local function starts_or_ends(s, x, at_end, what)
  local list = kind(x) == "list" and x or { x }
  for _, p in ipairs(list) do
    p = expect_string(p, what)
    if at_end then
      if p == "" or sub(s, -#p) == p then return true end
    elseif sub(s, 1, #p) == p then
      return true
    end
  end
  return false
end

-- str.format with {} / {0} / {name} fields; format specs beyond that are not supported.
local function py_str_format(s, a, kw)
  local auto = 0
  local out = gsub(s, "(%b{})", function(field)
    if field == "{}" then auto = auto + 1; return tostr(a[auto]) end
    local inner = sub(field, 2, -2)
    if sub(inner, 1, 1) == "{" then return field end
    local name, spec = match(inner, "^([^:!]*)[:!]?(.*)$")
    if spec ~= "" then unsupported("str.format spec '" .. spec .. "' is not supported") end
    local v
    if name == "" then auto = auto + 1; v = a[auto]
    elseif tonumber(name) then v = a[tonumber(name) + 1]
    else v = kw and kw[name] end
    if v == nil then fail("str.format: missing argument '" .. name .. "'") end
    return tostr(v)
  end)
  return (gsub(gsub(out, "{{", "{"), "}}", "}"))
end

local STRING_METHODS = {
  strip = function(s, a) return py_strip(s, a[1], true, true) end,
  lstrip = function(s, a) return py_strip(s, a[1], true, false) end,
  rstrip = function(s, a) return py_strip(s, a[1], false, true) end,
  split = function(s, a, kw) return py_split(s, arg(a, kw, 1, "sep"), arg(a, kw, 2, "maxsplit")) end,
  rsplit = function(s, a, kw)
    local maxsplit = arg(a, kw, 2, "maxsplit", -1)
    if maxsplit >= 0 then unsupported("rsplit with maxsplit is not supported") end
    return py_split(s, arg(a, kw, 1, "sep"))
  end,
  splitlines = function(s)
    local out = {}
    for line in (s .. "\n"):gmatch("(.-)\r?\n") do out[#out + 1] = line end
    if sub(s, -1) == "\n" or s == "" then out[#out] = nil end
    return new_list(out)
  end,
  startswith = function(s, a) return starts_or_ends(s, a[1], false, "startswith") end,
  endswith = function(s, a) return starts_or_ends(s, a[1], true, "endswith") end,
  upper = function(s) return upper(s) end,
  lower = function(s) return lower(s) end,
  title = function(s) return py_title(s) end,
  capitalize = function(s) return capitalize(s) end,
  swapcase = function(s)
    return (gsub(s, "%a", function(c) return c:match("%l") and upper(c) or lower(c) end))
  end,
  replace = function(s, a) return py_replace(s, a[1], a[2], a[3]) end,
  find = function(s, a)
    local i = find(s, expect_string(a[1], "find"), 1, true)
    if not i then return -1 end
    return ulen(sub(s, 1, i - 1))
  end,
  rfind = function(s, a)
    local p = expect_string(a[1], "rfind")
    local last, i = nil, 1
    while true do
      local f = find(s, p, i, true)
      if not f then break end
      last, i = f, f + 1
    end
    if not last then return -1 end
    return ulen(sub(s, 1, last - 1))
  end,
  count = function(s, a) return py_count(s, expect_string(a[1], "count")) end,
  join = function(s, a)
    local items, n = iter_items(a[1])
    local parts = {}
    for i = 1, n do
      if type(items[i]) ~= "string" then
        fail("sequence item " .. (i - 1) .. ": expected str instance, " .. pytype(items[i]) .. " found")
      end
      parts[i] = items[i]
    end
    return concat(parts, s)
  end,
  format = function(s, a, kw) return py_str_format(s, a, kw) end,
  isdigit = function(s) return s ~= "" and not find(s, "%D") end,
  isalpha = function(s) return s ~= "" and not find(s, "%A") end,
  isalnum = function(s) return s ~= "" and not find(s, "%W") end,
  isspace = function(s) return s ~= "" and not find(s, "[^%s\28-\31]") end,
  islower = function(s) return find(s, "%l") ~= nil and not find(s, "%u") end,
  isupper = function(s) return find(s, "%u") ~= nil and not find(s, "%l") end,
}

local DICT_METHODS = {
  items = function(d) return dict_items(d) end,
  keys = function(d) return new_list(dict_keys(d)) end,
  values = function(d)
    local out = {}
    for i, k in ipairs(dict_keys(d)) do out[i] = d[k] end
    return new_list(out)
  end,
  get = function(d, a)
    local v = rawget(d, a[1])
    if v == nil then
      v = a[2]
      if v == nil then return NONE end
    end
    return v
  end,
}

-- Jinja's sandbox forbids mutating lists; minja and llama.cpp allow it and some templates
-- (Kimi K2) append to a namespace's list, so we allow the common mutators too.
local LIST_METHODS = {
  append = function(l, a) l[#l + 1] = a[1]; return NONE end,
  extend = function(l, a)
    local items, n = iter_items(a[1])
    for i = 1, n do l[#l + 1] = items[i] end
    return NONE
  end,
  insert = function(l, a)
    local n = #l
    local i = a[1]
    if type(i) ~= "number" then fail("list.insert: index must be an integer") end
    if i < 0 then i = math.max(i + n, 0) end
    if i > n then i = n end
    table.insert(l, i + 1, a[2])
    return NONE
  end,
  pop = function(l, a)
    local n = #l
    if n == 0 then fail("pop from empty list") end
    local i = a[1] or -1
    if i < 0 then i = i + n end
    if i < 0 or i >= n then fail("pop index out of range") end
    return table.remove(l, i + 1)
  end,
  index = function(l, a)
    for i = 1, #l do if eq(l[i], a[1]) then return i - 1 end end
    fail(py_repr(a[1]) .. " is not in list")
  end,
  count = function(l, a)
    local c = 0
    for i = 1, #l do if eq(l[i], a[1]) then c = c + 1 end end
    return c
  end,
}

local LOOP_METHODS = {
  cycle = function(l, a)
    if #a == 0 then fail("no items for cycling given") end
    return a[rawget(l, "index0") % #a + 1]
  end,
}

-- Tests: f(value, args) -> boolean.
local TESTS
local function test_eq(v, a) return eq(v, a[1]) end
local function test_num(v, what)
  local x = num_of(v)
  if not x then fail("test '" .. what .. "' needs a number, got " .. pytype(v)) end
  return x
end
TESTS = {
  defined = function(v) return v ~= nil and v ~= UNDEF end,
  undefined = function(v) return v == nil or v == UNDEF end,
  none = function(v) return v == NONE end,
  boolean = function(v) return type(v) == "boolean" end,
  ["true"] = function(v) return v == true end,
  ["false"] = function(v) return v == false end,
  number = function(v) return type(v) == "number" or type(v) == "boolean" end,
  integer = function(v) return type(v) == "number" and v == floor(v) end,
  float = function(v) return type(v) == "number" and v ~= floor(v) end,
  string = function(v) return type(v) == "string" end,
  mapping = function(v) local k = kind(v); return k == "dict" end,
  iterable = function(v)
    local k = kind(v)
    return k == "list" or k == "dict" or k == "string" or k == "undefined" or k == "namespace"
  end,
  sequence = function(v)
    local k = kind(v)
    return k == "list" or k == "dict" or k == "string" or k == "undefined"
  end,
  callable = function(v) return kind(v) == "callable" end,
  sameas = function(v, a) return v == a[1] end,
  eq = test_eq, equalto = test_eq, ["=="] = test_eq,
  ne = function(v, a) return not eq(v, a[1]) end,
  ["!="] = function(v, a) return not eq(v, a[1]) end,
  lt = function(v, a) return lt(v, a[1]) end,
  ["<"] = function(v, a) return lt(v, a[1]) end,
  le = function(v, a) return not lt(a[1], v) end,
  ["<="] = function(v, a) return not lt(a[1], v) end,
  gt = function(v, a) return lt(a[1], v) end,
  greaterthan = function(v, a) return lt(a[1], v) end,
  [">"] = function(v, a) return lt(a[1], v) end,
  ge = function(v, a) return not lt(v, a[1]) end,
  [">="] = function(v, a) return not lt(v, a[1]) end,
  lessthan = function(v, a) return lt(v, a[1]) end,
  ["in"] = function(v, a) return contains(a[1], v) end,
  even = function(v) return test_num(v, "even") % 2 == 0 end,
  odd = function(v) return test_num(v, "odd") % 2 == 1 end,
  divisibleby = function(v, a)
    local d = test_num(a[1], "divisibleby")
    if d == 0 then fail("integer division or modulo by zero") end
    return test_num(v, "divisibleby") % d == 0
  end,
  lower = function(v) return type(v) == "string" and lower(v) == v end,
  upper = function(v) return type(v) == "string" and upper(v) == v end,
  escaped = function() return false end,
  filter = function(v) return M.filters[v] ~= nil end,
  test = function(v) return TESTS[v] ~= nil end,
}

-- Attribute lookup for filters taking attribute='a.b' (dotted paths, integer parts index).
local function attr_path(v, path)
  if type(path) == "number" then return getitem(v, path) end
  for part in tostring(path):gmatch("[^.]+") do
    local num = tonumber(part)
    if num then v = getitem(v, num) else v = getattr(v, part) end
    if v == UNDEF then return UNDEF end
  end
  return v
end

local FILTERS
local function apply_test(name, v, args)
  local t = TESTS[name]
  if not t then unsupported("unsupported test '" .. tostring(name) .. "'") end
  return t(v, args)
end

local function select_impl(v, a, want, use_attr)
  -- Jinja yields nothing for a falsy sequence (none | selectattr(...) is empty).
  if not truthy(v) then return new_list({}) end
  local items, n = iter_items(v)
  local out = {}
  local attr, test, targs
  if use_attr then
    attr, test = a[1], a[2]
    targs = { select(3, unpack(a, 1, math.max(#a, 2))) }
  else
    test = a[1]
    targs = { select(2, unpack(a, 1, math.max(#a, 1))) }
  end
  for i = 1, n do
    local x = items[i]
    local val = use_attr and attr_path(x, attr) or x
    local ok
    if test == nil then ok = truthy(val) else ok = apply_test(test, val, targs) end
    if ok == want then out[#out + 1] = x end
  end
  return new_list(out)
end

local function sort_key(v, case_sensitive)
  if type(v) == "string" and not case_sensitive then return lower(v) end
  return v
end

local function stable_sort(items, keyf, reverse)
  local decorated = {}
  for i, x in ipairs(items) do decorated[i] = { k = keyf(x), i = i, v = x } end
  sort(decorated, function(p, q)
    if eq(p.k, q.k) then return p.i < q.i end
    if reverse then return lt(q.k, p.k) end
    return lt(p.k, q.k)
  end)
  local out = {}
  for i, d in ipairs(decorated) do out[i] = d.v end
  return new_list(out)
end

local function to_int(v, default)
  local t = type(v)
  if t == "number" then return v < 0 and -floor(-v) or floor(v) end
  if t == "boolean" then return v and 1 or 0 end
  if t == "string" then
    local s = py_strip(v, nil, true, true)
    s = gsub(s, "_", "")
    local n = tonumber(s)
    if n and n == floor(n) and not find(s, "[eE.xX]") then return n end
    n = tonumber(s)
    if n then return n < 0 and -floor(-n) or floor(n) end
  end
  return default
end

local function html_escape(s)
  return (gsub(tostr(s), "[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
    ['"'] = "&#34;", ["'"] = "&#39;" }))
end

local function length(v)
  local k = kind(v)
  if k == "string" then return ulen(v) end
  if k == "list" then return #v end
  if k == "dict" or k == "namespace" then return #dict_keys(v) end
  if k == "undefined" then return 0 end
  fail("object of type '" .. pytype(v) .. "' has no len()")
end

local function first_last(v, last)
  local k = kind(v)
  if k == "string" then
    local cs, n = utf8_chars(v)
    if n == 0 then return UNDEF end
    return last and cs[n] or cs[1]
  end
  local items, n = iter_items(v)
  if n == 0 then return UNDEF end
  return last and items[n] or items[1]
end

local function minmax(v, a, kw, want_max)
  local items, n = iter_items(v)
  if n == 0 then return UNDEF end
  local cs = arg(a, kw, 1, "case_sensitive", false)
  local attr = arg(a, kw, 2, "attribute")
  local best, bestk
  for i = 1, n do
    local k = items[i]
    if attr then k = attr_path(k, attr) end
    k = sort_key(k, cs)
    if best == nil or (want_max and lt(bestk, k)) or (not want_max and lt(k, bestk)) then
      best, bestk = items[i], k
    end
  end
  return best
end

FILTERS = {
  abs = function(v)
    local x = num_of(v)
    if not x then fail("bad operand type for abs(): '" .. pytype(v) .. "'") end
    return math.abs(x)
  end,
  attr = function(v, a) return getattr(v, a[1]) end,
  capitalize = function(v) return capitalize(tostr(v)) end,
  count = function(v) return length(v) end,
  default = function(v, a, kw)
    local boolean = arg(a, kw, 2, "boolean", false)
    if v == nil or v == UNDEF or (truthy(boolean) and not truthy(v)) then
      local d = arg(a, kw, 1, "default_value", "")
      return d
    end
    return v
  end,
  dictsort = function(v, a, kw)
    local cs = arg(a, kw, 1, "case_sensitive", false)
    local by = arg(a, kw, 2, "by", "key")
    local reverse = arg(a, kw, 3, "reverse", false)
    local pos = by == "value" and 2 or 1
    return stable_sort(dict_items(v), function(p) return sort_key(p[pos], cs) end, truthy(reverse))
  end,
  escape = function(v) return html_escape(v) end,
  first = function(v) return first_last(v, false) end,
  float = function(v, a, kw)
    local d = arg(a, kw, 1, "default", 0)
    if type(v) == "number" then return v end
    if type(v) == "boolean" then return v and 1 or 0 end
    if type(v) == "string" then return tonumber(py_strip(v, nil, true, true)) or d end
    return d
  end,
  format = function(v, a, kw)
    if kw and next(kw) then return percent_format(expect_string(v, "format"), kw) end
    return percent_format(expect_string(v, "format"), new_tuple({ unpack(a) }))
  end,
  indent = function(v, a, kw)
    local width = arg(a, kw, 1, "width", 4)
    local first = truthy(arg(a, kw, 2, "first", false))
    local blank = truthy(arg(a, kw, 3, "blank", false))
    local ind = type(width) == "string" and width or rep(" ", width)
    local s = tostr(v) .. "\n"
    local lines = {}
    for line in s:gmatch("(.-)\r?\n") do lines[#lines + 1] = line end
    local rv
    if blank then
      rv = concat(lines, "\n" .. ind)
    else
      rv = lines[1] or ""
      for i = 2, #lines do
        rv = rv .. "\n" .. (lines[i] ~= "" and ind .. lines[i] or "")
      end
    end
    if first then rv = ind .. rv end
    return rv
  end,
  int = function(v, a, kw)
    local d = arg(a, kw, 1, "default", 0)
    local base = arg(a, kw, 2, "base", 10)
    if base ~= 10 and type(v) == "string" then return tonumber(v, base) or d end
    local r = to_int(v, nil)
    if r == nil then return d end
    return r
  end,
  items = function(v)
    local k = kind(v)
    if k ~= "dict" and k ~= "namespace" and k ~= "undefined" then
      if k == "list" and #v == 0 then return new_list({}) end
      fail("items filter expects a mapping, got " .. pytype(v))
    end
    return dict_items(v)
  end,
  join = function(v, a, kw)
    local sep = tostr(arg(a, kw, 1, "d", ""))
    local attr = arg(a, kw, 2, "attribute")
    local items, n = iter_items(v)
    local parts = {}
    for i = 1, n do
      local x = items[i]
      if attr ~= nil then x = attr_path(x, attr) end
      parts[i] = tostr(x)
    end
    return concat(parts, sep)
  end,
  last = function(v) return first_last(v, true) end,
  length = function(v) return length(v) end,
  list = function(v)
    local items, n = iter_items(v)
    local out = {}
    for i = 1, n do out[i] = items[i] end
    return new_list(out)
  end,
  lower = function(v) return lower(tostr(v)) end,
  map = function(v, a, kw)
    if not truthy(v) then return new_list({}) end
    local items, n = iter_items(v)
    local out = {}
    local attr = kw and kw.attribute
    if attr ~= nil then
      local d = kw.default
      for i = 1, n do
        local x = attr_path(items[i], attr)
        if x == UNDEF and d ~= nil then x = d end
        out[i] = x
      end
    else
      local name = a[1]
      local f = FILTERS[name]
      if not f then unsupported("map: unsupported filter '" .. tostring(name) .. "'") end
      local rest = { select(2, unpack(a)) }
      for i = 1, n do out[i] = f(items[i], rest, kw) end
    end
    return new_list(out)
  end,
  max = function(v, a, kw) return minmax(v, a, kw, true) end,
  min = function(v, a, kw) return minmax(v, a, kw, false) end,
  reject = function(v, a) return select_impl(v, a, false, false) end,
  rejectattr = function(v, a) return select_impl(v, a, false, true) end,
  replace = function(v, a, kw) return py_replace(tostr(v), a[1], a[2], arg(a, kw, 3, "count")) end,
  reverse = function(v)
    if type(v) == "string" then return do_slice(v, nil, nil, -1) end
    local items, n = iter_items(v)
    local out = {}
    for i = 1, n do out[i] = items[n + 1 - i] end
    return new_list(out)
  end,
  round = function(v, a, kw)
    local precision = arg(a, kw, 1, "precision", 0)
    local method = arg(a, kw, 2, "method", "common")
    local m = 10 ^ precision
    local x = v * m
    if method == "ceil" then x = math.ceil(x)
    elseif method == "floor" then x = floor(x)
    else x = x < 0 and -floor(-x + 0.5) or floor(x + 0.5) end
    return x / m
  end,
  -- Markup(value): a string; the escaping Markup applies to what is added to it is not emulated.
  safe = function(v) return tostr(v) end,
  select = function(v, a) return select_impl(v, a, true, false) end,
  selectattr = function(v, a) return select_impl(v, a, true, true) end,
  sort = function(v, a, kw)
    local reverse = truthy(arg(a, kw, 1, "reverse", false))
    local cs = truthy(arg(a, kw, 2, "case_sensitive", false))
    local attr = arg(a, kw, 3, "attribute")
    local items, n = iter_items(v)
    local list = {}
    for i = 1, n do list[i] = items[i] end
    return stable_sort(list, function(x)
      if attr ~= nil then x = attr_path(x, attr) end
      return sort_key(x, cs)
    end, reverse)
  end,
  string = function(v) return tostr(v) end,
  sum = function(v, a, kw)
    local attr = arg(a, kw, 1, "attribute")
    local total = arg(a, kw, 2, "start", 0)
    local items, n = iter_items(v)
    for i = 1, n do
      local x = items[i]
      if attr ~= nil then x = attr_path(x, attr) end
      total = total + x
    end
    return total
  end,
  title = function(v) return jinja_title(tostr(v)) end,
  -- HF replaces Jinja's tojson: json.dumps(x, ensure_ascii=False, indent=None,
  -- separators=None, sort_keys=False), in that positional order.
  tojson = function(v, a, kw)
    return M.tojson(v, { ensure_ascii = arg(a, kw, 1, "ensure_ascii", false), indent = arg(a, kw, 2, "indent"),
      separators = arg(a, kw, 3, "separators"), sort_keys = arg(a, kw, 4, "sort_keys", false) })
  end,
  trim = function(v, a, kw) return py_strip(tostr(v), arg(a, kw, 1, "chars"), true, true) end,
  truncate = function(v, a, kw)
    local s = tostr(v)
    local len = arg(a, kw, 1, "length", 255)
    local killwords = truthy(arg(a, kw, 2, "killwords", false))
    local ending = arg(a, kw, 3, "end", "...")
    local leeway = arg(a, kw, 4, "leeway", 5)
    local cs, n = utf8_chars(s)
    if n <= len + leeway then return s end
    if killwords then return concat(cs, "", 1, len - ulen(ending)) .. ending end
    local cut = concat(cs, "", 1, len - ulen(ending))
    cut = match(cut, "^(.*)%s") or cut
    return cut .. ending
  end,
  unique = function(v, a, kw)
    local cs = truthy(arg(a, kw, 1, "case_sensitive", false))
    local attr = arg(a, kw, 2, "attribute")
    local items, n = iter_items(v)
    local out, seen = {}, {}
    for i = 1, n do
      local key = items[i]
      if attr ~= nil then key = attr_path(key, attr) end
      key = sort_key(key, cs)
      local dup = false
      for _, s in ipairs(seen) do if eq(s, key) then dup = true; break end end
      if not dup then seen[#seen + 1] = key; out[#out + 1] = items[i] end
    end
    return new_list(out)
  end,
  upper = function(v) return upper(tostr(v)) end,
  wordcount = function(v)
    local c = 0
    for _ in tostr(v):gmatch("[%w_]+") do c = c + 1 end
    return c
  end,
}
FILTERS.d = FILTERS.default
FILTERS.e = FILTERS.escape
FILTERS.forceescape = FILTERS.escape
M.filters = FILTERS
M.tests = TESTS

local function builtin(f) return setmetatable({ fn = f }, BUILTIN_MT) end

local MAX_RANGE = 100000
local GLOBALS = {
  range = builtin(function(a)
    local start, stop, step = 0, a[1], 1
    if #a >= 2 then start, stop = a[1], a[2] end
    if #a >= 3 then step = a[3] end
    if type(start) ~= "number" or type(stop) ~= "number" or type(step) ~= "number" then
      fail("range() expects integer arguments")
    end
    if step == 0 then fail("range() arg 3 must not be zero") end
    local out, n = {}, 0
    local i = start
    while (step > 0 and i < stop) or (step < 0 and i > stop) do
      n = n + 1
      if n > MAX_RANGE then fail("range() is too large (more than " .. MAX_RANGE .. " items)") end
      out[n] = i
      i = i + step
    end
    return new_list(out)
  end),
  namespace = builtin(function(a, kw, kwnames)
    local ns = setmetatable({}, NS_MT)
    local order = {}
    if a[1] ~= nil then
      for _, k in ipairs(dict_keys(a[1])) do ns[k] = a[1][k]; order[#order + 1] = k end
    end
    if kwnames then
      for _, k in ipairs(kwnames) do ns[k] = kw[k]; order[#order + 1] = k end
    end
    dict_order[ns] = order
    return ns
  end),
  dict = builtin(function(a, kw, kwnames)
    local d, order = {}, {}
    if a[1] ~= nil then
      for _, k in ipairs(dict_keys(a[1])) do d[k] = a[1][k]; order[#order + 1] = k end
    end
    if kwnames then
      for _, k in ipairs(kwnames) do d[k] = kw[k]; order[#order + 1] = k end
    end
    return new_dict(d, order)
  end),
  raise_exception = builtin(function(a)
    raise("raise", "raise_exception: " .. tostr(a[1]), R.node and R.node.pos)
  end),
  strftime_now = builtin(function(a)
    return os.date(expect_string(a[1], "strftime_now"))
  end),
}
M.globals = GLOBALS

-- Compiler: AST -> closures ----------------------------------------------------------------

local compile_expr, compile_body

local function compile_args(n)
  local args = {}
  for i, e in ipairs(n.args or {}) do args[i] = compile_expr(e) end
  local kwf = {}
  for i, e in ipairs(n.kwvalues or {}) do kwf[i] = compile_expr(e) end
  local na, nk, kwnames = #args, #kwf, n.kwnames
  local EMPTY = {}
  -- Returns positional values and a kwargs table (nil when there are none).
  return function(sc)
    local a = EMPTY
    if na > 0 then
      a = {}
      for i = 1, na do a[i] = args[i](sc) end
    end
    local kw
    if nk > 0 then
      kw = {}
      for i = 1, nk do kw[kwnames[i]] = kwf[i](sc) end
    end
    return a, kw
  end
end

local MAX_DEPTH = 200
-- Templates come from model files, so a hostile one must not hang a server: every render gets
-- a budget of loop iterations (chat templates use a few per message).
local MAX_STEPS = 10000000

local function call_macro(m, a, kw, n)
  if R.depth >= MAX_DEPTH then fail("macro recursion is too deep", n) end
  local sc = setmetatable({}, { __index = m.scope })
  local params = m.params
  for i, p in ipairs(params) do
    local v = a[i]
    if v == nil and kw then v = kw[p] end
    if v == nil then
      local d = m.defaults[i]
      if d then v = d(sc) else v = UNDEF end
    end
    rawset(sc, p, v)
  end
  local varargs = {}
  for i = #params + 1, #a do varargs[#varargs + 1] = a[i] end
  rawset(sc, "varargs", new_list(varargs))
  local extra = {}
  if kw then
    local known = {}
    for _, p in ipairs(params) do known[p] = true end
    for k, v in pairs(kw) do if not known[k] then extra[k] = v end end
  end
  rawset(sc, "kwargs", new_dict(extra))
  local buf = { n = 0 }
  R.depth = R.depth + 1
  m.body(sc, buf)
  R.depth = R.depth - 1
  return concat(buf, "", 1, buf.n)
end

local function call_value(f, a, kw, kwnames, n)
  if type(f) == "table" then
    local mt = getmetatable(f)
    if mt == MACRO_MT then return call_macro(f, a, kw, n) end
    if mt == BUILTIN_MT then
      R.node = n
      return f.fn(a, kw, kwnames)
    end
  elseif type(f) == "function" then
    -- A Lua function supplied in the render variables: positional arguments, then kwargs.
    R.node = n
    local args = { unpack(a) }
    if kw then args[#args + 1] = kw end
    local v = f(unpack(args, 1, #a + (kw and 1 or 0)))
    if v == nil then return NONE end
    return v
  end
  if f == nil or f == UNDEF then fail("'" .. describe(n.fn) .. "' is undefined", n) end
  fail("'" .. pytype(f) .. "' object is not callable", n)
end

local function call_method(o, name, a, kw, n)
  R.node = n
  local k = kind(o)
  local m
  if k == "string" then
    m = STRING_METHODS[name]
    if m and R.marks then return marked_call(m, o, a, kw) end
  elseif k == "dict" then
    local v = rawget(o, name)
    if v ~= nil and kind(v) == "callable" then return call_value(v, a, kw, nil, n) end
    m = DICT_METHODS[name]
  elseif k == "namespace" then
    local v = rawget(o, name)
    if v ~= nil then return call_value(v, a, kw, nil, n) end
  elseif k == "list" then m = LIST_METHODS[name]
  elseif k == "loop" then m = LOOP_METHODS[name]
  elseif k == "undefined" then fail("'" .. describe(n.fn.obj) .. "' is undefined", n)
  end
  if not m then
    if k == "string" or k == "dict" or k == "list" or k == "loop" then
      unsupported("'" .. pytype(o) .. "' object has no supported method '" .. name .. "'", n)
    end
    fail("'" .. pytype(o) .. "' object has no method '" .. name .. "'", n)
  end
  return m(o, a, kw)
end

local E = {}

E.const = function(n)
  local v = n.v
  return function() return v end
end

E.name = function(n)
  local name = n.name
  return function(sc)
    local v = sc[name]
    if v == nil then return UNDEF end
    return v
  end
end

E.getattr = function(n)
  local obj, key = compile_expr(n.obj), n.name
  return function(sc) return getattr(obj(sc), key, n) end
end

E.getitem = function(n)
  local obj, key = compile_expr(n.obj), compile_expr(n.key)
  return function(sc) return getitem(obj(sc), key(sc), n) end
end

local function opt_num(f, sc, n, what)
  if not f then return nil end
  local v = f(sc)
  if v == NONE or v == UNDEF then return nil end
  if type(v) ~= "number" then fail("slice " .. what .. " must be an integer or None", n) end
  return v
end

E.slice = function(n)
  local obj = compile_expr(n.obj)
  local fa = n.start and compile_expr(n.start)
  local fb = n.stop and compile_expr(n.stop)
  local fc = n.step and compile_expr(n.step)
  return function(sc)
    local o = obj(sc)
    R.node = n
    return do_slice(o, opt_num(fa, sc, n, "start"), opt_num(fb, sc, n, "stop"), opt_num(fc, sc, n, "step"))
  end
end

E.list = function(n)
  local items = {}
  for i, e in ipairs(n.items) do items[i] = compile_expr(e) end
  local count = #items
  local make = n.tuple and new_tuple or new_list
  return function(sc)
    local out = {}
    for i = 1, count do out[i] = items[i](sc) end
    return make(out)
  end
end

E.dict = function(n)
  local keys, values = {}, {}
  for i, e in ipairs(n.keys) do keys[i] = compile_expr(e); values[i] = compile_expr(n.values[i]) end
  local count = #keys
  return function(sc)
    local d, order = {}, {}
    for i = 1, count do
      local k = keys[i](sc)
      if type(k) ~= "string" and type(k) ~= "number" and type(k) ~= "boolean" then
        fail("unhashable dict key of type '" .. pytype(k) .. "'", n)
      end
      if d[k] == nil then order[#order + 1] = k end
      d[k] = values[i](sc)
    end
    return new_dict(d, order)
  end
end

E["and"] = function(n)
  local l, r = compile_expr(n.l), compile_expr(n.r)
  return function(sc)
    local a = l(sc)
    if not truthy(a) then return a end
    return r(sc)
  end
end

E["or"] = function(n)
  local l, r = compile_expr(n.l), compile_expr(n.r)
  return function(sc)
    local a = l(sc)
    if truthy(a) then return a end
    return r(sc)
  end
end

E["not"] = function(n)
  local e = compile_expr(n.e)
  return function(sc) return not truthy(e(sc)) end
end

E.neg = function(n)
  local e = compile_expr(n.e)
  return function(sc)
    local v = e(sc)
    local x = num_of(v)
    if not x then fail("bad operand type for unary -: '" .. pytype(v) .. "'", n) end
    return -x
  end
end

E.pos = function(n)
  local e = compile_expr(n.e)
  return function(sc)
    local v = e(sc)
    local x = num_of(v)
    if not x then fail("bad operand type for unary +: '" .. pytype(v) .. "'", n) end
    return x
  end
end

E.condexpr = function(n)
  local c, a = compile_expr(n.cond), compile_expr(n.a)
  local b = n.b and compile_expr(n.b)
  return function(sc)
    if truthy(c(sc)) then return a(sc) end
    if b then return b(sc) end
    return UNDEF
  end
end

E.concat = function(n)
  local items = {}
  for i, e in ipairs(n.items) do items[i] = compile_expr(e) end
  local count = #items
  return function(sc)
    local parts = {}
    for i = 1, count do parts[i] = tostr(items[i](sc)) end
    return concat(parts)
  end
end

local function repeat_seq(s, times, n)
  times = num_of(times)
  if not times then return nil end
  if times <= 0 then return type(s) == "string" and "" or new_list({}) end
  if type(s) == "string" then
    if #s * times > 64 * 1024 * 1024 then fail("string repetition is too large", n) end
    return rep(s, times)
  end
  local out = {}
  for _ = 1, times do for i = 1, #s do out[#out + 1] = s[i] end end
  return new_list(out)
end

local BINOPS = {
  ["+"] = function(a, b, n)
    local x, y = num_of(a), num_of(b)
    if x and y then return x + y end
    local ka, kb = kind(a), kind(b)
    if ka == "string" and kb == "string" then return a .. b end
    if ka == "list" and kb == "list" then
      local out = {}
      for i = 1, #a do out[i] = a[i] end
      for i = 1, #b do out[#a + i] = b[i] end
      return new_list(out)
    end
    arith_error("+", a, b, n)
  end,
  ["-"] = function(a, b, n)
    local x, y = num_of(a), num_of(b)
    if x and y then return x - y end
    arith_error("-", a, b, n)
  end,
  ["*"] = function(a, b, n)
    local x, y = num_of(a), num_of(b)
    if x and y then return x * y end
    local ka, kb = kind(a), kind(b)
    if (ka == "string" or ka == "list") and (kb == "number" or kb == "boolean") then
      local r = repeat_seq(a, b, n); if r then return r end
    elseif (kb == "string" or kb == "list") and (ka == "number" or ka == "boolean") then
      local r = repeat_seq(b, a, n); if r then return r end
    end
    arith_error("*", a, b, n)
  end,
  ["/"] = function(a, b, n)
    local x, y = num_of(a), num_of(b)
    if x and y then
      if y == 0 then fail("division by zero", n) end
      return x / y
    end
    arith_error("/", a, b, n)
  end,
  ["//"] = function(a, b, n)
    local x, y = num_of(a), num_of(b)
    if x and y then
      if y == 0 then fail("integer division or modulo by zero", n) end
      return floor(x / y)
    end
    arith_error("//", a, b, n)
  end,
  ["%"] = function(a, b, n)
    if type(a) == "string" then R.node = n; return percent_format(a, b, n) end
    local x, y = num_of(a), num_of(b)
    if x and y then
      if y == 0 then fail("integer division or modulo by zero", n) end
      return x % y
    end
    arith_error("%", a, b, n)
  end,
  ["**"] = function(a, b, n)
    local x, y = num_of(a), num_of(b)
    if x and y then return x ^ y end
    arith_error("**", a, b, n)
  end,
}

E.binop = function(n)
  local l, r = compile_expr(n.l), compile_expr(n.r)
  local op = BINOPS[n.op]
  if n.op == "+" then
    -- The hot path of every chat template: string + string.
    return function(sc)
      local a, b = l(sc), r(sc)
      local ta, tb = type(a), type(b)
      if ta == "string" and tb == "string" then return a .. b end
      if ta == "number" and tb == "number" then return a + b end
      return op(a, b, n)
    end
  end
  return function(sc) return op(l(sc), r(sc), n) end
end

local COMPARE = {
  ["=="] = function(a, b) return eq(a, b) end,
  ["!="] = function(a, b) return not eq(a, b) end,
  ["<"] = function(a, b, n) return lt(a, b, n, "<") end,
  [">"] = function(a, b, n) return lt(b, a, n, ">") end,
  ["<="] = function(a, b, n) return not lt(b, a, n, "<=") end,
  [">="] = function(a, b, n) return not lt(a, b, n, ">=") end,
  ["in"] = function(a, b, n) return contains(b, a, n) end,
  notin = function(a, b, n) return not contains(b, a, n) end,
}

E.compare = function(n)
  local first = compile_expr(n.first)
  local ops, fs = {}, {}
  for i, o in ipairs(n.ops) do ops[i] = COMPARE[o.op]; fs[i] = compile_expr(o.e) end
  local count = #ops
  if count == 1 then
    local op, f = ops[1], fs[1]
    return function(sc) return op(first(sc), f(sc), n) end
  end
  return function(sc)
    local a = first(sc)
    for i = 1, count do
      local b = fs[i](sc)
      if not ops[i](a, b, n) then return false end
      a = b
    end
    return true
  end
end

local UNSUPPORTED_GLOBALS = { cycler = true, joiner = true, lipsum = true }

E.call = function(n)
  local argsf = compile_args(n)
  local kwnames = n.kwnames
  if n.fn.t == "getattr" then
    -- Methods resolve at render time, as in Jinja: the receiver's type is only known then.
    local name = n.fn.name
    local obj = compile_expr(n.fn.obj)
    return function(sc)
      local o = obj(sc)
      local a, kw = argsf(sc)
      return call_method(o, name, a, kw, n)
    end
  end
  local fn = compile_expr(n.fn)
  local missing = n.fn.t == "name" and UNSUPPORTED_GLOBALS[n.fn.name]
  return function(sc)
    local f = fn(sc)
    if missing and f == UNDEF then
      unsupported("unsupported global function '" .. n.fn.name .. "()'", n)
    end
    local a, kw = argsf(sc)
    return call_value(f, a, kw, kwnames, n)
  end
end

E.filter = function(n)
  local f = FILTERS[n.name]
  if not f then unsupported("unsupported filter '" .. n.name .. "'", n) end
  local e = n.e and compile_expr(n.e)
  local argsf = compile_args(n)
  return function(sc, value)
    local v
    if e then v = e(sc) else v = value end
    local a, kw = argsf(sc)
    R.node = n
    if R.marks then return marked_call(f, v, a, kw) end
    return f(v, a, kw)
  end
end

E.test = function(n)
  local t = TESTS[n.name]
  if not t then unsupported("unsupported test '" .. n.name .. "'", n) end
  local e = compile_expr(n.e)
  local argsf = compile_args(n)
  local negate = n.negate
  return function(sc)
    local v = e(sc)
    local a = argsf(sc)
    R.node = n
    if R.marks then
      v = unmark(v)
      for i = 1, #a do a[i] = unmark(a[i]) end
    end
    local r = t(v, a) and true or false
    if negate then return not r end
    return r
  end
end

compile_expr = function(n)
  local c = E[n.t]
  if not c then unsupported("unsupported expression '" .. n.t .. "'", n) end
  return c(n)
end

-- Statements return nil, or "break"/"continue" to unwind to the enclosing loop.
local S = {}

local function emit(buf, s)
  local k = buf.n + 1
  buf[k] = s
  buf.n = k
end

S.text = function(n)
  local v = n.v
  return function(_, buf) emit(buf, v) end
end

S.output = function(n)
  local e = compile_expr(n.e)
  return function(sc, buf)
    local v = e(sc)
    if type(v) ~= "string" then v = tostr(v) end
    emit(buf, v)
  end
end

S["if"] = function(n)
  local conds, bodies = {}, {}
  for i, b in ipairs(n.branches) do conds[i] = compile_expr(b.cond); bodies[i] = compile_body(b.body) end
  local else_body = n.else_body and compile_body(n.else_body)
  local count = #conds
  return function(sc, buf)
    for i = 1, count do
      if truthy(conds[i](sc)) then return bodies[i](sc, buf) end
    end
    if else_body then return else_body(sc, buf) end
  end
end

-- Does this body assign names in its own scope (so loop iterations need fresh scopes)?
local function assigns(body)
  for _, s in ipairs(body) do
    if s.t == "set" or s.t == "macro" then return true end
    if s.t == "if" then
      for _, b in ipairs(s.branches) do if assigns(b.body) then return true end end
      if s.else_body and assigns(s.else_body) then return true end
    end
    if s.t == "filterblock" and assigns(s.body) then return true end
  end
  return false
end

local function bind(sc, targets, item, n)
  local nt = #targets
  if nt == 1 then rawset(sc, targets[1], item); return end
  local items, count = iter_items(item, n)
  if count ~= nt then
    fail((count < nt and "not enough" or "too many") .. " values to unpack (expected " .. nt
      .. ", got " .. count .. ")", n)
  end
  for i = 1, nt do rawset(sc, targets[i], items[i]) end
end

S["for"] = function(n)
  local iter = compile_expr(n.iter)
  local filter = n.filter and compile_expr(n.filter)
  local body = compile_body(n.body)
  local else_body = n.else_body and compile_body(n.else_body)
  local targets = n.targets
  local fresh = assigns(n.body)
  return function(sc, buf)
    local items, count = iter_items(iter(sc), n)
    local steps = R.steps + count
    if steps > MAX_STEPS then fail("template exceeded " .. MAX_STEPS .. " loop iterations", n) end
    R.steps = steps
    if filter then
      local kept, k = {}, 0
      local tmp = setmetatable({}, { __index = sc })
      for i = 1, count do
        bind(tmp, targets, items[i], n)
        if truthy(filter(tmp)) then k = k + 1; kept[k] = items[i] end
      end
      items, count = kept, k
    end
    if count == 0 then
      if else_body then return else_body(sc, buf) end
      return
    end
    local mt = { __index = sc }
    local loop = setmetatable({ length = count, depth = 1, depth0 = 0 }, LOOP_MT)
    local child = setmetatable({}, mt)
    for i = 1, count do
      if fresh and i > 1 then child = setmetatable({}, mt) end
      local item = items[i]
      bind(child, targets, item, n)
      loop.index, loop.index0 = i, i - 1
      loop.revindex, loop.revindex0 = count - i + 1, count - i
      loop.first, loop.last = i == 1, i == count
      loop.previtem, loop.nextitem = items[i - 1], items[i + 1]
      rawset(child, "loop", loop)
      local sig = body(child, buf)
      if sig == "break" then break end
    end
  end
end

S.set = function(n)
  local value
  if n.e then
    value = compile_expr(n.e)
  else
    local body = compile_body(n.body)
    local filters = {}
    for i, f in ipairs(n.filters) do filters[i] = compile_expr(f) end
    value = function(sc)
      local buf = { n = 0 }
      body(sc, buf)
      local v = concat(buf, "", 1, buf.n)
      for _, f in ipairs(filters) do v = f(sc, v) end
      return v
    end
  end
  if n.ns then
    local ns, attr = n.ns, n.attr
    return function(sc)
      local obj = sc[ns]
      if getmetatable(obj) ~= NS_MT then
        fail("cannot assign attribute on non-namespace object '" .. ns .. "'", n)
      end
      rawset(obj, attr, value(sc))
    end
  end
  local names = n.names
  if #names == 1 then
    local name = names[1]
    return function(sc) rawset(sc, name, value(sc)) end
  end
  return function(sc) bind(sc, names, value(sc), n) end
end

S.macro = function(n)
  local body = compile_body(n.body)
  local defaults = {}
  for i, d in pairs(n.defaults) do defaults[i] = compile_expr(d) end
  local name, params = n.name, n.params
  return function(sc)
    rawset(sc, name, setmetatable({ name = name, params = params, defaults = defaults, body = body,
      scope = sc }, MACRO_MT))
  end
end

S["break"] = function() return function() return "break" end end
S["continue"] = function() return function() return "continue" end end

S.filterblock = function(n)
  local body = compile_body(n.body)
  local filters = {}
  for i, f in ipairs(n.filters) do filters[i] = compile_expr(f) end
  return function(sc, buf)
    local inner = { n = 0 }
    local sig = body(sc, inner)
    local v = concat(inner, "", 1, inner.n)
    for _, f in ipairs(filters) do v = f(sc, v) end
    emit(buf, tostr(v))
    return sig
  end
end

S.with = function(n)
  local body = compile_body(n.body)
  local values = {}
  for i, e in ipairs(n.values) do values[i] = compile_expr(e) end
  local names = n.names
  return function(sc, buf)
    local child = setmetatable({}, { __index = sc })
    for i = 1, #names do rawset(child, names[i], values[i](sc)) end
    return body(child, buf)
  end
end

compile_body = function(nodes)
  -- Adjacent text nodes are merged so the output buffer sees one piece.
  local fns, count = {}, 0
  local i = 1
  while i <= #nodes do
    local n = nodes[i]
    if n.t == "text" then
      local parts = { n.v }
      while nodes[i + 1] and nodes[i + 1].t == "text" do i = i + 1; parts[#parts + 1] = nodes[i].v end
      n = { t = "text", v = concat(parts) }
    end
    count = count + 1
    fns[count] = S[n.t](n)
    i = i + 1
  end
  if count == 0 then return function() end end
  if count == 1 then return fns[1] end
  return function(sc, buf)
    for j = 1, count do
      local sig = fns[j](sc, buf)
      if sig then return sig end
    end
  end
end

-- API ------------------------------------------------------------------------------------

local Template = {}
Template.__index = Template

--- template.compile(text) -> tmpl or nil, err, info
-- err is "template:LINE:COL: message"; info = {kind = "syntax"|"unsupported", line, col,
-- message, construct}. An unsupported construct (tag, filter, test, method) is kind
-- "unsupported" and its message names it.
function M.compile(text)
  if type(text) ~= "string" then error("template.compile: text must be a string", 2) end
  -- Jinja normalises newlines and drops one trailing newline (keep_trailing_newline=False).
  local src = gsub(text, "\r\n?", "\n")
  if sub(src, -1) == "\n" then src = sub(src, 1, -2) end
  local ok, res = pcall(function()
    local p = setmetatable({ toks = lex(src), i = 1, loop_depth = 0 }, Parser)
    local ast = p:parse_body(nil)
    return compile_body(ast)
  end)
  if not ok then
    R.node = nil
    local err, info = format_error(src, res)
    return nil, err, info
  end
  return setmetatable({ fn = res, src = src }, Template)
end

--- tmpl:render(vars, marks) -> string or nil, err, info
-- marks: a template.marks() set whose marks stand in vars for strings to follow (see "Marked
-- rendering"); the result then holds marks, and marks:expand(result) gives text and spans.
-- vars are the template's variables (messages, add_generation_prompt, bos_token, ...);
-- nil values are undefined. info.kind is "raise" when the template called raise_exception,
-- "unsupported" for a construct found only while rendering, else "error".
function Template:render(vars, marks)
  vars = vars or {}
  local root = setmetatable({}, { __index = function(_, k)
    local v = vars[k]
    if v == nil then v = GLOBALS[k] end
    return v
  end })
  local buf = { n = 0 }
  R.node, R.depth, R.steps, R.marks = nil, 0, 0, marks
  local ok, err = pcall(self.fn, root, buf)
  R.marks = nil
  if not ok then
    local msg, info = format_error(self.src, err)
    R.node = nil
    return nil, msg, info
  end
  R.node = nil
  return concat(buf, "", 1, buf.n)
end

return M
