#!/usr/bin/env python3
"""Measures what lossless FLAC compression of one-second audio frames buys, and what it costs in CPU.

The system stores each one-second microphone frame (16 kHz, mono, 16-bit PCM, 32,000 bytes) as its own
row, so every frame is FLAC-encoded on its own here, as a complete FLAC stream, at compression levels
0, 5 and 8. zlib level 6 on the raw PCM bytes is the general-purpose baseline: if it gains little, byte-
oriented compressors such as zstd or PostgreSQL's pglz (TOAST) will not gain more on this kind of data.

For each codec it reports:
  - compression ratio (raw bytes / compressed bytes): overall, per machine type, and the 5th percentile
    and median over single frames (the 5th percentile is what the least compressible frames get);
  - encode and decode CPU time per second of audio (time.process_time over all frames, one thread,
    median of --passes passes);
  - cores needed to encode 3,000 sensors at one frame per second (3000 x encode seconds per audio second).

Every frame is decoded again and compared with the original, so a lossy path would fail loudly.

Recordings are WAV files under DATA_DIR (default: ../shared/data beside the repository), with machine
types taken from the manifest.csv files there (or, failing that, the top-level folder name). Up to
--per-type files per machine type are taken, evenly spaced over the sorted list so the choice is
deterministic. Channel 0 is used; files not sampled at 16 kHz are skipped and counted, not resampled.

    python3 -m venv ~/.cache/auscult/compression-venv
    ~/.cache/auscult/compression-venv/bin/pip install -r bench/compression/requirements.txt
    ~/.cache/auscult/compression-venv/bin/python bench/compression/flac.py [--per-type 20] [--passes 5] [--json] [DATA_DIR]

FLAC goes through soundfile's bundled libsndfile and libFLAC. Timings include the Python and libsndfile
call overhead per frame, so they are an upper bound on what a native encoder would spend; the
uncompressed-WAV row written through the same path shows how large that overhead is.

This is a one-off measurement for a design decision; it is not run in CI.
"""

import argparse
import csv
import gc
import io
import json
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

SAMPLE_RATE = 16_000
FRAME_SAMPLES = SAMPLE_RATE  # one second
FRAME_BYTES = FRAME_SAMPLES * 2
FLAC_LEVELS = (0, 5, 8)
ZLIB_LEVEL = 6
SENSORS = 3_000


def fail(message):
    print(f"flac.py: {message}", file=sys.stderr)
    sys.exit(2)


try:
    import numpy as np
    import soundfile as sf
except ImportError as e:
    fail(f"{e.name} is missing: pip install -r bench/compression/requirements.txt")


def default_data_dir():
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data"


def machine_types_from_manifests(data_dir):
    """Maps each WAV file's resolved path to the machine type its folder's manifest.csv names."""
    types = {}
    for manifest in data_dir.rglob("manifest.csv"):
        with manifest.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("path") and row.get("machine_type"):
                    types[(manifest.parent / row["path"]).resolve()] = row["machine_type"]
    return types


def discover(data_dir, say):
    """Returns ({machine type: [usable paths]}, [(path, reason) skipped])."""
    types = machine_types_from_manifests(data_dir)
    by_type, skipped = defaultdict(list), []
    for path in sorted(p for p in data_dir.rglob("*") if p.suffix.lower() == ".wav"):
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as e:
            skipped.append((path, f"unreadable: {e}"))
            continue
        if info.samplerate != SAMPLE_RATE:
            skipped.append((path, f"sample rate {info.samplerate} Hz, not {SAMPLE_RATE}"))
            continue
        if info.frames < FRAME_SAMPLES:
            skipped.append((path, f"shorter than one second ({info.frames} samples)"))
            continue
        kind = types.get(path.resolve()) or path.relative_to(data_dir).parts[0]
        by_type[kind].append(path)
    say(f"found {sum(map(len, by_type.values()))} usable WAV files, {len(skipped)} skipped")
    return dict(sorted(by_type.items())), skipped


def evenly_spaced(items, n):
    """Up to n items spread evenly over a sorted list, so normal and anomalous clips both appear."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def read_channel0_int16(path):
    """Channel 0 as int16, the way the system stores it."""
    info = sf.info(str(path))
    if info.subtype == "PCM_16":
        return sf.read(str(path), dtype="int16", always_2d=True)[0][:, 0]
    # Other encodings (float, 24/32-bit, 8-bit) are read as float in [-1, 1] and scaled.
    x = sf.read(str(path), dtype="float64", always_2d=True)[0][:, 0]
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def frames_of(samples):
    """Whole one-second frames; a trailing partial second is dropped, as the recorder would not emit it."""
    count = len(samples) // FRAME_SAMPLES
    return [samples[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES] for i in range(count)]


# Codecs: each has encode(int16 frame) -> bytes and decode(bytes) -> int16 array.

def flac_codec(level):
    # libsndfile takes the FLAC level (0..8) as a fraction of 8.
    fraction = level / 8

    def encode(frame):
        buf = io.BytesIO()
        sf.write(buf, frame, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=fraction)
        return buf.getvalue()

    def decode(blob):
        return sf.read(io.BytesIO(blob), dtype="int16")[0]

    return encode, decode


def wav_codec():
    # Same Python and libsndfile path as FLAC with no compression: the per-call overhead floor.
    def encode(frame):
        buf = io.BytesIO()
        sf.write(buf, frame, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        return buf.getvalue()

    def decode(blob):
        return sf.read(io.BytesIO(blob), dtype="int16")[0]

    return encode, decode


def zlib_codec(level):
    def encode(frame):
        return zlib.compress(frame.astype("<i2").tobytes(), level)

    def decode(blob):
        return np.frombuffer(zlib.decompress(blob), dtype="<i2")

    return encode, decode


def cpu_seconds(fn, items, passes):
    """Runs fn over items `passes` times; returns (results, median process CPU seconds of one pass).

    A single pass over a few hundred frames takes only tenths of a second, so one pass is noisy; the
    median of several is steady. GC is paused so a collection does not land in one codec's time.
    """
    times = []
    for _ in range(passes):
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            results = [fn(x) for x in items]
            times.append(time.process_time() - start)
        finally:
            gc.enable()
    return results, float(np.median(times))


def flac_header_bytes(blob):
    """Bytes before the first audio frame: the 'fLaC' marker and metadata blocks (STREAMINFO, comments)."""
    pos, last = 4, False
    while not last:
        last = bool(blob[pos] & 0x80)
        pos += 4 + int.from_bytes(blob[pos + 1:pos + 4], "big")
    return pos


def measure(name, level, codec, frames, kinds, passes):
    encode, decode = codec
    blobs, enc_s = cpu_seconds(encode, frames, passes)
    decoded, dec_s = cpu_seconds(decode, blobs, passes)
    for frame, back in zip(frames, decoded):
        if not np.array_equal(frame, back):
            fail(f"{name} level {level} did not round-trip a frame losslessly")

    sizes = np.array([len(b) for b in blobs], dtype=np.float64)
    ratios = FRAME_BYTES / sizes
    per_type = {}
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        per_type[kind] = {
            "ratio": FRAME_BYTES * int(mask.sum()) / sizes[mask].sum(),
            "frame_ratio_p5": float(np.percentile(ratios[mask], 5)),
            "frame_ratio_median": float(np.median(ratios[mask])),
        }
    audio_seconds = len(frames)  # one frame is one second
    result = {
        "codec": name,
        "level": level,
        "frames": len(frames),
        "ratio": FRAME_BYTES * len(frames) / sizes.sum(),
        "frame_ratio_p5": float(np.percentile(ratios, 5)),
        "frame_ratio_median": float(np.median(ratios)),
        "mean_bytes_per_frame": float(sizes.mean()),
        "per_type": per_type,
        "encode_ms_per_audio_s": 1000 * enc_s / audio_seconds,
        "decode_ms_per_audio_s": 1000 * dec_s / audio_seconds,
        "cores_to_encode_sensors": SENSORS * enc_s / audio_seconds,
    }
    if name == "flac":
        result["stream_header_bytes"] = flac_header_bytes(blobs[0])
    return result


def markdown(results, kinds):
    head = (["codec", "level", "ratio", "frame p5", "frame median"]
            + [f"ratio {k}" for k in kinds]
            + ["encode ms/s audio", "decode ms/s audio", f"cores to encode {SENSORS:,} sensors"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = ([r["codec"], str(r["level"]) if r["level"] is not None else "-",
                f"{r['ratio']:.3f}", f"{r['frame_ratio_p5']:.3f}", f"{r['frame_ratio_median']:.3f}"]
               + [f"{r['per_type'][k]['ratio']:.3f}" for k in kinds]
               + [f"{r['encode_ms_per_audio_s']:.3f}", f"{r['decode_ms_per_audio_s']:.3f}",
                  f"{r['cores_to_encode_sensors']:.2f}"])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=default_data_dir(),
                        help="folder searched for WAV files (default: ../shared/data beside the repository)")
    parser.add_argument("--per-type", type=int, default=20, help="files sampled per machine type")
    parser.add_argument("--passes", type=int, default=5,
                        help="timed passes over all frames per codec; the median is reported")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731 - progress goes to stderr, results to stdout

    if not args.data_dir.is_dir():
        fail(f"{args.data_dir} is not a directory")
    if "FLAC" not in sf.available_formats():
        fail(f"this libsndfile ({sf.__libsndfile_version__}) was built without FLAC")

    by_type, skipped = discover(args.data_dir, say)
    if not by_type:
        fail(f"no usable WAV files under {args.data_dir}")

    frames, kinds, files = [], [], {}
    for kind, paths in by_type.items():
        chosen = evenly_spaced(paths, args.per_type)
        files[kind] = {"available": len(paths), "sampled": len(chosen)}
        for path in chosen:
            for frame in frames_of(read_channel0_int16(path)):
                frames.append(np.ascontiguousarray(frame))
                kinds.append(kind)
        say(f"{kind}: {len(chosen)} of {len(paths)} files")
    say(f"{len(frames)} one-second frames")

    runs = [("flac", level, flac_codec(level)) for level in FLAC_LEVELS]
    runs += [("zlib", ZLIB_LEVEL, zlib_codec(ZLIB_LEVEL)), ("wav", None, wav_codec())]
    results = []
    for name, level, codec in runs:
        say(f"measuring {name} {level if level is not None else ''}".rstrip())
        results.append(measure(name, level, codec, frames, kinds, args.passes))

    types = list(by_type)
    report = {
        "data_dir": str(args.data_dir.resolve()),
        "frame_bytes": FRAME_BYTES,
        "frames": len(frames),
        "files": files,
        "skipped": [{"path": str(p), "reason": why} for p, why in skipped],
        "libsndfile": sf.__libsndfile_version__,
        "timed_passes": args.passes,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return

    print(f"{len(frames)} one-second frames ({FRAME_BYTES:,} bytes raw each) from "
          + ", ".join(f"{k}: {v['sampled']} files" for k, v in files.items())
          + f"; libsndfile {sf.__libsndfile_version__}\n")
    print(markdown(results, types))
    print()
    flac_header = next(r["stream_header_bytes"] for r in results if r["codec"] == "flac")
    print(f"Each FLAC frame is a complete stream; {flac_header} of its bytes are the stream header.")
    print("wav: the same frame written uncompressed through the same Python/libsndfile path;"
          " its times are the call overhead included in the FLAC times.")
    print("frame p5 / median: ratio of the least compressible 5% of single frames / the median frame.")
    print(f"\nSkipped {len(skipped)} files" + (":" if skipped else "."))
    for path, why in skipped:
        print(f"  {path}: {why}")


if __name__ == "__main__":
    main()
