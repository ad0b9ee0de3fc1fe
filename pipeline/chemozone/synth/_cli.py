"""``chemozone synth`` command-line handler (moves to :mod:`chemozone.cli`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._cohort import generate_cohort


def cli_synth(args: argparse.Namespace) -> int:
    """``chemozone synth OUT [--preset P --patients N --size PX --seed S --channels A,B,...]``."""
    channels = None
    if getattr(args, "channels", None):
        channels = [c.strip() for c in str(args.channels).split(",") if c.strip()]
    t0 = time.perf_counter()
    out = generate_cohort(args.out, preset=args.preset, patients=args.patients, size_px=args.size,
                          seed=args.seed, channels=channels, progress=True)
    n = sum(1 for _ in (Path(out) / "images").glob("*.ome.tif"))
    print(f"wrote {n} images with ground truth to {out} in {time.perf_counter() - t0:.1f} s "
          f"(config: {Path(out) / 'config.yaml'})")
    return 0
