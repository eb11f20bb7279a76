"""Fine-tune a tiny, randomly initialised CLIP as an MMRet-style composed-image retriever with
GradCache, on random data: a smoke test of the training path, not a useful model.

A composed query is (reference image, modification text), embedded as
normalise(image features + text features); its candidates are target images. Each query
has a group of G candidates: its target first, then G - 1 hard negatives (perturbed copies
of the target, so they are close to it). The batch of B queries and B * G candidate images
is processed with ``mp.training.grad_cache_step`` a sub-batch at a time; every other query's
candidates are in-batch negatives.

    python examples/train_mmret_tiny.py --steps 5 --batch 64 --group 5 --sub-batch 16

The data is one fixed random batch (random pixels and random token ids), so the loss should
fall from step to step as the model fits it.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

import megapairs as mp

VOCAB, TOKENS = 512, 16
BOS, EOS = VOCAB - 2, VOCAB - 1


def tiny_clip(seed: int) -> CLIPModel:
    """A 2-layer, width-32 CLIP on 32x32 images and 16-token texts, with dropout on."""
    torch.manual_seed(seed)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "attention_dropout": 0.1}
    config = CLIPConfig(
        # the text tower pools at the EOS token
        text_config={**layers, "vocab_size": VOCAB, "max_position_embeddings": TOKENS,
                     "pad_token_id": 0, "bos_token_id": BOS, "eos_token_id": EOS},
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    return CLIPModel(config)


def features(output) -> torch.Tensor:
    """The projected embeddings from ``get_*_features`` (a tensor, or a model output holding it)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def random_batch(batch: int, group: int, seed: int):
    """Reference images + token ids (BOS, random tokens, EOS) for the queries; (batch * group)
    candidate images, each query's target first, then hard negatives made by perturbing the target."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randn(batch, 3, 32, 32, generator=g)
    references = targets + 0.5 * torch.randn(targets.shape, generator=g)  # related to the target
    input_ids = torch.randint(1, BOS, (batch, TOKENS), generator=g)
    input_ids[:, 0], input_ids[:, -1] = BOS, EOS
    negatives = targets[:, None] + 0.3 * torch.randn(batch, group - 1, 3, 32, 32, generator=g)
    candidates = torch.cat([targets[:, None], negatives], dim=1).reshape(batch * group, 3, 32, 32)
    return {"pixel_values": references, "input_ids": input_ids}, candidates


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="queries per step")
    parser.add_argument("--group", type=int, default=5,
                        help="candidates per query: the target + hard negatives")
    parser.add_argument("--sub-batch", type=int, default=16, help="rows per encoder forward")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = tiny_clip(args.seed)
    model.train()  # dropout on: grad_cache_step replays each sub-batch's RNG state
    loss_fn = mp.loss.InfoNCELoss(temperature=0.05, learnable_temperature=True)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=args.lr)
    queries, candidates = random_batch(args.batch, args.group, seed=args.seed)

    def embed_query(pixel_values, input_ids):
        image = features(model.get_image_features(pixel_values=pixel_values))
        text = features(model.get_text_features(input_ids=input_ids))
        return F.normalize(image + text, dim=-1)

    def embed_candidate(pixel_values):
        return F.normalize(features(model.get_image_features(pixel_values=pixel_values)), dim=-1)

    print(f"batch {args.batch} queries x {args.group} candidates, sub-batches of {args.sub_batch}")
    losses = []
    for step in range(args.steps):
        start = time.perf_counter()
        loss = mp.training.grad_cache_step(embed_query, embed_candidate, queries, candidates, loss_fn,
                                           sub_batch=args.sub_batch, group_size=args.group)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            loss_fn.temperature.clamp_(min=0.01)  # keep the learnable temperature positive and sane
        losses.append(loss)
        print(f"step {step + 1}/{args.steps}  loss {loss:.4f}  temperature {loss_fn.temperature.item():.4f}  "
              f"{time.perf_counter() - start:.2f} s")
    return losses


if __name__ == "__main__":
    main()
