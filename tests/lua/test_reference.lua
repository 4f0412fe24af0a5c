-- test_reference.lua: exo against llama.cpp on the real default model.
--
-- tests/fixtures/llama_cpp holds llama.cpp's token ids and greedy
-- continuations for four prompts. Feeding llama.cpp's tokens (teacher
-- forcing), exo's argmax must equal llama.cpp's at nearly every step, and
-- wherever it differs the two top logits must be a near-tie: llama.cpp itself
-- flips such ties when only its KV-cache precision changes (docs/numerics.md).
-- A wrong position, rope or norm moves the argmax on most steps, by margins of
-- whole logits.
local native = require "exo.native"
local source = assert(os.getenv("EXO_SOURCE_DIR"))
local model_path = os.getenv("EXO_DEFAULT_MODEL")
local f = model_path and io.open(model_path, "rb")
if not f then
  -- scripts/test installs the default model first, so this only happens when
  -- ctest runs by hand on a machine without it.
  error("default model not installed at " .. tostring(model_path) .. ": run scripts/setup")
end
f:close()

package.path = source .. "/tests/lua/?.lua;" .. package.path
local files = require "reference_files"

local shard = assert(native.load_shard(model_path))
local total, agreed = 0, 0
for _, name in ipairs { "a", "b", "c", "d" } do
  local dir = source .. "/tests/fixtures/llama_cpp/"
  local prompt = files.ids(dir .. name .. ".ids")
  local want = files.ids(dir .. name .. ".greedy64")
  local seq = assert(shard:new_seq(#prompt + #want + 4))
  local logits = assert(shard:forward(seq, prompt))
  local same, worst_gap = 0, 0
  for i = 1, #want do
    local top = native.argmax(logits, shard.n_vocab)
    if top == want[i] then
      same = same + 1
    else
      local gap = logits[top] - logits[want[i]]
      worst_gap = math.max(worst_gap, gap)
    end
    logits = assert(shard:forward(seq, { want[i] }))
  end
  print(("%s: %d prompt tokens, teacher-forced agreement %d/%d, largest gap at a mismatch %.3f"):format(
    name, #prompt, same, #want, worst_gap))
  assert(same >= #want - 4, name .. ": too many disagreements with llama.cpp")
  assert(worst_gap < 0.5, name .. ": a disagreement that is not a near-tie")
  total, agreed = total + #want, agreed + same
  seq:free()
end
print(("overall %d/%d"):format(agreed, total))
