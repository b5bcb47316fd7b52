"""Backbone milliseconds per image by images per pass (``onenip.models.backbone.CPU_CHUNK``), on this machine.

For each input size, a batch of 16 random images goes through ``FeatureExtractor.forward_pyramid`` in
passes of 1, 2, 4, 8 and 16 images; the table gives the time per image and the largest difference to the
features of one 16-image pass (0 = bit-identical). ``--channels-last`` adds the same with the backbone in
channels-last memory format (a record: it changes the features at about 1e-6 relative). Prints a table
and writes JSON:

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/backbone_chunk.py --channels-last --out R/backbone_chunk.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--sizes", default="256x256,400x160,272x240", help="HxW input sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    import onenip.models.backbone as backbone
    from onenip.config import load_params

    params = load_params(args.params)
    extractor = backbone.build_feature_extractor(params.model.backbone).eval()
    variants = [("contiguous", extractor)]
    if args.channels_last:
        other = copy.deepcopy(extractor)
        other.backbone = other.backbone.to(memory_format=torch.channels_last)
        variants.append(("channels_last", other))
    rows = []
    saved = backbone.CPU_CHUNK
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for size in args.sizes.split(","):
                height, width = (int(v) for v in size.split("x"))
                images = torch.randn(16, 3, height, width, generator=generator)
                backbone.CPU_CHUNK = 16
                reference = extractor.forward_pyramid(images)
                for name, model in variants:
                    for chunk in (1, 2, 4, 8, 16):
                        backbone.CPU_CHUNK = chunk
                        out = model.forward_pyramid(images)  # warm-up
                        start = time.perf_counter()
                        for _ in range(args.repeats):
                            out = model.forward_pyramid(images)
                        ms = (time.perf_counter() - start) / args.repeats / len(images) * 1000
                        difference = max(float((a - b).abs().max()) for a, b in zip(out, reference, strict=True) if a is not None)
                        rows.append({"size": size, "layout": name, "images_per_pass": chunk, "ms_per_image": ms, "max_abs_difference": difference})
                        print(f"| {size} | {name} | {chunk} | {ms:.1f} | {difference:.1e} |", flush=True)
    finally:
        backbone.CPU_CHUNK = saved
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
