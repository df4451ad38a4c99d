"""Each experiment's recipe: what its report compares and which parts it shows. An experiment without an entry
gets ``Recipe()``; ``report.RECIPES`` is this registry too."""

from __future__ import annotations

from lipsweep.core.registry import Registry

from .inputs import Claim, Recipe

# The paper's claims each report reads its result against (the paper's text; numbers: docs/science.md section 6)
FIG9 = Claim('weight rewinding "is not beneficial for identifying LIP in the DIP setting. Too much rewinding (10% '
             'and 20%) even hurts performance or fails it completely" (Fig. 9, denoising; a figure, no numbers).',
             baseline=0.0, expect="not better")
FIG3 = Claim('single-image IMP "outperforms" random pruning and SNIP "at a wide sparsity range [20%, 96%]" (Fig. 3, '
             "denoising; a figure, no numbers).", baseline="imp", expect="worse", others=("random", "snip"))
FIG15 = Claim('random pruning with the LIP layer-wise sparsity "will collapse at a much earlier stage than" uniform '
              'random pruning, "comparable" at 0-40% and falling at 50-90% (Fig. 15, denoising; a figure).',
              baseline="random", expect="worse", others=("random_profile",))
TABLE4 = Claim('LIP subnetworks "start to win" over SynFlow "when the sparsity level increases (e.g., from 60% to '
               '90%)" (Table 4, F16 denoising, SynFlow - LIP in dB).', baseline="imp", expect="worse",
               others=("synflow",), paper_gap={s: {"synflow": g} for s, g in ((0.2, -0.10), (0.4, -0.49), (0.5, -0.58),
                                                                                (0.6, -0.54), (0.7, -0.70), (0.8, -0.92),
                                                                                (0.9, -1.93))})
TABLE1 = Claim("IMP's GAN tickets keep the dense generator's MSE while random pruning's MSE grows with sparsity "
               "(Table 1, per-pixel MSE, CS and inpainting; the paper's cells are in table1.md).", baseline="imp",
               expect="worse", others=("random",), tolerance=0.001)
REWIND_NAMES = {"0.0": "IMP (rewind 0)", "0.05": "Rewind 5%", "0.1": "Rewind 10%", "0.2": "Rewind 20%"}
METHOD_NAMES = {"imp": "LIP (IMP)", "random": "random pruning", "snip": "SNIP", "synflow": "SynFlow",
                "imp (clean target)": "LIP (IMP on the clean image)", "imp (input convs kept)": "LIP (input convs kept)",
                "random_profile": "random (LIP layer profile)", "synflow_layerwise": "SynFlow (layer-wise)",
                "synflow_keep_skips": "SynFlow (skip paths kept)", "skip_cut": "skip cut (control)"}

RECIPES: Registry[Recipe] = Registry("recipe")  # experiment name -> how its report compares; default Recipe()
RECIPES.register("rewind_ablation", Recipe(series=("rewind", "rewind_budget", "imp_target", "rewind_source",
                                                   "keep_input_convs"),
                                           parts=("curves", "table", "rewind_protocol", "visual_grid"),
                                           primary="rewind", names=REWIND_NAMES, claim=FIG9))
RECIPES.register("lip_existence", Recipe(series=("series",), primary="series", names=METHOD_NAMES, claim=FIG3,
                                         main={"series": "imp"},
                                         parts=("curves", "table", "layerwise", "fft", "visual_grid")))
RECIPES.register("multi_image", Recipe(series=("mask",), parts=("curves", "table"), all_kinds=True))
RECIPES.register("transfer_tasks", Recipe(series=("source",), parts=("transfer", "curves", "table"), all_kinds=True))
RECIPES.register("transfer_images", Recipe(series=("source",), parts=("transfer", "curves"), all_kinds=True))
RECIPES.register("random_structure", Recipe(series=("method",), parts=("curves", "table", "layerwise", "visual_grid"),
                                            names=METHOD_NAMES, claim=FIG15))
RECIPES.register("imp_early_stop", Recipe(series=("method",), parts=("curves", "stop", "visual_grid")))
RECIPES.register("fit_early_stop", Recipe(series=("method",), parts=("early_stop", "curves"), names=METHOD_NAMES))
RECIPES.register("deep_decoder", Recipe(series=("model_width",), parts=("curves", "dd_table"), primary="model_width"))
RECIPES.register("synflow", Recipe(series=("method",), parts=("curves", "table", "synflow_mechanism", "layerwise",
                                                              "visual_grid"), names=METHOD_NAMES, claim=TABLE4))
RECIPES.register("stop_threshold", Recipe(parts=("rules",)))
RECIPES.register("gan_lip", Recipe(series=("method", "gan_eval"), facet=("task",),
                                   parts=("curves", "table", "table1", "gan_grid"), all_kinds=True,
                                   main={"gan_eval": "finetuned"}, claim=TABLE1, names=METHOD_NAMES))  # Table 1's protocol
RECIPES.register("learning_targets", Recipe(series=("mask",), facet=("target", "task"), parts=("learning_targets",),
                                            all_kinds=True))
RECIPES.register("learning_curves", Recipe(parts=("learning_curves", "snapshots", "curves", "visual_grid")))
RECIPES.register("sgld", Recipe(parts=("sgld", "table", "visual_grid")))
RECIPES.register("parameter_count", Recipe(parts=("table3", "curves", "visual_grid")))
RECIPES.register("benchmarks", Recipe(parts=("table5", "table", "visual_grid")))
RECIPES.register("classification_transfer", Recipe(parts=("classification",), all_kinds=True))
RECIPES.register("fft", Recipe(parts=("fft", "curves", "table", "visual_grid"),
                               options={"fft_sparsities": (0.67, 0.79)}))  # Fig. 18's two sparsities
