"""Random draws that depend on the run's seed and the epoch alone, so a resumed run draws what an
uninterrupted one does (the data's shuffles, the models' noise and re-initialisations)."""

RANK_STRIDE = 0x9E3779B97F4A7C15  # odd, far from any seed * 1_000_003 + epoch: ranks never share a seed


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's random draws, from the run's seed and the epoch alone; under DDP each rank
    (`rank` > 0) gets its own, so the ranks draw different noise. Rank 0's is the single-process seed."""
    return (seed * 1_000_003 + epoch + rank * RANK_STRIDE) % 2**63
