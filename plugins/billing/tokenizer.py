"""Offline token counting for hold estimates and the missing-usage fallback (spec §5).

OpenAI model families are counted exactly with tiktoken's BPE engine and the o200k_base
and cl100k_base vocabularies bundled in `vocab/` (OpenAI's files, MIT; see vocab/NOTICE.txt).
Nothing is downloaded, and tiktoken's file cache (TIKTOKEN_CACHE_DIR, or the temporary
data-gym-cache that `tiktoken.load` reads and writes) is never used: each `Encoding` is
built here from the local file, after checking it against its published sha256.

A vocabulary is loaded when a model first needs it, not at start-up: both together take
about 0.5 s and 75 MB, and most deployments use one of them or none (docs/operations.md,
"Start-up and memory"). Loading is once per `Tokenizer`, under a lock per vocabulary.

Other families (Claude, Gemini, mock, unknown) use `heuristic_count`, documented there.
"""

from __future__ import annotations

import binascii
import hashlib
import math
import re
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

__all__ = ["VOCAB_DIR", "Family", "Tokenizer", "build_encoding", "family_for", "heuristic_count", "load_ranks"]

VOCAB_DIR = Path(__file__).with_name("vocab")

_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""


class Family(StrEnum):
    """How a model's text is counted."""

    O200K = "o200k_base"
    CL100K = "cl100k_base"
    HEURISTIC = "heuristic"


# name, sha256 of the vocabulary file, regex, special tokens (all published by tiktoken).
_SPECS: dict[Family, tuple[str, str, dict[str, int]]] = {
    Family.O200K: (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PATTERN,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    Family.CL100K: (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}

# Order matters: "gpt-4o" and "gpt-4.1" must be tested before the "gpt-4" catch-all.
_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "chatgpt-",
    "gpt-image",
    "gpt-oss",
    "codex",
)
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-")


def family_for(model: str) -> Family:
    """The counting family for a model name (case-insensitive; a provider prefix such as
    `openai/` and a fine-tune prefix `ft:` are ignored)."""
    name = model.rpartition("/")[2].lower()
    if name.startswith("ft:"):
        name = name[3:]
    if name.startswith(_O200K_PREFIXES):
        return Family.O200K
    if name.startswith(_CL100K_PREFIXES):
        return Family.CL100K
    return Family.HEURISTIC


# Word-ish pieces of ASCII text, split roughly where BPE pre-tokenisers split: letter runs
# (at case changes, at most 7 letters), digit groups of up to 3, single punctuation, newlines.
_PIECE = re.compile(r"[A-Z]?[a-z]{1,7}|[A-Z]{1,4}|[0-9]{1,3}|[^\sA-Za-z0-9\x80-\U0010ffff]|\n")
# CJK ideographs, kana, Hangul, full-width forms: about one token per character.
_WIDE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]")
_ASTRAL = re.compile(r"[\U00010000-\U0010ffff]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def heuristic_count(text: str) -> int:
    """Estimate tokens for families without a bundled vocabulary (Claude, Gemini, ...).

    Rule: one token per ASCII piece (a run of up to 7 letters, split at case changes; up
    to 3 digits; one punctuation character; a newline; spaces are free); one per CJK,
    kana, Hangul or full-width character; two per character outside the BMP (emoji); half
    a token per other non-ASCII character (accents, Cyrillic, Greek...), rounded up.

    Measured against o200k_base (tests/plugins/billing/test_estimate.py keeps these honest):
    English prose and Markdown +5..+18%, Python code +23%, JSON +36%, emoji +10%,
    digit-heavy text -23%, random base64 -20%, French +6%, Chinese/Japanese/Korean
    +22..+46%, Russian +76%. Against cl100k_base the CJK and Cyrillic rows are within
    ±15%. It errs high on ordinary text, which is the safe side for a hold.
    """
    pieces = len(_PIECE.findall(text))
    if text.isascii():
        return pieces
    non_ascii = len(_NON_ASCII.findall(text))
    wide = len(_WIDE.findall(text))
    astral = len(_ASTRAL.findall(text))
    return pieces + wide + 2 * astral + math.ceil((non_ascii - wide - astral) / 2)


def load_ranks(path: Path, sha256: str) -> dict[bytes, int]:
    """Read a `.tiktoken` vocabulary (one "base64(token) rank" per line) from a local
    file, refusing it unless its sha256 matches."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    # Alternating tokens and ranks (the checksum vouches for the layout), decoded in C loops:
    # half the time of a Python loop over the lines.
    fields = data.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


def build_encoding(path: Path, family: Family) -> tiktoken.Encoding:
    """The tiktoken `Encoding` of an exact family from its local vocabulary file.

    tiktoken's Rust core keeps its own copy of the ranks; the `Encoding` also keeps the
    Python dict it was given (200k entries, about 30 MB for o200k_base), which only
    pickling reads. It is dropped: an encoding built here is never pickled."""
    import tiktoken  # here, not at the top: start-up does not need it

    sha, pattern, specials = _SPECS[family]
    ranks = load_ranks(path, sha)
    enc = tiktoken.Encoding(name=family.value, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    enc._mergeable_ranks = {}
    return enc


class Tokenizer:
    """Counts tokens for a model. Encodings are loaded lazily, once per instance.

    The plugin owns one `Tokenizer`. Loading an encoding reads a few MB and takes 0.1 to
    0.3 s: an async caller loads it in a thread first (`unloaded()`, then `encoding()` in
    `asyncio.to_thread`), so the event loop keeps serving meanwhile. Concurrent first uses
    load once: the loser of the race waits on the vocabulary's lock and finds it loaded.
    """

    __slots__ = ("vocab_dir", "_encodings", "_families", "_counters", "_locks")

    #: Model names whose family is remembered (clients choose the names: the memo is bounded).
    FAMILY_MEMO = 1024

    def __init__(self, vocab_dir: Path | None = None) -> None:
        self.vocab_dir = vocab_dir or VOCAB_DIR
        self._encodings: dict[Family, tiktoken.Encoding] = {}
        self._families: dict[str, Family] = {}
        self._counters: dict[Family, Callable[[str], int]] = {}
        self._locks = {family: threading.Lock() for family in _SPECS}

    def encoding(self, family: Family) -> tiktoken.Encoding:
        """The tiktoken `Encoding` for an exact family, built from the bundled file on first
        use (at most once, even when several threads ask at the same time)."""
        enc = self._encodings.get(family)
        if enc is None:
            lock = self._locks.get(family)
            if lock is None:
                raise ValueError(f"no vocabulary for {family}")
            with lock:
                enc = self._encodings.get(family)
                if enc is None:
                    enc = build_encoding(self.vocab_dir / f"{family.value}.tiktoken", family)
                    self._encodings[family] = enc
        return enc

    def unloaded(self, model: str) -> Family | None:
        """The exact family `model` is counted with when its vocabulary is not loaded yet,
        else None (a heuristic family needs none). Cheap: it runs on every request."""
        family = self.family(model)
        if family is Family.HEURISTIC or family in self._encodings:
            return None
        return family

    def warm(self, *families: Family) -> None:
        """Load the given encodings now (both exact ones when none are named), and count a
        short text with each, so that the first request does not pay for lazy set-up."""
        for family in families or tuple(_SPECS):
            self.encoding(family)
            self.count_family("Weir warms its tokenizer up: 123 tokens, ok?", family)

    def family(self, model: str) -> Family:
        """`family_for(model)`, remembered: it runs on every request."""
        found = self._families.get(model)
        if found is None:
            found = family_for(model)
            if len(self._families) >= self.FAMILY_MEMO:
                self._families.clear()
            self._families[model] = found
        return found

    def count(self, text: str, model: str) -> int:
        """Tokens in `text` for `model`. Special-token strings count as ordinary text."""
        return self.count_family(text, self.family(model))

    def count_family(self, text: str, family: Family) -> int:
        """Tokens in `text` under a given family."""
        if not text:
            return 0
        return self.counter(family)(text)

    def counter(self, family: Family) -> Callable[[str], int]:
        """A function giving the tokens in a text under `family` (built once per family;
        an exact family's encoding is still loaded only when first used)."""
        found = self._counters.get(family)
        if found is None:
            found = heuristic_count if family is Family.HEURISTIC else self._exact_counter(family)
            self._counters[family] = found
        return found

    def _exact_counter(self, family: Family) -> Callable[[str], int]:
        if family not in _SPECS:
            raise ValueError(f"no vocabulary for {family}")

        def count(text: str) -> int:
            return len(self.encoding(family).encode_ordinary(text)) if text else 0

        return count
