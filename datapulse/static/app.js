// datapulse page: ticket + EventSource + the original API (POST /message), no framework.
// The token lives in this closure only: never in storage, never in a URL, never on window.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,        // the pasted bearer token (memory only)
    sessionId: null,
    es: null,           // the current EventSource
    lastId: null,       // the id of the last event shown: what a resume starts after
    opens: 0,
    reconnects: 0,
    wanted: false,      // the user wants a stream (false after "Close stream")
    attempts: 0,        // consecutive failed reopen attempts (backoff)
    timer: null,
    seq: 0,
    pending: new Map(), // request_id -> tool name
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function now() { return new Date().toISOString().slice(11, 23); }

  function status(kind, text) {
    const s = $("status");
    s.className = "status " + kind;
    s.textContent = text;
  }

  function connlog(text, kind) {
    const li = el("li", {class: kind || ""}, now() + " " + text);
    $("connlog").append(li);
    li.scrollIntoView({block: "nearest"});
  }

  function counters() {
    $("last-id").textContent = state.lastId === null ? "none" : state.lastId;
    $("opens").textContent = String(state.opens);
    $("reconnects").textContent = String(state.reconnects);
  }

  function randomId() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: {"Authorization": "Bearer " + state.token, "Content-Type": "application/json"},
      body: JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
    let payload = null;
    try { payload = await response.json(); } catch (_) { /* no JSON body */ }
    return {status: response.status, payload};
  }

  function describe(result) {
    const p = result.payload;
    return result.status + (p && p.detail ? " " + p.detail : "");
  }

  async function ticket() {
    const result = await post("/tickets", {session_id: state.sessionId});
    if (result.status !== 200 || !result.payload || !result.payload.ticket) {
      const error = new Error("POST /tickets: " + describe(result));
      error.status = result.status;
      throw error;
    }
    return result.payload.ticket;
  }

  // Open a new EventSource with a fresh ticket; resume after state.lastId when there is one.
  async function open() {
    clearTimeout(state.timer);
    if (state.es) { state.es.close(); state.es = null; }
    const resumeFrom = state.lastId;
    status("connecting", "connecting");
    let fresh;
    try {
      fresh = await ticket();
    } catch (error) {
      connlog(error.message, "error");
      if (error.status === 401 || error.status === 403) {
        status("closed", "token refused");
        state.wanted = false;
        buttons();
        return;
      }
      retry();
      return;
    }
    if (!state.wanted) return;
    let url = "/events?session_id=" + encodeURIComponent(state.sessionId) +
      "&ticket=" + encodeURIComponent(fresh);
    if (resumeFrom !== null) url += "&last_event_id=" + encodeURIComponent(resumeFrom);
    connlog(resumeFrom === null
      ? "opening the stream with a new ticket"
      : "reopening with a new ticket, last_event_id=" + resumeFrom, "open-new");
    const es = new EventSource(url);
    state.es = es;
    let lost = false;
    es.onopen = () => {
      if (es !== state.es) return;
      state.opens += 1;
      state.attempts = 0;
      if (lost) {
        state.reconnects += 1;
        connlog("reconnected by EventSource, resumed after Last-Event-ID " +
          (state.lastId === null ? "(none)" : state.lastId), "reconnected");
      } else {
        connlog("stream open" + (resumeFrom === null ? "" : ", resumed after " + resumeFrom),
          "opened");
      }
      lost = false;
      status("open", "stream open");
      counters();
    };
    es.onerror = () => {
      if (es !== state.es) return;
      if (es.readyState === EventSource.CONNECTING) {
        lost = true;
        connlog("connection lost; EventSource reconnects with Last-Event-ID " +
          (state.lastId === null ? "(none)" : state.lastId), "lost");
        status("connecting", "reconnecting");
        return;
      }
      // CLOSED: the server refused the reconnect (a spent ticket past its resume window, or
      // any other error). Get a new ticket and resume through last_event_id.
      es.close();
      state.es = null;
      if (!state.wanted) return;
      connlog("reconnect refused; getting a new ticket to resume after " +
        (state.lastId === null ? "(none)" : state.lastId), "refused");
      retry();
    };
    es.onmessage = onEvent;
    buttons();
  }

  function retry() {
    if (!state.wanted) return;
    const delay = Math.min(10000, 250 * 2 ** state.attempts);
    state.attempts += 1;
    status("connecting", "retrying in " + delay + " ms");
    state.timer = setTimeout(open, delay);
  }

  function onEvent(e) {
    const id = e.lastEventId;
    if (id !== "" && state.lastId !== null && Number(id) <= Number(state.lastId)) {
      connlog("ignored a repeated event id " + id, "duplicate");
      return;  // already shown (never expected: the server resumes after Last-Event-ID)
    }
    if (id !== "") state.lastId = id;
    let data = null;
    try { data = JSON.parse(e.data); } catch (_) { /* shown as text */ }
    const kind = data && typeof data === "object" && data.type ? data.type : e.type;
    const li = el("li", {class: "event " + (kind === "error" ? "error" : ""), dataset: {id}},
      el("span", {class: "id"}, id === "" ? "-" : id),
      el("span", {class: "kind"}, kind),
      el("span", {class: "data"}, e.data));
    $("events").append(li);
    li.scrollIntoView({block: "nearest"});
    counters();
    if (!data || typeof data !== "object") return;
    if (data.type === "list_tools" && Array.isArray(data.data)) renderTools(data.data);
    if (data.type === "tool_result" || data.type === "error" || data.type === "progress") {
      showResult(data);
    }
  }

  function showResult(data) {
    const name = state.pending.get(data.request_id);
    if (name === undefined) return;
    const out = document.querySelector('.result[data-tool="' + CSS.escape(name) + '"]');
    if (!out) return;
    const text = data.type === "error" ? data.error : JSON.stringify(data.data, null, 2);
    out.replaceChildren(el("pre", {class: data.type, dataset: {requestId: data.request_id}},
      data.type + " (" + data.request_id + "): " + text));
    if (data.type !== "progress") state.pending.delete(data.request_id);
  }

  // ---- forms from JSON Schema ----

  function typeOf(prop) {
    let t = prop.type;
    if (Array.isArray(t)) t = t.find((x) => x !== "null");
    if (!t && Array.isArray(prop.enum)) return "enum";
    return t || "json";
  }

  function field(name, prop, required) {
    const id = "f-" + (++state.seq);
    const label = el("label", {for: id, title: prop.description || ""}, name,
      required ? el("span", {class: "required"}, " *") : "");
    const type = Array.isArray(prop.enum) ? "enum" : typeOf(prop);
    let input;
    if (type === "enum") {
      input = el("select", {id});
      if (!required) input.append(el("option", {value: ""}, "(unset)"));
      for (const v of prop.enum) input.append(el("option", {value: JSON.stringify(v)}, String(v)));
    } else if (type === "boolean") {
      input = el("select", {id});
      if (!required) input.append(el("option", {value: ""}, "(unset)"));
      input.append(el("option", {value: "true"}, "true"), el("option", {value: "false"}, "false"));
      if (prop.default === false) input.value = "false";
    } else if (type === "number" || type === "integer") {
      input = el("input", {id, type: "number", step: type === "integer" ? "1" : "any"});
      if (typeof prop.minimum === "number") input.min = String(prop.minimum);
      if (typeof prop.maximum === "number") input.max = String(prop.maximum);
    } else if (type === "string") {
      input = el("input", {id, type: prop.format === "uri" ? "url" : "text",
        spellcheck: "false", autocomplete: "off"});
      if (typeof prop.maxLength === "number") input.maxLength = prop.maxLength;
      if (typeof prop.minLength === "number") input.minLength = prop.minLength;
    } else {
      input = el("textarea", {id, rows: "2", placeholder: "JSON"});
    }
    if (prop.default !== undefined && type !== "boolean" && type !== "enum") {
      input.value = typeof prop.default === "string" ? prop.default : JSON.stringify(prop.default);
    }
    input.required = required;
    input.name = name;
    input.dataset.kind = type;
    return {wrap: el("div", {class: "field"}, label, input), input, name, type, required};
  }

  function readValue(f) {
    const raw = f.input.value;
    if (raw === "") return undefined;
    switch (f.type) {
      case "enum": return JSON.parse(raw);
      case "boolean": return raw === "true";
      case "number": case "integer": return Number(raw);
      case "string": return raw;
      default: return JSON.parse(raw);  // throws on bad JSON: reported to the user
    }
  }

  function renderTools(tools) {
    const box = $("tools");
    box.replaceChildren();
    for (const tool of tools) {
      const schema = tool.inputSchema || {};
      const props = schema.properties || {};
      const required = new Set(Array.isArray(schema.required) ? schema.required : []);
      const fields = Object.entries(props).map(([n, p]) => field(n, p || {}, required.has(n)));
      const form = el("form", {class: "tool-form", dataset: {tool: tool.name}},
        ...fields.map((f) => f.wrap),
        el("button", {type: "submit"}, "Call " + tool.name));
      const out = el("div", {class: "result", dataset: {tool: tool.name}});
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        call(tool.name, fields, out);
      });
      box.append(el("div", {class: "tool", dataset: {tool: tool.name}},
        el("h3", {}, tool.name),
        el("p", {class: "desc"}, tool.description || ""), form, out));
    }
    if (tools.length === 0) box.append(el("p", {}, "no tools"));
  }

  async function call(name, fields, out) {
    const args = {};
    try {
      for (const f of fields) {
        const v = readValue(f);
        if (v !== undefined) args[f.name] = v;
      }
    } catch (error) {
      out.replaceChildren(el("pre", {class: "error"}, "bad value: " + error.message));
      return;
    }
    const requestId = "page-" + (++state.seq);
    state.pending.set(requestId, name);
    const result = await post("/message?session_id=" + encodeURIComponent(state.sessionId),
      {type: "call_tool", request_id: requestId, data: {name, arguments: args}});
    if (result.status === 202) {
      // The result may already have arrived on the stream (it can beat this response).
      if (state.pending.has(requestId)) out.replaceChildren(el("pre", {class: "queued"}, "queued " + requestId +
        ": the result arrives on the stream"));
    } else {
      state.pending.delete(requestId);
      out.replaceChildren(el("pre", {class: "error"}, "POST /message: " + describe(result)));
    }
  }

  async function listTools() {
    const requestId = "page-" + (++state.seq);
    const result = await post("/message?session_id=" + encodeURIComponent(state.sessionId),
      {type: "list_tools", request_id: requestId, data: {}});
    if (result.status !== 202) connlog("list_tools: " + describe(result), "error");
  }

  function buttons() {
    $("disconnect").disabled = !state.wanted;
    $("list-tools").disabled = !state.wanted;
  }

  function start() {
    $("session-id").value = randomId();
    $("connect-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (token !== "") state.token = token;
      $("token").value = "";  // kept in memory only, not in the DOM
      $("token").placeholder = "token held in memory (paste again to replace)";
      $("token").required = state.token === null;
      if (state.token === null) return;
      const sessionId = $("session-id").value.trim();
      if (sessionId !== state.sessionId) {
        state.lastId = null;
        $("events").replaceChildren();
      }
      state.sessionId = sessionId;
      state.wanted = true;
      state.attempts = 0;
      open();
    });
    $("disconnect").addEventListener("click", () => {
      state.wanted = false;
      clearTimeout(state.timer);
      if (state.es) { state.es.close(); state.es = null; }
      connlog("stream closed by the user", "closed");
      status("closed", "closed");
      buttons();
    });
    $("list-tools").addEventListener("click", listTools);
    counters();
  }

  start();
})();
