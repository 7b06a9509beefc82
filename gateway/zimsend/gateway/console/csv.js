// Reading the bulk-send CSV file: RFC 4180 quoting, comma or semicolon (French spreadsheets
// write semicolons), a header row when its first cell is not a phone number.

/** Rows of cells from CSV `text`; empty lines dropped. */
export function parseCsv(text) {
  const firstLine = text.split(/\r?\n/, 1)[0] || "";
  const separator = (firstLine.match(/;/g) || []).length > (firstLine.match(/,/g) || []).length ? ";" : ",";
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { cell += '"'; i += 1; }
      else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === separator) { row.push(cell); cell = ""; }
    else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && text[i + 1] === "\n") i += 1;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
    } else cell += ch;
  }
  if (cell !== "" || row.length) { row.push(cell); rows.push(row); }
  return rows.filter((r) => r.some((c) => c.trim() !== ""));
}

/** [{to, message?}] from CSV rows: columns `to` (else the first) and optional `message`. */
export function recipientsOf(rows) {
  if (!rows.length) return { recipients: [], hasMessage: false };
  const head = rows[0].map((c) => c.trim().toLowerCase());
  const hasHeader = !/^\+?\d[\d\s]*$/.test(rows[0][0].trim());
  const toColumn = hasHeader ? Math.max(0, head.findIndex((c) => ["to", "phone", "number", "numero", "numéro"].includes(c))) : 0;
  const messageColumn = hasHeader ? head.findIndex((c) => ["message", "text", "texte"].includes(c)) : -1;
  const body = hasHeader ? rows.slice(1) : rows;
  const recipients = body
    .map((r) => ({ to: (r[toColumn] || "").replace(/\s+/g, ""), message: messageColumn >= 0 ? r[messageColumn] || "" : undefined }))
    .filter((r) => r.to);
  return { recipients, hasMessage: messageColumn >= 0 };
}
