// Overview: today's messages by status, phones online/offline, messages waiting, and the last
// 30 days as a chart (GET /v1/sms/stats, /v1/devices, /v1/sms/history counts).

import { api } from "../api.js";
import { dailyChart, legend } from "../chart.js";
import { h, notice, say } from "../dom.js";
import { number, utcDay } from "../format.js";
import { errorText, t } from "../i18n.js";

const DAY_MS = 86_400_000;

export async function render(main) {
  const problem = notice("error");
  main.append(h("h1", {}, t("overview.title")), problem);
  const today = utcDay();
  const monthAgo = utcDay(new Date(Date.now() - 29 * DAY_MS));
  try {
    const [todayStats, month, devices, queued, processing] = await Promise.all([
      api("GET", "/sms/stats", { query: { from_date: today, to_date: today } }),
      api("GET", "/sms/stats", { query: { from_date: monthAgo, to_date: today } }),
      api("GET", "/devices"),
      api("GET", "/sms/history", { query: { status: "queued", limit: 1 } }),
      api("GET", "/sms/history", { query: { status: "processing", limit: 1 } }),
    ]);
    const s = todayStats.stats;
    const online = devices.devices.filter((d) => d.status === "online").length;
    main.append(
      h("div", { class: "cards" },
        tile(t("overview.today"), [
          [t("overview.sent"), s.total_sent, "sent"],
          [t("overview.delivered"), s.delivered, "delivered"],
          [t("overview.failed"), s.failed, "failed"],
          [t("overview.pending"), s.pending, "queued"],
        ]),
        tile(t("overview.phones"), [
          [t("overview.online"), online, "online"],
          [t("overview.offline"), devices.devices.length - online, "offline"],
        ]),
        tile(t("overview.waiting"), [
          [t("overview.queued"), queued.pagination.total_items, "queued"],
          [t("overview.processing"), processing.pagination.total_items, "processing"],
        ]),
      ),
      chartSection(month.stats, monthAgo),
    );
  } catch (error) {
    say(problem, "error", errorText(error));
  }
}

function tile(title, rows) {
  return h("section", { class: "card tile" }, h("h2", {}, title),
    h("dl", {}, rows.map(([label, value, kind]) => [
      h("dt", {}, label),
      h("dd", { class: `count ${kind}`, "data-count": kind }, number(value)),
    ])));
}

function chartSection(stats, firstDay) {
  const byDate = new Map(stats.by_day.map((d) => [d.date, d]));
  const days = [];
  for (let i = 0; i < 30; i += 1) {
    const date = utcDay(new Date(Date.parse(firstDay) + i * DAY_MS));
    days.push(byDate.get(date) || { date, sent: 0, delivered: 0, failed: 0 });
  }
  const summary = t("overview.chartSummary", {
    sent: number(stats.total_sent), delivered: number(stats.delivered), failed: number(stats.failed),
  });
  const chart = dailyChart(days);
  chart.setAttribute("aria-label", summary);
  return h("section", { class: "card" }, h("h2", {}, t("overview.chart")), chart, legend(), h("p", { class: "hint" }, summary));
}
