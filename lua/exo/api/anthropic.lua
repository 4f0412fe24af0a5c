-- anthropic.lua: Anthropic's Messages API (POST /v1/messages), for clients written against it.
--
-- The request (a system prompt beside the messages, content as a string or a list of text
-- blocks, max_tokens required, stop_sequences) is translated into OpenAI's shape and validated
-- by openai.lua; the answer is one message with one text block, or, streamed, Anthropic's
-- event sequence: message_start, content_block_start, ping, content_block_delta for each
-- piece, content_block_stop, message_delta (stop reason and output tokens), message_stop.
-- Errors have Anthropic's shape ({"type": "error", "error": {"type", "message"}}). Images,
-- documents and tool use are refused by name.
local json = require "exo.json"
local download = require "exo.download" -- servable: in a cluster, a catalogue model is fetched
local openai = require "exo.api.openai"

local M = {}
local null = json.null
local opt = openai.opt

local ERROR_TYPES = { [400] = "invalid_request_error", [401] = "authentication_error", [404] = "not_found_error",
  [413] = "request_too_large", [429] = "rate_limit_error", [503] = "overloaded_error" }

function M.error(status, message)
  return status, { type = "error", error = { type = ERROR_TYPES[status] or "api_error", message = message } }
end

-- Text of a content value: a string, or a list of text blocks (joined as the API joins
-- consecutive text blocks: without a separator).
local function text_of(content, where)
  if type(content) == "string" then return content end
  if type(content) ~= "table" then return nil, where .. " must be a string or a list of content blocks" end
  local parts = {}
  for i, block in ipairs(content) do
    if type(block) ~= "table" or block.type ~= "text" or type(block.text) ~= "string" then
      local kind = type(block) == "table" and tostring(block.type) or type(block)
      return nil, ("%s[%d]: content blocks of type '%s' are not supported (text only)"):format(where, i - 1, kind)
    end
    parts[#parts + 1] = block.text
  end
  return table.concat(parts)
end

-- body -> OpenAI's parsed request, or nil, message.
function M.request(body, limits)
  if type(body) ~= "table" or body[1] ~= nil then return nil, "the request body must be a JSON object" end
  if opt(body.max_tokens) == nil then return nil, "max_tokens: field required" end
  if opt(body.tools) ~= nil then return nil, "tools: tool use is not supported on /v1/messages" end
  local messages = opt(body.messages)
  if type(messages) ~= "table" or messages[1] == nil then return nil, "messages: must be a non-empty list" end
  local out = {}
  local system = opt(body.system)
  if system ~= nil then
    local text, err = text_of(system, "system")
    if not text then return nil, err end
    out[1] = { role = "system", content = text }
  end
  for i, m in ipairs(messages) do
    if type(m) ~= "table" or (m.role ~= "user" and m.role ~= "assistant") then
      return nil, ("messages.%d.role: must be 'user' or 'assistant'"):format(i - 1)
    end
    local text, err = text_of(m.content, ("messages.%d.content"):format(i - 1))
    if not text then return nil, err end
    out[#out + 1] = { role = m.role, content = text }
  end
  local ob = {
    model = opt(body.model), messages = out, max_tokens = opt(body.max_tokens), stream = opt(body.stream),
    temperature = opt(body.temperature), top_p = opt(body.top_p), top_k = opt(body.top_k),
    stop = opt(body.stop_sequences),
  }
  local parsed, msg = openai.chat_request(ob, limits)
  if not parsed then return nil, msg end
  return parsed
end

local function stop_reason(result)
  if result.finish_reason == "length" then return "max_tokens" end
  if result.stop_sequence then return "stop_sequence" end
  return "end_turn"
end

-- Random message ids: msg_ and 24 letters, as Anthropic's look.
local function message_id()
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
  local t = {}
  for i = 1, 24 do
    local k = math.random(1, #alphabet)
    t[i] = alphabet:sub(k, k)
  end
  return "msg_" .. table.concat(t)
end

local function message(id, model, text, result)
  return {
    id = id, type = "message", role = "assistant", model = model,
    content = text and { { type = "text", text = text } } or json.empty_array,
    stop_reason = result and stop_reason(result) or null,
    stop_sequence = result and result.stop_sequence or null,
    usage = { input_tokens = result and result.n_prompt or 0, output_tokens = result and result.n_generated or 0 },
  }
end

--- anthropic.register(routes, api): adds POST /v1/messages. api: generate, limits, until_closed.
function M.register(routes, api)
  routes["POST /v1/messages"] = function(ctx, req, res)
    local body = json.decode(req.body ~= "" and req.body or "null")
    if type(body) ~= "table" then return res:json(M.error(400, "the request body must be a JSON object")) end
    local parsed, err = M.request(body, api.limits(ctx))
    if not parsed then return res:json(M.error(400, err)) end
    if not download.servable(parsed.model) then
      return res:json(M.error(404, ("model: '%s' not found"):format(tostring(parsed.model))))
    end
    local id, model = message_id(), parsed.model
    local should_stop = api.until_closed(res)
    if not parsed.stream then
      local result, gerr, status = api.generate(ctx, parsed, nil, should_stop)
      if not result then return res:json(M.error(status or 500, gerr)) end
      return res:json(200, message(id, model, result.text, result))
    end
    local started = false
    local function start()
      if started then return end
      started = true
      res:sse_start()
      local m = message(id, model, nil, nil)
      res:sse(json.encode({ type = "message_start", message = m }), "message_start")
      res:sse(json.encode({ type = "content_block_start", index = 0, content_block = { type = "text", text = "" } }),
        "content_block_start")
      res:sse(json.encode({ type = "ping" }), "ping")
    end
    local result, gerr, status = api.generate(ctx, parsed, function(piece)
      start()
      res:sse(json.encode({ type = "content_block_delta", index = 0, delta = { type = "text_delta", text = piece } }),
        "content_block_delta")
    end, should_stop)
    if not result then
      if not started then return res:json(M.error(status or 500, gerr)) end
      res:sse(json.encode(select(2, M.error(status or 500, gerr))), "error")
      return res:finish()
    end
    start()
    res:sse(json.encode({ type = "content_block_stop", index = 0 }), "content_block_stop")
    res:sse(json.encode({ type = "message_delta", delta = { stop_reason = stop_reason(result),
      stop_sequence = result.stop_sequence or null }, usage = { output_tokens = result.n_generated } }), "message_delta")
    res:sse(json.encode({ type = "message_stop" }), "message_stop")
    return res:finish()
  end
end

return M
