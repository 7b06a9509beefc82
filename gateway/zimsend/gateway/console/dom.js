// Building DOM nodes from data, never from markup strings: every value from the API goes in as
// text (and the CSP forbids inline handlers anyway).

let nextId = 0;

/** h("button", {class: "primary", onClick: fn}, "Send") → an element. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "value" || key === "checked") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** A unique id for pairing a <label> with its control. */
export function uid(prefix = "f") {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/** A labelled form field: <div class="field"><label for>…</label>control<small>hint</small></div>. */
export function field(label, control, hint) {
  if (!control.id) control.id = uid();
  const parts = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hintId = uid("hint");
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("small", { id: hintId, class: "hint" }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** A region that announces what it is given (errors: role=alert; results: role=status). */
export function notice(kind = "status") {
  return h("div", { class: "notice", role: kind === "error" ? "alert" : "status", hidden: true });
}

/** Text with `backquoted` spans as <code> (the texts name commands and columns that way). */
export function withCode(text) {
  return String(text).split("`").map((piece, i) => (i % 2 ? h("code", {}, piece) : piece));
}

/** Show `text` (or nodes) in a notice made by notice(); empty hides it. */
export function say(region, kind, ...content) {
  const present = content.filter((c) => c !== undefined && c !== null);
  region.replaceChildren(...present.flatMap((c) => (typeof c === "string" ? withCode(c) : [c])));
  region.className = "notice " + kind;
  region.hidden = present.length === 0;
}
