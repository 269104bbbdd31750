"""How layer discovery scales: `discover` on n and 10·n groups, side by side in one run (prints the ratios).

    .venv/bin/python benchmarks/bench_discover.py [n]

Two shapes of checkpoint: mixed groups (a quarter torch.nn layers, a quarter with an odd shape, a quarter
hand-written look-alikes, a quarter spectral-normalized, so half are skipped), and a flat list of same-shaped
`Linear` layers under one module (the look-alike search must not compare each with all its siblings). A linear
search takes about 10 times as long for 10 times the groups; a quadratic one about 100 times.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rnninit_cli.layouts.discovery import discover


@dataclass(frozen=True)
class Shaped:
    shape: tuple[int, ...]


def mixed(count: int) -> dict[str, Shaped]:
    shapes: dict[str, Shaped] = {}
    for index in range(count):
        prefix, kind = f"m{index}.", index % 4
        if kind == 0:
            shapes |= {prefix + "weight_ih_l0": Shaped((16, 3)), prefix + "weight_hh_l0": Shaped((16, 4))}
        elif kind == 1:
            shapes |= {prefix + "weight_ih_l0": Shaped((16, 3)), prefix + "weight_hh_l0": Shaped((15, 4))}
        elif kind == 2:
            shapes |= {prefix + "x2g.weight": Shaped((16, 3)), prefix + "p2g.weight": Shaped((16, 4))}
        else:
            shapes |= {prefix + "weight_ih_l0": Shaped((16, 3)),
                       prefix + "parametrizations.weight_hh_l0.original": Shaped((16, 4))}
    return shapes


def siblings(count: int) -> dict[str, Shaped]:
    shapes: dict[str, Shaped] = {}
    for index in range(count):  # a flat ModuleList of Linear(4, 16)
        shapes[f"heads.{index}.weight"] = Shaped((16, 4))
        shapes[f"heads.{index}.bias"] = Shaped((16,))
    return shapes


def seconds(shapes: dict[str, Shaped], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        discover(shapes)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(f"{'checkpoint':<12}{'n':>8}{'s':>10}{'10n':>8}{'s':>10}{'ratio':>8}")
    for name, build in (("mixed", mixed), ("siblings", siblings)):
        small, large = seconds(build(n)), seconds(build(10 * n), runs=1)
        print(f"{name:<12}{n:>8}{small:>10.3f}{10 * n:>8}{large:>10.3f}{large / small:>8.1f}")


if __name__ == "__main__":
    main()
