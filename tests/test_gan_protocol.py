"""``gan_eval`` (issue 27, docs/science.md section 7): Table 1 scored the reference code's way (each level's
fine-tuned sparse generator, random fine-tuned too) or the paper's text read literally (pretrained x mask),
with keys that never mix the two. A tiny random 16 px generator keeps every fit well under a second."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import gan_files

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.kinds.base import TrialConfig, run_trial
from lipsweep.kinds.gan.config import gan_eval, parse, tuned_path
from lipsweep.kinds.gan.cost import estimate
from lipsweep.kinds.gan.kind import evaluated_generator, masked_generator, ticket_mask, tuned_weights
from lipsweep.kinds.gan.train import fine_tune, reference_batch
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.priors.pggan import Discriminator, Generator, GeneratorSpec, masked_weights

SPEC = GeneratorSpec(latent=8, depths=(16, 8, 8), out_channels=1)  # 16 px, grey


@pytest.fixture
def setup(tmp_path):
    gen, data = gan_files(tmp_path)
    base = dict(kind="gan", model="pggan", generator=str(gen), data=str(data),
                image=str(data / "f0.png"), task="cs", measurements=64, outliers=2, iters=20, restarts=1,
                tune_epochs=2, tune_fraction=0.5, levels=2, gan_eval="finetuned")
    return tmp_path, base


def trial(base, **kw):
    return TrialConfig(**{**base, **kw})


def tunings(store: TrunkStore, method: str) -> list[dict]:
    return [e for e in store.fit_log() if e["target"] == "fine-tune" and e.get("method") == method]


def test_finetuned_scores_the_fine_tuned_sparse_generator_not_pretrained_x_mask(setup):
    tmp, base = setup
    tk = Tickets(TrunkStore(tmp / "store"))
    ev = gan_eval(trial(base))
    mask = ticket_mask(tk, ev.ticket, 2)
    scored = masked_weights(evaluated_generator(tk, ev, mask, 2))
    plain = masked_weights(masked_generator(tk, ev, mask))
    tuned = tuned_weights(tk, ev.ticket, 1)  # fine-tuned under level 1's mask, then masked to level 2's
    for name, w in scored.items():
        assert torch.equal(w, tuned[f"{name}.weight"] * mask.masks[name])
    assert max(float((scored[n] - plain[n]).detach().abs().max()) for n in scored) > 1e-4
    fine = [r.metrics["mse"] for r in run_trial(trial(base), tk)]
    pre = [r.metrics["mse"] for r in run_trial(trial(base, gan_eval="pretrained"), tk)]
    assert all(abs(f - p) > 1e-6 for f, p in zip(fine, pre))  # every level, the dense one too


@pytest.mark.parametrize("method", ["imp", "random"])
def test_pruned_weights_are_exactly_zero_in_the_scored_generator(setup, method):
    tmp, base = setup
    tk = Tickets(TrunkStore(tmp / "store"))
    ev = gan_eval(trial(base, method=method))
    for level in (1, 2):
        mask = ticket_mask(tk, ev.ticket, level)
        for name, w in masked_weights(evaluated_generator(tk, ev, mask, level)).items():
            assert torch.count_nonzero(w[~mask.masks[name]]) == 0
            assert torch.count_nonzero(w[mask.masks[name]]) == int(mask.masks[name].sum())


def test_random_is_fine_tuned_under_its_own_masks_and_the_dense_tuning_is_shared(setup):
    tmp, base = setup
    store = TrunkStore(tmp / "store")
    tk = Tickets(store)
    imp = list(run_trial(trial(base), tk))
    assert len(tunings(store, "imp")) == 2 and tk.fits == 2 + 3  # tuned under levels 0 and 1; three latent fits
    rnd = list(run_trial(trial(base, method="random"), tk))
    tuned = tunings(store, "random")
    masks = [ticket_mask(tk, gan_eval(trial(base, method="random")).ticket, 1).hash]
    assert [e["mask"] for e in tuned] == masks and tuned[0]["recipe"] == "reference"  # level 0's is imp's
    assert tk.fits == 5 + 1 + 2 and rnd[0].to_dict() == imp[0].to_dict()  # the dense level: one fit for both
    assert len(list((tmp / "store" / "gan" / "tuned").glob("*.pt"))) == 3
    again = Tickets(TrunkStore(tmp / "store"))
    assert [r.to_dict() for r in run_trial(trial(base, method="random"), again)] == [r.to_dict() for r in rnd]
    assert again.fits == 0  # stored fine-tunings and fits are reused


def test_the_estimate_counts_every_fine_tuning_random_included(setup):
    tmp, base = setup
    store, counted = TrunkStore(tmp / "empty"), set()
    assert estimate(parse(trial(base)), store, counted)[0] == 2 + 3
    assert estimate(parse(trial(base, method="random")), store, counted)[0] == 1 + 2  # dense shared
    assert estimate(parse(trial(base, method="random", gan_eval="pretrained")), store, set())[0] == 3  # no tuning


def test_the_reference_recipe_keeps_pruned_weights_zero_with_a_g_batch_of_one():
    torch.manual_seed(0)
    g, d = Generator(SPEC), Discriminator(SPEC)
    mask = {n: torch.rand(w.shape) < 0.5 for n, w in masked_weights(g).items()}
    data = torch.rand(16, 1, 16, 16) * 2 - 1
    out = fine_tune(g, d, data, epochs=2, fraction=0.5, mask=mask, seed=0, recipe="reference")
    assert out["steps"] == 2 * 8 / reference_batch(8) and reference_batch(12_000) == 64
    assert all(torch.count_nonzero(w[~mask[n]]) == 0 for n, w in masked_weights(g).items())
    with pytest.raises(ConfigError) as err:
        fine_tune(g, d, data, epochs=1, fraction=0.5, mask=None, seed=0, recipe="paper")
    assert err.value.field == "recipe"


def test_an_unknown_gan_eval_is_refused_in_one_line(setup, tmp_path, capsys):
    _, base = setup
    with pytest.raises(ConfigError) as err:
        parse(trial(base, gan_eval="trained"))
    assert err.value.field == "gan_eval" and "finetuned, pretrained" in err.value.message
    code = main(["show", "gan_lip", "--profile", "smoke", "--set", "gan_eval=trained", "--store", str(tmp_path / "s")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "gan_eval" in lines[0]


def test_pretrained_keys_are_unchanged_and_finetuned_keys_never_mix(setup):
    cfg = dict(kind="gan", model="pggan", generator="faces32", size=32, task="cs", image="lfw_faces/face_080")
    assert TrialConfig(**cfg).key == "911abfb54b63af50"  # computed before gan_eval existed (issue 27)
    ev = gan_eval(TrialConfig(**cfg, levels=2))
    assert (ev.ticket.key, ev.key("abc")) == ("c3cac187709be1cf", "ed500b51e7673903")
    assert gan_eval(TrialConfig(**cfg, levels=2, method="random")).ticket.key == "2d926c5b6af1e2f3"
    fine = gan_eval(TrialConfig(**cfg, levels=2, gan_eval="finetuned"))
    assert TrialConfig(**cfg, gan_eval="finetuned").key != TrialConfig(**cfg).key
    assert fine.ticket.key != ev.ticket.key and fine.key("abc", "w") != ev.key("abc")
    tmp, _ = setup
    assert tuned_path(TrunkStore(tmp / "s"), "k").name == "k.pt"


def test_table_1_separates_the_protocols_and_quotes_the_paper_for_finetuned_only(tmp_path):
    from lipsweep.analysis.inputs import Inputs, Recipe, Report
    from lipsweep.analysis.tables import write_table1

    rows = [{"gan_eval": p, "task": t, "method": m, "level": lvl, "sparsity": 1 - 0.8**lvl, "seed": 0,
             "mse": 0.1 * (1 + lvl) * (2 if p == "pretrained" else 1)}
            for p in ("finetuned", "pretrained") for t in ("cs", "inpaint_centre") for m in ("imp", "random")
            for lvl in range(3)]
    frame = pd.DataFrame(rows)
    rep = Report(tmp_path)
    write_table1(Inputs(rep, None, frame, frame, Recipe(), "gan_lip", "mse", 0.89))
    tidy = pd.read_csv(tmp_path / "table1.csv")
    assert len(tidy) == 2 * 2 * 2 * 3 and set(tidy["gan_eval"]) == {"finetuned", "pretrained"}
    assert tidy.loc[tidy["gan_eval"] == "pretrained", "paper"].isna().all()
    fine = tidy[(tidy["gan_eval"] == "finetuned") & (tidy["task"] == "cs") & (tidy["method"] == "random")]
    assert list(fine["paper"]) == [0.0725, 0.0963, 0.1165] and list(fine["x dense"]) == [1.0, 2.0, 3.0]
    text = (tmp_path / "table1.md").read_text()
    assert "| finetuned | cs | imp | 0.1000 (1.00x) / paper 0.0725 (1.00x)" in text
    assert "| pretrained | cs | imp | 0.2000 (1.00x) |" in text
