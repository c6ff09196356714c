"""Checkpoints: safetensors for tensors, JSON for everything else, nothing pickled.

A checkpoint is one ``.safetensors`` file. Its tensors are stored by name, and
its JSON metadata (model config, vocabulary, optimizer scalars, RNG state,
counters) sits in the safetensors header under ``__metadata__``, so that one
atomic rename replaces both together. The header is itself JSON, and loading
parses it and copies raw bytes. No code runs, whatever the file holds.

Writes are atomic: the file is written to a temporary name in the same folder,
flushed and fsynced, renamed over the target with ``os.replace``, and then the
folder is fsynced. A kill at any moment leaves either the old checkpoint or the
new one, never a mix. A write that fails (a full disk, a folder without write
permission) raises :class:`WriteError`, naming the file, and leaves the old
file as it was.

Integrity: the metadata records a SHA-256 over every tensor's name, dtype,
shape and bytes. Loading recomputes it, so a truncated or corrupted file fails
with :class:`CheckpointError` and is never half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

FORMAT = "rnnkit-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not match what it is loaded into."""


class WriteError(OSError):
    """A file that could not be written (disk full, no permission); the file there before, if any, is unchanged."""

    def __str__(self) -> str:
        return self.strerror  # the message names the file; "[Errno 28]" would only repeat the reason


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Atomically write ``tensors`` and JSON-serialisable ``metadata`` to ``path``."""
    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = {"format": FORMAT, "version": FORMAT_VERSION, "sha256": _digest(tensors), "metadata": metadata}
    try:
        encoded = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"metadata: expected JSON-serialisable values (finite numbers, str, lists, dicts), got {error}") from None
    payload = save_safetensors_bytes(tensors, metadata={"rnnkit": encoded})
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, payload)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; return ``(tensors, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: expected an existing file, got {str(path)!r}")
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, KeyError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected a safetensors file written by rnnkit, got an unreadable file "
            f"({type(error).__name__}: {error}); it may be truncated, corrupted or of another format"
        ) from None
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected format {FORMAT} v{FORMAT_VERSION}, got {header.get('format')} v{header.get('version')}")
    if _digest(tensors) != header.get("sha256"):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected tensor data matching its SHA-256, got different bytes; the file is corrupted")
    return tensors, header["metadata"]


def read_metadata(path: str | os.PathLike) -> dict:
    """A checkpoint's metadata from its header alone (no tensor is read or checked); :func:`load_checkpoint`
    checks the whole file."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if not 0 < length <= 100 << 20:
                raise ValueError(f"a header length of {length} bytes")
            return _read_header(length.to_bytes(8, "little") + file.read(length))["metadata"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a safetensors file written by rnnkit, got an unreadable header "
                              f"({type(error).__name__}: {error}); it may be truncated, corrupted or of another format") from None


def check_state_dict(expected: dict[str, torch.Tensor], stored: dict[str, torch.Tensor], what: str) -> None:
    """Require ``stored`` to have exactly the names and shapes of ``expected``, naming any difference."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{what}: expected the tensors of the configured model, got missing {missing[:5]} and unexpected {unexpected[:5]}")
    for name, tensor in expected.items():
        if tuple(stored[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{what}: expected {name} of shape {tuple(tensor.shape)} from the config, got {tuple(stored[name].shape)}")


def _read_header(data: bytes) -> dict:
    header_length = int.from_bytes(data[:8], "little")
    raw = json.loads(data[8 : 8 + header_length])
    return json.loads(raw["__metadata__"]["rnnkit"])


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        sha.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return sha.hexdigest()


def _atomic_write(path: Path, payload: bytes) -> None:
    try:
        _replace_with(path, payload)
    except OSError as error:
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        failure = WriteError(error.errno, f"{path}: expected to write {len(payload):,} bytes, got {error.strerror or error}; {kept}")
        raise failure from error


def _replace_with(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp's 0600 would make every run file private to its writer
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _mode_for(path: Path) -> int:
    """The mode ``open(path, "w")`` leaves: the file's own if it exists, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux reports it; os.umask can only read it by setting it, for a moment, in every thread
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Atomically replace a file with ``payload``: a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, payload)


def save_figure(fig, path: str | os.PathLike, **savefig_options) -> None:
    """A matplotlib figure written atomically, in the format its file name says (``.png`` by default)."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig_options)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace a small text file (config, report, CSV snapshot)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, text.encode())
