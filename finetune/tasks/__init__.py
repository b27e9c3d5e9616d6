"""Tasks: what a classification, extraction or QA item asks of a system and how the answer is
scored. Prompts (`prompts`), label lists (`labels`), entities (`entities`), IOB2 tags
(`tagging`) and metrics (`metrics`), shared by training and evaluation."""
