"""Per-request routing: same weights as segmoe's SparseMoeBlock, top-k chosen per request, not per batch."""

from __future__ import annotations

import torch

from emoe import segmoe_adapter, unet_passes
from emoe.routing import RoutedMoE, routing
from emoe.scoring import encode_prompts
from tests.emoe.test_scoring import segmoe_layer_count


def _inputs(ensemble, prompts: list[str], seed: int = 0):
    embeds, _, _ = encode_prompts(ensemble, prompts)
    negative, _, _ = encode_prompts(ensemble, [""])
    rows = []
    for e in embeds:
        rows += [negative[0], e]
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(len(prompts), 4, 16, 16, generator=gen).repeat_interleave(2, dim=0)
    return latents, torch.stack(rows), torch.tensor(961)


def test_every_segmoe_block_replaced_with_same_weights(tiny, tiny_folder) -> None:
    raw, _ = segmoe_adapter.load_checkpoint(tiny_folder, device="cpu", dtype=torch.float32)
    sparse = segmoe_adapter.sparse_moe_block_type()
    assert not any(isinstance(m, sparse) for m in tiny.unet.modules())
    assert len(tiny.moe_layers) == sum(isinstance(m, sparse) for m in raw.unet.modules())
    assert len(tiny.moe_layers) == segmoe_layer_count(tiny) == 36
    assert all(isinstance(m, RoutedMoE) for m in tiny.moe_layers.values())
    assert tiny.unet.state_dict().keys() == raw.unet.state_dict().keys()


@torch.no_grad()
def test_single_request_matches_segmoe_pipeline_unet(tiny, tiny_folder) -> None:
    raw, _ = segmoe_adapter.load_checkpoint(tiny_folder, device="cpu", dtype=torch.float32)
    x, enc, t = _inputs(tiny, ["a photo of a cat"])
    expected = raw.unet(x, t, enc).sample
    with routing(tiny.routing, rows_per_group=2):
        ours = unet_passes.full(tiny.unet, x, t, enc)
        diffusers_forward = tiny.unet(x, t, enc).sample
    assert torch.equal(ours, expected)
    assert torch.equal(ours, diffusers_forward)


@torch.no_grad()
def test_batch_of_requests_equals_each_alone(tiny) -> None:
    prompts = ["a photo of a cat", "un chat noir", "a city street at night", "ein roter Apfel"]
    x, enc, t = _inputs(tiny, prompts)
    mixed: list[str] = []  # blocks where the requests chose different experts (the path that gathers rows)

    def record(block: RoutedMoE, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        hidden = inputs[0]
        logits = block.gate(hidden.reshape(-1, hidden.shape[-1])).view(
            hidden.shape[0] // 2, -1, block.num_experts
        )
        if len({tuple(c) for c in torch.topk(logits.sum(1), block.top_k).indices.tolist()}) > 1:
            mixed.append(block.name)

    hooks = [block.register_forward_hook(record) for block in tiny.moe_layers.values()]
    with routing(tiny.routing, rows_per_group=2):
        together = unet_passes.full(tiny.unet, x, t, enc)
    for hook in hooks:
        hook.remove()
    assert mixed, "no block saw the requests choose different experts: the test would not cover mixing"
    with routing(tiny.routing, rows_per_group=2):
        for i in range(len(prompts)):
            rows = slice(2 * i, 2 * i + 2)
            alone = unet_passes.full(tiny.unet, x[rows], t, enc[rows])
            assert torch.equal(together[rows], alone), prompts[i]


@torch.no_grad()
def test_forced_rows_use_one_expert_only(tiny) -> None:
    layer = tiny.moe_layers["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"]
    h = torch.randn(3, 5, layer.hidden_dim)
    forced = torch.tensor([2, -1, 0])
    with routing(tiny.routing, rows_per_group=1, forced_expert=forced, split_layers=frozenset({layer.name})):
        out = layer(h)
    assert torch.equal(out[0], layer.experts[2](h[0:1])[0])
    assert torch.equal(out[2], layer.experts[0](h[2:3])[0])
    with routing(tiny.routing, rows_per_group=1):
        gated = layer(h)
    assert torch.equal(out[1], gated[1])
