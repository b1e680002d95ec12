"""Driver memory for a huge input prefix: list and plan ``--keys`` S3 keys, peak memory and seconds.

    python bench/bench_listing.py [--keys 1000000] [--images-per-unit 64]

A million objects cannot be put into moto here in reasonable time, so this bench serves the one request
the listing makes, S3's ListObjectsV2 (1,000 keys a page, continuation tokens), from a small HTTP server
of its own on loopback; the client side is the product's unchanged: ``Storage`` (s3fs, botocore),
``list_inputs`` and ``plan_units``, run in a child process whose peak resident memory (``ru_maxrss``)
is reported above what it held before listing.
"""

import argparse
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parent.parent
PAGE = 1000

CHILD = """
import resource, sys, time
from pipeline.config import StorageSettings
from pipeline.io.sources import list_inputs, plan_units
from pipeline.io.storage import Storage
storage = Storage(StorageSettings(endpoint_url=sys.argv[1], key="k", secret="s"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
listing = list_inputs(storage, "s3://bench/archive/")
listed = time.perf_counter() - start
units, _ = plan_units(listing, int(sys.argv[2]))
planned = time.perf_counter() - start - listed
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(listing.images), len(units), listed, planned, (peak - before) / 1024, before / 1024)
"""


def handler(n_keys: int) -> type[BaseHTTPRequestHandler]:
    class ListObjects(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            query = parse_qs(urlparse(self.path).query)
            start = int(query.get("continuation-token", ["0"])[0])
            prefix = query.get("prefix", [""])[0]
            end = min(n_keys, start + PAGE)
            contents = "".join(f"<Contents><Key>{prefix}cam{i % 97:02d}/img{i:09d}.jpg</Key>"
                               f"<LastModified>2026-12-01T00:00:00.000Z</LastModified><ETag>&quot;0&quot;</ETag>"
                               f"<Size>123456</Size><StorageClass>STANDARD</StorageClass></Contents>"
                               for i in range(start, end))
            more = end < n_keys
            body = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                    f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bench</Name><Prefix>{prefix}</Prefix>'
                    f"<KeyCount>{end - start}</KeyCount><MaxKeys>{PAGE}</MaxKeys>"
                    f"<IsTruncated>{str(more).lower()}</IsTruncated>"
                    + (f"<NextContinuationToken>{end}</NextContinuationToken>" if more else "")
                    + contents + "</ListBucketResult>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return ListObjects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--images-per-unit", type=int, default=64)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(args.keys))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    out = subprocess.run([sys.executable, "-c", CHILD, url, str(args.images_per_unit)], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    images, units, listed, planned, peak_mb, base_mb = out.stdout.split()
    print(f"{int(images):,} keys listed in {float(listed):.1f} s, {int(units):,} units planned in "
          f"{float(planned):.1f} s; driver peak memory {float(peak_mb):.0f} MB above the {float(base_mb):.0f} MB "
          f"it held before listing")
    server.shutdown()


if __name__ == "__main__":
    main()
