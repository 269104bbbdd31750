"""The `rnninit` command line: a thin Typer layer over the library.

The answer goes to standard output: the tables of inspect, verify, diff and schemes, the report of apply
and new (to standard error when standard output carries the checkpoint, `-o -`), or the JSON of --json.
Progress, warnings, notes and errors go to standard error. Off a terminal nothing is coloured or folded:
a table row stays one line, so grep finds it.
torch is imported only by the commands that draw values (apply, new): inspect, verify, diff and schemes read
every checkpoint with numpy and never import it.

Longer than 600 lines because the seven commands' options live here (Typer reads them from the signatures), beside
what only the process that runs a command may do: several files at once, progress bars, signal handlers, a closed
standard output, exit codes. The help pages' machinery and completion are in cli_help.py; the work itself is the
library's.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from enum import Enum
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from . import __version__, _stop_at_once
from .cli_help import (
    BAD_INPUT,
    BAD_OUTPUT,
    DONE,
    INTERNAL,
    HelpCommand,
    HelpGroup,
    complete_layout,
    complete_rule,
    complete_scheme,
    complete_shell,
    install_completion,
    show_completion,
)
from .errors import NotRecognisedError, RnnInitError, UsageError
from .interruption import CommitLog, Stop, reset_stop
from .terminal import shown, visible

app = typer.Typer(
    name="rnninit",
    cls=HelpGroup,
    help="Initialize the gates of PyTorch RNN / GRU / LSTM layers by a named scheme, block by block, "
    "in .pt and .safetensors checkpoints, reproducibly.",
    no_args_is_help=True,
    add_completion=False,  # rnninit's own --install-completion and --show-completion take a shell's name
    pretty_exceptions_enable=False,
    # plain help wraps at the terminal's width; Rich's help panels cut option names and values at 80 columns
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_Result = TypeVar("_Result")

UNFOLDED = 100_000  # the width of a pipe or a file: wide enough that no table row is ever folded


def _make_console(*, stderr: bool) -> Console:
    # A terminal gets its own width (tables fit it); pipes, files and logs are never folded, whatever COLUMNS,
    # FORCE_COLOR or TTY_COMPATIBLE say (those may colour a pipe, as asked, never fold it): a table takes its
    # natural width and each row stays one line for grep.
    # emoji=False: a name like `enc:fire:` prints as written, not as an emoji
    return Console(stderr=stderr, highlight=False, emoji=False,
                   width=None if _is_a_terminal(sys.stderr if stderr else sys.stdout) else UNFOLDED)


def _is_a_terminal(stream: Any) -> bool:
    """Whether `stream` itself is a terminal (Rich's own test also believes FORCE_COLOR and TTY_COMPATIBLE)."""
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, replaced (a test's capture) or absent
        return False


console = _make_console(stderr=True)  # messages: progress, warnings, notes, errors
answer = _make_console(stderr=False)  # the answer: tables and reports
_state: dict[str, Any] = {"debug": False, "commits": 0, "signals": False, "ignored": set(), "json_lines": False}
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _show(renderable: Any, target: Console | None = None) -> None:
    """Print a report. Off a terminal, as the text Rich would print, computed directly (`plain`): thousands of
    per-layer tables take seconds, not minutes."""
    from .plain import plain_text

    target = target or answer
    text = plain_text(renderable, target)
    if text is None:
        target.print(renderable)
    else:
        target.file.write(text)
        target.file.flush()


def _on_a_terminal(target: Console | None = None) -> bool:
    """Whether a person reads `target` (default: the answer) on a terminal: the stream itself, not Rich's guess,
    which FORCE_COLOR and TTY_COMPATIBLE sway (a pipe gets every table, coloured or not)."""
    return _is_a_terminal((target or answer).file)


def _every_table_hint(target: Console | None = None) -> str:
    """How to get what a terminal leaves out, on the stream that carries the report."""
    return "redirect standard error, or --json" if (target or answer) is console else "pipe the output, or --json"


def _stopped_before_done() -> bool:
    """Whether a signal asked the command to stop before its output was in place."""
    return Stop.signum is not None and not _committed()


def _committed() -> bool:
    """Whether the running command has already renamed its output into place: then it has succeeded,
    and a Ctrl-C or SIGTERM that arrives later changes nothing (exit status 0)."""
    return CommitLog.count > _state["commits"]


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
    """Map library errors to one `error: ...` line and the exit status of the table (EXIT_STATUSES); tracebacks
    only with --debug. A Ctrl-C (SIGTERM) before the output is renamed into place exits 130 (143); after it, the
    command has succeeded (0)."""
    _state["commits"] = CommitLog.count
    _state["json_lines"] = False
    reset_stop()
    _handle_signals(_interrupt)
    try:
        try:
            yield
        except typer.Exit:
            if _stopped_before_done():
                raise KeyboardInterrupt from None
            raise
        except Exception:
            if Stop.signum is not None:  # the signal cut a call short: this error is its echo
                raise KeyboardInterrupt from None
            raise
        else:
            if _stopped_before_done():  # deferred during an import, and nothing since has acted on it
                raise KeyboardInterrupt
        finally:
            # the command is over and its exit status about to be decided: a later signal (while an error is
            # printed, during the interpreter's shutdown: torch's atexit handlers) must neither print a traceback
            # nor change the status
            _handle_signals(signal.SIG_IGN)
            _cancel_retry()
    except RnnInitError as error:
        _print_error(error)
        raise typer.Exit(error.exit_code) from None
    except BrokenPipeError:
        # the reader of standard output went away (e.g. `| head`): stop quietly, and point stdout
        # at /dev/null so that the interpreter's final flush does not complain again
        _point_stdout_at_devnull()
        raise typer.Exit(BAD_OUTPUT) from None
    except KeyboardInterrupt:
        if _committed():
            return
        console.print("[bold red]error:[/] interrupted", soft_wrap=True)
        raise typer.Exit(128 + (Stop.signum or signal.SIGINT)) from None
    except typer.Exit:
        raise
    except OSError as error:  # e.g. standard output on a full disk (`-o - > /dev/full`) or closed
        if _state["debug"]:
            raise
        _print_error(error)
        _point_stdout_at_devnull()  # what is still buffered must not fail again at exit
        raise typer.Exit(_exit_status(error)) from None
    except Exception as error:
        if _state["debug"]:
            raise
        _print_error(error)
        raise typer.Exit(INTERNAL) from None


def _exit_status(error: Exception) -> int:
    """The row of the exit-status table an error belongs to."""
    if isinstance(error, RnnInitError):
        return error.exit_code
    if isinstance(error, OSError):  # a file the library did not wrap, else standard output (closed, disk full)
        return BAD_INPUT if error.filename else BAD_OUTPUT
    return INTERNAL


def _error_message(error: Exception) -> str:
    """An error's one-line message, without `error: ` (as an error document of --json carries it)."""
    if isinstance(error, RnnInitError):
        return error.cli_message or str(error)  # in the command line's words (--only, not only=)
    if isinstance(error, OSError):
        return _os_error_text(error)
    return f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)"


def _print_error(error: Exception, where: str | None = None) -> None:
    """One `error: ...` line on standard error, after the traceback with --debug; `where`: the input it is about,
    named unless the message starts with it."""
    if _state["debug"]:
        console.print_exception()
    message = _error_message(error)
    if where is not None and not message.startswith(where):
        message = f"{where}: {message}"
    console.print(f"[bold red]error:[/] {shown(message)}", markup=True, soft_wrap=True)


def _os_error_text(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def _for_each_input(inputs: list[str], work: Callable[[str], None], *, as_json: bool, separate: bool) -> None:
    """Run `work` on each input like grep over files: each file's answer in turn, one `error: INPUT: ...` line for a
    file that fails (with --json also an error document on its line) and on to the next; then exit with the highest
    of the files' statuses. `work` says "no" by raising typer.Exit(1). `separate`: a blank line between answers."""
    if inputs.count("-") > 1:
        raise UsageError("- (standard input) can be given only once")
    several = len(inputs) > 1
    worst, answered = DONE, False
    for path in inputs:
        if separate and answered:
            answer.print()
        try:
            work(path)
            status, answered = DONE, True
        except typer.Exit as done:
            status, answered = done.exit_code, True
        except (KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as error:
            if Stop.signum is not None:  # the signal cut a call short: this error is its echo
                raise KeyboardInterrupt from None
            if isinstance(error, OSError) and not error.filename:
                raise  # standard output cannot be written: no use going on to the next file
            if _state["debug"] and not isinstance(error, RnnInitError):
                raise
            status = _exit_status(error)
            _print_error(error, path if several else None)
            if as_json:
                _emit_json_line({"input": path, "error": _error_message(error), "exit_status": status})
        worst = max(worst, status)
    if worst != DONE:
        raise typer.Exit(worst)


def _point_stdout_at_devnull() -> None:
    with suppress(OSError, ValueError):  # standard output was closed to begin with
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _ClosedOutput(io.RawIOBase):
    """Standard output when the shell closed it (`>&-`): writing data there is an error, not a crash."""

    def writable(self) -> bool:
        return True

    def write(self, _data: Any) -> int:
        raise OSError(errno.EBADF, "standard output is closed; redirect it to a file or a pipe")

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    @property
    def buffer(self) -> _ClosedOutput:
        return self


def _one_stdout_user(as_json: bool, output: str | None) -> None:
    if as_json and output == "-":
        raise UsageError("--json and -o - both want standard output; choose one")


def _refuse_binary_on_terminal(output: str | None) -> None:
    """`-o -` on a terminal would dump a binary checkpoint on the screen: refused, as `gzip -c` does."""
    if output == "-" and _is_a_terminal(sys.stdout):
        raise UsageError("standard output is a terminal: the checkpoint is binary and is not written there; "
                         "redirect it (-o - > FILE, or | another command) or give -o FILE")


def _emit_json(document: Any) -> None:
    """The command's JSON document: indented, or one compact line of JSON Lines (inspect, verify)."""
    if _state["json_lines"]:
        _emit_json_line(document)
        return
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def _emit_json_line(document: Any) -> None:
    """One line of JSON Lines: the document, compact."""
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _return_freed_memory() -> None:
    """Have glibc map every block over 128 KiB on its own, so that the drawn values (tens of MB each) go back to the
    system when freed: by default the threshold grows after the first free, and a rewrite's peak memory then
    holds every block drawn before. Elsewhere (or if the call fails) nothing changes."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    with suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD; fixing it also stops its growth


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rnninit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    show_completion: Annotated[str | None, typer.Option(
        "--show-completion", metavar="SHELL", is_eager=True, callback=show_completion, expose_value=False,
        autocompletion=complete_shell,
        help="Print the completion script for SHELL: bash, zsh, fish or powershell.")] = None,
    install_completion: Annotated[str | None, typer.Option(
        "--install-completion", metavar="SHELL", is_eager=True, callback=install_completion, expose_value=False,
        autocompletion=complete_shell,
        help="Add completion for SHELL to its start-up file (~/.bashrc, ~/.zfunc, fish's completions).")] = None,
) -> None:
    """Initialize the gates of PyTorch RNN / GRU / LSTM layers by a named scheme."""
    _state["debug"] = debug


SchemeOption = Annotated[str, typer.Option(
    "--scheme", "-s", metavar="SCHEME", rich_help_panel="What to write", autocompletion=complete_scheme,
    help="Scheme name, with arguments if it takes any: keras, 'chrono(tmax=200)'. See `rnninit schemes`.")]
RuleOption = Annotated[list[str] | None, typer.Option(
    "--rule", "-r", metavar="RULE", rich_help_panel="What to write", autocompletion=complete_rule,
    help="TARGET=INIT applied after the scheme, repeatable: "
    "bias_ih.f=constant(1), weight_hh=orthogonal(per=gate), weight_ih=keep.")]
SeedOption = Annotated[int | None, typer.Option(
    "--seed", min=0, metavar="SEED", rich_help_panel="What to write",
    help="Random seed, a whole number from 0; without it one is drawn, printed and recorded in the output.")]
OnlyOption = Annotated[str | None, typer.Option(
    "--only", metavar="REGEX", rich_help_panel="Which blocks",
    help="Regular expression searched in full parameter names; only those are touched.")]
FormatOption = Annotated[Format | None, typer.Option(
    "--format", metavar="FORMAT", rich_help_panel="Output", case_sensitive=False,
    help="pt or safetensors; default: OUTPUT's extension, else the input's format.")]
ForceOption = Annotated[bool, typer.Option("--force", "-f", rich_help_panel="Output",
                                           help="Replace an existing OUTPUT.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel="Display",
                                           help="Print nothing but errors.")]
JsonOption = Annotated[bool, typer.Option("--json", rich_help_panel="Display",
                                          help="Print one JSON document on standard output.")]
JsonLinesOption = Annotated[bool, typer.Option(
    "--json", rich_help_panel="Display",
    help="Print JSON Lines on standard output: one document per INPUT, in order, an error document for an INPUT "
    "that fails.")]
LayoutOption = Annotated[list[str] | None, typer.Option(
    "--layout", metavar="LAYOUT", rich_help_panel="Which blocks", autocompletion=complete_layout,
    help="Declare cells that torch.nn names do not give, repeatable: a built-in layout "
    "(torchaudio-rnnt, speechbrain-ligru) or 'cell=lstm weight_ih=REGEX weight_hh=REGEX ...' "
    "(see README, Which checkpoints work).")]
LayoutFileOption = Annotated[list[str] | None, typer.Option(
    "--layout-file", metavar="FILE", rich_help_panel="Which blocks",
    help="A TOML file of layout declarations, repeatable.")]
StrictOption = Annotated[bool, typer.Option(
    "--strict", rich_help_panel="Which blocks",
    help="Fail on any group of tensors that looks recurrent but cannot be understood, instead of "
    "skipping it with a warning.")]
InputsArgument = Annotated[list[str], typer.Argument(
    metavar="INPUT", show_default=False,
    help="Checkpoints (torch.save files or .safetensors), model folders, or - for standard input (once).")]


def _layouts(layout: list[str] | None, layout_file: list[str] | None) -> list[Any]:
    """The declarations given by --layout and --layout-file (none: no import)."""
    if not layout and not layout_file:
        return []
    from .layouts.declared import layouts_from_options

    return layouts_from_options(layout or (), layout_file or ())


def _discovery_document(found: Any) -> dict[str, Any]:
    """What a command left alone, for --json: skipped groups and unrecognised look-alikes."""
    from .documents import skipped_document, suspects_document

    return {"skipped": skipped_document(getattr(found, "skipped", ())),
            "suspects": suspects_document(getattr(found, "suspects", ()))}


def _show_result(the_plan: Any, tensors: Any, before: Any, output: str | None, quiet: bool) -> None:
    """The report of apply and new: on standard output, or on standard error when that carries the checkpoint."""
    from .report import FULL_ON_A_TERMINAL, apply_table, layer_kind, layer_runs

    if quiet:
        return
    report = console if output == "-" else answer
    shown_in_full = the_plan.layers[:FULL_ON_A_TERMINAL] if _on_a_terminal(report) else the_plan.layers
    for layer in shown_in_full:
        _show(apply_table(layer, the_plan.entries_for(layer), tensors, before), report)
        report.print()
    rest = the_plan.layers[len(shown_in_full):]
    if rest:
        def rules(layer: Any) -> str:
            return f"{layer_kind(layer)}: " + ", ".join(dict.fromkeys(e.rule for e in the_plan.entries_for(layer)))

        report.print(f"{len(rest):,} more layer(s), one line per kind (every table: {_every_table_hint(report)}):",
                     markup=False)
        for line in layer_runs(rest, rules):
            report.print(line, markup=False)
        report.print()
    summary = f"{len(the_plan.layers)} layer(s), {len(the_plan.writes)} block(s), scheme {the_plan.scheme}"
    if the_plan.seed is not None:
        summary += f", seed {the_plan.seed}"
    summary += f"; wrote {_shown(output)}" if output else "; dry run, nothing written"
    report.print(visible(summary), markup=False)  # wrapped at words on a terminal, one line elsewhere


@app.command(cls=HelpCommand)
def apply(
    input: Annotated[str, typer.Argument(
        metavar="INPUT", help="Checkpoint (torch.save file or .safetensors), a model folder, or - for standard input.",
        show_default=False)],
    scheme: SchemeOption,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", metavar="OUTPUT", rich_help_panel="Output",
        help="Where to write (a folder for a model folder); - for standard output.")] = None,
    seed: SeedOption = None,
    rule: RuleOption = None,
    only: OnlyOption = None,
    fmt: FormatOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel="Output",
                                          help="Print the plan; write nothing.")] = False,
    in_place: Annotated[bool, typer.Option("--in-place", rich_help_panel="Output",
                                           help="Rewrite INPUT itself.")] = False,
    force: ForceOption = False,
    tensors_only: Annotated[bool, typer.Option(
        "--tensors-only", rich_help_panel="Output",
        help="Writing safetensors from a .pt: drop its non-tensor entries.")] = False,
    drop_optimizer_state: Annotated[bool, typer.Option(
        "--drop-optimizer-state", rich_help_panel="Output",
        help="Reset optimizer state, stale for the rewritten parameters: its per-parameter buffers (Adam's moments, "
        "momentum) go, its hyper-parameters stay, so training resumes with the optimizer starting afresh "
        "(removed whole when writing safetensors).")] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    layout: LayoutOption = None,
    layout_file: LayoutFileOption = None,
    strict: StrictOption = False,
) -> None:
    """Rewrite the recurrent parameters of a checkpoint by a scheme.

    Every recurrent parameter (those --only selects) is drawn again by SCHEME and the rules; everything else is kept
    as it was. Groups of tensors that look recurrent but cannot be understood are skipped with a warning (--strict: an
    error); declare other layouts with --layout."""
    with _errors():
        _one_stdout_user(as_json, output)
        if not dry_run:
            _refuse_binary_on_terminal(output)
        from .documents import apply_document
        from .rewrite import RewriteOptions, rewrite

        _return_freed_memory()

        options = RewriteOptions(rules=tuple(rule or ()), only=only, seed=seed, fmt=fmt.value if fmt else None,
                                 dry_run=dry_run, in_place=in_place, force=force, tensors_only=tensors_only,
                                 drop_optimizer_state=drop_optimizer_state, report_before=as_json or not quiet,
                                 layouts=tuple(_layouts(layout, layout_file)), strict=strict)
        with _progress("initializing", quiet) as on_progress:
            try:
                result = rewrite(input, output, scheme, options, on_progress=on_progress)
            except NotRecognisedError as error:  # the hints inspect gives, then the error
                _print_warnings(f"not recognised: {item}" for item in error.suspects)
                raise
        if not quiet:
            for line in result.warnings:
                console.print(f"[bold yellow]warning:[/] {shown(line)}", soft_wrap=True)
            for line in result.notes:
                console.print(visible(line), markup=False, soft_wrap=True)
        if as_json:
            _emit_json(apply_document(result.plan, result.tensors, result.before, source=input,
                                      fmt=result.output_format, output=result.output, dry_run=dry_run,
                                      warnings=zip(result.warning_codes, result.warnings, strict=True),
                                      notes=result.notes))
        elif not quiet:
            _show_result(result.plan, None if dry_run else result.tensors, result.before, result.output, quiet)


PROGRESS_DELAY_S = 1.0  # a run that ends sooner shows no bar at all


@contextmanager
def _progress(description: str, silent: bool = False) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar of bytes done out of a known total, with the time left, on a terminal's standard error, once
    the work has run for PROGRESS_DELAY_S; nothing elsewhere, nothing with `silent`. Yields the library's
    `on_progress(done, total)` callback (None: nothing to report to)."""
    if silent or not _is_a_terminal(sys.stderr):
        yield None
        return
    bar = _DelayedBar(description, PROGRESS_DELAY_S)
    try:
        yield bar.update
    finally:
        bar.close()


def _interruptibly(work: Callable[[], _Result]) -> _Result:
    """`work()` on a daemon thread while this one waits, so that a Ctrl-C lands at once even while numpy is inside
    one long call (a Gram matrix, eigenvalues), which no signal interrupts. Only for the commands that read:
    they write nothing, and a process may exit under a thread inside numpy (not under one inside torch)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the waiting thread, which raises it there
            outcome["error"] = error

    thread = threading.Thread(target=run, name="rnninit-read", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)  # a short wait: the signal handler runs between two
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class _DelayedBar:
    """A Rich progress bar on standard error that appears `delay` seconds after it is made (from a timer thread,
    so that a long step with no report still shows it), then follows `update`; `close` removes it."""

    def __init__(self, description: str, delay: float) -> None:
        self._description = description
        self._done, self._total = 0, 0
        self._lock = threading.RLock()  # RLock: a Ctrl-C inside `update` must not lock `close` out
        self._progress: Any = None
        self._task: Any = None
        self._closed = False
        # the delay is over: show the bar at the first report with a total. Without a delay that is at once, on the
        # reporting thread: a timer thread might not run before a short job, busy on the interpreter's lock, is done
        self._due = delay <= 0
        self._timer = threading.Timer(delay, self._show)
        self._timer.daemon = True
        if not self._due:
            self._timer.start()

    def update(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = done, total
            if self._progress is not None:
                self._progress.update(self._task, completed=done, total=total)
            elif self._due:
                self._show()

    def _show(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        with self._lock:
            if self._closed:
                return
            if not self._total:  # no total known yet: a bar without one could only pulse; it waits for the first
                self._due = True
                return
            # standard output is left alone (no redirection): the answer is printed after the bar is gone
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=None),
                                      DownloadColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                      console=console, transient=True, redirect_stdout=False, redirect_stderr=False)
            self._task = self._progress.add_task(self._description, total=self._total, completed=self._done)
            self._progress.start()

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


def _shown(output: str | None) -> str | None:
    return "standard output" if output == "-" else output


@app.command(cls=HelpCommand)
def inspect(
    inputs: InputsArgument,
    only: OnlyOption = None,
    as_json: JsonLinesOption = False,
    plot: Annotated[str | None, typer.Option(
        "--plot", metavar="IMAGE", rich_help_panel="Display",
        help="Also draw value histograms and singular-value spectra per gate block into this image: .png, .svg or "
        ".pdf, by its extension (one INPUT only; needs matplotlib: pip install 'rnninit[plot]').")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", rich_help_panel="Display",
                                        help="Replace an existing --plot file.")] = False,
    wide: Annotated[bool, typer.Option(
        "--wide", rich_help_panel="Display", help="Every column: also shape, dtype, the orthogonality error and the "
        "singular values' range of each gate block and whole matrix (beyond 256 × 256 by Lanczos: σ max within "
        "0.1 %, σ min an upper bound). Without it: gate, mean, std, min, max, family, "
        "histogram. Where a block's row is wider than the terminal, each parameter's name gets a line of its own "
        "(with its shape and dtype) and the family may move below its rows; no number is ever cut.")] = False,
    layout: LayoutOption = None,
    layout_file: LayoutFileOption = None,
    strict: StrictOption = False,
) -> None:
    """Show the recurrent layers of checkpoints, gate block by gate block.

    Per-gate statistics, the initializer each block looks drawn from, the scheme each layer matches, and warnings
    for classic mistakes. With several INPUTs, each one's answer in turn, like grep over files."""
    several = len(inputs) > 1

    def one(input: str) -> None:
        from .diagnostics import diagnose
        from .documents import inspect_document, selected_kinds
        from .report import (
            FULL_ON_A_TERMINAL,
            inspect_table,
            layer_kind,
            layer_runs,
            provenance,
            quantized_count,
            quantized_table,
            scheme_line,
        )
        from .rewrite import inspect_checkpoint

        if plot is not None:
            from .plot import check_plot_output

            check_plot_output(plot, force=force, source=input)

        def read_and_diagnose(on_progress: Callable[[int, int], None] | None) -> tuple[Any, Any]:
            found = inspect_checkpoint(input, only, layouts=layouts, strict=strict)
            if found.unselected:  # --only matches none of the recurrent parameters there are: a usage error
                from .init.planning import only_matches_nothing

                raise only_matches_nothing(only, found.unselected)
            return found, diagnose(found.tensors, only=only, layers=found.layers, geometry=wide or plot is not None,
                                   on_progress=on_progress) if found.layers else None

        with _progress("inspecting") as on_progress:
            found, diagnosis = _interruptibly(lambda: read_and_diagnose(on_progress))
        if plot is not None and diagnosis is not None:
            from .plot import plot_diagnosis

            plot_diagnosis(diagnosis, found.tensors, plot)
        if as_json:
            _emit_json(inspect_document(found.layers, found.tensors, source=input, fmt=found.format,
                                        only=only, metadata=found.metadata, diagnosis=diagnosis)
                       | _discovery_document(found) | {"views": found.views, "foreign_classes": found.foreign_classes,
                                                        "quantized": found.quantized,
                                                        "quantized_layers": [q.as_dict() for q in found.packed]})
            return
        by_layer = {} if diagnosis is None else {d.layer: d for d in diagnosis.layers}
        selected = [(layer, kinds) for layer in found.layers if (kinds := selected_kinds(layer, only))]
        packed = f", {quantized_count(found.packed)}" if found.packed else ""
        answer.print(f"{visible(input)}: {found.format}, {found.tensor_count} tensor(s), "
                     f"{len(selected)} recurrent layer(s){packed}", markup=False, soft_wrap=True)
        recorded = provenance(found.metadata)
        if recorded:
            answer.print(visible(recorded), markup=False, soft_wrap=True)
        if found.foreign_classes:  # read as inert records, never rebuilt: a patched copy keeps their bytes
            answer.print(visible(f"holds objects of classes: {', '.join(found.foreign_classes)}"), markup=False,
                         soft_wrap=True)
        if found.quantized:  # read as records and kept as stored: never recurrent parameters
            shown_names = ", ".join(found.quantized[:8]) + (f", ... ({len(found.quantized)} in all)"
                                                           if len(found.quantized) > 8 else "")
            answer.print(visible(f"quantized tensors, not recurrent: {shown_names}"), markup=False, soft_wrap=True)
        if not selected and not found.packed:
            answer.print("no recurrent parameters found" + (f" matching --only {visible(repr(only))}" if only else ""),
                         markup=False)
        in_full = selected[:FULL_ON_A_TERMINAL] if _on_a_terminal() else selected
        for layer, kinds in in_full:
            answer.print()
            _show(inspect_table(layer, found.tensors, kinds, by_layer.get(layer), wide=wide))
        rest = [layer for layer, _ in selected[len(in_full):]]
        if rest:
            answer.print()
            answer.print(f"{len(rest):,} more layer(s), one line per kind (every table: {_every_table_hint()}):",
                         markup=False)
            for line in layer_runs(rest, lambda layer: f"{layer_kind(layer)}: " + (
                    scheme_line(by_layer[layer]) if layer in by_layer else "not diagnosed")):
                answer.print(line, markup=False)
        for quantized in found.packed:  # dynamically quantized layers: read from their packed records
            answer.print()
            _show(quantized_table(quantized))
        for line in found.views:
            answer.print(visible(f"read {line}"), markup=False, soft_wrap=True)
        _print_warnings([*found.skipped, *(f"not recognised: {item}" for item in found.suspects),
                         *(diagnosis.warnings if diagnosis else ())], input if several else None)
        if plot is not None and diagnosis is not None:
            console.print(f"plotted {len(diagnosis.layers)} layer(s) to {visible(plot)}", markup=False)
        elif plot is not None:
            _print_warnings([f"no recurrent layer to plot; nothing written to {plot}"])

    with _errors():
        _state["json_lines"] = True
        if plot is not None and several:
            raise UsageError("--plot draws one INPUT; give one file, or leave --plot out")
        layouts = _layouts(layout, layout_file)
        _for_each_input(inputs, one, as_json=as_json, separate=not as_json)


def _print_rows_left(rows: int, what: str) -> None:
    """On a terminal, where a table shows its first rows: how many it left out, and how to see them."""
    from .report import ROWS_ON_A_TERMINAL

    if _on_a_terminal() and rows > ROWS_ON_A_TERMINAL:
        answer.print(f"... {rows - ROWS_ON_A_TERMINAL:,} more {what} (every row: {_every_table_hint()})",
                     markup=False)


def _print_warnings(warnings: Iterable[object], where: str | None = None) -> None:
    """One `warning: ...` line each on standard error; `where`: the input they are about (several inputs)."""
    for warning in warnings:
        # one line, even on a terminal: a hint in it (--layout '...') is copied whole from the terminal's own wrap
        console.print(f"[bold yellow]warning:[/] {shown(warning if where is None else f'{where}: {warning}')}",
                      soft_wrap=True)


@app.command(cls=HelpCommand)
def verify(
    inputs: InputsArgument,
    scheme: SchemeOption,
    rule: RuleOption = None,
    only: OnlyOption = None,
    as_json: JsonLinesOption = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", rich_help_panel="Display",
        help="Print nothing; answer by the exit status alone, like git diff --quiet (errors still go to standard "
        "error).")] = False,
    layout: LayoutOption = None,
    layout_file: LayoutFileOption = None,
    strict: StrictOption = False,
) -> None:
    """Check that checkpoints hold what a scheme draws.

    Every selected block is checked against what SCHEME (and --rule) would draw. Exit 0 when all are consistent, 1
    when any is not, 2 and above on errors (see rnninit --help): a CI step that proves a training script initialized
    what it claims. A file drawn as claimed fails with probability at most 0.001 whatever its size (Bonferroni over
    every test of every block). With several INPUTs, one answer each, like grep over files, and the highest status."""

    def one(input: str) -> None:
        from .diagnostics import verify as verify_tensors
        from .documents import verify_document
        from .report import ROWS_ON_A_TERMINAL, verify_table
        from .rewrite import inspect_checkpoint

        def read_and_verify(on_progress: Callable[[int, int], None] | None) -> tuple[Any, Any]:
            found = inspect_checkpoint(input, only, layouts=layouts, strict=strict)
            if found.unselected:
                from .init.planning import only_matches_nothing

                raise only_matches_nothing(only, found.unselected)
            return found, verify_tensors(found.tensors, scheme, rules=rule or (), only=only, layers=found.layers,
                                         on_progress=on_progress)

        with _progress("verifying") as on_progress:
            found, report = _interruptibly(lambda: read_and_verify(on_progress))
        if as_json:
            _emit_json(verify_document(input, report, found.skipped))
        elif not quiet:
            if report.failures:
                _show(verify_table(report, ROWS_ON_A_TERMINAL if _on_a_terminal() else None))
                _print_rows_left(len(report.failures), "failing block(s)")
            weak = f", {len(report.weak)} too small to decide" if report.weak else ""
            _print_warnings(found.skipped, input if len(inputs) > 1 else None)
            verdict = "consistent" if report.ok else f"{len(report.failures)} NOT consistent"
            answer.print(visible(f"{input}: {len(report.blocks)} block(s) checked against {report.scheme}: ")
                         + verdict + weak,
                         markup=False)  # wrapped at words on a terminal, one line elsewhere
        if not report.ok:
            raise typer.Exit(1)

    with _errors():
        _state["json_lines"] = True
        if quiet and as_json:
            raise UsageError("--quiet prints nothing and --json prints documents; choose one")
        _check_scheme(scheme, rule or ())
        layouts = _layouts(layout, layout_file)
        _for_each_input(inputs, one, as_json=as_json, separate=False)


def _check_scheme(scheme: str, rules: Iterable[str]) -> None:
    """A wrong scheme or rule is one usage error, not one per input."""
    from .init.schemes import get_scheme, parse_rules

    get_scheme(scheme)
    parse_rules(rules)


@app.command(cls=HelpCommand)
def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="First checkpoint (before).", show_default=False)],
    b: Annotated[str, typer.Argument(metavar="B", help="Second checkpoint (after).", show_default=False)],
    only: OnlyOption = None,
    as_json: JsonOption = False,
    layout: LayoutOption = None,
    layout_file: LayoutFileOption = None,
    strict: StrictOption = False,
) -> None:
    """Compare the recurrent layers of two checkpoints, gate block by gate block.

    Which blocks changed, how many values, max |Δ|, mean and std before and after, layers or parameters present in
    only one. Exit 0 when identical, 1 when different, 2 and above on errors (like diff; see rnninit --help)."""
    with _errors():
        from .diagnostics import diff as diff_tensors
        from .documents import diff_document
        from .reading import open_inspection
        from .report import ROWS_ON_A_TERMINAL, diff_table

        if a == "-" and b == "-":
            raise UsageError("only one of A and B can be standard input")
        layouts = _layouts(layout, layout_file)

        def read_and_compare(on_progress: Callable[[int, int], None] | None) -> tuple[Any, Any, Any]:
            with open_inspection(a, only, layouts=layouts, strict=strict) as found_a, \
                    open_inspection(b, only, layouts=layouts, strict=strict) as found_b:  # read as compared
                return found_a, found_b, diff_tensors(found_a.tensors, found_b.tensors, only=only,
                                                      layers_a=found_a.layers, layers_b=found_b.layers,
                                                      on_progress=on_progress)

        with _progress("comparing") as on_progress:
            found_a, found_b, report = _interruptibly(lambda: read_and_compare(on_progress))
        if as_json:
            _emit_json(diff_document(a, b, report, [(which, item) for which, found in ((a, found_a), (b, found_b))
                                                    for item in found.skipped]))
        else:
            if report.changed_blocks:
                _show(diff_table(report, ROWS_ON_A_TERMINAL if _on_a_terminal() else None))
                _print_rows_left(len(report.changed_blocks), "changed block(s)")
            for layer in report.layers:
                for line in (*layer.params_only_in_a, *layer.params_only_in_b, *layer.shape_changes):
                    answer.print(visible(f"{layer.title}: {line}"), markup=False, soft_wrap=True)
            for title in report.only_in_a:
                answer.print(visible(f"only in {a}: {title}"), markup=False, soft_wrap=True)
            for title in report.only_in_b:
                answer.print(visible(f"only in {b}: {title}"), markup=False, soft_wrap=True)
            _print_warnings([f"{which}: {item}" for which, found in ((a, found_a), (b, found_b))
                             for item in found.skipped])
            summary = "identical" if report.identical else f"{len(report.changed_blocks)} block(s) differ"
            if not report.layers and (report.only_in_a or report.only_in_b):
                summary = (f"no layer in common ({len(report.only_in_a)} only in {a}, "
                           f"{len(report.only_in_b)} only in {b})")
            answer.print(visible(f"{a} vs {b}: {summary}"), markup=False)  # wrapped at words on a terminal
        if not report.identical:
            raise typer.Exit(1)


@app.command(cls=HelpCommand)
def new(
    cell: Annotated[Cell, typer.Argument(
        metavar="CELL", help="Layer type: rnn, gru, lstm, rnncell, grucell or lstmcell.", show_default=False,
        case_sensitive=False)],
    input_size: Annotated[int, typer.Option("--input-size", min=1, metavar="N", rich_help_panel="What to build",
                                            help="Input features.")],
    hidden_size: Annotated[int, typer.Option("--hidden-size", min=1, metavar="N", rich_help_panel="What to build",
                                             help="Hidden units.")],
    scheme: SchemeOption,
    output: Annotated[str, typer.Option("--output", "-o", metavar="OUTPUT", rich_help_panel="Output",
                                        help="Where to write; - for standard output.")],
    num_layers: Annotated[int, typer.Option("--num-layers", min=1, metavar="N", rich_help_panel="What to build",
                                            help="Stacked layers.")] = 1,
    bidirectional: Annotated[bool, typer.Option("--bidirectional", rich_help_panel="What to build",
                                                help="Add reverse directions.")] = False,
    proj_size: Annotated[int, typer.Option("--proj-size", min=0, metavar="N", rich_help_panel="What to build",
                                           help="LSTM projection size.")] = 0,
    no_bias: Annotated[bool, typer.Option("--no-bias", rich_help_panel="What to build",
                                          help="No bias vectors (bias=False).")] = False,
    prefix: Annotated[str, typer.Option("--prefix", metavar="PREFIX", rich_help_panel="What to build",
                                        help="Key prefix, e.g. encoder.rnn")] = "",
    seed: SeedOption = None,
    rule: RuleOption = None,
    fmt: FormatOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Build a recurrent layer and write its initialized weights.

    torch.nn.RNN, GRU, LSTM or one of their cells, drawn by SCHEME: its state_dict, exactly the module's keys and
    shapes (under --prefix), so load_state_dict(strict=True) takes it."""
    with _errors():
        _one_stdout_user(as_json, output)
        _refuse_binary_on_terminal(output)
        from .documents import apply_document
        from .rewrite import create

        with _progress("initializing", quiet) as on_progress:
            result = create(cell.value, output, scheme, input_size=input_size, hidden_size=hidden_size,
                            num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                            bias=not no_bias, prefix=prefix, rules=rule or (), seed=seed,
                            fmt=fmt.value if fmt else None, force=force, on_progress=on_progress)
        if as_json:
            _emit_json(apply_document(result.plan, result.tensors, result.before, source=f"new {cell.value}",
                                      fmt=result.output_format, output=output))
        else:
            _show_result(result.plan, result.tensors, result.before, output, quiet)


@app.command(cls=HelpCommand)
def schemes(as_json: JsonOption = False) -> None:
    """List the schemes that --scheme takes.

    Each one's name and arguments, what it does, its rules in order, and its source."""
    with _errors():
        from .init.schemes import SCHEMES

        if as_json:
            from .documents import schemes_document

            _emit_json(schemes_document(SCHEMES.values()))
            return
        from .report import schemes_table

        _show(schemes_table(SCHEMES.values()))
        # wrapped at words on a terminal; one line elsewhere
        answer.print("Rules: TARGET=INIT, TARGET = weight_ih | weight_hh | weight_hr | bias_ih | "
                      "bias_hh | radius | weight | bias, optionally .GATE (LSTM i f g o, GRU r z n) and "
                      "@FAMILY (slstm, mlstm, rglru, hf-mlstm). Later rules win.", markup=False)


_RETRY_S = 0.02  # how soon a signal that arrived during an import is delivered again


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT or SIGTERM while a command works: unwind (temporary files are removed on the way out), unless its
    output is already in place; during an import, once the import is done."""
    if _committed():  # after the output's rename there is nothing left to stop
        return
    if Stop.unwinding:
        return  # a second Ctrl-C must not cut the cleanup short (the wait for worker threads inside torch)
    if Stop.signum is None:  # the first signal decides the exit status
        Stop.signum = signum  # from now on no output is put in place (interruption.refuse_commit_if_stopping)
    if _importing(frame):
        # an exception raised inside an import leaves the module half made, C extensions print it as they fail,
        # and one raised inside code that an extension runs with PyRun_String makes the interpreter kill itself
        # with SIGINT at exit: the signal comes back until it finds the import done. The retry may come late
        # (another thread must get the interpreter's lock to send it); the stop recorded above still holds, and
        # the command's end acts on it if nothing else did
        _retry_later(Stop.signum)
        return
    Stop.unwinding = True
    raise KeyboardInterrupt


def _retry_later(signum: int) -> None:
    """Send `signum` to this process again in _RETRY_S, unless a retry is already on its way."""
    pending = _state.get("retry")
    if pending is not None and pending.is_alive():
        return
    retry = threading.Timer(_RETRY_S, os.kill, (os.getpid(), signum))
    retry.daemon = True
    _state["retry"] = retry
    retry.start()


def _cancel_retry() -> None:
    """The command is over (signals ignored by now): a retry still on its way must not reach what runs next, a
    program that called main() or the next command."""
    pending = _state.pop("retry", None)
    if pending is not None:
        pending.cancel()
        pending.join()


def _importing(frame: FrameType | None) -> bool:
    """Whether `frame` runs inside an import: importlib's own frames are below it."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _handle_signals(handler: Callable[[int, Any], None] | signal.Handlers) -> None:
    """Give SIGINT and SIGTERM to `handler` while `main` runs a command (never under a program that imports the
    CLI); a signal that was ignored when main() started stays ignored, as Python leaves it (a job started in the
    background with `&` ignores SIGINT)."""
    if _state["signals"]:
        for signum in _SIGNALS:
            if signum not in _state["ignored"]:
                signal.signal(signum, handler)


def _tolerate_narrow_encodings() -> None:
    """Under an ASCII or Latin-1 locale (`PYTHONIOENCODING=ascii`, `LC_ALL=C PYTHONUTF8=0`) print what the
    encoding cannot hold (→, σ, box drawing) as escapes rather than fail after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("_", "-")
        if reconfigure is not None and encoding not in ("utf-8", "utf8"):
            with contextlib.suppress(ValueError, OSError):  # a stream that cannot change: left as it is
                reconfigure(errors="backslashreplace")


def _leave_at_once(status: int) -> None:
    """End the interrupted command now: what it wrote is flushed and its temporary files are gone, and the
    interpreter's own shutdown (collecting torch's objects: seconds on a busy machine) would only delay the prompt."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # a closed or broken stream: nothing more to show there
            stream.flush()
    os._exit(status)


def _run_app() -> int:
    """Run the command line; its exit status. A mistake on the command line itself (an unknown command or option,
    a missing argument, a value out of range) is one `error:` line with status 2, like every other error."""
    try:
        status = app(standalone_mode=False)
    except typer.TyperException as error:  # the base of the command line's mistakes (typer's bundled click)
        where = f"rnninit {error.ctx.command_path.partition(' ')[2]}".rstrip() if getattr(error, "ctx", None) \
            else "rnninit"
        console.print(f"[bold red]error:[/] {shown(error.format_message())} (see {where} --help)", soft_wrap=True)
        return error.exit_code
    except typer.Abort:  # Ctrl-C where typer itself waits (none of rnninit's commands prompts)
        console.print("[bold red]error:[/] interrupted", soft_wrap=True)
        return 128 + signal.SIGINT
    return status if isinstance(status, int) else 0


def main() -> None:
    """Console-script entry point."""
    # the package took the signals over on its first line when started as the command; a program that calls
    # main() itself gets the same while it runs, and exactly its own handlers back afterwards
    from . import _AS_COMMAND as started_as_command  # read now: a script standing in for the console script sets it

    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    _state["ignored"] = {signum for signum, handler in previous.items() if handler == signal.SIG_IGN}
    _state["signals"] = True
    _handle_signals(_stop_at_once)
    if sys.stdout is None:
        sys.stdout = _ClosedOutput()  # type: ignore[assignment]
    _tolerate_narrow_encodings()
    try:
        sys.exit(_run_app())
    except SystemExit as ended:
        if started_as_command and Stop.signum is not None and ended.code == 128 + Stop.signum:
            _leave_at_once(ended.code)  # only the command's own process: a program that called main() goes on
        raise
    finally:
        _handle_signals(signal.SIG_IGN)  # the exit status is decided (see _errors)
        _cancel_retry()
        _state["signals"] = False
        reset_stop()  # a program that goes on after main() writes its own outputs
        if not started_as_command:  # a program that called main() goes on; the command's process exits, still ignoring
            for signum, handler in previous.items():
                if handler is not None:  # None: installed outside Python
                    signal.signal(signum, handler)


if __name__ == "__main__":
    main()
