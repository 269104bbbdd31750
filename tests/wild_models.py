"""Modules whose state dicts have exactly the names and shapes real libraries give, for rnninit's "wild" tests.

torchaudio, speechbrain and fastai are not installed here: each class below re-implements the minimal part of the
library module, from its published source, so that `state_dict()` keys and shapes match the real ones and
`forward` computes what the library computes. Every builder returns `(module, state_dict)`, the state dict
detached and cloned, and builds under a fixed seed without touching the global RNG. The sources (repository,
file, commit) are in each docstring; /work/notes/wild_facts.md records what was checked line by line.

`effective_*` helpers give, for the property checks, the parameters in PyTorch's own form (orientation
`(G·h, in)`, gate order i,f,g,o / r,z,n), computed from a state dict the way the library's forward uses it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StateDict = dict[str, Tensor]
Built = tuple[nn.Module, StateDict]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _state(module: nn.Module) -> StateDict:
    """A copy of the state dict that keeps its tensors' storage sharing (fastai saves `encoder.weight` and
    `encoder_dp.emb.weight` as one storage, as torch.save of the real state dict does)."""
    return copy.deepcopy(module.state_dict())


# --------------------------------------------------------------------------------------------------------------
# torchaudio: Emformer RNN-T predictor with _CustomLSTM layers


class TorchaudioCustomLSTM(nn.Module):
    """torchaudio's `_CustomLSTM` (pytorch/audio torchaudio/models/rnnt.py, commit 1c44c6776062; identical at
    e211a839fa0b): `x2g` Linear(in, 4h, bias=not layer_norm), `p2g` Linear(h, 4h, bias=False), and with layer_norm
    `c_norm` LayerNorm(h) and `g_norm` LayerNorm(4h); gates chunked i,f,g,o. Input (T, B, D)."""

    def __init__(self, input_dim: int, hidden_dim: int, layer_norm: bool = False, layer_norm_epsilon: float = 1e-5):
        super().__init__()
        self.x2g = nn.Linear(input_dim, 4 * hidden_dim, bias=(not layer_norm))
        self.p2g = nn.Linear(hidden_dim, 4 * hidden_dim, bias=False)
        if layer_norm:
            self.c_norm: nn.Module = nn.LayerNorm(hidden_dim, eps=layer_norm_epsilon)
            self.g_norm: nn.Module = nn.LayerNorm(4 * hidden_dim, eps=layer_norm_epsilon)
        else:
            self.c_norm = nn.Identity()
            self.g_norm = nn.Identity()
        self.hidden_dim = hidden_dim

    def forward(self, input: Tensor, state: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        if state is None:
            batch = input.size(1)
            h = torch.zeros(batch, self.hidden_dim, dtype=input.dtype)
            c = torch.zeros(batch, self.hidden_dim, dtype=input.dtype)
        else:
            h, c = state
        gated_input = self.x2g(input)
        outputs = []
        for gates in gated_input.unbind(0):
            gates = self.g_norm(gates + self.p2g(h))
            input_gate, forget_gate, cell_gate, output_gate = gates.chunk(4, 1)
            c = forget_gate.sigmoid() * c + input_gate.sigmoid() * cell_gate.tanh()
            c = self.c_norm(c)
            h = output_gate.sigmoid() * c.tanh()
            outputs.append(h)
        return torch.stack(outputs, dim=0), [h, c]


class TorchaudioPredictor(nn.Module):
    """torchaudio's `_Predictor` (same file): embedding, input_layer_norm, `lstm_layers` (ModuleList of
    `_CustomLSTM`), dropout, linear, output_layer_norm. Input (B, U) token ids."""

    def __init__(
        self,
        num_symbols: int,
        output_dim: int,
        symbol_embedding_dim: int,
        num_lstm_layers: int,
        lstm_hidden_dim: int,
        lstm_layer_norm: bool = False,
        lstm_layer_norm_epsilon: float = 1e-5,
        lstm_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_symbols, symbol_embedding_dim)
        self.input_layer_norm = nn.LayerNorm(symbol_embedding_dim)
        self.lstm_layers = nn.ModuleList(
            [
                TorchaudioCustomLSTM(
                    symbol_embedding_dim if idx == 0 else lstm_hidden_dim,
                    lstm_hidden_dim,
                    layer_norm=lstm_layer_norm,
                    layer_norm_epsilon=lstm_layer_norm_epsilon,
                )
                for idx in range(num_lstm_layers)
            ]
        )
        self.dropout = nn.Dropout(p=lstm_dropout)
        self.linear = nn.Linear(lstm_hidden_dim, output_dim)
        self.output_layer_norm = nn.LayerNorm(output_dim)

    def forward(self, input: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
        lstm_out = self.input_layer_norm(self.embedding(input.permute(1, 0)))
        state_out: list[list[Tensor]] = []
        for lstm in self.lstm_layers:
            lstm_out, lstm_state_out = lstm(lstm_out, None)
            lstm_out = self.dropout(lstm_out)
            state_out.append(lstm_state_out)
        return self.output_layer_norm(self.linear(lstm_out)).permute(1, 0, 2), lengths, state_out


class TorchaudioRNNTPredictorOnly(nn.Module):
    """An RNNT's `predictor` attribute alone, so keys read `predictor.lstm_layers.0.x2g.weight` as in a saved
    `torchaudio.models.RNNT` (its transcriber and joiner are not recurrent and are left out)."""

    def __init__(self, **predictor: Any) -> None:
        super().__init__()
        self.predictor = TorchaudioPredictor(**predictor)

    def forward(self, targets: Tensor, lengths: Tensor) -> Tensor:
        return self.predictor(targets, lengths)[0]


# emformer_rnnt_base(num_symbols)'s predictor: encoding_dim 1024, symbol_embedding_dim 512 (= lstm_hidden_dim),
# 3 layers, layer norm with eps 1e-3, dropout 0.3 (rnnt.py, emformer_rnnt_base / emformer_rnnt_model).
EMFORMER_RNNT_BASE_PREDICTOR = {
    "num_symbols": 4097,
    "output_dim": 1024,
    "symbol_embedding_dim": 512,
    "num_lstm_layers": 3,
    "lstm_hidden_dim": 512,
    "lstm_layer_norm": True,
    "lstm_layer_norm_epsilon": 1e-3,
    "lstm_dropout": 0.3,
}


def torchaudio_rnnt_predictor(layer_norm: bool = False, *, hidden: int = 16, layers: int = 2, seed: int = 0) -> Built:
    """torchaudio Emformer RNN-T predictor, small: embedding 16, `layers` `_CustomLSTM`s of `hidden` units.
    `layer_norm=True` is the emformer_rnnt_base variant (x2g without bias, c_norm and g_norm added)."""
    with _seeded(seed):
        module = TorchaudioRNNTPredictorOnly(
            num_symbols=20,
            output_dim=12,
            symbol_embedding_dim=hidden,
            num_lstm_layers=layers,
            lstm_hidden_dim=hidden,
            lstm_layer_norm=layer_norm,
            lstm_layer_norm_epsilon=1e-3 if layer_norm else 1e-5,
        )
    return module.eval(), _state(module)


def torchaudio_rnnt_base_predictor(seed: int = 0) -> Built:
    """The predictor of `torchaudio.models.emformer_rnnt_base(num_symbols=4097)` at its real sizes (8.9 M values)."""
    with _seeded(seed):
        module = TorchaudioRNNTPredictorOnly(**EMFORMER_RNNT_BASE_PREDICTOR)
    return module.eval(), _state(module)


def torchaudio_rnnt_inputs(batch: int = 2, steps: int = 5, num_symbols: int = 20) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, num_symbols, (batch, steps), generator=generator), torch.full((batch,), steps)


def effective_torchaudio(state: StateDict, prefix: str) -> dict[str, Tensor]:
    """torch-form LSTM parameters of one `_CustomLSTM` (`prefix` = `predictor.lstm_layers.0.`): already i,f,g,o."""
    out = {"weight_ih": state[prefix + "x2g.weight"], "weight_hh": state[prefix + "p2g.weight"]}
    if prefix + "x2g.bias" in state:
        out["bias_ih"] = state[prefix + "x2g.bias"]
    return out


# --------------------------------------------------------------------------------------------------------------
# speechbrain: LiGRU


class SpeechbrainLiGRULayer(nn.Module):
    """speechbrain's `LiGRU_Layer` (speechbrain/speechbrain speechbrain/nnet/RNN.py, tag v1.1.0 36c180c7bfad, lines
    1201-1400; the same at v1.0.0, v1.0.3 and main 9c826ef3937b): `w` Linear(in, 2h, bias=False), `u` Linear(h, 2h,
    bias=False), `norm` BatchNorm1d(2h, momentum=0.05) (or LayerNorm(2h)), buffers h_init (1, h), drop_masks
    (16000, h), drop_mask_te (1,). `at, zt = (w x + u h).chunk(2, 1)`; h = z h + (1 - z) relu(a). A
    bidirectional layer runs the flipped batch through the same w and u."""

    def __init__(
        self,
        input_size: float,
        hidden_size: int,
        num_layers: int,
        batch_size: int,
        dropout: float = 0.0,
        normalization: str = "batchnorm",
        bias: bool = True,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.input_size = int(input_size)
        self.batch_size = batch_size * (2 if bidirectional else 1)
        self.bidirectional = bidirectional
        self.w = nn.Linear(self.input_size, 2 * self.hidden_size, bias=False)
        self.u = nn.Linear(self.hidden_size, 2 * self.hidden_size, bias=False)
        if normalization == "batchnorm":
            self.norm: nn.Module = nn.BatchNorm1d(2 * self.hidden_size, momentum=0.05)
        else:
            self.norm = nn.LayerNorm(2 * self.hidden_size)
        if not bias:
            self.norm.bias.data.fill_(0)
            self.norm.bias.requires_grad = False
        self.register_buffer("h_init", torch.zeros(1, self.hidden_size))
        self.drop = nn.Dropout(p=dropout, inplace=False)
        self.N_drop_masks = 16000
        self.register_buffer("drop_masks", self.drop(torch.ones(self.N_drop_masks, self.hidden_size)).data)
        self.register_buffer("drop_mask_te", torch.tensor([1.0]).float())
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.bidirectional:
            x = torch.cat([x, x.flip(1)], dim=0)
        w = self.w(x)
        w = self.norm(w.reshape(w.shape[0] * w.shape[1], w.shape[2])).reshape(w.shape)
        ht = self.h_init.broadcast_to(w.shape[0], self.h_init.shape[1])
        hiddens = []
        for k in range(w.shape[1]):  # eval mode: the drop mask is drop_mask_te (ones)
            at, zt = (w[:, k] + self.u(ht)).chunk(2, 1)
            zt = torch.sigmoid(zt)
            ht = zt * ht + (1 - zt) * self.act(at) * self.drop_mask_te
            hiddens.append(ht)
        h = torch.stack(hiddens, dim=1)
        if self.bidirectional:
            h_f, h_b = h.chunk(2, dim=0)
            h = torch.cat([h_f, h_b.flip(1)], dim=2)
        return h


class SpeechbrainLiGRU(nn.Module):
    """speechbrain's `LiGRU` (same file, class LiGRU): `rnn` = ModuleList of `LiGRU_Layer`s, input width
    prod(input_shape[2:]) then 2h (bidirectional) or h; `rnn_init` makes every `.u.weight` orthogonal."""

    def __init__(
        self,
        hidden_size: int,
        input_shape: tuple[int, ...],
        num_layers: int = 1,
        normalization: str = "batchnorm",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        current_dim = float(math.prod(input_shape[2:]))
        self.rnn = nn.ModuleList()
        for _ in range(num_layers):
            self.rnn.append(
                SpeechbrainLiGRULayer(
                    current_dim,
                    hidden_size,
                    num_layers,
                    input_shape[0],
                    normalization=normalization,
                    bidirectional=bidirectional,
                )
            )
            current_dim = hidden_size * 2 if bidirectional else hidden_size
        for name, param in self.rnn.named_parameters():  # speechbrain.nnet.RNN.rnn_init
            if "weight_hh" in name or ".u.weight" in name:
                nn.init.orthogonal_(param)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        last = []
        for layer in self.rnn:
            x = layer(x)
            last.append(x[:, -1, :])
        return x, torch.stack(last, dim=1)


def speechbrain_ligru(
    *, hidden: int = 8, features: int = 6, layers: int = 2, bidirectional: bool = True, seed: int = 0
) -> Built:
    """speechbrain LiGRU as `LiGRU(hidden_size, input_shape=(4, 10, features), num_layers, bidirectional)` builds it
    (batch norm, relu): keys `rnn.{k}.w.weight` (2h, in_k), `rnn.{k}.u.weight` (2h, h), `rnn.{k}.norm.*`,
    `rnn.{k}.h_init`, `rnn.{k}.drop_masks`, `rnn.{k}.drop_mask_te`."""
    with _seeded(seed):
        module = SpeechbrainLiGRU(hidden, (4, 10, features), num_layers=layers, bidirectional=bidirectional)
    return module.eval(), _state(module)


def speechbrain_inputs(features: int = 6, batch: int = 4, steps: int = 10) -> Tensor:
    return torch.randn(batch, steps, features, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------------------------------------------
# AWD-LSTM: fastai WeightDropout and salesforce WeightDrop


class FastaiWeightDropout(nn.Module):
    """fastai's `WeightDropout` (fastai/fastai fastai/text/models/awdlstm.py, commit 2ab4bcc48922, fastai 2.7):
    the wrapped parameter moves to the wrapper as `{layer}_raw`; the module keeps a plain tensor attribute (not in
    the state dict) refreshed from it before every forward."""

    def __init__(self, module: nn.Module, weight_p: float, layer_names: tuple[str, ...] = ("weight_hh_l0",)):
        super().__init__()
        self.module, self.weight_p, self.layer_names = module, weight_p, list(layer_names)
        for layer in self.layer_names:
            w = getattr(self.module, layer)
            delattr(self.module, layer)
            self.register_parameter(f"{layer}_raw", nn.Parameter(w.data))
            setattr(self.module, layer, w.clone())
            if isinstance(self.module, nn.RNNBase):
                self.module.flatten_parameters = self._do_nothing  # type: ignore[method-assign]

    def _setweights(self) -> None:
        for layer in self.layer_names:
            raw_w = getattr(self, f"{layer}_raw")
            w = F.dropout(raw_w, p=self.weight_p) if self.training else raw_w.clone()
            setattr(self.module, layer, w)

    def forward(self, *args: Any) -> Any:
        self._setweights()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            return self.module(*args)

    def _do_nothing(self) -> None:
        pass


class FastaiEmbeddingDropout(nn.Module):
    """fastai's `EmbeddingDropout` (same file): holds the encoder as `emb` (so its weight is saved twice)."""

    def __init__(self, emb: nn.Embedding, embed_p: float) -> None:
        super().__init__()
        self.emb, self.embed_p = emb, embed_p

    def forward(self, words: Tensor) -> Tensor:
        return F.embedding(words, self.emb.weight, self.emb.padding_idx)


class FastaiAWDLSTM(nn.Module):
    """fastai's `AWD_LSTM` (same file): `encoder`, `encoder_dp`, `rnns` = ModuleList of
    `WeightDropout(nn.LSTM(n_in, n_out, 1, batch_first=True, bidirectional=bidir))`, `input_dp`, `hidden_dps`.
    n_out is n_hid, emb_sz for the last layer, // 2 if bidirectional. Forward starts from zero states each call
    (fastai carries them between calls; they are not in the state dict)."""

    def __init__(self, vocab_sz: int, emb_sz: int, n_hid: int, n_layers: int, pad_token: int = 1, bidir: bool = False):
        super().__init__()
        self.n_dir = 2 if bidir else 1
        self.encoder = nn.Embedding(vocab_sz, emb_sz, padding_idx=pad_token)
        self.encoder_dp = FastaiEmbeddingDropout(self.encoder, 0.1)
        self.rnns = nn.ModuleList(
            [
                FastaiWeightDropout(
                    nn.LSTM(
                        emb_sz if layer == 0 else n_hid,
                        (n_hid if layer != n_layers - 1 else emb_sz) // self.n_dir,
                        1,
                        batch_first=True,
                        bidirectional=bidir,
                    ),
                    0.5,
                )
                for layer in range(n_layers)
            ]
        )
        self.encoder.weight.data.uniform_(-0.1, 0.1)

    def forward(self, inp: Tensor) -> Tensor:
        output = self.encoder_dp(inp)
        for rnn in self.rnns:
            output, _ = rnn(output)
        return output


def fastai_awd_lstm(*, layers: int = 3, bidir: bool = False, seed: int = 0) -> Built:
    """fastai AWD_LSTM(vocab 30, emb 8, n_hid 12, `layers`): keys `rnns.{k}.weight_hh_l0_raw`,
    `rnns.{k}.module.weight_ih_l0`, `rnns.{k}.module.bias_ih_l0`, `rnns.{k}.module.bias_hh_l0` (+ `_reverse` ones,
    weight_hh_l0_reverse left in the module, when bidirectional), `encoder.weight`, `encoder_dp.emb.weight`."""
    with _seeded(seed):
        module = FastaiAWDLSTM(30, 8, 12, layers, bidir=bidir)
    return module.eval(), _state(module)


class SalesforceWeightDrop(nn.Module):
    """salesforce awd-lstm-lm's `WeightDrop` (salesforce/awd-lstm-lm weight_drop.py, commit 15535c498bb7): the
    parameter is re-registered inside the module as `{name}_raw`; each forward registers `{name}` again as a
    Parameter computed from it (so a state dict taken after a forward holds both)."""

    def __init__(self, module: nn.Module, weights: list[str], dropout: float = 0.0) -> None:
        super().__init__()
        self.module, self.weights, self.dropout = module, weights, dropout
        if isinstance(self.module, nn.RNNBase):
            self.module.flatten_parameters = self._widget_demagnetizer_y2k_edition  # type: ignore[method-assign]
        for name_w in self.weights:
            w = getattr(self.module, name_w)
            del self.module._parameters[name_w]
            self.module.register_parameter(name_w + "_raw", nn.Parameter(w.data))

    def _widget_demagnetizer_y2k_edition(*args: Any, **kwargs: Any) -> None:
        return

    def _setweights(self) -> None:
        for name_w in self.weights:
            raw_w = getattr(self.module, name_w + "_raw")
            w = F.dropout(raw_w, p=self.dropout, training=self.training)
            setattr(self.module, name_w, nn.Parameter(w))

    def forward(self, *args: Any) -> Any:
        self._setweights()
        return self.module.forward(*args)


class SalesforceRNNModel(nn.Module):
    """awd-lstm-lm's `RNNModel('LSTM', ...)` with wdrop (salesforce/awd-lstm-lm model.py, commit 1b3294ddd85e):
    `encoder` Embedding, `rnns` = ModuleList of `WeightDrop(nn.LSTM(in, out, 1), ['weight_hh_l0'])` (out = nhid,
    ninp for the last layer), `decoder` Linear(nhid, ntoken). Input (T, B) ids; zero initial states."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, wdrop: float = 0.5) -> None:
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        sizes = [(ninp if layer == 0 else nhid, nhid if layer != nlayers - 1 else ninp) for layer in range(nlayers)]
        rnns = [nn.LSTM(n_in, n_out, 1) for n_in, n_out in sizes]
        self.rnns = nn.ModuleList([SalesforceWeightDrop(rnn, ["weight_hh_l0"], dropout=wdrop) for rnn in rnns])
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input: Tensor) -> Tensor:
        output = self.encoder(input)
        for rnn in self.rnns:
            output, _ = rnn(output)
        return self.decoder(output)


def salesforce_awd_lstm(*, after_forward: str | None = None, layers: int = 3, seed: int = 0) -> Built:
    """awd-lstm-lm RNNModel(ntoken 30, ninp 8, nhid 8, `layers`): keys `rnns.{k}.module.weight_ih_l0`,
    `...module.bias_ih_l0`, `...module.bias_hh_l0`, `...module.weight_hh_l0_raw`. After one forward (as any
    trained model) also `...module.weight_hh_l0`: with `after_forward="eval"` it shares raw's storage, with
    "train" it is a dropped-out copy of raw, which the next forward recomputes from raw. The module returned is
    in eval mode."""
    with _seeded(seed):
        module = SalesforceRNNModel(30, 8, 8, layers)
        if after_forward is not None:
            module.train(after_forward == "train")
            module(torch.zeros(2, 1, dtype=torch.long))
    return module.eval(), _state(module)


def awd_inputs(batch: int = 2, steps: int = 5, vocab: int = 30) -> Tensor:
    return torch.randint(0, vocab, (batch, steps), generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------------------------------------------
# torch parametrizations on an LSTM's weight_hh_l0


class ParametrizedLSTM(nn.Module):
    """`rnn = nn.LSTM(8, 16, 2)` with one of torch's own reparametrizations on `rnn.weight_hh_l0`."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, 2)
        if how == "weight_norm":  # parametrizations.weight_hh_l0.original0 (g, (64, 1)) and .original1 (v)
            torch.nn.utils.parametrizations.weight_norm(self.rnn, "weight_hh_l0")
        elif how == "spectral_norm":  # .original, plus buffers .0._u (64,) and .0._v (16,)
            torch.nn.utils.parametrizations.spectral_norm(self.rnn, "weight_hh_l0")
        elif how == "orthogonal":  # .original, plus buffer .0.base (64, 64)
            torch.nn.utils.parametrizations.orthogonal(self.rnn, "weight_hh_l0")
        elif how == "old_weight_norm":  # weight_hh_l0_g (64, 1) and weight_hh_l0_v (64, 16)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.nn.utils.weight_norm(self.rnn, "weight_hh_l0")
        else:
            raise ValueError(how)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]


PARAMETRIZATIONS = ("weight_norm", "spectral_norm", "orthogonal", "old_weight_norm")


def parametrized_lstm(how: str, seed: int = 0) -> Built:
    """An nn.LSTM(8, 16, 2) under `rnn.` with `how` (one of PARAMETRIZATIONS) on weight_hh_l0, built by torch's
    own functions (torch.nn.utils.parametrizations.*, torch.nn.utils.weight_norm)."""
    with _seeded(seed):
        module = ParametrizedLSTM(how)
    return module.eval(), _state(module)


def lstm_inputs(features: int = 8, steps: int = 5, batch: int = 2) -> Tensor:
    return torch.randn(steps, batch, features, generator=torch.Generator().manual_seed(1))


def effective_weight_hh(module: ParametrizedLSTM) -> Tensor:
    """The weight_hh_l0 the LSTM computes with (what the parametrization gives)."""
    return module.rnn.weight_hh_l0.detach()


# --------------------------------------------------------------------------------------------------------------
# hand-written cells


def _lstm_step(gates: Tensor, c: Tensor, order: str) -> tuple[Tensor, Tensor]:
    """One LSTM step from pre-activations stored in `order` (letters among i,f,g/c,o)."""
    blocks = dict(zip(order.replace("c", "g"), gates.chunk(4, -1), strict=True))
    c = blocks["f"].sigmoid() * c + blocks["i"].sigmoid() * blocks["g"].tanh()
    return blocks["o"].sigmoid() * c.tanh(), c


class I2HLSTMCell(nn.Module):
    """The common hand-written LSTM cell: `i2h` Linear(in, 4h) and `h2h` Linear(h, 4h), gates i,f,g,o."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size, 4 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 4 * hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        h = c = x.new_zeros(x.shape[1], self.hidden_size)
        outputs = []
        for x_t in x.unbind(0):
            h, c = _lstm_step(self.i2h(x_t) + self.h2h(h), c, "ifgo")
            outputs.append(h)
        return torch.stack(outputs)


class StackedI2HLSTM(nn.Module):
    """`layers` = ModuleList of I2HLSTMCell: keys `layers.{k}.i2h.weight` (4h, in), `.i2h.bias`, `.h2h.weight`
    (4h, h), `.h2h.bias`. Input (T, B, in)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [I2HLSTMCell(input_size if k == 0 else hidden_size, hidden_size) for k in range(num_layers)]
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def i2h_lstm(seed: int = 0) -> Built:
    """Hand-written 2-layer LSTM, input 8, hidden 16, i2h/h2h Linears with biases, torch's gate order."""
    with _seeded(seed):
        module = StackedI2HLSTM(8, 16, 2)
    return module.eval(), _state(module)


I2H_LAYOUT = (
    r"cell=lstm weight_ih=(.*)\.i2h\.weight bias_ih=(.*)\.i2h\.bias weight_hh=(.*)\.h2h\.weight bias_hh=(.*)\.h2h\.bias"
)


class PerGateLSTM(nn.Module):
    """An LSTM with one Linear per gate, as tutorials write it: `cell.input_{i,f,c,o}` Linear(in, h) with bias,
    `cell.hidden_{i,f,c,o}` Linear(h, h) without. Input (T, B, in)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.Module()
        for gate in "ifco":
            self.cell.add_module(f"input_{gate}", nn.Linear(input_size, hidden_size))
            self.cell.add_module(f"hidden_{gate}", nn.Linear(hidden_size, hidden_size, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        h = c = x.new_zeros(x.shape[1], self.hidden_size)
        outputs = []
        for x_t in x.unbind(0):
            pre = [getattr(self.cell, f"input_{g}")(x_t) + getattr(self.cell, f"hidden_{g}")(h) for g in "ifco"]
            h, c = _lstm_step(torch.cat(pre, -1), c, "ifco")
            outputs.append(h)
        return torch.stack(outputs)


def per_gate_lstm(seed: int = 0) -> Built:
    """One Linear per gate (gates named i,f,c,o in the names), input 8, hidden 16."""
    with _seeded(seed):
        module = PerGateLSTM(8, 16)
    return module.eval(), _state(module)


PER_GATE_LAYOUT = (
    r"cell=lstm gates=i,f,c,o weight_ih=(.*)\.input_(?P<gate>\w)\.weight bias_ih=(.*)\.input_(?P<gate>\w)\.bias "
    r"weight_hh=(.*)\.hidden_(?P<gate>\w)\.weight"
)


def effective_per_gate(state: StateDict, prefix: str = "cell.") -> dict[str, Tensor]:
    """torch-form (i,f,g,o stacked) parameters of PerGateLSTM."""
    return {
        "weight_ih": torch.cat([state[f"{prefix}input_{g}.weight"] for g in "ifco"]),
        "bias_ih": torch.cat([state[f"{prefix}input_{g}.bias"] for g in "ifco"]),
        "weight_hh": torch.cat([state[f"{prefix}hidden_{g}.weight"] for g in "ifco"]),
    }


class KerasLSTMCell(nn.Module):
    """Keras's LSTMCell weights ported as is (keras-team/keras keras/src/layers/rnn/lstm.py, commit 13b6362d8520):
    `kernel` (in, 4h), `recurrent_kernel` (h, 4h), `bias` (4h,), gates i,f,c,o; z = x kernel + h rk + bias."""

    def __init__(self, input_dim: int, units: int) -> None:
        super().__init__()
        self.units = units
        self.kernel = nn.Parameter(torch.empty(input_dim, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 4 * units))
        self.bias = nn.Parameter(torch.zeros(4 * units))
        nn.init.xavier_uniform_(self.kernel)
        nn.init.orthogonal_(self.recurrent_kernel)
        with torch.no_grad():
            self.bias[units : 2 * units] = 1.0  # unit_forget_bias

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, in), Keras's batch-major layout
        h = c = x.new_zeros(x.shape[0], self.units)
        outputs = []
        for x_t in x.unbind(1):
            h, c = _lstm_step(x_t @ self.kernel + h @ self.recurrent_kernel + self.bias, c, "ifco")
            outputs.append(h)
        return torch.stack(outputs, 1)


class KerasGRUCell(nn.Module):
    """Keras's GRUCell weights with reset_after=True (keras/src/layers/rnn/gru.py, same commit): `kernel` (in, 3h),
    `recurrent_kernel` (h, 3h), `bias` (2, 3h) (row 0 input bias, row 1 recurrent bias), gates z,r,h;
    hh = tanh(x_h + r (h Rh + b_rh)), h = z h + (1 - z) hh."""

    def __init__(self, input_dim: int, units: int) -> None:
        super().__init__()
        self.units = units
        self.kernel = nn.Parameter(torch.empty(input_dim, 3 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 3 * units))
        self.bias = nn.Parameter(torch.zeros(2, 3 * units))
        nn.init.xavier_uniform_(self.kernel)
        nn.init.orthogonal_(self.recurrent_kernel)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.units)
        outputs = []
        for x_t in x.unbind(1):
            x_z, x_r, x_h = (x_t @ self.kernel + self.bias[0]).chunk(3, -1)
            r_z, r_r, r_h = (h @ self.recurrent_kernel + self.bias[1]).chunk(3, -1)
            z, r = (x_z + r_z).sigmoid(), (x_r + r_r).sigmoid()
            h = z * h + (1 - z) * (x_h + r * r_h).tanh()
            outputs.append(h)
        return torch.stack(outputs, 1)


class KerasPorted(nn.Module):
    """A model ported from Keras: `encoder.lstm_cell` (KerasLSTMCell) then `decoder.gru_cell` (KerasGRUCell).
    Input (B, T, in)."""

    def __init__(self, input_dim: int = 8, units: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.lstm_cell = KerasLSTMCell(input_dim, units)
        self.decoder = nn.Module()
        self.decoder.gru_cell = KerasGRUCell(units, units)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder.gru_cell(self.encoder.lstm_cell(x))


def keras_ported(seed: int = 0) -> Built:
    """Keras LSTM (in 8, 16 units) and GRU (16, 16 units, reset_after) weights in Keras's own shapes."""
    with _seeded(seed):
        module = KerasPorted()
    return module.eval(), _state(module)


KERAS_LSTM_LAYOUT = (
    r"cell=lstm gates=i,f,c,o transposed=weight_ih,weight_hh weight_ih=(.*lstm_cell)\.kernel "
    r"weight_hh=(.*lstm_cell)\.recurrent_kernel bias_ih=(.*lstm_cell)\.bias"
)
# bias_ih and bias_hh name the same (2, 3h) tensor: rows 0 and 1 (see rnninit_cli.layouts.declared).
KERAS_GRU_LAYOUT = (
    r"cell=gru gates=z,r,h transposed=weight_ih,weight_hh weight_ih=(.*gru_cell)\.kernel "
    r"weight_hh=(.*gru_cell)\.recurrent_kernel bias_ih=(.*gru_cell)\.bias bias_hh=(.*gru_cell)\.bias"
)


def _reorder(tensor: Tensor, stored: str, wanted: str) -> Tensor:
    blocks = dict(zip(stored, tensor.chunk(len(stored), 0), strict=True))
    return torch.cat([blocks[gate] for gate in wanted])


def effective_keras_lstm(state: StateDict, prefix: str = "encoder.lstm_cell.") -> dict[str, Tensor]:
    """torch-form LSTM parameters of a Keras LSTM cell: transposed to (4h, ·), order i,f,g,o (Keras's c is g)."""
    return {
        "weight_ih": state[prefix + "kernel"].T,
        "weight_hh": state[prefix + "recurrent_kernel"].T,
        "bias_ih": state[prefix + "bias"],
    }


def effective_keras_gru(state: StateDict, prefix: str = "decoder.gru_cell.") -> dict[str, Tensor]:
    """torch-form GRU parameters of a Keras GRU cell: transposed, reordered from z,r,h to r,z,n."""
    return {
        "weight_ih": _reorder(state[prefix + "kernel"].T, "zrn", "rzn"),
        "weight_hh": _reorder(state[prefix + "recurrent_kernel"].T, "zrn", "rzn"),
        "bias_ih": _reorder(state[prefix + "bias"][0], "zrn", "rzn"),
        "bias_hh": _reorder(state[prefix + "bias"][1], "zrn", "rzn"),
    }


class OnnxLSTM(nn.Module):
    """An LSTM holding ONNX's LSTM initializers as the operator spec gives them (onnx.ai/onnx/operators/
    onnx__LSTM.html, LSTM-22): `W` (num_directions=1, 4h, in), `R` (1, 4h, h), `B` (1, 8h) = Wb then Rb, gate order
    i,o,f,c. These are 3-D: whether a declaration may name them is the lead's decision. Input (T, B, in)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        bound = 1 / math.sqrt(hidden_size)
        self.W = nn.Parameter(torch.empty(1, 4 * hidden_size, input_size).uniform_(-bound, bound))
        self.R = nn.Parameter(torch.empty(1, 4 * hidden_size, hidden_size).uniform_(-bound, bound))
        self.B = nn.Parameter(torch.empty(1, 8 * hidden_size).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        h = c = x.new_zeros(x.shape[1], self.hidden_size)
        wb, rb = self.B[0].chunk(2)
        outputs = []
        for x_t in x.unbind(0):
            h, c = _lstm_step(x_t @ self.W[0].T + wb + h @ self.R[0].T + rb, c, "iofc")
            outputs.append(h)
        return torch.stack(outputs)


class OnnxModel(nn.Module):
    """OnnxLSTM under `lstm.`."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = OnnxLSTM(8, 16)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)


def onnx_lstm(seed: int = 0) -> Built:
    """ONNX-layout LSTM under `lstm.` (input 8, hidden 16): `lstm.W`, `lstm.R`, `lstm.B`."""
    with _seeded(seed):
        module = OnnxModel()
    return module.eval(), _state(module)


def effective_onnx(state: StateDict, prefix: str = "lstm.") -> dict[str, Tensor]:
    """torch-form parameters of the ONNX LSTM: direction 0, reordered from i,o,f,c to i,f,g,o."""
    wb, rb = state[prefix + "B"][0].chunk(2)
    return {
        "weight_ih": _reorder(state[prefix + "W"][0], "iofg", "ifgo"),
        "weight_hh": _reorder(state[prefix + "R"][0], "iofg", "ifgo"),
        "bias_ih": _reorder(wb, "iofg", "ifgo"),
        "bias_hh": _reorder(rb, "iofg", "ifgo"),
    }


# --------------------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[], Built]] = {
    "torchaudio-rnnt": torchaudio_rnnt_predictor,
    "torchaudio-rnnt-layernorm": lambda: torchaudio_rnnt_predictor(layer_norm=True),
    "speechbrain-ligru": speechbrain_ligru,
    "fastai-awd-lstm": fastai_awd_lstm,
    "salesforce-awd-lstm": salesforce_awd_lstm,
    "salesforce-awd-lstm-after-eval-forward": lambda: salesforce_awd_lstm(after_forward="eval"),
    "salesforce-awd-lstm-after-train-forward": lambda: salesforce_awd_lstm(after_forward="train"),
    **{f"parametrized-{how}": (lambda how=how: parametrized_lstm(how)) for how in PARAMETRIZATIONS},
    "i2h-lstm": i2h_lstm,
    "per-gate-lstm": per_gate_lstm,
    "keras-ported": keras_ported,
    "onnx-lstm": onnx_lstm,
}


def sample_input(name: str) -> tuple[Tensor, ...]:
    """An input the module of BUILDERS[name] runs forward on."""
    if name.startswith("torchaudio"):
        return torchaudio_rnnt_inputs()
    if name == "speechbrain-ligru":
        return (speechbrain_inputs(),)
    if name.startswith(("fastai", "salesforce")):
        return (awd_inputs(),)
    if name == "keras-ported":
        return (torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1)),)
    return (lstm_inputs(),)
