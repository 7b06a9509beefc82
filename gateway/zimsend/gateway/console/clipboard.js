// A "Copy" button for secrets shown once (API keys, webhook secrets, pairing URIs).

import { h } from "./dom.js";
import { t } from "./i18n.js";

/** A read-only field holding `value`, with a button that copies it and says so. */
export function copyable(label, value, id) {
  const input = h("input", { type: "text", readonly: true, value, id, class: "secret", "aria-label": label });
  const done = h("span", { class: "copied", role: "status" });
  const button = h("button", { type: "button", "aria-label": `${t("common.copy")}: ${label}`, onClick: async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(value);
    } catch {
      document.execCommand("copy"); // the text is selected: the older way still works
    }
    done.textContent = t("common.copied");
  } }, t("common.copy"));
  return h("div", { class: "copyable" }, input, button, done);
}
