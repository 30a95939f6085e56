"""Batch augmentation on the device (pipeline.augmentation): crops, flips and cutout, each a pure
function of (seed, epoch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as functional
from torch import Tensor

from pipeline.augmentation import (
    AugmentDraws,
    alternating_flips,
    augment_epoch,
    crop_and_flip,
    cutout,
    epoch_permutation,
    local_positions,
)
from pipeline.params import AugmentParams
from tests.conftest import random_images, random_split


def draws(count: int, augment: AugmentParams, seed: int = 0, epoch: int = 0) -> AugmentDraws:
    return AugmentDraws.draw(count, augment, seed, epoch)


def test_no_crop_and_no_flip_is_the_identity() -> None:
    augment = AugmentParams(crop_padding=0, flip=False, cutout=0)
    batch = random_images(8)
    assert torch.equal(crop_and_flip(batch, torch.arange(8), draws(8, augment), augment), batch)
    normalised = torch.randn(8, 3, 32, 32)
    assert torch.equal(cutout(normalised, draws(8, augment).cutout_centres, 0), normalised)


def test_crop_and_flip_match_reflect_padding_and_mirroring() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=0)
    batch = random_images(64)
    chosen = draws(64, augment)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    result = crop_and_flip(batch, order, chosen, augment)
    assert result.shape == batch.shape and result.dtype == torch.uint8
    assert result.is_contiguous(memory_format=torch.channels_last)
    padded = functional.pad(batch.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)
    for index in range(64):
        row, column = (chosen.shifts[index] + 4).tolist()
        expected = padded[order[index], :, row : row + 32, column : column + 32]
        if chosen.flips[index]:
            expected = expected.flip(-1)
        assert torch.equal(result[index], expected), index


def test_crop_and_flip_in_chunks_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.augmentation as augmentation

    augment = AugmentParams(crop_padding=4, flip=True, cutout=0)
    batch, chosen = random_images(50), draws(50, augment, seed=3)
    whole = crop_and_flip(batch, torch.arange(50), chosen, augment)
    monkeypatch.setattr(augmentation, "GATHER_CHUNK", 7)
    assert torch.equal(crop_and_flip(batch, torch.arange(50), chosen, augment), whole)


def test_cutout_zeroes_one_square_per_image() -> None:
    result = cutout(torch.ones(32, 3, 32, 32), torch.full((32, 2), 16), 6)  # centred: fully inside
    assert torch.equal((result == 0).sum(dim=(1, 2, 3)), torch.full((32,), 3 * 36))
    assert torch.all(result[:, :, 13:19, 13:19] == 0)


def test_cutout_keeps_the_channels_last_layout_the_model_gets_without_it() -> None:
    """With and without cutout the model sees the same layout, so one compiled graph serves both
    (masked_fill returned NCHW: a run with cutout compiled, and cached, a graph of its own)."""
    inputs = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    centres = torch.randint(0, 32, (8, 2))
    result = cutout(inputs, centres, 12)
    assert result.stride() == inputs.stride() == cutout(inputs, centres, 0).stride()
    rows, columns = torch.arange(32)[:, None], torch.arange(32)[None, :]
    for image, (row, column) in enumerate(centres.tolist()):
        inside = (rows >= row - 6) & (rows < row + 6) & (columns >= column - 6) & (columns < column + 6)
        assert torch.equal(result[image], torch.where(inside, 0.0, inputs[image]))


def test_draws_depend_only_on_seed_and_epoch() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=8)
    first, again, other = draws(16, augment, 3, 2), draws(16, augment, 3, 2), draws(16, augment, 3, 3)
    assert torch.equal(first.shifts, again.shifts) and torch.equal(first.cutout_centres, again.cutout_centres)
    assert not torch.equal(first.shifts, other.shifts)
    assert torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 0, 1))
    assert not torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 0, 2))
    assert sorted(epoch_permutation(100, 0, 1).tolist()) == list(range(100))


def test_draws_are_uniform_over_their_ranges() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=8)
    chosen = draws(90_000, augment, seed=5, epoch=7)
    for column in (chosen.shifts[:, 0], chosen.shifts[:, 1]):  # 9 values, 10,000 expected each
        counts = torch.bincount(column + 4, minlength=9)
        assert len(counts) == 9 and counts.min() > 9_500 and counts.max() < 10_500
    assert abs(chosen.flips.float().mean().item() - 0.5) < 0.01
    centres = torch.bincount(chosen.cutout_centres.flatten(), minlength=32)  # 5,625 expected each
    assert len(centres) == 32 and centres.min() > 5_200 and centres.max() < 6_100
    # rows and columns are drawn independently: their correlation is near zero
    shifts = chosen.shifts.float()
    assert abs(torch.corrcoef(shifts.T)[0, 1].item()) < 0.02


def test_an_epoch_is_a_pure_function_of_seed_and_epoch() -> None:
    augment = AugmentParams(crop_padding=4, flip=True, cutout=8)
    split = random_split(60)

    def epoch(seed: int, number: int) -> tuple[Tensor, Tensor, Tensor]:
        built = augment_epoch(
            split.images, split.labels, augment, seed=seed, epoch=number, steps=3, batch_size=20
        )
        return built.images, built.labels, built.cutout_centres

    assert all(torch.equal(a, b) for a, b in zip(epoch(1, 2), epoch(1, 2), strict=True))
    assert not torch.equal(epoch(1, 2)[0], epoch(1, 3)[0])
    assert not torch.equal(epoch(1, 2)[0], epoch(2, 2)[0])
    images_of_epoch, labels_of_epoch, _ = epoch(1, 2)
    assert images_of_epoch.shape == (60, 3, 32, 32) and sorted(labels_of_epoch.tolist()) == sorted(
        split.labels.tolist()
    )


@pytest.mark.parametrize("flip", [True, "alternate"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_every_process_takes_its_slice_of_the_same_global_batches(world_size: int, flip: bool | str) -> None:
    augment = AugmentParams(crop_padding=4, flip=flip, cutout=8)
    split = random_split(50)
    options = {"seed": 4, "epoch": 1, "steps": 2, "batch_size": 24}  # 2 of the 50 images are dropped
    whole = augment_epoch(split.images, split.labels, augment, **options)
    parts = [
        augment_epoch(split.images, split.labels, augment, rank=rank, world_size=world_size, **options)
        for rank in range(world_size)
    ]
    for step in range(2):
        expected = whole.batch(step)
        for index, tensor in enumerate(expected):
            joined = torch.cat([part.batch(step)[index] for part in parts])
            assert torch.equal(joined, tensor), (step, index)
    assert local_positions(2, 24, 1, world_size)[0].item() == 24 // world_size


def test_alternating_flips_mirror_each_image_in_every_other_epoch() -> None:
    first, second, third = (alternating_flips(20_000, seed=3, epoch=epoch) for epoch in range(3))
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert abs(first.float().mean().item() - 0.5) < 0.015  # each image's first flip is a fair coin
    assert not torch.equal(alternating_flips(20_000, seed=4, epoch=0), first)
    assert torch.equal(alternating_flips(20_000, seed=3, epoch=5), second)  # a pure function of (seed, epoch)


def test_an_alternate_flip_epoch_shows_each_image_the_other_way_round_from_the_last() -> None:
    augment = AugmentParams(crop_padding=0, flip="alternate", cutout=0)  # only the flip changes pixels
    split = random_split(40)

    def mirrored_by_image(epoch: int) -> dict[int, bool]:
        built = augment_epoch(
            split.images, split.labels, augment, seed=2, epoch=epoch, steps=4, batch_size=10
        )
        order = epoch_permutation(40, 2, epoch)
        result = {}
        for position, index in enumerate(order.tolist()):
            shown = built.images[position]
            assert torch.equal(shown, split.images[index]) or torch.equal(shown, split.images[index].flip(-1))
            result[index] = not torch.equal(shown, split.images[index])
        return result

    even, odd = mirrored_by_image(0), mirrored_by_image(1)
    assert all(odd[index] != even[index] for index in range(40))
    assert 0 < sum(even.values()) < 40
    assert mirrored_by_image(2) == even
