-- seq_checks.lua: what the tests of sequences' forward passes share
-- (test_batching, test_kv_pool): token arrays, deterministic token streams,
-- and a bitwise comparison of logits. Tests require it after adding
-- tests/lua to package.path.
local ffi = require "ffi"

local M = {}

-- An int32_t array of the list's ids.
function M.ints(t) return ffi.new("int32_t[?]", #t, t) end

-- n deterministic token ids for stream k.
function M.tokens(k, n, vocab)
  local t = {}
  for i = 1, n do t[i] = (k * 131 + i * 17) % vocab end
  return t
end

-- Raises (at the caller's caller) unless a[0..n) and b[0..n) are equal bit
-- for bit, naming what and the first value that differs.
function M.same(a, b, n, what)
  for j = 0, n - 1 do
    if a[j] ~= b[j] then error(("%s: value %d: %.9g vs %.9g"):format(what, j, a[j], b[j]), 2) end
  end
end

-- Feeds chunks (lists of token ids) to seq, one forward each; returns the
-- last row's logits after every chunk (copies, [1..#chunks]).
function M.run(shard, seq, chunks)
  local buf, out = shard:output_buffer(1, false), {}
  for i, chunk in ipairs(chunks) do
    assert(shard:forward(seq, M.ints(chunk), #chunk, false, buf))
    out[i] = ffi.new("float[?]", shard.n_vocab)
    ffi.copy(out[i], buf, shard.n_vocab * 4)
  end
  return out
end

return M
