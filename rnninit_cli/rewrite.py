"""Whole-file operations: open a checkpoint (file, model folder or standard input), and the
load → discover → plan → apply → save pipeline behind `rnninit apply` and `rnninit inspect`.

Large files take the byte-patching path (`tensorfile`): untouched tensors never enter memory. A
checkpoint is loaded whole only when the output cannot be a patched copy of the input: standard
input or output, a change of format, dropping optimizer state, or a legacy `.pt`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import __version__
from .diagnostics.progress import OnProgress, Tally, rows_bytes
from .diagnostics.stats import Stats
from .documents import capture_stats
from .errors import NothingToDoError, NotRecognisedError, OutputError, UsageError
from .formats.atomic import FileIdentity, atomic_write, flush_early, locked_input
from .formats.checkpoint import (
    ArrayCheckpoint,
    Checkpoint,
    load_checkpoint,
    read_checkpoint,
    require_regular_file,
    save_checkpoint,
    save_whole,
)
from .formats.dcp import DcpFolder, is_dcp_folder, open_dcp
from .formats.folders import ModelFolder, open_folder
from .formats.kinds import STDIO
from .formats.outputs import (
    check_folder_output_name,
    check_output,
    check_output_name,
    output_format,
    refuse_foreign_objects,
    refuse_non_tensors,
)
from .formats.tensorfile import CannotPatch, TensorFile, index_file, open_regular
from .init.onethread import wait_through_interrupts
from .init.planning import (
    Plan,
    PlanEntry,
    apply_plan,
    draw_seed,
    plan,
    refuse_overlapping,
    refuse_skipped,
    set_aside_quantized,
)
from .layouts.discovery import Discovery, Layer, Skipped, Suspect, discover
from .packing import describe_packed, packed_as_float, packed_updates, repack, set_aside_packed, source_values
from .stale import model_tensors, shared_storage_warnings, stale_optimizer_warning

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from .diagnostics.quantized import QuantizedLayer
    from .layouts.declared import Declaration
    from .packing import PackedFloat

Source = Checkpoint | TensorFile | ModelFolder | DcpFolder
Folder = ModelFolder | DcpFolder


def open_source(source: str, *, whole: bool = False, descriptor: int | None = None,
                load: Callable[[str, bytes | None], Checkpoint | ArrayCheckpoint] = load_checkpoint,
                ) -> Source | ArrayCheckpoint:
    """A model folder, an indexed file, or (for '-', legacy files, or `whole`) a checkpoint read whole by `load`:
    `load_checkpoint` (torch tensors, to be rewritten), or `read_checkpoint` (numpy arrays, for reading).

    A file is opened once: an indexed file keeps that descriptor (close() it: see `close_source`), a
    loaded one is read whole from it. `descriptor`: read this open file (e.g. the locked INPUT of
    --in-place) instead of opening `source` again; it is duplicated, not taken over."""
    path = Path(source)
    if source != STDIO and path.is_dir():
        return open_dcp(path) if is_dcp_folder(path) else open_folder(path)
    if source == STDIO:
        return load(source, None)
    if not path.exists():
        return load(source, None)  # raises the "no such file" error
    require_regular_file(path)
    try:
        handle = open_regular(path) if descriptor is None else os.fdopen(os.dup(descriptor), "rb")
    except OSError:
        return load(source, None)  # raises a clean "cannot read" error
    try:
        if not whole:
            try:
                return index_file(path, handle)  # it keeps `handle`
            except CannotPatch:
                pass
        handle.seek(0)  # indexing moved it: the whole file, from its first byte
        data = handle.read()
    except OSError:
        handle.close()
        return load(source, None)  # raises a clean "cannot read" error
    except BaseException:
        handle.close()
        raise
    handle.close()
    return load(source, data)


def close_source(opened: object) -> None:
    """Close what open_source opened (a loaded checkpoint holds nothing open)."""
    if isinstance(opened, (TensorFile, ModelFolder, DcpFolder)):
        opened.close()


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
    tensors: dict[str, Any]  # the layers' effective parameters (as the layers compute with them), numpy arrays
    skipped: list[Skipped] = field(default_factory=list)
    suspects: list[Suspect] = field(default_factory=list)
    views: list[str] = field(default_factory=list)  # how parameters stored in another form were read
    foreign_classes: list[str] = field(default_factory=list)  # objects of other classes the file holds
    quantized: list[str] = field(default_factory=list)  # quantized tensors no recurrent layer holds: "name (dtype)"
    unselected: list[str] = field(default_factory=list)  # when `only` selects no layer: the recurrent parameters
    packed: list[QuantizedLayer] = field(default_factory=list)  # dynamically quantized layers (see `packing`)


def _identities(opened: Any) -> dict[str, Any] | None:
    """Where each tensor's bytes lie, so that two names of one tensor are known as one (None: not known)."""
    spans = getattr(opened, "storage_spans", None)
    return None if spans is None else spans()


def inspect_checkpoint(source: str, only: str | None = None, *, layouts: Sequence[Declaration] = (),
                       strict: bool = False) -> Inspection:
    """Find the recurrent layers of a checkpoint and read their parameters (and nothing else), as numpy arrays
    (bfloat16 as its float32 values, float8 through ml_dtypes), without torch, whatever the source: a .safetensors
    file, a .pt of any protocol (zip or legacy), a TorchScript archive, a model folder or standard input.

    `only` selects groups before they are checked; groups that cannot be understood are skipped and listed
    (`strict`: a LayoutError instead)."""
    opened = open_source(source, load=read_checkpoint)
    try:
        return inspection_of(opened, source, only, layouts=layouts, strict=strict,
                             tensors_of=lambda found: found.effective(opened.arrays(found.sources)))
    finally:
        close_source(opened)


def inspection_of(opened: Any, source: str, only: str | None, *, layouts: Sequence[Declaration], strict: bool,
                  tensors_of: Callable[[Discovery], dict[str, Any]]) -> Inspection:
    """The Inspection of an opened source; `tensors_of(found)`: the found layers' parameters by effective name
    (read whole by `inspect_checkpoint`, left in the file by `reading.open_inspection`)."""
    shapes = opened.shape_records()
    unpacked, packed = set_aside_packed(opened, model_tensors(opened, shapes))
    _, packed = packed_as_float(opened, unpacked, packed)
    described, packed = describe_packed(opened, shapes, packed, only)
    kept, quantized = set_aside_quantized(unpacked, layouts=layouts, only=only)
    found = discover(kept, layouts=layouts, only=only, identities=_identities(opened))
    skipped = [*packed, *quantized, *found.skipped]
    if strict:
        refuse_skipped(skipped)
    held = {name for item in quantized for name in item.names}
    listed = [f"{name} ({record.dtype})" for name, record in unpacked.items() if name not in kept
              and name not in held]
    unselected = [name for layer in discover(kept, layouts=layouts).layers for name in layer.params.values()] \
        if only is not None and not found.layers else []
    return Inspection(source, opened.format, len(shapes), dict(opened.metadata), list(found.layers), tensors_of(found),
                      skipped, list(found.suspects), [view.describe for view in found.views],
                      foreign_classes=list(getattr(opened, "foreign_classes", [])), quantized=listed,
                      unselected=unselected, packed=described)


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
    warning_codes: list[str] = field(default_factory=list)  # one per warning, for --json: what kind of warning


def _plan_or_hints(opened: Source, unpacked: dict[str, Any], scheme: str, **options: Any) -> Plan:
    """The plan; when it finds no layer at all, the look-alikes `inspect` would hint at come with the error."""
    try:
        return plan(unpacked, scheme, **options)
    except NothingToDoError as error:
        everything = discover(unpacked, layouts=options.get("layouts", ()), identities=_identities(opened))
        if not everything.layers and everything.suspects:  # nothing found: the hints `inspect` gives
            hinted = NotRecognisedError(str(error), everything.suspects)
            hinted.cli_message = error.cli_message  # in the command line's words (--layout, not layouts=)
            raise hinted from None
        raise


def _packed_plan(opened: Source, shapes: dict[str, Any], scheme: str, **options: Any,
                 ) -> tuple[Plan, PackedFloat, list[str]]:
    """The plan of the model tensors of `opened` (`shapes`), its packed records planned as their float layers
    (`packing`), and the notes it brings: effective parameters, packed modules rewritten."""
    unpacked, packed = set_aside_packed(opened, model_tensors(opened, shapes))
    as_float, packed = packed_as_float(opened, unpacked, packed)
    the_plan = _plan_or_hints(opened, {**unpacked, **as_float.shapes}, scheme, skipped=packed, **options)
    notes = [f"effective parameter: {view.describe}" for view in the_plan.views]
    return the_plan, as_float, notes + as_float.notes(the_plan.written_sources)


def _rewrite_warnings(opened: Source, the_plan: Plan, shapes: dict[str, Any], packed: PackedFloat, *,
                      dry_run: bool = False) -> tuple[list[str], list[str]]:
    """What `apply` warns about, and a code for each (--json): skipped groups, tied weights, stale optimizer state,
    for the stored tensors the plan rewrites (those behind the float parameters of `packed` included)."""
    written = [name for names in packed.stored_of(the_plan.written_sources) for name in names]
    shared = shared_storage_warnings(opened, written, [cell.path for cell in packed.cells])
    warnings = [str(item) for item in the_plan.skipped] + shared
    codes = ["skipped"] * len(the_plan.skipped) + ["shared-storage"] * len(shared)
    stale = stale_optimizer_warning(opened, shapes, written, dry_run=dry_run)
    if stale:
        warnings.append(stale)
        codes.append("stale-optimizer-state")
    return warnings, codes


@dataclass(frozen=True)
class RewriteOptions:
    """How `rewrite` runs: everything `rnninit apply` takes besides INPUT, OUTPUT and SCHEME."""

    rules: tuple[str, ...] = ()
    only: str | None = None
    seed: int | None = None
    fmt: str | None = None  # the output format; default: OUTPUT's extension, else the input's format
    dry_run: bool = False
    in_place: bool = False
    force: bool = False
    tensors_only: bool = False
    drop_optimizer_state: bool = False
    report_before: bool = True  # False skips the statistics of the old values (nobody will see them)
    layouts: tuple[Declaration, ...] = ()
    strict: bool = False


def rewrite(
    source: str,
    output: str | None,
    scheme: str,
    options: RewriteOptions = RewriteOptions(),
    *,
    on_entry: Callable[[PlanEntry], None] | None = None,
    on_progress: OnProgress | None = None,
) -> RewriteResult:
    """Apply `scheme` (then `options.rules`) to every recurrent parameter of `source`; write `output`.
    `on_entry` is called after each block is written; `on_progress(done, total)` with the bytes of the blocks
    written so far and in all (a progress bar).

    With --in-place, INPUT is locked (flock) for the whole run, so concurrent in-place runs take turns,
    and it is checked right before the rename: if another writer changed it meanwhile, nothing is written."""
    with ExitStack() as cleanup:
        return _rewrite(cleanup, source, output, scheme, options, on_entry, on_progress)


def _open_input(cleanup: ExitStack, source: str, output: str | None, *, in_place: bool,
                dry_run: bool) -> tuple[Source, FileIdentity | None]:
    """Open INPUT (closed by `cleanup`); for a real --in-place run, under its lock, with the identity
    (inode, size, mtime) that the path must still have right before the rename."""
    rewrites_input = in_place and not dry_run and output is not None and source != STDIO and output != STDIO \
        and Path(output).exists() and Path(source).exists() and Path(output).samefile(source)
    descriptor = None
    if rewrites_input:
        require_regular_file(Path(source))
        descriptor = cleanup.enter_context(locked_input(Path(source)))
    opened = open_source(source, descriptor=descriptor)
    cleanup.callback(close_source, opened)
    if descriptor is None or isinstance(opened, (ModelFolder, DcpFolder)):
        return opened, None  # a model folder in place: each shard is checked against its own identity
    return opened, FileIdentity.of(os.fstat(descriptor))


def _rewrite(
    cleanup: ExitStack,
    source: str,
    output: str | None,
    scheme: str,
    options: RewriteOptions,
    on_entry: Callable[[PlanEntry], None] | None,
    on_progress: OnProgress | None = None,
) -> RewriteResult:
    rules, only, seed, fmt, dry_run = options.rules, options.only, options.seed, options.fmt, options.dry_run
    in_place, force, tensors_only = options.in_place, options.force, options.tensors_only
    drop_optimizer_state, report_before = options.drop_optimizer_state, options.report_before
    layouts, strict = options.layouts, options.strict
    if output is None and in_place:
        output = source
    if output is None and not dry_run:
        raise UsageError("give -o OUTPUT, --in-place, or --dry-run")
    if in_place and source == STDIO:
        raise UsageError("--in-place needs a file, not standard input")
    if source != STDIO and is_dcp_folder(Path(source)):
        if in_place and not dry_run:
            raise UsageError(f"{source} is a torch.distributed.checkpoint folder: write the result into a new folder "
                             "with -o OUT_DIR (rnninit does not rewrite DCP folders in place)")
        if drop_optimizer_state:
            raise UsageError(f"{source} is a torch.distributed.checkpoint folder: --drop-optimizer-state cannot "
                             "remove entries from it (its .metadata lists them); drop the optimizer state when "
                             "loading it instead")
    if output is not None:
        check_output_name(source, output, fmt)
    if output is not None and not dry_run:
        check_output(source, output, force=force, in_place=in_place)
    if dry_run:
        planned = _plan_without_torch(source, output, scheme, options)
        if planned is not None:
            return planned

    opened, expect = _open_input(cleanup, source, output, in_place=in_place, dry_run=dry_run)
    if isinstance(opened, (ModelFolder, DcpFolder)):
        _check_folder_output(opened, output, fmt)
        target_format = opened.format
    else:
        target_format = output_format(output or "", fmt, opened.format, source) if output else opened.format
        if isinstance(opened, TensorFile) and (target_format != opened.format or output == STDIO
                                               or drop_optimizer_state):
            opened = load_checkpoint(source, opened.read_all())
    if isinstance(opened, Checkpoint) and output is not None and not dry_run:
        refuse_foreign_objects(opened)  # it is written whole: objects read as records cannot be pickled again

    notes = []
    if drop_optimizer_state and isinstance(opened, Checkpoint):
        found = opened.optimizer_paths
        if not found:
            notes.append("no optimizer state to remove")
        elif target_format == "safetensors":  # which cannot hold an optimizer's state at all
            opened.drop(found)
            notes.append(f"removed optimizer state: {', '.join(found)}")
        else:  # resumable: Lightning and optimizer.load_state_dict take it, the optimizer starting afresh
            opened.reset_optimizer_state(found)
            notes.append(f"reset optimizer state (per-parameter buffers removed, hyper-parameters kept): "
                         f"{', '.join(found)}")
    if target_format == "safetensors" and not isinstance(opened, (ModelFolder, DcpFolder)):
        refuse_non_tensors(opened.root, tensors_only)

    shapes = opened.shapes()
    the_plan, as_float, plan_notes = _packed_plan(opened, shapes, scheme, rules=rules, only=only, layouts=layouts,
                                                  strict=strict)
    notes.extend(plan_notes)
    tensors = source_values(opened, as_float, the_plan.sources, as_torch=True)
    discovery = the_plan.discovery
    effective = discovery.effective(tensors)
    # the total is known from here on: a bar shows it while the old values' statistics are taken
    written_entry = _counting(the_plan.writes, effective, on_entry, None if dry_run or output is None else on_progress)
    before = capture_stats(the_plan, effective) if report_before else {}
    written, _ = as_float.stored_of(the_plan.written_sources)
    refuse_overlapping(shapes, written)  # with the file's own strides (`tensors` are copies)
    warnings, codes = _rewrite_warnings(opened, the_plan, shapes, as_float, dry_run=dry_run)
    result = RewriteResult(the_plan, effective, before, opened.format, target_format, None, warnings, notes, codes)
    if dry_run or output is None:
        result.plan = the_plan if seed is None else replace(the_plan, seed=seed)
        return result

    the_plan = replace(the_plan, seed=draw_seed() if seed is None else seed)
    metadata = recorded_metadata(the_plan)
    updates = {name: tensors[name] for name in written}
    repacked = packed_updates(as_float, tensors, the_plan.written_sources)
    updates.update(repacked)
    scales: dict[str, dict[int, bytes]] = {}  # the packed weights' new scales, in data.pkl

    def draw() -> None:
        result.plan = apply_plan(the_plan, tensors, on_entry=written_entry)
        if repacked:
            scales[as_float.pickle] = repack(as_float, tensors, repacked)
        result.tensors = discovery.effective(tensors)  # what the layers now compute with

    if isinstance(opened, TensorFile):
        indexed = opened
        try:
            atomic_write(output, lambda sink: _copy_while(indexed, sink, metadata, updates, draw, scales),
                         expect=expect)
        except CannotPatch:
            if repacked:  # a whole re-save cannot write the packed records again
                raise
            atomic_write(output, lambda sink: save_whole(Path(source), updates, metadata, sink, target_format,
                                                         tensors_only=tensors_only, data=indexed.read_all()),
                         expect=expect)
    else:
        draw()
        if isinstance(opened, ModelFolder) and Path(output).exists() and Path(output).samefile(opened.path):
            opened.write_in_place(updates, metadata)
        elif isinstance(opened, (ModelFolder, DcpFolder)):
            opened.write(Path(output), updates, metadata)
        else:
            save_checkpoint(opened, output, target_format, metadata=metadata, tensors_only=tensors_only,
                            expect=expect)
    result.output = output
    return result


class _Strided:
    """A stored tensor's shape and strides, as `refuse_overlapping` reads them from a tensor (no torch needed)."""

    def __init__(self, shape: tuple[int, ...], strides: tuple[int, ...]) -> None:
        self.shape, self._strides = shape, strides

    def numel(self) -> int:
        return math.prod(self.shape)

    def stride(self) -> tuple[int, ...]:
        return self._strides


def _strided(opened: TensorFile | Folder) -> dict[str, _Strided]:
    """Shape and strides of every tensor of an indexed file or model folder (DCP stores each tensor on its own)."""
    files = [opened] if isinstance(opened, TensorFile) else \
        list(opened.shards.values()) if isinstance(opened, ModelFolder) else []
    return {name: _Strided(loc.shape, loc.stride) for file in files for name, loc in file.locations.items()}


def _plan_without_torch(source: str, output: str | None, scheme: str, options: RewriteOptions) -> RewriteResult | None:
    """`apply --dry-run` without torch: the plan from the shapes and dtypes the file records, rule arguments checked
    without drawing, the values before read as numpy arrays (only for a report that shows them); the same plan,
    warnings and errors as the run that writes. None where the file must be read whole (standard input, a legacy
    .pt, a change of format, standard output, dropping optimizer state): the torch path plans those."""
    if source == STDIO:  # read whole, once: by the torch path
        return None
    opened = open_source(source, load=read_checkpoint)
    try:
        if isinstance(opened, ArrayCheckpoint):
            return None
        if isinstance(opened, (ModelFolder, DcpFolder)):
            _check_folder_output(opened, output, options.fmt)
            target_format = opened.format
        else:
            target_format = output_format(output, options.fmt, opened.format, source) if output else opened.format
            if target_format != opened.format or output == STDIO or options.drop_optimizer_state:
                return None
        shapes = opened.shape_records()
        the_plan, as_float, notes = _packed_plan(opened, shapes, scheme, rules=options.rules, only=options.only,
                                                 layouts=options.layouts, strict=options.strict, probe=False)
        discovery = the_plan.discovery
        tensors = discovery.effective(source_values(opened, as_float, the_plan.sources, as_torch=False)) \
            if options.report_before else {}
        before = capture_stats(the_plan, tensors) if options.report_before else {}
        written, _ = as_float.stored_of(the_plan.written_sources)
        strided = _strided(opened)
        refuse_overlapping(strided, [name for name in written if name in strided])
        warnings, codes = _rewrite_warnings(opened, the_plan, shapes, as_float, dry_run=True)
        seeded = the_plan if options.seed is None else replace(the_plan, seed=options.seed)
        return RewriteResult(seeded, tensors, before, opened.format, target_format, None, warnings, notes, codes)
    finally:
        close_source(opened)


def _counting(entries: Sequence[PlanEntry], tensors: Mapping[str, Any], on_entry: Callable[[PlanEntry], None] | None,
              on_progress: OnProgress | None) -> Callable[[PlanEntry], None] | None:
    """`on_entry`, also reporting to `on_progress` the bytes of the blocks written so far out of all of `entries`
    (`tensors`: the parameters they are written into, by the entries' names)."""
    if on_progress is None:
        return on_entry
    sizes = {id(entry): rows_bytes(tensors[entry.name], entry.start, entry.stop) for entry in entries}
    tally = Tally(sum(sizes.values()), on_progress)

    def written(entry: PlanEntry) -> None:
        tally.add(sizes.get(id(entry), 0))
        if on_entry is not None:
            on_entry(entry)

    return written


def _copy_while(
    opened: TensorFile, sink: BinaryIO, metadata: dict[str, str], updates: dict[str, torch.Tensor],
    draw: Callable[[], None], raw: Mapping[str, Mapping[int, bytes]] | None = None,
) -> None:
    """Copy the input into `sink` in a second thread while `draw` computes the new values (the kernel
    copy and the initializer math overlap), then patch the new values in. The copy is flushed to the disk on its
    thread too, while the values are drawn: the fsync before the rename then waits only for the patched pages."""
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            opened.copy_into(sink, metadata, updates)
            flush_early(sink)
        except BaseException as error:
            failure.append(error)

    copier = threading.Thread(target=copy, name="rnninit-copy", daemon=True)
    copier.start()
    try:
        draw()
    finally:
        wait_through_interrupts(copier.join)  # the sink must not be closed under the copy, even on Ctrl-C
    if failure:
        raise failure[0]
    opened.patch(sink, updates, metadata, raw)


def _check_folder_output(folder: Folder, output: str | None, fmt: str | None) -> None:
    kind = "torch.distributed.checkpoint folder" if isinstance(folder, DcpFolder) else "model folder"
    if output == STDIO:
        raise UsageError(f"{folder.path} is a {kind}; its output must be a folder, not -")
    if output is not None:
        check_folder_output_name(folder.path, output, kind)
    if fmt is not None and fmt != folder.format:
        raise UsageError(f"{folder.path} holds {folder.format} shards; a {kind} keeps its format "
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
    on_progress: OnProgress | None = None,
) -> RewriteResult:
    """Build a `torch.nn` recurrent layer, initialize it by `scheme`, and write its state_dict.
    `on_progress(done, total)`: the bytes of the blocks drawn so far and in all."""
    check_output_name(STDIO, output, fmt)
    check_output(STDIO, output, force=force, in_place=False)
    seed = draw_seed() if seed is None else seed
    state = build_module_state(cell, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                               bidirectional=bidirectional, proj_size=proj_size, bias=bias, seed=seed)
    if prefix and not prefix.endswith((".", "/")):
        prefix += "."
    tensors = {prefix + name: tensor for name, tensor in state.items()}
    the_plan = plan(tensors, scheme, rules=rules)
    before = capture_stats(the_plan, tensors)
    the_plan = apply_plan(the_plan, tensors, seed=seed, on_entry=_counting(the_plan.writes, tensors, None, on_progress))
    target_format = output_format(output, fmt, "pt")
    save_checkpoint(Checkpoint(target_format, tensors, tensors), output, target_format,
                    metadata=recorded_metadata(the_plan))
    return RewriteResult(the_plan, tensors, before, target_format, target_format, output)
