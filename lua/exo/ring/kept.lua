-- exo.ring.kept: a conversation's caches across turns, kept on the ring by its asker.
local uv = require "luv"
local native = require "exo.native"
local generate = require "exo.generate"

local REPLY_OFFSET = native.WIRE_REPLY_OFFSET
local common_prefix = generate.common_prefix

return function(Ring, M)

-- Which nodes hold which layers: kept requests live only on the plan they were opened on.
function M.plan_signature(plan)
  local parts = {}
  for i, p in ipairs(plan) do parts[i] = ("%s:%d-%d"):format(p.node_id, p.start_layer, p.end_layer) end
  return table.concat(parts, ",")
end

-- After a turn the asker may keep the request open on every node (its routes
-- and KV sequences), remembering which tokens the ring holds. The next request
-- on the same plan that shares a prefix with them resumes it: only the new
-- tokens go round (the first frame's position rolls every cache back to the
-- common prefix). At most max_kept per model; the oldest is closed first.

function Ring:close_everywhere(rid, plan)
  self.cluster.wire:route_close(rid + REPLY_OFFSET)
  for _, p in ipairs(plan) do self.cluster:send(p.node_id, rid, { t = "close" }) end
end

-- The idle kept request for this model, plan and mode sharing the longest
-- prefix with ids, taken out of the pool; kept requests of other plans go.
function Ring:take_kept(model_path, sig, mode, ids)
  local list = self.kept[model_path]
  if not list then return nil end
  local best, best_len
  for i = #list, 1, -1 do
    local k = list[i]
    if k.sig ~= sig then
      table.remove(list, i)
      self:close_everywhere(k.rid, k.plan)
    elseif k.mode == mode then
      -- Worth resuming only when the prompt continues this conversation (it
      -- shares most of what the ring holds); a prompt sharing just the
      -- template opens a fresh request, so another conversation's cache lives on.
      local len = common_prefix(k.cached, ids)
      if len > 0 and len * 2 >= #k.cached and (not best or len > best_len) then best, best_len = i, len end
    end
  end
  return best and table.remove(list, best) or nil
end

-- Kept requests go after 10 idle minutes, or when the plan for their model
-- changed (they pin KV caches and shards on every node of the old plan).
function Ring:sweep_kept()
  local now = uv.now()
  for model_path, list in pairs(self.kept) do
    local entry = self.node.loaded[model_path]
    local plan = entry and self:plan(entry.model)
    local sig = plan and M.plan_signature(plan)
    for i = #list, 1, -1 do
      local k = list[i]
      if now - k.used > 600000 or k.sig ~= sig then
        table.remove(list, i)
        self:close_everywhere(k.rid, k.plan)
      end
    end
  end
end

function Ring:keep(model_path, k)
  local list = self.kept[model_path] or {}
  self.kept[model_path] = list
  k.used = uv.now()
  -- One cache per conversation: a kept request this one extends (two turns
  -- of one conversation at once) goes.
  for i = #list, 1, -1 do
    local other = list[i]
    if other.sig == k.sig and common_prefix(other.cached, k.cached) == math.min(#other.cached, #k.cached) then
      table.remove(list, i)
      self:close_everywhere(other.rid, other.plan)
    end
  end
  list[#list + 1] = k
  while #list > self.max_kept do
    local old = table.remove(list, 1)
    self:close_everywhere(old.rid, old.plan)
  end
end

end
