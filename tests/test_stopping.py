import pytest

from lipsweep.core.errors import ConfigError
from lipsweep.stopping.rule import StopRule


@pytest.mark.parametrize("losses,k,tol,fired,chosen", [
    ([5, 4, 3, 4, 5, 6, 7], 3, 0.0, 5, 2),           # three rises from the minimum at level 2
    ([5, 4, 3, 4, 5, 6, 7], 1, 0.0, 3, 2),
    ([5, 4, 3, 4, 5, 6, 7], 2, 0.0, 4, 2),
    ([5, 4, 3, 4, 5, 6, 7], 4, 0.0, 6, 2),
    ([5, 4, 3, 2, 1], 1, 0.0, None, None),           # monotone decrease never fires
    ([3, 3, 3, 3, 3], 1, 0.0, None, None),           # plateau: ties are not rises
    ([3, 4, 4, 5, 6, 7], 3, 0.0, 5, 2),              # a tie breaks the run: the rises restart after it
    ([3, 4, 5, 5, 6], 3, 0.0, None, None),
    ([1.0, 1.005, 1.01, 1.02, 1.1, 1.2, 1.3], 3, 0.02, 6, 3),  # small rises within tolerance don't count
    ([2, 1, 2, 1, 2, 3], 2, 0.0, 5, 3),
])
def test_rule_fires_where_k_rises_complete_and_chooses_where_they_began(losses, k, tol, fired, chosen):
    rule = StopRule(k=k, tolerance=tol)
    assert rule.fired_at(losses) == fired
    assert rule.chosen(losses) == chosen


def test_offset_shifts_and_is_clamped():
    losses = [5, 4, 3, 4, 5, 6]
    assert StopRule(k=3, offset=1).chosen(losses) == 3
    assert StopRule(k=3, offset=-5).chosen(losses) == 0
    assert StopRule(k=3, offset=9).chosen(losses) == 5


@pytest.mark.parametrize("kwargs,field", [({"k": 0}, "stop.k"), ({"tolerance": -0.1}, "stop.tolerance"),
                                          ({"offset": 1.5}, "stop.offset")])
def test_bad_rules_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        StopRule(**kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("losses", [[5, 4, 3, 3, 2, 1, 1, 0.5], [1.0] * 6, [9, 8, 7, 6, 5, 4, 3, 2, 1]])
def test_no_rule_fires_on_a_loss_that_never_rises(losses):
    """Why stop-search may say "no rule can fire": smoothing a non-increasing loss keeps it non-increasing."""
    from lipsweep.stopping.replay import GRID

    assert all(rule.fired_at(losses) is None for rule in GRID)
    assert StopRule(k=1).fired_at([*losses, losses[-1] * 1.001]) == len(losses)  # one rise: the soonest rule fires


def test_the_rule_in_words():
    assert StopRule(k=3).describe() == ("stop after k=3 rises in a row of the IMP loss; return the level before the "
                                        "first rise")
    assert StopRule(k=2, tolerance=0.015, offset=-1, smooth=2).describe() == (
        "stop after k=2 rises of more than 1.5% in a row of the IMP loss (averaged over the last 2 levels); return "
        "the level before the first rise, shifted by -1 level")
