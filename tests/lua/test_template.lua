-- test_template.lua: the Jinja subset (exo.template) and chat rendering (exo.chat).
--
-- Unit cases cover each construct, whitespace control and error positions; their expected
-- strings are what Python Jinja2 renders with Hugging Face's settings (trim_blocks,
-- lstrip_blocks, loopcontrols, HF's tojson): set EXO_TEMPLATE_CASES_JSON=file to dump the cases
-- for such a cross-check. Real templates from model repositories (tests/lua/templates/*.jinja)
-- are rendered against prompts written from the models' documented formats, and the
-- llama.cpp test corpus (templates/llama_cpp_chat_cases.json) against llama.cpp's expected
-- prompts.
local source_dir = os.getenv("EXO_SOURCE_DIR") or "."
local T = require "exo.template"
local chat = require "exo.chat"
local cjson = require "cjson"

local checks, failures = 0, {}
local function check(name, got, want)
  checks = checks + 1
  if got ~= want then
    failures[#failures + 1] = string.format("%s\n  want: %s\n  got:  %s", name,
      want == nil and "nil" or string.format("%q", tostring(want)), got == nil and "nil" or string.format("%q", tostring(got)))
  end
end
local function check_true(name, cond, detail)
  checks = checks + 1
  if not cond then failures[#failures + 1] = name .. (detail and ("\n  " .. tostring(detail)) or "") end
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local function fixture(name) return read(source_dir .. "/tests/lua/templates/" .. name) end

local function render(src, vars)
  local t, err = T.compile(src)
  if not t then return nil, err end
  return t:render(vars)
end

-- Unit cases: { name, template, vars, expected }. vars are plain JSON-like values so the same
-- cases can be replayed through Python Jinja2.
local CASES = {
  -- literals and output
  { "text", "plain text", nil, "plain text" },
  { "string literals", [[{{ 'a' }}{{ "b" }}{{ 'c' "d" }}{{ 'it\'s' }}{{ "tab\tnl\n" }}]], nil, "abcdit'stab\tnl\n" },
  { "python constants", "{{ none }} {{ None }} {{ true }} {{ False }}", nil, "None None True False" },
  { "numbers", "{{ 42 }} {{ -7 }} {{ 1_000 }}", nil, "42 -7 1000" },
  { "list and dict literals", "{{ [1, 'a', [true, none]] }} {{ {'k': 'v', 'n': 1} }} {{ (1, 2) }}", nil,
    "[1, 'a', [True, None]] {'k': 'v', 'n': 1} (1, 2)" },
  { "undefined prints empty", "[{{ nothing }}][{{ d.missing }}]", { d = { a = 1 } }, "[][]" },
  -- arithmetic and strings
  { "arithmetic", "{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ (1 + 2) * 3 }} {{ 10 - 4 - 3 }}", nil,
    "7 3 1 2 1024 9 3" },
  { "true division", "{{ 7 / 2 }}", nil, "3.5" },
  { "string concatenation", "{{ 'a' + 'b' }} {{ 'n' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }}", nil, "ab n1NoneTrue ababab" },
  { "tilde binds between + and *", "{{ 2 * 3 ~ 4 }} {{ 1 ~ 2 ~ 3 }}", nil, "64 123" },
  { "percent format", "{{ '%s is %d' % ('x', 3) }} {{ '%s!' % 'hi' }}", nil, "x is 3 hi!" },
  { "list concatenation", "{{ [1] + [2, 3] }}", nil, "[1, 2, 3]" },
  -- attribute, item access, slicing
  { "attribute and item access", "{{ m.role }} {{ m['content'] }} {{ xs[0] }} {{ xs[-1] }} {{ xs.1 }} {{ m.nested.k }}",
    { m = { role = "user", content = "hi", nested = { k = "v" } }, xs = { "a", "b", "c" } }, "user hi a c b v" },
  { "out of range index is undefined", "[{{ xs[10] }}]{{ xs[10] is defined }}", { xs = { 1 } }, "[]False" },
  { "slices", "{{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ xs[::2] }} {{ xs[-2:] }} {{ xs[5:] }}",
    { xs = { 1, 2, 3, 4 } }, "[2, 3, 4] [1, 2, 3] [4, 3, 2, 1] [1, 3] [3, 4] []" },
  { "string slices", "{{ s[1:3] }} {{ s[::-1] }} {{ s[:-1] }} {{ s[-1] }}", { s = "hello" }, "el olleh hell o" },
  { "utf-8 string slices count characters", "{{ s[1:] }} {{ s | length }} {{ s[::-1] }}", { s = "héllo" }, "éllo 5 olléh" },
  -- comparisons and logic
  { "comparisons", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' == 'a' }} {{ 1 != 1 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'b' > 'a' }}", nil,
    "True False True False True False True" },
  { "deep equality", "{{ [1, [2]] == [1, [2]] }} {{ {'a': 1} == {'a': 1} }} {{ m == {'role': 'user'} }}",
    { m = { role = "user" } }, "True True True" },
  { "and/or return operands", "{{ none or 'x' }}|{{ '' and 'y' }}|{{ 0 or [] }}|{{ 'a' and 'b' }}|{{ not [] }}|{{ not 'a' }}", nil,
    "x||[]|b|True|False" },
  { "in and not in", "{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }} {{ 'tool_calls' in m }}",
    { m = { role = "user" } }, "True True True True False" },
  { "inline if", "{{ 'y' if x else 'n' }} {{ 'y' if not x else 'n' }} [{{ 'y' if false }}] {{ 'a' if x == 2 else 'b' if x == 1 else 'c' }}",
    { x = 1 }, "y n [] b" },
  -- tests
  { "is defined / none / string", "{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ none is none }} {{ x is not none }} {{ 'a' is string }} {{ x is string }}",
    { x = 1 }, "True False True True True True False" },
  { "is mapping / iterable / sequence", "{{ d is mapping }} {{ xs is mapping }} {{ xs is iterable }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ xs is sequence }}",
    { d = { a = 1 }, xs = { 1 } }, "True False True True False True" },
  { "number tests", "{{ 3 is number }} {{ 3 is integer }} {{ 4 is even }} {{ 3 is odd }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }}", nil,
    "True True True True True False" },
  { "equality tests", "{{ 1 is equalto 1 }} {{ 'a' is eq 'b' }} {{ true is sameas true }} {{ 2 is gt 1 }} {{ 'a' is in ['a'] }} {{ x is true }} {{ x is boolean }}",
    { x = true }, "True False True True True True True" },
  { "case tests", "{{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 'aB' is lower }}", nil, "True True False" },
  -- filters
  { "trim upper lower capitalize title", "[{{ '  a b  ' | trim }}] {{ 'ab' | upper }} {{ 'AB' | lower }} {{ 'hello WORLD' | capitalize }} {{ 'hello big-world' | title }}",
    nil, "[a b] AB ab Hello world Hello Big-World" },
  { "trim with chars", "{{ 'xxaxx' | trim('x') }}", nil, "a" },
  { "length count first last", "{{ xs | length }} {{ xs | count }} {{ xs | first }} {{ xs | last }} {{ 'abc' | first }} {{ d | length }}",
    { xs = { 1, 2, 3 }, d = { a = 1, b = 2 } }, "3 3 1 3 a 2" },
  { "join", "{{ xs | join(', ') }} {{ xs | join }} {{ ms | join('/', attribute='role') }}",
    { xs = { "a", "b" }, ms = { { role = "x" }, { role = "y" } } }, "a, b ab x/y" },
  { "default", "{{ x | default('d') }} {{ y | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ none | default('d') }} {{ y | d('e') }}",
    { x = "v" }, "v d  d None e" },
  { "replace", "{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'a.b'.replace('.', '-') }}", nil, "bbb bba a-b" },
  { "list string int float", "{{ 'ab' | list }} {{ 3 | string }}{{ 'x' }} {{ '42' | int + 1 }} {{ 'x' | int }} {{ 3.7 | int }} {{ '2.5' | float }}", nil,
    "['a', 'b'] 3x 43 0 3 2.5" },
  { "map attribute and filter", "{{ ms | map(attribute='role') | join(',') }} {{ ['a', 'B'] | map('upper') | list }}",
    { ms = { { role = "u" }, { role = "a" } } }, "u,a ['A', 'B']" },
  { "selectattr rejectattr", "{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='c') | join }} {{ ms | rejectattr('role', 'equalto', 'user') | map(attribute='c') | join }} {{ ms | selectattr('x') | list | length }} {{ ms | selectattr('role', '==', 'sys') | list }}",
    { ms = { { role = "user", c = "1" }, { role = "assistant", c = "2", x = true }, { role = "user", c = "3" } } }, "13 2 1 []" },
  { "select and map on none are empty", "{{ none | selectattr('type', 'equalto', 'x') | list | length }} {{ none | map(attribute='a') | list }}", nil, "0 []" },
  { "select reject", "{{ [1, 2, 3, 4] | select('even') | list }} {{ [1, 2, 3] | reject('odd') | list }} {{ ['a', none, 'b'] | select | list }}", nil,
    "[2, 4] [2] ['a', 'b']" },
  { "items and dictsort", "{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %} {% for k, v in d | dictsort %}{{ k }};{% endfor %}",
    { d = { b = 2, a = 1 } }, "a=1;b=2; a;b;" },
  { "safe reverse sort unique", "{{ '<b>' | safe }} {{ [1, 2, 3] | reverse | list }} {{ 'abc' | reverse }} {{ [3, 1, 2] | sort }} {{ [1, 2, 1] | unique | list }} {{ ['b', 'A'] | sort }}", nil,
    "<b> [3, 2, 1] cba [1, 2, 3] [1, 2] ['A', 'b']" },
  { "min max sum abs round", "{{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ [1, 2, 3] | sum }} {{ -3 | abs }} {{ 2.567 | round(2) }}", nil,
    "1 3 6 3 2.57" },
  { "indent", "{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}", nil, "a\n  b\n\n  c|  a\n  b" },
  { "format filter and escape", "{{ '%s-%s' | format('a', 1) }} {{ '<a href=\"x\">&' | e }}", nil, "a-1 &lt;a href=&#34;x&#34;&gt;&amp;" },
  { "wordcount truncate", "{{ 'one two three' | wordcount }} {{ 'hello world foo' | truncate(9, leeway=0) }}", nil, "3 hello..." },
  { "tojson", "{{ d | tojson }} {{ 'x\"y\n' | tojson }} {{ [1, none, true, 'é'] | tojson }}",
    { d = { a = 1 } }, "{\"a\": 1} \"x\\\"y\\n\" [1, null, true, \"é\"]" },
  { "tojson indent and options", "{{ {'a': [1, 2], 'b': {}} | tojson(indent=2) }}|{{ ['é'] | tojson(ensure_ascii=true) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}",
    nil, "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}|[\"\\u00e9\"]|{\"a\": 2, \"b\": 1}|[1,2]" },
  { "tojson keeps dict literal order", "{{ {'name': 'f', 'arguments': {'z': 1, 'a': 2}} | tojson }}", nil,
    "{\"name\": \"f\", \"arguments\": {\"z\": 1, \"a\": 2}}" },
  { "filter precedence over + and ~", "{{ 'a' + ' b ' | trim + 'c' }} {{ 'x' ~ [1, 2] | length }}", nil, "abc x2" },
  { "unary minus and filters", "{{ -1 | abs }}", nil, "1" },
  -- methods
  { "string methods", "[{{ ' a '.strip() }}][{{ ' a '.lstrip() }}][{{ ' a '.rstrip() }}][{{ 'xax'.strip('x') }}] {{ 'a,b'.split(',') }} {{ 'a b  c'.split() }} {{ 'a,b,c'.split(',', 1) }}",
    nil, "[a][a ][ a][a] ['a', 'b'] ['a', 'b', 'c'] ['a', 'b,c']" },
  { "string predicates", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ 'abc'.find('c') }} {{ 'aXa'.count('a') }} {{ '12'.isdigit() }}",
    nil, "True True True 2 2 True" },
  { "string case methods", "{{ 'ab'.upper() }} {{ 'AB'.lower() }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}", nil,
    "AB ab Hello World Hello" },
  { "str.format and join", "{{ '{} and {}'.format('a', 'b') }} {{ '{0}{name}'.format('x', name='y') }} {{ '-'.join(['a', 'b']) }}", nil,
    "a and b xy a-b" },
  { "splitlines", "{{ 'a\nb\n'.splitlines() }}", nil, "['a', 'b']" },
  { "dict methods", "{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('z', 'dflt') }} {{ d.get('z') }}",
    { d = { a = 1, b = 2 } }, "a1b2 ['a', 'b'] [1, 2] 1 dflt None" },
  { "think split as in DeepSeek R1", "{{ c.split('</think>')[-1] }}", { c = "<think>hmm</think>answer" }, "answer" },
  -- if / for / set
  { "if elif else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %} {% endfor %}", nil,
    "one two many " },
  { "loop variables", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", nil,
    "1032TrueFalse3;2121FalseFalse3;3210FalseTrue3;" },
  { "loop previtem nextitem cycle", "{% for x in [1, 2] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('o', 'e') }};{% endfor %}", nil,
    "-2-o;1--e;" },
  { "for else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1] %}{{ x }}{% else %}empty{% endfor %}", nil, "empty1" },
  { "for over dict items", "{% for k, v in d.items() %}{{ k }}:{{ v }},{% endfor %}", { d = { x = 1, y = 2 } }, "x:1,y:2," },
  { "for over dict keys", "{% for k in d %}{{ k }}{% endfor %}", { d = { b = 1, a = 2 } }, "ab" },
  { "loop filter", "{% for x in xs if x > 1 %}{{ x }}/{{ loop.index }}/{{ loop.length }} {% endfor %}", { xs = { 1, 2, 3 } }, "2/1/2 3/2/2 " },
  { "break and continue", "{% for x in range(10) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", nil, "023" },
  { "nested loops and outer loop", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in [1, 2] %}{{ outer.index }}{{ loop.index }} {% endfor %}{% endfor %}", nil,
    "11 12 21 22 " },
  { "range", "{{ range(3) | list }} {{ range(1, 4) | list }} {{ range(5, 0, -2) | list }}", nil, "[0, 1, 2] [1, 2, 3] [5, 3, 1]" },
  { "set", "{% set x = 'a' %}{% set y = x ~ 'b' %}{{ y }} {% set a, b = 1, 2 %}{{ a }}{{ b }}", nil, "ab 12" },
  { "set inside a loop stays in the iteration", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 5 %}{{ x }}{% endfor %}{{ x }}", nil, "15151" },
  { "set inside if leaks to the enclosing scope", "{% if true %}{% set x = 'in' %}{% endif %}{{ x }}", nil, "in" },
  { "set shadows a variable", "{% set messages = messages[1:] %}{{ messages | length }}", { messages = { 1, 2, 3 } }, "2" },
  { "block set", "{% set x %}a{{ 1 + 1 }}b{% endset %}[{{ x }}]{% set y | upper %}q{% endset %}{{ y }}", nil, "[a2b]Q" },
  { "namespace", "{% set ns = namespace(found=false, n=0) %}{% for x in [1, 2, 3] %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.found }} {{ ns.n }}",
    nil, "True 6" },
  { "empty namespace", "{% set ns = namespace() %}{% set ns.index = 0 %}{% set ns.index = ns.index + 1 %}{{ ns.index }}", nil, "1" },
  { "macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(name='c', punct='.') }}",
    nil, "Hi a! Hi b? Hi c." },
  { "recursive macro", "{% macro count(n) %}{{ n }}{% if n > 0 %}{{ count(n - 1) }}{% endif %}{% endmacro %}{{ count(3) }}", nil, "3210" },
  { "macro sees template variables", "{% set sep = '|' %}{% macro j(xs) %}{{ xs | join(sep) }}{% endmacro %}{{ j(['a', 'b']) }}", nil, "a|b" },
  { "with", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", nil, "3[]" },
  { "filter block", "{% filter upper %}abc{{ 'd' }}{% endfilter %}", nil, "ABCD" },
  { "raw", "{% raw %}{{ not rendered }}{% endraw %}", nil, "{{ not rendered }}" },
  { "comments", "a{# a comment {{ x }} #}b", nil, "ab" },
  { "generation block", "{% generation %}text{% endgeneration %}", nil, "text" },
  { "dict literal in output needs balanced braces", "{{ {'a': {'b': 1}} }}", nil, "{'a': {'b': 1}}" },
  { "strftime_now", "{{ strftime_now('%Y') | length }}", nil, "4" },
  -- whitespace control
  { "trim_blocks and lstrip_blocks", "a\n  {% if true %}\n  x\n  {% endif %}\nb\n", nil, "a\n  x\nb" },
  { "loop body lines", "{% for i in [1, 2] %}\n{{ i }}\n{% endfor %}\n", nil, "1\n2\n" },
  { "minus strips both sides", "a {%- if true -%} b {%- endif -%} c", nil, "abc" },
  { "minus in expressions", "x  {{- 'y' -}}  \n z", nil, "xyz" },
  { "expressions are not lstripped", "  {{ 'a' }}\n", nil, "  a" },
  { "lstrip only at line start", "x  {% if true %}y{% endif %}", nil, "x  y" },
  { "lstrip after an expression on the line", "{{ 'a' }}  {% if true %}b{% endif %}", nil, "a  b" },
  { "plus keeps leading whitespace", "  {%+ if true %}x{% endif %}", nil, "  x" },
  { "plus keeps the newline after a block", "{% if true +%}\nx{% endif %}", nil, "\nx" },
  { "comment lines vanish", "a\n  {# note #}\nb", nil, "a\nb" },
  { "trailing newline dropped once", "x\n\n", nil, "x\n" },
  { "tab before a block", "\t{% if true %}y{% endif %}", nil, "y" },
  { "crlf newlines", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\n", nil, "a\nb\n" },
}

-- Error cases: { name, template, vars, pattern the message must match, kind }.
local ERRORS = {
  { "unclosed block", "{% if true %}x", nil, "^template:1:4: unclosed 'if' tag", "syntax" },
  { "unexpected end tag", "x\n{% endfor %}", nil, "^template:2:4: unexpected 'endfor'", "syntax" },
  { "bad expression", "{{ 1 + }}", nil, "^template:1:8: unexpected end of expression", "syntax" },
  { "unclosed expression", "ab {{ x", nil, "^template:1:4: unclosed '{{' tag", "syntax" },
  { "unterminated string", "{{ 'abc }}", nil, "^template:1:4: unterminated string", "syntax" },
  { "unclosed comment", "{# x", nil, "^template:1:1: unclosed comment", "syntax" },
  { "break outside loop", "{% break %}", nil, "outside a loop", "syntax" },
  { "unsupported tag", "line\n  {% include 'other.jinja' %}", nil, "^template:2:6: unsupported tag 'include'", "unsupported" },
  { "unsupported call tag", "{% call foo() %}x{% endcall %}", nil, "unsupported tag 'call'", "unsupported" },
  { "unknown tag", "{% frobnicate %}", nil, "unknown tag 'frobnicate'", "unsupported" },
  { "unsupported filter", "{{ x | groupby('a') }}", nil, "^template:1:8: unsupported filter 'groupby'", "unsupported" },
  { "unsupported test", "{{ x is frob }}", nil, "unsupported test 'frob'", "unsupported" },
  { "unsupported method", "{{ xs.frobnicate(1) }}", { xs = { 1 } }, "^template:1:7: 'list' object has no supported method 'frobnicate'", "unsupported" },
  { "recursive loop", "{% for x in xs recursive %}{% endfor %}", nil, "recursive loops are not supported", "unsupported" },
  { "unsupported global", "{% set j = joiner(',') %}", nil, "^template:1:12: unsupported global function 'joiner%(%)'", "unsupported" },
  -- runtime
  { "raise_exception", "{% for m in ms %}\n  {{ raise_exception('roles must alternate') }}{% endfor %}", { ms = { 1 } },
    "^template:2:6: raise_exception: roles must alternate$", "raise" },
  { "undefined attribute chain", "{{ a.b.c }}", { a = { x = 1 } }, "^template:1:8: 'a.b' is undefined", "error" },
  { "undefined variable attribute", "{{ nope.x }}", nil, "'nope' is undefined", "error" },
  { "str + int", "{{ 'a' + 1 }}", nil, "^template:1:8: can only concatenate str %(not \"int\"%) to str", "error" },
  { "not iterable", "{% for x in 3 %}{% endfor %}", nil, "'int' object is not iterable", "error" },
  { "method on wrong type", "{{ (3).strip() }}", nil, "^template:1:8: 'int' object has no method 'strip'", "error" },
  { "set attribute on non-namespace", "{% set d = {} %}{% set d.x = 1 %}", nil, "non%-namespace", "error" },
  { "tojson of undefined", "{{ nope | tojson }}", nil, "not JSON serializable", "error" },
  { "division by zero", "{{ 1 / 0 }}", nil, "division by zero", "error" },
}

-- Optional dump for cross-checking the expectations against Python Jinja2 (written at the end).
local dump = os.getenv("EXO_TEMPLATE_CASES_JSON")
local dumped_chats = {}

for _, c in ipairs(CASES) do
  local got, err = render(c[2], c[3])
  check("case '" .. c[1] .. "'" .. (err and (" (" .. err .. ")") or ""), got, c[4])
end

for _, c in ipairs(ERRORS) do
  local t, err, info = T.compile(c[2])
  local got
  if t then got, err, info = t:render(c[3]) end
  check_true("error '" .. c[1] .. "' fails", got == nil, got)
  if got == nil then
    check_true("error '" .. c[1] .. "' message", err:find(c[4]) ~= nil, err)
    check("error '" .. c[1] .. "' kind", info and info.kind, c[5])
  end
end

-- A template from a model file must not hang the server: loops have a budget.
do
  local got, err = render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
  check_true("runaway loops are cut off", got == nil and err:find("^template:1:32: template exceeded %d+ loop iterations"), err)
end

-- Beyond HF's sandbox (as in llama.cpp): list mutators, used by Kimi K2's template.
check("list append", render("{% set ns = namespace(ids=[]) %}{% set _ = ns.ids.append('a') %}{% set _ = ns.ids.extend(['b', 'c']) %}{{ ns.ids.pop() }}{{ ns.ids }}"),
  "c['a', 'b']")

-- Values from Lua: explicit list/dict marks, key order, none vs undefined.
do
  local d = T.dict({ z = 1, a = 2 }, { "z", "a" })
  check("dict order for tojson", render("{{ d | tojson }}", { d = d }), '{"z": 1, "a": 2}')
  check("dict order for items", render("{% for k, v in d.items() %}{{ k }}{% endfor %}", { d = d }), "za")
  check("unmarked dicts iterate sorted", render("{{ d | tojson }}", { d = { b = 1, a = 2 } }), '{"a": 2, "b": 1}')
  check("empty table is a list", render("{{ e | tojson }} {{ e is mapping }}", { e = {} }), "[] False")
  check("marked empty dict", render("{{ e | tojson }} {{ e is mapping }}", { e = T.dict({}) }), "{} True")
  check("null is none", render("{{ v is none }} {{ v is defined }} {{ v }}", { v = T.null }), "True True None")
  check("false is defined", render("{{ v is defined }} {{ v }}", { v = false }), "True False")
  check("lua function as a global", render("{{ f(2, 3) }}", { f = function(a, b) return a * b end }), "6")
  check("tojson helper", T.tojson({ 1, "a" }, { indent = 1 }), '[\n 1,\n "a"\n]')
end

-- Compile once, render many times: the same compiled template gives the same text.
do
  local t = assert(T.compile("{% for m in messages %}{{ m.role }}{% endfor %}"))
  check("reuse 1", t:render({ messages = { { role = "a" } } }), "a")
  check("reuse 2", t:render({ messages = { { role = "b" }, { role = "c" } } }), "bc")
  local c1 = assert(chat.compile("{{ 1 }}"))
  check_true("chat.compile caches by text", chat.compile("{{ 1 }}") == c1)
end

-- Real templates ----------------------------------------------------------------------------

local function msg(role, content) return { role = role, content = content } end
local SYSTEM = msg("system", "You are a helpful assistant")
local CONV = { SYSTEM, msg("user", "Hello"), msg("assistant", "Hi there"), msg("user", "Who are you") }
local NO_SYSTEM = { msg("user", "Hello") }

local function render_chat(file, messages, extra)
  local opts = { template = fixture(file), messages = messages, add_generation_prompt = true }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return chat.render(opts)
end

local function check_chat(name, file, messages, extra, want)
  if dump then
    dumped_chats[#dumped_chats + 1] = T.dict({ name = name, template = fixture(file), messages = messages,
      opts = T.dict(extra or {}), expected = want })
  end
  local got, warn = render_chat(file, messages, extra)
  check(name, got, want)
  check(name .. " (no fallback)", warn, nil)
end

-- SmolLM2 (the default model, template read from its GGUF): ChatML with a default system prompt.
check_chat("smollm2 conversation", "smollm2-135m-instruct.jinja", CONV, nil,
  "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" ..
  "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n")
check_chat("smollm2 default system prompt", "smollm2-135m-instruct.jinja", NO_SYSTEM, nil,
  "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" ..
  "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
check_chat("smollm2 without generation prompt", "smollm2-135m-instruct.jinja", { SYSTEM, msg("user", "Hi") },
  { add_generation_prompt = false },
  "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
check_chat("content parts are joined into a string", "smollm2-135m-instruct.jinja",
  { SYSTEM, { role = "user", content = { { type = "text", text = "Hello" }, { type = "image_url", image_url = {} },
    { type = "text", text = "there" } } } }, nil,
  "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello\nthere<|im_end|>\n<|im_start|>assistant\n")

-- Qwen2.5: ChatML, its own default system prompt, tools in the system message, tool calls.
check_chat("qwen2.5 conversation", "qwen2.5-7b-instruct.jinja", CONV, nil,
  "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" ..
  "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n")
check_chat("qwen2.5 default system prompt", "qwen2.5-7b-instruct.jinja", NO_SYSTEM, nil,
  "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" ..
  "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")

local WEATHER_TOOL = T.dict({
  type = "function",
  ["function"] = T.dict({
    name = "get_weather",
    description = "Get the weather",
    parameters = T.dict({
      type = "object",
      properties = T.dict({ city = T.dict({ type = "string" }) }),
      required = { "city" },
    }, { "type", "properties", "required" }),
  }, { "name", "description", "parameters" }),
}, { "type", "function" })
local WEATHER_JSON = '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", ' ..
  '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'

check_chat("qwen2.5 tools and tool calls", "qwen2.5-7b-instruct.jinja", {
  msg("user", "Weather in Paris?"),
  { role = "assistant", content = "", tool_calls = { { type = "function",
    ["function"] = { name = "get_weather", arguments = { city = "Paris" } } } } },
  { role = "tool", content = "22C" },
}, { tools = { WEATHER_TOOL } },
  "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n" ..
  "You may call one or more functions to assist with the user query.\n\n" ..
  "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" .. WEATHER_JSON ..
  "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " ..
  "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n" ..
  "</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n" ..
  "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n" ..
  "<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n<|im_start|>assistant\n")

-- Llama 3.1: header blocks, the knowledge/today date lines, tools in the first user message.
local LLAMA_BOS = "<|begin_of_text|>"
local function llama_turn(role, text) return "<|start_header_id|>" .. role .. "<|end_header_id|>\n\n" .. text .. "<|eot_id|>" end
check_chat("llama 3.1 conversation", "llama-3.1-8b-instruct.jinja", CONV, { bos_token = LLAMA_BOS },
  LLAMA_BOS .. llama_turn("system", "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant") ..
  llama_turn("user", "Hello") .. llama_turn("assistant", "Hi there") .. llama_turn("user", "Who are you") ..
  "<|start_header_id|>assistant<|end_header_id|>\n\n")
check_chat("llama 3.1 date_string and no system", "llama-3.1-8b-instruct.jinja", { msg("user", "  Hello  ") },
  { bos_token = LLAMA_BOS, date_string = "01 Jan 2025" },
  LLAMA_BOS .. llama_turn("system", "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n") ..
  llama_turn("user", "Hello") .. "<|start_header_id|>assistant<|end_header_id|>\n\n")
local WEATHER_JSON4 = '{\n    "type": "function",\n    "function": {\n        "name": "get_weather",\n' ..
  '        "description": "Get the weather",\n        "parameters": {\n            "type": "object",\n' ..
  '            "properties": {\n                "city": {\n                    "type": "string"\n' ..
  '                }\n            },\n            "required": [\n                "city"\n            ]\n' ..
  '        }\n    }\n}'
check_chat("llama 3.1 tools in the first user message", "llama-3.1-8b-instruct.jinja", {
  SYSTEM, msg("user", "Weather in Paris?"),
  { role = "assistant", tool_calls = { { type = "function",
    ["function"] = { name = "get_weather", arguments = { city = "Paris" } } } } },
  { role = "tool", content = "22C" },
}, { bos_token = LLAMA_BOS, tools = { WEATHER_TOOL } },
  LLAMA_BOS .. llama_turn("system", "Environment: ipython\nCutting Knowledge Date: December 2023\n" ..
    "Today Date: 26 Jul 2024\n\nYou are a helpful assistant") ..
  llama_turn("user", "Given the following functions, please respond with a JSON for a function call with its " ..
    "proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, " ..
    "\"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n" .. WEATHER_JSON4 ..
    "\n\nWeather in Paris?") ..
  llama_turn("assistant", '{"name": "get_weather", "parameters": {"city": "Paris"}}') ..
  -- A string tool result is iterable, so the template writes it through tojson (as HF does).
  llama_turn("ipython", '"22C"') .. "<|start_header_id|>assistant<|end_header_id|>\n\n")
do
  local got, err = render_chat("llama-3.1-8b-instruct.jinja", {
    msg("user", "x"), { role = "assistant", tool_calls = { { ["function"] = { name = "a", arguments = {} } },
      { ["function"] = { name = "b", arguments = {} } } } } }, { tools = { WEATHER_TOOL } })
  check_true("llama 3.1 rejects parallel tool calls", got == nil and err:find("only supports single tool%-calls"), err)
end

-- Llama 3.2: today's date from strftime_now unless date_string is given.
do
  local got = render_chat("llama-3.2-3b-instruct.jinja", NO_SYSTEM, { bos_token = LLAMA_BOS })
  check("llama 3.2 today's date", got, LLAMA_BOS .. llama_turn("system", "Cutting Knowledge Date: December 2023\nToday Date: " ..
    os.date("%d %b %Y") .. "\n\n") .. llama_turn("user", "Hello") .. "<|start_header_id|>assistant<|end_header_id|>\n\n")
end

-- Mistral v0.1/v0.2 ([INST], no system role: it is merged into the first user turn) and the
-- alternating-roles check, which must come back as an error.
local MISTRAL_V1 = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" ..
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" ..
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}" ..
  "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
do
  local got, warn = chat.render({ template = MISTRAL_V1, messages = CONV, bos_token = "<s>", eos_token = "</s>" })
  check("mistral v0.1 conversation", got, "<s>[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]")
  check("mistral v0.1 no fallback", warn, nil)
  local bad, err = chat.render({ template = MISTRAL_V1, messages = { msg("user", "a"), msg("user", "b") } })
  check_true("mistral alternating roles is an error", bad == nil and err:find("Conversation roles must alternate", 1, true), err)
  check_true("mistral error names the position", err and err:find("template:1:%d+: raise_exception") ~= nil, err)
end
-- Mistral Nemo (v3-tekken): the system prompt goes into the last user turn.
check_chat("mistral nemo conversation", "mistral-nemo-instruct-2407.jinja", CONV, { bos_token = "<s>", eos_token = "</s>" },
  "<s>[INST]Hello[/INST]Hi there</s>[INST]You are a helpful assistant\n\nWho are you[/INST]")
do
  local bad, err = render_chat("mistral-nemo-instruct-2407.jinja", { msg("assistant", "a"), msg("user", "b") })
  check_true("mistral nemo alternating roles is an error", bad == nil and err:find("must alternate", 1, true), err)
end

-- DeepSeek R1 distill: system text first, fullwidth-bar role tokens, <think> after the prompt,
-- reasoning dropped from earlier assistant turns.
local DS_BOS = "<｜begin▁of▁sentence｜>"
check_chat("deepseek r1 conversation", "deepseek-r1-distill-llama-8b.jinja",
  { SYSTEM, msg("user", "Hello"), msg("assistant", "<think>\nplan\n</think>\n\nHi there"), msg("user", "Who are you") },
  { bos_token = DS_BOS },
  DS_BOS .. "You are a helpful assistant<｜User｜>Hello<｜Assistant｜>\n\nHi there<｜end▁of▁sentence｜>" ..
  "<｜User｜>Who are you<｜Assistant｜><think>\n")
-- DeepSeek V3.1: thinking off by default; this template writes an empty <think></think>.
check_chat("deepseek v3.1 conversation", "deepseek-v3.1.jinja", CONV, { bos_token = DS_BOS },
  DS_BOS .. "You are a helpful assistant<｜User｜>Hello<｜Assistant｜><think></think>Hi there<｜end▁of▁sentence｜>" ..
  "<｜User｜>Who are you<｜Assistant｜><think></think>")

-- Phi-3.5 and Gemma 2 (no system role: merged, as llama.cpp does).
check_chat("phi-3.5 conversation", "phi-3.5-mini-instruct.jinja", CONV, nil,
  "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n" ..
  "<|user|>\nWho are you<|end|>\n<|assistant|>\n")
check_chat("gemma 2 conversation", "gemma-2-2b-it.jinja", CONV, { bos_token = "<bos>" },
  "<bos><start_of_turn>user\nYou are a helpful assistant\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n" ..
  "<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\n")

-- Qwen3 and SmolLM3: larger templates (reasoning, namespaces, reverse loops) must compile and
-- render the plain conversation in ChatML.
check_chat("qwen3 conversation", "qwen3-0.6b.jinja", CONV, nil,
  "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" ..
  "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n")
do
  local got, warn = render_chat("smollm3-3b.jinja", CONV)
  check_true("smollm3 renders", got ~= nil and warn == nil, warn)
  check_true("smollm3 has the turns", got and got:find("<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n", 1, true), got)
end

-- The llama.cpp corpus: its templates and the prompts llama.cpp expects for its conversation.
do
  local corpus = cjson.decode(fixture("llama_cpp_chat_cases.json"))
  for _, c in ipairs(corpus.cases) do
    local messages = {}
    for _, m in ipairs(corpus.conversation) do messages[#messages + 1] = msg(m[1], m[2]) end
    for _, m in ipairs(c.extra_conversation) do messages[#messages + 1] = msg(m[1], m[2]) end
    local got, warn = chat.render({ template = c.template, messages = messages, bos_token = c.bos_token,
      eos_token = c.eos_token })
    check("llama.cpp case " .. c.name, got, c.expected)
    check("llama.cpp case " .. c.name .. " (no fallback)", warn, nil)
  end
end

-- Fallbacks -------------------------------------------------------------------------------

do
  local got, warn = chat.render({ messages = CONV })
  check("no template falls back to chatml", got,
    "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" ..
    "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n")
  check_true("no template warns", warn and warn:find("no chat template", 1, true), warn)

  got, warn = chat.render({ messages = NO_SYSTEM, family_hint = "llama3", bos_token = LLAMA_BOS })
  check("family hint", got, LLAMA_BOS .. llama_turn("user", "Hello") .. "<|start_header_id|>assistant<|end_header_id|>\n\n")
  check_true("family hint warns", warn ~= nil)

  -- An unsupported construct in a llama3-looking template: llama3 format, and the warning names it.
  local llama_like = "{% include 'x' %}<|start_header_id|>{{ m }}<|end_header_id|>"
  got, warn = chat.render({ template = llama_like, messages = NO_SYSTEM, bos_token = LLAMA_BOS })
  check("unsupported template falls back by markers", got,
    LLAMA_BOS .. llama_turn("user", "Hello") .. "<|start_header_id|>assistant<|end_header_id|>\n\n")
  check_true("fallback warning names the construct", warn and warn:find("unsupported tag 'include'", 1, true)
    and warn:find("llama3", 1, true), warn)

  got, warn = chat.render({ template = "[INST] {{ messages | groupby('role') }}", messages = CONV,
    bos_token = "<s>", eos_token = "</s>" })
  check("mistral fallback", got, "<s>[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]")
  check_true("mistral fallback warning", warn and warn:find("unsupported filter 'groupby'", 1, true), warn)

  -- A failure found only while rendering (not a raise_exception) also falls back, with a warning.
  got, warn = chat.render({ template = "<|im_start|>{{ messages[0].content.nope.deeper }}", messages = NO_SYSTEM })
  check_true("runtime failure falls back", got and got:find("<|im_start|>user\nHello", 1, true) and warn
    and warn:find("is undefined", 1, true), warn)

  for _, name in ipairs({ "chatml", "llama3", "mistral", "llama2", "deepseek3", "deepseek2", "phi3", "gemma" }) do
    local p = chat.families[name](chat.normalize_messages(CONV), { bos_token = "", eos_token = "", add_generation_prompt = true })
    check_true("family " .. name .. " renders every turn", p:find("Who are you", 1, true) and p:find("Hi there", 1, true), p)
  end
  check("detect chatml", chat.detect_family(fixture("qwen2.5-7b-instruct.jinja")), "chatml")
  check("detect llama3", chat.detect_family(fixture("llama-3.1-8b-instruct.jinja")), "llama3")
  check("detect mistral", chat.detect_family(fixture("mistral-nemo-instruct-2407.jinja")), "mistral")
  check("detect deepseek", chat.detect_family(fixture("deepseek-r1-distill-llama-8b.jinja")), "deepseek3")
  check("detect gemma", chat.detect_family(fixture("gemma-2-2b-it.jinja")), "gemma")
  check("detect phi3", chat.detect_family(fixture("phi-3.5-mini-instruct.jinja")), "phi3")
end

-- Lua templates ------------------------------------------------------------------------------

do
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write([[return function(messages, opts)
    local out = {}
    for _, m in ipairs(messages) do out[#out + 1] = m.role .. ": " .. m.content .. "\n" end
    if opts.add_generation_prompt then out[#out + 1] = "assistant:" end
    return table.concat(out)
  end]])
  f:close()
  local fn = assert(chat.load_template_file(path))
  local got, warn = chat.render({ template = fn, messages = { msg("user", { { type = "text", text = "hi" } }) } })
  check("lua template", got, "user: hi\nassistant:")
  check("lua template no warning", warn, nil)
  os.remove(path)
  local bad = os.tmpname() .. ".lua"
  f = assert(io.open(bad, "wb"))
  f:write("return 42")
  f:close()
  local none, err = chat.load_template_file(bad)
  check_true("lua template must return a function", none == nil and err:find("must return function", 1, true), err)
  os.remove(bad)
  local jinja = assert(chat.load_template_file(source_dir .. "/tests/lua/templates/smollm2-135m-instruct.jinja"))
  check_true("jinja template file", type(jinja) == "string" and jinja:find("<|im_start|>", 1, true))
end

-- Performance: a 50-message conversation through a real template, compiled once.
do
  -- Whitespace handling must stay linear: message text is user input.
  local big = (" "):rep(200000) .. "x" .. (" \n"):rep(100000) .. "y" .. (" "):rep(100000)
  local t0 = os.clock()
  local got = chat.render({ template = fixture("llama-3.1-8b-instruct.jinja"), messages = { msg("user", big) } })
  check_true("trimming long whitespace is fast", got and os.clock() - t0 < 0.5, os.clock() - t0)

  local messages = { SYSTEM }
  for i = 1, 49 do
    messages[#messages + 1] = msg(i % 2 == 1 and "user" or "assistant", ("message %d with some text in it. "):format(i):rep(8))
  end
  local text = fixture("llama-3.1-8b-instruct.jinja")
  chat.render({ template = text, messages = messages })
  local n = 200
  local start = os.clock()
  for _ = 1, n do chat.render({ template = text, messages = messages }) end
  local per = (os.clock() - start) / n * 1000
  print(string.format("template: 50-message llama 3.1 render %.3f ms", per))
  check_true("50-message render is fast", per < 5, per .. " ms")
end

if dump then
  local cases = {}
  for _, c in ipairs(CASES) do
    cases[#cases + 1] = T.dict({ name = c[1], template = c[2], vars = T.dict(c[3] or {}), expected = c[4] })
  end
  for _, c in ipairs(ERRORS) do
    cases[#cases + 1] = T.dict({ name = c[1], template = c[2], vars = T.dict(c[3] or {}), error = c[4], kind = c[5] })
  end
  local f = assert(io.open(dump, "wb"))
  f:write(T.tojson(T.dict({ cases = cases, chats = dumped_chats })))
  f:close()
end

if #failures > 0 then
  error(#failures .. " of " .. checks .. " template checks failed:\n" .. table.concat(failures, "\n"), 0)
end
print("template ok (" .. checks .. " checks)")
