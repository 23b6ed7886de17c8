"""Retrieval metrics of a VectorIndex on the question set, computed by ir-measures (trec_eval's conventions);
docs/evaluation.md states the conventions and tests/unit/workloads/test_eval_metrics.py checks them against ranx.

- A document's rank is the best rank of any of its chunks: hits are chunks, relevance is judged per document, so
  later chunks of an already-seen document are dropped (duplicates would count one relevant document twice).
- Questions whose relevant_doc_ids is absent, or holds no document with grade >= 1, are left out of the means.
- Every evaluated question counts, also one the index answered with nothing (all its metrics 0).
"""

from __future__ import annotations

from typing import Iterable

from kubeforge_workloads.evaluate.dataset import EvalRow


def _measures() -> dict:
    from ir_measures import RR, P, R, Success, nDCG

    return {"precision": P, "recall": R, "ndcg": nDCG, "mrr": RR, "hit_rate": Success}


def ranked_documents(document_ids: Iterable[str]) -> list[str]:
    """Document ids in rank order, each once, at the best rank of its chunks."""
    return list(dict.fromkeys(document_ids))


def retrieve(index, rows: list[EvalRow], k: int, batch_size: int = 32) -> dict[str, list[str]]:
    """row id -> the index's top-k documents for the row's question (queries embedded in batches)."""
    ranked: dict[str, list[str]] = {}
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        vectors = index.embed([row.question for row in batch])
        for row, vector in zip(batch, vectors):
            ranked[row.id] = ranked_documents(hit.document_id for hit in index.search(vector, k=k))
    return ranked


def qrels_of(rows: list[EvalRow]) -> dict[str, dict[str, int]]:
    """The judged questions: those with at least one document of grade >= 1."""
    return {row.id: dict(row.relevant) for row in rows
            if row.relevant and any(grade >= 1 for grade in row.relevant.values())}


def run_of(ranked: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """A trec run from ranked lists: strictly decreasing scores, so no tie is broken by document id."""
    return {query: {doc: float(len(docs) - position) for position, doc in enumerate(docs)}
            for query, docs in ranked.items()}


def retrieval_metrics(qrels: dict[str, dict[str, int]], ranked: dict[str, list[str]], metrics: list[str],
                      ks: list[int]) -> dict[str, float]:
    """{"<metric>@<k>": mean over the judged questions} for every metric and k; {} without judged questions."""
    import ir_measures

    if not qrels:
        return {}
    table = _measures()
    wanted = {table[metric] @ k: f"{metric}@{k}" for metric in metrics for k in sorted(set(ks))}
    run = run_of({query: ranked.get(query, []) for query in qrels})
    run = {query: docs for query, docs in run.items() if docs}
    totals = dict.fromkeys(wanted.values(), 0.0)
    for result in (ir_measures.iter_calc(list(wanted), qrels, run) if run else ()):
        totals[wanted[result.measure]] += result.value
    # Questions the index answered with nothing are missing from iter_calc's results: they add 0.
    return {name: total / len(qrels) for name, total in totals.items()}
