"""The JSON documents of every command (one JSON Schema each in `schemas/`), and the per-gate statistics they and the
tables share. Nothing here prints; the CLI decides where each document goes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .diagnostics.stats import Stats, block_stats, effective_bias, to_array
from .errors import UsageError, unknown_name
from .init.planning import Plan
from .layouts.discovery import KINDS, Layer
from .layouts.patterns import compile_user_pattern

if TYPE_CHECKING:
    import torch

    from .diagnostics import Diagnosis, DiffReport, LayerDiagnosis, VerifyReport


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_stats(stats: Stats) -> dict[str, float | None]:
    return {key: _finite(value) for key, value in stats.items()}


# Parameters by name: numpy arrays (inspect, verify, diff read without torch) or torch tensors (apply, new)
Tensors = Mapping[str, Any]


Known = Mapping[tuple[str, int], Stats]  # statistics already computed, by (parameter, first row) of the block


def known_stats(diagnosis: LayerDiagnosis | None) -> dict[tuple[str, int], Stats]:
    """The diagnosis's block statistics, to show without reading the values again (blocks holding NaN or Inf are
    left out: the report shows their NaN statistics, the diagnosis those of the finite values)."""
    if diagnosis is None:
        return {}
    return {(b.name, b.start): {"mean": b.mean, "std": b.std, "min": b.min, "max": b.max}
            for b in diagnosis.blocks if b.nan == b.inf == 0}


def param_document(layer: Layer, kind: str, tensors: Tensors, known: Known | None = None, *,
                   as_json: bool = True) -> dict[str, Any]:
    """A parameter's shape, dtype and per-block statistics (non-finite ones as None when `as_json`)."""
    name = layer.params[kind]
    tensor = tensors[name]
    known = known or {}
    shown_stats = _json_stats if as_json else dict
    return {
        "name": name,
        "kind": kind,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "blocks": [{"gate": block.gate, "head": block.head,
                    **shown_stats(known.get((name, block.start)) or block_stats(tensor[block.start:block.stop]))}
                   for block in layer.blocks(kind)],
    }


def layer_document(layer: Layer, tensors: Tensors, kinds: Iterable[str], known: Known | None = None) -> dict[str, Any]:
    return {
        "prefix": layer.prefix,
        "cell": layer.cell,
        "is_cell": layer.is_cell,
        "layer": layer.layer,
        "direction": layer.direction,
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "proj_size": layer.proj_size,
        "bias": layer.bias,
        "family": layer.family or None, "heads": layer.heads, "head_size": layer.head_size or None,
        "block_index": layer.block_index, "num_blocks": layer.num_blocks,
        "params": [param_document(layer, kind, tensors, known) for kind in kinds],
        "effective_bias": [{"gate": gate, **_json_stats(stats)}
                           for gate, stats in effective_bias(layer, tensors)],
    }


def selected_kinds(layer: Layer, only: str | None) -> list[str]:
    pattern = compile_user_pattern(only, "only") if only else None
    return [kind for kind in KINDS if kind in layer.params
            and (pattern is None or pattern.search(layer.params[kind]))]


_DIAGNOSTIC_FIELDS = ("max_abs", "nan", "inf", "orthogonality_error", "orthogonality_error_is_bound", "sv_min",
                      "sv_max", "identity_error", "family", "families", "decided", "histogram", "spectrum")


def inspect_document(
    layers: Iterable[Layer], tensors: Tensors, *, source: str, fmt: str,
    only: str | None = None, metadata: Mapping[str, str] | None = None, diagnosis: Diagnosis | None = None,
) -> dict[str, Any]:
    """The `inspect --json` document (schema in README.md), with the diagnosis merged in when given."""
    diagnosed = {} if diagnosis is None else {d.layer: d for d in diagnosis.layers}
    docs = []
    for layer in layers:
        kinds = selected_kinds(layer, only)
        if not kinds:
            continue
        found = diagnosed.get(layer)
        doc = layer_document(layer, tensors, kinds, known_stats(found))
        if found is not None:
            extra = {(b.name, b.start): b.as_dict() for b in found.blocks}
            for param in doc["params"]:
                for block, spec in zip(param["blocks"], layer.blocks(param["kind"]), strict=True):
                    block.update({k: extra[(spec.name, spec.start)][k] for k in _DIAGNOSTIC_FIELDS})
            doc["matrices"] = [m.as_dict() for m in found.matrices]
            doc["scheme"] = found.scheme.as_dict()
            doc["notes"] = list(found.notes)
        docs.append(doc)
    # `warnings` is there without a diagnosis too (no layer found): a document's keys never depend on the data
    return {"input": source, "format": fmt, "metadata": dict(metadata or {}), "layers": docs,
            "warnings": [w.as_dict() for w in diagnosis.warnings] if diagnosis is not None else []}


def capture_stats(the_plan: Plan, tensors: Mapping[str, torch.Tensor]) -> dict[tuple[str, int], Stats]:
    """Statistics of every planned block, keyed by (parameter name, start row)."""
    arrays: dict[str, Any] = {}  # each parameter converted once, not once per block (10,000 layers)
    for entry in the_plan.entries:
        if entry.name not in arrays:
            arrays[entry.name] = to_array(tensors[entry.name])
    return {(e.name, e.start): block_stats(arrays[e.name][e.start:e.stop]) for e in the_plan.entries}


def apply_document(
    the_plan: Plan, tensors: Mapping[str, torch.Tensor], before: Mapping[tuple[str, int], Stats], *,
    source: str, fmt: str, output: str | None, dry_run: bool = False,
    warnings: Iterable[tuple[str, str]] = (), notes: Iterable[str] = (),
) -> dict[str, Any]:
    """The `apply --json` / `new --json` document (schema: `schemas/apply.json`): the layers as inspect shows them
    plus scheme, rules, seed, output, what was skipped, warnings as (code, message) and notes, and per block the rule
    and initializer applied and the statistics before."""
    entries = {(e.name, e.start): e for e in the_plan.entries}
    planned = {name for name, _ in entries}
    layers = []
    for layer in the_plan.layers:
        kinds = [kind for kind in KINDS if kind in layer.params and layer.params[kind] in planned]
        doc = layer_document(layer, tensors, kinds)
        for param in doc["params"]:
            for block, spec in zip(param["blocks"], layer.blocks(param["kind"]), strict=False):
                entry = entries.get((spec.name, spec.start))
                block["rule"] = entry.rule if entry else None
                block["initializer"] = entry.call if entry else None
                block["per"] = entry.per if entry else None
                block["before"] = _json_stats(before[(spec.name, spec.start)]) if entry else None
        layers.append(doc)
    return {"input": source, "format": fmt, "scheme": the_plan.scheme, "rules": list(the_plan.rules),
            "seed": the_plan.seed, "only": the_plan.only, "output": output, "dry_run": dry_run, "layers": layers,
            "skipped": skipped_document(the_plan.skipped),
            "warnings": [{"code": code, "message": message} for code, message in warnings], "notes": list(notes)}


def skipped_document(skipped: Iterable[Any]) -> list[dict[str, Any]]:
    """Groups that looked recurrent and were left alone: their tensors' names, why, and a `--layout` to declare."""
    return [{"names": list(item.names), "reason": item.reason, "declare": item.declare} for item in skipped]


def suspects_document(suspects: Iterable[Any]) -> list[dict[str, Any]]:
    """Tensors named like recurrent ones that no layer holds: name, shape, why, and a `--layout` to declare."""
    return [{"name": item.name, "shape": list(item.shape), "note": item.note, "declare": item.declare}
            for item in suspects]


def verify_document(source: str, report: VerifyReport, skipped: Iterable[Any]) -> dict[str, Any]:
    """The `verify --json` document for one input (schema: `schemas/verify.json`)."""
    return {"input": source, **report.as_dict(), "skipped": skipped_document(skipped)}


def diff_document(a: str, b: str, report: DiffReport, skipped: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The `diff --json` document (schema: `schemas/diff.json`); `skipped` pairs each group with its file."""
    return {"a": a, "b": b, **report.as_dict(),
            "skipped": [{"file": which, **skipped_document([item])[0]} for which, item in skipped]}


def schemes_document(schemes: Iterable[Any]) -> list[dict[str, Any]]:
    """The `schemes --json` document (schema: `schemas/schemes.json`): one object per registered scheme."""
    return [{"name": s.name, "signature": s.signature, "description": s.description, "rules": list(s.rules),
             "params": dict(s.params), "reference": s.reference, "cells": sorted(s.cells),
             "families": sorted(s.families)} for s in schemes]


SCHEMA_NAMES = ("inspect", "apply", "new", "verify", "diff", "schemes", "error")


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) shipped for a document: a command's name, or `error`."""
    from importlib.resources import files

    if name not in SCHEMA_NAMES:
        raise UsageError(unknown_name("JSON Schema", name, SCHEMA_NAMES))
    return json.loads(files(__package__).joinpath("schemas", f"{name}.json").read_text(encoding="utf-8"))


def error_document(source: str, message: str, exit_status: int) -> dict[str, Any]:
    """The document of an input that failed, in a command's JSON Lines (schema: `schemas/error.json`)."""
    return {"input": source, "error": message, "exit_status": exit_status}
