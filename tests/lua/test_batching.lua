-- test_batching.lua: several sequences in one forward pass (continuous batching).
--
-- exo_shard_forward_batch runs the rows of several sequences through shared
-- passes; each sequence's logits must be bitwise those of running it alone
-- (batch invariance), whatever else shares its passes: decode steps of
-- others, a prompt chunk, a sequence that joins or leaves between passes.
-- Then the batcher (exo.batcher) through exo.node's runner: coroutines that
-- each generate on their own get exactly their solo outputs, a prompt longer
-- than a chunk is split, and a bad token fails only its own request.
-- Runs on the tiny model and a K-quant one (CMakeLists runs it again on the
-- AVX2 and scalar kernels).
local ffi = require "ffi"
io.stdout:setvbuf("no")
local native = require "exo.native"
local tiny = assert(os.getenv("EXO_TINY_MODEL"))
package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local checks = require "seq_checks"
local ints, prompt_of, same = checks.ints, checks.tokens, checks.same

-- The solo run: prompt in one forward, then each decode token alone; the
-- logits after the prompt ([0]) and after every decode token.
local function solo(shard, prompt, decode)
  local seq = assert(shard:new_seq(512))
  local chunks = { prompt }
  for i, t in ipairs(decode) do chunks[i + 1] = { t } end
  local got, out = checks.run(shard, seq, chunks), {}
  seq:free()
  for i = 1, #got do out[i - 1] = got[i] end
  return out
end

local function check_model(path)
  local shard = assert(native.load_shard(path))
  local V = shard.n_vocab
  -- Sequence k: a prompt of a different length each (one longer than a
  -- pass of max_batch rows), joining at step join[k], then decode tokens.
  local lens = { 3, 7, 1, shard.max_batch + 5, 12 }
  local join = { 0, 0, 1, 2, 3 }
  local steps = 6
  local prompts, decodes, expect = {}, {}, {}
  for k = 1, #lens do
    prompts[k] = prompt_of(k, lens[k], V)
    decodes[k] = prompt_of(k + 50, steps, V)
    expect[k] = solo(shard, prompts[k], decodes[k])
  end

  local batch = native.new_batch(#lens)
  local seqs, fed, outs, inputs = {}, {}, {}, {}
  for k = 1, #lens do outs[k] = ffi.new("float[?]", V) end
  for step = 0, steps + 3 do
    batch:clear()
    local members = {}
    for k = 1, #lens do
      if step == join[k] then
        seqs[k] = assert(shard:new_seq(512))
        inputs[k] = ints(prompts[k])
        fed[k] = 0
        batch:add(seqs[k], inputs[k], lens[k], 1, outs[k])
        members[#members + 1] = k
      elseif seqs[k] and fed[k] < steps then
        fed[k] = fed[k] + 1
        inputs[k] = ints({ decodes[k][fed[k]] })
        batch:add(seqs[k], inputs[k], 1, 1, outs[k])
        members[#members + 1] = k
      end
    end
    if batch.n > 0 then
      assert(shard:forward_batch(batch))
      for _, k in ipairs(members) do
        same(outs[k], expect[k][fed[k]], V, ("%s: seq %d after step %d"):format(path, k, fed[k]))
      end
    end
    -- Sequence 2 leaves after its fourth token; the others go on.
    if seqs[2] and fed[2] == 4 then
      seqs[2]:free()
      seqs[2] = nil
    end
  end

  -- Every row's logits of a chunk (a speculative verify), beside a decode step.
  do
    local a, b = assert(shard:new_seq(64)), assert(shard:new_seq(64))
    local pa, pb = prompt_of(7, 5, V), prompt_of(8, 4, V)
    local ea = assert(shard:forward(assert(shard:new_seq(64)), ints(pa), 5, true))
    local eb = solo(shard, { pb[1], pb[2], pb[3] }, { pb[4] })
    assert(shard:forward(b, ints({ pb[1], pb[2], pb[3] }), 3, false))
    local oa, ob = ffi.new("float[?]", 5 * V), ffi.new("float[?]", V)
    batch:clear()
    local ia, ib = ints(pa), ints({ pb[4] })
    batch:add(b, ib, 1, 1, ob)
    batch:add(a, ia, 5, 5, oa)
    assert(shard:forward_batch(batch))
    same(oa, ea, 5 * V, "all logits of a chunk")
    same(ob, eb[1], V, "a decode step beside it")
    a:free()
    b:free()
  end

  -- Bad calls are clear errors and move no sequence.
  do
    local a, b = assert(shard:new_seq(8)), assert(shard:new_seq(8))
    local one, o = ints({ 1 }), ffi.new("float[?]", V)
    batch:clear()
    batch:add(a, one, 1, 1, o)
    batch:add(a, one, 1, 1, o)
    local ok, err = shard:forward_batch(batch)
    assert(not ok and err:match("appears twice"), tostring(err))
    batch:clear()
    batch:add(a, one, 1, 1, o)
    batch:add(b, ints({ 99999 }), 1, 1, o)
    ok, err = shard:forward_batch(batch)
    assert(not ok and a:pos() == 0 and b:pos() == 0, "a failed batch leaves every sequence where it was")
    batch:clear()
    batch:add(a, ints(prompt_of(1, 9, V)), 9, 1, o)
    ok, err = shard:forward_batch(batch)
    assert(not ok and err:match("context full"), tostring(err))
    batch:clear()
    batch:add(a, one, 1, 2, o)
    ok, err = shard:forward_batch(batch)
    assert(not ok and err:match("logits of 2 rows of 1"), tostring(err))
    local other = assert(native.load_shard(path))
    local c = assert(other:new_seq(8))
    batch:clear()
    batch:add(a, one, 1, 1, o)
    batch:add(c, one, 1, 1, o)
    ok, err = shard:forward_batch(batch)
    assert(not ok and err:match("another shard"), tostring(err))
    assert(not pcall(batch.add, batch, a, one, 0, 1, o), "a row count of 0 is misuse")
    a:free()
    b:free()
    c:free()
    other:free()
  end
  shard:free()
end

check_model(tiny)
check_model((tiny:gsub("%.gguf$", "-q4_k.gguf")))
print("ok: multi-sequence passes")


-- ---- the batcher, through exo.node's runner --------------------------------------

local uv = require "luv"
local node = require("exo.node").new { chunk = 16 }
local runner = node.runner

-- Greedy generation of `steps` tokens after prompt on seq, through runner
-- (the batcher, yielding) or the blocking path; returns the token list.
local function greedy(shard, seq, prompt, steps, run)
  local out = shard:output_buffer(1, false)
  local buf = ints(prompt)
  local ok, err = run(shard, seq, buf, #prompt, out)
  if not ok then return nil, err end
  local toks = {}
  for i = 1, steps do
    toks[i] = native.argmax(out, shard.n_vocab)
    buf[0] = toks[i]
    ok, err = run(shard, seq, buf, 1, out)
    if not ok then return nil, err end
  end
  return toks
end
local function sync_run(shard, seq, buf, n, out) return shard:forward(seq, buf, n, false, out) end
local function batched_run(shard, seq, buf, n, out) return runner:forward(shard, seq, buf, n, out) end

for _, path in ipairs { tiny, (tiny:gsub("%.gguf$", "-q4_k.gguf")) } do
  local shard = assert(native.load_shard(path))
  local V = shard.n_vocab
  -- Prompts of 1 to 40 tokens (40: three chunks of 16), one joining late,
  -- and one whose prompt holds a bad token id: it fails alone.
  local lens = { 5, 40, 1, 9, 23 }
  local expect, got, errs = {}, {}, {}
  for k, n in ipairs(lens) do
    local seq = assert(shard:new_seq(128))
    expect[k] = assert(greedy(shard, seq, prompt_of(k, n, V), 8, sync_run))
    seq:free()
  end
  local finished = 0
  local function client(k, prompt, delay)
    local co = coroutine.create(function()
      local seq = assert(shard:new_seq(128))
      got[k], errs[k] = greedy(shard, seq, prompt, 8, batched_run)
      seq:free()
      finished = finished + 1
    end)
    local t = uv.new_timer()
    t:start(delay, 0, function()
      t:close()
      assert(coroutine.resume(co))
    end)
  end
  for k, n in ipairs(lens) do client(k, prompt_of(k, n, V), k == 4 and 30 or 0) end
  local bad = prompt_of(9, 6, V)
  bad[3] = V + 7
  client(#lens + 1, bad, 0)
  local guard = uv.new_timer()
  guard:start(60000, 0, function() error("timed out waiting for the batched clients") end)
  local idle = uv.new_idle()
  idle:start(function()
    if finished == #lens + 1 then
      idle:stop()
      idle:close()
      guard:close()
      uv.stop() -- the runner's poll handle stays open for the next model
    end
  end)
  uv.run()
  for k = 1, #lens do
    assert(got[k], ("%s: client %d failed: %s"):format(path, k, tostring(errs[k])))
    for i = 1, 8 do
      assert(got[k][i] == expect[k][i], ("%s: client %d token %d: %d vs %d solo"):format(path, k, i, got[k][i],
        expect[k][i]))
    end
  end
  assert(not got[#lens + 1] and tostring(errs[#lens + 1]):match("token"), tostring(errs[#lens + 1]))
  local b = runner:batcher(shard)
  -- Shared passes happened: fewer passes than the requests' forward calls.
  assert(b.passes < #lens * 9, ("%d passes for %d forward calls"):format(b.passes, #lens * 9))
  print(("ok: %s: %d clients, %d passes, %d rows"):format(path, #lens, b.passes, b.rows))
  shard:free()
end
node:close()
