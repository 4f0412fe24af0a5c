-- ollama.lua: Ollama's API (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version).
--
-- Editors and tools speak Ollama's API, so a node answers it beside OpenAI's. Requests are
-- translated into OpenAI's shape and validated by openai.lua (one set of limits for both);
-- answers stream as NDJSON, one JSON object a line, the last with "done": true and Ollama's
-- counters (nanosecond durations). Differences from Ollama itself: the model store is exo's
-- (a name is a catalogue id or a file in the store; a ":latest" tag is accepted and ignored),
-- "format" takes "json" or a JSON schema (sampling constrained to it, json_grammar.c), and
-- images, "context" and "keep_alive" are not supported ("keep_alive" is accepted and ignored).
local uv = require "luv"
local json = require "exo.json"
local models = require "exo.models"
local download = require "exo.download" -- servable: in a cluster, a catalogue model is fetched
local native = require "exo.native"
local openai = require "exo.api.openai"

local M = {}
local null = json.null
local opt = openai.opt

-- Ollama's errors: {"error": "..."} with an HTTP status.
local function fail(res, status, message) return res:json(status, { error = message }) end

-- RFC 3339 with nanoseconds, as Ollama writes created_at.
local function now_rfc3339()
  local secs, usecs = uv.gettimeofday()
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. (".%06d000Z"):format(usecs)
end

-- GGUF's general.file_type (llama.cpp's llama_ftype) as Ollama names quantizations.
local FILE_TYPES = {
  [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [7] = "Q8_0", [8] = "Q5_0", [9] = "Q5_1",
  [10] = "Q2_K", [11] = "Q3_K_S", [12] = "Q3_K_M", [13] = "Q3_K_L", [14] = "Q4_K_S", [15] = "Q4_K_M",
  [16] = "Q5_K_S", [17] = "Q5_K_M", [18] = "Q6_K", [25] = "IQ4_NL", [30] = "IQ4_XS", [32] = "BF16",
}

-- "name:latest" -> "name"; other tags are part of the name.
local function model_name(name)
  if type(name) ~= "string" then return name end
  return (name:gsub(":latest$", ""))
end

-- Ollama's options -> OpenAI fields (the ones exo implements; others are ignored, as
-- Ollama ignores options a model does not use).
local OPTION_FIELDS = {
  temperature = "temperature", top_p = "top_p", top_k = "top_k", min_p = "min_p", seed = "seed",
  repeat_penalty = "repetition_penalty", presence_penalty = "presence_penalty",
  frequency_penalty = "frequency_penalty", stop = "stop",
}

local function openai_body(body, extra)
  local out = { model = model_name(opt(body.model)), stream = opt(body.stream) ~= false }
  local options = opt(body.options)
  if options ~= nil and type(options) ~= "table" then return nil, "'options' must be an object" end
  for k, v in pairs(options or {}) do
    if OPTION_FIELDS[k] and v ~= null then out[OPTION_FIELDS[k]] = v end
  end
  local n = options and opt(options.num_predict)
  if n ~= nil then
    if type(n) ~= "number" then return nil, "'options.num_predict' must be a number" end
    if n > 0 then out.max_tokens = n end -- -1 (until the end) and -2 (fill the context): exo's default cap
  end
  local format = opt(body.format)
  if format == "json" then
    out.response_format = { type = "json_object" }
  elseif type(format) == "table" then
    out.response_format = { type = "json_schema", json_schema = { name = "format", schema = format } }
  elseif format ~= nil and format ~= "" then
    return nil, "'format' may be \"json\" or a JSON schema"
  end
  for k, v in pairs(extra) do out[k] = v end
  return out
end

-- Validated request: OpenAI's parsed shape, or nil, message.
function M.chat_request(body, limits)
  if type(body) ~= "table" then return nil, "the request body must be a JSON object" end
  local messages = opt(body.messages)
  if type(messages) ~= "table" then return nil, "'messages' must be a list" end
  for i, m in ipairs(messages) do
    if type(m) == "table" and opt(m.images) ~= nil then
      return nil, ("messages[%d]: images are not supported"):format(i - 1)
    end
  end
  local ob, err = openai_body(body, { messages = messages })
  if not ob then return nil, err end
  local parsed, msg = openai.chat_request(ob, limits)
  if not parsed then return nil, msg end
  return parsed
end

function M.generate_request(body, limits)
  if type(body) ~= "table" then return nil, "the request body must be a JSON object" end
  local prompt = opt(body.prompt) or ""
  if type(prompt) ~= "string" then return nil, "'prompt' must be a string" end
  if opt(body.images) ~= nil then return nil, "images are not supported" end
  if opt(body.suffix) ~= nil then return nil, "'suffix' (fill in the middle) is not supported" end
  local ob, err
  if opt(body.raw) == true then
    ob, err = openai_body(body, { prompt = prompt })
    if not ob then return nil, err end
    return openai.completion_request(ob, limits)
  end
  local messages = {}
  local system = opt(body.system)
  if system ~= nil then
    if type(system) ~= "string" then return nil, "'system' must be a string" end
    messages[1] = { role = "system", content = system }
  end
  messages[#messages + 1] = { role = "user", content = prompt }
  ob, err = openai_body(body, { messages = messages })
  if not ob then return nil, err end
  return openai.chat_request(ob, limits)
end

-- The counters Ollama closes an answer with.
local function final_fields(out, result, reason)
  local seconds, ttft = result.seconds or 0, result.ttft or 0
  out.done = true
  out.done_reason = reason
  out.total_duration = math.floor(seconds * 1e9)
  out.load_duration = 0
  out.prompt_eval_count = result.n_prompt
  out.prompt_eval_duration = math.floor(ttft * 1e9)
  out.eval_count = result.n_generated
  out.eval_duration = math.floor(math.max(0, seconds - ttft) * 1e9)
  return out
end

local function done_reason(result)
  if result.finish_reason == "length" then return "length" end
  return "stop"
end

-- Runs a generation for an Ollama route; kind "chat" puts text in message.content,
-- "generate" in response.
local function answer(api, ctx, req, res, parsed, kind, name)
  local should_stop = api.until_closed(res)
  local function piece_object(text)
    local o = { model = name, created_at = now_rfc3339(), done = false }
    if kind == "chat" then o.message = { role = "assistant", content = text } else o.response = text end
    return o
  end
  if parsed.stream then
    local started = false
    local function start()
      if not started then
        started = true
        res:stream_start("application/x-ndjson")
      end
    end
    local result, err, status = api.generate(ctx, parsed, function(piece)
      start()
      res:write_chunk(json.encode(piece_object(piece)) .. "\n")
    end, should_stop)
    if not result then
      if not started then return fail(res, status or 500, err) end
      res:write_chunk(json.encode({ error = err }) .. "\n")
      return res:finish()
    end
    start()
    res:write_chunk(json.encode(final_fields(piece_object(""), result, done_reason(result))) .. "\n")
    return res:finish()
  end
  local result, err, status = api.generate(ctx, parsed, nil, should_stop)
  if not result then return fail(res, status or 500, err) end
  return res:json(200, final_fields(piece_object(result.text), result, done_reason(result)))
end

local function details(path)
  local d = { parent_model = "", format = "gguf", family = "", families = json.empty_array, parameter_size = "",
    quantization_level = "" }
  local f = path and native.open_file(path)
  if f then
    local arch = f:get("general.architecture")
    if type(arch) == "string" then
      d.family = arch
      d.families = { arch }
    end
    local size = f:get("general.size_label")
    if type(size) == "string" then d.parameter_size = size end
    local ftype = f:get("general.file_type")
    if type(ftype) == "number" then d.quantization_level = FILE_TYPES[ftype] or ("type " .. ftype) end
  end
  return d
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n or 0
end

local function tag_entry(id, path)
  local name = id .. ":latest"
  return { name = name, model = name, modified_at = now_rfc3339(), size = file_size(path),
    digest = "", details = details(path) }
end

--- ollama.register(routes, api): adds the routes. api: decode_body(res, req), generate(ctx,
-- parsed, on_text, should_stop), limits(ctx), until_closed(res), version.
function M.register(routes, api)
  local function body_of(req, res)
    local body, err = json.decode(req.body ~= "" and req.body or "{}")
    if type(body) ~= "table" then
      fail(res, 400, "malformed JSON: " .. tostring(err or "not an object"))
      return nil
    end
    return body
  end
  local function check(res, parsed, err)
    if not parsed then
      fail(res, 400, err)
      return false
    end
    if not download.servable(parsed.model) then
      fail(res, 404, ("model '%s' not found"):format(tostring(parsed.model)))
      return false
    end
    return true
  end

  routes["POST /api/chat"] = function(ctx, req, res)
    local body = body_of(req, res)
    if not body then return end
    local parsed, err = M.chat_request(body, api.limits(ctx))
    if not check(res, parsed, err) then return end
    return answer(api, ctx, req, res, parsed, "chat", opt(body.model) or parsed.model)
  end

  routes["POST /api/generate"] = function(ctx, req, res)
    local body = body_of(req, res)
    if not body then return end
    local prompt = opt(body.prompt)
    if (prompt == nil or prompt == "") and opt(body.messages) == nil then
      -- Ollama's way of loading a model: an empty prompt answers at once.
      local name = model_name(opt(body.model))
      if not models.resolve(name) then return fail(res, 404, ("model '%s' not found"):format(tostring(name))) end
      return res:json(200, { model = opt(body.model), created_at = now_rfc3339(), response = "", done = true,
        done_reason = "load" })
    end
    local parsed, err = M.generate_request(body, api.limits(ctx))
    if not check(res, parsed, err) then return end
    return answer(api, ctx, req, res, parsed, "generate", opt(body.model) or parsed.model)
  end

  routes["GET /api/tags"] = function(_, _, res)
    local list = {}
    local ids = {}
    for id in pairs(models.registry) do ids[#ids + 1] = id end
    table.sort(ids)
    for _, id in ipairs(ids) do
      local path = models.resolve(id)
      if path then list[#list + 1] = tag_entry(id, path) end
    end
    res:json(200, { models = #list > 0 and list or json.empty_array })
  end

  routes["POST /api/show"] = function(_, req, res)
    local body = body_of(req, res)
    if not body then return end
    local name = model_name(opt(body.model) or opt(body.name))
    local path = type(name) == "string" and models.resolve(name)
    if not path then return fail(res, 404, ("model '%s' not found"):format(tostring(name))) end
    local f = native.open_file(path)
    local info, template = {}, ""
    if f then
      for _, key in ipairs { "general.architecture", "general.name", "general.size_label", "general.file_type" } do
        local v = f:get(key)
        if v ~= nil then info[key] = v end
      end
      local arch = f:get("general.architecture")
      for _, key in ipairs { "block_count", "context_length", "embedding_length", "attention.head_count" } do
        local v = type(arch) == "string" and f:get(arch .. "." .. key)
        if v then info[arch .. "." .. key] = v end
      end
      template = f:get("tokenizer.chat_template") or ""
    end
    res:json(200, { modelfile = "# served by exo from " .. path, parameters = "", template = template,
      details = details(path), model_info = info, capabilities = { "completion" }, modified_at = now_rfc3339() })
  end

  routes["GET /api/ps"] = function(ctx, _, res)
    local list = {}
    for path, entry in pairs(ctx.node and ctx.node.loaded or {}) do
      local e = tag_entry(entry.model and entry.model.id or path, path)
      e.size_vram = 0
      e.expires_at = "0001-01-01T00:00:00Z"
      list[#list + 1] = e
    end
    res:json(200, { models = #list > 0 and list or json.empty_array })
  end

  routes["GET /api/version"] = function(_, _, res) res:json(200, { version = api.version }) end
end

return M
