"""The index's chunk and sentence records held as numpy columns, read back as the records they are.

A million chunks as ``Chunk`` objects, each with its own copy of its text and embed text, took ~0.9 GB,
and two million sentence dicts ~0.8 GB (bench/bench_serve.py). Here a chunk is its article's row and
its span (the text is the article's own ``text[start:end]``, sliced when the chunk is read) and a
sentence its article's row, its span and its places and years as ids into one list of names:
~20 bytes a chunk and ~30 a sentence. ``chunks[row]`` builds the same ``Chunk`` the index was built
with, ``sentences[row]`` the same dict; a chunk that is not what ``rag.chunk`` makes of its article
(another id or text) is kept whole, so any index reads back exactly as written.
"""
from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .types import Article, Chunk

__all__ = ["RecordSequence", "ChunkTable", "SentenceRecords", "VectorRows"]


def _ids_of(articles: Mapping[str, Article] | Sequence[Article]) -> tuple[list[Article], dict[str, int]]:
    arts = list(articles.values()) if isinstance(articles, Mapping) else list(articles)
    return arts, {a.article_id: i for i, a in enumerate(arts)}


class RecordSequence(Sequence):
    """A read-only sequence of records built on access (``_record``): indexed, sliced, iterated and
    compared as the list it stands for."""

    _what = "record"

    def _record(self, row: int):
        raise NotImplementedError

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        row = int(row)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"{self._what} row must be in [0, {len(self)}), got {row}")
        return self._record(row)

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other))

    __hash__ = None


class ChunkTable(RecordSequence):
    """The chunks of an index, row i = chunk i, as columns (article row, ordinal, start, end, whether the
    embed text carries the title); ``table[row]`` is the ``Chunk``."""

    _what = "chunk"

    def __init__(self, articles: Mapping[str, Article] | Sequence[Article], records: Iterable[Chunk | dict] = ()):
        """Take ``records`` (Chunks, or their ``to_dict`` dicts) of these articles.

        Raises:
            KeyError: a chunk of an article that is not in ``articles``.
        """
        self._articles, self._row_of_article = _ids_of(articles)
        # typed arrays while reading: a million rows of Python ints in lists took ~0.2 GB more at load
        art, ordinal, start, end, head = array("i"), array("i"), array("i"), array("i"), array("b")
        self._whole: dict[int, Chunk] = {}  # chunks that are not their article's slice, kept as they are
        for row, rec in enumerate(records):
            get = rec.get if isinstance(rec, dict) else rec.__getattribute__
            aid, o, s, e = get("article_id"), get("ordinal"), get("start"), get("end")
            a = self._row_of_article[aid]
            text, embed = get("text"), get("embed_text")
            article = self._articles[a]
            titled = embed != text
            if get("chunk_id") != f"{aid}#{o}" or article.text[s:e] != text or \
                    (titled and embed != f"{article.title}\n{text}"):
                self._whole[row] = rec if isinstance(rec, Chunk) else Chunk(**rec)
            art.append(a)
            ordinal.append(o)
            start.append(s)
            end.append(e)
            head.append(titled)
        self.article_rows = np.frombuffer(art, dtype=np.int32).copy()
        self.ordinals = np.frombuffer(ordinal, dtype=np.int32).copy()
        self.starts = np.frombuffer(start, dtype=np.int32).copy()
        self.ends = np.frombuffer(end, dtype=np.int32).copy()
        self._titled = np.frombuffer(head, dtype=np.int8).astype(bool)
        self._keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.article_rows)

    def _record(self, row: int):
        whole = self._whole.get(row)
        if whole is not None:
            return whole
        article = self._articles[self.article_rows[row]]
        s, e, o = int(self.starts[row]), int(self.ends[row]), int(self.ordinals[row])
        text = article.text[s:e]
        return Chunk(chunk_id=f"{article.article_id}#{o}", article_id=article.article_id, ordinal=o, start=s, end=e,
                     text=text, embed_text=f"{article.title}\n{text}" if self._titled[row] else text)

    def __repr__(self) -> str:
        return f"ChunkTable({len(self)} chunks of {len(self._articles)} articles)"

    @property
    def nbytes(self) -> int:
        """Bytes of the columns (the articles are the index's own)."""
        return sum(a.nbytes for a in (self.article_rows, self.ordinals, self.starts, self.ends, self._titled))

    def article_id(self, row: int) -> str:
        """The article id of chunk ``row`` (without building the chunk)."""
        whole = self._whole.get(int(row))
        return whole.article_id if whole is not None else self._articles[self.article_rows[row]].article_id

    def rows_of_articles(self, article_ids: Iterable[str]) -> np.ndarray:
        """The chunk rows of these articles, ascending (int64)."""
        ids = set(article_ids)
        wanted = np.array(sorted(self._row_of_article[a] for a in ids if a in self._row_of_article), dtype=np.int32)
        mask = np.isin(self.article_rows, wanted)
        for row, c in self._whole.items():
            mask[row] = c.article_id in ids
        return np.flatnonzero(mask).astype(np.int64)

    def row_of(self, chunk_id: str) -> int:
        """The row of the chunk with this id.

        Raises:
            KeyError: no chunk has it.
        """
        for row, c in self._whole.items():
            if c.chunk_id == chunk_id:
                return row
        aid, _, o = chunk_id.rpartition("#")
        a = self._row_of_article.get(aid)
        if a is not None and o.isdigit():
            if self._keys is None:  # (article row, ordinal) of every row, sorted, made on first use
                keys = (self.article_rows.astype(np.int64) << 32) | self.ordinals.astype(np.int64)
                self._order = np.argsort(keys, kind="stable")
                self._keys = keys[self._order]
            key = (a << 32) | int(o)
            at = int(np.searchsorted(self._keys, key))
            while at < len(self._keys) and self._keys[at] == key:
                row = int(self._order[at])
                if row not in self._whole:
                    return row
                at += 1
        raise KeyError(chunk_id)


class SentenceRecords(RecordSequence):
    """The sentence records of an index, row i = sentence i, as columns (article row, start, end, and its
    places and years as ids into a list of names); ``records[row]`` is the dict the index was built with:
    ``{"article_id", "start", "end", "places", "years"}``."""

    _what = "sentence"

    def __init__(self, articles: Mapping[str, Article] | Sequence[Article], records: Iterable[dict] = ()):
        arts, row_of = _ids_of(articles)
        self.article_ids: list[str] = [a.article_id for a in arts]  # then those of sentences without an article
        names: dict[str, int] = {}
        art, start, end = array("i"), array("i"), array("i")
        lists = {"places": (array("i"), array("q", [0])), "years": (array("i"), array("q", [0]))}
        for rec in records:
            get = rec.get if isinstance(rec, dict) else rec.__getattribute__
            aid = get("article_id")
            a = row_of.get(aid)
            if a is None:
                a = row_of[aid] = len(self.article_ids)
                self.article_ids.append(aid)
            art.append(a)
            start.append(get("start"))
            end.append(get("end"))
            for key, (ids, offsets) in lists.items():
                for name in get(key) or ():
                    ids.append(names.setdefault(name, len(names)))
                offsets.append(len(ids))
        self.names = list(names)
        self.row_of_article = row_of  # article id -> its row in article_ids
        self.article_rows = np.frombuffer(art, dtype=np.int32).copy()
        self.starts = np.frombuffer(start, dtype=np.int32).copy()
        self.ends = np.frombuffer(end, dtype=np.int32).copy()
        self._ids = {k: np.frombuffer(ids, dtype=np.int32).copy() for k, (ids, _) in lists.items()}
        self._offsets = {k: np.frombuffer(offsets, dtype=np.int64).copy() for k, (_, offsets) in lists.items()}

    def __len__(self) -> int:
        return len(self.article_rows)

    def names_of(self, key: str, row: int) -> tuple[str, ...]:
        """The places (``key`` "places") or years ("years") of sentence ``row``."""
        offsets = self._offsets[key]
        return tuple(self.names[i] for i in self._ids[key][offsets[row]:offsets[row + 1]])

    def name_ids(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(sentence row, name id) of every place (``key`` "places") or year of every sentence."""
        offsets = self._offsets[key]
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(offsets)), self._ids[key]

    def _record(self, row: int):
        return {"article_id": self.article_ids[self.article_rows[row]], "start": int(self.starts[row]),
                "end": int(self.ends[row]), "places": list(self.names_of("places", row)),
                "years": list(self.names_of("years", row))}

    def __repr__(self) -> str:
        return f"SentenceRecords({len(self)} sentences)"

    @property
    def nbytes(self) -> int:
        """Bytes of the columns (not the names)."""
        return sum(a.nbytes for a in (self.article_rows, self.starts, self.ends, *self._ids.values(),
                                      *self._offsets.values()))


class VectorRows:
    """The rows of a 2-d ``.npy`` file, read from the file when asked for (``rows[i]``, ``rows[[i, j]]``).

    A memory map of the sentence vectors (1.6 GB of float16 at a million chunks) kept every page a
    question had read in the server's resident memory, ~1 GB after 200 questions; a read leaves
    them to the page cache. ``np.asarray(rows)`` reads the whole file.
    """

    _BLOCK = 65_536  # rows a time when iterating

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "rb", buffering=0)
        try:
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(self._file))
            if read_header is None:
                raise ValueError(f"{self.path} is not a .npy file of a version this numpy reads")
            shape, fortran, dtype = read_header(self._file)
            if fortran or dtype.hasobject:
                raise ValueError(f"{self.path} holds a Fortran-ordered or object array")
            self.shape, self.dtype = tuple(shape), np.dtype(dtype)
            self._offset = self._file.tell()
            self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            size = os.fstat(self._file.fileno()).st_size
            if size < self._offset + (self.shape[0] if self.shape else 1) * self._row_bytes:
                raise ValueError(f"{self.path} is truncated ({size:,} bytes for an array of shape {self.shape})")
        except BaseException:
            self._file.close()
            raise
        self._fd = self._file.fileno()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, count: int) -> np.ndarray:
        out = bytearray(count * self._row_bytes)
        view, done, at = memoryview(out), 0, self._offset + start * self._row_bytes
        while done < len(out):  # a read returns at most ~2 GB
            n = os.preadv(self._file.fileno(), [view[done:]], at + done)
            if n <= 0:
                raise OSError(f"{self.path} ended before row {start + count}")
            done += n
        return np.frombuffer(out, dtype=self.dtype).reshape(count, *self.shape[1:])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            block = self._read(start, max(0, stop - start))
            return block[::step] if step != 1 else block
        if np.ndim(key) == 0:
            row = int(key)
            if row < 0:
                row += len(self)
            if not 0 <= row < len(self):
                raise IndexError(f"row must be in [0, {len(self)}), got {key}")
            data = os.pread(self._fd, self._row_bytes, self._offset + row * self._row_bytes)
            if len(data) != self._row_bytes:  # the one call a question makes per sentence: kept short
                raise OSError(f"{self.path} ended before row {row}")
            return np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        for i, r in enumerate(rows):
            out[i] = self[r]
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self), self._BLOCK):
            yield from self._read(start, min(self._BLOCK, len(self) - start))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._read(0, len(self))
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"VectorRows({self.path}, shape={self.shape}, dtype={self.dtype})"

    def close(self) -> None:
        self._file.close()
