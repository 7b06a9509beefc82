// Dates, numbers and statuses the way the chosen language writes them.

import { language, t } from "./i18n.js";

/** A timestamp from the API (RFC 3339) in the reader's time zone, or "—". */
export function dateTime(value) {
  if (!value) return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return value;
  return date.toLocaleString(language(), { dateStyle: "short", timeStyle: "medium" });
}

export function number(value) {
  return new Intl.NumberFormat(language()).format(value || 0);
}

/** YYYY-MM-DD of `date` in UTC: the server's dates are UTC days. */
export function utcDay(date = new Date()) {
  return date.toISOString().slice(0, 10);
}

/** A status word as a badge: colour from the status, text in the chosen language. */
export function statusLabel(status) {
  return t("status." + status) || status;
}
