"""Structural channel pruning of LPRNet: removed channels are gone from the weights, the config and the MACs.

Two entry points share one piece of channel surgery (`_remove_channels`), which builds a smaller `LPRNetConfig`
(widths, renumbered pool selections, unchanged context divisors) and copies the sliced weights into
`LPRNet(new_config)`:

- `remove_dead_channels` is lossless: it removes channels whose output is a constant it can fold into the next
  layer's bias exactly (or that nothing reads), and keeps the constant channels it cannot fold.
- `prune_channels` is lossy filter pruning: it ranks channels by a criterion (`CRITERIA` from the weights, or
  `ACTIVATION` from images) and removes a fraction of them, globally or per group. It does not fine-tune (see
  train.py) and does not fold anything.

Why not torch-pruning: its dependency graph does trace the strided channel slice and the context concat, but
it edits modules in place, so the `ChannelSelectMaxPool` keep lists and `LPRNetConfig` go stale (the pruned
model fails at the next forward and could not be saved with its config), and it would silently change the
context normalisation (mean of squares over a smaller channel count). The config-driven surgery here is a
page of code and stays exact.

Batch norms are taken with their running statistics: the folds are exact for the model in eval mode.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lprnet.errors import InputError
from lprnet.model.network import LPRNet
from lprnet.runtime.evaluate import predict_logits
from lprnet.runtime.torch_runtime import TorchPredictor

SUBNORMAL = torch.finfo(torch.float32).tiny  # weights below this magnitude count as zero
MIN_CHANNELS = 4  # prune_channels leaves at least this many channels in every group (and pooled selection)


@dataclass(frozen=True)
class ChannelGroup:
    """One channel space of LPRNet: the output channels of `producer`, and everything that reads them."""

    name: str
    width_field: str  # the LPRNetConfig field holding the width ("mid1" is shared by three inner groups)
    producer: str  # conv whose output channels these are
    norm: str | None  # BatchNorm2d right after the producer (a ReLU always follows)
    consumer: str  # the conv that reads these channels (through `pool` when set)
    padded_consumer: bool  # the consumer zero-pads, so a constant input is not constant at its borders
    context_tap: int | None = None  # position among the four context taps (stem, block1, block3, classes)
    pool: int | None = None  # 1 or 2: only the channels ChannelSelectMaxPool `pool` keeps reach the consumer


def _inner_groups(block: str, path: str, mid_field: str) -> tuple[ChannelGroup, ...]:
    # The three inner channel spaces of a SmallBasicBlock: outputs of block.0 (1x1), block.2 (3x1), block.4 (1x3).
    # They are independent spaces, but the config has one inner width, so they always keep equal widths.
    return (
        ChannelGroup(f"{block}_inner_a", mid_field, f"{path}.block.0", None, f"{path}.block.2", padded_consumer=True),
        ChannelGroup(f"{block}_inner_b", mid_field, f"{path}.block.2", None, f"{path}.block.4", padded_consumer=True),
        ChannelGroup(f"{block}_inner_c", mid_field, f"{path}.block.4", None, f"{path}.block.6", padded_consumer=False),
    )


# Every prunable channel space. The classes (backbone.20 outputs) are never pruned: they are the logits.
GROUPS: tuple[ChannelGroup, ...] = (
    # stem -> MaxPool2d(3, no padding) -> block1's 1x1 input, and context tap 0.
    ChannelGroup("stem", "stem", "backbone.0", "backbone.1", "backbone.4.block.0", False, context_tap=0),
    *_inner_groups("block1", "backbone.4", "mid1"),
    # block1 -> context tap 1, and pool1's selection -> block2's 1x1 input.
    ChannelGroup("block1", "block1", "backbone.4.block.6", "backbone.5", "backbone.8.block.0", False,
                 context_tap=1, pool=1),
    *_inner_groups("block2", "backbone.8", "mid2"),
    ChannelGroup("block2", "block2", "backbone.8.block.6", "backbone.9", "backbone.11.block.0", False),
    *_inner_groups("block3", "backbone.11", "mid3"),
    # block3 -> context tap 2, and pool2's selection -> the (1,4) head conv (no padding).
    ChannelGroup("block3", "block3", "backbone.11.block.6", "backbone.12", "backbone.16", False,
                 context_tap=2, pool=2),
    ChannelGroup("head", "head", "backbone.16", "backbone.17", "backbone.20", False),
)
GROUPS_BY_NAME = {g.name: g for g in GROUPS}
# Groups whose widths must stay equal because they share one config field.
TIED_GROUPS: tuple[tuple[str, ...], ...] = tuple(
    tuple(g.name for g in GROUPS if g.width_field == field) for field in ("mid1", "mid2", "mid3"))


def group_width(model: LPRNet, group: ChannelGroup) -> int:
    return int(model.get_submodule(group.producer).out_channels)


def _pool_channels(config, group: ChannelGroup) -> tuple[int, ...]:
    return getattr(config, f"pool{group.pool}_channels") if group.pool else ()


def _consumer_inputs(config, group: ChannelGroup, channels: Sequence[int]) -> list[tuple[int, int]]:
    """(channel, consumer input index) for each of `channels` the consumer reads: all of them, or through a pool
    only the selected ones, at their position in the selection."""
    if not group.pool:
        return [(k, k) for k in channels]
    position = {k: i for i, k in enumerate(_pool_channels(config, group))}
    return [(k, position[k]) for k in channels if k in position]


def _context_offsets(config) -> tuple[int, int, int, int]:
    """First container input column of each context tap: the container reads concat(stem, block1, block3, classes)."""
    widths = (config.stem, config.block1, config.block3, config.num_classes)
    return tuple(sum(widths[:i]) for i in range(4))


def _remove_channels(model: LPRNet, keep: Mapping[str, Sequence[int]],
                     constants: Mapping[str, torch.Tensor] | None = None) -> LPRNet:
    """A new LPRNet without the channels missing from `keep[group]` (groups not named keep all their channels).

    `constants[group]` (width,) is the value each channel outputs after its ReLU when it is constant; for removed
    channels it is folded into the consumer's bias (a consumer with padding must only get zeros: the caller
    decides what is exact). The model's eval/train mode is kept; the context divisors stay at the old counts."""
    config, constants = model.config, constants or {}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    keep = {name: sorted(int(k) for k in kept) for name, kept in keep.items()}
    for name, kept in keep.items():
        width = group_width(model, GROUPS_BY_NAME[name])
        if not kept or len(set(kept)) != len(kept) or not 0 <= kept[0] <= kept[-1] < width:
            raise InputError(f"group {name!r}: keep must be distinct indices in [0, {width}), got {kept}")
    for tied in TIED_GROUPS:
        widths = {len(keep.get(n, range(group_width(model, GROUPS_BY_NAME[n])))) for n in tied}
        if len(widths) > 1:
            raise InputError(f"groups {tied} share one config width and must keep equal counts, got {widths}")

    # Fold first, on unsliced tensors, so every index is the old model's.
    for name, kept in keep.items():
        group = GROUPS_BY_NAME[name]
        removed = sorted(set(range(group_width(model, group))) - set(kept))
        if name not in constants or not removed:
            continue
        pairs = _consumer_inputs(config, group, removed)
        if pairs:
            channels, inputs = zip(*pairs)
            weight = state[f"{group.consumer}.weight"]  # (out, in, kh, kw)
            # A constant input c_k adds sum over the kernel of W[:, k] * c_k to every output position.
            state[f"{group.consumer}.bias"] += weight[:, list(inputs)].sum(dim=(2, 3)) @ constants[name][list(channels)]

    def select(key: str, dim: int, index: Sequence[int]) -> None:
        state[key] = state[key].index_select(dim, torch.tensor(index, dtype=torch.long)).contiguous()

    changes: dict[str, object] = {}
    container_columns = list(range(state["container.0.weight"].shape[1]))
    offsets = _context_offsets(config)
    for name, kept in keep.items():
        group = GROUPS_BY_NAME[name]
        if len(kept) == group_width(model, group):
            continue
        if group.pool:
            # The channels the pool selects first, so that its selection is the slice [0, m): an uneven selection is
            # an index-select (ONNX Gather, Relax take), which TVM's ConvertLayout cannot move to NHWC, so it wrapped
            # each pool in two NCHW<->NHWC transposes. The context normalisation sums over channels: order-free.
            kept_set = set(kept)
            selected = [k for k in _pool_channels(config, group) if k in kept_set]
            selected_set = set(selected)
            kept = selected + [k for k in kept if k not in selected_set]
        for suffix in ("weight", "bias"):
            select(f"{group.producer}.{suffix}", 0, kept)
        if group.norm:
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                select(f"{group.norm}.{suffix}", 0, kept)
        select(f"{group.consumer}.weight", 1, [i for _, i in _consumer_inputs(config, group, kept)])
        changes[group.width_field] = len(kept)
        if group.pool:
            new_index = {k: i for i, k in enumerate(kept)}
            selection = tuple(new_index[k] for k in _pool_channels(config, group) if k in new_index)
            if not selection:  # () would mean the published default selection
                raise InputError(f"group {name!r}: keep removes every channel pool{group.pool} selects")
            changes[f"pool{group.pool}_keep"] = selection
        if group.context_tap is not None:
            tap, start = group.context_tap, offsets[group.context_tap]
            # The tap's columns, still contiguous, become its kept channels in their new order.
            at = [i for i, col in enumerate(container_columns) if start <= col < start + group_width(model, group)]
            container_columns[at[0]:at[-1] + 1] = [start + k for k in kept]
            # Removed channels must not change the mean-of-squares normalisation: keep dividing by the old count.
            divisors = list(changes.get("context_divisors", config.context_divisors))
            divisors[tap] = config.divisors[tap]
            changes["context_divisors"] = tuple(divisors)
    if container_columns != list(range(state["container.0.weight"].shape[1])):
        select("container.0.weight", 1, container_columns)

    # An inner width of 0 means block // 4; make it explicit when that no longer holds.
    for block, mid in (("block1", "mid1"), ("block2", "mid2"), ("block3", "mid3")):
        inner = int(state[f"{GROUPS_BY_NAME[block].producer}.weight"].shape[1])  # block.6 reads the inner channels
        block_width = changes.get(block, getattr(config, block))
        if mid in changes or block in changes:
            changes[mid] = 0 if getattr(config, mid) == 0 and inner == block_width // 4 else inner

    pruned = LPRNet(dataclasses.replace(config, **changes))
    pruned.load_state_dict(state, strict=True)
    return pruned.train(model.training)


# ---------------------------------------------------------------------------------------------------------------
# Lossless: dead channels.


def _constant_outputs(model: LPRNet, group: ChannelGroup, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_constant, value), both (width,): a channel is constant when its filter is all zero (the conv outputs
    its bias) or its batch-norm scale is zero (the BN outputs its shift); value is relu(bn(bias)) either way."""
    conv = model.get_submodule(group.producer)
    with torch.no_grad():
        silent_filter = (conv.weight.abs() < threshold).flatten(1).all(dim=1)
        value = conv.bias.clone()
        constant = silent_filter
        if group.norm:
            norm = model.get_submodule(group.norm)
            value = (value - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
            constant = constant | (norm.weight.abs() < threshold)
        return constant, torch.relu(value)


def _unread_channels(model: LPRNet, group: ChannelGroup, threshold: float) -> torch.Tensor:
    """(width,) True where no consumer reads the channel: zero consumer weights, and not a context tap (the
    context normalisation reads every channel of its tap)."""
    width = group_width(model, group)
    if group.context_tap is not None:
        return torch.zeros(width, dtype=torch.bool)
    unread = torch.ones(width, dtype=torch.bool)  # a channel a pool drops is read by nothing
    weight = model.get_submodule(group.consumer).weight  # (out, in, kh, kw)
    silent_input = (weight.abs() < threshold).transpose(0, 1).flatten(1).all(dim=1)  # (in,)
    for channel, index in _consumer_inputs(model.config, group, range(width)):
        unread[channel] = silent_input[index]
    return unread


@dataclass
class _DeadChannelPlan:
    keep: dict[str, list[int]]
    constants: dict[str, torch.Tensor]
    removed: dict[str, int]
    kept_dead: dict[str, int]  # dead (constant or unread) but not removable exactly, or held by a tied width


def _spare_one(model: LPRNet, group: ChannelGroup, removable: list[int]) -> list[int]:
    """`removable` less what it takes to leave the group one channel and its pool one selected channel (an
    empty layer cannot be built, and an empty pool selection would mean the published default)."""
    pooled = _pool_channels(model.config, group)
    if pooled and set(pooled) <= set(removable):
        removable = [k for k in removable if k != pooled[0]]
    return removable[:-1] if len(removable) == group_width(model, group) else removable


def _plan_dead_channels(model: LPRNet, threshold: float) -> _DeadChannelPlan:
    keep, constants, removable, dead = {}, {}, {}, {}
    for group in GROUPS:
        constant, value = _constant_outputs(model, group, threshold)
        unread = _unread_channels(model, group, threshold)
        zero = constant & (value.abs() < threshold)
        # A non-zero constant folds exactly only into an unpadded conv, and never into the context
        # (the energy normalisation divides it by an input-dependent value).
        foldable = constant & ~zero & torch.tensor(not group.padded_consumer and group.context_tap is None)
        can_remove = zero | foldable | unread
        removable[group.name] = _spare_one(model, group, torch.nonzero(can_remove).flatten().tolist())
        dead[group.name] = int((constant | unread).sum())
        # Fold the constant of foldable channels only; zeros and unread channels contribute nothing.
        constants[group.name] = torch.where(foldable & ~unread, value, torch.zeros_like(value)).detach()
    for tied in TIED_GROUPS:  # equal widths: remove as many from each as the scarcest allows
        count = min(len(removable[name]) for name in tied)
        for name in tied:
            removable[name] = removable[name][:count]
    removed = {name: len(channels) for name, channels in removable.items()}
    for group in GROUPS:
        if removable[group.name]:
            drop = set(removable[group.name])
            keep[group.name] = [k for k in range(group_width(model, group)) if k not in drop]
    kept_dead = {name: dead[name] - removed[name] for name in dead}
    return _DeadChannelPlan(keep, constants, removed, kept_dead)


def remove_dead_channels(model: LPRNet, threshold: float = SUBNORMAL) -> tuple[LPRNet, dict]:
    """Remove, without changing the eval-mode output, every channel that is constant or unread and can go exactly.

    Dead: the producing filter or BN scale is all |w| < threshold (the channel outputs a constant c), or every
    consumer weight reading it is (nothing reads it). Removed when c == 0, or c folds exactly into the consumer's
    bias (no padding, not a context tap), or nothing reads it; repeated until nothing changes, since a fold can
    leave a filter that read only removed channels all zero. Returns the new model and a report: counts
    `dead_channels_removed`, `dead_channels_kept` (dead but not removable exactly), `iterations`, and per group
    `dead_removed_<group>` / `dead_kept_<group>`."""
    removed = dict.fromkeys(GROUPS_BY_NAME, 0)
    iterations = 0
    while True:
        plan = _plan_dead_channels(model, threshold)
        if not plan.keep:
            break
        iterations += 1
        model = _remove_channels(model, plan.keep, plan.constants)
        for name, count in plan.removed.items():
            removed[name] += count
    report = {"dead_channels_removed": sum(removed.values()), "dead_channels_kept": sum(plan.kept_dead.values()),
              "iterations": iterations}
    report.update({f"dead_removed_{name}": count for name, count in removed.items()})
    report.update({f"dead_kept_{name}": count for name, count in plan.kept_dead.items()})
    return model, report


# ---------------------------------------------------------------------------------------------------------------
# Lossy: filter pruning.


def _l1_score(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    score = weight.abs().flatten(1).sum(dim=1)  # (out,)
    return score if scale is None else score * scale.abs()


def _l2_score(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    score = weight.flatten(1).norm(dim=1)  # (out,)
    return score if scale is None else score * scale.abs()


# Channel importance from the producing filter (out, in, kh, kw) and the scale of the BN after it, if any: a
# channel whose BN scale is near zero outputs nearly a constant however large its filter.
CRITERIA: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "l1": _l1_score,
    "l2": _l2_score,
}
# Data-driven: a channel's mean output after its ReLU on sample images, times the L1 norm of the weights that
# read it (where the consumer reads every channel of the group; through a pool's selection, the mean alone). The
# filter norms miss what the batch norm's shift and the ReLU do to a channel (one that the ReLU silences on
# plates scores high by its weights and low here), which matters most when pruning is not followed by fine-tuning.
ACTIVATION = "activation"
# At most this many images are run: what is removed depends on the ranking of the channels' mean outputs, which
# settles long before the mean of every train image, and the cost stays bounded whatever the split's size.
ACTIVATION_IMAGES = 1024
SCOPES = ("global", "layer")


def channel_scores(model: LPRNet, criterion: str = "l1", images: np.ndarray | None = None
                   ) -> dict[str, torch.Tensor]:
    """{group name: (width,) importance}, higher = more important. `images` ((N,24,94,3) uint8, never the test
    split) are needed by the activation criterion only."""
    if criterion == ACTIVATION:
        if images is None or len(images) == 0:
            raise InputError(f"pruning criterion {ACTIVATION!r} needs images to run (the train split)")
        return _activation_scores(model, images[:ACTIVATION_IMAGES])
    if criterion not in CRITERIA:
        raise InputError(f"unknown pruning criterion {criterion!r}; valid: "
                         f"{', '.join([*sorted(CRITERIA), ACTIVATION])}")
    scores = {}
    with torch.no_grad():
        for group in GROUPS:
            scale = model.get_submodule(group.norm).weight if group.norm else None
            scores[group.name] = CRITERIA[criterion](model.get_submodule(group.producer).weight, scale).detach()
    return scores


def _activation_scores(model: LPRNet, images: np.ndarray) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}

    def record(name: str, output: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0) + torch.relu(output).sum(dim=(0, 2, 3))

    # The module whose output the group's ReLU reads: the batch norm, or the conv where there is none.
    hooks = [model.get_submodule(g.norm or g.producer).register_forward_hook(
        lambda _module, _inputs, output, name=g.name: record(name, output)) for g in GROUPS]
    was_training = model.training
    try:
        predict_logits(TorchPredictor(model, alphabet=None), images)  # the outputs are not needed, the hooks' sums are
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    scores = {}
    for group in GROUPS:
        score = sums[group.name]
        readers = model.get_submodule(group.consumer).weight.detach()  # (out, in, kh, kw)
        if readers.shape[1] == score.shape[0]:
            score = score * readers.abs().sum(dim=(0, 2, 3))
        scores[group.name] = score
    return scores


@dataclass
class _Unit:
    """The smallest thing pruning removes: one channel, or one channel from each of a tied set of groups."""

    score: float
    channels: dict[str, int]  # group name -> channel index
    pruning_set: str  # the group (or tied set) whose size limits apply


def _units(model: LPRNet, scores: Mapping[str, torch.Tensor]) -> dict[str, list[_Unit]]:
    """Units per pruning set, scores normalised by their group's mean so groups are comparable."""
    normalised = {}
    for name, score in scores.items():
        mean = float(score.mean())
        normalised[name] = score / mean if mean > 0 else torch.zeros_like(score)
    units: dict[str, list[_Unit]] = {}
    tied_names = {name for tied in TIED_GROUPS for name in tied}
    for group in GROUPS:
        if group.name not in tied_names:
            units[group.name] = [_Unit(float(s), {group.name: k}, group.name)
                                 for k, s in enumerate(normalised[group.name].tolist())]
    for tied in TIED_GROUPS:
        # The r-th least important channel of each tied group go together; the unit is as important as the most
        # important of them.
        set_name = tied[0].rsplit("_", 1)[0]  # "block1_inner"
        orders = {name: torch.argsort(normalised[name], stable=True).tolist() for name in tied}
        units[set_name] = [
            _Unit(max(float(normalised[name][orders[name][r]]) for name in tied),
                  {name: orders[name][r] for name in tied}, set_name)
            for r in range(len(orders[tied[0]]))]
    return units


def prune_channels(model: LPRNet, ratio: float, criterion: str = "l1", scope: str = "global",
                   images: np.ndarray | None = None, round_to: int = 1) -> LPRNet:
    """A copy of `model` with about `ratio` of the channels of every prunable group removed, least important
    first by `criterion` (see CRITERIA and ACTIVATION; `images` for the latter).

    scope "global": one threshold over all groups, on scores divided by their group's mean; "layer": `ratio` of
    each group. Every group keeps at least MIN_CHANNELS channels (or all it has, if fewer), and so does each
    pool's selection. The three inner groups of a block shrink together (the config has one inner width);
    they count as three channels per removal. Run `remove_dead_channels` first so that the ratio counts live
    channels and dead constants are folded instead of dropped.

    `round_to`: a group the criterion prunes keeps a multiple of this many channels, rounded up (the most important
    of its removed channels come back), as torch-pruning's `round_to` does; where that multiple exceeds the group's
    width, the group keeps its width.
    Compilers vectorise the output channels (the innermost axis in NHWC): a width with no factor of the vector
    width, such as 47, leaves MetaSchedule's tilings only scalar or ragged loops (README, Pruning)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
        raise InputError(f"pruning ratio must be a number in [0, 1), got {ratio!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InputError(f"round_to must be a positive integer, got {round_to!r}")
    if scope not in SCOPES:
        raise InputError(f"unknown pruning scope {scope!r}; valid: {', '.join(SCOPES)}")
    units = _units(model, channel_scores(model, criterion, images))
    config = model.config

    remaining = {set_name: len(set_units) for set_name, set_units in units.items()}
    floor = {set_name: min(MIN_CHANNELS, count) for set_name, count in remaining.items()}
    pooled_groups = [g for g in GROUPS if g.pool]
    pooled = {g.name: set(_pool_channels(config, g)) for g in pooled_groups}
    pooled_remaining = {name: len(channels) for name, channels in pooled.items()}
    pooled_floor = {name: min(MIN_CHANNELS, count) for name, count in pooled_remaining.items()}
    removed: dict[str, set[int]] = {g.name: set() for g in GROUPS}
    removed_units: dict[str, list[_Unit]] = {set_name: [] for set_name in units}

    def try_remove(unit: _Unit) -> bool:
        if remaining[unit.pruning_set] <= floor[unit.pruning_set]:
            return False
        for name, channel in unit.channels.items():
            if channel in pooled.get(name, ()) and pooled_remaining[name] <= pooled_floor[name]:
                return False
        remaining[unit.pruning_set] -= 1
        for name, channel in unit.channels.items():
            removed[name].add(channel)
            if channel in pooled.get(name, ()):
                pooled_remaining[name] -= 1
        removed_units[unit.pruning_set].append(unit)
        return True

    if scope == "layer":
        for set_units in units.values():
            target = math.floor(ratio * len(set_units))
            count = 0
            for unit in sorted(set_units, key=lambda u: u.score):
                if count == target:
                    break
                count += try_remove(unit)
    else:
        every_unit = sorted((u for set_units in units.values() for u in set_units), key=lambda u: u.score)
        target = math.floor(ratio * sum(len(u.channels) for u in every_unit))  # in channels
        count = 0
        for unit in every_unit:
            # Skip a tied unit that would overshoot; single channels can still fill the gap.
            if count + len(unit.channels) <= target and try_remove(unit):
                count += len(unit.channels)
    for set_name, set_units in removed_units.items():
        # Putting channels back only raises the counts the floors guard, so no limit can break.
        for unit in sorted(set_units, key=lambda u: u.score, reverse=True):
            if remaining[set_name] % round_to == 0:
                break
            remaining[set_name] += 1
            for name, channel in unit.channels.items():
                removed[name].discard(channel)
    keep = {g.name: [k for k in range(group_width(model, g)) if k not in removed[g.name]] for g in GROUPS}
    return _remove_channels(model, keep)
