"""The globals a checkpoint may name, and what each builds: torch's tensor, parameter and quantized-tensor
rebuilders (every argument checked as torch.load would), Size, device, dtypes, a few pure builtins. Each is a
`_Builder` whose arguments are charged against the unpickler's budget before it runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from .arrays import is_contiguous, view_span
from .records import (
    _PACKED_QUANTIZED,
    DTYPES,
    QUANTIZED_DTYPES,
    Builders,
    DamagedPickle,
    DtypeRef,
    Foreign,
    HostilePickle,
    QTensorRef,
    StorageRef,
    TensorRef,
    TooBig,
    _ForeignGlobal,
    key_text,
)


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(item) is int for item in value):
        raise DamagedPickle(f"a tensor's {what} is not a tuple of integers")
    return tuple(value)



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



def _tensor_maker(builders: Builders, parameter_default: bool = False, *,
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
        return builders.tensor(ref)

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



def _rebuild_tensor(builders: Builders) -> _Builder:
    def rebuild(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
        return _tensor_maker(builders)(storage, storage_offset, size, stride, False, None)

    return _Builder(rebuild)



def _rebuild_tensor_v2(builders: Builders) -> _Builder:
    return _Builder(_tensor_maker(builders))



def _rebuild_tensor_v3(builders: Builders) -> _Builder:
    return _Builder(_tensor_maker(builders, typed=True))



def _dtype_name(value: Any) -> str:
    """A dtype argument's name, whether the builders made a record or a torch.dtype of it."""
    if isinstance(value, DtypeRef):
        return value.name
    text = str(value)
    return text.removeprefix("torch.") if text.startswith("torch.") else ""



def _rebuild_parameter(builders: Builders, *, with_state: bool = False) -> _Builder:
    def make(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
        if not isinstance(requires_grad, bool):
            raise DamagedPickle("a parameter's requires_grad is not a bool")
        if not builders.is_tensor(data):
            raise DamagedPickle("a parameter does not hold a tensor")
        _check_tensor_state(state)
        builders.inside.add(id(data))
        make_parameter = getattr(builders, "parameter", None)
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



def _rebuild_qtensor(builders: Builders) -> _Builder:
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
        quantizer = _quantizer(quantizer_params, shape, builders)
        builders.inside.update(id(part) for part in quantizer[1:3])  # per-channel scales, zero points
        if storage.dtype in _PACKED_QUANTIZED:  # sizes count values, the storage bytes: only plain views are read
            per_byte = 2 if storage.dtype == "quint4x2" else 4
            if storage_offset != 0 or not is_contiguous(shape, strides) or \
                    -(-math.prod(shape) // per_byte) > storage.nbytes:
                raise DamagedPickle(f"a {storage.dtype} tensor that is not a plain view of its whole storage (torch "
                                    "then reads past the storage); rnninit reads plain packed tensors only")
        else:
            _check_inside(storage, DTYPES[storage.dtype][0], shape, strides, storage_offset)
        ref = QTensorRef(storage, storage.dtype, shape, strides, storage_offset, quantizer=quantizer)
        make = getattr(builders, "qtensor", None)
        made = ref if make is None else make(ref)
        builders.made.append(made)  # like every tensor: refused where no name reaches it
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



_REBUILDERS: dict[str, Callable[[Builders], _Builder]] = {
    "_rebuild_qtensor": _rebuild_qtensor,
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": lambda builders: _rebuild_parameter(builders, with_state=True),
}



def _rebuild_from_type_v2(builders: Builders) -> _Builder:
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
        if not builders.is_tensor(tensor):
            raise DamagedPickle("_rebuild_from_type_v2 of something that is not a tensor")
        if isinstance(tensor, TensorRef):
            tensor.state = state
            if new_type.name == "Parameter":
                tensor.parameter = True
        elif new_type.name == "Parameter" and hasattr(builders, "parameter"):
            builders.inside.add(id(tensor))  # torch's as_subclass(Parameter): the same tensor, retyped
            tensor = builders.parameter(tensor, tensor.requires_grad, state)
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
