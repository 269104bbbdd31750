"""The fixtures of tests/modern_models.py against independent facts: key names and shapes from the model sizes
(as ../shared/MODERN.md states them), the sLSTM's igate/fgate role swap recomputed from the tensors in numpy, the
cuda layout against its index definition and back bit for bit, strict loads that run, and the libraries' init
call sequences as the docstrings state them, replayed draw by draw."""

from __future__ import annotations

import math

import modern_models as mm
import numpy as np
import pytest
import torch

SLSTM_AT = [(1,), (0, 1, 2), (), (0,), (2,), (0, 2)]


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy()


def powerlaw_forget_bias(head_dim: int, block_idx: int, num_blocks: int) -> np.ndarray:
    """b_f[j] = −(−5 + 12·(j/(DH−1))^(0.3 + 1.3·r)), r = block_idx/(num_blocks−1) (0 for one block)."""
    ratio = block_idx / (num_blocks - 1) if num_blocks > 1 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return -(-5.0 + 12.0 * (np.arange(head_dim) / (head_dim - 1)) ** (0.3 + 1.3 * ratio))


# ------------------------------------------------------------------------------------------- keys and shapes

@pytest.mark.parametrize("slstm_at", SLSTM_AT)
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_xlstm_stack_keys_and_shapes(slstm_at: tuple[int, ...], heads: int) -> None:
    state, info = mm.xlstm_stack(slstm_at=slstm_at, heads=heads)
    embedding, head_dim = 16, 16 // heads
    assert [block.kind for block in info.blocks] == ["slstm" if i in slstm_at else "mlstm" for i in range(3)]
    for block in info.blocks:
        assert block.prefix == f"blocks.{block.index}.xlstm."
        assert (block.num_heads, block.embedding_dim, block.num_blocks) == (heads, embedding, 3)
        layer = {key[len(block.prefix):]: tuple(tensor.shape) for key, tensor in state.items()
                 if key.startswith(block.prefix)}
        if block.kind == "slstm":
            assert block.head_dim == head_dim
            for name in ("igate", "fgate", "zgate", "ogate"):
                assert layer[f"{name}.weight"] == (heads, head_dim, head_dim)
            assert layer["slstm_cell._recurrent_kernel_"] == (heads, 4 * head_dim, head_dim)
            assert layer["slstm_cell._bias_"] == (4 * heads * head_dim,)
            assert layer["conv1d.conv.weight"] == (embedding, 1, 4)
            assert layer["group_norm.weight"] == (embedding,)
            assert block.gate_keys["input_weight"] == block.prefix + "fgate.weight"  # the swap, by role
        else:
            inner = layer["proj_up.weight"][0] // 2
            assert block.inner_dim == inner and block.head_dim == inner // heads
            for name in ("igate", "fgate"):
                assert layer[f"mlstm_cell.{name}.weight"] == (heads, 3 * inner)
                assert layer[f"mlstm_cell.{name}.bias"] == (heads,)
            assert not any("recurrent" in name for name in layer)  # no hidden-to-hidden matrix
        assert set(block.gate_keys.values()) <= set(state)


def test_xlstm_stack_gate_values_follow_the_reference_formulas() -> None:
    state, info = mm.xlstm_stack(num_blocks=4, slstm_at=(0, 2, 3), heads=2)
    for block in info.of_kind("slstm"):
        bias = _np(state[block.gate_keys["bias"]]).reshape(4, block.num_heads, block.head_dim)  # [gate][head][dim]
        for head in range(block.num_heads):  # block_idx counts the mLSTM block at position 1 too
            np.testing.assert_allclose(bias[1, head], powerlaw_forget_bias(block.head_dim, block.index, 4), atol=1e-5)
        assert not bias[[0, 2, 3]].any()
        assert not state[block.gate_keys["recurrent_kernel"]].any()
        weights = torch.cat([state[block.gate_keys[role]].flatten() for role in
                             ("input_weight", "forget_weight", "cell_weight", "output_weight")])
        assert abs(weights.std().item() / math.sqrt(2 / (5 * 16)) - 1) < 0.25
    for block in info.of_kind("mlstm"):
        np.testing.assert_array_equal(_np(state[block.gate_keys["forget_bias"]]), np.linspace(3, 6, block.num_heads))
        assert not state[block.gate_keys["forget_weight"]].any() and not state[block.gate_keys["input_weight"]].any()


def test_head_dim_one_builds_with_a_nan_powerlaw_bias_and_a_finite_small_init_one() -> None:
    state, info = mm.xlstm_stack(slstm_at=(0, 1, 2), heads=16)
    assert {block.head_dim for block in info.blocks} == {1}
    assert all(state[block.gate_keys["bias"]].isnan().any() for block in info.blocks)
    state, info = mm.xlstm_stack(slstm_at=(0, 1, 2), heads=16, bias_init="small_init")
    assert all(state[block.gate_keys["bias"]].isfinite().all() for block in info.blocks)


def test_recurrent_gemma_keys_and_shapes() -> None:
    state, info = mm.recurrent_gemma(num_hidden_layers=3, heads=2, lru_width=32, hidden_size=32)
    assert [block.kind for block in info.blocks] == ["rglru", "rglru", "attention"]
    for block in info.of_kind("rglru"):
        assert block.prefix == f"model.layers.{block.index}.temporal_block.rg_lru."
        shapes = {key[len(block.prefix):]: tuple(state[key].shape) for key in state if key.startswith(block.prefix)}
        assert shapes == {"recurrent_param": (32,), "input_gate_weight": (2, 16, 16), "input_gate_bias": (2, 16),
                          "recurrent_gate_weight": (2, 16, 16), "recurrent_gate_bias": (2, 16)}
        a = torch.sigmoid(-state[block.gate_keys["recurrent_param"]].double())  # a = σ(−p)
        assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6
        assert not state[block.gate_keys["input_gate_bias"]].any()
    assert not any("rg_lru" in key for key in state if key.startswith("model.layers.2."))


def test_hf_xlstm_keys_shapes_and_values() -> None:
    state, info = mm.hf_xlstm(num_hidden_layers=2, heads=2, hidden_size=32)
    assert [block.prefix for block in info.blocks] == [f"backbone.blocks.{i}.mlstm_layer." for i in range(2)]
    for block in info.blocks:
        keys = block.gate_keys
        assert tuple(state[keys["input_weight"]].shape) == tuple(state[keys["forget_weight"]].shape) == (2, 32)
        np.testing.assert_array_equal(_np(state[keys["input_bias"]]), [-10.0, -10.0])
        np.testing.assert_array_equal(_np(state[keys["forget_bias"]]), np.linspace(3, 6, 2))
        assert not state[keys["output_weight"]].any() and not state[keys["input_weight"]].any()
        assert block.qk_head_dim * 2 == 16 and block.head_dim * 2 == 32  # q: 0.5·hidden, v: hidden
    assert not state["backbone.blocks.0.ffn.proj_up_gate.weight"].any()  # "gate" matched by substring
    assert mm.hf_xlstm_config().qk_dim != state["backbone.blocks.0.mlstm_layer.q.weight"].shape[0]


def test_hf_xlstm_fused_weight_mode_cannot_be_constructed() -> None:
    """If a later transformers builds it, add a fused builder (ifgate_preact = [i heads | f heads])."""
    with pytest.raises(RuntimeError, match="must match the size"):
        mm.hf_xlstm_model(weight_mode="fused")


# ------------------------------------------------------------------------------------------- the role swap

def _headwise(weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """LinearHeadwiseExpand: (B, S, NH·DH) → (B, S, NH, DH) with W[head, out, in]."""
    batch, steps, _ = x.shape
    return np.einsum("bshd,hod->bsho", x.reshape(batch, steps, weight.shape[0], -1), weight)


def _slstm_outputs(pre: dict[str, np.ndarray], kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The unstabilized sLSTM (c/n does not depend on the stabilizer): c = σ(f̃)c + e^ĩ·tanh(z̃),
    n = σ(f̃)n + e^ĩ, y = σ(õ)·c/n; R vanilla [head, gate·DH+out, in], b [gate][head][dim]. (B, NH, S, DH)."""
    batch, steps, heads, head_dim = pre["i"].shape
    recurrent = kernel.reshape(heads, 4, head_dim, head_dim)
    bias = bias.reshape(4, heads, head_dim)
    y = c = n = np.zeros((batch, heads, head_dim))
    outputs = []
    for t in range(steps):
        gates = {g: pre[g][:, t] + np.einsum("bhi,hoi->bho", y, recurrent[:, k]) + bias[k]
                 for k, g in enumerate("ifzo")}
        forget = 1 / (1 + np.exp(-gates["f"]))
        c = forget * c + np.exp(gates["i"]) * np.tanh(gates["z"])
        n = forget * n + np.exp(gates["i"])
        y = c / n / (1 + np.exp(-gates["o"]))
        outputs.append(y)
    return np.stack(outputs, axis=2)


def test_slstm_igate_and_fgate_names_are_swapped_against_their_roles() -> None:
    model = mm.xlstm_model(recurrent_weight_init="standard", bias_init="standard")
    layer = model.blocks[1].xlstm
    seen = {}
    layer.conv1d.register_forward_hook(lambda module, args, output: seen.__setitem__("conv", output))
    layer.slstm_cell.register_forward_hook(lambda module, args, output: seen.__setitem__("cell", output[0]))
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        layer(x)
    conv = _np(seen["conv"])
    activated = conv / (1 + np.exp(-conv))  # SiLU
    state = {name: _np(tensor) for name, tensor in layer.state_dict().items()}
    library = _np(seen["cell"])

    def error(input_name: str, forget_name: str) -> float:
        pre = {"i": _headwise(state[f"{input_name}.weight"], activated),
               "f": _headwise(state[f"{forget_name}.weight"], activated),
               "z": _headwise(state["zgate.weight"], _np(x)), "o": _headwise(state["ogate.weight"], _np(x))}
        mine = _slstm_outputs(pre, state["slstm_cell._recurrent_kernel_"], state["slstm_cell._bias_"])
        return float(np.abs(mine - library).max())

    assert error("fgate", "igate") < 1e-5  # by role: fgate feeds i, igate feeds f
    assert error("igate", "fgate") > 1e-2  # by name


# ------------------------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_layout_is_the_index_definition_and_round_trips_bit_for_bit(dtype: torch.dtype) -> None:
    vanilla, info = mm.xlstm_stack(slstm_at=(0, 2), heads=2, recurrent_weight_init="standard",
                                   bias_init="standard", dtype=dtype)
    cuda, cuda_info = mm.xlstm_stack(slstm_at=(0, 2), heads=2, recurrent_weight_init="standard",
                                     bias_init="standard", dtype=dtype, backend="cuda")
    assert cuda_info.layout == "cuda" and set(cuda) == set(vanilla)
    assert all(torch.equal(mm.to_cuda_layout(vanilla, info)[key], cuda[key]) for key in cuda)
    for block in info.of_kind("slstm"):
        heads, head_dim = block.num_heads, block.head_dim
        kernel = block.gate_keys["recurrent_kernel"]
        r_vanilla, r_cuda = _np(vanilla[kernel]), _np(cuda[kernel])
        assert r_cuda.shape == (heads, head_dim, 4 * head_dim)
        np.testing.assert_array_equal(r_cuda, r_vanilla.transpose(0, 2, 1))  # [h, in, g·DH+out] = [h, g·DH+out, in]
        b_vanilla, b_cuda = _np(vanilla[block.gate_keys["bias"]]), _np(cuda[block.gate_keys["bias"]])
        np.testing.assert_array_equal(b_cuda.reshape(heads, 4, head_dim),
                                      b_vanilla.reshape(4, heads, head_dim).transpose(1, 0, 2))
        assert mm.slstm_storage_layout(cuda[block.gate_keys["recurrent_kernel"]]) == "cuda"
        assert mm.slstm_storage_layout(vanilla[block.gate_keys["recurrent_kernel"]]) == "vanilla"
    back = mm.to_vanilla_layout(cuda, info)
    assert all(torch.equal(back[key], vanilla[key]) and back[key].dtype == dtype for key in vanilla)


# ------------------------------------------------------------------------------------------- strict loads

BUILDS = {
    "xlstm": (mm.xlstm_stack, mm.load_xlstm_strict_and_run, {}),
    "xlstm-cuda-layout": (mm.xlstm_stack, mm.load_xlstm_strict_and_run, {"backend": "cuda"}),
    "xlstm-all-slstm-4-heads": (mm.xlstm_stack, mm.load_xlstm_strict_and_run, {"slstm_at": (0, 1, 2), "heads": 4}),
    "xlstm-all-mlstm": (mm.xlstm_stack, mm.load_xlstm_strict_and_run, {"slstm_at": ()}),
    "recurrent-gemma": (mm.recurrent_gemma, mm.load_recurrent_gemma_strict_and_run, {}),
    "hf-xlstm": (mm.hf_xlstm, mm.load_hf_xlstm_strict_and_run, {}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(BUILDS))
def test_strict_load_and_a_finite_forward(name: str, dtype: torch.dtype) -> None:
    build, load_and_run, arguments = BUILDS[name]
    state, info = build(**arguments, dtype=dtype)
    assert {tensor.dtype for tensor in state.values() if tensor.is_floating_point()} == {dtype}
    assert all(tensor.device.type == "cpu" for tensor in state.values())
    assert torch.isfinite(load_and_run(state, **info.config)).all()
    missing = dict(state)
    missing.pop(next(iter(missing)))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_and_run(missing, **info.config)


def test_builders_are_reproducible_and_leave_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    first, _ = mm.xlstm_stack(seed=3)
    second, _ = mm.xlstm_stack(seed=3)
    other, _ = mm.xlstm_stack(seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


# ------------------------------------------------------------------------------------------- mistakes

def test_xavier_generic_reinit_redraws_the_gates_and_zeroes_every_bias() -> None:
    state, info = mm.xlstm_stack()
    xavier = mm.generic_reinit(state, "xavier", seed=1)
    block = info.of_kind("slstm")[0]
    assert not xavier[block.gate_keys["bias"]].any() and state[block.gate_keys["bias"]].any()
    weight = xavier[block.gate_keys["forget_weight"]]  # (2, 8, 8): fan_in 8·8, fan_out 2·8
    assert weight.abs().max() <= math.sqrt(6 / (64 + 16))
    assert not torch.equal(weight, state[block.gate_keys["forget_weight"]])
    uniform = mm.generic_reinit(state, "pytorch_uniform", seed=1, hidden_size=16)
    assert all(tensor.abs().max() <= 0.25 for tensor in uniform.values())
    assert uniform[block.gate_keys["bias"]].std() > 0.1


def test_recurrent_gemma_init_parents_first_overwrites_linear_x_and_leaves_the_rglru_its_own() -> None:
    model = mm.recurrent_gemma_model()
    state = mm.hf_init_weights_parents_first(model, seed=2)
    for index in (0, 1):
        linear_x = state[f"model.layers.{index}.temporal_block.linear_x.weight"]
        assert abs(linear_x.std().item() - 0.05) < 0.01  # √(0.01/4), not 1/√32 ≈ 0.18
    recurrent = state["model.layers.0.temporal_block.rg_lru.recurrent_gate_weight"]
    assert abs(recurrent.std().item() - math.sqrt(0.01 / 16)) < 0.005


def test_hf_init_weights_after_marking_is_a_no_op() -> None:
    result = mm.hf_init_weights_after_marking(mm.hf_xlstm_model(), seed=1)
    xavier = mm.generic_reinit(mm.hf_xlstm_model(), "xavier", seed=1)
    fresh, info = mm.hf_xlstm()
    assert all(torch.equal(result[key], xavier[key]) for key in result)
    input_bias = info.blocks[0].gate_keys["input_bias"]
    assert not torch.equal(result[input_bias], fresh[input_bias])


@pytest.mark.parametrize("backend", ["vanilla", "cuda"])
def test_slstm_bias_from_the_wrong_block(backend: str) -> None:
    state, info = mm.xlstm_stack(num_blocks=3, slstm_at=(1, 2), backend=backend)
    wrong = mm.slstm_bias_from_wrong_block(state, info)
    as_vanilla = mm.to_vanilla_layout(wrong, info) if backend == "cuda" else wrong
    for block in info.of_kind("slstm"):
        bias = _np(as_vanilla[block.gate_keys["bias"]]).reshape(4, block.num_heads, block.head_dim)
        np.testing.assert_allclose(bias[1, 0], powerlaw_forget_bias(block.head_dim, 0, 1), atol=1e-5)
        assert not np.allclose(bias[1, 0], powerlaw_forget_bias(block.head_dim, block.index, 3))
    assert all(torch.equal(wrong[key], state[key]) for key in state if not key.endswith("_bias_"))


def test_slstm_gates_by_name_put_the_forget_curve_in_the_input_slot() -> None:
    state, info = mm.xlstm_stack()
    by_name = mm.slstm_gates_by_name(state, info)
    block = info.of_kind("slstm")[0]
    keys, heads, head_dim = block.gate_keys, block.num_heads, block.head_dim
    bias = _np(by_name[keys["bias"]]).reshape(4, heads, head_dim)
    for head in range(heads):
        np.testing.assert_allclose(bias[0, head], powerlaw_forget_bias(head_dim, 1, 3), atol=1e-5)
    assert not bias[1].any()
    assert torch.equal(by_name[keys["input_weight"]], state[keys["forget_weight"]])
    assert torch.equal(by_name[keys["forget_weight"]], state[keys["input_weight"]])
    cuda, cuda_info = mm.xlstm_stack(backend="cuda")
    by_name_cuda = mm.slstm_gates_by_name(cuda, cuda_info)
    assert all(torch.equal(mm.to_cuda_layout(by_name, info)[key], by_name_cuda[key]) for key in cuda)


# ------------------------------------------------------------------------------------------- reference inits

def _uniform(rows: int, columns: int, bound: float) -> torch.Tensor:
    return torch.empty(rows, columns).uniform_(-bound, bound)


@pytest.mark.parametrize("backend", ["vanilla", "cuda"])
@pytest.mark.parametrize("inits", [("zeros", "powerlaw_blockdependent"), ("standard", "standard"),
                                   ("standard", "small_init")])
def test_slstm_reference_init_replays_the_documented_draws(backend: str, inits: tuple[str, str]) -> None:
    recurrent_init, bias_init = inits
    embedding, heads, head_dim, bound = 16, 2, 8, 1 / 4
    reference = mm.slstm_reference_init(seed=7, embedding_dim=embedding, heads=heads, bias_init=bias_init,
                                        recurrent_weight_init=recurrent_init, block_idx=1, num_blocks=3,
                                        backend=backend)
    with mm.seeded(7):
        kernel = torch.zeros(heads, head_dim, 4, head_dim)  # external [head, in, gate, out]
        if recurrent_init == "standard":
            for head in range(heads):
                for gate in range(4):
                    # each backend fills its own storage block row-major: cuda [in, out], vanilla [out, in]
                    kernel[head, :, gate, :] = (_uniform(head_dim, head_dim, bound) if backend == "cuda"
                                                else _uniform(head_dim, head_dim, bound).T)
        bias = torch.zeros(heads, 4, head_dim)  # external [head, gate, dim]
        for head in range(heads):
            for gate in range(4):
                if bias_init == "standard":
                    bias[head, gate] = torch.empty(head_dim).uniform_(-bound, bound)
                elif gate == 1 and bias_init == "small_init":
                    bias[head, gate] = torch.linspace(3, 6, head_dim)
                elif gate == 1:
                    bias[head, gate] = torch.from_numpy(powerlaw_forget_bias(head_dim, 1, 3))
        weights = {name: torch.empty(heads, head_dim, head_dim).normal_(0, math.sqrt(2 / (5 * embedding)))
                   for name in ("igate", "fgate", "zgate", "ogate")}
    for name, weight in weights.items():
        assert torch.equal(reference[f"{name}.weight"], weight), name
    if backend == "cuda":
        stored_kernel, stored_bias = kernel.reshape(heads, head_dim, 4 * head_dim), bias.reshape(-1)
    else:
        stored_kernel = kernel.permute(0, 2, 3, 1).reshape(heads, 4 * head_dim, head_dim)
        stored_bias = bias.permute(1, 0, 2).reshape(-1)
    assert torch.equal(reference["slstm_cell._recurrent_kernel_"], stored_kernel)
    torch.testing.assert_close(reference["slstm_cell._bias_"], stored_bias, rtol=0, atol=1e-6)


def test_one_seed_gives_the_two_slstm_backends_transposed_standard_recurrent_kernels() -> None:
    arguments = {"seed": 3, "recurrent_weight_init": "standard", "bias_init": "standard"}
    vanilla = mm.slstm_reference_init(**arguments, backend="vanilla")
    cuda = mm.slstm_reference_init(**arguments, backend="cuda")
    external_vanilla = vanilla["slstm_cell._recurrent_kernel_"].reshape(2, 4, 8, 8).permute(0, 3, 1, 2)
    external_cuda = cuda["slstm_cell._recurrent_kernel_"].reshape(2, 8, 4, 8)  # both [head, in, gate, out]
    assert torch.equal(external_vanilla, external_cuda.transpose(1, 3))
    assert not torch.equal(external_vanilla, external_cuda)
    assert all(torch.equal(vanilla[name], cuda[name]) for name in vanilla if name.endswith("gate.weight"))


@pytest.mark.parametrize("level", ["cell", "layer"])
def test_mlstm_reference_init_replays_the_documented_draws(level: str) -> None:
    reference = mm.mlstm_reference_init(seed=5, embedding_dim=16, heads=2, num_blocks=3, level=level)
    inner = 64  # 2·16 rounded up to a multiple of 64
    with mm.seeded(5):
        if level == "layer":
            small = math.sqrt(2 / (5 * 16))
            drawn = {"proj_up.weight": torch.empty(2 * inner, 16).normal_(0, small),
                     "proj_down.weight": torch.empty(16, inner).normal_(0, 2 / 3 / math.sqrt(16))}
            for name in ("q_proj", "k_proj", "v_proj"):
                drawn[f"{name}.weight"] = torch.empty(inner // 4, 4, 4).normal_(0, small)
            for name, tensor in drawn.items():
                assert torch.equal(reference[name], tensor), name
        input_bias = torch.empty(2).normal_(0, 0.1)
    assert torch.equal(reference["mlstm_cell.igate.bias"], input_bias)
    assert torch.equal(reference["mlstm_cell.fgate.bias"], torch.linspace(3, 6, 2))
    assert not reference["mlstm_cell.igate.weight"].any() and not reference["mlstm_cell.fgate.weight"].any()
    assert reference["mlstm_cell.igate.weight"].shape == (2, 3 * inner)


def test_rglru_reference_init_replays_the_documented_draws() -> None:
    reference = mm.rglru_reference_init(seed=9, lru_width=32, heads=2)
    with mm.seeded(9):
        input_gate = torch.empty(2, 16, 16).normal_(0, math.sqrt(0.01 / 16))
        recurrent_gate = torch.empty(2, 16, 16).normal_(0, math.sqrt(0.01 / 16))
        squared = torch.empty(32).uniform_(0.9**2 + 1e-8, 0.999**2 + 1e-8)
    assert torch.equal(reference["input_gate_weight"], input_gate)
    assert torch.equal(reference["recurrent_gate_weight"], recurrent_gate)
    assert not reference["input_gate_bias"].any() and not reference["recurrent_gate_bias"].any()
    a = torch.sigmoid(-reference["recurrent_param"].double())  # a = σ(−p), so a² is the uniform draw
    torch.testing.assert_close(a**2, squared.double(), rtol=0, atol=1e-6)


def test_hf_xlstm_reference_init_runs_the_library_init() -> None:
    reference = mm.hf_xlstm_reference_init(seed=0, hidden_size=32, heads=2)
    assert set(reference) == {"ogate_preact.weight", "igate_preact.weight", "igate_preact.bias",
                              "fgate_preact.weight", "fgate_preact.bias"}
    assert all(torch.isfinite(tensor).all() for tensor in reference.values())  # NaN-filled before the init
    assert torch.equal(reference["igate_preact.bias"], torch.full((2,), -10.0))
    assert torch.equal(reference["fgate_preact.bias"], torch.linspace(3, 6, 2))
    assert not any(reference[name].any() for name in reference if name.endswith("weight"))
