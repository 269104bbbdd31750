"""Issue #19 §1: rnninit's readers against torch.load(weights_only=True) as the oracle (tests/differential.py).

Every file rnninit accepts must read, through `load_checkpoint`, `read_checkpoint` and `index_file`, as torch reads
it: names, bytes, dtype, shape, stride, storage offset and sharing. A quick, derandomized slice of the generators
runs here (a few hundred files); `benchmarks/fuzz_reader.py` runs them for minutes. The disagreements found so far
are each an explicit `test_known_disagreement_<name>` below, its docstring saying what torch does (failing until
rnninit refuses or agrees); the generated slices tolerate those classes only (`differential.KNOWN`). `pytest -s`
prints each slice's figures: files, the oracle's outcome, files accepted by each reader, disagreements by class."""

from __future__ import annotations

import collections
import os
import random
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from differential import (
    KNOWN,
    TORCHSCRIPT_PREFIX,
    ApplyNode,
    CallNode,
    FromTypeNode,
    GlobalNode,
    HypothesisSource,
    Lit,
    Map,
    MutateNode,
    Node,
    Outcome,
    ParamNode,
    QTensorNode,
    RandomSource,
    Read,
    Seq,
    Storage,
    StorageNode,
    Style,
    TensorArgs,
    TensorView,
    build_corpus,
    compare,
    emit_pickle,
    entries,
    evaluate,
    explain,
    generate,
    make_file,
    make_storage,
    make_tensor,
    mutate_file,
    mutation_features,
    unexplained,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# derandomized, so CI runs the same files every time; failures are not shrunk unless RNNINIT_DIFF_SHRINK=1 (shrinking
# one can take minutes: the known-disagreement tests below are the minimal reproducers)
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if os.environ.get("RNNINIT_DIFF_SHRINK")
                                                             else [])
QUICK = settings(max_examples=45, deadline=None, derandomize=True, database=None, phases=_PHASES,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


FIGURES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


def tally(slice_name: str, features: set[str], outcome: Outcome) -> None:
    """Count a file of a slice: tried, the oracle's outcome, accepted by each reader, disagreements by class."""
    figures = FIGURES[slice_name]
    figures["files"] += 1
    figures[f"oracle {outcome.oracle}"] += 1
    for reader, accepted in outcome.accepted.items():
        figures[f"accepted by {reader}"] += accepted
    for name in {explain(features, item) or f"NEW {item.kind}" for item in outcome.disagreements}:
        figures[f"disagreement {name}"] += 1


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    """Print the slices' figures when the module is done (shown with pytest -s)."""
    yield
    for slice_name, counts in sorted(FIGURES.items()):
        print(f"\n[differential] {slice_name}: " + ", ".join(f"{key} {value}" for key, value in sorted(counts.items())))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("differential")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_corpus(tmp_path_factory.mktemp("corpus"))


def assert_agrees(data: bytes, folder: Path, foreign: set[str] | None = None) -> None:
    """On every reading path, rnninit refuses the file or reads it as torch does."""
    outcome = evaluate(data, folder, foreign=foreign)
    assert not outcome.disagreements, "\n".join(map(str, outcome.disagreements))


# --- the harness itself ------------------------------------------------------------------------------------------


def test_the_assembler_writes_what_pickle_reads() -> None:
    """Plain values through the assembler, in both styles, load back with pickle as the same values."""
    import pickle

    root = Map("dict", [(Lit("a"), Seq("list", [Lit(1), Lit(300), Lit(1 << 40), Lit(-5), Lit(2.5), Lit(None)])),
                        (Lit("b"), Seq("tuple", [Lit("é"), Lit(b"\x00\xff"), Lit(True)])),
                        (Lit("c"), Seq("set", [Lit(1), Lit(2)])), (Lit("d"), Seq("frozenset", [Lit(3)]))])
    expected = {"a": [1, 300, 1 << 40, -5, 2.5, None], "b": ("é", b"\x00\xff", True), "c": {1, 2}, "d": frozenset({3})}
    for style in (Style(), Style(proto=4, short_unicode=True, memoize=True, stack_global=True, frame=True,
                                 bytes_op=True, set_ops=True, appends=False)):
        assert pickle.loads(emit_pickle(root, style)) == expected


def test_the_oracle_needs_its_fallback_for_protocol_4(folder: Path) -> None:
    """torch's weights-only unpickler refuses protocol 4 opcodes, so the extension oracle reads those files."""
    path = folder / "p4.pt"
    torch.save({"w": torch.arange(3.0)}, path, pickle_protocol=4)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    outcome = evaluate(path.read_bytes(), folder)
    assert outcome.oracle == "fallback" and all(outcome.accepted.values()) and not outcome.disagreements


def test_the_oracle_builds_foreign_objects_as_stand_ins(folder: Path) -> None:
    """A foreign class is built by torch (weights-only, stand-in allowlisted) into an inert object named as
    rnninit names an inert record's contents."""
    storage = make_storage()
    foreign = CallNode("argparse", "Namespace", [make_tensor(storage)], "newobj")
    outcome = evaluate(make_file(entries(args=foreign), [storage]), folder, foreign={"argparse.Namespace"})
    assert outcome.oracle == "weights_only" and all(outcome.accepted.values()), outcome
    assert not outcome.disagreements


def test_the_comparison_sees_every_property() -> None:
    view = TensorView("float32", (2,), (1,), 0, "0", b"\x00" * 8, False, False)
    theirs = Read(tensors={"w": view, "v": TensorView("float32", (2,), (1,), 0, 7, b"\x00" * 8, False, False)})
    for change, kind in (({"data": b"\x00" * 7 + b"\x01"}, "values"), ({"stride": (2,)}, "stride"),
                         ({"offset": 1}, "offset"), ({"dtype": "int32"}, "dtype"), ({"storage": "v"}, "sharing")):
        mine = Read(tensors={"w": TensorView(**{**view.__dict__, **change}), "v": theirs.tensors["v"]})
        mine.tensors["v"] = TensorView(**{**theirs.tensors["v"].__dict__, "storage": "v"})
        assert kind in {item.kind.split(":")[1] for item in compare("read", mine, theirs)}
    assert compare("read", Read(refused="no"), theirs) == []
    assert [item.kind for item in compare("read", Read(tensors=dict(theirs.tensors)), Read(refused="x"))] == [
        "read:torch_refuses:x"]


def test_known_classes_have_their_test() -> None:
    names = {name.removeprefix("test_known_disagreement_") for name in globals()
             if name.startswith("test_known_disagreement_")}
    assert {known.name for known in KNOWN} <= names


# --- the seed corpus: files torch.save writes -------------------------------------------------------------------


def test_seed_corpus_reads_as_torch_reads(corpus: list[Path], folder: Path) -> None:
    """Every file the test suite builds (state dicts, training checkpoints, every protocol, the legacy format,
    views, dtypes, NaN payloads, real libraries' state dicts) is read by every path, as torch reads it."""
    assert len(corpus) > 30
    for path in corpus:
        script = path.name.startswith(TORCHSCRIPT_PREFIX)
        outcome = evaluate(path.read_bytes(), folder, foreign={"argparse.Namespace"}, torchscript=script)
        tally("seed corpus", set(), outcome)
        assert outcome.oracle != "refused", (path.name, outcome.oracle_error)
        assert not outcome.disagreements, (path.name, [str(item) for item in outcome.disagreements])
        expected = {"load": True, "read": True, "index": not path.name.startswith("legacy")}  # legacy: no patching
        assert outcome.accepted == expected, (path.name, outcome.accepted)


@QUICK
@given(data=st.data())
def test_mutated_seed_files(data: st.DataObject, corpus: list[Path], folder: Path) -> None:
    """Opcode-level and byte-level mutations of the seed corpus: rnninit refuses or agrees."""
    src = HypothesisSource(data)
    # zip archives only: torch checks a zip record's size before allocating a storage, but allocates a legacy file's
    # storages at their declared size (the fuzzer mutates those under a memory limit); no TorchScript is compiled
    bases = [path for path in corpus if not path.name.startswith((TORCHSCRIPT_PREFIX, "legacy"))]
    mutated = mutate_file(src, src.choice(bases).read_bytes())
    features = mutation_features(mutated)
    outcome = evaluate(mutated, folder)
    tally("mutated seed files", features, outcome)
    new = unexplained(features, outcome)
    assert not new, [str(item) for item in new]


# --- generated files --------------------------------------------------------------------------------------------


def _check_generated(data: st.DataObject, folder: Path, mode: str) -> None:
    plan, raw = generate(HypothesisSource(data), mode)
    outcome = evaluate(raw, folder, foreign=plan.foreign)
    tally(f"generated {mode}", plan.features, outcome)
    new = unexplained(plan.features, outcome)
    assert not new, ([str(item) for item in new], sorted(plan.features))


@QUICK
@given(data=st.data())
def test_generated_protocol_2_files(data: st.DataObject, folder: Path) -> None:
    """Tensors (v1/v2/v3, strides, offsets, shared and redeclared storages), parameters, _rebuild_from_type_v2,
    BUILD on tensors, parameters and OrderedDicts, APPEND/SETITEM on lists, dicts, tensors, bytearrays, foreign
    objects, torch values and memo reuse, in the opcodes torch.save writes."""
    _check_generated(data, folder, "pickle2")


@QUICK
@given(data=st.data())
def test_generated_protocol_4_files(data: st.DataObject, folder: Path) -> None:
    """The same plans in protocol 3-5 opcodes (FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE, BINBYTES,
    EMPTY_SET/ADDITEMS, FROZENSET), read by torch through the extension oracle."""
    _check_generated(data, folder, "pickle4")


@QUICK
@given(data=st.data())
def test_generated_zip_layouts(data: st.DataObject, folder: Path) -> None:
    """Archives written byte by byte: duplicate records, names and sizes that differ between local header and
    central directory, overlapping and aliased records, compression, misalignment, folders, version and byteorder
    records, zip64, comments, prefixes, truncation, data descriptors, encryption and disk-number flags."""
    _check_generated(data, folder, "zip")


@settings(QUICK, max_examples=25)
@given(data=st.data())
def test_generated_legacy_files(data: st.DataObject, folder: Path) -> None:
    """The legacy (non-zip) format: storage keys out of order, missing, doubled or extra, counts that do not match,
    big-endian sys_info, trailing bytes."""
    _check_generated(data, folder, "legacy")


def test_a_seeded_random_slice(folder: Path) -> None:
    """The fuzzer's own source of choices (random.Random), a few files of every mode."""
    for seed in range(25):
        src = RandomSource(random.Random(seed))
        plan, raw = generate(src, ("any", "pickle2", "pickle4", "zip", "legacy")[seed % 5])
        outcome = evaluate(raw, folder, foreign=plan.foreign)
        tally("seeded random", plan.features, outcome)
        assert not unexplained(plan.features, outcome), (seed, [str(x) for x in unexplained(plan.features, outcome)])


# --- the disagreements found: each fails until rnninit refuses the file or reads it as torch does --------------


def _zip_entry(data: bytearray, suffix: bytes) -> int:
    """Where the central-directory entry of the record whose name ends with `suffix` starts."""
    position = 0
    while True:
        position = data.find(b"PK\x01\x02", position + 1)
        assert position > 0
        length = int.from_bytes(data[position + 28:position + 30], "little")
        if data[position + 46:position + 46 + length].endswith(suffix):
            return position


def _rewrite_records(path: Path, change: dict[str, bytes]) -> bytes:
    """The zip file at `path` rewritten with the records whose names end with a key of `change` replaced."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = next((value for suffix, value in change.items() if info.filename.endswith(suffix)),
                           source.read(info))
            target.writestr(info.filename, content)
    return out.getvalue()


def test_known_disagreement_float8_e5m2_strided_crash(folder: Path) -> None:
    """A strided float8_e5m2 view: read_checkpoint and index_file crashed in numpy's as_strided."""
    path = folder / "f8.pt"
    torch.save({"x": torch.arange(4.0).to(torch.float8_e5m2)[::2]}, path)
    assert_agrees(path.read_bytes(), folder)


def test_known_disagreement_counter_read_as_foreign(folder: Path) -> None:
    """collections.Counter is in torch's allowlist: a tensor in it is named c/w, as in a dict."""
    path = folder / "counter.pt"
    import collections

    torch.save({"c": collections.Counter({"w": torch.ones(2), "n": 3})}, path)
    assert_agrees(path.read_bytes(), folder)


def test_known_disagreement_storage_record_longer_than_declared(folder: Path) -> None:
    """torch requires a data record of exactly numel * itemsize bytes."""
    path = folder / "longer.pt"
    torch.save({"w": torch.zeros(4)}, path)
    assert_agrees(_rewrite_records(path, {"/data/0": b"\x00" * 20}), folder)


def test_known_disagreement_parameter_of_a_shared_tensor(folder: Path) -> None:
    """_rebuild_parameter of a memoized tensor makes a new Parameter; the tensor itself stays plain."""
    storage = make_storage()
    tensor = make_tensor(storage)
    assert_agrees(make_file(entries(t=tensor, p=ParamNode(tensor, True)), [storage]), folder)


def test_known_disagreement_frozenset_global(folder: Path) -> None:
    """torch.save writes a frozenset as builtins.frozenset([...]), which torch's weights-only loader refuses; rnninit
    reads it as a documented extension (a plain value), so the oracle reads it as a stand-in: the tensors agree."""
    path = folder / "frozenset.pt"
    torch.save({"w": torch.zeros(2), "f": frozenset({1})}, path)
    assert_agrees(path.read_bytes(), folder)


def test_known_disagreement_untyped_storage_global_name(folder: Path) -> None:
    """torch allows torch.storage.UntypedStorage, not torch.UntypedStorage, as a persistent id's class."""
    storage = make_storage("0", "UntypedStorage", 16, module="torch")
    assert_agrees(make_file(entries(w=make_tensor(storage, (4,), builder="v3", dtype="float32")), [storage]), folder)


def test_known_disagreement_untyped_storage_class_as_a_value(folder: Path) -> None:
    """torch.UntypedStorage named as a value (not in a persistent id): torch's allowlist has torch.storage's only."""
    storage = make_storage()
    root = entries(w=make_tensor(storage), g=GlobalNode("torch", "UntypedStorage"))
    assert_agrees(make_file(root, [storage]), folder)


def test_known_disagreement_constants_pkl_record(folder: Path) -> None:
    """An archive with a constants.pkl record is TorchScript to torch.load, which refuses it weights-only."""
    path = folder / "constants.pt"
    torch.save({"w": torch.zeros(2)}, path)
    import zipfile

    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{archive.namelist()[0].split('/')[0]}/constants.pkl", b"\x80\x02).")
    assert_agrees(path.read_bytes(), folder)


def test_known_disagreement_from_type_torch_tensor_module(folder: Path) -> None:
    """_rebuild_from_type_v2's new type named torch._tensor.Tensor: torch's allowlist has torch.Tensor only."""
    storage = make_storage()
    node = FromTypeNode(TensorArgs(StorageNode(storage), 0, (4,), (1,)), ("torch._tensor", "Tensor"), Map("dict", []))
    assert_agrees(make_file(entries(w=node), [storage]), folder)


def test_known_disagreement_append_to_bytearray(folder: Path) -> None:
    """torch's weights-only loader appends to lists only."""
    storage = make_storage()
    appended = MutateNode(CallNode("builtins", "bytearray", [Lit(b"ab")]), "append", [Lit(67)])
    assert_agrees(make_file(entries(w=make_tensor(storage), b=appended), [storage]), folder)


def test_known_disagreement_v3_tensor_requiring_grad(folder: Path) -> None:
    """torch cannot load a _rebuild_tensor_v3 tensor that requires grad (its own bug: set_ on a leaf)."""
    path = folder / "v3rg.pt"
    torch.save({"w": torch.zeros(2, dtype=torch.float8_e4m3fn).requires_grad_()}, path)
    assert_agrees(path.read_bytes(), folder)


def test_known_disagreement_from_type_parameter_in_whole_load(folder: Path) -> None:
    """_rebuild_from_type_v2 with new type Parameter gives torch a Parameter; the whole load gave a Tensor."""
    storage = make_storage()
    node = FromTypeNode(TensorArgs(StorageNode(storage), 0, (4,), (1,)), ("torch.nn.parameter", "Parameter"),
                        Lit(None))
    assert_agrees(make_file(entries(w=node), [storage]), folder)


def test_known_disagreement_storage_alignment_not_an_integer(folder: Path) -> None:
    """torch.load parses .storage_alignment with int(): a record that is no integer makes it refuse."""
    path = folder / "alignment.pt"
    torch.save({"w": torch.zeros(2)}, path)
    assert_agrees(_rewrite_records(path, {"/.storage_alignment": b"x"}), folder)


def test_known_disagreement_encrypted_flag(folder: Path) -> None:
    """A data record flagged as encrypted: torch refuses; the whole readers crashed, the patch index read it."""
    path = folder / "encrypted.pt"
    torch.save({"w": torch.zeros(2)}, path)
    data = bytearray(path.read_bytes())
    data[_zip_entry(data, b"data/0") + 8] |= 1
    assert_agrees(bytes(data), folder)


def test_known_disagreement_disk_number_start(folder: Path) -> None:
    """A central entry whose disk number is neither 0 nor 1: torch's reader refuses the archive."""
    path = folder / "disk.pt"
    torch.save({"w": torch.zeros(2)}, path)
    data = bytearray(path.read_bytes())
    data[_zip_entry(data, b"data.pkl") + 35] = 1  # disk number start 256
    assert_agrees(bytes(data), folder)


def test_known_disagreement_directory_attribute(folder: Path) -> None:
    """A data record with the MS-DOS directory attribute: torch's reader returns uninitialised memory for it."""
    path = folder / "directory.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    data = bytearray(path.read_bytes())
    data[_zip_entry(data, b"data/0") + 38] = 0x10
    assert_agrees(bytes(data), folder)


def test_known_disagreement_record_outside_the_archive_folder(folder: Path) -> None:
    """torch's reader refuses an archive with any record outside the archive's folder."""
    path = folder / "outside.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    import zipfile

    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/extra", b"hello")
    assert_agrees(path.read_bytes(), folder)


def test_known_disagreement_empty_storage_declared_again(folder: Path) -> None:
    """torch loads an empty storage again at each persistent id naming its key, checking each one's count."""
    empty = make_storage("0", "FloatStorage", 0, b"")
    again = make_storage("0", "FloatStorage", 4, b"")
    root = entries(a=make_tensor(empty, (0,)), b=make_tensor(again, (0,)))
    assert_agrees(make_file(root, [empty]), folder)


@pytest.mark.parametrize("arity", [4, 5])
def test_known_disagreement_rebuild_tensor_v2_with_fewer_arguments(arity: int, folder: Path) -> None:
    """torch's _rebuild_tensor_v2 requires requires_grad and backward_hooks."""
    storage = make_storage()
    assert_agrees(make_file(entries(w=make_tensor(storage, arity=arity)), [storage]), folder)


def test_known_disagreement_reduce_applies_a_foreign_object(folder: Path) -> None:
    """REDUCE with an object of a foreign class as the callable: torch calls only allowed globals."""
    storage = make_storage()
    applied = ApplyNode(CallNode("argparse", "Namespace", [], "newobj"), [Lit(1)])
    assert_agrees(make_file(entries(w=make_tensor(storage), x=applied), [storage]), folder, {"argparse.Namespace"})


def test_known_disagreement_packed_quantized_view_outside_storage(folder: Path) -> None:
    """A quint4x2 view past its storage: torch reads memory it does not own; rnninit's whole load did too."""
    storage = Storage("0", "QUInt4x2Storage", 1, b"\x11")
    quantizer = Seq("tuple", [GlobalNode("torch", "per_tensor_affine"), Lit(0.5), Lit(0)])
    data = make_file(entries(q=QTensorNode(StorageNode(storage), 1, (1,), (1,), quantizer)), [storage])
    for _ in range(3):  # torch's values change from run to run: rnninit must refuse the file
        outcome = evaluate(data, folder)
        assert not any(outcome.accepted.values()), outcome


def _last_central_entry(data: bytearray) -> int:
    position = last = data.find(b"PK\x01\x02")
    while data[position:position + 4] == b"PK\x01\x02":
        last = position
        names, extra, comment = struct.unpack("<HHH", data[position + 28:position + 34])
        position += 46 + names + extra + comment
    return last


@pytest.mark.parametrize("field", [28, 30], ids=["name_length", "extra_length"])
def test_known_disagreement_central_entry_past_the_directory(field: int, folder: Path) -> None:
    """The last central entry reaching past the directory's size: miniz refuses, zipfile reads a short name/extra."""
    path = folder / "overflow.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    data = bytearray(path.read_bytes())
    data[_last_central_entry(data) + field] = 0xFF
    assert_agrees(bytes(data), folder)


def test_known_disagreement_patched_data_flag(folder: Path) -> None:
    """A data record flagged "compressed patched data": torch's reader refuses it; the patch index read it."""
    path = folder / "patched.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    data = bytearray(path.read_bytes())
    data[_zip_entry(data, b"data/0") + 8] |= 0x20
    assert_agrees(bytes(data), folder)


@pytest.mark.parametrize("spec", [["cp}"], ["nonsense"], [""], ["cuda", -2]], ids=str)
def test_known_disagreement_invalid_device_string(spec: list[object], folder: Path) -> None:
    """torch.device refuses device strings it cannot parse; the torch-free readers kept them."""
    storage = make_storage()
    device = CallNode("torch", "device", [Lit(part) for part in spec])
    assert_agrees(make_file(entries(w=make_tensor(storage), d=device), [storage]), folder)


def test_known_disagreement_walk_skips_entries_by_reused_ids(folder: Path) -> None:
    """objects.walk remembers containers by id() without keeping them alive; Foreign.children() makes new lists
    each call, so a freed one's id, reused, made walk skip a foreign object's entries. Every walk of one root must
    name the same tensors, whatever its caller allocates meanwhile."""
    from rnninit_cli.formats.checkpoint import read_checkpoint
    from rnninit_cli.formats.unpickle.objects import walk
    from rnninit_cli.formats.unpickle.records import TensorRef

    def namespace(key: Node, value: Node) -> Node:
        return MutateNode(CallNode("argparse", "Namespace", [], "newobj"), "setitem", [key, value])

    first, second = make_storage("0"), make_storage("1")
    node = namespace(namespace(Lit("k1"), namespace(make_tensor(first), Lit(1))), Lit(2))
    path = folder / "nested.pt"
    path.write_bytes(make_file(entries(w1=make_tensor(second), w2=node), [first, second]))
    checkpoint = read_checkpoint(path)
    kept = {name: value for name, value in walk(checkpoint.root, "") if isinstance(value, TensorRef)}
    assert set(kept) == set(checkpoint.records)
    assert_agrees(path.read_bytes(), folder, {"argparse.Namespace"})


@pytest.mark.parametrize("key", [torch.float32, torch.device("cpu"), torch.Size([2])], ids=str)
def test_known_disagreement_non_string_keys_named_by_record(key: object, folder: Path) -> None:
    """A torch value as a dict key names its entry as str(key) in torch and in the whole load; the torch-free
    readers named it by their record's repr."""
    path = folder / "key.pt"
    torch.save({"m": {key: torch.zeros(1)}}, path)
    assert_agrees(path.read_bytes(), folder)

