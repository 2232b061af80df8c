"""``text``: one row per record with its text and rule-based text features.

Features, defined as regular expressions (and counted without them, see
``text_features``):

- ``chars``: characters (code points);
- ``words``: matches of ``\\w+(?:['\u2019]\\w+)*`` (``don't`` is one word);
- ``sentences``: matches of ``[^.!?\\s][^.!?]*(?:[.!?]+|$)``: stretches with some content
  ended by ``.``, ``!``, ``?`` or the end of the text (``3.5`` ends one, a known limit);
- ``mean_word_length``: ``\\w`` characters / words; ``uppercase_ratio``: uppercase /
  alphabetic characters (``str.isupper`` / ``str.isalpha``); ``digit_ratio``: ``\\d``
  characters / characters; null when the denominator is 0.

A record without the field (or with null) has a null ``text`` and zero counts. Every row
depends on its record only, so chunks combine by concatenation.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from celeriac.workers.compute.plugin import (
    DatasetError,
    DatasetGenerator,
    Parameters,
    Records,
    records_frame,
)

DEFAULT_FIELD = "text"
FEATURES = ("chars", "words", "sentences", "mean_word_length", "uppercase_ratio", "digit_ratio")
# Character classes, as bits of character_flags(); regex classes where they exist, so
# that the features match ``re`` on the same text.
WORD_CHAR = 1  # \w
SPACE = 2  # \s
DIGIT = 4  # \d (decimal digits)
TERMINATOR = 8  # . ! ?
APOSTROPHE = 16  # ' and \u2019, inside a word
LETTER = 32  # str.isalpha
UPPER = 64  # str.isupper


class TextParameters(Parameters):
    """Parameters of the ``text`` dataset generator."""

    field: str | None = Field(
        default=None,
        min_length=1,
        description="The record field holding the text, dotted for nested objects "
        "('review.body'); default 'text', else the first field holding strings. "
        "Name it when records vary: the default is decided per chunk.",
    )


class TextFeatures(DatasetGenerator[TextParameters]):
    """Per-record text with character, word, sentence and case/digit features."""

    name = "text"
    version = "1.0.0"
    description = "Per-record text features: characters, words, sentences, mean word "
    "length, uppercase and digit ratios, and the text itself."
    parameters = TextParameters
    produces = "text"
    rows_are_records = True  # a row per record; combine concatenates (and checks the whole)

    def load(self) -> None:
        """Build the character table once per process instead of on the first chunk."""
        character_flags()

    def generate(self, records: Records, params: TextParameters) -> pd.DataFrame:
        """The text and its features for every record of the chunk."""
        return text_features(_texts(records, params.field))

    def combine(self, partials: Sequence[pd.DataFrame], params: TextParameters) -> pd.DataFrame:
        """The rows of every chunk in order; an error when no record had the field."""
        frame = super().combine(partials, params)
        if frame.empty:
            return text_features(pd.Series([], dtype="str"))
        if frame["text"].isna().all():
            field = params.field or DEFAULT_FIELD
            raise DatasetError(f"text: no record has a string in the field {field!r}")
        return frame


def text_features(texts: pd.Series[Any]) -> pd.DataFrame:
    """The feature table of a Series of texts (nulls allowed).

    Every character of every text is classified at once through a lookup table indexed
    by code point (one numpy pass over the UTF-32 of all texts), which is several times
    faster than one regular expression per feature and per text.
    """
    text = texts.astype("str").reset_index(drop=True)
    strings = text.fillna("").tolist()
    count = len(strings)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=count)
    # One "\n" after each text: a whitespace character that ends words and sentences.
    joined = "\n".join(strings) + "\n" if count else ""
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    flags = character_flags()[codes]
    # Where each text starts; never empty, thanks to its "\n", as reduceat needs.
    starts_at = np.r_[0, np.cumsum(lengths + 1)[:-1]] if count else np.zeros(0, np.int64)

    def per_text(mask: np.ndarray[Any, np.dtype[np.bool_]]) -> np.ndarray[Any, Any]:
        if not count:
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(mask, starts_at, dtype=np.int64)

    word_char = (flags & WORD_CHAR) > 0
    # A word is a run of word characters, an apostrophe between two of them included.
    in_word = word_char.copy()
    in_word[1:-1] |= ((flags[1:-1] & APOSTROPHE) > 0) & word_char[:-2] & word_char[2:]
    word_start = in_word.copy()
    word_start[1:] &= ~in_word[:-1]
    # A sentence starts at a content character (neither space nor terminator) whose
    # previous non-space character is a terminator or the end of the previous text.
    visible = (flags & SPACE) == 0
    visible[np.cumsum(lengths + 1) - 1] = True  # the "\n" after each text
    (marks,) = np.nonzero(visible)
    mark_flags = flags[marks]
    is_break = (mark_flags & (TERMINATOR | SPACE)) > 0
    sentence_start = np.zeros(codes.size, dtype=bool)
    sentence_start[marks[1:]] = ~is_break[1:] & is_break[:-1]
    if marks.size:
        sentence_start[marks[0]] = not is_break[0]
    sentences = per_text(sentence_start)

    words = per_text(word_start)
    letters = per_text((flags & LETTER) > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_word_length = np.where(words > 0, per_text(word_char) / words, np.nan)
        uppercase_ratio = np.where(letters > 0, per_text((flags & UPPER) > 0) / letters, np.nan)
        digit_ratio = np.where(lengths > 0, per_text((flags & DIGIT) > 0) / lengths, np.nan)
    return pd.DataFrame(
        {
            "text": text,
            "chars": lengths,
            "words": words.astype(np.int64),
            "sentences": sentences.astype(np.int64),
            "mean_word_length": mean_word_length,
            "uppercase_ratio": uppercase_ratio,
            "digit_ratio": digit_ratio,
        }
    )


@functools.cache
def character_flags() -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Bit flags of every Unicode code point (built once per process, ~0.3 s)."""
    everything = "".join(map(chr, range(sys.maxunicode + 1)))
    flags = np.zeros(sys.maxunicode + 1, dtype=np.uint8)
    for flag, pattern in (
        (WORD_CHAR, r"\w"),
        (SPACE, r"\s"),
        (DIGIT, r"\d"),
        (TERMINATOR, r"[.!?]"),
        (APOSTROPHE, "['\u2019]"),
    ):
        flags[[m.start() for m in re.finditer(pattern, everything)]] |= flag
    for flag, test in ((LETTER, str.isalpha), (UPPER, str.isupper)):
        mask = np.fromiter(map(test, everything), dtype=bool, count=len(everything))
        flags[mask] |= flag
    return flags


def _texts(records: Records, field: str | None) -> pd.Series[Any]:
    """The field's value of every record (null when absent or null)."""
    if isinstance(records, pd.DataFrame):
        frame = records
        name = field or _default_field(frame)
        if name is None or name not in frame.columns:
            return pd.Series([None] * len(frame), dtype="str")
        return frame[name].map(_as_text, na_action="ignore")
    if field is None:
        if any(DEFAULT_FIELD in r for r in records):
            field = DEFAULT_FIELD
        else:
            field = _default_field(records_frame(records))
            if field is None:
                return pd.Series([None] * len(records), dtype="str")
    path = field.split(".")
    return pd.Series([_lookup(r, field, path) for r in records], dtype="str")


def _default_field(frame: pd.DataFrame) -> str | None:
    if DEFAULT_FIELD in frame.columns:
        return DEFAULT_FIELD
    for name in frame.columns:
        if pd.api.types.infer_dtype(frame[name], skipna=True) == "string":
            return str(name)
    return None


def _lookup(record: Mapping[str, Any], field: str, path: list[str]) -> str | None:
    value: Any = record.get(field)
    if value is None and len(path) > 1:
        value = record
        for part in path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
    return _as_text(value) if value is not None else None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


text = TextFeatures()
