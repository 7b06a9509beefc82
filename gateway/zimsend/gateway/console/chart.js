// The Overview's 30-day chart: stacked bars drawn as SVG elements (no library, no inline
// style), with a text summary for screen readers and a <title> per bar.

import { t } from "./i18n.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  el.append(...children);
  return el;
}

/** `days`: [{date, sent, delivered, failed}] oldest first; `sent` includes the delivered. */
export function dailyChart(days) {
  const width = 900;
  const height = 200;
  const gap = 2;
  const barWidth = width / days.length - gap;
  const peak = Math.max(1, ...days.map((d) => d.sent + d.failed));
  const scale = (height - 20) / peak;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  days.forEach((day, index) => {
    const x = index * (barWidth + gap);
    const layers = [
      ["delivered", day.delivered],
      ["sent", Math.max(0, day.sent - day.delivered)],
      ["failed", day.failed],
    ];
    let top = height - 16;
    const group = svg("g", {}, svg("title", {}, `${day.date}: ${day.sent} / ${day.delivered} / ${day.failed}`));
    for (const [kind, count] of layers) {
      const tall = count * scale;
      top -= tall;
      if (count > 0) group.append(svg("rect", { x, y: top, width: barWidth, height: tall, class: `bar-${kind}` }));
    }
    if (index % 5 === 0 || index === days.length - 1) {
      group.append(svg("text", { x: x + barWidth / 2, y: height - 2, "text-anchor": "middle", class: "axis" }, day.date.slice(5)));
    }
    chart.append(group);
  });
  return chart;
}

/** The legend under the chart. */
export function legend() {
  const item = (kind) => {
    const swatch = svg("svg", { viewBox: "0 0 10 10", class: "swatch", "aria-hidden": "true" },
      svg("rect", { width: 10, height: 10, class: `bar-${kind}` }));
    const li = document.createElement("li");
    li.append(swatch, " ", t("overview.legend." + kind));
    return li;
  };
  const list = document.createElement("ul");
  list.className = "legend";
  list.append(item("delivered"), item("sent"), item("failed"));
  return list;
}
