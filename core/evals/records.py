"""The output file of an evaluation: one JSON record per problem, and the rule for resuming.

A file holds records made with one set of settings (their hash, :func:`settings_id`, is in every
record): a run whose settings differ stops with :class:`SettingsMismatchError`, and a last line
cut off by an interruption is dropped so that its problem is generated again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .graders import GradeResult
from .problems import Problem

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1
"""Version of the record layout; part of the settings, so old files are never mixed in."""


class SettingsMismatchError(ValueError):
    """The output file holds records made with other settings."""


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


def check_settings(path: Path, records: Iterable[dict[str, Any]], settings: dict, sid: str) -> None:
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


def sample_entry(generation: Any, grade: GradeResult, seed: int, share: float) -> dict[str, Any]:
    """One sample of a record: the completion, its grade, its cost and its seed."""
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


def problem_record(
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
