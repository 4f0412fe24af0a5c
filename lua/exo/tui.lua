-- tui.lua: the terminal view of a serving node.
--
-- When stdout is a terminal (and --disable-tui is not given) `exo` draws, twice a second, the
-- nodes of the ring (memory, flops, the layers each holds of the models served, round trip),
-- the requests in progress with their speed, and the latest events and log lines. The screen
-- is the terminal's alternate screen, restored on exit. Everything the process would write to
-- stderr meanwhile goes to $EXO_HOME/exo.log (the view shows its tail), so nothing scribbles
-- over the view. Lines are cut to the terminal's width and sections to its height; a resize
-- is picked up at the next redraw.
local uv = require "luv"
local native = require "exo.native"
local activity = require "exo.activity"

local M = {}

local View = {}
View.__index = View

-- ctx: cluster, ring, node (as the API's), api_url, log_path.
function M.start(ctx)
  local tty = uv.new_tty(1, false)
  if not tty then return nil end
  local self = setmetatable({ ctx = ctx, tty = tty, log_path = ctx.log_path, tail = {} }, View)
  -- stderr to the log file while the view owns the screen.
  self.saved_stderr = native.redirect_stderr(ctx.log_path)
  activity.sink = function(line) self:log(line) end
  tty:write("\27[?1049h\27[?25l") -- the alternate screen, no cursor
  self.timer = uv.new_timer()
  self.timer:start(0, 500, function()
    local ok, err = pcall(self.draw, self)
    if not ok then self:log("exo: terminal view: " .. tostring(err)) end
  end)
  return self
end

function View:log(line)
  io.stderr:write(line .. "\n")
  io.stderr:flush()
end

-- The last n lines of the log file.
function View:log_tail(n)
  local f = io.open(self.log_path, "rb")
  if not f then return {} end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - 8192))
  local text = f:read("*a") or ""
  f:close()
  local lines = {}
  for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local out = {}
  for i = math.max(1, #lines - n + 1), #lines do out[#out + 1] = lines[i] end
  return out
end

local function gb(mb) return mb and ("%.1f GB"):format(mb / 1024) or "?" end
local function cut(s, n) s = tostring(s) return #s > n and s:sub(1, n - 1) .. "~" or s end
local function model_name(m) return (tostring(m):match("([^/]+)$") or tostring(m)):gsub("%.gguf$", "") end

function View:draw()
  local width, height = self.tty:get_winsize()
  width, height = math.max(width or 80, 20), math.max(height or 24, 8)
  local out = {}
  local function line(s)
    if #out >= height then return end
    -- cut to the width (bytes: a multi-byte character at the edge may show as one narrower)
    out[#out + 1] = #s > width and s:sub(1, width) or s
  end
  local ctx = self.ctx
  local topo = ctx.topology()
  line(("exo · node %s · %s · %s"):format(topo.answering_node or "?", ctx.api_url or "",
    topo.open_cluster and "OPEN CLUSTER (no key: run exo key)" or "cluster key"))
  line("")
  line(("%-22s %-22s %9s %8s %-24s %8s"):format("node", "address", "memory", "TFLOPS", "layers", "rtt"))
  local held = {}
  -- (an empty list is json.empty_array, a string)
  for _, p in ipairs(type(topo.partitions) == "table" and topo.partitions or {}) do
    if type(p) == "table" and p.node_id then
      held[p.node_id] = (held[p.node_id] and held[p.node_id] .. ", " or "")
        .. ("%s %d-%d"):format(model_name(p.model), p.start_layer, p.end_layer - 1)
    end
  end
  for _, n in ipairs(topo.nodes or {}) do
    local caps = n.capabilities or {}
    local flops = type(caps.flops) == "table" and caps.flops.fp32 or nil
    line(("%-22s %-22s %9s %8s %-24s %8s"):format(cut(n.id, 15) .. (n.id == topo.answering_node and " (this)" or ""),
      cut(tostring(n.address) .. ":" .. tostring(n.port), 22), gb(caps.memory),
      flops and ("%.2f"):format(flops) or "?", cut(held[n.id] or "-", 24),
      n.rtt_us and ("%.1f ms"):format(n.rtt_us / 1000) or "-"))
  end
  line("")
  local reqs = activity.requests()
  line(("requests in progress: %d"):format(#reqs))
  for _, r in ipairs(reqs) do
    line(("  #%d %s %s  %d tokens  %.1f tok/s  %.1f s"):format(r.id, r.route, model_name(r.model), r.tokens, r:rate(),
      (uv.now() - r.started) / 1000))
  end
  line("")
  line("recent (" .. self.log_path .. "):")
  for _, l in ipairs(self:log_tail(math.max(1, height - #out))) do line("  " .. l) end
  self.tty:write("\27[H\27[2J" .. table.concat(out, "\r\n"))
end

function View:stop()
  if self.timer then
    self.timer:stop()
    self.timer:close()
    self.timer = nil
  end
  self.tty:write("\27[?25h\27[?1049l")
  self.tty:close()
  if self.saved_stderr then
    native.restore_stderr(self.saved_stderr)
    self.saved_stderr = nil
  end
  activity.sink = function(l) io.stderr:write(l .. "\n") end
end

return M
