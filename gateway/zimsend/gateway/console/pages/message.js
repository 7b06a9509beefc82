// One message: its fields, its statuses with times, its parts (split in the page with the
// server's rules, segments.js; the API returns the count and encoding), cancel when queued and
// resend when failed (SPEC §3), and its own webhook deliveries (`/webhooks/logs?message_id=`),
// refreshed every 5 s even once the message is final: its last event is delivered after.

import { api } from "../api.js";
import { h, notice, say } from "../dom.js";
import { dateTime, statusLabel } from "../format.js";
import { errorText, t } from "../i18n.js";
import { plan, unitCost } from "../segments.js";
import { logTable } from "./webhooks.js";

const FINAL = ["delivered", "failed", "cancelled"];
// A message has a few events, each tried up to 3 times per endpoint: one page is enough; the
// rest are on the Webhooks page.
const HOOKS_LIMIT = 50;
const TIMELINE = [
  ["created", "created_at"], ["queued", "queued_at"], ["scheduled", "scheduled_at"], ["sent", "sent_at"],
  ["delivered", "delivered_at"], ["failed", "failed_at"], ["cancelled", "cancelled_at"],
];

export async function render(main, { arg: id }) {
  const problem = notice("error");
  const done = notice();
  const body = h("div", {}, t("common.loading"));
  const deliveries = h("div", { id: "message-webhooks", "aria-live": "polite" }, t("common.loading"));
  const hooks = h("section", { class: "card", hidden: true }, h("h2", {}, t("message.webhooks")), deliveries,
    h("p", {}, t("message.webhooksAll"), " ", h("a", { href: "#/webhooks" }, t("nav.webhooks"))));
  main.append(h("p", {}, h("a", { href: "#/messages" }, t("message.back"))),
    h("h1", {}, t("message.title", { id })), problem, done, body, hooks);

  async function load() {
    try {
      const m = await api("GET", `/sms/status/${encodeURIComponent(id)}`);
      moving = !FINAL.includes(m.status);
      body.replaceChildren(...[details(m), timeline(m), parts(m), actions(m)].filter(Boolean));
      hooks.hidden = false;
    } catch (error) {
      say(problem, "error", errorText(error));
      body.replaceChildren();
      hooks.hidden = true;
    }
  }

  let shownHooks = "";
  async function loadHooks() {
    try {
      const { logs: rows, pagination } = await api("GET", "/webhooks/logs", { query: { message_id: id, limit: HOOKS_LIMIT } });
      // Redraw only on change, as the Webhooks page does (a redraw would move the focus).
      const seen = JSON.stringify(rows);
      if (seen === shownHooks) return;
      shownHooks = seen;
      const more = pagination.total_items > rows.length
        ? h("p", { class: "hint" }, t("message.webhooksMore", { shown: rows.length, total: pagination.total_items })) : null;
      deliveries.replaceChildren(logTable(rows), ...(more ? [more] : []));
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  }

  function actions(m) {
    const buttons = [];
    if (m.status === "queued") {
      buttons.push(h("button", { type: "button", class: "danger", onClick: async () => {
        if (!confirm(t("message.confirmCancel"))) return;
        try {
          await api("DELETE", `/sms/${encodeURIComponent(id)}`);
          say(done, "ok", t("message.cancelled.done"));
          await load();
        } catch (error) { say(problem, "error", errorText(error)); }
      } }, t("message.cancel")));
    }
    if (m.status === "failed") {
      buttons.push(h("button", { type: "button", class: "primary", onClick: async () => {
        try {
          const r = await api("POST", `/sms/${encodeURIComponent(id)}/resend`, { body: {} });
          say(done, "ok", t("message.resent", { attempts: r.attempts }));
          await load();
        } catch (error) { say(problem, "error", errorText(error)); }
      } }, t("message.resend")));
    }
    return buttons.length ? h("div", { class: "actions page-actions" }, buttons) : null;
  }

  let moving = true;
  await Promise.all([load(), loadHooks()]);
  // Follows the message while it moves; a final status stays as drawn (and keeps the focus).
  // Its deliveries are followed always: the last event's are logged after the final status.
  const timer = setInterval(() => { if (moving) load(); loadHooks(); }, 5000);
  return () => clearInterval(timer);
}

function details(m) {
  const rows = [
    [t("messages.col.status"), h("span", { class: `badge ${m.status}`, id: "message-status", "data-status": m.status }, statusLabel(m.status))],
    [t("message.to"), m.to],
    [t("message.text"), h("span", { class: "text" }, m.message)],
    [t("message.priority"), t("priority." + m.priority) || m.priority],
    [t("message.device"), m.device_id || "—"],
    [t("message.attempts"), String(m.attempts || 1)],
  ];
  if (m.batch_id) rows.push([t("message.batch"), m.batch_id]);
  if (m.error?.code) {
    const reason = m.error.reason && m.error.reason !== m.error.code ? ` (${m.error.reason})` : "";
    rows.push([t("message.error"), `${m.error.code}${reason}: ${m.error.message}`]);
    if (m.error.hint) rows.push([t("message.hint"), h("span", { id: "message-hint" }, m.error.hint)]);
  }
  if (m.delivery_report_missing) rows.push([t("message.report"), t("message.report_missing")]);
  if (m.held_until) rows.push([t("message.held"), h("span", { id: "message-held" }, t("message.held_until", { time: dateTime(m.held_until) }))]);
  if (m.metadata && Object.keys(m.metadata).length) rows.push([t("message.metadata"), h("code", {}, JSON.stringify(m.metadata))]);
  return h("section", { class: "card" }, h("h2", {}, t("message.details")),
    h("dl", { class: "pairs" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

function timeline(m) {
  const steps = TIMELINE.filter(([, key]) => m[key]);
  return h("section", { class: "card" }, h("h2", {}, t("message.timeline")),
    h("ol", { class: "timeline" }, steps.map(([label, key]) => h("li", {}, h("strong", {}, t("message." + label)), " ", h("time", { datetime: m[key] }, dateTime(m[key]))))));
}

function parts(m) {
  const split = plan(m.message || "");
  return h("section", { class: "card" }, h("h2", {}, t("message.parts")),
    h("p", {}, t("message.partsSummary", { count: m.segments, encoding: m.encoding, units: split.units })),
    split.count > 1 ? h("ol", { class: "parts" }, split.parts.map((part, i) =>
      h("li", {}, h("span", { class: "hint" }, `${t("message.part", { n: i + 1 })} · ${unitCost(part, split.encoding)} · `), part))) : null);
}
