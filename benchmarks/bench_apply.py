"""Benchmark `rnninit apply` on a ~2.5 GB checkpoint against a naive load/init/save script and `cp`.

The checkpoint holds an embedding and a linear head (about 2.3 GB of float32 together) and a 2-layer
bidirectional LSTM with hidden size 1024. It is written as `bench.pt` (torch.save) and
`bench.safetensors`; then, per format, these are run as separate processes, interleaved, `--repeat`
times each, under `/usr/bin/time -v` (wall time and peak RSS):

    rnninit   rnninit apply IN --scheme keras --seed 0 --quiet --force -o OUT
    naive     load the whole dict, torch.nn.init per gate block of the LSTM, save the whole dict
    cp        cp IN OUT
    cp+sync   cp IN OUT && sync OUT   (information only: rnninit fsyncs its output, cp does not)

The initializer math alone (`rnninit_cli.init_` on an in-memory LSTM of the same shape) is timed
in-process, once per round, between the runs. rnninit's outputs are checked with the official loaders.
Generation is not timed; the files are deleted at the end unless --keep. Run by hand:

    .venv/bin/python benchmarks/bench_apply.py [--workdir DIR] [--repeat N] [--keep] [--scale S]

With --dcp it measures a torch.distributed.checkpoint folder instead (issue 14 §2): ~2.54 GB written by 2 gloo
ranks of an FSDP2 model (embedding, the same LSTM, a GRU, a linear head), against `rnninit apply FOLDER -o OUT`,
a naive one-process dcp.load → rnninit_cli.init_ → dcp.save script and `cp -r`; the recurrent tensors of both
outputs must be bit-identical. A folder generated in --workdir is kept there and reused by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

GB = 10**9
MB = 10**6
EMBED_DIM = 1024  # also the LSTM's input size
HIDDEN_SIZE = 1024
NUM_LAYERS = 2
GATES = 4
FULL_VOCAB = 280_000  # embedding + head at scale 1: 2 × 280000 × 1024 × 4 B ≈ 2.29 GB
DISK_NEEDED_AT_FULL_SCALE = 12 * GB
FILL_ROWS = 16_384  # rows filled per chunk while generating
COMPARE_ROWS = 32_768  # rows compared per chunk while verifying
RSS_TARGET_FRACTION = 0.25
WALL_SLACK_S = 2.0
TIME_BINARY = "/usr/bin/time"
RSS_LINE = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
FORMATS = {"pt": "bench.pt", "safetensors": "bench.safetensors"}
VARIANTS = ("rnninit", "naive", "cp", "cp+sync")
TARGET_VARIANTS = ("rnninit", "naive", "cp")
DCP_VOCAB = 285_000  # embedding + head at scale 1: 2.33 GB; with the LSTM and the GRU the folder is ≈ 2.54 GB
GRU_GATES = 3
DCP_RANKS = 2
DCP_RANK_FILES = ("__0_0.distcp", "__1_0.distcp")
DCP_INPUT = "bench-dcp"
DCP_STAMP = "bench-dcp.json"  # beside the folder: the parameters it was generated with
DCP_VARIANTS = ("rnninit", "naive", "cp")
DCP_RECURRENT = ("lstm.", "gru.")
DCP_SAVE_TIMEOUT_S = 1200  # the whole 2-rank save (a hung rendezvous ends the benchmark instead of hanging it)
DCP_RENDEZVOUS_TIMEOUT_S = 300
DCP_DISK_NEEDED_AT_FULL_SCALE = 11 * GB  # the input, rnninit's and the naive script's outputs, cp's copy

# Used when /usr/bin/time is missing: run the command as our child and report its peak RSS the way
# `time -v` does. RUSAGE_CHILDREN of this short-lived wrapper covers that one command only.
RUSAGE_WRAPPER = """\
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"Maximum resident set size (kbytes): {peak_kb}\\n")
sys.exit(code)
"""


class BenchmarkError(Exception):
    """A step of the benchmark failed (not a slow result: timings are reported, never asserted)."""


@dataclass
class Sample:
    wall_s: float
    peak_rss_mb: float


@dataclass
class FormatResult:
    fmt: str
    input_bytes: int
    output_bytes: int = 0
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    math_s: list[float] = field(default_factory=list)  # the initializer math alone, in-process

    def median_wall(self, variant: str) -> float:
        return statistics.median(s.wall_s for s in self.samples[variant])

    @property
    def median_math(self) -> float:
        return statistics.median(self.math_s)

    def excess_per_round(self, baseline: str) -> list[float]:
        """rnninit's wall minus (`baseline`'s wall + the math) in each round: pairs runs made moments apart."""
        return [r.wall_s - b.wall_s - m for r, b, m in
                zip(self.samples["rnninit"], self.samples[baseline], self.math_s, strict=True)]

    def median_rss(self, variant: str) -> float:
        return statistics.median(s.peak_rss_mb for s in self.samples[variant])


# --------------------------------------------------------------------------------------------------
# The naive script, run as its own process through this file's hidden --run-naive option.


def run_naive(source: Path, target: Path) -> None:
    """What a user would write: load everything, torch.nn.init each LSTM gate block, save everything."""
    import torch

    safetensors = source.suffix == ".safetensors"
    if safetensors:
        from safetensors.torch import load_file, save_file

        state = load_file(source)
    else:
        state = torch.load(source, weights_only=True)
    with torch.no_grad():
        for name, tensor in state.items():
            if not name.startswith("lstm."):
                continue
            rows = tensor.shape[0] // GATES
            blocks = [tensor[gate * rows:(gate + 1) * rows] for gate in range(GATES)]
            if ".weight_ih" in name:
                for block in blocks:
                    torch.nn.init.xavier_uniform_(block)
            elif ".weight_hh" in name:
                for block in blocks:
                    torch.nn.init.orthogonal_(block)
            elif ".bias" in name:
                torch.nn.init.zeros_(tensor)
                if ".bias_ih" in name:
                    torch.nn.init.ones_(blocks[1])  # forget gate (i, f, g, o)
    if safetensors:
        save_file(state, target)
    else:
        torch.save(state, target)


# --------------------------------------------------------------------------------------------------
# Generating the checkpoint (not timed).


def vocab_size(scale: float) -> int:
    return max(1, round(FULL_VOCAB * scale))


def estimated_bytes(scale: float) -> int:
    vocab = vocab_size(scale)
    lstm = 0
    for layer in range(NUM_LAYERS):
        input_size = EMBED_DIM if layer == 0 else 2 * HIDDEN_SIZE
        lstm += 2 * GATES * HIDDEN_SIZE * (input_size + HIDDEN_SIZE + 2)
    return 4 * (2 * vocab * EMBED_DIM + vocab + lstm)


def lstm_state() -> dict[str, torch.Tensor]:
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(EMBED_DIM, HIDDEN_SIZE, num_layers=NUM_LAYERS, bidirectional=True)
    return {name: tensor.detach().clone() for name, tensor in lstm.state_dict().items()}


def filled(rows: int, cols: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """A (rows, cols) float32 tensor of N(0, std²), filled in place chunk by chunk (no 2× memory)."""
    import torch

    tensor = torch.empty(rows, cols, dtype=torch.float32)
    for start in range(0, rows, FILL_ROWS):
        tensor[start:start + FILL_ROWS].normal_(0.0, std, generator=generator)
    return tensor


def input_paths(workdir: Path) -> dict[str, Path]:
    return {fmt: workdir / name for fmt, name in FORMATS.items()}


def generate(paths: dict[str, Path], scale: float) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    vocab = vocab_size(scale)
    state: dict[str, torch.Tensor] = {"embedding.weight": filled(vocab, EMBED_DIM, 1.0, generator)}
    state |= {f"lstm.{name}": tensor for name, tensor in lstm_state().items()}
    state["head.weight"] = filled(vocab, EMBED_DIM, 0.02, generator)
    state["head.bias"] = torch.zeros(vocab)
    torch.save(state, paths["pt"])
    save_file(state, paths["safetensors"])


# --------------------------------------------------------------------------------------------------
# Measuring.


def time_tool() -> str | None:
    if Path(TIME_BINARY).exists():
        return TIME_BINARY
    print(f"note: {TIME_BINARY} is missing (install it with `apt-get install time`); measuring peak RSS "
          "with resource.getrusage(RUSAGE_CHILDREN) in a wrapper process instead", file=sys.stderr)
    return None


def measure(command: list[str], timer: str | None) -> Sample:
    """Run `command` once; its wall time (here) and peak RSS (from `time -v` or the wrapper)."""
    wrapped = [timer, "-v", *command] if timer else [sys.executable, "-c", RUSAGE_WRAPPER, *command]
    start = time.perf_counter()
    done = subprocess.run(wrapped, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BenchmarkError(f"`{' '.join(command)}` failed with status {done.returncode}:\n{tail}")
    match = RSS_LINE.search(done.stderr)
    if match is None:
        raise BenchmarkError(f"no peak RSS in the output of `{' '.join(command)}`:\n{done.stderr[-2000:]}")
    return Sample(wall, int(match.group(1)) * 1024 / MB)


def variant_command(variant: str, source: Path, target: Path) -> list[str]:
    if variant == "rnninit":
        rnninit = Path(sys.executable).parent / "rnninit"
        program = str(rnninit) if rnninit.exists() else shutil.which("rnninit")
        if program is None:
            raise BenchmarkError("the rnninit console script is not installed next to this Python or on PATH")
        return [program, "apply", str(source), "--scheme", "keras", "--seed", "0", "--quiet", "--force",
                "-o", str(target)]
    if variant == "naive":
        return [sys.executable, str(Path(__file__).resolve()), "--run-naive", str(source), str(target)]
    if variant == "cp":
        return ["cp", str(source), str(target)]
    if variant == "cp+sync":
        return ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(source), str(target)]
    raise ValueError(variant)


def output_path(source: Path, variant: str) -> Path:
    tag = variant.replace("+", "-")
    return source.with_name(f"out-{tag}{source.suffix}")


def bench_format(fmt: str, source: Path, variants: tuple[str, ...], repeat: int, timer: str | None) -> FormatResult:
    """Interleave the variants (and the in-process math) `repeat` times; keep rnninit's last output."""
    result = FormatResult(fmt, source.stat().st_size, samples={v: [] for v in variants})
    for round_index in range(repeat):
        for variant in variants:
            target = output_path(source, variant)
            target.unlink(missing_ok=True)
            os.sync()  # so that one run's pending write-back is not billed to the next (not timed)
            sample = measure(variant_command(variant, source, target), timer)
            result.samples[variant].append(sample)
            print(f"  {fmt:<11} round {round_index + 1}/{repeat}  {variant:<8} {sample.wall_s:7.2f} s "
                  f"{sample.peak_rss_mb:8.0f} MB", flush=True)
            if variant == "rnninit":
                result.output_bytes = target.stat().st_size
            else:
                target.unlink()  # keep the disk use down; only rnninit's output is verified
        result.math_s.append(time_math())
        print(f"  {fmt:<11} round {round_index + 1}/{repeat}  {'math':<8} {result.math_s[-1]:7.2f} s "
              "(in-process)", flush=True)
    return result


def time_math() -> float:
    """Seconds of rnninit_cli.init_(keras) on the state dict of an in-memory LSTM of the benchmark's shape."""
    import rnninit_cli

    state = lstm_state()
    start = time.perf_counter()
    rnninit_cli.init_(state, "keras", seed=0)
    return time.perf_counter() - start


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def time_torch_import(repeat: int) -> float:
    """Median wall time of a bare `python -c 'import torch'` (rnninit's fixed start-up cost)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# Verifying rnninit's output with the official loaders.


def lstm_names(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith("lstm.")]


def check_lstm(name: str, tensor: torch.Tensor, original: torch.Tensor) -> None:
    import torch

    if tensor.shape != original.shape or tensor.dtype != original.dtype:
        raise BenchmarkError(f"{name}: shape or dtype changed")
    rows = tensor.shape[0] // GATES
    if ".weight_hh" in name:
        matrix = tensor.double()
        error = (matrix.T @ matrix - torch.eye(matrix.shape[1], dtype=torch.float64)).abs().max().item()
        if error > 1e-4:
            raise BenchmarkError(f"{name}: WᵀW differs from I by {error:.2e}")
    elif ".weight_ih" in name:
        if torch.equal(tensor, original):
            raise BenchmarkError(f"{name}: unchanged")
    elif ".bias_ih" in name:
        expected = torch.zeros_like(tensor)
        expected[rows:2 * rows] = 1.0
        if not torch.equal(tensor, expected):
            raise BenchmarkError(f"{name}: not 0 with forget gate 1")
    elif ".bias_hh" in name and tensor.count_nonzero().item():
        raise BenchmarkError(f"{name}: not 0")


def equal_in_chunks(name: str, read: Any, original: Any, rows: int) -> None:
    """Compare an untouched tensor row chunk by row chunk (both sides are mmap-backed or slices)."""
    import torch

    for start in range(0, rows, COMPARE_ROWS):
        left = read[start:start + COMPARE_ROWS]
        right = original[start:start + COMPARE_ROWS]
        if not torch.equal(left, right):
            raise BenchmarkError(f"{name}: rows {start}..{start + COMPARE_ROWS} differ from the input")


def verify_pt(source: Path, output: Path) -> list[str]:
    import json

    import torch

    written = torch.load(output, weights_only=True, mmap=True)
    original = torch.load(source, weights_only=True, mmap=True)
    if list(written) != list(original):
        raise BenchmarkError("the output's keys differ from the input's")
    for name, tensor in written.items():
        if name.startswith("lstm."):
            check_lstm(name, tensor, original[name])
        else:
            equal_in_chunks(name, tensor, original[name], tensor.shape[0])
    with zipfile.ZipFile(output) as archive:
        record = next(n for n in archive.namelist() if n.endswith("/rnninit.json"))
        metadata = json.loads(archive.read(record))
    if metadata.get("rnninit.seed") != "0" or metadata.get("rnninit.scheme") != "keras":
        raise BenchmarkError(f"unexpected rnninit record: {metadata}")
    return [f"torch.load(weights_only=True, mmap=True) reads {len(written)} tensors",
            "every non-LSTM tensor equals the input's (compared in full)",
            f"{len(lstm_names(list(written)))} LSTM tensors: each weight_hh has WᵀW = I (max |err| ≤ 1e-4), "
            "weight_ih redrawn, bias_ih 0 with forget gate 1, bias_hh 0",
            f"{record} records seed 0, scheme keras"]


def verify_safetensors(source: Path, output: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(output, framework="pt") as written, safe_open(source, framework="pt") as original:
        names = list(written.keys())
        if sorted(names) != sorted(original.keys()):
            raise BenchmarkError("the output's keys differ from the input's")
        for name in names:
            if name.startswith("lstm."):
                check_lstm(name, written.get_tensor(name), original.get_tensor(name))
            else:
                rows = written.get_slice(name).get_shape()[0]
                equal_in_chunks(name, written.get_slice(name), original.get_slice(name), rows)
        metadata = written.metadata() or {}
    if metadata.get("rnninit.seed") != "0" or metadata.get("rnninit.scheme") != "keras":
        raise BenchmarkError(f"unexpected safetensors metadata: {metadata}")
    return [f"safetensors.safe_open reads {len(names)} tensors",
            "every non-LSTM tensor equals the input's (compared in full, by slices)",
            f"{len(lstm_names(names))} LSTM tensors: each weight_hh has WᵀW = I (max |err| ≤ 1e-4), "
            "weight_ih redrawn, bias_ih 0 with forget gate 1, bias_hh 0",
            "metadata records seed 0, scheme keras"]


# --------------------------------------------------------------------------------------------------
# The DCP case (--dcp, issue 14 §2): a torch.distributed.checkpoint folder written by 2 FSDP2 ranks.


def dcp_vocab(scale: float) -> int:
    return max(2, 2 * round(DCP_VOCAB * scale / 2))  # even: FSDP2 splits the rows evenly, no padding


def dcp_estimated_bytes(scale: float) -> int:
    vocab = dcp_vocab(scale)
    lstm_bytes = estimated_bytes(1.0) - 4 * (2 * FULL_VOCAB * EMBED_DIM + FULL_VOCAB)
    gru = GRU_GATES * HIDDEN_SIZE * (2 * HIDDEN_SIZE + HIDDEN_SIZE + 2)
    return lstm_bytes + 4 * (2 * vocab * EMBED_DIM + vocab + gru)


def dcp_model(vocab: int) -> torch.nn.Module:
    """The DCP case's model, on the current default device: an embedding, the .pt case's LSTM, a GRU on its
    output and a linear head. Only the LSTM and the GRU are recurrent; the embedding and head stay untouched."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(vocab, EMBED_DIM)
            self.lstm = torch.nn.LSTM(EMBED_DIM, HIDDEN_SIZE, num_layers=NUM_LAYERS, bidirectional=True)
            self.gru = torch.nn.GRU(2 * HIDDEN_SIZE, HIDDEN_SIZE)
            self.head = torch.nn.Linear(HIDDEN_SIZE, vocab)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # FSDP2's fully_shard hooks a forward
            return self.head(self.gru(self.lstm(self.embedding(tokens))[0])[0])

    return Net()


def dcp_save_rank(rank: int, folder: str, store: str, vocab: int) -> None:
    """One of the 2 gloo ranks: the model built on `meta`, sharded with fully_shard, each rank filling its own
    rows from a seeded generator (nobody holds the whole model), then dcp.save."""
    import datetime

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=DCP_RANKS,
                            timeout=datetime.timedelta(seconds=DCP_RENDEZVOUS_TIMEOUT_S))
    try:
        with torch.device("meta"):
            net = dcp_model(vocab)
        for part in (net.lstm, net.gru):
            fully_shard(part)
        fully_shard(net)
        net.to_empty(device="cpu")
        with torch.no_grad():
            for index, (name, parameter) in enumerate(sorted(net.named_parameters())):
                generator = torch.Generator().manual_seed(1000 * index + rank)
                std = 1.0 if name.startswith("embedding.") else 0.02
                local = parameter.to_local()
                for start in range(0, local.shape[0], FILL_ROWS):
                    local[start:start + FILL_ROWS].normal_(0.0, std, generator=generator)
        dcp.save(net.state_dict(), checkpoint_id=folder)
    finally:
        dist.destroy_process_group()


def run_dcp_save(folder: Path, store: Path, vocab: int) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(dcp_save_rank, args=(str(folder), str(store), vocab), nprocs=DCP_RANKS, start_method="fork")


def run_naive_dcp(source: Path, target: Path, vocab: int) -> None:
    """What a user would write for a DCP folder, in one process: an unsharded model of the same modules (built on
    `meta`, then to_empty, so no time goes to torch's default init), dcp.load, rnninit_cli.init_, dcp.save."""
    import torch
    import torch.distributed.checkpoint as dcp

    import rnninit_cli

    with torch.device("meta"):
        net = dcp_model(vocab)
    net.to_empty(device="cpu")
    dcp.load(net.state_dict(), checkpoint_id=source, no_dist=True)
    rnninit_cli.init_(net, "keras", seed=0)
    dcp.save(net.state_dict(), checkpoint_id=target, no_dist=True)


def generate_dcp(folder: Path, vocab: int) -> None:
    """Write the 2-rank folder, or reuse the one a previous run left with the same parameters (the stamp beside it
    is written last, so an interrupted generation is never reused)."""
    stamp = folder.with_name(DCP_STAMP)
    wanted = {"vocab": vocab, "ranks": DCP_RANKS, "embed": EMBED_DIM, "hidden": HIDDEN_SIZE, "layers": NUM_LAYERS}
    try:
        if folder.is_dir() and json.loads(stamp.read_text()) == wanted:
            print(f"reusing {folder} (generated by an earlier run with the same parameters)", flush=True)
            return
    except (OSError, ValueError):
        pass
    stamp.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {folder} on {DCP_RANKS} gloo ranks (FSDP2, not timed)...", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        command = [sys.executable, str(Path(__file__).resolve()), "--run-dcp-save", str(folder),
                   str(Path(scratch) / "store"), str(vocab)]
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        # A session of its own, so that a timeout ends the launcher and both ranks together (and nothing else).
        process = subprocess.Popen(command, env=environment, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = process.communicate(timeout=DCP_SAVE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise BenchmarkError(f"the 2-rank save did not finish within {DCP_SAVE_TIMEOUT_S} s") from None
    if process.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise BenchmarkError(f"the 2-rank save failed with status {process.returncode}:\n{tail}")
    missing = [name for name in (".metadata", *DCP_RANK_FILES) if not (folder / name).is_file()]
    if missing:
        raise BenchmarkError(f"the 2-rank save did not write {', '.join(missing)} in {folder}")
    stamp.write_text(json.dumps(wanted) + "\n")
    print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def dcp_command(variant: str, source: Path, target: Path, scale: float) -> list[str]:
    if variant == "naive":
        return [sys.executable, str(Path(__file__).resolve()), "--run-naive-dcp", str(source), str(target),
                "--scale", str(scale)]
    if variant == "cp":
        return ["cp", "-r", str(source), str(target)]
    return variant_command(variant, source, target)


def bench_dcp(source: Path, repeat: int, scale: float, timer: str | None) -> FormatResult:
    """Interleave rnninit, the naive script and `cp -r` `repeat` times; keep rnninit's and naive's last outputs."""
    result = FormatResult("dcp", folder_bytes(source), samples={v: [] for v in DCP_VARIANTS})
    for round_index in range(repeat):
        for variant in DCP_VARIANTS:
            target = output_path(source, variant)
            shutil.rmtree(target, ignore_errors=True)
            os.sync()  # so that one run's pending write-back is not billed to the next (not timed)
            sample = measure(dcp_command(variant, source, target, scale), timer)
            result.samples[variant].append(sample)
            print(f"  dcp  round {round_index + 1}/{repeat}  {variant:<8} {sample.wall_s:7.2f} s "
                  f"{sample.peak_rss_mb:8.0f} MB", flush=True)
            if variant == "rnninit":
                result.output_bytes = folder_bytes(target)
            elif variant == "cp":
                shutil.rmtree(target)
    return result


def dcp_tensors(folder: Path, names: list[str], sizes: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`names` read from a DCP folder by torch's own reader (dcp.load into empty tensors of the recorded shapes)."""
    import torch
    import torch.distributed.checkpoint as dcp

    state = {name: torch.empty(tuple(sizes[name].size), dtype=sizes[name].properties.dtype) for name in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=folder, no_dist=True)
    return state


def same_bits(left: torch.Tensor, right: torch.Tensor) -> bool:
    import torch

    return left.shape == right.shape and left.dtype == right.dtype and torch.equal(
        left.contiguous().reshape(-1).view(torch.uint8), right.contiguous().reshape(-1).view(torch.uint8))


def check_gru(name: str, tensor: torch.Tensor, original: torch.Tensor) -> None:
    import torch

    if ".weight_hh" in name:
        matrix = tensor.double()
        error = (matrix.T @ matrix - torch.eye(matrix.shape[1], dtype=torch.float64)).abs().max().item()
        if error > 1e-4:
            raise BenchmarkError(f"{name}: WᵀW differs from I by {error:.2e}")
    elif ".weight_ih" in name:
        if torch.equal(tensor, original):
            raise BenchmarkError(f"{name}: unchanged")
    elif tensor.count_nonzero().item():
        raise BenchmarkError(f"{name}: not 0")


def verify_dcp(source: Path, rnninit_output: Path, naive_output: Path) -> tuple[bool, list[str]]:
    """(whether the recurrent tensors of both outputs are bit-identical, the lines of the other checks, which
    raise when they fail). Everything is read with torch's dcp.load, one non-recurrent tensor at a time."""
    import torch.distributed.checkpoint as dcp

    sizes = dcp.FileSystemReader(source).read_metadata().state_dict_metadata
    names = sorted(sizes)
    recurrent = [name for name in names if name.startswith(DCP_RECURRENT)]
    ours = dcp_tensors(rnninit_output, recurrent, sizes)
    theirs = dcp_tensors(naive_output, recurrent, sizes)
    original = dcp_tensors(source, recurrent, sizes)
    differing = [name for name in recurrent if not same_bits(ours[name], theirs[name])]
    for name in recurrent:
        check = check_lstm if name.startswith("lstm.") else check_gru
        check(name, ours[name], original[name])
    del ours, theirs, original
    for name in names:
        if name in recurrent:
            continue
        kept = dcp_tensors(source, [name], sizes)[name]
        for output in (rnninit_output, naive_output):
            if not same_bits(dcp_tensors(output, [name], sizes)[name], kept):
                raise BenchmarkError(f"{name} in {output} differs from the input's")
        del kept
    recorded = json.loads((rnninit_output / "rnninit.json").read_text())
    if recorded.get("rnninit.seed") != "0" or recorded.get("rnninit.scheme") != "keras":
        raise BenchmarkError(f"unexpected rnninit record: {recorded}")
    if differing:
        lines = [f"recurrent tensors of rnninit's and the naive script's outputs: {len(differing)} of "
                 f"{len(recurrent)} DIFFER ({', '.join(differing[:6])})"]
    else:
        lines = [f"recurrent tensors of rnninit's and the naive script's outputs: all {len(recurrent)} "
                 "bit-identical (dcp.load of each folder)"]
    lines += [f"{len(names) - len(recurrent)} non-recurrent tensors of both outputs equal the input's (dcp.load)",
              f"{len(recurrent)} recurrent tensors of rnninit's output: each weight_hh has WᵀW = I "
              "(max |err| ≤ 1e-4), weight_ih redrawn, LSTM bias_ih 0 with forget gate 1, other biases 0",
              "rnninit.json records seed 0, scheme keras"]
    return not differing, lines


def pass_fail(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "FAIL"


def report_dcp(result: FormatResult, source: Path, identical: bool, load: list[str]) -> None:
    size_mb = result.input_bytes / MB
    files = ", ".join(f"{name} {(source / name).stat().st_size:,} B" for name in (*DCP_RANK_FILES, ".metadata"))
    print()
    print(f"load average (1, 5, 15 min) at start / end: {load[0]} / {load[-1]}")
    print(f"dcp: input folder {size_mb:,.0f} MB ({result.input_bytes:,} B: {files}); rnninit output "
          f"{result.output_bytes:,} B; medians of {len(result.samples['rnninit'])} interleaved runs")
    print(f"  {'variant':<9} {'wall s':>8} {'min–max s':>13} {'peak RSS MB':>12} {'RSS/folder':>11}")
    for variant, samples in result.samples.items():
        walls = [s.wall_s for s in samples]
        label = "cp -r" if variant == "cp" else variant
        print(f"  {label:<9} {result.median_wall(variant):8.2f} {min(walls):6.2f}–{max(walls):<6.2f} "
              f"{result.median_rss(variant):12.0f} {result.median_rss(variant) / size_mb:11.3f}")
    rss_ratio = result.median_rss("rnninit") / size_mb
    wall_ratio = result.median_wall("rnninit") / result.median_wall("naive")
    print("  targets:")
    print(f"    rnninit peak RSS / folder size {rss_ratio:.3f} (target ≤ {RSS_TARGET_FRACTION}): "
          f"{pass_fail(rss_ratio, RSS_TARGET_FRACTION)} ({result.median_rss('rnninit'):.0f} MB vs "
          f"{RSS_TARGET_FRACTION * size_mb:.0f} MB)")
    print(f"    rnninit wall / naive wall {wall_ratio:.2f} (target ≤ 1.00): {pass_fail(wall_ratio, 1.0)} "
          f"({result.median_wall('rnninit'):.2f} s vs {result.median_wall('naive'):.2f} s)")
    print(f"    (information: rnninit/naive peak RSS {result.median_rss('rnninit') / result.median_rss('naive'):.3f}, "
          f"rnninit/cp -r wall {result.median_wall('rnninit') / result.median_wall('cp'):.2f})")
    print(f"  outputs agree (recurrent tensors bit-identical): {'PASS' if identical else 'FAIL'}")
    print("  output checks:")
    for line in result.checks:
        print(f"    ok: {line}" if "DIFFER" not in line else f"    FAILED: {line}")


def main_dcp(args: argparse.Namespace, timer: str | None) -> None:
    made_workdir = args.workdir is None
    workdir: Path = Path(tempfile.mkdtemp(prefix="rnninit-bench-", dir="/tmp")) if made_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / DCP_INPUT
    outputs = [output_path(source, variant) for variant in DCP_VARIANTS]
    try:
        needed = DCP_DISK_NEEDED_AT_FULL_SCALE * dcp_estimated_bytes(args.scale) / dcp_estimated_bytes(1.0)
        free = shutil.disk_usage(workdir).free + (folder_bytes(source) if source.is_dir() else 0)
        if free < needed:
            raise BenchmarkError(f"{workdir} has {free / GB:.1f} GB free; this run needs {needed / GB:.1f} GB "
                                 "(the input, two outputs and a copy). Pass --workdir on a larger disk or a "
                                 "smaller --scale.")
        print(f"workdir {workdir}; DCP folder of ~{dcp_estimated_bytes(args.scale) / GB:.2f} GB", flush=True)
        generate_dcp(source, dcp_vocab(args.scale))
        load = [load_average()]
        result = bench_dcp(source, args.repeat, args.scale, timer)
        identical, result.checks = verify_dcp(source, output_path(source, "rnninit"), output_path(source, "naive"))
        load.append(load_average())
        report_dcp(result, source, identical, load)
    except BenchmarkError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        if args.keep:
            print(f"\nkept the files in {workdir}")
        elif made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # the input stays for the next run (see generate_dcp); the outputs go
            for path in outputs:
                shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Reporting.


def verdict(value: float, limit: float, unit: str) -> str:
    if value <= limit:
        return f"met ({value:.2f} {unit} ≤ {limit:.2f} {unit})"
    return f"MISSED by {value - limit:.2f} {unit} ({value / limit:.2f}× the limit {limit:.2f} {unit})"


def report(results: list[FormatResult], math_first: float, torch_import: float, load: list[str]) -> None:
    print()
    print(f"load average (1, 5, 15 min) at start / end: {load[0]} / {load[-1]}; first (cold) init_ call "
          f"{math_first:.2f} s; bare `python -c 'import torch'`: {torch_import:.2f} s")
    for result in results:
        size_mb = result.input_bytes / MB
        math_s = result.median_math
        print()
        print(f"{result.fmt}: input {size_mb:,.0f} MB ({result.input_bytes:,} B), rnninit output "
              f"{result.output_bytes:,} B; medians of {len(result.samples['rnninit'])} interleaved runs")
        print(f"  {'variant':<9} {'wall s':>8} {'min–max s':>13} {'peak RSS MB':>12} {'RSS/file':>9}")
        for variant, samples in result.samples.items():
            walls = [s.wall_s for s in samples]
            print(f"  {variant:<9} {result.median_wall(variant):8.2f} {min(walls):6.2f}–{max(walls):<6.2f} "
                  f"{result.median_rss(variant):12.0f} {result.median_rss(variant) / size_mb:9.3f}")
        print(f"  {'math':<9} {math_s:8.2f} {min(result.math_s):6.2f}–{max(result.math_s):<6.2f} "
              f"{'(in-process rnninit_cli.init_ on the LSTM alone)':>12}")
        rnninit_wall = result.median_wall("rnninit")
        print(f"  rnninit/naive wall {rnninit_wall / result.median_wall('naive'):.2f}, rnninit/cp wall "
              f"{rnninit_wall / result.median_wall('cp'):.2f}, rnninit/naive peak RSS "
              f"{result.median_rss('rnninit') / result.median_rss('naive'):.3f}")
        print("  targets:")
        print(f"    peak RSS ≤ {RSS_TARGET_FRACTION} × file size: "
              f"{verdict(result.median_rss('rnninit'), RSS_TARGET_FRACTION * size_mb, 'MB')}")
        print(f"    wall ≤ naive: {verdict(rnninit_wall, result.median_wall('naive'), 's')}")
        limit = result.median_wall("cp") + math_s + WALL_SLACK_S
        print(f"    wall ≤ cp + math + {WALL_SLACK_S:.0f} s: {verdict(rnninit_wall, limit, 's')}")
        if "cp+sync" in result.samples:
            print(f"    (information: wall ≤ cp+sync + math + {WALL_SLACK_S:.0f} s: "
                  f"{verdict(rnninit_wall, result.median_wall('cp+sync') + math_s + WALL_SLACK_S, 's')})")
        for baseline in ("cp", "cp+sync"):
            if baseline in result.samples:
                excess = result.excess_per_round(baseline)
                print(f"    (information: rnninit − {baseline} − math, paired per round: median "
                      f"{statistics.median(excess):+.2f} s, range {min(excess):+.2f}…{max(excess):+.2f} s; "
                      f"allowance {WALL_SLACK_S:.0f} s)")
        print("  output checks:")
        for line in result.checks:
            print(f"    ok: {line}")


# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="folder for the checkpoints (default: a new one under /tmp)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant, interleaved (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and rnninit's outputs")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="scale of the embedding and head (0.05 for a quick check of this script)")
    parser.add_argument("--no-cp-sync", action="store_true", help="skip the informational cp+sync variant")
    parser.add_argument("--dcp", action="store_true",
                        help="measure a 2-rank torch.distributed.checkpoint folder instead of .pt/.safetensors")
    parser.add_argument("--run-naive", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--run-naive-dcp", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dcp-save", nargs=3, metavar=("FOLDER", "STORE", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1 or args.scale <= 0:
        parser.error("--repeat must be ≥ 1 and --scale > 0")
    return args


def check_disk(workdir: Path, scale: float) -> None:
    needed = DISK_NEEDED_AT_FULL_SCALE * estimated_bytes(scale) / estimated_bytes(1.0)
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise SystemExit(f"error: {workdir} has {free / GB:.1f} GB free; this run needs {needed / GB:.1f} GB "
                         "(two inputs and two outputs). Pass --workdir on a larger disk or a smaller --scale.")


def main() -> None:
    args = parse_args()
    if args.run_naive:
        run_naive(*args.run_naive)
        return
    if args.run_naive_dcp:
        run_naive_dcp(*args.run_naive_dcp, dcp_vocab(args.scale))
        return
    if args.run_dcp_save:
        folder, store, vocab = args.run_dcp_save
        run_dcp_save(Path(folder), Path(store), int(vocab))
        return
    timer = time_tool()
    if args.dcp:
        main_dcp(args, timer)
        return
    made_workdir = args.workdir is None
    workdir: Path = Path(tempfile.mkdtemp(prefix="rnninit-bench-", dir="/tmp")) if made_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    variants = TARGET_VARIANTS if args.no_cp_sync else VARIANTS
    paths = input_paths(workdir)
    created = [*paths.values(), *(output_path(path, v) for path in paths.values() for v in VARIANTS)]
    try:
        check_disk(workdir, args.scale)
        print(f"workdir {workdir}; generating ~{estimated_bytes(args.scale) / GB:.2f} GB per format "
              "(not timed)...", flush=True)
        start = time.perf_counter()
        generate(paths, args.scale)
        print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)
        load = [load_average()]
        math_first = time_math()  # the first call pays for lazy imports; the interleaved ones do not
        torch_import = time_torch_import(args.repeat)
        results = []
        for fmt, path in paths.items():
            result = bench_format(fmt, path, variants, args.repeat, timer)
            verify = verify_pt if fmt == "pt" else verify_safetensors
            result.checks = verify(path, output_path(path, "rnninit"))
            results.append(result)
        load.append(load_average())
        report(results, math_first, torch_import, load)
    except BenchmarkError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        if args.keep:
            print(f"\nkept the files in {workdir}")
        elif made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for path in created:
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
