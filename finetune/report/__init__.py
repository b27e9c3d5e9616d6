"""The report stage: turn `<run>/eval/results.json` into a comparison a person can act on.

`write_report(run_dir)` writes `report.md`, a self-contained `report.html` and the figures
under `report/`, and logs them to W&B; `headline_table(results)` is the terminal's summary and
`verdict(results)` the plain-sentence answer to "deploy the specialist or a general model?".

Modules: `results` (reading the run), `tables`, `verdict`, `decision` (what to deploy under
the constraints, shared with experiments), `plots`, `document` (what the report says),
`markdown` and `html` (how it is written), `build` (the stage itself).
"""

from finetune.report.build import ReportPaths, write_report
from finetune.report.tables import headline_table
from finetune.report.verdict import verdict

__all__ = ["ReportPaths", "headline_table", "verdict", "write_report"]
