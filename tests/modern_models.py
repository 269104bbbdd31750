"""Tiny real models of the modern gated recurrences (issue #23), built with the libraries' own classes.

xlstm's sLSTM/mLSTM stacks (`xLSTMBlockStack`, vanilla backend on the CPU; the cuda backend's storage layout comes
from the library's own `_int2ext`/`_ext2int` conversions), transformers' RecurrentGemma (RG-LRU) and transformers'
xLSTM (xLSTM-7B style mLSTM). Each builder returns `(state_dict, info)`: the state dict on the CPU (float32, or the
dtype asked for) and a description of each recurrent block, so that tests know what to expect without reading
the library. Beside them: strict load + forward checks, the "generic re-init" mistakes verify should catch, and
the libraries' own initializations of each gate parameter for a given seed (fidelity references).

xlstm and transformers are imported inside the functions (they take seconds to import); their warnings and
log messages are silenced. Every function draws from a forked RNG, so calling it leaves torch's global RNG as it
was. Versions checked: torch 2.13.0+cpu, xlstm 2.0.6, mlstm_kernels 2.0.6, transformers 5.25.0.

transformers' xLSTM: with xlstm installed (the test extra installs it) transformers builds its blocks from
`xlstm.xlstm_large.model` (same key names). On the CPU its forward runs only with `use_cache=False` (the cache is
sized by `config.qk_dim`, 4x the `q.weight` rows here) and only in float32 (bf16 fails in a matmul), and
`weight_mode="fused"` cannot be constructed (`_init_weights` subtracts a (2·NH,) tensor from an (NH,) slice).

Longer than 600 lines because it holds every library's builder, loader, mistake and reference init in one place,
each documented with the library's exact call sequence.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
SLSTM_GATES = ("i", "f", "z", "o")  # the cell's gate order in the bias and the recurrent kernel
CONTEXT_LENGTH = 8  # the mLSTM's causal mask size, and the length of every forward pass here


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the libraries' warnings and log records (xlstm warns about CUDA kernels, transformers about configs)."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch.manual_seed(seed) inside a fork of the CPU RNG: the caller's RNG is untouched afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _cpu_state(module: torch.nn.Module) -> StateDict:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


# --------------------------------------------------------------------------------------------- xlstm stacks

@dataclass(frozen=True)
class XlstmBlock:
    """One block of an xLSTMBlockStack: its position, kind and where its gate tensors are."""

    index: int
    kind: str  # "slstm" or "mlstm"
    prefix: str  # the layer's keys start with it: "blocks.{index}.xlstm."
    num_heads: int
    head_dim: int  # sLSTM: embedding_dim / num_heads; mLSTM: inner_dim / num_heads
    embedding_dim: int
    num_blocks: int
    inner_dim: int  # mLSTM: the up-projected width its cell runs on; sLSTM: embedding_dim
    gate_keys: Mapping[str, str] = field(default_factory=dict)  # role -> key (sLSTM: note fgate.weight is role i)


@dataclass(frozen=True)
class XlstmInfo:
    blocks: tuple[XlstmBlock, ...]
    config: Mapping[str, Any]  # the builder's arguments, so that a loader can build the same stack
    layout: str  # "vanilla" or "cuda": how the sLSTM recurrent kernels and biases of the state dict are stored

    def of_kind(self, kind: str) -> tuple[XlstmBlock, ...]:
        return tuple(block for block in self.blocks if block.kind == kind)


def _slstm_gate_keys(prefix: str) -> dict[str, str]:
    """Role -> key of one sLSTM layer. The layer computes i from `fgate` and f from `igate` (layer.py: forward)."""
    return {"input_weight": prefix + "fgate.weight", "forget_weight": prefix + "igate.weight",
            "cell_weight": prefix + "zgate.weight", "output_weight": prefix + "ogate.weight",
            "recurrent_kernel": prefix + "slstm_cell._recurrent_kernel_", "bias": prefix + "slstm_cell._bias_"}


def _mlstm_gate_keys(prefix: str) -> dict[str, str]:
    cell = prefix + "mlstm_cell."
    return {"input_weight": cell + "igate.weight", "input_bias": cell + "igate.bias",
            "forget_weight": cell + "fgate.weight", "forget_bias": cell + "fgate.bias"}


def xlstm_config(num_blocks: int = 3, slstm_at: tuple[int, ...] = (1,), heads: int = 2, embedding_dim: int = 16,
                 bias_init: str = "powerlaw_blockdependent", recurrent_weight_init: str = "zeros") -> Any:
    """The library's xLSTMBlockStackConfig: mLSTM and sLSTM blocks (vanilla backend), conv kernel 4, GELU FFN."""
    with quiet():
        from xlstm import (
            FeedForwardConfig,
            mLSTMBlockConfig,
            mLSTMLayerConfig,
            sLSTMBlockConfig,
            sLSTMLayerConfig,
            xLSTMBlockStackConfig,
        )
        mlstm = None
        if len(set(slstm_at)) < num_blocks:
            layer = mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=heads)
            mlstm = mLSTMBlockConfig(mlstm=layer)
        slstm = sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=heads, conv1d_kernel_size=4, bias_init=bias_init,
                                   recurrent_weight_init=recurrent_weight_init),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"))
        return xLSTMBlockStackConfig(mlstm_block=mlstm, slstm_block=slstm, context_length=CONTEXT_LENGTH,
                                     num_blocks=num_blocks, embedding_dim=embedding_dim,
                                     slstm_at=sorted(set(slstm_at)))


def xlstm_model(num_blocks: int = 3, slstm_at: tuple[int, ...] = (1,), heads: int = 2, embedding_dim: int = 16,
                bias_init: str = "powerlaw_blockdependent", recurrent_weight_init: str = "zeros", seed: int = 0,
                dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A fresh xLSTMBlockStack (vanilla sLSTM backend) built after torch.manual_seed(seed), cast to `dtype`."""
    config = xlstm_config(num_blocks, slstm_at, heads, embedding_dim, bias_init, recurrent_weight_init)
    with quiet(), seeded(seed):
        from xlstm import xLSTMBlockStack
        return xLSTMBlockStack(config).to(dtype)


def _xlstm_info(model: torch.nn.Module, config: Mapping[str, Any], layout: str) -> XlstmInfo:
    blocks = []
    for index, block in enumerate(model.blocks):
        layer = block.xlstm
        prefix = f"blocks.{index}.xlstm."
        if hasattr(layer, "slstm_cell"):
            cell = layer.slstm_cell.config
            blocks.append(XlstmBlock(index, "slstm", prefix, cell.num_heads, cell.head_dim, cell.hidden_size,
                                     len(model.blocks), cell.hidden_size, _slstm_gate_keys(prefix)))
        else:
            cell = layer.mlstm_cell.config
            blocks.append(XlstmBlock(index, "mlstm", prefix, cell.num_heads, cell.embedding_dim // cell.num_heads,
                                     layer.config.embedding_dim, len(model.blocks), cell.embedding_dim,
                                     _mlstm_gate_keys(prefix)))
    return XlstmInfo(tuple(blocks), dict(config), layout)


def xlstm_stack(num_blocks: int = 3, slstm_at: tuple[int, ...] = (1,), heads: int = 2, embedding_dim: int = 16,
                backend: str = "vanilla", bias_init: str = "powerlaw_blockdependent",
                recurrent_weight_init: str = "zeros", seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[StateDict, XlstmInfo]:
    """The state dict of a tiny xLSTMBlockStack and its blocks. backend="cuda": the same model, its sLSTM tensors
    re-laid into the cuda backend's storage by the library's conversions (the cuda cell cannot run on a CPU).

    head_dim 1 (heads == embedding_dim) builds, but powerlaw_blockdependent then gives a NaN forget bias (0/0)."""
    if backend not in {"vanilla", "cuda"}:
        raise ValueError(f"backend must be 'vanilla' or 'cuda', not {backend!r}")
    config = {"num_blocks": num_blocks, "slstm_at": tuple(slstm_at), "heads": heads, "embedding_dim": embedding_dim,
              "bias_init": bias_init, "recurrent_weight_init": recurrent_weight_init}
    model = xlstm_model(**config, seed=seed, dtype=dtype)
    info = _xlstm_info(model, config, "vanilla")
    state = _cpu_state(model)
    if backend == "cuda":
        return to_cuda_layout(state, info), XlstmInfo(info.blocks, info.config, "cuda")
    return state, info


def _conversion_cells(block: XlstmBlock) -> tuple[Any, Any]:
    """The library's vanilla and cuda sLSTM cells of this block's size (cuda with skip_backend_init=True, so no
    kernel is compiled; zeros inits, so no random number is drawn)."""
    with quiet():
        from xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCell_vanilla, sLSTMCellConfig

        def config() -> Any:
            return sLSTMCellConfig(hidden_size=block.embedding_dim, num_heads=block.num_heads, bias_init="zeros",
                                   recurrent_weight_init="zeros")
        return sLSTMCell_vanilla(config()), sLSTMCell_cuda(config(), skip_backend_init=True)


def _relaid(state_dict: Mapping[str, torch.Tensor], info: XlstmInfo, to_cuda: bool) -> StateDict:
    out = dict(state_dict)
    for block in info.of_kind("slstm"):
        vanilla, cuda = _conversion_cells(block)
        source, target = (vanilla, cuda) if to_cuda else (cuda, vanilla)
        kernel, bias = block.gate_keys["recurrent_kernel"], block.gate_keys["bias"]
        with torch.no_grad():
            out[kernel] = target._recurrent_kernel_ext2int(
                source._recurrent_kernel_int2ext(state_dict[kernel])).contiguous().clone()
            out[bias] = target._bias_ext2int(source._bias_int2ext(state_dict[bias])).contiguous().clone()
    return out


def to_cuda_layout(state_dict: Mapping[str, torch.Tensor], info: XlstmInfo) -> StateDict:
    """A vanilla-layout stack's state dict in the cuda backend's storage: R (NH, DH, 4·DH), bias [head][gate][dim].
    Through the library: `sLSTMCell_cuda._ext2int(sLSTMCell_vanilla._int2ext(t))`."""
    return _relaid(state_dict, info, to_cuda=True)


def to_vanilla_layout(state_dict: Mapping[str, torch.Tensor], info: XlstmInfo) -> StateDict:
    """A cuda-layout stack's state dict in the vanilla backend's storage: R (NH, 4·DH, DH), bias [gate][head][dim]."""
    return _relaid(state_dict, info, to_cuda=False)


def slstm_storage_layout(recurrent_kernel: torch.Tensor) -> str:
    """Which backend stored an sLSTM recurrent kernel: (NH, 4·DH, DH) is vanilla, (NH, DH, 4·DH) is cuda."""
    _, rows, columns = recurrent_kernel.shape
    if rows == 4 * columns:
        return "vanilla"
    if columns == 4 * rows:
        return "cuda"
    raise ValueError(f"not an sLSTM recurrent kernel: shape {tuple(recurrent_kernel.shape)}")


def _xlstm_input(embedding_dim: int, dtype: torch.dtype) -> torch.Tensor:
    with seeded(1234):
        return torch.randn(2, CONTEXT_LENGTH, embedding_dim).to(dtype)


def load_xlstm_strict_and_run(state_dict: Mapping[str, torch.Tensor], num_blocks: int = 3,
                              slstm_at: tuple[int, ...] = (1,), heads: int = 2, embedding_dim: int = 16,
                              bias_init: str = "powerlaw_blockdependent", recurrent_weight_init: str = "zeros",
                              **_: Any) -> torch.Tensor:
    """Build the same stack, load `state_dict` with strict=True (a cuda-layout dict converted back to vanilla by the
    library first), run it on a (2, 8, E) random input in the dict's dtype; the output."""
    config = {"num_blocks": num_blocks, "slstm_at": tuple(slstm_at), "heads": heads, "embedding_dim": embedding_dim,
              "bias_init": bias_init, "recurrent_weight_init": recurrent_weight_init}
    dtype = next(iter(state_dict.values())).dtype
    model = xlstm_model(**config, seed=0, dtype=dtype)
    info = _xlstm_info(model, config, "vanilla")
    kernels = [state_dict[block.gate_keys["recurrent_kernel"]] for block in info.of_kind("slstm")]
    if kernels and slstm_storage_layout(kernels[0]) == "cuda":
        state_dict = to_vanilla_layout(state_dict, info)
    model.load_state_dict(dict(state_dict), strict=True)
    with quiet(), torch.no_grad():
        return model(_xlstm_input(embedding_dim, dtype))


# --------------------------------------------------------------------------------------------- RecurrentGemma

@dataclass(frozen=True)
class HfBlock:
    """One decoder layer of a transformers model: its kind and where its recurrence's gate tensors are."""

    index: int
    kind: str  # "rglru", "attention" or "mlstm"
    prefix: str  # "model.layers.{i}.temporal_block.rg_lru." / "backbone.blocks.{i}.mlstm_layer." / the attention
    num_heads: int
    head_dim: int  # RG-LRU: block width W/NH; HF xLSTM: the value head dim
    width: int  # RG-LRU: lru_width; HF xLSTM: hidden_size
    gate_keys: Mapping[str, str] = field(default_factory=dict)
    qk_head_dim: int = 0  # HF xLSTM: from q.weight (the config's qk_dim disagrees)


@dataclass(frozen=True)
class HfInfo:
    blocks: tuple[HfBlock, ...]
    config: Mapping[str, Any]

    def of_kind(self, kind: str) -> tuple[HfBlock, ...]:
        return tuple(block for block in self.blocks if block.kind == kind)


def recurrent_gemma_config(num_hidden_layers: int = 3, heads: int = 2, lru_width: int = 32, hidden_size: int = 32,
                           block_types: tuple[str, ...] = ("recurrent", "recurrent", "attention")) -> Any:
    """transformers' RecurrentGemmaConfig for a tiny model: vocabulary 64, one key/value head, window 16."""
    with quiet():
        from transformers import RecurrentGemmaConfig
        return RecurrentGemmaConfig(num_hidden_layers=num_hidden_layers, vocab_size=64, hidden_size=hidden_size,
                                    intermediate_size=48, num_attention_heads=heads, num_key_value_heads=1,
                                    lru_width=lru_width, attention_window_size=16, conv1d_width=4,
                                    block_types=list(block_types), head_dim=hidden_size // heads)


def recurrent_gemma_model(num_hidden_layers: int = 3, heads: int = 2, lru_width: int = 32, hidden_size: int = 32,
                          block_types: tuple[str, ...] = ("recurrent", "recurrent", "attention"), seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A fresh RecurrentGemmaForCausalLM (the library's own init in post_init) after torch.manual_seed(seed)."""
    config = recurrent_gemma_config(num_hidden_layers, heads, lru_width, hidden_size, block_types)
    with quiet(), seeded(seed):
        from transformers import RecurrentGemmaForCausalLM
        return RecurrentGemmaForCausalLM(config).to(dtype)


def _rglru_gate_keys(prefix: str) -> dict[str, str]:
    return {"input_gate_weight": prefix + "input_gate_weight", "input_gate_bias": prefix + "input_gate_bias",
            "recurrent_gate_weight": prefix + "recurrent_gate_weight",
            "recurrent_gate_bias": prefix + "recurrent_gate_bias", "recurrent_param": prefix + "recurrent_param"}


def _recurrent_gemma_info(model: torch.nn.Module, config: Mapping[str, Any]) -> HfInfo:
    blocks = []
    for index, layer in enumerate(model.model.layers):
        temporal = f"model.layers.{index}.temporal_block."
        if hasattr(layer.temporal_block, "rg_lru"):
            lru = layer.temporal_block.rg_lru
            prefix = temporal + "rg_lru."
            blocks.append(HfBlock(index, "rglru", prefix, lru.num_attention_heads, lru.block_width,
                                  lru.recurrent_param.shape[0], _rglru_gate_keys(prefix)))
        else:
            blocks.append(HfBlock(index, "attention", temporal, model.config.num_attention_heads,
                                  model.config.head_dim, model.config.hidden_size))
    return HfInfo(tuple(blocks), dict(config))


def recurrent_gemma(num_hidden_layers: int = 3, heads: int = 2, lru_width: int = 32, hidden_size: int = 32,
                    block_types: tuple[str, ...] = ("recurrent", "recurrent", "attention"), seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> tuple[StateDict, HfInfo]:
    """The state dict of a tiny RecurrentGemmaForCausalLM and its layers (RG-LRU or attention)."""
    config = {"num_hidden_layers": num_hidden_layers, "heads": heads, "lru_width": lru_width,
              "hidden_size": hidden_size, "block_types": tuple(block_types)}
    model = recurrent_gemma_model(**config, seed=seed, dtype=dtype)
    return _cpu_state(model), _recurrent_gemma_info(model, config)


def _token_ids() -> torch.Tensor:
    with seeded(4321):
        return torch.randint(0, 64, (2, CONTEXT_LENGTH))


def load_recurrent_gemma_strict_and_run(state_dict: Mapping[str, torch.Tensor], num_hidden_layers: int = 3,
                                        heads: int = 2, lru_width: int = 32, hidden_size: int = 32,
                                        block_types: tuple[str, ...] = ("recurrent", "recurrent", "attention"),
                                        **_: Any) -> torch.Tensor:
    """Build the same model, load `state_dict` with strict=True, run it on (2, 8) random tokens; the logits."""
    dtype = next(iter(state_dict.values())).dtype
    model = recurrent_gemma_model(num_hidden_layers, heads, lru_width, hidden_size, block_types, dtype=dtype)
    model.load_state_dict(dict(state_dict), strict=True)
    with quiet(), torch.no_grad():
        return model(_token_ids(), use_cache=False).logits


# --------------------------------------------------------------------------------------------- transformers xLSTM

def hf_xlstm_config(num_hidden_layers: int = 2, heads: int = 2, hidden_size: int = 32,
                    weight_mode: str = "single") -> Any:
    """transformers' xLSTMConfig for a tiny xLSTM-7B style model: vocabulary 64, chunk size 4, qk factor 0.5."""
    with quiet():
        from transformers import xLSTMConfig
        return xLSTMConfig(vocab_size=64, hidden_size=hidden_size, num_heads=heads,
                           num_hidden_layers=num_hidden_layers, chunk_size=4, weight_mode=weight_mode)


def hf_xlstm_model(num_hidden_layers: int = 2, heads: int = 2, hidden_size: int = 32, seed: int = 0,
                   dtype: torch.dtype = torch.float32, weight_mode: str = "single") -> torch.nn.Module:
    """A fresh xLSTMForCausalLM after torch.manual_seed(seed). weight_mode="fused" raises RuntimeError here."""
    config = hf_xlstm_config(num_hidden_layers, heads, hidden_size, weight_mode)
    with quiet(), seeded(seed):
        from transformers import xLSTMForCausalLM
        return xLSTMForCausalLM(config).to(dtype)


def _hf_xlstm_gate_keys(prefix: str) -> dict[str, str]:
    return {"input_weight": prefix + "igate_preact.weight", "input_bias": prefix + "igate_preact.bias",
            "forget_weight": prefix + "fgate_preact.weight", "forget_bias": prefix + "fgate_preact.bias",
            "output_weight": prefix + "ogate_preact.weight"}


def _hf_xlstm_info(model: torch.nn.Module, config: Mapping[str, Any]) -> HfInfo:
    blocks = []
    heads = model.config.num_heads
    for index, block in enumerate(model.backbone.blocks):
        layer = block.mlstm_layer
        prefix = f"backbone.blocks.{index}.mlstm_layer."
        blocks.append(HfBlock(index, "mlstm", prefix, heads, layer.v.weight.shape[0] // heads,
                              model.config.hidden_size, _hf_xlstm_gate_keys(prefix),
                              qk_head_dim=layer.q.weight.shape[0] // heads))
    return HfInfo(tuple(blocks), dict(config))


def hf_xlstm(num_hidden_layers: int = 2, heads: int = 2, hidden_size: int = 32, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> tuple[StateDict, HfInfo]:
    """The state dict of a tiny transformers xLSTMForCausalLM (weight_mode="single") and its mLSTM blocks."""
    config = {"num_hidden_layers": num_hidden_layers, "heads": heads, "hidden_size": hidden_size}
    model = hf_xlstm_model(**config, seed=seed, dtype=dtype)
    return _cpu_state(model), _hf_xlstm_info(model, config)


def load_hf_xlstm_strict_and_run(state_dict: Mapping[str, torch.Tensor], num_hidden_layers: int = 2, heads: int = 2,
                                 hidden_size: int = 32, **_: Any) -> torch.Tensor:
    """Build the same model in the dict's dtype, load `state_dict` with strict=True, run it on (2, 8) random tokens
    with use_cache=False, in float32 (the library's CPU kernels fail in bf16); the logits."""
    dtype = next(iter(state_dict.values())).dtype
    model = hf_xlstm_model(num_hidden_layers, heads, hidden_size, dtype=dtype)
    model.load_state_dict(dict(state_dict), strict=True)
    with quiet(), torch.no_grad():
        return model.float()(_token_ids(), use_cache=False).logits


# --------------------------------------------------------------------------------------------- generic re-inits

def _as_state(state_dict_or_model: Mapping[str, torch.Tensor] | torch.nn.Module) -> StateDict:
    if isinstance(state_dict_or_model, torch.nn.Module):
        return _cpu_state(state_dict_or_model)
    return {name: tensor.clone() for name, tensor in state_dict_or_model.items()}


def generic_reinit(state_dict_or_model: Mapping[str, torch.Tensor] | torch.nn.Module, how: str = "xavier",
                   seed: int = 0, hidden_size: int | None = None) -> StateDict:
    """A state dict re-initialized the generic way, blind to gates (what verify should flag):

    - "xavier": every floating tensor of 2+ dims `nn.init.xavier_uniform_` (torch's fans of a 3-D tensor:
      fan_in = shape[1]·prod(shape[2:]), fan_out = shape[0]·prod(shape[2:])), every tensor named "*bias*" zeroed
      (the sLSTM's `_bias_` too: its forget bias is lost); in state-dict order after torch.manual_seed(seed).
    - "pytorch_uniform": nn.LSTM's reset_parameters copied onto everything: U(±1/√hidden_size) on every floating
      tensor (norm weights included), in state-dict order.
    """
    state = _as_state(state_dict_or_model)
    with seeded(seed), torch.no_grad():
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            if how == "xavier":
                if tensor.dim() >= 2:
                    torch.nn.init.xavier_uniform_(tensor)
                elif "bias" in name:
                    torch.nn.init.zeros_(tensor)
            elif how == "pytorch_uniform":
                if hidden_size is None:
                    raise ValueError("how='pytorch_uniform' needs hidden_size")
                bound = 1.0 / math.sqrt(hidden_size)
                torch.nn.init.uniform_(tensor, -bound, bound)
            else:
                raise ValueError(f"unknown generic re-init {how!r}")
    return state


def hf_init_weights_parents_first(model: torch.nn.Module, seed: int = 0) -> StateDict:
    """`for m in model.modules(): model._init_weights(m)` after torch.manual_seed(seed): parents before children,
    so a module's generic nn.Linear branch overwrites what its parent's special branch wrote (RecurrentGemma's
    linear_x/linear_y end with std √(w_init_variance_scale/conv1d_width) = 0.05, not 1/√hidden). RG-LRU modules
    are leaves, so their gate tensors get their own branch either way. `model` is changed in place."""
    with quiet(), seeded(seed), torch.no_grad():
        for module in model.modules():
            model._init_weights(module)
    return _cpu_state(model)


def hf_init_weights_after_marking(model: torch.nn.Module, seed: int = 0) -> StateDict:
    """Gate tensors first re-drawn the generic "xavier" way in the model, then `model.init_weights()` called to
    "restore" the library's init: a no-op, because post_init already marked every module `_is_hf_initialized`.
    The result is the xavier one (tests check that init_weights changed nothing)."""
    xavier = generic_reinit(model, "xavier", seed=seed)
    model.load_state_dict(xavier, strict=True)
    with quiet(), seeded(seed):
        model.init_weights()
    return _cpu_state(model)


def slstm_bias_from_wrong_block(state_dict: Mapping[str, torch.Tensor], info: XlstmInfo,
                                wrong_block_idx: int = 0, wrong_num_blocks: int = 1) -> StateDict:
    """Every sLSTM bias replaced by the library's powerlaw_blockdependent bias of block `wrong_block_idx` of
    `wrong_num_blocks` (default 0 of 1: each sLSTMLayer built on its own, ratio 0, outside its stack), in the
    dict's layout and dtype. The library computes it: a vanilla sLSTMCell with those _block_idx/_num_blocks."""
    out = dict(state_dict)
    with quiet():
        from xlstm.blocks.slstm.cell import sLSTMCell_vanilla, sLSTMCellConfig
    for block in info.of_kind("slstm"):
        config = sLSTMCellConfig(hidden_size=block.embedding_dim, num_heads=block.num_heads,
                                 bias_init="powerlaw_blockdependent", recurrent_weight_init="zeros",
                                 _block_idx=wrong_block_idx, _num_blocks=wrong_num_blocks)
        with quiet(), torch.no_grad():
            wrong = sLSTMCell_vanilla(config)._bias_.detach().clone()
            if info.layout == "cuda":
                vanilla, cuda = _conversion_cells(block)
                wrong = cuda._bias_ext2int(vanilla._bias_int2ext(wrong)).contiguous()
        key = block.gate_keys["bias"]
        out[key] = wrong.to(state_dict[key].dtype)
    return out


def slstm_gates_by_name(state_dict: Mapping[str, torch.Tensor], info: XlstmInfo) -> StateDict:
    """The sLSTM's gate init written by the modules' names instead of their roles: the forget-gate init goes where
    the name says "f", which is the input-gate role.

    Realistically: a scheme that knows sLSTM as "igate/fgate/zgate/ogate + a bias in i, f, z, o order" takes
    `fgate` for the forget gate. It writes the forget-gate input weights into `fgate.weight` (role i) and the
    input-gate ones into `igate.weight` (role f): here, the two tensors swapped. It writes the forget bias into
    the slot it believes fgate feeds; fgate's output is the layer's first cell input (`torch.cat([i, f, z, o])` with
    i = self.fgate(x)), so the forget curve lands in gate slot 0 (i) and the input gate's bias in slot 1 (f).
    Stored: vanilla `_bias_` chunk [0:NH·DH] (role i) holds the per-head forget curve and chunk [NH·DH:2·NH·DH]
    (role f) holds the old input bias (zeros for powerlaw_blockdependent); cuda `_bias_` per head h, the slice
    [h·4·DH : h·4·DH+DH] holds the curve. Written through the library's ParameterProxy (`cell.bias[h, gate]`)."""
    out = dict(state_dict)
    for block in info.of_kind("slstm"):
        keys = block.gate_keys
        out[keys["input_weight"]], out[keys["forget_weight"]] = (state_dict[keys["forget_weight"]].clone(),
                                                                 state_dict[keys["input_weight"]].clone())
        vanilla, cuda = _conversion_cells(block)
        cell = cuda if info.layout == "cuda" else vanilla
        with torch.no_grad():
            cell._bias_.data = state_dict[keys["bias"]].detach().float().clone()
            by_role = cell.bias.clone()  # (NH, 4, DH) external view: [head, gate, dim]
            for head in range(block.num_heads):
                cell.bias[head, SLSTM_GATES.index("i")] = by_role[head, SLSTM_GATES.index("f")]
                cell.bias[head, SLSTM_GATES.index("f")] = by_role[head, SLSTM_GATES.index("i")]
        out[keys["bias"]] = cell._bias_.detach().clone().to(state_dict[keys["bias"]].dtype)
    return out


# --------------------------------------------------------------------------------------------- library references

def _slstm_layer(embedding_dim: int, heads: int, bias_init: str, recurrent_weight_init: str, block_idx: int,
                 num_blocks: int, backend: str) -> Any:
    with quiet():
        from xlstm.blocks.slstm.cell import sLSTMCell_cuda
        from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig
        config = sLSTMLayerConfig(embedding_dim=embedding_dim, num_heads=heads, backend="vanilla",
                                  conv1d_kernel_size=4, bias_init=bias_init,
                                  recurrent_weight_init=recurrent_weight_init, _block_idx=block_idx,
                                  _num_blocks=num_blocks)
        layer = sLSTMLayer(config)
        if backend == "cuda":
            layer.slstm_cell = sLSTMCell_cuda(config, skip_backend_init=True)
        return layer


def slstm_reference_init(seed: int = 0, embedding_dim: int = 16, heads: int = 2,
                         bias_init: str = "powerlaw_blockdependent", recurrent_weight_init: str = "zeros",
                         block_idx: int = 0, num_blocks: int = 1, backend: str = "vanilla") -> StateDict:
    """xlstm's own init of one sLSTM layer's gate tensors: torch.manual_seed(seed); `sLSTMLayer.reset_parameters()`
    (what xLSTMBlock.__init__ calls at the end). Keys relative to the layer; `backend` picks the storage layout.

    The calls, in order (xlstm 2.0.6, blocks/slstm/layer.py and cell.py), E = embedding_dim, DH = E/NH:
    1. `slstm_cell.reset_parameters()`:
       a. for h in range(NH): for g in (i, f, z, o): recurrent_weight_init "zeros": `nn.init.zeros_` (no draw);
          "standard": `nn.init.uniform_(view, -1/√E, 1/√E)` on the (DH_in, DH_out) view R_ext[h, :, g, :] of the
          external (NH, DH_in, 4, DH_out) layout, which torch fills in the view's MEMORY order, i.e. each backend
          fills its own storage block row-major: cuda R[h, :, g·DH:(g+1)·DH] = U(DH_in, DH_out) row-major;
          vanilla R[h, g·DH:(g+1)·DH, :] = U(DH_out, DH_in) row-major (= `torch.empty(DH_out, DH_in).uniform_()`,
          transposed against cuda). So one seed gives R_vanilla_ext = R_cuda_ext with in and out swapped.
          (Only the very first reset, inside sLSTMCellBase.__init__, differs for vanilla: the fresh parameter is
          still a permuted view, so block (h=0, g=i) is drawn (DH_in, DH_out); ParameterProxy.__setitem__ then
          stores R contiguous. xLSTMBlock.__init__ resets the cell a second time, so built models never show it.)
       b. for h in range(NH): for g in (i, f, z, o): bias_init "powerlaw_blockdependent": g == f:
          -(-5 + 12·(arange(DH)/(DH-1))^(0.3 + 1.3·block_idx/(num_blocks-1 or ratio 0))), others zeros (no draw);
          "small_init": f: `torch.linspace(3, 6, DH)`, others zeros; "zeros"; "standard":
          `nn.init.uniform_(bias[h, g], -1/√E, 1/√E)`, a contiguous (DH,) slice, one per (h, g).
    2. `group_norm.reset_parameters()`: zeros (no draw).
    3. `small_init_init_` = `torch.nn.init.normal_(w, 0, √(2/(5E)))` on igate.weight, fgate.weight, zgate.weight,
       ogate.weight, in that order, each the whole contiguous (NH, DH, DH) tensor. NB igate.weight (drawn first)
       is the FORGET gate's projection, fgate.weight the INPUT gate's.
    The module's own construction (LinearHeadwiseExpand.reset_parameters: normal_(std √(2/5/DH)), the conv's
    default init, the cell's reset) draws before; the seed is set after construction. In a stack,
    xLSTMBlock.__init__ ends with block.reset_parameters(): this sequence, then xlstm_norm (no draw), then the FFN:
    normal_(proj_up.weight, 0, √(2/(5E))), normal_(proj_down.weight, 0, 2/num_blocks/√E), ffn_norm (no draw)."""
    layer = _slstm_layer(embedding_dim, heads, bias_init, recurrent_weight_init, block_idx, num_blocks, backend)
    with quiet(), seeded(seed), torch.no_grad():
        layer.reset_parameters()
    names = ("igate.weight", "fgate.weight", "zgate.weight", "ogate.weight", "slstm_cell._recurrent_kernel_",
             "slstm_cell._bias_")
    state = layer.state_dict()
    return {name: state[name].detach().clone() for name in names}


def mlstm_reference_init(seed: int = 0, embedding_dim: int = 16, heads: int = 2, num_blocks: int = 1,
                         level: str = "cell") -> StateDict:
    """xlstm's own init of an mLSTM layer: torch.manual_seed(seed); then `mlstm_cell.reset_parameters()`
    (level="cell") or `mLSTMLayer.reset_parameters()` (level="layer"). Keys relative to the layer.

    mLSTMCell.reset_parameters (blocks/mlstm/cell.py), NH = heads, 3·inner input features:
    `outnorm.reset_parameters()` (ones, no draw); `nn.init.zeros_(fgate.weight)`;
    `bias_linspace_init_(fgate.bias, 3.0, 6.0)` = copy_(torch.linspace(3, 6, NH)); `nn.init.zeros_(igate.weight)`;
    `nn.init.normal_(igate.bias, 0.0, 0.1)`: the cell's only draw, NH numbers.
    mLSTMLayer.reset_parameters (blocks/mlstm/layer.py) first: `normal_(proj_up.weight, 0, √(2/(5E)))`,
    `normal_(proj_down.weight, 0, 2/num_blocks/√E)` (wang), `ones_(learnable_skip)`, then
    `normal_(w, 0, √(2/(5E)))` on q_proj, k_proj, v_proj weights (E = embedding_dim, not the inner width), then the
    cell's reset above. So at level "layer" igate.bias is drawn after those five normal_ calls (torch's CPU normal_
    fills a contiguous tensor of 16+ elements in blocks of 16 Box-Muller pairs: replay it with normal_ calls on
    tensors of the same shapes, not with a count of numbers)."""
    with quiet():
        from xlstm.blocks.mlstm.layer import mLSTMLayer, mLSTMLayerConfig
        config = mLSTMLayerConfig(embedding_dim=embedding_dim, num_heads=heads, conv1d_kernel_size=4,
                                  qkv_proj_blocksize=4, context_length=CONTEXT_LENGTH, _num_blocks=num_blocks)
        layer = mLSTMLayer(config)
    with quiet(), seeded(seed), torch.no_grad():
        (layer.mlstm_cell if level == "cell" else layer).reset_parameters()
    state = layer.state_dict()
    names = [name for name in state if name.startswith("mlstm_cell.") and "gate" in name]
    if level == "layer":
        names += ["proj_up.weight", "proj_down.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight"]
    return {name: state[name].detach().clone() for name in names}


def _unmark(model: torch.nn.Module) -> None:
    """Clear transformers' `_is_hf_initialized` flags, so that its init functions write again."""
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.__dict__.pop("_is_hf_initialized", None)


def rglru_reference_init(seed: int = 0, lru_width: int = 32, heads: int = 2, hidden_size: int = 32) -> StateDict:
    """transformers' own init of one RG-LRU: torch.manual_seed(seed); `model._init_weights(rg_lru)` on a fresh
    tiny RecurrentGemmaForCausalLM (flags cleared, tensors NaN-filled first so that a skipped init shows).
    Keys relative to the rg_lru module.

    RecurrentGemmaPreTrainedModel._init_weights (modeling_recurrent_gemma.py), bw = lru_width/NH:
    `super()._init_weights(module)` (no branch matches an RG-LRU: no draw); then
    `init.normal_(input_gate_weight, 0, √(w_init_variance_scale/bw))` (0.01 by default; (NH, bw, bw), contiguous);
    `init.normal_(recurrent_gate_weight, same)`; `init.zeros_` on both biases;
    `torch.empty_like(recurrent_param).uniform_(0.9**2 + 1e-8, 0.999**2 + 1e-8)` ((W,)), then in place
    `.log_().mul_(0.5).neg_().exp_().sub_(1.0).log_()` = log(1/√u − 1), copied in. Draw order: input gate W,
    recurrent gate W, u. In a whole-model init (post_init: children first, then the module) the RG-LRU of layer k
    is reached after everything registered before it (embeddings, earlier layers, its block's linear_y, linear_x)."""
    model = recurrent_gemma_model(num_hidden_layers=1, heads=heads, lru_width=lru_width, hidden_size=hidden_size,
                                  block_types=("recurrent",))
    lru = model.model.layers[0].temporal_block.rg_lru
    _unmark(model)
    with quiet(), torch.no_grad():
        for parameter in lru.parameters():
            parameter.fill_(float("nan"))
        with seeded(seed):
            model._init_weights(lru)
    return {name: tensor.detach().clone() for name, tensor in lru.state_dict().items()}


def hf_xlstm_reference_init(seed: int = 0, hidden_size: int = 32, heads: int = 2) -> StateDict:
    """transformers' own init of one xLSTM mLSTM layer's gate pre-activations: torch.manual_seed(seed); then
    `model._init_weights(m)` for m = ogate_preact, igate_preact, fgate_preact (registration order) of block 0 of a
    fresh tiny xLSTMForCausalLM (flags cleared, tensors NaN-filled first). Keys relative to the mlstm_layer.

    xLSTMPreTrainedModel._init_weights (modeling_xlstm.py) for an nn.Linear whose module path contains "gate"
    (weight_mode "single"): `super()._init_weights`: `init.normal_(weight, 0, 0.02)` (config has no
    initializer_range: 0.02; a draw of weight.numel() normals that is then overwritten), `init.zeros_(bias)` if any;
    then `init.zeros_(bias)` if any; `init.zeros_(weight)`; igate: `init.copy_(bias, -10·ones)`; fgate:
    `init.copy_(bias, torch.linspace(3, 6, NH))`. The values are deterministic; only the RNG state moves
    (NH·H, NH·H and v_dim·H normals for igate, fgate, ogate). The name test is a substring test on the path, so
    the FFN's proj_up_gate is zeroed as well."""
    model = hf_xlstm_model(num_hidden_layers=1, heads=heads, hidden_size=hidden_size)
    layer = model.backbone.blocks[0].mlstm_layer
    _unmark(model)
    gates = ("ogate_preact", "igate_preact", "fgate_preact")
    with quiet(), torch.no_grad():
        for name in gates:
            for parameter in getattr(layer, name).parameters():
                parameter.fill_(float("nan"))
        with seeded(seed):
            for name in gates:
                model._init_weights(getattr(layer, name))
    state = layer.state_dict()
    return {name: state[name].detach().clone() for name in state if name.split(".")[0] in gates}
