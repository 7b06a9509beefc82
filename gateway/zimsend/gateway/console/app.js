// The console's shell: header (navigation, language, sign-out) and a hash router that renders
// one page module at a time into <main>. Signed out, every address shows the sign-in page.
// A page's render() may return a function that stops what it started (refresh timers).

import { whenCredentialsRefused } from "./api.js";
import { h } from "./dom.js";
import { language, setLanguage, t } from "./i18n.js";
import { credentials, signOut } from "./session.js";
import * as keys from "./pages/keys.js";
import * as message from "./pages/message.js";
import * as messages from "./pages/messages.js";
import * as overview from "./pages/overview.js";
import * as phones from "./pages/phones.js";
import * as send from "./pages/send.js";
import * as signin from "./pages/signin.js";
import * as webhooks from "./pages/webhooks.js";

const PAGES = [
  ["overview", overview],
  ["messages", messages],
  ["send", send],
  ["phones", phones],
  ["keys", keys],
  ["webhooks", webhooks],
];

const header = document.getElementById("top");
const main = document.getElementById("main");
let stopPage = null;
let signedOutReason = "";
let firstRender = true;
let renders = 0;

function route() {
  const [name = "", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { name, arg: rest.map(decodeURIComponent).join("/") };
}

async function render() {
  const thisRender = ++renders;
  if (stopPage) stopPage();
  stopPage = null;
  const { name, arg } = route();
  const signedIn = credentials() !== null;
  let page = signin;
  let current = "";
  if (signedIn) {
    current = PAGES.some(([key]) => key === name) ? name : "overview";
    page = current === "messages" && arg ? message : PAGES.find(([key]) => key === current)[1];
  }
  document.title = `${t("app.name")} · ${t(signedIn ? "nav." + current : "signin.title")}`;
  renderHeader(signedIn, current);
  main.replaceChildren();
  const context = { arg, reason: signedOutReason, go };
  signedOutReason = "";
  // After a navigation, the focus moves to the new page (screen readers start there; the
  // next Tab goes into its content); a page may then put it somewhere itself.
  if (!firstRender) main.focus();
  firstRender = false;
  const stop = (await page.render(main, context)) || null;
  // Left while it was still loading: stop its timers at once.
  if (thisRender !== renders) stop?.();
  else stopPage = stop;
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function renderHeader(signedIn, current) {
  const picker = h(
    "select",
    { id: "language", onChange: (event) => { setLanguage(event.target.value); render(); } },
    h("option", { value: "fr", lang: "fr" }, "Français"),
    h("option", { value: "en", lang: "en" }, "English"),
  );
  picker.value = language();
  const skip = h("a", { class: "skip", href: "#", onClick: (event) => { event.preventDefault(); main.focus(); } }, t("app.skip"));
  const brand = h("a", { class: "brand", href: signedIn ? "#/overview" : "#/" }, t("app.name"));
  const tools = h("div", { class: "tools" },
    h("label", { for: "language", class: "visually-hidden" }, t("app.language")), picker);
  if (signedIn) {
    tools.append(
      h("span", { class: "who" }, t("app.signedInAs", { client: credentials().clientId })),
      h("button", { type: "button", id: "sign-out", onClick: () => { signOut(); go("#/"); } }, t("app.signOut")),
    );
  }
  const rows = [h("div", { class: "bar" }, skip, brand, tools)];
  if (signedIn) {
    rows.push(h("nav", { "aria-label": t("app.nav") }, h("ul", {}, PAGES.map(([key]) =>
      h("li", {}, h("a", { href: `#/${key}`, "aria-current": key === current ? "page" : null }, t("nav." + key)))))));
  }
  header.replaceChildren(...rows);
}

whenCredentialsRefused(() => {
  signOut();
  signedOutReason = t("signin.signedOut");
  go("#/");
});
window.addEventListener("hashchange", render);
render();
