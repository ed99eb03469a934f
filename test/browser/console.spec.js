// The operator scenarios in a real Chromium, driven by playwright-core.
// Run by browser_test.go, which starts the fleet and passes it in the
// environment (SIGIL_*). Each step prints "ok - ..." or "not ok - ...";
// the first failure stops the run (later steps build on earlier ones) and
// the exit status is non-zero. "RESULT {...}" lines report values for the
// Go test to check against the fleet's state.
"use strict";

const assert = require("node:assert/strict");
const { URL_, api, env, flash, newPage, problems, run, section, shot, step } = require("./scenario");

const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

function result(obj) {
  console.log("RESULT " + JSON.stringify(obj));
}

// login fills the form with the keyboard only: the user field has focus,
// Tab moves to the password, Enter submits. It waits for the autofocus to
// land first: typing before it does loses the user name, and the failed
// login that follows throttles the next ones.
async function login(page, user, password) {
  await page.goto(URL_ + "/");
  assert.match(page.url(), /\/login\?next=/);
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === "user");
  await page.keyboard.type(user);
  await page.keyboard.press("Tab");
  await page.keyboard.type(password);
  await page.keyboard.press("Enter");
  await page.waitForURL(URL_ + "/");
}

run(async (browser) => {
  const searchID = env("SIGIL_SEARCH_ID");
  const quarantineID = env("SIGIL_QUARANTINE_ID");
  const pendingID = env("SIGIL_PENDING_ID");
  const page = await newPage(browser);

  await step("the console is served over the API's TLS, verified with the fleet CA", async () => {
    const res = await api("GET", "/login");
    assert.equal(res.status, 200);
    assert.match(res.body, /Sigil fleet console/);
  });

  await step("a visitor is sent to the login page, with the security headers", async () => {
    const res = await page.goto(URL_ + "/devices");
    assert.match(page.url(), /\/login\?next=%2Fdevices$/);
    const h = res.headers();
    assert.equal(h["content-security-policy"], CSP);
    assert.equal(h["x-frame-options"], "DENY");
    assert.equal(h["x-content-type-options"], "nosniff");
    assert.equal(h["referrer-policy"], "no-referrer");
    assert.match(h["strict-transport-security"], /max-age=\d+/);
    await shot(page, "login");
  });

  await step("a wrong password is refused on the login page", async () => {
    // (The viewer's name: a failure throttles that name's next attempt.)
    await page.getByLabel("User name").fill(env("SIGIL_VIEWER"));
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("alert").waitFor();
    assert.match(await page.getByRole("alert").innerText(), /wrong/);
  });

  await step("the operator logs in with the keyboard and sees the overview", async () => {
    await login(page, env("SIGIL_OPERATOR"), env("SIGIL_OPERATOR_PASSWORD"));
    await page.getByRole("heading", { name: "Fleet overview" }).waitFor();
    assert.match(await page.locator("header").innerText(), new RegExp(env("SIGIL_OPERATOR")));
    assert.equal(await page.locator("svg.chart").count(), 1);
    await shot(page, "overview");
  });

  await step("finds a device by its serial number and opens it", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Devices" }).click();
    await page.getByLabel("Search").fill(env("SIGIL_SEARCH_SERIAL"));
    await page.getByLabel("Search").press("Enter");
    await page.waitForURL(/\/devices\?q=/);
    const rows = page.locator("table.devices tbody tr");
    assert.equal(await rows.count(), 1);
    await shot(page, "devices");
    await rows.first().getByRole("link").click();
    await page.waitForURL(URL_ + "/devices/" + searchID);
    const identity = await page.locator("section", { has: page.getByRole("heading", { name: "Identity" }) }).innerText();
    assert.ok(identity.includes(searchID), "the device ID is shown");
    assert.match(identity, /EK fingerprint\s+([0-9a-f]{8} ){7}[0-9a-f]{8}/);
    assert.match(identity, /Trust path\s+ek-ca/);
    await page.getByRole("heading", { name: "Attestation history" }).waitFor();
    await shot(page, "device");
  });

  await step("creates a campaign from the approved release and watches it complete", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Campaigns" }).click();
    await page.getByRole("heading", { name: "Firmware campaigns", level: 1 }).waitFor();
    await page.waitForLoadState(); // the whole page, not only its first bytes
    // Only the approved release is offered; the one waiting for approval is not.
    const options = await page.getByLabel("Release", { exact: true }).locator("option").allInnerTexts();
    assert.equal(options.length, 1, options.join(" | "));
    assert.ok(options[0].startsWith(env("SIGIL_RELEASE")), options[0]);
    await page.getByLabel("Name (optional)").fill("gateway rollout");
    await page.getByLabel("Group", { exact: true }).fill("gateways");
    await page.getByLabel("Device timeout").selectOption("5m");
    await page.getByLabel("Justification", { exact: true }).fill("monthly gateway update, change 4711");
    await shot(page, "campaign-new");
    await page.getByRole("button", { name: "Create campaign" }).click();
    await page.getByRole("heading", { name: "Campaign created" }).waitFor();
    await page.waitForLoadState(); // the whole page, not only its first bytes
    await page.getByRole("link", { name: "Done" }).click();
    await page.waitForURL(/\/campaigns\/cmp_[0-9a-f]+$/);
    const id = page.url().split("/").pop();
    assert.equal(await page.locator("#campaign-state").innerText(), "draft");
    await page.getByLabel("Start: justification").fill("change 4711 approved by the board");
    await page.getByRole("button", { name: "Start campaign" }).click();
    await page.waitForURL(/\?ok=campaign\.start$/);
    await flash(page, /Started/);
    // Watch the progress: reload the page until the campaign is done.
    let state = "";
    for (const deadline = Date.now() + 120000; Date.now() < deadline; ) {
      state = await page.locator("#campaign-state").innerText();
      if (["completed", "paused", "aborted"].includes(state)) {
        break;
      }
      await page.waitForTimeout(1000);
      await page.goto(URL_ + "/campaigns/" + id);
    }
    assert.equal(state, "completed", await section(page, "Progress").innerText());
    const progress = await section(page, "Progress").innerText();
    assert.match(progress, /Wave 1 \(canary\) · 1 device\b/);
    assert.match(progress, /(\d+) of \1 committed/);
    const steps = await page.locator("table.campaign-devices tbody tr td:nth-child(3)").allInnerTexts();
    assert.ok(steps.length >= 2, "devices listed: " + steps.length);
    assert.ok(steps.every((s) => s.trim() === "committed"), steps.join(", "));
    await shot(page, "campaign");
    await page.getByRole("link", { name: "All campaigns" }).click();
    const row = page.locator("table.campaigns tbody tr", { hasText: "gateway rollout" });
    assert.match(await row.innerText(), /completed/);
    await shot(page, "campaigns");
    result({ campaign_id: id });
  });

  await step("approves the pending device from the enrollment page", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Enrollment" }).click();
    await shot(page, "enrollment");
    await page.getByRole("button", { name: "Approve " + pendingID }).click();
    await page.waitForURL(/\/enrollment\?ok=enrollment\.approve$/);
    await flash(page, /Approved/);
  });

  await step("quarantines a device with a justification", async () => {
    await page.goto(URL_ + "/devices/" + quarantineID);
    // Without a justification the browser does not even submit.
    await page.getByRole("button", { name: "Quarantine", exact: true }).click();
    assert.equal(page.url(), URL_ + "/devices/" + quarantineID);
    await page.getByLabel("Quarantine: justification").fill("suspicious outbound traffic seen by the IDS");
    await page.getByRole("button", { name: "Quarantine", exact: true }).click();
    await page.waitForURL(/\?ok=device\.quarantine$/);
    await flash(page, /Quarantined/);
    assert.match(await page.locator("h1").innerText(), /quarantined/);
    await shot(page, "device-quarantined");
  });

  await step("releases it with a justification", async () => {
    await page.getByLabel("Release: justification").fill("traffic was the vendor's update check");
    await page.getByRole("button", { name: "Release from quarantine" }).click();
    await page.waitForURL(/\?ok=device\.release$/);
    await flash(page, /Released/);
    assert.match(await page.locator("h1").innerText(), /active/);
    const events = await page.locator("section", { has: page.getByRole("heading", { name: "Lifecycle events" }) }).innerText();
    assert.ok(events.includes("released by " + env("SIGIL_OPERATOR") + ": traffic was the vendor's update check"));
  });

  await step("creates an enrollment token, shown once", async () => {
    await page.goto(URL_ + "/enrollment");
    // An operator's token grants no model or group (that needs secrets.write).
    assert.equal(await page.getByLabel(/Model the device gets/).count(), 0);
    await page.getByLabel("Valid for").selectOption("24h");
    await page.getByRole("button", { name: "Create token" }).click();
    await page.getByRole("heading", { name: "Enrollment token created" }).waitFor();
    await page.waitForLoadState(); // the whole page, not only its first bytes
    const token = await page.getByLabel("Token").inputValue();
    assert.match(token, /^sgt_/);
    await shot(page, "enrollment-token");
    await page.getByRole("link", { name: "Done" }).click();
    assert.ok(!(await page.content()).includes(token), "the token is shown only once");
    result({ enrollment_token: token });
  });

  await step("creates an API token that works, then revokes it", async () => {
    const name = "browser-ci";
    await page.goto(URL_ + "/settings");
    await page.getByLabel("Name").fill(name);
    await page.getByLabel("Scope").selectOption("viewer");
    await page.getByRole("button", { name: "Create API token" }).click();
    await page.getByRole("heading", { name: "API token created" }).waitFor();
    await page.waitForLoadState(); // the whole page, not only its first bytes
    const secret = await page.getByLabel("Token").inputValue();
    assert.match(secret, /^sga_/);
    let res = await api("GET", "/api/v1/me", secret);
    assert.equal(res.status, 200, res.body);
    assert.equal(JSON.parse(res.body).role, "viewer");
    await page.getByRole("link", { name: "Done" }).click();
    await page.getByRole("button", { name: "Revoke token " + name }).click();
    await page.waitForURL(/\/settings\?ok=token\.revoke$/);
    await flash(page, /revoked/);
    res = await api("GET", "/api/v1/me", secret);
    assert.equal(res.status, 401);
    result({ api_token_name: name });
  });

  await step("acknowledges an alert with a note", async () => {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Alerts" }).click();
    await page.getByRole("heading", { name: "Alerts", level: 1 }).waitFor();
    await page.waitForLoadState(); // the whole page, not only its first bytes
    const rule = env("SIGIL_ALERT_RULE");
    const row = page.locator("table.alerts tbody tr", { hasText: rule });
    assert.equal(await row.count(), 1);
    assert.match(await row.innerText(), /firing/);
    const note = "looking into it: a stray updater process";
    await row.getByLabel("Note (optional)", { exact: true }).fill(note);
    await shot(page, "alerts");
    await row.getByRole("button", { name: "Acknowledge alert " + env("SIGIL_ALERT_ID") }).click();
    await page.waitForURL(/\/alerts\?ok=alert\.ack$/);
    await flash(page, /Acknowledged/);
    const after = await page.locator("table.alerts tbody tr", { hasText: rule }).innerText();
    assert.ok(after.includes("acknowledged by " + env("SIGIL_OPERATOR") + " just now: " + note), after);
    result({ alert_note: note });
  });

  await step("a viewer sees the device but no action buttons", async () => {
    const viewer = await newPage(browser);
    await login(viewer, env("SIGIL_VIEWER"), env("SIGIL_VIEWER_PASSWORD"));
    await viewer.goto(URL_ + "/devices/" + searchID);
    await viewer.getByRole("heading", { name: "Identity" }).waitFor();
    assert.equal(await viewer.locator("form[action^='/devices/']").count(), 0);
    assert.equal(await viewer.getByRole("button", { name: "Quarantine" }).count(), 0);
    await viewer.context().close();
  });

  await step("an admin's views: settings, CA, policies, releases, approvals, audit (verified), risk, device detail", async () => {
    const admin = await newPage(browser);
    await login(admin, env("SIGIL_ADMIN"), env("SIGIL_ADMIN_PASSWORD"));
    for (const [p, heading, name] of [
      ["/settings", "Users and API tokens", "settings"],
      ["/ca", "Certificate authority", "ca"],
      ["/policies", "Reference policies", "policies"],
    ]) {
      await admin.goto(URL_ + p);
      await admin.getByRole("heading", { name: heading, level: 1 }).waitFor();
      if (name === "settings") {
        assert.equal(await admin.getByRole("button", { name: "Create user" }).count(), 1);
      }
      await shot(admin, name);
    }

    // The release its uploader may not approve says so, with no button.
    await admin.goto(URL_ + "/releases");
    const mine = admin.getByRole("region", { name: "Release gw-os 2.0.1" });
    assert.match(await mine.innerText(), /you uploaded this release, so you cannot approve it/);
    assert.equal(await mine.getByRole("button", { name: /Approve/ }).count(), 0);
    await shot(admin, "releases");

    // The approvals inbox: what waits and why; approve it.
    await admin.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Approvals" }).click();
    const approvalID = env("SIGIL_APPROVAL_ID");
    const req = admin.getByRole("article", { name: "Request " + approvalID });
    const text = await req.innerText();
    assert.ok(text.includes(env("SIGIL_APPROVAL_WHY")) && text.includes("Attestation policy change"), text);
    await shot(admin, "approvals");
    await req.getByLabel("Comment (optional)").fill("matches the bench inventory");
    await req.getByRole("button", { name: "Approve request " + approvalID }).click();
    await admin.waitForURL(/\/approvals\?ok=approval\.approve$/);
    await flash(admin, /Approved/);
    assert.match(await section(admin, "Decided").innerText(), /executed/);

    // The audit log: browse, then verify the chain.
    await admin.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Audit" }).click();
    assert.ok((await admin.locator("table.audit tbody tr").count()) > 0);
    await shot(admin, "audit");
    await admin.getByRole("button", { name: "Verify the log" }).click();
    await admin.getByRole("heading", { name: "Audit log verified" }).waitFor();
    await admin.waitForLoadState(); // the whole page, not only its first bytes
    assert.match(await admin.locator("dl.facts").innerText(), /Entries verified\s+[1-9]\d*/);
    await shot(admin, "audit-verified");

    // Devices by risk, and the device page's new sections.
    await admin.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Risk" }).click();
    assert.ok((await admin.locator("table tbody tr").count()) >= 2);
    await shot(admin, "risk");
    await admin.goto(URL_ + "/devices/" + searchID);
    for (const h of ["Telemetry", "Firmware history", "Risk", "Audit trail"]) {
      await admin.getByRole("heading", { name: h, exact: true }).waitFor();
    }
    assert.ok((await admin.locator("svg.chart.line polyline").count()) >= 1, "a telemetry chart is drawn");
    const history = await section(admin, "Firmware history").innerText();
    assert.ok(history.includes("gateway rollout") && history.includes("committed"), history);
    assert.match(await section(admin, "Risk").innerText(), /Score\s+\d+/);
    await shot(admin, "device-detail");
    await admin.context().close();
  });

  await step("logs out; the session is over", async () => {
    await page.goto(URL_ + "/");
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(/\/login\?bye=1$/);
    await flash(page, /logged out/);
    await page.goto(URL_ + "/devices");
    assert.match(page.url(), /\/login\?next=/);
  });

  await step("no page logged a script error or a Content-Security-Policy violation", async () => {
    // The only console error expected is the 401 of the wrong password.
    const unexpected = problems.filter((p) => !/status of 401/.test(p));
    assert.deepEqual(unexpected, []);
  });
});
