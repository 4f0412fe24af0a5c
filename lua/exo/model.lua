-- model.lua: a loaded model: its shard, tokenizer and chat template together.
--
-- What `exo run`, the REPL and the server load for a model id or path: the
-- file resolved through the registry, a shard over all its layers (or the
-- range asked for), the tokenizer built from the same file's metadata, and
-- the chat template text the file carries.
local native = require "exo.native"
local models = require "exo.models"
local tokenizer = require "exo.tokenizer"

local M = {}

-- name: model id or .gguf path; opts: start, stop (layer range), chat_template
-- (text or a Lua function overriding the file's). Returns a model or nil, err.
function M.load(name, opts)
  opts = opts or {}
  local path, err = models.resolve(name)
  if not path then return nil, err end
  local file, ferr = native.open_file(path)
  if not file then return nil, ferr end
  local template = opts.chat_template or file:get("tokenizer.chat_template")
  file:close()
  local tok, terr = tokenizer.load(path)
  if not tok then return nil, terr end
  local shard, serr = native.load_shard(path, { start = opts.start, stop = opts.stop })
  if not shard then return nil, serr end
  if shard.is_first and shard.is_last and tok.n_vocab ~= shard.n_vocab then
    return nil, ("tokenizer has %d tokens but the model's embedding has %d rows"):format(tok.n_vocab, shard.n_vocab)
  end
  return { id = name or models.default_id, path = path, shard = shard, tokenizer = tok, chat_template = template }
end

return M
