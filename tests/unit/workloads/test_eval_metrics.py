"""EvalRun retrieval metrics (ir-measures, trec_eval conventions) against ranx, an independent implementation, on the
same run files: graded relevance, fewer than k results, a question without relevant documents, an empty result,
duplicate document ids (several chunks of one document), and the conventions docs/evaluation.md states."""

from __future__ import annotations

import random

import pytest

from kubeforge_workloads.evaluate.dataset import EvalRow
from kubeforge_workloads.evaluate.retrieval import qrels_of, ranked_documents, retrieval_metrics, retrieve, run_of
from kubeforge_workloads.index.query import Hit

METRICS = ["precision", "recall", "ndcg", "mrr", "hit_rate"]
RANX_NAMES = {"precision": "precision", "recall": "recall", "ndcg": "ndcg", "mrr": "mrr", "hit_rate": "hit_rate"}
KS = [1, 3, 5, 10]
TOLERANCE = 1e-9


def ranx_metrics(qrels: dict, ranked: dict, metrics: list[str], ks: list[int]) -> dict[str, float]:
    from ranx import Qrels, Run, evaluate

    run = run_of({query: ranked.get(query, []) for query in qrels})
    names = [f"{RANX_NAMES[metric]}@{k}" for metric in metrics for k in ks]
    values = evaluate(Qrels(qrels), Run(run), names, make_comparable=True)
    return {name: float(values[name]) for name in names}


def _rows(relevance: dict[str, object]) -> list[EvalRow]:
    rows = []
    for query, relevant in relevance.items():
        graded = {doc: 1 for doc in relevant} if isinstance(relevant, list) else relevant
        rows.append(EvalRow(query, f"question {query}", None, graded))
    return rows


def _agree(rows: list[EvalRow], ranked: dict[str, list[str]]) -> float:
    qrels = qrels_of(rows)
    ours = retrieval_metrics(qrels, ranked, METRICS, KS)
    theirs = ranx_metrics(qrels, ranked, METRICS, KS)
    assert set(ours) == set(theirs)
    worst = max(abs(ours[name] - theirs[name]) for name in ours)
    assert worst <= TOLERANCE, {name: (ours[name], theirs[name]) for name in ours}
    return worst


EDGE_ROWS = {
    "graded": {"d1": 3, "d2": 1, "d3": 0, "d9": 2},
    "fewer-than-k": ["d1", "d4"],
    "nothing-relevant-retrieved": ["d7"],
    "empty-result": ["d2"],
    "no-relevant-docs": {"d1": 0},      # only grade 0: not a judged question
    "first-hit": ["d5"],
}
EDGE_RANKED = {
    "graded": ["d3", "d9", "d8", "d1", "d6", "d2", "d10", "d11", "d12", "d13"],
    "fewer-than-k": ["d4", "d5"],
    "nothing-relevant-retrieved": ["d1", "d2", "d3"],
    "empty-result": [],
    "no-relevant-docs": ["d1"],
    "first-hit": ["d5", "d6", "d7"],
}


def test_edge_cases_agree_with_ranx():
    _agree(_rows(EDGE_ROWS), EDGE_RANKED)


def test_random_graded_runs_agree_with_ranx():
    generator = random.Random(7)
    relevance, ranked = {}, {}
    for query in range(60):
        docs = [f"d{i}" for i in range(30)]
        relevance[f"q{query}"] = {doc: generator.choice([0, 1, 1, 2, 3]) for doc in generator.sample(docs, 6)}
        ranked[f"q{query}"] = generator.sample(docs, generator.randint(0, 12))
    assert _agree(_rows(relevance), ranked) <= TOLERANCE


def test_conventions_precision_over_k_graded_gain_and_unjudged_questions_left_out():
    rows = _rows({"a": ["d1", "d2"], "unjudged": {"d1": 0}})
    metrics = retrieval_metrics(qrels_of(rows), {"a": ["d1"], "unjudged": ["d1"]}, METRICS, [1, 5])
    assert metrics["precision@5"] == pytest.approx(1 / 5)  # one relevant among fewer than k: divided by k
    assert metrics["recall@5"] == pytest.approx(1 / 2)
    assert metrics["hit_rate@1"] == 1.0                      # the unjudged question is not a 0 in the mean
    graded = _rows({"g": {"hi": 3, "lo": 1}})
    # gain is the grade itself (trec_eval): the grade-1 document first loses to the ideal 3-then-1 order
    low_first = retrieval_metrics(qrels_of(graded), {"g": ["lo", "hi"]}, ["ndcg"], [2])["ndcg@2"]
    import math

    ideal = 3 + 1 / math.log2(3)
    assert low_first == pytest.approx((1 + 3 / math.log2(3)) / ideal, abs=TOLERANCE)
    assert retrieval_metrics({}, {}, METRICS, [1]) == {}


class ChunkIndex:
    """The search side of IndexVersion with fixed hits: several chunks of one document, as a real index returns."""

    def __init__(self, document_ids: list[str]):
        self.document_ids = document_ids

    def embed(self, texts):
        return [text for text in texts]

    def search(self, query, k):
        return [Hit(f"{doc}#c{i}", doc, 1.0 - i / 100, "", {}) for i, doc in enumerate(self.document_ids[:k])]


def test_chunks_of_one_document_count_once_at_their_best_rank():
    assert ranked_documents(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]
    index = ChunkIndex(["a", "a", "b", "a", "c"])
    ranked = retrieve(index, _rows({"q": ["b"]}), k=5)
    assert ranked == {"q": ["a", "b", "c"]}
    metrics = retrieval_metrics(qrels_of(_rows({"q": ["b"]})), ranked, ["mrr", "precision"], [3])
    assert metrics == {"mrr@3": 0.5, "precision@3": pytest.approx(1 / 3)}
    _agree(_rows({"q": ["b", "a"]}), ranked)
