"""Whole-file operations: open a checkpoint (file, model folder or standard input), and the
load → discover → plan → apply → save pipeline behind `rnninit apply` and `rnninit inspect`.

Large files take the byte-patching path (`tensorfile`): untouched tensors never enter memory. A
checkpoint is loaded whole only when the output cannot be a patched copy of the input: standard
input or output, a change of format, dropping optimizer state, or a legacy `.pt`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import __version__
from .checkpoint import (
    STDIO,
    Checkpoint,
    atomic_write,
    check_output,
    load_checkpoint,
    output_format,
    refuse_non_tensors,
    require_regular_file,
    save_checkpoint,
    save_whole,
)
from .errors import OutputError, UsageError
from .folders import ModelFolder, open_folder
from .layout import Layer, find_layers
from .planning import Plan, PlanEntry, apply_plan, draw_seed, plan, refuse_overlapping
from .report import Stats, capture_stats
from .tensorfile import CannotPatch, TensorFile, index_file

if TYPE_CHECKING:
    import torch

Source = Checkpoint | TensorFile | ModelFolder


def open_source(source: str, *, whole: bool = False) -> Source:
    """A model folder, an indexed file, or (for '-', legacy files, or `whole`) a loaded checkpoint."""
    path = Path(source)
    if source != STDIO and path.is_dir():
        return open_folder(path)
    if source == STDIO or whole:
        return load_checkpoint(source)
    if not path.exists():
        return load_checkpoint(source)  # raises the "no such file" error
    require_regular_file(path)
    try:
        return index_file(path)
    except CannotPatch:
        return load_checkpoint(source)
    except OSError:
        return load_checkpoint(source)  # raises a clean "cannot read" error


def recorded_metadata(the_plan: Plan) -> dict[str, str]:
    """What rnninit records in its outputs so that every run can be reproduced."""
    metadata = {"rnninit.version": __version__, "rnninit.scheme": the_plan.scheme,
                "rnninit.rules": json.dumps(list(the_plan.rules)), "rnninit.seed": str(the_plan.seed)}
    if the_plan.only:
        metadata["rnninit.only"] = the_plan.only
    return metadata


@dataclass
class Inspection:
    """What `inspect` reports: the layers found and their parameters' values."""

    source: str
    format: str
    tensor_count: int
    metadata: dict[str, str]
    layers: list[Layer]
    tensors: dict[str, torch.Tensor]


def inspect_checkpoint(source: str, only: str | None = None) -> Inspection:
    """Find the recurrent layers of a checkpoint and read their parameters (and nothing else)."""
    opened = open_source(source)
    shapes = opened.shapes()
    layers = find_layers(shapes)
    tensors = opened.load([name for layer in layers for name in layer.params.values()])
    return Inspection(source, opened.format, len(shapes), dict(opened.metadata), layers, tensors)


@dataclass
class RewriteResult:
    """What `apply` did: the plan (with its seed), values before and after, and what to tell the user."""

    plan: Plan
    tensors: dict[str, torch.Tensor]  # every parameter of the planned layers, as now written
    before: dict[tuple[str, int], Stats]
    input_format: str
    output_format: str
    output: str | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _shared_warnings(opened: Source, written: Iterable[str]) -> list[str]:
    spans = opened.storage_spans()
    messages = []
    for name in written:
        storage, start, stop = spans[name]
        others = [other for other, (s, a, b) in spans.items()
                  if other != name and s == storage and a < stop and start < b]
        if others:
            messages.append(f"{name} shares its storage with {', '.join(others)} (tied weights): "
                            "rewriting it changed those too")
    return messages


def rewrite(
    source: str,
    output: str | None,
    scheme: str,
    *,
    rules: Iterable[str] = (),
    only: str | None = None,
    seed: int | None = None,
    fmt: str | None = None,
    dry_run: bool = False,
    in_place: bool = False,
    force: bool = False,
    tensors_only: bool = False,
    drop_optimizer_state: bool = False,
    on_entry: Callable[[PlanEntry], None] | None = None,
    report_before: bool = True,
) -> RewriteResult:
    """Apply `scheme` (then `rules`) to every recurrent parameter of `source`; write `output`.
    `report_before=False` skips the statistics of the old values (nobody will see them)."""
    if output is None and in_place:
        output = source
    if output is None and not dry_run:
        raise UsageError("give -o OUTPUT, --in-place, or --dry-run")
    if in_place and source == STDIO:
        raise UsageError("--in-place needs a file, not standard input")
    if output is not None and not dry_run:
        check_output(source, output, force=force, in_place=in_place)

    opened = open_source(source)
    target_format = output_format(output or "", fmt, opened.format) if output else opened.format
    if isinstance(opened, ModelFolder):
        _check_folder_output(opened, output, fmt)
        target_format = opened.format
    elif isinstance(opened, TensorFile) and (target_format != opened.format or output == STDIO
                                             or drop_optimizer_state):
        opened = load_checkpoint(source)

    notes = []
    if drop_optimizer_state and isinstance(opened, Checkpoint):
        dropped = opened.optimizer_paths
        opened.drop(dropped)
        notes.append(f"removed optimizer state: {', '.join(dropped)}" if dropped else
                     "no optimizer state to remove")
    if target_format == "safetensors" and not isinstance(opened, ModelFolder):
        refuse_non_tensors(opened.non_tensor_paths, tensors_only)

    shapes = opened.shapes()
    the_plan = plan(shapes, scheme, rules=rules, only=only)
    names = [name for layer in the_plan.layers for name in layer.params.values()]
    tensors = opened.load(names)
    before = capture_stats(the_plan, tensors) if report_before else {}
    written = list(dict.fromkeys(entry.name for entry in the_plan.writes))
    refuse_overlapping(shapes, written)  # with the file's own strides (`tensors` are copies)
    warnings = _shared_warnings(opened, written)
    optimizer = opened.optimizer_paths
    if optimizer and written:
        warnings.append(f"the checkpoint holds optimizer state ({', '.join(optimizer)}); its moment "
                        f"buffers for the {len(written)} rewritten parameter(s) are now stale. Pass "
                        "--drop-optimizer-state to remove it, or reset the optimizer when resuming")
    result = RewriteResult(the_plan, tensors, before, opened.format, target_format, None, warnings, notes)
    if dry_run or output is None:
        result.plan = the_plan if seed is None else replace(the_plan, seed=seed)
        return result

    the_plan = replace(the_plan, seed=draw_seed() if seed is None else seed)
    metadata = recorded_metadata(the_plan)
    updates = {name: tensors[name] for name in written}

    def draw() -> None:
        result.plan = apply_plan(the_plan, tensors, on_entry=on_entry)

    if isinstance(opened, TensorFile):
        try:
            atomic_write(output, lambda sink: _copy_while(opened, sink, metadata, updates, draw))
        except CannotPatch:
            atomic_write(output, lambda sink: save_whole(Path(source), updates, metadata, sink, target_format,
                                                         tensors_only=tensors_only))
    else:
        draw()
        if isinstance(opened, ModelFolder):
            opened.write(Path(output), updates, metadata)
        else:
            save_checkpoint(opened, output, target_format, metadata=metadata, tensors_only=tensors_only)
    result.output = output
    return result


def _copy_while(
    opened: TensorFile, sink: BinaryIO, metadata: dict[str, str], updates: dict[str, torch.Tensor],
    draw: Callable[[], None],
) -> None:
    """Copy the input into `sink` in a second thread while `draw` computes the new values (the kernel
    copy and the initializer math overlap), then patch the new values in."""
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            opened.copy_into(sink, metadata, updates)
        except BaseException as error:
            failure.append(error)

    copier = threading.Thread(target=copy, name="rnninit-copy", daemon=True)
    copier.start()
    try:
        draw()
    finally:
        _wait_for(copier)  # the sink must not be closed under the copy, even on Ctrl-C
    if failure:
        raise failure[0]
    opened.patch(sink, updates, metadata)


def _wait_for(thread: threading.Thread) -> None:
    """Join `thread` even through Ctrl-C (then re-raise it once the thread is done)."""
    interrupted: KeyboardInterrupt | None = None
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt as error:
            interrupted = error
    if interrupted is not None:
        raise interrupted


def _check_folder_output(folder: ModelFolder, output: str | None, fmt: str | None) -> None:
    if output == STDIO:
        raise UsageError(f"{folder.path} is a model folder; its output must be a folder, not -")
    if fmt is not None and fmt != folder.format:
        raise UsageError(f"{folder.path} holds {folder.format} shards; a model folder keeps its format "
                         "(drop --format)")
    if output is not None and Path(output).resolve().is_relative_to(folder.path.resolve()) and \
            Path(output).resolve() != folder.path.resolve():
        raise OutputError(f"{output} is inside the input folder; choose a folder outside it")




_CELL_CLASSES = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM", "rnncell": "RNNCell",
                 "grucell": "GRUCell", "lstmcell": "LSTMCell"}


def build_module_state(
    cell: str, *, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
    proj_size: int, bias: bool, seed: int,
) -> dict[str, Any]:
    """The state_dict of a fresh `torch.nn` recurrent module, built under a fixed RNG."""
    import torch

    cls = getattr(torch.nn, _CELL_CLASSES[cell])
    kwargs: dict[str, Any] = {"bias": bias}
    if cell.endswith("cell"):
        if num_layers != 1 or bidirectional or proj_size:
            raise UsageError(f"{cell} is a single cell: --num-layers, --bidirectional and --proj-size "
                             "apply to rnn, gru and lstm")
    else:
        kwargs |= {"num_layers": num_layers, "bidirectional": bidirectional}
        if proj_size:
            if cell != "lstm":
                raise UsageError("--proj-size exists only for lstm")
            kwargs["proj_size"] = proj_size
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = cls(input_size, hidden_size, **kwargs)
    except ValueError as error:
        raise UsageError(f"cannot build {cell}: {error}") from None
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def create(
    cell: str,
    output: str,
    scheme: str,
    *,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    proj_size: int = 0,
    bias: bool = True,
    prefix: str = "",
    rules: Iterable[str] = (),
    seed: int | None = None,
    fmt: str | None = None,
    force: bool = False,
) -> RewriteResult:
    """Build a `torch.nn` recurrent layer, initialize it by `scheme`, and write its state_dict."""
    check_output(STDIO, output, force=force, in_place=False)
    seed = draw_seed() if seed is None else seed
    state = build_module_state(cell, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                               bidirectional=bidirectional, proj_size=proj_size, bias=bias, seed=seed)
    if prefix and not prefix.endswith((".", "/")):
        prefix += "."
    tensors = {prefix + name: tensor for name, tensor in state.items()}
    the_plan = plan(tensors, scheme, rules=rules)
    before = capture_stats(the_plan, tensors)
    the_plan = apply_plan(the_plan, tensors, seed=seed)
    target_format = output_format(output, fmt, "pt")
    save_checkpoint(Checkpoint(target_format, tensors, tensors), output, target_format,
                    metadata=recorded_metadata(the_plan))
    return RewriteResult(the_plan, tensors, before, target_format, target_format, output)
