"""Scoring an inference run's predictions: answers against references, retrieval by hit@k.

- ``answer_accuracy``: the share of questions whose answer matches its reference
  (`spec.inputs.answer_field`), by `spec.evaluation.match`: ``contains`` (the reference is in
  the answer) or ``exact`` (equal), both after lower-casing, collapsing spaces and stripping
  punctuation at the ends;
- ``hit_at_k``: the share of questions for which a retrieved chunk comes from the document
  that holds the answer (`spec.inputs.document_field`);
- ``error_rate``: the share of questions that got no answer (an agent stopped by its limit);
- ``mean_latency_s``: seconds per question.
"""

from __future__ import annotations

import re
import string
from typing import Any

from configs.tasktypes import Direction

METRICS: tuple[tuple[str, Direction], ...] = (
    ("answer_accuracy", "higher"),
    ("hit_at_k", "higher"),
    ("error_rate", "lower"),
    ("mean_latency_s", "lower"),
)
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACES.sub(" ", text.lower()).strip().strip(string.punctuation + " ")


def matches(answer: str | None, reference: str, how: str) -> bool:
    if answer is None:
        return False
    got, want = normalize(answer), normalize(reference)
    return got == want if how == "exact" else bool(want) and want in got


def document_hit(retrieved: list[dict[str, Any]], document: str) -> bool:
    """Whether a retrieved chunk comes from ``document`` (its name, with or without folder or suffix)."""
    want = document.strip()
    for hit in retrieved:
        source = str(hit["source"])
        if want in (
            source,
            source.rsplit("/", 1)[-1],
            source.rsplit(".", 1)[0],
            source.rsplit("/", 1)[-1].rsplit(".", 1)[0],
        ):
            return True
    return False


def metrics(predictions: list[dict[str, Any]], match: str) -> dict[str, float]:
    if not predictions:
        return {}
    out: dict[str, float] = {
        "error_rate": sum(p["error"] is not None for p in predictions) / len(predictions),
        "mean_latency_s": sum(p["latency_s"] for p in predictions) / len(predictions),
    }
    scored = [p for p in predictions if p.get("reference") is not None]
    if scored:
        out["answer_accuracy"] = sum(matches(p["answer"], p["reference"], match) for p in scored) / len(scored)
    located = [p for p in predictions if p.get("document") is not None]
    if located:
        out["hit_at_k"] = sum(document_hit(p["retrieved"], p["document"]) for p in located) / len(located)
    return out
