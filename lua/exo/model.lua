-- model.lua: a loaded model: its shard, tokenizer and chat template together.
--
-- What `exo run`, the REPL and the server load for a model id or path: the
-- file resolved through the registry, a shard over all its layers (or the
-- range asked for), the tokenizer built from the same file's metadata, and
-- the chat template text the file carries. A node in a cluster that only
-- talks to clients loads the text side alone (opts.text_only): its layers may
-- all live on other nodes, and the weights it never reads stay off its memory.
local native = require "exo.native"
local models = require "exo.models"
local generate = require "exo.generate"

local M = {}

-- The chat format of each architecture's family, used when a file carries no
-- chat template (Gemma 3 270M's does not), as llama.cpp recognises the family.
local ARCH_CHAT_FAMILY = { gemma = "gemma", gemma2 = "gemma", gemma3 = "gemma", qwen2 = "chatml",
  qwen3 = "chatml", phi3 = "phi3" }

-- What a partitioning policy needs to know of a model file: its layer count
-- and the bytes of weights per layer. A safetensors folder that holds some
-- layers only (a ring member fetched its range) lists those: the bytes per
-- layer are the mean over the layers it lists.
local function facts(file)
  local arch = file:get("general.architecture") or "llama"
  local n_layers = file:get(arch .. ".block_count")
  if type(n_layers) ~= "number" or n_layers < 1 then
    return nil, ("the model file has no %s.block_count"):format(arch)
  end
  local tensors, err = file:tensors()
  if not tensors then return nil, err end
  local layer_total, listed, n_listed = 0, {}, 0
  for _, t in ipairs(tensors) do
    local layer = t.name:match("^blk%.(%d+)%.")
    if layer then
      layer_total = layer_total + t.bytes
      if not listed[layer] then listed[layer], n_listed = true, n_listed + 1 end
    end
  end
  return { arch = arch, n_layers = n_layers, layer_bytes = math.floor(layer_total / math.max(n_listed, 1)),
    n_embd = file:get(arch .. ".embedding_length") }
end

-- name: model id or .gguf path; opts: start, stop (layer range), chat_template
-- (text or a Lua function overriding the file's), text_only (no shard),
-- runner (what loads the tokenizer and shard: generate.sync_runner, the
-- default, on this thread; exo.node's on the engine thread while the calling
-- coroutine waits), path (name's file, already resolved). Returns a model or
-- nil, err.
function M.load(name, opts)
  opts = opts or {}
  local path, err = opts.path, nil
  if not path then
    path, err = models.resolve(name)
    if not path then return nil, err end
  end
  local file, ferr = native.open_file(path)
  if not file then return nil, ferr end
  local template = opts.chat_template or file:get("tokenizer.chat_template")
  local info, ierr = facts(file)
  file:close()
  if not info then return nil, ierr end
  local runner = opts.runner or generate.sync_runner
  local tok, terr = runner:load_tokenizer(path)
  if not tok then return nil, terr end
  -- Rendering says so when it uses the family's format (chat.render's warning).
  local family = ARCH_CHAT_FAMILY[info.arch]
  local model = { id = name or models.default_id, path = path, tokenizer = tok, chat_template = template,
    chat_family = family, n_layers = info.n_layers, layer_bytes = info.layer_bytes, n_embd = info.n_embd }
  if opts.text_only then return model end
  local ok, serr = M.load_shard(model, opts.start, opts.stop, runner)
  if not ok then return nil, serr end
  return model
end

-- Loads model.shard over [start, stop) (default: every layer) through runner
-- (as M.load's).
function M.load_shard(model, start, stop, runner)
  local shard, serr = (runner or generate.sync_runner):load_shard(model.path, { start = start, stop = stop })
  if not shard then return nil, serr end
  if shard.is_first and shard.is_last and model.tokenizer.n_vocab ~= shard.n_vocab then
    return nil, ("tokenizer has %d tokens but the model's embedding has %d rows"):format(model.tokenizer.n_vocab,
      shard.n_vocab)
  end
  model.shard = shard
  return true
end

return M
