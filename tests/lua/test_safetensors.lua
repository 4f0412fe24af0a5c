-- test_safetensors.lua: Hugging Face model folders give what their GGUF gives.
--
-- exo-gguf-to-safetensors writes a folder (config.json, *.safetensors,
-- tokenizer.json, tokenizer_config.json) from a tiny GGUF's weights; exo then
-- loads the folder through native/safetensors.c and must produce:
--   * the same logits, to the bit, when the weights keep their bytes (F32;
--     BF16 matrices; shard files with an index; three layer shards chained):
--     the Q/K rows went to HF's order and back, names and hyper-parameters
--     through config.json;
--   * the same logits within float rounding when the llama folder is declared
--     qwen2: those weights in HF's order under the half-rotation rope are the
--     same model, so this checks the reordering against the engine's other
--     rope rather than against its own inverse (with the rows in the other
--     order it is off by whole units);
--   * close logits with BF16 norms (rounded weights);
--   * with --quantize q8_0 / q4_0 / q4_k, the logits of the GGUF quantized
--     from the same values, and one copy of the quantized weights (the
--     memory file keeps none once the shard is loaded);
--   * the same token ids as the GGUF tokenizer on a set of strings, the same
--     special ids, template and vocabulary (the default model's vocabulary:
--     skipped without it);
--   * clear errors, not crashes, for damaged folders.
local native = require "exo.native"
local tiny = assert(os.getenv("EXO_TINY_MODEL"), "EXO_TINY_MODEL is not set (ctest sets it)")
local build = tiny:match("^(.*)/[^/]*$")
local export = build .. "/exo-gguf-to-safetensors"
local make = build .. "/exo-make-tiny-model"
local work = build .. "/safetensors-test"
package.path = assert(os.getenv("EXO_SOURCE_DIR")) .. "/tests/lua/?.lua;" .. package.path
local files = require "reference_files"
local checker = files.checker()
local check = checker.check

local function run(cmd) files.run(cmd, work .. "/cmd.log") end

local function exists(p)
  local f = p and io.open(p, "rb")
  if f then f:close() end
  return f ~= nil
end

os.execute("rm -rf '" .. work .. "' && mkdir -p '" .. work .. "'")

-- Every position's logits of a fixed token sequence, as a Lua array.
local IDS = { 1, 17, 5, 99, 3, 250, 42, 7, 64, 128, 2, 31 }
local function logits_of(path)
  local shard, err = native.load_shard(path)
  assert(shard, err)
  local seq = assert(shard:new_seq(#IDS + 4))
  local p = assert(shard:forward(seq, IDS, nil, true))
  local nv = shard.n_vocab
  local out = { n_vocab = nv }
  for i = 0, #IDS * nv - 1 do out[i + 1] = p[i] end
  seq:free()
  shard:free()
  return out
end

local function compare(name, want, got, tol)
  if not check(#want == #got and want.n_vocab == got.n_vocab, "%s: %d logits (vocab %s), want %d (vocab %s)", name,
      #got, tostring(got.n_vocab), #want, tostring(want.n_vocab)) then
    return
  end
  local worst, scale = 0, 1
  for i = 1, #want do
    scale = math.max(scale, math.abs(want[i]))
    worst = math.max(worst, math.abs(want[i] - got[i]))
  end
  check(worst <= tol * scale, "%s: logits differ by %.3g (largest %.3g, tolerance %.3g)", name, worst, scale, tol * scale)
  print(string.format("%-34s max |diff| %.3g (largest logit %.3g)", name, worst, scale))
end

-- The weights: a llama with grouped KV heads (the K reordering per KV head)
-- and an untied head, in F32 and in BF16; a Qwen 2 (biases) and a Qwen 3
-- (Q/K norms) as their own layouts.
run(string.format("%s %s/llama-f32.gguf --type f32 --embd-type f32 --tied 0 --layers 3", make, work))
run(string.format("%s %s/llama-bf16.gguf --type bf16 --embd-type bf16 --tied 0 --layers 2 --seed 3", make, work))
run(string.format("%s %s/qwen2.gguf --arch qwen2 --type f32 --embd-type f32 --tied 0 --layers 2", make, work))
run(string.format("%s %s/qwen3.gguf --arch qwen3 --type f32 --embd-type f32 --head-dim 64 --layers 2", make, work))

local llama = logits_of(work .. "/llama-f32.gguf")
run(string.format("%s %s/llama-f32.gguf %s/llama-f32", export, work, work))
compare("llama f32", llama, logits_of(work .. "/llama-f32"), 0)
-- A .safetensors file path names its folder too.
compare("llama f32 (file path)", llama, logits_of(work .. "/llama-f32/model.safetensors"), 0)

-- The logits of one layer shard per folder of dirs (layer i - 1 from
-- dirs[i]) in a chain. Each shard is freed here, not left to the collector:
-- the q8_0 check below finds its memory file among the process's mappings.
local function chained(dirs)
  local x, n, p, held = IDS, #IDS, nil, {}
  for layer = 0, #dirs - 1 do
    local shard = assert(native.load_shard(dirs[layer + 1], { start = layer, stop = layer + 1 }))
    local seq = assert(shard:new_seq(n + 4))
    p = assert(shard:forward(seq, x, n, true))
    x, held[#held + 1] = p, { shard, seq }
  end
  local got = { n_vocab = held[#held][1].n_vocab }
  for i = 0, n * got.n_vocab - 1 do got[i + 1] = p[i] end
  for _, h in ipairs(held) do
    h[2]:free()
    h[1]:free()
  end
  return got
end

-- Three shards of the folder in a chain give the whole model's logits:
-- each converts only its own layers, the middle one has no head and its
-- embedding is a shape over a hole, the last one no embedding data.
local f32_dir = work .. "/llama-f32"
compare("llama f32, three shards chained", llama, chained { f32_dir, f32_dir, f32_dir }, 0)

-- The metadata view lists the GGUF's tensors (names, types, shapes, sizes)
-- without making their data.
do
  local fa, fb = assert(native.open_file(work .. "/llama-f32.gguf")), assert(native.open_file(work .. "/llama-f32"))
  local want, got = {}, {}
  for _, t in ipairs(assert(fa:tensors())) do want[t.name] = t.dtype .. table.concat(t.shape, "x") .. ":" .. t.bytes end
  for _, t in ipairs(assert(fb:tensors())) do got[t.name] = t.dtype .. table.concat(t.shape, "x") .. ":" .. t.bytes end
  local n = 0
  for name, v in pairs(want) do
    n = n + 1
    check(got[name] == v, "tensor %s: %s from the folder, %s from the GGUF", name, tostring(got[name]), v)
  end
  for name in pairs(got) do check(want[name], "tensor %s only in the folder", name) end
  check(n > 10, "%d tensors", n)
  fa:close()
  fb:close()
end

run(string.format("%s %s/llama-f32.gguf %s/llama-as-qwen2 --as qwen2", export, work, work))
-- Summation order differs between the two ropes' layouts: 1e-4 of the
-- largest logit here; the GGUF's row order under the halves rope is off by
-- 1.7 (checked by hand).
compare("llama weights as qwen2", llama, logits_of(work .. "/llama-as-qwen2"), 1e-3)

run(string.format("%s %s/llama-f32.gguf %s/llama-bf16-norms --vector-dtype bf16 --dtype f16", export, work, work))
compare("llama f16 matrices, bf16 norms", llama, logits_of(work .. "/llama-bf16-norms"), 0.05)

local bf16 = logits_of(work .. "/llama-bf16.gguf")
run(string.format("%s %s/llama-bf16.gguf %s/llama-bf16 --dtype bf16 --shards 3", export, work, work))
check(exists(work .. "/llama-bf16/model.safetensors.index.json") and
  exists(work .. "/llama-bf16/model-00003-of-00003.safetensors"), "three shards and an index were written")
compare("llama bf16, 3 shards", bf16, logits_of(work .. "/llama-bf16"), 0)

-- A folder that holds some layers' weight files only (a ring member fetched
-- its range): the last range opens from it, shard, info view and tokenizer,
-- and gives the logits it gives from the whole folder; a range whose file is
-- missing is an error naming that file. Layers 0-1 come from the whole folder.
do
  local cjson = require "cjson"
  local whole, part = work .. "/llama-split", work .. "/llama-last"
  run(string.format("%s %s/llama-f32.gguf %s --shards 6", export, work, whole))
  local fh = assert(io.open(whole .. "/model.safetensors.index.json", "rb"))
  local map = cjson.decode(fh:read("*a")).weight_map
  fh:close()
  local keep, all, first_file = {}, {}, map["model.embed_tokens.weight"]
  for name, file in pairs(map) do
    all[file] = true
    if name:match("^model%.layers%.2%.") or name == "model.norm.weight" or name == "lm_head.weight" then
      keep[file] = true
    end
  end
  check(not keep[first_file], "the embedding's file %s also holds the last range's tensors: the test needs more shards",
    first_file)
  os.execute(string.format("rm -rf '%s' && mkdir -p '%s' && cp '%s'/*.json '%s'/", part, part, whole, part))
  local n_kept, n_all = 0, 0
  for file in pairs(all) do
    n_all = n_all + 1
    if keep[file] then
      n_kept = n_kept + 1
      os.execute(string.format("cp '%s/%s' '%s/'", whole, file, part))
    end
  end
  check(n_kept < n_all, "the last range keeps %d of %d weight files", n_kept, n_all)
  local got = chained { whole, whole, part }
  local n_vocab = got.n_vocab
  compare("last range from a partial folder", llama, got, 0)
  -- The text side the last node loads: the info view lists the layers the
  -- folder holds (and the embedding's shape), the tokenizer needs no weights.
  local f, ferr = native.open_file(part)
  if check(f, "info view of the partial folder: %s", tostring(ferr)) then
    local names = {}
    for _, t in ipairs(assert(f:tensors())) do names[t.name] = t.shape end
    check(names["blk.2.attn_q.weight"] and names["output.weight"] and not names["blk.0.attn_q.weight"] and
      names["token_embd.weight"] and names["token_embd.weight"][2] == n_vocab,
      "info view lists layer 2, the head and the embedding's shape, not layer 0")
    f:close()
  end
  -- (This tiny folder's tokenizer.json has no vocabulary: the partial
  -- folder answers as the whole one does.)
  local function answer(dir)
    local tok, err = native.load_tokenizer(dir)
    if not tok then return (err:gsub(dir:gsub("%p", "%%%0"), "DIR")) end
    tok:free()
    return tok.n_vocab
  end
  check(answer(part) == answer(whole), "tokenizer of the partial folder: %s, of the whole: %s", answer(part),
    answer(whole))
  -- A range that reads an absent file: the error names the file, a tensor
  -- of the range that it holds, and the range.
  for _, range in ipairs { { 0, 1 }, { 0, 3 }, { 1, 2 } } do
    local shard, err = native.load_shard(part, { start = range[1], stop = range[2] })
    if shard then shard:free() end
    local file, tensor = tostring(err):match("/([^/]+%.safetensors) is missing: it holds '([^']+)'")
    local layer = tonumber(tensor and tensor:match("^model%.layers%.(%d+)%.") or "")
    check(not shard and file and not keep[file] and map[tensor] == file and
      (tensor == "model.embed_tokens.weight" and range[1] == 0 or layer and layer >= range[1] and layer < range[2]) and
      err:find(("layers %d-%d"):format(range[1], range[2]), 1, true),
      "layers %d-%d from the partial folder: want an error naming an absent file, got %s", range[1], range[2],
      tostring(err))
  end
end

-- --quantize: the folder's F32 matrices quantized at load are the bytes
-- exo-make-tiny-model writes when it quantizes the same values itself (same
-- seed), so the logits are those of that GGUF, bit for bit; the Q/K rows are
-- reordered before quantizing.
for _, qt in ipairs { "q8_0", "q4_0", "q4_k" } do
  run(string.format("%s %s/llama-%s.gguf --type %s --embd-type %s --tied 0 --layers 3", make, work, qt, qt, qt))
  assert(native.set_safetensors_quantize(qt))
  local got = logits_of(work .. "/llama-f32")
  assert(native.set_safetensors_quantize(nil))
  compare("llama f32 folder --quantize " .. qt, logits_of(work .. "/llama-" .. qt .. ".gguf"), got, 0)
end
-- A quantized shard keeps one copy of its weights. Each tensor of the memory
-- file the folder became is copied into the process's own pages and punched
-- out of the file, so the backend's release after packing frees memory (a
-- memory file's pages dropped from a mapping would stay in the file): once
-- loaded, the file holds its header and no tensor bytes, where it used to
-- hold the whole quantized shard.
do
  assert(native.set_safetensors_quantize("q8_0"))
  local shard = assert(native.load_shard(work .. "/llama-f32"))
  assert(native.set_safetensors_quantize(nil))
  local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
  local range
  for line in io.lines("/proc/self/maps") do
    range = range or (line:find("exo%-safetensors", 1) and line:match("^(%x+%-%x+)"))
  end
  check(range, "the shard's memory file is mapped")
  local f = range and io.popen(string.format("stat -L -c '%%b %%B %%s' /proc/%s/map_files/%s", pid, range))
  local blocks, unit, size = (f and f:read("*a") or ""):match("(%d+) (%d+) (%d+)")
  if f then f:close() end
  local held, data = tonumber(blocks or 0) * tonumber(unit or 0), 0
  assert(native.set_safetensors_quantize("q8_0"))
  for _, t in ipairs(assert(native.open_file(work .. "/llama-f32")):tensors()) do data = data + t.bytes end
  assert(native.set_safetensors_quantize(nil))
  check(size and data > 0 and held < tonumber(size) - data / 2, "after a q8_0 load the memory file holds %d of its "
    .. "%s bytes (%d of them tensors)", held, tostring(size), data)
  shard:free()
end
local ok, qerr = native.set_safetensors_quantize("q3_x")
check(not ok and qerr:find("q8_0, q4_0, q4_k"), "an unknown quantize type is an error: %s", tostring(qerr))

for _, arch in ipairs { "qwen2", "qwen3" } do
  run(string.format("%s %s/%s.gguf %s/%s", export, work, arch, work, arch))
  compare(arch .. " f32", logits_of(work .. "/" .. arch .. ".gguf"), logits_of(work .. "/" .. arch), 0)
end

-- The metadata view: the folder reads like its GGUF.
do
  local f = assert(native.open_file(work .. "/qwen2"))
  check(f:get("general.architecture") == "qwen2", "architecture %s", tostring(f:get("general.architecture")))
  check(f:get("qwen2.block_count") == 2, "block_count %s", tostring(f:get("qwen2.block_count")))
  f:close()
end

-- Damaged folders: clear errors naming the problem.
local function expect_error(name, path, pattern)
  local shard, err = native.load_shard(path)
  if shard then shard:free() end
  check(not shard and err and err:find(pattern), "%s: want an error matching '%s', got %s", name, pattern, tostring(err))
end
local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end
local function le64(n)
  local s = {}
  for i = 1, 8 do
    s[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(s)
end
local bad = work .. "/bad"
os.execute("mkdir -p " .. bad .. " && cp " .. work .. "/llama-f32/config.json " .. bad .. "/")
write(bad .. "/model.safetensors", le64(2 ^ 40) .. "{}")
expect_error("huge header length", bad, "header of")
local hdr = '{"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}'
write(bad .. "/model.safetensors", le64(#hdr) .. hdr .. string.rep("\0", 16))
expect_error("offsets past the data", bad, "outside")
hdr = '{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [4], ' ..
  '"data_offsets": [8, 24]}}'
write(bad .. "/model.safetensors", le64(#hdr) .. hdr .. string.rep("\0", 24))
expect_error("overlapping tensors", bad, "overlap")
hdr = '{"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16],}}'
write(bad .. "/model.safetensors", le64(#hdr) .. hdr .. string.rep("\0", 16))
expect_error("trailing comma", bad, "expected a string key")
hdr = '{"model.norm.weight": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}'
write(bad .. "/model.safetensors", le64(#hdr) .. hdr .. string.rep("\0", 16))
expect_error("integer weights", bad, "I64")
os.remove(bad .. "/model.safetensors")
expect_error("no weights", bad, "model.safetensors")
os.remove(bad .. "/config.json")
expect_error("folder without config.json", bad, "without config.json")
write(bad .. "/config.json", '{"model_type": "gpt_neox", "num_hidden_layers": 2}')
expect_error("unsupported architecture", bad, "gpt_neox")

-- SentencePiece-style tokenizer.json, written by hand: a byte-fallback BPE
-- whose ids are worked out here, then damaged forms, each a clear error.
do
  local spm = work .. "/spm"
  os.execute("mkdir -p " .. spm .. " && cp " .. work .. "/llama-f32/config.json " .. spm .. "/")
  local function tokenizer_json(normalizer, model, pre)
    write(spm .. "/tokenizer.json", string.format('{"added_tokens": [{"id": 1, "content": "<s>", "special": true}, ' ..
      '{"id": 2, "content": "</s>", "special": true}], "normalizer": %s, "pre_tokenizer": %s, "model": %s}',
      normalizer, pre or "null", model))
    return native.load_tokenizer(spm)
  end
  local prepend = '{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, ' ..
    '{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}'
  local bpe = '{"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "vocab": {"<unk>": 0, "<s>": 1, ' ..
    '"</s>": 2, "▁": 3, "a": 4, "b": 5, "▁a": 6, "ab": 7, "▁ab": 8, "<0x41>": 9}, "merges": %s}'
  local tok, err = tokenizer_json(prepend, bpe:format('["▁ a", ["a", "b"], "▁a b"]'))
  if check(tok, "hand-written SentencePiece tokenizer.json: %s", tostring(err)) then
    local function ids(text) return table.concat(tok:encode(text, { special = true, add_bos = false }), ",") end
    -- "ab ab" -> "▁ab▁ab": both words merge through "▁a" then "▁ab"; "A"
    -- has only its byte token; "c" has neither, so it is the unknown token.
    check(ids("ab ab") == "8,8" and ids("A") == "3,9" and ids("c") == "3,0" and ids("<s>ba") == "1,3,5,4",
      "encodes: %s | %s | %s | %s", ids("ab ab"), ids("A"), ids("c"), ids("<s>ba"))
    check(tok.model == "llama" and tok.bos == 1 and tok:token_type(9) == 6 and tok:token_type(0) == 2 and
      tok:decode(tok:encode("ab ab A", { add_bos = false })) == "ab ab A", "model %s, bos %s, types %s %s", tok.model,
      tostring(tok.bos), tostring(tok:token_type(9)), tostring(tok:token_type(0)))
    tok:free()
  end
  local function refused(name, pattern, normalizer, model, pre)
    local t, e = tokenizer_json(normalizer, model, pre)
    if t then t:free() end
    check(not t and e and e:find(pattern), "%s: want an error matching '%s', got %s", name, pattern, tostring(e))
  end
  local ok_bpe = bpe:format('["▁ a"]')
  -- A split at spaces the normalizer already replaced is accepted (it splits nothing); before a Metaspace
  -- (spaces still there) it is not.
  local split = '{"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}'
  tok, err = tokenizer_json(prepend, ok_bpe, split)
  check(tok and table.concat(tok:encode("a a", { add_bos = false }), ",") == "6,6", "Split at spaces: %s",
    tostring(tok and table.concat(tok:encode("a a", { add_bos = false }), ",") or err))
  if tok then tok:free() end
  refused("Split at spaces before a Metaspace", "not one exo knows", "null", ok_bpe,
    '{"type": "Sequence", "pretokenizers": [' .. split .. ', {"type": "Metaspace", "replacement": "▁"}]}')
  refused("NFKC normalizer", "not one exo knows", '{"type": "NFKC"}', ok_bpe)
  refused("no space marker", "not one exo knows", "null", ok_bpe)
  refused("unknown prepend_scheme", "not one exo knows", "null", ok_bpe,
    '{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "sometimes"}')
  refused("merge that is a number", "neither", prepend, bpe:format("[7]"))
  refused("Unigram entry without a score", "not %[piece, score%]", prepend,
    '{"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a"]]}')
  refused("Unigram score as text", "not %[piece, score%]", prepend,
    '{"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", "0"]]}')
  refused("WordPiece", "BPE and Unigram are", prepend, '{"type": "WordPiece", "vocab": {}}')
end

-- The tokenizer: tokenizer.json + tokenizer_config.json against the GGUF's
-- own vocabulary, on the default model's (SmolLM2: digits + byte level).
local default = os.getenv("EXO_DEFAULT_MODEL")
local sources = {}
if default and exists(default) then sources[#sources + 1] = default end
-- More vocabularies when given (Llama 3's and Qwen 2's splits), as
-- EXO_TOKENIZER_GGUFS="a.gguf:b.gguf".
for p in (os.getenv("EXO_TOKENIZER_GGUFS") or ""):gmatch("[^:]+") do sources[#sources + 1] = p end
local texts = {
  "Hello, world!", "  leading spaces and trailing  ", "numbers 1234567 and 3.14159", "can't won't I'm you'll",
  "unicode: naïve café, 日本語のテキスト, emoji 🙂🚀", "tabs\tand\nnewlines\r\n\n", "<|im_start|>user\nhi<|im_end|>",
  "code: for (int i = 0; i < 10; i++) { x += i; }", "", " ", "ÀÉÎÕÜ ßẞ ǅ", "mixed123abc456 ___ ---",
}
for k, src in ipairs(sources) do
  local dir = string.format("%s/tok%d", work, k)
  run(string.format("%s %s %s/tok%d.gguf --tokenizer-from %s --tied 1 --layers 1 --type f16", make, src, work, k, src))
  run(string.format("%s %s/tok%d.gguf %s", export, work, k, dir))
  local a = assert(native.load_tokenizer(src))
  local b, err = native.load_tokenizer(dir)
  if check(b, "%s: tokenizer from tokenizer.json: %s", src, tostring(err)) then
    for _, field in ipairs { "n_vocab", "bos", "eos", "eot", "add_bos", "pre" } do
      check(a[field] == b[field], "%s: %s is %s from tokenizer.json, %s from the GGUF", src, field, tostring(b[field]),
        tostring(a[field]))
    end
    for _, t in ipairs(texts) do
      for _, special in ipairs { true, false } do
        local x = a:encode(t, { special = special })
        local y = b:encode(t, { special = special })
        check(table.concat(x, ",") == table.concat(y, ","), "%s: %q encodes as %s, want %s", src, t,
          table.concat(y, ","), table.concat(x, ","))
      end
    end
    b:free()
    local fa, fb = assert(native.open_file(src)), assert(native.open_file(dir))
    for _, key in ipairs { "tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
      "tokenizer.ggml.pre" } do
      check(fa:get(key) == fb:get(key), "%s: %s differs", src, key)
    end
    fa:close()
    fb:close()
    print(string.format("tokenizer.json of %s: %d strings agree", src:match("[^/]*$"), #texts))
  end
  a:free()
end
if #sources == 0 then print("SKIPPED (tokenizer part): default model not installed") end

checker.done()
os.execute("rm -rf '" .. work .. "'")
print("ok")
