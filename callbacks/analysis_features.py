"""Feature space of clean and adversarial samples (Ma et al. 2020, Fig. 9): a 2-D t-SNE (van der Maaten
and Hinton 2008, scikit-learn) of penultimate-layer features."""

from __future__ import annotations

import torch
from torch import Tensor


def tsne_embedding(features: Tensor, seed: int = 0) -> Tensor:
    """(M, 2) t-SNE embedding of (M, D) features, PCA-initialised and seeded; perplexity min(30, (M - 1) / 3),
    as t-SNE needs perplexity < M."""
    from sklearn.manifold import TSNE  # scikit-learn loads in about a second: only when a t-SNE is made

    count = len(features)
    if count < 4:
        raise ValueError(f"t-SNE needs at least 4 samples, got {count}")
    tsne = TSNE(2, perplexity=min(30.0, (count - 1) / 3), init="pca", random_state=seed)
    return torch.from_numpy(tsne.fit_transform(features.detach().double().cpu().numpy())).float()


def neighbour_agreement(embedding: Tensor, groups: Tensor, partners: Tensor | None = None) -> float:
    """Share of points whose nearest other point in the embedding is of the same group (clean or adversarial),
    a point's ``partners[i]`` (its own clean or adversarial counterpart) left out: about 0.5 when the groups
    mix, 1 when they are separated."""
    distances = torch.cdist(embedding.double(), embedding.double())
    distances.fill_diagonal_(float("inf"))
    if partners is not None:
        distances[torch.arange(len(distances)), partners] = float("inf")
    return float((groups[distances.argmin(dim=1)] == groups).float().mean())
