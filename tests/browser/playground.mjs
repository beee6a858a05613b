// The playground as a user sees it, in chromium (driven by playwright-core):
// node playground.mjs BASE_URL SCREENSHOT_DIR. Run by playground.sh, which
// starts the server and says where playwright-core and chromium are.

import { createRequire } from "node:module";
import assert from "node:assert/strict";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const [base, shots] = process.argv.slice(2);
const TIMEOUT = 15_000;

// A script with one error (the `if` block is never closed), typed as a user would.
const BROKEN = [
  "// Greet the caller",
  "addParam(name, who)",
  "if(who, None, =)",
  'who = "stranger"',
  'message = "Hello, " + who',
  "addResult(message)",
].join("\n");

function step(text) {
  console.log(`-- ${text}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  // CI runs as root, where chromium's sandbox cannot start; containers
  // often have a small /dev/shm.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  // Every CSP violation and page error, collected from the first script on.
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy|Refused to/.test(message.text())) {
      pageErrors.push(message.text());
    }
  });

  step("the page loads under its CSP, with the examples menu");
  const response = await page.goto(`${base}/playground`);
  assert.equal(response.status(), 200);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  await page.waitForSelector("body[data-ready=true]");
  const exampleCount = await page.locator("#examples option").count();
  assert.ok(exampleCount >= 6, `${exampleCount - 1} examples`);

  step("type a script with an error: the diagnostic appears");
  const editor = page.locator("#source");
  await editor.click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.type(BROKEN, { delay: 5 });
  const problem = page.locator(".diagnostic.error", { hasText: "E0020" });
  await problem.waitFor();
  assert.match(await problem.textContent(), /^3:1/, "the unclosed `if` is on line 3");
  await page.locator("#check-status[data-state=errors]").waitFor();
  await page.locator(".gutter .mark-error", { hasText: "3" }).waitFor();
  assert.ok((await page.locator("#highlight .squiggle-error").count()) > 0, "the error is underlined");
  assert.ok((await page.locator("#highlight .tok-command", { hasText: "addParam" }).count()) === 1, "commands are highlighted");
  assert.ok((await page.locator("#highlight .tok-string").count()) >= 2, "strings are highlighted");
  assert.equal(await page.locator("#capabilities .empty").textContent(), "Known once the script compiles.");
  await page.screenshot({ path: path.join(shots, "1-diagnostic.png") });

  step("fix it (the problem's line is a click away): the problems go away, the capabilities show");
  await problem.locator("button").click();
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("End");
  await page.keyboard.type("\nend()", { delay: 5 });
  await page.locator("#check-status[data-state=ok]").waitFor();
  assert.equal(await page.locator(".diagnostic").count(), 0);
  assert.equal(await page.locator("#highlight .squiggle-error").count(), 0);
  await page.locator("#capabilities .capability", { hasText: "request" }).waitFor();
  assert.match(await page.locator("#capabilities").textContent(), /addParam \(line 2\)/);

  step("run it with a query: the envelope and the usage are on the page");
  await page.fill("#query", "name=Ada");
  await page.fill("#limit-fuel", "");
  await page.fill("#body", "");
  await page.selectOption("#method", "GET");
  await page.fill("#path", "/");
  await page.click("#run");
  await page.locator("#http-status", { hasText: "HTTP 200" }).waitFor();
  const envelope = JSON.parse(await page.locator("#envelope").textContent());
  assert.deepEqual(envelope.result, { message: "Hello, Ada" });
  assert.equal(envelope.status, true);
  const fuel = Number((await page.locator("#usage-fuel").textContent()).replaceAll(",", ""));
  assert.ok(fuel > 0, `fuel ${fuel}`);
  assert.match(await page.locator("#usage-time").textContent(), /^\d+\.\d{3} ms$/);
  assert.match(await page.locator("#usage-memory").textContent(), /^\d+(\.\d)? (B|KiB|MiB)$/);
  await page.screenshot({ path: path.join(shots, "2-run.png") });

  step("store it as a script, then call the stored script");
  await page.fill("#store-name", "greeter");
  await page.click("#store");
  await page.locator("#store-result", { hasText: "Stored greeter version 1" }).waitFor();
  const stored = await (await fetch(`${base}/api/v1/run/greeter?name=Lin`)).json();
  assert.deepEqual(stored.result, { message: "Hello, Lin" });

  step("an example from the menu that hits its fuel limit");
  await page.selectOption("#examples", "fuel");
  await page.locator("#check-status[data-state=ok]").waitFor();
  assert.equal(await page.inputValue("#limit-fuel"), "2000000");
  await page.click("#run");
  await page.locator("#http-status", { hasText: "HTTP 422 FuelExhausted" }).waitFor();
  const spent = Number((await page.locator("#usage-fuel").textContent()).replaceAll(",", ""));
  assert.ok(spent >= 2_000_000 * 0.9, `the run used its fuel (${spent})`);
  await page.locator(".gutter .mark-run-error").waitFor();
  await page.screenshot({ path: path.join(shots, "3-fuel-limit.png") });

  step("the editor's README picture: an example, run");
  await page.selectOption("#examples", "json_total");
  await page.locator("#check-status[data-state=ok]").waitFor();
  await page.click("#run");
  await page.locator("#http-status", { hasText: "HTTP 200" }).waitFor();
  await page.screenshot({ path: path.join(shots, "playground.png") });

  const violations = await page.evaluate(() => window.__violations);
  assert.deepEqual(violations, [], "no content-security-policy violation");
  assert.deepEqual(pageErrors, [], "no script error");
  console.log("-- all good");
} finally {
  await browser.close();
}
