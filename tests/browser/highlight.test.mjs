// The playground's tokenizer against the lexer's rules (node --test; no
// browser needed: tokenize and the offset helpers touch no DOM).

import assert from "node:assert/strict";
import { test } from "node:test";

import { KINDS, lineStartsOf, markRange, offsetOf, setLanguage, tokenize } from "../../server/playground/highlight.js";

setLanguage({
  commands: [{ name: "addParam" }, { name: "addResult" }, { name: "gather" }],
  builtins: ["len", "str"],
  statements: ["if", "end", "function", "return", "go_async"],
  keywords: ["and", "not", "in"],
  constants: ["True", "None"],
});

// [[text, kind], …] of the non-plain tokens.
function kinds(text) {
  return tokenize(text)
    .filter((t) => KINDS[t.kind] !== "plain")
    .map((t) => [text.slice(t.start, t.end), KINDS[t.kind]]);
}

test("commands, statements, built-ins, calls and user functions", () => {
  assert.deepEqual(kinds("if(len(xs), 2, =)"), [
    ["if", "statement"], ["(", "punct"], ["len", "builtin"], ["(", "punct"], [")", "punct"], [",", "punct"],
    ["2", "number"], [",", "punct"], ["=", "operator"], [")", "punct"],
  ]);
  assert.deepEqual(kinds("function twice(x) {")[1], ["twice", "function"]);
  assert.deepEqual(kinds("y = twice(2)")[1], ["twice", "call"]);
  assert.deepEqual(kinds("len = 3")[0], ["=", "operator"], "a built-in's name not called is a variable");
  assert.deepEqual(kinds("addParam(name, who)")[0], ["addParam", "command"]);
  assert.deepEqual(kinds("ok = x and not None"), [["=", "operator"], ["and", "keyword"], ["not", "keyword"], ["None", "constant"]]);
  assert.deepEqual(kinds("_status = 201")[0], ["_status", "special"]);
});

test("comments: `//` only outside brackets, block comments anywhere", () => {
  assert.deepEqual(kinds("x = 1 // one"), [["=", "operator"], ["1", "number"], ["// one", "comment"]]);
  assert.deepEqual(kinds("x = (7 // 2)").map(([, k]) => k), ["operator", "punct", "number", "operator", "operator", "number", "punct"]);
  assert.deepEqual(kinds("a /* b\nc */ d"), [["/* b\nc */", "comment"]]);
  assert.deepEqual(kinds("/* open"), [["/* open", "comment"]]);
});

test("strings, templates and globals", () => {
  assert.deepEqual(kinds(`s = "a\\"b" + 'c'`), [["=", "operator"], [`"a\\"b"`, "string"], ["+", "operator"], ["'c'", "string"]]);
  assert.deepEqual(kinds('s = "open\nx'), [["=", "operator"], ['"open', "string"]], "a string ends at the line");
  assert.deepEqual(kinds("t = `id ${x} ok`"), [["=", "operator"], ["`id ", "template"], ["${x}", "interp"], [" ok`", "template"]]);
  assert.deepEqual(kinds("g = $count")[1], ["$count", "global"]);
  assert.deepEqual(kinds("n = 1.5e3")[1], ["1.5e3", "number"]);
});

test("positions: characters to UTF-16 offsets, never-empty marks", () => {
  const text = "a = \"é😀x\"\nb";
  const starts = lineStartsOf(text);
  assert.deepEqual(starts, [0, 11]);
  assert.equal(text[offsetOf(text, starts, 1, 8)], "x", "column 8 counts 😀 as one character");
  assert.equal(offsetOf(text, starts, 2, 1), 11);
  assert.equal(offsetOf(text, starts, 9, 1), 11, "a line past the end is the last one");
  assert.deepEqual(markRange(text, starts, { line: 2, column: 1, end_line: 2, end_column: 1 }), { start: 11, end: 12 });
  assert.deepEqual(markRange(text, starts, { line: 2, column: 2, end_line: 2, end_column: 2 }), { start: 11, end: 12 }, "at the end: the character before");
});
