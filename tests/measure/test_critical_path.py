"""Sequential model steps (the critical path), ignore-EOS, and ``random:<architecture>`` models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.backends import IgnoreEOS, StopCondition, TableLM, TextBackend
from power_sampling.backends.random_models import ARCHITECTURES, random_backend
from power_sampling.measure.bench import (
    RecordingBackend,
    expected_sequential_steps,
    run_bench,
    token_prompts,
)

SMALL = dict(
    block_size=4,
    rollout_length=4,
    num_candidates=4,
    top_k=2,
    num_rollouts=2,
    max_new_tokens=12,
    mcmc_steps=3,
    num_particles=4,
    resample_interval=5,
)


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return random_backend("random:tiny")


def test_the_backend_counts_its_model_runs(tiny) -> None:  # type: ignore[no-untyped-def]
    prefix = [5, 6, 7, 8]
    out = tiny.sample([prefix], 3, 5, seed=0, stop=StopCondition())
    # One prefill gives the first token; each further token needs one step for all three rows.
    assert out.sequential_steps == 5
    assert out.forward_tokens == len(prefix) + 3 * 4
    kept = tiny.sample([prefix], 1, 5, seed=0, stop=StopCondition(), keep_cache=True)
    assert kept.sequential_steps == 6  # the kept row also runs its last token
    assert tiny.top_k([[9, 9, 9]], 3).sequential_steps == 1
    extended = prefix + list(kept.continuations[0][0].token_ids)
    assert tiny.top_k([extended], 3).sequential_steps == 0  # already run, kept


def test_critical_paths_follow_the_algorithms(tiny) -> None:  # type: ignore[no-untyped-def]
    config = PowerSamplingConfig(**SMALL)
    sampler = PowerSampler(IgnoreEOS(tiny), config)
    prompt = token_prompts(tiny, 1)[0]
    tokens = SMALL["max_new_tokens"]
    for method in ("standard", "power", "smc"):
        out = sampler.generate(prompt, seed=1, method=method)
        assert len(out.token_ids) == tokens
        assert out.stats.sequential_steps == expected_sequential_steps(config, method, tokens)
    # MCMC's cut points are random: its mean over seeds against the expectation, within four
    # standard errors (each proposal's run count is uniform on 1..length).
    seeds = 10
    counts = [
        sampler.generate(prompt, seed=s, method="mcmc").stats.sequential_steps for s in range(seeds)
    ]
    lengths = [4, 8, 12]
    variance = SMALL["mcmc_steps"] * sum((n * n - 1) / 12 for n in lengths)
    expected = expected_sequential_steps(config, "mcmc", tokens)
    assert abs(np.mean(counts) - expected) < 4 * math.sqrt(variance / seeds)


def test_ignore_eos_runs_to_full_length_with_the_model_log_probs() -> None:
    # End token 0 has probability 1/2 after every prefix.
    table = TableLM(lambda prefix: [0.5, 0.25, 0.25], eos_token_id=0)
    plain = PowerSampler(table, method="standard", block_size=2)
    ended = [plain.generate([1], max_new_tokens=10, seed=s) for s in range(10)]
    assert sum(g.finish_reason == "stop" for g in ended) >= 9  # 1 - 10 / 2**10 expected
    sampler = PowerSampler(IgnoreEOS(table), method="standard", block_size=2)
    assert sampler.backend.vocab_size == 3 and sampler.backend.name == "table"
    for seed in range(10):
        out = sampler.generate([1], max_new_tokens=10, seed=seed)
        assert len(out.token_ids) == 10 and out.finish_reason == "length"
        expected = sum(math.log(0.5 if t == 0 else 0.25) for t in out.token_ids)
        assert out.logprob == pytest.approx(expected)
    # A stop token the caller asks for still ends the sequence.
    asked = sampler.generate([1], max_new_tokens=10, seed=0, stop_token_ids=[0, 1, 2])
    assert asked.finish_reason == "stop" and len(asked.token_ids) == 1
    with pytest.raises(TypeError, match="IgnoreEOS wraps"):
        IgnoreEOS("model")  # type: ignore[arg-type]


def test_random_models(tiny) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    assert not isinstance(tiny, TextBackend)  # token ids only: nothing to download
    again = random_backend("random:tiny")
    first = tiny.top_k([[1, 2, 3]], 5).entries[0]
    assert again.top_k([[1, 2, 3]], 5).entries[0] == first  # the name fixes the weights
    assert len(set(first.token_ids)) == 5
    with pytest.raises(ValueError, match=r"unknown random model 'random:gpt5'.*random:tiny"):
        random_backend("random:gpt5")
    # The 7B shape, built without memory: Qwen2.5-7B has 7,615,616,512 parameters.
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**ARCHITECTURES["qwen2.5-7b"]))
    assert sum(p.numel() for p in model.parameters()) == 7_615_616_512


def test_bench_reports_sequential_steps(tiny) -> None:  # type: ignore[no-untyped-def]
    sampler = PowerSampler(tiny, PowerSamplingConfig(**SMALL))
    report = run_bench(sampler, token_prompts(tiny, 1), options=False, ignore_eos=True)
    steps = {name: r["sequential_steps_per_generation"] for name, r in report["methods"].items()}
    assert report["sequential_steps_ratio_mcmc_vs_power"] == pytest.approx(
        steps["mcmc"] / steps["power"]
    )
    assert steps["standard"] == report["expected_sequential_steps"]["standard"] == 13
    assert steps["power"] == report["expected_sequential_steps"]["power"]
    assert steps["smc"] == report["expected_sequential_steps"]["smc"] == 13
    assert report["vs_standard"]["smc"]["sequential_steps"] == pytest.approx(1.0)
    assert all(r["completion_tokens"] == 12 for r in report["methods"].values())


def test_bench_command_on_a_random_model(tmp_path: Path) -> None:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "mcmc_steps"]
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "power_sampling.cli", "bench", "--model", "random:tiny",
         "--prompts", "1", "--no-options", "--no-replay", "--json-out", str(out), *flags],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "critical path: MCMC takes" in result.stdout
    report = json.loads(out.read_text())
    assert report["ignore_eos"] is True  # random models always run to full length
    assert report["settings"]["mcmc_steps"] == 10  # the paper's chain unless --mcmc-steps
    assert report["sequential_steps_ratio_mcmc_vs_power"] > 1
    assert "efficiency" not in report


def test_the_reuse_fast_path_is_one_rollout_phase_per_block(tiny) -> None:  # type: ignore[no-untyped-def]
    # L = M: after the first block the chosen block's kept rollouts are all the candidates.
    config = PowerSamplingConfig(**{**SMALL, "num_candidates": 2, "reuse_rollouts": True})
    recorder = RecordingBackend(IgnoreEOS(tiny))
    out = PowerSampler(recorder, config).generate(token_prompts(tiny, 1)[0], seed=0)
    assert len(out.token_ids) == SMALL["max_new_tokens"]
    # One candidate call (the first block), one rollout call per later block but the last.
    assert len(recorder.calls) == 1 + 2
    assert out.stats.sequential_steps == expected_sequential_steps(config, "power", 12) == 13
    paper = PowerSamplingConfig(**SMALL)
    assert expected_sequential_steps(paper, "power", 12) == 19  # candidates + rollouts


def test_the_prepared_gpu_script_runs_on_a_cpu(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "gpu" / "paper_bench.py"
    small = {**SMALL, "num_candidates": 4}
    sets = [f"--set={k}={v}" for k, v in small.items() if k != "max_new_tokens"]
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, str(script), "--model", "random:tiny", "--device", "cpu",
         "--tokens", "12", "--batch", "2", "--json-out", str(out), *sets],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    rows = {(r["method"], r["prompts"]): r for r in report["rows"]}
    methods = ("standard", "power", "power+fast", "smc")
    assert set(rows) == {(m, b) for m in methods for b in (1, 2)} | {("mcmc", 1)}
    for (method, _), row in rows.items():
        assert row["completion_tokens"] == 12 * row["prompts"]
        if method != "mcmc":
            assert row["sequential_steps"] == row["expected_steps"]
    assert rows[("power+fast", 1)]["steps_at_3072"] == 3073  # = standard decoding's
    assert rows[("smc", 2)]["steps_at_3072"] == 3073
    assert "mcmc / power: sequential_steps" in report["ratios"]["batch 1"]
    assert "| power+fast | 2 |" in result.stdout
