-- http.lua: an HTTP/1.1 server on luv, with the strict parser from libexo.
--
-- Each connection reads into a buffer; the C parser (exo_http_parse_head,
-- exo_http_chunked_decode) validates the head and decodes chunked bodies, so
-- no length from the network is trusted in Lua. Limits on head size, header
-- count and body size answer 431/413 with a JSON error. The head and the body
-- each have an absolute deadline (408 past it, however steadily the bytes
-- trickle in), an idle keep-alive connection is closed, and open connections
-- are capped per client address and overall: past a cap a new connection gets
-- 503 and is closed, so slow clients cannot hold every descriptor.
-- Handlers run in a coroutine per request (they may yield while the engine
-- computes) and answer either once (res:send) or as a stream of server-sent
-- events (res:sse_start, res:sse, res:finish). A client that disconnects
-- mid-stream marks res.closed and fires res.on_close, which the API uses to
-- cancel the generation. Requests on one connection are answered in order.
local uv = require "luv"
local native = require "exo.native"
local json = require "exo.json"

local M = {}

local REASONS = {
  [200] = "OK", [204] = "No Content", [400] = "Bad Request", [401] = "Unauthorized", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [413] = "Content Too Large",
  [417] = "Expectation Failed", [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [503] = "Service Unavailable", [504] = "Gateway Timeout",
  [505] = "HTTP Version Not Supported",
}

M.DEFAULTS = {
  max_head = 16 * 1024,        -- bytes of request line + headers
  -- Bytes of body. Decoding JSON runs on the loop: 8 MiB of "[],[],..." held
  -- it 0.3 s and built 250 MB of tables; 2 MiB still carries the largest
  -- prompt openai.lua takes (256 KiB) with every byte escaped as \u00XX.
  max_body = 2 * 1024 * 1024,
  head_timeout = 10000,        -- ms to receive a whole head
  body_timeout = 30000,        -- ms to receive a whole body
  idle_timeout = 60000,        -- ms a keep-alive connection may sit idle
  -- Open connections: overall and per client address. Settings rather than
  -- flags (EXO_HTTP_MAX_CONNECTIONS, EXO_HTTP_MAX_CONNECTIONS_PER_ADDRESS);
  -- far above what browsers (6 per host) or client pools open, far below the
  -- usual 1024-descriptor limit the wire and model files share.
  max_conns = tonumber(os.getenv("EXO_HTTP_MAX_CONNECTIONS")) or 512,
  max_conns_per_addr = tonumber(os.getenv("EXO_HTTP_MAX_CONNECTIONS_PER_ADDRESS")) or 64,
  cors_origin = "*",
}

local function error_body(status, message)
  local err_type = status >= 500 and "server_error" or "invalid_request_error"
  return json.encode { error = { message = message, type = err_type, param = json.null, code = json.null } }
end

-- ---- responses ------------------------------------------------------------------

local Response = {}
Response.__index = Response

function Response:head(status, headers, length)
  local lines = { ("HTTP/1.1 %d %s\r\n"):format(status, REASONS[status] or "Unknown") }
  local conn = self.conn
  local cors = conn.server.opts.cors_origin
  if cors then
    lines[#lines + 1] = "Access-Control-Allow-Origin: " .. cors .. "\r\n"
    lines[#lines + 1] = "Access-Control-Allow-Headers: Authorization, Content-Type, X-Api-Key, Anthropic-Version\r\n"
    lines[#lines + 1] = "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
  end
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v .. "\r\n" end
  if length then lines[#lines + 1] = "Content-Length: " .. length .. "\r\n" end
  if not self.keep_alive then lines[#lines + 1] = "Connection: close\r\n" end
  lines[#lines + 1] = "\r\n"
  return table.concat(lines)
end

-- One complete response.
function Response:send(status, body, content_type, headers)
  if self.sent or self.closed then return end
  self.sent = true
  body = body or ""
  headers = headers or {}
  headers["Content-Type"] = content_type or "application/json"
  self.conn:write(self:head(status, headers, #body) .. body)
  self.conn:finished(self)
end

function Response:json(status, value)
  local text = json.encode(value)
  if not text then return self:send(500, error_body(500, "response could not be encoded")) end
  self:send(status, text, "application/json")
end

function Response:error(status, message)
  self:send(status, error_body(status, message))
end

-- A streamed (chunked) response of content_type; write_chunk sends each piece.
function Response:stream_start(content_type)
  if self.sent or self.closed then return end
  self.sent, self.streaming = true, true
  self.conn:write(self:head(200, {
    ["Content-Type"] = content_type, ["Cache-Control"] = "no-cache", ["Transfer-Encoding"] = "chunked",
  }))
end

local function chunk(s) return ("%x\r\n%s\r\n"):format(#s, s) end

function Response:write_chunk(text)
  if self.closed or text == "" then return end
  self.conn:write(chunk(text))
end

-- Server-sent events: a chunked response of "data: ...\n\n" events, each
-- named when event is given ("event: NAME\n" first).
function Response:sse_start() self:stream_start("text/event-stream") end

function Response:sse(data, event)
  if self.closed then return end
  self.conn:write(chunk((event and "event: " .. event .. "\n" or "") .. "data: " .. data .. "\n\n"))
end

function Response:finish()
  if self.closed or self.done then return end
  self.done = true
  if self.streaming then self.conn:write("0\r\n\r\n") end
  self.conn:finished(self)
end

-- ---- connections --------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

function Conn:write(data)
  if self.closed then return end
  -- A failed write means the client is gone: close, which cancels its work.
  self.tcp:write(data, function(err)
    if err then self:close() end
  end)
end

function Conn:close()
  if self.closed then return end
  self.closed = true
  local server = self.server
  if server.conns[self] then
    server.conns[self] = nil
    server.n_conns = server.n_conns - 1
    local n = server.per_addr[self.addr] - 1
    server.per_addr[self.addr] = n > 0 and n or nil
  end
  if self.timer then
    self.timer:stop()
    self.timer:close()
  end
  if self.res and not self.res.done then
    self.res.closed = true
    if self.res.on_close then self.res.on_close() end
  end
  self.tcp:read_stop()
  self.tcp:close()
end

-- (Re)arms the one timer of the connection: what happens when it fires
-- depends on what we are waiting for.
function Conn:arm(ms, on_timeout)
  self.timer:stop()
  self.timer:start(ms, 0, on_timeout)
end

-- Answers an error and closes: used for protocol violations, where the rest
-- of the stream can no longer be trusted.
function Conn:fail(status, message)
  if self.closed then return end
  local res = setmetatable({ conn = self, keep_alive = false }, Response)
  self.res = res
  self.tcp:write(res:head(status, { ["Content-Type"] = "application/json" }, #error_body(status, message)
    ) .. error_body(status, message))
  self.tcp:shutdown(function() self:close() end)
  self.failed = true
  self.tcp:read_stop()
end

-- The head's deadline runs from its first byte (from the accept on a new
-- connection) and is armed once: more bytes never extend it.
function Conn:head_deadline()
  if self.head_armed then return end
  self.head_armed = true
  self:arm(self.server.opts.head_timeout, function()
    if #self.buf == 0 then return self:close() end -- nothing asked: nothing to answer
    self:fail(408, "the request head took too long to arrive")
  end)
end

function Conn:wait_head(fresh)
  self.phase = "head"
  self.head_armed = false
  if #self.buf > 0 or fresh then
    self:head_deadline()
  else
    self:arm(self.server.opts.idle_timeout, function() self:close() end)
  end
end

function Conn:finished(res)
  if res ~= self.res then return end
  self.res = nil
  if not res.keep_alive then
    self.phase = "closing"
    self.tcp:shutdown(function() self:close() end)
    return
  end
  self:wait_head()
  -- Pipelined bytes may already hold the next request.
  self:process()
end

local function lower_headers(buf, r)
  local headers = {}
  for i = 0, r.n_headers - 1 do
    local h = r.headers[i]
    local name = buf:sub(h.name_off + 1, h.name_off + h.name_len):lower()
    local value = buf:sub(h.value_off + 1, h.value_off + h.value_len)
    headers[name] = headers[name] and headers[name] .. ", " .. value or value
  end
  return headers
end

-- Moves the connection forward with what is buffered: parse a head, collect
-- a body, dispatch. Called on every read and after each response.
function Conn:process()
  local opts = self.server.opts
  while not self.closed and not self.failed and not self.res do
    if self.phase == "head" then
      if #self.buf == 0 then return end
      local n, r, status = native.http_parse_head(self.buf, opts.max_head)
      if n == 0 then return self:head_deadline() end
      if not n then return self:fail(status, r) end -- r is the message then
      local buf = self.buf
      local target = buf:sub(r.target_off + 1, r.target_off + r.target_len)
      local path, query = target:match("^([^?]*)%??(.*)$")
      self.req = {
        method = buf:sub(r.method_off + 1, r.method_off + r.method_len),
        target = target, path = path, query = query,
        headers = lower_headers(buf, r),
        keep_alive = r.keep_alive ~= 0,
        chunked = r.chunked ~= 0,
        content_length = tonumber(r.content_length),
      }
      if r.expect_continue ~= 0 then self:write("HTTP/1.1 100 Continue\r\n\r\n") end
      self.buf = buf:sub(n + 1)
      if self.req.content_length and self.req.content_length > opts.max_body then
        return self:fail(413, ("the body of %d bytes is over the limit of %d"):format(self.req.content_length,
          opts.max_body))
      end
      self.phase = "body"
      self.body_parts, self.body_len = {}, 0
      if self.req.chunked then self.chunked = native.http_chunked() end
      self:arm(opts.body_timeout, function() self:fail(408, "the request body took too long to arrive") end)
    elseif self.phase == "body" then
      local req = self.req
      if req.chunked then
        if #self.buf == 0 then return end
        local body, consumed, done = self.chunked:decode(self.buf, opts.max_body)
        if not body then
          local message, status = consumed, done -- a failure: nil, message, status
          return self:fail(status, message)
        end
        self.body_parts[#self.body_parts + 1] = body
        self.buf = self.buf:sub(consumed + 1)
        if not done then return end
      else
        local need = (req.content_length or 0) - self.body_len
        local take = math.min(need, #self.buf)
        if take > 0 then
          self.body_parts[#self.body_parts + 1] = self.buf:sub(1, take)
          self.body_len = self.body_len + take
          self.buf = self.buf:sub(take + 1)
        end
        if self.body_len < (req.content_length or 0) then return end
      end
      req.body = table.concat(self.body_parts)
      self.body_parts = nil
      self.timer:stop()
      self:dispatch(req)
    else
      return -- busy answering, or closing: nothing to parse now
    end
  end
end

function Conn:dispatch(req)
  local res = setmetatable({ conn = self, keep_alive = req.keep_alive }, Response)
  self.res = res
  self.phase = "busy"
  local handler = self.server.handler
  local co = coroutine.create(function()
    local ok, err = xpcall(handler, debug.traceback, req, res)
    if not ok then
      io.stderr:write("exo: handler error: " .. tostring(err) .. "\n")
      if not res.sent then
        res:error(500, "internal error while handling the request")
      else
        res:finish()
      end
    elseif not res.sent and not res.closed then
      res:error(500, "the handler sent no response")
    end
  end)
  local ok, err = coroutine.resume(co)
  if not ok then io.stderr:write("exo: handler coroutine failed: " .. tostring(err) .. "\n") end
end

-- ---- the server -----------------------------------------------------------------------

-- Listens on host:port; handler(req, res) runs per request in a coroutine.
-- Returns the server (server.port is the bound port) or nil, err.
function M.listen(host, port, handler, opts)
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  local server = { opts = o, handler = handler, conns = {}, n_conns = 0, per_addr = {} }
  local tcp = uv.new_tcp()
  local ok, err = tcp:bind(host, port)
  if not ok then
    tcp:close()
    return nil, ("cannot bind %s:%d: %s"):format(host, port, tostring(err))
  end
  ok, err = tcp:listen(128, function(lerr)
    if lerr then return end
    local client = uv.new_tcp()
    if not tcp:accept(client) then
      client:close()
      return
    end
    client:nodelay(true)
    local peer = client:getpeername()
    local addr = peer and peer.ip or "?"
    local conn = setmetatable({ tcp = client, server = server, buf = "", timer = uv.new_timer(), addr = addr }, Conn)
    local n_addr = server.per_addr[addr] or 0
    if server.n_conns >= o.max_conns or n_addr >= o.max_conns_per_addr then
      -- Refused before reading anything: the answer, then the close.
      local which = server.n_conns >= o.max_conns and ("%d open connections"):format(o.max_conns)
        or ("%d open connections from %s"):format(o.max_conns_per_addr, addr)
      conn:fail(503, "too many connections: the server holds " .. which .. " already")
      return
    end
    server.conns[conn] = true
    server.n_conns = server.n_conns + 1
    server.per_addr[addr] = n_addr + 1
    conn:wait_head(true)
    client:read_start(function(rerr, data)
      if rerr or not data then
        conn:close()
        return
      end
      if conn.failed then return end
      conn.buf = conn.buf .. data
      if conn.phase == "busy" and #conn.buf > o.max_head + o.max_body then
        -- A client pipelining without reading answers: stop reading it.
        return conn:fail(413, "too much pipelined data")
      end
      conn:process()
    end)
  end)
  if not ok then
    tcp:close()
    if tostring(err):match("EADDRINUSE") then
      return nil, ("the API port %d is in use (another exo or server?): pick another with --chatgpt-api-port (%s)")
        :format(port, tostring(err))
    end
    return nil, ("cannot listen on %s:%d: %s"):format(host, port, tostring(err))
  end
  server.tcp = tcp
  server.port = tcp:getsockname().port
  function server.close()
    for conn in pairs(server.conns) do conn:close() end
    if not tcp:is_closing() then tcp:close() end
  end
  return server
end

return M
