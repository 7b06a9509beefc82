"""Stop and start keywords: the defaults and how an inbound SMS matches one.

An inbound text matches a keyword when, after Unicode NFC normalisation, trimming and collapsing
runs of white space into one space, it equals the keyword ignoring case (`casefold`). Accents
count: ARRÊT and ARRET are two keywords, both in the defaults, so a French "Arrêt" and an
unaccented "arret" both stop. Nothing else in the text is allowed ("STOP please" is a message,
not an opt-out): carriers' rules (CTIA) and the issue ask for the keyword alone.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Final, Literal

__all__ = ["DEFAULT_START", "DEFAULT_STOP", "canonical", "match"]

DEFAULT_STOP: Final = ("STOP", "STOP ALL", "UNSUBSCRIBE", "ARRET", "ARRÊT", "DESABONNER")
DEFAULT_START: Final = ("START", "UNSTOP")


def canonical(text: str) -> str:
    """The form keywords are compared in: NFC, trimmed, single spaces, case-folded."""
    return " ".join(unicodedata.normalize("NFC", text).split()).casefold()


def match(text: str, stop: Iterable[str], start: Iterable[str]) -> Literal["stop", "start"] | None:
    """ "stop" or "start" when the whole of `text` is one of those keywords, else None."""
    if len(text) > 200:  # a keyword is short; do not normalise a long message for nothing
        return None
    said = canonical(text)
    if not said:
        return None
    if said in {canonical(k) for k in stop}:
        return "stop"
    if said in {canonical(k) for k in start}:
        return "start"
    return None
