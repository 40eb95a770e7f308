// Drives the console in Debian's chromium (headless, no browser download) against a running
// mailroom and a real SMTP server on 127.0.0.1. Run by `.ci/browser.sh`, which starts both and
// passes their addresses; each page is checked with axe-core and saved as a screenshot.
//
//   MAILROOM_URL  SMTP_PORT  CLOSED_PORT  ADMIN_TOKEN  READER_TOKEN  SCREENSHOTS
import { chromium } from "playwright-core";
import fs from "node:fs";
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("MAILROOM_URL");
const shots = env("SCREENSHOTS");
fs.mkdirSync(shots, { recursive: true });
const axeSource = fs.readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
let failures = 0;

/** Runs one scenario in a fresh page; a failure is reported and counted, the rest still run. */
async function scenario(name, body) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  // Chromium logs every 4xx answer as an error; the refusals a scenario provokes (401, 412, 422)
  // are what it checks, so only other errors count.
  const expected = /Failed to load resource: the server responded with a status of (401|412|422)/;
  page.on("console", (m) => { if (m.type() === "error" && !expected.test(m.text())) problems.push(m.text()); });
  page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("data:")) problems.push(`request to ${r.url()}`); });
  try {
    await body(page);
    assert.deepEqual(problems, [], "console errors or foreign requests");
    console.log(`ok - ${name}`);
  } catch (e) {
    failures++;
    console.log(`not ok - ${name}\n  ${String(e.stack ?? e).split("\n").join("\n  ")}`);
    await page.screenshot({ path: `${shots}/failed-${name.replace(/\W+/g, "-")}.png`, fullPage: true }).catch(() => {});
  } finally {
    await page.close();
  }
}

/** No serious or critical axe-core violation on the page as it is now. */
async function accessible(page, what) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`), [], `${what}: accessibility`);
}

async function signIn(page, token) {
  await page.goto(`${base}/console/`);
  await accessible(page, "sign-in");
  await page.screenshot({ path: `${shots}/sign-in.png` });
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "SMTP" }).waitFor();
}

await scenario("an SMTP test fails at connect with its hint, then passes every step once the port is fixed", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  await page.getByLabel("Host", { exact: true }).fill("127.0.0.1");
  await page.getByLabel("Port").fill(env("CLOSED_PORT"));
  await page.getByLabel("Security").selectOption("none");
  await page.getByLabel("From address").fill("portal@example.com");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  await page.getByRole("button", { name: "Test connection" }).click();
  const failed = page.locator('.report[data-ok="false"]');
  await failed.waitFor();
  assert.match(await failed.innerText(), /Failed at connect/);
  assert.match(await failed.innerText(), /Hint: check the port/);
  await page.getByLabel("Port").fill(env("SMTP_PORT"));
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  await page.getByLabel("Send a test message to").fill("ada@example.com");
  await page.getByRole("button", { name: "Test connection" }).click();
  const passed = page.locator('.report[data-ok="true"]');
  await passed.waitFor();
  const steps = await passed.locator("li").evaluateAll((items) => items.map((i) => i.dataset.step));
  assert.deepEqual(steps, ["resolve", "connect", "greeting", "ehlo", "mail_from", "rcpt_to", "data"]);
  await accessible(page, "SMTP");
  await page.screenshot({ path: `${shots}/smtp.png`, fullPage: true });
});

await scenario("a validation error appears next to its field", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  await page.getByLabel("Port").fill("70000");
  await page.getByRole("button", { name: "Save" }).click();
  const error = page.locator('[data-field="port"] .error');
  await error.filter({ hasText: "between 1 and 65535" }).waitFor();
  assert.equal(await page.getByLabel("Port").getAttribute("aria-invalid"), "true");
});

await scenario("the admin address and default locale are saved on the General page", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  await page.getByRole("link", { name: "General" }).click();
  await page.getByRole("heading", { name: "General" }).waitFor();
  await page.getByLabel("Admin email").fill("admins@example.com");
  await page.getByLabel("Default locale").fill("de");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  const saved = await page.evaluate(async (token) => {
    const r = await fetch("/settings/admin-email", { headers: { Authorization: `Bearer ${token}` } });
    return (await r.json()).email;
  }, env("ADMIN_TOKEN"));
  assert.equal(saved, "admins@example.com");
  await accessible(page, "General");
  await page.screenshot({ path: `${shots}/general.png`, fullPage: true });
});

await scenario("a subject is saved on the Subjects page", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  await page.getByRole("link", { name: "Subjects" }).click();
  await page.getByRole("heading", { name: "Subjects" }).waitFor();
  await page.getByLabel("access_request_approved").fill("Access to {{ product_name }} granted");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  const subjects = await page.evaluate(async (token) => {
    const r = await fetch("/settings/subjects", { headers: { Authorization: `Bearer ${token}` } });
    return (await r.json()).subjects;
  }, env("ADMIN_TOKEN"));
  assert.equal(subjects.find((x) => x.event === "access_request_approved").subject, "Access to {{ product_name }} granted");
  await accessible(page, "Subjects");
  await page.screenshot({ path: `${shots}/subjects.png`, fullPage: true });
});

await scenario("editing a German template changes the live preview, and Save stores it", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  await page.getByRole("link", { name: "Templates" }).click();
  await page.getByRole("heading", { name: "Templates" }).waitFor();
  await page.getByLabel("Event").selectOption("access_request_approved");
  await page.getByLabel("Locale").fill("de");
  await page.getByLabel("Locale").dispatchEvent("change");
  await page.locator(".preview-subject").filter({ hasText: /\S/ }).waitFor();
  await page.getByLabel("Subject").fill("Zugang zu {{ product_name }} gewährt");
  await page.locator(".preview-subject").filter({ hasText: "Zugang zu" }).waitFor();
  await page.getByLabel("Text").fill("Hallo {{ user_name }}, willkommen.");
  await page.locator(".preview-text").filter({ hasText: "willkommen" }).waitFor();
  assert.equal(await page.locator("iframe.preview-html").getAttribute("sandbox"), "");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  await accessible(page, "Templates");
  await page.screenshot({ path: `${shots}/templates.png`, fullPage: true });
});

await scenario("a test notification reaches sent in the delivery log", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  await page.getByRole("link", { name: "Delivery log" }).click();
  await page.getByRole("heading", { name: "Delivery log" }).waitFor();
  await page.getByLabel("Event", { exact: true }).nth(1).selectOption("user_deactivated");
  await page.getByLabel("Recipient").nth(1).fill("ada@example.com");
  await page.getByRole("button", { name: "Send test notification" }).click();
  await page.getByText("Accepted:").waitFor();
  await page.locator('tbody tr[data-status="sent"]').first().waitFor({ timeout: 20000 });
  await page.locator('tbody tr[data-status="sent"] button').first().click();
  await page.locator('[data-detail="status"]').filter({ hasText: "sent" }).waitFor();
  await accessible(page, "Delivery log");
  await page.screenshot({ path: `${shots}/delivery.png`, fullPage: true });
});

await scenario("branding, suppressions, webhooks and audit pages work and are accessible", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  await page.getByRole("link", { name: "Branding" }).click();
  await page.getByRole("heading", { name: "Branding" }).waitFor();
  await page.getByLabel("Product name").fill("Developer Portal");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  await accessible(page, "Branding");
  await page.screenshot({ path: `${shots}/branding.png`, fullPage: true });

  await page.getByRole("link", { name: "Suppressions" }).click();
  await page.getByRole("heading", { name: "Suppressions" }).waitFor();
  await page.getByLabel("Address").fill("bounced@example.com");
  await page.getByRole("button", { name: "Add" }).click();
  await page.getByRole("cell", { name: "bounced@example.com", exact: true }).waitFor();
  await accessible(page, "Suppressions");
  await page.screenshot({ path: `${shots}/suppressions.png`, fullPage: true });
  await page.getByRole("button", { name: "Remove bounced@example.com" }).click();
  await page.getByText("bounced@example.com removed.").waitFor();

  await page.getByRole("link", { name: "Webhooks" }).click();
  await page.getByRole("heading", { name: "Webhooks" }).waitFor();
  await page.getByLabel("URL").fill(`${base}/hook`);
  await page.getByRole("button", { name: "Add" }).click();
  await page.getByText("Signing secret (shown once): whsec_").waitFor();
  await accessible(page, "Webhooks");
  await page.screenshot({ path: `${shots}/webhooks.png`, fullPage: true });

  await page.getByRole("link", { name: "Audit" }).click();
  await page.getByRole("heading", { name: "Audit" }).waitFor();
  await page.getByRole("cell", { name: "settings.updated" }).first().waitFor();
  await accessible(page, "Audit");
  await page.screenshot({ path: `${shots}/audit.png`, fullPage: true });
});

await scenario("every page fits a 360 px wide screen", async (page) => {
  await page.setViewportSize({ width: 360, height: 740 });
  await signIn(page, env("ADMIN_TOKEN"));
  for (const name of ["SMTP", "General", "Subjects", "Templates", "Branding", "Delivery log", "Suppressions", "Webhooks", "Audit"]) {
    await page.getByRole("link", { name, exact: true }).click();
    await page.getByRole("heading", { name, level: 1 }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${name} is ${overflow} px wider than the screen`);
  }
  await page.getByRole("link", { name: "SMTP", exact: true }).click();
  await page.getByRole("heading", { name: "SMTP", level: 1 }).waitFor();
  await page.screenshot({ path: `${shots}/smtp-360.png`, fullPage: true });
});

await scenario("signing in and reaching the SMTP test works with the keyboard alone, focus visible", async (page) => {
  await page.goto(`${base}/console/`);
  const focused = () => page.evaluate(() => {
    const el = document.activeElement;
    return { name: el?.getAttribute("name") ?? el?.textContent?.trim() ?? "", outline: el ? getComputedStyle(el).outlineStyle : "" };
  });
  const tabTo = async (want, max = 40) => {
    for (let i = 0; i < max; i++) {
      await page.keyboard.press("Tab");
      const f = await focused();
      if (f.name === want) return f;
    }
    throw new Error(`Tab never reached ${want}`);
  };
  const token = await tabTo("token");
  assert.notEqual(token.outline, "none", "the focused field shows no focus ring");
  await page.keyboard.type(env("ADMIN_TOKEN"));
  await tabTo("Sign in");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "SMTP", level: 1 }).waitFor();
  const button = await tabTo("Test connection", 80);
  assert.notEqual(button.outline, "none", "the focused button shows no focus ring");
  await page.keyboard.press("Enter");
  await page.locator(".report").waitFor();
});

await scenario("a settings:read token sees the settings with Save disabled", async (page) => {
  await signIn(page, env("READER_TOKEN"));
  assert.equal(await page.getByRole("button", { name: "Save" }).isDisabled(), true);
  assert.equal(await page.getByLabel("Host", { exact: true }).isDisabled(), true);
  await page.getByText("can read these settings but not change them").waitFor();
});

await scenario("the token lives in sessionStorage only, and Sign out forgets it", async (page) => {
  await signIn(page, env("ADMIN_TOKEN"));
  const stored = await page.evaluate(() => ({ session: sessionStorage.length, local: localStorage.length, cookie: document.cookie }));
  assert.deepEqual(stored, { session: 1, local: 0, cookie: "" });
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
});

await scenario("a refused token returns to sign-in with a message", async (page) => {
  await page.goto(`${base}/console/`);
  await page.evaluate(() => sessionStorage.setItem("mailroom.token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4IiwiZXhwIjo0MTAyNDQ0ODAwfQ.bad"));
  await page.goto(`${base}/console/#/smtp`);
  await page.getByText("Sign in again").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
});

await browser.close();
console.log(failures ? `${failures} scenario(s) failed` : "all scenarios passed");
process.exit(failures ? 1 : 0);
