"""04 · DSPy ChainOfThought on GSM8K: power sampling vs standard sampling.

One line makes any DSPy program power-sampled::

    dspy.configure(lm=power_lm(alpha=4, num_rollouts=8))

This recipe scores a ChainOfThought math program on a few GSM8K test questions (shipped with the
package) twice, with the same model: standard sampling (``method="standard"``: the base model at
temperature 1) and power sampling from p(x)^alpha. ``dspy.Evaluate`` runs the questions in 8
threads; the engine batches their requests into one sampler call per step.

- ``alpha``: how sharp the target p(x)^alpha is; 1 is the base model, the paper uses 4.
- The rollout budget: ``top_k`` candidates per step (K), ``num_rollouts`` look-ahead rollouts per
  candidate (M), each up to ``rollout_length`` tokens (H); a step decides ``block_size`` tokens.
  A step costs about K·M·H rollout tokens, so these set the price of the better answers.

Run ``python cookbook/04_dspy_chain_of_thought.py`` (the embedded SmolLM2-135M-Instruct; a few
minutes on a laptop CPU). ``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` runs a tiny random model on one
question instead (a smoke test: its text is gibberish, so DSPy cannot parse it).
"""

from __future__ import annotations

import os

import dspy

from power_sampling.evals.graders import grade_gsm8k
from power_sampling.evals.tasks import get_task
from power_sampling.integrations.dspy import power_lm

TINY = os.environ.get("POWER_SAMPLING_COOKBOOK_MODEL") == "tiny"
NUM_QUESTIONS = 1 if TINY else 4

# CPU-sized budgets; the paper uses top_k = num_rollouts = 8 and rollout_length = block_size = 192.
POWER = dict(alpha=4.0, top_k=4, num_rollouts=4, rollout_length=24, block_size=24, num_candidates=8)
MAX_NEW_TOKENS = 32 if TINY else 256


def load_backend():
    """One model for both LMs (``power_lm(model=None)`` would load the default model itself)."""
    if TINY:
        from power_sampling.backends import TransformersBackend
        from power_sampling.testing import tiny_chat_model

        return TransformersBackend.from_transformers(*tiny_chat_model(seed=0))
    from power_sampling.models import resolve_model

    return resolve_model(None)  # the embedded SmolLM2-135M-Instruct


class SolveMath(dspy.Signature):
    """Solve the grade-school math word problem. Think step by step."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the final answer: a number only")


def correct(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> bool:
    return grade_gsm8k(str(prediction.answer), example.answer).correct


def main() -> dict[str, float]:
    backend = load_backend()
    lms = {
        "standard": power_lm(backend=backend, method="standard", max_new_tokens=MAX_NEW_TOKENS),
        "power": power_lm(backend=backend, max_new_tokens=MAX_NEW_TOKENS, **POWER),
    }
    problems = get_task("gsm8k").load(limit=NUM_QUESTIONS)
    devset = [
        dspy.Example(question=p.question, answer=p.reference).with_inputs("question")
        for p in problems
    ]
    program = dspy.ChainOfThought(SolveMath)
    evaluate = dspy.Evaluate(
        devset=devset,
        metric=correct,
        num_threads=8,
        display_progress=not TINY,
        max_errors=len(devset) + 1,  # a parse failure scores 0 instead of stopping the run
    )
    scores = {}
    for label, lm in lms.items():
        with dspy.context(lm=lm):
            scores[label] = evaluate(program).score
        tokens = sum(entry["usage"].get("completion_tokens") or 0 for entry in lm.history)
        print(f"{label:>8}: {scores[label]:5.1f}% correct, {tokens} answer tokens  ({lm.model})")
    return scores


if __name__ == "__main__":
    main()
