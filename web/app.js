/* app.js: the logic of exo's chat page.
 *
 * Conversations live in localStorage; answers stream from the node's
 * POST /v1/chat/completions (server-sent events) and are rendered as Markdown
 * while they arrive. The model's text is untrusted: raw HTML in it is shown as
 * text, link targets are limited to http(s)/mailto, and every rendered tree
 * goes through an allowlist sanitiser before it reaches the page. The stop
 * button aborts the fetch, and the node cancels the generation when the
 * connection closes. The cluster panel polls GET /v1/topology (each node's memory,
 * fp32 TFLOPS and round trip), which also says whether the cluster is open (no
 * cluster key): then a notice under the top bar says so. An answer can be
 * copied, the last one regenerated, a question edited and sent again (what
 * followed it is dropped), and a conversation exported as Markdown or JSON.
 * The model picker lists the node's catalogue (GET /v1/models: downloaded or
 * not, size, whether this engine can run it); choosing a model that is not in
 * the store downloads it (POST /download) with a progress bar per node from
 * GET /v1/download/progress, polled while it runs, and the remove button
 * deletes the selected model's files (DELETE /models/{id}) after asking. */
(function () {
  "use strict";

  var STORE_KEY = "exo.chat.conversations.v1";
  var SETTINGS_KEY = "exo.chat.settings.v1";
  var API_KEY_KEY = "exo.chat.apiKey"; // sessionStorage: kept for this tab only
  var TOPOLOGY_EVERY_MS = 5000;
  var PROGRESS_EVERY_MS = 700;
  var DEFAULT_TITLE = "New chat";

  function $(id) { return document.getElementById(id); }

  // ---- Markdown, highlighted and sanitised --------------------------------------

  var AUTO_LANGS = ["python", "javascript", "typescript", "bash", "shell", "c", "cpp", "java", "go", "rust",
    "json", "lua", "sql", "xml", "css", "markdown", "yaml", "ruby", "php", "csharp", "kotlin", "swift"];

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  // A link target the page may use, or null: http(s), mailto, or a relative
  // reference. Control characters and spaces are dropped first, as browsers do.
  function safeUrl(href) {
    if (typeof href !== "string") return null;
    var u = href.trim();
    var bare = u.replace(/[\u0000-\u0020\u007f-\u009f]/g, "");
    var m = /^([a-z][a-z0-9+.\-]*):/i.exec(bare);
    if (m && !/^(https?|mailto)$/i.test(m[1])) return null;
    if (!m && /^[^\/#?.]*:/.test(bare)) return null; // "java\tscript:" and friends
    return u;
  }

  function autoLangs() {
    if (!autoLangs.list) {
      autoLangs.list = AUTO_LANGS.filter(function (l) { return window.hljs && window.hljs.getLanguage(l); });
    }
    return autoLangs.list;
  }

  // Code -> { html, lang } with highlight.js (9.x API), escaped text without it.
  function highlightCode(code, lang) {
    var hl = window.hljs;
    if (hl) {
      try {
        if (lang && hl.getLanguage(lang)) return { html: hl.highlight(lang, code, true).value, lang: lang };
        if (code.length < 20000) {
          var r = hl.highlightAuto(code, autoLangs());
          return { html: r.value, lang: r.language || "" };
        }
      } catch (e) { /* fall through to plain text */ }
    }
    return { html: escapeHtml(code), lang: lang };
  }

  var markedReady = false;
  function setupMarked() {
    if (markedReady || !window.marked || !window.marked.Renderer) return markedReady;
    var m = window.marked;
    var renderer = new m.Renderer();
    // Raw HTML from the model is shown as text, never parsed.
    renderer.html = function (html) { return escapeHtml(html); };
    renderer.link = function (href, title, text) {
      var url = safeUrl(href);
      if (url === null) return text;
      return '<a href="' + escapeHtml(url) + '"' + (title ? ' title="' + escapeHtml(title) + '"' : "") +
        ' target="_blank" rel="noopener noreferrer nofollow">' + text + "</a>";
    };
    // Images would fetch whatever the model names: show them as links instead.
    renderer.image = function (href, title, text) {
      var label = "[image: " + escapeHtml(text || href || "") + "]";
      var url = safeUrl(href);
      if (url === null) return label;
      return '<a href="' + escapeHtml(url) + '" target="_blank" rel="noopener noreferrer nofollow">' + label + "</a>";
    };
    renderer.code = function (code, infostring) {
      var lang = String(infostring || "").trim().split(/\s+/)[0].toLowerCase().replace(/[^\w+#.\-]/g, "");
      var r = highlightCode(String(code).replace(/\n$/, ""), lang);
      var cls = "hljs" + (r.lang ? " language-" + String(r.lang).replace(/[^\w\-]/g, "") : "");
      return '<pre><code class="' + cls + '">' + r.html + "</code></pre>\n";
    };
    m.setOptions({ renderer: renderer, gfm: true, breaks: true, headerIds: false, mangle: false });
    // marked passes text inside inline <pre>/<code>/<kbd>/<script> through
    // unescaped ("raw block"); we show those tags as text, so never enter that mode.
    if (m.use && m.Tokenizer) {
      m.use({ tokenizer: { tag: function (src) {
        var t = m.Tokenizer.prototype.tag.call(this, src);
        if (this.lexer && this.lexer.state) this.lexer.state.inRawBlock = false;
        return t || false;
      } } });
    }
    markedReady = true;
    return true;
  }

  var ALLOWED = {
    A: ["href", "title", "target", "rel"], P: [], BR: [], HR: [], H1: [], H2: [], H3: [], H4: [], H5: [], H6: [],
    STRONG: [], EM: [], DEL: [], S: [], B: [], I: [], CODE: ["class"], PRE: [], BLOCKQUOTE: [], UL: [],
    OL: ["start"], LI: [], TABLE: [], THEAD: [], TBODY: [], TR: [], TH: ["align"], TD: ["align"], SPAN: ["class"],
    INPUT: ["type", "checked", "disabled"],
  };

  // Walks an inert tree (a <template>'s content) and keeps only allowlisted
  // elements and attributes. Anything else becomes its text.
  function cleanTree(node) {
    var kids = Array.prototype.slice.call(node.childNodes);
    for (var i = 0; i < kids.length; i++) {
      var el = kids[i];
      if (el.nodeType === 3) continue;
      if (el.nodeType !== 1) { el.remove(); continue; }
      var allowed = Object.prototype.hasOwnProperty.call(ALLOWED, el.tagName) ? ALLOWED[el.tagName] : null;
      if (!allowed || el.namespaceURI !== "http://www.w3.org/1999/xhtml" ||
          (el.tagName === "INPUT" && el.getAttribute("type") !== "checkbox")) {
        var text = /^(SCRIPT|STYLE|TEMPLATE|IFRAME|OBJECT|EMBED|IMG|SVG|MATH|NOSCRIPT)$/i.test(el.tagName) ? ""
          : el.textContent;
        if (text) el.replaceWith(el.ownerDocument.createTextNode(text));
        else el.remove();
        continue;
      }
      var attrs = Array.prototype.slice.call(el.attributes);
      for (var j = 0; j < attrs.length; j++) {
        var name = attrs[j].name.toLowerCase(), value = attrs[j].value;
        var ok = allowed.indexOf(name) >= 0;
        if (ok && name === "href") ok = safeUrl(value) !== null;
        if (ok && name === "class") ok = /^[\w\- ]*$/.test(value);
        if (ok && name === "target") ok = value === "_blank";
        if (!ok) el.removeAttribute(attrs[j].name);
      }
      if (el.tagName === "INPUT") el.setAttribute("disabled", "");
      if (el.tagName === "A" && el.hasAttribute("href")) el.setAttribute("rel", "noopener noreferrer nofollow");
      cleanTree(el);
    }
  }

  // Markdown -> a sanitised DocumentFragment (inert until inserted).
  function renderMarkdown(md) {
    var tpl = document.createElement("template");
    if (setupMarked()) {
      var html;
      // An unclosed code fence (mid-stream) only parses as code when a newline ends the text.
      var src = String(md);
      if (src && src.charAt(src.length - 1) !== "\n") src += "\n";
      try { html = window.marked.parse(src); } catch (e) { html = "<p>" + escapeHtml(md) + "</p>"; }
      tpl.innerHTML = html;
    } else {
      var p = document.createElement("p");
      p.className = "plain";
      p.textContent = String(md);
      tpl.content.appendChild(p);
    }
    cleanTree(tpl.content);
    return tpl.content;
  }

  // Copies text: the Clipboard API where the page may use it, else (plain
  // http from another host, or a refused permission, as in headless Chromium)
  // a hidden textarea and execCommand("copy").
  function copyText(text, button) {
    var label = button.textContent;
    function done(ok) {
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(function () { button.textContent = label; }, 1500);
    }
    function fallback() {
      var ta = document.createElement("textarea");
      ta.value = text;
      ta.setAttribute("readonly", "");
      ta.setAttribute("aria-hidden", "true");
      ta.style.position = "fixed";
      ta.style.top = "0";
      ta.style.opacity = "0";
      document.body.appendChild(ta);
      ta.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      ta.remove();
      button.focus();
      return ok;
    }
    if (navigator.clipboard && navigator.clipboard.writeText && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(fallback()); });
      return;
    }
    done(fallback());
  }

  // Renders md into el, then adds a language label and a copy button to each
  // code block (built here, after sanitising, from trusted code).
  function renderMarkdownInto(el, md) {
    el.replaceChildren(renderMarkdown(md));
    var pres = el.querySelectorAll("pre");
    for (var i = 0; i < pres.length; i++) {
      var pre = pres[i], code = pre.querySelector("code");
      if (!code) continue;
      var bar = document.createElement("div");
      bar.className = "code-bar";
      var m = /(?:^|\s)language-([\w\-]+)/.exec(code.className);
      var lang = document.createElement("span");
      lang.textContent = m ? m[1] : "text";
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "copy-btn";
      btn.textContent = "Copy";
      btn.setAttribute("aria-label", "Copy code");
      btn.addEventListener("click", copyText.bind(null, code.textContent, btn));
      bar.appendChild(lang);
      bar.appendChild(btn);
      pre.insertBefore(bar, code);
    }
  }

  // ---- storage ------------------------------------------------------------------------

  function uid() { return Date.now().toString(36) + Math.random().toString(36).slice(2, 8); }

  function loadJson(key, fallback) {
    try {
      var v = JSON.parse(localStorage.getItem(key));
      return v === null || v === undefined ? fallback : v;
    } catch (e) { return fallback; }
  }

  var state = {
    convs: [], current: null,
    settings: { model: "", temperature: 0.7, maxTokens: 512 },
    gen: null, // { convId, msg, controller }
    models: [], modelsError: null,
    // The download this page follows: { model, events: {node: event}, done, failed }, or null.
    download: null,
  };

  function loadState() {
    var saved = loadJson(STORE_KEY, null);
    if (saved && Array.isArray(saved.conversations)) {
      state.convs = saved.conversations.filter(function (c) { return c && c.id && Array.isArray(c.messages); });
      state.current = saved.current;
      // An answer that was streaming when the page went away is kept as stopped.
      state.convs.forEach(function (c) {
        c.messages.forEach(function (m) { if (m.pending) { m.pending = false; m.stopped = true; } });
      });
    }
    var s = loadJson(SETTINGS_KEY, {});
    if (typeof s.model === "string") state.settings.model = s.model;
    if (typeof s.temperature === "number" && s.temperature >= 0 && s.temperature <= 2) state.settings.temperature = s.temperature;
    if (typeof s.maxTokens === "number" && s.maxTokens >= 1) state.settings.maxTokens = Math.floor(s.maxTokens);
    if (!state.convs.length) newConversation();
    if (!findConv(state.current)) state.current = sortedConvs()[0].id;
  }

  function saveConvs() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify({ conversations: state.convs, current: state.current }));
    } catch (e) {
      setStatus("cannot save conversations: " + e.message, "bad");
    }
  }
  var saveSoonTimer = null;
  function saveSoon() {
    if (saveSoonTimer) return;
    saveSoonTimer = setTimeout(function () { saveSoonTimer = null; saveConvs(); }, 800);
  }

  function saveSettings() {
    try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(state.settings)); } catch (e) { /* ignore */ }
  }

  function apiKey() { try { return sessionStorage.getItem(API_KEY_KEY) || ""; } catch (e) { return ""; } }

  // ---- conversations -------------------------------------------------------------

  function findConv(id) {
    for (var i = 0; i < state.convs.length; i++) if (state.convs[i].id === id) return state.convs[i];
    return null;
  }
  function currentConv() { return findConv(state.current); }
  function sortedConvs() {
    return state.convs.slice().sort(function (a, b) { return (b.updatedAt || 0) - (a.updatedAt || 0); });
  }

  function newConversation() {
    var now = Date.now();
    var c = { id: uid(), title: DEFAULT_TITLE, system: "", createdAt: now, updatedAt: now, messages: [] };
    state.convs.push(c);
    state.current = c.id;
    return c;
  }

  function selectConversation(id) {
    if (!findConv(id)) return;
    state.current = id;
    saveConvs();
    renderChatList();
    renderConversation();
    closeDrawers();
  }

  function deleteConversation(id) {
    var c = findConv(id);
    if (!c) return;
    if (!window.confirm('Delete the conversation "' + c.title + '"?')) return;
    if (state.gen && state.gen.convId === id) state.gen.controller.abort();
    state.convs = state.convs.filter(function (x) { return x.id !== id; });
    if (!state.convs.length) newConversation();
    if (state.current === id) state.current = sortedConvs()[0].id;
    saveConvs();
    renderChatList();
    renderConversation();
  }

  function renameConversation(li, c) {
    var input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.value = c.title;
    input.setAttribute("aria-label", "New name for the conversation");
    var finished = false;
    function finish(commit) {
      if (finished) return;
      finished = true;
      var v = input.value.trim();
      if (commit && v) { c.title = v.slice(0, 120); saveConvs(); }
      renderChatList();
    }
    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      else if (e.key === "Escape") { e.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", function () { finish(true); });
    li.replaceChildren(input);
    input.focus();
    input.select();
  }

  // ---- rendering ---------------------------------------------------------------------

  function renderChatList() {
    var ul = $("chat-list");
    ul.replaceChildren();
    sortedConvs().forEach(function (c) {
      var li = document.createElement("li");
      li.className = "chat-item" + (c.id === state.current ? " active" : "");
      var open = document.createElement("button");
      open.type = "button";
      open.className = "chat-open";
      open.textContent = c.title || DEFAULT_TITLE;
      open.title = c.title || DEFAULT_TITLE;
      if (c.id === state.current) open.setAttribute("aria-current", "true");
      open.addEventListener("click", function () { selectConversation(c.id); });
      var ren = document.createElement("button");
      ren.type = "button";
      ren.className = "icon-btn small chat-rename";
      ren.textContent = "\u270E";
      ren.setAttribute("aria-label", "Rename " + (c.title || DEFAULT_TITLE));
      ren.title = "Rename";
      ren.addEventListener("click", function () { renameConversation(li, c); });
      var del = document.createElement("button");
      del.type = "button";
      del.className = "icon-btn small chat-delete";
      del.textContent = "\u00D7";
      del.setAttribute("aria-label", "Delete " + (c.title || DEFAULT_TITLE));
      del.title = "Delete";
      del.addEventListener("click", function () { deleteConversation(c.id); });
      li.appendChild(open);
      li.appendChild(ren);
      li.appendChild(del);
      ul.appendChild(li);
    });
  }

  function fmtMs(ms) { return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s"; }

  function statsNode(msg) {
    var st = msg.stats;
    var div = document.createElement("div");
    div.className = "msg-stats";
    function add(cls, label, value, title) {
      var s = document.createElement("span");
      s.className = "stat " + cls;
      if (title) s.title = title;
      var b = document.createElement("b");
      b.textContent = label;
      s.appendChild(b);
      s.appendChild(document.createTextNode(" " + value));
      div.appendChild(s);
    }
    if (msg.model) add("stat-model", "model", msg.model);
    if (st) {
      if (st.ttftMs !== null && st.ttftMs !== undefined) add("stat-ttft", "TTFT", fmtMs(st.ttftMs), "time to first token");
      add("stat-tokens", "tokens", String(st.tokens), st.promptTokens ? st.promptTokens + " prompt tokens" : "");
      if (st.tokPerS) add("stat-tps", "tok/s", st.tokPerS.toFixed(1), "generation speed after the first token");
      add("stat-total", "total", fmtMs(st.totalMs));
    }
    if (msg.stopped) add("stat-finish stopped", "stopped", "by you");
    else if (st && st.finish === "length") add("stat-finish", "finish", "max tokens reached");
    return div;
  }

  function messageNode(msg) {
    var wrap = document.createElement("article");
    wrap.className = "msg " + msg.role + (msg.pending ? " pending" : "") + (msg.error ? " error" : "");
    wrap.dataset.msgId = msg.id;
    var who = document.createElement("h3");
    who.className = "msg-who";
    who.textContent = msg.role === "user" ? "You" : "exo";
    wrap.appendChild(who);
    var body = document.createElement("div");
    body.className = "msg-body";
    wrap.appendChild(body);
    fillMessage(wrap, msg);
    return wrap;
  }

  function fillMessage(wrap, msg) {
    var body = wrap.querySelector(".msg-body");
    wrap.classList.toggle("pending", !!msg.pending);
    wrap.classList.toggle("error", !!msg.error);
    wrap.setAttribute("aria-busy", msg.pending ? "true" : "false");
    if (msg.role === "user") {
      body.textContent = msg.content;
    } else if (msg.pending && !msg.content) {
      body.innerHTML = '<span class="typing" aria-label="waiting for the first token"><i></i><i></i><i></i></span>';
    } else {
      renderMarkdownInto(body, msg.content);
    }
    var old = wrap.querySelector(".msg-error");
    if (old) old.remove();
    var conv = convOfMsg(msg), isLast = !!conv && conv.messages[conv.messages.length - 1] === msg;
    if (msg.error) {
      var err = document.createElement("div");
      err.className = "msg-error";
      err.setAttribute("role", "alert");
      err.appendChild(el("span", "msg-error-text", msg.error));
      if (isLast) {
        err.appendChild(actionButton("Retry", "Retry this answer", "retry-btn", function () { regenerate(conv, msg); }));
      }
      wrap.appendChild(err);
    }
    var oldStats = wrap.querySelector(".msg-stats");
    if (oldStats) oldStats.remove();
    if (msg.role === "assistant" && !msg.pending) wrap.appendChild(statsNode(msg));
    var oldActions = wrap.querySelector(".msg-actions");
    if (oldActions) oldActions.remove();
    if (!msg.pending && conv) wrap.appendChild(actionsNode(wrap, conv, msg, isLast));
  }

  function convOfMsg(msg) {
    for (var i = 0; i < state.convs.length; i++) {
      if (state.convs[i].messages.indexOf(msg) >= 0) return state.convs[i];
    }
    return null;
  }

  function actionButton(text, label, cls, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.className = "btn small " + cls;
    b.textContent = text;
    b.setAttribute("aria-label", label);
    b.title = label;
    b.disabled = !!state.gen;
    b.addEventListener("click", function () { if (!state.gen) onClick(b); });
    return b;
  }

  // The buttons under a message: copy an answer, regenerate the last one, edit a question.
  function actionsNode(wrap, conv, msg, isLast) {
    var bar = el("div", "msg-actions");
    if (msg.role === "assistant") {
      if (msg.content) {
        var copy = actionButton("Copy", "Copy answer", "copy-answer", function (b) { copyText(msg.content, b); });
        bar.appendChild(copy);
      }
      if (isLast && !msg.error) {
        bar.appendChild(actionButton("Regenerate", "Regenerate answer", "regenerate", function () { regenerate(conv, msg); }));
      }
    } else if (msg.role === "user") {
      bar.appendChild(actionButton("Edit", "Edit and resend this message", "edit-msg", function () { editMessage(wrap, conv, msg); }));
    }
    return bar;
  }

  // Edits a question in place; sending it drops the conversation after it
  // and asks for a new answer.
  function editMessage(wrap, conv, msg) {
    var body = wrap.querySelector(".msg-body");
    var actions = wrap.querySelector(".msg-actions");
    if (actions) actions.hidden = true;
    var form = el("form", "msg-edit");
    var ta = document.createElement("textarea");
    ta.value = msg.content;
    ta.setAttribute("aria-label", "Edit message");
    ta.rows = 3;
    var row = el("div", "msg-edit-actions");
    var save = el("button", "btn primary small save-edit", "Send");
    save.type = "submit";
    save.setAttribute("aria-label", "Send the edited message");
    var cancel = el("button", "btn small cancel-edit", "Cancel");
    cancel.type = "button";
    row.appendChild(cancel);
    row.appendChild(save);
    form.appendChild(ta);
    form.appendChild(row);
    body.replaceWith(form);
    function restore() {
      form.replaceWith(body);
      if (actions) actions.hidden = false;
    }
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      if (state.gen || !ta.value.trim()) return;
      var idx = conv.messages.indexOf(msg);
      if (idx < 0) return restore();
      msg.content = ta.value;
      conv.messages = conv.messages.slice(0, idx + 1);
      if (idx === 0) conv.title = titleFrom(ta.value);
      startAnswer(conv);
      renderChatList();
    });
    cancel.addEventListener("click", restore);
    ta.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        form.requestSubmit ? form.requestSubmit() : save.click();
      } else if (e.key === "Escape") {
        e.preventDefault();
        restore();
      }
    });
    autosize(ta, 320);
    ta.addEventListener("input", function () { autosize(ta, 320); });
    ta.focus();
  }

  // Replaces an answer (the last message) with a new one.
  function regenerate(conv, msg) {
    var idx = conv.messages.indexOf(msg);
    if (idx < 0 || state.gen) return;
    conv.messages = conv.messages.slice(0, idx);
    startAnswer(conv);
  }

  function emptyNode() {
    var d = document.createElement("div");
    d.className = "empty";
    var h = document.createElement("p");
    h.className = "empty-title";
    h.textContent = "Chat with a model running on your exo node";
    var p = document.createElement("p");
    p.textContent = "Answers stream from this node's OpenAI-compatible API. Pick a model above, type below, press Enter.";
    d.appendChild(h);
    d.appendChild(p);
    if (noneDownloaded()) {
      var miss = el("div", "empty-missing");
      miss.setAttribute("role", "note");
      miss.appendChild(el("p", null, "No model is in this node's store yet ($EXO_HOME/downloads holds none of " +
        "the " + state.models.length + " models it knows). Choose one in the Model picker above to download it " +
        "from the hub, or run `exo pull MODEL` on the node; `exo models` lists the models with their sizes."));
      var pick = modelInfo($("model").value);
      if (pick && canDownload(pick)) {
        var b = el("button", "btn primary empty-download", "Download " + pick.id + " (" + fmtSize(pick) + ")");
        b.type = "button";
        b.addEventListener("click", function () { startDownload(pick.id); });
        miss.appendChild(b);
      }
      d.appendChild(miss);
    }
    return d;
  }

  function renderConversation() {
    var c = currentConv();
    var box = $("messages");
    box.replaceChildren();
    $("system-prompt").value = c ? c.system || "" : "";
    autosize($("system-prompt"), 160);
    var empty = !c || !c.messages.length;
    $("export-md").disabled = empty;
    $("export-json").disabled = empty;
    if (empty) { box.appendChild(emptyNode()); return; }
    c.messages.forEach(function (m) { box.appendChild(messageNode(m)); });
    box.scrollTop = box.scrollHeight;
  }

  function msgElement(id) {
    return $("messages").querySelector('[data-msg-id="' + (window.CSS && CSS.escape ? CSS.escape(id) : id) + '"]');
  }

  function nearBottom(box) { return box.scrollHeight - box.scrollTop - box.clientHeight < 80; }

  // Re-renders one streaming message at most once a frame.
  var renderQueued = false;
  function scheduleMsgRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(function () {
      renderQueued = false;
      if (state.gen) updateMsg(state.gen.msg);
    });
  }
  function updateMsg(msg) {
    var el = msgElement(msg.id);
    if (!el) return;
    var box = $("messages");
    var stick = nearBottom(box);
    fillMessage(el, msg);
    if (stick) box.scrollTop = box.scrollHeight;
  }

  function setStatus(text, kind) {
    var s = $("status");
    s.textContent = text;
    s.title = text;
    s.className = "status" + (kind ? " " + kind : "");
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("send").disabled = busy;
    $("chat").classList.toggle("busy", busy);
    var acts = $("messages").querySelectorAll(".msg-actions button, .msg-error button");
    for (var i = 0; i < acts.length; i++) acts[i].disabled = busy;
  }

  function autosize(ta, max) {
    ta.style.height = "auto";
    ta.style.height = Math.min(ta.scrollHeight + 2, max) + "px";
    ta.style.overflowY = ta.scrollHeight + 2 > max ? "auto" : "hidden";
  }

  // ---- the API --------------------------------------------------------------------------

  function apiHeaders(json) {
    var h = {};
    if (json) h["Content-Type"] = "application/json";
    var k = apiKey();
    if (k) h["Authorization"] = "Bearer " + k;
    return h;
  }

  // An OpenAI-shaped error body -> a readable message.
  function errorMessage(status, text) {
    try {
      var j = JSON.parse(text);
      if (j && j.error && j.error.message) return j.error.message + (status ? " (HTTP " + status + ")" : "");
    } catch (e) { /* not JSON */ }
    return "HTTP " + status + (text ? ": " + text.slice(0, 200) : "");
  }

  function loadModels() {
    return fetch("/v1/models", { headers: apiHeaders(false) }).then(function (res) {
      return res.text().then(function (text) {
        if (!res.ok) throw new Error(errorMessage(res.status, text));
        return JSON.parse(text);
      });
    }).then(function (j) {
      state.models = (j && Array.isArray(j.data)) ? j.data : [];
      // The cluster poll asks again while nothing is downloaded: an unchanged list
      // leaves the picker alone (rebuilding it would close it under the pointer).
      var seen = JSON.stringify(state.models);
      if (seen !== state.modelsSeen || state.modelsError) fillModels();
      state.modelsSeen = seen;
      state.modelsError = null;
      if (noneDownloaded()) setStatus("no model downloaded", "bad");
      var c = currentConv();
      if (!c || !c.messages.length) renderConversation(); // the empty view says what is missing
    }).catch(function (e) {
      state.modelsError = e.message === "Failed to fetch" ? "the node did not answer" : e.message;
      var sel = $("model");
      sel.replaceChildren(new Option("models unavailable", ""));
      sel.disabled = true;
      setStatus(/401|API key/.test(e.message) ? "API key needed" : "cannot list models", "bad");
    });
  }

  function fmtBytes(n) {
    if (typeof n !== "number" || !(n >= 0)) return "?";
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 || n >= 100 ? Math.round(n) : n.toFixed(1)) + " " + units[i];
  }

  // A catalogue size is an estimate until the file is here ("~").
  function fmtSize(m) {
    if (typeof m.size !== "number") return "size unknown";
    return (m.size_approximate && m.downloaded === false ? "~" : "") + fmtBytes(m.size);
  }

  function downloading(id) {
    var d = state.download;
    return !!(d && d.model === id && !d.done && !d.failed);
  }

  function canDownload(m) { return m.downloaded === false && m.can_run !== false && !downloading(m.id); }

  // The picker: downloaded models first, then those a choice downloads, then
  // those this engine cannot run (listed so nobody wonders, never selectable).
  function fillModels() {
    var sel = $("model");
    sel.replaceChildren();
    if (!state.models.length) {
      sel.appendChild(new Option("no models", ""));
      sel.disabled = true;
      updateRemoveButton();
      return;
    }
    var ready = [], missing = [], cannot = [];
    state.models.forEach(function (m) {
      if (m.can_run === false) cannot.push(m);
      else if (m.downloaded === false) missing.push(m);
      else ready.push(m);
    });
    function group(label, list, text) {
      if (!list.length) return;
      var g = document.createElement("optgroup");
      g.label = label;
      list.forEach(function (m) {
        var o = new Option(m.id + " (" + text(m) + ")", m.id);
        o.disabled = m.can_run === false;
        o.title = (m.description ? m.description + ". " : "") + (m.arch ? "Architecture " + m.arch + ". " : "") +
          (m.can_run === false ? "This engine cannot run it." : "");
        g.appendChild(o);
      });
      sel.appendChild(g);
    }
    group("In this node's store", ready, fmtSize);
    group("Not downloaded: choose one to download it", missing, function (m) {
      return (downloading(m.id) ? "downloading" : "not downloaded") + ", " + fmtSize(m);
    });
    group("This engine cannot run", cannot, function (m) {
      return "cannot run here" + (m.arch ? ": " + m.arch : "") + ", " + fmtSize(m);
    });
    var want = state.settings.model;
    // With nothing downloaded a model stays picked, so the page offers to download it and sending says it is missing.
    var runnable = ready.concat(missing);
    var pick = ready.some(function (m) { return m.id === want; }) ? want
      : ready.length ? ready[0].id
      : runnable.some(function (m) { return m.id === want; }) ? want : (runnable[0] || state.models[0]).id;
    sel.value = pick;
    sel.disabled = false;
    // A model being downloaded stays wanted: it is picked when it arrives.
    if (ready.length && !downloading(want)) state.settings.model = pick;
    sel.dataset.previous = pick;
    updateRemoveButton();
  }

  function updateRemoveButton() {
    var info = modelInfo($("model").value);
    var btn = $("remove-model");
    btn.disabled = !info || info.downloaded === false;
    btn.title = btn.disabled ? "Remove a downloaded model from this node" : "Remove " + info.id + " from this node";
    btn.setAttribute("aria-label", btn.title);
  }

  // The picker changed: a downloaded model is simply used; one that is not in
  // the store is downloaded after asking (it may be gigabytes).
  function pickModel() {
    var sel = $("model"), info = modelInfo(sel.value);
    if (info && info.downloaded === false && info.can_run !== false && !downloading(info.id)) {
      var ok = window.confirm("Download " + info.id + " (" + fmtSize(info) + ") from the hub into this node's store?");
      if (ok) {
        startDownload(info.id);
      } else {
        sel.value = sel.dataset.previous || "";
        updateRemoveButton();
        return;
      }
    }
    sel.dataset.previous = sel.value;
    state.settings.model = sel.value;
    saveSettings();
    updateRemoveButton();
    var c = currentConv();
    if (!c || !c.messages.length) renderConversation();
  }

  // ---- downloads -----------------------------------------------------------------------

  function readJson(res) {
    return res.text().then(function (text) {
      if (!res.ok) throw new Error(errorMessage(res.status, text));
      return text ? JSON.parse(text) : null;
    });
  }

  function startDownload(id) {
    state.settings.model = id; // picked when the download completes
    saveSettings();
    state.download = { model: id, events: {}, done: false, failed: false, error: null, started: Date.now() };
    renderDownload();
    fillModels();
    fetch("/download", { method: "POST", headers: apiHeaders(true), body: JSON.stringify({ model: id }) })
      .then(readJson).then(function () { pollProgress(); }).catch(function (e) {
        state.download.failed = true;
        state.download.error = "The node did not start the download: " +
          (e.message === "Failed to fetch" ? "it did not answer." : e.message);
        renderDownload();
        fillModels();
      });
  }

  var progressTimer = null;
  function pollProgress() {
    if (progressTimer) { clearTimeout(progressTimer); progressTimer = null; }
    fetch("/v1/download/progress", { headers: apiHeaders(false) }).then(readJson).then(function (all) {
      var d = state.download, events = {}, nodes = Object.keys(all || {});
      nodes.forEach(function (n) { if (all[n] && typeof all[n] === "object") events[n] = all[n]; });
      if (!d) {
        // A download started elsewhere (another tab, a client) that still runs: follow it.
        var running = nodes.filter(function (n) { return events[n].status === "in_progress"; })[0];
        if (!running) return;
        d = state.download = { model: events[running].model, events: {}, done: false, failed: false, error: null,
          started: Date.now() };
      }
      var mine = {};
      Object.keys(events).forEach(function (n) { if (events[n].model === d.model) mine[n] = events[n]; });
      d.events = mine;
      estimateSpeed(d, mine);
      var list = Object.keys(mine).map(function (n) { return mine[n]; });
      var failed = list.filter(function (e) { return e.status === "failed"; });
      if (failed.length) {
        d.failed = true;
        d.error = failed.map(function (e) { return e.error || "the download failed"; }).join("\n");
      } else if (list.length && list.every(function (e) { return e.status === "complete"; })) {
        d.done = true;
      } else if (!list.length && Date.now() - (d.started || 0) > 15000) {
        // The node took the request but never listed it: it failed before it began.
        d.failed = true;
        d.error = "The node accepted the download of " + d.model + " but reports no progress for it: it failed " +
          "before starting (downloads off with EXO_OFFLINE=1, or no hub repository in its catalogue entry). " +
          "The node's log says which.";
      }
      renderDownload();
      if (d.done || d.failed) {
        fillModels(); // its "downloading" label goes, whether or not the list changes
        loadModels();
        setStatus(d.done ? d.model + " downloaded" : "download failed", d.done ? "good" : "bad");
        return;
      }
      progressTimer = setTimeout(pollProgress, PROGRESS_EVERY_MS);
    }).catch(function (e) {
      if (state.download && !state.download.done && !state.download.failed) {
        setStatus(/401|API key/.test(e.message) ? "API key needed" : "cannot read download progress", "bad");
        progressTimer = setTimeout(pollProgress, PROGRESS_EVERY_MS * 3);
      }
    });
  }

  // The node's speed is its transfer's own (0 until it has measured one); the
  // page's estimate from two polls stands in until then, so speed and ETA show early.
  function estimateSpeed(d, events) {
    var now = Date.now();
    d.samples = d.samples || {};
    Object.keys(events).forEach(function (n) {
      var ev = events[n], got = ev.downloaded_bytes || 0, prev = d.samples[n];
      ev.speed = ev.overall_speed > 0 ? ev.overall_speed : 0;
      if (!(ev.speed > 0) && prev && got > prev.bytes && now > prev.t) ev.speed = 1000 * (got - prev.bytes) / (now - prev.t);
      ev.eta = ev.speed > 0 && ev.total_bytes > got ? (ev.total_bytes - got) / ev.speed : 0;
      if (!prev || got !== prev.bytes) d.samples[n] = { t: now, bytes: got };
    });
  }

  // What to do about a failed download, in words, beside the node's own message.
  function downloadHint(err) {
    if (/HTTP 40[13]|gated|private/.test(err)) {
      return "This repository is gated: accept its terms on huggingface.co, then give the node a token (start it " +
        "with HF_TOKEN=hf_... in its environment, or run `huggingface-cli login` on it, which writes " +
        "$HF_HOME/token) and choose the model again.";
    }
    if (/404|not found/i.test(err)) return "The hub does not have this file: check the model's repository in the catalogue ($EXO_HOME/models.lua).";
    if (/disk space|ENOSPC|No space/i.test(err)) {
      return "The node's disk is full: free space in its model store (remove a model with the button beside the " +
        "picker) and choose the model again; the part already fetched is kept and resumed.";
    }
    if (/read-only|EROFS|EACCES|permission/i.test(err)) return "The node cannot write its model store: check $EXO_HOME's permissions.";
    return "Choose the model again to retry; the part already fetched is resumed.";
  }

  function progressRow(node, ev) {
    var row = el("div", "dl-node");
    row.dataset.nodeId = node;
    var total = ev.total_bytes || 0, got = ev.downloaded_bytes || 0;
    var pct = total > 0 ? Math.min(100, Math.floor(100 * got / total)) : (ev.status === "complete" ? 100 : 0);
    var head = el("div", "dl-head");
    head.appendChild(el("span", "dl-node-id", node));
    head.appendChild(el("span", "dl-pct", pct + " %"));
    row.appendChild(head);
    var bar = el("div", "dl-bar" + (ev.status === "failed" ? " failed" : ""));
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.setAttribute("aria-label", "download of " + ev.model + " on " + node);
    var fill = el("span");
    fill.style.width = pct + "%";
    bar.appendChild(fill);
    row.appendChild(bar);
    var facts = total > 0 || ev.status !== "failed" ? [fmtBytes(got) + " of " + fmtBytes(total)] : [];
    if (ev.status === "in_progress") {
      if (ev.speed > 0) facts.push(fmtBytes(ev.speed) + "/s");
      if (ev.eta > 0) facts.push(fmtEta(ev.eta) + " left");
    } else {
      facts.push(ev.status === "complete" ? "done" : ev.status);
    }
    if (ev.total_files > 1) facts.push(ev.completed_files + " of " + ev.total_files + " files");
    row.appendChild(el("div", "dl-text", facts.join(" \u00B7 ")));
    return row;
  }

  function fmtEta(s) {
    s = Math.ceil(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function renderDownload() {
    var box = $("downloads"), d = state.download;
    box.replaceChildren();
    box.hidden = !d;
    if (!d) return;
    var head = el("div", "dl-title");
    var first = d.events[Object.keys(d.events)[0]];
    var name = d.model + (first && first.repo_id ? " (" + first.repo_id + ")" : "");
    head.appendChild(el("strong", "dl-what", d.failed ? "Download of " + name + " failed"
      : d.done ? name + " is downloaded and selected" : "Downloading " + name));
    if (d.done || d.failed) {
      var close = el("button", "icon-btn small dl-dismiss", "\u00D7");
      close.type = "button";
      close.setAttribute("aria-label", "Dismiss");
      close.addEventListener("click", function () { state.download = null; renderDownload(); });
      head.appendChild(close);
    }
    box.appendChild(head);
    var nodes = Object.keys(d.events);
    if (!nodes.length && !d.failed) box.appendChild(el("p", "muted dl-text", "starting\u2026"));
    nodes.forEach(function (n) { box.appendChild(progressRow(n, d.events[n])); });
    if (d.failed) {
      var err = el("div", "dl-error");
      err.setAttribute("role", "alert");
      err.appendChild(el("p", "dl-message", d.error));
      err.appendChild(el("p", "dl-hint", downloadHint(d.error || "")));
      box.appendChild(err);
    }
  }

  function removeModel() {
    var info = modelInfo($("model").value);
    if (!info || info.downloaded === false) return;
    if (!window.confirm("Remove " + info.id + " (" + fmtSize(info) + ") from this node's store? Its files are " +
        "deleted; choosing it again downloads them anew.")) return;
    fetch("/models/" + encodeURIComponent(info.id), { method: "DELETE", headers: apiHeaders(false) })
      .then(function (res) {
        return res.text().then(function (text) {
          if (res.ok) return;
          var j = null;
          try { j = JSON.parse(text); } catch (e) { /* not JSON */ }
          throw new Error(j && j.detail ? j.detail + " (HTTP " + res.status + ")" : errorMessage(res.status, text));
        });
      }).then(function () {
        if (state.settings.model === info.id) state.settings.model = "";
        setStatus(info.id + " removed", "good");
        return loadModels();
      }).catch(function (e) {
        setStatus("cannot remove " + info.id + ": " + (e.message === "Failed to fetch" ? "the node did not answer" : e.message), "bad");
      });
  }

  // Streams one answer into msg. Resolves when done, stopped or failed.
  function streamAnswer(conv, msg) {
    var controller = new AbortController();
    state.gen = { convId: conv.id, msg: msg, controller: controller };
    setBusy(true);
    var messages = [];
    if (conv.system && conv.system.trim()) messages.push({ role: "system", content: conv.system });
    conv.messages.forEach(function (m) {
      if (m === msg || m.error || (m.role === "assistant" && !m.content)) return;
      messages.push({ role: m.role, content: m.content });
    });
    var body = {
      model: msg.model, messages: messages, stream: true, stream_options: { include_usage: true },
      temperature: state.settings.temperature, max_tokens: state.settings.maxTokens,
    };
    var t0 = performance.now(), tFirst = null, tLast = null, pieces = 0, usage = null, finish = null;

    function handleEvent(data) {
      if (data === "[DONE]") return true;
      var j;
      try { j = JSON.parse(data); } catch (e) { return false; }
      if (j.error) throw new Error(j.error.message || "the node reported an error");
      if (j.usage) usage = j.usage;
      var ch = j.choices && j.choices[0];
      if (ch) {
        var piece = ch.delta && typeof ch.delta.content === "string" ? ch.delta.content : "";
        if (piece) {
          var now = performance.now();
          if (tFirst === null) tFirst = now;
          tLast = now;
          pieces++;
          msg.content += piece;
          scheduleMsgRender();
          saveSoon();
        }
        if (ch.finish_reason) finish = ch.finish_reason;
      }
      return false;
    }

    // fetch and read reject with a bare TypeError ("Failed to fetch") when the
    // connection fails: say what happened in words instead.
    function lost(reached) {
      return function (e) {
        if (e && e.name === "AbortError") throw e;
        var err = new Error(reached
          ? "The connection to the node was lost in the middle of the answer. Check that the node is still running, then retry."
          : "Cannot reach the node at " + location.host + ": the connection failed. Check that the node is running, then retry.");
        err.network = true;
        throw err;
      };
    }

    return fetch("/v1/chat/completions", {
      method: "POST", headers: apiHeaders(true), body: JSON.stringify(body), signal: controller.signal,
    }).catch(lost(false)).then(function (res) {
      if (!res.ok || !res.body) {
        return res.text().then(function (text) { throw new Error(errorMessage(res.status, text)); });
      }
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buf = "";
      function pump() {
        return reader.read().catch(lost(true)).then(function (r) {
          if (r.done) return;
          buf += decoder.decode(r.value, { stream: true });
          var idx;
          while ((idx = buf.indexOf("\n\n")) >= 0) {
            var event = buf.slice(0, idx);
            buf = buf.slice(idx + 2);
            var data = event.split("\n").filter(function (l) { return l.indexOf("data:") === 0; })
              .map(function (l) { return l.slice(5).replace(/^ /, "").replace(/\r$/, ""); }).join("\n");
            if (data && handleEvent(data)) { reader.cancel().catch(function () {}); return; }
          }
          return pump();
        });
      }
      return pump();
    }).catch(function (e) {
      if (e && e.name === "AbortError") msg.stopped = true;
      else {
        msg.error = (e && e.message) || String(e);
        if (e && e.network) setStatus("node unreachable", "bad");
      }
    }).then(function () {
      var end = performance.now();
      var tokens = usage && typeof usage.completion_tokens === "number" ? usage.completion_tokens : pieces;
      var tps = null;
      if (tFirst !== null && tLast > tFirst && tokens > 1) tps = (tokens - 1) / ((tLast - tFirst) / 1000);
      else if (tFirst !== null && tokens > 0 && end > t0) tps = tokens / ((end - t0) / 1000);
      msg.stats = {
        ttftMs: tFirst !== null ? tFirst - t0 : null, tokens: tokens, tokPerS: tps, totalMs: end - t0,
        promptTokens: usage ? usage.prompt_tokens : null, finish: finish,
      };
      msg.pending = false;
      state.gen = null;
      conv.updatedAt = Date.now();
      saveConvs();
      updateMsg(msg);
      setBusy(false);
      refreshTopology();
      if (conv.id === state.current) $("prompt").focus();
    });
  }

  function titleFrom(text) { return text.trim().replace(/\s+/g, " ").slice(0, 48); }

  // A model's entry in /v1/models, or null.
  function modelInfo(id) {
    for (var i = 0; i < state.models.length; i++) if (state.models[i].id === id) return state.models[i];
    return null;
  }

  function noneDownloaded() {
    return state.models.length > 0 && !state.models.some(function (m) { return m.downloaded !== false; });
  }

  // Why no answer can be asked for with this model, or null when one can.
  function modelProblem(model) {
    var info = modelInfo(model);
    if (model && info && info.can_run === false) {
      return "The model " + model + " cannot run on this engine" + (info.arch ? " (architecture " + info.arch + ")" : "") +
        ": pick another model above.";
    }
    if (model && info && downloading(model)) {
      return "The model " + model + " is still downloading: send again when its progress bar is complete.";
    }
    if (model && info && info.downloaded === false) {
      return "The model " + model + " is not downloaded: its file is not in this node's model store " +
        "($EXO_HOME/downloads/" + model + "/). Choose it in the Model picker to download it from the hub, or " +
        "run `exo pull " + model + "` on the node. On the node, `exo models` lists the models and which are " +
        "missing, with the store's folder; `scripts/setup` installs smollm2-135m and gemma3-270m, and " +
        "docs/models.md says how to add your own." + (noneDownloaded() ? "" : " Or pick a downloaded model above.");
    }
    if (model) return null;
    if (state.modelsError) {
      return "Cannot list the node's models (" + state.modelsError + "). Check that the node is running, then retry.";
    }
    return "This node offers no models: add one to its model store ($EXO_HOME/downloads; `exo models` shows where).";
  }

  // Appends a new answer to conv, renders, and streams it (or says why it cannot).
  function startAnswer(conv) {
    var model = $("model").value;
    var msg = { id: uid(), role: "assistant", content: "", model: model, pending: true };
    conv.messages.push(msg);
    conv.updatedAt = Date.now();
    var problem = modelProblem(model);
    if (problem) { msg.pending = false; msg.error = problem; }
    saveConvs();
    renderConversation();
    if (!problem) streamAnswer(conv, msg);
  }

  function send() {
    if (state.gen) return;
    var ta = $("prompt");
    var text = ta.value;
    if (!text.trim()) return;
    var conv = currentConv() || newConversation();
    if (conv.title === DEFAULT_TITLE && !conv.messages.length) conv.title = titleFrom(text);
    conv.messages.push({ id: uid(), role: "user", content: text });
    ta.value = "";
    autosize(ta, 220);
    renderChatList();
    startAnswer(conv);
  }

  function stop() {
    if (state.gen) state.gen.controller.abort();
  }

  // ---- topology ----------------------------------------------------------------------

  function fmtMemory(mb) {
    if (typeof mb !== "number" || !(mb >= 0)) return "unknown";
    return mb >= 1024 ? (mb / 1024).toFixed(1) + " GiB" : Math.round(mb) + " MiB";
  }

  // capabilities.flops.fp32 is in TFLOPS (measured at start, or the peers file's).
  function fmtTflops(f) {
    if (typeof f !== "number" || !(f > 0)) return null;
    return (f >= 100 ? f.toFixed(0) : f >= 1 ? f.toFixed(2) : f.toPrecision(2)) + " TFLOPS fp32";
  }

  function fmtRtt(us) {
    if (!(us >= 0)) return null;
    return us < 1000 ? Math.round(us) + " \u00B5s" : (us / 1000).toFixed(us < 10000 ? 2 : 1) + " ms";
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function listOf(x) {
    if (Array.isArray(x)) return x;
    if (x && typeof x === "object") return Object.keys(x).map(function (k) { return x[k]; });
    return [];
  }

  function renderTopology(t) {
    var box = $("topology");
    var nodes = listOf(t && t.nodes), parts = listOf(t && t.partitions);
    box.replaceChildren();
    // Only a node that says so is open: an older node's silence is no warning.
    $("open-cluster").hidden = !(t && t.open_cluster === true);
    if (!nodes.length) { box.appendChild(el("p", "muted", "No nodes reported.")); return; }
    var total = nodes.reduce(function (s, n) { return s + ((n.capabilities && n.capabilities.memory) || 0); }, 0);
    var flops = nodes.reduce(function (s, n) {
      var f = n.capabilities && n.capabilities.flops && n.capabilities.flops.fp32;
      return s + (typeof f === "number" && f > 0 ? f : 0);
    }, 0);
    box.appendChild(el("p", "topo-summary", nodes.length + (nodes.length === 1 ? " node" : " nodes") + " \u00B7 " +
      fmtMemory(total) + " memory" + (flops > 0 ? " \u00B7 " + fmtTflops(flops) : "") +
      (t.open_cluster ? " \u00B7 open cluster (no key)" : "")));
    nodes.forEach(function (n) {
      var caps = n.capabilities || {};
      var card = el("div", "node");
      card.dataset.nodeId = n.id;
      var head = el("div", "node-head");
      head.appendChild(el("span", "node-id", n.id));
      if (t.answering_node && t.answering_node === n.id) head.appendChild(el("span", "badge", "answering"));
      card.appendChild(head);
      var dl = el("dl", "node-facts");
      function fact(k, v, cls) {
        if (v === undefined || v === null || v === "") return;
        dl.appendChild(el("dt", null, k));
        dl.appendChild(el("dd", cls || null, v));
      }
      fact("memory", fmtMemory(caps.memory), "node-memory");
      fact("flops", fmtTflops(caps.flops && caps.flops.fp32), "node-flops");
      fact("round trip", typeof n.rtt_us === "number" ? fmtRtt(n.rtt_us)
        : (n.id === t.answering_node ? "this node" : null), "node-rtt");
      fact("chip", caps.chip);
      fact("engine", [caps.engine, caps.threads ? caps.threads + " threads" : ""].filter(Boolean).join(", "));
      fact("address", n.address);
      fact("runtime", caps.model);
      card.appendChild(dl);
      var mine = parts.filter(function (p) { return p.node_id === n.id; });
      var ul = el("ul", "partitions");
      if (!mine.length) ul.appendChild(el("li", "muted", "no model loaded yet"));
      mine.forEach(function (p) {
        var li = el("li", "partition");
        var n_layers = p.n_layers || 0, s = p.start_layer || 0, e = p.end_layer || 0; // [start, end)
        var label = el("div", "partition-label");
        label.appendChild(el("span", "partition-model", p.model));
        label.appendChild(el("span", "partition-layers",
          "layers " + s + "\u2013" + Math.max(s, e - 1) + (n_layers ? " of " + n_layers : "")));
        li.appendChild(label);
        if (n_layers > 0) {
          var bar = el("div", "layer-bar");
          bar.setAttribute("role", "img");
          bar.setAttribute("aria-label", "holds layers " + s + " to " + (e - 1) + " of " + n_layers);
          var fill = el("span");
          fill.style.left = (100 * s / n_layers) + "%";
          fill.style.width = (100 * (e - s) / n_layers) + "%";
          bar.appendChild(fill);
          li.appendChild(bar);
        }
        ul.appendChild(li);
      });
      card.appendChild(ul);
      box.appendChild(card);
    });
  }

  var topoInFlight = false;
  function refreshTopology() {
    if (topoInFlight) return;
    topoInFlight = true;
    fetch("/v1/topology", { headers: apiHeaders(false) }).then(function (res) {
      return res.text().then(function (text) {
        if (!res.ok) throw new Error(errorMessage(res.status, text));
        return JSON.parse(text);
      });
    }).then(function (t) {
      renderTopology(t);
      if (noneDownloaded()) setStatus("no model downloaded", "bad");
      else setStatus("online", "good");
      // Until a model is downloaded, look again: one may arrive in the store.
      if (!state.models.length || noneDownloaded()) loadModels();
    }).catch(function (e) {
      var needKey = /401|API key/.test(e.message);
      setStatus(needKey ? "API key needed" : "node unreachable", "bad");
      var box = $("topology");
      box.replaceChildren(el("p", "muted", needKey ? "Enter the node's API key in Settings." : "Cannot reach the node."));
    }).then(function () { topoInFlight = false; });
  }

  // ---- drawers (narrow widths) ------------------------------------------------------

  function closeDrawers() {
    document.body.classList.remove("show-chats", "show-side");
    $("toggle-chats").setAttribute("aria-expanded", "false");
    $("toggle-side").setAttribute("aria-expanded", "false");
    $("scrim").hidden = true;
  }
  function toggleDrawer(which) {
    var cls = "show-" + which, open = !document.body.classList.contains(cls);
    closeDrawers();
    if (open) {
      document.body.classList.add(cls);
      $(which === "chats" ? "toggle-chats" : "toggle-side").setAttribute("aria-expanded", "true");
      $("scrim").hidden = false;
      var first = $(which === "chats" ? "chats-panel" : "side-panel").querySelector("button, input, select, textarea");
      if (first) first.focus();
    }
  }

  // A drawer left open while the window widens past its breakpoint is no
  // drawer any more: close it, so its scrim cannot cover the page.
  function watchBreakpoints() {
    if (!window.matchMedia) return;
    [["(max-width: 760px)", "show-chats"], ["(max-width: 1100px)", "show-side"]].forEach(function (q) {
      var mq = window.matchMedia(q[0]);
      var onChange = function () { if (!mq.matches && document.body.classList.contains(q[1])) closeDrawers(); };
      if (mq.addEventListener) mq.addEventListener("change", onChange);
      else if (mq.addListener) mq.addListener(onChange);
    });
  }

  // ---- export -------------------------------------------------------------------------

  function fileName(conv, ext) {
    var base = (conv.title || "conversation").replace(/[^\w\- ]+/g, "").trim().replace(/\s+/g, "-").slice(0, 60);
    return "exo-" + (base || "conversation") + "." + ext;
  }

  function conversationMarkdown(conv) {
    var out = ["# " + (conv.title || DEFAULT_TITLE), ""];
    if (conv.system && conv.system.trim()) out.push("**System:** " + conv.system.trim(), "");
    conv.messages.forEach(function (m) {
      out.push(m.role === "user" ? "## You" : "## exo" + (m.model ? " (" + m.model + ")" : ""), "");
      if (m.content) out.push(m.content.replace(/\s+$/, ""), "");
      if (m.error) out.push("> Error: " + m.error, "");
      else if (m.stopped) out.push("*(stopped)*", "");
    });
    return out.join("\n");
  }

  // The conversation as JSON: its messages in the chat API's shape (the
  // system prompt first), with each answer's model and figures beside them.
  function conversationJson(conv) {
    var messages = [];
    if (conv.system && conv.system.trim()) messages.push({ role: "system", content: conv.system });
    conv.messages.forEach(function (m) {
      var o = { role: m.role, content: m.content };
      if (m.model) o.model = m.model;
      if (m.stats) o.stats = m.stats;
      if (m.error) o.error = m.error;
      if (m.stopped) o.stopped = true;
      messages.push(o);
    });
    return JSON.stringify({
      title: conv.title, created: new Date(conv.createdAt || Date.now()).toISOString(),
      exported: new Date().toISOString(), messages: messages,
    }, null, 2) + "\n";
  }

  function download(name, text, type) {
    var url = URL.createObjectURL(new Blob([text], { type: type }));
    var a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.hidden = true;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }

  function exportConversation(kind) {
    var c = currentConv();
    if (!c || !c.messages.length) return;
    if (kind === "md") download(fileName(c, "md"), conversationMarkdown(c), "text/markdown;charset=utf-8");
    else download(fileName(c, "json"), conversationJson(c), "application/json");
  }

  // ---- wiring -------------------------------------------------------------------------

  function init() {
    loadState();
    var temp = $("temperature"), maxTok = $("max-tokens"), key = $("api-key");
    temp.value = state.settings.temperature;
    $("temperature-out").textContent = Number(state.settings.temperature).toFixed(2);
    maxTok.value = state.settings.maxTokens;
    key.value = apiKey();

    temp.addEventListener("input", function () {
      state.settings.temperature = Number(temp.value);
      $("temperature-out").textContent = state.settings.temperature.toFixed(2);
      saveSettings();
    });
    maxTok.addEventListener("change", function () {
      var v = Math.floor(Number(maxTok.value));
      if (!(v >= 1)) v = 512;
      maxTok.value = v;
      state.settings.maxTokens = v;
      saveSettings();
    });
    key.addEventListener("change", function () {
      try {
        if (key.value) sessionStorage.setItem(API_KEY_KEY, key.value);
        else sessionStorage.removeItem(API_KEY_KEY);
      } catch (e) { /* ignore */ }
      loadModels();
      refreshTopology();
    });
    $("model").addEventListener("change", pickModel);
    $("remove-model").addEventListener("click", removeModel);
    $("system-prompt").addEventListener("input", function () {
      var c = currentConv();
      if (c) { c.system = $("system-prompt").value; saveSoon(); }
      autosize($("system-prompt"), 160);
    });

    var prompt = $("prompt");
    prompt.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      } else if (e.key === "Escape" && state.gen) {
        e.preventDefault();
        stop();
      }
    });
    prompt.addEventListener("input", function () { autosize(prompt, 220); });
    $("composer").addEventListener("submit", function (e) { e.preventDefault(); send(); });
    $("stop").addEventListener("click", function () { stop(); prompt.focus(); });
    $("new-chat").addEventListener("click", function () {
      var c = currentConv();
      if (!(c && !c.messages.length)) newConversation();
      saveConvs();
      renderChatList();
      renderConversation();
      closeDrawers();
      prompt.focus();
    });
    $("toggle-chats").addEventListener("click", function () { toggleDrawer("chats"); });
    $("toggle-side").addEventListener("click", function () { toggleDrawer("side"); });
    $("scrim").addEventListener("click", closeDrawers);
    $("export-md").addEventListener("click", function () { exportConversation("md"); });
    $("export-json").addEventListener("click", function () { exportConversation("json"); });
    watchBreakpoints();
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && (document.body.classList.contains("show-chats") ||
          document.body.classList.contains("show-side"))) closeDrawers();
    });
    window.addEventListener("storage", function (e) {
      // Another tab changed the conversations: follow it unless we are streaming.
      if (e.key === STORE_KEY && !state.gen) { loadState(); renderChatList(); renderConversation(); }
    });

    setupMarked();
    renderChatList();
    renderConversation();
    setBusy(false);
    loadModels();
    refreshTopology();
    pollProgress();
    setInterval(function () { if (!document.hidden) refreshTopology(); }, TOPOLOGY_EVERY_MS);
    prompt.focus();
  }

  // For tests and the console.
  window.exoChat = {
    renderMarkdown: renderMarkdown, renderMarkdownInto: renderMarkdownInto, safeUrl: safeUrl,
    state: state, send: send, stop: stop, refreshTopology: refreshTopology, renderTopology: renderTopology,
    conversationMarkdown: conversationMarkdown, conversationJson: conversationJson,
    startDownload: startDownload, pollProgress: pollProgress, renderDownload: renderDownload,
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
