"""The EMA target under DDP: after a two-process run every process holds the same target, though
each saw its own clips (and, for V-JEPA, drew its own masks)."""

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from cli_helpers import run_vssl, tiny_config
from lightning.pytorch import Callback


class TargetRecorder(Callback):
    """Saves, on each process, the momentum encoder's state before and after training, the
    online encoder's state after it, and the first training batch's clips."""

    def __init__(self, out_dir: str, attribute: str) -> None:
        self.out_dir, self.attribute = Path(out_dir), attribute
        self.first: torch.Tensor | None = None

    def _target(self, pl_module: Any) -> dict[str, torch.Tensor]:
        module = getattr(pl_module, self.attribute).module
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.initial = self._target(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.first is None:
            self.first = next(v for v in batch.values() if torch.is_tensor(v)).clone()

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        online = pl_module.backbone.state_dict()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "initial": self.initial,
                "final": self._target(pl_module),
                "online": {k: v.detach().clone() for k, v in online.items()},
                "first": self.first,
                "steps": trainer.global_step,
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


TASKS = {
    # no batch norm: the target is its parameters
    "VJEPA": (
        "target_encoder",
        {
            "backbone": "vit_tiny_8",
            "backbone_kwargs": {"dim": 32, "depth": 1, "heads": 2},
            "predictor_dim": 16,
            "predictor_depth": 1,
            "lr": 0.003,
            "warmup_epochs": 0,
            "ema_momentum": 0.9,
        },
    ),
    # batch norm: the target's running statistics are buffers copied from the online network
    "RhoBYOL": (
        "momentum_encoder",
        {
            "backbone": "tiny3d",
            "backbone_kwargs": {"width": 4},
            "hidden_dim": 16,
            "projection_dim": 8,
            "predictor_hidden_dim": 16,
            "target_momentum": 0.9,
            "optimizer": "adamw",
            "lr": 0.003,
            "reference_batch_size": None,
            "warmup_epochs": 0,
            "augment": {},
        },
    ),
}


@pytest.mark.parametrize("cls", sorted(TASKS))
def test_every_process_holds_the_same_target(cls, tiny_synthetic, tmp_path):
    attribute, init_args = TASKS[cls]
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=1)
    cfg["model"] = {"class_path": f"vssl.tasks.{cls}", "init_args": init_args}
    cfg["trainer"].update(
        strategy="ddp",
        devices=2,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[
            {
                "class_path": "test_momentum_ddp.TargetRecorder",
                "init_args": {"out_dir": str(tmp_path / "rec"), "attribute": attribute},
            }
        ],
    )
    cfg["data"]["init_args"].update(
        clip_len=4, crop_size=32, decode_size=32, batch_size=2, num_workers=0
    )
    cfg["checkpoint"] = {"monitor": None}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_vssl(["fit", "--config", "run.yaml"], tmp_path)
    r0, r1 = (torch.load(tmp_path / "rec" / f"rank{r}.pt") for r in (0, 1))
    # 12 training videos, 2 a batch on each of 2 processes: 3 steps, on different clips
    assert r0["steps"] == r1["steps"] == 3
    assert not torch.equal(r0["first"], r1["first"])
    assert r0["final"].keys() == r1["final"].keys()
    for name in r0["final"]:
        assert torch.equal(r0["initial"][name], r1["initial"][name]), name
        assert torch.equal(r0["final"][name], r1["final"][name]), name
    # the target moved, and it is not a copy of the online network
    moved = [n for n in r0["final"] if not torch.equal(r0["final"][n], r0["initial"][n])]
    assert moved
    online = {f"backbone.{k}": v for k, v in r0["online"].items()}
    assert any(not torch.equal(r0["final"][n], online[n]) for n in moved if n in online)
