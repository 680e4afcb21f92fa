"""Cuts the sample recordings in this folder from the shared MIMII / DCASE data.

Usage: python3 make_samples.py [path/to/shared/data]   (default: ../../../../shared/data)

The valve clips are copied byte for byte; the fan clips keep channel 0 of the 8-channel array
(`fan_*.wav`), and `fan_8ch_1s.wav` keeps the first second of all eight channels with the original
WAVE_FORMAT_EXTENSIBLE header. Every clip comes from the files the default model holds out as its
test split, so the model has never heard any of them.
"""
import csv
import hashlib
import pathlib
import shutil
import struct
import sys
import wave

here = pathlib.Path(__file__).resolve().parent
data = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[3] / "shared" / "data"
VALVE = "dcase2023t2-dev-valve"
FAN = "mimii-fan-id00-subset"
VALVES = [
    "valve/test/section_00_source_test_anomaly_0028_pat_00.wav",
    "valve/test/section_00_source_test_anomaly_0024_pat_00.wav",
    "valve/test/section_00_source_test_anomaly_0041_pat_00.wav",
    "valve/test/section_00_source_test_normal_0033_pat_00.wav",
    "valve/test/section_00_source_test_normal_0016_pat_00.wav",
    "valve/test/section_00_source_test_normal_0010_pat_00.wav",
    "valve/test/section_00_target_test_anomaly_0003_pat_02.wav",
    "valve/test/section_00_target_test_anomaly_0047_pat_02.wav",
    "valve/test/section_00_target_test_anomaly_0037_pat_02.wav",
    "valve/test/section_00_target_test_normal_0041_pat_02.wav",
    "valve/test/section_00_target_test_normal_0014_pat_02.wav",
    "valve/test/section_00_target_test_normal_0018_pat_02.wav",
]
FANS = ["fan/id_00/abnormal/00000001.wav", "fan/id_00/normal/00000004.wav"]


def rows(dataset):
    with open(data / dataset / "manifest.csv") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def chunks(raw):
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    pos, found = 12, []
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        found.append((cid, raw[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return found


def channel_zero(source, target):
    # Python's wave module cannot read WAVE_FORMAT_EXTENSIBLE, so the chunks are read by hand.
    found = chunks(source.read_bytes())
    fmt, raw = dict(found)[b"fmt "], dict(found)[b"data"]
    _, rate, _, block, bits = struct.unpack("<IIIHH", fmt[0:16])
    width = bits // 8
    mono = b"".join(raw[i : i + width] for i in range(0, len(raw), block))
    with wave.open(str(target), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(mono)


def first_second_keeping_header(source, target):
    found = chunks(source.read_bytes())
    _, rate, _, block = struct.unpack("<IIIH", dict(found)[b"fmt "][0:14])
    body = b""
    for cid, payload in found:
        if cid == b"data":
            payload = payload[: rate * block]
        body += cid + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) & 1 else b"")
    target.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)


columns = ["path", "machine_type", "machine_id", "domain", "attribute", "label", "sample_rate", "channels",
           "duration_s", "md5", "source_dataset", "source_path"]
manifest = []
valves, fans = rows(VALVE), rows(FAN)
for path in VALVES:
    r = valves[path]
    name = pathlib.Path(path).name
    shutil.copyfile(data / VALVE / path, here / name)
    manifest.append({**{k: r[k] for k in columns[:9]}, "path": name})
for path in FANS:
    r = fans[path]
    name = f"fan_id_00_{r['label']}_{pathlib.Path(path).stem}.wav"
    channel_zero(data / FAN / path, here / name)
    manifest.append({**{k: r[k] for k in columns[:9]}, "path": name, "channels": "1"})
first_second_keeping_header(data / FAN / FANS[1], here / "fan_8ch_1s.wav")
for m, source in zip(manifest, [(VALVE, p) for p in VALVES] + [(FAN, p) for p in FANS]):
    m["md5"] = hashlib.md5((here / m["path"]).read_bytes()).hexdigest()
    m["source_dataset"], m["source_path"] = source
with open(here / "manifest.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(manifest)
print(f"{len(manifest)} clips and fan_8ch_1s.wav written to {here}")
