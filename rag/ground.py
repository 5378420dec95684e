"""Grounding check for generated answers: every number, date, percentage, amount and quoted name a
sentence states must occur in the excerpts it cites, each number said of what the excerpts say it of; markers must point at real excerpts; a sentence
without a marker is attached to the excerpt that supports it, or dropped. Pure functions."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .zh import MEASURE_WORDS, bigram_share, fold_width, is_han, split_sentences

__all__ = ["GroundedAnswer", "normalize_numbers", "facts_in", "support", "check_answer", "source_forms",
           "REFUSAL_RE", "misattributed"]

_CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_CN_NUM_RE = re.compile(r"[零〇一二两三四五六七八九十百千]+")
_MARKER_RE = re.compile(r"\[(\d{1,2})\]|【(\d{1,2})】|\[\^(\d{1,2})\]")
REFUSAL_RE = re.compile(r"没有(找到)?相关|没有提到|未提及|没有提及|无法(回答|确定|从)|不能回答|资料中没有|未找到|不知道|没有给出")
_QUOTED_RE = re.compile(r"[“《「『]([^”》」』]{2,30})[”》」』]")
# a number as written: digits (with separators and a decimal part), optionally a percent sign
_NUM_RE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?%?")


def _cn_to_int(s: str) -> int | None:
    """一百二十八 -> 128, 十五 -> 15, 八 -> 8 (up to the thousands)."""
    if not s or any(c not in _CN_DIGITS and c not in _CN_UNITS for c in s):
        return None
    total, digit = 0, None
    for c in s:
        if c in _CN_DIGITS:
            if digit is not None and len(s) > 1 and all(x in _CN_DIGITS for x in s):
                return int("".join(str(_CN_DIGITS[x]) for x in s))  # 二〇二三 written digit by digit
            digit = _CN_DIGITS[c]
        else:
            total += (1 if digit is None else digit) * _CN_UNITS[c]
            digit = None
    return total + (digit or 0)


def normalize_numbers(text: str) -> str:
    """Width-fold and write numbers one way: ``１２８`` -> ``128``, ``百分之十`` -> ``10%``,
    ``一百二十八`` -> ``128``; thousands separators dropped. Applied to answers and excerpts alike.

    >>> normalize_numbers("百分之十，一百二十八位，１,２００人")
    '10%,128位,1200人'
    """
    t = fold_width(text).replace("％", "%")
    t = re.sub(r"百分之([零〇一二两三四五六七八九十百]+|\d+(?:\.\d+)?)",
               lambda m: f"{m.group(1) if m.group(1)[0].isdigit() else _cn_to_int(m.group(1))}%", t)
    t = re.sub(r"(?<=\d),(?=\d{3})", "", t)

    def cn(m: re.Match) -> str:
        s = m.group(0)
        # keep words that merely contain numerals (一些, 一线, 统一, 第一); convert numeral runs
        # followed by a measure word or standing as amounts
        after = t[m.end():m.end() + 1]
        if len(s) == 1 and s in "一两" and after not in set(MEASURE_WORDS):
            return s
        n = _cn_to_int(s)
        return str(n) if n is not None else s

    return _CN_NUM_RE.sub(cn, t)


def facts_in(sentence: str) -> list[str]:
    """The checkable facts of a sentence: its numbers (normalised) and quoted names."""
    norm = normalize_numbers(sentence)
    facts = [m.group(0) for m in _NUM_RE.finditer(norm)]
    facts += [m.group(1) for m in _QUOTED_RE.finditer(sentence)]
    return facts


def support(sentence: str, excerpt: str) -> float:
    """Share of the sentence's character bigrams that the excerpt contains (lexical support)."""
    return bigram_share(normalize_numbers(sentence), normalize_numbers(excerpt), digits_only=False)


def _fact_ok(fact: str, excerpts: list[str]) -> bool:
    """A fact holds if an excerpt states it: a number as a whole number of the excerpt (``24.7`` is
    not ``24.74``, ``20`` is not part of ``2023-2025``, ``12`` is not ``128``), a name as written."""
    f = normalize_numbers(fact).replace(" ", "")
    number = re.fullmatch(r"\d+(?:\.\d+)?%?", f) is not None
    for e in excerpts:
        e_norm = normalize_numbers(e).replace(" ", "")
        if not number:
            if f in e_norm:
                return True
            continue
        whole = set(_NUM_RE.findall(e_norm))
        if f in whole or f in {n.rstrip("%") for n in whole} or (f.endswith("%") and f[:-1] in whole):
            return True
    return False


_CLAUSE_STOP = "、，,；;：:。！？!?（）()"


def _said_of(text: str) -> list[tuple[str, str, str]]:
    """Each number of a (normalised) text with the words around it in its clause, back to the previous
    number and on to the next ("高新技术企业11家、科技型企业29家": 11 between 高新技术企业 and 家)."""
    nums = list(_NUM_RE.finditer(text))
    out = []
    for i, m in enumerate(nums):
        left = text[nums[i - 1].end() if i else 0:m.start()]
        right = text[m.end():nums[i + 1].start() if i + 1 < len(nums) else len(text)]
        left = left[max((left.rfind(c) for c in _CLAUSE_STOP), default=-1) + 1:][-8:]
        stops = [j for j in (right.find(c) for c in _CLAUSE_STOP) if j >= 0]
        out.append((m.group(0), left, right[:min(stops, default=len(right))][:8]))
    return out


def misattributed(sentence: str, excerpts: list[str]) -> list[str]:
    """The numbers a sentence says of something the excerpts give another number for: a model that
    read "高新技术企业11家、…中小企业12家" and wrote "高新技术企业12家" states a number that is in the
    excerpt, of the wrong thing. The words around each number of the sentence (before it, or after
    it: "11家高新技术企业") are matched with those around each number of the excerpts (character
    bigrams); a number is misattributed when the best match, at least half, is around another number.
    Numbers with no words around them ("2023年", "12月19日") are left alone. The words are those of
    the number's clause: in "钾肥…779万吨、占全国产量的80％，碳酸锂产量5.6万吨、占全国产量的14％" both
    shares have the same words, so 80％ said of 碳酸锂 is not caught, and "碳酸锂占14％" is taken for
    5.6's (that answer falls back to the extractive one).

    >>> ex = ["全市培育高新技术企业11家、科技型企业29家、创新型中小企业12家。"]
    >>> misattributed("全市培育高新技术企业12家。", ex), misattributed("培育了11家高新技术企业和29家科技型企业。", ex)
    (['12'], [])
    """
    spots = [spot for e in excerpts for spot in _said_of(normalize_numbers(e).replace(" ", ""))]
    wrong = []
    for n, lead, tail in _said_of(normalize_numbers(sentence).replace(" ", "")):
        if sum(1 for c in lead + tail if is_han(c)) < 3:
            continue
        # the words around the number, or those after it against those before the excerpt's ("11家高新技术企业")
        scored = [(max(bigram_share(lead + tail, e_lead + e_tail, digits_only=False),
                       bigram_share(tail, e_lead, digits_only=False)), m) for m, e_lead, e_tail in spots]
        best = max((sc for sc, _ in scored), default=0.0)
        if best >= 0.5 and not any(sc == best and m.rstrip("%") == n.rstrip("%") for sc, m in scored):
            wrong.append(n)
    return wrong


@dataclass
class GroundedAnswer:
    """The checked answer: sentences kept with their excerpt numbers, and what was repaired."""

    sentences: list[tuple[str, list[int]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    repaired: int = 0  # markers attached or removed
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.sentences)

    def text(self) -> str:
        return "".join(s + "".join(f"[{n}]" for n in ns) for s, ns in self.sentences)


def check_answer(answer: str, excerpts: list[str], *, min_support: float = 0.4) -> GroundedAnswer:
    """Check a generated answer against the numbered excerpts (``excerpts[0]`` is ``[1]``).

    Each sentence keeps only markers of real excerpts; its facts must all occur in the excerpts it
    cites and it must share enough words with them. A sentence with no (valid) marker is attached
    to the excerpt that supports it best, if that excerpt holds all its facts; otherwise dropped.
    """
    out = GroundedAnswer()
    # "…85位。[1]" : a marker written after the full stop belongs to the sentence before it
    text = re.sub(r"([。！？!?；;])\s*((?:(?:\[\d{1,2}\]|【\d{1,2}】)\s*)+)", r"\2\1", answer.strip())
    for s, e in split_sentences(text):
        raw = text[s:e]
        marks = [int(next(g for g in m.groups() if g)) for m in _MARKER_RE.finditer(raw)]
        body = _MARKER_RE.sub("", raw).strip()
        if not body or not any(is_han(c) or c.isalnum() for c in body):
            continue
        valid = sorted({n for n in marks if 1 <= n <= len(excerpts)})
        if len(valid) != len(marks):
            out.repaired += 1
            out.reasons.append(f"removed marker(s) {sorted(set(marks) - set(valid))} that point at no excerpt")
        facts = facts_in(body)
        if valid:
            cited = [excerpts[n - 1] for n in valid]
            if all(_fact_ok(f, cited) for f in facts) and max(support(body, c) for c in cited) >= min_support \
                    and not misattributed(body, cited):
                out.sentences.append((body, valid))
                continue
        # find the excerpt that supports the sentence and holds all its facts
        best, best_support = None, 0.0
        for i, ex in enumerate(excerpts, start=1):
            sup = support(body, ex)
            if sup > best_support and all(_fact_ok(f, [ex]) for f in facts) and not misattributed(body, [ex]):
                best, best_support = i, sup
        if best is not None and best_support >= min_support:
            out.sentences.append((body, [best]))
            out.repaired += 1
            out.reasons.append(f"attached [{best}] to “{body[:20]}”")
        else:
            missing = [f for f in facts if not _fact_ok(f, excerpts)]
            wrong = misattributed(body, excerpts)
            out.dropped.append(body)
            out.reasons.append(f"dropped “{body[:20]}”: " + (f"{', '.join(missing)} not in the excerpts" if missing else
                                                             f"{', '.join(wrong)} said of something else than in the excerpts"
                                                             if wrong else "not supported by an excerpt"))
    return out


_DIGITS_RE = re.compile(r"百分之[零〇一二两三四五六七八九十百\d.]+|[0-9０-９]+(?:[.．][0-9０-９]+)?[%％]?")
_CN_COUNT_RE = re.compile(r"(?<=第)[零〇一二两三四五六七八九十百千]+|[零〇一二两三四五六七八九十百千]+(?=[" + MEASURE_WORDS + "])")


def source_forms(sentence: str, excerpts: list[str]) -> str:
    """Write each number of a checked sentence the way its excerpts write it: a model that turned
    ``第八名`` into ``第8名`` (or ``80％`` into ``百分之八十``) is shown with the source's own form."""
    forms: dict[str, str] = {}
    for e in excerpts:
        for m in list(_DIGITS_RE.finditer(e)) + list(_CN_COUNT_RE.finditer(e)):
            forms.setdefault(normalize_numbers(m.group(0)), m.group(0))
    joined = "".join(excerpts)

    def repl(m: re.Match) -> str:
        tok = m.group(0)
        if tok in joined:
            return tok
        return forms.get(normalize_numbers(tok), tok)

    return _DIGITS_RE.sub(repl, sentence)
