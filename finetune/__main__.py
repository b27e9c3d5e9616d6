"""`python -m finetune` runs the CLI."""

from finetune.cli import main

main()
