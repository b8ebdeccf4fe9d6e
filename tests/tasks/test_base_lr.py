"""The linear lr scaling rule of `VSSLTask`: the global batch comes from the trainer's train
dataloader, whichever way the run was given its data."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from training_helpers import quiet_trainer

from vssl.tasks import Supervised

#: Eight labelled uint8 clips (T, C, H, W), as a dataset yields them.
ITEMS = [
    {
        "video": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8),
        "label": torch.tensor(i % 3),
    }
    for i in range(8)
]


def tiny(**kwargs) -> Supervised:
    return Supervised(
        num_classes=3, backbone="tiny3d", backbone_kwargs={"width": 2}, lr=0.1, **kwargs
    )


def fit_lr(task: Supervised, *, datamodule=None, loader=None, **trainer_kwargs) -> float:
    """The lr the optimiser was built with (before the schedule) after one short fit."""
    trainer = quiet_trainer(**{"max_steps": 1, **trainer_kwargs})
    trainer.fit(task, train_dataloaders=loader, datamodule=datamodule)
    return trainer.optimizers[0].param_groups[0]["initial_lr"]


def test_lr_scales_with_the_batch_of_a_datamodule():
    # from_datasets' datamodule has no batch_size attribute: the task reads its dataloader
    class Items(Dataset):
        def __len__(self) -> int:
            return len(ITEMS)

        def __getitem__(self, i: int) -> dict:
            return ITEMS[i]

    datamodule = L.LightningDataModule.from_datasets(Items(), batch_size=4)
    assert not hasattr(datamodule, "batch_size")
    assert fit_lr(tiny(reference_batch_size=16), datamodule=datamodule) == pytest.approx(0.025)


def test_lr_scales_with_the_batch_of_plain_dataloaders():
    # max_steps without max_epochs: Lightning has not loaded the data when the optimiser is built
    task = tiny(reference_batch_size=16)
    assert fit_lr(task, loader=DataLoader(ITEMS, batch_size=8)) == pytest.approx(0.05)
    assert task.global_batch_size() == 8
    sampled = DataLoader(ITEMS, batch_sampler=BatchSampler(SequentialSampler(ITEMS), 2, False))
    assert fit_lr(tiny(reference_batch_size=16), loader=sampled, max_epochs=1) == pytest.approx(
        0.0125
    )


def test_lr_scales_with_the_accumulated_batches():
    loader = DataLoader(ITEMS, batch_size=2)
    task = tiny(reference_batch_size=16)
    assert fit_lr(task, loader=loader, max_epochs=1, accumulate_grad_batches=4) == pytest.approx(
        0.05
    )
    assert task.global_batch_size() == 8


def test_global_batch_counts_every_process():
    task = tiny(reference_batch_size=64)
    task.trainer = SimpleNamespace(
        train_dataloader=DataLoader(ITEMS, batch_size=32),
        state=SimpleNamespace(fn="fit"),
        world_size=4,
        accumulate_grad_batches=2,
    )
    assert task.global_batch_size() == 256
    assert task.effective_lr() == pytest.approx(0.4)


def test_without_a_reference_batch_the_lr_is_as_configured():
    assert tiny().effective_lr() == 0.1  # no trainer needed
    assert fit_lr(tiny(), loader=DataLoader(ITEMS, batch_size=3)) == 0.1


def test_an_unknown_batch_size_is_an_error_naming_the_fix():
    with pytest.raises(RuntimeError, match="known once a trainer fits this task"):
        tiny(reference_batch_size=16).effective_lr()
    unbatched = DataLoader(ITEMS, batch_size=None)  # the dataset's items are the batches
    with pytest.raises(
        RuntimeError,
        match=r"reference_batch_size=16\) needs the per-process batch size, and the trainer has "
        r"a DataLoader without a batch_size .* or set reference_batch_size: null",
    ):
        fit_lr(tiny(reference_batch_size=16), loader=unbatched)
