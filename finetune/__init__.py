"""finetune: specialize a small language model on a domain task and measure it against general baselines.

The pipeline, one module per stage: recipe -> data -> models -> train -> evaluate -> report.
"""

__version__ = "0.1.0"
