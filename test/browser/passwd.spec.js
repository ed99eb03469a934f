// A person changes their password in the console, in a real Chromium:
// run by passwd_test.go, which starts the fleet and passes it in the
// environment (SIGIL_*). Two browsers are logged in as the same user; the
// change in one keeps it logged in and logs the other out. Each step
// prints "ok - ..." or "not ok - ..."; the first failure stops the run and
// the exit status is non-zero.
"use strict";

const assert = require("node:assert/strict");
const { URL_, env, flash, login, newPage, problems, run, section, step } = require("./scenario");

const USER = env("SIGIL_USER");
const OLD = env("SIGIL_PASSWORD");
const NEW = env("SIGIL_NEW_PASSWORD");

// changePassword submits the settings page's password form: the current
// password, the new one and its confirmation.
async function changePassword(page, current, next, again) {
  await page.goto(URL_ + "/settings");
  const form = section(page, "Your password");
  await form.getByLabel("Current password").fill(current);
  await form.getByLabel(/^New password \(at least/).fill(next);
  await form.getByLabel("New password again").fill(again);
  await form.getByRole("button", { name: "Change password" }).click();
}

run(async (browser) => {
  const here = await newPage(browser);
  const elsewhere = await newPage(browser);

  await step("the same user is logged in from two browsers", async () => {
    await login(here, USER, OLD);
    await login(elsewhere, USER, OLD);
  });

  await step("a confirmation that differs is refused, and nothing changes", async () => {
    await changePassword(here, OLD, NEW, NEW + " typo");
    await here.getByRole("alert").waitFor();
    assert.match(await here.getByRole("alert").innerText(), /confirmation differ/);
    await elsewhere.goto(URL_ + "/devices");
    assert.doesNotMatch(elsewhere.url(), /\/login/);
  });

  await step("changes the password on the settings page and stays logged in", async () => {
    await changePassword(here, OLD, NEW, NEW);
    await here.waitForURL(/\/settings\?ok=user\.password$/);
    await flash(here, /Password changed/);
    await here.goto(URL_ + "/devices");
    assert.doesNotMatch(here.url(), /\/login/);
    await here.getByRole("heading", { level: 1 }).waitFor();
  });

  await step("the other browser's session is over", async () => {
    await elsewhere.goto(URL_ + "/devices");
    assert.match(elsewhere.url(), /\/login\?next=/);
  });

  await step("the other browser logs in with the new password", async () => {
    await login(elsewhere, USER, NEW);
  });

  await step("no page logged a script error or a Content-Security-Policy violation", async () => {
    // The only console error expected is the 400 of the refused form.
    const unexpected = problems.filter((p) => !/status of 400/.test(p));
    assert.deepEqual(unexpected, []);
  });
});
