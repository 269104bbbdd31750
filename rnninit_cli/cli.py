"""The `rnninit` command line: a thin Typer layer over the library.

Human output goes to standard error, data (JSON, a checkpoint written to '-') to standard output.
torch is imported inside the commands that need it, so `rnninit --help` and `rnninit schemes` are
instant.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import RnnInitError, UsageError

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
        console.print(f"[bold red]error:[/] {escape(str(error))}", markup=True, soft_wrap=True)
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
        console.print(f"[bold red]error:[/] internal error: {type(error).__name__}: {escape(str(error))} "
                      "(run with --debug for the traceback)", soft_wrap=True, markup=True)
        raise typer.Exit(1) from None


def _one_stdout_user(as_json: bool, output: str | None) -> None:
    if as_json and output == "-":
        raise UsageError("--json and -o - both want standard output; choose one")


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
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on standard output.")]


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
    input: Annotated[str, typer.Argument(
        help="Checkpoint (torch.save file or .safetensors), a model folder, or - for standard input.",
        show_default=False)],
    scheme: SchemeOption,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Where to write (a folder for a model folder); - for standard output.")] = None,
    seed: SeedOption = None,
    rule: RuleOption = None,
    only: OnlyOption = None,
    fmt: FormatOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    in_place: Annotated[bool, typer.Option("--in-place", help="Rewrite INPUT itself.")] = False,
    force: ForceOption = False,
    tensors_only: Annotated[bool, typer.Option(
        "--tensors-only", help="Writing safetensors from a .pt: drop its non-tensor entries.")] = False,
    drop_optimizer_state: Annotated[bool, typer.Option(
        "--drop-optimizer-state", help="Remove optimizer state (stale for rewritten parameters).")] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Rewrite every recurrent parameter of a checkpoint by SCHEME; keep everything else as it was."""
    with _errors():
        _one_stdout_user(as_json, output)
        from .report import apply_document
        from .rewrite import rewrite

        with _progress(quiet or as_json) as on_entry:
            result = rewrite(input, output, scheme, rules=rule or (), only=only, seed=seed,
                             fmt=fmt.value if fmt else None, dry_run=dry_run, in_place=in_place, force=force,
                             tensors_only=tensors_only, drop_optimizer_state=drop_optimizer_state,
                             on_entry=on_entry)
        if not quiet:
            for line in result.warnings:
                console.print(f"[bold yellow]warning:[/] {escape(line)}", soft_wrap=True)
            for line in result.notes:
                console.print(line, markup=False, soft_wrap=True)
        if as_json:
            document = apply_document(result.plan, result.tensors, result.before, source=input,
                                      fmt=result.output_format, output=result.output)
            _emit_json(document | ({"dry_run": True} if dry_run else {}))
        elif not quiet:
            _show_result(result.plan, None if dry_run else result.tensors, result.before,
                         _shown(result.output), quiet)


@contextmanager
def _progress(silent: bool) -> Iterator[Callable[[Any], None] | None]:
    """A progress bar on a terminal's standard error; nothing elsewhere."""
    if silent or not console.is_terminal:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("initializing", total=None)
        yield lambda _entry: progress.advance(task)


def _shown(output: str | None) -> str | None:
    return "standard output" if output == "-" else output


@app.command()
def inspect(
    input: Annotated[str, typer.Argument(help="Checkpoint, model folder, or - for standard input.",
                                         show_default=False)],
    only: OnlyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the recurrent layers of a checkpoint and per-gate statistics of every parameter."""
    with _errors():
        import re

        from .report import inspect_document, inspect_table, provenance, selected_kinds
        from .rewrite import inspect_checkpoint

        if only is not None:
            try:
                re.compile(only)
            except re.error as error:
                raise UsageError(f"--only {only!r} is not a valid regular expression: {error}") from None
        found = inspect_checkpoint(input, only)
        if as_json:
            _emit_json(inspect_document(found.layers, found.tensors, source=input, fmt=found.format,
                                        only=only, metadata=found.metadata))
            return
        shown = [(layer, kinds) for layer in found.layers if (kinds := selected_kinds(layer, only))]
        console.print(f"{input}: {found.format}, {found.tensor_count} tensor(s), "
                      f"{len(shown)} recurrent layer(s)", markup=False, soft_wrap=True)
        recorded = provenance(found.metadata)
        if recorded:
            console.print(recorded, markup=False, soft_wrap=True)
        if not shown:
            console.print("no recurrent parameters found" + (f" matching --only {only!r}" if only else ""),
                          markup=False)
        for layer, kinds in shown:
            console.print()
            console.print(inspect_table(layer, found.tensors, kinds))


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
    quiet: QuietOption = False,
) -> None:
    """Build a recurrent layer from flags and write its initialized weights (a state_dict)."""
    with _errors():
        _one_stdout_user(as_json, output)
        from .report import apply_document
        from .rewrite import create

        result = create(cell.value, output, scheme, input_size=input_size, hidden_size=hidden_size,
                        num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                        bias=not no_bias, prefix=prefix, rules=rule or (), seed=seed,
                        fmt=fmt.value if fmt else None, force=force)
        if as_json:
            _emit_json(apply_document(result.plan, result.tensors, result.before, source=f"new {cell.value}",
                                      fmt=result.output_format, output=output))
        else:
            _show_result(result.plan, result.tensors, result.before, _shown(output), quiet)


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


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C does, so temporary files are removed on the way out
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    main()
