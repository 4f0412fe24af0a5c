-- tokenizer.lua: text <-> token ids through libexo's tokenizer (native/tokenizer.c).
--
--   local tokenizer = require "exo.tokenizer"
--   local tok = assert(tokenizer.load(path))        -- nil, err on a bad file
--   local ids = tok:encode(text, { add_bos = true, special = true })
--   local text = tok:decode(ids)
--   local s = tok:stream(); out = s:push(id) .. s:push(id2) .. s:flush()
--
-- encode's `special` says whether control tokens written in the text
-- (<|im_start|>, <s>) are recognised: true for text a chat template produced,
-- false (the default) for user content, whose look-alikes stay plain text.
-- The streaming decoder does its UTF-8 buffering in C
-- (exo_tokenizer_decode_stream): push returns only complete characters, ""
-- while one is unfinished; flush ends the stream.
--
-- The object is exo.native's (the FFI calls live there); its methods:
--   tok:encode(text, opts)        Lua array of ids, or nil, err. opts.add_bos:
--                                 true/false (default: as the model asks);
--                                 opts.special (default false)
--   tok:encode_buffer(text, opts) the ids as a fresh int32_t[n] cdata, and n
--   tok:decode(ids, opts, n)      a Lua array (or int32_t* with n) to bytes;
--                                 opts.special renders control tokens
--   tok:piece(id), tok:text(id)   the bytes id decodes to; its vocabulary spelling
--   tok:find(text)                the id spelled exactly text, or nil
--   tok:is_eog(id)                whether id ends generation
--   tok:token_type(id)            GGUF token type (enum exo_token_type), nil
--                                 when id is out of range
--   tok:stream(opts)              a streaming decoder: :push(id), :flush()
--   fields: n_vocab, bos, eos, eot (nil when absent), add_bos, model, pre, warning
local native = require "exo.native"

local M = {}

-- Loads the tokenizer of the GGUF file at path. Returns a tokenizer or nil, err.
M.load = native.load_tokenizer

return M
