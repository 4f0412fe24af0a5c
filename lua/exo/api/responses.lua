-- responses.lua: OpenAI's Responses API (POST /v1/responses), text in and text out.
--
-- input is a string or a list of messages (content a string or input_text parts), with
-- instructions as the system prompt; it is translated into a chat request and validated by
-- openai.lua. The answer is a response object whose output is one assistant message with one
-- output_text part, or, streamed, the typed events clients follow: response.created,
-- response.in_progress, response.output_item.added, response.content_part.added, a
-- response.output_text.delta per piece, response.output_text.done, response.content_part.done,
-- response.output_item.done, response.completed, each with its sequence_number. Stored
-- responses (previous_response_id), tools and non-text inputs are refused by name.
local json = require "exo.json"
local download = require "exo.download" -- servable: in a cluster, a catalogue model is fetched
local openai = require "exo.api.openai"

local M = {}
local null = json.null
local opt = openai.opt

local function text_of(content, where)
  if type(content) == "string" then return content end
  if type(content) ~= "table" then return nil, where .. " must be a string or a list of parts" end
  local parts = {}
  for i, part in ipairs(content) do
    local kind = type(part) == "table" and part.type
    if (kind ~= "input_text" and kind ~= "output_text" and kind ~= "text") or type(part.text) ~= "string" then
      return nil, ("%s[%d]: parts of type '%s' are not supported (text only)"):format(where, i - 1, tostring(kind))
    end
    parts[#parts + 1] = part.text
  end
  return table.concat(parts)
end

local ROLES = { user = true, assistant = true, system = true, developer = true }

function M.request(body, limits)
  if type(body) ~= "table" or body[1] ~= nil then return nil, "the request body must be a JSON object", nil end
  if opt(body.previous_response_id) ~= nil then
    return nil, "previous_response_id: stored responses are not supported", "previous_response_id"
  end
  if opt(body.tools) ~= nil and next(body.tools) ~= nil then return nil, "tools are not supported", "tools" end
  local messages = {}
  local instructions = opt(body.instructions)
  if instructions ~= nil then
    if type(instructions) ~= "string" then return nil, "'instructions' must be a string", "instructions" end
    messages[1] = { role = "system", content = instructions }
  end
  local input = opt(body.input)
  if type(input) == "string" then
    messages[#messages + 1] = { role = "user", content = input }
  elseif type(input) == "table" and input[1] ~= nil then
    for i, item in ipairs(input) do
      if type(item) ~= "table" or (item.type ~= nil and item.type ~= "message") or not ROLES[item.role] then
        return nil, ("input[%d] must be a message with role user, assistant, system or developer"):format(i - 1), "input"
      end
      local text, err = text_of(item.content, ("input[%d].content"):format(i - 1))
      if not text then return nil, err, "input" end
      messages[#messages + 1] = { role = item.role, content = text }
    end
  else
    return nil, "'input' must be a string or a non-empty list of messages", "input"
  end
  return openai.chat_request({
    model = opt(body.model), messages = messages, stream = opt(body.stream), temperature = opt(body.temperature),
    top_p = opt(body.top_p), max_tokens = opt(body.max_output_tokens), seed = opt(body.seed),
  }, limits)
end

local function hex_id(prefix) return openai.random_id(prefix, 32) end

local function output_item(item_id, text, status)
  return { type = "message", id = item_id, status = status, role = "assistant",
    content = text and { { type = "output_text", text = text, annotations = json.empty_array } } or json.empty_array }
end

local function response_object(id, item_id, model, created, status, text, result)
  local r = {
    id = id, object = "response", created_at = created, status = status, model = model,
    output = text and { output_item(item_id, text, "completed") } or json.empty_array,
    parallel_tool_calls = false, tool_choice = "auto", tools = json.empty_array, error = null,
    incomplete_details = null, instructions = null, metadata = {}, temperature = null, top_p = null,
    usage = null,
  }
  if result then
    r.usage = { input_tokens = result.n_prompt, output_tokens = result.n_generated,
      total_tokens = result.n_prompt + result.n_generated,
      input_tokens_details = { cached_tokens = result.n_computed and (result.n_prompt - result.n_computed) or 0 },
      output_tokens_details = { reasoning_tokens = 0 } }
    if result.finish_reason == "length" then
      r.status = "incomplete"
      r.incomplete_details = { reason = "max_output_tokens" }
    end
  end
  return r
end

--- responses.register(routes, api): adds POST /v1/responses. api: generate, limits, until_closed.
function M.register(routes, api)
  routes["POST /v1/responses"] = function(ctx, req, res)
    local body = json.decode(req.body ~= "" and req.body or "null")
    if type(body) ~= "table" then return res:json(openai.error(400, "the request body must be a JSON object")) end
    local parsed, err, field = M.request(body, api.limits(ctx))
    if not parsed then return res:json(openai.error(400, err, nil, field)) end
    if not download.servable(parsed.model) then
      return res:json(openai.error(404, ("model '%s' not found"):format(tostring(parsed.model)), "not_found_error",
        "model", "model_not_found"))
    end
    local id, item_id, created, model = hex_id("resp_"), hex_id("msg_"), os.time(), parsed.model
    local should_stop = api.until_closed(res)
    if not parsed.stream then
      local result, gerr, status = api.generate(ctx, parsed, nil, should_stop)
      if not result then return res:json(openai.error(status or 500, gerr)) end
      return res:json(200, response_object(id, item_id, model, created, "completed", result.text, result))
    end
    local seq, started, text = 0, false, {}
    local function event(kind, fields)
      fields.type = kind
      fields.sequence_number = seq
      seq = seq + 1
      res:sse(json.encode(fields), kind)
    end
    local function start()
      if started then return end
      started = true
      res:sse_start()
      event("response.created", { response = response_object(id, item_id, model, created, "in_progress") })
      event("response.in_progress", { response = response_object(id, item_id, model, created, "in_progress") })
      event("response.output_item.added", { output_index = 0, item = output_item(item_id, nil, "in_progress") })
      event("response.content_part.added", { item_id = item_id, output_index = 0, content_index = 0,
        part = { type = "output_text", text = "", annotations = json.empty_array } })
    end
    local result, gerr, status = api.generate(ctx, parsed, function(piece)
      start()
      text[#text + 1] = piece
      event("response.output_text.delta", { item_id = item_id, output_index = 0, content_index = 0, delta = piece,
        logprobs = json.empty_array })
    end, should_stop)
    if not result then
      if not started then return res:json(openai.error(status or 500, gerr)) end
      event("error", { code = "server_error", message = gerr, param = null })
      return res:finish()
    end
    start()
    local full = table.concat(text)
    event("response.output_text.done", { item_id = item_id, output_index = 0, content_index = 0, text = full,
      logprobs = json.empty_array })
    event("response.content_part.done", { item_id = item_id, output_index = 0, content_index = 0,
      part = { type = "output_text", text = full, annotations = json.empty_array } })
    event("response.output_item.done", { output_index = 0, item = output_item(item_id, full, "completed") })
    event("response.completed", { response = response_object(id, item_id, model, created, "completed", full, result) })
    return res:finish()
  end
end

return M
