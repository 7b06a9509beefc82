// Messages: history with SPEC §4's filters and pagination, refreshed every 5 s, and the CSV
// export (GET /v1/sms/history:export) downloaded through a Blob: the request needs headers,
// so a plain link cannot carry the credentials (and they must never be in a URL).

import { api } from "../api.js";
import { field, h, notice, say } from "../dom.js";
import { dateTime, statusLabel } from "../format.js";
import { errorText, language, t } from "../i18n.js";

const STATUSES = ["queued", "processing", "sent", "delivered", "failed", "cancelled"];
const PAGE_SIZE = 20;
// Kept across visits (a detail page and back keeps the filters), not across reloads.
const state = { page: 1, status: "", from_date: "", to_date: "", to: "", search: "" };

export async function render(main) {
  const problem = notice("error");
  const controls = {
    status: h("select", { name: "status" }, h("option", { value: "" }, t("messages.anyStatus")),
      STATUSES.map((s) => h("option", { value: s }, statusLabel(s)))),
    from_date: h("input", { type: "date", name: "from_date" }),
    to_date: h("input", { type: "date", name: "to_date" }),
    to: h("input", { type: "tel", name: "to", autocomplete: "off" }),
    search: h("input", { type: "search", name: "search" }),
  };
  for (const [name, control] of Object.entries(controls)) control.value = state[name];
  const filters = h("form", { class: "card filters", "aria-label": t("messages.filters"), onSubmit: (event) => {
    event.preventDefault();
    for (const [name, control] of Object.entries(controls)) state[name] = control.value.trim();
    state.page = 1;
    load();
  } },
    field(t("messages.status"), controls.status),
    field(t("messages.from"), controls.from_date),
    field(t("messages.to"), controls.to_date),
    field(t("messages.number"), controls.to),
    field(t("messages.search"), controls.search),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary" }, t("messages.apply")),
      h("button", { type: "button", id: "export-csv", onClick: () => exportCsv(problem) }, t("messages.export"))),
  );
  const results = h("div", { id: "message-list", "aria-live": "polite" }, t("common.loading"));
  main.append(h("h1", {}, t("messages.title")), filters, problem, results);
  let shown = "";

  async function load() {
    try {
      const query = { ...state, page: state.page, limit: PAGE_SIZE };
      const history = await api("GET", "/sms/history", { query });
      // Redraw only on change: a redraw would take the focus from a keyboard user's link.
      const seen = JSON.stringify([history.data, history.pagination, language()]);
      if (seen !== shown) results.replaceChildren(table(history.data), pager(history.pagination));
      shown = seen;
      say(problem, "error");
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  }

  function pager({ current_page, total_pages, total_items }) {
    const pages = Math.max(1, total_pages);
    return h("div", { class: "pager" },
      h("button", { type: "button", disabled: current_page <= 1, onClick: () => { state.page -= 1; load(); } }, t("common.previous")),
      h("span", {}, t("common.page", { page: current_page, pages, total: total_items })),
      h("button", { type: "button", disabled: current_page >= pages, onClick: () => { state.page += 1; load(); } }, t("common.next")));
  }

  await load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}

function table(rows) {
  if (!rows.length) return h("p", {}, t("messages.none"));
  const head = ["to", "message", "status", "created", "segments"].map((c) => t("messages.col." + c));
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, head.map((label) => h("th", { scope: "col" }, label)))),
    h("tbody", {}, rows.map((m) => h("tr", { "data-message-id": m.message_id },
      h("td", { "data-label": head[0] }, h("a", { href: `#/messages/${encodeURIComponent(m.message_id)}` }, m.to)),
      h("td", { "data-label": head[1], class: "text" }, m.message),
      h("td", { "data-label": head[2] }, h("span", { class: `badge ${m.status}`, "data-status": m.status }, statusLabel(m.status))),
      h("td", { "data-label": head[3] }, dateTime(m.created_at)),
      h("td", { "data-label": head[4] }, String(m.segments))))));
}

async function exportCsv(problem) {
  say(problem, "status", t("messages.exporting"));
  try {
    const { from_date, to_date, status } = state;
    const response = await api("GET", "/sms/history:export", { query: { format: "csv", from_date, to_date, status }, raw: true });
    const csv = await response.text();
    // The export ends with its completion line; without it the stream was cut (decisions.md).
    if (!/# end of export: \d+ messages\s*$/.test(csv)) {
      say(problem, "error", t("messages.exportCut"));
      return;
    }
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const link = h("a", { href: url, download: `zimsend-messages-${new Date().toISOString().slice(0, 10)}.csv`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    say(problem, "status");
  } catch (error) {
    say(problem, "error", errorText(error));
  }
}
