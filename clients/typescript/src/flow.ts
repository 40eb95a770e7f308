// The README's first steps, written against types generated from mailroom's OpenAPI document
// (`npm run generate`) with openapi-fetch: no casts, no `any`. CI compiles it with
// `tsc --noEmit --strict` and runs it against the real binary and a local SMTP server.
//
//   MAILROOM_URL=http://127.0.0.1:8080 MAILROOM_TOKEN=... SMTP_PORT=2525 node dist/flow.js
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Schemas = components["schemas"];

const baseUrl = process.env.MAILROOM_URL ?? "http://127.0.0.1:8080";
const token = process.env.MAILROOM_TOKEN;
if (!token) {
  throw new Error("set MAILROOM_TOKEN (mailroom token --sub admin --scope '...')");
}
const smtpPort = Number(process.env.SMTP_PORT ?? "2525");

const api = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });

/** Fails with the problem document the server sent. */
function check<T>(what: string, result: { data?: T; error?: unknown; response: Response }): T {
  if (result.data === undefined) {
    throw new Error(`${what}: HTTP ${result.response.status} ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

// 1. The SMTP server, written with the ETag of what we read (412 if someone changed it meanwhile).
const current = await api.GET("/settings/smtp");
const etag = current.response.headers.get("ETag");
const smtp: Schemas["SmtpSettingsInput"] = {
  host: "127.0.0.1",
  port: smtpPort,
  security: "none",
  from_address: "portal@example.com",
  from_name: "Developer Portal",
};
const saved = check(
  "PUT /settings/smtp",
  await api.PUT("/settings/smtp", {
    body: smtp,
    params: { header: etag ? { "If-Match": etag } : {} },
  }),
);
console.log(`smtp: ${saved.host}:${saved.port} (${saved.security}), password set: ${saved.password_set}`);

// 2. Where admin notifications go, and one custom subject.
check(
  "PUT /settings/admin-email",
  await api.PUT("/settings/admin-email", { body: { email: "admins@example.com" } }),
);
const subjects = check(
  "PATCH /settings/subjects",
  await api.PATCH("/settings/subjects", {
    body: { subjects: { access_request_approved: "Access to {{ product_name }} granted" } },
  }),
);
console.log(`subjects: ${subjects.subjects.length} events`);

// 3. Test the saved settings (no body), step by step.
const report = check("POST /settings/smtp/test", await api.POST("/settings/smtp/test", {}));
const steps = report.steps.map((s: Schemas["Step"]) => `${s.step}:${s.ok ? "ok" : "failed"}`);
if (!report.ok) {
  throw new Error(`SMTP test failed at ${report.error?.step}: ${report.error?.code} ${report.error?.message}`);
}
console.log(`smtp test: ${steps.join(" ")}`);

// 4. A notification, with typed template data; the answer is immediate (202).
const data: Schemas["TemplateData"] = { product_name: "Payments API", user_name: "Ada" };
const accepted = check(
  "POST /notifications",
  await api.POST("/notifications", {
    body: { event: "access_request_approved", to: "ada@example.com", to_name: "Ada Lovelace", data },
    params: { header: { "Idempotency-Key": `typescript-${Date.now()}` } },
  }),
);
console.log(`accepted: ${accepted.id} (${accepted.status})`);

// 5. Wait until it is no longer queued: delivery follows the 202 at once.
let notification: Schemas["NotificationView"] | undefined;
const deadline = Date.now() + 30_000;
for (;;) {
  notification = check(
    "GET /notifications/{id}",
    await api.GET("/notifications/{id}", { params: { path: { id: accepted.id } } }),
  );
  const settled: Schemas["Status"][] = ["sent", "failed", "expired", "suppressed"];
  if (settled.includes(notification.status) || Date.now() > deadline) break;
  await new Promise((resolve) => setTimeout(resolve, 200));
}
const outcomes = notification.attempts.map((a: Schemas["AttemptView"]) => a.outcome);
console.log(`status: ${notification.status} after ${outcomes.join(", ")}; subject: ${notification.subject}`);
if (notification.status !== "sent") {
  throw new Error(`the notification ended ${notification.status}: ${notification.status_reason ?? ""}`);
}

// 6. Typed statistics and audit details.
const stats = check("GET /notifications/stats", await api.GET("/notifications/stats"));
const audit = check("GET /settings/audit", await api.GET("/settings/audit", { params: { query: { limit: 5 } } }));
const changed = audit.entries.flatMap((e: Schemas["AuditEntry"]) => e.details.changes ?? []).map((c) => c.field);
console.log(`sent so far: ${stats.counts.sent}; recently changed: ${changed.join(", ")}`);
console.log("sent");
