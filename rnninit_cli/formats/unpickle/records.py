"""What the restricted reader makes of a pickle: inert records (tensors, storages, dtypes, devices, objects of
other classes) and the `Builders` that make them; the dtypes a file may name; the reader's own exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...errors import CheckpointError

# torch dtype name → (bytes per element, numpy type code of what is stored, or ml_dtypes name); bfloat16 is read
# as its bits (uint16, see rnninit_cli/bfloat16.py: without ml_dtypes)
DTYPES: dict[str, tuple[int, str]] = {
    "float64": (8, "<f8"), "float32": (4, "<f4"), "float16": (2, "<f2"), "bfloat16": (2, "<u2"),
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



class HostilePickle(Exception):
    """The pickle names a known-dangerous callable (the argument); nothing was called."""



class DamagedPickle(Exception):
    """The pickle is malformed or asks for something no torch.save file does."""



class TooBig(Exception):
    """The pickle builds more objects than the budget allows."""



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
        """What `objects.walk` descends into: the state's attributes, then arguments and items."""
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



class Builders:
    """How the allowed globals are built. This default builds inert records; the whole-load path (`torch_builders`)
    overrides the methods to build torch objects instead. Every tensor built is kept, so that one the walk cannot
    reach by a name (a dict key, a set member, an attribute) is refused: rewriting a tensor that shares its storage
    would change it unseen (`refuse_hidden`)."""

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
