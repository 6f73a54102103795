"""Upload a FaPN model folder to the Hugging Face Hub: safetensors weights, config with auto_map, remote code,
preprocessor config and a model card generated from the config and metrics.json (or the folder's own README.md
with --keep-card).

    python scripts/push_to_hub.py --model-dir outputs/demo --repo-id ORG/fapn-r18-demo --dry-run
    python scripts/push_to_hub.py --model-dir outputs/demo --repo-id ORG/fapn-r18-demo --private

`--dry-run` prints exactly what would be uploaded and touches no network; the repo id is checked either way. The
token (checked before anything is uploaded) comes from the usual huggingface_hub places (`hf auth login`, HF_TOKEN)
or `--token`. The local folder is never modified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fapn_hf.hub import plan_upload, push_folder, require_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path, help="folder written by train.py or create_model.py")
    parser.add_argument("--repo-id", required=True, help="Hub model repo, ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--keep-card", action="store_true", help="upload the folder's README.md as the card")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded; no network")
    parser.add_argument("--onnx", action="store_true", help="also upload model.onnx (exported if the folder has none)")
    args = parser.parse_args(argv)

    try:
        plan = plan_upload(args.model_dir, repo_id=args.repo_id, keep_card=args.keep_card, onnx=args.onnx)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.dry_run:
        try:
            args.token = require_token(args.token)
        except PermissionError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    target = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "")
    print(f"{'would upload' if args.dry_run else 'uploading'} to {target} ({'private' if args.private else 'public'})")
    print(plan.describe())
    if args.dry_run:
        return 0
    try:
        url = push_folder(plan, args.repo_id, private=args.private, revision=args.revision, token=args.token)
    except (PermissionError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"uploaded: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
