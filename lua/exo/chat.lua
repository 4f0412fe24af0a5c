-- chat.lua: chat messages -> the prompt text the model was trained on.
--
-- The model's own template (GGUF `tokenizer.chat_template`, Jinja) is the truth: we render it
-- with exo.template the way Hugging Face does. When there is no template, or it uses something
-- our Jinja subset lacks, we render the closest known family instead (chatml, llama3, mistral,
-- deepseek, ...), picked by markers in the template text, and return a warning that says why;
-- never silently. A template that calls raise_exception (say, roles that do not alternate) is
-- the model's own verdict on the conversation, so that one is an error, not a fallback.
-- Like llama.cpp, a template that cannot take a system message gets it merged into the first
-- user message, so system prompts keep working with Gemma or Mistral v0.1.
-- Templates can also be Lua: chat.load_template_file("x.lua") returns its
-- function(messages, opts) -> string.
local template = require "exo.template"

local M = {}

local NONE = template.null

-- Messages ---------------------------------------------------------------------------------

-- Content may be a string or a list of parts ({type = "text", text = ...}); templates expect
-- strings. Text parts join with "\n" as in llama.cpp; other parts (images) carry no text.
-- Anything else (a string, none, a dict some tool templates print as JSON) stays as it is.
local function content_text(content)
  if type(content) ~= "table" or template.kind(content) ~= "list" then return content end
  local parts = {}
  for _, p in ipairs(content) do
    if type(p) == "string" then
      parts[#parts + 1] = p
    elseif type(p) == "table" and (p.type == "text" or p.type == nil) and type(p.text) == "string" then
      parts[#parts + 1] = p.text
    end
  end
  return table.concat(parts, "\n")
end

--- chat.content_text(content) -> the string a template sees for this content (others that
-- need to find message text in a rendered prompt should use the same joining).
M.content_text = content_text

-- Text parts of a list content as the template's own list of {type = "text", text} parts.
local function text_parts(content)
  local parts = {}
  for _, p in ipairs(content) do
    if type(p) == "string" then
      parts[#parts + 1] = template.dict({ type = "text", text = p })
    elseif type(p) == "table" and (p.type == "text" or p.type == nil) and type(p.text) == "string" then
      parts[#parts + 1] = template.dict({ type = "text", text = p.text })
    end
  end
  return template.list(parts)
end

local function is_parts(content) return type(content) == "table" and template.kind(content) == "list" end

--- chat.normalize_messages(messages, opts) -> a new list of message copies with string content.
-- opts.map_developer (default true) turns the OpenAI "developer" role into "system";
-- opts.keep_parts keeps content given as parts a list of text parts (for templates that
-- iterate parts themselves, as Hugging Face and llama.cpp give them) instead of joining it.
function M.normalize_messages(messages, opts)
  local map_developer = not (opts and opts.map_developer == false)
  local keep_parts = opts and opts.keep_parts
  local out = {}
  for i, m in ipairs(messages or {}) do
    local c = {}
    for k, v in pairs(m) do c[k] = v end
    if keep_parts and is_parts(m.content) then c.content = text_parts(m.content)
    else c.content = content_text(m.content) end
    if map_developer and c.role == "developer" then c.role = "system" end
    out[i] = template.dict(c)
  end
  return template.list(out)
end

-- Folds a leading system message into the next message ("system\nuser"), or drops it when it
-- is alone: llama.cpp's treatment of templates without a system role.
local function merge_system(messages)
  local first = messages[1]
  if not first or first.role ~= "system" then return messages end
  local out = {}
  for i = 2, #messages do out[i - 1] = messages[i] end
  if out[1] then
    local c = {}
    for k, v in pairs(out[1]) do c[k] = v end
    local sys, body = content_text(first.content), c.content
    if type(sys) ~= "string" then sys = "" end
    if is_parts(body) then
      local parts = { template.dict({ type = "text", text = sys }) }
      for _, p in ipairs(body) do parts[#parts + 1] = p end
      c.content = template.list(parts)
    else
      if type(body) ~= "string" then body = "" end
      c.content = sys .. "\n" .. body
    end
    out[1] = template.dict(c)
  end
  return template.list(out)
end
M.merge_system = merge_system

-- Built-in families ------------------------------------------------------------------------

local function str(v) if type(v) == "string" then return v end return "" end

-- The marks of a marked render in progress (chat.render with opts.marks). A
-- family's trim then marks the trimmed text again, as template.lua does for
-- Jinja's trim, so the marked render still reproduces the plain one and
-- prompt.lua gets content spans from it: without them it searched for each
-- message's text and encoded them one by one (4096 short messages took
-- Gemma 3 3.6 s on the loop).
local rendering_marks

local function trim(s)
  s = str(s)
  if rendering_marks and template.has_mark_chars(s) then
    local text = template.strip((rendering_marks:expand(s)))
    return text == "" and "" or rendering_marks:mark(text)
  end
  return template.strip(s)
end

-- Each family: function(messages, o) -> prompt, with o = {bos_token, eos_token,
-- add_generation_prompt}. They follow the models' published templates for plain text turns.
M.families = {}

M.families.chatml = function(messages, o)
  local out = {}
  for _, m in ipairs(messages) do
    out[#out + 1] = "<|im_start|>" .. str(m.role) .. "\n" .. str(m.content) .. "<|im_end|>\n"
  end
  if o.add_generation_prompt then out[#out + 1] = "<|im_start|>assistant\n" end
  return table.concat(out)
end

M.families.llama3 = function(messages, o)
  local out = { str(o.bos_token) }
  for _, m in ipairs(messages) do
    out[#out + 1] = "<|start_header_id|>" .. str(m.role) .. "<|end_header_id|>\n\n" .. trim(m.content) .. "<|eot_id|>"
  end
  if o.add_generation_prompt then out[#out + 1] = "<|start_header_id|>assistant<|end_header_id|>\n\n" end
  return table.concat(out)
end

-- Mistral v0.1/v0.2: [INST] turns, no system role (merged into the first user turn).
M.families.mistral = function(messages, o)
  local out = { str(o.bos_token) }
  for _, m in ipairs(merge_system(messages)) do
    if m.role == "assistant" then
      out[#out + 1] = str(m.content) .. str(o.eos_token)
    else
      out[#out + 1] = "[INST] " .. str(m.content) .. " [/INST]"
    end
  end
  return table.concat(out)
end

-- Llama 2 chat: the system prompt sits in <<SYS>> inside the first [INST].
M.families.llama2 = function(messages, o)
  local out = {}
  local sys
  local start = 1
  if messages[1] and messages[1].role == "system" then sys, start = str(messages[1].content), 2 end
  for i = start, #messages do
    local m = messages[i]
    local content = str(m.content)
    if i == start and sys then content = "<<SYS>>\n" .. sys .. "\n<</SYS>>\n\n" .. content end
    if m.role == "assistant" then
      out[#out + 1] = " " .. trim(content) .. " " .. str(o.eos_token)
    else
      out[#out + 1] = str(o.bos_token) .. "[INST] " .. trim(content) .. " [/INST]"
    end
  end
  return table.concat(out)
end

-- DeepSeek V3 / R1: system text first, then <｜User｜> / <｜Assistant｜> turns.
M.families.deepseek3 = function(messages, o)
  local out = { str(o.bos_token) }
  local sys = {}
  for _, m in ipairs(messages) do
    if m.role == "system" then sys[#sys + 1] = str(m.content) end
  end
  out[#out + 1] = table.concat(sys, "\n\n")
  for _, m in ipairs(messages) do
    if m.role == "user" then
      out[#out + 1] = "<｜User｜>" .. str(m.content)
    elseif m.role == "assistant" then
      out[#out + 1] = "<｜Assistant｜>" .. str(m.content) .. "<｜end▁of▁sentence｜>"
    end
  end
  if o.add_generation_prompt then out[#out + 1] = "<｜Assistant｜>" end
  return table.concat(out)
end

-- DeepSeek V2 / coder: "User: ...\n\nAssistant: ...".
M.families.deepseek2 = function(messages, o)
  local out = { str(o.bos_token) }
  for _, m in ipairs(messages) do
    if m.role == "user" then
      out[#out + 1] = "User: " .. str(m.content) .. "\n\n"
    elseif m.role == "assistant" then
      out[#out + 1] = "Assistant: " .. str(m.content) .. str(o.eos_token)
    elseif m.role == "system" then
      out[#out + 1] = str(m.content) .. "\n\n"
    end
  end
  if o.add_generation_prompt then out[#out + 1] = "Assistant:" end
  return table.concat(out)
end

M.families.phi3 = function(messages, o)
  local out = {}
  for _, m in ipairs(messages) do
    out[#out + 1] = "<|" .. str(m.role) .. "|>\n" .. str(m.content) .. "<|end|>\n"
  end
  if o.add_generation_prompt then out[#out + 1] = "<|assistant|>\n" end
  return table.concat(out)
end

M.families.gemma = function(messages, o)
  local out = { str(o.bos_token) }
  for _, m in ipairs(merge_system(messages)) do
    local role = m.role == "assistant" and "model" or str(m.role)
    out[#out + 1] = "<start_of_turn>" .. role .. "\n" .. trim(m.content) .. "<end_of_turn>\n"
  end
  if o.add_generation_prompt then out[#out + 1] = "<start_of_turn>model\n" end
  return table.concat(out)
end

-- Names a caller may pass as family_hint for the same formats.
local ALIASES = { qwen = "chatml", qwen2 = "chatml", smollm = "chatml", smollm2 = "chatml",
  ["llama-3"] = "llama3", ["llama-2"] = "llama2", deepseek = "deepseek3", phi = "phi3",
  ["mistral-v1"] = "mistral", gemma2 = "gemma" }

local function family_name(hint)
  if type(hint) ~= "string" then return nil end
  local h = hint:lower()
  if M.families[h] then return h end
  return ALIASES[h]
end

--- chat.detect_family(template_text) -> family name or nil, by the special tokens it writes.
function M.detect_family(text)
  if type(text) ~= "string" then return nil end
  local function has(s) return text:find(s, 1, true) ~= nil end
  if has("<|im_start|>") then return "chatml" end
  if has("<|start_header_id|>") then return "llama3" end
  if has("<｜User｜>") then return "deepseek3" end
  if has("<start_of_turn>") then return "gemma" end
  if has("<|user|>") and has("<|end|>") then return "phi3" end
  if has("[INST]") then return has("<<SYS>>") and "llama2" or "mistral" end
  if has("User: ") and has("Assistant:") then return "deepseek2" end
  return nil
end

-- Template cache -----------------------------------------------------------------------------

-- Compiling costs far more than rendering, and a server renders the same template for every
-- request: keep a few compiled templates by text.
local MAX_CACHED = 16
local cache, cached = {}, 0

local SYS_PROBE, USER_PROBE, PART_PROBE = "<<exo-system-probe>>", "<<exo-user-probe>>", "<<exo-part-probe>>"

local function compiled(text)
  local e = cache[text]
  if e then return e end
  local tmpl, err, info = template.compile(text)
  e = { tmpl = tmpl, err = err, info = info }
  -- Does the template write a system message at all? (Some raise, some drop it.)
  if tmpl then
    local out = tmpl:render({
      messages = template.list({ template.dict({ role = "system", content = SYS_PROBE }),
        template.dict({ role = "user", content = USER_PROBE }) }),
      add_generation_prompt = true, bos_token = "", eos_token = "",
    })
    e.supports_system = out ~= nil and out:find(SYS_PROBE, 1, true) ~= nil
    -- Does it iterate a message's parts itself? (One that does not prints the list.)
    out = tmpl:render({
      messages = template.list({ template.dict({ role = "user",
        content = template.list({ template.dict({ type = "text", text = PART_PROBE }) }) }) }),
      add_generation_prompt = true, bos_token = "", eos_token = "",
    })
    e.takes_parts = out ~= nil and out:find(PART_PROBE, 1, true) ~= nil and not out:find("'type'", 1, true)
      and not out:find('"type"', 1, true)
  end
  if cached >= MAX_CACHED then cache, cached = {}, 0 end
  cache[text] = e
  cached = cached + 1
  return e
end

--- chat.compile(text) -> tmpl or nil, err, info (cached by text).
function M.compile(text)
  local e = compiled(text)
  return e.tmpl, e.err, e.info
end

-- Rendering --------------------------------------------------------------------------------

local function render_family(name, messages, opts, agp, why)
  -- The built-in formats take text: parts kept for a template that failed are joined.
  local joined = {}
  for i, m in ipairs(messages) do
    if is_parts(m.content) then
      local c = {}
      for k, v in pairs(m) do c[k] = v end
      c.content = content_text(m.content)
      m = template.dict(c)
    end
    joined[i] = m
  end
  messages = template.list(joined)
  rendering_marks = opts.marks
  local ok, prompt = pcall(M.families[name], messages, {
    bos_token = opts.bos_token or "", eos_token = opts.eos_token or "", add_generation_prompt = agp })
  rendering_marks = nil
  if not ok then error(prompt, 0) end
  return prompt, why .. "; using the built-in " .. name .. " format instead"
end

--- chat.render(opts) -> prompt, warning | nil, err
-- opts: template (Jinja text, a Lua function(messages, o) -> string, or nil), messages,
-- add_generation_prompt (default true), bos_token, eos_token, tools, date_string,
-- family_hint (format to use when there is no template), vars (more template variables),
-- marks (a template.marks() set: each message's content is rendered as a mark, see template.lua).
-- warning is non-nil when the prompt came from a built-in family instead of the template.
function M.render(opts)
  assert(type(opts) == "table" and type(opts.messages) == "table", "chat.render{messages = {...}}")
  local agp = opts.add_generation_prompt ~= false
  local tmpl = opts.template
  local e = type(tmpl) == "string" and tmpl ~= "" and compiled(tmpl) or nil
  local messages = M.normalize_messages(opts.messages,
    { map_developer = not (type(tmpl) == "string" and tmpl:find("<|channel|>", 1, true)),
      keep_parts = e and e.takes_parts })
  if opts.marks then
    for _, m in ipairs(messages) do
      if type(m.content) == "string" and m.content ~= "" then
        m.content = opts.marks:mark(m.content)
      elseif is_parts(m.content) then
        for _, p in ipairs(m.content) do
          if p.text ~= "" then p.text = opts.marks:mark(p.text) end
        end
      end
    end
  end

  if type(tmpl) == "function" then
    local ok, res = pcall(tmpl, messages, { add_generation_prompt = agp, bos_token = opts.bos_token or "",
      eos_token = opts.eos_token or "", tools = opts.tools, vars = opts.vars })
    if not ok then return nil, "chat template function failed: " .. tostring(res) end
    if type(res) ~= "string" then return nil, "chat template function returned " .. type(res) .. ", not a string" end
    return res
  end

  local hinted = family_name(opts.family_hint)
  if tmpl == nil or tmpl == "" then
    return render_family(hinted or "chatml", messages, opts, agp, "the model has no chat template")
  end
  assert(type(tmpl) == "string", "chat.render: template must be text or a function")

  local fallback = M.detect_family(tmpl) or hinted or "chatml"
  if not e.tmpl then
    return render_family(fallback, messages, opts, agp, "chat template not usable (" .. e.err .. ")")
  end
  if not e.supports_system then messages = merge_system(messages) end

  local vars = {}
  for k, v in pairs(opts.vars or {}) do vars[k] = v end
  vars.messages = messages
  vars.add_generation_prompt = agp
  vars.bos_token = opts.bos_token or ""
  vars.eos_token = opts.eos_token or ""
  if opts.tools ~= nil then vars.tools = opts.tools end
  if opts.date_string ~= nil then vars.date_string = opts.date_string end

  local out, err, info = e.tmpl:render(vars, opts.marks)
  if out then return out end
  if info and info.kind == "raise" then
    return nil, "chat template rejected the conversation: " .. err
  end
  return render_family(fallback, messages, opts, agp, "chat template failed (" .. err .. ")")
end

--- chat.load_template_file(path) -> template or nil, err
-- A FILE.lua must return function(messages, opts) -> string; any other file is read as Jinja
-- text. Either result can be passed as chat.render's opts.template.
function M.load_template_file(path)
  if path:match("%.lua$") then
    local chunk, err = loadfile(path)
    if not chunk then return nil, err end
    local ok, fn = pcall(chunk)
    if not ok then return nil, path .. ": " .. tostring(fn) end
    if type(fn) ~= "function" then
      return nil, path .. ": must return function(messages, opts) -> string, returned " .. type(fn)
    end
    return fn
  end
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  local _, cerr = M.compile(text)
  if cerr then return nil, path .. ": " .. cerr end
  return text
end

M.null = NONE

return M
