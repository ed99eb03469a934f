// The operations scenarios in a real Chromium, driven by playwright-core:
// the console's 404 page, a throttled login, alerts after a flood
// (flood summary, severity filter, grouping, bulk acknowledgement), the
// issued enrollment tokens, triage of a certificate from another CA,
// "sweep now" on the risk page, the access page and a workload
// registered on the workloads page. axe-core checks every page for serious
// and critical accessibility violations. Run by ops_test.go, which starts
// the fleet and passes it in the environment (SIGIL_*). Each step prints
// "ok - ..." or "not ok - ..."; the first failure stops the run.
"use strict";

const assert = require("node:assert/strict");
const { URL_, api, axe, env, flash, login, newPage, problems, run, section, shot, step } = require("./scenario");

run(async (browser) => {
  const page = await newPage(browser);

  await step("a throttled login says why in one sentence", async () => {
    const user = env("SIGIL_THROTTLED");
    await page.goto(URL_ + "/login");
    // Each attempt answers with a new page: wait for that page's alert,
    // not for the one the previous page still shows.
    const alerts = [/^The user name or password is wrong\.$/, /^Too many failed logins/];
    for (let i = 0; i < 2; i++) {
      await page.getByLabel("User name").fill(user);
      await page.getByLabel("Password").fill("not the password " + i);
      await Promise.all([page.waitForNavigation(), page.getByRole("button", { name: "Log in" }).click()]);
      await page.getByRole("alert").filter({ hasText: alerts[i] }).waitFor();
    }
    const msg = (await page.getByRole("alert").innerText()).trim();
    // The test's fleet makes a first failure wait a minute (login_throttle).
    assert.match(msg, /^Too many failed logins: try again in (5\d|60) seconds\.$/);
    await axe(page, "the login page");
  });

  await step("an unknown console URL shows the console's 404 page with the menu", async () => {
    await login(page, env("SIGIL_OPERATOR"), env("SIGIL_OPERATOR_PASSWORD"));
    const res = await page.goto(URL_ + "/devcies");
    assert.equal(res.status(), 404);
    assert.match(res.headers()["content-type"], /^text\/html/);
    await page.getByRole("heading", { name: "Page not found", level: 1 }).waitFor();
    assert.match(await page.locator("main").innerText(), /no console page at \/devcies/);
    await axe(page, "the 404 page");
    await shot(page, "not-found");
    await section(page, "Where to go").getByRole("link", { name: "Devices" }).click();
    await page.waitForURL(URL_ + "/devices");
    // API URLs keep the API's answers.
    const apiRes = await api("GET", "/api/v1/no-such-route");
    assert.equal(apiRes.status, 404);
    assert.match(apiRes.headers["content-type"], /problem\+json/);
    // Without a session: the page, a login link, no menu.
    const anon = await api("GET", "/devcies");
    assert.equal(anon.status, 404);
    assert.match(anon.body, /Page not found/);
    assert.match(anon.body, /Log in to the console/);
    assert.doesNotMatch(anon.body, /aria-label="Main"/);
  });

  await step("the alerts page says what flood control held back", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Alerts" }).click();
    const flood = section(page, "Flood control held alerts back");
    const text = await flood.innerText();
    assert.match(text, new RegExp(`held back ${env("SIGIL_HELD")} new alerts of rule ops-logins from ${env("SIGIL_HELD")} devices`));
    assert.match(text, /limit: \d+ new alerts per rule/);
    assert.match(text, /and \d+ more/);
    await axe(page, "the alerts page");
    await shot(page, "alerts-flood");
  });

  await step("filters alerts by severity", async () => {
    await page.getByLabel("Severity").selectOption("critical");
    await page.getByRole("button", { name: "Show", exact: true }).click();
    await page.waitForURL(/severity=critical/);
    const rows = page.locator("table.alerts tbody tr");
    assert.equal(await rows.count(), 3);
    for (const t of await rows.allInnerTexts()) {
      assert.match(t, /critical/);
    }
  });

  await step("groups alerts by rule and acknowledges a whole group", async () => {
    await page.goto(URL_ + "/alerts?group=rule");
    const table = page.locator("table.alert-groups");
    const logins = table.locator("tbody tr", { hasText: "Failed logins (ops)" });
    const opened = Number(env("SIGIL_OPENED"));
    assert.match(await logins.innerText(), new RegExp(`${opened + 1}\\s+${opened + 1} firing`));
    assert.match(await logins.innerText(), new RegExp(`\\+ ${env("SIGIL_HELD")} held back`));
    assert.match(await table.locator("tbody tr", { hasText: "Attestation failed (ops)" }).innerText(), /3 critical/);
    await axe(page, "the alerts grouped by rule");
    await shot(page, "alerts-grouped");
    await logins.getByRole("button", { name: /^Acknowledge \d+ firing alerts of ops-logins$/ }).click();
    await page.waitForURL(/\/alerts\?ok=alert\.bulkack$/);
    await flash(page, /Acknowledged/);
    await page.goto(URL_ + "/alerts?group=rule&view=firing");
    assert.equal(await page.locator("table.alert-groups tbody tr", { hasText: "Failed logins (ops)" }).count(), 0);
    await page.goto(URL_ + "/alerts?group=device");
    assert.ok((await page.locator("table.alert-groups tbody tr").count()) >= 4);
    await axe(page, "the alerts grouped by device");
  });

  await step("acknowledges a selection of alerts", async () => {
    await page.goto(URL_ + "/alerts?view=firing&severity=critical");
    const boxes = page.locator("table.alerts tbody input[type=checkbox]");
    assert.equal(await boxes.count(), 3);
    for (let i = 0; i < 3; i++) {
      await boxes.nth(i).check();
    }
    await page.getByLabel("Note for the acknowledgement (optional)").fill("bench rack rebooted");
    await page.getByRole("button", { name: "Acknowledge selected" }).click();
    await page.waitForURL(/\/alerts\?ok=alert\.bulkack$/);
    await flash(page, /Acknowledged/);
    await page.goto(URL_ + "/alerts?view=firing&severity=critical");
    assert.match(await section(page, "Alerts firing").innerText(), /No alert matches/);
    await page.goto(URL_ + "/alerts?view=acknowledged&severity=critical");
    assert.match(await page.locator("table.alerts").innerText(), /acknowledged by olga just now: bench rack rebooted/);
  });

  await step("lists the issued enrollment tokens, never their secrets", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Enrollment" }).click();
    const issued = section(page, "Issued tokens");
    const text = await issued.innerText();
    for (const id of [env("SIGIL_TOKEN_UNUSED"), env("SIGIL_TOKEN_USED")]) {
      assert.ok(text.includes(id), `token ${id} listed`);
    }
    assert.match(await issued.locator("tr", { hasText: env("SIGIL_TOKEN_UNUSED") }).innerText(), /unused[\s\S]*plant-a/);
    assert.match(await issued.locator("tr", { hasText: env("SIGIL_TOKEN_USED") }).innerText(), /used[\s\S]*by /);
    assert.ok(!(await page.content()).includes("sgt_"), "no token secret on the page");
    await axe(page, "the enrollment page");
    await shot(page, "enrollment-tokens");
    await page.getByLabel("Show").selectOption("unused");
    await issued.getByRole("button", { name: "Show" }).click();
    await page.waitForURL(/tokens=unused/);
    const unusedOnly = await section(page, "Issued tokens").innerText();
    assert.ok(unusedOnly.includes(env("SIGIL_TOKEN_UNUSED")) && !unusedOnly.includes(env("SIGIL_TOKEN_USED")), unusedOnly);
  });

  await step("triage offers no enroll for a certificate from another CA, and says why", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Triage" }).click();
    const foreign = page.locator("tr", { hasText: "Certificate from another CA" });
    assert.equal(await foreign.count(), 1);
    assert.equal(await foreign.getByRole("button", { name: /^Enroll/ }).count(), 0);
    assert.equal(await foreign.getByRole("button", { name: /^Block/ }).count(), 1);
    assert.equal(await foreign.getByRole("button", { name: /^Dismiss/ }).count(), 1);
    assert.match(await foreign.innerText(), /Enroll is not offered: its certificate was issued by another CA \(CN=Acme Plant CA\)/);
    const tpm = page.locator("tr", { hasText: "Unknown TPM (EK)" });
    assert.equal(await tpm.getByRole("button", { name: /^Enroll/ }).count(), 1);
    await axe(page, "the triage page");
    await shot(page, "triage");
  });

  await step("sweeps now from the risk page", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Risk" }).click();
    await page.getByRole("button", { name: "Sweep now" }).click();
    await page.waitForURL(/\/risk\?ok=risk\.sweep$/);
    await flash(page, /Swept/);
    const row = page.locator("table tbody tr", { has: page.locator(`a[href="/devices/${env("SIGIL_ENROLLED")}"]`) });
    assert.equal(await row.count(), 1);
    assert.match(await row.innerText(), /attestation-failing/);
    await axe(page, "the risk page");
    await shot(page, "risk-sweep");
    await page.goto(URL_ + "/");
    const tile = page.locator("a.card", { hasText: "Highest risk" });
    assert.doesNotMatch(await tile.innerText(), /no device scored yet/);
  });

  await step("a viewer sees no sweep or bulk acknowledgement buttons", async () => {
    const viewer = await newPage(browser);
    await login(viewer, env("SIGIL_VIEWER"), env("SIGIL_VIEWER_PASSWORD"));
    await viewer.goto(URL_ + "/risk");
    assert.equal(await viewer.getByRole("button", { name: "Sweep now" }).count(), 0);
    await viewer.goto(URL_ + "/alerts");
    assert.equal(await viewer.getByRole("button", { name: /^Acknowledge/ }).count(), 0);
    await viewer.context().close();
  });

  await step("the just-in-time SSH access page offers its request form and passes axe-core", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Access" }).click();
    await page.getByRole("heading", { name: "Just-in-time SSH access", level: 1 }).waitFor();
    await page.getByLabel("Device ID or group").waitFor();
    await page.getByLabel(/Your public key/).waitFor();
    assert.equal(await page.getByRole("button", { name: "Request access" }).count(), 1);
    await axe(page, "the access page");
    await shot(page, "access");
  });

  await step("a security admin registers a workload on the workloads page, which passes axe-core", async () => {
    const sec = await newPage(browser);
    await login(sec, env("SIGIL_SECADMIN"), env("SIGIL_SECADMIN_PASSWORD"));
    await sec.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Workloads" }).click();
    await sec.getByRole("heading", { name: "Workload identities", level: 1 }).waitFor();
    await axe(sec, "the empty workloads page with its form");
    await sec.getByLabel(/^Name/).fill("collector");
    await sec.getByLabel("Applies to").selectOption("group");
    await sec.getByLabel("Device ID, group or model").fill("kiosks");
    await sec.getByLabel("User ID").fill("1000");
    await sec.getByLabel("Executable path").fill("/usr/bin/collector");
    await sec.getByRole("button", { name: "Register" }).click();
    await sec.waitForURL(/\/workloads\?ok=workloads\.register$/);
    await flash(sec, /Registered/);
    const row = sec.locator("table tbody tr", { hasText: "collector" });
    assert.equal(await row.count(), 1);
    assert.match(await row.innerText(), /uid 1000/);
    assert.match(await row.innerText(), /\/workload\/collector/);
    assert.equal(await sec.getByRole("button", { name: "Delete workload collector" }).count(), 1);
    await axe(sec, "the workloads page");
    await shot(sec, "workloads");
    await sec.context().close();
    // The operator sees the registration, without the forms.
    await page.goto(URL_ + "/workloads");
    assert.equal(await page.locator("table tbody tr", { hasText: "collector" }).count(), 1);
    assert.equal(await page.getByRole("button", { name: "Register" }).count(), 0);
  });

  await step("no page logged a script error or a Content-Security-Policy violation", async () => {
    // Expected: the 401s and 429 of the throttled logins, and the 404s.
    const unexpected = problems.filter((p) => !/status of (401|404|429)/.test(p));
    assert.deepEqual(unexpected, []);
  });
});
