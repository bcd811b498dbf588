"""The engine wires model and data together: training, evaluation, checkpoints.

- `train(TrainConfig, callback=None) -> TrainResult`: the official recipe, one process or torchrun;
- `evaluate(EvalConfig) -> EvalResult`: both protocols (official 480x480 and original resolution);
- `load_model(path) -> LoadedModel`: any saved LAVT (model folder, run, checkpoint, official
  file); defined in `lavt.loading`, below the engine, and re-exported here;
- `load_train_config` / `load_eval_config`: presets, YAML/JSON files and key=value overrides.
"""
from lavt.engine.config import EvalConfig, TrainConfig, load_eval_config, load_train_config
from lavt.engine.evaluate import EvalResult, evaluate
from lavt.engine.train import TrainEvent, TrainingDiverged, TrainResult, train
from lavt.loading import LoadedModel, load_model

__all__ = [
    "EvalConfig",
    "EvalResult",
    "LoadedModel",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "load_eval_config",
    "load_model",
    "load_train_config",
    "train",
]
