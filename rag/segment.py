"""Repaired page -> articles: headlines (before or after their body), bylines, continuations, captions.

Headlines are placed by layout rules where the layout is explicit (a headline at the top of the
page, a run that already has its headline) and otherwise by scoring the headline's words against
the candidate bodies, because on these pages a headline is often printed after its article or
beside another article's byline.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import PurePath

from .repair import BYLINE_LINE_RE, Paragraph, repair_page, slice_segments
from .types import Article, Segment
from .zh import bigram_share, char_bigrams, ends_sentence, split_sentences

__all__ = ["segment_page", "headline_similarity"]

_CAPTION_RE = re.compile(r"^(图[①-⑳\d一二三四五六七八九十]*[：:]|图为|本版图文|.{0,30}(供图|摄影?)$|（?摄影?[：:])")
_NUMBERED_CAPTION_RE = re.compile(r"^图[①-⑳\d一二三四五六七八九十]+[：:]")
_LEAD_RE = re.compile(r"^本报讯\s*[（(]([^）)]{0,40})[）)]\s*")
_LEAD_BARE_RE = re.compile(r"^本报讯\s*")
_CONT_RE = re.compile(r"^[（(]\s*(上接|接上|紧接)[^）)]{0,12}[）)]\s*")
_NAME_RE = re.compile(r"^[\u4e00-\u9fff]{2,4}(\s+[\u4e00-\u9fff]{2,4}){0,3}$")
_MAX_HEADLINE = 40


def headline_similarity(headline: str, text: str) -> float:
    """Share of the headline's character bigrams (Chinese characters and digits) found in ``text``."""
    return bigram_share(headline, text)


@dataclass
class _Run:
    """Body paragraphs that belong together, while articles are being assembled."""

    paras: list[tuple[str, tuple[Segment, ...]]] = field(default_factory=list)
    hard_start: bool = False  # opened by 本报讯 or a continuation marker
    byline_line: bool = False  # opened by a byline on its own line (► 姓名, □ 记者 …)
    closed_by_byline: bool = False  # ended by (记者 …) on its own line
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


def _classify(p: Paragraph) -> str:
    t = p.text
    if _CAPTION_RE.match(t):
        return "caption"
    if BYLINE_LINE_RE.match(t):
        return "byline"
    if _LEAD_BARE_RE.match(t) or _CONT_RE.match(t):
        return "body"
    if not ends_sentence(t) and len(t) <= _MAX_HEADLINE:
        return "name" if _NAME_RE.match(t) else "heading"
    return "body"


def _clean_byline(text: str) -> str:
    text = re.sub(r"^[□■►▶●◆]\s*", "", text.strip())
    return re.sub(r"^[（(]\s*|\s*[）)]$", "", text).strip()


def _headline_group(texts: list[str]) -> tuple[str, str | None]:
    """Consecutive headline lines -> (title, subtitle). A short first line is a headline broken in two."""
    if len(texts) == 1:
        return texts[0], None
    if len(texts[0]) <= 13 and len(texts[0]) + len(texts[1]) <= _MAX_HEADLINE:
        title = texts[0] + texts[1]
        rest = texts[2:]
    else:
        title, rest = texts[0], texts[1:]
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


def segment_page(raw: str, source: str) -> list[Article]:
    """Rebuild the articles (and photo captions) of one raw page.

    >>> page = "本报讯（记者 王五）近日，某市召开会议。\\n\\n某市召开会议\\n"
    >>> [(a.title, a.byline) for a in segment_page(page, "p.txt")]
    [('某市召开会议', '记者 王五')]
    """
    paras = repair_page(raw)
    flags = [_classify(p) for p in paras]
    _captions(paras, flags)

    # 1. items: ("H", [texts]) headline groups, ("N", name) bare names, ("R", run), bylines folded in
    items: list[tuple[str, object]] = []
    pending_byline: str | None = None
    for p, kind in zip(paras, flags):
        if kind == "caption":
            continue
        last = items[-1] if items else None
        if kind == "heading":
            if last and last[0] == "H" and not p.gap_before:
                last[1].append(p)
            else:
                items.append(("H", [p]))
            continue
        if kind == "name":
            if last and last[0] == "H":
                items.append(("N", p.text))
            else:
                items.append(("H", [p]))
            continue
        if kind == "byline":
            if p.text.startswith(("(", "（")) and last and last[0] == "R" and not last[1].closed_by_byline:
                last[1].byline = last[1].byline or _clean_byline(p.text)
                last[1].closed_by_byline = True
            else:
                pending_byline = _clean_byline(p.text)
            continue
        text, segs = p.text, p.segments
        run = last[1] if last and last[0] == "R" else None
        m_lead, m_cont = _LEAD_RE.match(text) or _LEAD_BARE_RE.match(text), _CONT_RE.match(text)
        if m_lead or m_cont or run is None or run.closed_by_byline or p.gap_before or pending_byline:
            run = _Run(hard_start=bool(m_lead or m_cont), byline_line=pending_byline is not None,
                       byline=pending_byline, continuation=bool(m_cont))
            items.append(("R", run))
            pending_byline = None
        if m_lead:
            if m_lead.groups() and m_lead.group(1):
                run.byline = m_lead.group(1).strip()
            text, segs = _strip_prefix(text, segs, m_lead.end())
        elif m_cont:
            text, segs = _strip_prefix(text, segs, m_cont.end())
        if text:
            run.paras.append((text, segs))

    runs = [obj for kind, obj in items if kind == "R"]

    # 2. place each headline group
    for i, (kind, obj) in enumerate(items):
        if kind != "H":
            continue
        title, subtitle = _headline_group([p.text for p in obj])
        prev_run = items[i - 1][1] if i > 0 and items[i - 1][0] == "R" else None
        nxt = items[i + 1] if i + 1 < len(items) else None
        trailing_name = nxt[1] if nxt and nxt[0] == "N" else None
        next_run = nxt[1] if nxt and nxt[0] == "R" else None
        if trailing_name:
            next_run = None
        prev_root = prev_run.root() if prev_run else None
        # a section heading inside a feature story: the story opened with a byline line, or runs on
        # to a closing (记者 …) byline with no other article starting in between
        if prev_root and next_run and not next_run.hard_start and not next_run.byline_line and \
                prev_root.title is not None and not prev_root.hard_start and \
                (prev_root.byline_line or _closed_later(items, i)):
            prev_root.paras.extend((p.text, p.segments) for p in obj)
            prev_root.paras.extend(next_run.paras)
            next_run.paras = []
            next_run.merged_into = prev_root
            prev_root.byline = prev_root.byline or next_run.byline
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
            others = [r for r in runs if r.title is None and r.merged_into is None and r not in candidates]
            if others:
                far = max(others, key=lambda r: headline_similarity(title, r.text))
                far_score = headline_similarity(title, far.text)
                if far_score >= 0.5 and far_score > 1.5 * best + 0.1:
                    target = far
        elif prev_root is not None:
            # the run before already has a headline: this one was printed after its own article,
            # which the layout ran on into the same block. Split the block where it fits best.
            target = _split_run(prev_root, title, items, runs)
        if target is None:
            continue
        target.title, target.subtitle = title, subtitle
        if trailing_name and not target.byline:
            target.byline = trailing_name

    # 3. articles, in page order of their bodies
    stem = PurePath(source).stem
    articles: list[Article] = []
    roots = [obj for kind, obj in items if kind == "R" and obj.merged_into is None and obj.paras]
    for run in roots:
        text, segs = _join(run)
        if not text.strip():
            continue
        title, provisional = run.title, False
        if not title:
            title, provisional = _provisional_title(text), True
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
        articles.append(Article(article_id="", title=_provisional_title(text), text=text, source=source,
                                kind="caption", provisional_title=True, segments=tuple(segs)))
    articles.sort(key=lambda a: a.segments[0].raw_start if a.segments else 0)
    return [replace(a, article_id=f"{stem}-{k:02d}") for k, a in enumerate(articles, start=1)]


def _closed_later(items: list, i: int) -> bool:
    for kind, obj in items[i + 1:]:
        if kind == "R":
            if obj.hard_start or obj.byline_line:
                return False
            if obj.closed_by_byline:
                return True
    return False


def _split_run(run: _Run, title: str, items: list, runs: list[_Run]) -> _Run | None:
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
    idx = next(i for i, (kind, obj) in enumerate(items) if obj is run)
    items.insert(idx + 1, ("R", tail))
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


def _provisional_title(text: str) -> str:
    spans = split_sentences(text)
    first = text[spans[0][0]:spans[0][1]] if spans else text
    first = first.rstrip("。！？；;!?")
    if len(first) > 30:
        cut = max(first.rfind("，", 0, 30), first.rfind(",", 0, 30))
        first = first[:cut] if cut >= 8 else first[:30] + "…"
    return first
