"""Cost of OneNIP's parts on this machine, to choose width, depth and the synthetic-anomaly strategy.

Times, on random tensors of the real shapes (lite0, 256 px: 192 x 16 x 16 features, 152 x 32 x 32 fine):
  * one training step split by module (input projection, encoder, decoder, final attention, output
    projection, refiner; forward and backward, from module hooks) and the rest (prompt residual, loss,
    optimizer);
  * one training step per query (the query and its synthetic copy, batch 8), per (d, layers);
  * inference of the reconstructor + maps per image (no backbone);
  * one training step (d 128, 2 + 2) in float32, under CPU bfloat16 autocast and compiled by
    ``torch.compile`` (``--step-variants``: the cheaper steps issue 42 asks about; the first compiled
    steps, compilation included, timed apart),
  * the frozen backbone per image and one synthetic anomaly per image,
which together say whether synthetic anomalies should be made on the fly (backbone + synthesis every
step) or drawn from a pool of cached ones. Prints a table and writes JSON.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/train_cost.py --out benchmarks/results/train_cost.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run_benchmark.py and peers.py

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onenip.models.backbone import FeatureExtractor  # noqa: E402
from onenip.models.loss import onenip_loss  # noqa: E402
from onenip.models.onenip import OneNIP  # noqa: E402
from onenip.synthesis import AnomalySynthesizer  # noqa: E402


def _timed(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def _step_inputs(batch: int, grid: tuple[int, int], fine: int) -> tuple:
    h, w = grid
    queries = torch.randn(2 * batch, 192, h, w)
    prompts = torch.randn(batch, 192, h, w)
    fine_q = torch.randn(2 * batch, fine, 2 * h, 2 * w) if fine else None
    fine_p = torch.randn(batch, fine, 2 * h, 2 * w) if fine else None
    masks = (torch.rand(2 * batch, 1, 4 * h, 4 * w) > 0.9).float()
    return queries, prompts, fine_q, fine_p, masks


def _build(embed_dim: int, layers: int, grid: tuple[int, int], fine: int) -> OneNIP:
    torch.manual_seed(0)
    return OneNIP(192, grid, embed_dim=embed_dim, num_heads=8, num_encoder_layers=layers, num_decoder_layers=layers, fine_features=fine)


def model_costs(embed_dim: int, layers: int, batch: int = 8, repeats: int = 3, fine: int = 152) -> dict[str, float]:
    grid = (16, 16)
    model = _build(embed_dim, layers, grid, fine)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    queries, prompts, fine_q, fine_p, masks = _step_inputs(batch, grid, fine)

    def step() -> None:
        recon, logits, _ = model.reconstruct_and_refine(queries, prompts, fine_q, fine_p)
        loss = onenip_loss(recon, queries, logits, masks, image_pixels=256 * 256)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()

    model.train()
    train = _timed(step, repeats) / batch
    model.eval()
    with torch.no_grad():
        infer = _timed(lambda: model(queries[:batch], prompts[:1], None if fine_q is None else fine_q[:batch],
                                     None if fine_p is None else fine_p[:1]), repeats) / batch  # fmt: skip
    return {
        "embed_dim": embed_dim,
        "layers": layers,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_ms_per_query": train * 1000,
        "infer_ms_per_image": infer * 1000,
    }


def step_profile(embed_dim: int = 128, layers: int = 2, batch: int = 8, repeats: int = 5, fine: int = 152) -> dict[str, float]:
    """Milliseconds per training step (batch queries + their synthetic copies) spent in each part,
    forward and backward, from module hooks; the rest (prompt residual, loss, optimizer) by difference."""
    grid = (16, 16)
    model = _build(embed_dim, layers, grid, fine)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    queries, prompts, fine_q, fine_p, masks = _step_inputs(batch, grid, fine)
    parts = {"input_proj": model.input_proj, "encoder": model.encoder, "decoder": model.decoder,
             "final_attention": model.final_prompt_to_image, "output_proj": model.output_proj, "refiner": model.refiner}  # fmt: skip
    spent = dict.fromkeys(parts, 0.0)
    started: dict[str, float] = {}

    def hooks(name: str, module: torch.nn.Module) -> None:
        def begin(*_: object) -> None:
            started[name] = time.perf_counter()

        def end(*_: object) -> None:
            spent[name] += time.perf_counter() - started.pop(name)

        module.register_forward_pre_hook(begin)
        module.register_forward_hook(end)
        module.register_full_backward_pre_hook(begin)
        module.register_full_backward_hook(end)

    for name, module in parts.items():
        if isinstance(module, torch.nn.ModuleList):  # hooks on each layer, summed
            for layer in module:
                hooks(name, layer)
        else:
            hooks(name, module)
    model.train()

    def step() -> None:
        recon, logits, _ = model.reconstruct_and_refine(queries, prompts, fine_q, fine_p)
        loss = onenip_loss(recon, queries, logits, masks, image_pixels=256 * 256)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()

    import warnings

    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # input_proj: its inputs need no grad
    step()  # warm-up, not counted
    for name in spent:
        spent[name] = 0.0
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    step_ms = (time.perf_counter() - began) * 1000 / repeats
    result = {name: value * 1000 / repeats for name, value in spent.items()}
    result["prompt residual, loss, optimizer, rest"] = step_ms - sum(result.values())
    result["step"] = step_ms
    return result


def step_variants(embed_dim: int = 128, layers: int = 2, batch: int = 8, repeats: int = 5, fine: int = 152) -> dict[str, float]:
    """Milliseconds per training step: eager float32, eager under CPU bfloat16 autocast, and
    ``torch.compile`` (inductor) of the forward; plus the compiled variant's first two steps (compilation)."""
    grid = (16, 16)
    queries, prompts, fine_q, fine_p, masks = _step_inputs(batch, grid, fine)
    result: dict[str, float] = {}
    for name in ("eager float32", "eager bfloat16 autocast", "torch.compile float32"):
        model = _build(embed_dim, layers, grid, fine).train()
        optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
        forward = torch.compile(model.reconstruct_and_refine) if "compile" in name else model.reconstruct_and_refine
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled="bfloat16" in name)

        def step(forward=forward, autocast=autocast, optimizer=optimizer) -> None:  # noqa: ANN001
            with autocast:
                recon, logits, _ = forward(queries, prompts, fine_q, fine_p)
                loss = onenip_loss(recon.float(), queries, logits.float(), masks, image_pixels=256 * 256)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()

        began = time.perf_counter()
        step()
        step()  # the compiled backward's graph is built on the first backward; both first steps count as set-up
        if "compile" in name:
            result["torch.compile: first two steps (compilation)"] = (time.perf_counter() - began) * 1000
        result[name] = _timed(step, repeats) * 1000
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_cost.json"))
    parser.add_argument("--step-variants", action="store_true", help="only time one step eager, under bfloat16 autocast and compiled")
    args = parser.parse_args()
    if args.step_variants:
        variants = step_variants()
        print(f"threads: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}\nOne training step (d 128, 2 + 2, batch 8 + 8 synthetic), ms:")
        print("| variant | ms |\n|---|---|\n" + "\n".join(f"| {name} | {value:.0f} |" for name, value in variants.items()))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": os.environ["OMP_NUM_THREADS"], "step_variants_ms": variants}, indent=2))
        return 0
    profile = step_profile()
    rows = [model_costs(d, layers) for d, layers in [(64, 2), (128, 1), (128, 2), (128, 4), (256, 2), (256, 4)]]
    extractor = FeatureExtractor("tf_efficientnet_lite0", pretrained=False)
    images = torch.rand(16, 3, 256, 256)
    backbone_ms = _timed(lambda: extractor(images), 2) / 16 * 1000
    synthesizer = AnomalySynthesizer(seed=0)
    generator = torch.Generator().manual_seed(0)
    synthesis_ms = _timed(lambda: [synthesizer(images[i], generator) for i in range(16)], 2) / 16 * 1000
    print(f"threads: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print("\nOne training step (d 128, 2 + 2 layers, batch 8 + 8 synthetic, 16 x 16 grid, fine path), ms:")
    print("| part | ms (forward + backward) |\n|---|---|")
    for name, value in profile.items():
        print(f"| {name} | {value:.0f} |")
    print()
    print("| d | layers (enc = dec) | params M | train ms / query (+ its synthetic copy) | reconstructor ms / image |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['embed_dim']} | {row['layers']} | {row['params_M']:.2f} | {row['train_ms_per_query']:.0f} | {row['infer_ms_per_image']:.0f} |")
    print(f"\nbackbone (lite0, 256 px, batch 16): {backbone_ms:.0f} ms / image; synthesis: {synthesis_ms:.0f} ms / image")
    print(f"on-the-fly synthetic anomalies add {backbone_ms + synthesis_ms:.0f} ms per query per step; a pool of K copies costs "
          f"K x {backbone_ms + synthesis_ms:.0f} ms per image once")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": os.environ["OMP_NUM_THREADS"], "step_profile_ms": profile, "models": rows,
                                    "backbone_ms_per_image": backbone_ms,
                                    "synthesis_ms_per_image": synthesis_ms}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
