"""The OpenAI-style sampling fields: one table of what each means, for every entry point.

``PowerSampler.request``/``generate``, the LangChain classes (``ChatPowerSampling``,
``PowerSamplingLLM``), DSPy's ``power_lm``, the HTTP server and the command line all pass these
fields through :func:`~power_sampling.request.resolve_settings`, which applies this table
(:func:`field_changes`): a field is honoured exactly as written here or refused with a
``ValueError`` (a 400 from the server, ``param`` the field) that names the field, the value and
what to do instead. No field is ever ignored silently, and no entry point differs. A value given for
one call wins over the one its instance was built with.

::

    field              standard, low_temperature          power, mcmc, smc, best_of_n
    -----------------  ---------------------------------  ---------------------------------
    temperature        T >= 0: each token drawn from      None or 1 (the model itself);
                       p^(1/T) renormalised; 0 = greedy   any other value is refused: the
                       (the most likely token, lowest id  target is p(x)^alpha, sharpened
                       among equals); None = 1 (standard) by alpha (best_of_n: its samples
                       or 1/alpha (low_temperature)       are drawn at temperature 1)
    top_p              None or 1 (no truncation); a value in (0, 1) is refused, for every
                       method: nucleus truncation is not implemented; outside (0, 1] an error
    top_k              refused: no top-k truncation       power: K, the candidates scored
                       (top_k is power's K)               per step (>= 1); the others refuse
    seed               an integer >= 0: the same seed repeats the output; None = fresh draws
    stop               stop strings, cut from the text, for every method (Request.stop)
    presence_penalty,  None or 0 only: a penalty changes the distribution sampled
    frequency_penalty
    logit_bias         None or {} only; to allow only some outputs, pass a constraint
                       (response_format, tools)
    logprobs,          None, False or 0 only: per-token log-probs are not returned
    top_logprobs       (Generation.logprob is the output's base log-likelihood); the server's
                       text completions under plain decoding return them (its model API,
                       power_sampling.serving.model_api)
    n                  choices per prompt: the server returns n (choice i > 0 seeded from
                       (seed, i)); single-answer entry points (PowerSampler.request, LangChain,
                       DSPy) take 1 only: call once per sample, each with its own seed

Every method honours ``max_tokens`` (``max_new_tokens``) and ``seed``. Backends draw greedily
at temperature 0 (``Backend.sample(..., temperature=0)``), the table and transformers backends
by arg-max, vLLM by its own greedy path.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from .config import TEMPERATURE_METHODS, temperature_problem
from .errors import FieldError

REQUEST_FIELDS = (
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "n",
)
"""OpenAI-style fields that are not config fields: checked here, never stored."""

TABLE_FIELDS = ("temperature", "top_k", *REQUEST_FIELDS)
"""Every field :func:`field_changes` reads (``seed`` and ``stop`` need no more than their own
checks)."""


def field_changes(fields: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The config changes the OpenAI-style ``fields`` make under ``method``, per the table.

    Fields left at None change nothing. A refused or out-of-range value raises
    :class:`~power_sampling.errors.FieldError` (a ``ValueError``) whose ``field`` is its name.
    """
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "temperature":
            changes["temperature"] = _temperature(value, method)
        elif name == "top_k":
            changes["top_k"] = _top_k(value, method)
        elif name == "top_p":
            _top_p(value)
        elif name in ("presence_penalty", "frequency_penalty"):
            if not _number(value) or value != 0:
                _refuse(name, value, "penalties change the distribution sampled; leave it unset")
        elif name == "logit_bias":
            if value != {}:
                _refuse(
                    name,
                    value,
                    "a bias changes the distribution sampled; leave it unset (to allow only some "
                    "outputs, pass a constraint or response_format)",
                )
        elif name in ("logprobs", "top_logprobs"):
            if value not in (False, 0):
                _refuse(
                    name,
                    value,
                    "per-token log-probs are not returned; leave it unset (the generation's "
                    "logprob is the output's base log-likelihood)",
                )
        elif name == "n":
            if isinstance(value, bool) or value != 1:
                _refuse(
                    name,
                    value,
                    "this entry point returns one answer per call; call it once per sample "
                    "(each with its own seed), or ask the HTTP server for n choices",
                )
        else:
            raise KeyError(name)
    return changes


def _temperature(value: Any, method: str) -> float:
    if not _number(value):
        _refuse("temperature", value, "use a number >= 0 (0 = greedy)")
    if (problem := temperature_problem(method, float(value))) is not None:
        _refuse("temperature", value, problem)
    return float(value)


def _top_k(value: Any, method: str) -> Any:
    if method != "power":
        truncates = method in TEMPERATURE_METHODS
        what = "top-k truncation is not implemented" if truncates else "it is unused"
        _refuse(
            "top_k",
            value,
            f"top_k is power sampling's K (candidates scored per step) and method={method!r} "
            f"does not score candidates; {what}, so leave top_k unset",
        )
    return value  # the config checks the count


def _top_p(value: Any) -> None:
    if not _number(value) or not 0 < value <= 1:
        _refuse("top_p", value, "use a number in (0, 1]; 1 = no truncation")
    if value != 1:
        _refuse(
            "top_p",
            value,
            "nucleus (top-p) truncation is not implemented: every method samples the full "
            "distribution; leave top_p unset or 1 (for sharper outputs, lower the temperature "
            "of method='standard' or raise alpha)",
        )


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _refuse(name: str, value: Any, fix: str) -> None:
    raise FieldError(name, f"{name}={value!r} is invalid: {fix}", named=False)
