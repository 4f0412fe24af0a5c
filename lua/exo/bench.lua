-- bench.lua: `exo bench`: prompt-processing and generation speed of a model.
--
-- Reports medians over repetitions of pp (a batch of P prompt tokens) and tg
-- (N tokens decoded one at a time), peak RSS, the machine's memory bandwidth
-- (a STREAM-like copy, measured in the same run), and the decode roofline:
-- bandwidth / weight bytes read per token. roofline_frac = tg / roofline says
-- how close decoding runs to the memory limit.
local native = require "exo.native"
local models = require "exo.models"
local cjson = require "cjson"

local M = {}

local function median(xs)
  local s = {}
  for i, v in ipairs(xs) do s[i] = v end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end
M.median = median

-- Deterministic pseudo-random token ids (a tiny LCG) so runs are comparable.
local function tokens(n, n_vocab, seed)
  local ffi = require "ffi"
  local buf = ffi.new("int32_t[?]", n)
  local x = seed
  for i = 0, n - 1 do
    x = (x * 1103515245 + 12345) % 2147483648
    buf[i] = x % n_vocab
  end
  return buf
end

-- opts: model, p, n, r, threads, json. Returns a results table or nil, err.
function M.run(opts)
  local path, err = models.resolve(opts.model)
  if not path then return nil, err end
  if opts.threads and opts.threads > 0 then
    local ok, e = native.set_threads(opts.threads)
    if not ok then return nil, e end
  end
  local shard, lerr = native.load_shard(path)
  if not shard then return nil, lerr end
  local p, n, r = opts.p, opts.n, opts.r
  local seq, serr = shard:new_seq(p + n + 8)
  if not seq then return nil, serr end

  local prompt = tokens(math.max(p, 1), shard.n_vocab, 42)
  local out = shard:output_buffer(math.max(p, 1), false)
  -- Warm-up: touch the weights once so the first repetition is not a page-in.
  assert(shard:forward(seq, prompt, math.min(8, math.max(p, 1)), false, out))

  local pp, tg = {}, {}
  for _ = 1, r do
    if p > 0 then
      seq:truncate(0)
      local t0 = native.now()
      local ok, e = shard:forward(seq, prompt, p, false, out)
      if not ok then return nil, e end
      pp[#pp + 1] = p / (native.now() - t0)
    end
    if n > 0 then
      seq:truncate(0)
      local gen = tokens(n, shard.n_vocab, 7)
      local t0 = native.now()
      for i = 0, n - 1 do
        local ok, e = shard:forward(seq, gen + i, 1, false, out)
        if not ok then return nil, e end
      end
      tg[#tg + 1] = n / (native.now() - t0)
    end
  end
  -- Before the bandwidth test, whose buffers would count as the model's.
  local peak_rss = native.peak_rss_bytes()
  -- The best of many copies in two rounds: a virtual machine's bandwidth
  -- wanders, and the best figure gives the most conservative roofline fraction.
  local bw = math.max(native.mem_bandwidth_gbs(256 * 2 ^ 20, 10), native.mem_bandwidth_gbs(256 * 2 ^ 20, 10))
  local res = {
    model = opts.model,
    path = path,
    threads = native.threads(),
    cpu = native.cpu_features(),
    p = p, n = n, r = r,
    pp_tok_s = #pp > 0 and median(pp) or nil,
    tg_tok_s = #tg > 0 and median(tg) or nil,
    weight_mb_per_token = shard.weight_bytes / 2 ^ 20,
    mem_bw_gbs = bw,
    peak_rss_mb = peak_rss / 2 ^ 20,
  }
  res.roofline_tg_tok_s = bw * 1e9 / shard.weight_bytes
  if res.tg_tok_s then res.roofline_frac = res.tg_tok_s / res.roofline_tg_tok_s end
  seq:free()
  shard:free()
  return res
end

function M.print(res, as_json)
  local function f(v, fmt) return v and (fmt or "%.2f"):format(v) or "-" end
  print(("model           %s"):format(res.path))
  print(("threads         %d (%s)"):format(res.threads, res.cpu))
  print(("pp%-5d tok/s   %s   (median of %d)"):format(res.p, f(res.pp_tok_s), res.r))
  print(("tg%-5d tok/s   %s   (median of %d)"):format(res.n, f(res.tg_tok_s), res.r))
  print(("weights/token   %.1f MiB"):format(res.weight_mb_per_token))
  print(("memory bw       %.2f GB/s (copy)"):format(res.mem_bw_gbs))
  print(("roofline tg     %s tok/s, achieved %s of it"):format(f(res.roofline_tg_tok_s), f(res.roofline_frac, "%.3f")))
  print(("peak RSS        %.1f MiB"):format(res.peak_rss_mb))
  if as_json then print(cjson.encode(res)) end
end

return M
