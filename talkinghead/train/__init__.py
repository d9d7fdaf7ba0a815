"""Training utilities shared by both stages: one loop (:class:`Trainer`), checkpoints and
exported weights, and the multi-process helpers.

Typical stage script::

    seed_everything(cfg.trainer.seed)
    task = MyStageTask(cfg)                       # has .models, configure_optimizers, ...
    trainer_cfg = TrainerConfig.coerce(cfg.trainer, out_dir=out_dir, max_steps=..., batch_size=..., seed=cfg.seed)
    trainer = Trainer(task, train_set, val_set, trainer_cfg)
    metrics = trainer.fit()
    if trainer.is_main:
        export_weights(task, out_dir / "weights.safetensors")
    cleanup()
"""

from talkinghead.train.checkpoint import (
    CheckpointWarning,
    export_weights,
    find_latest_checkpoint,
    load_checkpoint,
    load_initial_weights,
    load_weights,
    save_checkpoint,
)
from talkinghead.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    is_main,
)
from talkinghead.train.loop import (
    EpochBatchSampler,
    Trainer,
    TrainerConfig,
    TrainTask,
    move_to_device,
    seed_everything,
    set_deterministic,
)

__all__ = [
    "CheckpointWarning",
    "DistInfo",
    "EpochBatchSampler",
    "TrainTask",
    "Trainer",
    "TrainerConfig",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "export_weights",
    "find_latest_checkpoint",
    "init_distributed",
    "is_main",
    "load_checkpoint",
    "load_initial_weights",
    "load_weights",
    "move_to_device",
    "save_checkpoint",
    "seed_everything",
    "set_deterministic",
]
