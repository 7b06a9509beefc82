// French and English. The language defaults to the browser's (French first when the browser
// lists it before English), and a choice made in the header is remembered in localStorage:
// a language is no secret, unlike the credentials (session.js).

import { en } from "./texts/en.js";
import { fr } from "./texts/fr.js";

const MESSAGES = { en, fr };

const CHOICE_KEY = "zimsend.language";
const SUPPORTED = ["fr", "en"];
let current = initialLanguage();

function initialLanguage() {
  const chosen = localStorage.getItem(CHOICE_KEY);
  if (SUPPORTED.includes(chosen)) return chosen;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const base = tag.toLowerCase().split("-")[0];
    if (SUPPORTED.includes(base)) return base;
  }
  return "en";
}

export function language() {
  return current;
}

export function setLanguage(code) {
  if (!SUPPORTED.includes(code)) return;
  current = code;
  localStorage.setItem(CHOICE_KEY, code);
  document.documentElement.lang = code;
}

/** The text for `key` in the current language, {name} placeholders filled from `vars`. */
export function t(key, vars = {}) {
  const text = MESSAGES[current][key] ?? MESSAGES.en[key];
  if (text === undefined) return undefined;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

// Codes whose server message adds what our words cannot know: the field, the limit, the
// index in a bulk request, the phone's reason. For the others our words say it all.
const SERVER_DETAIL = new Set([
  "INVALID_REQUEST", "INVALID_PHONE_NUMBER", "MESSAGE_TOO_LONG", "INVALID_SCHEDULED_DATE",
  "INVALID_WEBHOOK_URL", "TOO_MANY_RECIPIENTS", "DEVICE_OFFLINE", "RATE_LIMIT_EXCEEDED",
  "IDEMPOTENCY_KEY_REUSED",
]);

/** What to tell a person about an ApiError: our words for SPEC's code (and the server's
 * specifics where they help); the server's message alone for codes we do not word. */
export function errorText(error) {
  const words = t("error." + error.code);
  if (!words) return error.message || error.code;
  return SERVER_DETAIL.has(error.code) && error.message ? `${words} (${error.message})` : words;
}

document.documentElement.lang = current;
