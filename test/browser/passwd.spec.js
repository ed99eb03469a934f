// A person changes their password in the console, in a real Chromium:
// run by passwd_test.go, which starts the fleet and passes it in the
// environment (SIGIL_*). Two browsers are logged in as the same user; the
// change in one keeps it logged in and logs the other out. Each step
// prints "ok - ..." or "not ok - ..."; the first failure stops the run and
// the exit status is non-zero.
"use strict";

const assert = require("node:assert/strict");
const { chromium } = require("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    throw new Error(`environment variable ${name} is not set (run through passwd_test.go)`);
  }
  return v;
};
const URL_ = env("SIGIL_URL");
const USER = env("SIGIL_USER");
const OLD = env("SIGIL_PASSWORD");
const NEW = env("SIGIL_NEW_PASSWORD");

const problems = []; // console errors and CSP violations seen in any page

async function step(name, fn) {
  try {
    await fn();
    console.log(`ok - ${name}`);
  } catch (err) {
    console.log(`not ok - ${name}`);
    console.log(String(err && err.stack ? err.stack : err).replace(/^/gm, "    "));
    throw err;
  }
}

async function newPage(browser) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${page.url()}: ${e.message}`));
  return page;
}

async function login(page, password) {
  await page.goto(URL_ + "/");
  assert.match(page.url(), /\/login\?next=/);
  await page.getByLabel("User name").fill(USER);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(URL_ + "/");
}

// passwordForm returns the settings page's password panel.
function passwordForm(page) {
  return page.locator("section", { has: page.getByRole("heading", { name: "Your password", exact: true }) });
}

async function run(browser) {
  const here = await newPage(browser);
  const elsewhere = await newPage(browser);

  await step("the same user is logged in from two browsers", async () => {
    await login(here, OLD);
    await login(elsewhere, OLD);
  });

  await step("a confirmation that differs is refused, and nothing changes", async () => {
    await here.goto(URL_ + "/settings");
    const form = passwordForm(here);
    await form.getByLabel("Current password").fill(OLD);
    await form.getByLabel(/^New password \(at least/).fill(NEW);
    await form.getByLabel("New password again").fill(NEW + " typo");
    await form.getByRole("button", { name: "Change password" }).click();
    await here.getByRole("alert").waitFor();
    assert.match(await here.getByRole("alert").innerText(), /confirmation differ/);
    await elsewhere.goto(URL_ + "/devices");
    assert.doesNotMatch(elsewhere.url(), /\/login/);
  });

  await step("changes the password on the settings page and stays logged in", async () => {
    await here.goto(URL_ + "/settings");
    const form = passwordForm(here);
    await form.getByLabel("Current password").fill(OLD);
    await form.getByLabel(/^New password \(at least/).fill(NEW);
    await form.getByLabel("New password again").fill(NEW);
    await form.getByRole("button", { name: "Change password" }).click();
    await here.waitForURL(/\/settings\?ok=user\.password$/);
    const status = here.getByRole("status");
    await status.waitFor();
    assert.match(await status.innerText(), /Password changed/);
    await here.goto(URL_ + "/devices");
    assert.doesNotMatch(here.url(), /\/login/);
    await here.getByRole("heading", { level: 1 }).waitFor();
  });

  await step("the other browser's session is over", async () => {
    await elsewhere.goto(URL_ + "/devices");
    assert.match(elsewhere.url(), /\/login\?next=/);
  });

  await step("the other browser logs in with the new password", async () => {
    await login(elsewhere, NEW);
  });

  await step("no page logged a script error or a Content-Security-Policy violation", async () => {
    // The only console error expected is the 400 of the refused form.
    const unexpected = problems.filter((p) => !/status of 400/.test(p));
    assert.deepEqual(unexpected, []);
  });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: env("SIGIL_CHROMIUM"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    await run(browser);
  } finally {
    await browser.close();
  }
}

main().catch(() => {
  process.exitCode = 1;
});
