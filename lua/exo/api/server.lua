-- server.lua: the ChatGPT-compatible API and the chat page, over http.lua.
--
-- Routes map to handlers; each handler validates with openai.lua, asks the
-- node to generate (yielding while the engine computes) and answers in
-- OpenAI's shapes, streamed as server-sent events when asked; Ollama's,
-- Anthropic's and the Responses API come from their modules (ollama.lua,
-- anthropic.lua, responses.lua). With an API key, every route needs
-- "Authorization: Bearer KEY" (or x-api-key: KEY, as Anthropic's clients send
-- it) except /healthcheck, CORS preflights and the static page. The web page is served from the repository's web/ folder:
-- static files, no build step.
local bit = require "bit"
local uv = require "luv"
local http = require "exo.api.http"
local openai = require "exo.api.openai"
local json = require "exo.json"
local models = require "exo.models"
local activity = require "exo.activity"

local M = {}

local CONTENT_TYPES = {
  html = "text/html; charset=utf-8", js = "text/javascript; charset=utf-8", css = "text/css; charset=utf-8",
  svg = "image/svg+xml", png = "image/png", ico = "image/x-icon", json = "application/json",
  txt = "text/plain; charset=utf-8", md = "text/plain; charset=utf-8",
}

local function web_root()
  local host = package.loaded["exo.host"]
  return (host and host.lua_dir or "lua") .. "/../web"
end

-- Random request ids: chatcmpl-<24 hex>, as OpenAI's look.
local function request_id(prefix) return openai.random_id(prefix, 24) end

-- Whether given equals the secret expected, in time that depends only on the
-- secret's length: every byte is compared (no early exit, as a string's ==
-- may take), so how long a wrong key takes to refuse says nothing about how
-- much of it was right. A guess of another length still walks every byte.
local bor, bxor = bit.bor, bit.bxor
local function same_secret(given, expected)
  local n, m = #given, #expected
  local diff = bxor(n, m)
  for i = 1, m do
    -- Past the end of a shorter guess, compare against 0 (the lengths differ anyway).
    local g = i <= n and given:byte(i) or 0
    diff = bor(diff, bxor(g, expected:byte(i)))
  end
  return diff == 0
end

local function authorized(ctx, req)
  if not ctx.api_key then return true end
  -- Anthropic's clients send the key as x-api-key. Both headers are checked
  -- whichever is present, so the time taken does not tell which was tried.
  local bearer = same_secret(req.headers["authorization"] or "", "Bearer " .. ctx.api_key)
  local x_api_key = same_secret(req.headers["x-api-key"] or "", ctx.api_key)
  return bearer or x_api_key
end

local function decode_body(res, req)
  local ctype = req.headers["content-type"] or ""
  if req.body == "" then
    res:json(openai.error(400, "the request needs a JSON body"))
    return nil
  end
  if ctype ~= "" and not ctype:lower():find("json", 1, true) then
    res:json(openai.error(400, "the request body must be JSON (Content-Type: application/json)"))
    return nil
  end
  local body, err = json.decode(req.body)
  if body == nil then
    res:json(openai.error(400, "malformed JSON: " .. tostring(err)))
    return nil
  end
  return body
end

-- ---- generation routes -------------------------------------------------------------

-- ctx.node:generate, with an error it raises (C's message from the sampler
-- or the engine, say) returned as nil, message, 500 so it reaches the client
-- as it was, less the Lua source position it may carry.
-- Each generation is tracked (activity.lua: a log line when it ends, the
-- terminal view while it runs) under the route being handled: routes call
-- generate before their first yield, so the route handle() set is theirs.
local current_route
local function generate(ctx, parsed, on_text, should_stop)
  local act = activity.begin(current_route, parsed.model)
  local counted = on_text and function(piece, ...)
    act:token()
    return on_text(piece, ...)
  end
  local ok, result, err, status = pcall(ctx.node.generate, ctx.node, parsed, counted, should_stop)
  if not ok then
    io.stderr:write("exo: generation failed: " .. tostring(result) .. "\n")
    result, err, status = nil, (tostring(result):gsub("^[^\n]-%.lua:%d+: ", "")), 500
  end
  act:finish(result and 200 or (status or 500), result)
  return result, err, status
end

local function run_generation(ctx, req, res, parsed, kind)
  local id = request_id(kind == "chat" and "chatcmpl-" or "cmpl-")
  local created = os.time()
  local model = parsed.model
  local cancelled = false
  res.on_close = function() cancelled = true end
  local deadline = ctx.response_timeout and uv.now() + ctx.response_timeout * 1000
  local timed_out = false
  local function should_stop()
    if deadline and uv.now() > deadline then
      timed_out = true
      return true
    end
    return cancelled
  end

  if parsed.stream then
    local started = false
    local function start()
      if started then return end
      started = true
      res:sse_start()
      if kind == "chat" then res:sse(json.encode(openai.chat_chunk(id, model, created, { role = "assistant", content = "" }))) end
    end
    local result, err, status = generate(ctx, parsed, function(piece, lps)
      start()
      if kind == "chat" then
        local chunk_lp = lps and { content = #lps > 0 and lps or json.empty_array } or nil
        res:sse(json.encode(openai.chat_chunk(id, model, created, { content = piece }, nil, chunk_lp)))
      else
        res:sse(json.encode(openai.text_chunk(id, model, created, piece)))
      end
    end, should_stop)
    if not result then
      if not started then return res:json(openai.error(status or 500, err)) end
      res:sse(json.encode(select(2, openai.error(status or 500, err))))
      return res:finish()
    end
    start()
    local finish = timed_out and "length" or (result.finish_reason == "cancelled" and "stop" or result.finish_reason)
    if kind == "chat" and result.tool_calls then
      res:sse(json.encode(openai.chat_chunk(id, model, created, { tool_calls = openai.tool_calls(result.tool_calls, true) })))
    end
    if kind == "chat" then
      res:sse(json.encode(openai.chat_chunk(id, model, created, {}, finish)))
      if parsed.include_usage then res:sse(json.encode(openai.usage_chunk(id, model, created, result))) end
    else
      res:sse(json.encode(openai.text_chunk(id, model, created, "", finish)))
    end
    res:sse("[DONE]")
    return res:finish()
  end

  local result, err, status = generate(ctx, parsed, nil, should_stop)
  if not result then return res:json(openai.error(status or 500, err)) end
  if timed_out then
    return res:json(openai.error(504, ("no answer within %d s (--chatgpt-api-response-timeout)"):format(
      ctx.response_timeout)))
  end
  if kind == "chat" then return res:json(200, openai.chat_completion(id, model, created, result)) end
  return res:json(200, openai.text_completion(id, model, created, result))
end

local function limits(ctx)
  return {
    default_model = ctx.default_model, default_temperature = ctx.default_temperature,
    max_tokens = ctx.max_tokens, max_tokens_cap = ctx.max_tokens_cap, system_prompt = ctx.system_prompt,
    n_ctx = ctx.node and ctx.node.n_ctx,
  }
end

local function check_model(res, parsed)
  local path, err = models.resolve(parsed.model)
  -- In a cluster a catalogue model this store lacks is fetched when the request runs.
  if not path and not require("exo.download").servable(parsed.model) then
    res:json(openai.error(404, err, "not_found_error", "model", "model_not_found"))
    return false
  end
  return true
end

local routes = {}

routes["POST /v1/chat/completions"] = function(ctx, req, res)
  local body = decode_body(res, req)
  if not body then return end
  local parsed, msg, field = openai.chat_request(body, limits(ctx))
  if not parsed then return res:json(openai.error(400, msg, nil, field)) end
  if not check_model(res, parsed) then return end
  return run_generation(ctx, req, res, parsed, "chat")
end
routes["POST /chat/completions"] = routes["POST /v1/chat/completions"]

routes["POST /v1/completions"] = function(ctx, req, res)
  local body = decode_body(res, req)
  if not body then return end
  local parsed, msg, field = openai.completion_request(body, limits(ctx))
  if not parsed then return res:json(openai.error(400, msg, nil, field)) end
  if not check_model(res, parsed) then return end
  return run_generation(ctx, req, res, parsed, "completion")
end

routes["POST /v1/chat/token/encode"] = function(ctx, req, res)
  local body = decode_body(res, req)
  if not body then return end
  local parsed, msg, field = openai.chat_request(body, limits(ctx))
  if not parsed then return res:json(openai.error(400, msg, nil, field)) end
  if not check_model(res, parsed) then return end
  local ids, rendered, status = ctx.node:encode_chat(parsed)
  if not ids then return res:json(openai.error(status or 500, rendered)) end
  res:json(200, { length = #ids, num_tokens = #ids, encoded_tokens = #ids > 0 and ids or json.empty_array,
    encoded_prompt = rendered })
end

-- ---- information routes --------------------------------------------------------

-- The default model first (clients such as the chat page pick the first one
-- ready), then the others by id.
local function model_list()
  local ids = {}
  for id in pairs(models.registry) do ids[#ids + 1] = id end
  table.sort(ids, function(a, b)
    if (a == models.default_id) ~= (b == models.default_id) then return a == models.default_id end
    return a < b
  end)
  local out = {}
  for _, id in ipairs(ids) do out[#out + 1] = openai.model_object(id, models.registry[id], models.resolve(id)) end
  return out
end

routes["GET /v1/models"] = function(_, _, res)
  local list = model_list()
  res:json(200, { object = "list", data = #list > 0 and list or json.empty_array })
end
routes["GET /models"] = routes["GET /v1/models"]

routes["GET /healthcheck"] = function(_, _, res) res:json(200, { status = "ok" }) end

routes["GET /v1/topology"] = function(ctx, _, res)
  res:json(200, ctx.topology and ctx.topology() or { nodes = json.empty_array })
end

-- ---- the other APIs clients bring ------------------------------------------------

-- Ollama's, Anthropic's Messages and OpenAI's Responses APIs: each translates its
-- requests into the chat request above and shapes the answer its clients expect.
-- should_stop for a generation: true once the client hangs up.
local function until_closed(res)
  local closed = false
  res.on_close = function() closed = true end
  return function() return closed end
end
local apis = { generate = generate, limits = limits, until_closed = until_closed,
  version = require("exo.native").version() }
require("exo.api.ollama").register(routes, apis)
require("exo.api.anthropic").register(routes, apis)
require("exo.api.responses").register(routes, apis)
local models_api = require "exo.api.models_api" -- POST /download, GET /v1/download/progress, DELETE /models/{id}
models_api.register(routes)

-- ---- dispatch -------------------------------------------------------------------

local function static(res, path)
  if path == "/" then path = "/index.html" end
  if path:find("..", 1, true) or not path:match("^/[%w%._%-/]+$") then
    return res:json(openai.error(404, "not found: " .. path))
  end
  local f = io.open(web_root() .. path, "rb")
  if not f then return res:json(openai.error(404, "not found: " .. path)) end
  local body = f:read("*a")
  f:close()
  local ext = path:match("%.(%w+)$") or "txt"
  res:send(200, body, CONTENT_TYPES[ext] or "application/octet-stream", { ["Cache-Control"] = "no-cache" })
end

-- What anyone may ask without the key: the health check and the static page
-- (a GET that is no route and not under /v1). Everything else runs or
-- reveals something, so it needs the key; an unknown POST gets 401, not 404.
local function open_route(req)
  local path = req.path
  if path == "/healthcheck" then return true end
  if req.method ~= "GET" or path == "/v1" or path:sub(1, 4) == "/v1/" then return false end
  for key in pairs(routes) do
    if key:match("^%u+ (.*)$") == path then return false end
  end
  return true
end

local function handle(ctx, req, res)
  local path = req.path
  if req.method == "OPTIONS" then return res:send(204, "", "text/plain") end
  if not open_route(req) and not authorized(ctx, req) then
    return res:json(openai.error(401, "missing or wrong API key (Authorization: Bearer KEY)", nil, nil,
      "invalid_api_key"))
  end
  local route = routes[req.method .. " " .. path]
  current_route = req.method .. " " .. path
  if route then return route(ctx, req, res) end
  local delete_id = req.method == "DELETE" and path:match("^/models/(.+)$")
  if delete_id then return models_api.delete(ctx, req, res, delete_id) end
  local model_id = path:match("^/v1/models/(.+)$")
  if model_id and req.method == "GET" then
    local entry = models.registry[model_id]
    local path = models.resolve(model_id)
    if not entry and not path then
      return res:json(openai.error(404, "unknown model '" .. model_id .. "'", "not_found_error", "model",
        "model_not_found"))
    end
    return res:json(200, openai.model_object(model_id, entry, path))
  end
  -- A known path with another method is a 405; an unknown one a 404.
  for key in pairs(routes) do
    if key:match("^%u+ (.*)$") == path then
      return res:json(openai.error(405, ("%s is not allowed on %s"):format(req.method, path)))
    end
  end
  if req.method == "GET" and path:sub(1, 4) ~= "/v1/" then return static(res, path) end
  res:json(openai.error(404, "no route for " .. req.method .. " " .. path))
end

-- ctx: node, api_key, default_model, default_temperature, max_tokens,
-- max_tokens_cap, system_prompt, response_timeout (s), topology (function).
-- opts: host, port, cors_origin, http limits. Returns the http server or nil, err.
function M.start(ctx, opts)
  math.randomseed(os.time() + math.floor(uv.hrtime() % 1e6))
  -- A long conversation's prompt is tokenized in pieces, the loop serving
  -- others between them (prompt.lua): the request's coroutine waits a turn.
  -- An idle handle, not a 0 ms timer: a timer started from a timer's
  -- callback runs in the same pass, so I/O would never get its turn.
  require("exo.prompt").pause = function()
    local co = coroutine.running()
    local idle = uv.new_idle()
    idle:start(function()
      idle:stop()
      idle:close()
      local ok, err = coroutine.resume(co)
      if not ok then io.stderr:write("exo: request failed: " .. tostring(err) .. "\n") end
    end)
    coroutine.yield()
  end
  return http.listen(opts.host or "0.0.0.0", opts.port or 52415, function(req, res) return handle(ctx, req, res) end, opts)
end

return M
