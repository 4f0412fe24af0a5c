-- test_kv_pool.lua: the paged KV pool shared by a shard's sequences.
--
-- A sequence's keys and values live in blocks of the shard's pool, taken as
-- it grows and given back when it is truncated or freed. These checks run
-- on a pool sized with set_kv_tokens (a budget of a few blocks) beside the
-- default, unbudgeted pool (each sequence reserving its whole context):
--   * bit-identity: a sequence whose blocks are NOT adjacent in the pool
--     (the attention kernels then copy its rows into one run) gets bitwise
--     the logits of the same tokens in a fresh shard, where its blocks
--     follow each other; with prompt chunks, decode steps, and a sliding
--     window (Gemma 3) whose first key is not at a block's start;
--   * exhaustion: a request needing a block when none is free fails with
--     a clear "KV pool exhausted" error (EXO_EBUSY), takes nothing, and
--     moves nothing, alone or in a multi-sequence pass beside a running
--     sequence, which goes on with its solo results;
--   * reuse: blocks given back (a freed or truncated sequence) serve the
--     next sequence, whose results are again its solo ones;
--   * the budget is set once, before the first sequence.
-- Runs on the tiny model, its K-quant variant and the Gemma 3 one
-- (CMakeLists runs it again on the AVX2 and scalar kernels).
local ffi = require "ffi"
local native = require "exo.native"
package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local checks = require "seq_checks"
local ints, tokens, same, run = checks.ints, checks.tokens, checks.same, checks.run
local tiny = assert(os.getenv("EXO_TINY_MODEL"))

-- What chunks give on a sequence alone in a fresh, unbudgeted shard.
local function solo(path, chunks)
  local shard = assert(native.load_shard(path))
  local seq = assert(shard:new_seq(512))
  local out = run(shard, seq, chunks)
  seq:free()
  shard:free()
  return out
end

local function check(path)
  local shard = assert(native.load_shard(path))
  local V = shard.n_vocab
  local info = shard:kv_info()
  assert(info.budget == 0 and info.blocks == 0 and info.block_len == 64, "a fresh shard's pool is empty")
  assert(not shard:set_kv_tokens(0))
  -- Four blocks of 64 positions.
  assert(shard:set_kv_tokens(4 * 64 - 10))
  info = shard:kv_info()
  assert(info.budget == 4 and info.blocks == 4 and info.free == 4, "budget rounded up to whole blocks")

  -- A takes block 0; B the middle of the rest (2); C what is left before
  -- it (1): A's next block is then 3, not adjacent to its first.
  local ca = { tokens(1, 60, V), tokens(2, 30, V), { 5 }, { 9 }, { 11 } }
  local cb = { tokens(3, 10, V), { 7 }, { 8 } }
  local cc = { tokens(4, 10, V) }
  local cd = { tokens(5, 70, V), { 3 } }
  local ea, eb, ec, ed = solo(path, ca), solo(path, cb), solo(path, cc), solo(path, cd)
  local a, b, c = assert(shard:new_seq(512)), assert(shard:new_seq(512)), assert(shard:new_seq(512))
  local ga = run(shard, a, { ca[1] })
  same(ga[1], ea[1], V, path .. ": A's prompt")
  same(run(shard, b, { cb[1] })[1], eb[1], V, path .. ": B's prompt")
  same(run(shard, c, cc)[1], ec[1], V, path .. ": C's prompt")
  assert(shard:kv_info().free == 1)
  -- A grows into the last free block (3): 30 rows in one chunk, then decode steps.
  local ga2 = run(shard, a, { ca[2], ca[3] })
  same(ga2[1], ea[2], V, path .. ": A's second chunk across non-adjacent blocks")
  same(ga2[2], ea[3], V, path .. ": A's decode step across non-adjacent blocks")
  assert(shard:kv_info().free == 0)
  assert(not shard:set_kv_tokens(1024), "the budget is set once")

  -- D needs a block: none is free. A clear error, nothing taken, nothing moved.
  local d = assert(shard:new_seq(512))
  local ok, err, code = shard:forward(d, ints(cd[1]), #cd[1], false)
  assert(not ok and code == "EBUSY" and err:match("KV pool exhausted"), tostring(err))
  assert(d:pos() == 0 and shard:kv_info().free == 0)
  -- The same beside A's decode step in one pass: all or nothing, so A did not move either.
  local batch = native.new_batch(2)
  local oa, od = ffi.new("float[?]", V), ffi.new("float[?]", V)
  local ia, id = ints(ca[4]), ints(cd[1])
  batch:add(a, ia, 1, 1, oa)
  batch:add(d, id, #cd[1], 1, od)
  ok, err = shard:forward_batch(batch)
  assert(not ok and err:match("KV pool exhausted"), tostring(err))
  assert(a:pos() == 91 and d:pos() == 0 and shard:kv_info().free == 0)
  -- A, running, is unharmed: its next steps are its solo ones.
  local ga3 = run(shard, a, { ca[4], ca[5] })
  same(ga3[1], ea[4], V, path .. ": A after the failed passes")
  same(ga3[2], ea[5], V, path .. ": A's next step")

  -- B leaves: its block serves D's first 64 positions, C truncated to 0
  -- gives D its second. D's results are its solo ones.
  same(run(shard, b, { cb[2] })[1], eb[2], V, path .. ": B's decode step")
  b:free()
  assert(c:truncate(0))
  assert(shard:kv_info().free == 2)
  local gd = run(shard, d, cd)
  same(gd[1], ed[1], V, path .. ": D's prompt in reused blocks")
  same(gd[2], ed[2], V, path .. ": D's decode step in reused blocks")
  info = shard:kv_info()
  assert(info.free == 0 and info.sequences == 3, ("%d free, %d sequences"):format(info.free, info.sequences))

  -- Truncation gives blocks back at once; freeing the shard before its
  -- sequences leaves them valid until they go.
  assert(a:truncate(64))
  assert(shard:kv_info().free == 1)
  shard:free()
  a:free()
  c:free()
  d:free()

  -- Without a budget each sequence reserves its whole context: the pool
  -- grows to the reservations and never runs short.
  local plain = assert(native.load_shard(path))
  local s1, s2 = assert(plain:new_seq(100)), assert(plain:new_seq(200))
  info = plain:kv_info()
  assert(info.budget == 0 and info.reserved == 2 + 4 and info.blocks == 6, "reservations")
  assert(not plain:set_kv_tokens(256), "no budget once sequences exist")
  s1:free()
  assert(plain:kv_info().reserved == 4)
  s2:free()
  plain:free()
  print("ok: " .. path)
end

local dir = tiny:match("^(.*)/[^/]*$") or "."
check(tiny)
check((tiny:gsub("%.gguf$", "-q4_k.gguf")))
check(dir .. "/tiny-gemma3.gguf")
print("ok: kv pool")
