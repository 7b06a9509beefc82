// Phones: each phone's live presence, battery, signal and sent-today against its daily cap,
// refreshing by itself (presence every 5 s, counts every 30 s) without disturbing an open
// settings form; add a phone (its pairing QR code and URI), edit pacing/cap/enabled, rotate
// the password, delete with confirmation.

import { api } from "../api.js";
import { copyable } from "../clipboard.js";
import { field, h, notice, say } from "../dom.js";
import { dateTime, number, utcDay } from "../format.js";
import { errorText, t } from "../i18n.js";
import { qrCanvas } from "../qr.js";

export async function render(main) {
  const problem = notice("error");
  const done = notice();
  const list = h("div", { id: "phone-list", class: "phones" }, t("common.loading"));
  const pairing = h("div", { id: "pairing" });
  const cards = new Map(); // device_id → {card, update(device), setSentToday(n)}
  main.append(h("h1", {}, t("phones.title")), h("p", { class: "hint" }, t("phones.live")), problem, done, list,
    pairing, addForm());

  async function refresh(withCounts) {
    try {
      const { devices } = await api("GET", "/devices");
      const same = devices.length === cards.size && devices.every((d) => cards.has(d.device_id));
      if (!same) {
        cards.clear();
        list.replaceChildren(...(devices.length ? devices.map((d) => { const c = phoneCard(d); cards.set(d.device_id, c); return c.card; }) : [h("p", {}, t("phones.none"))]));
        withCounts = true;
      }
      for (const d of devices) cards.get(d.device_id).update(d);
      if (withCounts) await Promise.all(devices.map(sentToday));
      say(problem, "error");
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  }

  async function sentToday(device) {
    const today = utcDay();
    const { stats } = await api("GET", "/sms/stats", { query: { from_date: today, to_date: today, device_id: device.device_id } });
    cards.get(device.device_id)?.setSentToday(stats.total_sent + stats.failed);
  }

  function showPairing(name, uri, password) {
    pairing.replaceChildren(h("section", { class: "card", "aria-labelledby": "pairing-title" },
      h("h2", { id: "pairing-title", tabindex: "-1" }, t("phones.pairing", { name })),
      h("p", {}, t("phones.pairingHow")),
      qrCanvas(uri, t("phones.qrLabel", { name })),
      h("p", {}, t("phones.uri")), copyable(t("phones.uri"), uri, "pairing-uri"),
      h("p", {}, t("phones.password")), copyable(t("phones.password"), password, "device-password"),
      h("p", { class: "hint" }, t("common.shownOnce"))));
    pairing.querySelector("h2").focus();
  }

  function addForm() {
    const name = h("input", { id: "phone-name", required: true, maxlength: 100 });
    return h("form", { class: "card", "aria-labelledby": "add-phone", onSubmit: async (event) => {
      event.preventDefault();
      try {
        const created = await api("POST", "/devices", { body: { name: name.value.trim() } });
        name.value = "";
        showPairing(created.name, created.pairing_uri, created.device_password);
        await refresh(true);
      } catch (error) {
        say(problem, "error", errorText(error));
      }
    } },
      h("h2", { id: "add-phone" }, t("phones.add")), field(t("phones.name"), name),
      h("button", { type: "submit", class: "primary" }, t("phones.addSubmit")));
  }

  function phoneCard(device) {
    const path = `/devices/${encodeURIComponent(device.device_id)}`;
    const live = {
      status: h("span", { class: "badge", "data-field": "status" }),
      reason: h("span", { class: "hint" }),
      lastSeen: h("span", {}), battery: h("span", {}), signal: h("span", {}), network: h("span", {}),
      sent: h("span", { "data-field": "sent-today" }, "—"),
    };
    let cap = device.daily_cap;
    let budgetShown = String(device.parts_per_minute ?? 0);
    let lastSent = null;
    const showSent = () => { live.sent.textContent = `${lastSent === null ? "—" : number(lastSent)} / ${cap ? number(cap) : t("phones.noCap")}`; };
    const controls = {
      name: h("input", { value: device.name, required: true }),
      interval: h("input", { type: "number", min: 0, step: 100, value: String(device.send_interval_ms) }),
      cap: h("input", { type: "number", min: 0, value: String(device.daily_cap) }),
      budget: h("input", { type: "number", min: 0, value: budgetShown }),
      enabled: h("input", { type: "checkbox", id: `enabled-${device.device_id}`, checked: device.enabled }),
    };
    const settings = h("details", {}, h("summary", {}, t("phones.settings")),
      h("form", { onSubmit: async (event) => {
        event.preventDefault();
        try {
          const body = {
            name: controls.name.value.trim(), enabled: controls.enabled.checked,
            send_interval_ms: Number(controls.interval.value), daily_cap: Number(controls.cap.value),
          };
          // Sent only when changed: the shown value may be the server's default, which must
          // stay a default (it follows the server and the phone's pacing).
          if (controls.budget.value !== budgetShown) body.parts_per_minute = Number(controls.budget.value);
          const { device: saved } = await api("PATCH", path, { body });
          budgetShown = controls.budget.value = String(saved.parts_per_minute ?? 0);
          title.textContent = saved.name;
          cap = saved.daily_cap;
          showSent();
          say(done, "ok", t("phones.saved"));
        } catch (error) { say(problem, "error", errorText(error)); }
      } },
        field(t("phones.name"), controls.name), field(t("phones.interval"), controls.interval),
        field(t("phones.cap"), controls.cap), field(t("phones.budget"), controls.budget),
        h("div", { class: "field check" }, controls.enabled, h("label", { for: controls.enabled.id }, t("phones.enabled"))),
        h("button", { type: "submit", class: "primary" }, t("common.save"))));
    const title = h("h2", {}, device.name);
    const card = h("article", { class: "card phone", "data-device-id": device.device_id },
      h("div", { class: "phone-head" }, title, live.status),
      live.reason,
      h("dl", { class: "pairs" },
        h("dt", {}, t("phones.lastSeen")), h("dd", {}, live.lastSeen),
        h("dt", {}, t("phones.battery")), h("dd", {}, live.battery),
        h("dt", {}, t("phones.signal")), h("dd", {}, live.signal),
        h("dt", {}, t("phones.network")), h("dd", {}, live.network),
        h("dt", {}, t("phones.sentToday")), h("dd", {}, live.sent),
        h("dt", {}, "ID"), h("dd", {}, h("code", {}, device.device_id))),
      settings,
      h("div", { class: "actions" },
        h("button", { type: "button", onClick: async () => {
          if (!confirm(t("phones.confirmRotate", { name: title.textContent }))) return;
          try {
            const r = await api("POST", `${path}/rotate-password`, { body: {} });
            showPairing(title.textContent, r.pairing_uri, r.device_password);
          } catch (error) { say(problem, "error", errorText(error)); }
        } }, t("phones.rotate")),
        h("button", { type: "button", class: "danger", onClick: async () => {
          if (!confirm(t("phones.confirmDelete", { name: title.textContent }))) return;
          try {
            await api("DELETE", path);
            say(done, "ok", t("phones.deleted", { name: title.textContent }));
            await refresh(true);
          } catch (error) { say(problem, "error", errorText(error)); }
        } }, t("common.delete"))));
    showSent();
    return {
      card,
      setSentToday(n) { lastSent = n; showSent(); },
      update(d) {
        live.status.textContent = t("status." + d.status);
        live.status.className = `badge ${d.status}`;
        live.status.dataset.status = d.status;
        live.reason.textContent = d.cannot_send_reason || "";
        live.lastSeen.textContent = dateTime(d.last_seen);
        live.battery.textContent = d.battery == null ? "—" : `${d.battery} %${d.charging ? ", " + t("phones.charging") : ""}`;
        live.signal.textContent = d.signal == null ? "—" : `${d.signal} / 4`;
        live.network.textContent = d.network && d.network !== "NETWORK_REGISTRATION_UNSPECIFIED" ? d.network : "—";
      },
    };
  }

  await refresh(true);
  let ticks = 0;
  const timer = setInterval(() => { ticks += 1; refresh(ticks % 6 === 0); }, 5000);
  return () => clearInterval(timer);
}
