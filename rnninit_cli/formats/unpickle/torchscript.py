"""TorchScript archives: the `code/` records and the module classes they declare, which name the state-dict
path of every parameter and buffer.
"""

from __future__ import annotations

import ast
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from ...errors import CheckpointError
from ..safety import CODE_RECORD_LIMIT
from .records import Foreign


def read_code(archive: zipfile.ZipFile, folder: str) -> dict[str, str]:
    """A TorchScript archive's `code/__torch__/**.py` records (text, never run); {} for a torch.save file."""
    from ..safety import read_record

    found: dict[str, str] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        if not (name.startswith(f"{folder}/code/__torch__") and name.endswith(".py")):
            continue
        total += info.file_size
        if total > CODE_RECORD_LIMIT:
            raise CheckpointError(f"the TorchScript archive's code records declare more than {CODE_RECORD_LIMIT} "
                                  "bytes; refused")
        found[name.removeprefix(f"{folder}/code/")] = read_record(archive, name).decode("utf-8", "replace")
    if not found and f"{folder}/constants.pkl" in archive.namelist():
        raise CheckpointError(f"a constants.pkl record makes the archive a TorchScript archive to torch.load, but "
                              f"it holds no {folder}/code/ records: not a readable archive (damaged?)")
    return found



_CLASS = re.compile(r"^class\s+([\w.]+)\s*\(\s*Module\s*\)\s*:", re.MULTILINE)



# [ \t], never \s: `^\s+` would match across blank lines from each of them (quadratic time)
_LIST = re.compile(r"^[ \t]+(__parameters__|__buffers__)[ \t]*=[ \t]*(\[[^\]\n]*\])", re.MULTILINE)



LIST_TEXT_LIMIT = 1 << 20  # one __parameters__ line: ~20 bytes a name, so about 50,000 names



def script_modules(code: dict[str, str]) -> dict[str, tuple[list[str], list[str]]]:
    """TorchScript module classes ("__torch__.a.b.Name") → (parameter names, buffer names), read from the
    `__parameters__` / `__buffers__` lines of each class in the archive's code (text; nothing is run)."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for path, text in code.items():
        module = path.removesuffix(".py").replace("/", ".")
        starts = [(match.start(), match.group(1)) for match in _CLASS.finditer(text)]
        for index, (start, name) in enumerate(starts):
            stop = starts[index + 1][0] if index + 1 < len(starts) else len(text)
            lists: dict[str, list[str]] = {"__parameters__": [], "__buffers__": []}
            for match in _LIST.finditer(text, start, stop):
                if len(match.group(2)) > LIST_TEXT_LIMIT:
                    raise CheckpointError(f"a TorchScript code record ({path}) lists more than {LIST_TEXT_LIMIT} "
                                          f"bytes of {match.group(1)}; refused")
                try:
                    value = ast.literal_eval(match.group(2))
                except (ValueError, SyntaxError):
                    continue
                except (MemoryError, RecursionError):  # the parser's own bounds on nesting
                    raise CheckpointError(f"a TorchScript code record ({path}) nests its {match.group(1)} too "
                                          "deeply to read; refused") from None
                if isinstance(value, list) and all(isinstance(item, str) for item in value):
                    lists[match.group(1)] = value
            found[f"{module}.{name}"] = (lists["__parameters__"], lists["__buffers__"])
    return found



def script_tensors(root: Any, code: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """(state_dict name, tensor) of a TorchScript module tree: each module's parameters, then buffers, then
    its submodules (attributes holding objects of module classes), as `module.state_dict()` names them.
    Other tensor attributes (`_flat_weights`, which aliases the LSTM's parameters) are not entries."""
    modules = script_modules(code)
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        if id(node) in seen or not isinstance(node, Foreign) or node.qualified not in modules:
            continue
        if depth > 500:
            raise CheckpointError("the TorchScript modules nest deeper than 500 levels; refused")
        seen.add(id(node))
        attributes = node.state if isinstance(node.state, dict) else {}
        parameters, buffers = modules[node.qualified]
        for name in [*parameters, *buffers]:
            value = attributes.get(name)
            if value is not None and not isinstance(value, (Foreign, dict, list, tuple, str, int, float)):
                yield f"{prefix}{name}", value
        children = [(f"{prefix}{key}.", value, depth + 1) for key, value in attributes.items()
                    if isinstance(value, Foreign) and value.qualified in modules]
        stack.extend(reversed(children))
