"""Training engine: loop functions, optimisers, schedules, mixed precision and checkpoints.

Read :mod:`medcl.engine.loop` first: ``fit`` drives ``train_one_epoch`` over epochs, with
checkpointing (:mod:`~medcl.engine.checkpoint`), resuming (:mod:`~medcl.engine.resume`) and tracking passed
in; :mod:`~medcl.engine.batches` holds what moves through the loop, :mod:`~medcl.engine.meter` its throughput
bookkeeping and :mod:`~medcl.engine.inference` the evaluation and feature-extraction loops.
"""

from medcl.engine.amp import AMP_MODES, autocast, check_amp, make_grad_scaler, resolve_amp
from medcl.engine.batches import epoch_generator, to_device
from medcl.engine.checkpoint import (
    Checkpointer,
    build_training_state,
    capture_rng_state,
    restore_rng_state,
    restore_training_state,
)
from medcl.engine.inference import evaluate, extract_features
from medcl.engine.loop import EpochStart, LoopSettings, Optimisation, fit, train_one_epoch
from medcl.engine.optim import LARS, OPTIMIZERS, build_optimizer, param_groups_weight_decay
from medcl.engine.schedule import SCHEDULES, WarmupCosine, build_scheduler, cosine_momentum, warmup_cosine
from medcl.engine.wrap import maybe_compile, model_to_channels_last, unwrap_model, wrap_ddp

__all__ = [
    "AMP_MODES", "LARS", "OPTIMIZERS", "SCHEDULES", "Checkpointer", "EpochStart", "LoopSettings", "Optimisation",
    "WarmupCosine", "autocast",
    "build_optimizer", "build_scheduler", "build_training_state", "capture_rng_state", "check_amp",
    "cosine_momentum", "epoch_generator", "evaluate", "extract_features", "fit",
    "make_grad_scaler", "maybe_compile", "model_to_channels_last", "param_groups_weight_decay",
    "resolve_amp", "restore_rng_state", "restore_training_state", "to_device",
    "train_one_epoch", "unwrap_model", "warmup_cosine", "wrap_ddp",
]
