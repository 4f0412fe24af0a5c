-- activity.lua: what a node is doing, for its log and its terminal view.
--
-- Every generation a node runs (through any API) is tracked from start to end: its
-- model, how far it got and how fast. When it ends, one log line says what happened
-- (route, model, tokens in and out, time, status); with DEBUG=1 a line at the start too.
-- Cluster events (peers joining and leaving, plans changing, errors) go into a short
-- ring of recent events beside the log. The terminal view (tui.lua) reads both.
local uv = require "luv"

local M = {}

local MAX_EVENTS = 64
local requests, events = {}, {}
local next_id = 0
local debug_level = tonumber(os.getenv("DEBUG") or "0") or 0

-- Where log lines go: stderr, or the terminal view while it owns the screen.
M.sink = function(line) io.stderr:write(line .. "\n") end

local function clock() return os.date("%H:%M:%S") end

--- activity.event(kind, text): a cluster event (join, leave, plan, error, load).
function M.event(kind, text)
  events[#events + 1] = { time = clock(), kind = kind, text = text }
  if #events > MAX_EVENTS then table.remove(events, 1) end
  M.sink(("exo: %s"):format(text))
end

--- activity.begin(route, model, n_prompt) -> a request record; call :token() per token and
-- :finish(status, finish_reason) once.
local Request = {}
Request.__index = Request

function M.begin(route, model)
  next_id = next_id + 1
  local r = setmetatable({ id = next_id, route = route or "?", model = tostring(model or "?"), tokens = 0,
    n_prompt = 0, started = uv.now() }, Request)
  requests[r.id] = r
  if debug_level >= 1 then M.sink(("exo: request %d %s %s started"):format(r.id, r.route, r.model)) end
  return r
end

function Request:token()
  self.tokens = self.tokens + 1
  if self.tokens == 1 then self.first = uv.now() end
end

-- Tokens a second so far (decode only: from the first token on).
function Request:rate()
  if not self.first or self.tokens < 2 then return 0 end
  return (self.tokens - 1) / math.max((uv.now() - self.first) / 1000, 1e-3)
end

function Request:finish(status, result)
  if not requests[self.id] then return end
  requests[self.id] = nil
  local ms = uv.now() - self.started
  local n_in = result and result.n_prompt or self.n_prompt
  local n_out = result and result.n_generated or self.tokens
  M.sink(("exo: %s %s %d in, %d out, %.2f s, %s%s"):format(self.route, self.model, n_in or 0, n_out or 0, ms / 1000,
    tostring(status), result and result.finish_reason and (" (" .. result.finish_reason .. ")") or ""))
end

--- activity.requests() -> the requests in progress, oldest first.
function M.requests()
  local out = {}
  for _, r in pairs(requests) do out[#out + 1] = r end
  table.sort(out, function(a, b) return a.id < b.id end)
  return out
end

--- activity.events() -> the recent events, oldest first.
function M.events() return events end

return M
