"""Repaired page -> articles: headlines (before, after or apart from their body), bylines, continuations, captions.

Headlines are placed by layout rules where the layout is explicit (a headline at the top of the
page, a run that already has its headline) and otherwise by scoring the headline's words against
the candidate bodies, because on these pages a headline is often printed after its article or
beside another article's byline. Lines are recognised by pattern families, never by page strings:
news leads and datelines, bylines (with spaces, roles, markers, 文/图), credits and photo captions,
column labels, kickers and subtitles, digests, jumps and end marks, editor's notes, list items.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import PurePath

from .repair import (BYLINE_LINE_RE, CAPTION_START, CONTINUED_FROM, CREDIT_TAIL, JUMP_RE as _JUMP_RE, NEWS_LEAD, ROLE,
                     Paragraph, SpaceReport, is_table_row, repair_page, report_spaces, slice_segments)
from .types import Article, Segment
from .zh import HAN, bigram_share, char_bigrams, cut_words, ends_sentence, split_sentences

__all__ = ["segment_page", "read_layout", "PageLayout", "render_report", "render_totals", "headline_similarity",
           "clean_byline",
           "provisional_title"]

# captions: numbered or "图为" lines, and lines that end in a credit (…供图, （本报记者 摄）, 摄影：…)
_CAPTION_RE = re.compile(rf"^({CAPTION_START}|（?摄影?[：:])|" + CREDIT_TAIL)
_CREDIT_ONLY_RE = re.compile(r"^[（(]?[^，。,]{0,30}" + CREDIT_TAIL + r"|^本版图文")
_NUMBERED_CAPTION_RE = re.compile(r"^图[①-⑳\d一二三四五六七八九十]+[：:]")
# an editor's note before a story or column
_NOTE_RE = re.compile(r"^(编者按|编者的话|编前)[：:]")
# who is where in a photo: 张建国（右）, （前排左二）
_POSITION_RE = re.compile(r"[（(](?:前排|后排|中间)?[左右中][一二三四五六\d]?[）)]")
# a news lead (repair.NEWS_LEAD) with the byline in brackets
_LEAD_RE = re.compile(rf"^{NEWS_LEAD}\s*[（(]([^）)]{{0,40}})[）)]\s*")
_LEAD_BARE_RE = re.compile(rf"^{NEWS_LEAD}\s*")
# or with the byline unbracketed, closed by 报道: "本报讯 记者 刘伟 报道：…"
_LEAD_SAYS_RE = re.compile(rf"^{NEWS_LEAD}\s*((?:{ROLE})\s*[{HAN}\s]{{2,24}}?)\s*报道\s*[：:，,]?\s*")
_CONT_RE = re.compile(rf"^[（(]\s*({CONTINUED_FROM})[^）)]{{0,12}}[）)]\s*")
_NAME_RE = re.compile(rf"^[{HAN}]{{2,4}}(\s+[{HAN}]{{2,4}}){{0,3}}$")
# common surnames: a bare line of two to four characters is an author's name only if it opens with one
_SURNAMES = set("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任"
                "沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔"
                "向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌"
                "毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦"
                "麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩"
                "明佘池查麻苑迟邝")
_COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "令狐", "慕容", "公孙", "长孙", "宇文")
# a list item led by a bullet: "● 柳州市第二批城市…完工，…。"
_ITEM_RE = re.compile(r"^[●■▲◆★☆·•]\s*")
# a column label printed above headlines or items: 民生简讯, 新闻速递, 今日导读, 短评
_LABEL_RE = re.compile(r"^(?=.{2,6}$).{0,4}(简讯|快讯|短讯|速递|速览|导读|短评|时评|评论|观察|传真|动态|要闻|视点|纵横)$")
# a headline in a digest, with the page it is on: "天府绿道新增骑行驿站48个 3版"
_PAGE_REF_RE = re.compile(r"\s*(?:第?[\d一二三四五六七八九十]+|[A-Z]\d*)\s*版$")
# a kicker (引题) often says what for or where from: 为了…, 让…, 从…
_KICKER_RE = re.compile(r"^(为了|为|让|从|向|当|在|把)|\s|[！!—]$")
_ROLE_ONLY_RE = re.compile(rf"^(?:{ROLE})$")
_ROLE_RE = re.compile(rf"\s*((?:{ROLE.replace('|作者', '')}))\s*")
_MAX_HEADLINE = 40
# a headline is broken over two lines only when it is too long for one: shorter pairs are label + headline
_BROKEN_MIN = 18


def headline_similarity(headline: str, text: str) -> float:
    """Share of the headline's character bigrams (Chinese characters and digits) found in ``text``."""
    return bigram_share(headline, text)


@dataclass
class _Run:
    """Body paragraphs that belong together, while articles are being assembled."""

    paras: list[tuple[str, tuple[Segment, ...]]] = field(default_factory=list)
    hard_start: bool = False  # opened by 本报讯, a continuation marker or a list bullet
    byline_line: bool = False  # opened by a byline on its own line (► 姓名, □ 记者 …)
    closed_by_byline: bool = False  # ended by (记者 …) on its own line
    jumped: bool = False  # ended by （下转…）: the story goes on on another page
    continuation: bool = False
    byline: str | None = None
    title: str | None = None
    subtitle: str | None = None
    merged_into: "_Run | None" = None

    @property
    def text(self) -> str:
        return "\n".join(t for t, _ in self.paras)

    def root(self) -> "_Run":
        run = self
        while run.merged_into is not None:
            run = run.merged_into
        return run


# The page read in order, as items: headline groups, bare author names after a headline, column
# labels and body runs (_Run).
@dataclass
class _Headline:
    """The printed lines of one headline group: a kicker, the headline, a subtitle."""

    lines: list[Paragraph]


@dataclass
class _Name:
    """A bare author name printed under a headline."""

    text: str


@dataclass
class _Label:
    """A column label (民生简讯, 短评): it heads what follows and titles nothing."""

    text: str


_Item = _Headline | _Name | _Label | _Run


def _classify(p: Paragraph) -> str:
    t = p.text
    if _CAPTION_RE.search(t) and len(_CAPTION_RE.split(t)[0]) <= 80 or _CAPTION_RE.match(t):
        return "caption"
    if _POSITION_RE.search(t) and len(t) <= 80 and ends_sentence(t) and not _LEAD_BARE_RE.match(t):
        return "caption"
    if BYLINE_LINE_RE.match(t) and _names_a_person(t):
        return "byline"
    if _JUMP_RE.fullmatch(t):
        return "jump"
    if _NOTE_RE.match(t):
        return "note"
    if _LEAD_BARE_RE.match(t) or _CONT_RE.match(t) or is_table_row(t):
        return "body"
    if _ITEM_RE.match(t) and ends_sentence(t):
        return "item"
    if _LABEL_RE.match(t):
        return "heading"
    core = _JUMP_RE.sub("", t)  # "…更远的地方。（完）" ends a sentence
    if core[-1] in "：:，,、；;" or "。" in core:  # a lead into a list, a cut paragraph, sentences
        return "body"
    if not ends_sentence(t) and len(t) <= _MAX_HEADLINE:
        return "name" if _NAME_RE.match(t) and all(_looks_like_name(w) for w in t.split()) else "heading"
    return "body"


def _names_a_person(line: str) -> bool:
    """A byline line without a marker or brackets (本报记者 王芳) must name someone: "记者手记" is a label."""
    if line[0] in "□■►▶●◆▲★☆（(":
        return True
    rest = _ROLE_RE.sub(" ", re.sub(r"^(?:文|图|文图)\s*[/／]|(?:文\s*[/／]\s*图|报道|摄影?)$", "", line))
    return all(_looks_like_name(w) for w in clean_byline(rest).split())


def _looks_like_name(word: str) -> bool:
    if word.startswith(_COMPOUND_SURNAMES):
        return 3 <= len(word) <= 4
    return 2 <= len(word) <= 3 and word[0] in _SURNAMES


def clean_byline(text: str) -> str:
    """A byline as a reader writes it: no marker or brackets, one space between roles and names.

    >>> clean_byline("□ 记 者 王 静 通讯员 马晓东")
    '记者 王静 通讯员 马晓东'
    """
    text = re.sub(r"^[□■►▶●◆]\s*", "", text.strip())
    text = re.sub(r"^[（(]\s*|\s*[）)]$", "", text).strip()
    text = re.sub(r"^(?:文|图|文图)\s*[/／]\s*|\s*(?:文\s*[/／]\s*图|报道)$", "", text).strip()
    # characters written apart are one word: "记 者 王 静" -> "记者王静" (roles are parted below)
    merged: list[str] = []
    spaced = False  # the last token was built from single characters
    for tok in text.split():
        if len(tok) == 1 and merged and spaced:
            merged[-1] += tok
        else:
            merged.append(tok)
            spaced = len(tok) == 1
    # a single character is no name: it is the end of the name before it ("祁永 峰"), or the start of
    # the one after a role
    names: list[str] = []
    for k, tok in enumerate(merged):
        if len(tok) == 1 and names and not _ROLE_ONLY_RE.match(names[-1]):
            names[-1] += tok
        elif len(tok) == 1 and k + 1 < len(merged) and not _ROLE_ONLY_RE.match(merged[k + 1]):
            merged[k + 1] = tok + merged[k + 1]
        else:
            names.append(tok)
    text = " ".join(names)
    # roles and names apart: "记者王静通讯员马晓东" -> "记者 王静 通讯员 马晓东"
    text = _ROLE_RE.sub(lambda m: f" {m.group(1)} ", text)
    return re.sub(r"\s+", " ", text).strip()


def _headline_group(texts: list[str]) -> tuple[str, str | None]:
    """Consecutive headline lines -> (title, subtitle).

    A line opened by a dash is a subtitle (副题); with one, or when the first line reads as a kicker
    (引题: "为了…", two phrases apart), the line before the main headline is a kicker and joins the
    subtitle; otherwise a short first line is a headline broken in two.
    """
    subs = [t for t in texts if t.startswith(("——", "—", "－－", "--"))]
    mains = [t for t in texts if t not in subs]
    if not mains:
        return texts[0], None
    if len(mains) >= 2 and len(mains[0]) <= 4 and len(mains[1]) >= 8:
        mains = mains[1:]  # a column label (文明之光, 今日关注) over the headline, not half of it
    kicker: list[str] = []
    if len(mains) >= 2 and (subs or _KICKER_RE.search(mains[0])):
        kicker, mains = mains[:1], mains[1:]
    if len(mains) >= 2 and len(mains[0]) <= 13 and len(mains[0]) + len(mains[1]) <= _MAX_HEADLINE:
        if mains[1][0] in "（(" or len(mains[0]) + len(mains[1]) >= _BROKEN_MIN:
            title, rest = mains[0] + mains[1], mains[2:]
        else:  # a headline that fits one line was not broken: the short line over it is a label or kicker
            title, rest = mains[1], [mains[0]] + mains[2:]
    else:
        title, rest = mains[0], mains[1:]
    rest = kicker + rest + subs
    return title, ("　".join(rest) if rest else None)


def _captions(paras: list[Paragraph], flags: list[str]) -> None:
    """Mark caption blocks: gap-delimited blocks holding a caption marker and no headline or byline,
    and short sentences standing alone between layout gaps (photo captions without a marker)."""
    n = len(paras)
    starts = [i for i in range(n) if paras[i].gap_before] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    bounds = list(zip(starts, starts[1:] + [n]))
    for a, b in bounds:
        kinds = flags[a:b]
        if "caption" in kinds and not {"heading", "byline", "name"} & set(kinds) and \
                not any(_LEAD_BARE_RE.match(paras[i].text) or _CONT_RE.match(paras[i].text) for i in range(a, b)):
            for i in range(a, b):
                flags[i] = "caption"
        # a lone short sentence framed by gaps (or a gap and a headline) is a photo caption
        first = paras[a]
        if flags[a] == "body" and first.gap_before and len(first.text) <= 60 and ends_sentence(first.text) \
                and not _LEAD_BARE_RE.match(first.text) and (b - a == 1 or flags[a + 1] == "heading"):
            flags[a] = "caption"


def _caption_records(paras: list[Paragraph], flags: list[str]) -> list[list[Paragraph]]:
    groups: list[list[Paragraph]] = []
    prev = -2
    for i, p in enumerate(paras):
        if flags[i] != "caption":
            continue
        new = prev != i - 1 or p.gap_before or (_NUMBERED_CAPTION_RE.match(p.text) and groups and
                                                 any(_NUMBERED_CAPTION_RE.match(q.text) for q in groups[-1]))
        if new or not groups:
            groups.append([p])
        else:
            groups[-1].append(p)
        prev = i
    return groups


def _strip_prefix(text: str, segs: tuple[Segment, ...], n: int) -> tuple[str, tuple[Segment, ...]]:
    return text[n:], tuple(slice_segments(segs, n, len(text)))


@dataclass(frozen=True)
class PageLayout:
    """What segmentation made of a page: its articles and captions, and the blocks it could not place."""

    source: str
    articles: list[Article]
    unplaced: list[str]  # headlines with no body (a digest, a lost headline); column labels are not listed
    spaces: SpaceReport


def segment_page(raw: str, source: str) -> list[Article]:
    """Rebuild the articles (and photo captions) of one raw page.

    >>> page = "本报讯（记者 王五）近日，某市召开会议。\\n\\n某市召开会议\\n"
    >>> [(a.title, a.byline) for a in segment_page(page, "p.txt")]
    [('某市召开会议', '记者 王五')]
    """
    return _segment(raw, source)[0]


def read_layout(raw: str, source: str) -> PageLayout:
    """Rebuild the articles and captions of one raw page, list the blocks that found no place and
    what repair did to its spaces and punctuation."""
    articles, unplaced = _segment(raw, source)
    return PageLayout(source, articles, unplaced, report_spaces(raw))


def render_totals(layouts: list[PageLayout]) -> str:
    """One closing line over the pages of a report: articles, captions, unplaced blocks, spaces, marks."""
    arts = sum(1 for lay in layouts for a in lay.articles if a.kind == "article")
    caps = sum(1 for lay in layouts for a in lay.articles if a.kind == "caption")
    return (f"== {len(layouts)} pages: {arts} articles, {caps} captions, "
            f"{sum(len(lay.unplaced) for lay in layouts)} unplaced; OCR spaces dropped "
            f"{sum(lay.spaces.dropped for lay in layouts)}, kept {sum(len(lay.spaces.kept) for lay in layouts)}; "
            f"punctuation made full-width {sum(lay.spaces.punct for lay in layouts)}")


def _segment(raw: str, source: str) -> tuple[list[Article], list[str]]:
    paras = repair_page(raw)
    if not paras:
        return [], []
    flags = [_classify(p) for p in paras]
    _captions(paras, flags)
    items = _items(paras, flags)
    runs = [item for item in items if isinstance(item, _Run)]
    lost = _place_headlines(items, runs)
    # a headline over a photo and its caption (图片新闻) titles the caption
    caption_titles: dict[int, str] = {}
    for _, title, line in lost:
        for j in range(1, len(paras)):
            if title and flags[j] == "caption" and flags[j - 1] == "heading" and \
                    any(seg.line == line for seg in paras[j - 1].segments):
                caption_titles[j] = title
    unplaced = [text for text, title, _ in lost if title not in caption_titles.values() or not title]
    return _articles(items, paras, flags, source, caption_titles), unplaced


def render_report(layout: PageLayout) -> str:
    """A page as a person checking a new paper reads it: each article with its kind, where its title
    came from (printed or provisional), byline; the blocks with no place; the spaces and marks repaired."""
    arts = [a for a in layout.articles if a.kind == "article"]
    sp = layout.spaces
    lines = [f"== {layout.source}: {len(arts)} articles, {len(layout.articles) - len(arts)} captions, "
             f"{len(layout.unplaced)} unplaced; OCR spaces dropped {sp.dropped}, kept {len(sp.kept)}; "
             f"punctuation made full-width {sp.punct}"]
    for a in layout.articles:
        source = "provisional" if a.provisional_title else "printed"
        kind = "caption" if a.kind == "caption" else ("continued" if a.continuation else "article")
        lines.append(f"  {a.article_id.rsplit('-', 1)[-1]}  {kind:<9} {source:<11} {a.title}")
        if a.subtitle:
            lines.append(f"      subtitle: {a.subtitle}")
        if a.byline:
            lines.append(f"      byline:   {a.byline}")
    for block in layout.unplaced:
        lines.append(f"  unplaced: {block}")
    if sp.kept:
        lines.append("  kept spaces: " + " | ".join(k.replace("\n", " ") for k in sp.kept))
    return "\n".join(lines)


def _items(paras: list[Paragraph], flags: list[str]) -> list[_Item]:
    """The page's items in order: headline groups, bare names, labels, and body runs with bylines folded in."""
    items: list[_Item] = []
    pending_byline: str | None = None
    notes: list[tuple[str, tuple[Segment, ...]]] = []  # an editor's note waiting for its story
    for idx, (p, kind) in enumerate(zip(paras, flags)):
        if kind == "note":
            notes.append((p.text, p.segments))
            continue
        if kind in ("caption", "jump"):
            if kind == "jump" and items and isinstance(items[-1], _Run):
                items[-1].jumped = True
            continue
        last = items[-1] if items else None
        if kind == "heading":
            # a headline's printed lines stay apart: a kicker, the headline, a subtitle
            lines = _printed_lines(p)
            for k, line in enumerate(lines):
                last = items[-1] if items else None
                # a column label (民生简讯, 短评, or any line of four characters over a headline) heads
                # what follows and titles nothing
                over_headline = k + 1 < len(lines) or idx + 1 < len(flags) and flags[idx + 1] == "heading"
                if _LABEL_RE.match(line.text) or len(line.text) <= 4 and over_headline and isinstance(last, _Headline):
                    items.append(_Label(line.text))
                elif isinstance(last, _Headline) and (not line.gap_before or line is not p):
                    last.lines.append(line)
                else:
                    items.append(_Headline([line]))
            continue
        if kind == "name":
            if isinstance(last, _Headline):
                items.append(_Name(p.text))
            else:
                items.append(_Headline([p]))
            continue
        if kind == "byline":
            if p.text.startswith(("(", "（")) and isinstance(last, _Run) and not last.closed_by_byline:
                last.byline = last.byline or clean_byline(p.text)
                last.closed_by_byline = True
            else:
                pending_byline = clean_byline(p.text)
            continue
        if kind == "body" and isinstance(last, _Label):
            # a column label is followed by a headline, even one the layout ran into the body
            lines = _printed_lines(p)
            head = lines[0].text
            if len(lines) > 1 and not re.search(r"[，。；！？,;!?]", head) and p.text.startswith(head):
                items.append(_Headline([lines[0]]))
                p = Paragraph(p.text[len(head):], tuple(slice_segments(p.segments, len(head), len(p.text))),
                              lines[1].line, False)
        text, segs = p.text, p.segments
        jump = _JUMP_RE.search(text)
        if jump and jump.start() > 0:
            text, segs = text[:jump.start()], tuple(slice_segments(segs, 0, jump.start()))
        run = last if isinstance(last, _Run) else None
        m_lead = _LEAD_RE.match(text) or _LEAD_SAYS_RE.match(text) or _LEAD_BARE_RE.match(text)
        m_cont = _CONT_RE.match(text)
        m_item = _ITEM_RE.match(text) if kind == "item" else None
        if m_lead or m_cont or m_item or run is None or run.closed_by_byline or run.jumped or p.gap_before \
                or pending_byline:
            run = _Run(hard_start=bool(m_lead or m_cont or m_item), byline_line=pending_byline is not None,
                       byline=pending_byline, continuation=bool(m_cont))
            items.append(run)
            pending_byline = None
            run.paras.extend(notes)
            notes = []
        if m_lead:
            if m_lead.groups() and m_lead.group(1):
                run.byline = clean_byline(m_lead.group(1))
            text, segs = _strip_prefix(text, segs, m_lead.end())
        elif m_cont or m_item:
            text, segs = _strip_prefix(text, segs, (m_cont or m_item).end())
        if text:
            run.paras.append((text, segs))
        if jump:
            run.jumped = True
    return items


def _printed_lines(p: Paragraph) -> list[Paragraph]:
    """The raw lines a repaired paragraph was joined from (the first keeps the paragraph's gap)."""
    by_line: dict[int, list[Segment]] = {}
    for seg in p.segments:
        by_line.setdefault(seg.line, []).append(seg)
    if len(by_line) < 2:
        return [p]
    out = []
    for k, (line, segs) in enumerate(sorted(by_line.items())):
        a, b = segs[0].start, segs[-1].start + segs[-1].length
        out.append(Paragraph(p.text[a:b], tuple(slice_segments(segs, a, b)), line, p.gap_before and k == 0))
    return out


def _reads_as_section(title: str, after: _Run) -> bool:
    """A short heading (section heads run 4-10 characters; the seeds' headlines of stories without a
    byline run 11 and more) over text that does not open like a news story (近日, 今年以来 …)."""
    return len(title) <= _SECTION_HEAD_MAX and not _NEWS_OPENING_RE.match(after.text)


_SECTION_HEAD_MAX = 10
_NEWS_OPENING_RE = re.compile(r"^(近日|日前|近期|近年来|今年以来|连日来|记者[^，。]{0,20}获悉)")


def _place_headlines(items: list[_Item], runs: list[_Run]) -> list[tuple[str, str, int]]:
    """Give each headline group a body; return the groups that found none (text, title, last line)."""
    lost: list[tuple[str, str | None, list]] = []
    for entry in list(items):  # a split run adds items: walk a copy, find each headline's place anew
        if not isinstance(entry, _Headline):
            continue
        obj = entry.lines
        i = next(k for k, e in enumerate(items) if e is entry)
        texts = [p.text for p in obj]
        if sum(1 for t in texts if _PAGE_REF_RE.search(t)) >= max(1, len(texts) // 2):
            lost.append(("", None, texts, obj))  # a digest of headlines on other pages
            continue
        mains = [t for t in texts if not t.startswith(("——", "—"))]
        if len(mains) > 3:  # a list of headlines (kicker, headline, subtitle make three): only the last
            cut = texts.index(mains[-1])  # line, next to the body, is its headline
            lost.append(("", None, texts[:cut], obj[:cut]))
            texts = texts[cut:]
        title, subtitle = _headline_group(texts)
        prev_run = items[i - 1] if i > 0 and isinstance(items[i - 1], _Run) else None
        nxt = items[i + 1] if i + 1 < len(items) else None
        trailing_name = nxt.text if isinstance(nxt, _Name) else None
        next_run = nxt if isinstance(nxt, _Run) else None
        if trailing_name:
            next_run = None
        prev_root = prev_run.root() if prev_run else None
        # a section heading inside a feature story: the story opened with a byline line, runs on to a
        # closing (记者 …) byline with no other article starting in between, or goes on with its words
        if prev_root and next_run and not next_run.hard_start and not next_run.byline_line and \
                prev_root.title is not None and not prev_root.hard_start and not prev_root.jumped and \
                (prev_root.byline_line or _closed_later(items, i) or
                 not subtitle and _reads_as_section(title, next_run)):
            prev_root.paras.extend((p.text, p.segments) for p in obj)
            prev_root.paras.extend(next_run.paras)
            next_run.paras = []
            next_run.merged_into = prev_root
            prev_root.byline = prev_root.byline or next_run.byline
            prev_root.closed_by_byline = prev_root.closed_by_byline or next_run.closed_by_byline
            continue
        candidates = []
        if prev_root is not None and prev_root.title is None:
            candidates.append(prev_root)
        if next_run is not None:
            candidates.append(next_run)
        target = None
        if candidates:
            scored = sorted(candidates, key=lambda r: -headline_similarity(title, r.text))
            target = scored[0]
            best = headline_similarity(title, target.text)
            # a headline printed far from its story: take an untitled run elsewhere that it fits clearly better
            far, far_score = _best_untitled(title, runs, exclude=candidates)
            if far is not None and far_score >= 0.5 and far_score > 1.5 * best + 0.1:
                target = far
        elif prev_root is not None:
            # the run before already has a headline: this one was printed after its own article,
            # which the layout ran on into the same block. Split the block where it fits best.
            target = _split_run(prev_root, title, items, runs)
        if target is None:
            lost.append((title, subtitle, texts, obj))
            continue
        _give_title(target, title, subtitle, trailing_name)
    # headlines printed apart from every body (at the top of the page, between columns): once the
    # others are placed, each goes to the untitled story it fits clearly
    unplaced = []
    for title, subtitle, texts, lines in lost:
        far, score = _best_untitled(title, runs, exclude=[]) if title else (None, 0.0)
        if far is not None and score >= 0.5:
            _give_title(far, title, subtitle, None)
        else:
            unplaced.append((" / ".join(texts), title, lines[-1].line))
    return unplaced


def _best_untitled(title: str, runs: list[_Run], exclude: list[_Run]) -> tuple[_Run | None, float]:
    others = [r for r in runs if r.title is None and r.merged_into is None and r.paras and r not in exclude]
    if not others:
        return None, 0.0
    far = max(others, key=lambda r: headline_similarity(title, r.text))
    return far, headline_similarity(title, far.text)


def _give_title(run: _Run, title: str, subtitle: str | None, name: str | None) -> None:
    run.title, run.subtitle = title, subtitle
    if name and not run.byline:
        run.byline = name


def _articles(items: list[_Item], paras: list[Paragraph], flags: list[str], source: str,
              caption_titles: dict[int, str]) -> list[Article]:
    """Article records in page order of their bodies, captions among them, with page-local ids."""
    stem = PurePath(source).stem
    articles: list[Article] = []
    roots = [item for item in items if isinstance(item, _Run) and item.merged_into is None and item.paras]
    for run in roots:
        text, segs = _join(run)
        if not text.strip():
            continue
        title, provisional = run.title, False
        if not title:
            title, provisional = provisional_title(text), True
        articles.append(Article(article_id="", title=title, text=text, source=source, kind="article",
                                subtitle=run.subtitle, byline=run.byline, continuation=run.continuation,
                                provisional_title=provisional, segments=segs))
    for group in _caption_records(paras, flags):
        text = "\n".join(p.text for p in group)
        segs: list[Segment] = []
        pos = 0
        for p in group:
            segs.extend(slice_segments(p.segments, 0, len(p.text), shift=pos))
            pos += len(p.text) + 1
        printed = caption_titles.get(next(j for j, q in enumerate(paras) if q is group[0]))
        # a caption is named by what the photo shows, not by its credit line (宜春丰城高新区供图)
        shown = "\n".join(p.text for p in group if not _CREDIT_ONLY_RE.match(p.text)) or text
        articles.append(Article(article_id="", title=printed or provisional_title(shown), text=text, source=source,
                                kind="caption", provisional_title=printed is None, segments=tuple(segs)))
    articles.sort(key=lambda a: a.segments[0].raw_start if a.segments else 0)
    return [replace(a, article_id=f"{stem}-{k:02d}") for k, a in enumerate(articles, start=1)]


def _closed_later(items: list[_Item], i: int) -> bool:
    for obj in items[i + 1:]:
        if isinstance(obj, _Run):
            if obj.hard_start or obj.byline_line:
                return False
            if obj.closed_by_byline:
                return True
    return False


def _split_run(run: _Run, title: str, items: list[_Item], runs: list[_Run]) -> _Run | None:
    """Cut the paragraphs of ``run`` where they stop matching its headline and start matching ``title``."""
    if len(run.paras) < 2:
        return None
    head = run.title or ""
    texts = [t for t, _ in run.paras]
    diffs = [headline_similarity(title, t) - headline_similarity(head, t) for t in texts]
    # among cuts that the two headlines favour, take the one where the text itself changes most
    # (lowest word overlap between the paragraphs either side, as in TextTiling)
    best_k, best_overlap = None, 2.0
    for k in range(1, len(texts)):
        if sum(diffs[k:]) - sum(diffs[:k]) <= 0:
            continue
        before, after = char_bigrams("".join(texts[max(0, k - 2):k])), char_bigrams("".join(texts[k:k + 2]))
        overlap = len(before & after) / max(1, len(before | after))
        if overlap < best_overlap:
            best_k, best_overlap = k, overlap
    if best_k is None:
        return None
    tail = _Run(paras=run.paras[best_k:])
    run.paras = run.paras[:best_k]
    idx = next(i for i, item in enumerate(items) if item is run)
    items.insert(idx + 1, tail)
    runs.insert(runs.index(run) + 1, tail)
    return tail


def _join(run: _Run) -> tuple[str, tuple[Segment, ...]]:
    """The text of a run, one paragraph a line, with its raw-page segments."""
    text = ""
    segs: list[Segment] = []
    for t, s in run.paras:
        if text:
            text += "\n"
        segs.extend(slice_segments(s, 0, len(t), shift=len(text)))
        text += t
    return text, tuple(segs)


# a clause that only sets the scene: a time, a place or purpose, a source ("近日", "在…里", "据了解")
_SCENE_RE = re.compile(r"^(近日|日前|近期|目前|当前|今年以来|近年来|连日来|据[^，]{0,12}|记者[^，]{0,20}获悉|"
                       r"[\d０-９一二三四五六七八九十〇]+[年月日号].{0,10}|(今|昨|当|同)[天日]|(在|为|随着|当|于|自|从|对于|按照|根据)"
                       r".*)$")
_CLAUSE_RE = re.compile(r"[^，,；;：:。！？!?\n]+")


def provisional_title(text: str) -> str:
    """A title for an untitled block: the first clause of its first sentence that says what happened.

    Whole clauses only, never a list fragment; clauses that only set the scene are skipped.

    >>> provisional_title("近日，市审计局召开审计整改工作专题会，传达学习有关文件精神。")
    '市审计局召开审计整改工作专题会'
    """
    text = re.sub(r"^[▲△■●◆□►▶★☆·•]\s*", "", text)
    spans = split_sentences(text)
    first = text[spans[0][0]:spans[0][1]] if spans else text
    clauses = [m.group(0).strip() for m in _CLAUSE_RE.finditer(first) if m.group(0).strip()]
    if not clauses:
        return text[:30]
    pick = next((c for c in clauses if not _SCENE_RE.match(c) and len(c) >= 4), clauses[0])
    if len(pick) <= 30:
        return pick
    # a clause too long to be a title: cut at a word boundary, marked as cut
    out = ""
    for w in cut_words(pick):
        if len(out) + len(w) > 28:
            break
        out += w
    return out + "…"

