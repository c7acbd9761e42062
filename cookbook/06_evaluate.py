"""06 · Evaluate sampling methods on a benchmark and compare them.

``evaluate`` runs one method over a benchmark and writes one JSONL record per problem (prompt,
completion, extracted answer, correct, tokens, time, seed, settings); run it again and it resumes
where it stopped. ``compare`` does that for several methods on the same problems and writes a
markdown table plus a plot of accuracy against latency::

    from power_sampling.evals.compare import compare
    result = compare(sampler, "gsm8k", limit=20, output_dir="eval_results")
    print(result.table)

The same from the command line: ``power-sampling eval compare --task gsm8k --limit 20 --preset
cpu``. Methods: standard (temperature 1), low temperature (1/alpha), best-of-N by base
log-likelihood, MCMC power sampling (Karan & Du) and scalable power sampling.

Run ``python cookbook/06_evaluate.py`` (the embedded SmolLM2-135M-Instruct on 4 GSM8K problems
with CPU-sized budgets: a few minutes on 2 CPU cores). Files go to ``eval_results/cookbook/``.
``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` runs a tiny random model instead (a smoke test: it
answers nothing right).
"""

from __future__ import annotations

import os
from pathlib import Path

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.evals.compare import compare
from power_sampling.evals.runner import evaluate

TINY = os.environ.get("POWER_SAMPLING_COOKBOOK_MODEL") == "tiny"
OUTPUT = Path("eval_results") / "cookbook"

# The cpu preset: alpha 4, blocks of 16 tokens, K = M = 4 rollouts of 16 tokens, 160 new tokens.
# The paper's setting is PowerSamplingConfig.preset("paper") on a GPU (README, "Evaluation").
CONFIG = PowerSamplingConfig.preset("cpu", seed=0)
if TINY:
    CONFIG = CONFIG.replace(max_new_tokens=8, block_size=4, rollout_length=4, best_of=2)


def make_sampler() -> PowerSampler:
    if TINY:
        from power_sampling.backends.transformers import TransformersBackend
        from power_sampling.testing import tiny_chat_model

        return PowerSampler(TransformersBackend.from_transformers(*tiny_chat_model(0)), CONFIG)
    return PowerSampler(None, CONFIG)  # the embedded default model


def main() -> None:
    sampler = make_sampler()
    limit = 2 if TINY else 4

    # One method: records in OUTPUT/gsm8k-power.jsonl, a summary next to them.
    result = evaluate(sampler, "gsm8k", limit=limit, output=OUTPUT / "gsm8k-power.jsonl")
    print(result.summary.format())
    first = result.records[0]
    print(f"\nFirst problem: extracted {first['extracted']!r}, reference {first['reference']!r}")

    # Several methods on the same problems; the power run above is reused, not redone.
    methods = ["standard", "low_temperature", "power"] + (["best_of_n", "mcmc"] if TINY else [])
    comparison = compare(sampler, "gsm8k", methods=methods, limit=limit, output_dir=OUTPUT)
    print("\n" + comparison.table)
    print(f"\nTable: {comparison.table_path}\nPlot: {comparison.plot_path}")


if __name__ == "__main__":
    main()
