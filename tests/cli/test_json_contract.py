"""JSON that scripts can rely on: every `--json` document meets the JSON Schema shipped in `rnninit_cli/schemas/`,
its top-level keys do not depend on the data, no key is made from data, and README.md documents every key.

The `cli` fixture validates every `--json` output of every CLI test (tests/json_contract.py); here the documents of
many kinds of checkpoints and flags are produced on purpose and checked explicitly.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import argparse
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from builders import build_state
from json_contract import SCHEMA_NAMES, check_documents, schema_errors, shipped_schema
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]


def _lstm_state(prefix: str = "lstm.", seed: int = 0, **kwargs: Any) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = torch.nn.LSTM(3, 4, **kwargs)
    return {prefix + name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _save(path: Path, state: Any) -> Path:
    torch.save(state, path)
    return path


def _optimizer_checkpoint(folder: Path) -> Path:
    """A training checkpoint whose Adam state holds moment buffers (apply warns that they go stale)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.LSTM(3, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 3))[0].sum().backward()
    optimizer.step()
    return _save(folder / "train.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1})


def _double_forget_bias(folder: Path) -> Path:
    """Keras-like LSTM whose forget bias 1 sits in both bias vectors: inspect warns (double-forget-bias)."""
    state = _lstm_state()
    for name in ("lstm.bias_ih_l0", "lstm.bias_hh_l0"):
        state[name] = torch.zeros(16)
        state[name][4:8] = 1.0
    return _save(folder / "double.pt", state)


def _weight_norm(folder: Path) -> Path:
    """An LSTM under torch's weight_norm parametrization: its weight_hh is read as g·v/‖v‖ (a view)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = torch.nn.utils.parametrizations.weight_norm(torch.nn.LSTM(3, 4), "weight_hh_l0")
    return _save(folder / "weight-norm.pt", {f"rnn.{k}": v for k, v in module.state_dict().items()})


def _look_alike(folder: Path) -> Path:
    """A hand-written LSTM cell (torchaudio's RNN-T names): not recurrent by name, listed as suspects."""
    state = {"lstm_layers.0.x2g.weight": torch.zeros(16, 3), "lstm_layers.0.x2g.bias": torch.zeros(16),
             "lstm_layers.0.p2g.weight": torch.zeros(16, 4)}
    return _save(folder / "look-alike.pt", state)


def _skipped_group(folder: Path) -> Path:
    """A good LSTM beside a group with a wrong bias size (skipped, with its reason)."""
    state = _lstm_state()
    bad = _lstm_state("bad.")
    bad["bad.bias_ih_l0"] = torch.zeros(15)
    return _save(folder / "skipped.pt", {**state, **bad})


def _quantized_and_foreign(folder: Path) -> Path:
    """An LSTM beside a quantized tensor and an object of another class (argparse.Namespace)."""
    with warnings.catch_warnings():  # torch deprecates making quantized tensors; checkpoints still hold them
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)
    return _save(folder / "mixed.pt", {"model": _lstm_state(), "q.weight": quantized,
                                       "args": argparse.Namespace(lr=0.1)})


def _tied(folder: Path) -> Path:
    """An LSTM whose weight_hh is the same tensor as another entry (tied: apply warns)."""
    state = _lstm_state()
    state["tied.weight"] = state["lstm.weight_hh_l0"]
    return _save(folder / "tied.pt", state)


def _irnn_negative(folder: Path) -> Path:
    """An RNN whose recurrent weight is -0.2·I: irnn is tried with the scale read from the values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {f"rnn.{k}": v.detach().clone() for k, v in torch.nn.RNN(4, 8).state_dict().items()}
    state["rnn.weight_hh_l0"] = -0.20342267 * torch.eye(8)
    return _save(folder / "irnn.pt", state)


def _model_pt(folder: Path) -> Path:
    return _save(folder / "model.pt", build_state())


def _model_safetensors(folder: Path) -> Path:
    path = folder / "model.safetensors"
    save_file(build_state(), str(path), metadata={"author": "me"})
    return path


def _no_recurrent(folder: Path) -> Path:
    return _save(folder / "plain.pt", {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)})


def _half(folder: Path) -> Path:
    return _save(folder / "half.pt", {k: v.to(torch.bfloat16) for k, v in _lstm_state(proj_size=2).items()})


def _model_folder(folder: Path) -> Path:
    model = folder / "hf-model"
    model.mkdir()
    save_file(_lstm_state("encoder.rnn.", bidirectional=True), str(model / "model.safetensors"))
    return model


CHECKPOINTS: dict[str, Callable[[Path], Path]] = {
    "model.pt": _model_pt, "model.safetensors": _model_safetensors, "no-recurrent": _no_recurrent,
    "half-projected": _half, "optimizer": _optimizer_checkpoint, "double-forget-bias": _double_forget_bias,
    "weight-norm": _weight_norm, "look-alike": _look_alike, "skipped": _skipped_group,
    "quantized-foreign": _quantized_and_foreign, "tied": _tied, "irnn-negative": _irnn_negative,
    "model-folder": _model_folder,
}
HAS_LAYERS = [name for name in CHECKPOINTS if name not in ("no-recurrent", "look-alike")]


@pytest.fixture
def run_json(cli: Callable[..., Any]) -> Callable[..., tuple[int, list[Any]]]:
    """run_json(*args) → (exit status, documents), each document checked here against its schema."""

    def run(*args: Any) -> tuple[int, list[Any]]:
        result = cli(*args, "--json")
        assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
        return result.exit_code, check_documents(str(args[0]), result.stdout)

    return run


def test_every_schema_ships_with_the_package_and_fixes_its_keys() -> None:
    """Each document's schema is in the package (package-data) and closed: every object lists its keys, requires all
    of them, and allows no other (maps of free keys: only metadata, a scheme's params, estimated arguments)."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "schemas/*.json" in package_data["rnninit_cli"]
    free_maps = {"metadata", "params", "arguments"}

    def closed(node: Any, key: str = "") -> Iterator[str]:
        if isinstance(node, dict):
            fixed = node.get("additionalProperties") is False and \
                set(node.get("required", ())) == set(node.get("properties", {}))
            if node.get("type") == "object" and key not in free_maps and not fixed:
                yield key
            for child_key, child in node.items():
                yield from closed(child, child_key if child_key not in ("properties", "items", "anyOf") else key)
        elif isinstance(node, list):
            for child in node:
                yield from closed(child, key)

    for name in SCHEMA_NAMES:
        schema = shipped_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert list(closed(schema)) == [], name


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
@pytest.mark.parametrize("flags", [(), ("--wide",), ("--only", "weight_hh")])
def test_inspect_documents_meet_the_schema(run_json: Callable[..., Any], tmp_path: Path, checkpoint: str,
                                           flags: tuple[str, ...]) -> None:
    source = CHECKPOINTS[checkpoint](tmp_path)
    _, (document,) = run_json("inspect", source, *flags)
    assert document["input"] == str(source)


@pytest.mark.parametrize("checkpoint", HAS_LAYERS)
@pytest.mark.parametrize("flags", [("--dry-run",), ("-o", "{out}"), ("--dry-run", "--rule", "weight_hh=orthogonal",
                                                                     "--seed", "3"), ("-o", "{out}", "--quiet")])
def test_apply_documents_meet_the_schema(run_json: Callable[..., Any], tmp_path: Path, checkpoint: str,
                                         flags: tuple[str, ...]) -> None:
    source = CHECKPOINTS[checkpoint](tmp_path)
    out = tmp_path / ("out" if source.is_dir() else f"out{source.suffix}")
    _, (document,) = run_json("apply", source, "--scheme", "keras", *(flag.format(out=out) for flag in flags))
    assert document["dry_run"] is ("--dry-run" in flags)


@pytest.mark.parametrize("checkpoint", HAS_LAYERS)
def test_verify_and_diff_documents_meet_the_schema(run_json: Callable[..., Any], cli: Callable[..., Any],
                                                   tmp_path: Path, checkpoint: str) -> None:
    source = CHECKPOINTS[checkpoint](tmp_path)
    scheme = "keras"
    run_json("verify", source, "--scheme", scheme)  # status 1: not drawn by keras
    out = tmp_path / ("out" if source.is_dir() else f"out{source.suffix}")
    assert cli("apply", source, "--scheme", scheme, "--seed", "0", "-o", out, "--quiet").exit_code == 0
    status, (verified,) = run_json("verify", out, "--scheme", scheme)
    assert (status, verified["ok"]) == (0, True)
    status, (different,) = run_json("diff", source, out)
    assert (status, different["identical"]) == (1, False)
    status, (same,) = run_json("diff", out, out)
    assert (status, same["identical"]) == (0, True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "lstmcell"])
def test_new_and_schemes_documents_meet_their_schemas(run_json: Callable[..., Any], tmp_path: Path,
                                                      cell: str) -> None:
    extra = ("--proj-size", "2") if cell == "lstm" else ()
    _, (document,) = run_json("new", cell, "--input-size", "3", "--hidden-size", "4", "--scheme", "orthogonal",
                              "-o", tmp_path / f"{cell}.safetensors", *extra)
    assert document["output"].endswith(f"{cell}.safetensors")
    _, (listed,) = run_json("schemes")
    assert {item["name"] for item in listed} >= {"keras", "chrono", "irnn"}


def _top_keys(run_json: Callable[..., Any], *args: Any) -> list[str]:
    _, (document,) = run_json(*args)
    return list(document)


def test_top_level_keys_do_not_depend_on_the_data(run_json: Callable[..., Any], tmp_path: Path) -> None:
    """No layer, layers, warnings or none, skipped groups, look-alikes: the same keys in the same order."""
    inspected = {name: _top_keys(run_json, "inspect", build(tmp_path)) for name, build in CHECKPOINTS.items()}
    assert len({tuple(keys) for keys in inspected.values()}) == 1, inspected
    assert "warnings" in inspected["no-recurrent"]
    applied = [_top_keys(run_json, "apply", _model_pt(tmp_path), "--scheme", "keras", "--dry-run"),
               _top_keys(run_json, "apply", _optimizer_checkpoint(tmp_path), "--scheme", "keras", "-o",
                         tmp_path / "out.pt"),
               _top_keys(run_json, "new", "gru", "--input-size", "2", "--hidden-size", "3", "--scheme", "keras",
                         "-o", tmp_path / "new.pt")]
    assert applied[0] == applied[1] == applied[2]
    source = _model_pt(tmp_path)
    assert _top_keys(run_json, "verify", source, "--scheme", "keras") == \
        _top_keys(run_json, "verify", source, "--scheme", "pytorch")
    assert _top_keys(run_json, "diff", source, source) == _top_keys(run_json, "diff", source, tmp_path / "out.pt")


def test_apply_json_carries_its_warnings_and_notes(run_json: Callable[..., Any], cli: Callable[..., Any],
                                                   tmp_path: Path) -> None:
    source = _optimizer_checkpoint(tmp_path)
    result = cli("apply", source, "--scheme", "keras", "-o", tmp_path / "out.pt", "--json")
    (document,) = check_documents("apply", result.stdout)
    assert [w["code"] for w in document["warnings"]] == ["stale-optimizer-state"]
    assert document["warnings"][0]["message"] in result.stderr  # the same warning a person reads
    _, (tied,) = run_json("apply", _tied(tmp_path), "--scheme", "keras", "--dry-run")
    assert [w["code"] for w in tied["warnings"]] == ["shared-storage"]
    _, (normed,) = run_json("apply", _weight_norm(tmp_path), "--scheme", "keras", "--dry-run")
    assert normed["notes"] and normed["notes"][0].startswith("effective parameter: ")
    _, (skipping,) = run_json("apply", _skipped_group(tmp_path), "--scheme", "keras", "--dry-run")
    assert [w["code"] for w in skipping["warnings"]] == ["skipped"] and skipping["skipped"][0]["names"]


def _keys(node: Any, free: frozenset[str] = frozenset({"metadata", "params", "arguments"})) -> Iterator[str]:
    """Every object key of a document, except inside the maps whose keys are names by design."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            if key not in free:
                yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


def test_no_key_is_made_from_data(run_json: Callable[..., Any], tmp_path: Path) -> None:
    """Schemes tried with arguments read from the values (irnn's scale, chrono's tmax) are list items, not keys."""
    _, (document,) = run_json("inspect", _irnn_negative(tmp_path))
    scheme = document["layers"][0]["scheme"]
    tried = [item["tried"] for item in scheme["rejected"] + scheme["estimated"]]
    assert any(re.fullmatch(r"irnn\(scale=-0\.2\d*\)", text) for text in tried), tried
    names = set()
    for name in SCHEMA_NAMES:
        names |= set(_keys(shipped_schema(name)))
    assert set(_keys(document)) <= names
    assert not [key for key in _keys(document) if not re.fullmatch(r"[a-z_]+", key)]


def test_a_document_that_breaks_its_schema_is_caught(run_json: Callable[..., Any], tmp_path: Path) -> None:
    """The check can fail: a missing key, an extra key, a keyed `rejected`, a wrong type."""
    _, (document,) = run_json("inspect", _irnn_negative(tmp_path))
    assert schema_errors("inspect", document) == []
    missing = {key: value for key, value in document.items() if key != "warnings"}
    extra = {**document, "dry_run": False}
    keyed = {**document, "layers": [{**document["layers"][0], "scheme": {
        **document["layers"][0]["scheme"], "rejected": {"irnn(scale=-0.2)": "no"}}}]}
    wrong = {**document, "views": "none"}
    for broken in (missing, extra, keyed, wrong):
        assert schema_errors("inspect", broken), broken
    assert schema_errors("error", {"input": "a.pt", "error": "no such file", "exit_status": 3}) == []
    assert schema_errors("error", {"input": "a.pt", "error": "no such file"})


def _readme_json_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## JSON\n")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_documents_every_key() -> None:
    """Every key of every schema is named in README.md's JSON section (as `key` or "key")."""
    section = _readme_json_section()
    undocumented = set()
    for name in SCHEMA_NAMES:
        for key in _keys(shipped_schema(name)["properties"] if name != "schemes"
                         else shipped_schema(name)["items"]["properties"], frozenset()):
            if key in ("type", "items", "properties", "required", "additionalProperties", "enum", "anyOf",
                       "minItems", "maxItems", "minimum"):
                continue
            if f"`{key}`" not in section and f'"{key}"' not in section:
                undocumented.add(f"{name}: {key}")
    assert sorted(undocumented) == []
