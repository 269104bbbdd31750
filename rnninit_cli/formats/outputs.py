"""Where an output may go: its format from its name, what `--force` may replace, what a format can hold."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, UsageError, naming_arguments
from .kinds import FORMATS, METADATA_RECORD, PT_EXTENSIONS, STDIO
from .unpickle.objects import is_tensor, walk

if TYPE_CHECKING:
    pass



def output_format(output: str | Path, requested: str | None, input_format: str,
                  source: str | Path | None = None) -> str:
    """`--format`, else the format OUTPUT's name says, else the input's format (a name without a checkpoint
    extension: see `named_format`). A `--format` that contradicts the name is a UsageError."""
    if requested is not None and requested not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {requested!r}")
    named = named_format(output, source)
    if requested is not None and named is not None and requested != named:
        raise UsageError(f"{output} is named like a {_FORMAT_NAMES[named]} file but --format asks for "
                         f"{requested}; name it {Path(str(output)).stem}{_EXTENSIONS[requested]}, or drop --format")
    return requested or named or input_format


_FORMAT_NAMES = {"pt": "torch.save (pt)", "safetensors": "safetensors"}


_EXTENSIONS = {"pt": PT_EXTENSIONS[0], "safetensors": ".safetensors"}


def named_format(output: str | Path, source: str | Path | None = None) -> str | None:
    """The format OUTPUT's extension names: 'safetensors' (`.safetensors`), 'pt' (`.pt .pth .bin .ckpt`), or None
    for `-`, a name without an extension or with INPUT's own (`model.jit` → `out.jit`: the input's format).
    Any other extension (`out.npz`, `out.onnx`) is a UsageError: rnninit writes no such format."""
    if str(output) == STDIO:
        return None
    suffix = _extension(output)
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in PT_EXTENSIONS:
        return "pt"
    if not suffix or (source is not None and str(source) != STDIO and Path(str(source)).suffix.lower() == suffix):
        return None
    raise UsageError(f"{output}: rnninit writes torch.save files ({' '.join(PT_EXTENSIONS)}) and .safetensors "
                     f"files, and {suffix} names neither; give OUTPUT one of these extensions")


def _extension(name: str | Path) -> str:
    """The extension a name ends with, lower-cased; a hidden file's whole name counts (`.safetensors`, which
    Path.suffix takes for a stem)."""
    final = Path(str(name)).name.lower()
    return Path(final).suffix or (final if final.startswith(".") and final.count(".") == 1 else "")


def check_output_name(source: str | Path, output: str | Path, requested: str | None) -> None:
    """Before any work: a file OUTPUT's extension must name a format rnninit writes, the one `--format` asks for
    (see `output_format`), and a file OUTPUT must not end with `/` (a folder's name). A folder's output is checked
    once the folder is known to be a checkpoint (`check_folder_output_name`)."""
    if str(output) == STDIO or (str(source) != STDIO and Path(str(source)).is_dir()):
        return
    if str(output).endswith(("/", os.sep)):
        raise UsageError(f"{output} ends with / like a folder, but {source} is a file and so is its output; "
                         "give a file name")
    output_format(output, requested, FORMATS[0], source)


def check_folder_output_name(folder: Path, output: str | Path, kind: str) -> None:
    """A folder's output is a folder of the same kind: OUTPUT must not be named like a checkpoint file
    (`-o out.safetensors` would be a folder named `out.safetensors`)."""
    suffix = Path(str(output)).suffix.lower()
    if (suffix == ".safetensors" or suffix in PT_EXTENSIONS) and Path(str(output)).resolve() != folder.resolve():
        raise UsageError(f"{folder} is a {kind}, so its output is a folder of the same kind, but {output} is named "
                         f"like a checkpoint file; name the output folder without {suffix} (e.g. "
                         f"{Path(str(output)).with_suffix('')})")


def check_output(source: str | Path, output: str | Path, *, force: bool, in_place: bool) -> None:
    """Refuse, before any work, an OUTPUT that rnninit must not replace.

    A file output may replace a regular file or a symbolic link to one (the link itself is replaced, like
    `sed -i`) with `force`, or INPUT itself with `in_place`; never a folder, device, FIFO, socket, or a
    link to one or to nothing. A model folder's output may replace, with `force`, a folder that holds
    nothing but what the new folder will hold; never one that holds anything else, contains INPUT or lies
    inside it. INPUT's own folder is rewritten shard by shard with `in_place`."""
    if str(output) == STDIO:
        return
    out = Path(output)
    if str(source) != STDIO and Path(source).is_dir():
        _check_folder_output(Path(source), out, force=force, in_place=in_place)
    else:
        kind = output_kind(out)
        if kind == "a folder":
            raise OutputError(f"{out} is a folder; give a file name for the output")
        if kind not in ("absent", "a regular file"):
            raise OutputError(f"{out} is {kind}; rnninit replaces only regular files and symbolic links to them, "
                              "even with --force")
        same = kind != "absent" and str(source) != STDIO and Path(source).exists() and out.samefile(source)
        if same and not in_place:
            raise OutputError(f"{out} is the input file; pass --in-place to rewrite it")
        if kind != "absent" and not same and not force:
            raise OutputError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} does not exist; create the folder first")



def _check_folder_output(source: Path, out: Path, *, force: bool, in_place: bool) -> None:
    kind = output_kind(out)
    if kind == "absent":
        return
    if kind != "a folder" or out.is_symlink():
        what = "a symbolic link" if out.is_symlink() else kind
        raise OutputError(f"{out} is {what}; the output of a model folder is a folder (a new one, or one that "
                          "--force may replace)")
    here, there = source.resolve(), out.resolve()
    if there == here:
        if not in_place:
            raise OutputError(f"{out} is the input folder; pass --in-place to rewrite its shards")
        return
    if here.is_relative_to(there):
        raise OutputError(f"{out} contains the input folder {source}; rnninit never replaces a folder that holds "
                          "its input: choose another OUTPUT")
    if there.is_relative_to(here):
        raise OutputError(f"{out} is inside the input folder; choose a folder outside it")
    if not force:
        raise OutputError(f"{out} already exists; pass --force to replace it")
    expected = {relative: "a folder" if path.is_dir() else "a regular file"
                for path in source.rglob("*") for relative in [path.relative_to(source).as_posix()]}
    if (source / ".metadata").is_file():  # a torch.distributed.checkpoint folder: its outputs add rnninit.json
        expected[METADATA_RECORD] = "a regular file"
    refuse_foreign_entries(out, expected)



def output_kind(path: Path) -> str:
    """'absent', 'a regular file' (or a symbolic link to one), 'a folder', or what else is at `path`."""
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    except OSError as error:
        raise OutputError(f"cannot check {path}: {error.strerror or error}") from None
    if stat.S_ISLNK(status.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            return "a symbolic link that leads nowhere"
        return "a regular file" if stat.S_ISREG(target.st_mode) else f"a symbolic link to {_kind_name(target.st_mode)}"
    return _kind_name(status.st_mode)



def _kind_name(mode: int) -> str:
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")



def refuse_unreplaceable(out: Path) -> None:
    """Right before a rename onto OUTPUT: what is there now must still be replaceable (it may have
    changed since the checks before the work)."""
    kind = output_kind(out)
    if kind not in ("absent", "a regular file"):
        raise OutputError(f"{out} is now {kind}; rnninit replaces only regular files and symbolic links to them; "
                          "nothing was written")



def refuse_foreign_entries(out: Path, expected: dict[str, str]) -> None:
    """Refuse to replace the folder `out` if anything in it is not what the new model folder will hold:
    `expected` maps each relative path of the new folder to its kind. Symbolic links are not followed,
    and the walk stops at the first foreign entry."""
    for root, folders, files in os.walk(out):
        for name in sorted(folders) + sorted(files):
            path = Path(root, name)
            relative = path.relative_to(out).as_posix()
            kind = _kind_name(os.lstat(path).st_mode)
            if expected.get(relative) != kind:
                raise OutputError(f"{out} holds {relative!r}, which the new model folder would not contain; "
                                  "--force replaces a folder only when all it holds is what rnninit will write "
                                  "there (an earlier output). Remove it or choose another OUTPUT")



def refuse_foreign_objects(checkpoint: Any) -> None:
    """Objects of other classes are read as inert records: rnninit can keep their bytes in a patched copy of
    a zip archive, but cannot write them again (standard output, another format, a re-saved or legacy file)."""
    classes = getattr(checkpoint, "foreign_classes", [])
    if classes:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        what = "the TorchScript archive holds" if getattr(checkpoint, "torchscript", False) else "the checkpoint holds"
        if getattr(checkpoint, "legacy", False):  # never patched: there is no copy that keeps their bytes
            advice = ("It is in torch.save's legacy (non-zip) format, which rnninit only re-saves whole: re-save "
                      "it with torch.save's default (zip) format, whose patched copy (-o FILE.pt) keeps their bytes")
        else:
            advice = "Write a .pt file with -o: a patched copy keeps their bytes"
        raise OutputError(f"{what} objects of classes rnninit reads as inert records but never rebuilds ({shown}); "
                          "it cannot be written again to standard output, in another format, or re-saved "
                          f"(--drop-optimizer-state). {advice}")



def refuse_non_tensors(root: Any, tensors_only: bool) -> None:
    """Safetensors holds tensors only: refuse to silently drop other entries of a .pt, or the names of a
    container that the .pt holds under several paths (only the first path's names would be written)."""
    if root is None:
        return
    aliases: list[tuple[str, str]] = []
    non_tensor_paths = [path for path, value in walk(root, "", aliases) if not is_tensor(value)]
    if aliases:
        path, first = aliases[0]
        raise OutputError(f"the checkpoint holds one container under several paths ({path or '(top)'} is the same "
                          f"object as {first or '(top)'}); safetensors would keep only the first path's names. "
                          "Write .pt instead")
    if non_tensor_paths and not tensors_only:
        shown = ", ".join(non_tensor_paths[:5]) + (", ..." if len(non_tensor_paths) > 5 else "")
        raise naming_arguments(OutputError, f"the checkpoint holds non-tensor entries ({shown}) that safetensors "
                               "cannot store; write .pt, or pass {tensors_only} to keep only the tensors")
