"""Teach: a general system labels the specialist's training rows (`data.teacher`).

`teach(recipe)` asks the teacher, a recipe baseline, about every row it has not answered yet,
as the evaluation asks a baseline (`systems.answers`), and appends each answer to the file that
the data stage reads the taught training split from (`data.teacher`). It then writes the
teacher's card beside that file: rows kept and dropped and why, time, cost, and the teacher's
quality where the human labels are known. `finetune train` and experiments run it first.
"""

from finetune.teach.label import Taught, teach

__all__ = ["Taught", "teach"]
