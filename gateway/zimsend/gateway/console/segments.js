// How a text becomes SMS parts: a port of clients/zimsend/segments (SPEC §3), so the live
// counter on the Send page says what the server will answer. tests/test_console.py checks it
// against the Python implementation on a table of strings, tables included.
//
// GSM-7 when every character is in the default or extension table (extension characters
// cost 2 septets; 160 in one SMS, else parts of 153); otherwise UCS-2 (UTF-16 code units,
// 70 in one SMS, else parts of 67; a character outside the BMP costs 2). A part never splits
// a grapheme cluster, an escape pair or a surrogate pair; parts are packed greedily.

/** Characters of the GSM 03.38 default alphabet: one septet each. */
export const GSM7_BASIC = new Set(
  "\n\r !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz" +
  "\u00a1\u00a3\u00a4\u00a5\u00a7\u00bf\u00c4\u00c5\u00c6\u00c7\u00c9\u00d1\u00d6\u00d8\u00dc" +
  "\u00df\u00e0\u00e4\u00e5\u00e6\u00e8\u00e9\u00ec\u00f1\u00f2\u00f6\u00f8\u00f9\u00fc" +
  "\u0393\u0394\u0398\u039b\u039e\u03a0\u03a3\u03a6\u03a8\u03a9",
);

/** Characters of the default extension table: escape + code, two septets each. */
export const GSM7_EXTENSION = new Set("\f[\\]^{|}~\u20ac");

const SINGLE = { GSM7: 160, UCS2: 70 };
const PART = { GSM7: 153, UCS2: 67 };
const graphemes = new Intl.Segmenter("und", { granularity: "grapheme" });

/** [units in a single SMS, units per part of a multipart SMS] for an encoding. */
export function limits(encoding) {
  return [SINGLE[encoding], PART[encoding]];
}

/** "GSM7" when every character is in the default or extension table, else "UCS2". */
export function encodingOf(text) {
  for (const ch of text) {
    if (!GSM7_BASIC.has(ch) && !GSM7_EXTENSION.has(ch)) return "UCS2";
  }
  return "GSM7";
}

/** Units `text` takes: septets for GSM7 (extension = 2), UTF-16 code units for UCS2. */
export function unitCost(text, encoding) {
  if (encoding === "UCS2") return text.length; // JS strings are UTF-16 already
  let units = 0;
  for (const ch of text) units += GSM7_EXTENSION.has(ch) ? 2 : 1;
  return units;
}

/** Characters as the server counts them for the 1600 limit: code points. */
export function characterCount(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

/** Split `text` into parts: {encoding, parts, units, count}; an empty text is one part. */
export function plan(text) {
  const encoding = encodingOf(text);
  const units = unitCost(text, encoding);
  const [single, perPart] = limits(encoding);
  if (units <= single) return { encoding, parts: [text], units, count: 1 };
  const parts = [];
  let current = "";
  let used = 0;
  for (const atom of atoms(text, encoding, perPart)) {
    const cost = unitCost(atom, encoding);
    if (used + cost > perPart && current) {
      parts.push(current);
      current = "";
      used = 0;
    }
    current += atom;
    used += cost;
  }
  if (current) parts.push(current);
  return { encoding, parts, units, count: parts.length };
}

// The unsplittable pieces: grapheme clusters, or the code points of a cluster too large for
// one part (a code point is never split, so escape and surrogate pairs hold).
function atoms(text, encoding, perPart) {
  const found = [];
  for (const { segment } of graphemes.segment(text)) {
    if (unitCost(segment, encoding) <= perPart) found.push(segment);
    else found.push(...segment);
  }
  return found;
}
