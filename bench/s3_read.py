"""Reading zip members from an object store: requests per image, plain pyarrow file against fgbg's read-ahead.

A synthetic batch is uploaded to an S3 server (moto's) on loopback, and the same shuffled
samples' images are read both ways in one run: requests counted, times as medians of repeats.
Loopback hides most of a real S3 request's latency (tens of ms in-region), so the request count
is the figure that carries over.
    python bench/s3_read.py [--samples 256] [--repeats 5]
Writes bench/out/s3_read.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

OUT = Path(__file__).parent / "out"


class Counting(io.RawIOBase):
    """A pyarrow random-access file that counts the reads reaching it (each one a ranged GET)."""

    def __init__(self, f):
        self.f, self.reads, self.bytes = f, 0, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def readinto(self, buffer):
        self.reads += 1
        data = self.f.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes += len(data)
        return len(data)


def read_all(f, members: list[str]) -> None:
    with zipfile.ZipFile(f) as zf:
        for m in members:
            zf.read(m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    from fgbg import storage
    from fgbg.layout import load_manifest
    from fgbg.synth import SynthSpec, write_dataset

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_dataset(SynthSpec(tmp, batches=2, per_batch=2000, size=160, seed=0), workers=0)
            fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
            fs.create_dir("bench")
            for z in sorted(Path(tmp).glob("*.zip")):
                pafs.copy_files(str(z), f"bench/data/{z.name}", destination_filesystem=fs)
        uri = "s3://bench/data/batch1_images.zip"
        rows = load_manifest("s3://bench/data").table.slice(0, 2000).to_pylist()
        random.Random(0).shuffle(rows)
        members = [r[k] for r in rows[: args.samples] for k in ("fg_bg", "mask", "depth")]
        random.Random(1).shuffle(members)  # no help from a sample's files lying side by side in the zip
        fs, inner = storage.filesystem(uri)
        results = {}
        for name, wrap in (("plain", lambda c: c), ("read_ahead", lambda c: io.BufferedReader(c, buffer_size=storage.READ_AHEAD))):
            times, reads, sizes = [], [], []
            for _ in range(args.repeats):
                counting = Counting(fs.open_input_file(inner))
                t0 = time.perf_counter()
                read_all(wrap(counting), members)
                times.append(time.perf_counter() - t0)
                reads.append(counting.reads)
                sizes.append(counting.bytes)
            results[name] = {"images": len(members), "requests": statistics.median(reads),
                             "requests_per_image": statistics.median(reads) / len(members),
                             "kb_per_image": statistics.median(sizes) / len(members) / 1024,
                             "seconds_median": statistics.median(times), "images_per_s": len(members) / statistics.median(times)}
        results["speedup"] = results["plain"]["seconds_median"] / results["read_ahead"]["seconds_median"]
    finally:
        server.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "s3_read.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
