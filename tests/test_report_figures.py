"""Report figures a researcher pastes into a draft (issue 28): a line per value of the primary axis, the other
varying axes as panels of at most 8 lines, identical series drawn once, a colour per primary value kept across
panels, SSIM paired with the PSNR of the same output, captions that name the runs, the reading paragraph first,
and runs.csv read back by the declared types. Frames are built directly; the report runs on a real MLflow store."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from lipsweep.analysis import figures  # noqa: E402
from lipsweep.analysis.curves import ssim_pair  # noqa: E402
from lipsweep.analysis.inputs import Inputs, Recipe, Report  # noqa: E402
from lipsweep.analysis.lines import MAX_LINES, layout  # noqa: E402
from lipsweep.analysis.recipes import RECIPES  # noqa: E402
from lipsweep.analysis.report import analyze  # noqa: E402
from lipsweep.analysis.runs import Runs, typed_param  # noqa: E402
from lipsweep.analysis.visual import cell_caption, main_chains  # noqa: E402

from lipsweep.tracking.tracker import Tracker  # noqa: E402

REWINDS, BUDGETS, TARGETS = (0.0, 0.05, 0.1, 0.2), ("full", "remaining"), ("observation", "clean")


def psnr(rewind: float, budget: str, target: str, seed: int, level: int) -> float:
    """Rewinding gains 0.5 dB per 10% under the full budget; rewind 0 ignores the budget (the same chains)."""
    gain = 5 * rewind * (1.0 if budget == "full" else 0.4) * level
    return 20 + 0.3 * level + gain + (1.0 if target == "clean" else 0.0) + 0.01 * seed


def three_axis_frame() -> pd.DataFrame:
    rows = [{"run_id": f"{r}-{b}-{t}-{s}", "label": f"rewind={r},budget={b},target={t},seed={s}", "image": "Set5/baby",
             "task": "denoise", "seed": s, "rewind": r, "rewind_budget": b, "imp_target": t, "level": lv,
             "sparsity": 1 - 0.8**lv, "kept": 100 * 0.8**lv, "psnr_ema": psnr(r, b, t, s, lv)}
            for r in REWINDS for b in BUDGETS for t in TARGETS for s in (0, 1) for lv in range(4)]
    return pd.DataFrame(rows)


def test_a_three_axis_sweep_draws_one_line_per_rewind_and_a_panel_per_other_combination(tmp_path):
    recipe = RECIPES.get("rewind_ablation")
    lay = layout(three_axis_frame(), recipe, "psnr_ema")
    assert lay.axis == "rewind" and set(lay.panel_axes) == {"rewind_budget", "imp_target"} and len(lay.panels) == 4
    for title, lines in lay.panels.items():
        assert [ln.label for ln in lines] == ["IMP (rewind 0)", "Rewind 5%", "Rewind 10%", "Rewind 20%"], title
        assert len(lines) <= MAX_LINES
        means = [tuple(ln.stats["mean"].round(6)) for ln in lines]
        assert len(set(means)) == len(means)  # no two lines of a panel draw the same values
    # rewind 0 under either budget is one series per target, drawn in both budget panels
    imp = [ln for ln in lay.series if ln.label == "IMP (rewind 0)"]
    assert sorted(ln.same_as for ln in imp) == [("rewind_budget=full = remaining at imp_target=clean",),
                                                ("rewind_budget=full = remaining at imp_target=observation",)]
    assert len(lay.series) == 2 + 3 * 4 and sorted(len(ln.runs) for ln in lay.series) == [2] * 12 + [4] * 2
    fig_path = figures.primary_curves(lay, figures.axis_label("psnr_ema"), tmp_path / "c.png", "t")
    assert fig_path.is_file() and figures.axis_label("psnr_ema") == "PSNR of the EMA output (dB)"


def test_colours_are_fixed_per_primary_value_across_panels_and_legend_sits_below(tmp_path, monkeypatch):
    lay = layout(three_axis_frame(), RECIPES.get("rewind_ablation"), "psnr_ema")
    assert len({lay.styles[k] for k in lay.styles}) == 4
    drawn: list = []
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))
    figures.primary_curves(lay, "PSNR (dB)", tmp_path / "c.png", "t")
    fig = drawn[0]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(panels) == 4
    for ax in panels:
        series = [ln for ln in ax.lines if ln.get_linestyle() != "--" or ln.get_color() != "gray"][:4]
        assert [ln.get_color() for ln in series] == [lay.styles[lb][0] for lb in lay.styles]
    legend = fig.legends[0]
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(box.y1 <= ax.get_window_extent().y0 for ax in panels)  # outside, below every panel
    plt.close(fig)


def test_a_panel_without_the_baseline_says_so():
    """The local rewind_ablation's shared-rewind arm has no rewind-0 run (at rewind 0 it is the own chain)."""
    from lipsweep.analysis.lines import caption

    frame = three_axis_frame()
    frame = frame[~((frame["imp_target"] == "clean") & (frame["rewind"] == 0.0))]
    lay = layout(frame, RECIPES.get("rewind_ablation"), "psnr_ema")
    text = caption(lay)
    assert text.count("no IMP (rewind 0) run in this arm") == 2  # both clean-target panels, nowhere else
    assert all("IMP (rewind 0)" in [ln.label for ln in lines] for title, lines in lay.panels.items()
               if "observation" in title)


def test_the_other_curve_figures_share_one_legend_below_and_a_colour_per_series(tmp_path, monkeypatch):
    """Classification, SGLD and the IMP-loss figures (``figures.curves``): no legend over the data, and a
    series keeps its colour from panel to panel."""
    def stats(offset):
        return pd.DataFrame({"level": [0, 1, 2], "sparsity": [0.0, 0.2, 0.36], "mean": [20.0, 20 + offset, 19.0],
                             "std": [0.0, 0.1, 0.1], "n": [2, 2, 2]})
    panels = {"a": {"imp": stats(1), "random": stats(-1)}, "b": {"random": stats(-2), "imp": stats(2)}}
    drawn: list = []
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))
    figures.curves(panels, "psnr_ema", tmp_path / "c.png", "t")
    fig = drawn[0]
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(axes) == 2 and all(ax.get_legend() is None for ax in axes)
    first, second = ([ln.get_color() for ln in ax.lines[:2]] for ax in axes)
    assert first == second[::-1] and first[0] != first[1]  # imp, random / random, imp: the same two colours
    legend = fig.legends[0]
    fig.canvas.draw()
    assert [t.get_text() for t in legend.get_texts()] == ["imp", "random", "dense"]
    assert all(legend.get_window_extent().y1 <= ax.get_window_extent().y0 for ax in axes)
    plt.close(fig)


def test_more_than_eight_primary_values_are_split_over_panels_never_dropped():
    frame = pd.DataFrame([{"run_id": f"m{m}", "label": f"m{m}", "method": f"m{m:02d}", "seed": 0, "level": lv,
                           "sparsity": 1 - 0.8**lv, "kept": 1.0, "psnr_ema": 20.0 + m + lv}
                          for m in range(11) for lv in range(3)])
    lay = layout(frame, Recipe(series=("method",)), "psnr_ema")
    assert len(lay.panels) == 2 and all(len(v) <= MAX_LINES for v in lay.panels.values())
    assert {ln.label for v in lay.panels.values() for ln in v} == {f"method=m{m:02d}" for m in range(11)}


def test_ssim_goes_with_the_psnr_of_its_own_output():
    frame = pd.DataFrame({"psnr_ema": [20.0], "psnr_final": [19.0], "ssim_final": [0.5]})
    assert ssim_pair(frame, "psnr_ema") == ("psnr_final", "ssim_final")  # no ssim_ema logged
    assert ssim_pair(frame.assign(ssim_ema=0.6), "psnr_ema") == ("psnr_ema", "ssim_ema")
    assert ssim_pair(frame.drop(columns="ssim_final"), "psnr_ema") is None


def test_params_read_back_by_their_declared_types():
    assert typed_param("ema", "off") == "off" and typed_param("stop_k", "off") == "off"
    assert typed_param("rewind_budget", "off") == "off" and typed_param("recompute", "off") == "off"
    assert typed_param("keep_input_convs", "False") is False and typed_param("seed", "3") == 3
    assert typed_param("rewind", "0.1") == 0.1 and typed_param("size", "native") == "native"
    assert typed_param("snapshots", "[100, 200]") == (100, 200) and typed_param("inpaint_mask", "None") is None


@pytest.fixture(scope="module")
def rewind_store(tmp_path_factory):
    """A 2 x 2 x 2 rewind sweep (rewind x budget x target, one seed, levels 0-2) logged with lipsweep's Tracker;
    one run logs only some params (a newer tracker), every run logs ema 'off'."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('rewind') / 'mlflow.db'}"
    tracker = Tracker(uri, "lipsweep/rewind_ablation")
    parent = tracker.parent("k", "rewind_ablation [local]", {"experiment": "rewind_ablation", "profile": "local"})
    for r in (0.0, 0.1):
        for b in BUDGETS:
            for t in TARGETS:
                label = f"r{r}-{b}-{t}"
                params = {"kind": "chain", "image": "Set5/baby", "task": "denoise", "method": "imp", "seed": 0,
                          "rewind": r, "rewind_budget": b, "imp_target": t, "ema": "off", "multi_images": []}
                if (r, b, t) != (0.1, "remaining", "clean"):
                    params |= {"tune_epochs": 30, "generator": None, "keep_input_convs": False}
                run = tracker.child(parent, label, label, params)
                for lv in range(3):
                    v = psnr(r, b, t, 0, lv)
                    tracker.log_level(run, {"level": lv, "sparsity": 1 - 0.8**lv, "psnr_ema": v, "psnr_final": v - 0.2,
                                            "ssim_ema": v / 40, "psnr_observation": 14.1}, None)
                tracker.finish(run)
    return uri


@pytest.fixture(scope="module")
def rewind_report(rewind_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    analyze("rewind_ablation", rewind_store, out, log_to_mlflow=False)
    return out


def test_report_of_a_three_axis_sweep_leads_with_the_reading_and_writes_a_typed_runs_csv(rewind_store, rewind_report):
    out = rewind_report
    index = (out / "index.md").read_text().splitlines()
    assert index[0].startswith("# rewind_ablation") and index[2].startswith("**Reading.** The paper: weight rewinding")
    # main arm (observation, full): rewind 10% gains 5 * 0.1 * level dB at levels 1-2 -> +0.75 on average
    assert "Rewind 10% +0.75 dB on average over levels 1-2" in index[2] and "does not hold here: 0 of 1" in index[2]
    text = "\n".join(index)
    assert "curves_ssim_ema: the SSIM of the same output as psnr_ema" in text
    assert "IMP (rewind 0): 2 run(s) (r0.0-full-clean, r0.0-remaining-clean)" in text
    assert "IMP (rewind 0) (rewind_budget=full = remaining at imp_target=clean)" in text
    assert text.count("| Set5/baby | denoise |") == 8  # one table printed; the other metric's linked only
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    assert set(runs["ema"]) == {"off"} and not (runs == "").all().any()
    assert "generator" not in runs and "tune_epochs" in runs and set(runs["tune_epochs"]) == {30}
    frame = Runs(rewind_store, "rewind_ablation").table(Runs(rewind_store, "rewind_ablation").parent())
    assert set(frame["keep_input_convs"]) == {False} and frame["ema"].eq("off").all()
    assert np.isnan(frame["mse"]).all()  # declared metrics stay in the frame for the parts


def test_the_visual_grid_shows_the_main_arm_and_the_observations_own_psnr(rewind_store, rewind_report):
    out = rewind_report
    text = (out / "index.md").read_text()
    assert "no IMP restorations" in text  # the fixture logs no images; with them, the main arm's run:
    runs = Runs(rewind_store, "rewind_ablation")
    frame = runs.table(runs.parent())
    data, arm = main_chains(Inputs(Report(out), runs, frame, frame, RECIPES.get("rewind_ablation"),
                                   "rewind_ablation", "psnr_ema", 0.89))
    assert arm == {"rewind": "0.0", "rewind_budget": "full", "imp_target": "observation"}
    assert set(data["label"]) == {"r0.0-full-observation"}
    level0 = data[data["level"] == 0].iloc[0]
    assert cell_caption("observation", "observation", level0, 20.3, "psnr_ema") == "observation 14.10 dB"
    assert cell_caption("dense", "restored", level0, 20.3, "psnr_ema") == "dense 0.0% 20.30 dB"


def test_a_flat_online_rule_search_is_said_not_ranked(tmp_path):
    """Issue 28: every proposed rule scoring the same is "no rule found", not a best rule; a real spread is ranked."""
    from lipsweep.analysis.report import write_rules

    rules = pd.DataFrame({"k": [1, 2, 3], "tolerance": [0.0, 0.1, 0.2], "objective": [0.8, 0.8, 0.8],
                          "sparsity": [0.8, 0.8, 0.8], "psnr_change_db": [0.6, 0.6, 0.6]})
    rep = Report(tmp_path)
    write_rules(rep, rules)
    assert rep.sections[0][1].startswith("All 3 rules scored 0.80000: a flat objective, no rule found")
    rep = Report(tmp_path)
    write_rules(rep, rules.assign(objective=[0.5, 0.9, 0.7]))
    assert "no rule found" not in rep.sections[0][1]
    assert pd.read_csv(tmp_path / "rules.csv")["k"].tolist() == [2, 3, 1]
