"""The ``milvus`` store: chunk vectors, BM25 text and page metadata in a Milvus collection.

One collection per index: ``row`` (INT64 primary key = chunk row), ``vector`` (the chunk's passage
vector, inner product), ``text`` (the chunk's BM25 tokens, made by the index's ``zh.Tokenizer`` with its
jieba dictionary and joined by spaces, so Milvus's BM25 function counts the same words as the faiss
store's bm25s), ``sparse`` (that BM25 function's output), and ``paper``, ``region``, ``city``, ``date``
(YYYYMMDD, 0 when unknown) so that filters are Milvus expressions.

Milvus Lite (a ``*.db`` folder) lives inside the index folder and is swapped in with it; Lite lets one
process open it. A server (``http://host:19530``) gets a new collection per build, named in the
manifest; the one it replaces is dropped once the new index is in place.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from .errors import BadInput, IndexFormat
from .store import StoreSpec, Where, fuse_ranks

__all__ = ["build_milvus", "open_milvus", "check_milvus", "MilvusStore", "is_server", "drop_replaced"]

log = logging.getLogger("rag")

LITE_DEFAULT = "milvus.db"
COLLECTION = "chunks"  # inside a Lite folder, which belongs to one index
DF_FILE = "bm25_df.json"
BM25_K1, BM25_B = 1.2, 0.75  # as the faiss store's bm25s
_TEXT_BYTES = 65_535
_META_BYTES = 512
_NONWORD = re.compile(r"\W")
_INSTALL = "pip install 'pymilvus==3.0.2' 'milvus-lite==3.2.2' (or `make setup`)"


def is_server(uri: str) -> bool:
    """Whether a Milvus URI names a server (else it is a Milvus Lite path)."""
    return uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def _pymilvus():
    import os

    # gRPC's C core writes connection notes (keepalive GOAWAYs from Lite's server) to stderr; the
    # client raises what matters
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    # pymilvus and Lite log each failure with its traceback; rag raises it as one line (BadInput)
    for name in ("pymilvus", "milvus_lite", "grpc._server"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        import pymilvus
    except ImportError:
        raise BadInput(f"the milvus store needs pymilvus and milvus-lite, which are not installed: {_INSTALL}") from None
    return pymilvus


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0][:200]


def _connect(uri: str, token: str | None, *, lite_path: Path | None = None):
    """A MilvusClient, or BadInput saying in one line why there is none."""
    pymilvus = _pymilvus()
    if lite_path is not None:
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise BadInput(f"a Milvus Lite store ({lite_path}) needs milvus-lite, which is not installed: "
                           f"{_INSTALL}") from None
    try:
        return pymilvus.MilvusClient(uri=uri, token=token or "", timeout=10)
    except Exception as exc:  # pymilvus raises MilvusException, ConnectionError or its own wrappers
        if lite_path is not None:
            held = " and another one has it open (a `rag serve`?)" if _lite_held(lite_path) else ""
            raise BadInput(f"cannot open the Milvus Lite database {lite_path}: Milvus Lite lets one process open "
                           f"it{held}; stop that process or use a Milvus server ({_first_line(exc)})") from None
        raise BadInput(f"cannot reach the Milvus server at {uri} ({_first_line(exc)}); is it running? "
                       f"(see deploy/milvus/docker-compose.yml)") from None


def _lite_held(path: Path) -> bool:
    """Whether another process holds the Lite folder's lock."""
    import fcntl
    import os

    try:
        fd = os.open(path / "LOCK", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def check_milvus(spec: StoreSpec, index_dir: Path) -> None:
    """Refuse, before any work, a Lite path outside the index or a server that cannot be reached."""
    _pymilvus()
    if spec.uri and is_server(spec.uri):
        _connect(spec.uri, spec.token).close()
    else:
        _lite_path(index_dir, spec.uri)
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise BadInput(f"a Milvus Lite store needs milvus-lite, which is not installed: {_INSTALL}") from None


def _release_lite(path: Path) -> None:
    """Stop this process's Milvus Lite server for ``path`` (closing its folder), if it runs one."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(str(path))


def _lite_path(index_dir: Path, uri: str | None) -> Path:
    """The Lite folder's path relative to the index folder; refuse one outside it."""
    if not uri:
        return Path(LITE_DEFAULT)
    if not uri.endswith(".db"):
        raise BadInput(f"a Milvus Lite path must end in .db (e.g. {index_dir / LITE_DEFAULT}), got {uri!r}; "
                       f"a server is given as http://host:19530")
    path = Path(uri).expanduser().resolve()
    try:
        rel = path.relative_to(index_dir.resolve())
    except ValueError:
        raise BadInput(f"the Milvus Lite database must be inside the index folder, so that it is replaced "
                       f"together with it: use {index_dir / LITE_DEFAULT}, got {uri!r}") from None
    if not rel.parts or rel.parts[0].startswith("."):
        raise BadInput(f"bad Milvus Lite path {uri!r}; use {index_dir / LITE_DEFAULT}")
    return rel


def _collection_name(index_dir: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_]", "_", index_dir.resolve().name)[:60] or "index"
    return f"rag_{slug}_{time.time_ns():x}"


def _clip(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore").rsplit(" ", 1)[0]


def _bm25_text(tokens: list[str]) -> str:
    """Tokens joined by spaces, each made of word characters only, so that Milvus's analyzer (Lite's
    ``standard``: ``\\w+``; a server's ``whitespace``) splits them back into exactly these words."""
    return " ".join(_NONWORD.sub("_", t) for t in tokens if t)


def _schema(client, pymilvus, dimension: int, server: bool):
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field("text", DataType.VARCHAR, max_length=_TEXT_BYTES, enable_analyzer=True,
                     analyzer_params={"tokenizer": "whitespace" if server else "standard"})
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    for name in ("paper", "region", "city"):
        schema.add_field(name, DataType.VARCHAR, max_length=_META_BYTES)
    schema.add_field("date", DataType.INT64)
    schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                 output_field_names=["sparse"]))
    return schema


def _date_int(date: str | None) -> int:
    return int(date.replace("-", "")) if date else 0


def build_milvus(folder: Path, index_dir: Path, spec: StoreSpec, *, chunks: list, tokens: list[list[str]],
                 vectors: np.ndarray, articles: dict, k1: float = BM25_K1, b: float = BM25_B) -> dict:
    """Write the chunks into a new collection (a Lite folder inside ``folder``, or on the server) and
    the BM25 document frequencies into ``folder``; return the manifest entry."""
    pymilvus = _pymilvus()
    server = bool(spec.uri) and is_server(spec.uri)
    dimension = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    if server:
        uri, name, lite_rel, lite_abs = spec.uri, _collection_name(index_dir), None, None
    else:
        lite_rel = _lite_path(index_dir, spec.uri)
        lite_abs = folder / lite_rel
        lite_abs.parent.mkdir(parents=True, exist_ok=True)
        uri, name = str(lite_abs), COLLECTION
    client = _connect(uri, spec.token, lite_path=lite_abs)
    try:
        index_params = client.prepare_index_params()
        index_params.add_index("vector", index_type="FLAT", metric_type="IP")
        index_params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                               params={"params": {"bm25_k1": k1, "bm25_b": b}})
        client.create_collection(name, schema=_schema(client, pymilvus, dimension, server), index_params=index_params)
        try:
            batch = []
            for row, (chunk, toks) in enumerate(zip(chunks, tokens)):
                art = articles[chunk.article_id]
                batch.append({"row": row, "vector": vectors[row].astype(np.float32).tolist(),
                              "text": _clip(_bm25_text(toks), _TEXT_BYTES),
                              **{k: _clip(getattr(art, k, None) or "", _META_BYTES) for k in ("paper", "region", "city")},
                              "date": _date_int(getattr(art, "date", None))})
                if len(batch) == 1000:
                    client.insert(name, batch)
                    batch = []
            if batch:
                client.insert(name, batch)
            client.flush(name)
            client.load_collection(name)
            if client.get_collection_stats(name).get("row_count") != len(chunks):
                raise IndexFormat(f"the Milvus collection {name} took {client.get_collection_stats(name)} "
                                  f"rows of {len(chunks)}")
        except BaseException:
            if server:
                _drop(client, name)
            raise
    except BadInput:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("pymilvus"):
            raise BadInput(f"Milvus refused the index ({_first_line(exc)})") from None
        raise
    finally:
        client.close()
        if lite_abs is not None:
            _release_lite(lite_abs)
    df: dict[str, int] = {}
    for toks in tokens:
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    (folder / DF_FILE).write_text(json.dumps(df, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    return {"kind": "milvus", "uri": spec.uri if server else lite_rel.as_posix(), "server": server,
            "collection": name, "metric": "IP", "dense_index": "FLAT",
            "bm25": {"k1": k1, "b": b, "tokens": "the index's tokenizer (rag.zh.Tokenizer), joined by spaces"},
            "df_file": DF_FILE}


def _drop(client, name: str) -> None:
    try:
        client.drop_collection(name)
    except Exception as exc:  # the index is already replaced: say so, do not fail the build
        log.warning("could not drop the Milvus collection %s (%s); drop it by hand", name, _first_line(exc))


def drop_replaced(old: dict | None, new: dict, token: str | None) -> None:
    """After a swap, drop the server collection the old index used (Lite folders go with their index)."""
    if not old or old.get("kind") != "milvus" or not old.get("server"):
        return
    if old.get("uri") == new.get("uri") and old.get("collection") == new.get("collection"):
        return
    try:
        client = _connect(old["uri"], token)
    except BadInput as exc:
        log.warning("%s; the old collection %s stays", exc, old.get("collection"))
        return
    try:
        _drop(client, old["collection"])
    finally:
        client.close()


def release_index(index_dir: Path, entry: dict | None) -> None:
    """Close this process's Milvus Lite server of an index's Lite folder (before or after it is
    replaced, so that the next open reads the new folder)."""
    if entry and entry.get("kind") == "milvus" and not entry.get("server"):
        _release_lite(index_dir / entry.get("uri", LITE_DEFAULT))


def open_milvus(path: Path, entry: dict, *, dimension: int, count: int, token: str | None = None,
                articles: dict | None = None) -> "MilvusStore":
    """Connect to the collection a manifest entry names and check it holds ``count`` chunks."""
    import os

    try:
        server, uri, name = bool(entry["server"]), str(entry["uri"]), str(entry["collection"])
        df = json.loads((path / entry.get("df_file", DF_FILE)).read_text(encoding="utf-8"))
    except (KeyError, TypeError, OSError, ValueError) as exc:
        raise IndexFormat(f"index at {path} has a damaged milvus store entry ({_first_line(exc)}); "
                          f"rebuild it with `rag index`") from None
    lite = None if server else path / uri
    if lite is not None and not lite.is_dir():
        raise IndexFormat(f"index at {path} is damaged (its Milvus Lite folder {uri} is missing); "
                          f"rebuild it with `rag index`")
    client = _connect(uri if server else str(lite), token or os.environ.get("RAG_MILVUS_TOKEN"), lite_path=lite)
    try:
        if not client.has_collection(name):
            raise IndexFormat(f"the Milvus collection {name} of the index at {path} is missing at "
                              f"{uri}; rebuild the index with `rag index --store milvus`")
        client.load_collection(name)
        rows = client.get_collection_stats(name).get("row_count")
    except IndexFormat:
        client.close()
        raise
    except Exception as exc:
        client.close()
        raise BadInput(f"cannot read the Milvus collection {name} at {uri} ({_first_line(exc)})") from None
    if int(rows) != count:
        client.close()
        raise IndexFormat(f"index at {path} is inconsistent ({count} chunks, {rows} rows in the Milvus collection "
                          f"{name}); rebuild it with `rag index`")
    return MilvusStore(client, name, server=server, dimension=dimension, count=count, df=df,
                       articles=articles or {})


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


class MilvusStore:
    """Dense, BM25 and hybrid (RRF) search of one Milvus collection; filters are Milvus expressions."""

    kind = "milvus"

    def __init__(self, client, collection: str, *, server: bool, dimension: int, count: int, df: dict[str, int],
                 articles: dict) -> None:
        self.client, self.collection, self.server = client, collection, server
        self.dimension, self.count, self.df, self.articles = dimension, count, df, articles

    def expression(self, where: Where) -> str:
        """The Milvus filter expression of ``where`` ('' for all chunks): its filters as the page fields
        (paper exact, region within the region or the city, dates inclusive), else its rows."""
        f = where.filters
        if f:
            parts = []
            if f.paper:
                parts.append(f"paper == {_quote(f.paper)}")
            if f.region:  # a substring of the region or the city: the index's values that hold it
                regions = sorted({a.region for a in self.articles.values() if a.region and f.region in a.region})
                cities = sorted({a.city for a in self.articles.values() if a.city and f.region in a.city})
                either = [f"region in [{', '.join(map(_quote, regions))}]" if regions else "",
                          f"city in [{', '.join(map(_quote, cities))}]" if cities else ""]
                either = [e for e in either if e]
                parts.append(f"({' or '.join(either)})" if either else "row < 0")
            if f.since:
                parts.append(f"date >= {_date_int(f.since)}")
            if f.until:
                parts.append(f"date >= 1 and date <= {_date_int(f.until)}")
            return " and ".join(parts)
        if where.rows is not None:
            return f"row in [{', '.join(str(int(r)) for r in where.rows)}]"
        return ""

    def _search(self, data, field: str, n: int, where: Where, params: dict) -> list[tuple[int, float]]:
        try:
            res = self.client.search(self.collection, data=data, anns_field=field, limit=min(n, 16_384),
                                     filter=self.expression(where), search_params=params, output_fields=["row"])
        except Exception as exc:
            raise BadInput(f"Milvus search failed ({_first_line(exc)})") from None
        return [(int(h.id), float(h.distance)) for h in res[0]]

    def dense(self, vector: np.ndarray, n: int, where: Where) -> list[tuple[int, float]]:
        if not self.count or where.empty:
            return []
        return self._search([np.asarray(vector, dtype=np.float32).ravel().tolist()], "vector", n, where,
                            {"metric_type": "IP"})

    def bm25(self, tokens: list[str], n: int, where: Where) -> list[tuple[int, float]]:
        text = _bm25_text([t for t in tokens if t in self.df])
        if not text or where.empty:
            return []
        # Lite's BM25 scores are negative (more negative is better), a server's positive: the order is
        # what counts, the magnitude is the BM25 score
        return [(r, abs(s)) for r, s in self._search([text], "sparse", n, where, {"metric_type": "BM25"}) if s]

    def hybrid(self, tokens: list[str], vector: np.ndarray, n: int, where: Where, *, weights: tuple[float, float],
               k: int) -> list[tuple[int, float]]:
        text = _bm25_text([t for t in tokens if t in self.df])
        if tuple(weights) != (1.0, 1.0) or not text or where.empty:  # Milvus's RRF has no weights
            return fuse_ranks([self.dense(vector, n, where), self.bm25(tokens, n, where)], list(weights), k)
        from pymilvus import AnnSearchRequest, RRFRanker

        expr = self.expression(where)
        reqs = [AnnSearchRequest(data=[np.asarray(vector, dtype=np.float32).ravel().tolist()], anns_field="vector",
                                 param={"metric_type": "IP"}, limit=min(n, self.count), expr=expr or None),
                AnnSearchRequest(data=[text], anns_field="sparse", param={"metric_type": "BM25"}, limit=n,
                                 expr=expr or None)]
        try:
            res = self.client.hybrid_search(self.collection, reqs, RRFRanker(k), limit=min(2 * n, 16_384),
                                            output_fields=["row"])
        except Exception as exc:
            raise BadInput(f"Milvus hybrid search failed ({_first_line(exc)})") from None
        # the same order as fuse_ranks: by fused score, ties by row
        return sorted(((int(h.id), float(h.distance)) for h in res[0]), key=lambda x: (-round(x[1], 12), x[0]))

    def vectors(self) -> np.ndarray:
        out = np.zeros((self.count, self.dimension), dtype=np.float32)
        step = 4_000
        for start in range(0, self.count, step):
            got = self.client.query(self.collection, filter=f"row >= {start} and row < {start + step}",
                                    output_fields=["row", "vector"], limit=step)
            for rec in got:
                out[int(rec["row"])] = np.asarray(rec["vector"], dtype=np.float32)
        return out

    def rows(self, rows: list[int]) -> np.ndarray:
        out = np.zeros((len(rows), self.dimension), dtype=np.float32)
        if not len(rows):
            return out
        where: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            where.setdefault(int(r), []).append(i)
        got = self.client.query(self.collection, filter=f"row in {sorted(where)}", output_fields=["row", "vector"],
                                limit=len(where))
        for rec in got:
            out[where[int(rec["row"])]] = np.asarray(rec["vector"], dtype=np.float32)
        return out

    def doc_freqs(self) -> dict[str, int]:
        return self.df

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
