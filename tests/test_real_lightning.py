"""A checkpoint written by Lightning itself (`Trainer.save_checkpoint` after real Adam steps), read and rewritten
through a real `rnninit` process, then loaded back by Lightning and run. Its optimizer state is neither a layer
nor a look-alike, is kept byte for byte, and is called stale because it holds Adam moments for the rewritten
parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

lightning = pytest.importorskip("lightning")

HIDDEN = 24


class Tagger(lightning.LightningModule):
    """A sequence tagger as people write them: embedding, bidirectional 2-layer LSTM, linear head."""

    def __init__(self, vocabulary: int = 40, tags: int = 5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocabulary, 12)
        self.encoder = nn.LSTM(12, HIDDEN, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * HIDDEN, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens))[0])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
        tokens, tags = batch
        return nn.functional.cross_entropy(self(tokens).flatten(0, 1), tags.flatten())

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(0, 40, (32, 10)), torch.randint(0, 5, (32, 10)))
    trainer = lightning.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Tagger(), torch.utils.data.DataLoader(data, batch_size=8))
    path = tmp_path_factory.mktemp("lightning") / "tagger.ckpt"
    trainer.save_checkpoint(path)
    return path


def rnninit(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rnninit_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)


def test_inspect_finds_the_lstm_and_no_optimizer_look_alike(lightning_ckpt: Path) -> None:
    done = rnninit("inspect", lightning_ckpt, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    layers = [(layer["prefix"], layer["layer"], layer["direction"]) for layer in document["layers"]]
    assert sorted(layers) == [("state_dict/encoder.", index, direction) for index in (0, 1)
                              for direction in ("forward", "reverse")], layers
    assert document["suspects"] == [], document["suspects"]
    human = rnninit("inspect", lightning_ckpt)
    assert human.returncode == 0 and "optimizer_states" not in human.stdout + human.stderr, human.stderr


def test_apply_rewrites_only_the_lstm_and_lightning_loads_the_result(lightning_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "keras.ckpt"
    done = rnninit("apply", lightning_ckpt, "--scheme", "keras", "--seed", "4", "-o", out)
    assert done.returncode == 0, done.stderr
    stale = [line for line in done.stderr.splitlines() if line.startswith("warning:") and "optimizer" in line]
    assert len(stale) == 1 and "optimizer_states" in stale[0] and "stale" in stale[0], done.stderr
    assert "not recognised" not in done.stderr
    before = torch.load(lightning_ckpt, weights_only=False)
    after = torch.load(out, weights_only=False)
    assert before.keys() == after.keys()
    changed = {name for name, value in before["state_dict"].items()
               if not torch.equal(value, after["state_dict"][name])}
    assert changed == {name for name in before["state_dict"] if name.startswith("encoder.")}
    moments = [(name, tensor) for state in before["optimizer_states"][0]["state"].values()
               for name, tensor in state.items() if isinstance(tensor, torch.Tensor)]
    assert moments
    for index, state in before["optimizer_states"][0]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, after["optimizer_states"][0]["state"][index][name]), (index, name)
    assert after["hyper_parameters"] == before["hyper_parameters"]
    # Keras: the recurrent kernel of each direction is orthogonal as a whole (4h × h, columns orthonormal)
    kernel = after["state_dict"]["encoder.weight_hh_l1_reverse"].double()
    assert torch.allclose(kernel.T @ kernel, torch.eye(HIDDEN, dtype=torch.float64), atol=1e-5)
    model = Tagger.load_from_checkpoint(out)
    assert model(torch.randint(0, 40, (2, 7))).shape == (2, 7, 5)


def test_drop_optimizer_state_leaves_a_checkpoint_lightning_resumes(lightning_ckpt: Path, tmp_path: Path) -> None:
    """The warning's advice, followed: the moments go, the learning rate stays, and `fit(ckpt_path=...)` resumes
    (a checkpoint without `optimizer_states` makes Lightning refuse to resume)."""
    out = tmp_path / "fresh.ckpt"
    done = rnninit("apply", lightning_ckpt, "--scheme", "keras", "--seed", "4", "--drop-optimizer-state", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "stale" not in done.stderr
    before, after = torch.load(lightning_ckpt, weights_only=False), torch.load(out, weights_only=False)
    assert [state["state"] for state in after["optimizer_states"]] == [{}]
    assert after["optimizer_states"][0]["param_groups"] == before["optimizer_states"][0]["param_groups"]
    torch.manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randint(0, 40, (16, 10)), torch.randint(0, 5, (16, 10)))
    trainer = lightning.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Tagger(), torch.utils.data.DataLoader(data, batch_size=8), ckpt_path=out)
    assert trainer.global_step == 4  # resumed at step 3, trained one more
