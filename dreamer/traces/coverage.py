"""What a train/held-out split of a session cannot vouch for, as warnings for a run's summary."""

from __future__ import annotations

import numpy as np

from dreamer.traces.trace import Trace

REWARD_KINDS = 10  # a reward with at most this many distinct values (to 6 digits) pays "kinds" of reward


def steps(count: int, split: str) -> str:
    """`1 held-out step pays`, `3 held-out steps pay`."""
    return f"{count:,} {split} step pays" if count == 1 else f"{count:,} {split} steps pay"


def coverage_warnings(train: Trace, held_out: Trace) -> list[str]:
    """What the split cannot vouch for: a training split that never terminates (the sim then never ends an
    episode), held-out episodes that never terminate (the termination figures test nothing) and, for a reward of
    a few distinct values (a step cost, a goal's bonus), a kind of reward one split pays and the other never
    does: held out only, the sim cannot have learned it; trained on only, the held-out figures do not test it."""
    warnings = []
    if not train.terminated.any():
        seen = f", though {int(held_out.terminated.sum()):,} held-out steps did" if held_out.terminated.any() else ""
        warnings.append(f"no training episode terminated{seen}: the sim was not shown how an episode ends")
    elif not held_out.terminated.any():
        warnings.append("no held-out episode terminated: the termination figures test nothing")
    trained, held = (np.round(split.reward.astype(np.float64), 6) for split in (train, held_out))
    if len(np.union1d(trained, held)) <= REWARD_KINDS:
        for value in np.setdiff1d(held, trained):
            warnings.append(f"{steps(int((held == value).sum()), 'held-out')} {value:g}, a reward no training step "
                            "pays: the sim cannot have learned it")
        for value in np.setdiff1d(trained, held):
            warnings.append(f"{steps(int((trained == value).sum()), 'training')} {value:g}, a reward no held-out step "
                            "pays: the held-out figures do not test the sim's")
    return warnings
