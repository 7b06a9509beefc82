// The signed-in client: its ID and API key, kept in sessionStorage only. sessionStorage dies
// with the tab and is never sent anywhere by the browser; localStorage would keep a live key on
// disk, and a URL would put it in history and logs (issue 14).

const KEY = "zimsend.credentials";

/** {clientId, apiKey} of this tab, or null when signed out. */
export function credentials() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(KEY) || "null");
    return stored && stored.clientId && stored.apiKey ? stored : null;
  } catch {
    return null;
  }
}

export function signIn(clientId, apiKey) {
  sessionStorage.setItem(KEY, JSON.stringify({ clientId, apiKey }));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}
