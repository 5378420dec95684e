"""Pages on disk -> raw text: encodings (UTF-8, BOM, GB18030/GBK) and files that are not pages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

__all__ = ["Page", "read_page", "list_pages", "MAX_PAGE_BYTES", "PAGE_SUFFIXES"]

MAX_PAGE_BYTES = 5 * 1024 * 1024
PAGE_SUFFIXES = (".txt",)


@dataclass(frozen=True)
class Page:
    """One newspaper page as read from disk."""

    name: str  # file name, used as the article source
    text: str  # decoded text, newlines normalised to \n only where \r\n was (offsets refer to this)
    encoding: str


def _looks_binary(data: bytes) -> bool:
    if b"\x00" in data[:65536]:
        return True
    sample = data[:65536]
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return controls > max(8, len(sample) // 100)


def _decode(data: bytes, name: str) -> tuple[str, str]:
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as exc:
            raise BadInput(f"{name}: starts with a UTF-8 BOM but is not valid UTF-8 (byte {exc.start + 3})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise BadInput(f"{name}: starts with a UTF-16 mark but does not decode as UTF-16") from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{name}: is neither UTF-8 nor GB18030/GBK text (undecodable byte at {exc.start})") from None
    han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    if han < max(1, len(text.strip()) // 10):
        raise BadInput(f"{name}: is not UTF-8, and as GB18030 it does not read as Chinese text")
    return text, "gb18030"


def read_page(path: str | Path) -> Page:
    """Read one page, detecting its encoding.

    Raises:
        BadInput: the file is missing, empty, binary, too large or not decodable; the message
            names the file.
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if not path.is_file():
        raise BadInput(f"{path}: is not a file")
    size = path.stat().st_size
    if size > MAX_PAGE_BYTES:
        raise BadInput(f"{name}: is {size:,} bytes; a page may be at most {MAX_PAGE_BYTES:,} bytes")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: cannot be read ({exc.strerror})") from None
    if not data.strip():
        raise BadInput(f"{name}: is empty")
    if _looks_binary(data):
        raise BadInput(f"{name}: looks like a binary file, not a text page")
    text, encoding = _decode(data, name)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise BadInput(f"{name}: is empty")
    return Page(name=name, text=text, encoding=encoding)


def list_pages(folder: str | Path) -> list[Path]:
    """The page files of a seeds folder, sorted by name.

    Raises:
        BadInput: the folder is missing or holds no ``.txt`` page.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"seeds folder {folder} does not exist")
    pages = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not pages:
        raise BadInput(f"seeds folder {folder} holds no .txt page")
    return pages
