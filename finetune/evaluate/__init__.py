"""Evaluation: the specialist and its baselines scored on the same held-out items.

`evaluate(recipe, run_dir)` writes `<run>/eval/results.json` and `predictions.jsonl`.
"""

from finetune.evaluate.evaluator import (
    EVAL_DIR,
    PREDICTIONS_FILE,
    RESULTS_FILE,
    evaluate,
    evaluated_recipe,
)

__all__ = ["EVAL_DIR", "PREDICTIONS_FILE", "RESULTS_FILE", "evaluate", "evaluated_recipe"]
