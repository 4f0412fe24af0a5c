-- bench.lua: `exo bench`: prompt-processing and generation speed of a model.
--
-- Reports medians over repetitions of pp (a batch of P prompt tokens) and tg
-- (N tokens decoded one at a time, after a context of D tokens with -d D, as
-- llama-bench's -d: attention then reads D positions of KV cache), peak RSS, the machine's memory bandwidth
-- (a STREAM-like copy, measured in the same run), and the decode roofline:
-- bandwidth / weight bytes read per token. roofline_frac = tg / roofline says
-- how close decoding runs to the memory limit.
--
-- A virtual machine's bandwidth wanders (this project's VM: 28 to 55 GB/s of
-- copy from one minute to the next), so each repetition's decode is paired
-- with a bandwidth sample taken right after it, and roofline_frac is the
-- median of the repetitions' own fractions. roofline_frac_best_bw divides the
-- median tg by the roofline at the best bandwidth seen in the whole run: the
-- most conservative reading.
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

-- opts: model, p, n, r, threads, json, progress (called with a line as each step ends). Returns a
-- results table or nil, err.
function M.run(opts)
  if not (opts.r and opts.r >= 1) then return nil, "-r must be at least 1 (repetitions)" end
  if (opts.p or 0) < 0 or (opts.n or 0) < 0 or (opts.d or 0) < 0 then
    return nil, "-p, -n and -d must not be negative"
  end
  local path, err = models.resolve(opts.model)
  if not path then return nil, err end
  if opts.threads and opts.threads > 0 then
    local ok, e = native.set_threads(opts.threads)
    if not ok then return nil, e end
  end
  local progress = opts.progress or function() end
  local t_load = native.now()
  local shard, lerr = native.load_shard(path)
  if not shard then return nil, lerr end
  progress(("loaded %s in %.2f s; %d repetitions of pp %d, tg %d"):format(opts.model or path, native.now() - t_load,
    opts.r, opts.p or 0, opts.n or 0))
  local p, n, r, d = opts.p, opts.n, opts.r, opts.d or 0
  local seq, serr = shard:new_seq(math.max(p, d + n) + 8)
  if not seq then return nil, serr end

  local prompt = tokens(math.max(p, 1), shard.n_vocab, 42)
  local context = tokens(math.max(d, 1), shard.n_vocab, 11)
  local out = shard:output_buffer(math.max(p, d, 1), false)
  -- Warm-up: touch the weights once so the first repetition is not a page-in.
  assert(shard:forward(seq, prompt, math.min(8, math.max(p, 1)), false, out))

  local pp, tg, bws, fracs = {}, {}, {}, {}
  local peak_rss
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
      if d > 0 then -- the context, untimed
        local ok, e = shard:forward(seq, context, d, false, out)
        if not ok then return nil, e end
      end
      local gen = tokens(n, shard.n_vocab, 7)
      local t0 = native.now()
      for i = 0, n - 1 do
        local ok, e = shard:forward(seq, gen + i, 1, false, out)
        if not ok then return nil, e end
      end
      tg[#tg + 1] = n / (native.now() - t0)
    end
    -- Before the first bandwidth test, whose buffers would count as the model's.
    peak_rss = peak_rss or native.peak_rss_bytes()
    -- The best of a few copies, right after this repetition's decode.
    bws[#bws + 1] = native.mem_bandwidth_gbs(256 * 2 ^ 20, 3)
    if n > 0 then fracs[#fracs + 1] = tg[#tg] * shard.weight_bytes / (bws[#bws] * 1e9) end
    progress(("repetition %d of %d:%s%s"):format(#bws, r, #pp > 0 and (" pp %.1f tok/s"):format(pp[#pp]) or "",
      n > 0 and (" tg %.1f tok/s"):format(tg[#tg]) or ""))
  end
  local bw, best_bw = median(bws), math.max(unpack(bws))
  local res = {
    model = opts.model,
    path = path,
    threads = native.threads(),
    cpu = native.cpu_features(),
    p = p, n = n, r = r, d = d,
    pp_tok_s = #pp > 0 and median(pp) or nil,
    tg_tok_s = #tg > 0 and median(tg) or nil,
    weight_mb_per_token = shard.weight_bytes / 2 ^ 20,
    mem_bw_gbs = bw,
    mem_bw_best_gbs = best_bw,
    peak_rss_mb = peak_rss / 2 ^ 20,
  }
  res.roofline_tg_tok_s = bw * 1e9 / shard.weight_bytes
  if res.tg_tok_s then
    res.roofline_frac = median(fracs)
    res.roofline_frac_best_bw = res.tg_tok_s * shard.weight_bytes / (best_bw * 1e9)
  end
  seq:free()
  shard:free()
  return res
end

function M.print(res, as_json)
  local function f(v, fmt) return v and (fmt or "%.2f"):format(v) or "-" end
  print(("model           %s"):format(res.path))
  print(("threads         %d (%s)"):format(res.threads, res.cpu))
  print(("pp%-5d tok/s   %s   (median of %d)"):format(res.p, f(res.pp_tok_s), res.r))
  local after = res.d > 0 and (" after %d tokens of context"):format(res.d) or ""
  print(("tg%-5d tok/s   %s   (median of %d%s)"):format(res.n, f(res.tg_tok_s), res.r, after))
  print(("weights/token   %.1f MiB"):format(res.weight_mb_per_token))
  print(("memory bw       %.2f GB/s (copy, median of %d; best %.2f)"):format(res.mem_bw_gbs, res.r,
    res.mem_bw_best_gbs))
  print(("roofline tg     %s tok/s at the median bandwidth"):format(f(res.roofline_tg_tok_s)))
  print(("roofline frac   %s (median of each repetition's tg / its roofline; %s against the best bandwidth)"):format(
    f(res.roofline_frac, "%.3f"), f(res.roofline_frac_best_bw, "%.3f")))
  print(("peak RSS        %.1f MiB"):format(res.peak_rss_mb))
  if as_json then print(cjson.encode(res)) end
end

return M
