"""A restricted reader of `torch.save` files and TorchScript archives that needs neither torch nor trust.

It follows the Python documentation's "Restricting Globals" pattern (a `pickle` unpickler whose
`find_class` decides what a global may be), and goes further: nothing a file names is ever imported or
called. Tensors become inert `TensorRef` records (no bytes are read while unpickling: a tensor's bytes are
read only when asked for, by `array`); the few torch types a weights-only file may hold become small
records too (`DtypeRef`, `DeviceRef`, torch.Size as a tuple). Objects of any other class (argparse.Namespace,
omegaconf configs, vocabularies, numpy scalars, TorchScript's `__torch__.*` modules) become `Foreign`
records of what the file says about them: their class's name, arguments and state, walkable so that the
tensors inside them are found. A file that names a known-dangerous callable (os.system, builtins.eval...)
is refused as hostile with that name, though safety does not rest on that list: nothing is called anyway.

Every pickle opcode that allocates counts against a budget (`safety.pickle_budget`: units of about 16 bytes,
four per entry that RNNINIT_MAX_ENTRIES allows plus a floor; a tensor costs about 50, a string or bytes one
unit per 16 bytes), so a few MiB of pickle cannot build gigabytes of objects, and no declared length is
allocated beyond the bytes the pickle holds. Tuples (hashed as dict keys and set items, recursively) nested
deeper than MAX_NESTING are refused as they are built; other containers nested too deeply are refused where
the object graph is walked (`checkpoint.walk`).

Callers that have torch (the whole-load path) pass `Builders` that turn the records into torch objects
as the pickle is read, so that sharing between tensors is exactly the pickle's.
"""

from __future__ import annotations

import ast
import io
import math
import pickle
import re
import struct
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from .errors import CheckpointError, UnsafeCheckpointError
from .safety import CODE_RECORD_LIMIT, MAX_ENTRIES_VARIABLE, MAX_NESTING, max_entries, pickle_budget

# torch dtype name → (bytes per element, numpy type code or ml_dtypes name)
DTYPES: dict[str, tuple[int, str]] = {
    "float64": (8, "<f8"), "float32": (4, "<f4"), "float16": (2, "<f2"), "bfloat16": (2, "bfloat16"),
    "int64": (8, "<i8"), "int32": (4, "<i4"), "int16": (2, "<i2"), "int8": (1, "i1"), "uint8": (1, "u1"),
    "uint16": (2, "<u2"), "uint32": (4, "<u4"), "uint64": (8, "<u8"), "bool": (1, "?"),
    "complex64": (8, "<c8"), "complex128": (16, "<c16"), "complex32": (4, ""),
    "float8_e4m3fn": (1, "float8_e4m3fn"), "float8_e5m2": (1, "float8_e5m2"),
    "float8_e4m3fnuz": (1, "float8_e4m3fnuz"), "float8_e5m2fnuz": (1, "float8_e5m2fnuz"),
    "float8_e8m0fnu": (1, "float8_e8m0fnu"),
    # no numbers numpy can read: kept byte for byte, never read as values
    "float4_e2m1fn_x2": (1, ""), "bits1x8": (1, ""), "bits2x4": (1, ""), "bits4x2": (1, ""), "bits8": (1, ""),
    "bits16": (2, ""), "qint8": (1, ""), "quint8": (1, ""), "qint32": (4, ""), "quint4x2": (1, ""),
    "quint2x4": (1, ""),
}
# only `_rebuild_qtensor` makes tensors of these; quint4x2 and quint2x4 pack 2 and 4 values into each byte
QUANTIZED_DTYPES = frozenset({"qint8", "quint8", "qint32", "quint4x2", "quint2x4"})
_PACKED_QUANTIZED = frozenset({"quint4x2", "quint2x4"})
# torch's legacy storage classes (also under torch.cuda) → the dtype of their elements
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8", "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8", "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}
# other dtypes a pickle may name as values (torch.int4, torch.uint3...: torch saves no tensors of them): names only
_OTHER_DTYPES = frozenset({f"int{n}" for n in range(1, 8)} | {f"uint{n}" for n in range(1, 8)})
_QSCHEMES = frozenset({"per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
                       "per_channel_affine_float_qparams"})

# modules and callables whose mere mention marks a file as hostile (the list only names the refusal)
_DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "importlib", "runpy", "socket", "ctypes", "sys",
    "shutil", "pickle", "_pickle", "cPickle", "marshal", "types", "code", "codeop", "pty", "webbrowser",
    "multiprocessing", "signal", "asyncio", "threading", "_thread", "io", "_io", "tempfile", "glob",
    "commands", "popen2", "pdb", "bdb", "inspect", "operator", "imp", "zipimport", "pkgutil", "site",
    "sysconfig", "ensurepip", "venv", "http", "urllib", "urllib2", "ftplib", "smtplib", "telnetlib", "xmlrpc",
    "antigravity", "dill", "cloudpickle", "joblib", "numpy.testing", "torch.hub", "torch.package",
    "torch.serialization", "torch.jit._serialization", "torch._dynamo", "torch.ops", "torch.cuda",
})
_DANGEROUS_BUILTINS = frozenset({
    "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open", "globals", "locals", "vars",
    "input", "breakpoint", "help", "exit", "quit", "memoryview", "type", "super", "classmethod",
    "staticmethod", "property", "__build_class__", "print", "dir", "apply", "execfile", "reload", "file",
    "map", "filter", "iter", "next", "callable", "hasattr", "id", "hash", "format",
})


_DANGEROUS_NAMES = frozenset({("torch", "load"), ("torch.jit", "load"), ("torch", "_load_global_deps"),
                              ("numpy", "load"), ("numpy.lib.npyio", "load"), ("torch._C", "_jit_pass_inline")})


class HostilePickle(Exception):
    """The pickle names a known-dangerous callable (the argument); nothing was called."""


class DamagedPickle(Exception):
    """The pickle is malformed or asks for something no torch.save file does."""


class TooBig(Exception):
    """The pickle builds more objects than the budget allows."""


def dangerous(module: str, name: str) -> bool:
    """Whether `module.name` is on the list of callables that mark a file as hostile."""
    root = module.split(".")[0]
    if (module, name) in (("torch.serialization", "_get_layout"), ("copyreg", "_reconstructor"),
                          ("copy_reg", "_reconstructor")):
        return False
    if (module, name) in _DANGEROUS_NAMES or module.startswith("torch._C"):
        return True
    if module in ("builtins", "__builtin__"):
        return name in _DANGEROUS_BUILTINS or name.startswith("_")
    if module.startswith("torch.cuda.") or module == "torch.cuda":
        return not name.endswith("Storage")  # torch.cuda.FloatStorage: a tensor saved from a GPU
    return (module in _DANGEROUS_MODULES or root in _DANGEROUS_MODULES or root.startswith("importlib")
            or module.startswith(tuple(f"{m}." for m in _DANGEROUS_MODULES)))


# --- records ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class StorageRef:
    """A storage the file holds: its record key, element dtype and declared element count."""

    key: str
    dtype: str
    numel: int
    location: str = "cpu"

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype][0]


@dataclass(eq=False)
class TensorRef:
    """A tensor as the pickle describes it: nothing of its data is read."""

    storage: StorageRef
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # in elements of the storage
    requires_grad: bool = False
    parameter: bool = False
    state: Any = None  # attributes a tensor subclass or _rebuild_from_type_v2 gave it

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0]


@dataclass(eq=False)
class QTensorRef(TensorRef):
    """A quantized tensor (`torch._utils._rebuild_qtensor`): never read as values, kept byte for byte."""

    quantizer: tuple[Any, ...] = ()  # (qscheme, scale, zero point) or (qscheme, scales, zero points, axis)

    @property
    def packed(self) -> bool:
        """Whether several values share a byte (quint4x2, quint2x4): spans in elements do not apply."""
        return self.dtype in _PACKED_QUANTIZED


@dataclass(frozen=True, repr=False)
class DtypeRef:
    """A torch dtype named as a value (e.g. a config's `torch_dtype`); written as torch writes it."""

    name: str

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True, repr=False)
class DeviceRef:
    """A torch.device named as a value; written as torch writes it (`cpu`, `cuda:0`)."""

    spec: tuple[Any, ...]

    def _parts(self) -> tuple[str, int | None]:
        kind, _, index = str(self.spec[0]).partition(":")
        return kind, int(index) if index else (self.spec[1] if len(self.spec) > 1 else None)

    def __str__(self) -> str:
        kind, index = self._parts()
        return kind if index is None else f"{kind}:{index}"

    def __repr__(self) -> str:
        kind, index = self._parts()
        return f"device(type={kind!r})" if index is None else f"device(type={kind!r}, index={index})"


class SizeRef(tuple):
    """A torch.Size named as a value: a tuple, written as torch writes it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"torch.Size([{', '.join(str(dim) for dim in self)}])"


@dataclass(frozen=True)
class StorageType:
    """A storage class named in a persistent id (torch.FloatStorage...)."""

    name: str
    dtype: str


@dataclass(eq=False)
class Foreign:
    """An object of a class this reader does not build: what the pickle says about it, inert."""

    module: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    state: Any = None
    items: list[Any] = field(default_factory=list)  # appended by APPEND(S)
    entries: list[tuple[Any, Any]] = field(default_factory=list)  # set by SETITEM(S)
    called: bool = False  # the pickle applied the global (REDUCE / NEWOBJ / INST), not only named it

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:  # never the arguments: they may nest deeply
        return f"<{self.qualified} object>"

    # what the unpickler's opcodes do to an object: record, never act
    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries.append((key, value))

    def children(self) -> list[tuple[str, Any]]:
        """What `checkpoint.walk` descends into: the state's attributes, then arguments and items."""
        found: list[tuple[str, Any]] = []
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)) \
                and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (__dict__, slots)
        if isinstance(state, dict):
            found.extend((key_text(key), value) for key, value in state.items())
        elif state is not None:
            found.append(("__state__", state))
        if self.args:
            found.append(("__args__", self.args))
        if self.kwargs:
            found.append(("__kwargs__", self.kwargs))
        if self.items:
            found.append(("__items__", self.items))
        if self.entries:
            found.append(("__entries__", list(self.entries)))
        return found


def key_text(key: Any) -> str:
    """A key's name in a path; CheckpointError for an int too long to write in decimal (over 4300 digits)."""
    try:
        return str(key)
    except ValueError:
        raise CheckpointError("the checkpoint has a key that is an integer of more than 4300 digits; "
                              "refused") from None


class _ForeignGlobal:
    """What find_class returns for a class or function it does not build: applying it makes a record."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Foreign:
        self.refuse_tensor_making()
        return Foreign(self.module, self.name, args, called=True)

    def __repr__(self) -> str:
        return f"<{self.module}.{self.name}>"

    def refuse_tensor_making(self) -> None:
        """torch's loader makes a tensor of a call of a tensor class (torch.FloatTensor([...]), Parameter(t)) or
        of a rebuilder rnninit does not model (sparse, nested, meta...): a record of it would hide that tensor."""
        module, name = self.module, self.name
        if (module == "torch._utils" and name.startswith("_rebuild")) or (
                module in ("torch", "torch.cuda", "torch._tensor", "torch.nn.parameter", "torch.nn")
                and (name.endswith("Tensor") or name in ("Parameter", "Buffer"))):
            raise DamagedPickle(f"the pickle makes a tensor with {module}.{name}, which rnninit does not model "
                                "(it reads dense tensors rebuilt from the file's storages); refused")


def foreign_classes(root: Any) -> list[str]:
    """Sorted "module.Name" of every foreign object in `root`, named globals included."""
    found: set[str] = set()
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        if isinstance(node, (dict, list, tuple, set, frozenset, Foreign)):
            seen.add(id(node))
        if isinstance(node, Foreign):
            found.add(node.qualified)
            stack.extend(value for _, value in node.children())
        elif isinstance(node, _ForeignGlobal):
            found.add(f"{node.module}.{node.name}")
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend(node)
    return sorted(found)


# --- builders: what the allowed globals make ----------------------------------------------------------


class Builders:
    """How the allowed globals are built. This default builds inert records; the whole-load path
    (checkpoint._load_pt) overrides the methods to build torch objects instead. Every tensor built is kept, so
    that one the walk cannot reach by a name (a dict key, a set member, an attribute) is refused: rewriting a
    tensor that shares its storage would change it unseen (`refuse_hidden`)."""

    def __init__(self) -> None:
        self.made: list[Any] = []  # every tensor built, in order
        self.inside: set[int] = set()  # ids of tensors that became part of another (a Parameter's data)

    def tensor(self, ref: TensorRef) -> Any:
        self.made.append(ref)
        return ref

    def refuse_hidden(self, leaves: Iterable[Any]) -> None:
        """CheckpointError if a tensor built is neither a leaf of the walk nor part of one."""
        reached = {id(leaf) for leaf in leaves} | self.inside
        if any(id(tensor) not in reached for tensor in self.made):
            raise CheckpointError("not a readable checkpoint: a tensor in it is not reachable by a name (it is a "
                                  "dict key, a set member or an attribute of a dict or tensor), so rnninit cannot "
                                  "tell whether rewriting another tensor would change it; refused")

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, TensorRef)

    def dtype(self, name: str) -> Any:
        return DtypeRef(name)

    def device(self, spec: tuple[Any, ...]) -> Any:
        return DeviceRef(spec)

    def size(self, dims: tuple[int, ...]) -> Any:
        return SizeRef(dims)

    def layout(self, name: str) -> Any:
        return DtypeRef(name.removeprefix("torch."))  # written "torch.strided", as torch writes its layouts


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(item) is int for item in value):
        raise DamagedPickle(f"a tensor's {what} is not a tuple of integers")
    return tuple(value)


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """pickle's own (pure Python) unpickler with find_class, persistent_load and the opcodes that apply
    objects restricted: only this module's builders run; opcodes are counted against a budget."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes | io.BytesIO, persistent_load: Callable[[Any], StorageRef],
                 builders: Builders | None = None, budget: int | None = None) -> None:
        stream = io.BytesIO(data) if isinstance(data, bytes) else data
        super().__init__(stream, encoding="utf-8")
        self._stream = stream
        self._storage_for = persistent_load
        self.builders = builders or Builders()
        self.budget = pickle_budget() if budget is None else budget
        self.count = 0
        self._tuple_depths: dict[int, tuple[Any, int]] = {}  # id → (tuple or frozenset, nesting) when over 1

    # -- the restricting-globals pattern
    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise DamagedPickle("a global's name is not a string")
        mapped = (module, name)
        if self.proto < 3 and self.fix_imports:
            import _compat_pickle

            if mapped in _compat_pickle.NAME_MAPPING:
                mapped = _compat_pickle.NAME_MAPPING[mapped]
            elif module in _compat_pickle.IMPORT_MAPPING:
                mapped = (_compat_pickle.IMPORT_MAPPING[module], name)
        for candidate in ((module, name), mapped):
            if dangerous(*candidate):
                raise HostilePickle(f"{candidate[0]}.{candidate[1]}")
        built = self._allowed(*mapped)
        return _ForeignGlobal(*mapped) if built is None else built

    def _allowed(self, module: str, name: str) -> Any:
        builders = self.builders
        if module == "torch._utils" and name in _REBUILDERS:
            return _REBUILDERS[name](self)
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return _rebuild_from_type_v2(self)
        if module == "torch.jit._pickle" and name in _JIT_LISTS:
            return _JIT_LISTS[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "collections" and name == "Counter":  # in torch's weights-only allowlist: a dict to walk
            return Counter
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES and name != "UntypedStorage":
            return StorageType(name, STORAGE_DTYPES[name])
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return StorageType(name, "uint8")
        if module == "torch" and (name in DTYPES or name in _OTHER_DTYPES or name in _QSCHEMES):
            return builders.dtype(name)
        if module == "torch" and name == "Size":
            return _Builder(lambda dims=(): builders.size(_dims(dims, "size")), new_ok=True)
        if module == "torch" and name == "device":
            return _Builder(lambda *spec: builders.device(_device_spec(spec)))
        if module == "torch.serialization" and name == "_get_layout":
            return _Builder(lambda layout: builders.layout(str(layout)))
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return _reconstructor
        if module == "_codecs" and name == "encode":
            return _codecs_encode
        if module == "builtins" and name in _PURE_BUILTINS:
            return _PURE_BUILTINS[name]
        return None

    def load(self) -> Any:
        token = _SPENDER.set(self._spend)  # what the allowed callables build is charged before it exists
        try:
            return super().load()
        finally:
            _SPENDER.reset(token)

    def persistent_load(self, pid: Any) -> Any:
        return self._storage_for(pid)

    # -- opcodes that apply objects: never to anything but this module's builders and records
    def _spend(self, count: int = 1) -> None:
        self.count += count
        if self.count > self.budget:
            raise TooBig(self.budget)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._spend()
        self.append(_apply_new(cls, args, None))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._spend()
        self.append(_apply_new(cls, args, kwargs))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._spend()
        if not isinstance(args, tuple):
            raise DamagedPickle("REDUCE arguments are not a tuple")
        self.stack[-1] = _apply(func, args)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        self._spend()
        if self.builders.is_tensor(inst):
            # torch.load applies it (Tensor.set_ or Parameter.__setstate__): it may point the tensor elsewhere
            raise DamagedPickle("BUILD on a tensor, which would change what it points to; rnninit does not "
                                "model that, so it refuses the file")
        if isinstance(inst, Foreign):
            inst.state = state
        elif type(inst) in (OrderedDict, Counter) and isinstance(state, dict):
            _set_dict_attributes(inst, state)  # as torch does (a state_dict()'s `_metadata`): kept when re-saved
        else:
            raise DamagedPickle(f"BUILD on a {type(inst).__name__}")

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        klass = self.find_class(module, name)
        args = tuple(self.pop_mark())
        self._spend()
        self.append(_apply(klass, args))

    def load_obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self._spend()
        self.append(_apply(cls, tuple(args)))

    def get_extension(self, code: int) -> Any:
        raise DamagedPickle(f"the pickle uses copyreg extension code {code}")

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, (list, Foreign)):
            raise DamagedPickle(f"APPENDS to a {type(target).__name__}")
        self._spend(len(items) // 4)
        target.extend(items)

    def load_append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, (list, Foreign)):
            raise DamagedPickle(f"APPEND to a {type(target).__name__}")
        target.append(value)

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, (dict, Foreign)):  # never a list: pickle does not write that, torch refuses it
            raise DamagedPickle(f"SETITEMS on a {type(target).__name__}")
        self._spend(len(items) // 4)
        for index in range(0, len(items), 2):
            target[items[index]] = items[index + 1]

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, (dict, Foreign)):  # never a list: pickle does not write that, torch refuses it
            raise DamagedPickle(f"SETITEM on a {type(target).__name__}")
        target[key] = value

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise DamagedPickle(f"ADDITEMS to a {type(target).__name__}")
        self._spend(len(items) // 4)
        target.update(items)

    def load_next_buffer(self) -> None:
        raise DamagedPickle("the pickle refers to out-of-band buffers")

    # -- 8-byte lengths: pickle's own BYTEARRAY8 allocates the declared length before reading a byte
    def _bytes_left(self) -> int:
        left = 0
        for stream in (self._stream, self._unframer.current_frame):
            if stream is not None:
                position = stream.tell()
                left += stream.seek(0, io.SEEK_END) - position
                stream.seek(position)
        return left

    def _declared_length(self) -> int:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._bytes_left():
            raise DamagedPickle(f"a string of the pickle declares {length} bytes, more than the pickle holds")
        self._spend(length // 16)
        return length

    def _read_declared(self) -> bytes:
        length = self._declared_length()
        data = self.read(length)
        if len(data) != length:
            raise DamagedPickle("the pickle ends inside a string")
        return data

    def load_binbytes8(self) -> None:
        self.append(self._read_declared())

    def load_binunicode8(self) -> None:
        self.append(str(self._read_declared(), "utf-8", "surrogatepass"))

    def load_bytearray8(self) -> None:
        self.append(bytearray(self._read_declared()))

    # -- tuples: hashing one (a dict key, a set item) recurses through its nested tuples in C, unbounded
    def _note_nesting(self, value: Any) -> None:
        depths = self._tuple_depths
        deepest = 0
        for item in value:
            if type(item) in (tuple, frozenset):
                known = depths.get(id(item))
                deepest = max(deepest, 1 if known is None else known[1])
        if deepest:
            if deepest >= MAX_NESTING:
                raise DamagedPickle(f"tuples nested deeper than {MAX_NESTING} levels; refused")
            depths[id(value)] = (value, deepest + 1)

    for _code, _method in ((pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
                           (pickle.REDUCE, load_reduce), (pickle.BUILD, load_build), (pickle.INST, load_inst),
                           (pickle.OBJ, load_obj), (pickle.APPENDS, load_appends), (pickle.APPEND, load_append),
                           (pickle.SETITEMS, load_setitems), (pickle.SETITEM, load_setitem),
                           (pickle.ADDITEMS, load_additems), (pickle.NEXT_BUFFER, load_next_buffer),
                           (pickle.READONLY_BUFFER, load_next_buffer), (pickle.BINBYTES8, load_binbytes8),
                           (pickle.BINUNICODE8, load_binunicode8), (pickle.BYTEARRAY8, load_bytearray8)):
        dispatch[_code[0]] = _method
    del _code, _method


# what each allocating opcode costs of the budget, roughly its object's size in 16-byte units: an empty dict
# or set, or a memo entry (a dict slot and an int key) 4, a list, tuple, string or MARK (a new stack) 2, a
# number or a global 1
_COSTS = {op[0]: cost for cost, ops in (
    (4, (pickle.EMPTY_DICT, pickle.DICT, pickle.EMPTY_SET, pickle.FROZENSET, pickle.PUT, pickle.BINPUT,
         pickle.LONG_BINPUT, pickle.MEMOIZE)),
    (2, (pickle.EMPTY_LIST, pickle.LIST, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.MARK,
         pickle.STRING, pickle.BINSTRING, pickle.SHORT_BINSTRING, pickle.UNICODE, pickle.BINUNICODE,
         pickle.SHORT_BINUNICODE, pickle.BINUNICODE8, pickle.BINBYTES, pickle.SHORT_BINBYTES, pickle.BINBYTES8,
         pickle.BYTEARRAY8)),
    (1, (pickle.BININT, pickle.BININT2, pickle.INT, pickle.LONG, pickle.LONG1, pickle.LONG4, pickle.FLOAT,
         pickle.BINFLOAT, pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.PERSID, pickle.BINPERSID, pickle.DUP)),
) for op in ops}


def _counted(method: Callable[[RestrictedUnpickler], None], cost: int) -> Callable[[RestrictedUnpickler], None]:
    def counted(self: RestrictedUnpickler) -> None:
        self.count += cost
        if self.count > self.budget:
            raise TooBig(self.budget)
        method(self)

    return counted


for _key, _cost in _COSTS.items():
    RestrictedUnpickler.dispatch[_key] = _counted(RestrictedUnpickler.dispatch[_key], _cost)
del _key, _cost


def _nesting_checked(method: Callable[[RestrictedUnpickler], None]) -> Callable[[RestrictedUnpickler], None]:
    def checked(self: RestrictedUnpickler) -> None:
        method(self)
        self._note_nesting(self.stack[-1])

    return checked


for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET):
    RestrictedUnpickler.dispatch[_op[0]] = _nesting_checked(RestrictedUnpickler.dispatch[_op[0]])
del _op


def _apply(func: Any, args: tuple[Any, ...]) -> Any:
    """REDUCE / INST / OBJ: only this module's builders are called; a foreign global makes a record."""
    if isinstance(func, _ForeignGlobal):
        return func(*args)
    if func is OrderedDict:
        if args and not (len(args) == 1 and isinstance(args[0], (list, dict, tuple))):
            raise DamagedPickle("OrderedDict with unexpected arguments")
        _charge(args)
        return OrderedDict(*args)
    if func is Counter:  # as pickle writes one: Counter(a dict of its counts)
        if args and not (len(args) == 1 and isinstance(args[0], dict)):
            raise DamagedPickle("Counter with unexpected arguments")
        _charge(args)
        return Counter(*args)
    if isinstance(func, _Builder):
        return func(*args)
    raise DamagedPickle(f"the pickle applies a {type(func).__name__}, which is not a constructor")


def _apply_new(cls: Any, args: Any, kwargs: Any) -> Any:
    """NEWOBJ / NEWOBJ_EX: a record for a foreign class, the empty container for an allowed one."""
    if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
        raise DamagedPickle("NEWOBJ arguments are not a tuple")
    if isinstance(cls, _ForeignGlobal):
        cls.refuse_tensor_making()
        return Foreign(cls.module, cls.name, args, kwargs, called=True)
    if cls in (OrderedDict, Counter) and not args and not kwargs:
        return cls()
    if isinstance(cls, _Builder) and cls.new_ok and not kwargs:
        return cls(*args)
    raise DamagedPickle(f"NEWOBJ of a {type(cls).__name__}")


_SPENDER: ContextVar[Callable[[int], None] | None] = ContextVar("rnninit_pickle_spender", default=None)


def _units(value: Any) -> int:
    """What a callable may build from one argument, in budget units of about 16 bytes: a copy of it."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) // 16 + 1
    if isinstance(value, (list, tuple, set, frozenset, dict)):  # a copy may be a hash table: ~3 units an entry
        return 3 * len(value) + 1
    return 1


def _charge(args: tuple[Any, ...]) -> None:
    """Charge a call's copies to the reading unpickler's budget before the call: an allowed callable copies at
    most its arguments (set(list), bytes(bytearray), tuple(size)...), so a few bytes that apply one callable
    to the same large container again and again run out of budget instead of memory."""
    spend = _SPENDER.get()
    if spend is not None:
        spend(sum(_units(arg) for arg in args))


class _Builder:
    """An allowed global: a function of this module, called with the pickle's arguments."""

    def __init__(self, function: Callable[..., Any], *, new_ok: bool = False) -> None:
        self.function = function
        self.new_ok = new_ok

    def __call__(self, *args: Any) -> Any:
        _charge(args)
        try:
            return self.function(*args)
        except (DamagedPickle, TooBig, HostilePickle):
            raise
        except (TypeError, ValueError, OverflowError, KeyError) as error:
            raise DamagedPickle(f"{getattr(self.function, '__name__', 'a constructor')}: {error}") from None


def _tensor_maker(unpickler: RestrictedUnpickler, parameter_default: bool = False, *,
                  typed: bool = False) -> Callable[..., Any]:
    def rebuild(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                backward_hooks: Any, *rest: Any) -> Any:  # both required, as torch's rebuilders require them
        dtype = storage.dtype if isinstance(storage, StorageRef) else ""
        if typed:  # _rebuild_tensor_v3: an untyped storage, the dtype given separately
            if not rest:
                raise DamagedPickle("_rebuild_tensor_v3 without a dtype")
            dtype = _dtype_name(rest[0])
            if dtype not in DTYPES or (rest[1:2] not in ((), (None,)) and not isinstance(rest[1], dict)):
                raise DamagedPickle(f"_rebuild_tensor_v3 with dtype {dtype} or unexpected arguments")
            if len(rest) > 2:
                raise DamagedPickle("_rebuild_tensor_v3 with unexpected arguments")
        elif len(rest) > 1:
            raise DamagedPickle("_rebuild_tensor_v2 with unexpected arguments")
        metadata = rest[1 if typed else 0] if len(rest) > (1 if typed else 0) else None
        if not isinstance(storage, StorageRef):
            raise DamagedPickle("a tensor is not backed by a storage of the file")
        if type(storage_offset) is not int or not isinstance(requires_grad, bool):
            raise DamagedPickle("a tensor's offset or requires_grad has the wrong type")
        shape, strides = _dims(size, "size"), _dims(stride, "stride")
        _check_int64(shape, strides, storage_offset)
        if any(dim < 0 for dim in shape):
            raise DamagedPickle(f"a tensor has a negative size {list(shape)[:8]}")
        if len(shape) != len(strides):
            raise DamagedPickle("a tensor's size and stride differ in length")
        if storage.nbytes % DTYPES[dtype][0]:
            raise DamagedPickle(f"storage {storage.key} does not hold whole {dtype} elements")
        if dtype in QUANTIZED_DTYPES:  # torch makes a quantized tensor without a quantizer of it, unusable
            raise DamagedPickle(f"a plain tensor of quantized dtype {dtype} (not made by _rebuild_qtensor)")
        _check_tensor_metadata(metadata, dtype)
        if requires_grad and (typed or not _is_inexact(dtype)):  # v3: torch.empty(requires_grad) then set_ fails
            raise DamagedPickle(f"a {dtype} tensor requires grad as torch.load cannot rebuild it")
        _check_inside(storage, DTYPES[dtype][0], shape, strides, storage_offset)
        ref = TensorRef(storage, dtype, shape, strides, storage_offset, requires_grad, parameter_default)
        return unpickler.builders.tensor(ref)

    return rebuild


def _set_dict_attributes(target: dict[Any, Any], state: dict[Any, Any]) -> None:
    """`target.__dict__.update(state)`, for plain attribute names only (a dunder would change how it pickles)."""
    for key in state:
        if not isinstance(key, str) or (key.startswith("__") and key.endswith("__")):
            raise DamagedPickle(f"BUILD sets the attribute {key_text(key)[:80]!r} of a dict; refused")
    target.__dict__.update(state)


def _is_inexact(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))


INT64_MAX = (1 << 63) - 1
MAX_RANK = 64  # numpy's; torch allows more, rnninit refuses them


def _check_int64(shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> None:
    """Sizes, strides, offset, element count and extent in int64, as torch computes them; rank at most 64."""
    if len(shape) > MAX_RANK:
        raise DamagedPickle(f"a tensor of {len(shape)} dimensions; rnninit reads at most {MAX_RANK}")
    if any(not -INT64_MAX - 1 <= value <= INT64_MAX for value in (*shape, *strides, offset)):
        raise DamagedPickle("a tensor's size, stride or offset does not fit in 64 bits, which torch refuses")
    running = 1
    for size in shape:  # in torch's order: (2**62, 2**62, 0) overflows before the 0
        running *= size
        if running > INT64_MAX:
            raise DamagedPickle("a tensor's element count overflows 64 bits, which torch refuses")
    if sum(abs(size * step) for size, step in zip(shape, strides, strict=False)) + abs(offset) > INT64_MAX:
        raise DamagedPickle("a tensor's extent overflows 64 bits, which torch refuses")


def _check_tensor_metadata(metadata: Any, dtype: str) -> None:
    """torch applies a tensor's metadata (`set_tensor_metadata`): the conjugate and negative bits change its
    values, so a tensor that sets them is refused; torch itself refuses metadata that is not a dict."""
    if not metadata:
        return
    if not isinstance(metadata, dict):
        raise DamagedPickle("a tensor's metadata is not a dict")
    if not all(isinstance(key, str) and (value is None or type(value) in (bool, int, float))
               for key, value in metadata.items()):
        raise DamagedPickle("a tensor's metadata holds other than names and numbers, which torch refuses")
    if "neg" in metadata or "conj" in metadata:  # torch sets the bit for the key, whatever its value
        raise DamagedPickle("a tensor saved as a conjugate or negative view (its metadata sets that bit); rnninit "
                            "reads plain tensors only: save it after .resolve_conj().resolve_neg()")


def _check_inside(storage: StorageRef, itemsize: int, shape: tuple[int, ...], strides: tuple[int, ...],
                  offset: int) -> None:
    """A view must lie inside its storage, with no negative stride: the extent is offset + Σ (size − 1)·stride."""
    if offset < 0 or any(stride < 0 for stride in strides):
        raise DamagedPickle(f"a tensor has a negative offset or stride (offset {offset}, stride {list(strides)[:8]})")
    end = view_span(offset, shape, strides)[1]
    stored = storage.nbytes // itemsize
    if end > stored:
        raise DamagedPickle(f"a tensor reads outside its storage {storage.key} (offset {offset}, shape "
                            f"{list(shape)[:8]}, stride {list(strides)[:8]}, {stored} stored elements)")


def _rebuild_tensor(unpickler: RestrictedUnpickler) -> _Builder:
    def rebuild(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
        return _tensor_maker(unpickler)(storage, storage_offset, size, stride, False, None)

    return _Builder(rebuild)


def _rebuild_tensor_v2(unpickler: RestrictedUnpickler) -> _Builder:
    return _Builder(_tensor_maker(unpickler))


def _rebuild_tensor_v3(unpickler: RestrictedUnpickler) -> _Builder:
    return _Builder(_tensor_maker(unpickler, typed=True))


def _dtype_name(value: Any) -> str:
    """A dtype argument's name, whether the builders made a record or a torch.dtype of it."""
    if isinstance(value, DtypeRef):
        return value.name
    text = str(value)
    return text.removeprefix("torch.") if text.startswith("torch.") else ""


def _rebuild_parameter(unpickler: RestrictedUnpickler, *, with_state: bool = False) -> _Builder:
    def make(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
        if not isinstance(requires_grad, bool):
            raise DamagedPickle("a parameter's requires_grad is not a bool")
        if not unpickler.builders.is_tensor(data):
            raise DamagedPickle("a parameter does not hold a tensor")
        _check_tensor_state(state)
        unpickler.builders.inside.add(id(data))
        make_parameter = getattr(unpickler.builders, "parameter", None)
        if make_parameter is not None:
            return make_parameter(data, requires_grad, state)
        if requires_grad and not _is_inexact(data.dtype):
            raise DamagedPickle(f"a {data.dtype} parameter requires grad, which torch refuses")
        # a new record over the same storage, as torch makes a new Parameter: `data` may be reached elsewhere too
        return replace(data, parameter=True, requires_grad=requires_grad, state=state)

    if with_state:
        return _Builder(make)
    return _Builder(lambda data, requires_grad, backward_hooks: make(data, requires_grad, backward_hooks))


# what setattr on a tensor may change beyond a plain attribute: torch's data descriptors of Tensor and Parameter
# (tests/test_differential.py checks this list against torch's)
TENSOR_DESCRIPTORS = frozenset({
    "H", "T", "__class__", "__cuda_array_interface__", "__dict__", "__weakref__", "_backward_hooks", "_base",
    "_cdata", "_grad", "_grad_fn", "_has_symbolic_sizes_strides", "_post_accumulate_grad_hooks",
    "_python_dispatch", "_version", "data", "device", "dtype", "grad", "grad_dtype", "grad_fn", "imag", "is_cpu",
    "is_cuda", "is_ipu", "is_leaf", "is_maia", "is_meta", "is_mkldnn", "is_mps", "is_mtia", "is_nested",
    "is_quantized", "is_sparse", "is_sparse_csr", "is_vulkan", "is_xla", "is_xpu", "itemsize", "layout", "mH",
    "mT", "name", "nbytes", "ndim", "output_nr", "real", "requires_grad", "retains_grad", "shape", "volatile",
})


def _check_tensor_state(state: Any) -> None:
    """The attributes torch sets on a rebuilt tensor (`_set_obj_state`): plain ones only; one that names a
    tensor property (`data`, `real`, `requires_grad`...) could change what the tensor holds, so it is refused."""
    if state is None:
        return
    parts = state if isinstance(state, tuple) else (state,)
    if isinstance(state, tuple) and len(state) != 2:
        raise DamagedPickle("a tensor's state is a tuple of other than two parts")
    for part in parts:
        if not part:
            continue
        if not isinstance(part, dict):
            raise DamagedPickle("a tensor's state is not a dict")
        for key in part:
            if not isinstance(key, str):
                raise DamagedPickle("a tensor's state names an attribute that is not a string")
            if key in TENSOR_DESCRIPTORS:
                raise DamagedPickle(f"a tensor's state sets its {key!r}, which could change what it holds; "
                                    "rnninit does not model that, so it refuses the file")


def _rebuild_qtensor(unpickler: RestrictedUnpickler) -> _Builder:
    """torch._utils._rebuild_qtensor: a QTensorRef, checked as torch checks it; whole-load builders (`qtensor`)
    make the torch tensor from it."""

    def rebuild(storage: Any, storage_offset: Any, size: Any, stride: Any, quantizer_params: Any,
                requires_grad: Any, backward_hooks: Any) -> Any:
        if not isinstance(storage, StorageRef) or storage.dtype not in QUANTIZED_DTYPES:
            raise DamagedPickle("_rebuild_qtensor of a storage that is not quantized")
        if type(storage_offset) is not int or requires_grad is not False:
            raise DamagedPickle("_rebuild_qtensor with an offset that is not an integer or requires_grad set "
                                "(torch refuses gradients on quantized tensors)")
        if not (backward_hooks is None or (isinstance(backward_hooks, dict) and not backward_hooks)):
            raise DamagedPickle("_rebuild_qtensor with backward hooks")
        shape, strides = _dims(size, "size"), _dims(stride, "stride")
        if len(shape) != len(strides) or any(dim < 0 for dim in shape):
            raise DamagedPickle("a quantized tensor's size and stride differ in length, or a size is negative")
        quantizer = _quantizer(quantizer_params, shape, unpickler.builders)
        unpickler.builders.inside.update(id(part) for part in quantizer[1:3])  # per-channel scales, zero points
        if storage.dtype in _PACKED_QUANTIZED:  # sizes count values, the storage bytes: only plain views are read
            per_byte = 2 if storage.dtype == "quint4x2" else 4
            if storage_offset != 0 or not is_contiguous(shape, strides) or \
                    -(-math.prod(shape) // per_byte) > storage.nbytes:
                raise DamagedPickle(f"a {storage.dtype} tensor that is not a plain view of its whole storage (torch "
                                    "then reads past the storage); rnninit reads plain packed tensors only")
        else:
            _check_inside(storage, DTYPES[storage.dtype][0], shape, strides, storage_offset)
        ref = QTensorRef(storage, storage.dtype, shape, strides, storage_offset, quantizer=quantizer)
        make = getattr(unpickler.builders, "qtensor", None)
        made = ref if make is None else make(ref)
        unpickler.builders.made.append(made)  # like every tensor: refused where no name reaches it
        return made

    return _Builder(rebuild)


def _quantizer(params: Any, shape: tuple[int, ...], builders: Builders) -> tuple[Any, ...]:
    """A quantized tensor's parameters as torch's `_rebuild_qtensor` accepts them: per tensor (qscheme, scale,
    zero point); per channel (qscheme, scales, zero points, axis) with an axis inside the shape and one scale and
    zero point per channel, as tensors or lists of numbers."""
    if not isinstance(params, tuple) or not params:
        raise DamagedPickle("a quantized tensor's parameters are not a tuple")
    scheme = _dtype_name(params[0])
    if scheme == "per_tensor_affine":
        if len(params) != 3 or not _is_number(params[1]) or type(params[2]) is not int:
            raise DamagedPickle("a per-tensor quantized tensor's scale or zero point is not a number")
    elif scheme in ("per_channel_affine", "per_channel_affine_float_qparams"):
        if len(params) != 4 or type(params[3]) is not int or not 0 <= params[3] < len(shape):
            raise DamagedPickle(f"a per-channel quantized tensor's axis is out of range for size {list(shape)[:8]}")
        for part in params[1:3]:
            if _channel_count(part, builders) != shape[params[3]]:
                raise DamagedPickle("a per-channel quantized tensor's scales or zero points are not one number per "
                                    f"channel (size[axis] = {shape[params[3]]})")
    else:
        raise DamagedPickle(f"a quantized tensor with qscheme {scheme or type(params[0]).__name__}, which torch "
                            "cannot rebuild")
    return params


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _channel_count(part: Any, builders: Builders) -> int:
    """How many channels per-channel scales or zero points give (-1 when they are neither a list nor a 1-D tensor)."""
    if isinstance(part, list):
        return len(part) if all(_is_number(value) for value in part) else -1
    if isinstance(part, QTensorRef) or not builders.is_tensor(part):
        return -1
    shape = tuple(part.shape)
    return shape[0] if len(shape) == 1 else -1


_REBUILDERS: dict[str, Callable[[RestrictedUnpickler], _Builder]] = {
    "_rebuild_qtensor": _rebuild_qtensor,
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": lambda unpickler: _rebuild_parameter(unpickler, with_state=True),
}


def _rebuild_from_type_v2(unpickler: RestrictedUnpickler) -> _Builder:
    """torch._tensor._rebuild_from_type_v2: a tensor rebuilt by an allowed rebuilder, given a type (Tensor or
    Parameter, as torch's weights-only loader allows) and attributes."""

    def rebuild(func: Any, new_type: Any, args: Any, state: Any) -> Any:
        if not isinstance(func, _Builder) or not isinstance(args, tuple):
            raise DamagedPickle("_rebuild_from_type_v2 with a function that is not a tensor rebuilder")
        if not (isinstance(new_type, _ForeignGlobal) and (new_type.module, new_type.name)
                in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter"))):  # the names torch allows
            raise DamagedPickle("_rebuild_from_type_v2 of a type other than Tensor or Parameter")
        _check_tensor_state(state)
        tensor = func(*args)
        if not unpickler.builders.is_tensor(tensor):
            raise DamagedPickle("_rebuild_from_type_v2 of something that is not a tensor")
        if isinstance(tensor, TensorRef):
            tensor.state = state
            if new_type.name == "Parameter":
                tensor.parameter = True
        elif new_type.name == "Parameter" and hasattr(unpickler.builders, "parameter"):
            unpickler.builders.inside.add(id(tensor))  # torch's as_subclass(Parameter): the same tensor, retyped
            tensor = unpickler.builders.parameter(tensor, tensor.requires_grad, state)
        return tensor

    return _Builder(rebuild)


# the device types torch.device parses (torch 2.13), and its grammar: TYPE or TYPE:INDEX, no sign or leading zero
_DEVICE_TYPES = ("cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve", "fpga", "maia",
                 "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone")
_DEVICE = re.compile(rf"(?:{'|'.join(_DEVICE_TYPES)})(?::(?:0|[1-9][0-9]*))?")


def _device_spec(spec: tuple[Any, ...]) -> tuple[Any, ...]:
    """torch.device(TYPE[:INDEX]) or torch.device(TYPE, INDEX), refused where torch refuses it."""
    if not 1 <= len(spec) <= 2 or not isinstance(spec[0], str) or not all(type(part) is int for part in spec[1:]):
        raise DamagedPickle("torch.device with unexpected arguments")
    if not _DEVICE.fullmatch(spec[0]) or (len(spec) == 2 and (spec[1] < 0 or ":" in spec[0])):
        raise DamagedPickle(f"torch.device{spec!r:.60}: a device torch does not know")
    return spec


def _reconstructor_function(cls: Any, base: Any, state: Any) -> Foreign:
    """copyreg._reconstructor (protocol 0 and 1 objects): a record of `cls`, never an instance."""
    if not isinstance(cls, _ForeignGlobal):
        raise DamagedPickle("copyreg._reconstructor of a class this reader builds")
    cls.refuse_tensor_making()
    return Foreign(cls.module, cls.name, (), state=state, called=True)


_reconstructor = _Builder(_reconstructor_function)


def _same_list(items: Any, *rest: Any) -> Any:
    if not isinstance(items, list):
        raise DamagedPickle("a TorchScript list is not a list")
    return items


def _restore_type_tag(value: Any, type_str: Any = None) -> Any:
    return value


_JIT_LISTS = {name: _Builder(_same_list) for name in (
    "build_tensorlist", "build_intlist", "build_doublelist", "build_boollist", "build_genericlist")}
_JIT_LISTS["restore_type_tag"] = _Builder(_restore_type_tag)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """_codecs.encode as protocol 2 uses it for bytes: latin-1 text to bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DamagedPickle("_codecs.encode with other than latin-1 text")
    return text.encode("latin-1")


_codecs_encode = _Builder(_encode)


def _pure(function: Callable[..., Any], kinds: tuple[type, ...]) -> _Builder:
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], kinds)):
            raise DamagedPickle(f"{function.__name__} with unexpected arguments")
        if args and isinstance(args[0], (list, tuple, set, frozenset)) and len(args[0]) > 1 << 20:
            raise DamagedPickle(f"{function.__name__} of more than {1 << 20} items")
        return function(*args)

    build.__name__ = function.__name__
    return _Builder(build, new_ok=True)


def _make_complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(isinstance(part, (int, float)) for part in (real, imag)):
        raise DamagedPickle("complex of non-numbers")
    return complex(real, imag)


def _make_slice(*parts: Any) -> slice:
    if len(parts) > 3 or not all(part is None or type(part) is int for part in parts):
        raise DamagedPickle("slice of non-integers")
    return slice(*parts)


def _make_range(*parts: Any) -> range:
    if not 1 <= len(parts) <= 3 or not all(type(part) is int for part in parts):
        raise DamagedPickle("range of non-integers")
    return range(*parts)


_PURE_BUILTINS: dict[str, _Builder] = {
    "set": _pure(set, (list, tuple, set, frozenset)),
    "frozenset": _pure(frozenset, (list, tuple, set, frozenset)),
    "bytearray": _pure(bytearray, (bytes, bytearray)),  # never bytearray(n): n bytes from 5 bytes of pickle
    "bytes": _pure(bytes, (bytes, bytearray)),  # protocol 2 writes b"" as bytes(); never bytes(n)
    "complex": _Builder(_make_complex),
    "slice": _Builder(_make_slice),
    "range": _Builder(_make_range),
}


# --- storages: persistent ids ---------------------------------------------------------------------------


def storage_from_id(pid: Any, known: dict[str, StorageRef], *, legacy: bool = False) -> StorageRef:
    """The StorageRef a torch.save persistent id names (one per key: tensors that share it share it).
    Zip archives: ('storage', type, key, location, numel); legacy files add view metadata (None)."""
    size = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage" and isinstance(pid[1], StorageType)
            and isinstance(pid[2], str) and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0):
        raise DamagedPickle("a storage reference is malformed")
    if legacy and pid[5] is not None:
        raise DamagedPickle("a storage view (torch < 0.4 file): not supported")
    _, storage_type, key, location, numel = pid[:5]
    existing = known.get(key)
    if existing is not None and (existing.nbytes or legacy):  # torch.load keeps no empty storage: it reads it again
        if existing.dtype != storage_type.dtype and storage_type.name != "UntypedStorage":
            raise DamagedPickle(f"storage {key} is named with two dtypes")
        return existing
    made = StorageRef(key, storage_type.dtype, numel, location)
    known[key] = made
    return made


def unpickle(data: bytes | io.BytesIO, persistent_load: Callable[[Any], StorageRef], source: str,
             builders: Builders | None = None) -> Any:
    """Unpickle `data` restrictedly; the errors a reader shows (UnsafeCheckpointError, CheckpointError)."""
    unpickler = RestrictedUnpickler(data, persistent_load, builders)
    try:
        return unpickler.load()
    except HostilePickle as error:
        raise UnsafeCheckpointError(hostile_message(source, str(error))) from None
    except TooBig as error:
        raise CheckpointError(too_big_message(source, int(str(error)))) from None
    except (CheckpointError, MemoryError):
        raise
    except RecursionError:
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): its pickle nests too "
                              "deeply") from None
    except Exception as error:  # DamagedPickle, and pickle's own errors on a malformed stream
        text = str(error) or type(error).__name__
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): "
                              f"{text.splitlines()[0][:200]}") from None


def too_big_message(source: str, budget: int) -> str:
    return (f"{source}: the checkpoint's pickle builds more objects than rnninit reads (a budget of {budget} units "
            f"of about 16 bytes, which grows with the {max_entries()} entries {MAX_ENTRIES_VARIABLE} allows); "
            f"refused. Set {MAX_ENTRIES_VARIABLE} to allow more")


def hostile_message(source: str, what: str) -> str:
    return (f"{source}: this file needs code to load (it refers to {what}); rnninit will not run it, "
            "and refuses files that name such callables. Only tensors, containers, plain values and "
            "inert records of other classes are read")


# --- arrays (no torch) -----------------------------------------------------------------------------------


def numpy_dtype(name: str) -> Any:
    """The numpy dtype of a torch dtype name; bfloat16 and float8 types come from ml_dtypes."""
    import numpy as np

    if name not in DTYPES or not DTYPES[name][1]:
        raise CheckpointError(f"dtype {name} has no numpy equivalent here")
    code = DTYPES[name][1]
    if code[0] in "<?iuf" and not code.startswith("float"):
        return np.dtype(code)
    import ml_dtypes

    if not hasattr(ml_dtypes, code):
        raise CheckpointError(f"dtype {name} needs a newer ml_dtypes")
    return np.dtype(getattr(ml_dtypes, code))


def array_from_bytes(raw: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...],
                     stride: tuple[int, ...]) -> Any:
    """A numpy array of `shape`/`stride` (in elements) over `raw`, which starts at the tensor's first element."""
    import numpy as np

    kind = numpy_dtype(dtype)
    if 0 in shape:
        return np.empty(shape, dtype=kind)
    flat = np.frombuffer(raw, dtype=kind)
    if is_contiguous(shape, stride) and flat.size == math.prod(shape):
        return flat.reshape(shape)  # no copy: a read-only view that keeps `raw` alive
    # over unsigned integers of the same size: as_strided rebuilds its dtype from a type string, which some
    # ml_dtypes types (float8_e5m2: '<f1') do not round-trip through
    bits = flat.view(f"u{kind.itemsize}") if kind.itemsize in (1, 2, 4, 8) else flat
    view = np.lib.stride_tricks.as_strided(bits, shape, tuple(s * kind.itemsize for s in stride), writeable=False)
    return np.array(view).view(kind)  # a copy of its own, laid out contiguously


def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether elements of `shape` at `stride` (in elements) lie in row-major order without gaps."""
    expected = 1
    for size, step in reversed(list(zip(shape, stride, strict=True))):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def tensor_array(ref: TensorRef, storage: bytes | memoryview) -> Any:
    """The numpy array of `ref` from its storage's bytes; CheckpointError for a view outside the storage."""
    first, stop = tensor_span(ref)
    if stop * ref.itemsize > min(len(storage), ref.storage.nbytes) or first < 0 or min(ref.stride, default=0) < 0:
        raise CheckpointError(f"a tensor reads outside its storage (offset {ref.offset}, shape {list(ref.shape)}, "
                              f"stride {list(ref.stride)}, {ref.storage.numel} stored elements)")
    return array_from_bytes(storage[first * ref.itemsize:stop * ref.itemsize], ref.dtype, ref.shape, ref.stride)


def view_span(offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, int]:
    """[first, last + 1) element indexes of the storage that a view reads: offset + Σ (size − 1)·stride + 1,
    not offset + numel (a strided view reaches further, a broadcast one less far)."""
    if 0 in shape:
        return offset, offset
    return offset, offset + 1 + sum((size - 1) * step for size, step in zip(shape, stride, strict=True))


def tensor_span(ref: TensorRef) -> tuple[int, int]:
    """[first, last + 1) element indexes of the storage that the tensor reads."""
    return view_span(ref.offset, ref.shape, ref.stride)


# --- whole files: zip archives and the legacy format (torch-free) -----------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


@dataclass
class PickledFile:
    """A whole torch.save file read without torch: its object graph and where each storage's bytes are."""

    kind: str  # "zip", "torchscript" or "legacy"
    root: Any
    storages: dict[str, StorageRef]
    storage_bytes: dict[str, memoryview]  # key → the storage's bytes (at least its declared size)
    code: dict[str, str] = field(default_factory=dict)  # TorchScript: record path → source text
    builders: Builders = field(default_factory=lambda: Builders())  # what built the graph's tensors

    @property
    def foreign_classes(self) -> list[str]:
        return foreign_classes(self.root)


class _HeaderUnpickler(RestrictedUnpickler):
    """For the legacy format's small pickles (magic number, protocol, sys_info, storage keys): plain values
    only, within the same budget. Any global there is refused: no torch.save header names one."""

    def __init__(self, stream: io.BytesIO) -> None:
        super().__init__(stream, self._no_storage)

    @staticmethod
    def _no_storage(pid: Any) -> StorageRef:
        raise DamagedPickle("the legacy header refers to a storage")

    def find_class(self, module: str, name: str) -> Any:
        raise HostilePickle(f"{module}.{name}")

def _header_value(stream: io.BytesIO, source: str) -> Any:
    try:
        return _HeaderUnpickler(stream).load()
    except HostilePickle as error:
        raise UnsafeCheckpointError(hostile_message(source, str(error))) from None
    except TooBig as error:
        raise CheckpointError(too_big_message(source, int(str(error)))) from None
    except Exception as error:
        raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): "
                              f"{(str(error) or type(error).__name__).splitlines()[0][:200]}") from None


def read_legacy(data: bytes, source: str, builders: Builders | None = None) -> PickledFile:
    """A legacy (non-zip) torch.save file: magic number, protocol, sys_info, data pickle, storage keys,
    then each storage as an 8-byte element count and its bytes."""
    stream = io.BytesIO(data)
    if _header_value(stream, source) != LEGACY_MAGIC:
        raise CheckpointError(f"{source}: not a readable torch.save file: invalid magic number (corrupt file?)")
    if _header_value(stream, source) != LEGACY_PROTOCOL:
        raise CheckpointError(f"{source}: not a readable torch.save file: unknown legacy protocol version")
    sys_info = _header_value(stream, source)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError(f"{source}: a big-endian torch.save file; rnninit reads little-endian files only")
    storages: dict[str, StorageRef] = {}
    claimed = [0]

    def persistent_load(pid: Any) -> StorageRef:
        known = len(storages)
        ref = storage_from_id(pid, storages, legacy=True)
        if len(storages) > known:  # a new storage: its bytes must fit in what the file holds
            claimed[0] += 8 + ref.nbytes
            if claimed[0] > len(data):
                raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): its "
                                      f"storages claim more bytes than the file holds (storage {ref.key})")
        return ref

    builders = builders or Builders()
    root = unpickle(stream, persistent_load, source, builders)
    keys = _header_value(stream, source)
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): storage keys are malformed")
    position = stream.tell()
    view = memoryview(data)
    found: dict[str, memoryview] = {}
    for key in keys:
        if key not in storages:
            raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): storage {key} is "
                                  "listed but never used")
        if position + 8 > len(data):
            raise CheckpointError(f"{source}: truncated: storage {key} lies past the end of the file")
        (count,) = struct.unpack("<q", data[position:position + 8])
        ref = storages[key]
        nbytes = count * DTYPES[ref.dtype][0]
        if count != ref.numel or position + 8 + nbytes > len(data):
            raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): storage "
                                  f"{key} holds {count} elements, its reference {ref.numel}")
        found[key] = view[position + 8:position + 8 + nbytes]
        position += 8 + nbytes
    missing = sorted(set(storages) - set(found))
    if missing:
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): storage {missing[0]} "
                              "has no data")
    return PickledFile("legacy", root, storages, found, builders=builders)


def _legacy_storage(pid: Any, storages: dict[str, StorageRef]) -> StorageRef:
    return storage_from_id(pid, storages, legacy=True)


def read_zip(data: bytes, source: str, builders: Builders | None = None) -> PickledFile:
    """A zip torch.save archive or TorchScript archive held in memory (the whole-load path)."""
    from .safety import check_zip_records, read_record
    from .ziplayout import check_storage_record, check_torch_records

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): {error}") from None
    with archive:
        check_zip_records(archive, len(data), source)
        names = archive.namelist()
        folder = check_torch_records(names, lambda record: read_record(archive, record), source)
        pickled = read_record(archive, f"{folder}/data.pkl")
        code = read_code(archive, folder)
        storages: dict[str, StorageRef] = {}

        def persistent_load(pid: Any) -> StorageRef:  # checked before a caller's builder allocates anything
            ref = storage_from_id(pid, storages)
            record = f"{folder}/data/{ref.key}"
            stored = archive.getinfo(record).file_size if record in names else None
            check_storage_record(record, ref.nbytes, stored, source)
            return ref

        builders = builders or Builders()
        root = unpickle(pickled, persistent_load, source, builders)
        found = {key: memoryview(read_record(archive, f"{folder}/data/{key}")) for key in storages}
    return PickledFile("torchscript" if code else "zip", root, storages, found, code, builders)


def read_code(archive: zipfile.ZipFile, folder: str) -> dict[str, str]:
    """A TorchScript archive's `code/__torch__/**.py` records (text, never run); {} for a torch.save file."""
    from .safety import read_record

    found: dict[str, str] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        if not (name.startswith(f"{folder}/code/__torch__") and name.endswith(".py")):
            continue
        total += info.file_size
        if total > CODE_RECORD_LIMIT:
            raise CheckpointError(f"the TorchScript archive's code records declare more than {CODE_RECORD_LIMIT} "
                                  "bytes; refused")
        found[name.removeprefix(f"{folder}/code/")] = read_record(archive, name).decode("utf-8", "replace")
    if not found and f"{folder}/constants.pkl" in archive.namelist():
        raise CheckpointError(f"a constants.pkl record makes the archive a TorchScript archive to torch.load, but "
                              f"it holds no {folder}/code/ records: not a readable archive (damaged?)")
    return found


def read_file(data: bytes, source: str, builders: Builders | None = None) -> PickledFile:
    """A whole torch.save file (zip, legacy) or TorchScript archive, from its bytes."""
    if data.startswith(b"PK"):
        return read_zip(data, source, builders)
    return read_legacy(data, source, builders)


# --- naming: state-dict paths, TorchScript modules ---------------------------------------------------------

_CLASS = re.compile(r"^class\s+([\w.]+)\s*\(\s*Module\s*\)\s*:", re.MULTILINE)
# [ \t], never \s: `^\s+` would match across blank lines from each of them (quadratic time)
_LIST = re.compile(r"^[ \t]+(__parameters__|__buffers__)[ \t]*=[ \t]*(\[[^\]\n]*\])", re.MULTILINE)
LIST_TEXT_LIMIT = 1 << 20  # one __parameters__ line: ~20 bytes a name, so about 50,000 names


def script_modules(code: dict[str, str]) -> dict[str, tuple[list[str], list[str]]]:
    """TorchScript module classes ("__torch__.a.b.Name") → (parameter names, buffer names), read from the
    `__parameters__` / `__buffers__` lines of each class in the archive's code (text; nothing is run)."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for path, text in code.items():
        module = path.removesuffix(".py").replace("/", ".")
        starts = [(match.start(), match.group(1)) for match in _CLASS.finditer(text)]
        for index, (start, name) in enumerate(starts):
            stop = starts[index + 1][0] if index + 1 < len(starts) else len(text)
            lists: dict[str, list[str]] = {"__parameters__": [], "__buffers__": []}
            for match in _LIST.finditer(text, start, stop):
                if len(match.group(2)) > LIST_TEXT_LIMIT:
                    raise CheckpointError(f"a TorchScript code record ({path}) lists more than {LIST_TEXT_LIMIT} "
                                          f"bytes of {match.group(1)}; refused")
                try:
                    value = ast.literal_eval(match.group(2))
                except (ValueError, SyntaxError):
                    continue
                except (MemoryError, RecursionError):  # the parser's own bounds on nesting
                    raise CheckpointError(f"a TorchScript code record ({path}) nests its {match.group(1)} too "
                                          "deeply to read; refused") from None
                if isinstance(value, list) and all(isinstance(item, str) for item in value):
                    lists[match.group(1)] = value
            found[f"{module}.{name}"] = (lists["__parameters__"], lists["__buffers__"])
    return found


def script_tensors(root: Any, code: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """(state_dict name, tensor) of a TorchScript module tree: each module's parameters, then buffers, then
    its submodules (attributes holding objects of module classes), as `module.state_dict()` names them.
    Other tensor attributes (`_flat_weights`, which aliases the LSTM's parameters) are not entries."""
    modules = script_modules(code)
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        if id(node) in seen or not isinstance(node, Foreign) or node.qualified not in modules:
            continue
        if depth > 500:
            raise CheckpointError("the TorchScript modules nest deeper than 500 levels; refused")
        seen.add(id(node))
        attributes = node.state if isinstance(node.state, dict) else {}
        parameters, buffers = modules[node.qualified]
        for name in [*parameters, *buffers]:
            value = attributes.get(name)
            if value is not None and not isinstance(value, (Foreign, dict, list, tuple, str, int, float)):
                yield f"{prefix}{name}", value
        children = [(f"{prefix}{key}.", value, depth + 1) for key, value in attributes.items()
                    if isinstance(value, Foreign) and value.qualified in modules]
        stack.extend(reversed(children))


def named_tensors(pickled: PickledFile) -> dict[str, Any]:
    """The tensors of a whole file by name: state-dict paths for a TorchScript archive, paths of the
    object graph otherwise ("tensor" for a file that holds one tensor)."""
    from .checkpoint import walk

    leaves = [(path or "tensor", value) for path, value in walk(pickled.root, "")]  # also enforces the limits
    pickled.builders.refuse_hidden(value for _, value in leaves)
    if pickled.kind == "torchscript":
        return dict(script_tensors(pickled.root, pickled.code))
    return {path: value for path, value in leaves if not isinstance(value, (Foreign, _ForeignGlobal))
            and _is_tensor_like(value)}


def _is_tensor_like(value: Any) -> bool:
    if isinstance(value, TensorRef):
        return True
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def read_arrays(data: bytes, source: str) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...], Any]]:
    """name → (dtype name, shape, stride, numpy array) of every tensor of a whole torch.save file or
    TorchScript archive, without torch."""
    import math

    from .checkpoint import refuse_broadcast

    pickled = read_file(data, source)
    result = {}
    for name, ref in named_tensors(pickled).items():
        first, stop = tensor_span(ref)
        refuse_broadcast(name, math.prod(ref.shape), stop - first)
        result[name] = (ref.dtype, ref.shape, ref.stride, tensor_array(ref, pickled.storage_bytes[ref.storage.key]))
    return result
