"""``vq``: vector quantisation — compressed tokens clustered into centroids per head.

Weighted k-means (Lloyd) on the position-free keys of each KV head: at most
``min(num_clusters, capacity)`` centroids, each token weighted by the tokens it already stands
for. A centroid's key and value are the count-weighted means of its members' keys and values
and it carries ``c`` = its member count. Attention gives it the logit ``q.k_bar + log c``: since
``sum_i exp(q.k_i) >= c exp(q.k_bar)`` (Jensen), the centroid weighs like its ``c`` members
would if they all sat at their mean key, instead of like one token (needs the attention hook).

Initial centroids are the heaviest points (earlier centroids, then tokens in order), so
repeated compressions refine the same clusters; ``iterations`` Lloyd steps follow.
"""

from __future__ import annotations

import torch

from .base import Compressor, PointSet, compose, pack, weighted_means


def kmeans_assignment(
    keys: torch.Tensor, weights: torch.Tensor, clusters: torch.Tensor, iterations: int,
) -> torch.Tensor:
    """Cluster of every point ``(H, n)`` after weighted Lloyd iterations; head ``h`` uses
    ``clusters[h]`` centroids (``keys`` ``(H, n, D)``, ``weights`` ``(H, n)``)."""
    width = int(clusters.max())
    data = keys.float()
    init = torch.argsort(weights, dim=-1, descending=True, stable=True)[:, :width]
    centroids = data.gather(1, init.unsqueeze(-1).expand(-1, -1, data.shape[-1]))
    inactive = torch.arange(width, device=keys.device) >= clusters[:, None]  # (H, K)
    assignment = None
    for _ in range(iterations + 1):
        distance = torch.cdist(data, centroids).masked_fill(inactive[:, None, :], float("inf"))
        assignment = distance.argmin(dim=-1)
        sums = centroids.new_zeros(centroids.shape).scatter_add_(
            1, assignment.unsqueeze(-1).expand_as(data), data * weights.unsqueeze(-1))
        mass = weights.new_zeros(weights.shape[0], width).scatter_add_(1, assignment, weights)
        filled = (mass > 0).unsqueeze(-1)
        centroids = torch.where(filled, sums / mass.clamp(min=1e-12).unsqueeze(-1), centroids)
    return assignment


class VQCompressor(Compressor):
    def __init__(self, num_clusters: int, iterations: int = 4):
        self.num_clusters = num_clusters
        self.iterations = iterations

    def compress(self, points: PointSet, capacity: torch.Tensor) -> PointSet:
        clusters = capacity.clamp(max=self.num_clusters)
        present = points.counts > 0
        if bool((present.sum(dim=-1) <= clusters).all()):
            tier, self.last_assignment = pack(points, present)  # nothing to merge yet
            return tier
        assignment = kmeans_assignment(points.keys, points.counts, clusters, self.iterations)
        merged = weighted_means(points, assignment, int(clusters.max()))
        active = torch.arange(merged.size, device=clusters.device) < clusters[:, None]  # heads with capacity 0 get none
        tier, slot_of_merged = pack(merged, (merged.counts > 0) & active)
        self.last_assignment = compose(torch.where(present, assignment, -1), slot_of_merged)
        return tier
