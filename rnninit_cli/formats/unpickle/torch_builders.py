"""The restricted reader's records made torch objects as the pickle is read (the whole-load path), so that
sharing between tensors is exactly the pickle's."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError, first_line
from .records import Builders, QTensorRef, TensorRef

if TYPE_CHECKING:
    import torch



class _TorchBuilders(Builders):
    """Build torch objects as the restricted reader reads the pickle: one untyped storage per storage key
    (tensors that share it share it, as with torch.load), each allocated at its declared size (checked
    against the file before) and filled once the file's storages are known."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.torch = torch
        self.storages: dict[str, torch.UntypedStorage] = {}
        self.channels: list[tuple[torch.Tensor, Any, Any]] = []  # per-channel qtensors, their scales, zero points

    def _storage(self, ref: TensorRef) -> Any:
        storage = self.storages.get(ref.storage.key)
        if storage is None:
            storage = self.torch.UntypedStorage(ref.storage.nbytes)
            self.storages[ref.storage.key] = storage
        return storage

    def tensor(self, ref: TensorRef) -> Any:
        torch = self.torch
        storage = self._storage(ref)
        tensor = torch.empty((0,), dtype=getattr(torch, ref.dtype))
        try:
            tensor.set_(storage, ref.offset, ref.shape, ref.stride)
        except RuntimeError as error:  # a view outside its storage, sizes that overflow
            raise CheckpointError(f"a tensor torch cannot make: {first_line(str(error))}") from None
        tensor.requires_grad = ref.requires_grad
        self.made.append(tensor)
        return tensor

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, self.torch.Tensor)

    def qtensor(self, ref: QTensorRef) -> Any:
        """A quantized tensor made as torch.load makes it: `torch._utils._rebuild_qtensor` on the file's storage,
        which `fill` fills later (per-channel scales and zero points are checked then)."""
        torch = self.torch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's deprecation notes on typed storages and quantization
                typed = torch.storage.TypedStorage(wrap_storage=self._storage(ref), dtype=getattr(torch, ref.dtype),
                                                   _internal=True)
                tensor = torch._utils._rebuild_qtensor(typed, ref.offset, tuple(ref.shape), tuple(ref.stride),
                                                       ref.quantizer, False, OrderedDict())
        except (RuntimeError, ValueError, TypeError) as error:
            raise CheckpointError(f"a quantized tensor torch cannot make: {first_line(str(error))}") from None
        if len(ref.quantizer) == 4:
            self.channels.append((tensor, ref.quantizer[1], ref.quantizer[2]))
        return tensor

    def parameter(self, data: Any, requires_grad: bool, _state: Any) -> Any:
        if not isinstance(data, self.torch.Tensor):
            raise CheckpointError("a parameter does not hold a tensor")
        try:
            return self.torch.nn.Parameter(data, requires_grad)
        except RuntimeError as error:  # requires_grad on an integer tensor
            raise CheckpointError(f"a parameter torch cannot make: {first_line(str(error))}") from None

    def dtype(self, name: str) -> Any:
        if not hasattr(self.torch, name):
            raise CheckpointError(f"torch.{name} is not a dtype of this torch")
        return getattr(self.torch, name)

    def device(self, spec: tuple[Any, ...]) -> Any:
        return self.torch.device(*spec)

    def size(self, dims: tuple[int, ...]) -> Any:
        return self.torch.Size(dims)

    def layout(self, name: str) -> Any:
        layout = getattr(self.torch, name.removeprefix("torch."), None)
        if not isinstance(layout, self.torch.layout):
            raise CheckpointError(f"{name} is not a torch layout")
        return layout

    def fill(self, storage_bytes: dict[str, memoryview]) -> None:
        torch = self.torch
        for key, storage in self.storages.items():
            nbytes = storage.nbytes()
            if nbytes:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a read-only buffer: it is only copied from
                    source = torch.frombuffer(storage_bytes[key][:nbytes], dtype=torch.uint8)
                torch.empty((0,), dtype=torch.uint8).set_(storage).copy_(source)
        for tensor, scales, zero_points in self.channels:
            # torch keeps per-channel scales and zero points by reference where their dtypes are the ones it saves
            # (float64 and int64, or float32 and float32), so they are the filled values; a copy made before
            # the fill would hold others, and the tensor would not be what the file holds
            held = (tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points())
            if not all(torch.equal(now.to(torch.float64), torch.as_tensor(saved).to(torch.float64))
                       for now, saved in zip(held, (scales, zero_points), strict=True)):
                raise CheckpointError("a per-channel quantized tensor whose scales or zero points rnninit cannot "
                                      "rebuild exactly as the file holds them (unusual dtypes); refused")
