"""Training: `train(recipe)` specializes the base model (LoRA, DoRA, full, 8-/4-bit) with TRL's SFTTrainer.

`export_merged(run_dir)` folds a trained adapter into the base model for deployment.
"""

from finetune.train.export import export_merged
from finetune.train.trainer import TrainResult, last_checkpoint, train

__all__ = ["TrainResult", "export_merged", "last_checkpoint", "train"]
