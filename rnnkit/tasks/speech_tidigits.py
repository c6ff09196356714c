"""Real speech for :mod:`rnnkit.tasks.speech`: the TIDIGITS utterances of Debian's pocketsphinx-testdata, as Sphinx feature files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from rnnkit.tasks import common
from rnnkit.tasks.common import DataError
from rnnkit.tasks.speech_synthesis import WORDS, DataConfig

TIDIGITS_PATH = Path("usr/share/pocketsphinx/test/data/tidigits")
RAW_RECORDING, RAW_WORDS = "dhd.2934z.raw", "two nine three four zero"  # 16 kHz, 16-bit little-endian, no header


def find_tidigits(data: DataConfig) -> Path | None:
    if data.tidigits_dir is not None:
        return Path(data.tidigits_dir)
    for folder in (common.data_dir() / "pocketsphinx-testdata" / TIDIGITS_PATH, Path("/") / TIDIGITS_PATH):
        if (folder / "tidigits.lsn").is_file():
            return folder
    return None


def read_mfc(path: Path, dim: int = 13) -> torch.Tensor:
    """A Sphinx feature file: an int32 count of floats, then the float32 values, frame after frame.

    Sphinx writes them big-endian and reads either order, taking the one whose
    count matches the file's size; so does this.
    """
    raw = common.read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: expected a Sphinx feature file (an int32 count, then float32 values), found {len(raw)} bytes")
    floats = (len(raw) - 4) / 4
    counts = {order: int.from_bytes(raw[:4], "big" if order == ">" else "little", signed=True) for order in "><"}
    order = next((o for o, count in counts.items() if count == floats), None)
    if order is None:
        raise DataError(f"{path}: expected the header's count of floats to match the {floats:g} floats after it, "
                        f"found {counts['>']} (big-endian); a truncated or foreign file?")  # fmt: skip
    if counts[order] == 0 or counts[order] % dim:
        raise DataError(f"{path}: expected a positive multiple of {dim} floats ({dim} cepstra a frame), found {counts[order]}")
    values = torch.from_numpy(np.frombuffer(raw[4:], dtype=order + "f4").astype(np.float32).reshape(-1, dim))
    bad = (~torch.isfinite(values)).any(-1).nonzero()
    if len(bad):
        raise DataError(f"{path}: expected finite cepstra, found NaN or infinity in frame {bad[0].item()}")
    return values


def read_transcripts(path: Path) -> dict[str, list[str]]:
    """``tidigits.lsn``: lines like ``two nine three four zero (man.ah.2934za)``."""
    text = common.decode_text(common.read_bytes(path), str(path), "transcripts, one 'words (utterance id)' a line")
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(.*?)\s*\(([^()\s]+)\)\s*", line)
        if not match:
            raise DataError(f"{path}, line {number}: expected 'words (utterance id)', found {line.strip()!r}")
        words = match.group(1).lower().split()
        unknown = [w for w in words if w not in WORDS]
        if unknown or not words:
            raise DataError(f"{path}, line {number}: expected digit words from {list(WORDS)}, found {match.group(1)!r}")
        out[match.group(2)] = words
    return out


def load_tidigits(folder: Path) -> list[tuple[str, list[str], torch.Tensor]]:
    """``(utterance id, words, cepstra (T, 13))`` for each transcript; a feature file without one, or the reverse, is an error."""
    transcripts = read_transcripts(folder / "tidigits.lsn")
    files = {p.name[: -len(".mfc")] for p in folder.glob("*.mfc")}
    untranscribed = sorted(files - set(transcripts))
    if untranscribed:
        raise DataError(f"{folder / 'tidigits.lsn'}: expected a transcript for every .mfc file, found none for {untranscribed[:3]}")
    return [(name, words, read_mfc(folder / f"{name}.mfc")) for name, words in transcripts.items()]
