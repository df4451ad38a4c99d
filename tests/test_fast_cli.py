"""Issue 16, fast CLI: ``lipsweep --help`` and ``lipsweep list`` import neither torch nor Ray, MLflow or Optuna,
nor does ``lipsweep show`` (nor scipy, which scikit-image's metrics load): their speed is measured by
benchmarks/cli_startup.py, not asserted here; and the names the parser offers are the registries' own."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lipsweep.cli import catalog
from lipsweep.cli.main import COMMANDS, build_parser

HEAVY = ("torch", "ray", "mlflow", "optuna")


def _run_fresh(code: str, heavy: tuple[str, ...] = HEAVY) -> tuple[list[str], list[str]]:
    """What ``code`` prints in a fresh interpreter, and the ``heavy`` modules it holds afterwards."""
    check = f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; {check}"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return out[:-1], ast.literal_eval(out[-1])


def _heavy_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after ``code``."""
    return _run_fresh(code)[1]


def test_building_the_parser_imports_no_heavy_library():
    assert _heavy_after("from lipsweep.cli.main import build_parser; build_parser()") == []


def test_list_imports_no_heavy_library():
    assert _heavy_after("from lipsweep.cli.main import main; main(['list'])") == []


def test_show_checks_and_prices_every_trial_without_torch_or_scipy(tmp_path):
    """Validation, trial keys (they name the code versions of the fit and pruning modules) and the cost model
    read configs, registries and image headers only: torch, scipy and scikit-image load when a fit runs."""
    argv = ["show", "rewind_ablation", "--profile", "paper", "--store", str(tmp_path / "store")]
    out, loaded = _run_fresh(f"from lipsweep.cli.main import main; main({argv!r})", (*HEAVY, "scipy", "skimage"))
    assert loaded == []
    assert out[0].startswith("rewind_ablation [paper] (Fig. 9)") and len(out[2:]) >= 268
    assert any(line.startswith("268 trials, 5982 fits still needed") for line in out)


def test_list_prints_every_experiment_with_its_figure(capsys):
    from lipsweep.cli.main import main
    from lipsweep.experiments.spec import experiment_names

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == experiment_names()
    assert any("Fig. 9" in line for line in lines if line.startswith("rewind_ablation "))


def test_list_wraps_descriptions_to_the_terminal_and_gives_them_whole_as_json(capsys, monkeypatch):
    """Issue 28: descriptions of up to ~900 characters were one line each."""
    from lipsweep.cli.main import main
    from lipsweep.experiments.spec import experiment_names

    monkeypatch.setenv("COLUMNS", "70")
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 70 and len(lines) > 2 * len(experiment_names())
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == experiment_names() and all(len(r["description"]) > 70 for r in rows[:3])


def _options(parser, path="lipsweep"):
    """(command, action) of every option of every subcommand."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.option_strings:
            yield path, action


def test_every_help_states_each_default_once():
    """Issue 28: argparse's defaults in every ``--help`` (a None or False default has nothing to show), and no
    help text that also spells its default out by hand."""
    import argparse

    parser = build_parser()
    shown = 0
    for command, action in _options(parser):
        if action.default in (None, False, argparse.SUPPRESS) or action.default in ([], ()):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has a default but no help"
        assert "default" not in action.help.lower(), f"{command} {action.option_strings[0]}: {action.help}"
        shown += 1
    help_text = parser._subparsers._group_actions[0].choices["show"].format_help()
    assert "(default: local)" in help_text and "(default: [1, 10, 64])" in help_text and shown >= 30


def test_version_names_the_package_and_the_libraries_a_result_depends_on():
    from importlib.metadata import version

    out = subprocess.run([str(Path(sys.executable).parent / "lipsweep"), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith(f"lipsweep {version('lipsweep')}")
    assert f"torch {version('torch')}" in out.stdout and f"mlflow {version('mlflow')}" in out.stdout


def test_show_prints_every_label_whole_and_names_each_cost_model(tmp_path, capsys):
    """Issue 28: labels cut at 60 characters made four identical rows of gan_lip's paper profile, and its CPU and
    GPU figures came from two models that the output did not name."""
    from lipsweep.cli.main import main
    from lipsweep.experiments.spec import load

    assert main(["show", "gan_lip", "--profile", "paper", "--store", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.splitlines()
    exp = load("gan_lip", "paper")
    rows = lines[2:2 + len(exp.trials)]
    assert [row.split(None, 4)[4] for row in rows] == list(exp.labels) and len(set(exp.labels)) == 120
    cpu, gpu = lines[-3], lines[-2]
    assert "cost model: the generator's FLOPs at 0.023 s per GFLOP" in cpu and "20 TFLOP/s sustained, assumed" in gpu


def test_the_light_names_equal_the_registries():
    """In a fresh process (a test's plugin may have registered more in this one), after the imports that
    register every built-in entry, as the CLI's imports once did."""
    code = ("import json; import lipsweep.kinds.base, lipsweep.kinds.gan.generators; from lipsweep.problems.tasks import TASKS; "
            "from lipsweep.priors import PRIORS; from lipsweep.pruning.methods import METHODS; "
            "from lipsweep.problems.targets import TARGETS; from lipsweep.fitting.config import DEVICES; from lipsweep.lottery.chain import IMP_TARGETS; "
            "from lipsweep.fitting.early_stop import DETECTORS, NONE; "
            "print(json.dumps({'TASKS': TASKS.names(), 'PRIORS': PRIORS.names(), 'METHODS': METHODS.names(), "
            "'TARGETS': TARGETS.names(), 'DEVICES': DEVICES, 'IMP_TARGETS': IMP_TARGETS, "
            "'DETECTORS': (NONE, *DETECTORS.names())}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name, names in json.loads(out.splitlines()[-1]).items():
        assert sorted(getattr(catalog, name)) == sorted(names), name


def test_the_light_headers_equal_the_experiments():
    from lipsweep.experiments import spec as experiments

    assert catalog.search_spaces() == experiments.search_spaces()
    for head in catalog.experiment_headers():
        spec = experiments._read(experiments.find(head["name"]))
        assert head == {key: spec[key] for key in catalog.HEADER_KEYS}


def test_a_broken_header_is_one_clear_error(tmp_path):
    from lipsweep.core.errors import ConfigError

    (tmp_path / "bad.yaml").write_text("name: bad\npaper: Fig. 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: description: must be a non-empty string$"):
        catalog.experiment_headers(tmp_path)


def test_gan_train_parses_without_torch_and_runs_through_its_module():
    args = build_parser().parse_args(["gan", "train", "--out", "g.pt", "--size", "64"])
    assert (args.command, args.gan_command, args.size, args.data, args.steps) == ("gan", "train", 64, "lfw", 5000)
    assert COMMANDS["gan"].__module__ == "lipsweep.cli.main"


def test_a_cpu_sweeps_driver_imports_no_torch_and_a_worker_no_mlflow():
    """The driver of a CPU sweep needs no torch (~180 MB and seconds before the first trial), and a Ray worker
    running a trial needs no MLflow: both are module boundaries that a stray import would undo."""
    code = ("from lipsweep.experiments.spec import load; from lipsweep.sweep.preflight import check_local_resources; "
            "import lipsweep.sweep.tune; exp = load('rewind_ablation', 'smoke'); check_local_resources(exp, 0)")
    assert _run_fresh(code, ("torch", "skimage"))[1] == []
    assert _run_fresh("import lipsweep.sweep.trainables", ("mlflow", "lipsweep.sweep.driver", "lipsweep.tracking.tracker"))[1] == []
