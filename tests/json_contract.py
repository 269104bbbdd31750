"""The JSON Schemas rnninit ships (`rnninit_cli/schemas/`), and the check every `--json` output of the CLI tests
goes through (the `cli` fixture calls `check_json_output`)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_NAMES = ("inspect", "apply", "new", "verify", "diff", "schemes", "error")
JSON_LINES_COMMANDS = ("inspect", "verify")  # several inputs: one document per line, errors as documents


def shipped_schema(name: str) -> dict[str, Any]:
    """The schema file as the installed package holds it (not rnninit's own loader: the file itself)."""
    return json.loads(files("rnninit_cli").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8"))


@functools.cache
def validator(name: str) -> Draft202012Validator:
    schema = shipped_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _refuse_constant(token: str) -> float:
    raise AssertionError(f"{token} is not JSON")


def documents(stdout: str) -> list[Any]:
    """The documents of a command's standard output: one (indented) document, or JSON Lines."""
    try:
        return [json.loads(stdout, parse_constant=_refuse_constant)]
    except json.JSONDecodeError:
        return [json.loads(line, parse_constant=_refuse_constant) for line in stdout.splitlines() if line.strip()]


def schema_errors(name: str, document: Any) -> list[str]:
    """Where `document` breaks schema `name`, one line each (none: it is valid)."""
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
            for error in sorted(validator(name).iter_errors(document), key=lambda error: list(error.absolute_path))]


def check_documents(command: str, stdout: str) -> list[Any]:
    """Every document `command --json` printed, each valid against the command's schema (an error document of a
    JSON Lines command against `error`); returns them."""
    found = documents(stdout)
    assert found, "no JSON document on standard output"
    for document in found:
        name = "error" if command in JSON_LINES_COMMANDS and isinstance(document, dict) and "error" in document \
            else command
        problems = schema_errors(name, document)
        assert not problems, f"{command} --json breaks schemas/{name}.json:\n" + "\n".join(problems[:10])
    return found


def command_of(args: Sequence[str]) -> str | None:
    """The subcommand of an rnninit argument list (after options such as --debug)."""
    return next((arg for arg in args if not arg.startswith("-")), None)


def check_json_output(args: Sequence[str], stdout: str) -> None:
    """Validate what an rnninit run printed on standard output, if it was asked for JSON and printed something."""
    command = command_of(args)
    if "--json" in args and command in SCHEMA_NAMES and stdout.strip():
        check_documents(command, stdout)
