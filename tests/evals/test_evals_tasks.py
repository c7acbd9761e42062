"""Tasks: registry, loading of the shipped data, prompt forms, GPQA shuffling, loading errors."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from power_sampling.evals import TASKS, get_task
from power_sampling.evals.loading import DATA_DIR

GPQA_PASSWORD = b"deserted-untie-orchid"


def _gpqa_rows() -> dict[str, dict[str, str]]:
    """The GPQA rows read straight from the zip, independently of the task code."""
    raw = zipfile.ZipFile(DATA_DIR / "gpqa_diamond.zip").read("gpqa_diamond.csv", pwd=GPQA_PASSWORD)
    return {row["Record ID"]: row for row in csv.DictReader(io.StringIO(raw.decode("utf-8")))}


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_five_benchmarks_and_arithmetic() -> None:
    assert set(TASKS) == {"gsm8k", "math500", "humaneval", "mbpp", "gpqa", "arithmetic"}
    for name in TASKS:
        assert get_task(name).name == name
    assert get_task(" MATH500 ").name == "math500"


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown task 'aime'") as info:
        get_task("aime")
    for name in ("gsm8k", "math500", "humaneval", "mbpp", "gpqa"):
        assert name in str(info.value)


# ----------------------------------------------------------------------------- shipped data


@pytest.mark.parametrize(
    ("name", "count"),
    [("gsm8k", 1319), ("math500", 500), ("humaneval", 164), ("mbpp", 500), ("gpqa", 198)],
)
def test_shipped_data_loads(name: str, count: int) -> None:
    task = get_task(name)
    problems = task.load()
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.question.strip() and p.reference.strip() for p in problems)
    assert len(task.load(limit=3)) == 3


def test_references_match_the_source_files() -> None:
    gsm = [json.loads(line) for line in (DATA_DIR / "gsm8k_test.jsonl").open()]
    problems = get_task("gsm8k").load()
    assert problems[0].reference == gsm[0]["answer"].split("####")[-1].strip()
    assert all(p.reference.lstrip("-").replace(".", "").isdigit() for p in problems)

    math = [json.loads(line) for line in (DATA_DIR / "math500_test.jsonl").open()]
    assert [p.reference for p in get_task("math500").load()] == [r["answer"] for r in math]

    with gzip.open(DATA_DIR / "HumanEval.jsonl.gz", "rt") as handle:
        human = [json.loads(line) for line in handle]
    first = get_task("humaneval").load()[0]
    assert (first.id, first.question, first.data["entry_point"]) == (
        human[0]["task_id"],
        human[0]["prompt"],
        human[0]["entry_point"],
    )

    mbpp = get_task("mbpp").load()
    assert (mbpp[0].id, mbpp[-1].id) == ("mbpp/11", "mbpp/510")
    assert mbpp[0].data["function_name"] == "remove_Occ"


def test_gpqa_stays_zipped() -> None:
    assert not list(DATA_DIR.glob("*.csv"))
    assert (DATA_DIR / "gpqa_diamond.zip").is_file()


# ----------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_math_prompts_ask_for_boxed_answer(name: str) -> None:
    task = get_task(name)
    problem = task.load(limit=1)[0]
    messages = task.build_prompt(problem, chat=True)
    assert isinstance(messages, list) and len(messages) == 1
    assert messages[0]["role"] == "user"
    assert problem.question in messages[0]["content"]
    assert "step by step" in messages[0]["content"] and "\\boxed{}" in messages[0]["content"]
    raw = task.build_prompt(problem, chat=False)
    assert isinstance(raw, str) and problem.question in raw and "\\boxed{}" in raw
    assert task.stop_sequences(chat=True) == ()
    assert task.stop_sequences(chat=False)


def test_humaneval_prompts() -> None:
    task = get_task("humaneval")
    problem = task.load(limit=1)[0]
    assert task.build_prompt(problem, chat=False) == problem.question
    messages = task.build_prompt(problem, chat=True)
    assert isinstance(messages, list)
    content = messages[0]["content"]
    assert "```python\n" + problem.question in content and "complete" in content.lower()
    assert "\ndef " in task.stop_sequences(chat=False)


def test_mbpp_prompts_show_text_and_one_test() -> None:
    task = get_task("mbpp")
    problem = task.load(limit=1)[0]
    messages = task.build_prompt(problem, chat=True)
    assert isinstance(messages, list)
    content = messages[0]["content"]
    assert problem.question in content and 'assert remove_Occ("hello","l") == "heo"' in content
    assert 'remove_Occ("PHP","P")' not in content  # the other tests are held out
    raw = task.build_prompt(problem, chat=False)
    assert isinstance(raw, str) and raw.endswith("```python\n")


def test_gpqa_prompt_lists_choices_in_shuffled_order() -> None:
    task = get_task("gpqa", seed=3)
    problem = task.load(limit=1)[0]
    messages = task.build_prompt(problem, chat=True)
    assert isinstance(messages, list)
    content = messages[0]["content"]
    assert "\\boxed{LETTER}" in content and problem.question in content
    for letter, choice in zip("ABCD", problem.data["choices"], strict=True):
        assert f"\n{letter}) {choice}" in content
    raw = task.build_prompt(problem, chat=False)
    assert isinstance(raw, str) and raw.startswith(content)


# ----------------------------------------------------------------------------- GPQA shuffle


def test_gpqa_correct_letter_tracks_the_correct_answer() -> None:
    rows = _gpqa_rows()
    problems = get_task("gpqa", seed=0).load()
    for problem in problems:
        row = rows[problem.id]
        choices = problem.data["choices"]
        answers = [row[c].strip() for c in ("Correct Answer", "Incorrect Answer 1")]
        answers += [row[c].strip() for c in ("Incorrect Answer 2", "Incorrect Answer 3")]
        assert sorted(choices) == sorted(answers)
        assert choices["ABCD".index(problem.reference)] == row["Correct Answer"].strip()
    # A real shuffle puts the correct answer under every letter (198 problems, ~50 each).
    letters = Counter(p.reference for p in problems)
    assert set(letters) == set("ABCD") and min(letters.values()) >= 20


def test_gpqa_shuffle_is_deterministic_per_seed() -> None:
    first = [p.data["choices"] for p in get_task("gpqa", seed=7).load()]
    again = [p.data["choices"] for p in get_task("gpqa", seed=7).load()]
    other = [p.data["choices"] for p in get_task("gpqa", seed=8).load()]
    assert first == again
    differing = sum(a != b for a, b in zip(first, other, strict=True))
    assert differing > len(first) // 2  # 23 of 24 orders differ from a given one


# ----------------------------------------------------------------------------- loading errors


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        get_task("math500", data_path=missing).load()


@pytest.mark.parametrize("name", ["gsm8k", "math500", "mbpp"])
def test_empty_file_is_rejected(tmp_path: Path, name: str) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        get_task(name, data_path=empty).load()


def test_corrupt_json_line_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = {"problem": "1+1", "answer": "2", "unique_id": "a", "subject": "x", "level": 1}
    bad.write_text(json.dumps(good) + '\n{"problem": "2+2", "answ\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        get_task("math500", data_path=bad).load()


def test_missing_field_is_named(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "1+1?"}) + "\n")
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['answer'\]"):
        get_task("gsm8k", data_path=wrong).load()


def test_gsm8k_answer_without_final_number_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "It is two."}) + "\n")
    with pytest.raises(ValueError, match="####"):
        get_task("gsm8k", data_path=path).load()


def test_corrupt_gzip_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"task_id": "x"}\n')[:-12])
    with pytest.raises(ValueError, match=r"HumanEval\.jsonl\.gz"):
        get_task("humaneval", data_path=path).load()


def test_corrupt_zip_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "gpqa.zip"
    path.write_bytes((DATA_DIR / "gpqa_diamond.zip").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"gpqa\.zip"):
        get_task("gpqa", data_path=path).load()


def test_zip_without_the_csv_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "nothing here")
    with pytest.raises(ValueError, match=r"no member named 'gpqa_diamond\.csv'"):
        get_task("gpqa", data_path=path).load()


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="limit"):
        get_task("math500").load(limit=-1)
