-- compare_reference.lua: our greedy tokens and logits against a reference run.
--
-- A developer tool (not a test: the reference, llama.cpp, is built outside
-- the repository). Given token ids of a prompt, the reference's greedy
-- continuation and its last-position logits (raw float32), it runs the same
-- prompt through exo and reports: how many greedy tokens match, the
-- normalised error of the logits, whether the top tokens agree, and the
-- greedy agreement both free-running and teacher-forced.
--
--   build/exo lua tools/compare_reference.lua MODEL IDS GREEDY LOGITS
--   IDS: comma-separated prompt ids; GREEDY: space-separated ids
local ffi = require "ffi"
local native = require "exo.native"

local model, ids_path, greedy_path, logits_path = ...
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local prompt = {}
for id in read(ids_path):gmatch("%d+") do prompt[#prompt + 1] = tonumber(id) end
local want = {}
for id in read(greedy_path):gmatch("%d+") do want[#want + 1] = tonumber(id) end

local shard = assert(native.load_shard(model))
local seq = assert(shard:new_seq(#prompt + #want + 8))
local logits = assert(shard:forward(seq, prompt))

local raw = read(logits_path)
local nv = shard.n_vocab
assert(#raw == nv * 4, "reference logits have " .. #raw / 4 .. " entries, vocab is " .. nv)
local ref = ffi.cast("const float*", raw)
local num, den = 0, 0
for i = 0, nv - 1 do
  num = num + (logits[i] - ref[i]) ^ 2
  den = den + ref[i] ^ 2
end
local ours_top, ref_top = native.argmax(logits, nv), native.argmax(ref, nv)

-- Free-running: our own greedy continuation, compared token by token.
local got, matched = {}, 0
local tok = ours_top
local start_pos = seq:pos()
for i = 1, #want do
  got[i] = tok
  if matched == i - 1 and tok == want[i] then matched = i end
  logits = assert(shard:forward(seq, { tok }))
  tok = native.argmax(logits, nv)
end
-- Teacher-forced: feed the reference's tokens and count the steps where our
-- argmax is theirs; at a mismatch, the logit gap tells a near-tie from a bug.
assert(seq:truncate(start_pos - 1))
logits = assert(shard:forward(seq, { prompt[#prompt] }))
local forced, gaps = 0, {}
for i = 1, #want do
  local top = native.argmax(logits, nv)
  if top == want[i] then
    forced = forced + 1
  else
    gaps[#gaps + 1] = ("step %d: %.3f"):format(i, logits[top] - logits[want[i]])
  end
  logits = assert(shard:forward(seq, { want[i] }))
end
print(("prompt %d tokens; logits nmse %.3g; top-1 ours %d ref %d; greedy run equal for %d/%d; teacher-forced %d/%d%s"):format(
  #prompt, num / den, ours_top, ref_top, matched, #want, forced, #want,
  #gaps > 0 and " (logit gaps at mismatches: " .. table.concat(gaps, ", ") .. ")" or ""))
return matched == #want and 0 or 1
