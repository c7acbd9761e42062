"""MkDocs hook: every measured figure in the docs comes from a file in ``results/``.

A line ``<!-- results: NAME.md -->`` in a page is replaced by that results file, headed by the
command that made it and its date; ``<!-- generated: choice-table -->`` by the table "which
method and preset for what", built from ``results/frontier.md``. The results' images are copied
into the site under ``results/``; ``<!-- generated: layout -->`` and
``<!-- generated: sampling-fields -->`` by the tables in the docstrings of ``core/__init__.py``
and ``core/fields.py``. Nothing measured is typed into the pages by hand.

``python docs/hooks.py`` rewrites the same table in README.md (between its
``<!-- choice-table:start -->`` and ``<!-- choice-table:end -->`` markers);
``tests/core/test_docs.py`` checks that README.md holds what this prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

# The command behind each results file that does not name its own (the frontier names its own).
COMMANDS = {
    "fidelity.md": "python -m power_sampling.measure.fidelity --out results",
    "fidelity-rules.md": "python -m power_sampling.measure.fidelity --rules --out results",
    "vllm-async.md": "bash results/vllm-async.sh` and `python results/vllm_async_merge.py",
    "budget-overhead.md": "the script shown below",
}

# (what for, how to ask for it, the frontier row that measures it: method, budget).
CHOICES = [
    ("Try it on a CPU, the embedded model", '`preset="cpu"`', ("power block", "K=8 L=16 M=2")),
    (
        "The paper's setting, best fidelity of the block presets",
        '`preset="paper"`',
        ("power block", "K=8 L=32 M=8"),
    ),
    (
        "Lowest latency of the presets (a GPU)",
        '`preset="paper-fast"`',
        ("power block + reuse", "K=8 L=8 M=8"),
    ),
    (
        "Lowest latency at max TV ≤ 0.05",
        "`reuse_rollouts=True, top_k=8, num_candidates=16, num_rollouts=16`",
        ("power block + reuse", "K=8 L=16 M=16"),
    ),
    (
        "Least compute at max TV ≤ 0.05",
        "`reuse_rollouts=True, top_k=8, num_candidates=16, num_rollouts=2`",
        ("power block + reuse", "K=8 L=16 M=2"),
    ),
    (
        "Highest fidelity (token level; costly on a real model)",
        "`block_size=1, top_k=5, num_rollouts=4`",
        ("power token", "K=5 M=4"),
    ),
    ("Power-SMC, few sequential steps", '`method="smc", num_particles=64`', ("smc", "N=64")),
    ("MCMC baseline (Karan & Du)", '`method="mcmc", mcmc_steps=10`', ("mcmc", "steps=10")),
    (
        "Best-of-N baseline (moves to the mode, not to π)",
        '`method="best_of_n", best_of=8`',
        ("best-of-N", "N=8"),
    ),
    ("Low temperature 1/α per token", '`method="low_temperature"`', ("low temperature", "")),
    ("The base model, temperature 1", '`method="standard"`', ("standard", "")),
]


SOURCES = ROOT / "build" / "docs-src"


def shadow_package() -> Path:
    """The package as it is installed, for mkdocstrings to read: ``power_sampling`` lives in
    ``core/`` and ``power_sampling.integrations`` in ``integrations/`` (pyproject's package-dir),
    which griffe cannot map. ``build/docs-src/power_sampling`` links to both."""
    package = SOURCES / "power_sampling"
    package.mkdir(parents=True, exist_ok=True)
    wanted = {entry.name: entry for entry in (ROOT / "core").iterdir()}
    wanted["integrations"] = ROOT / "integrations"
    for link in package.iterdir():
        if link.name not in wanted or link.resolve() != wanted[link.name].resolve():
            link.unlink()
    for name, target in wanted.items():
        if not (package / name).exists():
            (package / name).symlink_to(target)
    return SOURCES


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def frontier_rows() -> dict[tuple[str, str], dict[str, str]]:
    """The main table of ``results/frontier.md``, keyed by (method, budget)."""
    lines = (RESULTS / "frontier.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | budget |"))
    header = _cells(lines[start])
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = dict(zip(header, _cells(line), strict=True))
        rows[(row["method"], row["budget"])] = row
    return rows


def provenance(name: str) -> str:
    """ "Made by `COMMAND` on DATE": the file's own line where it has one, else its command and
    the date it was last committed."""
    text = (RESULTS / name).read_text()
    own = re.search(r"^Made by `[^`]+` on \d{4}-\d{2}-\d{2}", text, re.M)
    if own:
        return own.group(0)
    try:
        date = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", f"results/{name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        date = ""
    return f"Made by `{COMMANDS[name]}`" + (f", committed on {date}" if date else "")


def choice_table() -> str:
    """Markdown: what each preset or setting is for, at its measured point on the frontier."""
    rows = frontier_rows()
    out = [
        "| for | settings | measured as | max TV to π | forward tokens / token "
        "| sequential steps / token |",
        "|---|---|---|---:|---:|---:|",
    ]
    for use, settings, key in CHOICES:
        row = rows[key]
        label = " ".join(part for part in key if part)
        out.append(
            f"| {use} | {settings} | {label} | {row['max TV']} | "
            f"{row['forward tokens / token']} | {row['sequential steps / token']} |"
        )
    date = provenance("frontier.md").removeprefix("Made by ")
    out.append("")
    out.append(
        "From [results/frontier.md](results/frontier.md) (made by " + date + "): four random "
        "table models, α = 4, 4 new tokens; max TV over the tables. Regenerate this table with "
        "`python docs/hooks.py`."
    )
    return "\n".join(out)


def include(name: str) -> str:
    """A results file for a docs page: its provenance first, its title dropped, its headings
    one level down, its images under ``results/``."""
    text = (RESULTS / name).read_text()
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "\n".join(lines)
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)
    body = re.sub(r"\]\((?!https?://)([^)/]+\.png)\)", r"](results/\1)", body)
    if not re.search(r"^Made by `", body, re.M):
        body = f"{provenance(name)}; the file: `results/{name}`.\n\n{body.lstrip()}"
    return body.strip() + "\n"


def layout() -> str:
    """The package layout, from the docstring of ``core/__init__.py`` (kept in one place)."""
    import ast

    doc = ast.get_docstring(ast.parse((ROOT / "core" / "__init__.py").read_text())) or ""
    start = doc.index("Layout")
    return doc[start:].strip() + "\n"


def sampling_fields() -> str:
    """The sampling-field table, from the docstring of ``core/fields.py`` (kept in one place):
    its literal block as a text block, then the paragraph after it."""
    import ast
    import textwrap

    doc = ast.get_docstring(ast.parse((ROOT / "core" / "fields.py").read_text())) or ""
    lines = doc.split("::\n", 1)[1].splitlines()
    # The literal block is indented; the first unindented line after it starts the prose.
    end = next(i for i, line in enumerate(lines) if line and not line.startswith(" "))
    table = textwrap.dedent("\n".join(lines[:end])).strip("\n")
    tail = "\n".join(lines[end:]).strip()
    return f"```text\n{table}\n```\n\n{tail}\n"


def on_startup(command: str, dirty: bool) -> None:
    shadow_package()


shadow_package()  # before mkdocstrings reads its paths: hooks load with the config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = re.sub(
        r"^<!-- results: ([\w.-]+\.md) -->$", lambda m: include(m.group(1)), markdown, flags=re.M
    )
    # The table's link points from the repository root (README.md); in the site it is a name.
    table = choice_table().replace(
        "[results/frontier.md](results/frontier.md)", "`results/frontier.md`"
    )
    markdown = markdown.replace("<!-- generated: layout -->", layout())
    markdown = markdown.replace("<!-- generated: sampling-fields -->", sampling_fields())
    return markdown.replace("<!-- generated: choice-table -->", table)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for image in sorted(RESULTS.glob("*.png")):
        files.append(
            File(
                f"results/{image.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]
            )
        )
    return files


def readme_with_table(readme: str) -> str:
    start, end = "<!-- choice-table:start -->", "<!-- choice-table:end -->"
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{choice_table()}\n{end}{tail}"


if __name__ == "__main__":
    path = ROOT / "README.md"
    new = readme_with_table(path.read_text())
    if "--check" in sys.argv[1:]:
        sys.exit(
            0 if new == path.read_text() else "README.md's table is stale: python docs/hooks.py"
        )
    path.write_text(new)
