"""The wild-model builders (tests/wild_models.py) give the real libraries' names and shapes, run forward, reload
strictly, and their `effective_*` helpers are the parameters torch's own layers compute with."""

from __future__ import annotations

import pytest
import torch
import wild_models as W
from torch import nn


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def test_torchaudio_names_and_shapes() -> None:
    # rnnt.py: x2g Linear(in, 4h, bias=not layer_norm), p2g Linear(h, 4h, bias=False), c_norm (h), g_norm (4h)
    _, plain = W.torchaudio_rnnt_predictor(layers=2, hidden=16)
    layer = {k: v for k, v in shapes(plain).items() if k.startswith("predictor.lstm_layers.1.")}
    assert layer == {"predictor.lstm_layers.1.x2g.weight": (64, 16), "predictor.lstm_layers.1.x2g.bias": (64,),
                     "predictor.lstm_layers.1.p2g.weight": (64, 16)}
    _, normed = W.torchaudio_rnnt_predictor(layer_norm=True, layers=2, hidden=16)
    layer = {k: v for k, v in shapes(normed).items() if k.startswith("predictor.lstm_layers.0.")}
    assert layer == {"predictor.lstm_layers.0.x2g.weight": (64, 16), "predictor.lstm_layers.0.p2g.weight": (64, 16),
                     "predictor.lstm_layers.0.c_norm.weight": (16,), "predictor.lstm_layers.0.c_norm.bias": (16,),
                     "predictor.lstm_layers.0.g_norm.weight": (64,), "predictor.lstm_layers.0.g_norm.bias": (64,)}
    others = [k for k in normed if ".lstm_layers." not in k]
    assert others == ["predictor.embedding.weight", "predictor.input_layer_norm.weight",
                      "predictor.input_layer_norm.bias", "predictor.linear.weight", "predictor.linear.bias",
                      "predictor.output_layer_norm.weight", "predictor.output_layer_norm.bias"]


def test_torchaudio_base_predictor_sizes() -> None:
    assert W.EMFORMER_RNNT_BASE_PREDICTOR["symbol_embedding_dim"] == 512
    _, state = W.torchaudio_rnnt_base_predictor()
    got = shapes(state)
    assert got["predictor.lstm_layers.2.x2g.weight"] == (2048, 512)
    assert got["predictor.lstm_layers.2.p2g.weight"] == (2048, 512)
    assert "predictor.lstm_layers.0.x2g.bias" not in got
    assert got["predictor.linear.weight"] == (1024, 512)


def test_torchaudio_custom_lstm_is_torch_lstm_without_layer_norm() -> None:
    module, state = W.torchaudio_rnnt_predictor(layers=1)
    cell = module.predictor.lstm_layers[0]
    reference = nn.LSTM(16, 16)
    effective = W.effective_torchaudio(state, "predictor.lstm_layers.0.")
    reference.load_state_dict({"weight_ih_l0": effective["weight_ih"], "weight_hh_l0": effective["weight_hh"],
                               "bias_ih_l0": effective["bias_ih"], "bias_hh_l0": torch.zeros(64)})
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(cell(x, None)[0], reference(x)[0])


def test_speechbrain_names_and_shapes() -> None:
    # RNN.py LiGRU: rnn.{k}.w (2h, in_k), rnn.{k}.u (2h, h), BatchNorm1d(2h) norm, buffers h_init, drop masks
    _, state = W.speechbrain_ligru(hidden=8, features=6, layers=2, bidirectional=True)
    assert shapes(state) == {
        **{f"rnn.{k}.{name}": shape for k, width in ((0, 6), (1, 16)) for name, shape in [
            ("h_init", (1, 8)), ("drop_masks", (16000, 8)), ("drop_mask_te", (1,)), ("w.weight", (16, width)),
            ("u.weight", (16, 8)), ("norm.weight", (16,)), ("norm.bias", (16,)), ("norm.running_mean", (16,)),
            ("norm.running_var", (16,)), ("norm.num_batches_tracked", ())]},
    }
    u = state["rnn.1.u.weight"]
    torch.testing.assert_close(u.T @ u, torch.eye(8), atol=1e-5, rtol=0)  # rnn_init: orthogonal u


def test_awd_lstm_names() -> None:
    _, fastai = W.fastai_awd_lstm(layers=2)
    assert list(fastai) == ["encoder.weight", "encoder_dp.emb.weight",
                            "rnns.0.weight_hh_l0_raw", "rnns.0.module.weight_ih_l0", "rnns.0.module.bias_ih_l0",
                            "rnns.0.module.bias_hh_l0",
                            "rnns.1.weight_hh_l0_raw", "rnns.1.module.weight_ih_l0", "rnns.1.module.bias_ih_l0",
                            "rnns.1.module.bias_hh_l0"]
    _, bidir = W.fastai_awd_lstm(layers=1, bidir=True)
    assert "rnns.0.module.weight_hh_l0_reverse" in bidir and "rnns.0.module.weight_hh_l0" not in bidir
    _, salesforce = W.salesforce_awd_lstm(layers=1)
    assert list(salesforce) == ["encoder.weight", "rnns.0.module.weight_ih_l0", "rnns.0.module.bias_ih_l0",
                                "rnns.0.module.bias_hh_l0", "rnns.0.module.weight_hh_l0_raw", "decoder.weight",
                                "decoder.bias"]
    _, after = W.salesforce_awd_lstm(layers=1, after_forward="eval")
    assert after["rnns.0.module.weight_hh_l0"].data_ptr() == after["rnns.0.module.weight_hh_l0_raw"].data_ptr()
    _, trained = W.salesforce_awd_lstm(layers=1, after_forward="train")
    assert not torch.equal(trained["rnns.0.module.weight_hh_l0"], trained["rnns.0.module.weight_hh_l0_raw"])
    _, fastai = W.fastai_awd_lstm(layers=1)
    assert fastai["encoder.weight"].data_ptr() == fastai["encoder_dp.emb.weight"].data_ptr()  # saved once


def test_awd_lstm_raw_weight_is_what_the_lstm_uses() -> None:
    for module, raw in [(W.fastai_awd_lstm(layers=1)[0], "weight_hh_l0_raw"),
                        (W.salesforce_awd_lstm(layers=1)[0], "module.weight_hh_l0_raw")]:
        inputs = W.awd_inputs()
        with torch.no_grad():
            before = module(inputs)
            module.rnns[0].get_parameter(raw).mul_(3.0)
            assert not torch.allclose(module(inputs), before)


def test_salesforce_state_after_forward_does_not_load_into_a_fresh_model() -> None:
    fresh, _ = W.salesforce_awd_lstm()
    _, after = W.salesforce_awd_lstm(after_forward="eval")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(after, strict=True)


@pytest.mark.parametrize(("how", "extra"), [
    ("weight_norm", {"rnn.parametrizations.weight_hh_l0.original0": (64, 1),
                     "rnn.parametrizations.weight_hh_l0.original1": (64, 16)}),
    ("spectral_norm", {"rnn.parametrizations.weight_hh_l0.original": (64, 16),
                       "rnn.parametrizations.weight_hh_l0.0._u": (64,),
                       "rnn.parametrizations.weight_hh_l0.0._v": (16,)}),
    ("orthogonal", {"rnn.parametrizations.weight_hh_l0.original": (64, 16),
                    "rnn.parametrizations.weight_hh_l0.0.base": (64, 64)}),
    ("old_weight_norm", {"rnn.weight_hh_l0_g": (64, 1), "rnn.weight_hh_l0_v": (64, 16)}),
])
def test_parametrized_names(how: str, extra: dict[str, tuple[int, ...]]) -> None:
    module, state = W.parametrized_lstm(how)
    got = shapes(state)
    assert "rnn.weight_hh_l0" not in got
    assert {k: v for k, v in got.items() if "weight_hh_l0" in k} == extra
    assert W.effective_weight_hh(module).shape == (64, 16)


@pytest.mark.parametrize("name", list(W.BUILDERS))
def test_every_builder_runs_and_reloads_strictly(name: str) -> None:
    """A fresh module (a salesforce WeightDrop registers weight_hh_l0 at its first forward, so the state dict
    taken before it does not load strictly after it) with other values, loaded, computes the same."""
    module, state = W.BUILDERS[name]()
    fresh, _ = W.BUILDERS[name]()
    with torch.no_grad():
        expected = module(*W.sample_input(name))
        for parameter in fresh.parameters():
            parameter.fill_(0.25)
        fresh.load_state_dict(state, strict=True)
        got = fresh(*W.sample_input(name))
    torch.testing.assert_close(got, expected)


def _torch_lstm(effective: dict[str, torch.Tensor], hidden: int) -> nn.LSTM:
    inputs = effective["weight_ih"].shape[1]
    lstm = nn.LSTM(inputs, hidden)
    lstm.load_state_dict({"weight_ih_l0": effective["weight_ih"], "weight_hh_l0": effective["weight_hh"],
                          "bias_ih_l0": effective.get("bias_ih", torch.zeros(4 * hidden)),
                          "bias_hh_l0": effective.get("bias_hh", torch.zeros(4 * hidden))})
    return lstm


def test_effective_parameters_compute_what_the_hand_written_cells_compute() -> None:
    x = W.lstm_inputs()
    with torch.no_grad():
        per_gate, state = W.per_gate_lstm()
        torch.testing.assert_close(per_gate(x), _torch_lstm(W.effective_per_gate(state), 16)(x)[0])
        onnx, state = W.onnx_lstm()
        torch.testing.assert_close(onnx(x), _torch_lstm(W.effective_onnx(state), 16)(x)[0])
        keras, state = W.keras_ported()
        batch_major = x.transpose(0, 1)
        lstm = _torch_lstm(W.effective_keras_lstm(state), 16)
        encoded = keras.encoder.lstm_cell(batch_major)
        torch.testing.assert_close(encoded, lstm(x)[0].transpose(0, 1))
        effective_gru = W.effective_keras_gru(state)
        gru = nn.GRU(16, 16)
        gru.load_state_dict({f"{kind}_l0": tensor for kind, tensor in effective_gru.items()})
        torch.testing.assert_close(keras.decoder.gru_cell(encoded), gru(encoded.transpose(0, 1))[0].transpose(0, 1))
