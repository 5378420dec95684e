"""OCR repair of a page, as pure functions: drop OCR spaces, join broken lines, keep paragraphs.

Every repaired paragraph carries segments mapping its characters back to raw-page offsets and
line numbers, so a citation can point at the original line. A character of a segment is the raw
character itself, or its full-width form where ASCII punctuation stood in Chinese text
(``fold_width`` of both sides is equal).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .types import Segment
from .zh import CLOSERS, HAN, ends_sentence, is_cjk_punct, is_han, spans_word, to_fullwidth_punct

__all__ = ["Paragraph", "SpaceReport", "remove_ocr_spaces", "decide_spaces", "should_join", "repair_page",
           "report_spaces", "slice_segments", "is_table_row", "BLOCK_START_RE", "BYLINE_LINE_RE",
           "JUMP_RE", "ROLE", "CREDIT_TAIL", "NEWS_LEAD", "CAPTION_START", "CONTINUED_FROM"]

# The people a byline names: 记者, 本报记者, 特约记者, 通讯员, 评论员, 实习生, 作者 ...
ROLE = r"(?:本报|特约|见习|首席|摄影)?(?:记者|通讯员|评论员|实习生)|作者"
_MARKS = "□■►▶●◆▲★☆"
# The newspaper's own markers (segment.py reads them from here):
# a news lead: 本报讯, or a dateline (本报杭州3月12日电, 新华社北京3月12日电)
NEWS_LEAD = rf"(?:本\s?报\s?讯|(?:本报|[{HAN}]{{1,4}}社)[{HAN}]{{0,8}}(?:\d{{1,2}}月)?\d{{1,2}}日电)"
# the start of a photo caption: 图①：, 图为, 本版图文
CAPTION_START = r"图[①-⑳\d一二三四五六七八九十]*[：:]|图为|本版图文"
# a continuation from another page, in brackets: （上接第一版）
CONTINUED_FROM = r"上接|接上|紧接"
# Lines that always begin a new block: news leads, continuations and jumps, captions, bylines, list items.
BLOCK_START_RE = re.compile(
    rf"^({NEWS_LEAD}|[{_MARKS}]|[（(]\s*({CONTINUED_FROM}|下转|转第)|{CAPTION_START}|"
    rf"[（(]\s*(?:{ROLE})[^）)]{{0,40}}[）)]\s*$)"
)
# Lines that stand alone as a byline: a marked name line (□ 记者 汤红红, ► 李媛 刘文研), a role and names
# (本报记者 覃岚), or a role in brackets ((记者 张艳艳), （作者系…副教授 方卫东）).
BYLINE_LINE_RE = re.compile(
    rf"^([{_MARKS}]\s*[^，。；！？,;!?：:]{{1,30}}|(?:[文图][/／]|文图[/／])?\s*(?:{ROLE})\s*[{HAN}]{{2,4}}"
    rf"(?:\s*(?:{ROLE})?\s*[{HAN}]{{2,4}}){{0,4}}(?:\s*(?:文[/／]图|报道|摄影?))?"
    rf"|[（(]\s*(?:{ROLE})[^）)]{{0,40}}(?<!摄)[）)])$"
)
_NAME_RE = re.compile(rf"^[{HAN}]{{2,4}}$")
# a jump to another page, on its own line or ending a paragraph: （下转第三版）, 转第4版; or an end mark （完）
JUMP_RE = re.compile(r"\s*(?:[（(]\s*(?:下转|转第?|转至)[^）)]{0,10}[）)]|转第?[\d一二三四五六七八九十]+版|"
                     r"[（(](?:完|全文完|待续|未完待续)[）)])\s*$")
# A news lead glued to the end of a headline on the same line: "爱路护路宣传进校园 本报讯（记者…）".
_EMBEDDED_START_RE = re.compile(r"\s+(?=本报讯[（(])")
_PAIRS = {"“": "”", "‘": "’", "「": "」", "『": "』", "（": "）", "(": ")", "《": "》", "【": "】"}
# a photo credit standing on its own line: 宜春丰城高新区供图, （本报记者 摄）
# the credit ends in 供图, or in 摄 after a space, a role, or a name after the caption's sentence
# ("（本报记者 摄）", "李明 摄", "…技艺。李然摄"), never a word such as 拍摄 that a body line may end with
CREDIT_TAIL = (rf"(?:供图|\s摄影?|(?:记者|通讯员|摄影师?)\s*[{HAN}]{{0,4}}\s*摄|[／/]\s*摄|"
               rf"(?<=[。！？”])\s*[{HAN}]{{2,4}}\s*摄影?)\s*[）)]?$")
_CREDIT_LINE_RE = re.compile(rf"^[（(]?[^，。,]{{0,30}}{CREDIT_TAIL}")
# a table cell: a short run of Chinese characters and figures ("销售收入", "501.5亿元")
_CELL_RE = re.compile(rf"^[{HAN}\d.%％]{{1,10}}$")
_FIGURE_CELL_RE = re.compile(rf"^\d[\d.]*[%％{HAN}]+$")


@dataclass(frozen=True)
class Paragraph:
    """A repaired paragraph (or headline, byline, caption line) of a page."""

    text: str
    segments: tuple[Segment, ...]
    line: int  # raw line number of its first character
    gap_before: bool  # two or more blank lines before it: a layout gap between blocks


@dataclass(frozen=True)
class SpaceReport:
    """What repair did to the spaces and punctuation of one page."""

    dropped: int  # spaces taken out of words
    kept: tuple[str, ...]  # each kept space between two Chinese characters, with a few characters around it
    punct: int  # ASCII , : ; ! ? shown full-width


def _kind(ch: str) -> str:
    if is_han(ch):
        return "han"
    if is_cjk_punct(ch):
        return "punct"
    if ch.isascii() and ch.isalnum() or ch in "%％.":
        return "latin"
    if ch.isdigit() or 0xFF10 <= ord(ch) <= 0xFF5A:
        return "latin"
    return "other"


def is_table_row(line: str) -> bool:
    """A row of a table: three or more short cells of words and figures, at least two of them figures
    with a unit ("2022年 600.6亿元 182亿元"), or all of them words ("年份 销售收入 其中预包装")."""
    cells = line.split()
    if len(cells) < 3 or not all(_CELL_RE.match(c) for c in cells):
        return False
    figures = sum(1 for c in cells if _FIGURE_CELL_RE.match(c))
    bare = sum(1 for c in cells if c.replace(".", "").isdigit() or len(c) == 1)
    return bare == 0 and (figures >= 2 or figures == 0)


def _han_tail(text: str, n: int = 4) -> str:
    k = len(text)
    while k > 0 and len(text) - k < n and is_han(text[k - 1]):
        k -= 1
    return text[k:]


def _han_head(text: str, n: int = 4) -> str:
    k = 0
    while k < len(text) and k < n and is_han(text[k]):
        k += 1
    return text[:k]


def decide_spaces(line: str) -> tuple[str, list[int], int, list[str]]:
    """Drop the spaces OCR put inside words, keep the real ones; the evidence is on both sides.

    Dropped: spaces next to CJK punctuation, between CJK and digits/Latin, between the characters of a
    letter-spaced line (``电 子 合 同``), and between two Chinese characters that a dictionary word
    spans (``近 期``, ``红色物 业``, ``本报 讯``). Kept: a space between words no word spans (names
    ``陈刚 吴晓军``, slogans ``知险 避险 安全``, headline halves), between Latin words, in table rows.

    Returns:
        The text, per kept char its index in ``line``, the number of spaces dropped, and each kept
        space between two Chinese characters with its neighbours.
    """
    stripped = line.strip()
    lead = len(line) - len(line.lstrip())
    tokens = stripped.split()
    singles = [len(t) == 1 and is_han(t) for t in tokens]
    # letter-spaced: three single characters, or two in a row ("西 宁 市 召开"), or a short line of them
    letter_spaced = sum(singles) >= 3 or any(a and b for a, b in zip(singles, singles[1:])) or \
        (len(tokens) >= 2 and all(len(t) <= 2 for t in tokens) and sum(singles) >= 2)
    table = is_table_row(stripped)
    kept: list[int] = []
    kept_spaces: list[str] = []
    dropped = 0
    i = 0
    n = len(stripped)
    while i < n:
        ch = stripped[i]
        if not ch.isspace():
            kept.append(lead + i)
            i += 1
            continue
        j = i
        while j < n and stripped[j].isspace():
            j += 1
        left, right = stripped[i - 1], stripped[j]
        kl, kr = _kind(left), _kind(right)
        before, after = stripped[:i], stripped[j:]
        drop = not table and (
            "punct" in (kl, kr)
            or {kl, kr} == {"han", "latin"}
            or (kl == kr == "han" and letter_spaced and 1 in (len(before.split()[-1]), len(after.split()[0])))
            or (kl == kr == "han" and spans_word(_han_tail(before), _han_head(after)))
        )
        if drop:
            dropped += 1
        else:
            kept.append(lead + i)  # keep one space
            if kl == kr == "han":
                kept_spaces.append(stripped[max(0, i - 3):j + 3])
        i = j
    return "".join(line[k] for k in kept), kept, dropped, kept_spaces


def remove_ocr_spaces(line: str) -> tuple[str, list[int]]:
    """Drop the spaces OCR put inside words; return the text and, per kept char, its index in ``line``.

    >>> remove_ocr_spaces("2023 年 12 月")[0]
    '2023年12月'
    """
    text, kept, _, _ = decide_spaces(line)
    return text, kept


def _segments(kept: list[int], raw_start: int, line_no: int, text_start: int = 0) -> list[Segment]:
    segs: list[Segment] = []
    for pos, k in enumerate(kept):
        if segs and segs[-1].raw_start + segs[-1].length == raw_start + k and \
                segs[-1].start + segs[-1].length == text_start + pos:
            last = segs[-1]
            segs[-1] = Segment(last.start, last.raw_start, last.length + 1, line_no)
        else:
            segs.append(Segment(text_start + pos, raw_start + k, 1, line_no))
    return segs


@dataclass(frozen=True)
class _Line:
    text: str
    segments: tuple[Segment, ...]
    line: int
    blanks_before: int


def _unbalanced(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch in _PAIRS:
            depth += 1
        elif ch in _PAIRS.values() and depth:
            depth -= 1
    return depth > 0


def should_join(prev: str, nxt: str, width: float, blanks: int = 0) -> bool:
    """Whether line ``nxt`` continues the paragraph of line ``prev`` (pure rule, table-tested).

    ``width`` is the page's typical full line length; ``blanks`` the blank lines between them.
    """
    if blanks >= 2 or not prev or not nxt:
        return False
    if BLOCK_START_RE.match(nxt) or BYLINE_LINE_RE.match(prev) or BYLINE_LINE_RE.match(nxt) or \
            _CREDIT_LINE_RE.match(nxt) or re.search(CREDIT_TAIL, prev):  # a credit ends its caption
        return False
    if ends_sentence(prev) or JUMP_RE.search(prev) or is_table_row(prev) or is_table_row(nxt):
        return False
    if _unbalanced(prev):
        return True
    if nxt[0] in "，。、；：？！,.;:?!" + CLOSERS:
        return True
    if _NAME_RE.match(nxt):  # a bare author name after a headline
        return False
    # headlines are short; a longer line without a full stop was broken by the layout
    return len(prev) >= min(0.6 * width, 32)


def _page_width(lines: list[_Line]) -> float:
    lengths = sorted(len(ln.text) for ln in lines if ln.text)
    if not lengths:
        return 1.0
    return float(lengths[int(0.75 * (len(lengths) - 1))])


def _split_lines(raw: str, report: dict | None = None) -> list[_Line]:
    out: list[_Line] = []
    pos = 0
    blanks = 0
    for line_no, line in enumerate(raw.split("\n"), start=1):
        start = pos
        pos += len(line) + 1
        spaced, kept, dropped, kept_spaces = decide_spaces(line)
        # full-width marks keep the length, so the raw-offset map is unchanged
        text = to_fullwidth_punct(spaced)
        if report is not None:
            report["dropped"] += dropped
            report["kept"].extend(kept_spaces)
            report["punct"] += sum(1 for a, b in zip(spaced, text) if a != b)
        if not text:
            blanks += 1
            continue
        segs = _segments(kept, start, line_no)
        # a headline and the next article's lead printed on one line
        cut = _EMBEDDED_START_RE.search(text)
        if cut and cut.start() > 0:
            head, tail = text[:cut.start()], text[cut.end():]
            out.append(_Line(head, tuple(slice_segments(segs, 0, len(head))), line_no, blanks))
            out.append(_Line(tail, tuple(slice_segments(segs, cut.end(), len(text))), line_no, 0))
        else:
            out.append(_Line(text, tuple(segs), line_no, blanks))
        blanks = 0
    return out


def slice_segments(segs: list[Segment] | tuple[Segment, ...], a: int, b: int, shift: int | None = None) -> list[Segment]:
    """Segments of text[a:b], re-based so that a becomes 0 (or ``shift``)."""
    base = -a if shift is None else shift - a
    out = []
    for s in segs:
        lo, hi = max(a, s.start), min(b, s.start + s.length)
        if lo < hi:
            out.append(Segment(lo + base, s.raw_start + lo - s.start, hi - lo, s.line))
    return out


def repair_page(raw: str) -> list[Paragraph]:
    """Repair a raw OCR page into paragraphs with raw-offset segments.

    >>> [p.text for p in repair_page("电 子 合 同 推\\n\\n广 应 用。\\n\\n\\n\\n标题")]
    ['电子合同推广应用。', '标题']
    """
    lines = _split_lines(raw)
    width = _page_width(lines)
    paras: list[Paragraph] = []
    cur_text = ""
    cur_segs: list[Segment] = []
    cur_line = 0
    cur_gap = False
    last_line = ""  # the previous raw line: joining is decided line by line, not on the paragraph
    for ln in lines:
        if cur_text and should_join(last_line, ln.text, width, ln.blanks_before):
            joiner = " " if cur_text[-1].isascii() and cur_text[-1].isalpha() and ln.text[0].isascii() \
                and ln.text[0].isalpha() else ""
            base = len(cur_text) + len(joiner)
            cur_text += joiner + ln.text
            cur_segs.extend(slice_segments(ln.segments, 0, len(ln.text), shift=base))
        else:
            if cur_text:
                paras.append(Paragraph(cur_text, tuple(cur_segs), cur_line, cur_gap))
            cur_text, cur_segs, cur_line = ln.text, list(ln.segments), ln.line
            cur_gap = ln.blanks_before >= 2 or not paras
        last_line = ln.text
    if cur_text:
        paras.append(Paragraph(cur_text, tuple(cur_segs), cur_line, cur_gap))
    return paras


def report_spaces(raw: str) -> SpaceReport:
    """How many OCR spaces repair drops and keeps on a page, and how many marks it makes full-width."""
    report: dict = {"dropped": 0, "kept": [], "punct": 0}
    _split_lines(raw, report)
    return SpaceReport(report["dropped"], tuple(report["kept"]), report["punct"])
