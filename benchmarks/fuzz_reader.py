"""Differential fuzzing of rnninit's torch.save readers against torch.load(weights_only=True), for minutes.

Runs tests/differential.py's generators (hypothesis-free: a seeded `random.Random` per file) and mutations of the
seed corpus (every kind of file the test suite builds) through the oracle and rnninit's three reading paths
(`load_checkpoint`, `read_checkpoint`, `index_file`), in one worker process under a memory limit, and prints:
files tried (by generator), the oracle's outcome, files accepted by each reader, and disagreements by class (the
known ones by name, new ones by kind, with the file number to replay).

    .venv/bin/python benchmarks/fuzz_reader.py --minutes 10 --seed 1
    .venv/bin/python benchmarks/fuzz_reader.py --seed 1 --replay 1234 --save case.pt   # write file 1234 again

Example `i` of seed `s` is drawn from `random.Random(f"{s}:{i}")`, so a file is reproduced from its number alone.
With `--atheris-minutes M` (and the atheris package installed), the first M minutes run atheris instead: libFuzzer
mutates the seed corpus's pickles, guided by coverage of rnninit's reader, and each input (wrapped back into its
archive) goes through the same comparison; the first file of each new class is saved under --save-dir. Without
atheris, or with M = 0 (the default), nothing changes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

GENERATORS = ("pickle2", "pickle4", "zip", "legacy", "any", "mutate")
HANG_SECONDS = 90  # a worker silent for this long is killed and its current file counted as a hang


# --- the worker: one process, files one after another ----------------------------------------------------------


def _limit_memory(extra_gib: float) -> None:
    """Cap the address space at what the process maps now plus `extra_gib` (torch reserves much at import)."""
    with open("/proc/self/status") as status:
        size_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = size_kib * 1024 + int(extra_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def mutation_bases(folder: Path) -> list[bytes]:
    """The seed corpus's files that mutations start from (not its TorchScript archives: the oracle never compiles
    TorchScript from a mutated file). Legacy files hold storage keys that change from run to run."""
    import differential as d

    return [path.read_bytes() for path in d.build_corpus(folder / "corpus")
            if not path.name.startswith(d.TORCHSCRIPT_PREFIX)]


def draw_file(seed: int, index: int, corpus: list[bytes], generators: tuple[str, ...]) -> tuple[str, bytes, Any]:
    """(generator, bytes, plan or None) of file `index`."""
    import differential as d

    src = d.RandomSource(random.Random(f"{seed}:{index}"))
    generator = generators[index % len(generators)]
    if generator == "mutate":
        return generator, d.mutate_file(src, src.choice(corpus)), None
    plan, data = d.generate(src, generator)
    return generator, data, plan


def worker(args: argparse.Namespace) -> None:
    """Evaluate files from `args.start` on, one JSON line each on standard output, until the deadline."""
    warnings.simplefilter("ignore")
    import differential as d

    folder = Path(tempfile.mkdtemp(prefix="fuzz_reader_"))
    corpus = mutation_bases(folder)
    _limit_memory(args.memory_gib)
    generators = tuple(args.generators.split(","))
    index = args.start
    while time.time() < args.deadline:
        print(json.dumps({"start": index}), flush=True)
        generator, data, plan = draw_file(args.seed, index, corpus, generators)
        features = plan.features if plan is not None else d.mutation_features(data)
        foreign = plan.foreign if plan is not None else set()
        try:
            outcome = d.evaluate(data, folder, foreign=foreign, seconds=args.seconds)
        except MemoryError:
            print(json.dumps({"index": index, "generator": generator, "error": "MemoryError"}), flush=True)
            index += 1
            continue
        found = [{"kind": item.kind, "known": d.explain(features, item), "detail": item.detail[:300]}
                 for item in outcome.disagreements]
        print(json.dumps({"index": index, "generator": generator, "oracle": outcome.oracle,
                          "accepted": outcome.accepted, "found": found}), flush=True)
        index += 1


def atheris_worker(args: argparse.Namespace) -> None:
    """libFuzzer (atheris) mutates the seed corpus's data.pkl records, guided by coverage of rnninit's reader; each
    input goes back into its archive and through the comparison. Runs until the deadline."""
    import atheris  # type: ignore[import-not-found]

    warnings.simplefilter("ignore")
    with atheris.instrument_imports(include=["rnninit_cli"]):
        import rnninit_cli.formats.checkpoint
        import rnninit_cli.formats.tensorfile
        import rnninit_cli.formats.unpickle  # noqa: F401
    import io
    import zipfile

    import differential as d

    folder = Path(tempfile.mkdtemp(prefix="fuzz_reader_atheris_"))
    bases = [data for data in mutation_bases(folder) if data.startswith(b"PK")]
    seeds = folder / "seeds"
    seeds.mkdir()
    for number, data in enumerate(bases):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            (seeds / str(number)).write_bytes(archive.read(next(n for n in archive.namelist()
                                                                 if n.endswith("/data.pkl"))))
    save = Path(args.save_dir)
    save.mkdir(parents=True, exist_ok=True)
    _limit_memory(args.memory_gib)
    state = {"index": args.start, "saved": set()}

    def test_one_input(pickled: bytes) -> None:
        if time.time() >= args.deadline:
            sys.stdout.flush()
            os._exit(0)
        index = state["index"]
        state["index"] = index + 1
        data = d.replace_pickle(bases[index % len(bases)], pickled)
        try:
            print(json.dumps({"start": index}), flush=True)
            outcome = d.evaluate(data, folder, seconds=args.seconds)
            features = d.mutation_features(data)
            found = []
            for item in outcome.disagreements:
                known = d.explain(features, item)
                entry = {"kind": item.kind, "known": known, "detail": item.detail[:300]}
                if not known and item.kind not in state["saved"]:
                    state["saved"].add(item.kind)
                    path = save / f"atheris_{index}.pt"
                    path.write_bytes(data)
                    entry["detail"] = f"saved {path}: {entry['detail']}"
                found.append(entry)
            print(json.dumps({"index": index, "generator": "atheris", "oracle": outcome.oracle,
                              "accepted": outcome.accepted, "found": found}), flush=True)
        except Exception as error:  # never let libFuzzer see an exception: it would stop
            print(json.dumps({"index": index, "generator": "atheris", "error": type(error).__name__}), flush=True)

    remaining = max(1, int(args.deadline - time.time()))
    atheris.Setup([sys.argv[0], str(seeds), f"-max_total_time={remaining}", "-timeout=60", "-max_len=262144",
                   f"-artifact_prefix={folder}/", "-print_final_stats=0"], test_one_input)
    atheris.Fuzz()


# --- the parent: restarts the worker after a crash or hang, counts --------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.tried: collections.Counter[str] = collections.Counter()
        self.oracle: collections.Counter[str] = collections.Counter()
        self.accepted: collections.Counter[str] = collections.Counter()
        self.refused_torch_reads: collections.Counter[str] = collections.Counter()  # rnninit refuses, torch reads
        self.accepted_by_generator: collections.Counter[tuple[str, str]] = collections.Counter()
        self.files_with: collections.Counter[str] = collections.Counter()
        self.known: collections.Counter[str] = collections.Counter()
        self.new: collections.Counter[str] = collections.Counter()
        self.first: dict[str, tuple[int, str]] = {}
        self.worker_deaths: list[tuple[int, str]] = []

    def add(self, record: dict[str, Any]) -> None:
        generator = record["generator"]
        self.tried[generator] += 1
        if "error" in record:
            self.oracle[record["error"]] += 1
            return
        self.oracle[record["oracle"]] += 1
        for reader, ok in record["accepted"].items():
            self.accepted[reader] += ok
            self.refused_torch_reads[reader] += not ok and record["oracle"] != "refused"
            self.accepted_by_generator[(generator, reader)] += ok
        classes = set()
        for item in record["found"]:
            name = item["known"] or item["kind"]
            classes.add(("known:" if item["known"] else "NEW:") + name)
            if not item["known"]:
                self.first.setdefault(item["kind"], (record["index"], item["detail"]))
        for name in classes:
            self.files_with[name] += 1
            (self.known if name.startswith("known:") else self.new)[name.split(":", 1)[1]] += 1

    def report(self, seconds: float, seed: int) -> str:
        total = sum(self.tried.values())
        lines = [f"fuzz_reader: {total} files in {seconds:.0f} s ({total / max(seconds, 1e-9):.1f}/s), seed {seed}",
                 "files tried by generator: " + ", ".join(f"{k} {v}" for k, v in sorted(self.tried.items())),
                 "oracle: " + ", ".join(f"{k} {v}" for k, v in self.oracle.most_common()),
                 "accepted by reader: " + ", ".join(f"{k} {v}" for k, v in sorted(self.accepted.items())),
                 "refused by reader though torch reads them (allowed, not a disagreement): "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.refused_torch_reads.items()))]
        for generator in sorted(self.tried):
            counts = ", ".join(f"{reader} {self.accepted_by_generator[(generator, reader)]}"
                               for reader in ("load", "read", "index"))
            lines.append(f"  {generator:8} tried {self.tried[generator]:6}, accepted: {counts}")
        lines.append("disagreements, known classes (files): " + (", ".join(
            f"{k} {v}" for k, v in self.known.most_common()) or "none"))
        lines.append("disagreements, NEW classes (files): " + ("none" if not self.new else ""))
        for kind, count in self.new.most_common():
            index, detail = self.first[kind]
            lines.append(f"  {kind}: {count} (first: file {index}: {detail[:160]})")
        if self.worker_deaths:
            lines.append("worker deaths (file, why): " + ", ".join(f"{i} {why}" for i, why in self.worker_deaths))
        return "\n".join(lines)


def _run_worker(command: list[str], tally: Tally, first: int, quiet: bool) -> tuple[int, str, int, str, int]:
    """Run one worker until it ends: (the file it was on, "hang" or "", its exit code, the last line it wrote to
    standard error, the number of the file after its last finished one)."""
    current, following, why = first, first, ""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        assert process.stdout is not None
        while True:
            ready, _, _ = select.select([process.stdout], [], [], HANG_SECONDS)
            if not ready:
                why = "hang"
                process.kill()
                break
            line = process.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if "start" in record:
                current = record["start"]
            elif "index" in record:
                tally.add(record)
                following = record["index"] + 1
                if not quiet and record["index"] % 500 == 0:
                    print(f"... {sum(tally.tried.values())} files, new classes {len(tally.new)}", flush=True)
        code = process.wait()
        errors.seek(0)
        lines = [text.strip() for text in errors.read().splitlines() if text.strip()]
    return current, why, code, lines[-1][:160] if lines else "", following


def run(args: argparse.Namespace) -> Tally:
    started = time.time()
    deadline = started + 60 * args.minutes
    tally = Tally()
    atheris_deadline = started + 60 * min(args.atheris_minutes, args.minutes)
    if args.atheris_minutes > 0:
        try:
            import atheris  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            print("atheris is not installed: running without it", flush=True)
            atheris_deadline = started
    index = 0
    atheris_index = 10_000_000  # atheris inputs are numbered apart from the seeded files
    while time.time() < deadline:
        use_atheris = time.time() < atheris_deadline
        until = atheris_deadline if use_atheris else deadline
        command = [sys.executable, __file__, "--atheris-worker" if use_atheris else "--worker", "--seed",
                   str(args.seed), "--start", str(atheris_index if use_atheris else index), "--deadline", str(until),
                   "--memory-gib", str(args.memory_gib), "--generators", args.generators,
                   "--seconds", str(args.seconds), "--save-dir", args.save_dir]
        first = atheris_index if use_atheris else index
        current, why, code, last_error, following = _run_worker(command, tally, first, args.quiet)
        if use_atheris:
            atheris_index = following
        else:
            index = following
        if time.time() >= deadline and not why:
            break
        if use_atheris and time.time() >= atheris_deadline and not why:
            continue  # atheris's share is over: the seeded files follow
        if why or code != 0:
            tally.worker_deaths.append((current, (why or f"exit {code}") + (f" ({last_error})" if last_error else "")))
            if use_atheris:
                atheris_index = current + 1
            else:
                index = current + 1
    return tally


def replay(args: argparse.Namespace) -> None:
    """Write file `args.replay` of `args.seed` and show what the oracle and readers make of it."""
    import differential as d

    folder = Path(tempfile.mkdtemp(prefix="fuzz_reader_"))
    corpus = mutation_bases(folder)
    generator, data, plan = draw_file(args.seed, args.replay, corpus, tuple(args.generators.split(",")))
    if args.save:
        Path(args.save).write_bytes(data)
    outcome = d.evaluate(data, folder, foreign=plan.foreign if plan is not None else set())
    print(f"file {args.replay}: {generator}, {len(data)} bytes, features {sorted(plan.features) if plan else []}")
    print(f"oracle {outcome.oracle}, accepted {outcome.accepted}")
    for item in outcome.disagreements:
        print(f"  {item}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generators", default=",".join(GENERATORS),
                        help=f"comma-separated, taken in turn (default {','.join(GENERATORS)})")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="the worker's address space beyond torch's")
    parser.add_argument("--seconds", type=float, default=10.0, help="limit for one reader on one file")
    parser.add_argument("--atheris-minutes", type=float, default=0.0,
                        help="run atheris (if installed) for the first M minutes")
    parser.add_argument("--save-dir", default=str(Path(tempfile.gettempdir()) / "fuzz_reader_cases"),
                        help="where atheris's first file of each new class is saved")
    parser.add_argument("--replay", type=int, help="write and evaluate file number REPLAY, then stop")
    parser.add_argument("--save", help="with --replay: where to write the file")
    parser.add_argument("--json", help="also write the figures as JSON here")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--atheris-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.atheris_worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        (atheris_worker if args.atheris_worker else worker)(args)
        return
    if args.replay is not None:
        replay(args)
        return
    started = time.time()
    tally = run(args)
    print(tally.report(time.time() - started, args.seed))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seconds": time.time() - started, "seed": args.seed, "tried": tally.tried, "oracle": tally.oracle,
            "accepted": tally.accepted, "refused_torch_reads": tally.refused_torch_reads, "known": tally.known,
            "new": tally.new,
            "first_new": {k: list(v) for k, v in tally.first.items()}, "worker_deaths": tally.worker_deaths,
        }, indent=1))


if __name__ == "__main__":
    main()
