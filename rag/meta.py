"""Page metadata: which paper, date, page (edition) and region a page is, from the sidecar
``pages.toml`` of the seeds folder and from a masthead date printed on the page; filters over it;
how a citation names its source.

``pages.toml`` is keyed by page file name; every field is optional and an unknown stays empty::

    ["000_083e7fa3461b093d.txt"]
    paper = "格尔木日报"    # without 《》
    date = "2023-12-19"    # YYYY-MM-DD
    page = "2"             # page or edition as printed: "2", "A3"
    region = "格尔木市"     # the area the page reports on
    city = "格尔木"         # the city its 我市/本市/全市 mean
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .errors import BadInput

__all__ = ["SIDECAR", "PageMeta", "Filters", "read_sidecar", "find_masthead_date", "page_meta", "source_label",
           "name_local_city", "describe_source", "check_date", "set_sidecar_entry"]

SIDECAR = "pages.toml"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# a masthead date: a line that is only the date, perhaps with the weekday and the lunar date after it
_MASTHEAD = re.compile(r"^\s*(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日\s*(?:(?:星期|周)[一二三四五六日天])?"
                       r"\s*(?:农历\S*)?\s*$")
_MASTHEAD_LINES = 12  # a masthead is at the top of a page
_LOCAL = re.compile(r"(我市|本市|全市)")


def check_date(value: object, what: str) -> str:
    """A date given as YYYY-MM-DD (a real calendar day); raise BadInput saying what was received."""
    if not isinstance(value, str) or not _DATE.match(value.strip()):
        raise BadInput(f"{what} must be a date written YYYY-MM-DD (日期格式应为 YYYY-MM-DD), got {value!r}")
    try:
        dt.date.fromisoformat(value.strip())
    except ValueError:
        raise BadInput(f"{what} is not a calendar date (不是有效日期), got {value!r}") from None
    return value.strip()


@dataclass(frozen=True)
class PageMeta:
    """What is known of a page: each field is None where neither the sidecar nor the page says."""

    paper: str | None = None
    date: str | None = None  # YYYY-MM-DD
    page: str | None = None
    region: str | None = None
    city: str | None = None

    def fields(self) -> dict[str, str | None]:
        """The five fields by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_KEYS = tuple(f.name for f in fields(PageMeta))


def read_sidecar(folder: str | Path) -> dict[str, PageMeta]:
    """The metadata of ``folder/pages.toml`` by page file name ({} without the file).

    Raises:
        BadInput: the file is not TOML, or an entry has an unknown key, a non-text value or a bad date.
    """
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: is not valid TOML ({exc})") from None
    out = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise BadInput(f"{path}: [{name!r}] must be a table of {', '.join(_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(_KEYS))
        if unknown:
            raise BadInput(f"{path}: [{name!r}] has unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}")
        values = {}
        for key, value in entry.items():
            if not isinstance(value, str):
                raise BadInput(f"{path}: [{name!r}] {key} must be text, got {value!r}")
            value = value.strip().strip("《》").strip()
            if value and key == "date":
                value = check_date(value, f"{path}: [{name!r}] date")
            values[key] = value or None
        out[name] = PageMeta(**values)
    return out


def find_masthead_date(text: str) -> str | None:
    """The date printed as a masthead line at the top of a page (``2023 年 12 月 19 日 星期二``), as
    YYYY-MM-DD; None when there is none. A date inside a sentence is not a masthead."""
    lines = [line for line in text.splitlines() if line.strip()][:_MASTHEAD_LINES]
    for line in lines:
        m = _MASTHEAD.match(line)
        if m:
            try:
                return dt.date(int(m[1]), int(m[2]), int(m[3])).isoformat()
            except ValueError:
                continue
    return None


def page_meta(name: str, text: str, sidecar: dict[str, PageMeta]) -> PageMeta:
    """A page's metadata: the sidecar's entry, its empty date filled from the page's masthead."""
    meta = sidecar.get(name, PageMeta())
    if meta.date is None:
        meta = replace(meta, date=find_masthead_date(text))
    return meta


def source_label(paper: str | None, date: str | None, page: str | None) -> str:
    """How a citation names its page: ``《格尔木日报》2023-12-19 第2版``; empty when nothing is known."""
    parts = [f"《{paper}》" if paper else "", date or "", f"第{page}版" if page else ""]
    return " ".join(p for p in (parts[0] + parts[1], parts[2]) if p)


def describe_source(item, line: int | None = None) -> str:
    """Where a citation or hit comes from, for people: ``《格尔木日报》2023-12-19 第2版 · 格尔木 · FILE 第289行``.

    ``item`` is a record or a dict with paper, date, page, region and source.
    """
    get = (lambda k: item.get(k)) if isinstance(item, dict) else (lambda k: getattr(item, k, None))
    where = get("source") or ""
    if line:
        where += f" 第{line}行"
    parts = [source_label(get("paper"), get("date"), get("page")), get("region") or "", where]
    return " · ".join(p for p in parts if p)


def name_local_city(text: str, city: str | None) -> str:
    """For display: 我市/本市/全市 followed by the city they mean, ``我市（格尔木）``; unchanged without one."""
    if not city:
        return text
    return _LOCAL.sub(lambda m: f"{m[1]}（{city}）", text)


@dataclass(frozen=True)
class Filters:
    """Which articles a search may return: a paper, a region (matched within the page's region or city)
    and a date range (inclusive; a page without a date is outside any range)."""

    paper: str | None = None
    region: str | None = None
    since: str | None = None
    until: str | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "Filters":
        """Filters from a dict (the HTTP API's ``filters`` object); unknown keys and bad values are refused."""
        d = dict(d or {})
        unknown = sorted(set(d) - {"paper", "region", "since", "until"})
        if unknown:
            raise BadInput(f"unknown filter(s) {', '.join(map(str, unknown))}; known: paper, region, since, until")
        for key, value in d.items():
            if value is not None and not isinstance(value, str):
                raise BadInput(f"filter {key} must be text, got {value!r}")
        return cls(**{k: (v.strip().strip("《》").strip() or None) if isinstance(v, str) else None
                      for k, v in d.items()})

    def __post_init__(self) -> None:
        for key in ("since", "until"):
            value = getattr(self, key)
            if value is not None:
                check_date(value, key)
        if self.since and self.until and self.since > self.until:
            raise BadInput(f"since {self.since} is after until {self.until} (开始日期晚于结束日期)")

    def __bool__(self) -> bool:
        return any((self.paper, self.region, self.since, self.until))

    def admits(self, meta) -> bool:
        """Whether an article (anything with paper, region, city and date attributes) is inside."""
        if self.paper and getattr(meta, "paper", None) != self.paper:
            return False
        if self.region and not any(self.region in (getattr(meta, k, None) or "") for k in ("region", "city")):
            return False
        date = getattr(meta, "date", None)
        if (self.since or self.until) and not date:
            return False
        if self.since and date < self.since:
            return False
        if self.until and date > self.until:
            return False
        return True

    def describe(self) -> str:
        """The filters in Chinese: ``报纸《…》、地区 格尔木、日期 2023-12-01 至 2023-12-31``."""
        parts = []
        if self.paper:
            parts.append(f"报纸《{self.paper}》")
        if self.region:
            parts.append(f"地区 {self.region}")
        if self.since or self.until:
            parts.append(f"日期 {self.since or '…'} 至 {self.until or '…'}")
        return "、".join(parts)


def _entry_span(lines: list[str], name: str) -> tuple[int, int] | None:
    """The [start, end) lines of ``name``'s table in pages.toml (its header to the next header)."""
    header = f"[{json.dumps(name, ensure_ascii=False)}]"
    start = next((i for i, line in enumerate(lines) if line.split("#")[0].strip() == header), None)
    if start is None:
        return None
    end = next((j for j in range(start + 1, len(lines)) if lines[j].lstrip().startswith("[")), len(lines))
    return start, end


def _write_atomically(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)


def set_sidecar_entry(folder: str | Path, name: str, meta: PageMeta | None) -> None:
    """Write (``meta``) or drop (None) the entry of page ``name`` in ``folder/pages.toml``, keeping the
    rest of the file (comments too) as it is; the file is replaced atomically."""
    path = Path(folder) / SIDECAR
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    span = _entry_span(lines, name)
    if span:
        lines[span[0]:span[1]] = []
    if meta is not None:
        if lines and lines[-1].strip():
            lines.append("")
        lines.append(f"[{json.dumps(name, ensure_ascii=False)}]")
        lines += [f"{k} = {json.dumps(v or '', ensure_ascii=False)}" for k, v in meta.fields().items()]
    if lines or path.is_file():
        _write_atomically(path, "\n".join(lines).rstrip("\n") + "\n")
