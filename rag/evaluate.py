"""Question-set evaluation: retrieval (Recall@1/5, MRR) and answers (accuracy, refusals, citations)."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .answer import unsupported_numbers
from .errors import BadInput

__all__ = ["QAItem", "load_qa", "evaluate_retrieval", "evaluate_answers", "format_table"]


@dataclass(frozen=True)
class QAItem:
    """One evaluation question: answerable ones carry a gold phrase of their passage and key facts."""

    id: str
    question: str
    answerable: bool = True
    gold: str = ""
    facts: tuple[str, ...] = ()


def load_qa(path: str | Path) -> list[QAItem]:
    """Read a question set (JSON lines)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"question set {path} does not exist")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            item = QAItem(id=str(d.get("id", n)), question=d["question"], answerable=bool(d.get("answerable", True)),
                          gold=d.get("gold", ""), facts=tuple(d.get("facts", ())))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{path} line {n} is not a question record ({exc})") from None
        if item.answerable and not item.gold:
            raise BadInput(f"{path} line {n}: an answerable question needs a gold phrase")
        items.append(item)
    if not items:
        raise BadInput(f"question set {path} is empty")
    return items


def _gold_rank(engine, item: QAItem, hits) -> int | None:
    for h in hits:
        art = engine.index.articles[h.chunk.article_id]
        pos = art.text.find(item.gold)
        while pos >= 0:
            if pos < h.chunk.end and h.chunk.start < pos + len(item.gold):
                return h.rank
            pos = art.text.find(item.gold, pos + 1)
    return None


def evaluate_retrieval(engine, items: list[QAItem], *, retriever: str | None = None, k: int = 5) -> dict:
    """Recall@1, Recall@k and MRR of the gold passage over the answerable questions."""
    ranks, misses, latencies = [], [], []
    for item in items:
        if not item.answerable:
            continue
        t0 = time.perf_counter()
        hits = engine.search(item.question, k=k, retriever=retriever)
        latencies.append((time.perf_counter() - t0) * 1000)
        r = _gold_rank(engine, item, hits)
        ranks.append(r)
        if r != 1:
            misses.append({"id": item.id, "question": item.question, "rank": r,
                           "top": hits[0].chunk.text[:60] if hits else ""})
    n = len(ranks)
    return {
        "retriever": retriever or engine.settings.retriever, "questions": n,
        "recall@1": round(sum(1 for r in ranks if r == 1) / n, 4) if n else 0.0,
        f"recall@{k}": round(sum(1 for r in ranks if r is not None) / n, 4) if n else 0.0,
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4) if n else 0.0,
        "median_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "misses": misses,
    }


def _norm(s: str) -> str:
    from .zh import fold_width

    return fold_width(s).replace(" ", "").replace("，", ",")


def evaluate_answers(engine, items: list[QAItem], *, ask, mode: str = "extractive") -> dict:
    """Answer accuracy (all key facts present, not refused), refusal accuracy, false refusals, and
    the share of citations that are verbatim substrings of their articles."""
    answerable = [i for i in items if i.answerable]
    unanswerable = [i for i in items if not i.answerable]
    correct = false_ref = right_ref = 0
    cites = verbatim = 0
    unsupported = 0
    failures, latencies = [], []
    extra: dict[str, int] = {}
    for item in items:
        t0 = time.perf_counter()
        ans = ask(item.question)
        latencies.append((time.perf_counter() - t0) * 1000)
        for c in ans.citations:
            cites += 1
            art = engine.index.articles.get(c.article_id)
            if art and art.text[c.start:c.end] == c.excerpt:
                verbatim += 1
        if mode == "llm":
            if "fallback" in ans.mode:
                key = "fallback (model not asked)" if "not asked" in (ans.fallback_reason or "") else "fallback (rejected)"
                extra[key] = extra.get(key, 0) + 1
            elif "repaired" in ans.mode:
                extra["repaired"] = extra.get("repaired", 0) + 1
            else:
                extra["passed as written"] = extra.get("passed as written", 0) + 1
        if not ans.refused and unsupported_numbers(ans.answer, ans.citations):
            unsupported += 1
        if item.answerable:
            # a fact may list alternatives separated by "|" (any one of them counts)
            ok = not ans.refused and all(any(_norm(alt) in _norm(ans.answer) for alt in f.split("|"))
                                         for f in item.facts)
            correct += ok
            false_ref += ans.refused
            if not ok:
                failures.append({"id": item.id, "question": item.question, "refused": ans.refused,
                                 "answer": ans.answer[:120]})
        else:
            right_ref += ans.refused
            if not ans.refused:
                failures.append({"id": item.id, "question": item.question, "refused": False,
                                 "answer": ans.answer[:120]})
    out = {
        "mode": mode,
        "answer_accuracy": round(correct / len(answerable), 4) if answerable else 0.0,
        "refusal_accuracy": round(right_ref / len(unanswerable), 4) if unanswerable else 0.0,
        "false_refusal_rate": round(false_ref / len(answerable), 4) if answerable else 0.0,
        "citations_verbatim": round(verbatim / cites, 4) if cites else 1.0,
        "citations": cites,
        "unsupported_numbers": unsupported,  # shown answers with a number absent from their excerpts
        "median_answer_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "failures": failures,
    }
    if extra:
        out["checks"] = extra
    return out


def format_table(rows: list[dict], keys: list[str]) -> str:
    """A small aligned text table of the given metric keys, one row per result."""
    widths = [max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))
    return "\n".join(lines)
