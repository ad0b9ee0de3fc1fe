"""A whole-section-sized synthetic image in minutes, for speed benchmarks (issue 18).

Rendering a 40k² section with :func:`chemozone.synth.generate_cohort` would take about an hour (the 16k²
``large`` preset takes ~10 minutes), so this builds one from a **generated 4096² sample** of the ``large``
preset (photon 10 Gy, with the 15-channel default panel unless ``--channels large``): the section is a grid
of 4096² blocks, each a copy of the sample turned by one of the 8 rotations/reflections of the square
(seeded), written as a tiled OME-TIFF (512² tiles, zlib level 1, 0.5 µm pixels) strip by strip, so memory
stays at one sample plus one strip. Cells cut by a block seam are cut as by a tile edge of a real scanner
mosaic; the image has no per-cell truth (it is for timing, not accuracy; accuracy at scale is checked on
the generator's own samples).

The folder is a cohort a user would run (``images/``, ``samples.csv``, ``config.yaml`` = the source
sample's generated config), cached by size, seed, channel set and a hash of the generator's source.

Usage::

    python benchmarks/mosaic_section.py --size 40000 --dir /tmp/cz-bench-large   # ~4096² render + write
    python benchmarks/bench_large.py --mosaic --size 40000 --run --workers 2 --skip-segmentation
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))

BLOCK_PX = 4096
TILE_PX = 512


def _dihedral(block: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square applied to the last two axes of (C, Y, X)."""
    out = np.rot90(block, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def source_sample(base: Path, *, channels: str, seed: int, synth_hash: str) -> Path:
    """The generated 4096² ``large``-preset sample the mosaic is made of (cached)."""
    from chemozone.synth import generate_cohort
    from chemozone.synth._params import DEFAULT_CHANNELS, LARGE_CHANNELS

    out = base / f"mosaic_source_{channels}_s{seed}"
    stamp = {"size": BLOCK_PX, "synth": synth_hash, "channels": channels, "seed": seed}
    sfile = out / "bench_stamp.json"
    if sfile.exists() and json.loads(sfile.read_text()) == stamp:
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    panel = DEFAULT_CHANNELS if channels == "default" else LARGE_CHANNELS
    generate_cohort(out, preset="large", size_px=BLOCK_PX, seed=seed, channels=panel)
    sfile.write_text(json.dumps(stamp))
    print(f"mosaic source: generated {out} in {time.perf_counter() - t0:.0f} s")
    return out


def mosaic_cohort(size: int, base: Path, *, channels: str = "default", seed: int = 0, synth_hash: str) -> Path:
    """A cohort of one ``size``² section, a seeded mosaic of turned copies of :func:`source_sample`."""
    import tifffile

    from chemozone.io import read_image

    out = base / f"cohort_mosaic_{channels}_{size}_s{seed}"
    stamp = {"size": size, "synth": synth_hash, "channels": channels, "seed": seed, "block": BLOCK_PX}
    sfile = out / "bench_stamp.json"
    if sfile.exists() and json.loads(sfile.read_text()) == stamp and (out / "samples.csv").exists():
        print(f"cohort: cached {out}")
        return out
    src = source_sample(base, channels=channels, seed=seed, synth_hash=synth_hash)
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    t0 = time.perf_counter()
    img = read_image(next((src / "images").glob("*.ome.tif")))
    data = np.asarray(img.data)  # (C, 4096, 4096) uint16, ~0.5 GB for 15 channels
    n = -(-size // BLOCK_PX)
    turns = np.random.default_rng(seed).integers(0, 8, size=(n, n))
    blocks = {k: _dihedral(data, k) for k in np.unique(turns)}
    c = data.shape[0]
    sid = f"P01_photon_10Gy_mosaic{size}"
    path = out / "images" / f"{sid}.ome.tif"
    ntx = -(-size // TILE_PX)

    def tiles():
        for ci in range(c):
            for ty in range(-(-size // TILE_PX)):
                y0 = ty * TILE_PX
                strip = np.zeros((TILE_PX, ntx * TILE_PX), np.uint16)
                by, oy = divmod(y0, BLOCK_PX)  # TILE_PX divides BLOCK_PX: a strip lies in one block row
                rows = min(TILE_PX, size - y0)
                for bx in range(n):
                    x0 = bx * BLOCK_PX
                    w = min(BLOCK_PX, size - x0)
                    strip[:rows, x0:x0 + w] = blocks[turns[by, bx]][ci, oy:oy + rows, :w]
                for tx in range(ntx):
                    yield strip[:, tx * TILE_PX:(tx + 1) * TILE_PX]

    meta = {"axes": "CYX", "Channel": {"Name": list(img.channels)}, "PhysicalSizeX": img.pixel_size_um,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeY": img.pixel_size_um, "PhysicalSizeYUnit": "µm"}
    res = 1e4 / img.pixel_size_um
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(tiles(), shape=(c, size, size), dtype=np.uint16, tile=(TILE_PX, TILE_PX), metadata=meta,
                 compression="zlib", compressionargs={"level": 1}, maxworkers=2,
                 resolution=(res, res), resolutionunit="CENTIMETER")
    (out / "samples.csv").write_text("sample_id,image,patient,radiation,dose_gy,replicate\n"
                                     f"{sid},images/{sid}.ome.tif,P01,photon,10.0,1\n")
    shutil.copy(src / "config.yaml", out / "config.yaml")
    sfile.write_text(json.dumps(stamp))
    print(f"cohort: mosaic {size}² x {c} channels written to {path} in {time.perf_counter() - t0:.0f} s "
          f"({path.stat().st_size / 1e9:.1f} GB)")
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_large import _synth_hash

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cz-bench-large"))
    ap.add_argument("--channels", choices=["default", "large"], default="default",
                    help="the 15-channel default panel or the large preset's 8 channels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    mosaic_cohort(args.size, args.dir, channels=args.channels, seed=args.seed, synth_hash=_synth_hash())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
