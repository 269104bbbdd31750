"""Differential harness: rnninit's torch.save readers against torch.load(weights_only=True) as the oracle.

The contract under test: what rnninit reads is what `torch.load(weights_only=True)` reads, or it refuses.
Every file rnninit accepts must give, through each of its reading entry points (`load_checkpoint`,
`read_checkpoint`, `tensorfile.index_file`), the tensors torch gives: the same names, bytes (NaN payloads
included), dtype, shape, stride, storage offset and storage sharing.

- Oracle. `torch.load(weights_only=True)`, inside `torch.serialization.safe_globals` with inert stand-in classes
  for the foreign classes a file names (rnninit reads those as inert records). Where torch's weights-only
  unpickler refuses a file that uses rnninit's documented extensions (opcodes it lacks: protocol 3-5's FRAME,
  MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE...; APPENDs or SETITEMs on foreign objects), the oracle is
  `torch.load(weights_only=False, pickle_module=oracle_pickle_module(...))`, whose unpickler (`OracleUnpickler`)
  resolves globals from torch's own weights-only allowlist and the stand-ins only, and whose BUILD, APPEND, SETITEM,
  NEWOBJ and REDUCE do what the weights-only unpickler does. Files are made here, but nothing they name is imported
  beyond that allowlist. TorchScript archives are read by torch.jit.load only for the seed corpus's own files.
- Generators. A plan of objects (`Node`s: tensors, parameters, storages, containers, BUILDs, foreign objects,
  torch values) drawn from a `Source` (hypothesis's `st.data()` or a seeded `random.Random`), emitted as a
  pickle by a small assembler with a chosen opcode style (protocol 2 as torch.save writes it, or protocol 4/5
  opcodes), wrapped in a zip archive written byte by byte (layouts: duplicate, overlapping, compressed,
  misaligned, renamed records, prefixes, zip64, comments...) or in the legacy format.
- Comparison. `evaluate(data, folder)` runs the oracle and the three readers and returns the disagreements, each
  with a kind ("read:values", "index:torch_refuses:global_frozenset"...); `explain` names the known class a
  disagreement belongs to (`KNOWN`, each reproduced by a `test_known_disagreement_*` in
  tests/formats/test_differential.py).
- Seed corpus. `build_corpus(folder)`: every kind of file the test suite builds, the starting point of `mutate_file`.

Everything here runs in-process on small files (at most 64 elements a storage); `benchmarks/fuzz_reader.py`
runs the same in a subprocess with a memory limit for mutated files.
"""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import pickletools
import random
import re
import signal
import struct
import types
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

# --- random sources: one generator code for hypothesis and for the fuzzer --------------------------------------


class Source(Protocol):
    """Where a generator's choices come from."""

    def integer(self, low: int, high: int) -> int: ...

    def boolean(self, p: float = 0.5) -> bool: ...

    def choice(self, options: Sequence[Any]) -> Any: ...

    def raw(self, size: int) -> bytes: ...


class RandomSource:
    """Choices from a seeded `random.Random` (the fuzzer)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def boolean(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def raw(self, size: int) -> bytes:
        return self.rng.randbytes(size)


class HypothesisSource:
    """Choices drawn from hypothesis's `st.data()`, so that failures shrink."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, low: int, high: int) -> int:
        return int(self.data.draw(self.st.integers(low, high)))

    def boolean(self, p: float = 0.5) -> bool:
        if p <= 0:
            return False
        if p >= 1:
            return True
        # a weighted coin that shrinks towards False
        return self.data.draw(self.st.integers(0, 999)) >= round(1000 * (1 - p))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]

    def raw(self, size: int) -> bytes:
        return bytes(self.data.draw(self.st.binary(min_size=size, max_size=size)))


# --- a pickle assembler ----------------------------------------------------------------------------------------

OPS = {op.name: op for op in pickletools.opcodes}
# the opcodes torch's weights-only unpickler executes (torch/_weights_only_unpickler.py, Unpickler.load)
TORCH_OPS = frozenset({
    "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK", "TUPLE", "TUPLE1",
    "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET",
    "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET",
    "LONG_BINGET", "BINPUT", "LONG_BINPUT", "LONG1", "PROTO", "STOP",
})


def encode_op(name: str, arg: Any = None) -> bytes:
    """One opcode with its argument, in the encoding `pickletools` documents for it."""
    op = OPS[name]
    code = op.code.encode("latin-1")
    kind = op.arg.name if op.arg is not None else None
    if kind is None:
        return code
    if kind == "uint1":
        return code + struct.pack("<B", arg)
    if kind == "uint2":
        return code + struct.pack("<H", arg)
    if kind == "int4":
        return code + struct.pack("<i", arg)
    if kind == "uint4":
        return code + struct.pack("<I", arg)
    if kind == "uint8":
        return code + struct.pack("<Q", arg)
    if kind == "float8":
        return code + struct.pack(">d", arg)
    if kind == "long1":
        raw = pickle.encode_long(arg)
        return code + struct.pack("<B", len(raw)) + raw
    if kind == "long4":
        raw = pickle.encode_long(arg)
        return code + struct.pack("<i", len(raw)) + raw
    if kind in ("unicodestring1", "unicodestring4", "unicodestring8"):
        raw = arg.encode("utf-8", "surrogatepass")
        width = {"unicodestring1": "<B", "unicodestring4": "<I", "unicodestring8": "<Q"}[kind]
        return code + struct.pack(width, len(raw)) + raw
    if kind in ("bytes1", "bytes4", "bytes8", "bytearray8", "string1", "string4"):
        raw = arg if isinstance(arg, (bytes, bytearray)) else arg.encode("latin-1")
        width = {"bytes1": "<B", "string1": "<B", "bytes4": "<I", "string4": "<i", "bytes8": "<Q",
                 "bytearray8": "<Q"}[kind]
        return code + struct.pack(width, len(raw)) + bytes(raw)
    if kind == "stringnl_noescape_pair":
        module, qualname = arg.split(" ", 1) if isinstance(arg, str) else arg
        return code + f"{module}\n{qualname}\n".encode()
    if kind in ("decimalnl_short", "decimalnl_long", "floatnl", "stringnl", "stringnl_noescape"):
        text = arg if isinstance(arg, str) else repr(arg)
        return code + text.encode("latin-1") + b"\n"
    raise ValueError(f"no encoder for {name} ({kind})")


@dataclass
class Style:
    """How a plan becomes opcodes: torch.save's protocol 2 forms, or the protocol 3-5 ones rnninit also reads."""

    proto: int = 2
    short_unicode: bool = False  # SHORT_BINUNICODE for short strings (protocol 4)
    memoize: bool = False  # MEMOIZE instead of BINPUT (protocol 4)
    stack_global: bool = False  # STACK_GLOBAL instead of GLOBAL (protocol 4)
    frame: bool = False  # one FRAME around the body (protocol 4)
    bytes_op: bool = False  # SHORT_BINBYTES / BINBYTES instead of _codecs.encode (protocol 3)
    set_ops: bool = False  # EMPTY_SET + ADDITEMS, FROZENSET (protocol 4) instead of builtins.set(...) REDUCE
    long_binput: bool = False  # LONG_BINPUT / LONG_BINGET for every memo index
    put_everything: bool = True  # memoize every object, as pickle does (else only those used twice)
    appends: bool = True  # APPENDS / SETITEMS batches (else one APPEND / SETITEM an item)

    @property
    def torch_compatible(self) -> bool:
        return not (self.short_unicode or self.memoize or self.stack_global or self.frame or self.bytes_op
                    or self.set_ops or self.proto > 3)


class Asm:
    """A growing opcode stream."""

    def __init__(self, style: Style) -> None:
        self.style = style
        self.parts: list[bytes] = []
        self.memo_count = 0

    def op(self, name: str, arg: Any = None) -> None:
        self.parts.append(encode_op(name, arg))

    def text(self, value: str) -> None:
        if self.style.short_unicode and len(value.encode("utf-8", "surrogatepass")) < 256:
            self.op("SHORT_BINUNICODE", value)
        else:
            self.op("BINUNICODE", value)

    def integer(self, value: int) -> None:
        if 0 <= value < 256:
            self.op("BININT1", value)
        elif 0 <= value < 65536:
            self.op("BININT2", value)
        elif -(1 << 31) <= value < (1 << 31):
            self.op("BININT", value)
        else:
            self.op("LONG1", value)

    def global_(self, module: str, name: str) -> None:
        if self.style.stack_global:
            self.text(module)
            self.text(name)
            self.op("STACK_GLOBAL")
        else:
            self.op("GLOBAL", f"{module} {name}")

    def put(self) -> int:
        index = self.memo_count
        self.memo_count += 1
        if self.style.memoize:
            self.op("MEMOIZE")
        elif index < 256 and not self.style.long_binput:
            self.op("BINPUT", index)
        else:
            self.op("LONG_BINPUT", index)
        return index

    def get(self, index: int) -> None:
        if index < 256 and not self.style.long_binput:
            self.op("BINGET", index)
        else:
            self.op("LONG_BINGET", index)

    def finish(self) -> bytes:
        body = b"".join(self.parts) + b"."
        head = encode_op("PROTO", self.style.proto) if self.style.proto >= 2 else b""
        if self.style.frame and self.style.proto >= 4:
            return head + encode_op("FRAME", len(body)) + body
        return head + body


# --- plans: the objects a pickle builds ------------------------------------------------------------------------

# storage class → (element size, torch dtype name)
STORAGE_CLASSES: dict[str, tuple[int, str]] = {
    "FloatStorage": (4, "float32"), "DoubleStorage": (8, "float64"), "HalfStorage": (2, "float16"),
    "BFloat16Storage": (2, "bfloat16"), "LongStorage": (8, "int64"), "IntStorage": (4, "int32"),
    "ShortStorage": (2, "int16"), "CharStorage": (1, "int8"), "ByteStorage": (1, "uint8"),
    "BoolStorage": (1, "bool"), "ComplexFloatStorage": (8, "complex64"), "ComplexDoubleStorage": (16, "complex128"),
}
# quantized storage classes (made by _rebuild_qtensor) → (element size, dtype)
QSTORAGE_CLASSES: dict[str, tuple[int, str]] = {
    "QInt8Storage": (1, "qint8"), "QUInt8Storage": (1, "quint8"), "QInt32Storage": (4, "qint32"),
    "QUInt4x2Storage": (1, "quint4x2"), "QUInt2x4Storage": (1, "quint2x4"),
}
# dtypes a _rebuild_tensor_v3 may name over an untyped storage
V3_DTYPES = ("float32", "float16", "bfloat16", "int64", "uint16", "uint32", "uint64", "bool", "float8_e4m3fn",
             "float8_e5m2", "complex64", "int8", "float64", "complex32", "float8_e8m0fnu", "float8_e4m3fnuz",
             "float8_e5m2fnuz", "int16", "int32", "complex128", "bits16", "qint8")
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
            "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1, "complex64": 8,
            "complex128": 16, "float8_e4m3fn": 1, "float8_e5m2": 1, "complex32": 4, "float8_e8m0fnu": 1,
            "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "bits16": 2, "qint8": 1}
# classes rnninit reads as inert records (none is dangerous to rnninit, none is in torch's allowlist)
FOREIGN_NAMES = (("argparse", "Namespace"), ("omegaconf.dictconfig", "DictConfig"),
                 ("fairseq.data.dictionary", "Dictionary"), ("mylib.vocab", "Vocab"),
                 ("numpy.core.multiarray", "scalar"), ("__main__", "Config"))
MAX_NUMEL = 64
REBUILDERS = {"v1": "_rebuild_tensor", "v2": "_rebuild_tensor_v2", "v3": "_rebuild_tensor_v3"}
FLOATING = ("float", "bfloat", "complex")


class Node:
    """An object of the plan; a node used twice is one object (the second use is a memo GET)."""

    def ident(self) -> Node:
        return self


@dataclass(eq=False)
class Storage:
    """A storage record: its key, class, the element count its persistent id declares, and its bytes."""

    key: str
    cls: str  # a STORAGE_CLASSES name or "UntypedStorage"
    numel: int
    data: bytes
    module: str = "torch"
    location: str = "cpu"

    @property
    def itemsize(self) -> int:
        if self.cls == "UntypedStorage":
            return 1
        return (STORAGE_CLASSES.get(self.cls) or QSTORAGE_CLASSES[self.cls])[0]


@dataclass(eq=False)
class Lit(Node):
    value: Any  # None, bool, int, float, str, bytes


@dataclass(eq=False)
class Seq(Node):
    kind: str  # "list", "tuple", "set", "frozenset"
    items: list[Node]


@dataclass(eq=False)
class Map(Node):
    kind: str  # "dict", "odict"
    items: list[tuple[Node, Node]]


@dataclass(eq=False)
class StorageNode(Node):
    storage: Storage
    legacy: bool = False  # a legacy file's 6-item persistent id


@dataclass(eq=False)
class TensorArgs:
    """The arguments of a tensor rebuild function."""

    storage: Node
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    builder: str = "v2"  # "v1" (_rebuild_tensor), "v2", "v3"
    dtype: str = ""  # v3
    metadata: Node | None = None  # v2's 7th / v3's 8th argument
    hooks: str = "odict"  # "odict", "none", "dict"
    arity: int = 0  # v2 / v3: how many arguments to pass (0: all; 4 or 5: fewer than torch's rebuilders take)


@dataclass(eq=False)
class TensorNode(Node):
    args: TensorArgs


@dataclass(eq=False)
class QTensorNode(Node):
    """torch._utils._rebuild_qtensor(storage, offset, size, stride, quantizer_params, requires_grad, hooks)."""

    storage: Node
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    quantizer: Node
    requires_grad: bool = False


@dataclass(eq=False)
class FromTypeNode(Node):
    """torch._tensor._rebuild_from_type_v2(_rebuild_tensor_v2, new_type, args, state)."""

    args: TensorArgs
    new_type: tuple[str, str]
    state: Node


@dataclass(eq=False)
class ParamNode(Node):
    data: Node
    requires_grad: bool
    builder: str = "param"  # "param", "param_state", "newobj"
    state: Node | None = None


@dataclass(eq=False)
class BuildNode(Node):
    """BUILD: `state` applied to `target` (a tensor: torch calls `set_(*state)`); the value is the target."""

    target: Node
    state: Node

    def ident(self) -> Node:
        return self.target.ident()


@dataclass(eq=False)
class MutateNode(Node):
    """APPEND(S) / SETITEM(S) on `target`; the value is the target."""

    target: Node
    op: str  # "append", "appends", "setitem", "setitems"
    payload: list[Node]

    def ident(self) -> Node:
        return self.target.ident()


@dataclass(eq=False)
class GlobalNode(Node):
    module: str
    name: str


@dataclass(eq=False)
class ApplyNode(Node):
    """REDUCE with an object that is no global as the callable (a foreign object, a tensor, a dict...)."""

    func: Node
    args: list[Node]


@dataclass(eq=False)
class CallNode(Node):
    """A global applied to arguments by REDUCE or NEWOBJ (torch.Size, torch.device, set, foreign classes...)."""

    module: str
    name: str
    args: list[Node]
    via: str = "reduce"


@dataclass
class Plan:
    """A generated torch.save file before it is written: its object graph, storages and how it is laid out."""

    root: Node
    storages: list[Storage]
    style: Style
    container: str = "zip"  # "zip" or "legacy"
    layout: list[str] = field(default_factory=list)  # zip layout changes (see ZIP_LAYOUTS)
    folder: str = "archive"
    features: set[str] = field(default_factory=set)
    foreign: set[str] = field(default_factory=set)  # "module.name" of the foreign globals it names


class Emitter:
    """Writes a plan's graph as opcodes: each object once, later uses by memo GET."""

    def __init__(self, style: Style) -> None:
        self.asm = Asm(style)
        self.memo: dict[int, int] = {}
        self.uses: dict[int, int] = {}
        self.style = style
        self.applied: set[int] = set()  # BUILD / APPEND nodes already emitted (a second use is a memo GET)
        self.keep: list[Node] = []  # every memoized node stays alive, so that ids are never reused

    def count(self, node: Any, seen: set[int] | None = None) -> None:
        """How often each object is used (objects used twice must be memoized)."""
        if isinstance(node, TensorArgs):
            for child in (node.storage, node.metadata):
                if child is not None:
                    self.count(child, seen)
            return
        if not isinstance(node, Node):
            return
        key = id(node.ident())
        self.uses[key] = self.uses.get(key, 0) + 1
        seen = set() if seen is None else seen
        if id(node) in seen:
            return
        seen.add(id(node))
        for child in _children(node):
            self.count(child, seen)

    def put(self, node: Node) -> None:
        if self.style.put_everything or self.uses.get(id(node.ident()), 0) > 1:
            self.memo[id(node.ident())] = self.asm.put()
            self.keep.append(node)

    def emit(self, node: Node) -> None:
        asm = self.asm
        done = self.memo.get(id(node.ident()))
        if done is not None and (id(node) in self.applied or not isinstance(node, (BuildNode, MutateNode))):
            asm.get(done)
            return
        if isinstance(node, Lit):
            self._literal(node.value)
            if isinstance(node.value, (str, bytes)) or (type(node.value) is int and node.value > 255):
                self.put(node)
        elif isinstance(node, Seq):
            self._sequence(node)
        elif isinstance(node, Map):
            self._map(node)
        elif isinstance(node, StorageNode):
            self._storage(node)
        elif isinstance(node, TensorNode):
            self._tensor_call(node.args)
            self.put(node)
        elif isinstance(node, QTensorNode):
            asm.global_("torch._utils", "_rebuild_qtensor")
            asm.op("MARK")
            self.emit(node.storage)
            asm.integer(node.offset)
            self._int_tuple(node.size)
            self._int_tuple(node.stride)
            self.emit(node.quantizer)
            asm.op("NEWTRUE" if node.requires_grad else "NEWFALSE")
            self._hooks("odict")
            asm.op("TUPLE")
            asm.op("REDUCE")
            self.put(node)
        elif isinstance(node, FromTypeNode):
            asm.global_("torch._tensor", "_rebuild_from_type_v2")
            asm.op("MARK")
            asm.global_("torch._utils", REBUILDERS[node.args.builder])
            asm.global_(*node.new_type)
            self._tensor_args(node.args, with_global=False)
            self.emit(node.state)
            asm.op("TUPLE")
            asm.op("REDUCE")
            self.put(node)
        elif isinstance(node, ParamNode):
            self._parameter(node)
        elif isinstance(node, BuildNode):
            self.applied.add(id(node))
            if done is None:
                self.emit(node.target)
            else:
                asm.get(done)
            self.emit(node.state)
            asm.op("BUILD")
        elif isinstance(node, MutateNode):
            self.applied.add(id(node))
            if done is None:
                self.emit(node.target)
            else:
                asm.get(done)
            self._mutate(node)
        elif isinstance(node, GlobalNode):
            asm.global_(node.module, node.name)
            self.put(node)
        elif isinstance(node, ApplyNode):
            self.emit(node.func)
            self._tuple(node.args)
            asm.op("REDUCE")
            self.put(node)
        elif isinstance(node, CallNode):
            asm.global_(node.module, node.name)
            self._tuple(node.args)
            asm.op("NEWOBJ" if node.via == "newobj" else "REDUCE")
            self.put(node)
        else:
            raise TypeError(node)

    def _literal(self, value: Any) -> None:
        asm = self.asm
        if value is None:
            asm.op("NONE")
        elif value is True or value is False:
            asm.op("NEWTRUE" if value else "NEWFALSE")
        elif isinstance(value, int):
            asm.integer(value)
        elif isinstance(value, float):
            asm.op("BINFLOAT", value)
        elif isinstance(value, str):
            asm.text(value)
        elif isinstance(value, bytes):
            if self.style.bytes_op:
                asm.op("SHORT_BINBYTES" if len(value) < 256 else "BINBYTES", value)
            else:  # protocol 2: _codecs.encode(text, "latin1"), as pickle writes bytes there
                asm.global_("_codecs", "encode")
                asm.text(value.decode("latin-1"))
                asm.text("latin1")
                asm.op("TUPLE2")
                asm.op("REDUCE")
        else:
            raise TypeError(value)

    def _tuple(self, items: list[Node]) -> None:
        asm = self.asm
        if not items:
            asm.op("EMPTY_TUPLE")
            return
        if len(items) <= 3 and self.style.proto >= 2:
            for item in items:
                self.emit(item)
            asm.op(("TUPLE1", "TUPLE2", "TUPLE3")[len(items) - 1])
            return
        asm.op("MARK")
        for item in items:
            self.emit(item)
        asm.op("TUPLE")

    def _sequence(self, node: Seq) -> None:
        asm = self.asm
        if node.kind == "tuple":
            self._tuple(node.items)
            self.put(node)
        elif node.kind == "list":
            asm.op("EMPTY_LIST")
            self.put(node)
            self._add(node.items, "APPENDS", "APPEND")
        elif node.kind == "set" and self.style.set_ops:
            asm.op("EMPTY_SET")
            self.put(node)
            if node.items:
                asm.op("MARK")
                for item in node.items:
                    self.emit(item)
                asm.op("ADDITEMS")
        elif node.kind == "frozenset" and self.style.set_ops:
            asm.op("MARK")
            for item in node.items:
                self.emit(item)
            asm.op("FROZENSET")
            self.put(node)
        else:  # builtins.set([...]) / builtins.frozenset([...]), as protocol 2 writes them
            asm.global_("builtins" if self.style.proto >= 3 else "__builtin__", node.kind)
            asm.op("EMPTY_LIST")
            asm.put()
            self._add(node.items, "APPENDS", "APPEND")
            asm.op("TUPLE1")
            asm.op("REDUCE")
            self.put(node)

    def _add(self, items: list[Node], batch: str, single: str) -> None:
        if not items:
            return
        if self.style.appends:
            self.asm.op("MARK")
            for item in items:
                self.emit(item)
            self.asm.op(batch)
        else:
            for item in items:
                self.emit(item)
                self.asm.op(single)

    def _map(self, node: Map) -> None:
        asm = self.asm
        if node.kind == "odict":
            asm.global_("collections", "OrderedDict")
            asm.op("EMPTY_TUPLE")
            asm.op("REDUCE")
        else:
            asm.op("EMPTY_DICT")
        self.put(node)
        if not node.items:
            return
        if self.style.appends:
            asm.op("MARK")
            for key, value in node.items:
                self.emit(key)
                self.emit(value)
            asm.op("SETITEMS")
        else:
            for key, value in node.items:
                self.emit(key)
                self.emit(value)
                asm.op("SETITEM")

    def _storage(self, node: StorageNode) -> None:
        asm = self.asm
        storage = node.storage
        asm.op("MARK")
        asm.text("storage")
        asm.global_(storage.module, storage.cls)
        asm.text(storage.key)
        asm.text(storage.location)
        asm.integer(storage.numel)
        if node.legacy:
            asm.op("NONE")
        asm.op("TUPLE")
        asm.op("BINPERSID")
        self.put(node)

    def _tensor_call(self, args: TensorArgs) -> None:
        self._tensor_args(args, with_global=True)
        self.asm.op("REDUCE")

    def _tensor_args(self, args: TensorArgs, *, with_global: bool) -> None:
        asm = self.asm
        if with_global:
            asm.global_("torch._utils", REBUILDERS[args.builder])
        asm.op("MARK")
        self.emit(args.storage)
        asm.integer(args.offset)
        self._int_tuple(args.size)
        self._int_tuple(args.stride)
        if args.builder != "v1" and args.arity == 5:  # requires_grad without backward_hooks
            asm.op("NEWTRUE" if args.requires_grad else "NEWFALSE")
        elif args.builder != "v1" and args.arity != 4:
            asm.op("NEWTRUE" if args.requires_grad else "NEWFALSE")
            self._hooks(args.hooks)
            if args.builder == "v3":
                asm.global_("torch", args.dtype)
            if args.metadata is not None:
                self.emit(args.metadata)
        asm.op("TUPLE")

    def _int_tuple(self, values: tuple[int, ...]) -> None:
        self._tuple([Lit(value) for value in values])

    def _hooks(self, hooks: str) -> None:
        if hooks == "none":
            self.asm.op("NONE")
        elif hooks == "dict":
            self.asm.op("EMPTY_DICT")
        else:
            self.asm.global_("collections", "OrderedDict")
            self.asm.op("EMPTY_TUPLE")
            self.asm.op("REDUCE")

    def _parameter(self, node: ParamNode) -> None:
        asm = self.asm
        if node.builder == "newobj":
            asm.global_("torch.nn.parameter", "Parameter")
            self.emit(node.data)
            asm.op("NEWTRUE" if node.requires_grad else "NEWFALSE")
            asm.op("TUPLE2")
            asm.op("NEWOBJ")
        else:
            with_state = node.builder == "param_state"
            asm.global_("torch._utils", "_rebuild_parameter_with_state" if with_state else "_rebuild_parameter")
            asm.op("MARK")
            self.emit(node.data)
            asm.op("NEWTRUE" if node.requires_grad else "NEWFALSE")
            self._hooks("odict")
            if with_state:
                self.emit(node.state if node.state is not None else Lit(None))
            asm.op("TUPLE")
            asm.op("REDUCE")
        self.put(node)

    def _mutate(self, node: MutateNode) -> None:
        asm = self.asm
        if node.op in ("appends", "setitems"):
            asm.op("MARK")
            for item in node.payload:
                self.emit(item)
            asm.op(node.op.upper())
        else:
            step = 2 if node.op == "setitem" else 1
            for index in range(0, len(node.payload) - step + 1, step):
                for item in node.payload[index:index + step]:
                    self.emit(item)
                asm.op(node.op.upper())


def _children(node: Node) -> list[Any]:
    if isinstance(node, Seq):
        return list(node.items)
    if isinstance(node, Map):
        return [part for pair in node.items for part in pair]
    if isinstance(node, TensorNode):
        return [node.args]
    if isinstance(node, QTensorNode):
        return [node.storage, node.quantizer]
    if isinstance(node, FromTypeNode):
        return [node.args, node.state]
    if isinstance(node, ParamNode):
        return [node.data] + ([node.state] if node.state is not None else [])
    if isinstance(node, BuildNode):
        return [node.target, node.state]
    if isinstance(node, MutateNode):
        return [node.target, *node.payload]
    if isinstance(node, CallNode):
        return list(node.args)
    if isinstance(node, ApplyNode):
        return [node.func, *node.args]
    return []


def emit_pickle(root: Node, style: Style) -> bytes:
    emitter = Emitter(style)
    emitter.count(root)
    emitter.emit(root)
    return emitter.asm.finish()


# --- zip archives written byte by byte -------------------------------------------------------------------------


@dataclass
class ZipRecord:
    """One record of an archive as written: what its local header and central entry say may differ."""

    name: str
    data: bytes
    compress: bool = False
    local_name: str | None = None  # the local header's name, where it differs from the central one
    local_sizes: tuple[int, int] | None = None  # (compressed, uncompressed) in the local header, if different
    crc: int | None = None  # a CRC-32 other than the data's
    align: int = 64  # torch.save aligns tensor data to 64 bytes with a padding extra field
    descriptor: bool = False  # sizes and CRC-32 in a data descriptor after the data
    zip64: bool = False
    alias: ZipRecord | None = None  # no local entry of its own: the central entry points at `alias`'s
    central: bool = True  # listed in the central directory
    central_flags: int = 0  # general-purpose flag bits added in the central entry (1: encrypted)
    disk: int = 0  # the central entry's "disk number start"
    attributes: int = 0  # the central entry's external attributes (0x10: an MS-DOS directory)
    utf8_flag: bool = True  # flag a non-ASCII name as UTF-8 (else readers may decode it as cp437)


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def write_zip(records: list[ZipRecord], *, prefix: bytes = b"", absolute: bool = True, comment: bytes = b"",
              zip64_end: bool = False, central_order: list[int] | None = None, count_delta: int = 0) -> bytes:
    """The bytes of a zip archive of `records` after `prefix` (offsets counted from the file's start when
    `absolute`, else from the archive's)."""
    out = bytearray(prefix)
    base = 0 if absolute else len(prefix)
    position = {id(record): index for index, record in enumerate(records)}
    offsets: list[int] = []
    payloads: list[tuple[bytes, int, int]] = []  # (stored bytes, crc, method)
    for record in records:
        stored = _deflate(record.data) if record.compress else record.data
        crc = zlib.crc32(record.data) if record.crc is None else record.crc
        method = 8 if record.compress else 0
        payloads.append((stored, crc, method))
        if record.alias is not None:
            offsets.append(-1)
            continue
        offsets.append(len(out) - base)
        name = (record.local_name if record.local_name is not None else record.name).encode("utf-8")
        flags = (0x08 if record.descriptor else 0) | (0x800 if not name.isascii() and record.utf8_flag else 0)
        csize, usize = record.local_sizes or (len(stored), len(record.data))
        extra = b""
        if record.zip64:
            extra = struct.pack("<HHQQ", 1, 16, usize, csize)
            csize = usize = 0xFFFFFFFF
        if record.descriptor:
            crc_field, csize_field, usize_field = 0, 0, 0
        else:
            crc_field, csize_field, usize_field = crc, csize, usize
        header_size = 30 + len(name) + len(extra)
        if record.align > 1:
            pad = -(len(out) + header_size + 4) % record.align
            extra += struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding, as torch's writer
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if record.zip64 else 20, flags, method, 0, 0x21,
                           crc_field, csize_field, usize_field, len(name), len(extra))
        out += name + extra + stored
        if record.descriptor:
            out += struct.pack("<IIII", 0x08074B50, crc, len(stored), len(record.data))
    central_start = len(out)
    order = central_order if central_order is not None else list(range(len(records)))
    count = 0
    for index in order:
        record = records[index]
        if not record.central:
            continue
        target = position.get(id(record.alias), -1) if record.alias is not None else index
        if target < 0 or offsets[target] < 0:  # an alias of a record not written, or of another alias
            continue
        count += 1
        offset = offsets[target]
        stored, crc, method = payloads[target]
        name = record.name.encode("utf-8")
        flags = (0x08 if record.descriptor else 0) | (0x800 if not name.isascii() and record.utf8_flag else 0)
        flags |= record.central_flags
        csize, usize = len(stored), len(records[target].data)
        extra = b""
        field_offset = offset
        if record.zip64:
            extra = struct.pack("<HHQQQ", 1, 24, usize, csize, offset)
            csize = usize = field_offset = 0xFFFFFFFF
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if record.zip64 else 20,
                           45 if record.zip64 else 20, flags, method, 0, 0x21, crc, csize, usize, len(name),
                           len(extra), 0, record.disk, 0, record.attributes, field_offset)
        out += name + extra
    central_size = len(out) - central_start
    if zip64_end:
        end64 = len(out) - base
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, central_size,
                           central_start - base)
        out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment))
    else:
        listed = max(0, count + count_delta)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, listed, listed, central_size, central_start - base,
                           len(comment))
    return bytes(out + comment)


# zip layout changes a plan may ask for (see `archive_records` and `write_archive`)
ZIP_LAYOUTS = (
    "misaligned", "shuffled", "central_reversed", "first_other_folder", "dup_data_before", "dup_data_after",
    "dup_pickle_before", "dup_pickle_after", "local_name", "local_sizes", "bad_crc_data", "bad_crc_pickle",
    "alias", "overlap", "extra_records", "constants_pkl", "compressed_pickle", "compressed_data",
    "compressed_small", "byteorder", "no_byteorder", "version", "no_version", "data_version", "format_version",
    "storage_alignment", "serialization_id", "zip64", "zip64_end", "comment", "orphan_prefix", "prefix_relative",
    "truncated", "descriptor", "drop_record", "unused_data", "encrypted", "disk_number", "directory_attr",
    "outside_record", "case_twin", "no_utf8_flag", "eocd_count", "fake_end_in_comment", "patched_flag",
    "central_overflow",
)


def archive_records(plan: Plan, pickled: bytes, src: Source) -> tuple[list[ZipRecord], dict[str, Any]]:
    """The records torch.save writes for `plan` (data.pkl, versions, byteorder, storages, serialization id),
    changed as `plan.layout` says; and the options of `write_zip`."""
    folder = plan.folder
    records = [ZipRecord(f"{folder}/data.pkl", pickled, align=64)]
    small = [(".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little")]
    records += [ZipRecord(f"{folder}/{name}", data) for name, data in small]
    seen: set[str] = set()
    for storage in plan.storages:
        if storage.key not in seen:
            seen.add(storage.key)
            records.append(ZipRecord(f"{folder}/data/{storage.key}", storage.data))
    records.append(ZipRecord(f"{folder}/version", b"3\n"))
    records.append(ZipRecord(f"{folder}/.data/serialization_id", b"1234567890" * 4))
    options: dict[str, Any] = {}
    data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]

    def pick_data() -> int | None:
        return src.choice(data_indexes) if data_indexes else None

    def named(suffix: str) -> ZipRecord | None:
        return next((r for r in records if r.name == f"{folder}/{suffix}"), None)

    for change in plan.layout:
        if change == "misaligned":
            for record in records:
                record.align = 1
        elif change == "shuffled":
            order = list(range(len(records)))
            for i in range(len(order) - 1, 0, -1):
                j = src.integer(0, i)
                order[i], order[j] = order[j], order[i]
            records = [records[i] for i in order]
            data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change == "central_reversed":
            options["central_order"] = list(reversed(range(len(records))))
        elif change == "first_other_folder":
            records.insert(0, ZipRecord(src.choice(["other/extra", "zz/data.txt", "x/y/z"]), b"hello"))
            data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change in ("dup_data_before", "dup_data_after") and data_indexes:
            index = pick_data()
            assert index is not None
            original = records[index]
            twin = ZipRecord(original.name, src.raw(len(original.data)) if original.data else b"")
            records.insert(index if change == "dup_data_before" else index + 1, twin)
            data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change in ("dup_pickle_before", "dup_pickle_after"):
            index = next(i for i, r in enumerate(records) if r.name.endswith("/data.pkl"))
            other = src.choice([b"\x80\x02}q\x00.", b"\x80\x02]q\x00.", pickled[:-1] + b"N."])
            records.insert(index if change == "dup_pickle_before" else index + 1, ZipRecord(records[index].name, other))
            data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change == "local_name" and len(data_indexes) >= 1:
            index = pick_data()
            assert index is not None
            other = [records[i].name for i in data_indexes if i != index]
            records[index].local_name = src.choice(other) if other else records[index].name + "x"
        elif change == "local_sizes":
            index = src.choice(data_indexes) if data_indexes and src.boolean() else 0
            size = len(records[index].data)
            new = max(0, size + src.choice([-4, -1, 1, 4, 64]))
            records[index].local_sizes = (new, new)
        elif change == "bad_crc_data" and data_indexes:
            index = pick_data()
            assert index is not None
            records[index].crc = zlib.crc32(records[index].data) ^ 0x1
        elif change == "bad_crc_pickle":
            next(r for r in records if r.name.endswith("/data.pkl")).crc = zlib.crc32(pickled) ^ 0x80
        elif change == "alias" and data_indexes:
            index = pick_data()
            assert index is not None
            key = records[index].name.rsplit("/", 1)[1]
            records.append(ZipRecord(f"{folder}/data/{key}alias", b"", alias=records[index]))
        elif change == "overlap" and data_indexes:
            index = pick_data()
            assert index is not None
            if index + 1 < len(records):  # the record's sizes reach into the next local header
                records[index].local_sizes = (len(records[index].data) + 8, len(records[index].data) + 8)
        elif change == "extra_records":
            for name in src.choice([["extra.txt"], ["data/999"], ["code/x.py"], ["data/sub/0", "notes/readme"]]):
                records.insert(src.integer(1, len(records)), ZipRecord(f"{folder}/{name}", b"extra"))
            data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change == "constants_pkl":
            records.append(ZipRecord(f"{folder}/constants.pkl", b"\x80\x02).", ))
        elif change == "compressed_pickle":
            next(r for r in records if r.name.endswith("/data.pkl")).compress = True
        elif change == "compressed_data" and data_indexes:
            index = pick_data()
            assert index is not None
            records[index].compress = True
        elif change == "compressed_small":
            for record in records:
                if record.name.rsplit("/", 1)[-1] in ("version", "byteorder", ".format_version"):
                    record.compress = True
        elif change == "byteorder":
            record = named("byteorder")
            if record is not None:
                record.data = src.choice([b"big", b"little\n", b"", b"LITTLE", b" little", b"little\x00", b"big\n"])
        elif change == "no_byteorder":
            records = [r for r in records if not r.name.endswith("/byteorder")]
        elif change == "version":
            record = named("version")
            if record is not None:
                record.data = src.choice([b"1", b"2\n", b"10\n", b"0\n", b"x", b"3", b"", b"-1", b"9" * 20])
        elif change == "no_version":
            records = [r for r in records if not r.name.endswith(f"{folder}/version")]
        elif change == "data_version":
            for record in records:
                if record.name == f"{folder}/version":
                    record.name = f"{folder}/.data/version"
        elif change == "format_version":
            record = named(".format_version")
            if record is not None:
                record.data = src.choice([b"0", b"", b"2", b"x", b"1\n"])
        elif change == "storage_alignment":
            record = named(".storage_alignment")
            if record is not None:
                record.data = src.choice([b"1", b"0", b"x", b"-8", b"", b"64\n", b"4096"])
        elif change == "serialization_id":
            record = named(".data/serialization_id")
            if record is not None:
                record.data = src.choice([b"\xff\xfe", b"", b"a" * 100, "é".encode()])
        elif change == "zip64":
            for record in records:
                record.zip64 = True
            options["zip64_end"] = True
        elif change == "zip64_end":
            options["zip64_end"] = True
        elif change == "comment":
            options["comment"] = src.choice([b"hi", b"PK\x05\x06", b"\x00" * 30])
        elif change == "orphan_prefix":  # a local entry listed nowhere, before the archive
            options["prefix"] = write_zip([ZipRecord("orphan/x", b"data", align=1)])[:46]
            options["absolute"] = src.boolean(0.7)
        elif change == "prefix_relative":
            options["prefix"] = b"PK\x03\x04" + b"\x00" * src.integer(0, 40)
            options["absolute"] = False
        elif change == "truncated":
            options["truncate"] = src.integer(1, 30)
        elif change == "descriptor":
            for record in records:
                if src.boolean():
                    record.descriptor = True
        elif change == "drop_record":
            droppable = [r for r in records if not r.name.endswith("/data.pkl")]
            if droppable:
                gone = src.choice(droppable)
                records = [r for r in records if r is not gone]
                data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change == "encrypted":
            src.choice(records).central_flags |= 1
        elif change == "disk_number":
            src.choice(records).disk = src.choice([1, 2, 256, 0xFFFF])
        elif change == "directory_attr":
            src.choice(records).attributes = src.choice([0x10, 0x20, 0x01, 0x41ED0010])
        elif change == "outside_record":
            records.insert(src.integer(1, len(records)), ZipRecord(src.choice(["extra", "other/x", f"{folder}2/y"]),
                                                                   b"extra"))
            data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change == "case_twin" and data_indexes:  # miniz compares names ignoring ASCII case
            index = pick_data()
            assert index is not None
            original = records[index]
            twin_name = src.choice([original.name.upper(), original.name.replace("/data/", "/DATA/"),
                                    original.name[0].swapcase() + original.name[1:]])
            twin = ZipRecord(twin_name, src.raw(len(original.data)) if original.data else b"")
            records.insert(index if src.boolean() else index + 1, twin)
            data_indexes = [i for i, r in enumerate(records) if "/data/" in r.name]
        elif change == "patched_flag":
            src.choice(records).central_flags |= 0x20
        elif change == "central_overflow":  # the last central entry claims more extra bytes than the directory has
            options["overflow"] = src.choice([28, 30])
        elif change == "no_utf8_flag":
            for record in records:
                record.utf8_flag = False
        elif change == "eocd_count":
            options["count_delta"] = src.choice([-1, 1, -2])
        elif change == "fake_end_in_comment":  # an end record in the comment that points nowhere sensible
            options["comment"] = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, 46, 0, 0)
        elif change == "unused_data":
            records.append(ZipRecord(f"{folder}/data/unused{src.integer(0, 9)}", src.raw(8)))
    return records, options


def write_archive(plan: Plan, src: Source) -> bytes:
    """A zip torch.save file of `plan` (its pickle emitted in its style, its layout changes applied)."""
    pickled = emit_pickle(plan.root, plan.style)
    records, options = archive_records(plan, pickled, src)
    truncate = options.pop("truncate", 0)
    overflow = options.pop("overflow", 0)
    order = options.get("central_order")
    if order is not None and len(order) != len(records):
        options["central_order"] = list(reversed(range(len(records))))
    data = write_zip(records, **options)
    if overflow:
        last = data.rfind(b"PK\x01\x02")
        if last >= 0:
            data = data[:last + overflow] + b"\xff" + data[last + overflow + 1:]
    return data[:-truncate] if truncate else data


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_LAYOUTS = ("keys_reversed", "big_endian", "count_mismatch", "extra_key", "missing_key", "duplicate_key",
                  "trailing")


def write_legacy(plan: Plan, src: Source) -> bytes:
    """A legacy (non-zip) torch.save file: magic number, protocol, sys_info, the data pickle, the storage keys,
    then each storage as an 8-byte element count and its bytes."""
    sys_info = {"protocol_version": 1001, "little_endian": "big_endian" not in plan.layout,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2), pickle.dumps(sys_info, protocol=2)]
    parts.append(emit_pickle(plan.root, plan.style))
    storages: dict[str, Storage] = {}
    for storage in plan.storages:
        storages.setdefault(storage.key, storage)
    keys = list(storages)
    if "keys_reversed" in plan.layout:
        keys.reverse()
    if "missing_key" in plan.layout and keys:
        keys.pop()
    if "duplicate_key" in plan.layout and keys:
        keys.append(keys[0])
    if "extra_key" in plan.layout:
        keys.append("999")
    parts.append(pickle.dumps(keys, protocol=2))
    for key in keys:
        storage = storages.get(key)
        count = storage.numel if storage is not None else 2
        body = storage.data[:count * storage.itemsize] if storage is not None else b"\x00" * 8
        if "count_mismatch" in plan.layout and src.boolean():
            count += src.choice([-1, 1])
        parts.append(struct.pack("<q", count) + body)
    if "trailing" in plan.layout:
        parts.append(b"trailing bytes")
    return b"".join(parts)


def write_plan(plan: Plan, src: Source) -> bytes:
    return write_legacy(plan, src) if plan.container == "legacy" else write_archive(plan, src)


# --- generating plans --------------------------------------------------------------------------------------------

NAN_PATTERNS = {  # NaNs with payloads (and a signalling one) for each float width
    2: [b"\x01\x7e", b"\x01\xfc", b"\xc1\x7f", b"\x01\x7c"],
    4: [b"\x01\x00\xc0\x7f", b"\xff\xff\xff\xff", b"\x01\x00\x80\x7f", b"\x00\x00\xc0\xff"],
    8: [b"\x01\x00\x00\x00\x00\x00\xf0\x7f", b"\xff" * 8, b"\x00\x00\x00\x00\x00\x00\xf8\xff"],
}


def weighted(src: Source, options: Sequence[tuple[int, Any]]) -> Any:
    """One of `options` ((weight, value) pairs), the first ones preferred when shrinking."""
    total = sum(weight for weight, _ in options)
    point = src.integer(0, total - 1)
    for weight, value in options:
        if point < weight:
            return value
        point -= weight
    return options[-1][1]


def contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def span(offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """One past the last element a view reads (its offset if it has none)."""
    if 0 in size:
        return offset
    return offset + sum((dim - 1) * step for dim, step in zip(size, stride, strict=True)) + 1


class PlanGen:
    """Draws a plan: storages, tensors over them, and an object graph around them."""

    def __init__(self, src: Source, *, legacy: bool = False, style: Style | None = None,
                 layout_rate: float = 0.35) -> None:
        self.src = src
        self.legacy = legacy
        self.style = style
        self.layout_rate = layout_rate
        self.storages: list[Storage] = []
        self.storage_nodes: list[StorageNode] = []
        self.tensors: list[Node] = []
        self.containers: list[Node] = []
        self.features: set[str] = set()
        self.foreign: set[str] = set()
        self.budget = 14  # objects left to draw

    # -- storages and tensors
    def new_storage(self) -> StorageNode:
        src = self.src
        untyped = not self.legacy and src.boolean(0.15)
        cls = "UntypedStorage" if untyped else src.choice(list(STORAGE_CLASSES))
        itemsize = 1 if untyped else STORAGE_CLASSES[cls][0]
        numel = weighted(src, [(6, src.integer(1, 16)), (2, 0), (2, src.integer(17, MAX_NUMEL))])
        if untyped:
            numel *= src.choice([1, 2, 4, 8])
        data = bytearray(src.raw(numel * itemsize))
        if itemsize in NAN_PATTERNS and cls not in ("LongStorage", "IntStorage", "ShortStorage") and numel \
                and src.boolean(0.4):
            for _ in range(src.integer(1, 3)):
                index = src.integer(0, numel - 1)
                pattern = src.choice(NAN_PATTERNS[itemsize])
                data[index * itemsize:(index + 1) * itemsize] = pattern
            self.features.add("nan_payloads")
        if src.boolean(0.03):
            data += src.raw(src.integer(1, 16))
            self.features.add("record_longer")
        key = str(len({s.key for s in self.storages}))
        if src.boolean(0.05):
            key = src.choice(["x", "0a", "storage/1", "ü", " 1"])
            self.features.add("odd_key")
        module = "torch"
        if untyped:
            module = "torch.storage" if src.boolean(0.8) else "torch"
            self.features.add("untyped_storage" if module == "torch.storage" else "untyped_storage_module_torch")
        elif src.boolean(0.05):
            module = "torch.cuda"
            self.features.add("cuda_storage_class")
        storage = Storage(key, cls, numel, bytes(data), module=module)
        if src.boolean(0.05):
            storage.location = src.choice(["cuda:0", "meta", "cpu:0", ""])
            self.features.add("location")
        self.storages.append(storage)
        node = StorageNode(storage, legacy=self.legacy)
        self.storage_nodes.append(node)
        return node

    def storage_for_tensor(self) -> StorageNode:
        src = self.src
        if self.storage_nodes and src.boolean(0.45):
            self.features.add("shared_storage")
            if src.boolean(0.3):  # the same key named again by a new persistent id (torch.save memoizes it)
                old = src.choice(self.storage_nodes).storage
                cls = old.cls if src.boolean(0.8) else src.choice(list(STORAGE_CLASSES))
                numel = old.numel if src.boolean(0.8) else src.integer(0, MAX_NUMEL)
                if (cls, numel) != (old.cls, old.numel):
                    self.features.add("storage_redeclared")
                twin = Storage(old.key, cls, numel, old.data, module=old.module, location=old.location)
                node = StorageNode(twin, legacy=self.legacy)
                self.storages.append(twin)
                return node
            return src.choice(self.storage_nodes)
        return self.new_storage()

    def tensor_args(self) -> TensorArgs:
        src = self.src
        node = self.storage_for_tensor()
        storage = node.storage
        builder = "v2"
        dtype = ""
        if storage.cls == "UntypedStorage":
            builder = "v3"
            dtype = src.choice(V3_DTYPES)
            itemsize = ITEMSIZE[dtype]
        else:
            builder = weighted(src, [(8, "v2"), (1, "v1"), (1, "v3")])
            itemsize = storage.itemsize
            if builder == "v3":
                dtype = STORAGE_CLASSES[storage.cls][1] if src.boolean(0.7) else src.choice(V3_DTYPES)
                if dtype != STORAGE_CLASSES[storage.cls][1]:
                    self.features.add("v3_other_dtype")
        self.features.add(f"builder_{builder}")
        if builder == "v3":
            self.features.add(f"dtype_{dtype}")
        elements = (storage.numel * storage.itemsize) // itemsize
        ndim = weighted(src, [(3, 1), (3, 2), (1, 0), (1, 3)])
        size = tuple(src.integer(0, 4) for _ in range(ndim))
        while math.prod(size) > MAX_NUMEL:
            size = tuple(max(0, d - 1) for d in size)
        stride = contiguous_strides(size)
        if src.boolean(0.3):
            stride = tuple(src.integer(0, 6) for _ in range(ndim))
            self.features.add("strided")
        offset = src.integer(0, 3) if src.boolean(0.3) else 0
        if offset:
            self.features.add("offset")
        if span(offset, size, stride) > elements and not src.boolean(0.05):
            # shrink into the storage: fewer elements, then no offset, then an empty view
            size = tuple(min(d, 1) for d in size)
            offset = 0
            if span(offset, size, stride) > elements:
                size = (0,) * ndim if ndim else ()
                if ndim == 0 and elements == 0:
                    size, stride = (0,), (1,)
        if span(offset, size, stride) > elements:
            self.features.add("out_of_bounds")
        args = TensorArgs(node, offset, size, stride, builder=builder, dtype=dtype)
        if builder == "v2" and src.boolean(0.03):
            args.arity = src.choice([4, 5])
            self.features.add(f"arity_{args.arity}")
        if builder != "v1":
            floating = args_dtype(TensorArgs(node, 0, (), (), builder=builder, dtype=dtype)).startswith(FLOATING)
            args.requires_grad = src.boolean(0.2 if floating and builder == "v2" else 0.02)
            if args.requires_grad:
                self.features.add(f"requires_grad_{builder}")
            args.hooks = weighted(src, [(10, "odict"), (1, "none"), (1, "dict")])
            if args.hooks != "odict":
                self.features.add("hooks_" + args.hooks)
            if src.boolean(0.08):
                complex_ = args_dtype(args).startswith("complex")
                args.metadata = Map("dict", [(Lit(src.choice(["neg", "conj"]) if complex_ else "neg"), Lit(True))])
                if src.boolean(0.3):
                    args.metadata = Map("dict", [])
                self.features.add("tensor_metadata")
        return args

    def tensor(self) -> Node:
        node = TensorNode(self.tensor_args())
        self.tensors.append(node)
        return node

    def qtensor(self) -> Node:
        """A quantized tensor (torch.save writes these with _rebuild_qtensor), per tensor or per channel."""
        src = self.src
        cls = src.choice(list(QSTORAGE_CLASSES))
        itemsize = QSTORAGE_CLASSES[cls][0]
        numel = src.integer(0, 16)
        storage = Storage(str(len({s.key for s in self.storages})), cls, numel, src.raw(numel * itemsize))
        if src.boolean(0.1):
            storage.data += b"\x00" * itemsize
        self.storages.append(storage)
        ndim = src.integer(1, 2)
        size = tuple(src.integer(0, 3) for _ in range(ndim))
        stride = contiguous_strides(size) if src.boolean(0.8) else tuple(src.integer(0, 3) for _ in range(ndim))
        offset = src.integer(0, 2) if src.boolean(0.2) else 0
        scheme = weighted(src, [(3, "per_tensor_affine"), (2, "per_channel_affine"),
                                (1, "per_channel_affine_float_qparams"), (1, "per_tensor_symmetric")])
        self.features.add(f"qtensor_{scheme}")
        parts: list[Node] = [GlobalNode("torch", scheme)]
        if scheme.startswith("per_tensor"):
            parts += [Lit(src.choice([0.1, 1.0, 1e-3, 0.0, -1.0, float("nan")])), Lit(src.choice([0, 3, -1, 300]))]
        else:
            axis = src.integer(0, ndim) if src.boolean(0.9) else ndim
            channels = size[axis] if axis < ndim else 1
            if src.boolean(0.2):
                channels += 1
            scales = Storage(f"s{len(self.storages)}", "DoubleStorage", channels,
                             b"".join(struct.pack("<d", 0.1 * (i + 1)) for i in range(channels)))
            float_points = scheme.endswith("float_qparams")
            points = Storage(f"z{len(self.storages)}", "FloatStorage" if float_points else "LongStorage", channels,
                             b"".join(struct.pack("<f" if float_points else "<q", i) for i in range(channels)))
            self.storages += [scales, points]
            if src.boolean(0.8):
                parts += [make_tensor(scales, (channels,)), make_tensor(points, (channels,))]
            else:
                parts += [Seq("list", [Lit(0.1 * (i + 1)) for i in range(channels)]),
                          Seq("list", [Lit(i) for i in range(channels)])]
            parts.append(Lit(axis))
        node = QTensorNode(StorageNode(storage), offset, size, stride, Seq("tuple", parts), src.boolean(0.05))
        self.tensors.append(node)
        return node

    # -- values
    def take(self) -> bool:
        self.budget -= 1
        return self.budget > 0

    def value(self, depth: int) -> Node:
        src = self.src
        if not self.take():
            return self.tensor() if src.boolean(0.5) else Lit(src.integer(0, 9))
        kinds = [(10, "tensor"), (4, "scalar"), (3, "reuse"), (3, "container"), (2, "param"), (2, "torch_value"),
                 (2, "build"), (1, "from_type"), (1, "foreign"), (1, "mutate"), (1, "torch_global"),
                 (1, "storage_value"), (1, "qtensor")]
        if depth > 3:
            kinds = [(10, "tensor"), (4, "scalar"), (3, "reuse")]
        kind = weighted(src, kinds)
        if kind == "tensor":
            return self.tensor()
        if kind == "scalar":
            return self.scalar()
        if kind == "reuse":
            pool = self.tensors + self.containers
            if not pool:
                return self.tensor()
            self.features.add("memo_reuse")
            return src.choice(pool)
        if kind == "container":
            return self.container(depth + 1)
        if kind == "param":
            return self.parameter()
        if kind == "torch_value":
            return self.torch_value()
        if kind == "build":
            return self.build()
        if kind == "from_type":
            return self.from_type()
        if kind == "foreign":
            return self.foreign_object(depth)
        if kind == "mutate":
            return self.mutate(depth)
        if kind == "torch_global":
            return self.torch_global()
        if kind == "qtensor":
            return self.qtensor()
        self.features.add("storage_value")
        return self.storage_for_tensor()

    def scalar(self) -> Node:
        src = self.src
        value = weighted(src, [
            (3, src.integer(-3, 300)), (2, "text"), (1, None), (1, src.boolean()), (1, 1 << src.integer(31, 70)),
            (1, src.choice([0.5, -0.0, float("inf"), float("nan"), 1e308])), (1, b"bytes\x00\xff"),
        ])
        if value == "text":
            value = src.choice(["", "a", "é", "x" * 300, "\ud800"])
        if isinstance(value, bytes):
            self.features.add("bytes_value")
        return Lit(value)

    def key(self, index: int) -> Node:
        src = self.src
        if src.boolean(0.03):
            self.features.add("key_torch_value")
            return weighted(src, [(1, GlobalNode("torch", "float32")), (1, CallNode("torch", "device", [Lit("cpu")])),
                                  (1, CallNode("torch", "Size", [Seq("tuple", [Lit(index)])]))])
        if src.boolean(0.08):
            self.features.add("key_kinds")
            return Lit(src.choice([index, -index, 1.5, None, True]))
        return Lit(src.choice(["w", "bias", "state_dict", "a/b", "ö", "0"]) + str(index))

    def container(self, depth: int) -> Node:
        src = self.src
        kind = weighted(src, [(4, "dict"), (2, "list"), (2, "odict"), (2, "tuple"), (1, "set"), (1, "frozenset")])
        count = src.integer(0, 4)
        if kind in ("set", "frozenset"):
            self.features.add(kind)
            return Seq(kind, [Lit(src.integer(0, 5)) for _ in range(count)])
        if kind in ("list", "tuple"):
            node: Node = Seq(kind, [self.value(depth) for _ in range(count)])
        else:
            items = [(self.key(i), self.value(depth)) for i in range(count)]
            if items and src.boolean(0.15):
                items.append((items[0][0] if src.boolean() else Lit(_lit_copy(items[0][0])), self.value(depth)))
                self.features.add("duplicate_key")
            node = Map(kind, items)
        self.containers.append(node)
        return node

    def parameter(self) -> Node:
        src = self.src
        data = src.choice(self.tensors) if self.tensors and src.boolean(0.3) else self.tensor()
        builder = weighted(src, [(6, "param"), (3, "param_state"), (1, "newobj")])
        self.features.add(f"param_{builder}")
        state = None
        if builder == "param_state":
            state = self.attribute_state()
        node = ParamNode(data, src.boolean(0.7) and node_dtype(data).startswith(FLOATING), builder, state)
        self.tensors.append(node)
        return node

    def attribute_state(self) -> Node:
        """A state that torch applies with setattr (`_set_obj_state`): plain attributes, or ones that replace
        the tensor's data or requires_grad."""
        src = self.src
        kind = weighted(src, [(4, "plain"), (1, "none"), (2, "data"), (1, "requires_grad"), (1, "slots")])
        self.features.add(f"state_{kind}")
        if kind == "none":
            return Lit(None)
        if kind == "data":
            return Map("dict", [(Lit("data"), self.tensor())])
        if kind == "requires_grad":
            return Map("dict", [(Lit("requires_grad"), Lit(src.boolean()))])
        attributes = Map("dict", [(Lit("note"), Lit(src.integer(0, 9)))])
        if kind == "slots":
            return Seq("tuple", [attributes, Map("dict", [(Lit("slot"), Lit(1))])])
        return attributes

    def from_type(self) -> Node:
        src = self.src
        new_type = weighted(src, [(4, ("torch", "Tensor")), (2, ("torch.nn.parameter", "Parameter")),
                                  (1, ("torch._tensor", "Tensor"))])
        self.features.add("from_type_" + ".".join(new_type))
        node = FromTypeNode(self.tensor_args(), new_type, self.attribute_state())
        self.tensors.append(node)
        return node

    def build(self) -> Node:
        """BUILD on a tensor or parameter (torch: set_(*state) / __setstate__), on an OrderedDict or on a dict."""
        src = self.src
        target_kind = weighted(src, [(5, "tensor"), (2, "param"), (1, "odict"), (1, "dict"), (1, "list")])
        self.features.add(f"build_on_{target_kind}")
        if target_kind in ("tensor", "param"):
            pool = [t for t in self.tensors if isinstance(t.ident(), (TensorNode, FromTypeNode))
                    or target_kind == "param"]
            target = src.choice(pool) if pool and src.boolean(0.6) else (
                self.tensor() if target_kind == "tensor" else self.parameter())
            if pool:
                self.features.add("build_after_use")
            state = self.tensor_state(node_dtype(target))
            node: Node = BuildNode(target, state)
            self.tensors.append(node)
            return node
        if target_kind == "list":
            return BuildNode(Seq("list", []), Map("dict", []))
        target = Map(target_kind, [(Lit("k"), self.tensor())])
        state = weighted(src, [(3, Map("dict", [(Lit("attr"), Lit(1))])), (1, Lit(None)), (1, Seq("tuple", []))])
        self.containers.append(target)
        return BuildNode(target, state)

    def tensor_state(self, dtype: str) -> Node:
        """What torch's `inst.set_(*state)` applies: another storage, offset, size and stride; a storage alone;
        nothing (an empty tensor); or Tensor.__setstate__'s 3- and 5-tuples for a parameter."""
        src = self.src
        kind = weighted(src, [(5, "set4"), (2, "set1"), (1, "set0"), (2, "legacy3"), (1, "dict"), (1, "none")])
        self.features.add(f"tensor_state_{kind}")
        if kind == "set4":
            args = self.tensor_args()
            for _ in range(8):  # set_ takes a storage of the tensor's own dtype
                if args_dtype(args) == dtype or src.boolean(0.1):
                    break
                args = self.tensor_args()
            return Seq("tuple", [args.storage, Lit(args.offset), Seq("tuple", [Lit(d) for d in args.size]),
                                 Seq("tuple", [Lit(s) for s in args.stride])])
        if kind == "set1":
            return Seq("tuple", [self.storage_for_tensor()])
        if kind == "set0":
            return Seq("tuple", [])
        if kind == "legacy3":
            return Seq("tuple", [Lit(src.boolean()), Lit(None), Map("odict", [])])
        if kind == "dict":
            return Map("dict", [(Lit("requires_grad"), Lit(True))])
        return Lit(None)

    def torch_value(self) -> Node:
        src = self.src
        kind = weighted(src, [(3, "size"), (2, "dtype"), (2, "device"), (1, "layout"), (1, "bytearray"),
                              (1, "complex"), (1, "set"), (1, "frozenset"), (1, "qscheme")])
        self.features.add(f"value_{kind}")
        if kind == "size":
            return CallNode("torch", "Size", [Seq("tuple", [Lit(src.integer(0, 5)) for _ in range(src.integer(0, 3))])])
        if kind == "dtype":
            return GlobalNode("torch", src.choice(["float32", "bfloat16", "int64", "qint8", "uint16", "complex32"]))
        if kind == "device":
            spec: list[Node] = [Lit(src.choice(["cpu", "cuda", "cuda:1", "meta", "cp}", "nonsense", ""]))]
            if spec[0].value == "cuda" and src.boolean():  # type: ignore[attr-defined]
                spec.append(Lit(src.integer(-2, 3)))
            return CallNode("torch", "device", spec)
        if kind == "layout":
            layout = Lit(src.choice(["torch.strided", "torch.sparse_coo"]))
            return CallNode("torch.serialization", "_get_layout", [layout])
        if kind == "bytearray":
            return CallNode("builtins", "bytearray", [Lit(b"\x00\x01")])
        if kind == "complex":
            return CallNode("builtins", "complex", [Lit(1.5), Lit(-2.0)])
        if kind == "qscheme":
            return GlobalNode("torch", "per_tensor_affine")
        return Seq(kind, [Lit(src.integer(0, 3)) for _ in range(src.integer(0, 3))])

    def torch_global(self) -> Node:
        """Globals torch's weights-only allowlist has that rnninit may not build the way torch does."""
        src = self.src
        kind = weighted(src, [(2, "counter"), (2, "param_newobj"), (1, "meta_tensor"), (1, "cpu_tensor"),
                              (1, "tensor_class"), (1, "typed_storage"), (1, "untyped_class")])
        self.features.add(f"global_{kind}")
        if kind == "counter":
            return CallNode("collections", "Counter", [Map("dict", [(Lit("a"), Lit(1))])])
        if kind == "param_newobj":
            data = self.tensor()
            node = ParamNode(data, src.boolean() and node_dtype(data).startswith(FLOATING), "newobj")
            self.tensors.append(node)
            return node
        if kind == "meta_tensor":
            return CallNode("torch._utils", "_rebuild_meta_tensor_no_storage",
                            [GlobalNode("torch", "float32"), Seq("tuple", [Lit(2)]), Seq("tuple", [Lit(1)]),
                             Lit(False)])
        if kind == "cpu_tensor":
            return CallNode("torch._utils", "_rebuild_device_tensor_from_cpu_tensor",
                            [self.tensor(), GlobalNode("torch", "float32"), Lit("cpu"), Lit(False)])
        if kind == "tensor_class":
            return GlobalNode("torch", src.choice(["Tensor", "FloatTensor"]))
        if kind == "untyped_class":
            return GlobalNode(src.choice(["torch", "torch.storage"]), "UntypedStorage")
        return GlobalNode("torch.storage", "TypedStorage")

    def foreign_object(self, depth: int) -> Node:
        src = self.src
        module, name = src.choice(FOREIGN_NAMES)
        self.foreign.add(f"{module}.{name}")
        via = "newobj" if src.boolean(0.4) else "reduce"
        self.features.add(f"foreign_{via}")
        args = [self.value(depth + 1) for _ in range(src.integer(0, 2))]
        node: Node = CallNode(module, name, args, via)
        if src.boolean(0.5):
            state = weighted(src, [(3, Map("dict", [(Lit("weights"), self.value(depth + 1))])),
                                   (1, Seq("tuple", [Lit(None), Map("dict", [(Lit("slot"), self.value(depth + 1))])])),
                                   (1, Seq("list", [self.value(depth + 1)]))])
            node = BuildNode(node, state)
            self.features.add("foreign_build")
        if src.boolean(0.3):
            op = src.choice(["appends", "setitems", "append", "setitem"])
            payload = [self.value(depth + 1) for _ in range(2)]
            node = MutateNode(node, op, payload)
            self.features.add(f"foreign_{op}")
        if src.boolean(0.15):
            self.features.add("foreign_global_value")
            return GlobalNode(module, name)
        return node

    def mutate(self, depth: int) -> Node:
        """APPEND(S) / SETITEM(S) on a target torch's weights-only unpickler may refuse."""
        src = self.src
        target_kind = weighted(src, [(3, "list"), (3, "dict"), (1, "odict"), (1, "tensor"), (1, "bytearray"),
                                     (1, "list_setitem"), (1, "counter"), (1, "apply")])
        self.features.add(f"mutate_{target_kind}")
        if target_kind == "list":
            target: Node = src.choice([c for c in self.containers if isinstance(c, Seq) and c.kind == "list"]
                                      or [Seq("list", [])])
            return MutateNode(target, src.choice(["append", "appends"]), [self.value(depth + 1)])
        if target_kind in ("dict", "odict"):
            target = Map(target_kind, [])
            return MutateNode(target, src.choice(["setitem", "setitems"]), [Lit("late"), self.value(depth + 1)])
        if target_kind == "tensor":
            return MutateNode(self.tensor(), "append", [Lit(1)])
        if target_kind == "bytearray":
            return MutateNode(CallNode("builtins", "bytearray", [Lit(b"ab")]), "append", [Lit(67)])
        if target_kind == "counter":
            return MutateNode(CallNode("collections", "Counter", []), "setitem", [Lit("a"), Lit(2)])
        if target_kind == "apply":
            self.features.add("apply_object")
            func = weighted(src, [(2, CallNode(*src.choice(FOREIGN_NAMES), [], "newobj")), (1, self.tensor()),
                                  (1, Map("dict", [])), (1, GlobalNode("torch", "float32"))])
            if isinstance(func, CallNode):
                self.foreign.add(f"{func.module}.{func.name}")
            return ApplyNode(func, [Lit(1)])
        target = Seq("list", [Lit(0)])
        return MutateNode(target, "setitem", [Lit(0), self.tensor()])

    # -- the whole plan
    def style_of(self) -> Style:
        src = self.src
        if self.style is not None:
            return self.style
        if src.boolean(0.65):
            style = Style(proto=2, put_everything=src.boolean(0.8), appends=src.boolean(0.8),
                          long_binput=src.boolean(0.05))
            return style
        self.features.add("protocol_4")
        return Style(proto=src.choice([3, 4, 5]), short_unicode=src.boolean(), memoize=src.boolean(),
                     stack_global=src.boolean(), frame=src.boolean(), bytes_op=src.boolean(),
                     set_ops=src.boolean(), put_everything=src.boolean(0.8), appends=src.boolean(0.8))

    def plan(self) -> Plan:
        src = self.src
        style = self.style_of()
        root_kind = weighted(src, [(6, "dict"), (2, "odict"), (1, "list"), (1, "tuple"), (1, "tensor")])
        if root_kind == "tensor":
            root: Node = self.tensor()
        elif root_kind in ("list", "tuple"):
            root = Seq(root_kind, [self.value(1) for _ in range(src.integer(1, 5))])
        else:
            items = [(self.key(i), self.value(1)) for i in range(src.integer(1, 6))]
            if src.boolean(0.1):
                items.append((Lit(_lit_copy(items[0][0])), self.value(1)))
                self.features.add("duplicate_key")
            root = Map(root_kind, items)
        if not self.storages and isinstance(root, Map):  # every file has at least one storage record
            root.items.append((Lit("extra"), self.tensor()))
        plan = Plan(root, self.storages, style, features=self.features, foreign=self.foreign)
        if self.legacy:
            plan.container = "legacy"
            if src.boolean(0.3):
                plan.layout = [src.choice(LEGACY_LAYOUTS)]
        elif src.boolean(self.layout_rate):
            plan.layout = [src.choice(ZIP_LAYOUTS) for _ in range(src.integer(1, 2))]
        if not self.legacy and src.boolean(0.1):
            plan.folder = src.choice(["model", "a", "x.y", "weights-v2", "ärchive", "data"])
            self.features.add("folder_name")
        plan.features |= {f"layout_{change}" for change in plan.layout}
        plan.features.add(f"container_{plan.container}")
        return plan


def args_dtype(args: TensorArgs) -> str:
    """The dtype torch gives a tensor rebuilt from `args`."""
    storage = args.storage.storage if isinstance(args.storage, StorageNode) else None
    if args.builder == "v3":
        return args.dtype
    if storage is None or storage.cls == "UntypedStorage":
        return "uint8"
    return STORAGE_CLASSES[storage.cls][1]


def node_dtype(node: Node) -> str:
    node = node.ident()
    if isinstance(node, (TensorNode, FromTypeNode)):
        return args_dtype(node.args)
    if isinstance(node, ParamNode):
        return node_dtype(node.data)
    return ""


def _lit_copy(node: Node) -> Any:
    return node.value if isinstance(node, Lit) else "k"


MODES = ("any", "pickle2", "pickle4", "zip", "legacy")


def generate(src: Source, mode: str = "any") -> tuple[Plan, bytes]:
    """A plan and its file's bytes. `mode`: "pickle2" (torch.save's opcodes, a plain archive), "pickle4"
    (protocol 3-5 opcodes, a plain archive), "zip" (layout changes), "legacy", or "any" of them."""
    if mode == "any":
        legacy = src.boolean(0.1)
        generator = PlanGen(src, legacy=legacy)
    elif mode == "legacy":
        generator = PlanGen(src, legacy=True)
    elif mode == "pickle2":
        style = Style(proto=2, put_everything=src.boolean(0.8), appends=src.boolean(0.8),
                      long_binput=src.boolean(0.05))
        generator = PlanGen(src, style=style, layout_rate=0.0)
    elif mode == "pickle4":
        style = Style(proto=src.choice([3, 4, 5]), short_unicode=src.boolean(), memoize=src.boolean(),
                      stack_global=src.boolean(), frame=src.boolean(), bytes_op=src.boolean(),
                      set_ops=src.boolean(), put_everything=src.boolean(0.8), appends=src.boolean(0.8))
        generator = PlanGen(src, style=style, layout_rate=0.0)
        generator.features.add("protocol_4")
    else:
        generator = PlanGen(src, layout_rate=1.0)
    plan = generator.plan()
    data = write_plan(plan, src)
    if data.startswith(b"PK"):
        plan.features |= zip_facts(data)
    return plan, data


def mutation_features(data: bytes) -> set[str]:
    """The features of a mutated file: "mutated" and what its central directory says."""
    return {"mutated"} | (zip_facts(data) if data.startswith(b"PK") else set())


# --- the oracle: torch.load ------------------------------------------------------------------------------------


class StandIn:
    """An inert object of a foreign class, made by torch's unpickler: what the pickle gave it, recorded
    (rnninit's inert records name their contents the same way: state attributes, __args__, __items__...)."""

    standin_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        self = object.__new__(cls)
        self.__dict__.update(standin_args=args, standin_kwargs=kwargs or None, standin_state=None,
                             standin_items=[], standin_entries=[])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["standin_state"] = state

    def append(self, item: Any) -> None:
        self.__dict__["standin_items"].append(item)

    def extend(self, items: Any) -> None:
        self.__dict__["standin_items"].extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["standin_entries"].append((key, value))

    def children(self) -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = []
        state = self.__dict__["standin_state"]
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)) \
                and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            found.extend((str(key), value) for key, value in state.items())
        elif state is not None:
            found.append(("__state__", state))
        recorded = self.__dict__
        for label, value in (("__args__", recorded["standin_args"]), ("__kwargs__", recorded["standin_kwargs"]),
                             ("__items__", recorded["standin_items"])):
            if value:
                found.append((label, value))
        if self.__dict__["standin_entries"]:
            found.append(("__entries__", list(self.__dict__["standin_entries"])))
        return found


_STAND_INS: dict[str, type[StandIn]] = {}


def stand_in(qualified: str) -> type[StandIn]:
    """The stand-in class for "module.Name", with that module and qualified name."""
    known = _STAND_INS.get(qualified)
    if known is None:
        module, _, name = qualified.rpartition(".")
        safe = re.sub(r"\W", "_", name) or "StandIn"  # a class name holds no NUL (torch keys it by `qualified`)
        known = type(safe, (StandIn,), {"__module__": module, "__qualname__": safe, "standin_name": qualified})
        _STAND_INS[qualified] = known
    return known


def _allowed_globals(stand_ins: list[type[StandIn]]) -> dict[str, Any]:
    from torch import _weights_only_unpickler as wo

    allowed = dict(wo._get_allowed_globals())
    allowed.update({cls.standin_name: cls for cls in stand_ins})
    allowed.update({f"builtins.{kind.__name__}": kind for kind in VALUE_TYPES})  # the documented value types
    return allowed


class OracleUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """pickle's pure-Python unpickler for the opcodes torch's weights-only one lacks, with its restrictions
    kept: globals from torch's weights-only allowlist and the stand-ins only; BUILD, APPEND(S), SETITEM(S),
    NEWOBJ and REDUCE as torch's weights-only unpickler does them (stand-ins also take APPENDs and SETITEMs)."""

    stand_ins: tuple[type[StandIn], ...] = ()
    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        from torch._utils import IMPORT_MAPPING, NAME_MAPPING

        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        allowed = _allowed_globals(list(self.stand_ins))
        full = f"{module}.{name}"
        if full not in allowed:
            raise pickle.UnpicklingError(f"oracle: global {full} is not allowed")
        return allowed[full]

    def _callable(self, func: Any) -> bool:
        allowed = _allowed_globals(list(self.stand_ins)).values()
        return any(func is value for value in allowed)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not self._callable(func):
            raise pickle.UnpicklingError(f"oracle: REDUCE of {type(func).__name__}")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is torch.nn.Parameter:
            self.append(torch.nn.Parameter(*args))
        elif self._callable(cls) and isinstance(cls, type):
            self.append(cls.__new__(cls, *args))
        else:
            raise pickle.UnpicklingError(f"oracle: NEWOBJ of {cls!r}")

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (self._callable(cls) and isinstance(cls, type)):
            raise pickle.UnpicklingError(f"oracle: NEWOBJ_EX of {cls!r}")
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is torch.Tensor:
            inst.set_(*state)
        elif type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
        elif type(inst) is OrderedDict:
            inst.__dict__.update(state)
        elif isinstance(inst, StandIn):
            inst.__setstate__(state)
        else:
            raise pickle.UnpicklingError(f"oracle: BUILD on a {type(inst).__name__}")

    def load_append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        if type(target) is not list and not isinstance(target, StandIn):
            raise pickle.UnpicklingError(f"oracle: APPEND to a {type(target).__name__}")
        target.append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not list and not isinstance(target, StandIn):
            raise pickle.UnpicklingError(f"oracle: APPENDS to a {type(target).__name__}")
        target.extend(items)

    def _check_mapping(self, target: Any) -> None:
        from collections import Counter

        if type(target) not in (dict, OrderedDict, Counter) and not isinstance(target, StandIn):
            raise pickle.UnpicklingError(f"oracle: SETITEM on a {type(target).__name__}")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._check_mapping(self.stack[-1])
        self.stack[-1][key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self._check_mapping(target)
        for index in range(0, len(items), 2):
            target[items[index]] = items[index + 1]

    for _name, _method in (("REDUCE", load_reduce), ("NEWOBJ", load_newobj), ("NEWOBJ_EX", load_newobj_ex),
                           ("BUILD", load_build), ("APPEND", load_append), ("APPENDS", load_appends),
                           ("SETITEM", load_setitem), ("SETITEMS", load_setitems)):
        dispatch[getattr(pickle, _name)[0]] = _method
    del _name, _method


def oracle_pickle_module(stand_ins: list[type[StandIn]]) -> types.ModuleType:
    """A pickle-module-like object for torch.load(pickle_module=...): its Unpickler is OracleUnpickler."""
    module = types.ModuleType("differential_oracle_pickle")
    unpickler = type("Unpickler", (OracleUnpickler,), {"stand_ins": tuple(stand_ins)})
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


@dataclass
class TorchResult:
    how: str  # "weights_only", "fallback" (the extension oracle) or "refused"
    root: Any = None
    error: str = ""


def pickle_facts(data: bytes) -> tuple[set[str], set[str]]:
    """(opcode names, "module.name" of the globals) of the data pickle of a zip archive or legacy file, as far as
    `pickletools` can read it."""
    pickled = data
    if data.startswith(b"PK"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
                pickled = archive.read(names[-1]) if names else b""
        except Exception:
            pickled = b""
    ops: set[str] = set()
    found: set[str] = set()
    strings: list[str] = []
    stream = io.BytesIO(pickled)
    for _ in range(8):  # a legacy file holds several pickles
        start = stream.tell()
        try:
            for op, arg, _ in pickletools.genops(stream):
                ops.add(op.name)
                if op.name == "GLOBAL":
                    found.add(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:
            break
        if stream.tell() == start:
            break
    return ops, found


# plain values of a few more builtin types, a documented extension (README "Safety"): the oracle allows the real
# types, so that torch builds the same values
VALUE_TYPES = (frozenset, bytes, slice, range)
VALUE_TYPE_NAMES = frozenset(f"{module}.{kind.__name__}" for module in ("builtins", "__builtin__")
                             for kind in VALUE_TYPES)

# globals rnninit builds into values (never inert records) that torch's weights-only allowlist lacks: torch's
# refusal of them is a disagreement, not an extension
RNNINIT_BUILDS = frozenset({
    *(f"{module}.{name}" for module in ("builtins", "__builtin__") for name in ("set", "bytearray", "complex")),
    "_codecs.encode", "copyreg._reconstructor", "copy_reg._reconstructor",
    "torch._tensor.Tensor",
    *(f"torch.jit._pickle.{name}" for name in ("build_tensorlist", "build_intlist", "build_doublelist",
                                               "build_boollist", "build_genericlist", "restore_type_tag")),
})


def foreign_globals(names: set[str]) -> set[str]:
    """The globals rnninit reads as inert records, which the oracle builds as stand-ins: those not in torch's
    weights-only allowlist (torch's own behaviour is the truth for those), not built by rnninit (RNNINIT_BUILDS) and
    not refused by rnninit as dangerous."""
    from torch import _weights_only_unpickler as wo
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    from rnninit_cli.formats.unpickle.machine import dangerous

    allowed = wo._get_allowed_globals()
    found = set()
    for name in names:
        module, _, attribute = name.rpartition(".")
        if (module, attribute) in NAME_MAPPING:  # torch renames Python 2 globals as it reads them
            module, attribute = NAME_MAPPING[(module, attribute)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        name = f"{module}.{attribute}"
        if not module or not attribute or name in allowed or name in RNNINIT_BUILDS or name in VALUE_TYPE_NAMES \
                or dangerous(module, attribute):
            continue
        found.add(name)
    return found


def is_torchscript(data: bytes) -> bool:
    """What torch.load takes for a TorchScript archive (and hands to torch.jit.load): a constants.pkl record."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in archive.namelist())
    except Exception:
        return False


def torch_load(path: Path, data: bytes, foreign: set[str] | None = None, *, torchscript: bool = False) -> TorchResult:
    """What torch reads: weights-only (stand-ins for foreign classes), else where the file uses rnninit's
    documented extensions (opcodes torch lacks, foreign objects), the restricted pickle_module oracle. A TorchScript
    archive (another extension) is read by torch.jit.load only when `torchscript` says the file is one torch.jit.save
    wrote here (the seed corpus): TorchScript code is never compiled from generated or mutated files."""
    if is_torchscript(data):
        if not torchscript:
            return TorchResult("refused", error="RuntimeError: a TorchScript archive (constants.pkl): torch.load "
                                                "refuses TorchScript archives with weights_only=True")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = torch.jit.load(str(path), map_location="cpu")
                return TorchResult("jit", {**dict(module.named_parameters()), **dict(module.named_buffers())})
            except Exception as error:
                return TorchResult("refused", error=f"{type(error).__name__}: {error}")
    ops, names = pickle_facts(data)
    foreign = set(foreign or ()) | foreign_globals(names)
    stand_ins = [stand_in(name) for name in sorted(foreign)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.serialization.safe_globals([*((cls, cls.standin_name) for cls in stand_ins), *VALUE_TYPES]):
                return TorchResult("weights_only", torch.load(path, weights_only=True, map_location="cpu"))
        except Exception as error:
            first = f"{type(error).__name__}: {error}"
        if not (ops - TORCH_OPS) and not foreign:
            return TorchResult("refused", error=first)
        try:
            module = oracle_pickle_module(stand_ins)
            return TorchResult("fallback", torch.load(path, weights_only=False, pickle_module=module,
                                                      map_location="cpu"))
        except Exception as error:
            return TorchResult("refused", error=f"{first}\n(extension oracle: {type(error).__name__}: {error})")


def refusal_reason(error: str) -> str:
    """torch's reason to refuse, without its advice (the extension oracle's reason, where it ran)."""
    text = error.split("(extension oracle: ", 1)[1].removesuffix(")") if "(extension oracle: " in error else error
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    return text.strip()


def refusal_slug(error: str) -> str:
    """A short, stable name for torch's reason to refuse (the extension oracle's, where it ran)."""
    text = refusal_reason(error)
    rules = [
        (r"Unsupported operand (\d+)", lambda m: "opcode_" + _op_name(int(m.group(1)))),
        (r"Unsupported global: GLOBAL (\S+)", lambda m: "global_" + m.group(1)),
        (r"Can only append to lists|Can only extend lists", lambda m: "append_target"),
        (r"Can only build Tensor", lambda m: "build_target"),
        (r"Can only (SETITEMS?) for dict", lambda m: "setitem_target"),
        (r"Trying to call reduce for unrecognized function", lambda m: "reduce_function"),
        (r"Can only create new object", lambda m: "newobj_target"),
        (r"TorchScript archive", lambda m: "torchscript"),
        (r"Unknown endianness", lambda m: "byteorder"),
        (r"storage_alignment|invalid literal for int", lambda m: "int_record"),
        (r"PytorchStreamReader failed reading zip archive: ([^.]*)", lambda m: "zip_" + m.group(1)),
        (r"PytorchStreamReader failed (\w+ \w+)", lambda m: "zip_" + m.group(1)),
        (r"file not found: (\S+)", lambda m: "record_missing"),
        (r"Invalid magic number", lambda m: "legacy_magic"),
        (r"(\w+Error): ", lambda m: m.group(1) + "_" + _words(text[m.end():])),
    ]
    for pattern, name in rules:
        found = re.search(pattern, text)
        if found:
            return re.sub(r"[^\w.]+", "_", name(found))[:60]
    return _words(text)


def _op_name(code: int) -> str:
    op = next((op for op in pickletools.opcodes if ord(op.code) == code), None)
    return op.name if op else str(code)


def _words(text: str) -> str:
    words = re.findall(r"[A-Za-z_]+", text.splitlines()[0] if text else "")
    return "_".join(words[:5]).lower() or "unknown"


# --- what each side read, in one form --------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorView:
    """A tensor as a reader gives it."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    storage: Any  # an identity within one read (None: an empty storage, which torch never shares)
    data: bytes | None  # the elements' bytes in row-major order (None: a meta tensor)
    requires_grad: bool | None = None
    parameter: bool | None = None
    quantizer: Any = None  # a quantized tensor's scheme and parameters (torch tensors only)


def quantizer_of(tensor: torch.Tensor) -> Any:
    """(scheme, parameters...) of a quantized tensor, None for others."""
    if not tensor.is_quantized:
        return None
    if tensor.is_neg() or tensor.is_conj():  # qscheme() crashes torch on such a tensor
        return ("unknown",)
    try:
        scheme = str(tensor.qscheme()).removeprefix("torch.")
    except RuntimeError:  # torch made a quantized tensor without a quantizer (a plain rebuild of a quantized dtype)
        return ("unknown",)
    if scheme.startswith("per_tensor"):
        return (scheme, struct.pack(">d", tensor.q_scale()), tensor.q_zero_point())
    return (scheme, tensor.q_per_channel_axis(), tensor_bytes(tensor.q_per_channel_scales()),
            tensor_bytes(tensor.q_per_channel_zero_points()))


def tensor_bytes(tensor: torch.Tensor) -> bytes | None:
    if tensor.is_meta:
        return None
    if tensor.is_quantized:  # the stored integers (int_repr crashes torch on a tensor without a quantizer)
        if quantizer_of(tensor) == ("unknown",):
            return b"<quantized without a quantizer>"
        tensor = tensor.int_repr()
    try:
        resolved = tensor.detach().resolve_conj().resolve_neg()
    except (RuntimeError, NotImplementedError):  # torch holds a lazy negation it cannot compute for this dtype
        return b"<unresolvable %s>" % "".join(sorted(b for b, on in (("conj", tensor.is_conj()),
                                                                        ("neg", tensor.is_neg())) if on)).encode()
    if resolved.numel() == 0:
        return b""
    if resolved.dtype == torch.bool:  # a copy turns any nonzero byte into 1: compare bools as 0 / 1
        resolved = resolved.view(torch.uint8).ne(0).view(torch.uint8)
    fresh = torch.empty(tuple(resolved.shape), dtype=resolved.dtype).copy_(resolved)  # row-major, stride 1 at the end
    return fresh.reshape(-1).view(torch.uint8).numpy().tobytes()


def torch_view(tensor: torch.Tensor) -> TensorView:
    storage = tensor.untyped_storage()
    identity = storage.data_ptr() if storage.nbytes() and not tensor.is_meta else None
    return TensorView(str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), tuple(tensor.stride()),
                      tensor.storage_offset(), identity, tensor_bytes(tensor), tensor.requires_grad,
                      isinstance(tensor, torch.nn.Parameter), quantizer_of(tensor))


def array_bytes(array: Any) -> bytes:
    import numpy as np

    if array.dtype == np.bool_:  # as tensor_bytes: any nonzero byte is True
        array = np.ascontiguousarray(array).view(np.uint8) != 0
    return array.tobytes()  # row-major; a BFloat16Array's bits


def leaf_form(value: Any) -> Any:
    """A non-tensor value in a form both sides share (dtypes, devices, storages, foreign globals...)."""
    from rnninit_cli.formats.unpickle import rebuilders, records

    if value is None or isinstance(value, (bool, int, str)):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    if isinstance(value, complex):
        return ("complex", struct.pack(">dd", value.real, value.imag))
    if isinstance(value, (bytes, bytearray)):
        return (type(value).__name__, bytes(value))
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, tuple(sorted(repr(leaf_form(item)) for item in value)))
    if isinstance(value, (torch.dtype, torch.layout, torch.qscheme)):
        return ("dtype", str(value).removeprefix("torch."))
    if isinstance(value, records.DtypeRef):
        return ("dtype", value.name.removeprefix("torch."))
    if isinstance(value, torch.device):
        return ("device", str(value))
    if isinstance(value, records.DeviceRef):
        try:
            return ("device", str(torch.device(*value.spec)))
        except Exception:
            return ("device", repr(value.spec))
    if isinstance(value, (torch.storage.TypedStorage, torch.UntypedStorage, records.StorageRef)):
        return ("storage",)
    if isinstance(value, (records.StorageType, torch.serialization.StorageType)):
        return ("storage_class",)
    if isinstance(value, type) and issubclass(value, (torch.storage.TypedStorage, torch.UntypedStorage)):
        return ("storage_class",)
    if isinstance(value, records._ForeignGlobal):  # a global named as a value: torch's own, or a foreign one
        from torch import _weights_only_unpickler as wo

        name = f"{value.module}.{value.name}"
        return ("callable",) if name in wo._get_allowed_globals() else ("global", name)
    if isinstance(value, type) and issubclass(value, StandIn):
        return ("global", value.standin_name)
    if isinstance(value, (slice, range)):
        return (type(value).__name__, repr(value))
    if isinstance(value, rebuilders._Builder) or callable(value):  # an allowed function or class named as a value
        return ("callable",)
    return ("other", type(value).__name__)


def torch_walk(root: Any) -> Iterator[tuple[str, Any]]:
    """(path, leaf) of torch's object graph, named as rnninit names paths: dict keys, list and tuple indexes,
    a foreign object's state attributes, __args__, __items__...; each container walked once."""
    walked: set[int] = set()
    keep: list[Any] = []
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, torch.Tensor):
            yield path, value
            continue
        if isinstance(value, dict):
            items: list[tuple[Any, Any]] = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, StandIn):
            items = value.children()
            keep.append(items)
        else:
            yield path, value
            continue
        if id(value) in walked:
            continue
        walked.add(id(value))
        stack.extend(reversed([(f"{path}/{key!s}" if path else str(key), item) for key, item in items]))


@dataclass
class Read:
    """What one reader gave: tensors and other leaves by path; or its refusal (or crash)."""

    tensors: dict[str, TensorView] = field(default_factory=dict)
    leaves: dict[str, Any] | None = field(default_factory=dict)  # None: not comparable (TorchScript modules)
    refused: str = ""  # the error's first line
    crashed: str = ""  # an exception type a reader should never raise


def torch_read(result: TorchResult) -> Read:
    if result.how == "refused":
        return Read(refused=result.error or "refused")
    read = Read(leaves=None if result.how == "jit" else {})
    for path, value in torch_walk(result.root):
        name = path or "tensor"
        if isinstance(value, torch.Tensor):
            read.tensors[name] = torch_view(value)
        elif read.leaves is not None:
            read.leaves[name] = leaf_form(value)
    return read


def _reader_errors() -> tuple[type[BaseException], ...]:
    from rnninit_cli.errors import CheckpointError, OutputError, UnsafeCheckpointError
    from rnninit_cli.formats.tensorfile import CannotPatch

    return (CheckpointError, UnsafeCheckpointError, CannotPatch, OutputError)


def _guarded(read: Callable[[], Read]) -> Read:
    try:
        return read()
    except _reader_errors() as error:
        return Read(refused=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    except ReaderTimeout:
        return Read(crashed="Timeout")
    except Exception as error:
        return Read(crashed=f"{type(error).__name__}: {str(error)[:200]}")


def _walked(root: Any) -> list[tuple[str, Any]]:
    """rnninit's walk of `root`, every leaf kept while walking (see test_known_disagreement_walk_skips_entries_...:
    what a caller allocates during the walk must not change what it yields)."""
    from rnninit_cli.formats.unpickle.objects import walk

    return list(walk(root, ""))


def _leaves(root: Any) -> dict[str, Any]:
    from rnninit_cli.formats.unpickle.objects import is_tensor

    return {path or "tensor": leaf_form(value) for path, value in _walked(root) if not is_tensor(value)}


def _refs(root: Any) -> dict[str, Any]:
    from rnninit_cli.formats.unpickle.records import TensorRef

    return {path or "tensor": value for path, value in _walked(root) if isinstance(value, TensorRef)}


def read_load(path: Path) -> Read:
    """rnninit_cli.formats.checkpoint.load_checkpoint: the whole load (torch tensors, built as the pickle is read)."""
    from rnninit_cli.formats.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    read = Read(leaves=_leaves(checkpoint.root))
    for name, tensor in checkpoint.tensors.items():
        read.tensors[name] = torch_view(tensor)
    return read


def read_read(path: Path) -> Read:
    """rnninit_cli.formats.checkpoint.read_checkpoint: the torch-free whole read (numpy arrays)."""
    from rnninit_cli.formats.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path)
    refs = _refs(checkpoint.root)
    if checkpoint.torchscript:  # tensors named by state_dict paths
        from rnninit_cli.formats.unpickle.files import named_tensors, read_file

        refs = named_tensors(read_file(path.read_bytes(), str(path)))
    read = Read(leaves=_leaves(checkpoint.root))
    arrays = checkpoint.arrays(list(checkpoint.records))
    for name, record in checkpoint.records.items():
        ref = refs[name]
        array = arrays[name]
        if tuple(array.shape) != tuple(record.shape):
            raise AssertionError(f"{name}: array shape {array.shape} but record {record.shape}")
        read.tensors[name] = TensorView(ref.dtype, tuple(ref.shape), tuple(ref.stride), ref.offset,
                                        ref.storage.key if ref.storage.nbytes else None, array_bytes(array),
                                        ref.requires_grad, ref.parameter)
    return read


def read_index(path: Path) -> Read:
    """rnninit_cli.formats.tensorfile.index_file: the patch path (`apply`): byte ranges, arrays and torch copies."""
    from rnninit_cli.formats.tensorfile import index_file

    with index_file(path) as indexed:
        refs = _refs(indexed.root)
        read = Read(leaves=_leaves(indexed.root))
        names = list(indexed.locations)
        arrays = indexed.arrays(names)
        loaded = indexed.load(names)
        for name, location in indexed.locations.items():
            ref = refs.get(name)
            empty = ref is not None and ref.storage.nbytes == 0
            data = array_bytes(arrays[name])
            copy = tensor_bytes(loaded[name])
            if copy != data:
                raise AssertionError(f"{name}: TensorFile.load and TensorFile.arrays read different bytes")
            read.tensors[name] = TensorView(location.dtype_name, tuple(location.shape), tuple(location.stride),
                                            location.offset, None if empty else location.storage, data,
                                            ref.requires_grad if ref is not None else None,
                                            ref.parameter if ref is not None else None)
    return read


READERS: dict[str, Callable[[Path], Read]] = {"load": read_load, "read": read_read, "index": read_index}


# --- comparing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disagreement:
    kind: str  # "<reader>:<what>", e.g. "read:values", "index:torch_refuses:global_builtins.frozenset"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def _partition(tensors: dict[str, TensorView], names: set[str]) -> set[frozenset[str]]:
    groups: dict[Any, set[str]] = {}
    for name in names:
        storage = tensors[name].storage
        if storage is not None:
            groups.setdefault(storage, set()).add(name)
    return {frozenset(group) for group in groups.values()}


def compare(reader: str, ours: Read, oracle: Read) -> list[Disagreement]:
    """What `reader` read that torch does not (nothing when the reader refused)."""
    if ours.crashed:
        return [Disagreement(f"{reader}:crash:{ours.crashed.split(':')[0]}", ours.crashed)]
    if ours.refused:
        return []
    if oracle.refused:
        return [Disagreement(f"{reader}:torch_refuses:{refusal_slug(oracle.refused)}",
                             refusal_reason(oracle.refused)[:300])]
    found: list[Disagreement] = []
    mine, theirs = set(ours.tensors), set(oracle.tensors)
    if mine != theirs:
        extra, missing = sorted(mine - theirs), sorted(theirs - mine)
        what = "names_extra" if extra and not missing else "names_missing" if missing and not extra else "names"
        found.append(Disagreement(f"{reader}:{what}", f"rnninit only: {extra[:5]}, torch only: {missing[:5]}"))
    common = mine & theirs
    fields = [("dtype", "dtype"), ("shape", "shape"), ("stride", "stride"), ("offset", "offset"),
              ("values", "data"), ("requires_grad", "requires_grad"), ("parameter", "parameter"),
              ("quantizer", "quantizer")]
    for name in sorted(common):
        a, b = ours.tensors[name], oracle.tensors[name]
        for label, attribute in fields:
            left, right = getattr(a, attribute), getattr(b, attribute)
            if left is None or right is None:
                continue
            if left != right:
                if label == "values" and (a.dtype, a.shape) != (b.dtype, b.shape):
                    continue  # already told by dtype / shape
                shown = (left[:16].hex(), right[:16].hex()) if label == "values" else (left, right)
                found.append(Disagreement(f"{reader}:{label}", f"{name}: rnninit {shown[0]} torch {shown[1]}"))
    usable = {name for name in common if oracle.tensors[name].storage is not None
              and ours.tensors[name].storage is not None}
    if _partition(ours.tensors, usable) != _partition(oracle.tensors, usable):
        mine_groups = sorted(map(sorted, _partition(ours.tensors, usable)))
        theirs_groups = sorted(map(sorted, _partition(oracle.tensors, usable)))
        found.append(Disagreement(f"{reader}:sharing", f"rnninit {mine_groups} torch {theirs_groups}"))
    if ours.leaves is None or oracle.leaves is None:
        return _dedupe(found)
    for name in sorted(set(ours.leaves) & set(oracle.leaves)):
        if ours.leaves[name] != oracle.leaves[name]:
            found.append(Disagreement(f"{reader}:leaf_value", f"{name}: rnninit {ours.leaves[name]!r:.80} "
                                      f"torch {oracle.leaves[name]!r:.80}"))
    if set(ours.leaves) != set(oracle.leaves):
        extra, missing = sorted(set(ours.leaves) - set(oracle.leaves)), sorted(set(oracle.leaves) - set(ours.leaves))
        found.append(Disagreement(f"{reader}:leaf_names", f"rnninit only: {extra[:5]}, torch only: {missing[:5]}"))
    return _dedupe(found)


def _dedupe(found: list[Disagreement]) -> list[Disagreement]:
    seen: set[str] = set()
    kept = []
    for item in found:
        if item.kind not in seen:
            seen.add(item.kind)
            kept.append(item)
    return kept


@dataclass
class Outcome:
    """One file through the oracle and every reader."""

    oracle: str  # TorchResult.how
    accepted: dict[str, bool]
    disagreements: list[Disagreement]
    oracle_error: str = ""


class ReaderTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM after `seconds` (main thread only; elsewhere no limit)."""
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(_signum: int, _frame: Any) -> None:
        raise ReaderTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def evaluate(data: bytes, folder: Path, *, foreign: set[str] | None = None, name: str = "case.pt",
             seconds: float = 10.0, torchscript: bool = False) -> Outcome:
    """Write `data` to `folder/name`, read it with torch (the oracle) and each rnninit reader, compare.
    `torchscript`: the file is a TorchScript archive torch.jit.save wrote here, which torch.jit.load may read."""
    path = folder / name
    path.write_bytes(data)
    try:
        with time_limit(seconds):
            result = torch_load(path, data, foreign, torchscript=torchscript)
    except ReaderTimeout:
        result = TorchResult("refused", error="Timeout: torch.load took too long")
    oracle = torch_read(result)
    accepted: dict[str, bool] = {}
    found: list[Disagreement] = []
    for reader, read in READERS.items():
        try:
            with time_limit(seconds):
                ours = _guarded(lambda read=read: read(path))
        except ReaderTimeout:
            ours = Read(crashed="Timeout")
        accepted[reader] = not ours.refused and not ours.crashed
        found += compare(reader, ours, oracle)
    return Outcome(result.how, accepted, found, result.error)


# --- small files by hand (the known disagreements' reproducers) ------------------------------------------------


def make_storage(key: str = "0", cls: str = "FloatStorage", numel: int = 4, data: bytes | None = None,
                 module: str = "torch") -> Storage:
    """A storage record of `numel` elements (bytes 0, 1, 2... unless given)."""
    itemsize = 1 if cls == "UntypedStorage" else STORAGE_CLASSES[cls][0]
    if data is None:
        data = bytes(range(numel * itemsize))
    return Storage(key, cls, numel, data, module=module)


def make_tensor(storage: Storage | StorageNode, size: tuple[int, ...] = (4,), stride: tuple[int, ...] | None = None,
                offset: int = 0, **kwargs: Any) -> TensorNode:
    """_rebuild_tensor_v2 (or `builder=`) of a view of `storage`."""
    node = storage if isinstance(storage, StorageNode) else StorageNode(storage)
    stride = contiguous_strides(size) if stride is None else stride
    return TensorNode(TensorArgs(node, offset, size, stride, **kwargs))


def make_file(root: Node, storages: Sequence[Storage], *, style: Style | None = None, layout: Sequence[str] = (),
              legacy: bool = False, folder: str = "archive", seed: int = 0) -> bytes:
    """The bytes of a torch.save file of `root` (zip, or legacy)."""
    plan = Plan(root, list(storages), style or Style(), "legacy" if legacy else "zip", list(layout), folder)
    return write_plan(plan, RandomSource(random.Random(seed)))


def entries(**values: Node) -> Map:
    """A dict of string keys."""
    return Map("dict", [(Lit(key), value) for key, value in values.items()])


# --- the disagreements known today ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A disagreement class found by this harness, reproduced by tests/formats/test_differential.py's
    `test_known_disagreement_<name>` (which fails until rnninit refuses or agrees). A generated file's
    disagreement is this class when its kind matches `kinds` and the file has one of `features` (or, for a
    `specific` class, whose kind names its cause alone, when the file is a mutation)."""

    name: str
    features: frozenset[str]
    kinds: tuple[str, ...]
    specific: bool = True
    detail: str = ""  # a regular expression the disagreement's detail must match, if given


KNOWN: tuple[Known, ...] = (
    Known("float8_e5m2_strided_crash", frozenset({"dtype_float8_e5m2"}), ("read:crash:TypeError",
                                                                           "index:crash:TypeError"), False),
    Known("counter_read_as_foreign", frozenset({"global_counter", "mutate_counter"}),
          ("*:leaf_names", "*:names*", "*:leaf_value"), False),
    Known("storage_record_longer_than_declared", frozenset({"record_longer"}),
          ("*:torch_refuses:RuntimeError_record_size*",)),
    Known("parameter_of_a_shared_tensor", frozenset({"param_param", "param_param_state"}),
          ("read:parameter", "index:parameter", "read:requires_grad", "index:requires_grad")),
    Known("frozenset_global", frozenset({"frozenset", "value_frozenset"}), ("*:torch_refuses:*frozenset*",)),
    Known("untyped_storage_global_name", frozenset({"untyped_storage_module_torch"}),
          ("*:torch_refuses:*torch.UntypedStorage", "*:torch_refuses:*torch_untypedstorage*")),
    Known("constants_pkl_record", frozenset({"layout_constants_pkl"}), ("*:torch_refuses:torchscript",)),
    Known("from_type_torch_tensor_module", frozenset({"from_type_torch._tensor.Tensor"}),
          ("*:torch_refuses:*torch._tensor.Tensor", "*:torch_refuses:*torch__tensor_tensor*")),
    Known("append_to_bytearray", frozenset({"mutate_bytearray"}),
          ("*:torch_refuses:append_target", "*:torch_refuses:*append_to_a_bytearray*")),
    Known("v3_tensor_requiring_grad", frozenset({"requires_grad_v3"}),
          ("*:torch_refuses:RuntimeError_a_leaf_variable*",)),
    Known("from_type_parameter_in_whole_load", frozenset({"from_type_torch.nn.parameter.Parameter"}),
          ("load:parameter",)),
    Known("storage_alignment_not_an_integer", frozenset({"layout_storage_alignment"}),
          ("*:torch_refuses:int_record",)),
    Known("encrypted_flag", frozenset({"layout_encrypted"}),
          ("load:crash:RuntimeError", "read:crash:RuntimeError", "index:torch_refuses:zip_retrieving_file"),
          detail="encrypt"),
    Known("disk_number_start", frozenset({"layout_disk_number"}), ("*:torch_refuses:zip_unsupported_multidisk*",)),
    Known("directory_attribute", frozenset({"layout_directory_attr"}), ("*",), False),  # torch reads garbage
    Known("record_outside_the_archive_folder", frozenset({"layout_outside_record", "layout_first_other_folder"}),
          ("*:torch_refuses:*inline_container*",), detail="not in a subdirectory"),
    Known("empty_storage_declared_again", frozenset({"storage_redeclared"}),
          ("*:torch_refuses:RuntimeError_record_size*",), detail=r"record size \(0 bytes\)"),
    Known("rebuild_tensor_v2_with_fewer_arguments", frozenset({"arity_4", "arity_5"}),
          ("*:torch_refuses:TypeError__rebuild_tensor_v*_missing*",)),
    Known("reduce_applies_a_foreign_object", frozenset({"apply_object"}), ("*:torch_refuses:*reduce*",)),
    Known("packed_quantized_view_outside_storage", frozenset({"qtensor_per_tensor_affine", "qtensor_per_channel_affine",
          "qtensor_per_channel_affine_float_qparams", "qtensor_per_tensor_symmetric"}), ("load:values",), False),
    Known("central_entry_past_the_directory", frozenset({"layout_central_overflow"}),
          ("*:torch_refuses:zip_invalid_header*",)),
    Known("patched_data_flag", frozenset({"layout_patched_flag"}), ("index:torch_refuses:zip_retrieving_file",),
          detail="unsupported feature"),
    Known("invalid_device_string", frozenset({"value_device"}),
          ("read:torch_refuses:*device*", "index:torch_refuses:*device*", "read:torch_refuses:*expected_one_of*",
           "index:torch_refuses:*expected_one_of*"), detail=r"[Dd]evice|Expected one of"),
    Known("untyped_storage_class_as_a_value", frozenset({"global_untyped_class"}),
          ("*:torch_refuses:*torch.UntypedStorage", "*:torch_refuses:*torch_untypedstorage*")),
    Known("walk_skips_entries_by_reused_ids", frozenset({"foreign_setitem", "foreign_setitems", "mutate_counter"}),
          ("*:names*", "*:leaf_names", "*:torch_refuses:*"), False, detail=r"__entries__|not reachable"),
    Known("non_string_keys_named_by_record", frozenset({"key_torch_value"}),
          ("*:names*", "*:leaf_names"),
          detail=r"Ref\(|torch\.Size|object at 0x"),
)


def explain(features: set[str], disagreement: Disagreement) -> str | None:
    """The known class a disagreement belongs to, or None: a new one."""
    from fnmatch import fnmatchcase

    for known in KNOWN:
        if not any(fnmatchcase(disagreement.kind, pattern) for pattern in known.kinds):
            continue
        if known.detail and not re.search(known.detail, disagreement.detail):
            continue
        if features & known.features or (known.specific and "mutated" in features):
            return known.name
    return None


def unexplained(features: set[str], outcome: Outcome) -> list[Disagreement]:
    return [item for item in outcome.disagreements if explain(features, item) is None]


# --- mutating real files ---------------------------------------------------------------------------------------

_GLOBAL_SWAPS = [
    "torch FloatStorage", "torch HalfStorage", "torch DoubleStorage", "torch LongStorage", "torch BoolStorage",
    "torch BFloat16Storage", "torch.storage UntypedStorage", "torch UntypedStorage", "torch._utils _rebuild_tensor",
    "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor_v3", "torch._utils _rebuild_parameter",
    "torch._utils _rebuild_parameter_with_state", "collections OrderedDict", "collections Counter",
    "builtins set", "builtins frozenset", "torch float32", "torch bfloat16", "torch Size", "torch device",
    "argparse Namespace",
]
_INSERTS = ["BUILD", "DUP", "POP", "EMPTY_DICT", "EMPTY_LIST", "NEWTRUE", "NONE", "TUPLE1", "MARK", "APPEND",
            "SETITEM", "REDUCE", "EMPTY_TUPLE", "TUPLE2", "STOP"]


def pickle_ops(pickled: bytes) -> list[tuple[str, Any]]:
    """(opcode name, argument) of every opcode up to STOP."""
    return [(op.name, arg) for op, arg, _ in pickletools.genops(pickled)]


def assemble(ops: list[tuple[str, Any]]) -> bytes:
    return b"".join(encode_op(name, arg) for name, arg in ops)


def _mutated_arg(src: Source, name: str, arg: Any) -> Any:
    kind = OPS[name].arg.name if OPS[name].arg is not None else None
    if kind == "uint1":
        return src.choice([0, 1, 2, 255, (arg + 1) % 256, max(arg - 1, 0)])
    if kind == "uint2":
        return src.choice([0, 1, 256, 65535, (arg + 1) % 65536])
    if kind == "int4":
        return src.choice([0, -1, 1, arg + 1, arg - 1, 1 << 20, -(1 << 31)])
    if kind in ("long1", "long4"):
        return src.choice([0, -1, arg + 1, 1 << 40])
    if kind == "float8":
        return src.choice([0.0, -0.0, float("nan"), float("inf"), 1e308])
    if kind and kind.startswith("unicodestring"):
        return src.choice(["0", "1", "storage", "cpu", "cuda:0", "", "x" * 40, arg + "x", "data", "é"])
    if kind == "stringnl_noescape_pair":
        return src.choice(_GLOBAL_SWAPS)
    return arg


def mutate_pickle(src: Source, pickled: bytes) -> bytes:
    """`pickled` with 1-3 opcode-level changes: an argument changed, an opcode dropped, doubled, swapped with the
    next or inserted."""
    ops = pickle_ops(pickled)
    for _ in range(src.integer(1, 3)):
        if not ops:
            break
        index = src.integer(0, len(ops) - 1)
        name, arg = ops[index]
        action = weighted(src, [(5, "arg"), (2, "drop"), (1, "double"), (1, "swap"), (2, "insert")])
        if action == "arg" and OPS[name].arg is not None and name not in ("PROTO", "FRAME"):
            ops[index] = (name, _mutated_arg(src, name, arg))
        elif action == "drop" and name not in ("PROTO", "STOP"):
            del ops[index]
        elif action == "double" and name not in ("PROTO", "STOP"):
            ops.insert(index, (name, arg))
        elif action == "swap" and index + 1 < len(ops) and ops[index + 1][0] != "STOP" and name != "PROTO":
            ops[index], ops[index + 1] = ops[index + 1], ops[index]
        elif action == "insert" and index > 0:
            ops.insert(index, (src.choice(_INSERTS), None))
    ops = [(name, arg) for name, arg in ops if name != "FRAME"]  # frames' lengths would no longer fit
    return assemble(ops)


def replace_pickle(data: bytes, pickled: bytes) -> bytes:
    """A zip torch.save file with its data.pkl replaced (records rewritten in the same order)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        records = []
        for info in archive.infolist():
            content = pickled if info.filename.endswith("/data.pkl") else archive.read(info)
            records.append(ZipRecord(info.filename, content))
    return write_zip(records)


def mutate_file(src: Source, data: bytes) -> bytes:
    """A mutation of a zip torch.save file: its pickle changed at the opcode level (mostly), or some bytes of the
    file flipped."""
    if data.startswith(b"PK") and src.boolean(0.85):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            pickled = archive.read(name)
        return replace_pickle(data, mutate_pickle(src, pickled))
    out = bytearray(data)
    for _ in range(src.integer(1, 4)):
        position = src.integer(0, len(out) - 1)
        out[position] = src.choice([0, 1, 0x7F, 0x80, 0xFF, out[position] ^ (1 << src.integer(0, 7))])
    return bytes(out)


# --- the seed corpus: every kind of file the test suite builds -------------------------------------------------


def _corpus_objects() -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(name, object, torch.save keyword arguments) of the seed corpus (call it under a fixed seed)."""
    import argparse
    import collections

    from builders import build_state

    state = build_state()
    yield "tiny_model", state, {}
    yield "training", {"state_dict": state, "epoch": 3, "hp": {"lr": 0.1}, "history": [0.5, 0.25]}, {}
    half = {k: v.to(torch.bfloat16 if k.startswith(("emb", "lstm")) else torch.float16) for k, v in state.items()}
    yield "half", half, {}
    yield "bad_layout", {**torch.nn.LSTM(3, 4).state_dict(), "bias_ih_l0": torch.zeros(15)}, {}
    yield "rnn", {f"rnn.{k}": v for k, v in torch.nn.RNN(3, 4).state_dict().items()}, {}
    for protocol in (2, 3, 4, 5):
        yield f"protocol_{protocol}", state, {"pickle_protocol": protocol}
    yield "legacy", state, {"_use_new_zipfile_serialization": False}
    yield "legacy_training", {"state_dict": state, "epoch": 3}, {"_use_new_zipfile_serialization": False}
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    yield "module_state_dict", module.state_dict(), {}  # an OrderedDict with _metadata (BUILD on OrderedDict)
    yield "parameters", {name: p for name, p in module.named_parameters()}, {}
    base = torch.arange(24.0).reshape(4, 6)
    yield "views", {"base": base, "t": base.t(), "row": base[1], "col": base[:, 2], "step": base[::2, 1::3],
                    "expand": torch.ones(3)[:1].expand(5), "empty": torch.zeros(0, 3), "scalar": torch.tensor(1.5)}, {}
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
              torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128, torch.uint16, torch.uint32,
              torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]
    yield "dtypes", {str(dt): torch.arange(6).to(torch.float32).to(dt) for dt in dtypes}, {}
    nan = torch.tensor([float("nan"), -float("nan"), 1.0]).view(torch.int32)
    nan[0] = 0x7FC00001
    nan[2] = 0x7F800001
    half_nans = torch.tensor([0x7E01, 0xFC01 - 0x10000], dtype=torch.int16).view(torch.float16)
    yield "nan_payloads", {"f32": nan.view(torch.float32), "f16": half_nans}, {}
    yield "values", {"w": torch.ones(2), "size": torch.Size([2, 3]), "dtype": torch.float16,
                     "device": torch.device("cpu"), "bytes": b"\x00\xffabc", "set": {1, 2}, "tuple": (1, (2, 3)),
                     "none": None, "complex": 1 + 2j, "float": float("nan"), "big": 1 << 70, "text": "é"}, {}
    tied = torch.nn.Linear(4, 4)
    yield "tied", {"a": tied.weight, "b": tied.weight, "c": tied.weight[1:3], "bias": tied.bias}, {}
    yield "namespace", {"args": argparse.Namespace(lr=0.1, layers=[1, 2]), "w": torch.zeros(2)}, {}
    yield "counter_free", {"nested": [{"a": torch.ones(1)}, ({"b": torch.zeros(2)},)], "od": collections.OrderedDict(
        x=torch.ones(3))}, {}
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 4))
    optimizer = torch.optim.Adam(net.parameters())
    net[0](torch.randn(2, 3)).sum().backward()
    optimizer.step()
    yield "optimizer", {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}, {}
    try:
        import wild_models
    except ImportError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, build in wild_models.BUILDERS.items():
            yield f"wild_{name}", build()[1], {}


def _torchscript_corpus(folder: Path) -> Iterator[Path]:
    """TorchScript archives (torch.jit.save) of recurrent modules, read by rnninit by their state_dict names."""

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(7, 3)
            self.rnn = torch.nn.GRU(3, 4, batch_first=True)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.emb(x))[0])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, module in (("script_lstm", torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)),
                             ("script_tagger", Tagger())):
            path = folder / f"{name}.pt"
            torch.jit.save(torch.jit.script(module), str(path))
            yield path


TORCHSCRIPT_PREFIX = "script_"  # the seed corpus's TorchScript archives


def build_corpus(folder: Path) -> list[Path]:
    """Write the seed corpus into `folder`: the files the test suite builds (TinyModel state dicts, training
    checkpoints, half precision, every pickle protocol, the legacy format, views and tied weights, every dtype,
    NaN payloads, plain values, foreign objects, optimizer state, each real library's state dict from
    tests/wild_models.py, and TorchScript archives named TORCHSCRIPT_PREFIX*)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, obj, options in _corpus_objects():
            path = folder / f"{name}.pt"
            torch.save(obj, path, **options)
            paths.append(path)
        paths.extend(_torchscript_corpus(folder))
    for path in paths:
        fix_serialization_id(path)
    return paths


def fix_serialization_id(path: Path) -> None:
    """Make a torch.save archive's random serialization id a fixed one (same length, CRC-32s updated), so that
    the seed corpus, and any mutation of it, is the same file from run to run."""
    data = bytearray(path.read_bytes())
    if not data.startswith(b"PK"):
        return
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        infos = [info for info in archive.infolist() if info.filename.endswith("/.data/serialization_id")]
        if not infos or infos[0].compress_type != zipfile.ZIP_STORED:
            return
        info = infos[0]
        local = info.header_offset
        name_length, extra_length = struct.unpack("<HH", data[local + 26:local + 30])
        start = local + 30 + name_length + extra_length
        fixed = (b"0123456789" * (info.file_size // 10 + 1))[:info.file_size]
        data[start:start + info.file_size] = fixed
        crc = struct.pack("<I", zlib.crc32(fixed))
        data[local + 14:local + 18] = crc
        central = archive.start_dir  # type: ignore[attr-defined]
        while data[central:central + 4] == b"PK\x01\x02":
            length, extra, comment = struct.unpack("<HHH", data[central + 28:central + 34])
            if data[central + 46:central + 46 + length] == info.filename.encode():
                data[central + 16:central + 20] = crc
            central += 46 + length + extra + comment
    path.write_bytes(bytes(data))


def zip_facts(data: bytes) -> set[str]:
    """Layout features of an archive read from its central directory (for files this harness did not lay out,
    such as mutations): the same names as the generator's layout features."""
    facts: set[str] = set()
    end = data.rfind(b"PK\x05\x06")
    if end < 0 or len(data) < end + 22:
        return facts
    count, size, start = struct.unpack("<HII", data[end + 10:end + 20])
    position, names = start, []
    for _ in range(count):
        if data[position:position + 4] != b"PK\x01\x02" or len(data) < position + 46:
            break
        (flags,) = struct.unpack("<H", data[position + 8:position + 10])
        (disk,) = struct.unpack("<H", data[position + 34:position + 36])
        (attributes,) = struct.unpack("<I", data[position + 38:position + 42])
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[position + 28:position + 34])
        names.append(data[position + 46:position + 46 + name_length])
        if flags & 1:
            facts.add("layout_encrypted")
        if disk not in (0, 1):
            facts.add("layout_disk_number")
        if attributes & 0x10:
            facts.add("layout_directory_attr")
        if flags & 0x20:
            facts.add("layout_patched_flag")
        position += 46 + name_length + extra_length + comment_length
        if position > start + size:
            facts.add("layout_central_overflow")
    if len({name.split(b"/")[0] for name in names}) > 1 or any(b"/" not in name for name in names):
        facts.add("layout_outside_record")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            alignment = [n for n in archive.namelist() if n.endswith("/.storage_alignment")]
            if alignment:
                int(archive.read(alignment[0]))
    except ValueError:
        facts.add("layout_storage_alignment")
    except Exception:
        pass
    return facts
