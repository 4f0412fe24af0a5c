-- test_arch_reference.lua: every architecture against llama.cpp on the same files.
--
-- tests/fixtures/llama_cpp/tiny holds, for each tiny model the build writes
-- (tiny-<arch>.gguf: same writer, same seed, so the same bytes every build;
-- each in another of the formats Q2_K, Q3_K, Q5_0, Q5_1, IQ4_NL, IQ4_XS),
-- a token sequence and llama.cpp's top-10 logits at every position of it,
-- teacher-forced (README.md there says how they were made). exo runs the same
-- sequence in one batch and must agree at every position: the same top
-- token unless llama.cpp's top two are a near-tie, and each of llama.cpp's
-- top-10 logits within a small tolerance. A wrong rope style, norm, bias,
-- window or activation moves logits by whole units on many positions
-- (checked: Gemma without its sliding window, Qwen 2 without its K bias, Phi 3
-- with gate and up swapped, without its rope attention factor or with its
-- short rope factors where the context calls for the long ones, Llama
-- without its rope_freqs factors each fail here; Gemma's local rope base does
-- not show at these short distances: the real Gemma file's long prompt
-- checks it).
--
-- The tolerance: both engines quantize activations to 8 bits before integer
-- dots (a step is 1/127 of a row's largest value) and keep an f16 KV cache,
-- but round at different places (llama.cpp's flash attention rounds queries
-- to f16, its GELU goes through an f16 table), so a logit may differ by a
-- few quantization steps: 0.15 plus 1.5% of the largest of llama.cpp's
-- top-10 logits at that position (these random models' untied heads give
-- logits of 1 to 3, tied ones of 100 and more; the Q2_K model's coarse rows
-- amplify the noise most, up to 0.11 on logits near 2.5). A top token counts
-- as a near-tie within 0.15 plus 1% of that logit. With F32 weights the same
-- models agree within 0.1%.
local native = require "exo.native"
local source = assert(os.getenv("EXO_SOURCE_DIR"))
local tiny = assert(os.getenv("EXO_TINY_MODEL"), "EXO_TINY_MODEL is not set (ctest sets it)")
local fixtures = source .. "/tests/fixtures/llama_cpp/tiny/"
package.path = source .. "/tests/lua/?.lua;" .. package.path
local files = require "reference_files"
local checker = files.checker()
local check = checker.check
local FLOOR, TOLERANCE, TIE = 0.15, 0.015, 0.01

local archs = { "llama", "qwen2", "qwen3", "gemma3", "phi3" }
for _, arch in ipairs(archs) do
  local path = tiny:gsub("%.gguf$", "-" .. arch .. ".gguf")
  local ids = files.ids(fixtures .. arch .. ".ids")
  local want = files.topk(fixtures .. arch .. ".topk")
  check(#want == #ids, "%s: %d reference rows for %d tokens", arch, #want, #ids)

  local shard = assert(native.load_shard(path))
  local seq = assert(shard:new_seq(#ids + 4))
  local logits = assert(shard:forward(seq, ids, nil, true))
  local nv = shard.n_vocab
  local worst, top_agree = 0, 0
  for p = 1, #ids do
    local row = logits + (p - 1) * nv
    local ref = want[p]
    local scale = 1
    for _, e in ipairs(ref) do scale = math.max(scale, math.abs(e[2])) end
    for _, e in ipairs(ref) do
      local d = math.abs(row[e[1]] - e[2])
      if d / scale > worst then worst = d / scale end
      check(d <= FLOOR + TOLERANCE * scale, "%s position %d token %d: exo %.4f, llama.cpp %.4f", arch, p - 1, e[1], row[e[1]], e[2])
    end
    local top = native.argmax(row, nv)
    if top == ref[1][1] then
      top_agree = top_agree + 1
    else
      check(ref[1][2] - ref[2][2] <= FLOOR + TIE * scale, "%s position %d: exo's top token %d, llama.cpp's %d (margin %.4f)",
        arch, p - 1, top, ref[1][1], ref[1][2] - ref[2][2])
    end
  end
  print(("%-7s %d positions: top token agrees at %d, largest top-10 logit difference %.2f%% of the row's scale"):format(
    arch, #ids, top_agree, 100 * worst))
  seq:free()
  shard:free()
end
checker.done()
print("architectures agree with llama.cpp")
