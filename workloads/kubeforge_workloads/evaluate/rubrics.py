"""The built-in judge criteria: a 0-3 rubric and one few-shot example per score each, after Databricks' guidance
on LLM judges (an integer 0-3 scale is graded more consistently than 1-10; an example for every score anchors the
scale; correctness 60%, comprehensiveness 20%, readability 20% combine into one score; temperature 0.1).

The examples share one question so the judge sees what moves an answer from one score to the next.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    score: int
    question: str
    answer: str
    reasoning: str


@dataclass(frozen=True)
class Rubric:
    text: str
    examples: tuple[Example, ...]


QUESTION = "How does Kubeforge resume a fine-tuning run after a node fails?"

CORRECTNESS = Rubric(
    text=("Correctness: is the answer factually right, judged against the expected answer when one is given?\n"
          "3: every claim is correct and the answer agrees with the expected answer.\n"
          "2: mostly correct; a minor inaccuracy that would not mislead the reader.\n"
          "1: partly correct, but a significant claim is wrong or contradicts the expected answer.\n"
          "0: wrong, unrelated, or no answer."),
    examples=(
        Example(0, QUESTION, "It sends you an email and you restart the job by hand.",
                "Kubeforge restarts automatically from a checkpoint; the answer invents a manual process."),
        Example(1, QUESTION, "It starts the whole training again from step 0 on a new node.",
                "A new attempt is right, but restarting from step 0 contradicts resuming from the last checkpoint."),
        Example(2, QUESTION, "A new attempt starts and continues from the latest checkpoint it finds.",
                "Correct in substance; it omits that only checkpoints whose manifest was written count, a minor gap "
                "rather than an error."),
        Example(3, QUESTION, "A new attempt starts and resumes from the last committed checkpoint, one whose "
                "manifest was written last.",
                "Every claim matches the expected answer."),
    ))

COMPREHENSIVENESS = Rubric(
    text=("Comprehensiveness: does the answer cover every part of the question and the key points of the expected "
          "answer?\n"
          "3: covers every part and every key point.\n"
          "2: covers the main point but misses a secondary one.\n"
          "1: touches the question but misses its main point.\n"
          "0: covers none of it."),
    examples=(
        Example(0, QUESTION, "Kubeforge is a Kubernetes operator.",
                "True but answers nothing about resuming after a failure."),
        Example(1, QUESTION, "Something happens when a node fails.",
                "Acknowledges the situation without saying how the run continues."),
        Example(2, QUESTION, "It starts a new attempt that resumes from a checkpoint.",
                "The main point is there; which checkpoint counts (the committed one) is missing."),
        Example(3, QUESTION, "It starts a new attempt that resumes from the last committed checkpoint: one whose "
                "manifest was written after all of its files.",
                "Covers the new attempt, the resume, and what makes a checkpoint committed."),
    ))

READABILITY = Rubric(
    text=("Readability: is the answer clear, well organised and easy to follow, whatever its correctness?\n"
          "3: clear and concise; easy to follow.\n"
          "2: understandable, with some clumsy or redundant wording.\n"
          "1: hard to follow: rambling, disorganised or ungrammatical.\n"
          "0: unreadable or incoherent."),
    examples=(
        Example(0, QUESTION, "node fail attempt attempt checkpoint the the resume manifest ??",
                "A jumble of words without sentences."),
        Example(1, QUESTION, "So basically when the node, which is a machine, fails, which can happen, then there "
                "is, well, an attempt, a new one, and it kind of resumes, from something, a checkpoint probably.",
                "The content can be dug out, but the hedging and digressions make it hard to follow."),
        Example(2, QUESTION, "When a node fails a new attempt is started and the new attempt resumes, it resumes "
                "from the last checkpoint that was committed.",
                "Clear enough, but repetitive and run-on."),
        Example(3, QUESTION, "A new attempt starts and resumes from the last committed checkpoint.",
                "One clear, direct sentence."),
    ))

RELEVANCE = Rubric(
    text=("Relevance: does the answer address the question asked (and stay within the context it was given), "
          "without drifting to other topics?\n"
          "3: entirely about the question.\n"
          "2: about the question, with some unrelated material.\n"
          "1: mostly about something else, touching the question in passing.\n"
          "0: unrelated to the question."),
    examples=(
        Example(0, QUESTION, "LoRA adapters are small low-rank matrices added to attention layers.",
                "Accurate about something else entirely."),
        Example(1, QUESTION, "Kubeforge serves models with Ray Serve and autoscales replicas; failures are handled.",
                "Mostly about serving; the question is touched only by 'failures are handled'."),
        Example(2, QUESTION, "A new attempt resumes from the last committed checkpoint. Kubeforge also builds "
                "vector indexes and serves models.",
                "Answers the question, then drifts to unrelated features."),
        Example(3, QUESTION, "A new attempt resumes from the last committed checkpoint.",
                "Stays on the question."),
    ))

BUILTIN: dict[str, Rubric] = {"correctness": CORRECTNESS, "comprehensiveness": COMPREHENSIVENESS,
                              "readability": READABILITY, "relevance": RELEVANCE}
