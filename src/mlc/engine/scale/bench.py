"""The scaling row: images per second of one bulk run on 1 device and on N devices.

``python -m mlc.engine.scale.bench --devices cpu,cpu --json OUT [engine flags]`` (``make
bench-scale``) runs the same job, each time as a fresh engine command in a new output
folder, with ``--devices D0`` and with ``--devices D0,...,Dn`` (each device its own engine
process), and reports images per second over the generation (from the plan to the last saved
image: model loading excluded), the wall time of the command, the speed-up and that both
runs wrote the same files (byte for byte). Engine flags pass through (``--ckpt``, ``--H``,
``--n_iter``, ...). On CPU, give every process one thread (``OMP_NUM_THREADS=1``, as ``make
bench-scale`` does): CPU kernels round differently with another thread count, so the files
of a 1-process and a 2-process run only match with the same count, and several processes
each with every core slow each other down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_once(devices: str, flags: list[str], outdir: Path) -> dict[str, Any]:
    """One engine command with --devices DEVICES; its row."""
    argv = [sys.executable, "-m", "mlc.engine.txt2img", *flags, "--devices", devices]
    argv += ["--outdir", str(outdir), "--skip_grid", "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"mlc-scale-bench: error: --devices {devices}: {tail[0]}")
    summary = json.loads(r.stdout)
    made = sum(d["made"] for d in summary["devices"])
    return {
        "devices": devices,
        "images": made,
        "images_per_s": summary["timings"]["images_per_s"],
        "generate_s": summary["timings"]["generate_s"],
        "wall_s": round(wall, 2),
        "per_device": {d["device"]: d["images_per_s"] for d in summary["devices"]},
    }


def files(outdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((outdir / "samples").glob("*.png"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlc.engine.scale.bench",
        description="Images per second of one bulk run on 1 device and on several.",
    )
    parser.add_argument("--devices", default="cpu,cpu", help="the devices of the N-device run")
    parser.add_argument("--json", dest="out", default=None, help="write the rows to this file")
    args, flags = parser.parse_known_args(argv)
    devices = args.devices.split(",")
    with tempfile.TemporaryDirectory(prefix="mlc-scale-bench-") as tmp:
        rows = []
        for which in (devices[0], args.devices):
            out = Path(tmp) / f"run-{len(rows)}"
            rows.append(run_once(which, flags, out))
            print(
                f"--devices {which}: {rows[-1]['images']} images, "
                f"{rows[-1]['images_per_s']} images/s ({rows[-1]['wall_s']} s wall)",
                file=sys.stderr,
            )
        same = files(Path(tmp) / "run-0") == files(Path(tmp) / "run-1")
    one, many = rows
    report = {
        "flags": flags,
        "rows": rows,
        "speedup": round(many["images_per_s"] / one["images_per_s"], 2)
        if one["images_per_s"]
        else None,
        "same_files": same,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
