"""Drawing tokens on the device for the transformers backend, and the bookkeeping of a decode:
what every continuation drew, copied to the host only at checks, and where each one ended."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import torch

from ..base import Continuation
from .kv_rows import Rows, select


class Draws:
    """The tokens drawn for every continuation, with their base and proposal log-probs, kept on
    the device; and, on the host, the tokens copied so far and where each continuation ended."""

    def __init__(
        self, limits: list[int], device: torch.device, model_name: str = "the model"
    ) -> None:
        self.model_name = model_name
        count, self.longest = len(limits), max(limits, default=0)
        self.tokens = torch.zeros(count, max(self.longest, 1), dtype=torch.long, device=device)
        self.base = torch.zeros(count, max(self.longest, 1), device=device)
        self.proposal = torch.zeros_like(self.base)
        self.mass: torch.Tensor | None = None
        """Log allowed mass per drawn token, under a constraint only."""
        self.limits = limits
        self.seen: list[list[int]] = [[] for _ in range(count)]
        self.ends = {r: (0, False) for r in range(count) if limits[r] == 0}  # (length, finished)
        self.pulled = 0
        self.live_index = torch.arange(count, device=device)
        self._live_count = count

    def record(
        self,
        live: list[int],
        step: int,
        token: torch.Tensor,
        lp: torch.Tensor,
        lq: torch.Tensor,
        lm: torch.Tensor | None = None,
    ) -> None:
        """Store one drawn token per batch row; ``live`` names each row's continuation."""
        if len(live) != self._live_count:  # the batch was compacted
            self.live_index = torch.tensor(live, device=self.tokens.device)
            self._live_count = len(live)
        self.tokens[self.live_index, step], self.base[self.live_index, step] = token, lp
        self.proposal[self.live_index, step] = lq
        if lm is not None:
            if self.mass is None:
                self.mass = torch.zeros_like(self.base)
            self.mass[self.live_index, step] = lm

    def pull(
        self,
        live: list[int],
        drawn: int,
        find_end: Callable[[list[int], int, int], tuple[int, bool] | None],
    ) -> None:
        """Copy the tokens drawn since the last pull to the host and record the rows that
        ended (``find_end(tokens, start, limit)``)."""
        host = self.tokens[self.live_index, self.pulled : drawn].tolist()
        window = self.base[self.live_index, self.pulled : drawn]
        if bool((torch.isnan(window) | torch.isposinf(window)).any()):
            raise ValueError(bad_logits_message(self.model_name))
        for r, new in zip(live, host, strict=True):
            if r not in self.ends:
                self.seen[r].extend(new)
                end = find_end(self.seen[r], self.pulled, self.limits[r])
                if end is not None:
                    self.ends[r] = end
        self.pulled = drawn

    def finished_rows(self, rows: Rows, live: list[int], picks: list[int]) -> Rows:
        """The batch rows ``picks``, their sequences extended by the tokens they drew."""
        done = select(rows, picks)
        done.seqs = [s + tuple(self.seen[live[j]]) for s, j in zip(done.seqs, picks, strict=True)]
        return done

    def continuations(self, dead: Collection[int] = ()) -> list[Continuation]:
        """One continuation per row, cut where it ended; ``dead`` rows stopped at a dead end
        of their constraint (log mass -inf)."""
        out = []
        columns = zip(self.tokens.tolist(), self.base.tolist(), self.proposal.tolist(), strict=True)
        masses = self.mass.tolist() if self.mass is not None else None
        for r, (ids, lps, lqs) in enumerate(columns):
            length, finished = self.ends[r]
            logps = tuple(lps[:length])
            log_mass = 0.0 if masses is None else float(sum(masses[r][:length]))
            out.append(
                Continuation(
                    tuple(ids[:length]),
                    sum(logps),
                    finished,
                    logps,
                    tuple(lqs[:length]),
                    -float("inf") if r in dead else log_mass,
                )
            )
        return out


def bad_logits_message(model_name: str) -> str:
    """The error for a model whose next-token logits hold NaN or +inf: never sampled from."""
    return (
        f"model output: the next-token logits of {model_name} contain NaN or +inf, so no token "
        "can be drawn from them; the model's weights or its dtype overflowed (try float32 or "
        "bfloat16 instead of float16, or check the model)"
    )


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 whose outputs look independent."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_uniforms(
    seeds: Sequence[int], children: Sequence[int], length: int, device: torch.device
) -> torch.Tensor:
    """``[rows, length]`` uniforms in [0, 1): row r's stream depends on its prefix's seed and
    its child index only (SplitMix64 from a row key), so a row draws the same tokens whatever
    other rows share its batch. Computed on the host for all rows at once, then moved once."""
    with np.errstate(over="ignore"):
        keys = _mix(np.asarray(seeds, dtype=np.uint64) ^ _mix(np.asarray(children, np.uint64)))
        steps = np.arange(1, max(length, 1) + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix(keys[:, None] + steps[None, :])
    values = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return torch.from_numpy(values).to(device)


def draw(
    logits: torch.Tensor,
    temperature: float,
    uniforms: torch.Tensor,
    logprobs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / temperature), with its base and proposal
    log-probs. Inverse-CDF sampling: the row's own uniform (``uniforms``, one per row) and a
    search in the cumulative sums, all on the device (no host sync), and cheaper on the CPU
    than racing exponential noise over the whole vocabulary. ``logprobs`` (base, proposal)
    replace the ones computed from ``logits`` (a constraint's masked proposal)."""
    if logprobs is not None:
        logp, logq = logprobs
    else:
        logp = torch.log_softmax(logits, -1)
        logq = logp if temperature == 1.0 else scaled_log_softmax(logits, temperature)
    if temperature == 0.0:  # greedy: no uniform can round onto another token
        token = logq.argmax(-1)
    else:
        cdf = logq.exp().cumsum(-1)
        # A float64 uniform just below 1 rounds to 1.0 in float32: keep it below, or it would
        # land past the last token of positive probability.
        u = uniforms[:, None].to(cdf.dtype).clamp_max(1.0 - torch.finfo(cdf.dtype).eps / 2)
        # Scaling by the total absorbs rounding in the sums; right=True never lands on a token
        # of probability zero (its cumulative sum equals its predecessor's).
        token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
        token = token.clamp_max(cdf.shape[1] - 1)
    pick = token[:, None]
    return token, logp.gather(1, pick)[:, 0], logq.gather(1, pick)[:, 0]


def scaled_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature), finite for any temperature > 0 a config allows; at
    temperature 0 the limit: log-prob 0 on each row's most likely token (the lowest id among
    equals), -inf elsewhere (greedy).

    The row maximum is subtracted first, so a tiny temperature (alpha 1e40) sends the others to
    -inf instead of overflowing to inf - inf = NaN; masked (-inf) logits stay -inf at any
    temperature; float64 where 1/temperature is beyond float32's range.
    """
    if temperature == 0.0:
        best = logits.nan_to_num(float("-inf")).argmax(-1, keepdim=True)
        greedy = torch.full_like(logits, float("-inf"), dtype=torch.float32)
        greedy = greedy.scatter(-1, best, 0.0)
        return torch.where(torch.isnan(logits), logits.float(), greedy)  # NaN stays visible
    if not 1e-30 < temperature < 1e30:
        logits = logits.double()
    shifted = logits - logits.amax(-1, keepdim=True).nan_to_num(0.0, 0.0, 0.0)
    scaled = torch.where(torch.isfinite(logits), shifted / temperature, float("-inf"))
    scaled = torch.where(torch.isnan(logits), logits, scaled)  # NaN stays visible to checks
    return torch.log_softmax(scaled, -1).to(torch.float32)
