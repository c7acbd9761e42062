"""The evaluation runner, comparison and ``eval`` command, end to end on small models.

- A scripted model (``ScriptedLM``) that answers known problems right or wrong checks grading
  and the records end to end, with exact expected accuracy.
- A sampler whose ``generate_batch`` counts prompts checks resuming: limit 2, then limit 4,
  makes only 2 new generations.
- The tiny random transformers model runs every method through the real backend, the
  comparison (table and PNG) and the CLI.
- Bad input: unknown task, empty or corrupt data, unusable output folders, mixed settings.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.backends.scripted import ScriptedLM
from power_sampling.evals import get_task
from power_sampling.evals.compare import compare, markdown_table
from power_sampling.evals.records import read_records
from power_sampling.evals.runner import SettingsMismatchError, evaluate
from power_sampling.testing import tiny_tokenizer

pytest.importorskip("transformers")

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"
# Tiny budgets for the tiny model: blocks of 4, K = M = 2 rollouts of 4 tokens, 8 new tokens.
TINY = PowerSamplingConfig(
    alpha=4.0,
    block_size=4,
    rollout_length=4,
    top_k=2,
    num_rollouts=2,
    num_candidates=2,
    mcmc_steps=1,
    best_of=2,
    max_new_tokens=8,
    seed=0,
)


def scripted_gsm8k(right: Sequence[int]) -> ScriptedLM:
    """Answers GSM8K problem i with its reference in ``\\boxed{}`` when i is in ``right``, else
    with a wrong number."""
    problems = get_task("gsm8k").load(8)

    def reply(prompt: str) -> str:
        for i, problem in enumerate(problems):
            if problem.question in prompt:
                answer = problem.reference if i in right else str(int(problem.reference) + 1)
                return f"Step by step... so the answer is \\boxed{{{answer}}}."
        return "I do not know."

    return ScriptedLM(tiny_tokenizer(), reply)


class CountingSampler(PowerSampler):
    """Counts the prompts sent to ``generate_batch``."""

    prompts = 0

    def generate_batch(self, prompts: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        type(self).prompts += len(prompts)
        return super().generate_batch(prompts, *args, **kwargs)


# -- records and grading, end to end ---------------------------------------------------------


def test_scripted_model_records_and_grades(tmp_path: Path) -> None:
    output = tmp_path / "gsm8k-power.jsonl"
    sampler = PowerSampler(scripted_gsm8k(right=[0, 2]), TINY.replace(max_new_tokens=64))
    result = evaluate(sampler, "gsm8k", limit=4, output=output, batch_size=3)

    lines = output.read_text().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert [r["correct"] for r in sorted(records, key=lambda r: r["index"])] == [
        True,
        False,
        True,
        False,
    ]
    first = min(records, key=lambda r: r["index"])
    problem = get_task("gsm8k").load(1)[0]
    assert first["id"] == problem.id == "gsm8k/0"
    assert first["extracted"] == first["reference"] == problem.reference
    assert "\\boxed{" in first["completion"]
    assert first["prompt"][0]["role"] == "user"  # the tokenizer has a chat template
    assert first["settings"]["chat"] is True
    assert first["settings"]["config"]["method"] == "power"
    assert first["settings"]["config"]["seed"] == 0
    assert first["completion_tokens"] > 0
    assert first["num_samples"] == 1 and "samples" not in first
    for key in ("candidate_tokens", "rollout_tokens", "wall_time", "seed", "settings_id"):
        assert key in first
    assert len({r["settings_id"] for r in records}) == 1

    summary = result.summary
    assert summary.pass_at_1 == 0.5
    assert summary.ci_low < 0.5 < summary.ci_high
    assert summary.problems == 4 and summary.extracted_rate == 1.0
    saved = json.loads((tmp_path / "gsm8k-power.summary.json").read_text())
    assert saved["pass_at_k"] == {"1": 0.5}
    assert saved["ci_method"].startswith("Wilson")


def test_raw_prompts_without_chat(tmp_path: Path) -> None:
    sampler = PowerSampler(scripted_gsm8k(right=[0]), TINY.replace(max_new_tokens=64))
    result = evaluate(sampler, "gsm8k", limit=1, chat=False)
    record = result.records[0]
    assert isinstance(record["prompt"], str) and record["prompt"].startswith("Question:")
    assert record["settings"]["stop"] == ["\n\nQuestion:"]
    assert record["correct"] is True


def test_resume_generates_only_new_problems(tmp_path: Path) -> None:
    """Limit 2, then limit 4 into the same file: only 2 more generations; then none."""
    output = tmp_path / "gsm8k-standard.jsonl"
    config = TINY.replace(method="standard", max_new_tokens=64)
    sampler = CountingSampler(scripted_gsm8k(right=[1, 3]), config)
    CountingSampler.prompts = 0
    first = evaluate(sampler, "gsm8k", limit=2, output=output)
    assert CountingSampler.prompts == 2 and first.generated == 2

    second = evaluate(sampler, "gsm8k", limit=4, output=output)
    assert CountingSampler.prompts == 4 and second.generated == 2
    assert [r["id"] for r in second.records] == [f"gsm8k/{i}" for i in range(4)]
    assert second.summary.pass_at_1 == 0.5
    assert len(output.read_text().splitlines()) == 4

    third = evaluate(sampler, "gsm8k", limit=3, output=output)
    assert CountingSampler.prompts == 4 and third.generated == 0
    assert third.summary.problems == 3


def test_an_interrupted_write_is_dropped_and_redone(tmp_path: Path) -> None:
    output = tmp_path / "records.jsonl"
    config = TINY.replace(method="standard", max_new_tokens=64)
    sampler = CountingSampler(scripted_gsm8k(right=[0, 1]), config)
    evaluate(sampler, "gsm8k", limit=2, output=output)
    lines = output.read_text().splitlines(keepends=True)
    output.write_text(lines[0] + lines[1][:40])  # killed while writing the second record

    CountingSampler.prompts = 0
    result = evaluate(sampler, "gsm8k", limit=2, output=output)
    assert CountingSampler.prompts == 1
    assert result.summary.pass_at_1 == 1.0
    assert len(read_records(output)) == 2


def test_samples_give_pass_at_k(tmp_path: Path) -> None:
    """3 samples of 2 problems: problem 0 right only in the 2nd sample, problem 1 never right.
    pass@1 = (1/3 + 0) / 2 = 1/6, pass@2 = (2/3 + 0) / 2 = 1/3, pass@3 = 1/2."""
    calls = {"n": 0}

    class OneRight(PowerSampler):
        def generate_batch(self, prompts: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
            out = super().generate_batch(prompts, *args, **kwargs)
            for g in out:  # units run problem by problem, sample by sample
                problem, sample = divmod(calls["n"], 3)
                g.text = "\\boxed{18}" if (problem, sample) == (0, 1) else "\\boxed{-1}"
                calls["n"] += 1
            return out

    sampler = OneRight(scripted_gsm8k(right=[]), TINY.replace(method="standard"))
    result = evaluate(sampler, "gsm8k", limit=2, samples=3, batch_size=4, output=tmp_path / "k")
    assert result.summary.pass_at_k == pytest.approx({1: 1 / 6, 2: 1 / 3, 3: 1 / 2})
    record = result.records[0]
    assert record["num_samples"] == 3 and record["num_correct"] == 1
    assert [s["correct"] for s in record["samples"]] == [False, True, False]
    second = result.records[1]["samples"]  # batches: (0/0, 0/1, 0/2, 1/0), (1/1, 1/2)
    assert record["samples"][0]["seed"] == second[0]["seed"] != second[1]["seed"]


# -- bad input ---------------------------------------------------------------------------------


def test_settings_are_never_mixed_in_one_file(tmp_path: Path) -> None:
    output = tmp_path / "gsm8k-power.jsonl"
    sampler = PowerSampler(scripted_gsm8k(right=[0]), TINY)
    evaluate(sampler, "gsm8k", limit=1, output=output)
    with pytest.raises(SettingsMismatchError, match=r"config\.alpha: 4\.0 in the file, 2\.0 now"):
        evaluate(sampler, "gsm8k", TINY.replace(alpha=2.0), limit=2, output=output)
    assert len(output.read_text().splitlines()) == 1


def test_corrupt_output_file_is_an_error(tmp_path: Path) -> None:
    output = tmp_path / "records.jsonl"
    output.write_text("not json\n{}\n")
    with pytest.raises(ValueError, match="line 1 is not an evaluation record"):
        evaluate(PowerSampler(scripted_gsm8k([]), TINY), "gsm8k", limit=1, output=output)


def test_unknown_task() -> None:
    expected = "unknown task 'gsm9k'; valid names are: arithmetic, gpqa, gsm8k"
    with pytest.raises(ValueError, match=expected):
        evaluate(PowerSampler(scripted_gsm8k([]), TINY), "gsm9k", limit=1)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ('{"question": "q", "answer": "#### 1"}\n{oops\n', "line 2 is not valid")],
)
def test_empty_or_corrupt_data_file(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(content)
    task = get_task("gsm8k", data_path=data)
    with pytest.raises(ValueError, match=message):
        evaluate(PowerSampler(scripted_gsm8k([]), TINY), task, limit=1)


def test_output_directory_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    sampler = PowerSampler(scripted_gsm8k([]), TINY)
    with pytest.raises(OSError, match=r"cannot create the output directory .*taken"):
        evaluate(sampler, "gsm8k", limit=1, output=blocker / "sub" / "r.jsonl")
    with pytest.raises(OSError, match="is a directory"):
        evaluate(sampler, "gsm8k", limit=1, output=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OSError, match="cannot read and write the output file"):
        evaluate(PowerSampler(scripted_gsm8k([]), TINY), "gsm8k", limit=1, output=locked / "r")


# -- every method on the tiny transformers model, the comparison -------------------------------


def test_compare_every_method_on_the_tiny_model(tmp_path: Path, tiny_backend: Any) -> None:
    sampler = CountingSampler(tiny_backend, TINY)
    CountingSampler.prompts = 0
    result = compare(sampler, "gsm8k", limit=2, output_dir=tmp_path, batch_size=2)
    methods = ["standard", "low_temperature", "best_of_n", "mcmc", "power"]
    assert [s.method for s in result.summaries] == methods
    assert CountingSampler.prompts == 2 * len(methods)
    for method, summary in zip(methods, result.summaries, strict=True):
        records = read_records(tmp_path / f"gsm8k-{method}.jsonl")
        assert [r["settings"]["config"]["method"] for r in records] == [method, method]
        assert all(0 < r["completion_tokens"] <= 8 for r in records)
        assert summary.latency_s > 0
    power = result.summaries[-1]
    assert power.rollout_tokens > 0 and power.candidate_tokens > 0
    summary_table, paired = result.table.split("Paired against", 1)
    assert summary_table.count("\n| ") == len(methods) + 1  # the header too
    # each method against power, then the three others against standard decoding
    assert "McNemar" in paired and len(result.paired) == len(methods) - 1 + 3
    assert [(c.method, c.reference) for c in result.paired[-3:]] == [
        ("low_temperature", "standard"),
        ("best_of_n", "standard"),
        ("mcmc", "standard"),
    ]
    assert "scalable power (alpha=4, K=2, M=2)" in result.table
    assert result.table_path.read_text().strip() == result.table
    assert result.plot_path is not None
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = compare(sampler, "gsm8k", limit=2, output_dir=tmp_path, batch_size=2)
    assert CountingSampler.prompts == 2 * len(methods)  # everything resumed from the files
    assert again.table == result.table and markdown_table(again.summaries) in result.table


# -- the CLI -----------------------------------------------------------------------------------


def tiny_flags(model_dir: Path, out: Path) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--output-dir",
        str(out),
        "--quiet",
        *("--block-size", "4", "--rollout-length", "4", "--top-k", "2", "--num-rollouts", "2"),
        *("--num-candidates", "2", "--mcmc-steps", "1", "--best-of", "2", "--max-new-tokens", "8"),
        *("--seed", "0"),
    ]


def test_cli_eval_and_compare(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from power_sampling.cli import main

    flags = tiny_flags(tiny_model_dir, tmp_path)
    assert main(["eval", "--task", "gsm8k", "--method", "power", "--limit", "2", *flags]) == 0
    out = capsys.readouterr().out
    assert "gsm8k / power" in out and "pass@1 0.000" in out
    assert len(read_records(tmp_path / "gsm8k-power.jsonl")) == 2

    argv = ["eval", "compare", "--task", "GSM8K", "--limit", "2", "--methods", "standard,power"]
    assert main([*argv, *flags]) == 0
    table = capsys.readouterr().out
    assert table.split("Paired against")[0].count("\n| ") == 3 and "standard (T=1)" in table
    assert (tmp_path / "gsm8k-compare.png").is_file()
    assert (tmp_path / "gsm8k-compare.md").read_text().strip() == table.strip()


def test_cli_registers_on_a_parent_parser() -> None:
    from power_sampling.cli.eval import add_parser as add_eval_parser

    parser = argparse.ArgumentParser(prog="power-sampling")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["eval", "compare", "--task", "mbpp", "--samples", "4", "--alpha", "2"]
    )
    assert (args.mode, args.task, args.samples, args.alpha) == ("compare", "mbpp", 4, 2.0)
    args = parser.parse_args(["eval", "--task", "gpqa", "--method", "mcmc", "--no-chat"])
    assert (args.mode, args.method, args.chat) == ("run", "mcmc", False)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--task", "gsm9k"], 2, "invalid choice: 'gsm9k'"),
        (["--task", "gsm8k", "--samples", "0"], 2, "--samples 0 is invalid"),
        (["--task", "gsm8k", "--alpha", "0"], 2, "alpha=0.0 is invalid"),
        (["compare", "--task", "gsm8k", "--methods", "power,magic"], 2, "--methods"),
        (["compare", "--task", "gsm8k", "--method", "power"], 2, "drop --method"),
        (["--task", "gsm8k", "--data", "/nonexistent.jsonl"], 2, "no such file"),
    ],
)
def test_cli_bad_input(
    argv: list[str], code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from power_sampling.cli import main

    try:
        status = main(["eval", *argv, "--output-dir", str(tmp_path / "out")])
    except SystemExit as exit:  # argparse's own errors
        status = int(exit.code or 0)
    assert status == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # rejected before anything was written


def test_cli_bad_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before the model loads (the model named here does not exist)."""
    from power_sampling.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["eval", "--task", "gsm8k", "--output-dir", str(blocker), "--model", "/nonexistent"]
    assert main(argv) == 1
    assert "cannot create the output directory" in capsys.readouterr().err


# -- the cookbook recipe -----------------------------------------------------------------------


def test_cookbook_recipe_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWER_SAMPLING_COOKBOOK_MODEL", "tiny")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(COOKBOOK / "06_evaluate.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "gsm8k / power" in out and "| method |" in out
    assert (tmp_path / "eval_results" / "cookbook" / "gsm8k-compare.png").is_file()
