"""Run a sampler over a benchmark: one JSONL record per problem, resumable, plus a summary.

    sampler = PowerSampler(None, PowerSamplingConfig.preset("cpu", seed=0))
    result = evaluate(sampler, "gsm8k", limit=20, output="eval_results/gsm8k-power.jsonl")
    print(result.summary.format())

Steps, in order:

1. Load the first ``limit`` problems and build their prompts: the task's chat prompt when the
   model's tokenizer has a chat template (``chat=None``), else the raw prompt, which stops at the
   task's stop strings.
2. Read the output file if it exists. Records made with the same settings are kept and their
   problems skipped; a record with other settings stops the run (one file never mixes settings).
   A last line cut off by an interruption is dropped.
3. Generate the rest in batches of ``batch_size`` (problem, sample) pairs with one
   ``generate_batch`` call each, grade them in a thread pool, and append one record per finished
   problem, flushed and fsynced, so an interrupted run loses at most the batch in flight.
4. Summarise the requested problems: pass@1..n with the unbiased estimator, a Wilson interval for
   pass@1, mean latency and tokens.

Seeds: the run seed is ``config.seed`` (0 when None, so runs repeat). Each ``generate_batch`` call
gets a seed derived from the run seed and its first (problem, sample) pair, recorded with every
sample. Prompts in one call share a random stream, so a sample repeats exactly only when its
batch is made up the same way (same ``batch_size`` and resume points).

Longer than most modules because these steps share one record format and one resume rule; the
grading itself is in :mod:`.tasks` and :mod:`.graders`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..backends.base import Backend
from ..config import PowerSamplingConfig
from ..samplers.power_sampler import PowerSampler
from .graders import GradeResult
from .tasks import Problem, Task, choice_seed, get_task

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1
"""Version of the record layout; part of the settings, so old files are never mixed in."""
CONFIDENCE = 0.95
_Z = 1.959963984540054  # standard normal quantile at 0.975: a two-sided 95% interval
CI_METHOD = "Wilson score interval (95%) over problems"


class SettingsMismatchError(ValueError):
    """The output file holds records made with other settings."""


# -- statistics --------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples (Chen et al. 2021).

    pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn without replacement from the
    n include a correct one. The binomials overflow for large n, so the ratio is computed as the
    product prod_{i=n-c+1}^{n} (1 - k/i), which equals C(n-c, k) / C(n, k).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def wilson_interval(p: float, n: int, z: float = _Z) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials (95% by default).

    With several samples per problem, ``p`` is the mean per-problem pass@1 and ``n`` the number of
    problems; per-problem scores in [0, 1] have variance at most p(1-p), so it is conservative.
    """
    if n <= 0:
        return (0.0, 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


# -- summary -----------------------------------------------------------------------------------


@dataclass
class EvalSummary:
    """The aggregate of one evaluation (one task, one method, one set of settings)."""

    task: str
    method: str
    model: str
    problems: int
    samples: int
    """Samples per problem (n)."""
    pass_at_k: dict[int, float]
    """pass@k for k = 1..n, averaged over problems (unbiased estimator)."""
    ci_low: float
    ci_high: float
    """Bounds of the :data:`CI_METHOD` interval for pass@1."""
    latency_s: float
    """Mean over generations of the time from the start of their batch until they finished."""
    seconds_per_problem: float
    """Generation wall time per problem: each batch's time shared evenly among its samples."""
    completion_tokens: float
    candidate_tokens: float
    rollout_tokens: float
    forward_tokens: float
    """Means per generation: tokens kept, candidate and rollout tokens drawn, positions run."""
    extracted_rate: float
    """Fraction of generations the grader could extract an answer from."""
    truncated_rate: float
    """Fraction of generations that hit ``max_new_tokens``."""
    settings: dict[str, Any] = field(default_factory=dict)
    settings_id: str = ""
    output: str | None = None
    ci_method: str = CI_METHOD

    @property
    def pass_at_1(self) -> float:
        return self.pass_at_k[1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return out

    def format(self) -> str:
        """A few lines for a terminal."""
        ks = ", ".join(f"pass@{k} {v:.3f}" for k, v in self.pass_at_k.items() if k > 1)
        lines = [
            f"{self.task} / {self.method} on {self.model}: {self.problems} problems, "
            f"{self.samples} sample(s) each",
            f"  pass@1 {self.pass_at_1:.3f}  [{self.ci_low:.3f}, {self.ci_high:.3f}] "
            f"({self.ci_method})" + (f"; {ks}" if ks else ""),
            f"  latency {self.latency_s:.2f} s, {self.seconds_per_problem:.2f} s / problem; "
            f"tokens per generation: {self.completion_tokens:.0f} completion, "
            f"{self.candidate_tokens:.0f} candidate, {self.rollout_tokens:.0f} rollout",
            f"  answer extracted {self.extracted_rate:.0%}, cut at max_new_tokens "
            f"{self.truncated_rate:.0%}",
        ]
        if self.output:
            lines.append(f"  records: {self.output}")
        return "\n".join(lines)


def record_samples(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-sample entries of a record (the record itself when it holds one sample)."""
    return list(record.get("samples") or [record])


def summarize(
    records: Sequence[dict[str, Any]],
    *,
    task: str,
    method: str,
    model: str,
    settings: dict[str, Any] | None = None,
    settings_id: str = "",
    output: str | None = None,
) -> EvalSummary:
    """Aggregate records (all with the same number of samples) into an :class:`EvalSummary`."""
    if not records:
        raise ValueError("no records to summarize")
    n = int(records[0]["num_samples"])
    if any(int(r["num_samples"]) != n for r in records):
        raise ValueError("records have different numbers of samples; summarize them separately")
    scores = {
        k: sum(pass_at_k(n, int(r["num_correct"]), k) for r in records) / len(records)
        for k in range(1, n + 1)
    }
    low, high = wilson_interval(scores[1], len(records))
    samples = [s for r in records for s in record_samples(r)]

    def mean(key: str) -> float:
        return sum(float(s.get(key) or 0) for s in samples) / len(samples)

    return EvalSummary(
        task=task,
        method=method,
        model=model,
        problems=len(records),
        samples=n,
        pass_at_k=scores,
        ci_low=low,
        ci_high=high,
        latency_s=mean("wall_time"),
        seconds_per_problem=mean("time_share") * n,
        completion_tokens=mean("completion_tokens"),
        candidate_tokens=mean("candidate_tokens"),
        rollout_tokens=mean("rollout_tokens"),
        forward_tokens=mean("forward_tokens"),
        extracted_rate=sum(s.get("extracted") is not None for s in samples) / len(samples),
        truncated_rate=sum(s.get("finish_reason") == "length" for s in samples) / len(samples),
        settings=dict(settings or {}),
        settings_id=settings_id,
        output=output,
    )


# -- the output file ---------------------------------------------------------------------------


def settings_id(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that decide the records' content."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_output(path: str | Path) -> Path:
    """Create the output file's folder and check that the file can be read and appended to.

    Raises an ``OSError`` whose message names the path and the fix.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create the output directory {folder}: {exc.strerror or exc}; "
            "choose another --output-dir"
        ) from None
    if not folder.is_dir():
        raise NotADirectoryError(f"the output directory {folder} is not a directory")
    if path.is_dir():
        raise IsADirectoryError(f"the output file {path} is a directory; remove it or rename it")
    try:
        with open(path, "a", encoding="utf-8"):
            pass
        if path.stat().st_size:
            with open(path, "rb") as handle:
                handle.read(1)
    except OSError as exc:
        raise OSError(
            f"cannot read and write the output file {path}: {exc.strerror or exc}; "
            "fix its permissions or choose another --output-dir"
        ) from None
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of an output file. A last line cut off mid-write is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "id" not in record or "settings_id" not in record:
                raise ValueError("not a record")
        except ValueError:
            if number == len(lines) and not data.endswith(b"\n"):
                # The run was interrupted while writing this line: drop it and redo the problem.
                logger.warning("%s: dropping an incomplete last line (interrupted write)", path)
                with open(path, "r+b") as handle:
                    handle.truncate(len(data) - len(line))
                break
            raise ValueError(
                f"{path}: line {number} is not an evaluation record; the file is corrupt or not "
                "an output of power-sampling eval: move it away or choose another --output-dir"
            ) from None
        records.append(record)
    return records


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_settings(
    path: Path, records: Iterable[dict[str, Any]], settings: dict, sid: str
) -> None:
    for record in records:
        if record["settings_id"] == sid:
            continue
        old, new = _flatten(record.get("settings") or {}), _flatten(settings)
        diffs = [
            f"{key}: {old.get(key)!r} in the file, {new.get(key)!r} now"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
        raise SettingsMismatchError(
            f"{path} holds records made with other settings ({'; '.join(diffs) or 'unknown'}); "
            "one file never mixes settings: use another --output-dir, or delete the file to "
            "start over"
        )


# -- the run -----------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Records of the requested problems (in benchmark order), their summary, and the run's cost."""

    records: list[dict[str, Any]]
    summary: EvalSummary
    output: Path | None
    generated: int
    """Problems generated by this call (the rest were read back from the output file)."""


def has_chat_template(backend: Any) -> bool:
    """Whether the backend's tokenizer carries a chat template."""
    tokenizer = getattr(backend, "tokenizer", None)
    return bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False


def as_sampler(
    model: PowerSampler | Backend | str | None, config: PowerSamplingConfig | None = None
) -> PowerSampler:
    """``model`` itself when it is a sampler, else a sampler over it (a name or None loads the
    model)."""
    if isinstance(model, PowerSampler):
        return model
    return PowerSampler(model, config or PowerSamplingConfig())


def model_name(backend: Any) -> str:
    return str(getattr(backend, "name", None) or type(backend).__name__)


def evaluate(
    model: PowerSampler | Backend | str | None,
    task: Task | str,
    config: PowerSamplingConfig | None = None,
    *,
    limit: int | None = None,
    samples: int = 1,
    output: str | Path | None = None,
    batch_size: int = 8,
    chat: bool | None = None,
    name: str | None = None,
    progress: bool = False,
    workers: int = 4,
) -> EvalResult:
    """Evaluate a sampler on a benchmark (see the module docstring for the steps).

    Args:
        model: a ``PowerSampler`` (its config is the default ``config``), a backend, or a model
            name / path (``None``: the embedded default model).
        task: a :class:`Task` or its name (``gsm8k``, ``math500``, ``humaneval``, ``mbpp``,
            ``gpqa``).
        config: sampler settings, the method included; ``seed`` None means 0.
        limit: the first ``limit`` problems (None: all).
        samples: completions per problem (n); pass@1..n are reported.
        output: JSONL file to append records to and resume from (None: nothing written); the
            summary goes next to it as ``<stem>.summary.json``.
        batch_size: (problem, sample) pairs per ``generate_batch`` call.
        chat: use the chat prompt (None: when the tokenizer has a chat template).
        name: the model name written in the settings (default: the backend's name).
        progress: a tqdm bar on stderr.
        workers: grading threads (code runs in child processes, so threads suffice).
    """
    if samples < 1:
        raise ValueError(f"samples={samples} is invalid: use an integer >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: use an integer >= 1")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} is invalid: use an integer >= 1 (or None for all)")
    sampler = as_sampler(model, config)
    config = config or sampler.config
    seed = 0 if config.seed is None else config.seed
    config = config.replace(seed=seed)
    # Passed per call, so the caller's sampler object is the one that runs.
    overrides = {
        key: value
        for key, value in config.model_dump().items()
        if getattr(sampler.config, key) != value
    }
    if isinstance(task, str):
        task = get_task(task, seed=seed)
    path = prepare_output(output) if output is not None else None
    problems = task.load(limit)
    if not problems:
        raise ValueError(f"{task.name}: the data file holds no problems")
    chat = has_chat_template(sampler.backend) if chat is None else chat
    stop = task.stop_sequences(chat)
    settings: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "task": task.name,
        "data": str(Path(task.data_path).resolve()) if task.data_path is not None else None,
        "model": name or model_name(sampler.backend),
        "chat": chat,
        "stop": list(stop),
        "samples": samples,
        "config": config.model_dump(),
    }
    sid = settings_id(settings)

    done: dict[str, dict[str, Any]] = {}
    if path is not None:
        existing = read_records(path)
        _check_settings(path, existing, settings, sid)
        done = {r["id"]: r for r in existing}
    todo = [p for p in problems if p.id not in done]
    if done:
        logger.info(
            "%s: %d of %d problems already done, %d to go",
            path,
            len(problems) - len(todo),
            len(problems),
            len(todo),
        )

    bar = tqdm(
        total=len(problems),
        initial=len(problems) - len(todo),
        unit="problem",
        desc=f"{task.name} {config.method}",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    index = {p.id: i for i, p in enumerate(problems)}
    prompts = {p.id: task.build_prompt(p, chat) for p in todo}
    units = [(p, j) for p in todo for j in range(samples)]
    pending: dict[str, list[dict[str, Any]]] = {}
    handle = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(units), batch_size):
                batch = units[start : start + batch_size]
                first, sample = batch[0]
                batch_seed = choice_seed(seed, f"{first.id}#{sample}") % 2**31
                began = time.perf_counter()
                generations = sampler.generate_batch(
                    [prompts[p.id] for p, _ in batch],
                    stop=stop,
                    **{**overrides, "seed": batch_seed},
                )
                share = (time.perf_counter() - began) / len(batch)
                grades = pool.map(
                    lambda pair: _grade(task, pair[0], pair[1].text or "", chat),
                    zip([p for p, _ in batch], generations, strict=True),
                )
                for (problem, _), generation, grade in zip(batch, generations, grades, strict=True):
                    entries = pending.setdefault(problem.id, [])
                    entries.append(_sample_entry(generation, grade, batch_seed, share))
                    if len(entries) < samples:
                        continue
                    record = _record(problem, index[problem.id], prompts[problem.id], entries)
                    record.update(settings_id=sid, settings=settings)
                    del pending[problem.id]
                    done[problem.id] = record
                    if handle is not None:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                        handle.flush()
                        os.fsync(handle.fileno())
                    bar.update(1)
    finally:
        bar.close()
        if handle is not None:
            handle.close()

    records = [done[p.id] for p in problems]
    summary = summarize(
        records,
        task=task.name,
        method=config.method,
        model=settings["model"],
        settings=settings,
        settings_id=sid,
        output=str(path) if path is not None else None,
    )
    if path is not None:
        summary_path = path.with_name(path.name.removesuffix(".jsonl") + ".summary.json")
        summary_path.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    return EvalResult(records, summary, path, generated=len(todo))


def _grade(task: Task, problem: Problem, completion: str, chat: bool) -> GradeResult:
    try:
        return task.grade(problem, completion, chat=chat)
    except Exception as exc:  # a grader bug must not lose the generations of a long run
        logger.warning("grading %s failed: %r", problem.id, exc)
        return GradeResult(False, None, f"grader error: {exc!r}")


def _sample_entry(generation: Any, grade: GradeResult, seed: int, share: float) -> dict[str, Any]:
    stats = generation.stats
    return {
        "completion": generation.text,
        "extracted": grade.extracted,
        "correct": bool(grade.correct),
        "detail": grade.detail,
        "finish_reason": generation.finish_reason,
        "logprob": generation.logprob,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "candidate_tokens": stats.candidate_tokens,
        "rollout_tokens": stats.rollout_tokens,
        "forward_tokens": stats.forward_tokens,
        "wall_time": stats.wall_time,
        "time_share": share,
        "seed": seed,
    }


def _record(
    problem: Problem, index: int, prompt: Any, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """One problem's record: the first sample's fields at the top, all samples in ``samples``
    when there are several."""
    record: dict[str, Any] = {"id": problem.id, "index": index, "prompt": prompt}
    record["reference"] = problem.reference
    record.update(entries[0])
    record["num_samples"] = len(entries)
    record["num_correct"] = sum(e["correct"] for e in entries)
    if len(entries) > 1:
        record["samples"] = entries
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record
