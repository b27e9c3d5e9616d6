"""Judge: a general model compares the specialist's free-text answers with each baseline's.

`judge_answers(recipe, run_dir, items, answers)` asks `eval.judge.system` about every pair of
answers in both orders, and about reference answers set against corrupted ones (its sanity
check), through the systems interface; replies are kept so that nothing is asked twice. It
returns the results' `judge` section: per pair, wins, ties and losses, the win rate with a
bootstrap interval, a sign test, position consistency and length bias.
"""

from finetune.judge.ask import check_judge, judge_recipe, judgments_path
from finetune.judge.games import parse_verdict
from finetune.judge.judging import judge_answers, judged_against

__all__ = [
    "check_judge",
    "judge_answers",
    "judge_recipe",
    "judged_against",
    "judgments_path",
    "parse_verdict",
]
