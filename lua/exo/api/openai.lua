-- openai.lua: the OpenAI request and response shapes, as pure functions.
--
-- Validation turns a decoded JSON body into exo's own request table or an
-- error naming the field (HTTP 400, OpenAI's error shape); response builders
-- produce chat.completion, chat.completion.chunk, text_completion and model
-- objects exactly as OpenAI's clients expect them. Nothing here does I/O, so
-- every rule is testable on its own. Unknown fields are ignored, as OpenAI's
-- own server does for forward compatibility; JSON null in any field counts as
-- absent. Every field that scales work has a ceiling (M.LIMITS) refused with
-- a 400 naming the field, the prompt's size among them, checked before any
-- tokenizing.
local json = require "exo.json"
local uv = require "luv"

local M = {}

local null = json.null

local function is_int(v) return type(v) == "number" and v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 end

-- An OpenAI error object; status is the HTTP status to send it with.
function M.error(status, message, err_type, param, code)
  return status, {
    error = {
      message = message,
      type = err_type or (status == 401 and "authentication_error" or status == 404 and "not_found_error"
        or status >= 500 and "server_error" or "invalid_request_error"),
      param = param or null,
      code = code or null,
    },
  }
end

local function bad(field, message) return nil, message, field end

-- Ceilings no real client reaches (docs/api.md says why each is where it is).
M.LIMITS = {
  max_tokens = 1048576,        -- 2^20: above the context window of any model served
  top_logprobs = 20,           -- OpenAI's own ceiling
  stop = 4,                    -- OpenAI's own ceiling
  stop_bytes = 1024,           -- per stop string; each is matched against the text after every token
  messages = 4096,             -- messages in one chat request
  content_parts = 4096,        -- parts in one message's content list
  -- Text of all messages or the prompt, checked before any template rendering
  -- or tokenizing: tokenizing runs on the loop and is superlinear on long
  -- unbroken runs (256 KiB of one letter or of spaces holds the loop ~0.2 s,
  -- 1 MiB ~0.9 s, on a busy 2-core machine; English text 256 KiB ~0.04 s).
  -- ~64k tokens of English.
  prompt_bytes = 262144,
  bytes_per_token = 64,        -- and no more than the node's context could hold at this many bytes a token
}
local LIMITS = M.LIMITS

-- Optional number field in [lo, hi].
local function number_field(body, field, lo, hi)
  local v = body[field]
  if v == nil or v == null then return true end
  if type(v) ~= "number" or v ~= v then return bad(field, ("'%s' must be a number"):format(field)) end
  if v < lo or v > hi then return bad(field, ("'%s' must be between %s and %s"):format(field, lo, hi)) end
  return true
end

local function int_field(body, field, lo, hi)
  local v = body[field]
  if v == nil or v == null then return true end
  if not is_int(v) then return bad(field, ("'%s' must be an integer"):format(field)) end
  if v < lo or v > hi then return bad(field, ("'%s' must be between %d and %d"):format(field, lo, hi)) end
  return true
end

local function opt(v) if v == null then return nil end return v end

-- Sampling fields shared by /v1/chat/completions and /v1/completions.
local function sampling_fields(body, out, limits)
  local checks = {
    { number_field, "temperature", 0, 2 }, { number_field, "top_p", 0, 1 },
    { number_field, "presence_penalty", -2, 2 }, { number_field, "frequency_penalty", -2, 2 },
    { number_field, "min_p", 0, 1 }, { number_field, "repetition_penalty", 0.01, 10 },
    { int_field, "top_k", 0, 1e9 }, { int_field, "max_tokens", 1, LIMITS.max_tokens },
    { int_field, "max_completion_tokens", 1, LIMITS.max_tokens }, { int_field, "seed", -2 ^ 53 + 1, 2 ^ 53 - 1 },
    { int_field, "n", 1, 128 }, { int_field, "top_logprobs", 0, LIMITS.top_logprobs },
    { int_field, "draft_tokens", 1, 32 },
  }
  for _, c in ipairs(checks) do
    local ok, msg, field = c[1](body, c[2], c[3], c[4])
    if not ok then return nil, msg, field end
  end
  if opt(body.n) and body.n ~= 1 then return bad("n", "only n = 1 is supported") end
  if opt(body.top_p) == 0 then return bad("top_p", "'top_p' must be greater than 0") end
  if opt(body.min_p) == 1 then return bad("min_p", "'min_p' must be less than 1") end
  local stream = opt(body.stream)
  if stream ~= nil and type(stream) ~= "boolean" then return bad("stream", "'stream' must be a boolean") end
  local stop = opt(body.stop)
  if type(stop) == "string" then
    stop = { stop }
  elseif type(stop) == "table" then
    if #stop > LIMITS.stop then return bad("stop", ("'stop' may hold at most %d strings"):format(LIMITS.stop)) end
    for i, s in ipairs(stop) do
      if type(s) ~= "string" then return bad("stop", ("'stop[%d]' must be a string"):format(i - 1)) end
    end
  elseif stop ~= nil then
    return bad("stop", "'stop' must be a string or a list of strings")
  end
  for _, s in ipairs(stop or {}) do
    if #s > LIMITS.stop_bytes then
      return bad("stop", ("each stop string may be at most %d bytes"):format(LIMITS.stop_bytes))
    end
  end
  if stop then
    local kept = {}
    for _, s in ipairs(stop) do if s ~= "" then kept[#kept + 1] = s end end
    stop = kept
  end
  local so = opt(body.stream_options)
  if so ~= nil and type(so) ~= "table" then return bad("stream_options", "'stream_options' must be an object") end
  -- A boolean (chat), or the legacy completions' count of alternatives,
  -- held to the same ceiling as top_logprobs.
  local logprobs = opt(body.logprobs)
  if logprobs ~= nil and type(logprobs) ~= "boolean" then
    if not is_int(logprobs) then return bad("logprobs", "'logprobs' must be a boolean or an integer") end
    if logprobs < 0 or logprobs > LIMITS.top_logprobs then
      return bad("logprobs", ("'logprobs' must be between 0 and %d"):format(LIMITS.top_logprobs))
    end
  end

  out.stream = stream or false
  out.include_usage = so and so.include_usage == true or false
  out.stop = stop
  out.temperature = opt(body.temperature) or limits.default_temperature
  out.top_p = opt(body.top_p)
  out.top_k = opt(body.top_k)
  out.min_p = opt(body.min_p)
  out.presence_penalty = opt(body.presence_penalty)
  out.frequency_penalty = opt(body.frequency_penalty)
  out.repeat_penalty = opt(body.repetition_penalty)
  out.seed = opt(body.seed)
  out.logprobs = logprobs == true or (is_int(logprobs) and logprobs > 0)
  out.top_logprobs = opt(body.top_logprobs) or (is_int(logprobs) and logprobs or 0)
  local max = opt(body.max_completion_tokens) or opt(body.max_tokens) or limits.max_tokens
  out.max_tokens = math.min(max, limits.max_tokens_cap or max)
  if opt(body.speculative) == false then out.speculative = false end
  out.draft_tokens = opt(body.draft_tokens) -- this request's g, when the node decodes speculatively
  return out
end

-- Message content: a string, or a list of parts of which text parts are kept.
local tool_calls_of, tool_fields, prompt_fields

local function content_of(m, i)
  local c = m.content
  if c == nil or c == null then return "" end
  if type(c) == "string" then return c end
  if type(c) ~= "table" then return bad(("messages[%d].content"):format(i), "content must be a string or a list of parts") end
  if #c > LIMITS.content_parts then
    return bad(("messages[%d].content"):format(i), ("content may hold at most %d parts"):format(LIMITS.content_parts))
  end
  local parts, kept = {}, {}
  for j, part in ipairs(c) do
    if type(part) ~= "table" or type(part.type) ~= "string" then
      return bad(("messages[%d].content[%d]"):format(i, j - 1), "each content part must be an object with a type")
    end
    if part.type == "text" then
      if type(part.text) ~= "string" then
        return bad(("messages[%d].content[%d].text"):format(i, j - 1), "text parts need a string 'text'")
      end
      parts[#parts + 1] = part.text
      kept[#kept + 1] = { type = "text", text = part.text }
    else
      return bad(("messages[%d].content[%d].type"):format(i, j - 1), ("content parts of type '%s' are not supported")
        :format(part.type))
    end
  end
  -- The text (for the size checks), and the parts themselves: a template that iterates
  -- parts gets them, others get them joined (chat.lua).
  return table.concat(parts), nil, nil, kept
end

-- The most prompt text worth tokenizing: tokenizing runs on the loop, so text
-- its context could never hold (SmolLM2's longest tokens are 64 spaces) is
-- refused by size first, and never more than LIMITS.prompt_bytes.
local function prompt_bytes(limits)
  local n = LIMITS.prompt_bytes
  if limits.n_ctx then n = math.min(n, limits.n_ctx * LIMITS.bytes_per_token) end
  return n
end

local ROLES = { system = true, user = true, assistant = true, developer = true, tool = true }

-- An assistant message's tool_calls, for its template: arguments given as JSON text (as
-- OpenAI's clients send them) become objects (as templates print them with tojson).
-- Returns { list, bytes } or nil, or nil, message, field.
tool_calls_of = function(m, i)
  local calls = opt(m.tool_calls)
  if calls == nil then return nil end
  local where = ("messages[%d].tool_calls"):format(i)
  if type(calls) ~= "table" or (next(calls) ~= nil and calls[1] == nil) then return nil, where .. " must be a list", where end
  local list, bytes = {}, {}
  for j, c in ipairs(calls) do
    local fn = type(c) == "table" and opt(c["function"])
    if type(fn) ~= "table" or type(opt(fn.name)) ~= "string" then
      return nil, ("%s[%d] must have a function with a name"):format(where, j - 1), where
    end
    local args = opt(fn.arguments) or {}
    if type(args) == "string" then
      bytes[#bytes + 1] = args
      local decoded = json.decode(args)
      args = type(decoded) == "table" and decoded or args
    end
    list[j] = { id = opt(c.id), type = "function", ["function"] = { name = fn.name, arguments = args } }
  end
  return { list = list, bytes = table.concat(bytes) }
end

-- tools and tool_choice (the template renders the tools; the answer is parsed for calls).
tool_fields = function(body, out)
  local tools = opt(body.tools)
  if tools == nil then return true end
  if type(tools) ~= "table" or (next(tools) ~= nil and tools[1] == nil) then
    return bad("tools", "'tools' must be a list")
  end
  if #tools > 128 then return bad("tools", "'tools' may hold at most 128 tools") end
  for i, t in ipairs(tools) do
    if type(t) ~= "table" or t.type ~= "function" or type(t["function"]) ~= "table"
      or type(opt(t["function"].name)) ~= "string" then
      return bad(("tools[%d]"):format(i - 1), "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}")
    end
  end
  local choice = opt(body.tool_choice)
  if choice ~= nil and choice ~= "auto" and choice ~= "none" and choice ~= "required" then
    return bad("tool_choice", "'tool_choice' may be \"auto\", \"none\" or \"required\"")
  end
  if choice == "none" or #tools == 0 then return true end
  out.tools = tools
  out.tool_choice = choice or "auto"
  return true
end

-- JSON mode, and the prompt's end: add_generation_prompt, continue_final_message (as vLLM
-- names them; by default a conversation ending with an assistant message continues it).
prompt_fields = function(body, out)
  local rf = opt(body.response_format)
  if rf ~= nil then
    if type(rf) ~= "table" or (rf.type ~= "text" and rf.type ~= "json_object" and rf.type ~= "json_schema") then
      return bad("response_format", "'response_format' must be {\"type\": \"text\"} or {\"type\": \"json_object\"}")
    end
    if rf.type == "json_schema" then
      local js = opt(rf.json_schema)
      if type(js) ~= "table" or type(opt(js.schema)) ~= "table" then
        return bad("response_format", "'response_format.json_schema.schema' must be a JSON schema object")
      end
      out.json_schema = js.schema
    end
    out.json_object = rf.type ~= "text" or nil
  end
  for _, f in ipairs { "add_generation_prompt", "continue_final_message" } do
    local v = opt(body[f])
    if v ~= nil and type(v) ~= "boolean" then return bad(f, ("'%s' must be a boolean"):format(f)) end
    out[f] = v
  end
  if out.continue_final_message and out.add_generation_prompt then
    return bad("continue_final_message", "'continue_final_message' and 'add_generation_prompt' exclude each other")
  end
  local last = out.messages[#out.messages]
  if out.continue_final_message and last.role ~= "assistant" then
    return bad("continue_final_message", "'continue_final_message' needs the last message to be the assistant's")
  end
  if out.continue_final_message == nil and out.add_generation_prompt == nil then
    out.continue_final_message = last.role == "assistant"
  end
  return true
end

-- body (decoded JSON) -> request table or nil, message, field.
-- limits: default_model, default_temperature, max_tokens (the default),
-- max_tokens_cap, system_prompt, n_ctx (the node's context, in tokens).
function M.chat_request(body, limits)
  if type(body) ~= "table" or body[1] ~= nil then return bad(nil, "the request body must be a JSON object") end
  local model = opt(body.model)
  if model ~= nil and type(model) ~= "string" then return bad("model", "'model' must be a string") end
  local messages = opt(body.messages)
  if type(messages) ~= "table" or messages[1] == nil then
    return bad("messages", "'messages' must be a non-empty list")
  end
  if #messages > LIMITS.messages then
    return bad("messages", ("'messages' may hold at most %d messages"):format(LIMITS.messages))
  end
  local out = { model = model or limits.default_model, messages = {} }
  local has_system = false
  local bytes, max_bytes = 0, prompt_bytes(limits)
  for i, m in ipairs(messages) do
    if type(m) ~= "table" then return bad(("messages[%d]"):format(i - 1), "each message must be an object") end
    if type(m.role) ~= "string" or not ROLES[m.role] then
      return bad(("messages[%d].role"):format(i - 1), "role must be one of system, user, assistant, developer, tool")
    end
    local text, msg, field, parts = content_of(m, i - 1)
    if not text then return nil, msg, field end
    local calls, cerr, cfield = tool_calls_of(m, i - 1)
    if cerr then return nil, cerr, cfield end
    bytes = bytes + #text + (calls and #calls.bytes or 0)
    if bytes > max_bytes then
      return bad("messages", ("the messages hold over %d bytes of text, more than this node takes"):format(max_bytes))
    end
    local role = m.role == "developer" and "system" or m.role
    if role == "system" then has_system = true end
    local copy = { role = role, content = parts or text }
    if calls then copy.tool_calls = calls.list end
    if role == "tool" and type(opt(m.tool_call_id)) == "string" then copy.tool_call_id = m.tool_call_id end
    if type(opt(m.name)) == "string" then copy.name = m.name end
    out.messages[#out.messages + 1] = copy
  end
  if not has_system and limits.system_prompt then
    table.insert(out.messages, 1, { role = "system", content = limits.system_prompt })
  end
  local ok, err, efield = tool_fields(body, out)
  if not ok then return nil, err, efield end
  ok, err, efield = prompt_fields(body, out)
  if not ok then return nil, err, efield end
  return sampling_fields(body, out, limits)
end

function M.completion_request(body, limits)
  if type(body) ~= "table" or body[1] ~= nil then return bad(nil, "the request body must be a JSON object") end
  local model = opt(body.model)
  if model ~= nil and type(model) ~= "string" then return bad("model", "'model' must be a string") end
  local prompt = opt(body.prompt)
  if type(prompt) == "table" and #prompt == 1 and type(prompt[1]) == "string" then prompt = prompt[1] end
  if type(prompt) ~= "string" then return bad("prompt", "'prompt' must be a string") end
  local max_bytes = prompt_bytes(limits)
  if #prompt > max_bytes then
    return bad("prompt", ("'prompt' is over %d bytes, more than this node takes"):format(max_bytes))
  end
  local out = { model = model or limits.default_model, prompt = prompt }
  return sampling_fields(body, out, limits)
end

-- ---- responses ---------------------------------------------------------------

local function usage(res)
  local u = {
    prompt_tokens = res.n_prompt, completion_tokens = res.n_generated,
    total_tokens = res.n_prompt + res.n_generated,
  }
  if res.speculative then u.speculative = res.speculative end
  -- Prompt tokens a cache already held (OpenAI reports the same field).
  if res.n_computed then u.prompt_tokens_details = { cached_tokens = res.n_prompt - res.n_computed } end
  return u
end
M.usage = usage

-- OpenAI's tool_calls from tools.lua's calls (stream: with their index, for a delta).
function M.tool_calls(calls, stream)
  local out = {}
  for i, c in ipairs(calls or {}) do
    out[i] = { id = M.random_id("call_", 24), type = "function", ["function"] = { name = c.name, arguments = c.arguments } }
    if stream then out[i].index = i - 1 end
  end
  return out
end

function M.chat_completion(id, model, created, res)
  local message = { role = "assistant", content = res.text }
  if res.tool_calls then
    message.tool_calls = M.tool_calls(res.tool_calls)
    if res.text == "" then message.content = null end
  end
  local choice = {
    index = 0,
    message = message,
    logprobs = res.logprobs and { content = res.logprobs } or null,
    finish_reason = res.finish_reason == "cancelled" and "stop" or res.finish_reason,
  }
  return {
    id = id, object = "chat.completion", created = created, model = model,
    choices = { choice }, usage = usage(res), system_fingerprint = "exo",
  }
end

-- A streamed chunk: delta is { role = ... } or { content = ... } or {}.
function M.chat_chunk(id, model, created, delta, finish_reason, logprobs)
  return {
    id = id, object = "chat.completion.chunk", created = created, model = model, system_fingerprint = "exo",
    choices = { { index = 0, delta = delta, logprobs = logprobs or null, finish_reason = finish_reason or null } },
  }
end

function M.usage_chunk(id, model, created, res)
  return {
    id = id, object = "chat.completion.chunk", created = created, model = model, system_fingerprint = "exo",
    choices = json.empty_array, usage = usage(res),
  }
end

-- The legacy completions' logprobs (tokens, token_logprobs, top_logprobs as
-- {token: logprob}, text_offset) from the chat-style entries generation keeps.
local function legacy_logprobs(entries)
  if not entries then return null end
  local out = { tokens = {}, token_logprobs = {}, top_logprobs = {}, text_offset = {} }
  local offset = 0
  for i, e in ipairs(entries) do
    out.tokens[i], out.token_logprobs[i], out.text_offset[i] = e.token, e.logprob, offset
    local top = {}
    for _, t in ipairs(type(e.top_logprobs) == "table" and e.top_logprobs or {}) do top[t.token] = t.logprob end
    out.top_logprobs[i] = top
    offset = offset + #(e.token or "")
  end
  if #entries == 0 then
    for k in pairs(out) do out[k] = json.empty_array end
  end
  return out
end

function M.text_completion(id, model, created, res)
  return {
    id = id, object = "text_completion", created = created, model = model,
    choices = { { index = 0, text = res.text, logprobs = legacy_logprobs(res.logprobs),
      finish_reason = res.finish_reason == "cancelled" and "stop" or res.finish_reason } },
    usage = usage(res),
  }
end

function M.text_chunk(id, model, created, text, finish_reason)
  return {
    id = id, object = "text_completion", created = created, model = model,
    choices = { { index = 0, text = text, logprobs = null, finish_reason = finish_reason or null } },
  }
end

-- path: the model's file in the store, or nil. Beside OpenAI's fields, what the chat page's
-- picker shows: the size (the file's when here, else the catalogue's estimate) and can_run.
function M.model_object(id, entry, path)
  local downloaded = path ~= nil
  local st = path and uv.fs_stat(path)
  local size = st and st.size or entry and (entry.sizes and entry.sizes[entry.default_quant] or entry.size)
  return {
    id = id, object = "model", created = 0, owned_by = "exo",
    ready = downloaded, downloaded = downloaded, description = entry and entry.description or null,
    size = size or null, size_approximate = not st, can_run = not entry or entry.can_run ~= false,
    arch = entry and entry.arch or null, n_layers = entry and entry.n_layers or null,
  }
end

-- JSON null as absent (shared with the other APIs' modules).
M.opt = opt

-- A random request id: prefix and n hex digits (chatcmpl-..., resp_...), as OpenAI's look.
function M.random_id(prefix, n)
  local t = {}
  for i = 1, n do t[i] = ("%x"):format(math.random(0, 15)) end
  return prefix .. table.concat(t)
end

return M
