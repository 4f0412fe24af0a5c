-- test_catalogue.lua: the catalogue's entries and how names become specs (issue 16).
--
-- Every entry names a hub repository and a .gguf per quantization whose name carries that
-- quantization, with its facts; ids are lowercase. Names: "id", "id:QUANT", hub repository
-- ids with a file or a quantization, and the spellings that must not become a path outside
-- the store (".." anywhere, a leading "/", an absolute file).
local catalogue = require "exo.catalogue"
local models = require "exo.models"
local download = require "exo.download"

local n = 0
for id, e in pairs(catalogue.entries) do
  n = n + 1
  assert(id == id:lower() and id:match("^[%w.%-]+$"), "id " .. id)
  assert(type(e.repo) == "string" and e.repo:match("^[%w._-]+/[%w._-]+$"), id .. ": repo")
  assert(type(e.file) == "string" and e.file:match("%.gguf$"), id .. ": file")
  assert(type(e.arch) == "string" and type(e.n_layers) == "number" and e.n_layers > 0, id .. ": facts")
  assert(type(e.n_ctx) == "number" and type(e.size) == "number" and e.size > 1e7, id .. ": size")
  assert(e.quants and e.quants[e.default_quant] == e.file or e.source, id .. ": default file")
  for q, f in pairs(e.quants) do
    assert(f:match("%.gguf$") and models.matches_quant(f, q), id .. ": " .. q .. " -> " .. f)
    assert(models.is_first_part(f), id .. ": " .. f .. " is not a first part")
  end
  assert(e.can_run == (catalogue.engine_archs[e.arch] == true), id .. ": can_run")
end
assert(n >= 35, n)
assert(catalogue.entries["llama-3.2-1b"].default_quant == "Q4_K_M")
assert(catalogue.entries["qwen-3-30b-a3b"].can_run == false)
assert(catalogue.entries["mistral-7b"].can_run == true) -- a llama-architecture file

-- Names to specs.
local s = assert(models.lookup("llama-3.2-1b:q8_0"))
assert(s.id == "llama-3.2-1b" and s.quant == "Q8_0" and s.file == "Llama-3.2-1B-Instruct-Q8_0.gguf", s.file)
assert(s.dir == models.store() .. "/llama-3.2-1b")
assert(s.size and s.size > catalogue.entries["llama-3.2-1b"].size, "Q8_0 is estimated larger")
local none, err = models.lookup("llama-3.2-1b:Q9_9")
assert(not none and err:match("no quantization 'Q9_9'") and err:match("Q4_K_M"), err)
s = assert(models.lookup("bartowski/Some-GGUF:Q6_K"))
assert(s.repo == "bartowski/Some-GGUF" and s.quant == "Q6_K" and not s.file)
assert(s.dir == models.store() .. "/bartowski--Some-GGUF")
s = assert(models.lookup("org/Repo:sub/File-Q4_K_M-00001-of-00002.gguf"))
assert(s.file == "sub/File-Q4_K_M-00001-of-00002.gguf")
for _, bad in ipairs { "org/..", "../org/x", "org/x:../../etc/passwd.gguf", "org/x:/etc/passwd.gguf", "/etc/passwd",
  "org/x/y", "org/x:a b.gguf" } do
  assert(models.lookup(bad) == nil, bad)
end

-- A split GGUF: every part from the listing, in order; a missing part is an error.
local listing = {
  { path = "Big-Q4_K_M/Big-Q4_K_M-00002-of-00003.gguf", size = 2 },
  { path = "Big-Q4_K_M/Big-Q4_K_M-00001-of-00003.gguf", size = 1 },
  { path = "Big-Q4_K_M/Big-Q4_K_M-00003-of-00003.gguf", size = 3 },
  { path = "Big-Q8_0.gguf", size = 9 }, { path = "mmproj-Q4_K_M.gguf", size = 1 }, { path = "README.md", size = 1 },
}
local parts = assert(download.plan({ repo = "o/Big", quant = "Q4_K_M" }, listing))
assert(#parts == 3 and parts[1].size == 1 and parts[3].size == 3)
parts = assert(download.plan({ repo = "o/Big", quant = "Q8_0" }, listing))
assert(#parts == 1 and parts[1].path == "Big-Q8_0.gguf")
table.remove(listing, 1)
local p, perr = download.plan({ repo = "o/Big", quant = "Q4_K_M" }, listing)
assert(not p and perr:match("not found"), perr)
p, perr = download.plan({ repo = "o/Big", quant = "IQ2_XS" }, listing)
assert(not p and perr:match("no IQ2_XS GGUF") and perr:match("Big%-Q8_0%.gguf"), perr)

print("test_catalogue: ok (" .. n .. " entries)")
