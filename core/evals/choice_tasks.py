"""The multiple-choice benchmark: GPQA-Diamond, its choices in a seeded random order."""

from __future__ import annotations

import random
from pathlib import Path

from . import graders
from .graders import GradeResult
from .loading import read_zipped_csv
from .problems import Problem, Prompt, Task, choice_seed, user_turn


class GPQA(Task):
    """GPQA-Diamond: 198 graduate-level multiple-choice science questions.

    The choices are shuffled per problem by ``random.Random`` seeded from the run seed and the
    problem id, so an order is reproducible yet differs between runs with different seeds. The
    data stays inside its password-protected zip and is decrypted in memory only.
    """

    name = "gpqa"
    data_file = "gpqa_diamond.zip"
    zip_member = "gpqa_diamond.csv"
    # The GPQA authors' public password; it keeps the questions out of web-crawled corpora.
    zip_password = b"deserted-untie-orchid"
    letters = "ABCD"

    def _read(self, path: Path) -> list[Problem]:
        answer_columns = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2")
        columns = ("Record ID", "Question", *answer_columns, "Incorrect Answer 3")
        rows = read_zipped_csv(path, self.zip_member, self.zip_password, columns)
        problems = []
        for row in rows:
            answers = [row[column].strip() for column in columns[2:]]
            order = list(range(4))
            random.Random(choice_seed(self.seed, row["Record ID"])).shuffle(order)
            correct = order.index(0)  # answers[0] is the correct one
            problems.append(
                Problem(
                    id=row["Record ID"],
                    question=row["Question"].strip(),
                    reference=self.letters[correct],
                    data={
                        "choices": tuple(answers[i] for i in order),
                        "correct_index": correct,
                        "domain": row.get("High-level domain", ""),
                    },
                )
            )
        return problems

    def _text(self, problem: Problem) -> str:
        choices = "\n".join(
            f"{letter}) {choice}"
            for letter, choice in zip(self.letters, problem.data["choices"], strict=True)
        )
        return (
            "Answer the following multiple-choice question. Think step by step, then write the "
            "final answer on the last line as \\boxed{LETTER}, where LETTER is one of A, B, C, D."
            f"\n\n{problem.question}\n\n{choices}"
        )

    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(self._text(problem))
        return self._text(problem) + "\n\nSolution:"

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        return graders.grade_choice(completion, problem.reference, self.letters)

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n\nAnswer the following",)
