"""The paper's "fc-only" evaluation: frozen features, L2-regularised logistic regression.

Features are the backbone's pooled activations (the classifier's input), averaged over the
10 test-protocol clips of each video, then standardised. A multinomial logistic regression,

    minimise  mean cross-entropy(W z + b, y)  +  l2 / 2 * ||W||^2    (z: standardised features)

is fitted on them with full-batch L-BFGS (strong Wolfe line search), and its ``W``, ``b``
become the model's classifier, so the result is an ordinary r21d checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from r21d.errors import UnusableDataError
from r21d.infer.runtime import RuntimeOptions
from r21d.spec import ModelSpec
from r21d.train.data import VideoRecord
from r21d.train.evaluate import score_records
from r21d.train.model_setup import classifier


def extract_features(
    model: nn.Module,
    records: Sequence[VideoRecord],
    spec: ModelSpec,
    *,
    num_clips: int = 10,
    device: str = "cpu",
    runtime: RuntimeOptions | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """Clip-averaged pooled features ``(V, feature_dim)`` and the indices of the records used,
    from the scoring core (the same features ``r21d extract`` writes).

    Undecodable videos are logged and left out.
    """
    features, used = [], []
    results = score_records(
        model, records, spec, num_clips=num_clips, device=device, runtime=runtime,
        progress=progress, desc="features",
    )  # fmt: skip
    for i, result in enumerate(results):
        if result.ok:
            features.append(torch.from_numpy(result.video_feature))
            used.append(i)
    if not features:
        raise UnusableDataError("no video could be decoded for feature extraction")
    return torch.stack(features), used


def fit_logistic_regression(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 1e-3,
    steps: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(num_classes, D)`` and bias of the L2-regularised multinomial LR (L-BFGS).

    Features are standardised (zero mean, unit variance per dimension over the training set)
    so L-BFGS sees a well-conditioned problem and ``l2`` means the same for any feature scale;
    the returned weight and bias have the standardisation folded in, so they apply to raw
    features: ``logits = features @ weight.T + bias``.
    """
    raw = features.double()
    mean = raw.mean(0)
    scale = raw.std(0) if len(raw) > 1 else torch.ones_like(mean)
    scale = scale.clamp_min(1e-6 * float(scale.max().clamp_min(1e-12)))
    x = (raw - mean) / scale
    y = targets.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    folded = weight.detach() / scale
    return folded.float(), (bias.detach() - folded @ mean).float()


def linear_probe(
    model: nn.Module,
    records: Sequence[VideoRecord],
    spec: ModelSpec,
    *,
    l2: float = 1e-3,
    steps: int = 100,
    num_clips: int = 10,
    device: str = "cpu",
    runtime: RuntimeOptions | None = None,
    progress: bool = False,
) -> nn.Module:
    """Fit the classifier of ``model`` by logistic regression on its frozen features.

    A multi-label video contributes one example per label.
    """
    features, used = extract_features(
        model, records, spec, num_clips=num_clips, device=device, runtime=runtime,
        progress=progress,
    )  # fmt: skip
    rows = [(row, label) for row, i in enumerate(used) for label in records[i].labels]
    x = features[[r for r, _ in rows]]
    y = torch.tensor([label for _, label in rows])
    weight, bias = fit_logistic_regression(x, y, spec.num_classes, l2=l2, steps=steps)
    with torch.no_grad():
        classifier(model).weight.copy_(weight)
        classifier(model).bias.copy_(bias)
    return model
