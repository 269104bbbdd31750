"""The opcode machine: pickle's own pure-Python unpickler with `find_class`, `persistent_load` and every opcode that
applies an object restricted (only `rebuilders`' builders and `records` run), every allocating opcode counted
against a budget, tuples nested too deeply refused as they are built, and the names refused as hostile."""

from __future__ import annotations

import io
import pickle
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from ...errors import CheckpointError, UnsafeCheckpointError
from ..safety import MAX_ENTRIES_VARIABLE, MAX_NESTING, max_entries, pickle_budget
from .rebuilders import (
    _JIT_LISTS,
    _PURE_BUILTINS,
    _REBUILDERS,
    _SPENDER,
    _Builder,
    _charge,
    _codecs_encode,
    _device_spec,
    _dims,
    _rebuild_from_type_v2,
    _reconstructor,
    _set_dict_attributes,
)
from .records import (
    _OTHER_DTYPES,
    _QSCHEMES,
    DTYPES,
    STORAGE_DTYPES,
    Builders,
    DamagedPickle,
    Foreign,
    HostilePickle,
    StorageRef,
    StorageType,
    TooBig,
    _ForeignGlobal,
)

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


# --- builders: what the allowed globals make ----------------------------------------------------------


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
            return _REBUILDERS[name](self.builders)
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return _rebuild_from_type_v2(self.builders)
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


# --- whole files: zip archives and the legacy format (torch-free) -----------------------------------------


# --- naming: state-dict paths, TorchScript modules ---------------------------------------------------------

