"""How a text becomes SMS parts (SPEC.md §3 "Segments and encoding").

`plan(text)` answers the three questions the server and the phone both ask: which encoding,
which parts, how many units. The server uses it to fill `segments`/`encoding` at send time; the
device agent uses it to split a body into the parts it hands to the SIM and reports on.

Rules:

- GSM-7 (3GPP TS 23.038 default alphabet) when every character is in the default table or its
  extension table; extension characters (`^ { } \\ [ ] ~ | €`, and form feed) cost 2 septets
  (escape + code) and an escape pair is never split. 160 septets in one SMS, else parts of 153.
- Otherwise UCS-2: UTF-16 code units, 70 in one SMS, else parts of 67; a character outside the
  BMP costs 2 units and its surrogate pair is never split.
- A part never splits a grapheme cluster (UAX #29 extended grapheme clusters, the `regex`
  package's `\\X`): a flag, a skin-toned emoji or `e` + combining accent stays in one part.
  Only a single cluster larger than a whole part (pathological stacks of combining marks) is cut,
  between code points.
- Parts are packed greedily, which is minimal for an order-preserving split.

The GSM-7 tables come from `gsmcodecs` (a maintained implementation of TS 23.038), not from a
hand-typed copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import regex
from gsmcodecs import GSMCHARMAPS

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "SegmentPlan",
    "encoding_of",
    "limits",
    "plan",
    "unit_cost",
]

Encoding = Literal["GSM7", "UCS2"]

#: Characters of the GSM 03.38 default alphabet: one septet each.
GSM7_BASIC: frozenset[str] = frozenset(chr(cp) for cp in GSMCHARMAPS[0]["locking"]["encode"])
#: Characters of the default extension table: escape + code, two septets each.
GSM7_EXTENSION: frozenset[str] = (
    frozenset(chr(cp) for cp in GSMCHARMAPS[0]["singleShift"]["encode"]) - GSM7_BASIC
)

_GSM7 = GSM7_BASIC | GSM7_EXTENSION
_SINGLE = {"GSM7": 160, "UCS2": 70}
_PART = {"GSM7": 153, "UCS2": 67}
_GRAPHEME = regex.compile(r"\X")
#: `str.translate` table deleting the extension characters.
_WITHOUT_EXTENSION = dict.fromkeys(map(ord, GSM7_EXTENSION))


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """The outcome of planning one text: its encoding, its parts in order, its total units."""

    encoding: Encoding
    parts: list[str]
    units: int

    @property
    def count(self) -> int:
        """Number of SMS parts (what SPEC.md calls `segments`)."""
        return len(self.parts)


def limits(encoding: Encoding) -> tuple[int, int]:
    """(units in a single SMS, units per part of a multipart SMS) for an encoding."""
    return _SINGLE[encoding], _PART[encoding]


def encoding_of(text: str) -> Encoding:
    """GSM7 when every character is in the default or extension table, else UCS2."""
    return "GSM7" if _GSM7.issuperset(text) else "UCS2"


def unit_cost(text: str, encoding: Encoding) -> int:
    """Units `text` takes: septets for GSM7 (extension = 2), UTF-16 code units for UCS2.
    Counted by the string's own C methods, not a Python step per character: the server
    plans every message it accepts."""
    if encoding == "GSM7":
        return 2 * len(text) - len(text.translate(_WITHOUT_EXTENSION))
    # A character outside the BMP is a surrogate pair: two code units.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def plan(text: str) -> SegmentPlan:
    """Split `text` into SMS parts; an empty text is one empty part."""
    encoding = encoding_of(text)
    units = unit_cost(text, encoding)
    single, per_part = limits(encoding)
    if units <= single:
        return SegmentPlan(encoding, [text], units)
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for token in _atoms(text, encoding, per_part):
        cost = unit_cost(token, encoding)
        if used + cost > per_part and current:
            parts.append("".join(current))
            current, used = [], 0
        current.append(token)
        used += cost
    if current:
        parts.append("".join(current))
    return SegmentPlan(encoding, parts, units)


def _atoms(text: str, encoding: Encoding, per_part: int) -> list[str]:
    """The unsplittable pieces of `text`: grapheme clusters, or code points of a cluster too
    large for one part (a code point is never split, so escape and surrogate pairs hold)."""
    atoms: list[str] = []
    for cluster in _GRAPHEME.findall(text):
        if unit_cost(cluster, encoding) <= per_part:
            atoms.append(cluster)
        else:
            atoms.extend(cluster)
    return atoms
