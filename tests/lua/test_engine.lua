-- test_engine.lua: forward passes on the engine thread, completions on the loop.
--
-- Submits work to the engine, watches its eventfd with a luv poll handle on
-- the host's loop, drains completions, and checks the results equal the
-- synchronous path. The loop thread never computes; it only waits on the fd.
local ffi = require "ffi"
local uv = require "luv"
local native = require "exo.native"
local tiny = assert(os.getenv("EXO_TINY_MODEL"))

local shard = assert(native.load_shard(tiny))
local sync_seq = assert(shard:new_seq(64))
local async_seqs = { assert(shard:new_seq(64)), assert(shard:new_seq(64)) }
local prompt = ffi.new("int32_t[5]", { 5, 6, 7, 8, 9 })
local expect = assert(shard:forward(sync_seq, prompt, 5, false))

local outs, done = {}, {}
for i, seq in ipairs(async_seqs) do
  outs[i] = shard:output_buffer(5, false)
  assert(shard:submit(seq, prompt, nil, 5, false, outs[i], 100 + i))
end
-- A failing job reports its error through the queue too.
local bad = ffi.new("int32_t[1]", { 99999 })
local bad_seq = assert(shard:new_seq(8))
local bad_out = shard:output_buffer(1, false)
assert(shard:submit(bad_seq, bad, nil, 1, false, bad_out, 7))

local fd = native.engine_fd()
assert(fd >= 0)
local poll = uv.new_poll(fd)
local timer = uv.new_timer()
timer:start(10000, 0, function() error("timed out waiting for engine completions") end)
poll:start("r", function()
  native.engine_drain(function(id, ok, err) done[id] = { ok = ok, err = err } end)
  if done[101] and done[102] and done[7] then
    poll:stop()
    poll:close()
    timer:close()
  end
end)
uv.run()

for i = 1, 2 do
  assert(done[100 + i].ok, done[100 + i].err)
  for j = 0, shard.n_vocab - 1 do
    assert(outs[i][j] == expect[j], ("job %d logit %d: %g vs %g"):format(i, j, outs[i][j], expect[j]))
  end
  assert(async_seqs[i]:pos() == 5)
end
assert(done[7].ok == false and done[7].err:match("^ERANGE"), tostring(done[7].err))
print("engine ok")
