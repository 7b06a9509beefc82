// API keys: create (the secret shown once, with a copy button), list (last 4 characters
// only, as the API gives them), revoke with confirmation.

import { api } from "../api.js";
import { copyable } from "../clipboard.js";
import { field, h, notice, say } from "../dom.js";
import { dateTime } from "../format.js";
import { errorText, t } from "../i18n.js";

export async function render(main) {
  const problem = notice("error");
  const done = notice();
  const created = h("div", { id: "created-key" });
  const list = h("div", { id: "key-list" }, t("common.loading"));
  const listSection = h("section", { class: "card", "aria-labelledby": "key-list-title" },
    h("h2", { id: "key-list-title" }, t("keys.list")), list);
  const name = h("input", { id: "key-name", required: true, maxlength: 100 });
  const test = h("input", { id: "key-test", type: "checkbox" });
  const form = h("form", { class: "card", "aria-labelledby": "create-key", onSubmit: async (event) => {
    event.preventDefault();
    try {
      const key = await api("POST", "/api-keys", { body: { name: name.value.trim(), test: test.checked } });
      name.value = "";
      created.replaceChildren(h("section", { class: "card secret-shown" },
        h("h2", { tabindex: "-1" }, t("keys.created", { name: key.name })),
        copyable(t("signin.apiKey"), key.api_key, "new-api-key"),
        h("p", { class: "hint" }, t("common.shownOnce"))));
      created.querySelector("h2").focus();
      await load();
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  } },
    h("h2", { id: "create-key" }, t("keys.create")),
    field(t("keys.name"), name),
    h("div", { class: "field check" }, test, h("label", { for: "key-test" }, t("keys.test"))),
    h("button", { type: "submit", class: "primary" }, t("keys.createSubmit")));
  main.append(h("h1", {}, t("keys.title")), problem, done, form, created, listSection);

  async function load() {
    try {
      const { api_keys: keys } = await api("GET", "/api-keys");
      list.replaceChildren(table(keys));
    } catch (error) {
      say(problem, "error", errorText(error));
    }
  }

  function table(keys) {
    if (!keys.length) return h("p", {}, t("common.none"));
    const head = ["name", "key", "kind", "created", "used", "state"].map((c) => t("keys.col." + c));
    return h("table", { class: "list" },
      h("thead", {}, h("tr", {}, head.map((label) => h("th", { scope: "col" }, label)), h("td", {}))),
      h("tbody", {}, keys.map((k) => h("tr", { "data-key-id": k.key_id },
        h("td", { "data-label": head[0] }, k.name),
        h("td", { "data-label": head[1] }, h("code", {}, `…${k.last4}`)),
        h("td", { "data-label": head[2] }, k.test ? t("keys.testKind") : t("keys.live")),
        h("td", { "data-label": head[3] }, dateTime(k.created_at)),
        h("td", { "data-label": head[4] }, dateTime(k.last_used_at)),
        h("td", { "data-label": head[5], "data-field": "state" }, k.revoked_at ? t("keys.revokedAt", { when: dateTime(k.revoked_at) }) : t("keys.active")),
        h("td", {}, k.revoked_at ? null : h("button", { type: "button", class: "danger", "aria-label": t("keys.revokeLabel", { name: k.name }), onClick: async () => {
          if (!confirm(t("keys.confirmRevoke", { name: k.name }))) return;
          try {
            await api("DELETE", `/api-keys/${encodeURIComponent(k.key_id)}`);
            say(done, "ok", t("keys.revoked", { name: k.name }));
            await load();
          } catch (error) { say(problem, "error", errorText(error)); }
        } }, t("keys.revoke")))))));
  }

  await load();
}
