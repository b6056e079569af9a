"""Channel pruning: lossless dead-channel removal against the unpruned model, filter pruning's sizes and limits,
and pruned models through save/load and ONNX Runtime."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lprnet.compile.onnx_export import export_onnx, fold_channel_selections
from lprnet.model.checkpoint import load_model, save_model
from lprnet.model.data import list_images, load_folder
from lprnet.model.network import LPRNet, LPRNetConfig
from lprnet.optimize.prune import (
    ACTIVATION,
    CRITERIA,
    GROUPS,
    MIN_CHANNELS,
    channel_scores,
    group_width,
    prune_channels,
    remove_dead_channels,
)
from lprnet.runtime.metrics import count_macs, count_params
from lprnet.runtime.predictor import load_predictor

from .conftest import as_input


def logits(model: LPRNet, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(x[i:i + batch]) for i in range(0, len(x), batch)])


def total_width(model: LPRNet) -> int:
    return sum(group_width(model, g) for g in GROUPS)


def kill_channels(model: LPRNet) -> None:
    """Make channels of every kind dead, in place. Expected: 41 removed over 2 passes, 3 kept."""
    b = model.backbone
    with torch.no_grad():
        def silence(conv, channels, bias):
            conv.weight[channels] = 0
            conv.bias[channels] = bias

        # stem: 3 and 10 output relu(beta < 0) = 0 -> removable; 5 outputs ~0.5 into the context -> kept.
        silence(b[0], [3, 5, 10], 0.0)
        b[1].bias[[3, 10]], b[1].bias[5] = -1.0, 0.5
        # block1 inner channels (three spaces, one config width): a zero (a:1), an unread one (b:7) and a
        # constant 0.3 into an unpadded 1x1 conv (c:2) go; a:4 is a constant 1 into a zero-padded conv -> kept.
        inner = b[4].block
        silence(inner[0], [1], -1.0)
        silence(inner[0], [4], 1.0)
        inner[4].weight[:, 7] = 0
        silence(inner[4], [2], 0.3)
        # block1 0 (pooled) and 1 (not) output zero.
        silence(b[4].block[6], [0, 1], 0.0)
        b[5].bias[[0, 1]] = -1.0
        # block2 0..19: BN scale 0, constant 0.2 folded into block3's 1x1 conv; 30 is read by nothing.
        b[9].weight[:20], b[9].bias[:20] = 0.0, 0.2
        b[11].block[0].weight[:, 30] = 0
        # block3 8 (pooled, position 2 of every 4th) and 9 output zero; 12 is a constant 0.4 in the context -> kept.
        silence(b[11].block[6], [8, 9], 0.0)
        b[12].bias[[8, 9]] = -1.0
        b[12].weight[12], b[12].bias[12] = 0.0, 0.4
        # head 0..9: constant 0.3 folded into the (13,1) conv. 20 reads only block3's channel 8, so it becomes
        # constant once that is removed: the second pass removes it.
        b[17].weight[:10], b[17].bias[:10] = 0.0, 0.3
        b[16].weight[20] = 0
        b[16].weight[20, 2] = 0.7


def test_dead_channel_removal_is_exact_and_removes_every_removable_kind(random_model, images_and_labels):
    x = as_input(images_and_labels[0])
    kill_channels(random_model)
    before_params, before_macs = count_params(random_model), count_macs(random_model)
    pruned, report = remove_dead_channels(random_model)

    torch.testing.assert_close(logits(pruned, x), logits(random_model, x), rtol=0, atol=1e-5)
    assert report["dead_channels_removed"] == 41 == total_width(random_model) - total_width(pruned)
    assert report["dead_channels_kept"] == 3
    assert report["iterations"] == 2
    assert (report["dead_kept_stem"], report["dead_kept_block1_inner_a"], report["dead_kept_block3"]) == (1, 1, 1)
    widths = {g.name: group_width(pruned, g) for g in GROUPS}
    assert {name: widths[name] for name in ("stem", "block1", "block2", "block3", "head")} == {
        "stem": 62, "block1": 126, "block2": 235, "block3": 254, "head": 245}
    assert [widths[f"block1_inner_{s}"] for s in "abc"] == [31, 31, 31]
    assert [widths[f"block2_inner_{s}"] for s in "abc"] == [64, 64, 64]
    c = pruned.config
    # Removed context channels leave the normalisation's channel counts as they were.
    assert c.context_divisors == (64, 128, 256, 0)
    # block1's channel 0 was pooled: pool1 keeps the old 2, 4, ..., 126, moved to the front so that its selection is a
    # slice (exported as Slice, not Gather); likewise pool2 after block3's pooled channel 8.
    assert c.pool1_keep == tuple(range(63)) and c.pool2_keep == tuple(range(63))
    assert pruned.backbone[7].is_slice and pruned.backbone[14].is_slice
    assert count_params(pruned) < before_params and count_macs(pruned) < before_macs
    # A fixed point: nothing left to remove.
    assert remove_dead_channels(pruned)[1]["dead_channels_removed"] == 0


def test_a_group_of_dead_channels_keeps_one_channel_and_one_pooled(random_model, images_and_labels):
    b = random_model.backbone
    with torch.no_grad():
        # Every block1 channel pool1 selects (the even ones) is zero; the odd ones keep the context non-zero.
        b[4].block[6].weight[::2], b[4].block[6].bias[::2], b[5].bias[::2] = 0.0, 0.0, -1.0
        b[9].weight.zero_(), b[9].bias.fill_(0.2)  # block2 all a constant 0.2
    pruned, report = remove_dead_channels(random_model)
    assert report["dead_removed_block1"] == 63 and report["dead_removed_block2"] == 255
    assert pruned.config.pool1_keep == (0,) and pruned.config.block2 == 1
    x = as_input(images_and_labels[0][:4])
    torch.testing.assert_close(logits(pruned, x), logits(random_model, x), rtol=0, atol=1e-5)


def test_a_model_without_dead_channels_is_unchanged(random_model, images_and_labels):
    pruned, report = remove_dead_channels(random_model)
    assert report["dead_channels_removed"] == 0 and report["iterations"] == 0
    assert pruned.config == random_model.config
    x = as_input(images_and_labels[0][:4])
    torch.testing.assert_close(logits(pruned, x), logits(random_model, x), rtol=0, atol=0)


def test_dead_channels_of_the_published_weights_go_without_changing_a_prediction(published_weights,
                                                                                 published_images):
    model, alphabet = load_model(published_weights)
    pruned, report = remove_dead_channels(model)
    assert report["dead_channels_removed"] > 0
    assert report["dead_channels_removed"] == total_width(model) - total_width(pruned)
    assert count_params(pruned) < count_params(model) and count_macs(pruned) < count_macs(model)

    images, _ = load_folder(list_images(published_images), alphabet)
    x = as_input(images)
    expected, actual = logits(model, x), logits(pruned, x)
    assert len(x) == 498 and (actual - expected).abs().max() < 1e-4
    np.testing.assert_array_equal(actual.argmax(1).numpy(), expected.argmax(1).numpy())


def test_macs_are_what_pytorchs_flop_counter_counts(random_model):
    """count_macs counts Conv2d and Linear layers by hook (the FLOP counter's first use costs seconds): on the model
    and a pruned one, whose shapes differ per layer, it gives what PyTorch's counter gives, at 2 FLOPs per MAC."""
    from torch.utils.flop_counter import FlopCounterMode

    for model in (random_model, prune_channels(random_model, 0.5, criterion="l1", scope="global")):
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(torch.zeros(1, 3, 24, 94))
        assert count_macs(model) * 2 == counter.get_total_flops() > 0


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_pruning_shrinks_params_macs_and_file_and_round_trips(random_model, latin, images_and_labels, tmp_path,
                                                              scope, criterion):
    pruned = prune_channels(random_model, 0.3, criterion=criterion, scope=scope)
    assert count_params(pruned) < 0.8 * count_params(random_model)
    assert count_macs(pruned) < 0.8 * count_macs(random_model)
    assert total_width(pruned) <= 0.71 * total_width(random_model)

    x = as_input(images_and_labels[0][:8])
    out = logits(pruned, x)
    assert out.shape == (8, latin.num_classes, 18) and torch.isfinite(out).all()
    save_model(tmp_path / "pruned.pt", pruned, latin)
    save_model(tmp_path / "full.pt", random_model, latin)
    reloaded, _ = load_model(tmp_path / "pruned.pt", latin)
    assert reloaded.config == pruned.config
    torch.testing.assert_close(logits(reloaded, x), out, rtol=0, atol=0)
    assert (tmp_path / "pruned.pt").stat().st_size < 0.8 * (tmp_path / "full.pt").stat().st_size


def test_layer_scope_removes_the_ratio_of_every_group(random_model):
    pruned = prune_channels(random_model, 0.3, scope="layer")
    # floor(0.3 * width) of each; the three inner spaces of a block shrink together.
    expected = {"stem": 45, "block1": 90, "block2": 180, "block3": 180, "head": 180}
    expected |= {f"block{i}_inner_{s}": 23 if i == 1 else 45 for i in (1, 2, 3) for s in "abc"}
    assert {g.name: group_width(pruned, g) for g in GROUPS} == expected


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_round_to_keeps_multiples_by_putting_back_the_most_important_channels(random_model, scope):
    plain = prune_channels(random_model, 0.3, scope=scope)
    rounded = prune_channels(random_model, 0.3, scope=scope, round_to=16)
    scores = channel_scores(random_model)
    for group in GROUPS:
        full, before, after = (group_width(m, group) for m in (random_model, plain, rounded))
        # Rounded up to the next multiple of 16, or every channel kept where that would exceed the group.
        assert after == min(full, -(-before // 16) * 16), group.name
        # The channels put back are the most important removed ones: the rounded model keeps the `after` best
        # channels by score (told apart by their batch norm's random running means, which pruning copies).
        if group.norm:
            means = random_model.get_submodule(group.norm).running_mean
            best = torch.argsort(scores[group.name], descending=True)[:after]
            torch.testing.assert_close(torch.sort(rounded.get_submodule(group.norm).running_mean).values,
                                       torch.sort(means[best]).values, rtol=0, atol=0)


@pytest.mark.parametrize("round_to", [0, -8, 2.0, True])
def test_a_bad_round_to_is_refused_naming_it(random_model, round_to):
    with pytest.raises(ValueError, match=rf"round_to.*{re.escape(repr(round_to))}"):
        prune_channels(random_model, 0.3, round_to=round_to)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_the_least_important_channels_go_first(random_model, criterion):
    # Every BN scale is 1 in the fixture; three head channels scaled to 1e-3 must be among the removed.
    with torch.no_grad():
        random_model.backbone[17].weight[[5, 50, 100]] = 1e-3
    pruned = prune_channels(random_model, 0.05, criterion=criterion, scope="layer")
    assert pruned.config.head == 256 - 12
    assert pruned.backbone[17].weight.min() == 1


def test_the_activation_criterion_removes_channels_the_relu_silences_which_weight_norms_keep(random_model,
                                                                                           images_and_labels):
    # Three stem channels with full filters and BN scales but a shift that keeps them below zero: after the ReLU
    # they are always 0. The weight criteria cannot see it; the activation criterion removes them first. (The
    # stem is the group where every channel of the random fixture is active on plates.)
    silenced = [5, 20, 40]
    with torch.no_grad():
        random_model.backbone[1].bias[silenced] = -1e3
    images = images_and_labels[0]
    scores = channel_scores(random_model, ACTIVATION, images)
    assert set(scores) == {g.name for g in GROUPS}
    assert all(scores[g.name].shape == (group_width(random_model, g),) for g in GROUPS)
    assert (scores["stem"][silenced] == 0).all() and (scores["stem"] > 0).sum() == 61
    by_activation = prune_channels(random_model, 0.05, criterion=ACTIVATION, scope="layer", images=images)
    by_weights = prune_channels(random_model, 0.05, criterion="l1", scope="layer")
    assert by_activation.config.stem == by_weights.config.stem == 64 - 3
    assert (by_activation.backbone[1].bias > -1e3).all()
    assert (by_weights.backbone[1].bias == -1e3).sum() == 3
    assert torch.isfinite(logits(by_activation, as_input(images[:4]))).all()


def test_the_activation_criterion_needs_images(random_model):
    with pytest.raises(ValueError, match=r"'activation' needs images"):
        prune_channels(random_model, 0.3, criterion=ACTIVATION)


def test_global_scope_compares_groups_after_normalising_their_scores(random_model):
    reference = prune_channels(random_model, 0.3, scope="global").config
    # Scaling one group's filters by a power of two scales its scores exactly; the selection must not move.
    with torch.no_grad():
        random_model.backbone[16].weight *= 2**-7
    assert prune_channels(random_model, 0.3, scope="global").config == reference
    assert reference != prune_channels(random_model, 0.3, scope="layer").config


def test_ratio_zero_is_the_identity(random_model, images_and_labels):
    pruned = prune_channels(random_model, 0.0)
    assert pruned is not random_model and pruned.config == random_model.config
    for key, tensor in random_model.state_dict().items():
        assert torch.equal(pruned.state_dict()[key], tensor), key
    x = as_input(images_and_labels[0][:4])
    torch.testing.assert_close(logits(pruned, x), logits(random_model, x), rtol=0, atol=0)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_every_group_and_pool_keeps_a_minimum(random_model, images_and_labels, scope):
    pruned = prune_channels(random_model, 0.99, scope=scope)
    assert all(group_width(pruned, g) >= MIN_CHANNELS for g in GROUPS)
    c = pruned.config
    assert len(c.pool1_channels) >= MIN_CHANNELS and len(c.pool2_channels) >= MIN_CHANNELS
    assert torch.isfinite(logits(pruned, as_input(images_and_labels[0][:2]))).all()


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.3", True])
def test_a_bad_ratio_is_refused_naming_it(random_model, ratio):
    with pytest.raises(ValueError, match=re.escape(repr(ratio))):
        prune_channels(random_model, ratio)


def test_a_bad_criterion_or_scope_is_refused_listing_the_valid_names(random_model):
    with pytest.raises(ValueError, match=r"'l3'.*l1, l2, activation"):
        prune_channels(random_model, 0.3, criterion="l3")
    with pytest.raises(ValueError, match=r"'local'.*global, layer"):
        prune_channels(random_model, 0.3, scope="local")


def test_pruned_model_exports_to_onnx_and_matches_onnxruntime(random_model, latin, images_and_labels, tmp_path):
    kill_channels(random_model)
    model, _ = remove_dead_channels(random_model)
    model = prune_channels(model, 0.3)
    # Pruning leaves every pool selection a slice [0, m) (channels reordered), exported as Slice.
    assert model.backbone[7].slice == (0, len(model.config.pool1_channels), 1) and model.backbone[7].is_slice
    assert model.backbone[14].slice == (0, len(model.config.pool2_channels), 1) and model.backbone[14].is_slice
    export_onnx(model, latin, tmp_path / "pruned.onnx")
    predictor = load_predictor(tmp_path / "pruned.onnx")
    x = as_input(images_and_labels[0][:5])
    np.testing.assert_allclose(predictor(x.numpy()), logits(model, x).numpy(), rtol=1e-4, atol=1e-4)
    check_fold(tmp_path / "pruned.onnx", "Slice", model, x)


def check_fold(path, selection_op: str, model: LPRNet, x: torch.Tensor) -> None:
    """fold_channel_selections folds the first pool's selection (a 1x1 convolution after it), not the second's (1x4
    convolution), and the folded graph computes the model's logits."""
    import onnx

    exported = onnx.load(path)
    folded = onnx.load(path)
    assert fold_channel_selections(folded) == 1
    producer = {output: node for node in folded.graph.node for output in node.output}
    pools = [node for node in folded.graph.node if node.op_type == "MaxPool"]
    assert [producer[pool.input[0]].op_type for pool in pools] == ["Relu", "Relu", selection_op]
    convs = [node for node in folded.graph.node if node.op_type == "Conv" and node.input[0] == pools[1].output[0]]
    weight = next(init for init in folded.graph.initializer if init.name == convs[0].input[1])
    assert weight.dims[1] == model.config.block1 and weight.dims[2:] == [1, 1]  # every channel of the first block
    ops = [node.op_type for node in folded.graph.node]
    assert ops.count(selection_op) == [node.op_type for node in exported.graph.node].count(selection_op) - 1
    onnx.checker.check_model(folded)
    onnx.save(folded, path.with_name("folded.onnx"))
    np.testing.assert_allclose(load_predictor(path.with_name("folded.onnx"))(x.numpy()), logits(model, x).numpy(),
                               rtol=1e-4, atol=1e-4)
    # The selection the fold removed, or its pool, also returned by the graph must keep its width: nothing is folded.
    kept_outputs = {output for node in folded.graph.node for output in node.output}
    selection = next(node for node in exported.graph.node
                     if node.op_type == selection_op and node.output[0] not in kept_outputs)
    pool = next(node for node in exported.graph.node
                if node.op_type == "MaxPool" and node.input[0] == selection.output[0])
    for tensor in (selection.output[0], pool.output[0]):
        returned = onnx.load(path)
        returned.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
        assert fold_channel_selections(returned) == 0


def test_an_uneven_pool_selection_still_exports_as_gather(latin, images_and_labels, tmp_path):
    """Pruning now keeps selections slices, but a model saved by earlier code, or a config written by hand, can still
    select uneven channels: that path is an index select in PyTorch and a Gather in ONNX."""
    import onnx

    config = LPRNetConfig(num_classes=latin.num_classes, pool1_keep=(0, 3, 5, 10, 40, 63),
                          pool2_keep=(0, 1, 7, 100, 255))
    torch.manual_seed(2)
    model = LPRNet(config).eval()
    assert not model.backbone[7].is_slice and not model.backbone[14].is_slice
    export_onnx(model, latin, tmp_path / "uneven.onnx")
    assert "Gather" in {node.op_type for node in onnx.load(tmp_path / "uneven.onnx").graph.node}
    x = as_input(images_and_labels[0][:5])
    np.testing.assert_allclose(load_predictor(tmp_path / "uneven.onnx")(x.numpy()), logits(model, x).numpy(),
                               rtol=1e-4, atol=1e-4)
    check_fold(tmp_path / "uneven.onnx", "Gather", model, x)
