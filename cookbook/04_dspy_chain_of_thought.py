"""04 · DSPy ChainOfThought on GSM8K: power sampling vs standard sampling.

One line makes any DSPy program power-sampled::

    dspy.configure(lm=power_lm(alpha=4, num_rollouts=8))

This recipe scores a ChainOfThought math program on a few GSM8K test questions (shipped with the
package) twice, with the same model: standard sampling (``method="standard"``: the base model at
temperature 1) and power sampling from p(x)^alpha. ``Module.batch`` runs the questions in 8
threads (as ``dspy.Evaluate`` does); the engine batches their requests into one sampler call per
step.

- ``alpha``: how sharp the target p(x)^alpha is; 1 is the base model, the paper uses 4.
- The rollout budget: ``top_k`` candidates per step (K), ``num_rollouts`` look-ahead rollouts per
  candidate (M), each up to ``rollout_length`` tokens (H); a step decides ``block_size`` tokens.
  A step costs about K·M·H rollout tokens, so these set the price of the better answers.

Run ``python cookbook/04_dspy_chain_of_thought.py`` (the embedded SmolLM2-135M-Instruct; a few
minutes on a laptop CPU). Expect little from a 135M model: it solves about 1 GSM8K problem in 20.
The recipe uses ``dspy.JSONAdapter``: the engine constrains each reply to the JSON schema of the
output fields, so replies parse (with ``ChatAdapter``'s text fields a 135M model often broke the
format). For a real comparison, load a stronger model in
``load_backend`` (e.g. ``resolve_model("Qwen/Qwen2.5-1.5B-Instruct")``), use more questions and
the paper's budgets, ideally on a GPU. ``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` runs a tiny random
model on one question instead (a smoke test: its JSON strings are gibberish that runs past the
token limit).
"""

from __future__ import annotations

import os

import dspy
from dspy.utils.exceptions import AdapterParseError

from power_sampling.evals.graders import grade_gsm8k
from power_sampling.evals.tasks import get_task
from power_sampling.integrations.dspy import power_lm

TINY = os.environ.get("POWER_SAMPLING_COOKBOOK_MODEL") == "tiny"
NUM_QUESTIONS = 1 if TINY else 3
MAX_NEW_TOKENS = 24 if TINY else 192


def load_backend():
    """One model for both LMs (``power_lm(model=None)`` would load the default model itself)."""
    if TINY:
        from power_sampling.backends import TransformersBackend
        from power_sampling.testing import tiny_chat_model

        return TransformersBackend.from_transformers(*tiny_chat_model(seed=0))
    from power_sampling.backends.models import resolve_model

    return resolve_model(None)  # the embedded SmolLM2-135M-Instruct


class SolveMath(dspy.Signature):
    """Solve the grade-school math word problem. Think step by step."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the final answer: a number only")


class Solver(dspy.Module):
    """ChainOfThought; a reply DSPy cannot parse (small models break the format) scores 0."""

    def __init__(self) -> None:
        super().__init__()
        self.solve = dspy.ChainOfThought(SolveMath)

    def forward(self, question: str) -> dspy.Prediction:
        try:
            return self.solve(question=question)
        except AdapterParseError:
            return dspy.Prediction(reasoning="", answer="(unparseable reply)")


def main() -> dict[str, int]:
    backend = load_backend()
    lms = {
        # The baseline: the same engine with method="standard" samples the base model at T = 1.
        "standard": power_lm(backend=backend, method="standard", max_new_tokens=MAX_NEW_TOKENS),
        # Power sampling with the "cpu" preset's small budgets (PowerSamplingConfig.preset("cpu")).
        "power": power_lm(backend=backend, preset="cpu", max_new_tokens=MAX_NEW_TOKENS),
    }
    problems = get_task("gsm8k").load(limit=NUM_QUESTIONS)
    examples = [dspy.Example(question=p.question).with_inputs("question") for p in problems]
    # JSONAdapter sends the output fields' JSON schema, and the engine constrains the reply to it,
    # so even a 135M model's replies parse (unless max_new_tokens cuts the reasoning short).
    adapter = dspy.JSONAdapter()
    scores = {}
    for label, lm in lms.items():
        with dspy.context(lm=lm, adapter=adapter):
            # 8 threads: the engine batches their requests into one sampler call per step.
            # timeout=0: DSPy re-submits calls slower than 120 s, which a CPU model can be.
            predictions = Solver().batch(examples, num_threads=8, timeout=0)
        scores[label] = sum(
            grade_gsm8k(str(prediction.answer), problem.reference).correct
            for prediction, problem in zip(predictions, problems, strict=True)
        )
        tokens = sum(entry["usage"].get("completion_tokens") or 0 for entry in lm.history)
        print(f"{label:>8}: {scores[label]}/{len(problems)} correct, {tokens} answer tokens")
        print(f"          {lm.model}")
        print(f"          first answer: {predictions[0].answer!r}")
    return scores


if __name__ == "__main__":
    main()
