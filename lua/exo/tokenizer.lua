-- tokenizer.lua: text <-> token ids through libexo's tokenizer (native/tokenizer.c).
--
--   local tokenizer = require "exo.tokenizer"
--   local tok = assert(tokenizer.load(path))        -- nil, err on a bad file
--   local ids = tok:encode(text, { add_bos = true, special = true })
--   local text = tok:decode(ids)
--   local s = tok:stream(); out = s:push(id) .. s:push(id2) .. s:flush()
--
-- encode's `special` says whether control tokens written in the text
-- (<|im_start|>, <s>) are recognised: true for text a chat template produced,
-- false (the default) for user content, whose look-alikes stay plain text.
-- The streaming decoder does its UTF-8 buffering in C
-- (exo_tokenizer_decode_stream): push returns only complete characters, ""
-- while one is unfinished; flush ends the stream.
local ffi = require "ffi"
local native = require "exo.native"

local C, fail = native.C, native.fail

local M = {}

local Tokenizer = {}
Tokenizer.__index = Tokenizer
local Stream = {}
Stream.__index = Stream

-- Scratch buffers shared by every tokenizer (the loop thread is the only
-- caller); they grow when a call needs more.
local ids_cap = 4096
local ids_buf = ffi.new("int32_t[?]", ids_cap)
local text_cap = 16384
local text_buf = ffi.new("char[?]", text_cap)
local int1 = ffi.new("int[1]")
local size1 = ffi.new("size_t[1]")
local str1 = ffi.new("const char*[1]")

local function check_type(v, t, what)
  if type(v) ~= t then error(("%s: expected %s, got %s"):format(what, t, type(v)), 3) end
end

local function opt_id(id) return id >= 0 and id or nil end

-- Loads the tokenizer of the GGUF file at path. Returns a Tokenizer or nil, err.
function M.load(path)
  check_type(path, "string", "tokenizer.load")
  local out = ffi.new("exo_tokenizer*[1]")
  local rc = C.exo_tokenizer_load(path, out)
  if rc ~= 0 then return fail(rc) end
  local h = ffi.gc(out[0], C.exo_tokenizer_free)
  local warning = ffi.string(C.exo_tokenizer_warning(h))
  return setmetatable({
    handle = h,
    path = path,
    n_vocab = C.exo_tokenizer_n_vocab(h),
    bos = opt_id(C.exo_tokenizer_bos(h)),
    eos = opt_id(C.exo_tokenizer_eos(h)),
    eot = opt_id(C.exo_tokenizer_eot(h)),
    add_bos = C.exo_tokenizer_add_bos(h) ~= 0,
    model = ffi.string(C.exo_tokenizer_model(h)),
    pre = ffi.string(C.exo_tokenizer_pre(h)),
    warning = warning ~= "" and warning or nil,
  }, Tokenizer)
end

function Tokenizer:free()
  if self.handle then
    C.exo_tokenizer_free(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

-- Encodes into the scratch buffer; returns the count (the ids are in
-- ids_buf[0..n-1] until the next call) or nil, err.
local function encode_raw(self, text, opts)
  check_type(text, "string", "Tokenizer:encode")
  local add_bos, special = -1, 0
  if opts ~= nil then
    check_type(opts, "table", "Tokenizer:encode options")
    if opts.add_bos ~= nil then add_bos = opts.add_bos and 1 or 0 end
    special = opts.special and 1 or 0
  end
  local rc = C.exo_tokenizer_encode(self.handle, text, #text, add_bos, special, ids_buf, ids_cap, int1)
  if rc == C.EXO_ERANGE and int1[0] > ids_cap then
    ids_cap = int1[0]
    ids_buf = ffi.new("int32_t[?]", ids_cap)
    rc = C.exo_tokenizer_encode(self.handle, text, #text, add_bos, special, ids_buf, ids_cap, int1)
  end
  if rc ~= 0 then return fail(rc) end
  return int1[0]
end

-- Lua array of token ids. opts.add_bos: true/false (default: as the model
-- asks); opts.special: recognise control tokens in the text (default false).
function Tokenizer:encode(text, opts)
  local n, err, code = encode_raw(self, text, opts)
  if not n then return nil, err, code end
  local out = {}
  for i = 0, n - 1 do out[i + 1] = ids_buf[i] end
  return out
end

-- The same ids as a fresh int32_t[n] cdata (for forward passes), and n.
function Tokenizer:encode_buffer(text, opts)
  local n, err, code = encode_raw(self, text, opts)
  if not n then return nil, err, code end
  local buf = ffi.new("int32_t[?]", math.max(n, 1))
  ffi.copy(buf, ids_buf, n * 4)
  return buf, n
end

-- Decodes a Lua array of ids (or an int32_t* cdata with n) to a string of
-- bytes. opts.special: render control tokens (default false: they vanish).
function Tokenizer:decode(ids, opts, n)
  local arr
  if type(ids) == "table" then
    n = #ids
    arr = ffi.new("int32_t[?]", math.max(n, 1), ids)
  else
    if type(n) ~= "number" then error("Tokenizer:decode: count required with a cdata array", 2) end
    arr = ids
  end
  local special = opts and opts.special and 1 or 0
  local rc = C.exo_tokenizer_decode(self.handle, arr, n, special, text_buf, text_cap, size1)
  if rc == C.EXO_ERANGE and size1[0] > text_cap then
    text_cap = tonumber(size1[0])
    text_buf = ffi.new("char[?]", text_cap)
    rc = C.exo_tokenizer_decode(self.handle, arr, n, special, text_buf, text_cap, size1)
  end
  if rc ~= 0 then return fail(rc) end
  return ffi.string(text_buf, size1[0])
end

-- The bytes one token decodes to (possibly part of a UTF-8 character).
function Tokenizer:piece(id)
  check_type(id, "number", "Tokenizer:piece")
  local rc = C.exo_tokenizer_token_piece(self.handle, id, str1, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(str1[0], size1[0])
end

-- The token's text as the vocabulary spells it.
function Tokenizer:text(id)
  check_type(id, "number", "Tokenizer:text")
  local rc = C.exo_tokenizer_token_text(self.handle, id, str1, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(str1[0], size1[0])
end

-- The id of the token spelled exactly text, or nil.
function Tokenizer:find(text)
  check_type(text, "string", "Tokenizer:find")
  return opt_id(C.exo_tokenizer_find(self.handle, text, #text))
end

function Tokenizer:is_eog(id) return C.exo_tokenizer_is_eog(self.handle, id) ~= 0 end

-- GGUF token type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
-- 6 byte, 0 undefined; nil when id is out of range.
function Tokenizer:token_type(id)
  local t = C.exo_tokenizer_token_type(self.handle, id)
  return t >= 0 and t or nil
end

-- A streaming decoder. opts.special: render control tokens (default false).
function Tokenizer:stream(opts)
  return setmetatable({ tok = self, state = ffi.new("exo_tokenizer_stream"), special = opts and opts.special and 1 or 0 },
    Stream)
end

-- Adds one token; returns the complete UTF-8 text it finishes ("" while a
-- character is still unfinished) or nil, err for an id outside the vocabulary.
function Stream:push(id)
  check_type(id, "number", "Stream:push")
  local h = self.tok.handle
  local rc = C.exo_tokenizer_decode_stream(h, self.state, id, self.special, text_buf, text_cap, size1)
  if rc == C.EXO_ERANGE and size1[0] > text_cap then
    text_cap = tonumber(size1[0])
    text_buf = ffi.new("char[?]", text_cap)
    rc = C.exo_tokenizer_decode_stream(h, self.state, id, self.special, text_buf, text_cap, size1)
  end
  if rc ~= 0 then return fail(rc) end
  return ffi.string(text_buf, size1[0])
end

-- Ends the stream: an unfinished character comes out as U+FFFD. The stream can
-- then start over.
function Stream:flush()
  local rc = C.exo_tokenizer_decode_stream_flush(self.tok.handle, self.state, text_buf, text_cap, size1)
  if rc ~= 0 then return fail(rc) end
  return ffi.string(text_buf, size1[0])
end

return M
