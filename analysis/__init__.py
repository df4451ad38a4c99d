"""From MLflow runs to the paper's figures and tables: sparsity-vs-PSNR curves with seed bands, transfer
matrices, layer-wise sparsity, FFT comparisons, Tables 2 and 4, and a report page.

Installed as ``lipsweep.analysis`` (the repository keeps it in the top-level ``analysis/`` folder). It
reads any MLflow tracking URI (local store or server) and needs nothing else: not the trunk store, not Ray.
``lipsweep analyze`` (and the end of ``lipsweep run``) import it lazily; no other lipsweep module imports it.
What an experiment's report shows is its entry in ``recipes.RECIPES`` (also ``report.RECIPES``): its parts, its
primary axis (the paper's legend: ``lines`` lays the curves out by it), its main arm and the paper's claim that
``reading`` sets the measured result against; ``report`` runs the parts, which share ``inputs`` and ``curves``
and never import ``report``.
"""
