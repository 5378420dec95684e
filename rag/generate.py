"""Answers in the local model's words, held to the sources: the model gets the question and a few
numbered excerpts; its answer is shown only after ``ground.check_answer`` passes, otherwise the
extractive answer is returned with the reason."""
from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from typing import Callable, Iterator

from .answer import evidence_sentences, make_citation
from .config import Settings
from .errors import ModelError
from .ground import REFUSAL_RE, check_answer, facts_in, normalize_numbers, source_forms
from .index import Index
from .query import Question
from .types import Answer, AnswerKind, FallbackReason, Hit

__all__ = ["generate_answer", "explain_fallback"]


def explain_fallback(answer: Answer) -> str:
    """One Chinese line for a reader: why an llm-mode question got the sources' own words instead."""
    finish = (answer.check or {}).get("finish_reason")
    if finish == "cancel":
        return "已停止本地模型，以下为原文摘录"
    if finish in ("time", "length"):
        return "本地模型没有按时写完，未写完的回答不会显示；以下为原文摘录"
    if finish in ("crashed", "hung", "error") or answer.fallback is FallbackReason.MODEL_UNAVAILABLE:
        return "本地模型暂时不可用，以下为原文摘录"
    return "本地模型的回答未通过与原文的核对，以下为原文摘录"


def _fallback(extractive: Answer, reason: FallbackReason, detail: str = "", check: dict | None = None,
              timings: dict | None = None) -> Answer:
    return replace(extractive, mode=AnswerKind.FALLBACK, fallback_reason=f"{reason}: {detail}" if detail else str(reason),
                   check=check or {}, timings_ms=timings or {})


def generate_answer(index: Index, question: Question, hits: list[Hit], settings: Settings,
                    extractive: Answer, *, on_delta: Callable[[str], None] | None = None,
                    on_status: Callable[[dict], None] | None = None, cancel: threading.Event | None = None,
                    stream: Iterator[str] | None = None) -> Answer:
    """The local model's answer, checked; or the extractive answer with ``fallback_reason``.

    The model is asked ``question.resolved``, the standalone (follow-up-resolved) question. Only a generation
    the model finished itself is checked: one cut by the token or time limit, stopped (``cancel``)
    or ended by the worker's death is never repaired into an answer. ``on_status`` hears the
    worker's queue state; ``stream`` lets tests supply the model's output (a plain iterator counts
    as finished when it is exhausted).
    """
    if extractive.refused:
        return _fallback(extractive, FallbackReason.NOT_ASKED)
    spans = evidence_sentences(index, question.info, hits)
    excerpts = [index.articles[a].text[s:e] for a, s, e in spans]
    t0 = time.perf_counter()
    first_ms = None
    pieces: list[str] = []
    finish, detail = "stop", ""
    try:
        if stream is None:
            from .llm import build_messages, get_llm

            llm = get_llm(settings.llm.model, settings.model.cache_path(), extra_bufts=settings.llm.extra_bufts)
            stream = llm.generate(build_messages(question.resolved, excerpts), max_tokens=settings.llm.max_tokens,
                                  timeout_s=settings.llm.timeout_s, cancel=cancel, on_status=on_status)
        limit = 8 * settings.llm.max_tokens  # characters: an answer that runs on is cut off here
        try:
            for piece in stream:
                if first_ms is None:
                    first_ms = round((time.perf_counter() - t0) * 1000, 1)
                pieces.append(piece)
                if on_delta:
                    on_delta(piece)
                if sum(map(len, pieces)) > limit:
                    finish, detail = "length", f"the answer ran past {limit} characters"
                    break
        finally:
            if hasattr(stream, "close"):
                stream.close()
        if finish == "stop":
            finish = getattr(stream, "finish_reason", None) or "stop"
            detail = getattr(stream, "detail", "")
    except ModelError as exc:
        return _fallback(extractive, FallbackReason.MODEL_UNAVAILABLE, str(exc))
    timings = {"first_token_ms": first_ms or 0.0, "generate_ms": round((time.perf_counter() - t0) * 1000, 1)}
    text = "".join(pieces).strip()
    if finish != "stop":  # an unfinished answer is never checked, repaired or shown
        check = {"model_answer": text, "finish_reason": finish}
        reason = FallbackReason.MODEL_FAILED if finish in ("crashed", "hung", "error") else FallbackReason.NOT_FINISHED
        return _fallback(extractive, reason, detail or finish, check, timings)
    if not text:
        return _fallback(extractive, FallbackReason.NO_ANSWER, timings=timings)
    grounded = check_answer(text, excerpts)
    check = {"model_answer": text, "repaired": grounded.repaired, "dropped": grounded.dropped,
             "reasons": grounded.reasons}
    if REFUSAL_RE.search(text) and not grounded.ok:
        return _fallback(extractive, FallbackReason.DECLINED, check=check, timings=timings)
    if not grounded.ok:
        return _fallback(extractive, FallbackReason.UNGROUNDED, check=check, timings=timings)
    # the model must keep a figure or name of the best evidence (the first extractive excerpt that
    # has any): a model that answers with another sentence's number (a plan for a result) is not shown
    wanted: set[str] = set()
    for c in extractive.citations:  # the first excerpt that states figures or names
        wanted = {normalize_numbers(f) for f in facts_in(c.excerpt)}
        if wanted:
            break
    said = {normalize_numbers(f) for f in facts_in(re.sub(r"\[\d+\]", "", grounded.text()))}
    if wanted and not wanted & said:
        return _fallback(extractive, FallbackReason.LEFT_OUT_FACTS, check=check, timings=timings)
    # renumber the cited excerpts in order of first use
    order: dict[int, int] = {}
    parts = []
    for body, marks in grounded.sentences:
        for m in marks:
            order.setdefault(m, len(order) + 1)
        body = source_forms(body, [excerpts[m - 1] for m in marks])
        end = "" if body[-1] in "。！？!?" else "。"
        parts.append(body.rstrip("。！？!?") + "".join(f"[{order[m]}]" for m in marks) + (body[-1] if not end else end))
    citations = []
    for old, new in sorted(order.items(), key=lambda x: x[1]):
        a, s, e = spans[old - 1]
        citations.append(make_citation(new, index, a, s, e))
    mode = AnswerKind.LLM_REPAIRED if grounded.repaired or grounded.dropped else AnswerKind.LLM
    return Answer(question=question.text, answer="".join(parts), refused=False, citations=tuple(citations),
                  mode=mode, check=check, timings_ms=timings)
