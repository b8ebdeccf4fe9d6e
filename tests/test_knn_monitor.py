import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from vssl.callbacks import KNNMonitor
from vssl.data import VideoDataModule
from vssl.data.datamodule import default_clip_sampler, default_clip_transform
from vssl.eval import knn_accuracy
from vssl.tasks import Supervised


def _fit(root, cache, callbacks, epochs=2):
    seed_everything(0)
    dm = VideoDataModule(
        root=str(root),
        clip_len=4,
        stride=2,
        crop_size=24,
        decode_size=32,
        batch_size=4,
        num_workers=0,
        cache_dir=str(cache),
        flip=False,
    )
    task = Supervised(
        backbone="tiny3d",
        backbone_kwargs={"width": 4},
        num_classes=dm.num_classes,
        optimizer="adamw",
        lr=0.003,
    )
    losses = []

    class Losses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, Losses()],
    )
    trainer.fit(task, dm)
    return trainer, task, dm, losses


def test_logs_the_knn_accuracy_of_the_model_on_centre_clips(tiny_synthetic, tmp_path):
    monitor = KNNMonitor(k=3, temperature=0.1)
    trainer, task, dm, _ = _fit(tiny_synthetic, tmp_path / "cache", [monitor])
    logged = float(trainer.callback_metrics["val/knn_acc"])

    def features(stage):
        ds = dm.build_dataset(
            stage,
            default_clip_sampler("val", dm.clip_spec),
            default_clip_transform("val", dm.clip_spec),
        )
        task.eval()
        samples = [ds[i] for i in range(len(ds))]
        video = torch.stack([s["video"] for s in samples])
        return task.extract_features(video), torch.stack([s["label"] for s in samples])

    bank, bank_labels = features("train")
    query, query_labels = features("val")
    assert len(bank) == 12 and len(query) == 4  # tiny_synthetic: 4 classes x (3 train + 1 test)
    expected = knn_accuracy(bank, bank_labels, query, query_labels, 4, k=3, temperature=0.1)
    assert logged == pytest.approx(expected)


def test_training_is_the_same_with_and_without_the_monitor(tiny_synthetic, tmp_path):
    *_, with_monitor = _fit(tiny_synthetic, tmp_path / "cache", [KNNMonitor(k=3)])
    *_, without = _fit(tiny_synthetic, tmp_path / "cache", [])
    assert len(with_monitor) == len(without) == 6
    assert with_monitor == without


def test_bank_cap_and_bad_settings(tiny_synthetic, tmp_path):
    monitor = KNNMonitor(k=3, max_train_videos=5)
    trainer, *_ = _fit(tiny_synthetic, tmp_path / "cache", [monitor], epochs=1)
    assert len(monitor._datasets["train"]) == 5 and "val/knn_acc" in trainer.callback_metrics
    for bad in ({"k": 0}, {"temperature": 0.0}, {"every_n_epochs": 0}):
        with pytest.raises(ValueError, match="KNNMonitor needs"):
            KNNMonitor(**bad)
