#!/usr/bin/env python3
"""Times auscult's CNN against PyTorch and ONNX Runtime on the same machine, in one run.

Builds the reference design (conv-BN-ReLU x2 + 2x2 max-pool in three blocks of 32-64-128
channels, three 1024-unit layers, 18 classes; input 1x48x64) in PyTorch, exports it to ONNX,
times both at batch 1 and 32 and one Adam training step at batch 16, runs
`auscult bench analysis --json` for the same figures, and prints one table with ratios.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -r bench/peers/requirements.txt
    /tmp/peers/bin/python bench/peers/compare.py [--auscult PATH] [--seconds S] [--json]

Every runtime gets the same number of threads (all cores unless --threads says otherwise).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHANNELS = (32, 64, 128)
HIDDEN = (1024, 1024, 1024)
CLASSES = 18
FRAMES, BANDS = 48, 64
TRAIN_BATCH = 16


def fail(message):
    print(f"compare.py: {message}", file=sys.stderr)
    sys.exit(2)


try:
    import numpy as np
    import onnxruntime as ort
    import torch
    from torch import nn
except ImportError as e:
    fail(f"{e.name} is missing: pip install -r bench/peers/requirements.txt")


def reference_network():
    layers, c_in = [], 1
    for c in CHANNELS:
        for a, b in ((c_in, c), (c, c)):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        c_in = c
    width = CHANNELS[-1] * (FRAMES // 8) * (BANDS // 8)
    layers.append(nn.Flatten())
    for units in HIDDEN:
        layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(0.2)]
        width = units
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


def per_window(call, batch, seconds):
    """Seconds per window: warm up, then repeat `call` for at least `seconds` (5 runs minimum)."""
    for _ in range(3):
        call()
    runs, started = 0, time.perf_counter()
    while runs < 5 or time.perf_counter() - started < seconds:
        call()
        runs += 1
    return (time.perf_counter() - started) / (runs * batch)


def windows(batch):
    i = np.arange(batch * FRAMES * BANDS, dtype=np.int64)
    values = ((i * 7919) % 1000).astype(np.float32) / 500.0 - 1.0
    return values.reshape(batch, 1, FRAMES, BANDS)


def time_pytorch(seconds, threads):
    torch.set_num_threads(threads)
    network = reference_network().eval()
    figures = {}
    with torch.inference_mode():
        for batch in (1, 32):
            x = torch.from_numpy(windows(batch))
            figures[f"ms_batch{batch}"] = per_window(lambda: network(x), batch, seconds) * 1e3
    train = reference_network().train()
    optimizer = torch.optim.Adam(train.parameters(), lr=1e-4)
    x = torch.from_numpy(windows(TRAIN_BATCH))
    y = torch.arange(TRAIN_BATCH) % CLASSES
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(train(x), y).backward()
        optimizer.step()

    figures["train_step_ms_batch16"] = per_window(step, 1, seconds) * 1e3
    return network, figures


def time_onnxruntime(network, seconds, threads):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "reference.onnx")
        torch.onnx.export(
            network,
            (torch.from_numpy(windows(1)),),
            path,
            input_names=["windows"],
            output_names=["logits"],
            dynamic_axes={"windows": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    figures = {}
    for batch in (1, 32):
        x = windows(batch)
        figures[f"ms_batch{batch}"] = (
            per_window(lambda: session.run(None, {"windows": x}), batch, seconds) * 1e3
        )
    return figures


def find_auscult(given):
    if given:
        return given
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        shutil.which("auscult"),
        os.path.join(os.environ.get("CARGO_TARGET_DIR", ""), "release", "auscult"),
        os.path.expanduser("~/.cache/auscult/target/release/auscult"),
        os.path.join(here, "..", "..", "target", "release", "auscult"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    fail("no auscult binary found: build it (cargo build --release --workspace) or pass --auscult")


def time_auscult(binary, seconds):
    done = subprocess.run(
        [binary, "bench", "analysis", "--json", "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        fail(f"{binary} bench analysis failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--auscult", help="the auscult binary (default: found on PATH or in target/)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per runtime")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600:
        fail("--seconds must lie between 0 and 600")

    binary = find_auscult(args.auscult)
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    # auscult first: PyTorch's and ONNX Runtime's worker threads keep spinning for a while after
    # their last run, and would take cores from whatever runs next.
    say(f"timing {binary} bench analysis…")
    # auscult sizes its pool from the cores; RAYON_NUM_THREADS holds it to the same count.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    ours = time_auscult(binary, args.seconds)
    say(f"timing PyTorch {torch.__version__} on {args.threads} threads…")
    network, pytorch = time_pytorch(args.seconds, args.threads)
    say(f"timing ONNX Runtime {ort.__version__}…")
    onnx = time_onnxruntime(network, args.seconds, args.threads)
    auscult = {
        "ms_batch1": ours["cnn_ms_batch1"],
        "ms_batch32": ours["cnn_ms_batch32"],
        "train_step_ms_batch16": ours.get("train_step_ms_batch16"),
    }
    result = {
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "auscult": auscult,
        "pytorch": pytorch,
        "onnxruntime": onnx,
        "auscult_burn_forward": {
            "ms_batch1": ours.get("burn_ms_batch1"),
            "ms_batch32": ours.get("burn_ms_batch32"),
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return

    def cell(value):
        return "—" if value is None else f"{value:.2f}"

    def ratio(peer, mine):
        return "—" if peer is None or not mine else f"{peer / mine:.2f}×"

    rows = [
        ("auscult (compiled path)", auscult),
        ("auscult, burn's own forward pass", result["auscult_burn_forward"]),
        (f"PyTorch {torch.__version__}, eager, inference mode", pytorch),
        (f"ONNX Runtime {ort.__version__}, CPU provider", onnx),
    ]
    print(f"reference design, {args.threads} threads; ratio = peer time / auscult time (above 1: auscult is faster)")
    print("| runtime | ms/window batch 1 | ratio | ms/window batch 32 | ratio | train step batch 16 (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, figures in rows:
        train = figures.get("train_step_ms_batch16")
        print(
            f"| {name} | {cell(figures['ms_batch1'])} | {ratio(figures['ms_batch1'], auscult['ms_batch1'])} "
            f"| {cell(figures['ms_batch32'])} | {ratio(figures['ms_batch32'], auscult['ms_batch32'])} "
            f"| {cell(train)} | {ratio(train, auscult['train_step_ms_batch16'])} |"
        )


if __name__ == "__main__":
    main()
