-- test_discovery_manual.lua: the manual peers file, parsed and watched.
--
-- parse() keeps what a valid file says and rejects each kind of fault with a
-- message naming the field; the watcher announces the file once, follows edits
-- within a few poll periods, reports a broken file while keeping the last good
-- peers, and leaves no handle open after stop(). An overall timer fails the
-- test rather than let it hang.
local uv = require "luv"
local json = require "exo.json"
local manual = require "exo.discovery.manual"

local checks = 0
local function check(cond, msg)
  checks = checks + 1
  assert(cond, msg)
end

local function peers_text(n, extra)
  local peers = {
    a = { address = "127.0.0.1", port = 5678,
      device_capabilities = { model = "MacBook Pro", chip = "Apple M2", memory = 16384,
        flops = { fp32 = 3.5, fp16 = 7.0, int8 = 14.0 } } },
    b = { address = "10.0.0.2", port = 5679, device_capabilities = { chip = "RTX 4090" } },
    c = { address = "host-c.local", port = 65535 },
  }
  if n >= 4 then peers.d = { address = "10.0.0.4", port = 1 } end
  for k, v in pairs(extra or {}) do peers[k] = v end
  return assert(json.encode({ peers = peers }))
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- A valid file: self apart, capabilities as given, missing ones fine.
local cfg = assert(manual.parse(peers_text(3), "b"))
check(cfg.self.id == "b" and cfg.self.address == "10.0.0.2" and cfg.self.port == 5679)
check(cfg.self.capabilities.chip == "RTX 4090" and cfg.self.capabilities.memory == nil)
check(count(cfg.peers) == 2 and cfg.peers.b == nil)
local a = cfg.peers.a
check(a.id == "a" and a.address == "127.0.0.1" and a.port == 5678)
check(a.capabilities.model == "MacBook Pro" and a.capabilities.chip == "Apple M2" and a.capabilities.memory == 16384)
check(a.capabilities.flops.fp32 == 3.5 and a.capabilities.flops.fp16 == 7.0 and a.capabilities.flops.int8 == 14.0)
check(cfg.peers.c.address == "host-c.local" and cfg.peers.c.port == 65535)
check(cfg.peers.c.capabilities.flops == nil and cfg.peers.c.capabilities.model == nil)

-- Every fault is rejected, and the message names the node and field.
local long_id = ("x"):rep(129)
local INVALID = {
  { "bad JSON", '{"peers": {', "invalid JSON" },
  { "not an object", "[1, 2]", '"peers" object' },
  { "no peers", '{"nodes": {}}', '"peers" object' },
  { "peers not an object", '{"peers": [1]}', '"peers" object' },
  { "port 0", peers_text(3, { z = { address = "h", port = 0 } }), "node 'z': port" },
  { "port 70000", peers_text(3, { z = { address = "h", port = 70000 } }), "node 'z': port" },
  { "port string", peers_text(3, { z = { address = "h", port = "x" } }), "node 'z': port" },
  { "port fraction", peers_text(3, { z = { address = "h", port = 80.5 } }), "node 'z': port" },
  { "missing address", peers_text(3, { z = { port = 80 } }), "node 'z': address" },
  { "empty address", peers_text(3, { z = { address = "", port = 80 } }), "node 'z': address" },
  { "negative memory", peers_text(3, { z = { address = "h", port = 80, device_capabilities = { memory = -1 } } }),
    "node 'z': device_capabilities.memory" },
  { "string memory", peers_text(3, { z = { address = "h", port = 80, device_capabilities = { memory = "16GB" } } }),
    "node 'z': device_capabilities.memory" },
  { "negative flops", peers_text(3, { z = { address = "h", port = 80,
    device_capabilities = { flops = { fp16 = -2 } } } }), "node 'z': device_capabilities.flops.fp16" },
  { "capabilities not an object", peers_text(3, { z = { address = "h", port = 80, device_capabilities = 5 } }),
    "node 'z': device_capabilities" },
  { "non-object peer", peers_text(3, { z = "10.0.0.9:80" }), "node 'z': entry must be an object" },
  { "array peer", peers_text(3, { z = { 1, 2 } }), "node 'z': entry must be an object" },
  { "self absent", peers_text(3), "this node's id 'me' is not in the peers file", "me" },
  { "empty id", '{"peers": {"": {"address": "h", "port": 1}}}', "node id ''" },
  { "long id", peers_text(3, { [long_id] = { address = "h", port = 1 } }), "node id '" .. long_id },
}
for _, case in ipairs(INVALID) do
  local name, text, want, self_id = case[1], case[2], case[3], case[4] or "a"
  local got, err = manual.parse(text, self_id)
  check(got == nil and type(err) == "string", name .. ": accepted")
  check(err:find(want, 1, true), ("%s: message %q lacks %q"):format(name, err, want))
end
local many = {}
for i = 1, 1025 do many["n" .. i] = { address = "h", port = 1 } end
local _, err = manual.parse(json.encode({ peers = many }), "n1")
check(err and err:find("more than 1024 peers", 1, true), tostring(err))
many.n1025 = nil
check(manual.parse(json.encode({ peers = many }), "n1"), "1024 peers should be accepted")

-- new() refuses a bad or missing file up front.
local path = os.tmpname()
local function write(text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end
write("{")
local w, nerr = manual.new({ path = path, node_id = "a", on_change = function() end })
check(w == nil and nerr:find("invalid JSON", 1, true), tostring(nerr))
w, nerr = manual.new({ path = path .. ".missing", node_id = "a", on_change = function() end })
check(w == nil and nerr:find("cannot read peers file", 1, true), tostring(nerr))

-- The watcher, driven by the loop through each step.
write(peers_text(3))
local changes, errors = {}, {}
w = assert(manual.new({ path = path, node_id = "a", interval_ms = 50,
  on_change = function(c) changes[#changes + 1] = c end,
  on_error = function(msg) errors[#errors + 1] = msg end }))
check(count(w:config().peers) == 2)
w:start()

-- Rewrites the file and moves its mtime on, so the change shows even on a coarse clock.
local bump = 0
local function rewrite(text)
  write(text)
  bump = bump + 10
  local now = os.time() + bump
  assert(uv.fs_utime(path, now, now))
end

local steps = {
  { "initial announce", function() return #changes == 1 end, function()
    check(count(changes[1].peers) == 2 and changes[1].self.id == "a")
    rewrite(peers_text(4))
  end },
  { "fourth peer", function() return #changes == 2 end, function()
    check(count(changes[2].peers) == 3 and changes[2].peers.d.port == 1)
    rewrite('{"peers": oops')
  end },
  { "broken file reported", function() return #errors == 1 end, function()
    check(errors[1]:find("invalid JSON", 1, true), errors[1])
    check(#changes == 2 and count(w:config().peers) == 3, "last good config lost")
    rewrite(peers_text(3))
  end },
  { "fixed file", function() return #changes == 3 end, function()
    check(count(changes[3].peers) == 2 and w:config() == changes[3])
    -- Same content under a new mtime: not a change.
    rewrite(peers_text(3))
  end },
  { "unchanged content ignored", nil, function()
    check(#changes == 3 and #errors == 1, "a rewrite with the same content was announced")
    os.remove(path)
  end },
  { "missing file reported", function() return #errors == 2 end, function()
    check(errors[2]:find("ENOENT", 1, true), errors[2])
    check(count(w:config().peers) == 2, "last good config lost")
    -- An editor's save: a new file renamed over the old name.
    local f = assert(io.open(path .. ".new", "wb"))
    f:write(peers_text(4))
    f:close()
    assert(os.rename(path .. ".new", path))
  end },
  { "file replaced by rename", function() return #changes == 4 end, function()
    check(count(changes[4].peers) == 3 and #errors == 2)
    w:stop()
  end },
}

local step, waited, failure = 1, 0, nil
local driver = uv.new_timer()
local deadline = uv.new_timer()
-- Closes everything; a handle still open after that is the watcher's leak, closed
-- here so that uv.run() returns and the test fails instead of hanging.
local function finish(msg)
  failure = msg
  w:stop()
  driver:close()
  if not deadline:is_closing() then deadline:close() end
  uv.walk(function(h)
    if not h:is_closing() then
      failure = failure or ("handle left open after stop(): " .. tostring(h))
      h:close()
    end
  end)
end
deadline:start(10000, 0, function() finish("timed out at step: " .. steps[step][1]) end)
driver:start(10, 10, function()
  local s = steps[step]
  waited = waited + 10
  -- A step without a condition waits a few poll periods to show that nothing happens.
  local ready = s[2] and s[2]() or (not s[2] and waited >= 300)
  if not ready then
    if s[2] and waited > 1000 then finish("step '" .. s[1] .. "' not reached in 1 s") end
    return
  end
  local ok, perr = pcall(s[3])
  if not ok then return finish(s[1] .. ": " .. tostring(perr)) end
  step, waited = step + 1, 0
  if step > #steps then finish(nil) end
end)
uv.run()
os.remove(path)
assert(not failure, failure)

print(("discovery manual ok (%d checks)"):format(checks))
return 0
