-- exo.ring.asker: the node a client asked, running the request round the ring.
local uv = require "luv"
local ffi = require "ffi"
local native = require "exo.native"
local models = require "exo.models"
local generate = require "exo.generate"
local json = require "exo.json"

-- Request settings the last node needs to sample as the client asked.
local SAMPLING_FIELDS = { "temperature", "top_k", "top_p", "min_p", "seed", "repeat_penalty", "presence_penalty",
  "frequency_penalty", "penalty_last_n" }
-- The logits of request R come back to its asker as request R + REPLY_OFFSET.
local REPLY_OFFSET = native.WIRE_REPLY_OFFSET
local common_prefix = generate.common_prefix

return function(Ring, M)

function Ring:deliver(rid, msg)
  local st = self.asking[rid]
  if not st then return end
  -- Only the request's own nodes speak for it (msg.from is nil for local news).
  if msg.from and not st.nodes[msg.from] then return end
  st.inbox[#st.inbox + 1] = msg
  if st.waiting then
    st.waiting = false
    local ok, err = coroutine.resume(st.co)
    if not ok then io.stderr:write("exo: request failed: " .. tostring(err) .. "\n") end
  end
end

-- The next message for request st, waiting (yielding) up to timeout seconds;
-- past it, an error saying why (by default that the ring did not answer).
function Ring:wait(st, timeout, why)
  if #st.inbox == 0 then
    local timer = uv.new_timer()
    timer:start(math.max(0, math.ceil(timeout * 1000)), 0, function()
      self:deliver(st.id, { t = "error", message = why or ("no answer from the ring for %d s"):format(timeout) })
    end)
    st.waiting = true
    coroutine.yield()
    timer:stop()
    timer:close()
  end
  return table.remove(st.inbox, 1)
end

-- lua-cjson turns [] into {}: the logprob entries' lists must stay lists.
local function fix_logprob_entry(e)
  if type(e) ~= "table" then return nil end
  if type(e.bytes) ~= "table" or #e.bytes == 0 then e.bytes = json.empty_array end
  if type(e.top_logprobs) ~= "table" or #e.top_logprobs == 0 then
    e.top_logprobs = json.empty_array
  else
    for _, t in ipairs(e.top_logprobs) do
      if type(t.bytes) ~= "table" or #t.bytes == 0 then t.bytes = json.empty_array end
    end
  end
  return e
end

-- Whether a request can be decoded speculatively over the ring (logprobs
-- are not carried back from a verify pass).
function M.can_speculate(req)
  return not req.logprobs
end

-- How a speculative verify pass answers: the target's argmax per row for
-- greedy requests without penalties, the logits rows otherwise.
local function verify_mode(req)
  local penalties = (req.repeat_penalty or 1) ~= 1 or (req.presence_penalty or 0) ~= 0
    or (req.frequency_penalty or 0) ~= 0
  return (req.temperature == 0 and not penalties) and "argmax" or "rows"
end


--- ring.peer_model_name(requested, path) -> how peers are told of the model
--- a request named `requested` (nil: the default) whose file is `path` (its
--- real path): the catalogue id when the request named one, else the file
--- relative to the model store; never the client's spelling (a peer resolves
--- names as its clients' are, docs/wire.md's `open`). A file outside the store
--- (this node runs with --allow-model-paths, or the operator named it) goes
--- by its real path: a peer takes it only if it allows paths too.
function M.peer_model_name(requested, path)
  requested = requested or models.default_id
  models.load_user_file()
  if models.registry[requested] then return requested end
  local store = native.realpath(models.store())
  if store and path:sub(1, #store + 1) == store .. "/" then return path:sub(#store + 2) end
  return path
end

-- How often a request is started again on a new plan (a node died under it)
-- and how long the asker waits for views to agree (a node refused the plan).
M.MAX_REPLANS = 8
M.PLAN_RETRY_DELAYS = { 0.1, 0.2, 0.4, 0.8, 1.6, 2, 2, 2, 2, 2 }

-- Waits (yields) for `seconds` on the calling coroutine.
function Ring:sleep(seconds)
  local co, timer = coroutine.running(), uv.new_timer()
  timer:start(math.floor(seconds * 1000), 0, function()
    timer:close()
    local ok, err = coroutine.resume(co)
    if not ok then io.stderr:write("exo: request failed: " .. tostring(err) .. "\n") end
  end)
  coroutine.yield()
end

-- The nodes of plan this node no longer sees.
function Ring:gone(plan)
  local gone = {}
  for _, p in ipairs(plan) do
    if not self.cluster:conn_of(p.node_id) then gone[#gone + 1] = p.node_id end
  end
  return gone
end

-- After a request failed on plan: the new plan to run it on, or nil, why
-- when there is none. A failure once the ring was running (wait) that came
-- before the asker saw a node go (the node before a dead one notices first)
-- waits up to the peer timeout for the view to change; nothing gone by then
-- means the failure was not a death. A refused open is final at once.
function Ring:replan(model, plan, why, wait)
  local gone = self:gone(plan)
  local deadline = uv.now() + (wait and self.cluster.peer_timeout + 1 or 0) * 1000
  while #gone == 0 and uv.now() < deadline do
    self:sleep(0.1)
    gone = self:gone(plan)
  end
  if #gone == 0 then return nil, why end
  local new, err = self:plan(model)
  if not new then
    return nil, ("node %s left mid-request and no partition of the nodes left can hold %s: %s"):format(
      table.concat(gone, ", "), model.id or "the model", err)
  end
  return new, ("node %s left: %s"):format(table.concat(gone, ", "), why)
end

-- Runs one request over plan on the calling coroutine; the same contract as
-- generate.Session:generate (model: exo.model with its tokenizer). With draft
-- (a local session on a draft model) and g, the request is decoded
-- speculatively: the draft runs here, the target's verify pass goes round the
-- ring as one multi-row frame.
--
-- A node dying under a request costs its client a pause: the request
-- starts again on the plan over the nodes left, from its prompt and the
-- tokens the client already has, with the last node's random state carried
-- over (carry), so the stream goes on with nothing lost or repeated (a
-- speculative request goes on plainly, below). A node
-- whose view gives another plan refuses it; the asker tries again, with
-- backoff, once views agree.
function Ring:generate(model, ids, req, plan, on_text, should_stop, draft, g)
  local mode = draft and verify_mode(req) or "plain"
  local sig = M.plan_signature(plan)
  local kept = self:take_kept(model.path, sig, mode, ids)
  self.plans[model.path] = self.plans[model.path] or sig
  local carry = { t0 = native.now(), replans = 0, refusals = 0 }
  while true do
    local rid = kept and kept.rid or self:new_request_id()
    carry.rid = carry.rid or rid -- the request's name in the log, whatever its attempts are called
    -- A kept request goes on under the name its nodes opened it by.
    local st = { id = rid, co = coroutine.running(), inbox = {}, plan = plan, nodes = {}, kept = kept, mode = mode,
      n_vocab = kept and kept.n_vocab,
      peer_model = kept and kept.peer_model or M.peer_model_name(req.model, model.path) }
    st.plan_id = self:plan_id(st.peer_model)
    for _, p in ipairs(plan) do st.nodes[p.node_id] = true end
    self.asking[rid] = st
    -- Whatever happens (an error raised on the way included), the request is
    -- either kept with a known cache or closed on every node it was opened on.
    local ok, res, err = pcall(self.run_request, self, st, model, ids, req, on_text, should_stop, draft, g, carry)
    self.asking[rid] = nil
    if ok and res and st.cached then
      self:keep(model.path, { rid = rid, sig = sig, mode = mode, plan = plan, cached = st.cached, n_vocab = st.n_vocab,
        peer_model = st.peer_model })
    else
      self:close_everywhere(rid, plan)
    end
    if not ok then return nil, "the request failed: " .. tostring(res) end
    if res then return res, err end
    local why = err
    if st.resume_refused then
      -- A node that no longer holds its part of a kept request: start afresh.
      kept = nil
    elseif st.plan_refused and carry.refusals < #M.PLAN_RETRY_DELAYS then
      carry.refusals = carry.refusals + 1
      self:note_replan(("request %.0f: %s; trying again in %.1f s"):format(carry.rid, why,
        M.PLAN_RETRY_DELAYS[carry.refusals]))
      self:sleep(M.PLAN_RETRY_DELAYS[carry.refusals])
      local new, perr = self:plan(model)
      if not new then return nil, perr end
      plan, kept = new, nil
    elseif not carry.done and carry.replans < M.MAX_REPLANS then
      local new, rwhy = self:replan(model, plan, why, st.opened)
      if not new then return nil, rwhy end
      carry.replans = carry.replans + 1
      if draft then
        -- The verify passes' state died with the old plan: the rest of the
        -- answer is decoded plainly. Speculative decoding is exact, so a
        -- greedy answer goes on with the same tokens; a sampled one goes on
        -- from its seed (the draw order differs from an undisturbed run).
        draft, mode = nil, "plain"
      end
      local t = native.now()
      self:note_replan(("request %.0f re-planned after %d tokens (%s): %s -> %s"):format(carry.rid,
        carry.sink and #carry.sink.tokens or 0, rwhy, sig, M.plan_signature(new)))
      carry.replanned_at = t
      plan, kept = new, nil
    else
      return nil, why
    end
    sig = M.plan_signature(plan)
  end
end

-- A prompt goes round the ring in chunks whose hidden states fit a frame
-- (EXO_RING_CHUNK makes them smaller, for tests).
function Ring:chunk_size(model)
  local fit = math.floor(16 * 2 ^ 20 / math.max(model.n_embd or 4096, 1)) - 1
  return math.max(1, math.min(tonumber(os.getenv("EXO_RING_CHUNK") or "") or 2048, fit))
end

-- ---- members fetching the model an open names ----------------------------------------
-- A member whose store lacks the model says `ready` with `fetching` (and its
-- `done` and `total` bytes) every few seconds until it has it (member.lua).
-- Each such message keeps the open alive, so a peer that sent them forever
-- would hold the request, and its client, forever: the wait is bounded by a
-- total (fetch_timeout, `--fetch-timeout`) and by a stall rule (no new bytes
-- for fetch_stall seconds, `--fetch-stall`), each naming the node and the
-- model when it ends the open. Each node's latest fetch stays in
-- self.fetches, which /v1/download/progress lists (api/models_api.lua).
M.FETCH_TIMEOUT = 6 * 3600
M.FETCH_STALL = 600
-- Nodes whose latest fetch is remembered (node ids come from plans, but a
-- long-lived node may see many come and go).
local MAX_FETCHES = 64

local function byte_count(v)
  return type(v) == "number" and v >= 0 and v < 2 ^ 53 and v or nil
end

local function mb(n) return ("%.1f MB"):format(n / 1e6) end

-- Records fetching message m (from a node of st's plan).
function Ring:note_fetch(st, m)
  local now, id = uv.now(), m.from
  local done, total = byte_count(m.done) or 0, byte_count(m.total) or 0
  local f = st.fetches[id]
  if not f then
    f = { node = id, model = st.peer_model, status = "in_progress", started = now, progress_at = now, at = now,
      done = done, total = total, speed = 0 }
    st.fetches[id] = f
    self.fetches = self.fetches or {}
    if not self.fetches[id] then
      local n, oldest = 0, nil
      for k, g in pairs(self.fetches) do
        n = n + 1
        if g.status ~= "in_progress" and (not oldest or g.at < self.fetches[oldest].at) then oldest = k end
      end
      if n >= MAX_FETCHES and oldest then self.fetches[oldest] = nil end
    end
    self.fetches[id] = f
    return
  end
  -- The speed over the last report (a member's own figure when it sends one).
  local dt = (now - f.at) / 1000
  f.speed = byte_count(m.speed) or (dt > 0 and math.max(0, done - f.done) / dt or f.speed)
  if done > f.done then f.done, f.progress_at = done, now end
  f.total, f.at = math.max(f.total, total), now
end

-- Seconds until fetch f reaches a bound, and what the open fails with then.
function Ring:fetch_bound(f)
  local limit, stall, now = self.fetch_timeout or M.FETCH_TIMEOUT, self.fetch_stall or M.FETCH_STALL, uv.now()
  local left = limit - (now - f.started) / 1000
  local stall_left = stall - (now - f.progress_at) / 1000
  if left <= stall_left then
    return left, ("node %s has been fetching model '%s' for %g s, the limit (--fetch-timeout %g; %s of %s done)")
      :format(f.node, f.model, limit, limit, mb(f.done), mb(f.total))
  end
  return stall_left, ("node %s's fetch of model '%s' made no progress for %g s (--fetch-stall %g; %s of %s done)")
    :format(f.node, f.model, stall, stall, mb(f.done), mb(f.total))
end

-- The next answer to st's open: within the open's timeout, and woken at the
-- nearest fetch bound (with its message) when that comes first.
function Ring:wait_open(st)
  local timeout, why = self.open_timeout, nil
  for _, f in pairs(st.fetches) do
    if f.status == "in_progress" then
      local left, fwhy = self:fetch_bound(f)
      if left < timeout then timeout, why = left, fwhy end
    end
  end
  return self:wait(st, timeout, why)
end

-- Why st's open must end now (a fetch past its bound), or nil.
function Ring:fetch_overdue(st)
  for _, f in pairs(st.fetches) do
    if f.status == "in_progress" then
      local left, why = self:fetch_bound(f)
      if left <= 0 then
        f.status, f.error = "failed", why
        return why
      end
    end
  end
end

-- A node's answer to the open (m, not fetching) ends its fetch, if it had one.
function Ring:end_fetch(st, m)
  local f = m.from and st.fetches[m.from]
  if not f or f.status ~= "in_progress" then return end
  if m.t == "ready" then
    f.status, f.speed = "complete", 0
    f.done = math.max(f.done, f.total)
  else
    f.status, f.error = "failed", tostring(m.message or m.t)
  end
  f.at = uv.now()
end

-- The open failed (why): fetches still running are no longer followed.
function Ring:open_failed(st, why)
  for _, f in pairs(st.fetches) do
    if f.status == "in_progress" then
      f.status, f.at = "failed", uv.now()
      f.error = ("the request that needed it ended first (%s); node %s may still be fetching it"):format(why, f.node)
    end
  end
  return nil, why
end

-- carry: what outlives one attempt of the request (Ring:generate): t0, the
-- client's text sink and the last node's random state (rng) once a token came.
function Ring:run_request(st, model, ids, req, on_text, should_stop, draft, g, carry)
  local t0 = carry.t0
  local rid, plan, cluster = st.id, st.plan, self.cluster
  -- Started again after a node died: the ring computes the prompt and the
  -- tokens the client has, and samples on from there.
  local prompt_len, sent = #ids, carry.sink and #carry.sink.tokens or 0
  if sent > 0 then
    local run = { unpack(ids) }
    for i = 1, sent do run[prompt_len + i] = carry.sink.tokens[i] end
    ids = run
  end

  local sampling_params = {}
  for _, k in ipairs(SAMPLING_FIELDS) do sampling_params[k] = req[k] end
  for i, p in ipairs(plan) do
    -- A kept request is resumed: every node checks it still holds its part,
    -- the last one takes this turn's settings.
    local msg = { t = st.kept and "resume" or "open", model = st.peer_model, start = p.start_layer, stop = p.end_layer,
      next = plan[i + 1] and plan[i + 1].node_id or nil, prev = plan[i - 1] and plan[i - 1].node_id or nil,
      last = plan[#plan].node_id, first = plan[1].node_id, n_ctx = self.node.n_ctx, wire_dtype = self.wire_dtype,
      plan_id = st.plan_id }
    if i == #plan and draft then
      -- Greedy needs only the target's choice per row; sampling needs the rows.
      msg.verify = st.mode
    elseif i == #plan then
      msg.sampling = sampling_params
      msg.prompt = ids
      msg.max_tokens = req.max_tokens and req.max_tokens - sent
      msg.rng = carry.rng
      msg.logprobs = req.logprobs and (req.top_logprobs or 0) or nil
    end
    local ok, err = cluster:send(p.node_id, rid, msg)
    if not ok then
      return nil, ("cannot reach node %s: %s"):format(p.node_id, err)
    end
  end
  -- A node still fetching the model says so every few seconds: each message
  -- restarts the open's timeout, within the fetch's bounds (above).
  st.fetches = {}
  local n_ready = 0
  while n_ready < #plan do
    local m = self:wait_open(st)
    local fetching = m.t == "ready" and m.fetching and true
    if not fetching then
      self:end_fetch(st, m)
    elseif m.from then
      self:note_fetch(st, m)
    end
    local overdue = self:fetch_overdue(st)
    if overdue then return self:open_failed(st, overdue) end
    if not fetching then
      n_ready = n_ready + 1
      if m.t ~= "ready" then
        st.resume_refused = st.kept ~= nil and m.t == "error"
        st.plan_refused = m.code == "plan_mismatch"
        return self:open_failed(st, m.message or ("node %s answered %s"):format(tostring(m.from), tostring(m.t)))
      end
      if type(m.n_vocab) == "number" then st.n_vocab = m.n_vocab end
    end
  end
  st.opened = true
  if draft then
    local res, serr = self:speculate(st, model, ids, req, on_text, should_stop, draft, g, carry)
    return res, serr
  end
  -- Only what the ring does not hold yet goes round (the last prompt token
  -- always: its logits start the answer). All but the last chunk of a long
  -- prompt are answered "prefilled".
  local common = st.kept and math.min(common_prefix(st.kept.cached, ids), #ids - 1) or 0
  local first_conn, chunk = cluster:conn_of(plan[1].node_id), self:chunk_size(model)
  if not first_conn then return nil, ("node %s is not connected"):format(plan[1].node_id) end
  local at = common
  while #ids - at > chunk do
    local ok, err = self.cluster.wire:send_tokens(first_conn, rid, at, { unpack(ids, at + 1, at + chunk) })
    if not ok then return nil, "cannot send the prompt: " .. err end
    local m = self:wait(st, self.step_timeout)
    if m.t ~= "prefilled" then return nil, m.message or "the ring failed during the prompt" end
    at = at + chunk
  end
  local ok, err = self.cluster.wire:send_tokens(first_conn, rid, at, { unpack(ids, at + 1) })
  if not ok then
    return nil, "cannot send the prompt: " .. err
  end

  local sink = carry.sink or generate.text_sink(model.tokenizer, req, on_text)
  carry.sink = sink
  local finish
  while true do
    local m = self:wait(st, self.step_timeout)
    if m.t == "token" or m.t == "done" then
      carry.ttft = carry.ttft or native.now() - t0
      if carry.replanned_at then
        -- From the failure's detection to the stream going on (docs/cluster.md).
        self.last_resume_s = native.now() - carry.replanned_at
        self:note_replan(("request %.0f resumed %.2f s after its re-plan"):format(carry.rid, self.last_resume_s))
        carry.replanned_at = nil
      end
    end
    if m.t == "token" then
      if type(m.rng) == "string" then carry.rng = m.rng end
      if type(m.id) ~= "number" or m.id ~= math.floor(m.id) or m.id < 0 or m.id >= model.tokenizer.n_vocab then
        return nil, "a malformed token came back from the ring"
      end
      if sink:push(m.id, req.logprobs and fix_logprob_entry(m.lp)) then
        finish = "stop"
        break
      end
      if m.finish then
        finish = m.finish
        break
      end
    elseif m.t == "done" then
      finish = m.finish or "stop"
      break
    else
      return nil, m.message or "the ring failed"
    end
    if should_stop and should_stop() then
      finish = "cancelled"
      break
    end
  end
  -- The answer is complete: nothing after this point starts it again.
  carry.done = true
  local text = sink:finish(finish)
  -- Keep the caches for the next turn: once the last node has stopped and no
  -- token of this turn is going round, the ring holds the prompt and every
  -- token but (maybe) the last.
  if cluster:send(plan[#plan].node_id, rid, { t = "stop" }) then
    local m
    repeat m = self:wait(st, self.step_timeout) until m.t ~= "token" and m.t ~= "done" -- sampled before the stop
    if m.t == "stopped" then
      st.cached = { unpack(ids, 1, prompt_len) }
      for i = 1, #sink.tokens - 1 do st.cached[#st.cached + 1] = sink.tokens[i] end
    end
  end
  local res = sink:result(text, finish, prompt_len, prompt_len - common, t0, carry.ttft)
  res.plan = plan
  res.replans = carry.replans > 0 and carry.replans or nil
  return res
end

-- The target as speculative.generate sees it when its layers are spread over
-- the ring: a verify pass is a multi-row frame to the first node, and its
-- answer comes back as the target's argmax per row (greedy) or as the logits
-- rows themselves (sampling; into a collector route here). Truncating only
-- forgets here: the next frame starts at the accepted position, and every
-- shard rolls its cache back to it as the frame arrives (wire.c).
local Remote = {}
Remote.__index = Remote

function Remote:n_ctx() return self.n_ctx_ end

function Remote:truncate(n)
  for i = #self.cached, n + 1, -1 do self.cached[i] = nil end
  return true
end

-- Sends tokens at the end of the cached context and waits for the answer.
function Remote:pass(tokens, all_logits)
  local ring, st = self.ring, self.st
  local ok, err = ring.cluster.wire:send_tokens(self.first, st.id, #self.cached, tokens, nil, all_logits)
  if not ok then return nil, "cannot reach the first node: " .. err end
  local m = ring:wait(st, ring.step_timeout)
  if m.t ~= "verified" and m.t ~= "rows" then return nil, m.message or "the ring failed" end
  for i = 1, #tokens do self.cached[#self.cached + 1] = tokens[i] end
  return m
end

function Remote:sync(ids)
  self:truncate(common_prefix(self.cached, ids))
  while #self.cached < #ids do
    local from = #self.cached
    local m, err = self:pass({ unpack(ids, from + 1, math.min(#ids, from + self.chunk)) }, false)
    if not m then return nil, err end
  end
  return true
end

function Remote:extend_argmax(tokens)
  local m, err = self:pass(tokens, true)
  if not m then return nil, err end
  if type(m.best) ~= "table" or #m.best ~= #tokens then return nil, "a malformed verify answer" end
  for _, b in ipairs(m.best) do
    if type(b) ~= "number" or b < 0 or b >= self.shard.n_vocab then return nil, "a malformed verify answer" end
  end
  return m.best
end

function Remote:extend(tokens)
  local m, err = self:pass(tokens, true)
  if not m then return nil, err end
  local rows, n = self.ring.cluster.wire:route_output(m.rows_id)
  if not rows or n ~= #tokens then return nil, "the verify pass returned the wrong rows" end
  return ffi.cast("float*", rows)
end

-- The asker's speculative decoding: the draft runs here, the target round the ring.
function Ring:speculate(st, model, ids, req, on_text, should_stop, draft, g, carry)
  local wire = self.cluster.wire
  local n_vocab = st.n_vocab or model.tokenizer.n_vocab -- the head's rows, as the last node said
  if not st.kept then
    local ok, err = wire:collect_open(st.id + REPLY_OFFSET, n_vocab)
    if not ok then return nil, err end
  end
  local target = setmetatable({ ring = self, st = st, first = self.cluster:conn_of(st.plan[1].node_id),
    n_ctx_ = self.node.n_ctx, cached = st.kept and { unpack(st.kept.cached) } or {}, tokenizer = model.tokenizer,
    shard = { n_vocab = n_vocab }, chunk = self:chunk_size(model) }, Remote)
  local res, serr = require("exo.speculative").generate(target, draft, ids, req, on_text, should_stop, g, carry)
  if res then
    res.plan = st.plan
    st.cached = target.cached -- verify passes run one at a time: nothing is still going round
  end
  return res, serr
end

end
