-- test_ring_quotas.lua: what a peer may hold on this node, and the model
-- name peers are told (issue 12).
--
-- A peer's opens count against its quota (requests, layer ranges, and KV
-- bytes: K and V in f16 for each of the shard's layers); past it the asker gets an `error`,
-- nobody else loses anything, the refusal is logged once, and closing a
-- request or losing the peer gives its share back. The asker tells peers a
-- catalogue id or a store-relative file name, never the client's spelling.
local ring = require "exo.ring"
local models = require "exo.models"
local native = require "exo.native"

-- ---- the arithmetic ----
-- Llama 3.1 8B (32 layers, 8 KV heads of 128) at 2048 positions: 256 MiB, as llama.cpp reports.
local llama8b = { layer_start = 0, layer_end = 32, n_head_kv = 8, head_dim = 128 }
assert(ring.kv_bytes(llama8b, 2048) == 256 * 2 ^ 20, ring.kv_bytes(llama8b, 2048))
-- A shard holds only its own layers' caches.
assert(ring.kv_bytes({ layer_start = 8, layer_end = 16, n_head_kv = 8, head_dim = 128 }, 2048) == 64 * 2 ^ 20)

local q = ring.new_quotas { max_requests = 64, total_requests = 100, max_kv = 1000, total_kv = 1500 }
for _ = 1, 64 do assert(q:take("a", 1, 0)) end
local ok, why, kind = q:take("a", 1, 0)
assert(not ok and why == "peer a has 64 requests open on this node (the limit)" and kind == "requests", why)
assert(select(1, q:usage("a")) == 64)
for _ = 1, 36 do assert(q:take("b", 1, 0)) end
ok, why, kind = q:take("c", 1, 0)
assert(not ok and kind == "total_requests" and why:match("100 requests"), why)
q:give("a", 1, 0)
assert(q:take("c", 1, 0))
-- KV: per peer, then for all peers; a refusal takes nothing.
assert(q:take("a", 0, 900))
ok, why, kind = q:take("a", 0, 200)
assert(not ok and kind == "kv" and why:match("^peer a would hold"), why)
assert(select(2, q:usage("a")) == 900)
assert(q:take("b", 0, 500))
ok, why, kind = q:take("b", 0, 200)
assert(not ok and kind == "total_kv", why)
q:give("a", 0, 900)
assert(q:take("b", 0, 200))
local defaults = ring.new_quotas()
assert(defaults.max_requests == 64 and defaults.total_requests == 256 and defaults.max_kv >= 2 ^ 30)

-- ---- a node's part: on_open with a stub engine and wire ----
local sent, handlers, lost = {}, {}, {}
local cluster = {
  id = "self",
  on = function(_, kind, fn) handlers[kind] = fn end,
  on_lost = function(_, fn) lost[#lost + 1] = fn end,
  send = function(_, to, rid, msg)
    sent[#sent + 1] = { to = to, rid = rid, msg = msg }
    return true
  end,
  conn_of = function(_, id) return (id == "self" and 0) or 1 end,
  -- The view a plan id is computed from (ring/init.lua).
  topology = function() return { nodes = { self = { id = "self", capabilities = {} } } } end,
  wire = { route_open = function() return true end, route_allow = function() end, route_close = function() end,
    stats = function() return { in_flight = 0 } end },
}
local shard = { n_ctx_train = 4096, is_last = false, n_vocab = 100, n_head_kv = 8, head_dim = 128, layer_start = 0,
  layer_end = 32 }
local seqs_freed = 0
local fail_seq = false
function shard:new_seq()
  if fail_seq then return nil, "out of memory for a KV cache" end
  return { free = function() seqs_freed = seqs_freed + 1 end }
end
local per_open = ring.kv_bytes(shard, 2048)
local r = ring.new({ n_ctx = 2048 }, cluster,
  { quotas = { max_requests = 3, total_requests = 5, max_kv = per_open * 3, total_kv = per_open * 100 } })
r.sweeper:stop()
r.sweeper:close()
local entry = { shard = shard, refs = 0, key = "m@0-32", model = "/m" }
function r:shard_for() return entry end

local logged = {}
local real_stderr = io.stderr
io.stderr = { write = function(_, s) logged[#logged + 1] = s end, flush = function() end }

local function open(from, rid, n_ctx)
  sent = {}
  r:on_open(from, rid, { t = "open", model = "m", start = 0, stop = 32, n_ctx = n_ctx or 2048, first = from,
    next = "n2" })
  assert(#sent == 1 and sent[1].to == from and sent[1].rid == rid, "one answer to the asker")
  return sent[1].msg
end

for rid = 1, 3 do assert(open("A", rid).t == "ready") end
local m = open("A", 4)
assert(m.t == "error" and m.message == "node self: peer A has 3 requests open on this node (the limit)", m.message)
assert(not r.routes[4] and r.routes[1] and r.routes[2] and r.routes[3], "a refusal frees nothing of others")
m = open("A", 5)
assert(m.t == "error")
assert(#logged == 1 and logged[1]:match("peer A has 3 requests"), "logged once: " .. table.concat(logged))
-- Another peer is not held back by A, up to the node's total.
assert(open("B", 11).t == "ready" and open("B", 12).t == "ready")
m = open("B", 13)
assert(m.t == "error" and m.message:match("peers have 5 requests open on this node"), m.message)
-- This node's own requests are not counted.
assert(open("self", 21).t == "ready")
-- A close gives the share back.
handlers.close("A", 1)
assert(not r.routes[1] and select(1, r.quotas:usage("A")) == 2)
assert(open("B", 13).t == "ready")
-- A context beyond the model's (and this node's) is refused.
handlers.close("B", 13)
m = open("B", 14, 100000)
assert(m.t == "error" and m.message:match("a context of 100000"), m.message)
assert(select(1, r.quotas:usage("B")) == 2, "a refused open gives its share back")
-- KV: B holds two caches of 2048; a third of 4096 would pass three.
m = open("B", 15, 4096)
assert(m.t == "error"
  and m.message:match("^node self: peer B would hold 1024 MiB of KV cache on this node %(the limit is 768 MiB%)"),
  m.message)
assert(select(2, r.quotas:usage("B")) == 2 * per_open and r.routes[11] and r.routes[12])
-- A failure after the KV was counted gives it back.
fail_seq = true
m = open("C", 31)
assert(m.t == "error" and select(1, r.quotas:usage("C")) == 0 and select(2, r.quotas:usage("C")) == 0)
fail_seq = false
-- Losing the peer gives back everything it held.
for _, fn in ipairs(lost) do fn("A", "gone") end
assert(select(1, r.quotas:usage("A")) == 0 and select(2, r.quotas:usage("A")) == 0)
assert(not r.routes[2] and not r.routes[3] and r.routes[11])
assert(open("A", 41).t == "ready")
assert(r.quotas.requests == 3, r.quotas.requests) -- B's two and A's one; never this node's own

-- Layer ranges: each is a shard in memory; a peer may hold only a few, all peers a few more.
local r2 = ring.new({ n_ctx = 2048 }, cluster, { quotas = { max_ranges = 2, total_ranges = 3 } })
r2.sweeper:stop()
r2.sweeper:close()
function r2:shard_for() return entry end
local function open_range(from, rid, stop)
  sent = {}
  r2:on_open(from, rid, { t = "open", model = "m", start = 0, stop = stop, n_ctx = 64, first = from, next = "n2" })
  return sent[1].msg
end
assert(open_range("A", 1, 32).t == "ready" and open_range("A", 2, 16).t == "ready")
m = open_range("A", 3, 8)
assert(m.t == "error" and m.message == "node self: peer A has 2 layer ranges loaded on this node (the limit)",
  tostring(m.message))
assert(open_range("A", 4, 16).t == "ready", "a range the peer holds already")
assert(open_range("B", 5, 4).t == "ready")
m = open_range("B", 6, 2)
assert(m.t == "error" and m.message:match("peers have 3 layer ranges loaded"), m.message)
assert(open_range("self", 7, 2).t == "ready", "this node's own requests are not counted")
r2:close_route(2)
r2:close_route(4)
assert(open_range("B", 6, 2).t == "ready")
io.stderr = real_stderr

-- ---- the model name peers are told ----
local tmp = os.tmpname()
os.remove(tmp)
os.execute(("mkdir -p '%s/downloads/sub' '%s/elsewhere'"):format(tmp, tmp))
for _, f in ipairs { "/downloads/sub/x.gguf", "/elsewhere/y.gguf" } do
  local fh = assert(io.open(tmp .. f, "wb"))
  fh:write("GGUF")
  fh:close()
end
local real_store = models.store
models.store = function() return tmp .. "/downloads" end
local in_store = native.realpath(tmp .. "/downloads/sub/x.gguf")
local outside = native.realpath(tmp .. "/elsewhere/y.gguf")
assert(ring.peer_model_name("smollm2-135m", "/anything") == "smollm2-135m")
assert(ring.peer_model_name(nil, "/anything") == models.default_id)
assert(ring.peer_model_name(tmp .. "/downloads/sub/x.gguf", in_store) == "sub/x.gguf")
assert(ring.peer_model_name(tmp .. "/elsewhere/../downloads/sub/x.gguf", in_store) == "sub/x.gguf")
assert(ring.peer_model_name("sub/x.gguf", in_store) == "sub/x.gguf")
-- Outside the store (this node allows paths): its real path, never the client's spelling.
assert(ring.peer_model_name(tmp .. "/elsewhere/./y.gguf", outside) == outside)

-- The asker's open carries that name.
sent = {}
local asker_cluster = setmetatable({ send = function(_, to, rid, msg)
  sent[#sent + 1] = { to = to, rid = rid, msg = msg }
  if msg.t == "open" then return nil, "unreachable" end
  return true
end }, { __index = cluster })
local asker = ring.new({ n_ctx = 2048, loaded = {} }, asker_cluster, {})
asker.sweeper:stop()
asker.sweeper:close()
local res, err = asker:generate({ id = tmp .. "/downloads/sub/x.gguf", path = in_store }, { 1, 2, 3 },
  { model = tmp .. "/downloads/./sub/x.gguf" }, { { node_id = "n1", start_layer = 0, end_layer = 30 } })
assert(not res and err:match("cannot reach node n1"), tostring(err))
assert(sent[1].msg.t == "open" and sent[1].msg.model == "sub/x.gguf", tostring(sent[1].msg.model))
models.store = real_store
os.execute(("rm -rf '%s'"):format(tmp))
print("ring quotas ok")
