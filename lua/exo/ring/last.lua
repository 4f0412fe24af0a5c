-- exo.ring.last: the last node of a request's plan: logits in, a sampled token out.
local ffi = require "ffi"
local bit = require "bit"
local native = require "exo.native"
local sampling = require "exo.sampling"
local generate = require "exo.generate"

local REPLY_OFFSET = native.WIRE_REPLY_OFFSET

return function(Ring, M)

local is_int = M.is_int

-- The last node's part of a request: how to turn logits into tokens. Set at
-- open, and again at "resume" when the asker reuses the request's caches for
-- its next turn. Returns nil or an error message.
function Ring:start_last(route, msg)
  route.done, route.in_ring, route.stopping = nil, nil, nil
  if msg.verify then
    if msg.verify ~= "argmax" and msg.verify ~= "rows" then return "unknown verify mode" end
    if route.verify_fixed and route.verify_fixed ~= msg.verify then return "another verify mode than at open" end
    route.verify, route.verify_fixed, route.sampler = msg.verify, msg.verify, nil
    return nil
  end
  if route.verify_fixed == "rows" then return "this request returns rows" end
  route.verify = nil
  local text_side, terr = self.node:model(route.model)
  if not text_side then return terr end
  if type(msg.prompt) ~= "table" or #msg.prompt < 1 or #msg.prompt >= route.n_ctx then return "no prompt" end
  for _, id in ipairs(msg.prompt) do
    if not is_int(id, 0, route.n_vocab - 1) then return "a prompt token outside the vocabulary" end
  end
  if type(msg.sampling) ~= "table" then return "no sampling settings" end
  local ok, sampler = pcall(sampling.new, route.n_vocab, msg.sampling)
  if not ok then return "bad sampling settings: " .. tostring(sampler) end
  -- A request started again on a new plan samples on from where the last
  -- node before left its random stream (the state its last token carried).
  if msg.rng ~= nil then
    if type(msg.rng) ~= "string" or not msg.rng:match("^" .. ("%x"):rep(16) .. "$") then
      return "a malformed random state"
    end
    local v = 0ULL
    for c in msg.rng:gmatch(".") do v = v * 16 + tonumber(c, 16) end
    sampler.rng.state[0] = v
  end
  route.sampler = sampler
  route.tokenizer = text_side.model.tokenizer
  route.history = {}
  for i, id in ipairs(msg.prompt) do route.history[i] = id end
  route.pos = #msg.prompt
  route.max_tokens = type(msg.max_tokens) == "number" and msg.max_tokens or math.huge
  route.generated = 0
  route.top_logprobs, route.lp_buf = nil, nil
  if type(msg.logprobs) == "number" then
    route.top_logprobs = msg.logprobs
    route.lp_buf = ffi.new("float[?]", route.n_vocab)
  end
  return nil
end

-- The last node: logits are ready; sample, tell the asker, feed the first node.
function Ring:on_output(rid)
  if rid >= REPLY_OFFSET then
    -- Logits rows for one of our own speculative requests.
    return self:deliver(rid - REPLY_OFFSET, { t = "rows", rows_id = rid })
  end
  local t0 = native.now()
  self:handle_output(rid)
  -- What the control plane adds to each token on the last node (bench-cluster reads it).
  self.output_count = (self.output_count or 0) + 1
  self.output_seconds = (self.output_seconds or 0) + native.now() - t0
end

function Ring:handle_output(rid)
  local route = self.routes[rid]
  if not route then return end
  route.in_ring = nil
  if route.stopping then
    route.stopping = nil
    self.cluster:send(route.asker, rid, { t = "stopped" })
  end
  if route.done then return end
  local cluster = self.cluster
  local logits, rows, position = cluster.wire:route_output(rid)
  if not logits then return end
  if route.verify == "rows" then
    -- We are the asker as well: the rows are read from this route.
    return self:deliver(rid, { t = "rows", rows_id = rid })
  elseif route.verify then
    -- A speculative verify pass: the target's choice for every row.
    local best = {}
    for i = 1, rows do best[i] = native.argmax(logits + (i - 1) * route.n_vocab, route.n_vocab) end
    cluster:send(route.asker, rid, { t = "verified", best = best })
    return
  end
  if not route.sampler then return end
  if position + rows < route.pos then
    -- A chunk of a long prompt: not the end of it yet.
    cluster:send(route.asker, rid, { t = "prefilled" })
    return
  end
  logits = ffi.cast("float*", logits)
  local lp
  if route.lp_buf then
    native.sample_log_softmax(logits, route.n_vocab, route.lp_buf)
  end
  local id = route.sampler:sample(logits, route.history)
  if route.tokenizer:is_eog(id) then
    route.done = true
    cluster:send(route.asker, rid, { t = "done", finish = "stop" })
    return
  end
  if route.lp_buf then lp = generate.logprob_entry(route.tokenizer, route.lp_buf, route.n_vocab, id, route.top_logprobs) end
  route.history[#route.history + 1] = id
  route.generated = route.generated + 1
  local finish
  if route.generated >= route.max_tokens or route.pos >= route.n_ctx - 1 then finish = "length" end
  -- The random state after this token travels with it: should the ring lose
  -- a node, the asker hands it to the next plan's last node.
  local rng = not route.sampler:greedy() and bit.tohex(route.sampler.rng.state[0]) or nil
  cluster:send(route.asker, rid, { t = "token", id = id, lp = lp, finish = finish, rng = rng })
  if finish then
    route.done = true
    return
  end
  local conn = cluster:conn_of(route.first)
  local ok, err = conn and cluster.wire:send_tokens(conn, rid, route.pos, { id })
  if not ok then
    route.done = true
    cluster:send(route.asker, rid, { t = "error", message = "cannot reach the first node: " .. tostring(err) })
    return
  end
  route.in_ring = true
  route.pos = route.pos + 1
end

end
