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
--     nothing to evict the request fails alone;
--   * shared prefixes (Seq:share_prefix): a sequence starting from another's
--     first n positions (n on a block boundary and inside a block) gets
--     bitwise the results of computing those n tokens itself, while the
--     source goes on decoding with its solo results; a truncation of either
--     inside a shared block copies it (the other's results unchanged);
--     kv_info counts a shared block once; freeing both returns every block;
--     a share or a truncation that needs a block of a full pool fails
--     cleanly, changing nothing;
--   * the node's admission (Node:acquire) starts a request from a running
--     session's prefix and counts only the blocks it really takes, and its
--     eviction takes first the idle sessions that free something;
--   * preemption: through Node:generate on a pool of four blocks, two
--     requests whose answers together outgrow it (each alone fits) both
--     finish; the later one is preempted (its blocks go to the other),
--     readmitted when the first ends, recomputes prompt and answer so far,
--     and its tokens (greedy, and seeded with penalties and logprobs) equal
--     its solo run's; with preemption turned off the same run fails one of
--     them with "KV pool exhausted" (so the check can fail); a request alone
--     that outgrows the pool preempts nobody and gets that error.
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

-- Runs the loop until done() says so (two minutes at most).
local function loop_until(done)
  local uv = require "luv"
  local guard = uv.new_timer()
  guard:start(120000, 0, function() error("timed out") end)
  local idle_h = uv.new_idle()
  idle_h:start(function()
    if done() then
      idle_h:stop()
      idle_h:close()
      guard:close()
      uv.stop()
    end
  end)
  uv.run()
end

-- Through the batcher (exo.node's runner, as the server runs passes): a
-- running sequence that needs a block when the pool is full asks
-- on_exhausted, which here evicts an idle sequence, and goes on with its solo
-- results; with nothing left to evict it fails alone, clearly.
local function check_batcher(path)
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
  loop_until(function() return coroutine.status(co) == "dead" end)
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

-- The first n ids of list.
local function head(list, n)
  local t = {}
  for i = 1, n do t[i] = list[i] end
  return t
end

-- B starts from A's first n positions (exo_seq_share_prefix) while A goes on.
local function check_share_at(path, n)
  local shard = assert(native.load_shard(path))
  local V, what = shard.n_vocab, ("%s: share %d"):format(path, n)
  assert(shard:set_kv_tokens(8 * 64))
  local P = tokens(11, 150, V) -- A's prompt: blocks 0 and 1 full, 22 positions in block 2
  local Q = tokens(12, 20, V)  -- B's own tokens after the shared prefix
  local ea = solo(path, { P, { 5 }, { 6 }, { 7 }, { 8 } })
  -- B's solo run computes the n tokens itself (as one chunk: a position's
  -- keys and values do not depend on the chunk that computed it).
  local eb = solo(path, { head(P, n), Q, { 9 }, { 10 }, { 13 } })
  local a, b = assert(shard:new_seq(512)), assert(shard:new_seq(512))
  same(run(shard, a, { P })[1], ea[1], V, what .. ": A's prompt")
  local full, part = math.floor(n / 64), n % 64 > 0 and 1 or 0
  assert(b:share_prefix(a, n))
  assert(b:pos() == n and a:pos() == 150)
  local info = shard:kv_info()
  assert(info.shared == full and info.free == 8 - 3 - part,
    ("%s: %d shared, %d free"):format(what, info.shared, info.free))
  assert(a:kv_need(0, 0) == -(3 - full), what .. ": freeing A gives back only the blocks it alone holds")
  -- Interleaved: B's next tokens and decode steps, A's decode steps.
  same(run(shard, b, { Q })[1], eb[2], V, what .. ": B's first logits after the shared prefix")
  same(run(shard, a, { { 5 } })[1], ea[2], V, what .. ": A's decode step beside B")
  same(run(shard, b, { { 9 } })[1], eb[3], V, what .. ": B's decode step")
  same(run(shard, a, { { 6 } })[1], ea[3], V, what .. ": A's next decode step")
  same(run(shard, b, { { 10 } })[1], eb[4], V, what .. ": B's next decode step")
  assert(shard:kv_info().shared == full)

  -- A moves back inside a shared block (n = 128: block 1): it takes a
  -- private copy, and B's results do not change.
  local cut = full >= 2 and 70 or nil
  if cut then
    local free, need = shard:kv_info().free, a:kv_need(cut, cut)
    assert(need == 0, what .. ": A's copy takes a block, its third comes back")
    assert(a:truncate(cut))
    info = shard:kv_info()
    assert(info.shared == 1 and info.free == free, ("%s: %d shared, %d free"):format(what, info.shared, info.free))
    same(run(shard, a, { { 7 } })[1], solo(path, { head(P, cut), { 7 } })[2], V, what .. ": A after copy on write")
  else
    same(run(shard, a, { { 7 } })[1], ea[4], V, what .. ": A's decode step")
  end
  same(run(shard, b, { { 13 } })[1], eb[5], V, what .. ": B's decode step after A's")
  -- B moves back inside block 0 (shared when n >= 64): its copy leaves A unchanged.
  local free, need = shard:kv_info().free, b:kv_need(30, 30)
  assert(b:truncate(30))
  assert(shard:kv_info().shared == 0 and shard:kv_info().free == free - need, what .. ": B's truncation")
  -- n = 128: block 0 copied, blocks 1 (B's alone since A's copy) and 2 come back.
  assert(n ~= 128 or need == -1, what .. ": B copies block 0")
  same(run(shard, b, { { 14 } })[1], solo(path, { head(P, 30), { 14 } })[2], V, what .. ": B after copy on write")
  if cut then
    same(run(shard, a, { { 8 } })[1], solo(path, { head(P, cut), { 7 }, { 8 } })[3], V, what .. ": A after B's copy")
  else
    same(run(shard, a, { { 8 } })[1], ea[5], V, what .. ": A after B's copy")
  end
  -- Freeing A then B returns every block.
  a:free()
  assert(shard:kv_info().free < 8)
  b:free()
  info = shard:kv_info()
  assert(info.free == 8 and info.shared == 0 and info.sequences == 0, what .. ": every block back")
  shard:free()
end

-- A share or a copy on write that needs a block of a full pool fails with
-- "KV pool exhausted" and changes nothing; misuse is refused clearly.
local function check_share_exhausted(path)
  local shard = assert(native.load_shard(path))
  local V = shard.n_vocab
  assert(shard:set_kv_tokens(3 * 64))
  local a, b = assert(shard:new_seq(512)), assert(shard:new_seq(512))
  run(shard, a, { tokens(13, 150, V) }) -- every block
  local ok, err, code = b:share_prefix(a, 100) -- the positions 64-99 need a block of their own
  assert(not ok and code == "EBUSY" and err:match("KV pool exhausted"), tostring(err))
  local info = shard:kv_info()
  assert(b:pos() == 0 and info.free == 0 and info.shared == 0, "a failed share changes nothing")
  assert(b:share_prefix(a, 128)) -- whole blocks only: nothing to copy
  assert(b:pos() == 128 and shard:kv_info().shared == 2)
  ok, err = b:truncate(100) -- inside a shared block: a copy, and no block is free
  assert(not ok and err:match("KV pool exhausted"), tostring(err))
  ok, err = a:truncate(100)
  assert(not ok and err:match("KV pool exhausted"), tostring(err))
  assert(a:pos() == 150 and b:pos() == 128 and shard:kv_info().shared == 2, "a failed truncation changes nothing")
  assert(b:kv_need(100, 100) == 1 and a:kv_need(128, 128) == -1)
  assert(a:truncate(128)) -- gives back A's third block
  assert(b:truncate(100)) -- which the copy takes
  info = shard:kv_info()
  assert(info.free == 0 and info.shared == 1)
  ok, err, code = b:share_prefix(a, 64)
  assert(not ok and code == "ESTATE", tostring(err))
  local c = assert(shard:new_seq(512))
  ok, err, code = c:share_prefix(a, 129)
  assert(not ok and code == "ERANGE", tostring(err))
  local other = assert(native.load_shard(path))
  local d = assert(other:new_seq(512))
  ok, err, code = d:share_prefix(a, 64)
  assert(not ok and code == "EINVAL", tostring(err))
  assert(not pcall(c.share_prefix, c, {}, 1), "a non-sequence is a programming error")
  d:free()
  other:free()
  a:free()
  b:free()
  c:free()
  info = shard:kv_info()
  assert(info.free == 3 and info.shared == 0)
  shard:free()
end

-- Node:acquire on a pool of four blocks: B's prompt of 180 tokens shares
-- A's first 128 while A runs, so it needs one block (three without the
-- share) and is admitted beside A. The sessions prefill with the blocking
-- runner (acquire itself only waits when it queues, which max_queue 0 forbids).
local function check_node_share(path)
  local generate = require "exo.generate"
  local node = require("exo.node").new { max_sessions = 3, max_queue = 0, n_ctx = 512 }
  local shard = assert(native.load_shard(path))
  local V = shard.n_vocab
  assert(shard:set_kv_tokens(4 * 64))
  local entry = require("exo.node").new_entry { shard = shard }
  local P = tokens(21, 150, V)
  local pb = head(P, 128)
  for i, t in ipairs(tokens(22, 52, V)) do pb[128 + i] = t end
  local a = assert(node:acquire(entry, P))
  a.runner = generate.sync_runner
  assert(a:prefill(P) == 150 and shard:kv_info().free == 1)
  local b = assert(node:acquire(entry, pb))
  b.runner = generate.sync_runner
  assert(#b.cached == 128 and shard:kv_info().shared == 2, "B starts from running A's prefix")
  assert(b:prefill(pb) == 52, "B computes only what A's prefix lacks")
  local want = solo(path, { head(pb, 128), { unpack(pb, 129) } })
  same(b.logits, want[2], V, path .. ": B's prompt after a shared prefix, through Node:acquire")
  assert(shard:kv_info().free == 0)
  -- C shares nothing and needs a block: none is free, nothing idle to evict.
  local c, err, status = node:acquire(entry, tokens(23, 10, V))
  assert(not c and status == 503 and err:match("KV pool exhausted"), tostring(err))
  -- A ends and stays idle: of its three blocks, evicting it frees only the one B does not hold.
  node:release(entry, a, true)
  assert(a.seq:kv_need(0, 0) == -1)
  assert(node:evict_idle(entry) and a.seq:pos() == 0 and shard:kv_info().free == 1)
  c = assert(node:acquire(entry, tokens(23, 10, V)), "C fits in the block A gave back")
  -- B and C (which computed nothing) end: evicting B, whose blocks are all its own now, returns every block.
  node:release(entry, b, true)
  node:release(entry, c, true)
  assert(node:evict_idle(entry) and not node:evict_idle(entry))
  assert(shard:kv_info().free == 4 and shard:kv_info().shared == 0)
  -- Eviction takes an idle session that frees something first: X (least
  -- recently used) holds only blocks running R holds too, Y a block of its own.
  local r, x, y = assert(node:acquire(entry, head(P, 128))), nil, nil
  r.runner = generate.sync_runner
  assert(r:prefill(head(P, 128)))
  x = assert(node:acquire(entry, head(P, 129)))
  y = assert(node:acquire(entry, tokens(24, 30, V)))
  y.runner = generate.sync_runner
  assert(y:prefill(tokens(24, 30, V)))
  assert(#x.cached == 128 and x.seq:kv_need(0, 0) == 0 and y.seq:kv_need(0, 0) == -1)
  node:release(entry, x, true)
  node:release(entry, y, true)
  assert(node:evict_idle(entry) and y.seq:pos() == 0 and x.seq:pos() == 128, "Y goes first")
  assert(node:evict_idle(entry) and x.seq:pos() == 0 and not node:evict_idle(entry), "then X")
  node:release(entry, r, false)
  assert(shard:kv_info().free == 4)
  node:close() -- frees the idle sessions and closes the runner's poll of the engine (check_batcher makes its own)
  require("luv").run("nowait")
  shard:free()
  print("ok: node admission with shared prefixes: " .. path)
end

-- Runs the requests at once on a fresh node (opts: exo.node's); returns
-- their results, errors and the node's serving stats. disable_preemption:
-- the node keeps today's behaviour without preemption (a negative control).
local function serve(opts, reqs, disable_preemption)
  local uv = require "luv"
  require("exo.models").allow_paths = true
  local node = require("exo.node").new(opts)
  if disable_preemption then node.preempt = function() return false end end
  local res, errs, left = {}, {}, #reqs
  for k, req in ipairs(reqs) do
    assert(coroutine.resume(coroutine.create(function()
      res[k], errs[k] = node:generate(req)
      left = left - 1
    end)))
  end
  loop_until(function() return left == 0 end)
  local stats = node:serving_stats()
  node:close()
  uv.run("nowait")
  return res, errs, stats
end

-- Two requests of about 35 prompt tokens and 150 answer tokens each: three
-- blocks each at the end, six together, on a pool of four.
local function check_preemption(path)
  local opts = { max_sessions = 2, n_ctx = 512, kv_tokens = 4 * 64 }
  local reqs = {
    { model = path, prompt = "Once upon a time there was a cat who lived by the river", max_tokens = 150,
      temperature = 0 },
    { model = path, prompt = "The library opens at nine and closes at seven on weekdays", max_tokens = 150,
      temperature = 0.8, seed = 7, repeat_penalty = 1.1, logprobs = true, top_logprobs = 2 },
  }
  local solo_res = {}
  for k, req in ipairs(reqs) do
    local r, e, stats = serve({ max_sessions = 1, n_ctx = 512, kv_tokens = 4 * 64 }, { req })
    assert(r[1] and r[1].n_generated == 150, tostring(e[1]))
    assert(stats[1].preemptions == 0)
    solo_res[k] = r[1]
  end
  local r, e, stats = serve(opts, reqs)
  assert(stats[1].preemptions >= 1, "the pool ran full: a running request was preempted")
  assert(stats[1].running == 0 and stats[1].waiting == 0)
  for k = 1, 2 do
    assert(r[k], ("request %d: %s"):format(k, tostring(e[k])))
    assert(table.concat(r[k].tokens, ",") == table.concat(solo_res[k].tokens, ","),
      ("%s: request %d's tokens differ from its solo run's after preemption"):format(path, k))
    assert(r[k].text == solo_res[k].text)
  end
  for i, lp in ipairs(solo_res[2].logprobs) do
    local got = r[2].logprobs[i]
    assert(got.token == lp.token and got.logprob == lp.logprob and got.top_logprobs[2].logprob ==
      lp.top_logprobs[2].logprob, "logprobs after preemption")
  end
  -- Without preemption one of them meets the full pool and fails.
  r, e = serve(opts, reqs, true)
  assert(not (r[1] and r[2]) and tostring(e[1] or e[2]):match("KV pool exhausted"), tostring(e[1] or e[2]))
  -- A request alone whose answer outgrows the pool (two blocks) has no one to preempt: the clear error.
  r, e, stats = serve({ max_sessions = 2, n_ctx = 512, kv_tokens = 2 * 64 }, { reqs[1] })
  assert(not r[1] and tostring(e[1]):match("KV pool exhausted: position 128 needs a block"), tostring(e[1]))
  assert(stats[1].preemptions == 0)
  print("ok: preemption: " .. path)
end

local function check_share(path)
  check_share_at(path, 128) -- on a block boundary
  check_share_at(path, 100) -- inside a block
  check_share_at(path, 40)  -- inside the first block: nothing shared, one block copied
  check_share_exhausted(path)
  print("ok: shared prefixes: " .. path)
end

local dir = tiny:match("^(.*)/[^/]*$") or "."
check(tiny)
check((tiny:gsub("%.gguf$", "-q4_k.gguf")))
check(dir .. "/tiny-gemma3.gguf")
check_node_share(tiny)
check_preemption(dir .. "/tiny-chat.gguf") -- before check_batcher, whose runner keeps the engine's poll
check_batcher(tiny)
check_share(tiny)
check_share((tiny:gsub("%.gguf$", "-q4_k.gguf")))
check_share(dir .. "/tiny-gemma3.gguf")
print("ok: kv pool")
