// Single sign-on in the console, in a real Chromium: run by sso_test.go,
// which starts an OpenID Provider (SIGIL_IDP) and the fleet and passes
// them in the environment (SIGIL_*). An operator logs in through the
// provider's login page, lands in the console with the role of their
// group, logs out through the provider, logs in again and loses access at
// the next request once the provider drops them from the group. Each step
// prints "ok - ..." or "not ok - ..."; the first failure stops the run and
// the exit status is non-zero.
"use strict";

const assert = require("node:assert/strict");
const { URL_, env, newPage, problems, run, step } = require("./scenario");

const IDP = env("SIGIL_IDP");
const CONTROL = env("SIGIL_CONTROL");
const USER = env("SIGIL_USER");
const PASSWORD = env("SIGIL_PASSWORD");

// signIn starts single sign-on from the console's login page and signs in
// at the provider's login page.
async function signIn(page) {
  await page.goto(URL_ + "/");
  assert.match(page.url(), /\/login\?next=/);
  await page.getByRole("link", { name: "Log in with single sign-on" }).click();
  await page.waitForURL((u) => u.href.startsWith(IDP + "/login"));
  await page.getByLabel("Username").fill(USER);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
}

run(async (browser) => {
  const page = await newPage(browser);

  await step("logs in through the provider's login page and lands in the console", async () => {
    await signIn(page);
    await page.waitForURL(URL_ + "/");
    await page.getByRole("heading", { level: 1 }).waitFor();
  });

  await step("holds the role its provider group maps to", async () => {
    const who = page.locator(".who");
    assert.match(await who.innerText(), new RegExp(USER));
    assert.equal(await who.locator(".role").innerText(), "operator");
  });

  await step("logs out through the provider back to the login page", async () => {
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(/\/login\?bye=1$/);
    await page.getByText("You are logged out.").waitFor();
    await page.goto(URL_ + "/devices");
    assert.match(page.url(), /\/login\?next=/);
  });

  await step("logs in again", async () => {
    await signIn(page);
    await page.waitForURL(URL_ + "/");
    await page.goto(URL_ + "/devices");
    assert.doesNotMatch(page.url(), /\/login/);
  });

  await step("loses access at the next request once the provider drops the group", async () => {
    const res = await fetch(CONTROL + "/remove-group", { method: "POST" });
    assert.equal(res.status, 204);
    await page.goto(URL_ + "/devices");
    assert.match(page.url(), /\/login\?next=/);
  });

  await step("a new login without the group is refused", async () => {
    await signIn(page);
    await page.getByRole("alert").waitFor();
    assert.match(await page.getByRole("alert").innerText(), /None of your groups/);
  });

  // The refused login's callback answers 403, as it should.
  const refused = /\/auth\/sso\/callback\?.*status of 403/;
  assert.deepEqual(problems.filter((p) => !refused.test(p)), []);
});
