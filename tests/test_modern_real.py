"""Modern recurrences end to end, on checkpoints the real libraries build (tests/modern_models.py): xlstm's sLSTM
(vanilla and cuda layouts) and mLSTM stacks, transformers' RecurrentGemma and xLSTM. Every gate parameter is found
without --layout, apply writes files the libraries load strictly and run, verify passes on fresh models and fails
on generic re-inits, the mistake detector names the libraries' own pitfalls, classic schemes are refused by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import modern_models as mm
import pytest
import torch

from rnninit_cli import discover, init_

pytest.importorskip("xlstm")
pytest.importorskip("transformers")

XLSTM_CASES = [
    dict(num_blocks=3, slstm_at=(1,), heads=2, embedding_dim=16),
    dict(num_blocks=2, slstm_at=(0, 1), heads=4, embedding_dim=16),
    dict(num_blocks=4, slstm_at=(3,), heads=1, embedding_dim=8),
    dict(num_blocks=5, slstm_at=(0, 2, 4), heads=2, embedding_dim=8),
    dict(num_blocks=1, slstm_at=(0,), heads=2, embedding_dim=16),
    dict(num_blocks=2, slstm_at=(), heads=2, embedding_dim=16),
]


def _expected_gate_keys(blocks) -> set[str]:
    return {key for block in blocks for role, key in block.gate_keys.items()}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(tensors, path)
    return path


@pytest.mark.parametrize("backend", ["vanilla", "cuda"])
@pytest.mark.parametrize("case", XLSTM_CASES, ids=lambda c: f"{c['num_blocks']}b-s{c['slstm_at']}-h{c['heads']}")
def test_xlstm_stack_found_applied_loaded_and_verified(cli, tmp_path: Path, case: dict, backend: str) -> None:
    state, info = mm.xlstm_stack(**case, backend=backend)
    found = discover(state)
    covered = {name for layer in found.layers for name in layer.all_stored()}
    assert covered == _expected_gate_keys(info.blocks)
    for layer, block in zip(found.layers, info.blocks, strict=True):
        assert (layer.family, layer.block_index, layer.num_blocks) == (block.kind, block.index, block.num_blocks)
        if block.kind == "slstm":
            assert (layer.heads, layer.head_size, layer.input_size) == (block.num_heads, block.head_dim,
                                                                       block.embedding_dim)
    source = _save(state, tmp_path / "stack.pt")
    verified = cli("verify", source, "--scheme", "xlstm", "--json")
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    output = tmp_path / "out.pt"
    applied = cli("apply", source, "--scheme", "xlstm", "--seed", "3", "-o", output)
    assert applied.exit_code == 0, applied.stderr
    written = torch.load(output, weights_only=True)
    assert mm.slstm_storage_layout(written[info.of_kind("slstm")[0].gate_keys["recurrent_kernel"]]) == backend \
        if info.of_kind("slstm") else True
    assert torch.isfinite(mm.load_xlstm_strict_and_run(written, **info.config)).all()
    assert cli("verify", output, "--scheme", "xlstm").exit_code == 0
    untouched = [name for name in state if name not in _expected_gate_keys(info.blocks)]
    assert all(torch.equal(written[name], state[name]) for name in untouched)


@pytest.mark.parametrize("how", ["xavier", "pytorch_uniform"])
def test_xlstm_verify_fails_on_a_generic_reinit(cli, tmp_path: Path, how: str) -> None:
    state, _ = mm.xlstm_stack(num_blocks=3, slstm_at=(1,), heads=2, embedding_dim=16)
    broken = mm.generic_reinit(state, how, hidden_size=16)
    result = cli("verify", _save(broken, tmp_path / "broken.pt"), "--scheme", "xlstm")
    assert result.exit_code == 1 and "NOT consistent" in result.stdout


def test_wrong_block_index_is_named(cli, tmp_path: Path) -> None:
    state, info = mm.xlstm_stack(num_blocks=4, slstm_at=(2,), heads=2, embedding_dim=16)
    wrong = mm.slstm_bias_from_wrong_block(state, info, wrong_block_idx=0, wrong_num_blocks=1)
    path = _save(wrong, tmp_path / "wrong.pt")
    result = cli("inspect", path, "--json")
    codes = {w["code"]: w["message"] for w in json.loads(result.stdout)["warnings"]}
    assert "power law of block 0 of 4, but this is block 2 of 4" in codes["forget-bias-block-index"]
    assert cli("verify", path, "--scheme", "xlstm").exit_code == 1
    fresh = cli("inspect", _save(state, tmp_path / "fresh.pt"), "--json")
    assert json.loads(fresh.stdout)["warnings"] == []


@pytest.mark.parametrize("backend", ["vanilla", "cuda"])
def test_gates_taken_by_their_names_are_named(cli, tmp_path: Path, backend: str) -> None:
    state, info = mm.xlstm_stack(num_blocks=3, slstm_at=(1,), heads=2, embedding_dim=16, backend=backend)
    swapped = mm.slstm_gates_by_name(state, info)
    result = cli("inspect", _save(swapped, tmp_path / "swapped.pt"), "--json")
    codes = {w["code"] for w in json.loads(result.stdout)["warnings"]}
    assert "swapped-gate-names" in codes


def test_recurrent_gemma_found_applied_loaded_and_verified(cli, tmp_path: Path) -> None:
    for heads, width, layers in ((2, 32, 3), (4, 32, 2), (1, 16, 2)):
        kinds = ("recurrent",) * (layers - 1) + ("attention",)
        state, info = mm.recurrent_gemma(num_hidden_layers=layers, heads=heads, lru_width=width, hidden_size=width,
                                         block_types=kinds)
        found = discover(state)
        assert {n for layer in found.layers for n in layer.all_stored()} == _expected_gate_keys(info.of_kind("rglru"))
        source = _save(state, tmp_path / f"rg{heads}.pt")
        assert cli("verify", source, "--scheme", "griffin").exit_code == 0
        output = tmp_path / f"rg{heads}-out.pt"
        assert cli("apply", source, "--scheme", "griffin", "--seed", "1", "-o", output).exit_code == 0
        written = torch.load(output, weights_only=True)
        assert torch.isfinite(mm.load_recurrent_gemma_strict_and_run(written, **info.config)).all()
        assert cli("verify", output, "--scheme", "griffin").exit_code == 0
        inspected = cli("inspect", output)
        assert "a² looks uniform" in inspected.stdout


def test_recurrent_gemma_generic_reinit_fails_verify(cli, tmp_path: Path) -> None:
    state, _ = mm.recurrent_gemma()
    broken = mm.generic_reinit(state, "xavier")
    result = cli("verify", _save(broken, tmp_path / "broken.pt"), "--scheme", "griffin")
    assert result.exit_code == 1


def test_hf_xlstm_found_applied_loaded_and_verified(cli, tmp_path: Path) -> None:
    state, info = mm.hf_xlstm(num_hidden_layers=2, heads=4, hidden_size=32)
    found = discover(state)
    assert {n for layer in found.layers for n in layer.all_stored()} == _expected_gate_keys(info.of_kind("mlstm"))
    source = _save(state, tmp_path / "hf.pt")
    assert cli("verify", source, "--scheme", "xlstm-7b").exit_code == 0
    output = tmp_path / "hf-out.safetensors"
    assert cli("apply", source, "--scheme", "xlstm-7b", "-o", output).exit_code == 0
    from safetensors.torch import load_file

    written = load_file(output)
    assert torch.isfinite(mm.load_hf_xlstm_strict_and_run(written, **info.config)).all()
    broken = mm.generic_reinit(state, "xavier")
    assert cli("verify", _save(broken, tmp_path / "broken.pt"), "--scheme", "xlstm-7b").exit_code == 1


@pytest.mark.parametrize("scheme", ["keras", "pytorch", "orthogonal", "chrono(tmax=50)"])
def test_classic_schemes_are_refused_by_name(cli, tmp_path: Path, scheme: str) -> None:
    state, _ = mm.xlstm_stack()
    result = cli("apply", _save(state, tmp_path / "x.pt"), "--scheme", scheme, "-o", tmp_path / "o.pt")
    assert result.exit_code != 0
    assert "is for torch.nn-style RNN/GRU/LSTM gates" in result.stderr and "use --scheme xlstm" in result.stderr
    assert not (tmp_path / "o.pt").exists()


def test_modern_schemes_refuse_torch_layers(cli, model_pt: Path, tmp_path: Path) -> None:
    result = cli("apply", model_pt, "--scheme", "griffin", "-o", tmp_path / "o.pt")
    assert result.exit_code != 0 and "is defined for rglru cells only" in result.stderr


def test_bf16_stack_keeps_its_dtype_and_verifies(cli, tmp_path: Path) -> None:
    state, info = mm.xlstm_stack(num_blocks=3, slstm_at=(0, 2), heads=2, embedding_dim=16, dtype=torch.bfloat16)
    source = _save(state, tmp_path / "bf16.pt")
    assert cli("verify", source, "--scheme", "xlstm").exit_code == 0
    output = tmp_path / "out.pt"
    assert cli("apply", source, "--scheme", "xlstm", "-o", output).exit_code == 0
    written = torch.load(output, weights_only=True)
    assert all(tensor.dtype == torch.bfloat16 for tensor in written.values() if tensor.is_floating_point())
    assert torch.isfinite(mm.load_xlstm_strict_and_run(written, **info.config).float()).all()
    assert cli("verify", output, "--scheme", "xlstm").exit_code == 0


def test_python_api_on_the_library_module() -> None:
    model = mm.xlstm_model(num_blocks=3, slstm_at=(1,), heads=2, embedding_dim=16)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.5)
    plan = init_(model, "xlstm", seed=0)
    assert {entry.kind for entry in plan.entries} == {"weight_ih", "weight_hh", "bias_ih"}
    forget = model.blocks[1].xlstm.slstm_cell._bias_.detach().reshape(4, 2, 8)[1]  # vanilla: [gate][head][dim]
    assert torch.equal(forget[0], forget[1]) and float(forget[0, 0]) == 5.0 and float(forget[0, -1]) == -7.0
    assert not model.blocks[1].xlstm.slstm_cell._recurrent_kernel_.any()


def test_heads_of_one_gate_get_their_own_draws(tmp_path: Path) -> None:
    """Each (gate, head) block has its own generator: heads never repeat each other's values."""
    state, info = mm.xlstm_stack(num_blocks=1, slstm_at=(0,), heads=4, embedding_dim=16)
    gemma, gemma_info = mm.recurrent_gemma(heads=4, lru_width=32, hidden_size=32)
    for tensors, scheme in ((state, "xlstm"), (gemma, "griffin")):
        init_(tensors, scheme, seed=0)
    for key in (*info.blocks[0].gate_keys.values(), *gemma_info.of_kind("rglru")[0].gate_keys.values()):
        tensor = (state | gemma)[key]
        if tensor.dim() == 3 and tensor.any():
            heads = [tensor[h].flatten() for h in range(tensor.shape[0])]
            assert all(not torch.equal(a, b) for i, a in enumerate(heads) for b in heads[i + 1:]), key


def test_verify_pools_the_heads_of_one_rule() -> None:
    """small_init drawn with the head width DH instead of E (σ √2 too large): one 8×8 head block often passes on its
    own (11 of 30 seeds before pooling), the 8 head blocks of the rule together never do; fresh files still pass."""
    from rnninit_cli.diagnostics.verification import verify

    def consistent(tensors: dict[str, torch.Tensor]) -> bool:
        found = discover(tensors)
        return verify(found.effective(tensors), "xlstm", layers=found.layers).ok

    for seed in range(8):
        state, info = mm.xlstm_stack(num_blocks=1, slstm_at=(0,), heads=2, embedding_dim=16, seed=seed)
        assert consistent(state)
        generator = torch.Generator().manual_seed(seed)
        wrong = dict(state)
        for key in info.blocks[0].gate_keys.values():
            if key.endswith("gate.weight"):
                wrong[key] = torch.randn(wrong[key].shape, generator=generator) * math.sqrt(2 / (5 * 8))
        assert not consistent(wrong), seed


def test_plot_of_per_head_cells_shows_the_radius_and_warns_nothing(tmp_path: Path) -> None:
    import warnings

    from rnninit_cli.diagnostics import diagnose
    from rnninit_cli.plot import plot_diagnosis

    state, _ = mm.recurrent_gemma()
    found = discover(state)
    tensors = found.effective(state)
    diagnosis = diagnose(tensors, layers=found.layers)
    assert any(block.kind == "radius" for layer in diagnosis.layers for block in layer.blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned of an empty legend where a layer has no bias_hh
        plot_diagnosis(diagnosis, tensors, tmp_path / "rg.png")
    assert (tmp_path / "rg.png").stat().st_size > 0
