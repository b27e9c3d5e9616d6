"""The README's generated reference blocks match the schema and the CLI."""

from conftest import REPO

from finetune.docs import render


def test_readme_reference_blocks_are_current():
    readme = (REPO / "README.md").read_text()
    assert render(readme) == readme, (
        "README reference is stale: run `.venv/bin/python -m finetune.docs`"
    )


def test_every_recipe_key_and_command_is_documented():
    readme = (REPO / "README.md").read_text()
    for key in ("`train.completion_only`", "`data.max_validation_examples`", "`lora.use_dora`"):
        assert key in readme
    for command in ("finetune train", "finetune export", "finetune eval", "finetune report"):
        assert f"`{command} " in readme
