"""Issue 16, fast CLI: ``lipsweep --help`` and ``lipsweep list`` import neither torch nor Ray, MLflow or Optuna
(their speed is measured by benchmarks/cli_startup.py, not asserted here), and the names the parser offers
are the registries' own."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from lipsweep import catalog
from lipsweep.cli import COMMANDS, build_parser

HEAVY = "sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules)"


def _heavy_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after ``code`` (its last stdout line)."""
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; print({HEAVY})"], capture_output=True,
                         text=True, check=True).stdout
    return ast.literal_eval(out.splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library():
    assert _heavy_after("from lipsweep.cli import build_parser; build_parser()") == []


def test_list_imports_no_heavy_library():
    assert _heavy_after("from lipsweep.cli import main; main(['list'])") == []


def test_list_prints_every_experiment_with_its_figure(capsys):
    from lipsweep.cli import main
    from lipsweep.experiments import experiment_names

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == experiment_names()
    assert any("Fig. 9" in line for line in lines if line.startswith("rewind_ablation "))


def test_the_light_names_equal_the_registries():
    """In a fresh process (a test's plugin may have registered more in this one), after the imports that
    register every built-in entry, as the CLI's imports once did."""
    code = ("import json; import lipsweep.trial, lipsweep.generators; from lipsweep.tasks import TASKS; "
            "from lipsweep.priors import PRIORS; from lipsweep.pruning import METHODS; "
            "from lipsweep.targets import TARGETS; from lipsweep.config import DEVICES, IMP_TARGETS; "
            "print(json.dumps({'TASKS': TASKS.names(), 'PRIORS': PRIORS.names(), 'METHODS': METHODS.names(), "
            "'TARGETS': TARGETS.names(), 'DEVICES': DEVICES, 'IMP_TARGETS': IMP_TARGETS}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name, names in json.loads(out.splitlines()[-1]).items():
        assert sorted(getattr(catalog, name)) == sorted(names), name


def test_the_light_headers_equal_the_experiments():
    from lipsweep import experiments

    assert catalog.search_spaces() == experiments.search_spaces()
    for head in catalog.experiment_headers():
        spec = experiments._read(experiments.find(head["name"]))
        assert head == {key: spec[key] for key in catalog.HEADER_KEYS}


def test_a_broken_header_is_one_clear_error(tmp_path):
    from lipsweep.errors import ConfigError

    (tmp_path / "bad.yaml").write_text("name: bad\npaper: Fig. 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: description: must be a non-empty string$"):
        catalog.experiment_headers(tmp_path)


def test_gan_train_parses_without_torch_and_runs_through_its_module():
    args = build_parser().parse_args(["gan", "train", "--out", "g.pt", "--size", "64"])
    assert (args.command, args.gan_command, args.size, args.data, args.steps) == ("gan", "train", 64, "lfw", 5000)
    assert COMMANDS["gan"].__module__ == "lipsweep.cli"
