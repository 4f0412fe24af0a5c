-- test_gguf_split.lua: a split GGUF model gives what the single file gives.
--
-- exo-gguf-split writes the tiny models in llama.cpp's gguf-split format
-- (PREFIX-00001-of-0000N.gguf ...; the format's own checks are in
-- tests/test_gguf_split.c). Loaded from part 1 or from any other part, whole
-- or as two layer shards in a chain, the model must give the unsplit file's
-- logits to the bit; the metadata view (exo show's) must list every tensor;
-- a missing part must be a clear error naming it, not a crash; the store
-- (models.lua) counts a split model as there only when every part is.
local native = require "exo.native"
local tiny = assert(os.getenv("EXO_TINY_MODEL"), "EXO_TINY_MODEL is not set (ctest sets it)")
local build = tiny:match("^(.*)/[^/]*$")
local split = build .. "/exo-gguf-split"
local work = build .. "/gguf-split-test"
package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local files = require "reference_files"
local checker = files.checker()
local check = checker.check

local function run(cmd) files.run(cmd, work .. "/cmd.log") end

os.execute("rm -rf '" .. work .. "' && mkdir -p '" .. work .. "'")

-- Every position's logits of a fixed token sequence through shards covering
-- ranges ({ {start, stop}, ... }, or the whole model), as a Lua array.
local IDS = { 1, 17, 5, 99, 3, 250, 42, 7, 64, 128, 2, 31 }
local function logits_of(path, ranges)
  local x, p, last = IDS, nil, nil
  local keep = {}
  for _, r in ipairs(ranges or { {} }) do
    local shard = assert(native.load_shard(path, r[1] and { start = r[1], stop = r[2] } or nil))
    local seq = assert(shard:new_seq(#IDS + 4))
    p = assert(shard:forward(seq, x, #IDS, true))
    keep[#keep + 1] = { shard, seq } -- p lives in the shard's buffers
    x, last = p, shard
  end
  local out = { n_vocab = last.n_vocab }
  for i = 0, #IDS * last.n_vocab - 1 do out[i + 1] = p[i] end
  for _, k in ipairs(keep) do
    k[2]:free()
    k[1]:free()
  end
  return out
end

local function same(name, want, got)
  if not check(#want == #got and #want > 0, "%s: %d logits, want %d", name, #got, #want) then return end
  for i = 1, #want do
    if want[i] ~= got[i] then
      return check(false, "%s: logit %d is %.9g, want %.9g", name, i, got[i], want[i])
    end
  end
  print(("%-44s %d logits identical"):format(name, #want))
end

for _, case in ipairs {
  { model = tiny, parts = 3 },
  { model = tiny, parts = 2, flags = " --no-tensor-first" },
  { model = build .. "/tiny-q4_0.gguf", parts = 4 },
} do
  local base = case.model:match("([^/]*)%.gguf$")
  local prefix = ("%s/%s-%d%s"):format(work, base, case.parts, case.flags and "-nf" or "")
  run(("%s %s %s --parts %d%s"):format(split, case.model, prefix, case.parts, case.flags or ""))
  local function part(i) return ("%s-%05d-of-%05d.gguf"):format(prefix, i, case.parts) end
  local label = ("%s in %d parts%s"):format(base, case.parts, case.flags or "")
  local want = logits_of(case.model)
  same(label .. ", from part 1", want, logits_of(part(1)))
  same(label .. ", from the last part", want, logits_of(part(case.parts)))
  local whole = assert(native.load_shard(case.model))
  local n = whole.n_layer
  whole:free()
  local mid = math.floor(n / 2)
  same(label .. ", two shards", want, logits_of(part(1), { { 0, mid }, { mid, n } }))

  local f = assert(native.open_file(part(2)))
  local g = assert(native.open_file(case.model))
  check(#f:tensors() == #g:tensors(), "%s: the metadata view lists %d tensors, want %d", label, #f:tensors(),
    #g:tensors())
end

-- A missing part: an error naming it, from the loader and the metadata view.
local prefix = work .. "/gone"
run(("%s %s %s --parts 3"):format(split, tiny, prefix))
os.remove(prefix .. "-00002-of-00003.gguf")
local shard, err = native.load_shard(prefix .. "-00001-of-00003.gguf")
check(shard == nil and tostring(err):find("part 2 of 3", 1, true) and err:find("gone-00002-of-00003.gguf", 1, true),
  "missing part: %s", tostring(err))
local f, ferr = native.open_file(prefix .. "-00003-of-00003.gguf")
check(f == nil and tostring(ferr):find("missing", 1, true), "missing part (metadata view): %s", tostring(ferr))
print("missing part: " .. tostring(err))

-- The store: a split model is there only when every part is.
local models = require "exo.models"
local parts = models.split_parts("/s/M-Q4_K_M-00002-of-00003.gguf")
check(#parts == 3 and parts[1] == "/s/M-Q4_K_M-00001-of-00003.gguf" and parts[3] == "/s/M-Q4_K_M-00003-of-00003.gguf",
  "split_parts: %s", table.concat(parts, " "))
check(#models.split_parts("/s/M.gguf") == 1, "split_parts of a single file")
local store = work .. "/store"
os.execute("mkdir -p '" .. store .. "'")
local function touch(i)
  local f = io.open(("%s/M-Q4_K_M-%05d-of-00003.gguf"):format(store, i), "wb")
  f:write("x") -- models.lua takes an empty file for none
  f:close()
end
touch(1)
touch(3)
local spec = { dir = store, quant = "Q4_K_M" }
check(models.local_file(spec) == nil, "a split model missing part 2 counts as downloaded")
touch(2)
check(models.local_file(spec) == "M-Q4_K_M-00001-of-00003.gguf", "the store's split model: %s",
  tostring(models.local_file(spec)))

os.execute("rm -rf '" .. work .. "'")
checker.done()
print("ok")
