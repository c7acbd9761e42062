"""`power-sampling bench` end to end on a tiny in-process model, with fast settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from power_sampling import PowerSampler
from power_sampling.backends import TransformersBackend
from power_sampling.measure.bench import RecordingBackend, markdown, replay_with_generate, run_bench
from power_sampling.testing import tiny_chat_model

FAST = dict(
    block_size=4,
    rollout_length=4,
    num_candidates=4,
    top_k=2,
    num_rollouts=2,
    max_new_tokens=8,
    mcmc_steps=2,
    num_particles=4,
)


@pytest.fixture(scope="module")
def report() -> dict:
    model, tokenizer = tiny_chat_model()
    sampler = PowerSampler(TransformersBackend.from_transformers(model, tokenizer), **FAST)
    return run_bench(sampler, ["What is 2 + 3?", "Name a colour."], samples=2)


def test_report_has_every_measurement(report: dict) -> None:
    options = {"power+adaptive", "power+reuse", "power+fast"}
    assert set(report["methods"]) == {"standard", "power", "mcmc", "smc", *options}
    assert set(report["vs_standard"]) == set(report["methods"])
    assert report["vs_standard"]["standard"] == {
        "sequential_steps": 1.0,
        "forward_tokens": 1.0,
        "wall_time": 1.0,
    }
    for result in report["methods"].values():
        assert result["prompts"] == 2 and result["samples"] == 2
        assert result["wall_time_per_prompt"] > 0 and result["wall_time_per_token"] > 0
        assert result["loglik_stderr"] > 0  # four generations with different seeds
        assert result["forward_tokens"] > 0
        assert result["loglik_per_token"] < 0
    for option in report["options"].values():
        assert option["loglik_delta_stderr"] > 0 and option["speedup_vs_mcmc"] > 0
        assert option["forward_tokens_per_token_ratio"] > 0 and option["time_per_token_ratio"] > 0
    # "power" is the paper's algorithm; each option runs alone on top of it.
    settings = {name: r["settings"] for name, r in report["methods"].items()}
    assert settings["power"]["adaptive_tolerance"] == 0 and not settings["power"]["reuse_rollouts"]
    assert settings["power+adaptive"]["adaptive_tolerance"] > 0
    assert not settings["power+adaptive"]["reuse_rollouts"]
    assert settings["power+reuse"]["reuse_rollouts"]
    assert settings["power+reuse"]["adaptive_tolerance"] == 0
    assert settings["power+fast"]["reuse_rollouts"]
    assert settings["power+fast"]["num_candidates"] == FAST["num_rollouts"]
    for key in (
        "speedup_vs_mcmc",
        "speedup_vs_mcmc_per_token",
        "loglik_gain_vs_mcmc",
        "overhead_vs_standard",
        "peak_memory_mb",
    ):
        assert isinstance(report[key], float)
    efficiency = report["efficiency"]
    assert efficiency["sampler_tokens_per_s"] > 0 and efficiency["generate_tokens_per_s"] > 0
    assert 0 < efficiency["backend_time_share"] <= 1
    assert efficiency["ratio"] == pytest.approx(
        efficiency["sampler_tokens_per_s"] / efficiency["generate_tokens_per_s"]
    )
    # Power sampling runs rollouts, so it costs more forward tokens than standard decoding.
    assert (
        report["methods"]["power"]["forward_tokens"]
        > report["methods"]["standard"]["forward_tokens"]
    )
    assert "| power |" in markdown(report)


def test_the_recorded_calls_are_the_sampler_work_and_replay_in_full() -> None:
    model, tokenizer = tiny_chat_model()
    recorder = RecordingBackend(TransformersBackend.from_transformers(model, tokenizer))
    generation = PowerSampler(recorder, **FAST).generate("What is 2 + 3?", seed=0)
    drawn = generation.stats.candidate_tokens + generation.stats.rollout_tokens
    assert sum(call.drawn for call in recorder.calls) == drawn > 0
    # Block mode: per step one candidate call (L blocks of B) and at most one rollout call.
    assert len(recorder.calls[0].prefixes) * recorder.calls[0].n == FAST["num_candidates"]
    assert recorder.calls[0].new_tokens == FAST["block_size"]
    assert all(call.seconds > 0 for call in recorder.calls)
    seconds, tokens = replay_with_generate(recorder, recorder.calls)
    assert seconds > 0
    assert tokens == sum(len(c.prefixes) * c.n * c.new_tokens for c in recorder.calls)


def test_bench_command_writes_json(tmp_path: Path) -> None:
    model, tokenizer = tiny_chat_model()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "power_sampling.cli", "bench", "--model", str(tmp_path / "tiny"),
         "--prompts", "1", "--samples", "1", "--no-options", "--json-out", str(out),
         "--prompt-lengths", "64,16", *flags],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "power vs MCMC" in result.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["block_size"] == 4
    assert set(report["methods"]) == {"standard", "power", "mcmc", "smc"}
    assert "| smc |" in result.stdout
    memory = report["memory_by_prompt_length"]
    assert "Peak memory growth" in result.stdout
    for rows in memory["methods"].values():  # standard, power and mcmc, shortest prompt first
        assert [r["prompt_tokens"] for r in rows] == [16, 64]
        assert all(r["peak_memory_mb"] >= 0 and r["seconds"] > 0 for r in rows)
    assert set(memory["methods"]) == {"standard", "power", "mcmc"}
    assert memory["kv_bytes_per_token"] == 2 * 2 * 2 * 8 * 4  # layers, k/v, heads, dims, float32


@pytest.mark.parametrize("quiet", [False, True])
def test_bench_shows_progress_per_method_on_a_terminal_unless_quiet(
    quiet: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from power_sampling.cli import main

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as on a terminal
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    argv = ["bench", "--model", "random:tiny", "--prompts", "2", "--no-options", "--no-replay"]
    assert main([*argv, *flags, *(["-q"] if quiet else [])]) == 0
    out, err = capsys.readouterr()
    assert "power vs MCMC" in out
    if quiet:
        assert err == ""
    else:  # one bar per method, counting its prompts' generations
        for method in ("standard", "power", "mcmc", "smc"):
            assert f"{method}: 100%" in err and "2/2" in err


def test_no_progress_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from power_sampling.cli import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    argv = ["bench", "--model", "random:tiny", "--prompts", "1", "--no-options", "--no-replay"]
    assert main([*argv, *flags]) == 0
    assert capsys.readouterr().err == ""


def test_bench_concurrency_reports_load_and_plots(tmp_path: Path) -> None:
    from power_sampling.cli import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    out, plot = tmp_path / "load.json", tmp_path / "load.png"
    argv = ["bench", "--model", "random:tiny", "--concurrency", "1,4", "--json-out", str(out)]
    assert main([*argv, "--plot", str(plot), "--max-new-tokens", "8", *flags]) == 0
    report = json.loads(out.read_text())
    points = {(p["method"], p["concurrency"]): p for p in report["load"]}
    assert set(points) == {(m, c) for m in ("standard", "power") for c in (1, 4)}
    for method in ("standard", "power"):  # four requests' calls merged: fewer than 4x one's
        alone, together = points[method, 1], points[method, 4]
        assert together["requests"] == 4 and together["completion_tokens"] > 0
        assert together["backend_calls"] < 4 * alone["backend_calls"]
    assert report["short_behind_long"]["short_latency"] > 0
    assert plot.stat().st_size > 0


def test_load_without_merging_reports_no_merged_calls(tiny_backend: Any) -> None:
    from power_sampling import PowerSamplingConfig
    from power_sampling.measure.concurrency import load_markdown, run_load

    configs = {"standard": PowerSamplingConfig(method="standard", max_new_tokens=4)}
    merged, unmerged = (
        run_load(tiny_backend, configs, ["Hi"], [2], merge=merge)[-1] for merge in (True, False)
    )
    assert merged.backend_calls is not None and merged.backend_calls > 0
    assert unmerged.backend_calls is None and unmerged.completion_tokens == 4 + 2
    assert load_markdown([unmerged]).splitlines()[-1].endswith("| — |")


def test_plot_without_matplotlib_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from power_sampling.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    argv = ["bench", "--model", "random:tiny", "--concurrency", "1", "--plot", "load.png"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "power-sampling[eval]" in err
