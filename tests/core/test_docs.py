"""The README stays short and its figures come from results/ (docs/hooks.py makes them)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hooks():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_at_most_200_lines() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_readme_choice_table_is_generated_from_the_frontier() -> None:
    readme = (ROOT / "README.md").read_text()
    assert hooks().readme_with_table(readme) == readme, "stale table: run python docs/hooks.py"


def test_results_included_by_the_docs_exist_and_name_their_command() -> None:
    module = hooks()
    names = set()
    for page in (ROOT / "docs").glob("*.md"):
        names |= set(re.findall(r"^<!-- results: ([\w.-]+\.md) -->$", page.read_text(), re.M))
    assert names, "the docs include no results"
    for name in names:
        assert module.include(name).startswith("Made by `") or "Made by `" in module.include(name)


def test_sampling_field_table_is_included_with_every_field() -> None:
    from power_sampling.fields import TABLE_FIELDS

    page = (ROOT / "docs" / "choosing-settings.md").read_text()
    assert "<!-- generated: sampling-fields -->" in page
    table = hooks().sampling_fields()
    assert table.startswith("```text\nfield ")
    block = table.split("```")[1].splitlines()[1:]
    rows = {line.split()[0].rstrip(",") for line in block if line[:1].isalpha()}
    missing = {*TABLE_FIELDS, "seed", "stop"} - rows
    assert not missing, f"core/fields.py's table lost {sorted(missing)}"
