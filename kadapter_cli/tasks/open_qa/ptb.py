"""An offline approximation of the Penn Treebank tokenisation of Stanford CoreNLP 3.x.

thunlp/OpenQA's files hold paragraphs as CoreNLP tokens (`halley 's comet`), and OpenQA tokenises
the raw gold answers of its `.txt` files the same way (`halley's comet` → `halley 's comet`) before
it matches them in the paragraphs and before it scores a prediction. Without Java at hand, this
module reproduces what matters for that comparison, in plain regular expressions:

- clitics split off a word: `'s 'm 'd 're 've 'll` and `n't` (`don't` → `do n't`, `can't` → `ca n't`);
  a plural possessive's apostrophe is its own token (`players'` → `players '`);
- PTB's assimilations: `cannot` → `can not`, `gonna` → `gon na`, `gotta`, `wanna`, `gimme`, `lemme`,
  `'tis`, `'twas`;
- punctuation: brackets, quotes, `; ? !` and `...` are tokens of their own; `,` and `:` too except
  between digits (`100,000`, `3:30`); `$ #` split from what follows and `%` from what precedes;
  a word's final `.` is split off unless the word is an abbreviation (`st.`, `mr.`) or an acronym
  (`u.s.`, `c.s.`);
- hyphens: a hyphenated word stays one token (`x-ray`), as CoreNLP 3.x kept it (4.x splits it);
  a leading or trailing hyphen and `--` are tokens;
- CoreNLP's PTB escaping with OpenQA's bracket conversion: curly quotes become `` ` `` `'` `` `` ``
  `''`, straight double quotes `` `` `` / `''`, en and em dashes `--`, `…` `...`, `-LRB-` `(` (and
  the other bracket escapes back to brackets, as OpenQA's tokenizer wrapper does).

Left out (rare in answers, and either side of the comparison equal after the SQuAD normalisation
in most of them): CoreNLP's URL, e-mail, emoticon and SGML rules, its lists of words with inner
apostrophes beyond the clitics (`o'neill`, `t'pau` stay one token here as there), the British →
American spelling option and currency/fraction normalisation.
"""

from __future__ import annotations

import re

_CHARACTERS = str.maketrans({
    "\u2018": "`", "\u201b": "`", "\u2019": "'", "\u201a": "'", "\u00b4": "'",
    "\u201c": "``", "\u201e": "``", "\u201d": "''", "\u00ab": "``", "\u00bb": "''",
    "\u2013": "--", "\u2014": "--", "\u2015": "--", "\u2026": "...", "\u00a0": " ",
})
_BRACKET_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}
_BRACKET_ESCAPE = re.compile("|".join(map(re.escape, _BRACKET_ESCAPES)), re.IGNORECASE)

# Marks that are tokens wherever they stand; `,` and `:` unless between two digits.
_ALWAYS = re.compile(r"(\.\.\.|``|''|--|[()\[\]{};?!\"])")
_UNLESS_DIGITS = re.compile(r"(?<!\d)([,:])|([,:])(?!\d)")
# A leading `` ` $ # ``, a hyphen before a letter, an opening single quote (not the apostrophe of 'em, 'tis, '90s)
_LEADING = re.compile(r"^(?:[`$#]|-(?=[^\W\d_])|'(?!(?:em|tis|twas|\d0s|n)\b))", re.IGNORECASE)
_TRAILING = re.compile(r"[%'-]$")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'d|'re|'ve|'ll)$", re.IGNORECASE)
_ASSIMILATIONS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "gimme": 3, "lemme": 3, "'tis": 2, "'twas": 2}
_ACRONYM = re.compile(r"^(?:[^\W\d_]+\.){2,}$|^[^\W\d_]\.$")  # u.s. c.s. ph.d. j.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr drs prof st ste mt ft jr sr sen rep gov gen col lt sgt capt cpl rev hon messrs "
    "co corp inc ltd bros vs etc al jan feb mar apr jun jul aug sep sept oct nov dec no nos vol ca".split())


def ptb_tokenize(text: str) -> list[str]:
    """The tokens of `text`, as CoreNLP 3.x with PTB escaping would give them (module docstring)."""
    text = _BRACKET_ESCAPE.sub(lambda m: _BRACKET_ESCAPES[m.group().upper()], text.translate(_CHARACTERS))
    tokens: list[str] = []
    for chunk in text.split():
        tokens += _chunk_tokens(chunk)
    return tokens


def ptb_join(text: str) -> str:
    """`ptb_tokenize(text)` joined by spaces: how OpenQA writes a tokenised answer."""
    return " ".join(ptb_tokenize(text))


def _chunk_tokens(chunk: str) -> list[str]:
    """The tokens of a run without whitespace: the marks split everywhere, then each word between them."""
    out: list[str] = []
    for i, piece in enumerate(_ALWAYS.split(chunk)):
        if i % 2:  # a mark captured by the split
            out.append(("``" if not out else "''") if piece == '"' else piece)
        elif piece:
            for part in _UNLESS_DIGITS.split(piece):
                if part:
                    out += [part] if part in (",", ":") else _word_tokens(part)
    return out


def _word_tokens(word: str) -> list[str]:
    """A word's leading marks, the word (split at its clitic or assimilation), its trailing marks."""
    front: list[str] = []
    while len(word) > 1 and (m := _LEADING.match(word)):
        front.append("`" if m.group() == "'" else m.group())
        word = word[m.end():]
    back: list[str] = []
    while len(word) > 1:
        if word.endswith(".") and not _is_abbreviation(word):
            mark = "."
        elif m := _TRAILING.search(word):
            mark = m.group()
        else:
            break
        back.insert(0, mark)
        word = word[:-1]
    cut = _ASSIMILATIONS.get(word.lower())
    if cut is not None:
        return [*front, word[:cut], word[cut:], *back]
    m = _CLITIC.match(word)
    return [*front, *(m.groups() if m else [word]), *back]


def _is_abbreviation(word: str) -> bool:
    """`word` ends in `.`: an acronym (`u.s.`, `c.s.`, `ph.d.`), a single letter (`j.`) or a listed abbreviation."""
    return bool(_ACRONYM.match(word)) or word[:-1].lower() in _ABBREVIATIONS
