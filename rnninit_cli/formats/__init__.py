"""File formats: read checkpoints without trusting them, write them atomically. No layout knowledge here.

- kinds: the formats, file extensions, the stdin/stdout name, rnninit's metadata record;
- safety: limits on what a file may claim: the safetensors header validator, zip records, stdin;
- ziplayout: the layout torch.save gives a zip archive, checked record by record;
- unpickle/: the restricted reader of torch.save files and TorchScript archives (its own map);
- checkpoint: load, read (torch-free) and save whole `.pt` and `.safetensors` checkpoints;
- outputs: where an output may go and what `--force` may replace;
- atomic: temporary file, rename, signals held, locks, the count of committed outputs;
- tensorfile: byte ranges of tensors in a file, and patched copies that leave every other byte alone;
- folders: model folders (an index and its shards);
- lazy: tensors left in their file until read: rows a piece at a time (`diff` streams two files);
- packed: dynamically quantized LSTM/GRU records (`quantize_dynamic`) read as data;
- dcp_metadata, dcp: torch.distributed.checkpoint folders: their `.metadata`, and patched copies.
"""
