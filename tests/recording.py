"""A callback the CLI tests load into training runs (through PYTHONPATH) to see what each
process trained on."""

import json
from pathlib import Path

from lightning.pytorch import Callback


class RecordIndices(Callback):
    """Writes the dataset indices of every training batch, per process, to ``out_dir``."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.extend(batch["index"].tolist())

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        out = self.out_dir / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, "indices": self.seen}))
