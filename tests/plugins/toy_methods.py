"""A toy mask method registered from outside lipsweep: keep the weights with the largest |dL/dw| at theta_0.

It is a plugin as a user would write one: a score function and one ``METHODS.register`` call. Experiments
name this file under ``plugins:``; the driver and every Ray worker import it before reading trial configs.
"""

from __future__ import annotations

import copy

from lipsweep.priors import conv_weights
from lipsweep.pruning.methods import METHODS, MaskRequest, score_method


def largest_gradient(req: MaskRequest) -> dict:
    """|dL/dw| of the task loss at theta_0, summed over the chain's images."""
    scores: dict = {}
    for i, problem in enumerate(req.problems):
        net = copy.deepcopy(req.model()).train()
        problem.loss(net(req.input_for(i))).backward()
        for name, w in conv_weights(net).items():
            scores[name] = scores.get(name, 0) + w.grad.detach().abs().cpu()
    return scores


METHODS.register("largest_gradient", score_method(largest_gradient))
