"""The ``chemozone`` command line.

Exit codes: 0 all done; 1 a user-fixable error (printed as one line, no traceback); 2 usage error;
3 with ``--on-error skip`` when some samples failed (recorded in ``run.json``).

Every subcommand has one handler here, ``cli_<command>(args) -> int``, registered on its parser by direct
reference. A handler imports the library modules it needs when it runs, never at module level, so
``chemozone --help`` and ``--version`` stay fast and import no science packages (``tests/test_imports.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import ChemozoneError

__all__ = ["main", "build_parser", "cli_validate", "cli_synth", "cli_run", "cli_demo", "cli_report", "cli_view",
           "cli_export", "cli_import"]

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked (keeps ``--help`` fast)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        import chemozone

        print(f"chemozone {chemozone.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chemozone",
        description="Immune infiltration of chemokine-expression zones in multiplex images of irradiated explants.",
    )
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    v = sub.add_parser("validate", help="check a config (and optionally an input folder) without running")
    v.add_argument("config", type=Path, help="experiment config (YAML)")
    v.add_argument("input", type=Path, nargs="?", help="folder of images, samples.csv, or one image")
    v.set_defaults(handler=cli_validate)

    s = sub.add_parser("synth", help="write a synthetic explant cohort with ground truth")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--preset", choices=["tiny", "demo", "large", "stats", "dim_receptors"], default="demo")
    s.add_argument("--patients", type=int, default=None, help="number of patients (overrides the preset)")
    s.add_argument("--size", type=int, default=None, help="image side in pixels (overrides the preset)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--channels", default=None, help="comma-separated channel subset/extension of the default panel")
    s.set_defaults(handler=cli_synth)

    r = sub.add_parser("run", help="analyse a folder of images into a run folder")
    r.add_argument("input", type=Path, help="folder of images, samples.csv, or one image")
    r.add_argument("--config", type=Path, required=True, help="experiment config (YAML)")
    r.add_argument("--out", type=Path, required=True, help="run folder to write")
    r.add_argument("--no-report", action="store_true", help="skip writing OUT/report.html")
    r.add_argument("--cells", nargs="?", const="auto", default=None, metavar="FORMAT",
                   help="INPUT is a cell table (or a sheet with a cells_table column) without images: "
                        "auto, inform, halo, qupath, mcmicro, scimap, cellprofiler, codex")
    _add_table_options(r)
    _add_run_options(r)
    r.set_defaults(handler=cli_run)

    d = sub.add_parser("demo", help="synthesize a small cohort, run everything, write the report")
    d.add_argument("--out", type=Path, default=Path("chemozone-demo"), help="folder for the cohort and the run")
    d.add_argument("--preset", choices=["tiny", "demo"], default="demo")
    _add_run_options(d)
    d.set_defaults(handler=cli_demo)

    rp = sub.add_parser("report", help="write OUT/report.html from a run folder")
    rp.add_argument("out", type=Path, help="run folder")
    rp.set_defaults(handler=cli_report)

    vw = sub.add_parser("view", help="open an image, a sample folder or a run folder in napari")
    vw.add_argument("path", type=Path)
    vw.set_defaults(handler=cli_view)

    im = sub.add_parser("import", help="convert another tool's cell table to chemozone's columns (Parquet/CSV)")
    im.add_argument("format", choices=["auto", "inform", "halo", "qupath", "mcmicro", "scimap", "cellprofiler", "codex"])
    im.add_argument("table", type=Path, help="the exported cell table (.txt/.tsv/.csv, gzip allowed)")
    im.add_argument("--out", type=Path, required=True, help="file to write (.parquet or .csv)")
    im.add_argument("--sample-id", default=None, help="one sample id for the whole table")
    im.add_argument("--phenotypes", type=Path, default=None, help="CODEX: cluster id -> phenotype name (TSV)")
    _add_table_options(im)
    im.set_defaults(handler=cli_import)

    ex = sub.add_parser("export", help="export a run to the scverse ecosystem or to QuPath")
    ex.add_argument("out", type=Path, help="run folder")
    ex.add_argument("--to", choices=["anndata", "spatialdata", "qupath"], required=True)
    ex.add_argument("--dest", type=Path, default=None, help="output path (default: inside the run folder)")
    ex.add_argument("--cells", choices=["polygons", "points"], default="polygons",
                    help="qupath: cells as outlines (default) or centroids")
    ex.set_defaults(handler=cli_export)
    return p


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pixel-size-um", type=float, default=None,
                   help="µm per pixel of a table in pixels (default: config panel.pixel_size_um)")
    p.add_argument("--unit", choices=["auto", "um", "px"], default=None, help="unit of the positions (default: auto)")
    p.add_argument("--sample-column", default=None, help="column naming each cell's sample")


def _workers(text: str) -> int:
    """``--workers``: a whole number >= 0 (0 = no cluster, samples run in this process)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--workers must be a whole number >= 0 (0: no Dask cluster), got {text!r}")
    return n


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_workers, default=None,
                   help="local Dask workers (default: config run.workers); 0 runs every sample in this process, "
                        "without a Dask cluster (small cohorts, debugging)")
    p.add_argument("--memory-limit", default=None, help="memory limit per local worker, e.g. 4GB")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (tcp://host:8786)")
    p.add_argument("--resume", action="store_true", help="skip samples whose inputs and config are unchanged")
    p.add_argument("--on-error", choices=["raise", "skip"], default=None, help="stop at the first failure or skip it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cli_validate(args: argparse.Namespace) -> int:
    """``chemozone validate CONFIG [INPUT]``: print samples, channels and every problem found."""
    from rich.console import Console
    from rich.markup import escape

    from .config import load_config
    from .validate import validate_inputs

    console = Console(highlight=False, soft_wrap=True)
    cfg = load_config(args.config)
    console.print(f"config OK: {escape(str(args.config))}")
    if args.input is None:
        return EXIT_OK
    report = validate_inputs(args.input, cfg)
    for row in report.rows:
        console.print(row, markup=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    for prob in report.problems:
        console.print(f"[red]problem:[/red] {escape(prob)}")
    if report.problems:
        console.print(f"{len(report.problems)} problem(s) found")
        return EXIT_USER_ERROR
    console.print("inputs OK")
    return EXIT_OK


def cli_synth(args: argparse.Namespace) -> int:
    """``chemozone synth OUT [--preset P --patients N --size PX --seed S --channels A,B,...]``."""
    from .synth import generate_cohort

    channels = None
    if getattr(args, "channels", None):
        channels = [c.strip() for c in str(args.channels).split(",") if c.strip()]
    t0 = time.perf_counter()
    out = generate_cohort(args.out, preset=args.preset, patients=args.patients, size_px=args.size,
                          seed=args.seed, channels=channels, progress=True)
    n = sum(1 for _ in (Path(out) / "images").glob("*.ome.tif"))
    print(f"wrote {n} images with ground truth to {out} in {time.perf_counter() - t0:.1f} s "
          f"(config: {Path(out) / 'config.yaml'})")
    return EXIT_OK


def _run_options(args: argparse.Namespace) -> dict:
    """``run_batch`` keywords of the shared run options (``--workers`` is resolved by each command)."""
    return dict(scheduler=args.scheduler, memory_limit=args.memory_limit, resume=args.resume, on_error=args.on_error,
                progress=not args.quiet, command=sys.argv)


def cli_run(args: argparse.Namespace) -> int:
    """``chemozone run INPUT --config CFG --out OUT ...``"""
    from .run import run_batch

    if args.cells is not None:
        from .table_run import run_cell_tables

        res = run_cell_tables(args.input, _table_config(args), args.out, on_error=args.on_error, command=sys.argv)
    else:  # the run writes its report itself, on its Dask workers before they close
        res = run_batch(args.input, args.config, args.out, workers=args.workers, report=not args.no_report,
                        **_run_options(args))
    _print_summary(res)
    if res.report is not None:
        print(f"report: {res.report}")
    elif not args.no_report and any(s == "done" for s in res.statuses.values()):
        from .report import write_report

        print(f"report: {write_report(res.out)}")
    return res.exit_code


def _table_config(args: argparse.Namespace):
    """The config with the command line's table options (``--cells FORMAT``, ``--unit``, ``--sample-column``,
    ``--pixel-size-um``) in place of its ``cell_tables`` / ``panel.pixel_size_um`` values."""
    from .config import config_from_dict, load_config

    cfg = load_config(getattr(args, "config", None))
    data = cfg.model_dump(mode="json")
    ct = data["cell_tables"]
    for key, val in (("format", getattr(args, "cells", None)), ("unit", args.unit), ("sample_column", args.sample_column)):
        if val is not None and not (key == "format" and val == "auto" and ct["format"] != "auto"):
            ct[key] = val
    if args.pixel_size_um is not None:
        data["panel"]["pixel_size_um"] = args.pixel_size_um
    return config_from_dict(data, source=str(getattr(args, "config", "command line")))


def cli_import(args: argparse.Namespace) -> int:
    """``chemozone import FORMAT TABLE --out FILE [--pixel-size-um --unit --sample-column --sample-id]``."""
    from .io import read_cell_table

    t = read_cell_table(args.table, args.format, pixel_size_um=args.pixel_size_um, unit=args.unit or "auto",
                        sample_column=args.sample_column, sample_id=args.sample_id, phenotypes_file=args.phenotypes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        t.cells.to_csv(out, index=False)
    else:
        from .layout import write_parquet

        write_parquet(t.cells, out)
    n_s = t.cells["sample_id"].nunique()
    print(f"wrote {len(t.cells)} cells of {n_s} sample{'s' if n_s != 1 else ''} ({t.format}, positions in "
          f"{'µm' if t.unit == 'um' else f'pixels × {t.pixel_size_um} µm'}; markers {', '.join(t.markers)}) to {out}")
    return EXIT_OK


def cli_demo(args: argparse.Namespace) -> int:
    """``chemozone demo [--out DIR]``: synthesize the demo cohort, run it, write the report."""
    import os

    from .run import run_batch
    from .synth import generate_cohort

    out = Path(args.out)
    cohort = out / "cohort"
    t0 = time.perf_counter()
    if not (cohort / "samples.csv").is_file():
        print(f"generating the synthetic '{args.preset}' cohort in {cohort} ...")
        generate_cohort(cohort, preset=args.preset)
    run_dir = out / "run"
    workers = min(2, os.cpu_count() or 1) if args.workers is None else args.workers
    res = run_batch(cohort, cohort / "config.yaml", run_dir, workers=workers, report=True, **_run_options(args))
    if res.report is None:  # no sample done: the report says why
        from .report import write_report

        res.report = write_report(run_dir)
    report = res.report
    _print_summary(res)
    print(f"report: {report}")
    print(f"cohort tables: {run_dir / 'cells.parquet'}, {run_dir / 'infiltration.parquet'}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return res.exit_code


_MAX_PRINTED_WARNINGS = 30


def _print_summary(res) -> None:
    """One line for the run (``RunResult``), then its plausibility warnings (cohort first, then per sample, at
    most :data:`_MAX_PRINTED_WARNINGS`), then one line per failed sample on stderr.

    A done sample with 0 cells is counted in the first line, so an empty result never reads as a normal one.
    """
    from .layout import RunLayout
    from .plausibility import format_warning

    n_ok = sum(1 for s in res.statuses.values() if s == "done")
    warnings = list(getattr(res, "warnings", []) or [])
    empty = sorted({w["sample"] for w in warnings if w["code"] == "no_cells" and res.statuses.get(w["sample"]) == "done"})
    extra = []
    if empty:
        extra.append(f"{len(empty)} with 0 cells: {', '.join(empty)}")
    if warnings:
        extra.append(f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}, see below and run.json")
    more = f" ({'; '.join(extra)})" if extra else ""
    print(f"{n_ok}/{len(res.statuses)} samples done{more}; results in {res.out}")
    ordered = [w for w in warnings if w["sample"] is None] + [w for w in warnings if w["sample"] is not None]
    for w in ordered[:_MAX_PRINTED_WARNINGS]:
        print(f"warning: {format_warning(w)}")
    if len(ordered) > _MAX_PRINTED_WARNINGS:
        print(f"... and {len(ordered) - _MAX_PRINTED_WARNINGS} more warnings in {RunLayout(res.out).run_json}")
    for err in res.errors.values():
        print(f"failed: {err}", file=sys.stderr)


def cli_report(args: argparse.Namespace) -> int:
    """``chemozone report OUT``: write ``OUT/report.html``."""
    from .report import write_report

    path = write_report(args.out)
    print(f"wrote {path}")
    return EXIT_OK


def cli_view(args: argparse.Namespace) -> int:
    """``chemozone view PATH``: open napari on an image or a run folder (needs the napari extra)."""
    try:
        import napari
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("napari is not installed; pip install 'chemozone[napari]'") from None
    if not Path(args.path).exists():
        from .errors import ImageError

        raise ImageError(f"{args.path}: path not found")
    viewer = napari.Viewer()
    viewer.open(str(args.path), plugin="chemozone")
    napari.run()
    return EXIT_OK


def cli_export(args: argparse.Namespace) -> int:
    """``chemozone export OUT --to anndata|spatialdata|qupath [--dest PATH] [--cells polygons|points]``."""
    from .export import export_anndata, export_spatialdata

    if args.to == "qupath":
        from .qupath import export_qupath

        path = export_qupath(args.out, getattr(args, "dest", None), cells=getattr(args, "cells", "polygons"))
    else:
        fn = export_anndata if args.to == "anndata" else export_spatialdata
        path = fn(args.out, getattr(args, "dest", None))
    print(f"wrote {path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chemozone`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    import logging

    # tifffile reports damaged tags through logging; chemozone turns unreadable files into one-line errors
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        return int(args.handler(args) or 0)
    except ChemozoneError as exc:
        print(f"chemozone: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("chemozone: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
