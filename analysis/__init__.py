"""Turns recorded sweeps into the paper's figures and tables (transfer matrices, layer-wise sparsity,
sparsity-vs-PSNR curves with seed bands). Lands with the analysis issue; kept at the top level as the
mandated layout asks, so it can import ``lipsweep`` but ``lipsweep`` never imports it."""
