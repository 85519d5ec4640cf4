"""The engine's scale-out flags (``--devices``, ``--resume``, ``--ray``, ``--ray_workers``):
added to the parser by ``options.build_parser`` and checked into the RunSpec by
``options.validate``."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace

from mlc.engine import UsageError
from mlc.engine.spec import RunSpec

DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?|all)$")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The scale-out group of flags."""
    g = parser.add_argument_group(
        "scale-out",
        "one engine per device, images handed out one at a time; the files, names, seeds and "
        "metadata are those of a one-device run (docs/scale-out.md)",
    ).add_argument
    g(
        "--devices",
        type=str,
        default=None,
        metavar="LIST",
        help="devices to share the run, e.g. cuda:0,cuda:1, all (every GPU) or cpu,cpu",
    )
    g(
        "--resume",
        action="store_true",
        help="continue the latest run with these flags in --outdir: keep its verified images, "
        "make the missing ones",
    )
    g(
        "--ray",
        type=str,
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (ADDRESS, e.g. 10.0.0.1:6379, or 'local'): one worker per "
        "GPU, else per CPU; needs pip install 'mlc-toolkit[cluster]'",
    )
    g(
        "--ray_workers",
        type=int,
        default=None,
        metavar="N",
        help="--ray: this many workers (default: one per GPU of the cluster, else per CPU)",
    )


def parse_devices(text: str) -> list[str]:
    """``cuda:0, cuda:1`` -> ["cuda:0", "cuda:1"]; UsageError on anything else."""
    devices = [d.strip().lower() for d in text.split(",")]
    bad = [d for d in devices if not DEVICE.match(d)]
    if bad or not devices:
        raise UsageError(
            f"--devices: {bad[0] if bad else text!r} is not a device; use cpu, mps, cuda:N or "
            "all, comma-separated (e.g. cuda:0,cuda:1)"
        )
    if devices.count("mps") > 1:
        raise UsageError("--devices: there is one mps device")
    cuda = [d if d != "cuda" else "cuda:0" for d in devices if d.startswith("cuda")]
    if len(set(cuda)) != len(cuda):
        raise UsageError(f"--devices: a GPU is named twice ({text})")
    return devices


def apply(args: argparse.Namespace, spec: RunSpec) -> RunSpec:
    """SPEC with the scale-out flags, checked against the others."""
    devices = parse_devices(args.devices) if args.devices else []
    ray = args.ray.strip() if args.ray else None
    if args.ray is not None and not ray:
        raise UsageError("--ray needs an address (HOST:6379) or 'local'")
    if ray and devices:
        raise UsageError("--ray and --devices cannot be combined (Ray picks the devices)")
    if args.ray_workers is not None and (not ray or args.ray_workers < 1):
        raise UsageError("--ray_workers needs --ray and a count of 1 or more")
    scaled = bool(devices or ray or args.resume)
    if scaled:
        what = "--ray" if ray else "--devices" if devices else "--resume"
        if spec.axes:
            raise UsageError(f"{what} cannot be combined with --x/--y/--z (a grid)")
        if spec.batched:
            raise UsageError(f"{what} cannot be combined with --batched (images go one by one)")
        if args.resume and spec.skip_save:
            raise UsageError("--resume cannot be combined with --skip_save (nothing is saved)")
    return replace(spec, devices=devices, ray=ray, ray_workers=args.ray_workers, resume=args.resume)
