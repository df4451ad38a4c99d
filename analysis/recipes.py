"""Each experiment's recipe: what its report compares and which parts it shows. An experiment without an entry
gets ``Recipe()``; ``report.RECIPES`` is this registry too."""

from __future__ import annotations

from lipsweep.core.registry import Registry

from .inputs import Recipe

RECIPES: Registry[Recipe] = Registry("recipe")  # experiment name -> how its report compares; default Recipe()
RECIPES.register("rewind_ablation", Recipe(series=("rewind", "rewind_budget", "imp_target", "rewind_source",
                                                   "keep_input_convs"),
                                           parts=("curves", "table", "rewind_protocol", "visual_grid")))
RECIPES.register("lip_existence", Recipe(series=("method", "imp_target", "keep_input_convs"),
                                         parts=("curves", "table", "layerwise", "fft", "visual_grid")))
RECIPES.register("multi_image", Recipe(series=("mask",), parts=("curves", "table"), all_kinds=True))
RECIPES.register("transfer_tasks", Recipe(series=("source",), parts=("transfer", "curves", "table"), all_kinds=True))
RECIPES.register("transfer_images", Recipe(series=("source",), parts=("transfer", "curves"), all_kinds=True))
RECIPES.register("random_structure", Recipe(series=("method",), parts=("curves", "table", "layerwise", "visual_grid")))
RECIPES.register("imp_early_stop", Recipe(series=("method",), parts=("curves", "stop", "visual_grid")))
RECIPES.register("deep_decoder", Recipe(series=("model_width",), parts=("curves", "dd_table")))
RECIPES.register("synflow", Recipe(series=("method",), parts=("curves", "table", "synflow_mechanism", "layerwise",
                                                              "visual_grid")))
RECIPES.register("stop_threshold", Recipe(parts=("rules",)))
RECIPES.register("gan_lip", Recipe(series=("method", "gan_eval"), facet=("task",),
                                   parts=("curves", "table", "table1", "gan_grid"), all_kinds=True))
RECIPES.register("learning_targets", Recipe(series=("mask",), facet=("target", "task"), parts=("learning_targets",),
                                            all_kinds=True))
RECIPES.register("learning_curves", Recipe(parts=("learning_curves", "snapshots", "curves", "visual_grid")))
RECIPES.register("sgld", Recipe(parts=("sgld", "table", "visual_grid")))
RECIPES.register("parameter_count", Recipe(parts=("table3", "curves", "visual_grid")))
RECIPES.register("benchmarks", Recipe(parts=("table5", "table", "visual_grid")))
RECIPES.register("classification_transfer", Recipe(parts=("classification",), all_kinds=True))
RECIPES.register("fft", Recipe(parts=("fft", "curves", "table", "visual_grid"),
                               options={"fft_sparsities": (0.67, 0.79)}))  # Fig. 18's two sparsities
