"""The `rnninit` command line: a thin Typer layer over the library.

Human output goes to standard error, data (JSON, a checkpoint written to '-') to standard output.
torch is imported inside the commands that need it, so `rnninit --help` and `rnninit schemes` are
instant.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .errors import OutputError, RnnInitError, UsageError

app = typer.Typer(
    name="rnninit",
    help="Initialize the gates of PyTorch RNN / GRU / LSTM layers by a named scheme, block by block, "
    "in .pt and .safetensors checkpoints, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _make_console() -> Console:
    probe = Console(stderr=True)
    # Logs and pipes get 120 columns so per-gate tables are not folded; terminals use their width.
    wide = not probe.is_terminal and "COLUMNS" not in os.environ
    return Console(stderr=True, highlight=False, width=120 if wide else None)


console = _make_console()
_state = {"debug": False}


class Format(str, Enum):
    pt = "pt"
    safetensors = "safetensors"


class Cell(str, Enum):
    rnn = "rnn"
    gru = "gru"
    lstm = "lstm"
    rnncell = "rnncell"
    grucell = "grucell"
    lstmcell = "lstmcell"


@contextmanager
def _errors() -> Iterator[None]:
    """Map library errors to one `error: ...` line and an exit status; tracebacks only with --debug."""
    try:
        yield
    except RnnInitError as error:
        if _state["debug"]:
            console.print_exception()
        console.print(f"[bold red]error:[/] {error}", markup=True, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except BrokenPipeError:
        # the reader of standard output went away (e.g. `| head`): stop quietly, and point stdout
        # at /dev/null so that the interpreter's final flush does not complain again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[bold red]error:[/] interrupted", soft_wrap=True)
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as error:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] internal error: {type(error).__name__}: {error} "
                      "(run with --debug for the traceback)", soft_wrap=True, markup=True)
        raise typer.Exit(1) from None


def _emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rnninit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Initialize the gates of PyTorch RNN / GRU / LSTM layers by a named scheme."""
    _state["debug"] = debug


SchemeOption = Annotated[str, typer.Option(
    "--scheme", "-s", help="Scheme name, with arguments if it takes any: keras, 'chrono(tmax=200)'. "
    "See `rnninit schemes`.")]
RuleOption = Annotated[list[str] | None, typer.Option(
    "--rule", "-r", help="TARGET=INIT applied after the scheme, repeatable: "
    "bias_ih.f=constant(1), weight_hh=orthogonal(per=gate), weight_ih=keep.")]
SeedOption = Annotated[int | None, typer.Option(
    "--seed", min=0, help="Random seed; without it one is drawn, printed and recorded in the output.")]
OnlyOption = Annotated[str | None, typer.Option(
    "--only", help="Regular expression searched in full parameter names; only those are touched.")]
FormatOption = Annotated[Format | None, typer.Option(
    "--format", help="Output format; default: OUTPUT's extension, else the input's format.")]
ForceOption = Annotated[bool, typer.Option("--force", "-f", help="Replace an existing OUTPUT.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on standard output.")]


def _metadata(the_plan: Any) -> dict[str, str]:
    return {"rnninit.version": __version__, "rnninit.scheme": the_plan.scheme,
            "rnninit.rules": json.dumps(list(the_plan.rules)), "rnninit.seed": str(the_plan.seed),
            **({"rnninit.only": the_plan.only} if the_plan.only else {})}


def _apply_with_progress(the_plan: Any, tensors: Any, seed: int | None, quiet: bool) -> Any:
    from .planning import apply_plan

    if quiet or not console.is_terminal or len(the_plan.writes) < 64:
        return apply_plan(the_plan, tensors, seed=seed)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("initializing", total=len(the_plan.writes))
        return apply_plan(the_plan, tensors, seed=seed,
                          on_entry=lambda _entry: progress.advance(task))


def _show_result(the_plan: Any, tensors: Any, before: Any, output: str | None, quiet: bool) -> None:
    from .report import apply_table

    if quiet:
        return
    for layer in the_plan.layers:
        console.print(apply_table(layer, the_plan.entries_for(layer), tensors, before))
        console.print()
    summary = f"{len(the_plan.layers)} layer(s), {len(the_plan.writes)} block(s), scheme {the_plan.scheme}"
    if the_plan.seed is not None:
        summary += f", seed {the_plan.seed}"
    summary += f"; wrote {output}" if output else "; dry run, nothing written"
    console.print(summary, soft_wrap=True, markup=False)


@app.command()
def apply(
    input: Annotated[str, typer.Argument(help="Checkpoint (torch.save file or .safetensors), or - for "
                                         "standard input.", show_default=False)],
    scheme: SchemeOption,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Where to write; - for standard output.")] = None,
    seed: SeedOption = None,
    rule: RuleOption = None,
    only: OnlyOption = None,
    fmt: FormatOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    in_place: Annotated[bool, typer.Option("--in-place", help="Rewrite INPUT itself.")] = False,
    force: ForceOption = False,
    tensors_only: Annotated[bool, typer.Option(
        "--tensors-only", help="Writing safetensors from a .pt: drop its non-tensor entries.")] = False,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Rewrite every recurrent parameter of a checkpoint by SCHEME; keep everything else as it was."""
    with _errors():
        if output is None and in_place:
            output = input
        if output is None and not dry_run:
            raise UsageError("give -o OUTPUT, --in-place, or --dry-run")
        if as_json and output == "-":
            raise UsageError("--json and -o - both want standard output; choose one")
        if in_place and input == "-":
            raise UsageError("--in-place needs a file, not standard input")
        from .checkpoint import check_output, load_checkpoint, output_format, save_checkpoint
        from .planning import plan
        from .report import apply_document, capture_stats

        if output is not None and not dry_run:
            check_output(input, output, force=force, in_place=in_place)
        checkpoint = load_checkpoint(input)
        the_plan = plan(checkpoint.tensors, scheme, rules=rule or (), only=only)
        target_format = output_format(output or "", fmt.value if fmt else None, checkpoint.format)
        if target_format == "safetensors" and checkpoint.non_tensor_paths and not tensors_only:
            raise OutputError("the checkpoint holds non-tensor entries that safetensors cannot store "
                              f"({', '.join(checkpoint.non_tensor_paths[:5])}); write .pt, or pass "
                              "--tensors-only to keep only the tensors")
        before = capture_stats(the_plan, checkpoint.tensors)
        if dry_run:
            the_plan = the_plan if seed is None else _with_seed(the_plan, seed)
            if as_json:
                _emit_json(apply_document(the_plan, checkpoint.tensors, before, source=input,
                                          fmt=target_format, output=None) | {"dry_run": True})
            elif not quiet:
                _show_result(the_plan, None, None, None, quiet)
            return
        the_plan = _apply_with_progress(the_plan, checkpoint.tensors, seed, quiet or as_json)
        save_checkpoint(checkpoint, output, target_format, metadata=_metadata(the_plan),
                        tensors_only=tensors_only)
        if as_json:
            _emit_json(apply_document(the_plan, checkpoint.tensors, before, source=input,
                                      fmt=target_format, output=output))
        else:
            _show_result(the_plan, checkpoint.tensors, before, _shown(output), quiet)


def _with_seed(the_plan: Any, seed: int) -> Any:
    from dataclasses import replace

    return replace(the_plan, seed=seed)


def _shown(output: str | None) -> str | None:
    return "standard output" if output == "-" else output


@app.command()
def inspect(
    input: Annotated[str, typer.Argument(help="Checkpoint, or - for standard input.", show_default=False)],
    only: OnlyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the recurrent layers of a checkpoint and per-gate statistics of every parameter."""
    with _errors():
        import re

        from .checkpoint import load_checkpoint
        from .layout import find_layers
        from .report import inspect_document, inspect_table, provenance, selected_kinds

        if only is not None:
            try:
                re.compile(only)
            except re.error as error:
                raise UsageError(f"--only {only!r} is not a valid regular expression: {error}") from None
        checkpoint = load_checkpoint(input)
        layers = find_layers(checkpoint.tensors)
        if as_json:
            _emit_json(inspect_document(layers, checkpoint.tensors, source=input, fmt=checkpoint.format,
                                        only=only, metadata=checkpoint.metadata))
            return
        shown = [(layer, kinds) for layer in layers if (kinds := selected_kinds(layer, only))]
        console.print(f"{input}: {checkpoint.format}, {len(checkpoint.tensors)} tensor(s), "
                      f"{len(shown)} recurrent layer(s)", markup=False, soft_wrap=True)
        recorded = provenance(checkpoint.metadata)
        if recorded:
            console.print(recorded, markup=False, soft_wrap=True)
        if not shown:
            console.print("no recurrent parameters found" + (f" matching --only {only!r}" if only else ""),
                          markup=False)
        for layer, kinds in shown:
            console.print()
            console.print(inspect_table(layer, checkpoint.tensors, kinds))


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


@app.command()
def new(
    cell: Annotated[Cell, typer.Argument(help="Layer type.", show_default=False)],
    input_size: Annotated[int, typer.Option("--input-size", min=1, help="Input features.")],
    hidden_size: Annotated[int, typer.Option("--hidden-size", min=1, help="Hidden units.")],
    scheme: SchemeOption,
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write; - for standard output.")],
    num_layers: Annotated[int, typer.Option("--num-layers", min=1, help="Stacked layers.")] = 1,
    bidirectional: Annotated[bool, typer.Option("--bidirectional", help="Add reverse directions.")] = False,
    proj_size: Annotated[int, typer.Option("--proj-size", min=0, help="LSTM projection size.")] = 0,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="No bias vectors (bias=False).")] = False,
    prefix: Annotated[str, typer.Option("--prefix", help="Key prefix, e.g. encoder.rnn")] = "",
    seed: SeedOption = None,
    rule: RuleOption = None,
    fmt: FormatOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Build a recurrent layer from flags and write its initialized weights (a state_dict)."""
    with _errors():
        if as_json and output == "-":
            raise UsageError("--json and -o - both want standard output; choose one")
        from .checkpoint import Checkpoint, check_output, output_format, save_checkpoint
        from .planning import apply_plan, draw_seed, plan
        from .report import apply_document, capture_stats

        check_output("-", output, force=force, in_place=False)
        seed = draw_seed() if seed is None else seed
        state = build_module_state(cell.value, input_size=input_size, hidden_size=hidden_size,
                                   num_layers=num_layers, bidirectional=bidirectional,
                                   proj_size=proj_size, bias=not no_bias, seed=seed)
        if prefix and not prefix.endswith("."):
            prefix += "."
        tensors = {prefix + name: tensor for name, tensor in state.items()}
        the_plan = plan(tensors, scheme, rules=rule or ())
        before = capture_stats(the_plan, tensors)
        the_plan = apply_plan(the_plan, tensors, seed=seed)
        fmt_name = output_format(output, fmt.value if fmt else None, "pt")
        save_checkpoint(Checkpoint(fmt_name, tensors, tensors), output, fmt_name,
                        metadata=_metadata(the_plan))
        if as_json:
            _emit_json(apply_document(the_plan, tensors, before, source=f"new {cell.value}",
                                      fmt=fmt_name, output=output))
        else:
            _show_result(the_plan, tensors, before, _shown(output), quiet)


@app.command()
def schemes(as_json: JsonOption = False) -> None:
    """List the schemes: name and arguments, what each does, its rules in order, and its source."""
    with _errors():
        from .schemes import SCHEMES

        if as_json:
            _emit_json([{"name": s.name, "signature": s.signature, "description": s.description,
                         "rules": list(s.rules), "params": dict(s.params), "reference": s.reference,
                         "cells": sorted(s.cells)} for s in SCHEMES.values()])
            return
        from .report import schemes_table

        console.print(schemes_table(SCHEMES.values()))
        console.print("Rules: TARGET=INIT, TARGET = weight_ih | weight_hh | weight_hr | bias_ih | "
                      "bias_hh | weight | bias, optionally .GATE (LSTM i f g o, GRU r z n). "
                      "Later rules win.", markup=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
