"""verify: each block a scheme plans, checked against the initializer the scheme draws it with, every statistical
test at the Bonferroni level that keeps a whole file's false alarms ≤ alpha (checks.bonferroni_level)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..init.initializers import cannot_hold
from ..init.planning import plan
from ..init.schemes import Rule, Scheme
from ..layouts.discovery import Layer
from .cache import _Cache
from .checks import ALPHA, FILE_ALPHA, bonferroni_level
from .entry_checks import _check_all, check_pooled, pooled_groups
from .families import _classify
from .progress import OnProgress, Tally, rows_bytes
from .stats import quiet_floats


@dataclass(frozen=True)
class VerifyBlock:
    """One planned block: what was expected (rule, initializer call, scope), what was found, and the status
    ('ok', 'fail', or 'weak': consistent but too small for the statistical tests to mean much)."""

    name: str
    kind: str
    gate: str | None
    start: int
    stop: int
    rule: str
    expected: str
    per: str
    status: str
    found: str
    detail: str
    head: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "gate": self.gate, "rows": [self.start, self.stop],
                "rule": self.rule, "expected": self.expected, "per": self.per, "status": self.status,
                "found": self.found, "detail": self.detail, "head": self.head}


@dataclass(frozen=True)
class VerifyReport:
    """`verify()`'s result. ok: no block fails. failures: the failing blocks; weak: consistent but undecided.
    alpha: the bound on the probability that a file drawn as planned fails; level: the size of each test."""

    scheme: str
    rules: tuple[str, ...]
    only: str | None
    blocks: tuple[VerifyBlock, ...]
    alpha: float = FILE_ALPHA
    level: float = ALPHA

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> tuple[VerifyBlock, ...]:
        return tuple(b for b in self.blocks if b.status == "fail")

    @property
    def weak(self) -> tuple[VerifyBlock, ...]:
        return tuple(b for b in self.blocks if b.status == "weak")

    def as_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "rules": list(self.rules), "only": self.only, "ok": self.ok,
                "checked": len(self.blocks), "failures": [b.as_dict() for b in self.failures],
                "weak": [b.as_dict() for b in self.weak], "blocks": [b.as_dict() for b in self.blocks]}


@quiet_floats
def verify(tensors: Mapping[str, Any], scheme: str | Scheme, *, rules: Iterable[str | Rule] = (),
           only: str | None = None, layers: Sequence[Layer] | None = None,
           on_progress: OnProgress | None = None, alpha: float = FILE_ALPHA) -> VerifyReport:
    """Plan `scheme` (+ `rules`, `only`) with planning.plan and check each planned block against its initializer.
    `on_progress(done, total)`: the bytes of the planned blocks gone through (twice each: summaries, then checks;
    each pass counts half). `alpha`: a file drawn as planned fails with probability ≤ alpha, whatever its size
    (every test of every block at `bonferroni_level(blocks, alpha)`).

    Raises what plan() raises (SchemeError, RuleError, NothingToDoError, LayoutError), UsageError for an alpha
    outside [1e-100, 1).
    """
    if not 1e-100 <= alpha < 1:
        raise UsageError(f"alpha={alpha!r}: the false-alarm bound must be a probability in [1e-100, 1)")
    the_plan = plan(tensors, scheme, rules=rules, only=only, for_writing=False, layers=layers)
    pooled = pooled_groups(the_plan.entries)  # per-head blocks of one rule: also tested together
    level = bonferroni_level(len(the_plan.entries) + len(pooled), alpha)
    cache = _Cache(tensors)
    sizes = {(entry.name, entry.start, entry.stop): rows_bytes(tensors[entry.name], entry.start, entry.stop)
             for entry in the_plan.entries}
    tally = Tally(sum(sizes.values()), on_progress, passes=2)
    cache.prefetch(sizes, on_summary=lambda key: tally.add(sizes[key]))
    tally.reach(sum(sizes.values()))  # summaries not computed ahead are computed with the checks
    layer_of = {name: layer for layer in the_plan.layers for name in layer.params.values()}
    verdicts = list(_check_all(the_plan.entries, cache, level))
    for group in pooled:
        if all(verdicts[index].ok for index in group):
            together = check_pooled([the_plan.entries[index] for index in group], cache, level)
            if not together.ok:
                for index in group:
                    verdicts[index] = together
    blocks = []
    for entry, verdict in zip(the_plan.entries, verdicts, strict=True):
        tally.add(sizes[(entry.name, entry.start, entry.stop)])
        status = "fail" if not verdict.ok else ("ok" if verdict.decided else "weak")
        detail = verdict.detail
        unheld = cannot_hold(cache.dtype(entry.name), entry.initializer, dict(entry.args))
        if unheld is not None:  # whatever its values, the block cannot hold what the scheme draws
            status, detail = "fail", f"{cache.dtype(entry.name)} cannot hold {entry.call}: {unheld}"
        found = ""
        if status == "fail":
            layer = layer_of[entry.name]
            block = next(b for b in layer.blocks(entry.kind) if b.start == entry.start)
            found = _classify(layer, block, cache).label
        expected = entry.call + (" per matrix" if entry.per == "matrix" else "")
        blocks.append(VerifyBlock(entry.name, entry.kind, entry.gate, entry.start, entry.stop, entry.rule, expected,
                                  entry.per, status, found, detail, entry.head))
    return VerifyReport(the_plan.scheme, the_plan.rules, only, tuple(blocks), alpha, level)
