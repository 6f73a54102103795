"""Build the folder of a Hugging Face Space that serves a FaPN model (see `fapn_hf.space.build_space`).

    python scripts/build_space.py --model-id ORG/fapn-r18-demo --output-dir outputs/space --model-path outputs/demo
    hf upload ORG/fapn-demo outputs/space --repo-type space       # publish it

The folder holds app.py, README.md (Space front matter and API), requirements.txt (registry packages, pinned),
the fapn_hf package and examples/: it runs as it is, with `pip install -r requirements.txt && python app.py`.
"""

from __future__ import annotations

import argparse
import sys

from fapn_hf.space import DEFAULT_SHORT_DESCRIPTION, build_space


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-id", required=True, help="the model repo the Space serves, ORG/NAME")
    parser.add_argument("--output-dir", required=True, help="new or empty folder to write")
    parser.add_argument("--model-path", default=None, help="local copy of the model (default: the Hub id)")
    parser.add_argument("--examples", nargs="*", default=None, help="example images (default: demo images)")
    parser.add_argument("--num-examples", type=int, default=3, help="demo examples to choose")
    parser.add_argument("--title", default="FaPN semantic segmentation")
    parser.add_argument("--short-description", default=DEFAULT_SHORT_DESCRIPTION, help="at most 60 characters")
    args = parser.parse_args(argv)
    try:
        space = build_space(
            args.model_id,
            args.output_dir,
            model_path=args.model_path,
            examples=args.examples,
            num_examples=args.num_examples,
            title=args.title,
            short_description=args.short_description,
        )
    except (ValueError, FileNotFoundError, ModuleNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(space.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
