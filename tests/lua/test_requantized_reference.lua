-- test_requantized_reference.lua: the default model in the hub's other formats, against llama.cpp.
--
-- SmolLM2-135M-Instruct requantized by llama.cpp's llama-quantize to Q4_K_M,
-- Q5_0, Q5_1, Q2_K, Q3_K_M, IQ4_NL, IQ4_XS and Q8_0 (576-wide rows make the
-- K mixes fall back to Q5_0, Q4_0, IQ4_NL... for most matrices, so the files
-- hold nearly every format exo reads). The files are made outside the
-- repository (tests/fixtures/llama_cpp/smollm2-requantized/README.md says
-- how) and are never in CI: point EXO_REQUANTIZED at their folder to run
-- this; without it the test reports itself skipped. The fixtures hold
-- llama.cpp's ids, greedy continuation and teacher-forced top-10 logits for
-- "The capital of France is"; exo must put the same token on top at
-- every position except near-ties (margin <= 0.5) and give llama.cpp's top-10
-- the same gaps below the top one (mean <= 0.4, worst <= 2.5, as for Gemma:
-- test_gemma_reference.lua explains both bounds).
local native = require "exo.native"
local source = assert(os.getenv("EXO_SOURCE_DIR"))
package.path = source .. "/tests/lua/?.lua;" .. package.path
local files = require "reference_files"
local dir = os.getenv("EXO_REQUANTIZED")
if not dir or dir == "" then
  print("SKIPPED test_requantized_reference: EXO_REQUANTIZED is not set (the llama-quantize variants of the "
    .. "default model are made outside the repository)")
  os.exit(77)
end
local fixtures = source .. "/tests/fixtures/llama_cpp/smollm2-requantized/"
local TIE, MEAN_GAP, MAX_GAP = 0.5, 0.4, 2.5
local checker = files.checker()
local check = checker.check

for _, kind in ipairs { "Q4_K_M", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "IQ4_NL", "IQ4_XS", "Q8_0" } do
  local path = dir .. "/smollm2-135m-" .. kind .. ".gguf"
  local ids = files.ids(fixtures .. kind .. ".ids")
  for _, t in ipairs(files.ids(fixtures .. kind .. ".greedy")) do ids[#ids + 1] = t end
  local rows = files.topk(fixtures .. kind .. ".topk")
  check(#rows == #ids, "%s: %d reference rows for %d positions", kind, #rows, #ids)
  local shard, err = native.load_shard(path)
  check(shard ~= nil, "%s: %s", kind, tostring(err))
  if shard then
    local seq = assert(shard:new_seq(#ids + 4))
    local logits = assert(shard:forward(seq, ids, nil, true))
    local nv = shard.n_vocab
    local tally = files.gap_tally(native.argmax, check, TIE)
    for p = 1, #ids do
      tally.add(logits + (p - 1) * nv, rows[p], nv, ("%s position %d"):format(kind, p - 1))
    end
    check(tally.mean() <= MEAN_GAP and tally.worst <= MAX_GAP, "%s: gaps differ by %.3f on average, %.3f at worst",
      kind, tally.mean(), tally.worst)
    print(("%-7s %3d positions: top token agrees at %3d, gaps to the top differ by %.3f on average, %.3f at worst")
      :format(kind, #ids, tally.agree, tally.mean(), tally.worst))
    seq:free()
    shard:free()
  end
end
checker.done()
print("the requantized default model agrees with llama.cpp")
