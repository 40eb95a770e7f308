// The mailroom console: a client of the public API, signed in with a bearer token kept in
// sessionStorage (for this tab only, in no cookie). No framework and no build step: the DOM is
// built with `h`, which sets text, never HTML, so nothing the API returns can run as script.

const TOKEN_KEY = "mailroom.token";
const main = /** @type {HTMLElement} */ (document.getElementById("main"));

/** @typedef {{status: number, body: any, etag: string | null}} Reply */

/**
 * An element with attributes (`on*` as listeners, booleans as presence) and children.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

// ---- session ---------------------------------------------------------------------------------

/** The claims of a JWT, read without verifying it (the API verifies; this only shapes the UI). */
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  /** @type {Set<string>} */
  scopes: new Set(),
  admin: false,
  sub: "",
  load() {
    const token = this.token;
    const c = token ? claims(token) : null;
    const words = (v) => (Array.isArray(v) ? v.join(" ") : typeof v === "string" ? v : "").split(/\s+/).filter(Boolean);
    this.scopes = new Set([...words(c?.scope), ...words(c?.scp)]);
    this.admin = words(c?.roles).includes("admin");
    this.sub = c?.sub ?? "";
    return c;
  },
  can(scope) { return this.admin || this.scopes.has(scope); },
};

/** A message for the next sign-in page (the hash change renders it). */
let flash = "";

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session.load();
  flash = message;
  if (location.hash === "#/sign-in") render();
  else location.hash = "#/sign-in";
}

/**
 * Calls the API with the session's token. A 401 ends the session and returns to sign-in.
 * @param {string} method
 * @param {string} path
 * @param {any} [body]
 * @param {Record<string, string>} [headers]
 * @returns {Promise<Reply>}
 */
async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (session.token) init.headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
  if (response.status === 401) {
    signOut("Your token has expired or was refused. Sign in again.");
    throw new Error("signed out");
  }
  return { status: response.status, body: parsed, etag: response.headers.get("ETag") };
}

// ---- forms -----------------------------------------------------------------------------------

/**
 * A labelled control with a place for its error; `name` is the API's field name.
 * @param {string} label
 * @param {HTMLElement} control
 * @param {string} [help]
 */
function field(label, control, help) {
  const id = `f-${control.getAttribute("name")}`.replace(/[^a-z0-9-]/gi, "-");
  control.id = id;
  const err = h("div", { class: "error", id: `${id}-error`, role: "alert" });
  const helpEl = help ? h("div", { class: "help", id: `${id}-help` }, help) : null;
  control.setAttribute("aria-describedby", `${id}-error${helpEl ? ` ${id}-help` : ""}`);
  if (control.getAttribute("type") === "checkbox") {
    return h("div", { class: "field", "data-field": control.getAttribute("name") },
      h("div", { class: "check" }, control, h("label", { for: id }, label)), helpEl, err);
  }
  return h("div", { class: "field", "data-field": control.getAttribute("name") },
    h("label", { for: id }, label), control, helpEl, err);
}

const input = (name, type = "text", attrs = {}) => h("input", { name, type, autocomplete: "off", ...attrs });

/** @param {string} name @param {[string, string][]} options */
function select(name, options) {
  return h("select", { name }, ...options.map(([value, text]) => h("option", { value }, text)));
}

/** Clears the field errors in `root`, then shows those of a 422 problem next to their fields. */
function showErrors(root, problem) {
  for (const el of root.querySelectorAll(".error")) el.textContent = "";
  for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const unplaced = [];
  for (const e of problem?.errors ?? []) {
    const key = e.field.replace(/^settings\./, "");
    const box = root.querySelector(`[data-field="${CSS.escape(key)}"]`);
    if (!box) { unplaced.push(`${e.field}: ${e.message}`); continue; }
    box.querySelector(".error").textContent = e.message;
    box.querySelector("input, select, textarea")?.setAttribute("aria-invalid", "true");
  }
  return unplaced;
}

/** @param {HTMLElement} box @param {string} text @param {"ok" | "bad" | ""} [kind] */
function notice(box, text, kind = "") {
  box.replaceChildren(text ? h("div", { class: `notice ${kind}`, role: kind === "bad" ? "alert" : "status" }, text) : "");
}

function disableAll(form) {
  for (const el of form.querySelectorAll("input, select, textarea, button[data-write]")) el.disabled = true;
}

// ---- pages -----------------------------------------------------------------------------------

function signInPage(message) {
  const token = h("textarea", { name: "token", rows: 4, required: true, spellcheck: "false" });
  const status = h("div");
  const form = h("form", {
    novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const value = token.value.trim();
      if (!claims(value)) { notice(status, "That is not a token: paste the output of `mailroom token`.", "bad"); return; }
      sessionStorage.setItem(TOKEN_KEY, value);
      session.load();
      const probe = await fetch("/settings/smtp", { headers: { Authorization: `Bearer ${value}` } });
      if (probe.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        notice(status, "The token was refused (expired, or signed with another key).", "bad");
        return;
      }
      location.hash = "#/smtp";
    },
  },
    field("Token", token, "A token minted with `mailroom token`; kept for this tab only."),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Sign in")),
    status);
  if (message) notice(status, message, "bad");
  return [h("h1", {}, "Sign in"), form];
}

const SECURITY = [["none", "none"], ["starttls", "STARTTLS"], ["tls", "TLS"]];
const PROVIDERS = [["microsoft", "Microsoft"], ["google", "Google"], ["generic", "Generic"]];

/** A write-only secret: "set" with Replace / Remove, never the value. */
function secretControl(name, label, isSet, help) {
  const state = { change: undefined };
  const value = input(name, "password", { autocomplete: "new-password" });
  const status = h("span", {}, isSet ? "set" : "not set");
  const replace = h("button", { type: "button", "data-write": true, onclick: () => { value.hidden = false; value.focus(); state.change = "replace"; } }, "Replace");
  const remove = h("button", { type: "button", "data-write": true, onclick: () => { value.hidden = true; value.value = ""; state.change = "remove"; status.textContent = "will be removed on Save"; } }, "Remove");
  value.hidden = isSet;
  if (!isSet) state.change = "replace";
  const box = field(label, value, help);
  box.insertBefore(h("div", { class: "secret" }, status, isSet ? replace : null, isSet ? remove : null), value);
  return {
    box,
    /** The field's part of a PUT body: absent keeps it, null removes it. */
    apply(body) {
      if (state.change === "remove") body[name] = null;
      else if (state.change === "replace" && value.value !== "") body[name] = value.value;
    },
  };
}

async function smtpPage() {
  const reply = await api("GET", "/settings/smtp");
  if (reply.status !== 200) return [h("h1", {}, "SMTP"), h("div", { class: "notice bad" }, reply.body?.detail ?? "Cannot load the SMTP settings.")];
  const saved = reply.body;
  let etag = reply.etag;
  const o = saved.oauth2 ?? {};
  const c = {
    host: input("host", "text", { value: saved.host ?? "" }),
    port: input("port", "number", { min: 1, max: 65535, value: saved.port ?? "" }),
    security: select("security", SECURITY),
    username: input("username", "text", { value: saved.username ?? "" }),
    from_address: input("from_address", "email", { value: saved.from_address ?? "" }),
    from_name: input("from_name", "text", { value: saved.from_name ?? "" }),
    reply_to: input("reply_to", "email", { value: saved.reply_to ?? "" }),
    timeout_seconds: input("timeout_seconds", "number", { min: 1, max: 120, value: saved.timeout_seconds ?? 10 }),
    tls_verify: input("tls_verify", "checkbox", { checked: saved.tls_verify !== false }),
    auth: select("auth", [["password", "Password"], ["oauth2", "OAuth 2.0"]]),
    provider: select("oauth2.provider", PROVIDERS),
    tenant_id: input("oauth2.tenant_id", "text", { value: o.tenant_id ?? "" }),
    client_id: input("oauth2.client_id", "text", { value: o.client_id ?? "" }),
    scope: input("oauth2.scope", "text", { value: o.scope ?? "" }),
    token_url: input("oauth2.token_url", "text", { value: saved.oauth2 ? o.token_url ?? "" : "" }),
  };
  c.security.value = saved.security ?? "starttls";
  c.auth.value = saved.auth ?? "password";
  c.provider.value = o.provider ?? "microsoft";
  const password = secretControl("password", "Password", saved.password_set, "Write-only: the API never returns it.");
  const clientSecret = secretControl("oauth2.client_secret", "Client secret", !!o.client_secret_set);
  const serviceAccount = secretControl("oauth2.service_account_json", "Service account key (JSON)", !!o.service_account_json_set);
  const refreshToken = secretControl("oauth2.refresh_token", "Refresh token", !!o.refresh_token_set);
  const oauthBox = h("fieldset", {}, h("legend", {}, "OAuth 2.0"),
    field("Provider", c.provider), field("Tenant", c.tenant_id, "Microsoft: the directory (tenant) ID."),
    field("Client ID", c.client_id), clientSecret.box, serviceAccount.box, refreshToken.box,
    field("Scope", c.scope), field("Token URL", c.token_url, "Generic providers: the token endpoint."));
  // Each provider's own fields: Microsoft a tenant and a client secret, Google a service
  // account key, a generic provider a token URL and a refresh token.
  const byProvider = {
    microsoft: [c.tenant_id, c.client_id, clientSecret.box],
    google: [serviceAccount.box],
    generic: [c.token_url, c.client_id, clientSecret.box, refreshToken.box],
  };
  const boxOf = (el) => (el.classList.contains("field") ? el : el.closest(".field"));
  const showAuth = () => {
    oauthBox.hidden = c.auth.value !== "oauth2";
    password.box.hidden = c.auth.value === "oauth2";
    const shown = new Set(byProvider[c.provider.value].map(boxOf));
    for (const el of [c.tenant_id, c.client_id, c.token_url, clientSecret.box, serviceAccount.box, refreshToken.box]) {
      boxOf(el).hidden = !shown.has(boxOf(el));
    }
  };
  c.auth.addEventListener("change", showAuth);
  c.provider.addEventListener("change", showAuth);

  const status = h("div");
  let dirty = false;
  const body = () => {
    const b = {
      host: c.host.value.trim(),
      port: c.port.value === "" ? undefined : Number(c.port.value),
      security: c.security.value,
      username: c.username.value.trim() || null,
      from_address: c.from_address.value.trim() || null,
      from_name: c.from_name.value.trim() || null,
      reply_to: c.reply_to.value.trim() || null,
      timeout_seconds: Number(c.timeout_seconds.value || 10),
      tls_verify: c.tls_verify.checked,
      auth: c.auth.value,
    };
    if (c.auth.value === "oauth2") {
      const oauth2 = { provider: c.provider.value };
      for (const k of ["tenant_id", "client_id", "scope", "token_url"]) {
        const v = c[k].value.trim();
        if (v && !boxOf(c[k]).hidden) oauth2[k] = v;
      }
      for (const secret of [clientSecret, serviceAccount, refreshToken]) {
        if (!secret.box.hidden) secret.apply(oauth2);
      }
      b.oauth2 = oauth2;
    } else {
      password.apply(b);
    }
    return b;
  };
  const form = h("form", {
    novalidate: true,
    oninput: () => { dirty = true; },
    onsubmit: async (event) => {
      event.preventDefault();
      const put = await api("PUT", "/settings/smtp", body(), etag ? { "If-Match": etag } : {});
      if (put.status === 200) {
        etag = put.etag; dirty = false;
        showErrors(form, null);
        notice(status, "Saved.", "ok");
      } else if (put.status === 412) {
        status.replaceChildren(h("div", { class: "notice bad", role: "alert" },
          "Someone else saved these settings after you opened them. ",
          h("button", { type: "button", onclick: () => render() }, "Reload")));
      } else {
        const rest = showErrors(form, put.body);
        notice(status, [put.body?.detail ?? `Saving failed (${put.status}).`, ...rest].join(" "), "bad");
      }
    },
  },
    h("fieldset", {}, h("legend", {}, "Server"),
      field("Host", c.host), field("Port", c.port), field("Security", c.security),
      field("Timeout", c.timeout_seconds, "Seconds to wait for each step."), field("Verify certificate", c.tls_verify)),
    h("fieldset", {}, h("legend", {}, "Sign-in"), field("Authentication", c.auth), field("Username", c.username), password.box, oauthBox),
    h("fieldset", {}, h("legend", {}, "Sender"), field("From address", c.from_address), field("From name", c.from_name), field("Reply-to", c.reply_to)),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", "data-write": true }, "Save")),
    status);
  showAuth();
  if (!session.can("settings:write")) {
    disableAll(form);
    notice(status, "Your token can read these settings but not change them.");
  }
  return [h("h1", {}, "SMTP"), form, testPanel(() => (dirty ? body() : null))];
}

/** Test connection: the steps of a session with the saved settings, or with the unsaved form. */
function testPanel(draft) {
  const to = input("to", "email");
  const result = h("div", { "aria-live": "polite" });
  const run = h("button", { type: "button", class: "primary" }, "Test connection");
  run.addEventListener("click", async () => {
    run.disabled = true;
    notice(result, "Testing…");
    try {
      const request = {};
      const settings = draft();
      if (settings) request.settings = settings;
      if (to.value.trim()) request.to = to.value.trim();
      const reply = await api("POST", "/settings/smtp/test", request);
      if (reply.status !== 200) {
        const rest = showErrors(panel, reply.body);
        notice(result, [reply.body?.detail ?? `The test could not run (${reply.status}).`, ...rest].join(" "), "bad");
        return;
      }
      result.replaceChildren(report(reply.body));
    } finally {
      run.disabled = false;
    }
  });
  if (!session.can("smtp:test")) run.disabled = true;
  const panel = h("section", { "aria-labelledby": "test-title" },
    h("h2", { id: "test-title" }, "Test connection"),
    field("Send a test message to", to, "Optional: without it, the test stops after signing in."),
    h("div", { class: "buttons" }, run), result);
  return panel;
}

/** A test report: each step with its status, duration and SMTP code; the failure's hint. */
function report(r) {
  const steps = h("ol", { class: "steps", "aria-label": "Steps" },
    ...r.steps.map((s) => h("li", { "data-step": s.step },
      h("span", { class: "name" }, s.step),
      h("span", { class: s.ok ? "ok" : "failed" }, s.ok ? "passed" : "failed"),
      h("span", { class: "detail" }, `${s.duration_ms} ms${s.smtp_code ? ` · ${s.smtp_code}` : ""} · ${s.detail}`))));
  const summary = r.ok
    ? h("div", { class: "notice ok", role: "status" }, r.message_sent ? "Every step passed and the test message was accepted." : "Every step passed.")
    : h("div", { class: "notice bad", role: "alert" },
      h("strong", {}, `Failed at ${r.error.step}: `), r.error.message,
      r.error.hint ? h("p", { class: "hint" }, `Hint: ${r.error.hint}`) : null);
  return h("div", { class: "report", "data-ok": String(r.ok) }, summary, steps);
}

async function generalPage() {
  const [admin, locale] = await Promise.all([api("GET", "/settings/admin-email"), api("GET", "/settings/locale")]);
  let etags = { admin: admin.etag, locale: locale.etag };
  const email = input("email", "email", { value: admin.body?.email ?? "" });
  const defaultLocale = input("default_locale", "text", { value: locale.body?.default_locale ?? "en" });
  const status = h("div");
  const form = h("form", {
    novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const a = await api("PUT", "/settings/admin-email", { email: email.value.trim() || null }, etags.admin ? { "If-Match": etags.admin } : {});
      const l = await api("PUT", "/settings/locale", { default_locale: defaultLocale.value.trim() }, etags.locale ? { "If-Match": etags.locale } : {});
      const failed = [a, l].filter((r) => r.status !== 200);
      if (a.status === 200) etags.admin = a.etag;
      if (l.status === 200) etags.locale = l.etag;
      const rest = failed.flatMap((r) => showErrors(form, r.body));
      if (!failed.length) { showErrors(form, null); notice(status, "Saved.", "ok"); }
      else if (failed.some((r) => r.status === 412)) notice(status, "Someone else saved these settings meanwhile: reload the page.", "bad");
      else notice(status, [failed[0].body?.detail ?? "Saving failed.", ...rest].join(" "), "bad");
    },
  },
    field("Admin email", email, "Where admin notifications (access requests, registrations) go."),
    field("Default locale", defaultLocale, "A language tag such as en, de or pt-BR."),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", "data-write": true }, "Save")),
    status);
  if (!session.can("settings:write")) {
    disableAll(form);
    notice(status, "Your token can read these settings but not change them.");
  }
  return [h("h1", {}, "General"), form];
}


// ---- subjects, templates, delivery log --------------------------------------------------------

/** Timers of the page on screen, stopped when another page is rendered. */
const timers = new Set();

let eventsCache = null;
async function events() {
  if (!eventsCache) {
    const r = await api("GET", "/events");
    eventsCache = r.status === 200 ? r.body.events : [];
  }
  return eventsCache;
}

const eventOptions = (list) => list.map((e) => [e.event, e.event]);

async function subjectsPage() {
  const [reply, list] = await Promise.all([api("GET", "/settings/subjects"), events()]);
  let etag = reply.etag;
  const described = new Map(list.map((e) => [e.event, e]));
  const changes = new Map();
  const rows = reply.body.subjects.map((s) => {
    const control = input(`subjects.${s.event}`, "text", { value: s.is_default ? "" : s.subject, placeholder: s.default_subject });
    control.addEventListener("input", () => changes.set(s.event, control.value.trim() || null));
    const reset = h("button", { type: "button", "data-write": true, onclick: () => { control.value = ""; changes.set(s.event, null); } }, "Reset");
    const vars = (described.get(s.event)?.variables ?? s.variables ?? []).map((v) => (typeof v === "string" ? v : v.name));
    const box = field(s.event, control, `${described.get(s.event)?.description ?? ""} Variables: ${vars.join(", ")}`);
    box.append(h("div", { class: "buttons" }, reset));
    return box;
  });
  const status = h("div");
  const form = h("form", {
    novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      if (!changes.size) { notice(status, "Nothing changed."); return; }
      const r = await api("PATCH", "/settings/subjects", { subjects: Object.fromEntries(changes) }, etag ? { "If-Match": etag } : {});
      if (r.status === 200) { etag = r.etag; changes.clear(); showErrors(form, null); notice(status, "Saved.", "ok"); }
      else if (r.status === 412) notice(status, "Someone else saved the subjects meanwhile: reload the page.", "bad");
      else notice(status, [r.body?.detail ?? `Saving failed (${r.status}).`, ...showErrors(form, r.body)].join(" "), "bad");
    },
  }, ...rows, h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", "data-write": true }, "Save")), status);
  if (!session.can("settings:write")) disableAll(form);
  return [h("h1", {}, "Subjects"), h("p", {}, "An empty field uses the default subject, shown in grey."), form];
}

/** Calls `fn` once input has paused for `ms`. */
function debounce(fn, ms) {
  let t = 0;
  return () => { clearTimeout(t); t = setTimeout(fn, ms); };
}

async function templatesPage() {
  const list = await events();
  const locale = await api("GET", "/settings/locale");
  const event = select("event", eventOptions(list));
  const tag = input("locale", "text", { value: locale.body?.default_locale ?? "en" });
  const parts = {
    subject: input("subject", "text"),
    text: h("textarea", { name: "text", rows: 10, spellcheck: "false" }),
    html: h("textarea", { name: "html", rows: 10, spellcheck: "false" }),
  };
  const sources = { subject: h("span"), text: h("span"), html: h("span") };
  const data = h("textarea", { name: "data", rows: 6, spellcheck: "false" });
  const status = h("div");
  const preview = {
    subject: h("p", { class: "preview-subject" }),
    text: h("pre", { class: "preview-text" }),
    html: h("iframe", { title: "HTML preview", sandbox: "", class: "preview-html" }),
    errors: h("div", { role: "status" }),
  };
  let etag = null;
  const draft = () => {
    const t = {};
    for (const [k, el] of Object.entries(parts)) if (el.value.trim()) t[k] = el.value;
    return t;
  };
  const refresh = async () => {
    let example;
    try { example = data.value.trim() ? JSON.parse(data.value) : undefined; }
    catch { notice(preview.errors, "The data is not valid JSON.", "bad"); return; }
    const body = { event: event.value, locale: tag.value.trim() || null, data: example };
    const t = draft();
    if (Object.keys(t).length) body.template = t;
    const r = await api("POST", "/settings/templates/preview", body);
    if (r.status !== 200) {
      notice(preview.errors, (r.body?.errors ?? [{ message: r.body?.detail ?? `Preview failed (${r.status}).` }]).map((e) => e.message).join(" "), "bad");
      return;
    }
    notice(preview.errors, `Rendered with the ${r.body.locale_used} templates.`);
    preview.subject.textContent = r.body.subject;
    preview.text.textContent = r.body.text;
    // Sandboxed without allow-scripts: a template's markup is shown, never run.
    preview.html.srcdoc = r.body.html;
  };
  const later = debounce(refresh, 300);
  const load = async () => {
    const info = list.find((e) => e.event === event.value);
    data.value = JSON.stringify(Object.fromEntries((info?.variables ?? []).map((v) => [v.name, v.example])), null, 2);
    const r = await api("GET", `/settings/templates/${encodeURIComponent(event.value)}/${encodeURIComponent(tag.value.trim() || "en")}`);
    if (r.status !== 200) { notice(status, r.body?.detail ?? `Cannot load the template (${r.status}).`, "bad"); return; }
    etag = r.etag;
    for (const k of Object.keys(parts)) {
      parts[k].value = r.body.stored?.[k] ?? "";
      const eff = r.body.effective?.[k];
      parts[k].placeholder = eff?.template ?? "";
      sources[k].textContent = eff ? `In effect: ${eff.source === "builtin" ? "built in" : eff.source}` : "";
    }
    notice(status, "");
    await refresh();
  };
  event.addEventListener("change", load);
  tag.addEventListener("change", load);
  for (const el of [...Object.values(parts), data]) el.addEventListener("input", later);
  const path = () => `/settings/templates/${encodeURIComponent(event.value)}/${encodeURIComponent(tag.value.trim())}`;
  const save = h("button", { type: "submit", class: "primary", "data-write": true }, "Save");
  const remove = h("button", {
    type: "button", "data-write": true,
    onclick: async () => {
      const r = await api("DELETE", path(), undefined, etag ? { "If-Match": etag } : {});
      if (r.status === 204) { notice(status, "Deleted: the parts fall back along the locale chain.", "ok"); await load(); }
      else notice(status, r.body?.detail ?? `Deleting failed (${r.status}).`, "bad");
    },
  }, "Delete");
  const form = h("form", {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      const r = await api("PUT", path(), draft(), etag ? { "If-Match": etag } : {});
      if (r.status === 200) { etag = r.etag; showErrors(form, null); notice(status, "Saved.", "ok"); }
      else if (r.status === 412) notice(status, "Someone else saved this template meanwhile: reload it.", "bad");
      else notice(status, [r.body?.detail ?? `Saving failed (${r.status}).`, ...showErrors(form, r.body)].join(" "), "bad");
    },
  },
    h("div", { class: "row" }, field("Event", event), field("Locale", tag, "A language tag such as de or pt-BR.")),
    h("div", { class: "editor" },
      h("div", {},
        field("Subject", parts.subject), sources.subject,
        field("Text", parts.text), sources.text,
        field("HTML", parts.html), sources.html,
        field("Example data (JSON)", data)),
      h("section", { class: "preview", "aria-label": "Preview" },
        h("h2", {}, "Preview"), preview.errors, preview.subject, preview.text, preview.html)),
    h("div", { class: "buttons" }, save, remove), status);
  if (!session.can("settings:write")) { save.disabled = true; remove.disabled = true; }
  await load();
  return [h("h1", {}, "Templates"), form];
}

const STATUSES = ["held", "queued", "sending", "sent", "failed", "expired", "suppressed"];

async function deliveryPage() {
  const list = await events();
  const stats = h("div", { class: "stats", "aria-live": "polite" });
  const showStats = async () => {
    const r = await api("GET", "/notifications/stats");
    if (r.status !== 200) return;
    const s = r.body;
    stats.replaceChildren(
      h("span", {}, `Queued: ${s.counts.queued}`),
      h("span", {}, `Oldest queued: ${s.oldest_queued_age_seconds ?? 0} s`),
      h("span", {}, `Last success: ${s.last_success ? new Date(s.last_success.at).toLocaleString() : "none"}`),
      h("span", {}, `Last error: ${s.last_error ? `${s.last_error.reply ?? ""} (${new Date(s.last_error.at).toLocaleString()})` : "none"}`));
  };
  const filters = {
    status: select("status", [["", "any"], ...STATUSES.map((x) => [x, x])]),
    event: select("event", [["", "any"], ...eventOptions(list)]),
    to: input("to", "email"),
    since: input("since", "datetime-local"),
  };
  const rows = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Older");
  const detail = h("section", { "aria-live": "polite" });
  let cursor = null;
  const query = () => {
    const q = new URLSearchParams();
    for (const [k, el] of Object.entries(filters)) {
      if (!el.value) continue;
      q.set(k, k === "since" ? new Date(el.value).toISOString() : el.value.trim());
    }
    if (cursor) q.set("cursor", cursor);
    return q.toString();
  };
  const showList = async (append = false) => {
    if (!append) cursor = null;
    const r = await api("GET", `/notifications?${query()}`);
    if (r.status !== 200) { rows.replaceChildren(h("tr", {}, h("td", { colspan: 5 }, r.body?.detail ?? "Cannot list notifications."))); return; }
    const trs = r.body.notifications.map((n) => h("tr", { "data-status": n.status },
      h("td", {}, h("button", { type: "button", class: "link", onclick: () => showDetail(n.id) }, n.status)),
      h("td", {}, n.event), h("td", {}, n.to ?? "(admin)"), h("td", {}, n.subject), h("td", {}, new Date(n.created_at).toLocaleString())));
    if (append) rows.append(...trs); else rows.replaceChildren(...trs);
    cursor = r.body.next_cursor;
    more.hidden = !cursor;
  };
  more.addEventListener("click", () => showList(true));
  const showDetail = async (id) => {
    const r = await api("GET", `/notifications/${id}`);
    if (r.status !== 200) { notice(detail, r.body?.detail ?? "Cannot load it.", "bad"); return; }
    const n = r.body;
    const retry = ["failed", "expired", "queued"].includes(n.status) && session.can("notifications:send")
      ? h("button", { type: "button", onclick: async () => { const x = await api("POST", `/notifications/${id}/retry`); notice(detail, x.status === 202 ? "Queued again." : x.body?.detail ?? "Retry failed.", x.status === 202 ? "ok" : "bad"); await showList(); } }, "Retry")
      : null;
    detail.replaceChildren(h("h2", {}, `Notification ${n.id}`),
      h("dl", {},
        h("dt", {}, "Status"), h("dd", { "data-detail": "status" }, `${n.status}${n.status_reason ? ` (${n.status_reason})` : ""}`),
        h("dt", {}, "Recipient"), h("dd", {}, n.to ?? "(admin)"),
        h("dt", {}, "Subject"), h("dd", {}, n.subject),
        h("dt", {}, "Created"), h("dd", {}, new Date(n.created_at).toLocaleString()),
        h("dt", {}, "Sent"), h("dd", {}, n.sent_at ? new Date(n.sent_at).toLocaleString() : "not yet")),
      h("h3", {}, "Attempts"),
      h("ol", { class: "steps" }, ...n.attempts.map((a) => h("li", {},
        h("span", { class: "name" }, a.outcome), h("span", {}, a.smtp_code ?? ""), h("span", { class: "detail" }, `${new Date(a.at).toLocaleString()} · ${a.reply}`)))),
      retry ?? "");
  };
  const flush = h("button", { type: "button", onclick: async () => { const r = await api("POST", "/notifications/flush"); notice(detail, r.status === 200 ? `${r.body.flushed} made due now.` : r.body?.detail ?? "Flush failed.", r.status === 200 ? "ok" : "bad"); await showStats(); } }, "Flush");
  if (!session.can("notifications:send")) flush.disabled = true;

  const testEvent = select("test_event", eventOptions(list));
  const testTo = input("test_to", "email");
  const testData = h("textarea", { name: "test_data", rows: 5, spellcheck: "false" });
  const fill = () => {
    const info = list.find((e) => e.event === testEvent.value);
    testData.value = JSON.stringify(Object.fromEntries((info?.variables ?? []).filter((v) => v.required).map((v) => [v.name, v.example])), null, 2);
  };
  testEvent.addEventListener("change", fill);
  fill();
  const sent = h("div");
  const send = h("form", {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      let d;
      try { d = JSON.parse(testData.value || "{}"); } catch { notice(sent, "The data is not valid JSON.", "bad"); return; }
      const body = { event: testEvent.value, data: d };
      if (testTo.value.trim()) body.to = testTo.value.trim();
      const r = await api("POST", "/notifications", body);
      if (r.status === 202) { notice(sent, `Accepted: ${r.body.id} (${r.body.status}).`, "ok"); await showList(); }
      else notice(sent, [r.body?.detail ?? `Refused (${r.status}).`, ...showErrors(send, r.body)].join(" "), "bad");
    },
  },
    h("h2", {}, "Send test notification"),
    field("Event", testEvent), field("Recipient", testTo, "Leave empty for an admin event."), field("Data (JSON)", testData),
    h("div", { class: "buttons" }, h("button", { type: "submit", disabled: !session.can("notifications:send") }, "Send test notification")), sent);

  const apply = h("button", { type: "button", onclick: () => showList() }, "Apply filters");
  await Promise.all([showStats(), showList()]);
  const tick = setInterval(() => { showStats(); showList(); }, 5000);
  timers.add(tick);
  return [h("h1", {}, "Delivery log"),
    h("div", { class: "buttons" }, stats, h("button", { type: "button", onclick: () => { showStats(); showList(); } }, "Refresh"), flush),
    h("div", { class: "filters" }, field("Status", filters.status), field("Event", filters.event), field("Recipient", filters.to), field("Since", filters.since), apply),
    h("table", {}, h("caption", {}, "Newest first"),
      h("thead", {}, h("tr", {}, ...["Status", "Event", "Recipient", "Subject", "Created"].map((t) => h("th", { scope: "col" }, t)))), rows),
    more, detail, send];
}

// ---- branding, suppressions, webhooks, audit --------------------------------------------------

async function brandingPage() {
  const reply = await api("GET", "/settings/branding");
  let etag = reply.etag;
  const b = reply.body ?? {};
  const c = {
    product_name: input("product_name", "text", { value: b.product_name ?? "" }),
    product_url: input("product_url", "text", { value: b.product_url ?? "" }),
    logo_url: input("logo_url", "text", { value: b.logo_url ?? "" }),
    primary_color: input("primary_color", "color", { value: b.primary_color ?? "#0b5cad" }),
    footer_text: h("textarea", { name: "footer_text", rows: 3 }, b.footer_text ?? ""),
    support_email: input("support_email", "email", { value: b.support_email ?? "" }),
  };
  const frame = h("iframe", { title: "Layout preview", sandbox: "", class: "preview-html" });
  const preview = async () => {
    const list = await events();
    const r = await api("POST", "/settings/templates/preview", { event: list[0]?.event ?? "password_reset" });
    if (r.status === 200) frame.srcdoc = r.body.html;
  };
  const status = h("div");
  const form = h("form", {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      const body = {};
      for (const [k, el] of Object.entries(c)) body[k] = el.value.trim() || null;
      const r = await api("PUT", "/settings/branding", body, etag ? { "If-Match": etag } : {});
      if (r.status === 200) { etag = r.etag; showErrors(form, null); notice(status, "Saved.", "ok"); await preview(); }
      else if (r.status === 412) notice(status, "Someone else saved the branding meanwhile: reload the page.", "bad");
      else notice(status, [r.body?.detail ?? `Saving failed (${r.status}).`, ...showErrors(form, r.body)].join(" "), "bad");
    },
  },
    field("Product name", c.product_name), field("Product URL", c.product_url), field("Logo URL", c.logo_url),
    field("Colour", c.primary_color), field("Footer", c.footer_text), field("Support address", c.support_email),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", "data-write": true }, "Save")), status);
  if (!session.can("settings:write")) disableAll(form);
  await preview();
  return [h("h1", {}, "Branding"), form, h("h2", {}, "Layout preview"), frame];
}

async function suppressionsPage() {
  const rows = h("tbody");
  const status = h("div");
  const show = async () => {
    const r = await api("GET", "/suppressions");
    if (r.status !== 200) { notice(status, r.body?.detail ?? "Cannot list the suppression list.", "bad"); return; }
    rows.replaceChildren(...r.body.suppressions.map((x) => h("tr", {},
      h("td", {}, x.address), h("td", {}, x.reason), h("td", {}, x.source), h("td", {}, new Date(x.created_at).toLocaleString()),
      h("td", {}, h("button", {
        type: "button", "data-write": true, disabled: !session.can("settings:write"), "aria-label": `Remove ${x.address}`,
        onclick: async () => { const d = await api("DELETE", `/suppressions/${encodeURIComponent(x.address)}`); notice(status, d.status === 204 ? `${x.address} removed.` : d.body?.detail ?? "Removing failed.", d.status === 204 ? "ok" : "bad"); await show(); },
      }, "Remove")))));
  };
  const address = input("address", "email");
  const reason = input("reason", "text");
  const form = h("form", {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      const r = await api("POST", "/suppressions", { address: address.value.trim(), reason: reason.value.trim() || null });
      if (r.status === 200 || r.status === 201) { showErrors(form, null); notice(status, `${address.value.trim()} will not be mailed.`, "ok"); address.value = ""; await show(); }
      else notice(status, [r.body?.detail ?? `Adding failed (${r.status}).`, ...showErrors(form, r.body)].join(" "), "bad");
    },
  }, h("h2", {}, "Add an address"), field("Address", address), field("Reason", reason),
    h("div", { class: "buttons" }, h("button", { type: "submit", "data-write": true }, "Add")));
  if (!session.can("settings:write")) disableAll(form);
  await show();
  return [h("h1", {}, "Suppressions"),
    h("table", {}, h("caption", {}, "Addresses that are never mailed"),
      h("thead", {}, h("tr", {}, ...["Address", "Reason", "Source", "Since", "Action"].map((t) => h("th", { scope: "col" }, t)))), rows),
    form, status];
}

async function webhooksPage() {
  const reply = await api("GET", "/settings/webhooks");
  let etag = reply.etag;
  let endpoints = reply.body?.endpoints ?? [];
  const list = h("div");
  const status = h("div");
  const deliveries = h("tbody");
  const showDeliveries = async () => {
    if (!session.can("notifications:read")) return;
    const r = await api("GET", "/webhooks/deliveries?limit=20");
    if (r.status !== 200) return;
    deliveries.replaceChildren(...r.body.deliveries.map((d) => h("tr", {},
      h("td", {}, d.event_type), h("td", {}, d.status), h("td", {}, String(d.attempts)), h("td", {}, d.last_status_code ? String(d.last_status_code) : d.last_error ?? ""),
      h("td", {}, new Date(d.updated_at).toLocaleString()))));
  };
  const save = async (next) => {
    const body = { endpoints: next.map((e) => ({ id: e.id, url: e.url, events: e.events, enabled: e.enabled })) };
    const r = await api("PUT", "/settings/webhooks", body, etag ? { "If-Match": etag } : {});
    if (r.status !== 200) { notice(status, [r.body?.detail ?? `Saving failed (${r.status}).`, ...(r.body?.errors ?? []).map((x) => `${x.field}: ${x.message}`)].join(" "), "bad"); return; }
    etag = r.etag;
    endpoints = r.body.endpoints;
    const shown = endpoints.filter((e) => e.secret);
    // A new endpoint's signing secret is shown once, in this answer only.
    notice(status, shown.length ? `Saved. Signing secret (shown once): ${shown.map((e) => e.secret).join(", ")}` : "Saved.", "ok");
    draw();
  };
  const draw = () => {
    list.replaceChildren(...endpoints.map((e) => h("fieldset", {}, h("legend", {}, e.url),
      h("p", {}, `Events: ${e.events.join(", ") || "all"} · ${e.enabled ? "enabled" : "disabled"} · secret ${e.secret_set ? "set" : "not set"}`),
      h("div", { class: "buttons" },
        h("button", {
          type: "button", disabled: !session.can("settings:write"),
          onclick: async () => { const r = await api("POST", `/settings/webhooks/${encodeURIComponent(e.id)}/test`); notice(status, r.status === 200 ? (r.body.ok ? `The endpoint answered ${r.body.status_code} in ${r.body.duration_ms} ms.` : `The test failed: ${r.body.error ?? r.body.status_code}`) : r.body?.detail ?? "The test could not run.", r.status === 200 && r.body.ok ? "ok" : "bad"); },
        }, "Send test"),
        h("button", { type: "button", "data-write": true, disabled: !session.can("settings:write"), onclick: () => save(endpoints.filter((x) => x.id !== e.id)) }, "Remove")))));
  };
  const url = input("url", "text");
  const form = h("form", {
    novalidate: true,
    onsubmit: async (ev) => { ev.preventDefault(); await save([...endpoints, { url: url.value.trim(), events: [], enabled: true }]); },
  }, h("h2", {}, "Add an endpoint"), field("URL", url, "An https URL, or plain http to a loopback address."),
    h("div", { class: "buttons" }, h("button", { type: "submit", "data-write": true }, "Add")));
  if (!session.can("settings:write")) disableAll(form);
  draw();
  await showDeliveries();
  return [h("h1", {}, "Webhooks"), list, form, status, h("h2", {}, "Deliveries"),
    h("table", {}, h("caption", {}, "The newest calls"),
      h("thead", {}, h("tr", {}, ...["Event", "Status", "Attempts", "Last answer", "Updated"].map((t) => h("th", { scope: "col" }, t)))), deliveries)];
}

async function auditPage() {
  const rows = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Older");
  let cursor = null;
  const show = async (append) => {
    const r = await api("GET", `/settings/audit?limit=50${append && cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    if (r.status !== 200) return;
    const trs = r.body.entries.map((e) => h("tr", {},
      h("td", {}, new Date(e.occurred_at).toLocaleString()), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.resource),
      h("td", {}, (e.details?.changes ?? []).map((c) => c.field).join(", ") || (e.details?.error_code ?? (e.details?.ok === true ? "ok" : "")))));
    if (append) rows.append(...trs); else rows.replaceChildren(...trs);
    cursor = r.body.next_cursor;
    more.hidden = !cursor;
  };
  more.addEventListener("click", () => show(true));
  await show(false);
  return [h("h1", {}, "Audit"),
    h("table", {}, h("caption", {}, "Who changed what, newest first"),
      h("thead", {}, h("tr", {}, ...["When", "Who", "Action", "Resource", "Fields"].map((t) => h("th", { scope: "col" }, t)))), rows),
    more];
}

// ---- routing ---------------------------------------------------------------------------------

const PAGES = {
  "#/smtp": smtpPage,
  "#/general": generalPage,
  "#/subjects": subjectsPage,
  "#/templates": templatesPage,
  "#/delivery": deliveryPage,
  "#/branding": brandingPage,
  "#/suppressions": suppressionsPage,
  "#/webhooks": webhooksPage,
  "#/audit": auditPage,
};

async function render() {
  for (const t of timers) clearInterval(t);
  timers.clear();
  const message = flash;
  flash = "";
  const c = session.load();
  const signedIn = !!c;
  const nav = document.getElementById("nav");
  const out = document.getElementById("sign-out");
  nav.hidden = !signedIn;
  out.hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? session.sub : "";
  if (signedIn && c.exp && c.exp * 1000 < Date.now()) {
    signOut("Your token has expired. Sign in again.");
    return;
  }
  const page = signedIn ? PAGES[location.hash] : null;
  if (signedIn && !page) { location.hash = "#/smtp"; return; }
  for (const a of nav.querySelectorAll("a")) {
    if (a.getAttribute("href") === location.hash) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    const nodes = page ? await page() : signInPage(message);
    main.replaceChildren(...nodes);
    main.focus();
  } catch (e) {
    if (String(e?.message) !== "signed out") main.replaceChildren(h("div", { class: "notice bad", role: "alert" }, `Something went wrong: ${e}`));
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", () => render());
render();
