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
the object graph is walked (`objects.walk`).

Callers that have torch (the whole-load path) pass `Builders` that turn the records into torch objects
as the pickle is read, so that sharing between tensors is exactly the pickle's.

The modules, from the bottom up:
- records: the inert records, `Builders` (how records are made), the dtypes a file may name, the reader's errors;
- arrays: a tensor record's bytes as a numpy array;
- rebuilders: each allowed global and what it builds, its arguments checked as torch.load checks them;
- machine: the restricted unpickler (opcodes, budget, nesting, hostile names);
- objects: walking what was read (leaves by path, optimizer states, TorchScript objects), bounded;
- torchscript: TorchScript archives' `code/` records, which name the state-dict path of each tensor;
- files: whole files (zip archives, the legacy format) and their tensors by name, as records or numpy arrays;
- torch_builders: the records made torch objects as the pickle is read (the whole-load path).
"""
