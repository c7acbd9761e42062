"""Read the benchmark files shipped in ``power_sampling/evals/data`` (or a file the caller names).

Every failure names the file and what is wrong with it, because a truncated download or a
mistyped path otherwise surfaces much later as a confusing grading error.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"


def resolve_data_file(default_name: str, data_path: str | Path | None) -> Path:
    """The file to read: ``data_path`` when given, else the copy shipped with the package."""
    path = Path(data_path) if data_path is not None else DATA_DIR / default_name
    if not path.is_file():
        hint = (
            "check the data_path argument"
            if data_path is not None
            else "the package data is missing; reinstall power-sampling"
        )
        raise FileNotFoundError(f"benchmark data file not found: {path} ({hint})")
    return path


def read_jsonl(path: Path, required: Iterable[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file, plain or gzip-compressed (by the ``.gz`` suffix).

    Raises ValueError naming the file and line when the file is empty, a line is not a JSON
    object, or a record lacks one of the ``required`` fields.
    """
    text = _read_text(path)
    required = tuple(required)
    records: list[dict[str, Any]] = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line separators.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: line {number} is not valid JSON ({err.msg}); the file is corrupt, "
                "restore the original copy"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}: line {number} is a JSON {type(record).__name__}, not an object"
            )
        missing = [field for field in required if field not in record]
        if missing:
            raise ValueError(
                f"{path}: line {number} lacks field(s) {missing}; has {sorted(record)}. "
                "Is this the right benchmark file?"
            )
        records.append(record)
    if not records:
        raise ValueError(f"{path} is empty: expected one JSON record per line")
    return records


def read_zipped_csv(
    path: Path, member: str, password: bytes, required: Iterable[str]
) -> list[dict[str, str]]:
    """Rows of a CSV stored inside a password-protected zip, decrypted in memory only.

    The plain CSV is never written to disk (GPQA's authors ask that it not be published).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(member, pwd=password)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{path} is not a valid zip archive ({err}); restore the original copy"
        ) from None
    except KeyError:
        raise ValueError(f"{path} has no member named {member!r}") from None
    except RuntimeError as err:  # zipfile reports a wrong password as RuntimeError
        raise ValueError(f"{path}: cannot decrypt {member!r} ({err})") from None
    except (zipfile.LargeZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read {member!r} ({err}); the file is corrupt") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: {member!r} is not UTF-8 text ({err})") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"{path}: {member!r} has no data rows")
    required = tuple(required)
    missing = [column for column in required if column not in rows[0]]
    if missing:
        raise ValueError(f"{path}: {member!r} lacks column(s) {missing}; is this the GPQA CSV?")
    return rows


def _read_text(path: Path) -> str:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot decompress ({err}); the file is corrupt") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); the file is corrupt") from None
