"""Fidelity of the xlstm, griffin and xlstm-7b schemes to the libraries' own initialization code, run here: the same
generator state gives the same tensors (`torch.equal`) where the library's draw can be reproduced, the
deterministic parts are equal exactly, and the rest is compared as distributions. The README's fidelity table
states what these tests show."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from rnninit_cli.init.initializers import fan_in_normal, linspace, normal, powerlaw_forget, rglru_radius, small_init

xlstm = pytest.importorskip("xlstm")
transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", module="xlstm")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("heads", "head_dim"), [(1, 4), (2, 8), (4, 3)])
@pytest.mark.parametrize("seed", [0, 7])
def test_small_init_draws_what_xlstm_draws(heads: int, head_dim: int, seed: int) -> None:
    from xlstm.components.init import small_init_init_

    dim = heads * head_dim
    torch.manual_seed(seed)
    theirs = small_init_init_(torch.empty(heads, head_dim, head_dim), dim=dim)  # [head, out, in], one normal_
    ours = small_init(torch.empty(heads * head_dim, head_dim), input_size=dim, generator=_generator(seed))
    assert torch.equal(ours, theirs.reshape(heads * head_dim, head_dim))


def _slstm_cell_bias(head_dim: int, heads: int, block: int, blocks: int, bias_init: str) -> torch.Tensor:
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    config = sLSTMCellConfig(hidden_size=heads * head_dim, num_heads=heads, backend="vanilla", bias_init=bias_init)
    config._block_idx, config._num_blocks = block, blocks
    cell = sLSTMCell(config)
    cell.reset_parameters()
    return cell._bias_.detach()  # vanilla order [gate][head][dim], gates i, f, z, o


@pytest.mark.parametrize(("head_dim", "heads", "block", "blocks"),
                         [(8, 2, 1, 3), (2, 1, 0, 1), (5, 4, 0, 2), (16, 2, 3, 4), (3, 1, 6, 7), (7, 2, 2, 5)])
def test_powerlaw_forget_equals_xlstm_for_every_head_and_block(head_dim: int, heads: int, block: int, blocks: int
                                                               ) -> None:
    theirs = _slstm_cell_bias(head_dim, heads, block, blocks, "powerlaw_blockdependent").reshape(4, heads, head_dim)
    for head in range(heads):
        ours = powerlaw_forget(torch.empty(head_dim), block_index=block, num_blocks=blocks)
        assert torch.equal(ours, theirs[1, head])
        assert not theirs[0].any() and not theirs[2:].any()  # i, z, o: 0, as the scheme's bias_ih@slstm=zeros


def test_powerlaw_forget_defines_one_dim_where_xlstm_gives_nan() -> None:
    theirs = _slstm_cell_bias(1, 2, 0, 1, "powerlaw_blockdependent").reshape(4, 2, 1)
    assert torch.isnan(theirs[1]).all()
    assert powerlaw_forget(torch.empty(1), block_index=0, num_blocks=1).tolist() == [5.0]


def test_slstm_small_init_bias_option_is_linspace_3_6_per_head() -> None:
    theirs = _slstm_cell_bias(6, 2, 0, 1, "small_init").reshape(4, 2, 6)
    for head in range(2):
        assert torch.equal(linspace(torch.empty(6), 3.0, 6.0), theirs[1, head])


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_mlstm_gate_biases_equal_xlstm(heads: int) -> None:
    from xlstm.blocks.mlstm.cell import mLSTMCell, mLSTMCellConfig

    cell = mLSTMCell(mLSTMCellConfig(context_length=8, embedding_dim=4 * heads, num_heads=heads))
    torch.manual_seed(11)
    cell.reset_parameters()  # outnorm (no draw), fgate weight 0, fgate bias linspace, igate weight 0, igate bias normal
    assert torch.equal(linspace(torch.empty(heads), 3.0, 6.0), cell.fgate.bias.detach())
    assert torch.equal(normal(torch.empty(heads), 0.0, 0.1, generator=_generator(11)), cell.igate.bias.detach())
    assert not cell.igate.weight.any() and not cell.fgate.weight.any()


def _rglru(heads: int, width: int):
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRglru

    config = RecurrentGemmaConfig(num_hidden_layers=1, vocab_size=8, hidden_size=width, intermediate_size=8,
                                  num_attention_heads=heads, num_key_value_heads=1, lru_width=width,
                                  attention_window_size=4, conv1d_width=2, block_types=["recurrent"])
    model = RecurrentGemmaForCausalLM(config)
    return model, next(m for m in model.modules() if isinstance(m, RecurrentGemmaRglru)), config


@pytest.mark.parametrize(("heads", "width"), [(1, 4), (2, 16), (4, 32)])
@pytest.mark.parametrize("seed", [0, 5])
def test_rglru_init_equals_transformers_in_its_own_draw_order(heads: int, width: int, seed: int) -> None:
    model, rglru, config = _rglru(heads, width)
    torch.manual_seed(seed)
    model._init_weights(rglru)  # input gate weight, recurrent gate weight (normal), then the radius (uniform)
    block = width // heads
    generator = _generator(seed)
    std = math.sqrt(config.w_init_variance_scale / block)
    for stored in (rglru.input_gate_weight, rglru.recurrent_gate_weight):
        drawn = normal(torch.empty(heads * block, block), 0.0, std, generator=generator)  # the same stream
        assert torch.equal(drawn, stored.detach().reshape(heads * block, block))
    assert torch.equal(rglru_radius(torch.empty(width), 0.9, 0.999, generator=generator),
                       rglru.recurrent_param.detach())
    assert not rglru.input_gate_bias.any() and not rglru.recurrent_gate_bias.any()


def test_rglru_gate_weights_per_head_block_have_the_transformers_distribution() -> None:
    """rnninit draws each head's [out, in] block from its own generator; transformers draws the [head, in, out]
    tensor at once. Same σ = √(0.01/bw): a two-sample KS test cannot tell them apart."""
    from scipy.stats import ks_2samp

    model, rglru, _ = _rglru(4, 256)
    torch.manual_seed(1)
    model._init_weights(rglru)
    ours = torch.cat([fan_in_normal(torch.empty(64, 64), 0.01, generator=_generator(seed)) for seed in range(4)])
    assert ks_2samp(ours.flatten().numpy(), rglru.input_gate_weight.detach().flatten().numpy()).pvalue > 1e-4
    assert abs(float(ours.std()) - math.sqrt(0.01 / 64)) < 0.01 * math.sqrt(0.01 / 64) * 4


@pytest.mark.parametrize("heads", [2, 4])
def test_xlstm_7b_gates_equal_transformers(heads: int) -> None:
    from transformers import xLSTMConfig, xLSTMForCausalLM

    model = xLSTMForCausalLM(xLSTMConfig(vocab_size=16, hidden_size=8 * heads, num_hidden_layers=1, num_heads=heads))
    layer = model.backbone.blocks[0].mlstm_layer
    assert torch.equal(linspace(torch.empty(heads), 3.0, 6.0), layer.fgate_preact.bias.detach())
    assert torch.equal(torch.full((heads,), -10.0), layer.igate_preact.bias.detach())
    for gate in (layer.igate_preact, layer.fgate_preact, layer.ogate_preact):
        assert not gate.weight.any()


def test_radius_lies_on_the_ring_with_a_squared_uniform() -> None:
    from scipy.stats import kstest

    p = rglru_radius(torch.empty(20_000), 0.9, 0.999, generator=_generator(3)).double().numpy()
    a = 1 / (1 + np.exp(p))
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6
    assert kstest(a**2, "uniform", args=(0.81, 0.998001 - 0.81)).pvalue > 1e-4
