-- test_prompt_reference.lua: prompts against Python Jinja2 and llama.cpp, for every template we keep.
--
-- tests/fixtures/prompts/cases.json (tools/reference/prompt_refs.py says how it was made): for
-- the real chat templates in tests/lua/templates and conversations whose contents occur inside
-- the markup, start or end with whitespace, are unicode or code, or imitate control tokens,
-- what Python Jinja2 renders with Hugging Face's settings and, for all but the imitations,
-- llama.cpp's ids for that whole rendered string with the default model's tokenizer. Checked:
-- exo renders the same text (or refuses where the template raised), builds exactly those ids,
-- and for imitations keeps every byte (the ids decode back to the rendered text).
local cjson = require "cjson"
local native = require "exo.native"
local prompt = require "exo.prompt"
local chat = require "exo.chat"

local source = assert(os.getenv("EXO_SOURCE_DIR"))
package.path = source .. "/tests/lua/?.lua;" .. package.path
local files = require "reference_files"

local model = files.model_file("smollm2-135m")
assert(model, "the default model is not installed (scripts/setup)")
local tok = assert(native.load_tokenizer(model))

local doc = cjson.decode(files.read(source .. "/tests/fixtures/prompts/cases.json"))
assert(tok:text(tok.bos) == doc.bos_token and tok:text(tok.eos) == doc.eos_token,
  "the references were made with another model's BOS and EOS")

-- The conversation shapes of prompt_refs.py's conversations(), by index.
local function conversation(content, shape)
  if shape == 0 then return { { role = "user", content = content } } end
  if shape == 1 then return { { role = "system", content = "You are terse." }, { role = "user", content = content } } end
  return { { role = "user", content = "Hi" }, { role = "assistant", content = content }, { role = "user", content = "And?" } }
end

local templates, failures, counts = {}, {}, { rendered = 0, ids = 0, kept = 0, refused = 0 }
local function fail(case, what)
  if #failures < 20 then
    failures[#failures + 1] = ("%s shape %d %q: %s"):format(case.template, case.shape, case.content, what)
  end
end

for _, case in ipairs(doc.cases) do
  local text = templates[case.template] or files.read(source .. "/tests/lua/templates/" .. case.template)
  templates[case.template] = text
  local messages = conversation(case.content, case.shape)
  local vars = { date_string = doc.date_string }
  local rendered, err = chat.render { template = text, messages = messages, bos_token = doc.bos_token,
    eos_token = doc.eos_token, vars = vars }
  if case.error then
    counts.refused = counts.refused + 1
    if rendered then fail(case, "rendered where Jinja2 raised: " .. case.error) end
  elseif rendered ~= case.rendered then
    fail(case, ("rendered %q, Jinja2 %q (%s)"):format(tostring(rendered), case.rendered, tostring(err)))
  else
    counts.rendered = counts.rendered + 1
    local ids = assert(prompt.build(tok, messages, { template = text, vars = vars }))
    if case.ids then
      local want = {}
      for id in case.ids:gmatch("%d+") do want[#want + 1] = tonumber(id) end
      if files.same(ids, want) then counts.ids = counts.ids + 1
      else fail(case, ("ids %s, llama.cpp %s"):format(table.concat(ids, " "), case.ids)) end
    elseif tok:decode(ids, { special = true }) == case.rendered then
      counts.kept = counts.kept + 1
    else
      fail(case, "the ids do not decode to the rendered text")
    end
  end
end

print(("%d cases: %d rendered as Jinja2, %d refused as Jinja2 did; %d ids as llama.cpp, %d imitations kept as text")
  :format(#doc.cases, counts.rendered, counts.refused, counts.ids, counts.kept))
if #failures > 0 then error(#failures .. " failures (first ones):\n" .. table.concat(failures, "\n")) end
print("test_prompt_reference: ok")
