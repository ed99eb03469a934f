// The device list and the device page in a real Chromium at three widths,
// driven by playwright-core, with axe-core's accessibility rules. Run by
// devices_test.go, which starts the fleet and passes it in the environment
// (SIGIL_*). Each step prints "ok - ..." or "not ok - ..."; the first
// failure stops the run and the exit status is non-zero.
"use strict";

const assert = require("node:assert/strict");
const { URL_, axe, env, login, newPage, problems, run, shot, step } = require("./scenario");

const WIDTHS = [
  { name: "phone", width: 375, height: 812 },
  { name: "tablet", width: 768, height: 1024 },
  { name: "desktop", width: 1280, height: 860 },
];

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

run(async (browser) => {
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
      await shot(page, `devices-${vp.width}`, false);
      await page.goto(URL_ + "/devices?state=quarantined");
      assert.match(await page.locator("#totals").innerText(), /^1 device matches · 75 devices in the fleet$/);
      await page.context().close();
    });

    await step(`${vp.name}: every section of the device page is one link away from its top`, async () => {
      const page = await newPage(browser, vp, state);
      await page.goto(URL_ + "/devices/" + pagedID);
      await noOverflow(page, "device page");
      await axe(page, "device page");
      await shot(page, `device-${vp.width}`, false);
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
      await shot(page, `device-quarantined-${vp.width}`, false);
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
    await shot(page, "devices-bulk-tagged", false);
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
});
