// Send: one SMS with a live character/segment counter (segments.js, the server's rules),
// priority, schedule and phone choice (X-Device-ID); and bulk from a CSV file, previewed, sent
// 100 at a time (SPEC's bulk limit) with a progress bar.

import { api } from "../api.js";
import { parseCsv, recipientsOf } from "../csv.js";
import { field, h, notice, say, withCode } from "../dom.js";
import { errorText, t } from "../i18n.js";
import { characterCount, plan } from "../segments.js";

const PRIORITIES = ["urgent", "high", "normal", "low", "very_low"];
const BULK_LIMIT = 100;

export async function render(main) {
  const to = h("input", { id: "send-to", type: "tel", required: true, autocomplete: "off", placeholder: "+33612345678" });
  const text = h("textarea", { id: "send-message", rows: 5, maxlength: 3200 });
  const counter = h("p", { id: "send-counter", class: "counter", "aria-live": "polite" });
  const priority = h("select", { id: "send-priority" }, PRIORITIES.map((p) => h("option", { value: p }, t("priority." + p))));
  priority.value = "normal";
  const schedule = h("input", { id: "send-schedule", type: "datetime-local" });
  const device = h("select", { id: "send-device" }, h("option", { value: "" }, t("send.anyDevice")));
  const problem = notice("error");
  const result = notice();
  const sendButton = h("button", { type: "submit", class: "primary" }, t("send.submit"));

  function count() {
    const split = plan(text.value);
    counter.textContent = t("send.counter", {
      chars: characterCount(text.value), encoding: split.encoding === "GSM7" ? "GSM-7" : "UCS-2", units: split.units, count: split.count,
    });
    counter.classList.toggle("over", characterCount(text.value) > 1600);
  }
  text.addEventListener("input", count);
  count();

  function common() {
    const body = { priority: priority.value };
    if (schedule.value) body.scheduled_at = new Date(schedule.value).toISOString();
    return body;
  }

  const single = h("form", { class: "card", "aria-labelledby": "send-single", onSubmit: async (event) => {
    event.preventDefault();
    say(problem, "error");
    say(result, "ok");
    const headers = device.value ? { "X-Device-ID": device.value } : {};
    sendButton.disabled = true; // a second click while the first is on its way would send twice
    try {
      const sent = await api("POST", "/sms/send", { headers, body: { to: to.value.trim(), message: text.value, ...common() } });
      say(result, "ok", t("send.queued", { id: sent.message_id, segments: sent.segments, encoding: sent.encoding }), " ",
        h("a", { href: `#/messages/${encodeURIComponent(sent.message_id)}` }, t("send.see")));
    } catch (error) {
      say(problem, "error", errorText(error));
    } finally {
      sendButton.disabled = false;
    }
  } },
    h("h2", { id: "send-single" }, t("send.single")),
    field(t("send.to"), to),
    field(t("send.message"), text, t("send.counterHint")),
    counter,
    h("div", { class: "row" }, field(t("send.priority"), priority), field(t("send.schedule"), schedule), field(t("send.device"), device)),
    problem, result,
    sendButton,
  );
  main.append(h("h1", {}, t("send.title")), single, bulkSection(text, common));

  try {
    const { devices } = await api("GET", "/devices");
    for (const d of devices) device.append(h("option", { value: d.device_id }, `${d.name} (${t("status." + d.status)})`));
  } catch (error) {
    say(problem, "error", errorText(error));
  }
}

function bulkSection(text, common) {
  const file = h("input", { id: "bulk-file", type: "file", accept: ".csv,text/csv" });
  const preview = h("div", { id: "bulk-preview" });
  const progress = h("progress", { id: "bulk-progress", max: 1, value: 0, hidden: true });
  const problem = notice("error");
  const result = notice();
  let recipients = [];
  let hasMessage = false;
  const submit = h("button", { type: "submit", class: "primary", disabled: true }, t("send.bulkSubmit", { rows: 0 }));

  file.addEventListener("change", async () => {
    say(problem, "error");
    say(result, "ok");
    const parsed = recipientsOf(parseCsv(file.files[0] ? await file.files[0].text() : ""));
    ({ recipients, hasMessage } = parsed);
    submit.disabled = recipients.length === 0;
    submit.textContent = t("send.bulkSubmit", { rows: recipients.length });
    if (!recipients.length) {
      preview.replaceChildren();
      if (file.files[0]) say(problem, "error", t("send.noRows"));
      return;
    }
    const shown = recipients.slice(0, 10);
    preview.replaceChildren(
      h("p", {}, t("send.preview", { rows: recipients.length, shown: shown.length })),
      h("table", { class: "list" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "#"), h("th", { scope: "col" }, t("messages.col.to")),
          h("th", { scope: "col" }, t("messages.col.message")))),
        h("tbody", {}, shown.map((r, i) => h("tr", {}, h("td", {}, String(i + 1)), h("td", {}, r.to),
          h("td", { class: "text" }, hasMessage ? r.message : text.value))))));
  });

  const form = h("form", { class: "card", "aria-labelledby": "send-bulk", onSubmit: async (event) => {
    event.preventDefault();
    say(problem, "error");
    if (!hasMessage && !text.value) { say(problem, "error", t("send.needText")); return; }
    submit.disabled = true;
    progress.hidden = false;
    progress.max = recipients.length;
    progress.value = 0;
    let queued = 0;
    const failures = [];
    for (let start = 0; start < recipients.length; start += BULK_LIMIT) {
      const chunk = recipients.slice(start, start + BULK_LIMIT);
      try {
        const response = hasMessage
          ? await api("POST", "/sms/send-bulk-personalized", { body: { messages: chunk.map((r) => ({ to: r.to, message: r.message })), ...common() } })
          : await api("POST", "/sms/send-bulk", { body: { recipients: chunk.map((r) => r.to), message: text.value, ...common() } });
        queued += response.total_recipients;
      } catch (error) {
        failures.push(t("send.bulkFailed", { first: start + 1, last: start + chunk.length, error: errorText(error) }));
      }
      progress.value = start + chunk.length;
      say(result, "ok", t("send.bulkDone", { done: queued, total: recipients.length }));
    }
    if (failures.length) say(problem, "error", ...failures.map((f) => h("p", {}, f)));
    // All queued: the same file again would send everything twice; choosing a file re-arms.
    submit.disabled = failures.length === 0;
  } },
    h("h2", { id: "send-bulk" }, t("send.bulk")),
    h("p", { class: "hint" }, withCode(t("send.bulkHow"))),
    field(t("send.file"), file),
    preview,
    h("label", { for: "bulk-progress", class: "visually-hidden" }, t("send.progress")),
    progress,
    problem, result,
    submit,
  );
  return form;
}
