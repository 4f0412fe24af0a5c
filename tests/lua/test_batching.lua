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
local native = require "exo.native"
local tiny = assert(os.getenv("EXO_TINY_MODEL"))

local function ints(t) return ffi.new("int32_t[?]", #t, t) end

-- A deterministic token stream per sequence.
local function prompt_of(k, n, vocab)
  local t = {}
  for i = 1, n do t[i] = (k * 131 + i * 17) % vocab end
  return t
end

local function same(a, b, n, what)
  for j = 0, n - 1 do
    if a[j] ~= b[j] then error(("%s: value %d: %.9g vs %.9g"):format(what, j, a[j], b[j]), 2) end
  end
end

-- The solo run: prompt in one forward, then each decode token alone; the
-- logits after the prompt and after every decode token.
local function solo(shard, prompt, decode)
  local seq = assert(shard:new_seq(512))
  local out = {}
  local buf = shard:output_buffer(1, false)
  assert(shard:forward(seq, ints(prompt), #prompt, false, buf))
  out[0] = ffi.new("float[?]", shard.n_vocab)
  ffi.copy(out[0], buf, shard.n_vocab * 4)
  for i, t in ipairs(decode) do
    assert(shard:forward(seq, ints({ t }), 1, false, buf))
    out[i] = ffi.new("float[?]", shard.n_vocab)
    ffi.copy(out[i], buf, shard.n_vocab * 4)
  end
  seq:free()
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

