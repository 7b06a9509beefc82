// Webhooks: add an endpoint (its secret shown once), list them with "send a test" and delete,
// and the delivery log with HTTP status codes, refreshed every 5 s.

import { api } from "../api.js";
import { copyable } from "../clipboard.js";
import { field, h, notice, say } from "../dom.js";
import { dateTime } from "../format.js";
import { errorText, t } from "../i18n.js";

// SPEC §7's events, then its "Beyond" ones (the server's EVENT_TYPES).
const EVENTS = ["sms.sent", "sms.delivered", "sms.failed", "device.connected", "device.disconnected", "sms.received", "otp.verified", "sms.opted_out", "sms.opted_in", "sms.rerouted", "sms.delivery_report_missing"];
const LOG_PAGE = 20;

export async function render(main) {
  const problem = notice("error");
  const done = notice();
  const created = h("div", { id: "created-webhook" });
  const endpoints = h("div", { id: "webhook-list" }, t("common.loading"));
  const logs = h("div", { id: "webhook-logs", "aria-live": "polite" });
  let logPage = 1;
  let shownLogs = "";

  const url = h("input", { id: "webhook-url", type: "url", required: true, placeholder: "https://example.com/zimsend" });
  const secret = h("input", { id: "webhook-secret", autocomplete: "off" });
  const boxes = EVENTS.map((name) => h("input", { type: "checkbox", id: `event-${name}`, value: name, checked: name.startsWith("sms.") }));
  const form = h("form", { class: "card", "aria-labelledby": "add-webhook", onSubmit: async (event) => {
    event.preventDefault();
    try {
      const body = { url: url.value.trim(), events: boxes.filter((b) => b.checked).map((b) => b.value) };
      if (secret.value.trim()) body.secret = secret.value.trim();
      const hook = await api("POST", "/webhooks/configure", { body });
      url.value = "";
      secret.value = "";
      created.replaceChildren(h("section", { class: "card secret-shown" },
        h("h2", { tabindex: "-1" }, t("webhooks.created")), copyable(t("webhooks.secret"), hook.secret, "webhook-secret-shown"),
        h("p", { class: "hint" }, t("webhooks.secretOnce"))));
      created.querySelector("h2").focus();
      await loadEndpoints();
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  } },
    h("h2", { id: "add-webhook" }, t("webhooks.configure")),
    field(t("webhooks.url"), url),
    h("fieldset", { class: "choices" }, h("legend", {}, t("webhooks.events")),
      boxes.map((box) => h("div", { class: "field check" }, box, h("label", { for: box.id }, box.value)))),
    field(t("webhooks.secret"), secret),
    h("button", { type: "submit", class: "primary" }, t("webhooks.submit")));

  main.append(h("h1", {}, t("webhooks.title")), problem, done, form, created,
    h("section", { class: "card" }, h("h2", {}, t("webhooks.list")), endpoints),
    h("section", { class: "card" }, h("h2", {}, t("webhooks.logs")),
      h("button", { type: "button", id: "refresh-logs", onClick: () => loadLogs() }, t("common.refresh")), logs));

  async function loadEndpoints() {
    try {
      const { webhooks } = await api("GET", "/webhooks");
      endpoints.replaceChildren(webhooks.length ? h("ul", { class: "endpoints" }, webhooks.map(endpoint)) : h("p", {}, t("common.none")));
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  }

  function endpoint(hook) {
    return h("li", { "data-webhook-id": hook.webhook_id },
      h("code", { class: "url" }, hook.url), " ", h("span", { class: `badge ${hook.status}` }, t("status." + hook.status) || hook.status),
      h("p", { class: "hint" }, hook.events.join(", ")),
      h("div", { class: "actions" },
        h("button", { type: "button", "aria-label": t("webhooks.testLabel", { url: hook.url }), onClick: async () => {
          try {
            const r = await api("POST", `/webhooks/${encodeURIComponent(hook.webhook_id)}/test`, { body: {} });
            say(done, "ok", t("webhooks.tested", { id: r.event_id }));
            setTimeout(loadLogs, 1000);
          } catch (error) { say(problem, "error", errorText(error)); }
        } }, t("webhooks.test")),
        h("button", { type: "button", class: "danger", "aria-label": t("webhooks.deleteLabel", { url: hook.url }), onClick: async () => {
          if (!confirm(t("webhooks.confirmDelete", { url: hook.url }))) return;
          try {
            await api("DELETE", `/webhooks/${encodeURIComponent(hook.webhook_id)}`);
            await loadEndpoints();
          } catch (error) { say(problem, "error", errorText(error)); }
        } }, t("common.delete"))));
  }

  async function loadLogs() {
    try {
      const { logs: rows, pagination } = await api("GET", "/webhooks/logs", { query: { page: logPage, limit: LOG_PAGE } });
      // Redraw only on change: a redraw would take the focus from a keyboard user's button.
      const seen = JSON.stringify([rows, pagination]);
      if (seen !== shownLogs) logs.replaceChildren(logTable(rows), pager(pagination));
      shownLogs = seen;
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  }

  function pager({ current_page, total_pages, total_items }) {
    const pages = Math.max(1, total_pages);
    return h("div", { class: "pager" },
      h("button", { type: "button", disabled: current_page <= 1, onClick: () => { logPage -= 1; loadLogs(); } }, t("common.previous")),
      h("span", {}, t("common.page", { page: current_page, pages, total: total_items })),
      h("button", { type: "button", disabled: current_page >= pages, onClick: () => { logPage += 1; loadLogs(); } }, t("common.next")));
  }

  await Promise.all([loadEndpoints(), loadLogs()]);
  const timer = setInterval(loadLogs, 5000);
  return () => clearInterval(timer);
}

// Also the message page's table of that message's own deliveries.
export function logTable(rows) {
  if (!rows.length) return h("p", {}, t("common.none"));
  const head = ["time", "event", "url", "status", "ms", "attempt", "result"].map((c) => t("webhooks.col." + c));
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, head.map((label) => h("th", { scope: "col" }, label)))),
    h("tbody", {}, rows.map((r) => h("tr", { "data-event-id": r.event_id },
      h("td", { "data-label": head[0] }, dateTime(r.timestamp)),
      h("td", { "data-label": head[1] }, r.event),
      h("td", { "data-label": head[2], class: "url" }, r.url),
      h("td", { "data-label": head[3], "data-field": "response-status" }, r.response_status ? String(r.response_status) : "—"),
      h("td", { "data-label": head[4] }, String(r.response_time_ms)),
      h("td", { "data-label": head[5] }, String(r.attempt)),
      h("td", { "data-label": head[6] }, h("span", { class: `badge ${r.success ? "delivered" : "failed"}` },
        r.success ? t("webhooks.ok") : t("webhooks.failed")), r.error ? h("span", { class: "hint" }, ` ${r.error}`) : null)))));
}
