"""Model set-up: fine-tuning from a checkpoint, fc-only, and the logistic-regression probe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from r21d.checkpoint import model_tensors, save_checkpoint
from r21d.models import build_model
from r21d.train.linear_probe import fit_logistic_regression
from r21d.train.model_setup import build_training_model, set_train_mode, training_spec


@pytest.fixture
def source_checkpoint(tiny_spec, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_spec)
    with torch.no_grad():  # BN statistics a fresh model would not have
        for name, t in model.named_buffers():
            if name.endswith("running_mean"):
                t.uniform_(-0.5, 0.5)
    return save_checkpoint(model, tiny_spec, tmp_path / "src.safetensors"), model


def test_fine_tuning_loads_the_backbone_and_starts_a_new_classifier(source_checkpoint):
    path, source = source_checkpoint
    spec = training_spec(
        arch="ignored", label_names=["a", "b", "c"], clip_len=16, init_from=str(path)
    )
    assert (spec.num_classes, spec.clip_len, spec.width) == (3, 16, 0.125)
    assert spec.provenance["fine_tuned_from"] == str(path)
    model = build_training_model(spec, init_from=str(path))
    mine, theirs = model_tensors(model), model_tensors(source)
    for key, value in theirs.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(mine[key], value, rtol=0, atol=0)
    assert model.fc.weight.shape == (3, source.fc.weight.shape[1])
    fc = model.fc.weight.detach()
    assert 0.005 < float(fc.std()) < 0.015 and not model.fc.bias.detach().any()
    assert all(p.requires_grad for p in model.parameters())


def test_fc_only_trains_the_classifier_and_keeps_bn_statistics(source_checkpoint, tiny_spec):
    path, _ = source_checkpoint
    model = build_training_model(tiny_spec, init_from=str(path), finetune="fc_only")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    before = {k: v.clone() for k, v in model_tensors(model).items()}
    set_train_mode(model, "fc_only")
    assert model.training and model.fc.training and not model.stem[1].training
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    x = torch.randn(2, 3, 8, 112, 112)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    optimizer.step()
    after = model_tensors(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # BN running statistics untouched


def test_fc_only_needs_a_checkpoint(tiny_spec):
    with pytest.raises(ValueError, match="init_from"):
        build_training_model(tiny_spec, finetune="fc_only")
    with pytest.raises(ValueError, match="finetune must be"):
        build_training_model(tiny_spec, finetune="partial")


def test_logistic_regression_reaches_the_regularised_optimum():
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 3
    y = torch.arange(3).repeat(40)
    x = centres[y] + torch.randn(120, 16)
    weight, bias = fit_logistic_regression(x, y, 3, l2=1e-2, steps=200)
    assert ((x @ weight.T + bias).argmax(1) == y).float().mean() > 0.95
    # first-order optimality of the L2-regularised objective on standardised features
    mean, scale = x.double().mean(0), x.double().std(0)
    z = (x.double() - mean) / scale
    w = (weight.double() * scale).requires_grad_()  # the weights before folding
    b = (bias.double() + weight.double() @ mean).requires_grad_()
    loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * 1e-2 * w.pow(2).sum()
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-4 and float(b.grad.abs().max()) < 1e-4
    # a stronger penalty gives smaller weights
    strong, _ = fit_logistic_regression(x, y, 3, l2=1.0, steps=200)
    assert strong.norm() < weight.norm()
