// Sign in: a client ID and an API key, checked with GET /v1/auth/test before they are kept.

import { api } from "../api.js";
import { field, h, notice, say, withCode } from "../dom.js";
import { errorText, t } from "../i18n.js";
import { signIn } from "../session.js";

export async function render(main, { reason, go }) {
  const clientId = h("input", { id: "client-id", name: "client_id", required: true, autocomplete: "username", spellcheck: "false" });
  const apiKey = h("input", { id: "api-key", name: "api_key", type: "password", required: true, autocomplete: "current-password" });
  const submit = h("button", { type: "submit", class: "primary" }, t("signin.submit"));
  const problem = notice("error");
  const form = h("form", { class: "card narrow", onSubmit: async (event) => {
    event.preventDefault();
    const auth = { clientId: clientId.value.trim(), apiKey: apiKey.value.trim() };
    submit.disabled = true;
    submit.textContent = t("signin.checking");
    try {
      await api("GET", "/auth/test", { auth });
      signIn(auth.clientId, auth.apiKey);
      go("#/overview");
    } catch (error) {
      say(problem, "error", errorText(error));
      apiKey.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = t("signin.submit");
    }
  } },
    h("h1", {}, t("signin.title")),
    h("p", {}, withCode(t("signin.intro"))),
    problem,
    field(t("signin.clientId"), clientId),
    field(t("signin.apiKey"), apiKey, t("signin.keptWhere")),
    submit,
  );
  main.append(form);
  if (reason) say(problem, "error", reason);
  clientId.focus();
}
