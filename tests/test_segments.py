"""SPEC.md §3 "Segments and encoding", as examples and as properties."""

from __future__ import annotations

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from zimsend.segments import GSM7_BASIC, GSM7_EXTENSION, encoding_of, limits, plan, unit_cost

# --- the examples SPEC.md and the product promise rely on ---------------------------------


def test_160_gsm_characters_fit_one_sms() -> None:
    p = plan("a" * 160)
    assert (p.encoding, p.count, p.units) == ("GSM7", 1, 160)


def test_161_gsm_characters_need_two_parts_of_153() -> None:
    p = plan("a" * 161)
    assert p.count == 2
    assert [len(x) for x in p.parts] == [153, 8]


def test_the_1600_character_cap_is_eleven_parts() -> None:
    assert plan("a" * 1600).count == 11


def test_an_escape_pair_is_never_split_across_parts() -> None:
    # 152 + 2 + 152 = 306 septets would fit 2 x 153 if the escape pair could be cut.
    p = plan("a" * 152 + "€" + "a" * 152)
    assert p.encoding == "GSM7"
    assert p.count == 3
    assert p.parts[1].startswith("€")


def test_extension_characters_count_double() -> None:
    assert plan("{}").units == 4
    assert plan("a" * 159 + "€").count == 2


def test_a_single_emoji_switches_the_whole_message_to_ucs2() -> None:
    p = plan("Votre colis est arrivé 📦")
    assert p.encoding == "UCS2"
    assert p.units == len("Votre colis est arrivé ") + 2


def test_ucs2_limits_are_70_single_and_67_per_part() -> None:
    assert plan("ж" * 70).count == 1
    p = plan("ж" * 71)
    assert [len(x) for x in p.parts] == [67, 4]


def test_a_surrogate_pair_is_never_split() -> None:
    p = plan("ж" * 66 + "😀" + "ж" * 10)
    assert p.parts[0] == "ж" * 66
    assert p.parts[1].startswith("😀")


def test_a_grapheme_cluster_is_never_split() -> None:
    family = "👨\u200d👩\u200d👧"  # one grapheme, 8 UTF-16 units
    p = plan("ж" * 62 + family + "ж" * 10)
    assert p.parts[0] == "ж" * 62
    assert p.parts[1].startswith(family)


def test_accented_latin_outside_gsm_is_ucs2_but_gsm_accents_stay_gsm() -> None:
    assert plan("élève à Zürich").encoding == "GSM7"  # é, è, à, ü are in the default table
    assert plan("ça va").encoding == "UCS2"  # lower-case ç is not (only Ç is)


def test_empty_text_is_one_empty_part() -> None:
    assert plan("").parts == [""]


# --- properties -----------------------------------------------------------------------------

_gsm_chars = st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION))
_combining = st.sampled_from(["\u0301", "\u0308", "\u20e3", "\ufe0f", "\u200d", "🏽"])
_any_char = st.one_of(
    _gsm_chars,
    st.characters(codec="utf-8"),
    st.sampled_from(["😀", "🇫", "🇷", "👍", "€", "ж", "é"]),
    _combining,
)
_gsm_texts = st.text(_gsm_chars, max_size=1600)
_texts = st.one_of(_gsm_texts, st.text(_any_char, max_size=700))


@settings(max_examples=300)
@given(_texts)
def test_joining_the_parts_gives_the_text_back(text: str) -> None:
    assert "".join(plan(text).parts) == text


@settings(max_examples=300)
@given(_texts)
def test_every_part_is_within_its_limit(text: str) -> None:
    p = plan(text)
    single, per_part = limits(p.encoding)
    assert p.units == unit_cost(text, p.encoding)
    limit = single if p.count == 1 else per_part
    assert all(unit_cost(part, p.encoding) <= limit for part in p.parts)


@settings(max_examples=300)
@given(_texts)
def test_no_part_boundary_splits_a_grapheme_or_a_surrogate_pair(text: str) -> None:
    p = plan(text)
    boundaries = set()
    offset = 0
    for part in p.parts[:-1]:
        offset += len(part)
        boundaries.add(offset)
    cluster_edges = {0}
    for m in regex.finditer(r"\X", text):
        cluster_edges.add(m.end())
    # Python strings index code points, so a surrogate pair can only be split if a cluster is.
    _, per_part = limits(p.encoding)
    oversized = any(unit_cost(c, p.encoding) > per_part for c in regex.findall(r"\X", text))
    if not oversized:
        assert boundaries <= cluster_edges


@settings(max_examples=300)
@given(_texts)
def test_greedy_packing_is_minimal_no_part_could_take_the_next_cluster(text: str) -> None:
    p = plan(text)
    if p.count == 1:
        return
    _, per_part = limits(p.encoding)
    for part, following in zip(p.parts, p.parts[1:], strict=False):
        first = regex.match(r"\X", following)
        assert first is not None
        head = first.group()
        if unit_cost(head, p.encoding) > per_part:  # an oversized cluster is cut by code point
            head = following[0]
        assert unit_cost(part, p.encoding) + unit_cost(head, p.encoding) > per_part


@given(_gsm_texts)
def test_gsm_only_texts_are_gsm7(text: str) -> None:
    assert plan(text).encoding == "GSM7"


@settings(max_examples=300)
@given(_texts)
def test_units_and_encoding_are_counted_character_by_character(text: str) -> None:
    """`unit_cost` and `encoding_of` (counted with the string's C methods) say what the
    rules say per character: 2 septets for an extension character, 2 UTF-16 units for a
    character outside the BMP."""
    gsm = all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)
    assert encoding_of(text) == ("GSM7" if gsm else "UCS2")
    if gsm:
        assert unit_cost(text, "GSM7") == sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    assert unit_cost(text, "UCS2") == sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)
