-- test_engine.lua: forward passes and loads on the engine thread, completions on the loop.
--
-- Submits work to the engine, watches its eventfd with a luv poll handle on
-- the host's loop, drains completions, and checks the results equal the
-- synchronous path. The loop thread never computes; it only waits on the fd.
-- Then the same through exo.node's runner, from coroutines: loads that
-- coroutines ask for at once under one key run once, and a bad file's load
-- fails with the synchronous path's message.
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

-- Loads through the engine: the drain hands the loaded object over.
local chat = tiny:gsub("%.gguf$", "-chat.gguf")
assert(native.submit_load_shard(tiny, { start = 0, stop = 2 }, 201))
assert(native.submit_load_shard("/nonexistent/x.gguf", nil, 202))
assert(native.submit_load_tokenizer(chat, 203))
assert(not pcall(native.submit_load_shard, 42, nil, 204), "misuse raises")
local loads = {}
poll = uv.new_poll(fd)
poll:start("r", function()
  native.engine_drain(function(id, ok, err, loaded) loads[id] = { ok = ok, err = err, loaded = loaded } end)
  if loads[201] and loads[202] and loads[203] then
    poll:stop()
    poll:close()
  end
end)
uv.run()
local half = loads[201].loaded
assert(loads[201].ok and half.layer_start == 0 and half.layer_end == 2 and not half.is_last and half.path == tiny)
local _, sync_err, sync_code = native.load_shard("/nonexistent/x.gguf")
assert(loads[202].ok == false and loads[202].loaded == nil and loads[202].err == sync_err and sync_code == "EIO",
  tostring(loads[202].err))
local tok = assert(loads[203].loaded)
assert(tok.n_vocab == assert(native.load_tokenizer(chat)).n_vocab and tok:decode(tok:encode("hello")) == "hello")

-- exo.node's runner: coroutines wait while the engine loads; one load per key.
local node = require("exo.node").new()
local runner = node.runner
local submitted, submit = 0, native.submit_load_shard
native.submit_load_shard = function(...)
  submitted = submitted + 1
  return submit(...)
end
local got, finished = {}, 0
for i = 1, 3 do
  local co = coroutine.create(function()
    got[i] = { runner:once("whole", runner.load_shard, runner, tiny) }
    finished = finished + 1
  end)
  assert(coroutine.resume(co))
end
local bad
assert(coroutine.resume(coroutine.create(function()
  bad = { runner:load_shard("/nonexistent/x.gguf") }
  finished = finished + 1
end)))
timer = uv.new_timer()
timer:start(10, 10, function()
  if finished == 4 then
    timer:close()
    runner:close()
  end
end)
uv.run()
native.submit_load_shard = submit
assert(submitted == 2, "three coroutines asking at once should share one load, not " .. submitted - 1)
assert(got[1][1] and got[1][1].n_layer == 4 and got[2][1] == got[1][1] and got[3][1] == got[1][1])
assert(bad[1] == nil and bad[2] == sync_err, tostring(bad[2]))
print("engine ok")
