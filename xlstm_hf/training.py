"""Data for training and fine-tuning: local text or JSON-lines files, packed blocks, and SFT batches with right
padding whose padded positions are masked exactly (attention mask and labels -100)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Collection, Iterable
from pathlib import Path

import torch


def read_texts(paths: Iterable[str | Path], field: str = "text") -> list[str]:
    """Texts from `.jsonl` files (one JSON object a line, `field` holding the text) or plain text files (whole).
    Lines end at LF (or CRLF) only: JSON holds U+2028, U+2029 and U+0085 unescaped, and `str.splitlines` ends lines
    there too. A line of JSON that is no object (a number, a string, a list) is a TypeError naming it."""
    texts = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        if path.suffix == ".jsonl":
            for number, line in enumerate(path.read_bytes().decode("utf-8").split("\n"), 1):
                if line.strip():
                    record = json.loads(line.removesuffix("\r"))
                    if not isinstance(record, dict):
                        raise TypeError(f"{path}:{number} is not a JSON object: {line[:80]!r}")
                    if field not in record:
                        raise KeyError(f"{path}:{number} has no field {field!r} (fields: {sorted(record)})")
                    if not isinstance(record[field], str):
                        raise ValueError(f"line {number}: {field!r} holds {type(record[field]).__name__}, not text")
                    texts.append(record[field])
        else:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    if not texts:
        raise ValueError("the data files hold no text")
    return texts


class PackedBlocks(torch.utils.data.Dataset):
    """All texts tokenized, joined with EOS and cut into blocks of `block_size` tokens (language-model training)."""

    def __init__(self, texts: list[str], tokenizer, block_size: int):
        ids: list[int] = []
        for text in texts:
            ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) < block_size:
            raise ValueError(f"{len(ids)} tokens: too few for one block of {block_size}")
        self.blocks = torch.tensor(ids[: len(ids) // block_size * block_size]).view(-1, block_size)
        self.largest_id = int(self.blocks.max())  # to check against the model's vocabulary

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.blocks[index], "labels": self.blocks[index]}


class SFTExamples(torch.utils.data.Dataset):
    """One example per text (supervised fine-tuning): its tokens (with the tokenizer's special tokens, e.g. BOS), then
    EOS unless they end with it, so that a tuned model learns to stop; cut to `max_length` tokens. An example cut
    (`truncated` counts them) ends without EOS: its text did not end there. Examples of fewer than two tokens predict
    nothing: they are left out (`skipped` counts them), and a ValueError says when no example is left."""

    def __init__(self, texts: list[str], tokenizer, max_length: int):
        eos = tokenizer.eos_token_id
        # One token beyond max_length tells a text that is cut from one that fits.
        encoded = [tokenizer(text, truncation=True, max_length=max_length + 1)["input_ids"] for text in texts]
        ended = [ids if ids[-1:] == [eos] else ids + [eos] for ids in encoded]
        self.truncated = sum(len(ids) > max_length for ids in ended)
        self.examples = [ids[:max_length] for ids in ended if len(ids) >= 2]
        self.skipped = len(encoded) - len(self.examples)
        if not self.examples:
            raise ValueError(f"none of its {len(encoded)} texts makes an example of two tokens or more (EOS "
                             f"included): nothing to learn")
        self.largest_id = max(max(ids) for ids in self.examples)  # to check against the model's vocabulary

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.examples[index]}


def right_padded_batch(examples: list[dict], pad_token_id: int) -> dict:
    """Collate variable-length examples: right padding, attention mask 0 there, labels -100 there. An example's own
    `labels` (e.g. a prompt masked with -100) are kept; without them, its input_ids are its labels."""
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), length, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
        input_ids[row, : len(ids)], attention_mask[row, : len(ids)] = ids, 1
        labels[row, : len(ids)] = torch.as_tensor(example.get("labels", ids), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@contextlib.contextmanager
def use_cache_kept(model: torch.nn.Module):
    """Around making and running a `Trainer`, which sets `config.use_cache` to its arguments' (False by default): the
    model saved afterwards is for inference, and `model(ids)` of a reloaded one would otherwise return no cache."""
    use_cache = model.config.use_cache
    try:
        yield
    finally:
        model.config.use_cache = use_cache


def write_atomically(path: str | Path, text: str) -> Path:
    """`text` into `path` through a temporary sibling and a rename: a reader sees the old file or the new one, never
    half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# Weight files of a transformers save (single, sharded, index; each also as a variant such as model.fp16.safetensors)
# and of a PEFT adapter save, which a new save of the same kind replaces rather than adds to.
WEIGHT_FILE = re.compile(r"(model|pytorch_model)(\.\w+)?(-\d+-of-\d+)?\.(safetensors|bin)(\.index(\.\w+)?\.json)?")
ADAPTER_FILE = re.compile(r"adapter_model\.(safetensors|bin)|adapter_config\.json")


def _stale(name: str, written: list[str]) -> bool:
    """Whether an old folder's entry `name` belongs to the weights that the new save (`written`) replaces: a model's
    weights replace the old model's and any adapters (which from_pretrained would apply on top of them); adapters
    replace old adapters only, so a base model's folder keeps its weights."""
    model = any(WEIGHT_FILE.fullmatch(new) for new in written)
    adapters = any(ADAPTER_FILE.fullmatch(new) for new in written)
    if WEIGHT_FILE.fullmatch(name):
        return model
    return bool(ADAPTER_FILE.fullmatch(name)) and (model or adapters)


def save_atomically(output_dir: str | Path, *savables, replaces: Collection[str] = ()) -> Path:
    """Save every object (`save_pretrained`, or a function of the folder) into a temporary sibling folder, then put
    it in `output_dir`'s place, so that a failure never leaves a half-written folder. An existing `output_dir` is
    updated as `save_pretrained` would update it: the new files replace the old, the old folder's other entries
    (tokenizer, README, `.git`, ...) are kept, except the weights that the new ones replace (`_stale`) and the
    entries named in `replaces`, which the new save replaces even where it does not write them (a merged model made
    from older adapters, say). On Linux the new folder takes the old one's place in one step, the kept entries
    hard-linked into it, so that a reader always finds the old folder or the new one, whole; elsewhere the old folder
    is renamed away first. A folder that holds this process's working folder (`--output-dir .`) is updated entry by
    entry instead: swapped, it would leave the process, and a shell it was started from, in a deleted folder. A
    symlink is followed: the folder it points to is the one updated."""
    output_dir = Path(output_dir).resolve()  # "." has no name to build the siblings from; a link, its target
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file, not a folder to save into")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # not tempfile.mkdtemp: that folder would stay private (0700) once renamed into place
    try:
        for obj in savables:  # objects with save_pretrained, or functions of the folder
            obj.save_pretrained(tmp) if hasattr(obj, "save_pretrained") else obj(tmp)
        if not output_dir.exists():
            tmp.rename(output_dir)
            return output_dir
        new = list(tmp.iterdir())
        written = [entry.name for entry in new]
        old_entries = list(output_dir.iterdir())
        dropped = [entry for entry in old_entries
                   if entry.name in written or _stale(entry.name, written) or entry.name in replaces]
        kept = [entry for entry in old_entries if entry not in dropped]
        # Each way leaves what is to be deleted at `tmp`.
        if _holds_working_folder(output_dir):
            aside = tmp / f".replaced-{uuid.uuid4().hex[:8]}"
            aside.mkdir()
            _move_all([(entry, aside / entry.name) for entry in dropped] +
                      [(entry, output_dir / entry.name) for entry in new])
        elif not (_linked_into(tmp, kept) and _exchange(tmp, output_dir)):
            _remove_from(tmp, [entry.name for entry in kept])  # the links made, if any
            old = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
            _move_all([(entry, tmp / entry.name) for entry in kept] + [(output_dir, old), (tmp, output_dir),
                                                                        (old, tmp)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


def _move_all(moves: list[tuple[Path, Path]]) -> None:
    """Rename each source to its target, in order; where one fails, rename those done back, and raise."""
    done = []
    try:
        for source, target in moves:
            source.rename(target)
            done.append((source, target))
    except BaseException:
        for source, target in reversed(done):
            target.rename(source)
        raise


def _holds_working_folder(folder: Path) -> bool:
    """Whether this process's working folder is `folder` or inside it."""
    try:
        cwd = Path.cwd().resolve()
    except FileNotFoundError:  # already deleted
        return False
    return cwd == folder or folder in cwd.parents


def _linked_into(folder: Path, entries: list[Path]) -> bool:
    """Hard links of `entries` (a folder as a tree of links) in `folder`, the entries left in place. False where the
    file system refuses (the links made until then stay, for the caller to remove)."""
    try:
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, folder / entry.name, symlinks=True, copy_function=os.link)
            else:
                os.link(entry, folder / entry.name, follow_symlinks=False)
    except OSError:
        return False
    return True


def _remove_from(folder: Path, names: list[str]) -> None:
    """Delete the entries of `folder` with these names, where they exist."""
    for path in (folder / name for name in names):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


@functools.cache
def _renameat2():
    """Linux's renameat2 from the C library, or None (another system, or a C library without it)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (renameat2 with RENAME_EXCHANGE). False where the system or the file system can't."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h>, <linux/fs.h>
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(a), None, str(b))
