"""The one home of Chinese text rules: character classes, sentence splitting, tokens, stopwords."""
from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable

__all__ = [
    "is_han", "is_cjk_punct", "TERMINAL", "MEASURE_WORDS", "ends_sentence", "split_sentences", "fold_width",
    "tokenize", "words", "add_user_words", "char_bigrams", "bigram_share", "extract_terms", "numbers_in", "STOPWORDS",
]

_HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))
CJK_PUNCT = set("，。、；：？！“”‘’（）《》〈〉【】『』「」—…·．～﹃﹄〔〕")
TERMINAL = "。！？!?；;…"
# measure words that follow a count ("46个", "73人", "3200万元")
MEASURE_WORDS = "个名家位人项台场套份次件万亿元吨天年月日级岁倍条所批类户间座辆"
CLOSERS = "”’」』）)》】\"'"


def is_han(ch: str) -> bool:
    """True for a CJK ideograph."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _HAN_RANGES)


def is_cjk_punct(ch: str) -> bool:
    """True for full-width (CJK) punctuation."""
    return ch in CJK_PUNCT or 0xFF01 <= ord(ch) <= 0xFF0F and not ch.isalnum()


_END_RE = re.compile(rf"[{re.escape(TERMINAL)}][{re.escape(CLOSERS)}]*\s*$")


def ends_sentence(line: str) -> bool:
    """True when a line ends with sentence-final punctuation (closing quotes allowed after it)."""
    return bool(_END_RE.search(line))


_SPLIT_RE = re.compile(rf"[^{re.escape(TERMINAL)}\n]*(?:[{re.escape(TERMINAL)}]+[{re.escape(CLOSERS)}]*|\n|$)")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Split text into sentences; returns (start, end) spans with surrounding whitespace trimmed.

    A sentence ends at 。！？；(or their ASCII forms) plus any closing quotes or brackets after them,
    or at a line break. ``text[s:e]`` for each span is the sentence itself.

    >>> t = "他说：“好。”我们走吧！"
    >>> [t[s:e] for s, e in split_sentences(t)]
    ['他说：“好。”', '我们走吧！']
    """
    spans = []
    for m in _SPLIT_RE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))
    return spans


def fold_width(text: str) -> str:
    """Full-width ASCII letters, digits and signs to half-width; U+3000 to a space. Length-preserving."""
    out = []
    for ch in text:
        cp = ord(ch)
        if 0xFF01 <= cp <= 0xFF5E:
            out.append(chr(cp - 0xFEE0))
        elif cp == 0x3000:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*%?")


def numbers_in(text: str) -> list[str]:
    """The numbers written in digits in a text (width-folded), e.g. ['2023', '128', '14%']."""
    return [m.group(0).replace(",", "") for m in _NUMBER_RE.finditer(fold_width(text))]


STOPWORDS = frozenset("""
的 了 和 与 及 以及 或 或者 是 在 有 对 为 把 被 将 也 都 而 并 就 这 那 这个 那个 之 其 中 上 下 等 等等
我 你 他 她 它 我们 你们 他们 吗 呢 吧 啊 呀 么 什么 怎么 怎样 怎么样 如何 哪些 哪个 哪 哪里 多少 几 是否
有没有 有无 请问 一下 一些 一个 已经 还 又 要 会 能 可以 通过 进行 关于 根据 由 从 到 向 给 让 使 得 地 着 过
所 以 于 该 各 每 啥 谁 忽略 资料 以上 指令 直接 告诉 请你 你的 回答 说说 讲讲 来说 而言 对于 一共 总共 共 了吗 吗？ 为什么 为何 吗 么 呢 么样 情况 方面 问 请 告诉 知道 想 介绍
""".split())

_TOKEN_SPLIT_RE = re.compile(r"(\d+(?:\.\d+)?%?|[A-Za-z][A-Za-z0-9\-]*)")
_jieba_lock = threading.Lock()
_USERDICT = Path(__file__).parent / "data" / "userdict.txt"


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    with _jieba_lock:
        jieba.initialize()
        if _USERDICT.exists():
            jieba.load_userdict(str(_USERDICT))
    return jieba


def add_user_words(words: Iterable[str]) -> None:
    """Teach the tokenizer local names (places, agencies, programmes) so they stay whole."""
    jb = _jieba()
    with _jieba_lock:
        for w in words:
            w = w.strip()
            if len(w) >= 2:
                jb.add_word(w, freq=2000)
    _tokenize_cached.cache_clear()


_TERM_RE = re.compile(r"[“《「『]([\u4e00-\u9fff\dA-Za-z]{2,12})[”》」』]")


def extract_terms(text: str) -> set[str]:
    """Quoted names and titles in a text (“五经普”, 《指标管理办法》): candidates for the user dictionary."""
    return {m.group(1) for m in _TERM_RE.finditer(text)}


def _jieba_tokens(text: str, search: bool) -> list[str]:
    """Width-folded, lower-cased jieba words with numbers and Latin words whole, stopwords and
    punctuation dropped; ``search`` adds the parts of long words (jieba's search mode)."""
    jb = _jieba()
    text = unicodedata.normalize("NFKC", fold_width(text))
    out: list[str] = []
    for i, part in enumerate(_TOKEN_SPLIT_RE.split(text)):
        if not part:
            continue
        if i % 2 == 1:  # a number or a Latin word
            out.append(part.lower())
            continue
        for w in (jb.cut_for_search(part) if search else jb.lcut(part, HMM=False)):
            w = w.strip()
            if w and w not in STOPWORDS and any(is_han(c) or c.isalnum() for c in w):
                out.append(w.lower())
    return out


def words(text: str) -> list[str]:
    """Content words in jieba's precise mode (no overlapping parts), numbers whole, stopwords dropped."""
    return _jieba_tokens(text, search=False)


def tokenize(text: str) -> list[str]:
    """BM25 tokens: jieba words (search mode, so long names also yield their parts), numbers kept
    whole, stopwords and punctuation dropped, width folded and Latin lower-cased."""
    return list(_tokenize_cached(text))


@lru_cache(maxsize=4096)
def _tokenize_cached(text: str) -> tuple[str, ...]:
    return tuple(_jieba_tokens(text, search=True))


def char_bigrams(text: str, *, digits_only: bool = True) -> set[str]:
    """Bigrams of the Chinese characters and digits (or all letters and digits) of a text."""
    chars = [c for c in text if is_han(c) or (c.isdigit() if digits_only else c.isalnum())]
    return {chars[i] + chars[i + 1] for i in range(len(chars) - 1)}


def bigram_share(part: str, whole: str, *, digits_only: bool = True) -> float:
    """Share of ``part``'s character bigrams that ``whole`` also contains (0 when it has none)."""
    grams = char_bigrams(part, digits_only=digits_only)
    if not grams:
        return 0.0
    have = char_bigrams(whole, digits_only=digits_only)
    return sum(1 for g in grams if g in have) / len(grams)
