"""How the CLI explains itself: the exit-status table, each command's examples, help in panels with readable
placeholders, and shell completion (scheme, initializer, rule, gate and layout names; never imports torch).
"""

from __future__ import annotations

import inspect as inspect_module
import os
from collections.abc import Iterable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

# The exit status of every command (README, Exit status): the same table is printed by `rnninit --help`.
DONE, ANSWER_NO, USAGE, BAD_INPUT, BAD_OUTPUT, INTERNAL = 0, 1, 2, 3, 4, 5
EXIT_STATUSES = (
    ("0", "done; verify: every block consistent; diff: identical"),
    ("1", "the answer is no: verify: some block not consistent; diff: the checkpoints differ"),
    ("2", "usage error: a flag, argument, scheme, initializer, rule, gate or layout; --only matching nothing; "
          "nothing to do; contradictory output names"),
    ("3", "an input cannot be used: missing, unreadable, not a checkpoint, damaged, refused as unsafe, a layout "
          "or dtype rnninit cannot handle"),
    ("4", "an output cannot be written: exists without --force, no permission, full disk"),
    ("5", "internal error (a bug; --debug shows the traceback)"),
    ("130, 143", "interrupted by SIGINT, SIGTERM"),
    ("", "With several input files: the highest of the files' statuses."),
)

# Each command's examples, shown verbatim under its --help (tests/cli/test_shell.py runs every one of them, in this
# order, in a folder that holds model.pt and other.pt)
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "apply": (
        ("Keras's scheme, reproducibly", "rnninit apply model.pt --scheme keras --seed 0 -o keras.pt"),
        ("a forget bias of 1, written into bias_ih only",
         "rnninit apply model.pt -s pytorch -r bias_ih.f=ones -o forget.pt"),
        ("the plan for the encoder only; nothing written", "rnninit apply model.pt -s flax --only encoder --dry-run"),
    ),
    "inspect": (
        ("layers, gate statistics, the scheme each layer matches", "rnninit inspect model.pt"),
        ("several files, one JSON document per line", "rnninit inspect model.pt keras.pt --json"),
        ("every column, for the decoder only", "rnninit inspect keras.pt --wide --only decoder"),
    ),
    "verify": (
        ("exit 0 when every block is what the scheme draws", "rnninit verify keras.pt --scheme keras"),
        ("several files, the answer by exit status alone", "rnninit verify *.pt -s keras -q || echo 'not all keras'"),
        ("with a rule, one JSON document per file", "rnninit verify forget.pt -s pytorch -r bias_ih.f=ones --json"),
    ),
    "diff": (
        ("which gate blocks changed", "rnninit diff model.pt keras.pt"),
        ("only whether they differ", "rnninit diff model.pt keras.pt > /dev/null || echo changed"),
        ("the encoder's blocks, as JSON", "rnninit diff model.pt keras.pt --only encoder --json"),
    ),
    "new": (
        ("an LSTM drawn by Keras's scheme", "rnninit new lstm --input-size 80 --hidden-size 256 -s keras -o lstm.pt"),
        ("a 2-layer GRU as safetensors, reproducibly",
         "rnninit new gru --input-size 8 --hidden-size 16 --num-layers 2 -s flax --seed 1 -o gru.safetensors"),
    ),
    "schemes": (
        ("every scheme, its arguments and rules", "rnninit schemes"),
        ("the schemes that draw orthogonal blocks", "rnninit schemes | grep -i orthogonal"),
    ),
}

PANELS = ("What to build", "What to write", "Which blocks", "Output", "Display")  # in the order --help shows them


def _summary(command: Any) -> str:
    """A command's first paragraph, whole: `rnninit --help` never cuts it off."""
    text = command.short_help or command.help or ""
    return " ".join(inspect_module.cleandoc(text).split("\n\n")[0].split())


def _argument_word(parameter: Any) -> str:
    """An argument as a person reads it: INPUT, INPUT... ."""
    word = (parameter.metavar or parameter.name).upper()
    return word + ("..." if parameter.nargs != 1 else "")


def _write_examples(formatter: Any, examples: Iterable[tuple[str, str]]) -> None:
    """Examples as lines one can copy into a shell, each under a comment that says what it does; a line too long
    for the terminal goes on after a backslash."""
    examples = tuple(examples)
    if not examples:
        return
    with formatter.section("Examples"):
        indent = " " * formatter.current_indent
        for index, (what, line) in enumerate(examples):
            if index:
                formatter.write("\n")
            formatter.write(f"{indent}# {what}\n")
            pieces = _shell_lines(line, max(formatter.width - formatter.current_indent, 40))
            formatter.write(" \\\n".join(f"{indent}{'    ' if number else ''}{piece}"
                                            for number, piece in enumerate(pieces)) + "\n")


def _shell_lines(line: str, width: int) -> list[str]:
    """`line` cut at spaces outside quotes into pieces of at most `width` characters (with the ` \\` and the
    continuation's indent), where its words allow."""
    words, word, quote = [], "", ""
    for char in line:
        if char == " " and not quote:
            words.append(word)
            word = ""
            continue
        if char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        word += char
    words.append(word)
    pieces = [words[0]]
    for word in words[1:]:
        room = width - 2 - (4 if len(pieces) > 1 else 0)
        if len(pieces[-1]) + 1 + len(word) > room:
            pieces.append(word)
        else:
            pieces[-1] += f" {word}"
    return pieces


class HelpCommand(TyperCommand):
    """A command whose --help reads like a man page: placeholders in capitals, options in panels, examples."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.options_metavar or "[OPTIONS]",
                *(_argument_word(p) for p in self.get_params(ctx) if p.param_type_name == "argument")]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments = [(_argument_word(p), p.help or "") for p in self.get_params(ctx) if p.param_type_name == "argument"]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        panels: dict[str, list[tuple[str, str]]] = {}
        for parameter in self.get_params(ctx):
            record = parameter.get_help_record(ctx) if parameter.param_type_name == "option" else None
            if record is not None:
                panels.setdefault(getattr(parameter, "rich_help_panel", None) or "Display", []).append(record)
        for title in sorted(panels, key=lambda name: PANELS.index(name) if name in PANELS else len(PANELS)):
            with formatter.section(title):
                formatter.write_dl(panels[title])

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        _write_examples(formatter, EXAMPLES.get(self.name or "", ()))
        formatter.write_paragraph()
        formatter.write_text("Exit status: 0 done, 1 the answer is no (verify, diff), 2 usage error, 3 an input "
                             "cannot be used, 4 an output cannot be written, 5 a bug; see rnninit --help.")


class HelpGroup(TyperGroup):
    """`rnninit --help`: whole command summaries, and the table of exit statuses."""

    def _main_shell_completion(self, ctx_args: Any, prog_name: str, complete_var: str | None = None) -> None:
        if os.environ.get(complete_var or COMPLETE_VARIABLE):  # a shell asks for candidates: Typer's answers
            from typer.completion import completion_init

            completion_init()
        super()._main_shell_completion(ctx_args, prog_name, complete_var)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, _summary(command)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Exit status"):
            formatter.write_dl([(status, meaning) for status, meaning in EXIT_STATUSES if status])
            formatter.write_text(next(meaning for status, meaning in EXIT_STATUSES if not status))
        formatter.write_paragraph()
        formatter.write_text("Run rnninit COMMAND --help for a command's options and examples.")


COMPLETION_SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def completion_shell(value: str) -> str:
    """The shell named to `--show-completion` / `--install-completion`, checked."""
    from typer.completion import completion_init

    completion_init()  # Typer's bash, zsh, fish and PowerShell scripts and answers
    if value not in COMPLETION_SHELLS:
        raise typer.BadParameter(f"{value!r} has no completion script; name one of {', '.join(COMPLETION_SHELLS)}")
    return value


def complete_shell(incomplete: str) -> list[str]:
    return [name for name in COMPLETION_SHELLS if name.startswith(incomplete)]


def show_completion(ctx: typer.Context, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from typer.completion import get_completion_script

    shell = completion_shell(value)
    typer.echo(get_completion_script(prog_name="rnninit", complete_var=COMPLETE_VARIABLE, shell=shell))
    raise typer.Exit()


def install_completion(ctx: typer.Context, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from typer.completion import install

    shell = completion_shell(value)
    try:
        shell, path = install(shell=shell, prog_name="rnninit", complete_var=COMPLETE_VARIABLE)
    except OSError as error:  # no such shell to ask (powershell), a HOME that is a file or read-only
        where = f" ({error.filename})" if error.filename else ""
        typer.echo(f"error: cannot install {shell} completion: {error.strerror or error}{where}; print the script "
                   f"with --show-completion {shell} and put it where your shell reads it", err=True)
        raise typer.Exit(BAD_OUTPUT) from None
    typer.echo(f"{shell} completion installed in {path}; it takes effect in a new shell", err=True)
    raise typer.Exit()


COMPLETE_VARIABLE = "_RNNINIT_COMPLETE"  # what a shell's completion function sets to ask rnninit for candidates


def complete_scheme(incomplete: str) -> list[tuple[str, str]]:
    """Scheme names for shell completion, each with its description (zsh and fish show it)."""
    from .init.schemes import SCHEMES

    return [(name, first_sentence(scheme.description)) for name, scheme in SCHEMES.items()
            if name.startswith(incomplete)]


def complete_rule(incomplete: str) -> list[str]:
    """`TARGET=` (weight_hh=, bias_ih.f=, ...), then after the `=` the initializers: `bias_ih.f=ones`."""
    from .init.initializers import INITIALIZERS
    from .init.schemes import KEEP, TARGET_KINDS
    from .layouts.discovery import GATES

    target, equals, initializer = incomplete.partition("=")
    if equals:
        return [f"{target}={name}" for name in (*INITIALIZERS, KEEP) if name.startswith(initializer)]
    gates = sorted({gate for names in GATES.values() for gate in names if gate})
    targets = [f"{kind}{suffix}=" for kind in TARGET_KINDS for suffix in ("", *(f".{gate}" for gate in gates))]
    return [name for name in targets if name.startswith(incomplete)]


def complete_layout(incomplete: str) -> list[tuple[str, str]]:
    """Built-in layout names, and the start of a declaration of one's own (`cell=lstm`)."""
    from .layouts.declared import BUILTIN_LAYOUTS

    candidates = [(name, "built-in layout") for name in BUILTIN_LAYOUTS]
    candidates += [(f"cell={cell}", "declare a layout: cell=... weight_ih=REGEX weight_hh=REGEX ...")
                   for cell in ("rnn", "gru", "lstm", "custom")]
    return [(name, what) for name, what in candidates if name.startswith(incomplete)]


def first_sentence(text: str) -> str:
    """A description's opening words, short enough for one line of a shell's completion menu (zsh, fish), and
    without brackets, which Typer would read as markup."""
    words = text.split(". ")[0].split(":")[0].replace("[", "(").replace("]", ")").split()
    while len(" ".join(words)) > 60:
        words.pop()
    return " ".join(words).rstrip(",;")
