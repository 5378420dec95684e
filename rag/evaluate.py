"""Question-set evaluation: retrieval (Recall@1/5, MRR), answers (accuracy, refusals, citations) per
kind of question, held out by page: the scoring is fitted on the other pages (leave-one-page-out)
and judged on the page left out; the in-sample figures are shown beside them, not as the result."""
from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .answer import unsupported_numbers
from .errors import BadInput
from .query import analyze_question, resolve_followup
from .score import ScoringParams, constraints_hold, fit_logistic, gather_evidence, load_scoring
from .types import AnswerKind, AnswerMode, FallbackReason

__all__ = ["QAItem", "load_qa", "evaluate_retrieval", "evaluate_answers", "format_table", "gold_spans",
           "collect_evidence", "fit_scoring", "evaluate_heldout", "UNANSWERABLE_KINDS"]

UNANSWERABLE_KINDS = ("near_place", "near_year", "near_detail", "off_topic")


@dataclass(frozen=True)
class QAItem:
    """One evaluation question: answerable ones carry a gold phrase of their passage and key facts;
    ``page`` is the page it is about, ``kind`` what sort of question it is, ``history`` the earlier
    questions of its conversation (for follow-ups)."""

    id: str
    question: str
    answerable: bool = True
    gold: str = ""
    facts: tuple[str, ...] = ()
    page: str = ""
    kind: str = ""
    history: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """The kind used in reports (a set without kinds: answerable / unanswerable)."""
        return self.kind or ("fact" if self.answerable else "unanswerable")


def _history(value) -> tuple[str, ...]:
    out = []
    for h in value or ():
        if isinstance(h, str):
            out.append(h)
        elif isinstance(h, dict) and isinstance(h.get("question"), str):
            out.append(h["question"])
    return tuple(out)


def load_qa(path: str | Path) -> list[QAItem]:
    """Read a question set (JSON lines: id, question, answerable, gold, facts, page, kind, history)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"question set {path} does not exist")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            facts = d.get("facts") or ()
            item = QAItem(id=str(d.get("id", n)), question=d["question"], answerable=bool(d.get("answerable", True)),
                          gold=d.get("gold") or "", facts=tuple(str(f) for f in facts),
                          page=str(d.get("page") or ""), kind=str(d.get("kind") or ""),
                          history=_history(d.get("history")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadInput(f"{path} line {n} is not a question record ({exc})") from None
        if item.answerable and not item.gold:
            raise BadInput(f"{path} line {n}: an answerable question needs a gold phrase")
        items.append(item)
    if not items:
        raise BadInput(f"question set {path} is empty")
    return items


def _norm(s: str) -> str:
    from .zh import fold_width

    return fold_width(s).replace(" ", "").replace("，", ",")


_LOOSE = str.maketrans({"，": ",", "：": ":", "；": ";", "（": "(", "）": ")", "！": "!", "？": "?",
                        "“": '"', "”": '"'})


def gold_spans(text: str, gold: str) -> list[tuple[int, int]]:
    """Where the gold phrase occurs in an article's text: exactly, or else ignoring spaces, width and
    the full- or half-width form of punctuation (the OCR repair may change those)."""
    if not gold:
        return []
    spans, pos = [], text.find(gold)
    while pos >= 0:
        spans.append((pos, pos + len(gold)))
        pos = text.find(gold, pos + 1)
    if spans:
        return spans
    from .zh import fold_width

    keep = [i for i, ch in enumerate(text) if not ch.isspace()]
    loose = fold_width("".join(text[i] for i in keep)).translate(_LOOSE)
    g = fold_width(re.sub(r"\s+", "", gold)).translate(_LOOSE)
    pos = loose.find(g) if g else -1
    while pos >= 0:
        spans.append((keep[pos], keep[pos + len(g) - 1] + 1))
        pos = loose.find(g, pos + 1)
    return spans


def _gold_rank(engine, item: QAItem, hits) -> int | None:
    for h in hits:
        art = engine.index.articles[h.chunk.article_id]
        for s, e in gold_spans(art.text, item.gold):
            if s < h.chunk.end and h.chunk.start < e:
                return h.rank
    return None


def _resolved(item: QAItem, engine=None) -> str:
    """The item's question, a follow-up resolved with the engine's index's tokenizer."""
    tokenizer = getattr(getattr(engine, "index", None), "tokenizer", None)
    return resolve_followup(item.question, list(item.history), tokenizer) if item.history else item.question


def evaluate_retrieval(engine, items: list[QAItem], *, retriever: str | None = None, k: int = 5,
                       scoring: ScoringParams | None = None) -> dict:
    """Recall@1, Recall@k and MRR of the gold passage over the answerable questions."""
    ranks, misses, latencies = [], [], []
    for item in items:
        if not item.answerable:
            continue
        t0 = time.perf_counter()
        hits = engine.search(_resolved(item, engine), k=k, retriever=retriever, scoring=scoring)
        latencies.append((time.perf_counter() - t0) * 1000)
        r = _gold_rank(engine, item, hits)
        ranks.append(r)
        if r != 1:
            misses.append({"id": item.id, "question": item.question, "rank": r,
                           "top": hits[0].chunk.text[:60] if hits else ""})
    n = len(ranks)
    return {
        "retriever": retriever or engine.settings.retrieval.retriever, "questions": n,
        "recall@1": round(sum(1 for r in ranks if r == 1) / n, 4) if n else 0.0,
        f"recall@{k}": round(sum(1 for r in ranks if r is not None) / n, 4) if n else 0.0,
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4) if n else 0.0,
        "median_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "misses": misses,
    }


def _correct(item: QAItem, ans) -> bool:
    # a fact may list alternatives separated by "|" (any one of them counts)
    return (not ans.refused and not getattr(ans, "partial", False)
            and all(any(_norm(alt) in _norm(ans.answer) for alt in f.split("|")) for f in item.facts))


def evaluate_answers(engine, items: list[QAItem], *, ask, mode: str = "extractive") -> dict:
    """Answer accuracy (all key facts present, not refused), refusal accuracy (a partial answer that
    says the pages hold only another place or year counts as declining), false refusals, and the
    share of citations that are verbatim substrings of their articles."""
    answerable = [i for i in items if i.answerable]
    unanswerable = [i for i in items if not i.answerable]
    correct = false_ref = right_ref = 0
    cites = verbatim = 0
    unsupported = 0
    failures, latencies = [], []
    extra: dict[str, int] = {}
    for item in items:
        t0 = time.perf_counter()
        ans = ask(item.question, history=list(item.history)) if item.history else ask(item.question)
        latencies.append((time.perf_counter() - t0) * 1000)
        for c in ans.citations:
            cites += 1
            art = engine.index.articles.get(c.article_id)
            if art and art.text[c.start:c.end] == c.excerpt:
                verbatim += 1
        if mode == AnswerMode.LLM:
            if ans.mode == AnswerKind.FALLBACK:
                not_asked = ans.fallback is FallbackReason.NOT_ASKED
                key = "fallback (model not asked)" if not_asked else "fallback (rejected)"
                extra[key] = extra.get(key, 0) + 1
            elif ans.mode == AnswerKind.LLM_REPAIRED:
                extra["repaired"] = extra.get("repaired", 0) + 1
            else:
                extra["passed as written"] = extra.get("passed as written", 0) + 1
        if not ans.refused and unsupported_numbers(ans.answer, ans.citations):
            unsupported += 1
        declined = ans.refused or getattr(ans, "partial", False)
        if item.answerable:
            ok = _correct(item, ans)
            correct += ok
            false_ref += declined
            if not ok:
                failures.append({"id": item.id, "kind": item.group, "question": item.question, "refused": ans.refused,
                                 "partial": getattr(ans, "partial", False), "answer": ans.answer[:120]})
        else:
            right_ref += declined
            if not declined:
                failures.append({"id": item.id, "kind": item.group, "question": item.question, "refused": False,
                                 "partial": False, "answer": ans.answer[:120]})
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


# --- fitting the scoring, and judging it on pages it was not fitted on ------------------------------

@dataclass
class Collected:
    """One question's scored evidence (param-free features) and which of it holds the gold answer."""

    item: QAItem
    page: str
    features: np.ndarray  # (n, len(FEATURES))
    labels: np.ndarray  # 1 where the evidence overlaps the gold phrase and holds a key fact
    lengths: np.ndarray


def _page_of(engine, item: QAItem, sources: list[str]) -> str:
    """The page a question is about: its ``page`` field (a file name or its prefix), else the page of
    its gold phrase, else the page of its best search hit."""
    if item.page:
        found = [s for s in sources if s == item.page or s.startswith(item.page) or Path(s).stem == item.page]
        return found[0] if len(found) == 1 else item.page
    if item.gold:
        for art in engine.index.articles.values():
            if gold_spans(art.text, item.gold):
                return art.source
    hits = engine.search(_resolved(item, engine), k=1)
    return hits[0].source if hits else "?"


def collect_evidence(engine, items: list[QAItem], base: ScoringParams | None = None) -> list[Collected]:
    """Score every question's candidate sentences once (what the fit and the folds share)."""
    from .retrieve import fused_ranking

    base = base or load_scoring()
    index, settings = engine.index, engine.settings
    sources = sorted({a.source for a in index.articles.values()})
    out = []
    if hasattr(engine, "query_vectors"):  # one batch: far quicker than one question at a time
        engine.query_vectors(list(dict.fromkeys(_resolved(i, engine).strip() for i in items)))
    for item in items:
        q = _resolved(item, engine).strip()
        vec = engine.query_vectors([q])[0] if hasattr(engine, "query_vectors") else engine.encoder.encode_queries([q])[0]
        ranked = fused_ranking(index, q, settings=settings.retrieval, query_vector=vec, retriever=settings.retrieval.retriever,
                               n=max(settings.retrieval.candidates, base.rerank_depth))
        depth = [(row, rank) for rank, (row, _) in enumerate(ranked[: base.rerank_depth], start=1)]
        evidence = gather_evidence(index, analyze_question(q, index.tokenizer), vec, depth, base)
        labels = []
        for ev in evidence:
            ok = False
            if item.answerable:
                text = index.articles[ev.article_id].text
                spans = gold_spans(text, item.gold)
                overlaps = any(s < ev.end and ev.start < e for s, e in spans)
                held = [any(_norm(alt) in _norm(ev.text) for alt in f.split("|")) for f in item.facts]
                # it holds the gold passage and a key fact, or every key fact in the gold's article
                ok = (overlaps and (not held or any(held))) or (bool(spans) and bool(held) and all(held))
            labels.append(1.0 if ok else 0.0)
        feats = np.array([ev.features for ev in evidence], dtype=float).reshape(len(evidence), -1)
        out.append(Collected(item, _page_of(engine, item, sources), feats, np.array(labels),
                             np.array([len(ev.text) for ev in evidence], dtype=float)))
    return out


def _answer_threshold(best_p: np.ndarray, good: np.ndarray, answerable: np.ndarray, margin: float) -> float:
    """The answer threshold: the one whose balanced accuracy (answerable questions answered from the
    right sentence, unanswerable ones refused), averaged over thresholds up to ``margin`` logits either
    side, is highest. Averaging keeps it off a single question's score and in the middle of a wide
    plateau, measured in logits, where probabilities near 1 are far apart (a fold fitted on 46
    questions put it at 0.98 by taking the plateau's median in probability; its neighbours at 0.78)."""
    z = np.log(np.clip(best_p, 1e-12, 1.0)) - np.log(np.clip(1.0 - best_p, 1e-12, 1.0))
    z = np.where(best_p <= 0.0, -50.0, z)
    n_a, n_u = max(1, answerable.sum()), max(1, (~answerable).sum())
    right, wrong = np.sort(z[answerable & good]), np.sort(z[~answerable])

    def accuracy(t: np.ndarray) -> np.ndarray:  # answered right (z >= t) plus refused (z < t), each balanced
        return (len(right) - np.searchsorted(right, t, side="left")) / n_a + np.searchsorted(wrong, t, side="left") / n_u

    zs = np.unique(z[z > -50])
    cuts = np.concatenate([[zs[0] - 1.0], (zs[:-1] + zs[1:]) / 2, [zs[-1] + 1.0]]) if len(zs) else np.array([0.0])
    offsets = np.linspace(-margin, margin, 21) if margin > 0 else np.zeros(1)
    scores = np.array([accuracy(t + offsets).mean() for t in cuts])
    winners = cuts[scores >= scores.max() - 1e-9]
    t = float(winners[len(winners) // 2])
    return float(1.0 / (1.0 + np.exp(-t)))


def fit_scoring(collected: list[Collected], base: ScoringParams | None = None, *, note: str = "") -> ScoringParams:
    """Fit the logistic weights (each question's evidence weighted equally, positives and negatives
    balanced) and then the answer threshold that best separates the answerable questions whose best
    sentence holds the answer from the unanswerable ones (balanced accuracy)."""
    base = base or load_scoring()
    rows = [c for c in collected if len(c.labels)]
    x = np.vstack([c.features for c in rows])
    y = np.concatenate([c.labels for c in rows])
    per_q = np.concatenate([np.full(len(c.labels), 1.0 / len(c.labels)) for c in rows])
    pos = y == 1
    sw = per_q.copy()
    if pos.any():
        sw[pos] *= per_q[~pos].sum() / per_q[pos].sum()
    sw *= len(y) / sw.sum()
    w, b = fit_logistic(x, y, l2=base.l2, sample_weight=sw)
    params = replace(base, weights=tuple(round(float(v), 4) for v in w), bias=round(float(b), 4))
    best_p, good, answerable = [], [], []
    for c in collected:
        if not len(c.labels):
            best_p.append(0.0), good.append(False), answerable.append(c.item.answerable)
            continue
        z = params.bias + c.features @ np.array(params.weights)
        p = 1 / (1 + np.exp(-np.clip(z, -50, 50)))
        # as score.judge: only evidence about the asked place and year, holding the asked fact, can answer
        fits = constraints_hold(c.features)
        if not fits.any():
            best_p.append(0.0), good.append(False), answerable.append(c.item.answerable)
            continue
        i = int(np.argmax(np.where(fits, z - params.length_penalty * c.lengths, -np.inf)))
        best_p.append(float(p[i])), good.append(bool(c.labels[i])), answerable.append(c.item.answerable)
    best_p, good, answerable = np.array(best_p), np.array(good), np.array(answerable)
    threshold = _answer_threshold(best_p, good, answerable, base.threshold_margin)
    return replace(params, threshold=threshold,
                   fitted_on=note or f"{len(collected)} questions, {int(y.sum())} positive of {len(y)} sentences")


def _summary(rows: list[dict]) -> dict:
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    ranked = [r for r in ans if "rank" in r]
    cites = sum(r["cites"] for r in rows)
    return {
        "n": len(rows),
        "answer_accuracy": round(sum(r["correct"] for r in ans) / len(ans), 3) if ans else None,
        "answerable_refused": round(sum(r["declined"] for r in ans) / len(ans), 3) if ans else None,
        "unanswerable_refused": round(sum(r["declined"] for r in una) / len(una), 3) if una else None,
        "recall@1": round(sum(1 for r in ranked if r["rank"] == 1) / len(ranked), 3) if ranked else None,
        "recall@5": round(sum(1 for r in ranked if r["rank"] is not None) / len(ranked), 3) if ranked else None,
        "citations_verbatim": round(sum(r["verbatim"] for r in rows) / cites, 4) if cites else 1.0,
    }


def _judge_items(engine, items: list[QAItem], params_of) -> list[dict]:
    rows = []
    for item in items:
        params = params_of(item)
        t0 = time.perf_counter()
        ans = engine.ask(item.question, history=list(item.history), scoring=params)
        ms = (time.perf_counter() - t0) * 1000
        row = {"id": item.id, "kind": item.group, "question": item.question, "answerable": item.answerable,
               "declined": bool(ans.refused or ans.partial), "partial": ans.partial,
               "correct": item.answerable and _correct(item, ans), "answer": ans.answer[:140], "ms": ms,
               "cites": len(ans.citations),
               "verbatim": sum(1 for c in ans.citations
                               if engine.index.articles[c.article_id].text[c.start:c.end] == c.excerpt)}
        if item.answerable:
            hits = engine.search(_resolved(item, engine), k=5, scoring=params)
            row["rank"] = _gold_rank(engine, item, hits)
        rows.append(row)
    return rows


def evaluate_heldout(engine, items: list[QAItem], *, base: ScoringParams | None = None) -> dict:
    """Leave-one-page-out: for each page, fit the scoring on the questions of the other pages and
    judge the questions of that page; then the same with the scoring fitted on every page (in-sample).
    Returns overall and per-kind figures for both, the fitted parameters and the failures."""
    base = base or load_scoring()
    collected = collect_evidence(engine, items, base)
    pages = sorted({c.page for c in collected})
    page_of = {c.item.id: c.page for c in collected}
    folds = {}
    for p in pages:
        train = [c for c in collected if c.page != p]
        folds[p] = fit_scoring(train, base, note=f"pages other than {p}") if train else base
    everything = fit_scoring(collected, base, note=f"all {len(collected)} questions")
    held = _judge_items(engine, items, lambda it: folds[page_of[it.id]])
    inside = _judge_items(engine, items, lambda it: everything)
    kinds = list(dict.fromkeys(sorted((r["kind"] for r in held), key=lambda k: (k in UNANSWERABLE_KINDS
                                                                                 or k == "unanswerable", k))))
    per_kind = []
    for k in kinds:
        h = _summary([r for r in held if r["kind"] == k])
        i = _summary([r for r in inside if r["kind"] == k])
        per_kind.append({"kind": k, "heldout": h, "in_sample": i})
    failures = [r for r in held if (r["answerable"] and not r["correct"]) or (not r["answerable"] and not r["declined"])]
    return {
        "questions": len(items), "pages": pages,
        "heldout": _summary(held), "in_sample": _summary(inside), "per_kind": per_kind,
        "median_answer_ms": round(statistics.median(r["ms"] for r in held), 1) if held else 0.0,
        "params_in_sample": everything.to_dict(),
        "params_by_fold": {p: folds[p].to_dict() for p in pages},
        "failures": failures,
    }


def format_table(rows: list[dict], keys: list[str]) -> str:
    """A small aligned text table of the given metric keys, one row per result."""
    widths = [max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))
    return "\n".join(lines)
