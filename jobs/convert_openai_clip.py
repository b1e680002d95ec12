"""Convert OpenAI's TorchScript CLIP file once to a plain state_dict for ``--clip-weights``:
``python -m jobs.convert_openai_clip --source ViT-L-14-336px.pt --out URI`` (local path or s3://)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m jobs.convert_openai_clip", description=__doc__)
    parser.add_argument("--source", required=True, type=Path, help="OpenAI's CLIP file (TorchScript), a local path")
    parser.add_argument("--out", required=True, help="where the state_dict is written: path or s3:// URI")
    parser.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint for an s3:// --out")
    args = parser.parse_args(argv)
    from pipeline.config import StorageSettings
    from pipeline.errors import StorageError
    from pipeline.features.openai_clip import convert
    from pipeline.io.storage import Storage

    if not args.source.is_file():
        print(f"error: source={args.source}: no such file", file=sys.stderr)
        return 2
    try:
        summary = convert(args.source, args.out, Storage(StorageSettings(endpoint_url=args.s3_endpoint_url)))
    except (ValueError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
