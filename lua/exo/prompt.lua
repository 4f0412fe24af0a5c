-- prompt.lua: from chat messages to prompt token ids, safely.
--
-- The chat template renders one string in which the template's own markup
-- (<|im_start|>, <|eot_id|>, ...) must become special tokens while the
-- messages' content must not: a user who types "<|im_start|>system" gets
-- those characters encoded as plain text, not a role switch. The template is
-- rendered a second time with each message's content as a mark (template.lua,
-- "Marked rendering"), which gives the exact bytes the content fills; the
-- whole prompt is then encoded in one pass with control tokens recognised
-- everywhere but there, so it tokenizes as the whole string would (the
-- reference: llama.cpp and Hugging Face tokenize the rendered string whole).
-- Should the marked rendering differ from the plain one (a construct the
-- marks do not follow), the content is found by searching the rendered text
-- instead, in order, and each message is encoded on its own.
local chat = require "exo.chat"
local template = require "exo.template"

local M = {}

-- Message content as one string, joined exactly as the templates see it.
local content_text = chat.content_text
M.content_text = content_text

-- Trims ASCII whitespace by scanning bytes: a pattern like "%s+$" is
-- quadratic on long whitespace runs, and this text comes from users.
local function is_space(b) return b == 32 or (b >= 9 and b <= 13) end
local function trim(s)
  local first, last = 1, #s
  while first <= last and is_space(s:byte(first)) do first = first + 1 end
  while last >= first and is_space(s:byte(last)) do last = last - 1 end
  return s:sub(first, last)
end

-- Spans {first, last} of the rendered text that hold message content.
local function content_spans(rendered, messages)
  local spans, cursor = {}, 1
  for _, m in ipairs(messages) do
    local text = content_text(m.content)
    for _, candidate in ipairs { text, trim(text) } do
      if #candidate > 0 then
        local at = rendered:find(candidate, cursor, true)
        if at then
          spans[#spans + 1] = { at, at + #candidate - 1 }
          cursor = at + #candidate
          break
        end
      end
    end
  end
  return spans
end

-- Encodes rendered text with special tokens recognised only outside content spans.
function M.encode_rendered(tokenizer, rendered, messages, add_bos)
  local ids = {}
  local function append(text, special, bos)
    if #text == 0 and not bos then return end
    local part = tokenizer:encode(text, { add_bos = bos, special = special })
    for _, id in ipairs(part) do ids[#ids + 1] = id end
  end
  local pos, first = 1, true
  for _, span in ipairs(content_spans(rendered, messages)) do
    append(rendered:sub(pos, span[1] - 1), true, first and add_bos)
    first = false
    append(rendered:sub(span[1], span[2]), false, false)
    pos = span[2] + 1
  end
  append(rendered:sub(pos), true, first and add_bos)
  return ids
end

-- The content spans of a rendering, from a second, marked rendering; nil when
-- it does not reproduce the plain one or content holds the marks' characters.
local function marked_spans(render_opts, rendered)
  for _, m in ipairs(render_opts.messages) do
    if template.has_mark_chars(content_text(m.content)) then return nil end
  end
  local marks = template.marks()
  local opts = setmetatable({ marks = marks }, { __index = render_opts })
  local marked = chat.render(opts)
  if not marked then return nil end
  local text, spans = marks:expand(marked)
  if text ~= rendered then return nil end
  return spans
end

-- ---- a long conversation, in pieces ------------------------------------------------
--
-- Tokenizing runs on the loop, and a conversation of thousands of messages
-- takes long there: the tokenizer searches every piece of text for each
-- special token (Gemma 3 has 6670), so 4096 short messages held it ~1 s. A
-- server sets M.pause (a function that lets the loop run a turn and then
-- resumes the calling coroutine); with it the prompt is encoded in pieces of
-- about M.PIECE.spans messages or M.PIECE.bytes bytes, pausing between them. A
-- piece ends right after a message's content, where the markup that follows
-- opens with a control token: the tokenizer cuts the text at special tokens
-- and encodes what lies between them on its own (SPM's space prefix starts
-- again after each), so the ids are those of one pass, provided the token is
-- cut there in one pass too: no longer special token (a user-defined one may
-- match inside content) straddles the cut, checked on the 256 bytes before it.
M.pause = nil
M.PIECE = { spans = 64, bytes = 32768 }

local TOKEN_CONTROL = 3

-- Whether the encoding may be cut right before byte g, which follows span
-- (a message's content) and starts markup running to gap_end.
local function cut_ok(tokenizer, rendered, span, g, gap_end)
  if gap_end < g then return false end
  local gap = rendered:sub(g, math.min(gap_end, g + 255))
  local first = tokenizer:encode(gap, { add_bos = false, special = true })
  local t = first and first[1]
  if not t or tokenizer:token_type(t) ~= TOKEN_CONTROL then return false end
  local text = tokenizer:text(t)
  if not text or text == "" or gap:sub(1, #text) ~= text then return false end
  local from = math.max(span[1], g - 256)
  local window = tokenizer:encode(rendered:sub(from, g + #text - 1),
    { add_bos = false, special = true, plain = { { 1, g - from } } })
  return window ~= nil and window[#window] == t
end

-- rendered's ids with control tokens recognised outside spans, as one
-- tokenizer:encode call gives them, in pieces with pause() between.
local function encode_in_pieces(tokenizer, rendered, spans, add_bos, pause)
  local max_spans, max_bytes = M.PIECE.spans, M.PIECE.bytes
  local ids, from, first_span = {}, 1, 1
  local function encode(to, last_span)
    local plain = {}
    for k = first_span, last_span do plain[#plain + 1] = { spans[k][1] - from + 1, spans[k][2] - from + 1 } end
    local part, err = tokenizer:encode(rendered:sub(from, to),
      { add_bos = from == 1 and add_bos, special = true, plain = plain })
    if not part then return nil, err end
    for _, id in ipairs(part) do ids[#ids + 1] = id end
    return true
  end
  for i = 1, #spans - 1 do
    local g = spans[i][2] + 1
    if (i - first_span + 1 >= max_spans or g - from >= max_bytes)
      and cut_ok(tokenizer, rendered, spans[i], g, spans[i + 1][1] - 1) then
      local ok, err = encode(g - 1, i)
      if not ok then return nil, err end
      from, first_span = g, i + 1
      pause()
    end
  end
  local ok, err = encode(#rendered, #spans)
  if not ok then return nil, err end
  return ids
end

-- Cuts a rendering right after the final message's content, so the model
-- continues that message (an assistant "prefill"): the end of the last span
-- when the marks gave spans, else the content's last occurrence (as Hugging
-- Face's continue_final_message does). Returns the text and the spans inside it.
local function cut_after_final(rendered, spans, final)
  if spans and #spans > 0 then
    local last = spans[#spans]
    -- (the template may have trimmed the content)
    local want = trim(final)
    if want ~= "" and rendered:sub(last[1], last[2]):sub(-#want) == want then return rendered:sub(1, last[2]), spans end
  end
  local at, from = nil, 1
  final = trim(final)
  if final == "" then return nil end
  while true do
    local a = rendered:find(final, from, true)
    if not a then break end
    at, from = a, a + 1
  end
  if not at then return nil end
  return rendered:sub(1, at + #final - 1), nil
end

-- messages -> token ids, rendered text, warning (when the template fell back).
-- opts: template (text or a Lua function), family (the format to use when there is no template),
-- add_generation_prompt (default true), continue_final_message (the last message is an
-- assistant's to continue: no end of its turn, no new turn), vars (more template variables:
-- date_string, tools).
function M.build(tokenizer, messages, opts)
  opts = opts or {}
  local final = messages[#messages]
  local continue_final = opts.continue_final_message and final and final.role == "assistant"
  local final_text = continue_final and content_text(final.content) or nil
  if continue_final and (type(final_text) ~= "string" or not final_text:match("%S")) then
    -- Nothing to continue: the assistant's turn simply starts.
    local rest = {}
    for i = 1, #messages - 1 do rest[i] = messages[i] end
    messages, continue_final = rest, false
    opts = setmetatable({ add_generation_prompt = true }, { __index = opts })
  end
  local bos_text = tokenizer.bos and tokenizer:text(tokenizer.bos) or ""
  local eos_text = tokenizer.eos and tokenizer:text(tokenizer.eos) or ""
  local render_opts = {
    template = opts.template,
    family_hint = opts.family,
    messages = messages,
    add_generation_prompt = not continue_final and opts.add_generation_prompt ~= false,
    bos_token = bos_text,
    eos_token = eos_text,
    vars = opts.vars,
  }
  local rendered, warning = chat.render(render_opts)
  if not rendered then return nil, warning end
  -- A template that writes the BOS text itself already has it; do not add a second.
  local add_bos = tokenizer.add_bos and not (bos_text ~= "" and rendered:sub(1, #bos_text) == bos_text)
  local spans = marked_spans(render_opts, rendered)
  if continue_final then
    rendered, spans = cut_after_final(rendered, spans, final_text)
    if not rendered then return nil, "the template does not write the final assistant message, so it cannot be continued" end
  end
  if not spans then return M.encode_rendered(tokenizer, rendered, messages, add_bos), rendered, warning end
  local ids, err
  if M.pause and coroutine.running() and (#spans > M.PIECE.spans or #rendered > M.PIECE.bytes) then
    ids, err = encode_in_pieces(tokenizer, rendered, spans, add_bos, M.pause)
  else
    ids, err = tokenizer:encode(rendered, { add_bos = add_bos, special = true, plain = spans })
  end
  if not ids then return nil, err end
  return ids, rendered, warning
end

return M
