"""Writes the fuzz targets' seed corpora into fuzz/seeds/<target>/ from the real recordings in
tests/data/recordings: gateway frames as protobuf, WAV files of each layout auscult reads, stored FLAC, and
settings files. Run from the repository root: python3 fuzz/make_seeds.py (stored FLAC needs the soundfile
package: pip install -r bench/compression/requirements.txt; without it those seeds are skipped)."""

import array
import pathlib
import struct
import wave

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "tests" / "data" / "recordings"
SEEDS = ROOT / "fuzz" / "seeds"
NOW_UNIX_S = 1_790_000_000  # the fuzz target's server clock


def pcm16(name, frames, start=0):
    with wave.open(str(RECORDINGS / name)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        w.setpos(start)
        return w.readframes(frames)


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def frame(device, sensor, seq, rate, channels, encoding, samples):
    timestamp = field(1, 0, NOW_UNIX_S - 5) + field(2, 0, 250_000_000)
    return b"".join(
        [
            field(1, 2, device.encode()),
            field(2, 2, sensor.encode()),
            field(3, 0, 1),
            field(4, 0, seq),
            field(5, 2, timestamp),
            field(6, 0, rate),
            field(7, 0, channels),
            field(8, 0, encoding),
            field(9, 2, samples),
        ]
    )


def to_f32(pcm):
    ints = array.array("h", pcm)
    return array.array("f", (s / 32768 for s in ints)).tobytes()


def wav_bytes(channels, rate, bits, fmt, data, extensible=False):
    block = channels * bits // 8
    if extensible:
        sub = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        if fmt == 3:
            sub = b"\x03" + sub[1:]
        fmt_chunk = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0) + sub
    else:
        fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write(target, name, data):
    path = SEEDS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main():
    fan = pcm16("fan_id_00_normal_00000004.wav", 4000, 16000)
    valve = pcm16("section_00_source_test_normal_0010_pat_00.wav", 2000, 8000)

    write("frame", "pcm16_mono", frame("press-7", "mic-0", 42, 16000, 1, 1, fan))
    write("frame", "f32_mono", frame("press-7", "mic-1", 7, 16000, 1, 2, to_f32(valve[:2000])))
    stereo = b"".join(fan[i : i + 2] + valve[i : i + 2] for i in range(0, 2000, 2))
    write("frame", "pcm16_stereo_48k", frame("Presse-Süd 3", "Mikrofon 2", 1, 48000, 2, 1, stereo))
    write("frame", "tiny", frame("d", "s", 0, 16000, 1, 1, fan[:30]))

    write("wav", "pcm16_mono.wav", wav_bytes(1, 16000, 16, 1, fan))
    write("wav", "f32_mono.wav", wav_bytes(1, 16000, 32, 3, to_f32(valve)))
    eight = b"".join(fan[i : i + 2] * 8 for i in range(0, 1600, 2))
    write("wav", "pcm16_8ch_extensible.wav", wav_bytes(8, 16000, 16, 1, eight, extensible=True))
    pcm24 = b"".join(b"\x00" + valve[i : i + 2] for i in range(0, 2000, 2))
    write("wav", "pcm24_mono.wav", wav_bytes(1, 16000, 24, 1, pcm24))
    write("wav", "u8_mono.wav", wav_bytes(1, 8000, 8, 1, bytes((b + 128) % 256 for b in valve[1:2000:2])))

    write("settings", "defaults.toml", b"")
    write(
        "settings",
        "plant.toml",
        b"""listen_addr = "0.0.0.0:50051"
shutdown_grace = "20s"
[database]
url = "postgres://ingest@db-1,db-2/auscult?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=/etc/pg/ca.pem"
pool_size = 12
[batch]
max_frames = 256
max_delay = "5ms"
writers = 4
[flow]
max_inflight_bytes = 134217728
max_connections = 512
connection_window_bytes = 262144
stream_window_bytes = 131072
[devices]
max_streams = 4
max_frames_per_second = 100
burst = "1s"
[auth]
recheck_interval = "5s"
[storage]
audio = "flac"
[lifecycle]
interval = "10m"
[lifecycle.retention]
raw_audio = "7days"
kept_margin = "10s"
frame_partition = "1day"
""",
    )
    write("settings", "tls.toml", b'[tls]\ncert_path = "/etc/auscult/tls.crt"\nkey_path = "/etc/auscult/tls.key"\nclient_ca_path = "/etc/auscult/devices.pem"\n')

    try:
        import io

        import numpy
        import soundfile
    except ImportError:
        print("soundfile not installed: stored_flac seeds skipped")
        return
    for name, pcm, channels in [("mono", fan, 1), ("stereo", stereo, 2)]:
        samples = numpy.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
        out = io.BytesIO()
        soundfile.write(out, samples, 16000, format="FLAC", subtype="PCM_16")
        write("stored_flac", f"{name}.flac", bytes([channels - 1]) + out.getvalue())


if __name__ == "__main__":
    main()
