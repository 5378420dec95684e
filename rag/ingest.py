"""Inputs -> text: pages on disk (encodings, files that are not pages, size limits) and the bytes of a
question (undecodable lines, control and zero-width characters)."""
from __future__ import annotations

import errno
import logging
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput
from .zh import count_han

__all__ = ["Page", "read_page", "list_pages", "page_name_problem", "decode_line", "argument_text", "clean_question",
           "MAX_PAGE_BYTES", "MAX_PAGE_CHARS", "MAX_PAGE_CHUNKS", "PAGE_SUFFIXES"]

log = logging.getLogger("rag")

MAX_PAGE_BYTES = 5 * 1024 * 1024
# a newspaper page is 5,000-20,000 characters; the limits leave room for a dense broadsheet while
# keeping one page's repair, segmentation and embedding to about a minute on a laptop CPU
MAX_PAGE_CHARS = 200_000
MAX_PAGE_CHUNKS = 2_000
PAGE_SUFFIXES = (".txt",)
_BOMS = (  # (mark, codec of the rest, name reported); longest first: the UTF-32 LE mark starts with UTF-16 LE's
    (b"\xff\xfe\x00\x00", "utf-32-le", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32-be", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8", "utf-8-sig"), (b"\xff\xfe", "utf-16-le", "utf-16"),
    (b"\xfe\xff", "utf-16-be", "utf-16"),
)
# a sentence of body text: at least 4 letters or digits on one line, then 。！？ (or ASCII !?);
# headlines and bylines have none
_SENTENCE = re.compile(r"[^。！？!?\n]*[。！？!?]")


@dataclass(frozen=True)
class Page:
    """One newspaper page as read from disk."""

    name: str  # file name, used as the article source
    text: str  # decoded text, newlines normalised to \n only where \r\n was (offsets refer to this)
    encoding: str


def page_name_problem(name: str) -> str | None:
    """Why the seeds scan would not read a file of this name, or None if it would.

    The rule: a page is a file named ``*.txt`` (any case) whose name does not start with a dot.
    """
    if name.startswith("."):
        return "hidden (name starts with '.')"
    if Path(name).suffix.lower() not in PAGE_SUFFIXES:
        return "not a .txt file"
    return None


def _looks_binary(data: bytes) -> bool:
    sample = data[:65536]
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return controls > max(8, len(sample) // 100)


def _decode(data: bytes, name: str) -> tuple[str, str]:
    for bom, codec, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(codec), encoding
            except UnicodeDecodeError as exc:
                label = codec[:6].upper()
                raise BadInput(f"{name}: starts with a {label} byte-order mark but is not valid {label} "
                               f"(byte {exc.start + len(bom)})") from None
    if _looks_binary(data):
        raise BadInput(f"{name}: looks like a binary file, not a text page")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{name}: is neither UTF-8 nor GB18030/GBK text (undecodable byte at {exc.start})") from None
    han = count_han(text)
    if han < max(1, len(text.strip()) // 10):
        raise BadInput(f"{name}: is not UTF-8, and as GB18030 it does not read as Chinese text")
    return text, "gb18030"


def _stat(path: Path):
    try:
        return path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInput(f"{path}: is a symbolic link that points back to itself (a link loop)") from None
        if path.is_symlink():
            raise BadInput(f"{path}: is a symbolic link to {path.readlink()}, which does not exist") from None
        if exc.errno == errno.ENOENT:
            raise BadInput(f"{path}: no such file") from None
        raise BadInput(f"{path}: cannot be read ({exc.strerror})") from None


def read_page(path: str | Path) -> Page:
    """Read one page, detecting its encoding (UTF-8, UTF-8/16/32 with a BOM, GB18030/GBK).

    Raises:
        BadInput: the file is missing, empty, binary, over the size limits, not decodable or has no
            body text (no sentence ending in 。！？); the message names the file.
    """
    path = Path(path)
    name = path.name
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path}: is not a file")
    if st.st_size > MAX_PAGE_BYTES:
        raise BadInput(f"{name}: is {st.st_size:,} bytes; a page may be at most {MAX_PAGE_BYTES:,} bytes")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: cannot be read ({exc.strerror})") from None
    if not data.strip():
        raise BadInput(f"{name}: is empty")
    text, encoding = _decode(data, name)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise BadInput(f"{name}: is empty")
    if len(text) > MAX_PAGE_CHARS:
        raise BadInput(f"{name}: has {len(text):,} characters; a page may have at most {MAX_PAGE_CHARS:,} "
                       f"(split it into several pages)")
    if not any(sum(ch.isalnum() for ch in m.group()) >= 4 for m in _SENTENCE.finditer(text)):
        raise BadInput(f"{name}: has no body text (no sentence ending in 。！？), only headlines or "
                       f"fragments; there is nothing to answer from")
    return Page(name=name, text=text, encoding=encoding)


def list_pages(folder: str | Path) -> list[Path]:
    """The page files of a seeds folder, sorted by name; what is skipped is logged with the reason.

    Raises:
        BadInput: the folder is missing or holds no ``.txt`` page.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"seeds folder {folder} does not exist")
    pages, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            why = None if p.name.startswith(".") else "a folder"  # hidden folders (.git) are not worth a line
            if why:
                skipped.append(f"{p.name}: {why}")
            continue
        if p.name == "pages.toml":  # the pages' metadata (rag.meta), not a page and not worth a line
            continue
        why = page_name_problem(p.name) or (None if p.is_file() else "not a readable file (a broken link?)")
        if why is None:
            pages.append(p)
        else:
            skipped.append(f"{p.name}: {why}")
    if skipped:
        log.info("seeds folder %s: skipped %d file(s): %s", folder, len(skipped), "; ".join(skipped))
    if not pages:
        raise BadInput(f"seeds folder {folder} holds no .txt page")
    return pages


def decode_line(data: bytes, what: str = "input") -> str:
    """Decode one line of input bytes as UTF-8 (a BOM is dropped).

    Raises:
        BadInput: the bytes are not UTF-8; the message says which byte.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at position {exc.start})") from None


def argument_text(arg: str, what: str = "query") -> str:
    """A command-line argument as text: Python hands undecodable bytes over as lone surrogates.

    Raises:
        BadInput: the argument held bytes that are not UTF-8.
    """
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        raw = arg.encode("utf-8", "surrogateescape")
        return decode_line(raw, what)
    return arg


_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e"}


def clean_question(text: str) -> tuple[str, bool]:
    """Remove control, format and zero-width characters from a question (tabs and line breaks become
    spaces); returns the cleaned text and whether anything was changed.

    >>> clean_question("格尔木的开发区\\x07在全国排第几？")
    ('格尔木的开发区在全国排第几？', True)
    """
    out = []
    for ch in text:
        if ch in "\t\n\r\v\f":
            out.append(" ")
        elif ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            continue
        else:
            out.append(ch)
    cleaned = "".join(out)
    return cleaned, cleaned != text
