// The AVAP playground: an editor with highlighting and live diagnostics
// (POST /api/v1/check as you type), runs (POST /api/v1/execute) with their
// envelope and usage, and storing the script (POST /api/v1/scripts).
// Plain DOM; every text from the server or the user goes in through
// textContent or value, never as markup.

import { commandInfo, lineStartsOf, offsetOf, render, renderJson, setLanguage } from "./highlight.js";

const CHECK_DELAY_MS = 250;
const KEY_STORAGE = "avap-playground-api-key";
const SCRIPT_STORAGE = "avap-playground-script";

const $ = (id) => document.getElementById(id);
const source = $("source");
const highlight = $("highlight");
const gutter = $("gutter");

let diagnostics = [];
let runErrorLine = null;
let allowedClasses = null; // from /api/v1/info; null until known
let checkTimer = null;
let checkSequence = 0;
let checkAbort = null;

// ---------------------------------------------------------------------------
// API calls
// ---------------------------------------------------------------------------

function apiHeaders(json) {
  const headers = {};
  if (json) headers["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

// {status, headers, body (parsed JSON, or text)}; network failures throw.
async function api(method, path, body, signal) {
  const response = await fetch(path, {
    method,
    headers: apiHeaders(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON: shown as text.
  }
  return { status: response.status, headers: response.headers, body: parsed };
}

// The message of an API error body, or a generic one.
function errorMessage(reply) {
  const error = reply.body && reply.body.error;
  if (error && error.message) return `${error.kind}: ${error.message}`;
  return `HTTP ${reply.status}`;
}

// ---------------------------------------------------------------------------
// Editor
// ---------------------------------------------------------------------------

function renderGutter() {
  const text = source.value;
  const lines = lineStartsOf(text).length;
  const byLine = new Map();
  for (const d of diagnostics) {
    const entry = byLine.get(d.line) || { severity: "warning", messages: [] };
    if (d.severity === "error") entry.severity = "error";
    entry.messages.push(`${d.code} ${d.message}`);
    byLine.set(d.line, entry);
  }
  const fragment = document.createDocumentFragment();
  for (let line = 1; line <= lines; line++) {
    const div = document.createElement("div");
    div.textContent = String(line);
    const entry = byLine.get(line);
    if (entry) {
      div.classList.add("mark-" + entry.severity);
      div.title = entry.messages.join("\n");
    }
    if (line === runErrorLine) {
      div.classList.add("mark-run-error");
      div.title = (div.title ? div.title + "\n" : "") + "the run failed here";
    }
    fragment.append(div);
  }
  gutter.replaceChildren(fragment);
  gutter.scrollTop = source.scrollTop;
}

function renderEditor() {
  render(highlight, source.value, diagnostics);
  renderGutter();
  syncScroll();
}

function syncScroll() {
  highlight.parentElement.scrollTop = source.scrollTop;
  highlight.parentElement.scrollLeft = source.scrollLeft;
  gutter.scrollTop = source.scrollTop;
}

function moveCaretTo(line, column) {
  const text = source.value;
  const offset = offsetOf(text, lineStartsOf(text), line, column);
  source.focus();
  source.setSelectionRange(offset, offset);
  // Bring the line into view: the textarea scrolls to the caret on the next input only.
  const lineHeight = parseFloat(getComputedStyle(source).lineHeight) || 20;
  const top = (line - 1) * lineHeight;
  if (top < source.scrollTop || top > source.scrollTop + source.clientHeight - lineHeight * 2) {
    source.scrollTop = Math.max(0, top - source.clientHeight / 3);
  }
  syncScroll();
}

function onKeyDown(event) {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    run();
    return;
  }
  if (event.key === "Tab" && !event.shiftKey && !event.ctrlKey && !event.altKey) {
    event.preventDefault();
    insertText("    ");
    return;
  }
  if (event.key === "Enter" && !event.shiftKey && !event.altKey) {
    // Keep the indentation of the line the caret is on.
    const before = source.value.slice(0, source.selectionStart);
    const lineStart = before.lastIndexOf("\n") + 1;
    const indent = before.slice(lineStart).match(/^[ \t]*/)[0];
    if (indent) {
      event.preventDefault();
      insertText("\n" + indent);
    }
  }
}

// Insert at the caret through the browser's editing, so undo keeps working.
function insertText(text) {
  if (!document.execCommand("insertText", false, text)) {
    const { selectionStart: start, selectionEnd: end, value } = source;
    source.value = value.slice(0, start) + text + value.slice(end);
    source.setSelectionRange(start + text.length, start + text.length);
    onSourceChanged();
  }
}

function onSourceChanged() {
  runErrorLine = null;
  renderEditor();
  scheduleCheck();
  try {
    sessionStorage.setItem(SCRIPT_STORAGE, source.value);
  } catch {
    // Storage full or off: the script just is not kept.
  }
}

// A hover text for commands: signature, class and summary.
function onMouseMove(event) {
  source.title = "";
  const target = document.elementsFromPoint(event.clientX, event.clientY).find((el) => el.classList?.contains("tok-command"));
  if (target) {
    const info = commandInfo(target.textContent);
    if (info) source.title = `${info.signature}\n${info.class}: ${info.summary}`;
  }
}

// ---------------------------------------------------------------------------
// Live diagnostics
// ---------------------------------------------------------------------------

function scheduleCheck() {
  clearTimeout(checkTimer);
  setCheckStatus("pending", "Checking…");
  checkTimer = setTimeout(check, CHECK_DELAY_MS);
}

function setCheckStatus(state, text) {
  const status = $("check-status");
  status.dataset.state = state;
  status.textContent = text;
}

async function check() {
  const sequence = ++checkSequence;
  if (checkAbort) checkAbort.abort();
  checkAbort = new AbortController();
  let reply;
  try {
    reply = await api("POST", "api/v1/check", { script: source.value }, checkAbort.signal);
  } catch (error) {
    if (error.name !== "AbortError") setCheckStatus("failed", "Cannot reach the server");
    return;
  }
  if (sequence !== checkSequence) return; // a newer check is on its way
  if (reply.status !== 200) {
    setCheckStatus("failed", "Check failed: " + errorMessage(reply));
    return;
  }
  const file = reply.body.files[0];
  diagnostics = file.diagnostics;
  renderEditor();
  renderDiagnostics(file);
  renderCapabilities(file);
  if (file.errors === 0 && file.warnings === 0) {
    setCheckStatus("ok", "✓ No problems");
  } else {
    const parts = [];
    if (file.errors) parts.push(`${file.errors} error${file.errors === 1 ? "" : "s"}`);
    if (file.warnings) parts.push(`${file.warnings} warning${file.warnings === 1 ? "" : "s"}`);
    setCheckStatus(file.errors ? "errors" : "warnings", parts.join(", "));
  }
}

function renderDiagnostics(file) {
  const list = $("diagnostics");
  const items = file.diagnostics.map((d) => {
    const li = document.createElement("li");
    li.className = "diagnostic " + d.severity;
    const button = document.createElement("button");
    button.type = "button";
    button.addEventListener("click", () => moveCaretTo(d.line, d.column));
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = `${d.line}:${d.column}`;
    const code = document.createElement("span");
    code.className = "diag-code";
    code.textContent = `${d.severity} ${d.code}`;
    const message = document.createElement("span");
    message.className = "message";
    message.textContent = d.message + (d.label ? ` (${d.label})` : "");
    button.append(where, code, message);
    li.append(button);
    for (const extra of [...(d.labels || []).map((l) => `${l.line}:${l.column} ${l.message}`), ...(d.notes || []), d.help ? "help: " + d.help : null]) {
      if (!extra) continue;
      const p = document.createElement("p");
      p.className = "note";
      p.textContent = extra;
      li.append(p);
    }
    return li;
  });
  if (items.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No problems.";
    items.push(li);
  }
  list.replaceChildren(...items);
}

function renderCapabilities(file) {
  const list = $("capabilities");
  if (!file.imports) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "Known once the script compiles.";
    list.replaceChildren(li);
    return;
  }
  const items = file.capabilities.map((cls) => {
    const li = document.createElement("li");
    li.className = "capability";
    const denied = allowedClasses !== null && !allowedClasses.includes(cls);
    if (denied) {
      li.classList.add("denied");
      li.title = `This server's policy denies ${cls}: a run is refused with 403 CapabilityDenied`;
    }
    const name = document.createElement("strong");
    name.textContent = cls + (denied ? " (denied here)" : "");
    const commands = document.createElement("span");
    commands.textContent = file.imports
      .filter((i) => i.class === cls)
      .map((i) => `${i.name} (line ${i.line})`)
      .join(", ");
    li.append(name, commands);
    return li;
  });
  if (items.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "None: the script computes only on its own variables.";
    items.push(li);
  }
  list.replaceChildren(...items);
}

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

// `name=Ada&tag=a&tag=b` → {"name": "Ada", "tag": ["a", "b"]}.
function parseQuery(text) {
  const query = {};
  for (const [name, value] of new URLSearchParams(text.trim().replace(/^\?/, ""))) {
    if (name in query) query[name] = [].concat(query[name], value);
    else query[name] = value;
  }
  return query;
}

function limitValue(id, label) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  if (!/^\d+$/.test(text)) throw new Error(`The ${label} limit must be a whole number`);
  return Number(text);
}

function buildRequest() {
  const request = {
    script: source.value,
    request: {
      method: $("method").value,
      path: $("path").value.trim() || "/",
      query: parseQuery($("query").value),
    },
  };
  const body = $("body").value.trim();
  if (body) {
    let params;
    try {
      params = JSON.parse(body);
    } catch (error) {
      throw new Error("The JSON body is not valid JSON: " + error.message);
    }
    if (params === null || typeof params !== "object" || Array.isArray(params)) {
      throw new Error("The JSON body must be an object (what addParam reads)");
    }
    request.params = params;
  }
  const limits = {
    fuel: limitValue("limit-fuel", "fuel"),
    time_ms: limitValue("limit-time", "time"),
    memory_mb: limitValue("limit-memory", "memory"),
  };
  for (const key of Object.keys(limits)) if (limits[key] === undefined) delete limits[key];
  if (Object.keys(limits).length) request.limits = limits;
  return request;
}

// `fuel=123, wall_ms=0.412, peak_memory_bytes=65536` → {fuel: "123", …}.
function parseUsage(header) {
  const usage = {};
  for (const item of (header || "").split(",")) {
    const [key, value] = item.split("=").map((s) => s.trim());
    if (key && value !== undefined) usage[key] = value;
  }
  return usage;
}

function formatBytes(text) {
  const bytes = Number(text);
  if (!Number.isFinite(bytes)) return "?";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function showUsage(usage) {
  const shown = usage.fuel !== undefined;
  $("usage").hidden = !shown;
  if (!shown) return;
  $("usage-fuel").textContent = Number(usage.fuel).toLocaleString("en");
  $("usage-time").textContent = `${Number(usage.wall_ms).toFixed(3)} ms`;
  $("usage-memory").textContent = formatBytes(usage.peak_memory_bytes);
}

function setHttpStatus(text, ok) {
  const status = $("http-status");
  status.textContent = text;
  status.dataset.ok = ok ? "true" : "false";
}

async function run() {
  const button = $("run");
  let request;
  try {
    request = buildRequest();
  } catch (error) {
    setHttpStatus("not run", false);
    $("envelope").textContent = error.message;
    showUsage({});
    return;
  }
  button.disabled = true;
  setHttpStatus("running…", true);
  try {
    const reply = await api("POST", "api/v1/execute", request);
    const envelope = reply.body;
    const isEnvelope = envelope && typeof envelope === "object" && "status" in envelope;
    const kind = isEnvelope && envelope.error ? " " + envelope.error.kind : "";
    setHttpStatus(`HTTP ${reply.status}${kind}`, reply.status < 400);
    if (typeof envelope === "object") renderJson($("envelope"), envelope);
    else $("envelope").textContent = String(envelope);
    showUsage(parseUsage(reply.headers.get("avap-usage")));
    runErrorLine = isEnvelope && envelope.error && envelope.error.line ? envelope.error.line : null;
    renderGutter();
  } catch (error) {
    setHttpStatus("failed", false);
    $("envelope").textContent = "Cannot reach the server: " + error.message;
    showUsage({});
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// Storing
// ---------------------------------------------------------------------------

async function store() {
  const result = $("store-result");
  const name = $("store-name").value.trim();
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) {
    result.dataset.ok = "false";
    result.textContent = "A name is 1 to 64 letters, digits, - or _.";
    return;
  }
  result.dataset.ok = "true";
  result.textContent = "Storing…";
  try {
    const reply = await api("POST", "api/v1/scripts", { name, source: source.value });
    if (reply.status === 200 || reply.status === 201) {
      const v = reply.body;
      result.textContent = v.unchanged
        ? `Unchanged: ${v.name} is already version ${v.version}.`
        : `Stored ${v.name} version ${v.version}: call it at /api/v1/run/${v.name}`;
    } else {
      result.dataset.ok = "false";
      const diagnosticsOf = reply.body && reply.body.error && reply.body.error.diagnostics;
      result.textContent = diagnosticsOf ? "Not stored: the script has compile errors." : "Not stored: " + errorMessage(reply);
    }
  } catch (error) {
    result.dataset.ok = "false";
    result.textContent = "Cannot reach the server: " + error.message;
  }
}

// ---------------------------------------------------------------------------
// Examples and start-up
// ---------------------------------------------------------------------------

let examples = [];

function loadExample(id) {
  const example = examples.find((e) => e.id === id);
  if (!example) return;
  source.value = example.script;
  $("method").value = example.method;
  $("path").value = example.path;
  $("query").value = example.query;
  $("body").value = example.body;
  $("limit-fuel").value = example.fuel ? String(example.fuel) : "";
  $("limit-time").value = "";
  $("limit-memory").value = "";
  $("store-name").value = example.id;
  $("store-result").textContent = "";
  setHttpStatus("", true);
  $("envelope").textContent = "Run the script to see its response envelope.";
  showUsage({});
  onSourceChanged();
}

async function loadJson(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function start() {
  try {
    $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    // No storage: the key is asked for again.
  }
  $("api-key").addEventListener("change", () => {
    try {
      sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    } catch {
      // Not kept.
    }
    scheduleCheck();
  });
  source.addEventListener("input", () => {
    // Edited: no longer the example the menu names.
    $("examples").value = "";
    onSourceChanged();
  });
  source.addEventListener("scroll", syncScroll);
  source.addEventListener("keydown", onKeyDown);
  source.addEventListener("mousemove", onMouseMove);
  $("run").addEventListener("click", run);
  $("store").addEventListener("click", store);
  $("examples").addEventListener("change", (event) => loadExample(event.target.value));

  const [language, exampleList] = await Promise.all([loadJson("playground/language.json"), loadJson("playground/examples.json")]);
  setLanguage(language);
  examples = exampleList;
  const select = $("examples");
  const yours = document.createElement("option");
  yours.value = "";
  yours.textContent = "Your script";
  select.replaceChildren(
    yours,
    ...examples.map((e) => {
      const option = document.createElement("option");
      option.value = e.id;
      option.textContent = e.title;
      return option;
    }),
  );
  let kept = null;
  try {
    kept = sessionStorage.getItem(SCRIPT_STORAGE);
  } catch {
    // No storage.
  }
  if (kept) {
    select.value = "";
    source.value = kept;
    onSourceChanged();
  } else {
    select.value = examples[0].id;
    loadExample(examples[0].id);
  }

  // The server's policy and maximums (open endpoint; no key needed).
  try {
    const info = await loadJson("api/v1/info");
    allowedClasses = info.capabilities.allowed;
    const l = info.limits;
    $("limit-fuel").placeholder = `≤ ${Number(l.fuel).toLocaleString("en")}`;
    $("limit-time").placeholder = `≤ ${l.time_ms}`;
    $("limit-memory").placeholder = `≤ ${l.memory_mb}`;
    $("server-info").textContent =
      `avap ${info.version} · runs limited to fuel ${Number(l.fuel).toLocaleString("en")}, ${l.time_ms} ms, ` +
      `${l.memory_mb} MiB · allowed classes: ${allowedClasses.join(", ")}`;
    scheduleCheck();
  } catch {
    $("server-info").textContent = "Cannot read /api/v1/info.";
  }
  document.body.dataset.ready = "true";
}

start();
