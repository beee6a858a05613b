// AVAP syntax highlighting for the playground: a small tokenizer that
// follows the compiler's lexer (codegen/src/lexer.rs) closely enough to
// colour source, and the rendering of tokens and diagnostics into DOM
// nodes (text only through textContent: nothing the user types becomes
// markup).

// Token classes; index 0 is plain text.
export const KINDS = [
  "plain", "comment", "string", "template", "interp", "number", "global",
  "statement", "command", "builtin", "keyword", "constant", "function",
  "call", "operator", "punct", "special",
];
const K = Object.fromEntries(KINDS.map((name, i) => [name, i]));

// What the server's language.json says; `setLanguage` fills it in.
const words = {
  commands: new Map(),
  builtins: new Set(),
  statements: new Set(),
  keywords: new Set(),
  constants: new Set(),
};

export function setLanguage(language) {
  words.commands = new Map(language.commands.map((c) => [c.name, c]));
  words.builtins = new Set(language.builtins);
  words.statements = new Set(language.statements);
  words.keywords = new Set(language.keywords);
  words.constants = new Set(language.constants);
}

export function commandInfo(name) {
  return words.commands.get(name);
}

const isIdentStart = (c) => /[A-Za-z_]/.test(c);
const isIdentPart = (c) => /[A-Za-z0-9_]/.test(c);
const isDigit = (c) => c >= "0" && c <= "9";

// [{start, end, kind}] over `text` (UTF-16 offsets), in order; gaps are plain.
export function tokenize(text) {
  const tokens = [];
  const push = (start, end, kind) => tokens.push({ start, end, kind });
  let depth = 0; // bracket depth: `//` is floor division inside brackets
  let afterFunction = false;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    const start = i;
    if (c === "/" && text[i + 1] === "/" && depth === 0) {
      while (i < n && text[i] !== "\n") i++;
      push(start, i, K.comment);
    } else if (c === "/" && text[i + 1] === "*") {
      const close = text.indexOf("*/", i + 2);
      i = close < 0 ? n : close + 2;
      push(start, i, K.comment);
    } else if (c === '"' || c === "'") {
      i++;
      while (i < n && text[i] !== c && text[i] !== "\n") i += text[i] === "\\" ? 2 : 1;
      if (text[i] === c) i++;
      push(start, Math.min(i, n), K.string);
    } else if (c === "`") {
      i++;
      let run = start;
      while (i < n && text[i] !== "`") {
        if (text[i] === "$" && text[i + 1] === "{") {
          const close = text.indexOf("}", i);
          const stop = close < 0 ? n : close + 1;
          push(run, i, K.template);
          push(i, stop, K.interp);
          i = stop;
          run = i;
        } else {
          i += text[i] === "\\" ? 2 : 1;
        }
      }
      if (text[i] === "`") i++;
      push(run, Math.min(i, n), K.template);
    } else if (c === "$" && isIdentStart(text[i + 1] || "")) {
      i++;
      while (i < n && isIdentPart(text[i])) i++;
      push(start, i, K.global);
    } else if (isDigit(c) || (c === "." && isDigit(text[i + 1] || ""))) {
      while (i < n && (isDigit(text[i]) || text[i] === "_" || text[i] === ".")) i++;
      if ((text[i] === "e" || text[i] === "E") && /[0-9+-]/.test(text[i + 1] || "")) {
        i += 2;
        while (i < n && isDigit(text[i])) i++;
      }
      push(start, i, K.number);
    } else if (isIdentStart(c)) {
      while (i < n && isIdentPart(text[i])) i++;
      const word = text.slice(start, i);
      let j = i;
      while (text[j] === " " || text[j] === "\t") j++;
      const called = text[j] === "(";
      let kind;
      if (afterFunction) kind = K.function;
      else if (words.statements.has(word)) kind = K.statement;
      else if (words.commands.has(word)) kind = K.command;
      else if (words.builtins.has(word) && called) kind = K.builtin;
      else if (words.keywords.has(word)) kind = K.keyword;
      else if (words.constants.has(word)) kind = K.constant;
      else if (word === "_status") kind = K.special;
      else if (called) kind = K.call;
      else kind = K.plain;
      afterFunction = word === "function";
      push(start, i, kind);
      continue;
    } else if ("([{".includes(c)) {
      depth++;
      i++;
      push(start, i, K.punct);
    } else if (")]}".includes(c)) {
      depth = Math.max(0, depth - 1);
      i++;
      push(start, i, K.punct);
    } else if ("+-*/%=<>!".includes(c)) {
      i++;
      push(start, i, K.operator);
    } else if (c === "," || c === ":" || c === ".") {
      i++;
      push(start, i, K.punct);
    } else {
      i++;
      continue;
    }
    if (c !== " " && c !== "\t") afterFunction = false;
  }
  return tokens;
}

// The UTF-16 offset of a 1-based line and column counted in characters
// (code points), as the check report gives them.
export function offsetOf(text, lineStarts, line, column) {
  const lineIndex = Math.min(Math.max(line - 1, 0), lineStarts.length - 1);
  let offset = lineStarts[lineIndex];
  for (let col = 1; col < column && offset < text.length && text[offset] !== "\n"; col++) {
    const code = text.codePointAt(offset);
    offset += code > 0xffff ? 2 : 1;
  }
  return offset;
}

export function lineStartsOf(text) {
  const starts = [0];
  for (let i = 0; i < text.length; i++) if (text[i] === "\n") starts.push(i + 1);
  return starts;
}

// The range a diagnostic underlines: never empty (an empty one at the end
// of a line marks the character before it), never across the end of text.
export function markRange(text, lineStarts, d) {
  let start = offsetOf(text, lineStarts, d.line, d.column);
  let end = offsetOf(text, lineStarts, d.end_line ?? d.line, d.end_column ?? d.column);
  if (end < start) end = start;
  if (end === start) {
    if (start < text.length && text[start] !== "\n") end = start + 1;
    else if (start > 0) start -= 1;
  }
  return { start, end: Math.max(end, start + (text.length > 0 ? 1 : 0)) };
}

const SEVERITY = { warning: 1, error: 2 };

// Fill `code` with spans for `text`: token classes, and squiggles under
// the ranges of `diagnostics` (each {line, column, end_line, end_column,
// severity}).
export function render(code, text, diagnostics) {
  const n = text.length;
  const kinds = new Uint8Array(n);
  for (const t of tokenize(text)) kinds.fill(t.kind, t.start, t.end);
  const marks = new Uint8Array(n);
  const lineStarts = lineStartsOf(text);
  for (const d of diagnostics) {
    const { start, end } = markRange(text, lineStarts, d);
    const level = SEVERITY[d.severity] || 1;
    for (let i = start; i < Math.min(end, n); i++) marks[i] = Math.max(marks[i], level);
  }
  const fragment = document.createDocumentFragment();
  let i = 0;
  while (i < n) {
    let j = i + 1;
    while (j < n && kinds[j] === kinds[i] && marks[j] === marks[i]) j++;
    const piece = text.slice(i, j);
    if (kinds[i] === 0 && marks[i] === 0) {
      fragment.append(piece);
    } else {
      const span = document.createElement("span");
      if (kinds[i] !== 0) span.className = "tok-" + KINDS[kinds[i]];
      if (marks[i] === 2) span.classList.add("squiggle-error");
      if (marks[i] === 1) span.classList.add("squiggle-warning");
      span.textContent = piece;
      fragment.append(span);
    }
    i = j;
  }
  // A final newline needs a line after it, or the layer is a line short of
  // the textarea.
  fragment.append(text.endsWith("\n") || n === 0 ? " " : "");
  code.replaceChildren(fragment);
}

// JSON text with its keys, strings, numbers and literals in spans.
export function renderJson(pre, value) {
  const text = JSON.stringify(value, null, 2);
  const fragment = document.createDocumentFragment();
  const pattern = /("(?:[^"\\]|\\.)*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    fragment.append(text.slice(last, m.index));
    const span = document.createElement("span");
    if (m[1] !== undefined) {
      span.className = m[2] !== undefined ? "json-key" : "json-string";
      span.textContent = m[1];
      fragment.append(span);
      if (m[2] !== undefined) fragment.append(m[2]);
    } else {
      span.className = m[3] !== undefined ? "json-literal" : "json-number";
      span.textContent = m[0];
      fragment.append(span);
    }
    last = m.index + m[0].length;
  }
  fragment.append(text.slice(last));
  pre.replaceChildren(fragment);
}
