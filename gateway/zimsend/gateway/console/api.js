// The one way the console talks to ZimSend: the public REST API at /v1 on this origin, with
// the tab's credentials as X-Client-ID / X-API-Key headers. Every failure becomes an ApiError
// carrying SPEC's error code (the envelope's `error.code`), so pages can word it for people.

import { credentials } from "./session.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Called when the server refuses the tab's credentials (a revoked key): app.js signs out.
let onCredentialsRefused = () => {};
export function whenCredentialsRefused(callback) {
  onCredentialsRefused = callback;
}

/**
 * `method` `path` (under /v1) with optional `query` (absent/empty values dropped), JSON
 * `body`, extra `headers` and explicit `auth` ({clientId, apiKey}; default: the session's).
 * Resolves to the parsed JSON body, or to the Response itself when `raw` is set.
 */
export async function api(method, path, { query, body, headers = {}, auth, raw = false } = {}) {
  const creds = auth || credentials();
  // Percent-encoding, not URLSearchParams: its "+" for a space reaches the server as a "+"
  // (Envoy's transcoder decodes RFC 3986 escapes only), so a search for "a b" found nothing.
  const pairs = Object.entries(query || {})
    .filter(([, value]) => value !== undefined && value !== null && value !== "")
    .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(value)}`);
  const url = "/v1" + path + (pairs.length ? "?" + pairs.join("&") : "");
  const sent = { ...headers };
  if (creds) {
    sent["X-Client-ID"] = creds.clientId;
    sent["X-API-Key"] = creds.apiKey;
  }
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "NETWORK", "The ZimSend server cannot be reached.");
  }
  if (response.ok) return raw ? response : response.json();
  const error = await errorOf(response);
  if (!auth && (error.code === "INVALID_API_KEY" || error.code === "INVALID_CLIENT_ID")) {
    onCredentialsRefused(error);
  }
  throw error;
}

async function errorOf(response) {
  let envelope = {};
  try {
    envelope = await response.json();
  } catch {
    // Not JSON: a proxy in between, or Envoy before any filter ran.
  }
  const code = envelope.error?.code || response.headers.get("zimsend-error-code") || "HTTP_" + response.status;
  const message = envelope.error?.message || envelope.message || response.statusText;
  return new ApiError(response.status, code, message);
}
