-- test_kv_pool.lua: the paged KV pool shared by a shard's sequences.
--
-- A sequence's keys and values live in blocks of the shard's pool, taken as
-- it grows and given back when it is truncated or freed. These checks run
-- on a pool sized with set_kv_tokens (a budget of a few blocks) beside the
-- default, unbudgeted pool (each sequence reserving its whole context):
--   * bit-identity: a sequence whose blocks are NOT adjacent in the pool
--     gets bitwise the logits of the same tokens in a fresh shard, where its
--     blocks follow each other; with prompt chunks, decode steps, and a
--     sliding window (Gemma 3) whose first key is not at a block's start;
--   * exhaustion: a request needing a block when none is free fails with
--     a clear "KV pool exhausted" error (EXO_EBUSY), takes nothing, and
--     moves nothing, alone or in a multi-sequence pass beside a running
--     sequence, which goes on with its solo results;
--   * reuse: blocks given back (a freed or truncated sequence) serve the
--     next sequence, whose results are again its solo ones;
--   * the budget is set once, before the first sequence;
--   * through the batcher, a running sequence that finds the pool full
--     evicts an idle one (on_exhausted) and keeps its solo results; with
--     nothing to evict the request fails alone.
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

  -- A takes block 0, B block 1, C block 2: A's next block is then 3, not
  -- adjacent to its first.
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

-- Through the batcher (exo.node's runner, as the server runs passes): a
-- running sequence that needs a block when the pool is full asks
-- on_exhausted, which here evicts an idle sequence, and goes on with its solo
-- results; with nothing left to evict it fails alone, clearly.
local function check_batcher(path)
  local uv = require "luv"
  local runner = require("exo.node").new {}.runner
  local shard = assert(native.load_shard(path))
  local V = shard.n_vocab
  assert(shard:set_kv_tokens(3 * 64))
  local chunks = { tokens(6, 60, V), tokens(7, 10, V) } -- the second crosses into a second block
  local expect = solo(path, chunks)
  local idle = assert(shard:new_seq(512))
  run(shard, idle, { tokens(8, 100, V) }) -- two blocks, kept idle
  local evicted = 0
  runner:batcher(shard).on_exhausted = function()
    if idle:pos() == 0 then return false end
    evicted = evicted + 1
    return idle:truncate(0)
  end
  local got, err = {}, {}
  local function client(k, list)
    local seq = assert(shard:new_seq(512))
    local out = shard:output_buffer(1, false)
    for i, chunk in ipairs(list) do
      local ok, e = runner:forward(shard, seq, ints(chunk), #chunk, out)
      if not ok then err[k] = e; return seq end
      got[k] = got[k] or {}
      got[k][i] = ffi.new("float[?]", V)
      ffi.copy(got[k][i], out, V * 4)
    end
    return seq
  end
  local a, b
  local co = coroutine.create(function()
    a = client("a", chunks) -- takes the last free block, then needs one of the idle sequence's
    b = client("b", { tokens(9, 100, V) }) -- needs two blocks, one is free: fails alone
  end)
  assert(coroutine.resume(co))
  local guard = uv.new_timer()
  guard:start(60000, 0, function() error("timed out") end)
  local idle_h = uv.new_idle()
  idle_h:start(function()
    if coroutine.status(co) == "dead" then
      idle_h:stop()
      idle_h:close()
      guard:close()
      uv.stop()
    end
  end)
  uv.run()
  assert(evicted == 1 and got.a and not err.a, tostring(err.a))
  same(got.a[1], expect[1], V, path .. ": batched prompt")
  same(got.a[2], expect[2], V, path .. ": batched chunk after evicting an idle sequence")
  assert(not got.b and tostring(err.b):match("KV pool exhausted"), tostring(err.b))
  a:free()
  b:free()
  idle:free()
  shard:free()
  print("ok: batcher: " .. path)
end

local dir = tiny:match("^(.*)/[^/]*$") or "."
check(tiny)
check((tiny:gsub("%.gguf$", "-q4_k.gguf")))
check(dir .. "/tiny-gemma3.gguf")
check_batcher(tiny)
print("ok: kv pool")
