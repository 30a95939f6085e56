"""Training augmentation for a whole epoch at once: random crops, flips and cutout, as a pure
function of (seed, epoch).

Once per epoch the split is permuted and every image gets its crop offset, flip and cutout
position, drawn on the CPU from a generator seeded by (seed, epoch) alone, so the draws are the
same on every device and for any number of processes. With `flip: alternate` an image's flip is
instead its own random flip of the run (seeded by the seed alone) in even epochs and the
opposite in odd ones. Crops and flips are then applied to the whole epoch in a few large gathers
on the device, and each training step takes a plain slice: the step itself has fixed shapes and
no randomness (what a CUDA graph needs). Cutout needs the normalised image (the square is set to
the mean, 0), so the step applies it from the drawn centres. A run resumed mid-epoch rebuilds
the same epoch and continues with the same batches.

Memory: one augmented copy of the split (150 MB of uint8 for 50,000 images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.params import AugmentParams

GATHER_CHUNK = 4096  # images per gather: bounds the index tensors to a few tens of MB
IMAGE_SIZE = 32


def derived_seed(*entropy: int) -> int:
    """A 64-bit seed mixed from several integers by NumPy's SeedSequence (no two tuples collide)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


def epoch_permutation(count: int, seed: int, epoch: int) -> Tensor:
    """The order of the training images in one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, 0, 0))
    return torch.randperm(count, generator=generator)


def alternating_flips(count: int, seed: int, epoch: int) -> Tensor:
    """bool [count], image by image (split order): flip in epoch `epoch` under `flip: alternate`.

    Each image has one random flip for the run, a function of the seed alone; even epochs use
    it and odd ones its opposite, so every image is seen both ways in any two consecutive epochs.
    """
    generator = torch.Generator().manual_seed(derived_seed(seed, 0, 0, 2))
    first = torch.randint(0, 2, (count,), generator=generator).bool()
    return first ^ bool(epoch % 2)


@dataclass(frozen=True)
class AugmentDraws:
    """Random choices for each image of an epoch, in the epoch's order (CPU tensors)."""

    shifts: Tensor  # int64 [N, 2]: crop offset (rows, columns) in -padding..padding
    flips: Tensor  # bool [N]
    cutout_centres: Tensor  # int64 [N, 2]: centre (row, column) of the cutout square, 0..31

    @classmethod
    def draw(cls, count: int, params: AugmentParams, seed: int, epoch: int) -> AugmentDraws:
        """The draws of one epoch: a pure function of (seed, epoch), drawn on the CPU."""
        generator = torch.Generator().manual_seed(derived_seed(seed, epoch, 0, 1))
        padding = params.crop_padding
        shifts = torch.randint(-padding, padding + 1, (count, 2), generator=generator)
        flips = torch.randint(0, 2, (count,), generator=generator).bool()
        centres = torch.randint(0, IMAGE_SIZE, (count, 2), generator=generator)
        return cls(shifts, flips, centres)

    def __getitem__(self, rows: Tensor | slice) -> AugmentDraws:
        return AugmentDraws(self.shifts[rows], self.flips[rows], self.cutout_centres[rows])


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map indices in [-size+1, 2 size - 2] onto [0, size) as reflect padding does (no edge repeat)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_and_flip(images: Tensor, indices: Tensor, draws: AugmentDraws, params: AugmentParams) -> Tensor:
    """images[indices], each cropped from its reflect-padded self and maybe mirrored, in uint8.

    `images` is uint8 [N, 3, 32, 32] on the device, `indices` int64 [M] and `draws` (M rows) on
    the same device. Returns uint8 [M, 3, 32, 32] in channels_last layout, the model's input layout.
    """
    output = torch.empty(
        (len(indices), *images.shape[1:]), dtype=images.dtype, device=images.device
    ).contiguous(memory_format=torch.channels_last)
    positions = torch.arange(IMAGE_SIZE, device=images.device)
    for start in range(0, len(indices), GATHER_CHUNK):
        rows_of = slice(start, start + GATHER_CHUNK)
        chosen, shifts, flips = indices[rows_of], draws.shifts[rows_of], draws.flips[rows_of]
        rows = _reflect(shifts[:, :1] + positions, IMAGE_SIZE)  # [b, 32]
        columns = _reflect(shifts[:, 1:] + positions, IMAGE_SIZE)  # [b, 32]
        if params.flip:
            columns = torch.where(flips[:, None], columns.flip(1), columns)
        # Advanced indices around a slice put their dimensions first: [b, 32, 32, 3], which is
        # exactly the channels_last memory of [b, 3, 32, 32].
        pixels = images[chosen[:, None, None], :, rows[:, :, None], columns[:, None, :]]
        output[rows_of] = pixels.permute(0, 3, 1, 2)
    return output


def cutout(inputs: Tensor, centres: Tensor, size: int) -> Tensor:
    """Zero a size x size square per image (the mean, after normalisation); it may cross the border."""
    if size == 0:
        return inputs
    positions = torch.arange(inputs.shape[-1], device=inputs.device)
    start = centres - size // 2  # [B, 2]
    inside_rows = (positions >= start[:, :1]) & (positions < start[:, :1] + size)  # [B, 32]
    inside_columns = (positions >= start[:, 1:]) & (positions < start[:, 1:] + size)  # [B, 32]
    mask = inside_rows[:, None, :, None] & inside_columns[:, None, None, :]  # [B, 1, 32, 32]
    # `where` keeps the inputs' channels_last layout; masked_fill would return them contiguous
    # (NCHW), so the model compiled for a run with cutout would differ from one without
    return torch.where(mask, 0.0, inputs)


@dataclass(frozen=True)
class EpochBatches:
    """One epoch of this process's training batches, augmented, one after another."""

    images: Tensor  # uint8 [steps * batch_size, 3, 32, 32], cropped and flipped, channels_last
    labels: Tensor  # int64 [steps * batch_size]
    cutout_centres: Tensor  # int64 [steps * batch_size, 2]
    batch_size: int  # this process's share of every global batch

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """Images, cutout centres and labels of step `step`: plain slices, no copy."""
        rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
        return self.images[rows], self.cutout_centres[rows], self.labels[rows]


def local_positions(steps: int, batch_size: int, rank: int, world_size: int) -> Tensor:
    """Positions in the epoch's order that this process trains on, step after step.

    Every global batch of `batch_size` images is split into `world_size` equal slices and
    process `rank` takes slice `rank`, so the global batches do not depend on the process count.
    """
    local = batch_size // world_size
    grid = torch.arange(steps * batch_size).view(steps, batch_size)
    return grid[:, rank * local : (rank + 1) * local].reshape(-1)


def augment_epoch(
    images: Tensor,
    labels: Tensor,
    params: AugmentParams,
    *,
    seed: int,
    epoch: int,
    steps: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> EpochBatches:
    """This process's batches of epoch `epoch`: a pure function of (seed, epoch) and the split.

    `batch_size` is the global batch; the last partial batch of the permutation is dropped.
    """
    order = epoch_permutation(len(labels), seed, epoch)[: steps * batch_size]
    draws = AugmentDraws.draw(len(order), params, seed, epoch)
    if params.flip == "alternate":
        flips = alternating_flips(len(labels), seed, epoch)[order]
        draws = AugmentDraws(draws.shifts, flips, draws.cutout_centres)
    positions = local_positions(steps, batch_size, rank, world_size)
    device = images.device
    indices = order[positions].to(device)
    mine = draws[positions]
    mine = AugmentDraws(mine.shifts.to(device), mine.flips.to(device), mine.cutout_centres.to(device))
    if params.crop_padding == 0 and not params.flip:
        augmented = images[indices].contiguous(memory_format=torch.channels_last)
    else:
        augmented = crop_and_flip(images, indices, mine, params)
    return EpochBatches(
        images=augmented,
        labels=labels[indices],
        cutout_centres=mine.cutout_centres,
        batch_size=batch_size // world_size,
    )
