"""Embedding many pages: length-sorted batches, a progress bar, and per-page checkpoints so that a
build or ``--add`` killed half-way resumes without embedding the finished pages again.

Each page's vectors (its chunks' then its sentences') are saved as ``<key>.npy`` in a staging folder
beside the index (``.<index>.staging/``); the key is the sha256 of the model name and every text the
page embeds, so a changed page, chunking or model never reuses stale vectors. Files are written under
a hidden name and renamed, so a kill leaves either a whole file or none. The folder is removed when the
index has been written.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .storage import _fault_point

__all__ = ["Staging", "embed_pages"]

log = logging.getLogger("rag")

# texts embedded per round: the round is sorted by length and cut into the encoder's batches, so
# passages of similar length share a batch (little padding); a checkpoint is written after each round
ROUND_TEXTS = 256
ENCODER_BATCH = 32
# a progress bar when stderr is a terminal, or for a build at least this large (a log of it then)
PROGRESS_MIN_TEXTS = 2_000


class Staging:
    """The checkpoint folder of one index: page key -> its embedded vectors."""

    def __init__(self, index_dir: str | Path, model_name: str):
        index_dir = Path(index_dir)
        self.path = index_dir.parent / f".{index_dir.name}.staging"
        self.model_name = model_name

    def key(self, texts: Sequence[str]) -> str:
        h = hashlib.sha256(self.model_name.encode("utf-8"))
        for t in texts:
            h.update(b"\x1f" + t.encode("utf-8"))
        return h.hexdigest()

    def load(self, key: str, rows: int, dimension: int) -> np.ndarray | None:
        """The saved vectors of a page, or None (none saved, or not the expected shape)."""
        f = self.path / f"{key}.npy"
        if not f.is_file():
            return None
        try:
            vecs = np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return vecs if vecs.shape == (rows, dimension) and vecs.dtype == np.float32 else None

    def save(self, key: str, vectors: np.ndarray) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        part = self.path / f".{key}.part-{os.getpid()}.npy"
        np.save(part, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        os.replace(part, self.path / f"{key}.npy")

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    show = sys.stderr.isatty() or total >= PROGRESS_MIN_TEXTS
    return tqdm(total=total, desc=desc, unit="passage", disable=not show, file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True)


def embed_pages(pages: list[list[str]], encoder, staging: Staging | None,
                on_page: Callable[[int, np.ndarray], None], *, desc: str = "embedding") -> int:
    """Embed each page's texts (as passages), handing page i's vectors to ``on_page(i, vectors)``;
    return how many pages were taken from the staging folder instead of being embedded.

    Pages are embedded in rounds of about ``ROUND_TEXTS`` texts; within a round the texts are sorted
    by length and cut into the encoder's batches, and after the round every page of it is saved to
    ``staging``. Beyond what ``on_page`` keeps, memory holds one round's vectors.
    """
    dim = encoder.dimension
    reused = saved = 0
    todo: list[int] = []
    keys = [staging.key(texts) if staging is not None else "" for texts in pages]
    for i, texts in enumerate(pages):
        vecs = staging.load(keys[i], len(texts), dim) if staging is not None and texts else None
        if vecs is not None:
            on_page(i, vecs)
            reused += 1
        elif not texts:
            on_page(i, np.zeros((0, dim), dtype=np.float32))
        else:
            todo.append(i)
    if reused:
        log.info("resuming: %d page(s) already embedded by an interrupted run are reused", reused)
    total = sum(len(pages[i]) for i in todo)
    with _progress(total, desc) as bar:
        start = 0
        while start < len(todo):
            end, n = start, 0
            while end < len(todo) and (n == 0 or n + len(pages[todo[end]]) <= ROUND_TEXTS):
                n += len(pages[todo[end]])
                end += 1
            batch = todo[start:end]
            texts = [t for i in batch for t in pages[i]]
            order = sorted(range(len(texts)), key=lambda j: len(texts[j]), reverse=True)
            vecs = np.empty((len(texts), dim), dtype=np.float32)
            for s in range(0, len(order), ENCODER_BATCH):
                part = order[s:s + ENCODER_BATCH]
                vecs[part] = encoder.encode_passages([texts[j] for j in part], batch_size=ENCODER_BATCH)
                bar.update(len(part))
            row = 0
            for i in batch:
                page_vecs = vecs[row:row + len(pages[i])]
                row += len(pages[i])
                if staging is not None:
                    staging.save(keys[i], page_vecs)
                    saved += 1
                    _fault_point(f"embedded-{saved}")  # tests: SIGKILL after this many pages are checkpointed
                on_page(i, page_vecs)
            start = end
    return reused
