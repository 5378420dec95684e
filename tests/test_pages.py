"""Gold articles of hand-written pages in the seeds' OCR style with layouts the seeds do not have.

Each ``tests/data/pages/<name>.gold.json`` lists the articles a reader sees on ``<name>.txt``: title
(or ``null`` with ``provisional`` for an untitled block), byline, kind, first and last words, and
phrases the article must hold; the captions; words that are no title; the spaces that are real. An
article the rules still get wrong says so in ``known_failure`` (the test is then an expected failure).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rag.ingest import read_page
from rag.segment import segment_page
from rag.types import Article

PAGES = Path(__file__).parent / "data" / "pages"
GOLD = sorted(PAGES.glob("*.gold.json"))
_CLAUSE_END = "，。；：！？、,;:!?…—）)”"
_SPACE_IN_WORD = re.compile(r"[\u4e00-\u9fff] +[\u4e00-\u9fff]")
# the spaces the seed pages print between words (a slogan, two names, halves of two headlines)
SEED_KEPT = ["知险 避险 安全", "陈刚 吴晓军", "征程中 展现", "驱动 点燃"]
_ROLE_SPACE = re.compile(r"(记者|通讯员|评论员|实习生)$")
_ROLE_SPACE_AFTER = re.compile(r"(摄|通讯员|实习生)")


def load_gold(path: Path) -> tuple[dict, list[Article]]:
    gold = json.loads(path.read_text(encoding="utf-8"))
    page = read_page(PAGES / gold["page"])
    return gold, segment_page(page.text, page.name)


def is_whole_phrase(title: str, text: str) -> bool:
    """A provisional title is one or more whole clauses of its text, not a fragment of a list."""
    t = title.rstrip("…")
    at = text.find(t)
    if not t or at < 0 or len(title) > 30:
        return False
    starts_clause = at == 0 or text[at - 1] in _CLAUSE_END + "\n"
    end = at + len(t)
    ends_clause = end == len(text) or text[end] in _CLAUSE_END + "\n"
    return starts_clause and ends_clause and text[end - 1] not in "、"


def article_errors(want: dict, arts: list[Article]) -> list[str]:
    """What is wrong with the article of ``arts`` that ``want`` describes (empty when it is right)."""
    found = [a for a in arts if a.text.startswith(want["first"])]
    if len(found) != 1:
        holders = [a.title for a in arts if want["first"] in a.text]
        return [f"{want['first']!r} starts {len(found)} articles (inside: {holders})"]
    a = found[0]
    errors = []
    if a.kind != want["kind"]:
        errors.append(f"kind {a.kind} != {want['kind']}")
    if not a.text.endswith(want["last"]):
        errors.append(f"ends {a.text[-30:]!r}, expected {want['last']!r}")
    if want["provisional"]:
        if not a.provisional_title or not is_whole_phrase(a.title, a.text):
            errors.append(f"title {a.title!r} should be a provisional whole phrase")
    elif a.title != want["title"] or a.provisional_title:
        errors.append(f"title {a.title!r} != {want['title']!r}")
    if a.byline != want["byline"]:
        errors.append(f"byline {a.byline!r} != {want['byline']!r}")
    if a.continuation != want["continuation"]:
        errors.append(f"continuation {a.continuation} != {want['continuation']}")
    for part in want.get("subtitle", []):
        if part not in (a.subtitle or ""):
            errors.append(f"subtitle {a.subtitle!r} lacks {part!r}")
    for phrase in want.get("contains", []):
        if phrase not in a.text:
            errors.append(f"text lacks {phrase!r}")
    return errors


def spaces_inside_words(arts: list[Article], kept: list[str]) -> list[str]:
    """Spaces between two Chinese characters in titles and texts that are not listed as real."""
    bad = []
    for a in arts:
        for text in (a.title, a.text):
            for m in _SPACE_IN_WORD.finditer(text):
                if _ROLE_SPACE.search(text[:m.start() + 1]) or _ROLE_SPACE_AFTER.match(text[m.end() - 1:]):
                    continue  # a role and a name apart: "记者 郑涛 摄"
                if not any(k in text and text.index(k) <= m.start() < text.index(k) + len(k) for k in kept):
                    bad.append(text[max(0, m.start() - 6):m.end() + 6])
    return bad


CASES = [(path, i) for path in GOLD for i in range(len(json.loads(path.read_text(encoding="utf-8"))["articles"]))]


def test_there_are_test_pages():
    assert len(GOLD) >= 6


@pytest.mark.parametrize("path, i", CASES, ids=[f"{p.name.split('.')[0]}-{i}" for p, i in CASES])
def test_gold_article(path, i):
    gold, arts = load_gold(path)
    want = gold["articles"][i]
    errors = article_errors(want, arts)
    if errors and want.get("known_failure"):
        pytest.xfail(want["known_failure"])
    assert not errors, errors


@pytest.mark.parametrize("path", GOLD, ids=[p.name.split(".")[0] for p in GOLD])
def test_page_has_no_other_articles(path):
    gold, arts = load_gold(path)
    found = [a.text[:20] for a in arts if a.kind == "article"]
    assert len(found) == len(gold["articles"]), found
    titles = [a.title for a in arts]
    known = any(a.get("known_failure") for a in gold["articles"])
    for word in gold["not_titles"]:
        assert word not in titles
        if not known:
            assert not any(t.startswith(word) for t in titles)
    bodies = "\n".join(a.title + "\n" + a.text for a in arts if a.kind == "article")
    for phrase in gold["not_in_articles"]:
        assert phrase not in bodies


@pytest.mark.parametrize("path", GOLD, ids=[p.name.split(".")[0] for p in GOLD])
def test_captions_and_credits_are_never_articles(path):
    gold, arts = load_gold(path)
    captions = "\n".join(a.text for a in arts if a.kind == "caption")
    articles = [a for a in arts if a.kind == "article"]
    for phrase in gold["captions"]:
        assert phrase in captions
        assert not any(phrase in a.text or phrase in a.title for a in articles)
    assert not any(re.search(r"供图|摄[）)]?$", a.title) for a in articles)


@pytest.mark.parametrize("path", GOLD, ids=[p.name.split(".")[0] for p in GOLD])
def test_no_ocr_space_left_inside_a_word(path):
    gold, arts = load_gold(path)
    assert spaces_inside_words(arts, gold["kept_spaces"]) == []


def test_no_ocr_space_left_inside_a_word_on_the_seeds(articles):
    assert spaces_inside_words(articles, SEED_KEPT) == []


@pytest.mark.parametrize("path", GOLD, ids=[p.name.split(".")[0] for p in GOLD])
def test_no_ascii_punctuation_between_chinese_characters(path):
    _, arts = load_gold(path)
    for a in arts:
        assert not re.search(r"[\u4e00-\u9fff“”][,:;!?][\u4e00-\u9fff“”]", a.text), a.text


def test_pages_map_back_to_the_raw_page():
    from rag.zh import fold_width

    for path in GOLD:
        gold, arts = load_gold(path)
        raw = read_page(PAGES / gold["page"]).text
        for a in arts:
            for s in a.segments:
                piece = a.text[s.start:s.start + s.length]
                # the raw page has ASCII punctuation where the article shows it full-width
                assert fold_width(raw[s.raw_start:s.raw_start + s.length]) == fold_width(piece)
