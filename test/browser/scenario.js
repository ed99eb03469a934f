// What every scenario script (*.spec.js) shares: its settings from the
// environment (SIGIL_*, set by the Go test that runs it), the steps that
// print "ok - ..." or "not ok - ..." (the first failure stops the run),
// pages that record script errors and Content-Security-Policy violations,
// and the console's common controls. run(scenario) launches the system's
// Chromium, runs the scenario, prints the tally and sets the exit status.
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const https = require("node:https");
const path = require("node:path");
const { chromium } = require("playwright-core");

// env returns the environment variable name, which the Go test sets.
function env(name) {
  const v = process.env[name];
  if (!v) {
    const test = path.basename(require.main.filename, ".spec.js");
    throw new Error(`environment variable ${name} is not set (run ${test}.spec.js through its Go test)`);
  }
  return v;
}

const URL_ = env("SIGIL_URL");

let passed = 0;
let failed = 0;

// problems holds the script errors and CSP violations seen in any page.
const problems = [];

function report(err) {
  console.log(String(err && err.stack ? err.stack : err).replace(/^/gm, "    "));
}

// step runs fn as one step of the scenario and prints its verdict; a
// failed step stops the run.
async function step(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (err) {
    failed++;
    console.log(`not ok - ${name}`);
    report(err);
    throw err;
  }
}

// newPage opens a page in a context of its own: 1366 × 860 unless vp says
// otherwise, logged in if storageState is a logged-in context's. It
// accepts the confirmations of dangerous forms and records the page's
// errors in problems.
async function newPage(browser, vp = {}, storageState) {
  const viewport = { width: vp.width || 1366, height: vp.height || 860 };
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport, storageState });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("dialog", (d) => d.accept());
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${page.url()}: ${e.message}`));
  return page;
}

// login logs user in with the login form: a visitor is sent to it from
// the console's front page, and back there once logged in.
async function login(page, user, password) {
  await page.goto(URL_ + "/");
  assert.match(page.url(), /\/login\?next=/);
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(URL_ + "/");
}

// section returns the page's panel under a heading.
function section(page, heading) {
  return page.locator("section", { has: page.getByRole("heading", { name: heading, exact: true }) });
}

// flash checks the status message a form's answer shows.
async function flash(page, text) {
  const status = page.getByRole("status");
  await status.waitFor();
  assert.match(await status.innerText(), text);
}

// shot saves a screenshot of the page (all of it unless fullPage is false)
// as SIGIL_SCREENSHOTS/name.png.
async function shot(page, name, fullPage = true) {
  await page.screenshot({ path: path.join(env("SIGIL_SCREENSHOTS"), name + ".png"), fullPage });
}

// axe runs axe-core's rules on the page and fails on serious or critical
// violations. The script is evaluated through the browser's debugging
// protocol, which the page's Content-Security-Policy does not govern (the
// page itself still may not run inline script).
async function axe(page, what) {
  await page.evaluate(fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8"));
  const bad = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join("; ")})`);
  });
  assert.deepEqual(bad, [], `${what}: axe-core found ${bad.length} serious or critical violations`);
}

// api calls the JSON API from node, verifying the server's certificate
// against the fleet CA (SIGIL_CA): the console is served by that same TLS
// listener.
function api(method, p, token) {
  return new Promise((resolve, reject) => {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const req = https.request(URL_ + p, { method, ca: fs.readFileSync(env("SIGIL_CA")), headers }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

// run launches the system's Chromium (SIGIL_CHROMIUM), runs scenario with
// it, and exits with the verdict: non-zero if a step failed, the set-up
// failed or no step ran.
function run(scenario) {
  const main = async () => {
    const browser = await chromium.launch({
      executablePath: env("SIGIL_CHROMIUM"),
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
    try {
      await scenario(browser);
    } finally {
      await browser.close();
    }
  };
  main()
    .catch((err) => {
      if (failed === 0) {
        failed++;
        console.log("not ok - setting up the browser");
        report(err);
      }
    })
    .finally(() => {
      console.log(`${passed} passed, ${failed} failed`);
      process.exit(failed > 0 || passed === 0 ? 1 : 0);
    });
}

module.exports = { URL_, api, axe, env, flash, login, newPage, problems, run, section, shot, step };
