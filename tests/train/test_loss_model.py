"""Loss values against hand computations, the gather, and the network's shapes."""

import math

import pytest
import torch
import torchvision

from doppeltrain.config import LossConfig, ModelConfig, OptimConfig, TrainConfig
from doppeltrain.config_checks import TrainError, validate_config
from doppeltrain.distributed import gather_with_grad
from doppeltrain.loss import alignment_loss, contrastive_loss, info_nce_loss, uniformity_loss
from doppeltrain.model import build_model
from doppeltrain.schedule import base_learning_rate, build_optimizer, learning_rate_at, milestone_steps


def unit(*rows):
    x = torch.tensor(rows, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def test_alignment_is_mean_squared_distance_of_pairs():
    x = unit([1.0, 0.0], [0.0, 1.0])
    y = unit([0.0, 1.0], [0.0, 1.0])
    # Pair 0 is 90 degrees apart (||d||^2 = 2), pair 1 identical (0): mean 1.
    assert alignment_loss(x, y).item() == pytest.approx(1.0)
    # alpha = 1: mean of distances, sqrt(2) / 2.
    assert alignment_loss(x, y, alpha=1.0).item() == pytest.approx(math.sqrt(2) / 2)


def test_uniformity_is_log_mean_gaussian_potential_over_distinct_pairs():
    x = unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    t = 2.0
    # Squared distances: (0,1) 2, (0,2) 4, (1,2) 2.
    expected = math.log((math.exp(-t * 2) + math.exp(-t * 4) + math.exp(-t * 2)) / 3)
    assert uniformity_loss(x, t).item() == pytest.approx(expected)
    # Wang & Isola's formulation with pdist agrees on random embeddings.
    z = torch.nn.functional.normalize(torch.randn(16, 8, dtype=torch.float64), dim=1)
    reference = torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()
    assert uniformity_loss(z, t).item() == pytest.approx(reference.item(), abs=1e-10)


def test_contrastive_loss_weights_alignment_and_averages_view_uniformities():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    cfg = LossConfig(align_weight=0.5, unif_weight=2.0)
    total, alignment, uniformity = contrastive_loss(a, b, cfg)
    assert alignment.item() == pytest.approx(alignment_loss(a, b).item())
    assert uniformity.item() == pytest.approx(((uniformity_loss(a) + uniformity_loss(b)) / 2).item())
    assert total.item() == pytest.approx(0.5 * alignment.item() + 2.0 * uniformity.item())


def test_info_nce_is_the_symmetric_cross_entropy_of_cosine_logits():
    x = unit([1.0, 0.0], [0.0, 1.0])
    # Each view's partner has cosine 1, the other view cosine 0: at temperature 0.5 the
    # cross-entropy is -log(e^2 / (e^2 + e^0)) in both directions.
    assert info_nce_loss(x, x, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # Asymmetric logits: the mean of the row-wise and column-wise cross-entropies.
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    logits = a @ b.T / 0.2
    rows = -torch.log_softmax(logits, dim=1).diagonal().mean()
    columns = -torch.log_softmax(logits, dim=0).diagonal().mean()
    assert info_nce_loss(a, b, 0.2).item() == pytest.approx(((rows + columns) / 2).item())


def test_the_infonce_objective_trains_on_info_nce_and_still_reports_alignment_and_uniformity():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    b = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    total, alignment, uniformity = contrastive_loss(a, b, LossConfig(objective="infonce", temperature=0.3))
    assert total.item() == pytest.approx(info_nce_loss(a, b, 0.3).item())
    assert alignment.item() == pytest.approx(alignment_loss(a, b).item())
    assert uniformity.item() == pytest.approx(((uniformity_loss(a) + uniformity_loss(b)) / 2).item())
    assert not alignment.requires_grad and not uniformity.requires_grad
    total.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert LossConfig().objective == "align_uniform"  # the paper's loss stays fit's default


@pytest.mark.parametrize("field, value, message", [("objective", "triplet", "unknown --loss 'triplet'"), ("temperature", 0.0, "--temperature must be a positive finite number")])
def test_a_bad_loss_option_is_refused_before_training(field, value, message):
    cfg = TrainConfig()
    cfg.data.datasets = ["somewhere"]
    setattr(cfg.loss, field, value)
    with pytest.raises(TrainError, match=message):
        validate_config(cfg)


def test_loss_gradient_is_finite_for_identical_embeddings():
    # At initialisation a network can map pairs (and whole batches) to one point.
    x = torch.nn.functional.normalize(torch.ones(4, 3), dim=1).requires_grad_(True)
    total, _, _ = contrastive_loss(x, x.clone(), LossConfig())
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_gather_in_one_process_is_the_tensor_itself_with_its_gradient():
    x = torch.randn(3, 2, requires_grad=True)
    gathered = gather_with_grad(x)
    assert gathered is x
    gathered.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 2))


def test_resnet18_is_torchvisions_with_a_one_channel_conv1():
    model = build_model(ModelConfig())
    conv1 = model.conv1
    assert (conv1.in_channels, conv1.out_channels) == (1, 64)
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.bias) == ((7, 7), (2, 2), (3, 3), None)
    reference = torchvision.models.resnet18(num_classes=512)
    reference.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[key].shape == theirs[key].shape for key in ours)
    reference.load_state_dict(ours)  # a checkpoint's weights load into plain torchvision
    model.eval()
    output = model(torch.randn(2, 1, 96, 64))
    assert output.shape == (2, 512)


def test_small_model_has_the_configured_width_and_embedding_size():
    model = build_model(ModelConfig(model="small", width=8, embedding_dim=32))
    assert model.conv1.out_channels == 8 and model.conv1.in_channels == 1
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [1, 1, 1, 1]
    assert model.layer4[0].conv2.out_channels == 64
    model.eval()
    assert model(torch.randn(3, 1, 96, 64)).shape == (3, 32)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig(model="vgg"))


def test_learning_rate_rule():
    sgd, adam = OptimConfig(), OptimConfig(optimizer="adam")
    assert base_learning_rate(sgd, 768, 1) == pytest.approx(0.36)  # the reference: 0.12 * (768 // 256)
    assert base_learning_rate(sgd, 768, 4) == pytest.approx(1.44)
    assert base_learning_rate(sgd, 32, 1) == pytest.approx(0.015)  # linear below 256, not 0
    assert base_learning_rate(adam, 768, 2) == pytest.approx(1e-3)
    assert base_learning_rate(OptimConfig(lr=0.5), 768, 2) == 0.5


def schedule(epochs: int, steps_per_epoch: int, optim: OptimConfig = OptimConfig()) -> list[float]:
    """The learning rate of every step of a run."""
    total = epochs * steps_per_epoch
    milestones = milestone_steps(total, optim.milestones)
    return [learning_rate_at(step, 0.36, milestones, optim.gamma) for step in range(total)]


def test_schedule_of_the_reference_run_drops_at_its_epoch_milestones():
    # 200 epochs of 117 steps: the reference's MultiStepLR drops after epochs 155, 170, 185.
    lrs = schedule(200, 117)
    assert milestone_steps(200 * 117, OptimConfig().milestones) == [18135, 19890, 21645]
    assert [155 * 117, 170 * 117, 185 * 117] == [18135, 19890, 21645]
    drops = [step for step in range(1, len(lrs)) if lrs[step] < lrs[step - 1]]
    assert drops == [18135, 19890, 21645]
    assert lrs[0] == pytest.approx(0.36) and lrs[18134] == pytest.approx(0.36)
    assert lrs[18135] == pytest.approx(0.036) and lrs[21645] == pytest.approx(0.00036) and lrs[-1] == pytest.approx(0.00036)


@pytest.mark.parametrize("epochs", [1, 2, 200])
def test_schedule_keeps_its_shape_at_any_run_length(epochs):
    # The old per-epoch milestones collapsed short runs: int(0.775 * 1) = 0, so a
    # one-epoch run trained at lr x 0.001 throughout.
    steps_per_epoch = 40
    lrs = schedule(epochs, steps_per_epoch)
    total = epochs * steps_per_epoch
    fractions = [sum(lr == pytest.approx(0.36 * 0.1**k) for lr in lrs) / total for k in range(4)]
    assert fractions == pytest.approx([0.775, 0.075, 0.075, 0.075], abs=1.5 / total)


def test_optimizers_follow_the_reference():
    cfg = TrainConfig()  # SGD, batch 768
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optim, 0.36)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["weight_decay"] == pytest.approx(1e-6) and optimizer.defaults["momentum"] == 0
    adam = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(optimizer="adam"), 1e-3)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == pytest.approx(1e-4)
