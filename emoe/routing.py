"""Per-request MoE routing: segmoe's SparseMoeBlock with top-k chosen per routing group, not per batch.

segmoe picks one top-k expert set for the whole batch (`topk(logits.sum(0))`), so a request's output depends
on what else rides in its batch. `RoutedMoE` holds the same weights (same parameter names, so checkpoints are
unchanged) and picks the top-k set per *group*: consecutive blocks of `rows_per_group` batch rows (one
request's CFG rows, or one EMoE path of one request). A row can also be *forced* to a single expert (no gate):
that is how the EMoE paths are disentangled at the split layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RoutingContext:
    """What the routed blocks read during one forward pass (set with `routing(...)`)."""

    rows_per_group: int | None = None  # None: the whole batch is one group (segmoe's behaviour)
    forced_expert: torch.Tensor | None = None  # (batch,) expert index per row, -1 = gated; None = all gated
    split_layers: frozenset[str] = field(default_factory=frozenset)  # layers where forced rows apply
    # derived from forced_expert once per context (host side, so the blocks need no GPU sync for it)
    forced_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # expert -> its forced row indices
    all_forced: bool = False


class RoutedMoE(nn.Module):
    """A top-k mixture of linear/FF experts routed per group of rows; drop-in for segmoe's SparseMoeBlock."""

    def __init__(self, block: nn.Module, name: str, context: RoutingContext) -> None:
        super().__init__()
        self.hidden_dim = block.hidden_dim
        self.num_experts = block.num_experts
        self.top_k = block.top_k
        self.out_dim = block.out_dim
        self.gate = block.gate
        self.experts = block.experts
        self.name = name
        self._context = [context]  # a list so nn.Module does not treat it as state

    @property
    def context(self) -> RoutingContext:
        return self._context[0]

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        ctx = self.context
        batch, seq, dim = hidden_states.shape
        forced = ctx.forced_rows if self.name in ctx.split_layers else {}
        if forced and ctx.all_forced:
            return self._forced(hidden_states, forced, hidden_states.new_empty(batch, seq, self.out_dim))

        # 1. route: one top-k set per group, from the gate logits summed over the group's rows and tokens
        rows_per_group = ctx.rows_per_group or batch
        if batch % rows_per_group:
            raise RuntimeError(
                f"{self.name}: batch of {batch} rows is not a whole number of groups of {rows_per_group}"
            )
        groups = batch // rows_per_group
        logits = self.gate(hidden_states.reshape(-1, dim))  # (batch*seq, experts)
        grouped = logits.view(groups, rows_per_group * seq, self.num_experts)
        _, selected = torch.topk(grouped.sum(dim=1), self.top_k, dim=1)  # (groups, k)
        chosen_logits = torch.gather(grouped, 2, selected[:, None, :].expand(-1, rows_per_group * seq, -1))
        weights = F.softmax(chosen_logits, dim=-1, dtype=torch.float).to(hidden_states.dtype)
        choices = selected.tolist()  # the one host sync of this block (segmoe's has one too)

        # 2. mix: each expert once, on the groups that chose it in any slot (a row's numbers do not depend on
        # the other rows of a product), then the slots summed in segmoe's order: ((0 + w0*y0) + w1*y1) ...
        flat = hidden_states.view(groups, rows_per_group * seq, dim)
        users: dict[int, list[int]] = {}
        for group, chosen in enumerate(choices):
            for expert_idx in chosen:
                users.setdefault(expert_idx, []).append(group)
        outputs: dict[int, torch.Tensor] = {}
        where: dict[tuple[int, int], int] = {}  # (expert, group) -> its row in the experts' outputs, stacked
        for expert_idx, group_ids in users.items():
            rows = flat if len(group_ids) == groups else flat[torch.tensor(group_ids, device=flat.device)]
            outputs[expert_idx] = self.experts[expert_idx](rows)
            for group in group_ids:
                where[expert_idx, group] = len(where)
        stacked: torch.Tensor | None = None
        out = torch.zeros(
            groups, rows_per_group * seq, self.out_dim, dtype=hidden_states.dtype, device=hidden_states.device
        )
        for slot in range(self.top_k):
            experts_here = {chosen[slot] for chosen in choices}
            if len(experts_here) == 1:
                picked = outputs[experts_here.pop()]  # every group chose it (so it ran on all): no copy
            else:
                if stacked is None:
                    stacked = torch.cat(list(outputs.values()))
                positions = [where[chosen[slot], group] for group, chosen in enumerate(choices)]
                picked = stacked[torch.tensor(positions, device=flat.device)]
            out = out + weights[:, :, slot : slot + 1] * picked
        out = out.view(batch, seq, self.out_dim)

        # 3. disentangle: rows forced to one expert take that expert's output alone
        if forced:
            out = self._forced(hidden_states, forced, out.clone())
        return out

    def _forced(
        self, hidden_states: torch.Tensor, forced: dict[int, torch.Tensor], out: torch.Tensor
    ) -> torch.Tensor:
        for expert_idx, rows in forced.items():
            out[rows] = self.experts[expert_idx](hidden_states[rows])
        return out


def replace_moe_blocks(unet: nn.Module, block_type: type, context: RoutingContext) -> dict[str, RoutedMoE]:
    """Swap every `block_type` module of `unet` for a RoutedMoE (same weights); returns them by name."""
    found = [(name, module) for name, module in unet.named_modules() if isinstance(module, block_type)]
    routed: dict[str, RoutedMoE] = {}
    for name, module in found:
        parent_name, _, attr = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        routed[name] = RoutedMoE(module, name, context)
        setattr(parent, attr, routed[name])
    return routed


@contextmanager
def routing(
    context: RoutingContext,
    *,
    rows_per_group: int | None,
    forced_expert: torch.Tensor | None = None,
    split_layers: frozenset[str] = frozenset(),
) -> Iterator[None]:
    """Set the routing of the next forward passes; restores the previous one after."""
    fields = ("rows_per_group", "forced_expert", "split_layers", "forced_rows", "all_forced")
    saved = tuple(getattr(context, name) for name in fields)
    forced_rows: dict[int, torch.Tensor] = {}
    all_forced = False
    if forced_expert is not None:
        per_row = forced_expert.tolist()
        for expert in sorted(set(per_row) - {-1}):
            rows = [i for i, e in enumerate(per_row) if e == expert]
            forced_rows[expert] = torch.tensor(rows, device=forced_expert.device)
        all_forced = -1 not in per_row
    new = (rows_per_group, forced_expert, split_layers, forced_rows, all_forced)
    for name, value in zip(fields, new, strict=True):
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in zip(fields, saved, strict=True):
            setattr(context, name, value)
