// The device list and the device page in a real Chromium at three widths,
// driven by playwright-core, with axe-core's accessibility rules. Run by
// devices_test.go, which starts the fleet and passes it in the environment
// (SIGIL_*). Each step prints "ok - ..." or "not ok - ..."; the first
// failure stops the run and the exit status is non-zero.
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { chromium } = require("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    throw new Error(`environment variable ${name} is not set (run through devices_test.go)`);
  }
  return v;
};
const URL_ = env("SIGIL_URL");
const SHOTS = env("SIGIL_SCREENSHOTS");
const AXE = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const WIDTHS = [
  { name: "phone", width: 375, height: 812 },
  { name: "tablet", width: 768, height: 1024 },
  { name: "desktop", width: 1280, height: 860 },
];

let passed = 0;
let failed = 0;
const problems = []; // script errors and CSP violations seen in any page

async function step(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (err) {
    failed++;
    console.log(`not ok - ${name}`);
    console.log(String(err && err.stack ? err.stack : err).replace(/^/gm, "    "));
    throw err;
  }
}

async function newPage(browser, vp, storageState) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: vp.width, height: vp.height }, storageState });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("dialog", (d) => d.accept()); // the confirmations of dangerous forms
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${page.url()}: ${e.message}`));
  return page;
}

async function login(page, user, password) {
  await page.goto(URL_ + "/");
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(URL_ + "/");
}

// noOverflow checks that nothing makes the page wider than the window, and
// names the widest offenders when something does.
async function noOverflow(page, what) {
  const m = await page.evaluate(() => {
    const iw = window.innerWidth;
    const wide = [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > iw + 0.5)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}.${e.className} (${Math.round(e.getBoundingClientRect().right)} px)`);
    return { sw: document.documentElement.scrollWidth, iw, wide };
  });
  assert.ok(m.sw <= m.iw, `${what}: the page is ${m.sw} px wide in a ${m.iw} px window: ${m.wide.join(", ")}`);
}

// axe runs axe-core's rules on the page and fails on serious or critical
// violations. The script is evaluated through the browser's debugging
// protocol, which the page's Content-Security-Policy does not govern (the
// page itself still may not run inline script).
async function axe(page, what) {
  await page.evaluate(AXE);
  const res = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
  });
  const bad = res.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad, [], `${what}: axe-core found ${bad.length} serious or critical violations:\n${JSON.stringify(bad, null, 2)}`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: false });
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

async function run(browser) {
  const pagedID = env("SIGIL_PAGED_ID");
  const quarantinedID = env("SIGIL_QUARANTINED_ID");
  let state;

  await step("the operator logs in", async () => {
    const page = await newPage(browser, WIDTHS[2]);
    await login(page, env("SIGIL_OPERATOR"), env("SIGIL_OPERATOR_PASSWORD"));
    state = await page.context().storageState();
    await page.context().close();
  });

  for (const vp of WIDTHS) {
    await step(`${vp.name} (${vp.width} px): the device list fits, passes axe-core and says how many devices there are`, async () => {
      const page = await newPage(browser, vp, state);
      await page.goto(URL_ + "/devices");
      await page.getByRole("heading", { name: "Devices", level: 1 }).waitFor();
      assert.match(await page.locator("#totals").innerText(), /^75 devices in the fleet$/);
      assert.match(await page.locator("#shown").innerText(), /^Devices 1–50 of 75$/);
      assert.equal(await page.locator("table.devices tbody tr").count(), 50);
      await noOverflow(page, "device list");
      await axe(page, "device list");
      await shot(page, `devices-${vp.width}`);
      await page.goto(URL_ + "/devices?state=quarantined");
      assert.match(await page.locator("#totals").innerText(), /^1 device matches · 75 devices in the fleet$/);
      await page.context().close();
    });

    await step(`${vp.name}: every section of the device page is one link away from its top`, async () => {
      const page = await newPage(browser, vp, state);
      await page.goto(URL_ + "/devices/" + pagedID);
      await noOverflow(page, "device page");
      await axe(page, "device page");
      await shot(page, `device-${vp.width}`);
      const toc = page.getByRole("navigation", { name: "On this page" });
      const box = await toc.boundingBox();
      assert.ok(box && box.y < vp.height, "the contents are in the first screen");
      const links = await toc.getByRole("link").all();
      const labels = await toc.getByRole("link").allInnerTexts();
      for (const want of ["Identity", "Certificate", "Actions", "Attestations", "Events"]) {
        assert.ok(labels.includes(want), `contents: ${labels.join(", ")}`);
      }
      for (let i = 0; i < links.length; i++) {
        await page.evaluate(() => window.scrollTo(0, 0));
        const href = await links[i].getAttribute("href");
        await links[i].click();
        await page.waitForURL(new RegExp(href + "$"));
        const top = await page.evaluate((id) => document.getElementById(id).getBoundingClientRect().top, href.slice(1));
        assert.ok(top >= -1 && top < vp.height / 2, `${labels[i]} is at ${top} px after following its link`);
      }
      await page.context().close();
    });

    await step(`${vp.name}: a quarantined device says why at the top of its page`, async () => {
      const page = await newPage(browser, vp, state);
      await page.goto(URL_ + "/devices/" + quarantinedID);
      const banner = page.getByRole("region", { name: "Quarantined" });
      const text = await banner.innerText();
      assert.ok(text.includes(env("SIGIL_QUARANTINE_REASON")), text);
      assert.match(text, /attestation/);
      const box = await banner.boundingBox();
      assert.ok(box.y + 40 < vp.height, `the banner starts at ${box.y} px, below the first screen`);
      assert.equal(await banner.getByRole("link", { name: "gw-base" }).getAttribute("href"), "/policies/gw-base");
      await noOverflow(page, "quarantined device page");
      await axe(page, "quarantined device page");
      await shot(page, `device-quarantined-${vp.width}`);
      await page.context().close();
    });
  }

  await step("the lifecycle events page back beyond the first 20", async () => {
    const page = await newPage(browser, WIDTHS[2], state);
    await page.goto(URL_ + "/devices/" + pagedID);
    const seen = [];
    const sizes = [];
    for (let n = 0; n < 5; n++) {
      const rows = await page.locator("#events table tbody tr").allInnerTexts();
      sizes.push(rows.length);
      for (const r of rows) {
        const m = r.match(/event (\d\d)/);
        assert.ok(m, r);
        assert.ok(!seen.includes(m[1]), `event ${m[1]} listed twice`);
        seen.push(m[1]);
      }
      const older = page.locator("#events").getByRole("link", { name: /Older/ });
      if ((await older.count()) === 0) {
        break;
      }
      await older.click();
      await page.waitForURL(new RegExp(`events=${n + 2}#events$`));
    }
    assert.deepEqual(sizes, [20, 20, 5]);
    assert.equal(seen[0], "44");
    assert.equal(seen[44], "00");
    await page.locator("#events").getByRole("link", { name: /Newer/ }).click();
    await page.waitForURL(/events=2#events$/);
    await page.context().close();
  });

  await step("the list sorts by a column, both ways", async () => {
    const page = await newPage(browser, WIDTHS[2], state);
    await page.goto(URL_ + "/devices");
    const serials = async () => page.locator("table.devices tbody td[data-label=Serial]").allInnerTexts();
    await page.getByRole("link", { name: "Serial", exact: true }).click();
    await page.waitForURL(/sort=serial/);
    let s = await serials();
    assert.deepEqual(s, [...s].sort(), "ascending");
    assert.equal(s[0], "SN-BR-0000");
    assert.equal(await page.locator("th[aria-sort]").getAttribute("aria-sort"), "ascending");
    await page.getByRole("link", { name: /Serial/ }).click();
    await page.waitForURL(/dir=desc/);
    s = await serials();
    assert.deepEqual(s, [...s].sort().reverse(), "descending");
    assert.equal(s[0], "SN-BR-0074");
    // On a phone the headers are gone; the search form sorts.
    const phone = await newPage(browser, WIDTHS[0], state);
    await phone.goto(URL_ + "/devices");
    await phone.getByLabel("Sort by").selectOption("last_seen");
    await phone.getByLabel("Order").selectOption("desc");
    await phone.getByRole("button", { name: "Search" }).click();
    await phone.waitForURL(/sort=last_seen/);
    const seen = await phone.locator("table.devices tbody td[data-label='Last seen'] time").evaluateAll((ts) => ts.map((t) => t.getAttribute("datetime")));
    assert.equal(seen.length, 50);
    assert.deepEqual(seen, [...seen].sort().reverse(), "newest first");
    await phone.context().close();
    await page.context().close();
  });

  await step("ticking two devices and tagging them tags those two", async () => {
    const page = await newPage(browser, WIDTHS[1], state);
    await page.goto(URL_ + "/devices");
    for (const id of [env("SIGIL_TAG_A"), env("SIGIL_TAG_B")]) {
      await page.getByRole("checkbox", { name: "Select device " + id }).check();
    }
    await page.getByText("Act on several devices").click();
    await page.getByLabel("Add tags").fill("browser-canary");
    await page.getByRole("button", { name: "Tag", exact: true }).click();
    await page.getByRole("heading", { name: "Tagged 2 devices" }).waitFor();
    await page.waitForLoadState(); // the whole page, not only its first bytes
    await noOverflow(page, "bulk result");
    await shot(page, "devices-bulk-tagged");
    await page.getByRole("link", { name: "Done" }).click();
    await page.goto(URL_ + "/devices?tag=browser-canary");
    assert.match(await page.locator("#totals").innerText(), /^2 devices match/);
    const links = await page.locator("table.devices tbody a.mono").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
    assert.deepEqual(links.sort(), ["/devices/" + env("SIGIL_TAG_A"), "/devices/" + env("SIGIL_TAG_B")].sort());
    await page.context().close();
  });

  await step("relative times carry the absolute time", async () => {
    const page = await newPage(browser, WIDTHS[2], state);
    await page.goto(URL_ + "/devices");
    const t = page.locator("table.devices tbody time").first();
    const iso = await t.getAttribute("datetime");
    assert.match(iso, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.equal(await t.getAttribute("title"), iso);
    await page.context().close();
  });

  await step("no page logged a script error or a Content-Security-Policy violation", async () => {
    assert.deepEqual(problems, []);
  });
}

main()
  .catch((err) => {
    if (failed === 0) {
      failed++;
      console.log("not ok - setting up the browser");
      console.log(String(err && err.stack ? err.stack : err).replace(/^/gm, "    "));
    }
  })
  .finally(() => {
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed > 0 || passed === 0 ? 1 : 0);
  });
