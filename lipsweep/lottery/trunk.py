"""The trunk of a chain: its degraded images, theta_0 and inputs z, all fixed by its dense config.

Every chain and evaluation with the same dense key shares one trunk (and the dense level 0 fitted from it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lipsweep.core.errors import ConfigError
from lipsweep.fitting.fit import prepare
from lipsweep.lottery.chain import ChainConfig
from lipsweep.priors import build_model, make_input
from lipsweep.problems.tasks import Problem, stable_seed

if TYPE_CHECKING:
    import torch

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1


@dataclass
class Trunk:
    problems: list[Problem]
    targets: list[Problem]  # what IMP fits: the observations, or A(clean) for imp_target "clean"
    inputs: list[torch.Tensor]  # one shared z, or one per image
    theta0: dict[str, torch.Tensor]
    cfg: ChainConfig

    def model(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        net = build_model(self.cfg.run.model, self.cfg.run.seed)
        net.load_state_dict(state)
        return net.to(self.inputs[0].device)


def build_trunk(cfg: ChainConfig) -> Trunk:
    """Images, observations, theta_0 and z for ``cfg``. Several images (Algorithm 2) share one network; with
    ``shared_z`` they share one z too (the paper), which needs one size; otherwise each image gets its own z at
    its own size (the hourglass is fully convolutional), so images of different sizes work."""
    preps = [prepare(replace(cfg.run, problem=replace(cfg.run.problem, image=img))) for img in cfg.images]
    problems = [p.problem for p in preps]
    shapes = sorted({tuple(p.clean.shape[2:]) for p in problems})
    if cfg.shared_z and len(shapes) > 1:
        raise ConfigError("shared_z", f"images of different sizes {shapes} after resize and crop cannot share one z; "
                                      "set shared_z: false (one z per image at its own size)")
    inputs = [preps[0].z] if cfg.shared_z else [preps[0].z] + [
        make_input(cfg.run.model, *p.problem.clean.shape[2:], stable_seed("input", cfg.run.seed, i)).to(
            preps[0].z.device) for i, p in enumerate(preps[1:], start=1)]
    targets = problems if cfg.imp_target == "observation" else [
        replace(p, observation=p.operator(p.clean)) for p in problems]
    theta0 = {k: v.detach().clone() for k, v in preps[0].model.state_dict().items()}
    return Trunk(problems, targets, inputs, theta0, cfg)
