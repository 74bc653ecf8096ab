"""Random draws that depend on the run's seed and the epoch alone, so a resumed run draws what an
uninterrupted one does (the data's shuffles, the models' noise and re-initialisations)."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random draws, from the run's seed and the epoch alone."""
    return (seed * 1_000_003 + epoch) % 2**63
