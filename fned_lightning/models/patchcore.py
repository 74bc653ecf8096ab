"""PatchCore (Roth, Pemula, Zepeda, Schoelkopf, Brox, Gehler, CVPR 2022, arXiv 2106.08265): a memory bank
of locally aware normal patch features, thinned by greedy coreset selection; a test patch's distance to
its nearest bank feature is its anomaly, the image's score the largest, reweighted (the paper's eq. 7)."""

import math

import torch

from fned_lightning.errors import InputError, check_number
from fned_lightning.models.features import FeatureDetector
from fned_lightning.networks.backbones import LITE0

BANK_CHUNK = 4096  # bank rows per distance block at test: memory is query rows x BANK_CHUNK floats a block
QUERY_CHUNK = 8192  # query rows per block (not when exporting: the graph's batch size is left free)


def greedy_coreset(features: torch.Tensor, size: int, projection_dim: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of `size` rows of `features` (M x C) chosen by greedy k-center selection (the paper's Alg. 1):
    from a random first row, each next row is the one farthest from those chosen, distances taken on a
    random Gaussian projection to `projection_dim` dimensions (Johnson-Lindenstrauss), all on the rows' device."""
    if projection_dim < features.shape[1]:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        features = features @ projection.to(features)
    first = int(torch.randint(len(features), (1,), generator=generator))
    chosen = torch.empty(size, dtype=torch.long, device=features.device)
    chosen[0] = first
    # |f - c|^2 = |f|^2 - 2 f.c + |c|^2: one vector-matrix product a step, no M x C temporary; against the
    # transposed rows (C x M), which reads memory in order (3x faster than rows x vector on this CPU)
    norms, columns = features.pow(2).sum(1), features.T.contiguous()
    nearest = norms - 2 * features[first] @ columns + norms[first]  # squared distance to the nearest chosen row
    for i in range(1, size):
        chosen[i] = nearest.argmax()  # stays on the device: no wait per step
        row = chosen[i]
        torch.minimum(nearest, norms - 2 * features[row] @ columns + norms[row], out=nearest)
    return chosen


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 for rows of a (M x C) and b (K x C), as matrix products (exported to ONNX as such)."""
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp_min(0)


class PatchCore(FeatureDetector):
    """Bank: every training patch's features (`neighbourhood` 3: each the average of its 3x3 neighbours),
    reduced to `coreset_ratio` of them by `greedy_coreset` on a `projection_dim` projection (seeded by the
    run's seed). Patch score: the distance to the nearest bank feature m*. Image score: s* = the largest
    patch score, of test patch m_test, times w = 1 - exp(s*) / sum exp(|m_test - m|) over the `reweight_neighbours`
    bank features m nearest m* (m* among them): the paper's, which scores higher where m* is itself far from
    its bank neighbours (a rare normal occurrence)."""

    FITTED = ("memory_bank",)

    def __init__(
        self,
        backbone: str = LITE0,
        strides: tuple[int, ...] = (8, 16),
        neighbourhood: int = 3,
        coreset_ratio: float = 0.01,
        projection_dim: int = 128,
        reweight_neighbours: int = 9,
        **evaluation,
    ):
        super().__init__(backbone, strides, neighbourhood, **evaluation)
        self.save_hyperparameters(ignore=["backbone_weights"])  # how it was built, not what it is
        check_number("model.coreset_ratio", coreset_ratio, 0, 1, above_low=True)
        check_number("model.projection_dim", projection_dim, 1, integer=True)
        check_number("model.reweight_neighbours", reweight_neighbours, 1, integer=True)
        self.register_buffer("memory_bank", torch.empty(0))
        self.patches: list[torch.Tensor] = []  # while fitting (not kept)

    def accumulate(self, features: torch.Tensor) -> None:
        self.patches.append(features.permute(0, 2, 3, 1).flatten(0, 2))

    def finish_fit(self) -> None:
        patches, self.patches = torch.cat(self.patches), []
        neighbours = self.hparams.reweight_neighbours
        if len(patches) < neighbours:
            raise InputError(
                f"{len(patches)} training patch features are fewer than model.reweight_neighbours={neighbours}: "
                f"give more training images or a smaller model.reweight_neighbours"
            )
        # room for b neighbours
        size = min(len(patches), max(math.ceil(self.hparams.coreset_ratio * len(patches)), neighbours))
        generator = torch.Generator().manual_seed(self.run_seed)
        chosen = greedy_coreset(patches, size, self.hparams.projection_dim, generator) if size < len(patches) else None
        self.memory_bank = patches if chosen is None else patches[chosen]

    def nearest(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's squared distances to its k nearest bank features, nearest first, and their indices:
        block by block of queries and of the bank, so memory stays QUERY_CHUNK x BANK_CHUNK floats however
        large the batch and the bank."""
        if len(queries) > QUERY_CHUNK and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            found = [self.nearest(block, k) for block in queries.split(QUERY_CHUNK)]
            return torch.cat([d for d, _ in found]), torch.cat([i for _, i in found])
        best, best_index = None, None
        for start in range(0, self.memory_bank.shape[0], BANK_CHUNK):
            block = self.memory_bank[start : start + BANK_CHUNK]
            distance, index = squared_distances(queries, block).topk(min(k, len(block)), 1, largest=False)
            if best is not None:  # the k nearest of those found so far and this block's
                distance, index = torch.cat([best, distance], 1), torch.cat([best_index, index + start], 1)
                distance, kept = distance.topk(k, 1, largest=False)
                index = index.gather(1, kept)
            best, best_index = distance, index
        return best, best_index

    def distances(self, features: torch.Tensor):
        n, _, height, width = features.shape
        patches = features.permute(0, 2, 3, 1).flatten(0, 2)
        squared, index = self.nearest(patches, 1)
        patch_scores = squared.sqrt().view(n, height * width)
        worst = patch_scores.argmax(1)  # m_test of each image
        m_test = patches.view(n, height * width, -1)[torch.arange(n), worst]
        m_star = self.memory_bank[index.view(n, height * width)[torch.arange(n), worst]]
        neighbours = self.nearest(m_star, self.hparams.reweight_neighbours)[1]  # m* is its own nearest
        to_neighbours = (m_test[:, None] - self.memory_bank[neighbours]).pow(2).sum(2).sqrt()
        largest = patch_scores.amax(1)  # s* = |m_test - m*|
        weight = 1 - torch.exp(largest - torch.logsumexp(to_neighbours, 1))  # 1 - exp(s*) / sum exp(|m_test - m|)
        return patch_scores.view(n, height, width), weight * largest
