"""How the web chat shows things: page and user text as escaped Markdown, an answer's [n] as links to
its sources, the collapsible source block under each answer, page labels and Chinese messages.
Pure functions over the JSON shapes of answers and citations; no Gradio here."""
from __future__ import annotations

import html
import re

from .errors import BadInput, IndexFormat, IndexNotFound, IndexStale, ModelError, RagError
from .meta import describe_source, name_local_city, source_label
from .zh import count_han

__all__ = ["copy_text", "md_text", "link_markers", "source_block", "chinese_message", "page_label", "cite_key", "parse_cite_key"]

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_MARKER = re.compile(r"\\\[(\d+)\\\]")  # an [n] after md_text escaped it
_TOO_LONG = re.compile(r"query is ([\d,]+) characters; at most (\d+)")


def md_text(text: str) -> str:
    """Show text as text in a Markdown component: HTML escaped, Markdown syntax neutralised."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).replace("\n", "  \n")


def cite_key(turn: int, i: int) -> str:
    """The link target of source ``i`` of answer ``turn``: ``#cite-3-0``."""
    return f"#cite-{turn}-{i}"


def parse_cite_key(key: str) -> tuple[str, int] | None:
    """(turn, index) of a clicked link's key (``3-0``, perhaps followed by ``@stamp``); None if malformed."""
    m = re.fullmatch(r"(\d+)-(\d+)(?:@\d+)?", (key or "").strip())
    return (m[1], int(m[2])) if m else None


def link_markers(shown: str, turn: int, cites: list[dict]) -> str:
    """The escaped answer with each [n] a link that opens citation n's article."""
    index = {c["n"]: i for i, c in enumerate(cites)}

    def link(m: re.Match) -> str:
        n = int(m[1])
        return f"[\\[{n}\\]]({cite_key(turn, index[n])})" if n in index else m[0]

    return _MARKER.sub(link, shown)


def source_block(turn: int, items: list[dict], refused: bool) -> str:
    """The Markdown of an answer's sources: per citation its link, title, paper/date/region, file and
    line, and the excerpt (我市 followed by the paper's city where known); for a refusal the related
    articles, each a link."""
    lines = []
    for i, item in enumerate(items):
        where = md_text(describe_source(item, item.get("line") if not refused else None))
        title = md_text(name_local_city(item["title"], item.get("city")))
        if refused:
            lines.append(f"[《{title}》]({cite_key(turn, i)}) {where}")
        else:
            excerpt = md_text(name_local_city(item["excerpt"], item.get("city")))
            lines.append(f"[\\[{item['n']}\\]]({cite_key(turn, i)}) 《{title}》 {where}  \n“{excerpt}”")
    return "\n\n".join(lines)


def copy_text(answer: str, items: list[dict], refused: bool) -> str:
    """The answer with its sources as plain text, for the clipboard (the 复制 link)."""
    lines = [answer, "", "相关文章：" if refused else "来源："]
    for item in items:
        where = describe_source(item, item.get("line") if not refused else None)
        if refused:
            lines.append(f"《{item['title']}》 {where}")
        else:
            lines.append(f"[{item['n']}] 《{item['title']}》 {where}")
            lines.append(f"“{name_local_city(item['excerpt'], item.get('city'))}”")
    return "\n".join(lines) if items else answer


def chinese_message(exc: RagError, max_chars: int = 500) -> str:
    """What the chat says for an error, in Chinese (the English detail kept after it where it helps)."""
    text = str(exc)
    if isinstance(exc, IndexNotFound):
        return "还没有建立索引，请先运行 `rag index`。"
    if isinstance(exc, (IndexFormat, IndexStale)):
        return f"索引需要重建，请运行 `rag index`。（{text}）"
    if isinstance(exc, ModelError):
        return f"模型无法加载。（{text}）"
    if isinstance(exc, BadInput):
        m = _TOO_LONG.search(text)
        if m:
            return f"问题有 {m[1]} 个字，最多 {m[2]} 个字。请缩短后再问，问题已留在输入框里。"
        if "has no words to search for" in text:
            return "问题里没有可以检索的文字（只有标点、符号或表情）。"
        if text.startswith(("请", "没有")):
            return text.split(" (no article")[0]
    return text if count_han(text[:8]) else f"出错了：{text}"


def page_label(paper: str | None, date: str | None, page: str | None, region: str | None, first_title: str,
               count: int) -> str:
    """How the article browser lists a page: paper and date when known, else its region and lead article."""
    head = source_label(paper, date, page)
    parts = [head, region or "", f"《{first_title[:16]}{'…' if len(first_title) > 16 else ''}》等 {count} 篇"]
    return " · ".join(p for p in parts if p)
