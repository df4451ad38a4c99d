import torch
from conftest import tiny_run

from lipsweep.fitting.fit import prepare
from lipsweep.priors import ModelConfig, build_model, conv_weights
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import (
    keep_top,
    level_counts,
    magnitude_step,
    prunable_total,
    random_profile,
    random_uniform,
    snip_scores,
    synflow,
)


def test_level_counts_prune_20_percent_of_the_remaining_each_level():
    counts = level_counts(1000, 5)
    assert counts == [1000, 800, 640, 512, 410, 328]


def test_magnitude_step_prunes_the_smallest_remaining_weights_globally():
    model = build_model(ModelConfig(width=8), seed=0)
    dense = MaskSet.dense(model)
    first = MaskSet(magnitude_step(model, dense))
    second = MaskSet(magnitude_step(model, first))
    assert first.kept == dense.total - round(0.2 * dense.total)
    assert second.kept == first.kept - round(0.2 * first.kept)
    w = conv_weights(model)
    pruned = torch.cat([w[n].detach().abs()[first.masks[n] & ~second.masks[n]] for n in w])
    kept = torch.cat([w[n].detach().abs()[second.masks[n]] for n in w])
    assert pruned.max() <= kept.min()
    assert all(not (second.masks[n] & ~first.masks[n]).any() for n in w)  # nested: nothing regrows
    # global, not per layer: layers end up at different densities
    assert len({round(d, 3) for d in second.layer_densities().values()}) > 3


def test_frozen_layers_stay_dense_and_out_of_the_count():
    model = build_model(ModelConfig(width=8), seed=0)
    dense = MaskSet.dense(model)
    frozen = ("levels.0.skip.conv", "levels.0.down1.conv")
    m = magnitude_step(model, dense, frozen=frozen)
    assert all(m[n].all() for n in frozen)
    total = prunable_total(dense, frozen)
    assert sum(int(m[n].sum()) for n in m if n not in frozen) == total - round(0.2 * total)


def test_random_is_uniform_per_layer_within_one_weight():
    dense = MaskSet.dense(build_model(ModelConfig(width=8), seed=0))
    keep = level_counts(dense.total, 4)[4]
    m = MaskSet(random_uniform(dense, keep, seed=1))
    density = keep / dense.total
    for name, mm in m.masks.items():
        assert abs(int(mm.sum()) - density * mm.numel()) <= 0.5 + 1e-9
    assert abs(m.kept - keep) <= len(m.masks)


def test_random_profile_copies_per_layer_counts_exactly():
    model = build_model(ModelConfig(width=8), seed=0)
    dense = MaskSet.dense(model)
    lip = MaskSet(magnitude_step(model, MaskSet(magnitude_step(model, dense))))
    rp = MaskSet(random_profile(lip, seed=3))
    assert rp.layer_counts() == lip.layer_counts()
    assert rp.hash != lip.hash


def _mean_kept_score(mask: MaskSet, scores: dict) -> float:
    kept = torch.cat([scores[n][mask.masks[n]].flatten() for n in mask.masks])
    return float(kept.mean())


def test_snip_and_synflow_hit_the_requested_sparsity_and_differ_from_random():
    prep = prepare(tiny_run("denoise", width=8))
    dense = MaskSet.dense(prep.model)
    keep = level_counts(dense.total, 6)[6]  # 73.8% sparse
    snip = MaskSet(keep_top(snip_scores(prep.model, prep.z, prep.problem), dense, keep))
    syn = MaskSet(synflow(prep.model, tuple(prep.z.shape), dense, keep, rounds=20))
    rnd = MaskSet(random_uniform(dense, keep, seed=0))
    assert snip.kept == keep and syn.kept == keep
    for m in (snip, syn):
        spread = [d for d in m.layer_densities().values()]
        assert max(spread) - min(spread) > 0.2  # not a uniform profile
    scores = snip_scores(prep.model, prep.z, prep.problem)  # SNIP keeps what its score ranks high: the kept
    assert _mean_kept_score(snip, scores) > 2 * _mean_kept_score(rnd, scores)  # weights score well above random
    assert min(float(scores[n][snip.masks[n]].min()) for n in scores) >= max(
        float(scores[n][~snip.masks[n]].max()) for n in scores if (~snip.masks[n]).any())  # a global threshold
    assert snip.hash != syn.hash


def test_synflow_keeps_every_serial_layer_alive():
    """SynFlow's point (Tanaka et al.): iterative scoring avoids layer collapse at high sparsity. The skip
    branches are parallel paths, so emptying one does not disconnect the net; every serial layer must live."""
    prep = prepare(tiny_run("denoise", width=8))
    dense = MaskSet.dense(prep.model)
    keep = level_counts(dense.total, 14)[14]  # 95.6% sparse
    syn = MaskSet(synflow(prep.model, tuple(prep.z.shape), dense, keep, rounds=30))
    assert syn.kept == keep
    serial = {n: c for n, c in syn.layer_counts().items() if ".skip." not in n}
    assert len(serial) == 21 and min(serial.values()) > 0


def test_global_synflow_empties_the_skip_branches_and_the_layerwise_variant_keeps_them():
    """Why SynFlow loses ~3 dB at 20% on the hourglass: flow is conserved per path, and the skip branches
    carry a small share of it, so the published global ranking prunes them first."""
    from lipsweep.pruning.methods import keep_top_per_layer

    prep = prepare(tiny_run("denoise", width=16))
    dense = MaskSet.dense(prep.model)
    keep = round(0.8 * dense.total)
    glob = MaskSet(synflow(prep.model, tuple(prep.z.shape), dense, keep, rounds=20))
    lw = MaskSet(synflow(prep.model, tuple(prep.z.shape), dense, keep, rounds=20, select=keep_top_per_layer))
    skips = [n for n in dense.masks if ".skip." in n]
    assert glob.kept == keep and all(glob.layer_densities()[n] == 0.0 for n in skips)
    assert abs(lw.kept - keep) <= len(dense.masks)
    assert all(abs(d - 0.8) < 0.02 for d in lw.layer_densities().values())


def test_both_synflow_variants_cut_every_up1_weight_that_reads_a_skip_channel_at_20_percent():
    """The mechanism of Table 4's loss (docs/science.md section 4, SynFlow): global SynFlow empties the skip convs,
    the layer-wise one keeps them at 80% but prunes the up1 weights reading the 4 skip channels (4/20 of
    up1's inputs at width 16) at every level but the deepest; either way the skips are cut. The keep-skips variant keeps all of them."""
    from lipsweep.pruning.methods import keep_top_per_layer, protect, skip_inputs

    prep = prepare(tiny_run("denoise", width=16))
    dense = MaskSet.dense(prep.model)
    keep, shape = round(0.8 * dense.total), tuple(prep.z.shape)
    paths = skip_inputs(prep.model)
    up1 = [n for n in paths if n.endswith(".up1.conv")]
    assert len(up1) == 5 and all(int(paths[n].sum()) == 16 * 4 * 9 for n in up1)
    glob = MaskSet(synflow(prep.model, shape, dense, keep, rounds=20))
    assert [int(glob.masks[n][:, :4].sum()) for n in up1] == [0] * 5
    layer = MaskSet(synflow(prep.model, shape, dense, keep, rounds=20, select=keep_top_per_layer))
    read = [int(layer.masks[n][:, :4].sum()) for n in up1]  # the deepest level keeps a minority (audit: 98)
    assert read[:4] == [0] * 4 and read[4] < 0.25 * 576, read
    for mask in (glob, layer):
        assert all(int(mask.masks[n][:, 4:].sum()) > 0 for n in up1)  # the deep path's inputs live
    kept = MaskSet(synflow(prep.model, shape, dense, keep, rounds=20, select=protect(keep_top, paths)))
    assert kept.kept == keep
    assert all(bool(kept.masks[n][paths[n]].all()) for n in paths)  # every skip-path weight kept


def test_skip_cut_removes_only_the_up1_skip_inputs():
    from lipsweep.pruning.methods import METHODS, skip_cut

    prep = prepare(tiny_run("denoise", width=16))
    dense = MaskSet.dense(prep.model)
    cut = MaskSet(skip_cut(prep.model, dense))
    assert dense.total - cut.kept == 5 * 16 * 4 * 9  # 2,880 weights: 5 levels x 16 out x 4 skip in x 3x3
    changed = {n for n in dense.masks if not torch.equal(cut.masks[n], dense.masks[n])}
    assert changed == {f"levels.{i}.up1.conv" for i in range(5)}
    assert METHODS.get("skip_cut").fixed and not METHODS.get("synflow").fixed
