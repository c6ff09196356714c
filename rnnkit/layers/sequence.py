"""Input and output formats of a recurrent layer.

torch.nn's layers accept four input layouts: (L, N, H_in), (N, L, H_in) with
``batch_first``, unbatched (L, H_in), and a :class:`PackedSequence`; rnnkit adds
``lengths=``. :func:`to_time_major` turns all of them into one internal form,
(L, N, H_in) plus an optional (L, N) validity mask, and :class:`Layout`
remembers how to turn outputs back into the caller's form (states are never
batch-first; the layer joins them).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit import errors


@dataclass(frozen=True)
class Layout:
    """How the caller's input was laid out, so outputs can be laid out the same way."""

    unbatched: bool
    batch_first: bool
    packed: PackedSequence | None
    lengths: Tensor | None  # CPU int64, (N,); set for packed input and for lengths=

    def output(self, y: Tensor) -> Tensor | PackedSequence:
        """(L, N, H_out) -> the caller's layout."""
        if self.packed is not None:
            return _repack(y, self.packed, self.lengths)
        if self.unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y


def to_time_major(input: Tensor | PackedSequence, batch_first: bool, lengths) -> tuple[Tensor, Tensor | None, Layout]:
    """Return ``(x, valid, layout)``: x is (L, N, H_in), valid an (L, N) bool mask or None."""
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise errors.fail("lengths", "None when input is a PackedSequence (it carries its own lengths)", "a value")
        x, packed_lengths = pad_packed_sequence(input)
        layout = Layout(unbatched=False, batch_first=batch_first, packed=input, lengths=packed_lengths)
        return x, _valid_mask(packed_lengths, x.shape[0], x.device), layout
    if not isinstance(input, Tensor):
        raise errors.fail("input", "a Tensor or a PackedSequence", type(input).__name__)
    if input.dim() not in (2, 3):
        raise errors.fail(
            "input",
            "a 3-D tensor (seq_len, batch, features), or 2-D (seq_len, features) when unbatched",
            f"{input.dim()}-D shape {tuple(input.shape)}",
        )
    unbatched = input.dim() == 2
    if unbatched:
        x = input.unsqueeze(1)
    else:
        x = input.transpose(0, 1) if batch_first else input
    if x.shape[0] == 0:
        raise errors.fail("input", "a sequence length of at least 1", f"0 (shape {tuple(input.shape)})")
    valid = None
    lengths_cpu = None
    if lengths is not None:
        lengths_cpu = _check_lengths(lengths, batch=x.shape[1], seq_len=x.shape[0])
        valid = _valid_mask(lengths_cpu, x.shape[0], x.device)
    layout = Layout(unbatched=unbatched, batch_first=batch_first, packed=None, lengths=lengths_cpu)
    return x, valid, layout


def _check_lengths(lengths, batch: int, seq_len: int) -> Tensor:
    if isinstance(lengths, Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise errors.fail("lengths", "an integer tensor", f"dtype {lengths.dtype}")
        if lengths.dim() != 1:
            raise errors.fail("lengths", "a 1-D tensor of one length per sequence", f"shape {tuple(lengths.shape)}")
        values = lengths.detach().to("cpu", torch.int64)
    elif isinstance(lengths, (list, tuple)):
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in lengths):
            raise errors.fail("lengths", "a list of ints", repr(lengths))
        values = torch.tensor([int(v) for v in lengths], dtype=torch.int64)
    else:
        raise errors.fail("lengths", "a list of ints or a 1-D integer tensor", type(lengths).__name__)
    if values.numel() != batch:
        raise errors.fail("lengths", f"{batch} values, one per sequence in the batch", f"{values.numel()} values")
    if torch.compiler.is_compiling():  # the values are data: checked when the compiled program runs, not traced
        torch._assert_async(((values >= 1) & (values <= seq_len)).all(), "lengths: expected values in [1, the sequence length]")
    elif values.numel():
        shortest, longest = int(values.min()), int(values.max())
        if shortest <= 0:
            raise errors.fail("lengths", "values >= 1", f"{shortest} at batch index {int(values.argmin())}")
        if longest > seq_len:
            raise errors.fail("lengths", f"values <= the sequence length {seq_len}", f"{longest} at batch index {int(values.argmax())}")
    return values


def _valid_mask(lengths: Tensor, seq_len: int, device: torch.device) -> Tensor | None:
    """(L, N) mask, True where t < lengths[n]; None when no sequence is padded.

    A trace or compiled program serves any lengths, so there the mask is always made.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        pass
    elif lengths.numel() == 0 or int(lengths.min()) == seq_len:
        return None
    steps = torch.arange(seq_len).unsqueeze(1)
    return (steps < lengths.unsqueeze(0)).to(device)


def _repack(y: Tensor, like: PackedSequence, lengths: Tensor) -> PackedSequence:
    """Pack a padded (L, N, H) output with the same batch order as the input ``like``."""
    order = like.sorted_indices
    sorted_y = y if order is None else y.index_select(1, order)
    sorted_lengths = lengths if order is None else lengths.index_select(0, order.cpu())
    data = pack_padded_sequence(sorted_y, sorted_lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
