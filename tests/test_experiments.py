import json

import pytest
import yaml

from lipsweep.cli.main import main
from lipsweep.experiments.spec import (
    PROFILES,
    SpecError,
    experiment_names,
    load,
    parse_set,
)
from lipsweep.kinds.base import TrialConfig

SHIPPED = ["benchmarks", "classification_transfer", "deep_decoder", "fft", "fit_early_stop", "gan_lip", "imp_early_stop",
           "learning_curves", "learning_targets", "lip_existence", "multi_image", "parameter_count", "random_structure",
           "rewind_ablation", "sgld", "stop_threshold", "synflow", "transfer_images", "transfer_tasks"]
# Paper profiles use each task's iterations, except where the figure's source names its own.
PAPER_ITERS = {"sgld": {20000}, "learning_curves": {None, 2400}}


def test_every_paper_figure_and_table_and_the_online_stop_search_are_shipped():
    assert experiment_names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_experiment_validates_and_expands_in_every_profile(name, profile, capsys, tmp_path):
    assert main(["show", name, "--profile", profile, "--json", "--store", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    exp = load(name, profile)
    assert info["trials"] == len(exp.trials) > 0 and len({t.key for t in exp.trials}) == len(exp.trials)
    assert info["fits_needed"] >= len(exp.trials)
    if profile == "paper":
        assert all(t.size in (None, 256) and t.iters in PAPER_ITERS.get(name, {None}) for t in exp.trials
                   if t.model == "dip")
        assert exp.resources["gpu"] > 0 or exp.kind == "stop_replay"  # replaying stored losses is CPU work
    if profile == "local":
        assert exp.time_budget_s is not None and exp.time_budget_s <= 3600  # an hour on a laptop at most
        assert info["cpu_core_hours"] * 3600 / 2 < exp.time_budget_s / 2  # 2x margin on 2 cores by the cost model
    if profile == "smoke":
        assert all(t.iters is not None and t.iters <= 20 for t in exp.trials)


@pytest.mark.parametrize("name", SHIPPED)
def test_paper_profiles_run_at_the_papers_sizes(name):
    """No paper trial fits a 1024 px CelebA-HQ face at full size (the paper profile: 256; docs/science.md section 5)."""
    from PIL import Image

    from lipsweep.problems.images import resolve

    for t in load(name, "paper").trials:
        for img in (t.image, *t.multi_images, t.source_image, *t.source_multi_images):
            if img:
                assert (t.size or min(Image.open(resolve(img)).size)) <= 576, (t, img)  # Set14's barbara: 576


def test_crossed_case_axes_give_images_their_sizes_and_only_imp_a_clean_target():
    trials = load("lip_existence", "paper").trials
    assert len(trials) == 4 * 4 * 10  # images x (imp, imp on clean, random, snip) x seeds
    assert {t.size for t in trials if t.image.startswith("faces")} == {256}
    assert {t.size for t in trials if not t.image.startswith("faces")} == {None}
    assert {t.method for t in trials if t.imp_target == "clean"} == {"imp"}
    assert {(t.imp_target, t.seed) for t in load("rewind_ablation", "local").trials} == {
        ("observation", 0), ("observation", 1), ("clean", 0)}


def test_fig4_evaluates_each_multi_lip_on_every_image_of_its_set_next_to_own_lip_and_random():
    trials = load("multi_image", "local").trials
    multi = [t for t in trials if t.source_multi_images]
    sets = {t.source().chain_key: {t.source_image, *t.source_multi_images} for t in multi}
    assert sorted(len(images) for images in sets.values()) == [4, 5]  # cross-domain (F16, woman, 2 faces), faces
    for key, images in sets.items():
        assert {t.image for t in multi if t.source().chain_key == key} == images
    for image in {t.image for t in multi}:
        own = {t.method for t in trials if t.image == image and not t.source_multi_images}
        assert own == {"imp", "random"}
    assert all(not t.shared_z for t in multi if "Set5/woman" in t.source_multi_images)  # portrait among squares
    paper = load("multi_image", "paper").trials
    assert len({t.source().chain_key for t in paper if t.source_multi_images and t.seed == 0}) == 3  # + Set5's


def test_rewind_ablation_local_is_the_papers_four_rewind_points():
    exp = load("rewind_ablation", "local")
    assert sorted({t.rewind for t in exp.trials}) == [0.0, 0.05, 0.10, 0.20]
    assert all(t.size == 64 and t.width == 16 for t in exp.trials)  # width ~ size / 4 (docs/science.md section 1b)
    assert load("rewind_ablation", "paper").trials[0].levels == 16
    assert len({t.seed for t in load("rewind_ablation", "paper").trials}) == 10


def test_stop_threshold_replays_exactly_the_imp_early_stop_chains():
    """Same chain configs, so the online search replays the chains imp_early_stop stored."""
    for profile in PROFILES:
        replay = {t.chain().chain_key for t in load("stop_threshold", profile).trials}
        if profile != "smoke":
            assert replay == {t.chain().chain_key for t in load("imp_early_stop", profile).trials}
    assert load("stop_threshold", "smoke").num_samples == 4


def test_set_overrides_pin_an_axis():
    exp = load("rewind_ablation", "smoke", parse_set(["rewind=0.05", "levels=1"]))
    assert [(t.rewind, t.levels) for t in exp.trials] == [(0.05, 1)]


def write(tmp_path, **changes):
    spec = yaml.safe_load(open(load("rewind_ablation", "smoke").file).read())
    for path, value in changes.items():
        node = spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    f = tmp_path / "rewind_ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    return f


@pytest.mark.parametrize("changes,path,message", [
    ({"colour": "red"}, "colour", "unknown key; allowed: name, description"),
    ({"base.rewnd": 0.1}, "base.rewnd", "unknown key; allowed: kind, image"),
    ({"base.levels": "ten"}, "base.levels", "must be an integer >= 0, got 'ten'"),
    ({"axes.rewind": [0.0, 1.5]}, "axes.rewind[1].rewind", "must be a fraction of the dense run in [0, 1)"),
    ({"base.image": "Set5/nope"}, "base.image", "no shipped image or file 'Set5/nope'"),
    ({"base.task": "deblur"}, "base.task", "unknown value 'deblur'; allowed: denoise, inpaint, sr4, sr8"),
    ({"axes.method": ["imp", "grasp"]}, "axes.method[1].method", "allowed: imp, random, random_profile, snip, synflow"),
    ({"metric": "f1"}, "metric", "allowed: psnr_final"),
    ({"profiles.local.resources": {"cpu": -1}}, "profiles.local.resources.cpu", "must be a number >= 0"),
    ({"profiles.local.scheduler": {"type": "pbt"}}, "profiles.local.scheduler.type", "allowed: asha"),
    ({"profiles.local.base": {"size": 0}}, "profiles.local.base.size", "must be a positive integer"),
    ({"name": "other"}, "name", "must match the file name 'rewind_ablation'"),
    ({"axes.seed": []}, "axes.seed", "must be a non-empty list"),
])
def test_schema_errors_name_the_file_the_key_path_and_the_allowed_values(tmp_path, changes, path, message):
    f = write(tmp_path, **changes)
    with pytest.raises(SpecError) as err:
        load(str(f), "local")
    text = str(err.value)
    assert text.startswith(f"{f}: {path}: "), text
    assert message in text


def test_missing_profile_is_an_error(tmp_path):
    f = write(tmp_path)
    spec = yaml.safe_load(f.read_text())
    del spec["profiles"]["smoke"]
    f.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="profiles.smoke: missing; every experiment defines paper, local, smoke"):
        load(str(f), "local")


def test_run_rejects_bad_input_before_any_cluster_work(tmp_path, capsys):
    assert main(["run", "no_such_experiment", "--store", str(tmp_path)]) == 2
    assert "experiment: unknown experiment 'no_such_experiment'; allowed: benchmarks, classification_transfer" in capsys.readouterr().err
    f = write(tmp_path, **{"base.width": -3})
    assert main(["run", str(f), "--profile", "smoke", "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "base.width: must be a positive integer" in err and "Ray" not in err
    assert not (tmp_path / "s").exists()
    assert main(["run", "rewind_ablation", "--set", "bogus=1"]) == 2
    assert "--set.bogus: unknown key" in capsys.readouterr().err


def test_cost_model_prices_one_forward_pass_per_z():
    """Per-image z runs one forward pass per image (Fig. 4's cross-domain set); a shared z runs one."""
    from lipsweep.experiments.plan import seconds_per_iter

    one = TrialConfig(size=64, width=16).chain()
    own = TrialConfig(size=64, width=16, multi_images=("Set5/bird", "Set5/head"), shared_z=False).chain()
    shared = TrialConfig(size=64, width=16, multi_images=("Set5/bird", "Set5/head")).chain()
    assert seconds_per_iter(own, {}) == pytest.approx(3 * seconds_per_iter(one, {}))
    assert seconds_per_iter(shared, {}) == pytest.approx(seconds_per_iter(one, {}))
    assert seconds_per_iter(one, {one.dense_key: 0.5}) == 0.5  # a measured trunk replaces the model
