"""Constrained outputs: JSON schemas, regexes, grammars and token automata.

See :mod:`power_sampling.constraints.base` for the target power sampling defines under a
constraint, π_G(x) ∝ p(x)^α · 1[x valid], and why rollouts need importance weights.
"""

from .automaton import TokenAutomaton
from .base import (
    Constraint,
    GrammarConstraint,
    Matcher,
    Vocabulary,
    allowed_tokens,
    bitmask_words,
    new_bitmask,
    unpack_bitmask,
)
from .budget import BudgetedConstraint, closing_constraint
from .cursor import ConstraintCursor

__all__ = [
    "BudgetedConstraint",
    "Constraint",
    "ConstraintCursor",
    "GrammarConstraint",
    "Matcher",
    "TokenAutomaton",
    "Vocabulary",
    "allowed_tokens",
    "bitmask_words",
    "closing_constraint",
    "new_bitmask",
    "unpack_bitmask",
]
