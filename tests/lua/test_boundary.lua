-- test_boundary.lua: the C/Lua boundary.
--
-- native.lua's cdef is exactly what tools/gen_cdef.lua extracts from the C
-- headers; only those functions are exported; the ABI version matches; no
-- module under lua/exo but native.lua reaches C directly; runtime failures
-- come back as nil, "ECODE: message", "ECODE" while misuse raises; model
-- metadata and shards are reachable through the wrappers.
local source_dir = assert(os.getenv("EXO_SOURCE_DIR"), "EXO_SOURCE_DIR not set (ctest sets it)")
local tiny = assert(os.getenv("EXO_TINY_MODEL"), "EXO_TINY_MODEL not set (ctest sets it)")

local gen = assert(loadfile(source_dir .. "/tools/gen_cdef.lua"))("--as-module")
local extracted, current = gen.extract(source_dir), gen.current(source_dir)
assert(current, "native.lua lacks the generated cdef markers")
assert(extracted == current, "native.lua's cdef is stale: run build/exo lua tools/gen_cdef.lua")
assert(#extracted > 1000, "suspiciously short cdef")

local native = require "exo.native"
assert(native.C.exo_abi_version() == native.ABI_VERSION)

-- Only exo.h is exported: every function it declares resolves, an internal
-- one (declared here by hand) does not.
local ffi = require "ffi"
local declared = 0
for name in extracted:gmatch("[%w_%*]%s*%**(exo_[%w_]+)%s*%(") do
  assert(pcall(function() return native.C[name] end), name .. " is declared in exo.h but not exported")
  declared = declared + 1
end
assert(declared > 50, "found only " .. declared .. " functions in the cdef")
ffi.cdef "int exo__layers_alloc(void *shard);"
assert(not pcall(function() return native.C.exo__layers_alloc end), "an internal function is exported")

-- Lua calls C only through native.lua's wrappers: no other module names the
-- raw namespace (ffi.C, native.C) or calls an exo_ function through an alias.
local scanned = 0
local files = assert(io.popen(("find '%s/lua/exo' -name '*.lua'"):format(source_dir)))
for path in files:lines() do
  if not path:match("/lua/exo/native%.lua$") then
    local f = assert(io.open(path))
    local n = 0
    for line in f:lines() do
      n = n + 1
      local code = line:gsub("%-%-.*$", "")
      for _, pattern in ipairs { "ffi%.C%f[^%w_]", "native%.C%f[^%w_]", "%f[%w_]C%.exo_" } do
        assert(not code:find(pattern), ("%s:%d reaches C directly (use a native.lua wrapper): %s"):format(path, n, line))
      end
    end
    f:close()
    scanned = scanned + 1
  end
end
files:close()
assert(scanned > 20, "found only " .. scanned .. " modules under lua/exo")

-- Numbers C defines come from its enums.
assert(native.WIRE_DTYPES.q8_0 == ffi.C.EXO_DTYPE_Q8_0 and native.WIRE_EVENTS[ffi.C.EXO_WIRE_EV_PONG] == "pong")
assert(native.WIRE_REPLY_OFFSET == 2 ^ 52)

-- Runtime failure: nil, message, code.
local s, err, code = native.load_shard("/nonexistent/x.gguf")
assert(s == nil and type(err) == "string" and code == "EIO", tostring(err) .. " " .. tostring(code))
assert(err:find("/nonexistent/x.gguf", 1, true), err)
-- Misuse raises.
assert(not pcall(native.load_shard, 42))

-- Metadata through the file wrapper.
local f = assert(native.open_file(tiny))
assert(f:get("general.architecture") == "llama")
assert(f:get("llama.block_count") == 4)
assert(math.abs(f:get("llama.rope.freq_base") - 10000) < 1e-3)
assert(f:get("no.such.key") == nil)
local tensors = f:tensors()
assert(#tensors == 1 + 4 * 9 + 1, "tensor count " .. #tensors)
assert(tensors[1].name == "token_embd.weight" and tensors[1].dtype == "q8_0")
f:close()

-- A shard, a sequence, a forward pass, greedy argmax.
local shard = assert(native.load_shard(tiny))
assert(shard.n_layer == 4 and shard.n_vocab == 512 and shard.is_first and shard.is_last)
local seq = assert(shard:new_seq(32))
local logits = assert(shard:forward(seq, { 1, 2, 3 }))
assert(seq:pos() == 3)
local best = native.argmax(logits, shard.n_vocab)
assert(best >= 0 and best < shard.n_vocab)
for i = 0, shard.n_vocab - 1 do assert(logits[i] == logits[i], "NaN in logits") end
-- Errors from forward are runtime failures, not raises.
local ok, ferr, fcode = shard:forward(seq, { 100000 })
assert(ok == nil and fcode == "ERANGE", tostring(ferr))
assert(seq:truncate(1))
assert(seq:pos() == 1)
local _, terr = seq:truncate(5)
assert(terr and terr:match("^ERANGE"), tostring(terr))
print("boundary ok")
