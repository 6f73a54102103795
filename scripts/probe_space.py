"""Send the uploads visitors send to a running Space app and print what came back, with the server's memory.

    python outputs/space/app.py &                                  # or any running copy of the app
    python scripts/probe_space.py --url http://127.0.0.1:7860 --pid $!

Each input kind (a phone photo with EXIF orientation 6, a 16-bit PNG, an RGBA PNG, an animated GIF, grayscale, a
1x1 image, a 6000x4000 photo, a zero-byte file, a text file named .jpg) goes through the `/segment` API, as the page
sends it; the line printed is the status the page shows, or the message of the error the call failed with. With
`--pid` (the app's process, Linux), the resident memory before the first request, after each one, and the peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _rss_mib(pid: int | None, field: str = "VmRSS") -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xs / width, ys / height, 1 - xs / width], axis=-1) * 200 + 30
    return np.clip(base + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)


def write_inputs(folder: Path) -> list[tuple[str, Path]]:
    """The probe's files, `(kind, path)`."""
    inputs = []
    phone = Image.fromarray(_photo(3024, 4032, 0))  # stored landscape; EXIF 6 shows it portrait (3024 wide)
    exif = phone.getexif()
    exif[0x0112] = 6
    phone.save(folder / "phone_exif6.jpg", quality=90, exif=exif)
    inputs.append(("phone photo, EXIF orientation 6 (4032x3024 stored)", folder / "phone_exif6.jpg"))
    gradient16 = (np.linspace(0, 65535, 256 * 192).reshape(192, 256)).astype(np.uint16)
    Image.fromarray(gradient16).save(folder / "depth16.png")
    inputs.append(("16-bit grayscale PNG", folder / "depth16.png"))
    rgba = np.dstack([_photo(200, 300, 1), np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))])
    Image.fromarray(rgba).save(folder / "transparent.png")
    inputs.append(("RGBA PNG (alpha ramp)", folder / "transparent.png"))
    frames = [Image.fromarray(_photo(120, 160, seed)) for seed in (2, 3, 4)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    inputs.append(("animated GIF (3 frames)", folder / "animated.gif"))
    Image.fromarray(_photo(180, 240, 5)[..., 0]).save(folder / "gray.png")
    inputs.append(("grayscale PNG", folder / "gray.png"))
    Image.fromarray(np.array([[[200, 30, 30]]], np.uint8)).save(folder / "one_pixel.png")
    inputs.append(("1x1 PNG", folder / "one_pixel.png"))
    Image.fromarray(_photo(4000, 6000, 6)).save(folder / "huge_6000x4000.jpg", quality=90)
    inputs.append(("6000x4000 JPEG", folder / "huge_6000x4000.jpg"))
    (folder / "empty.png").write_bytes(b"")
    inputs.append(("zero-byte file", folder / "empty.png"))
    (folder / "notes.jpg").write_text("shopping list: milk, eggs\n")
    inputs.append(("text file named .jpg", folder / "notes.jpg"))
    return inputs


def main(argv: list[str] | None = None) -> int:
    from gradio_client import Client, handle_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:7860")
    parser.add_argument("--pid", type=int, default=None, help="the app's process id, for its memory (Linux)")
    args = parser.parse_args(argv)

    client = Client(args.url, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_inputs(Path(tmp))
        if args.pid:
            print(f"server RSS before the first request: {_rss_mib(args.pid):.0f} MiB")
        for kind, path in inputs:
            started = time.perf_counter()
            try:
                overlay, _, areas, status = client.predict(
                    image=handle_file(str(path)), flip=False, multiscale=False, opacity=0.5, hide_background=True,
                    api_name="/segment",
                )  # fmt: skip
                size = Image.open(overlay).size
                top = ", ".join(f"{row[0]} {row[1]}%" for row in areas["data"][:3])
                result = f"OK, overlay {size[0]}x{size[1]}, {top}. Status: {status}"
            except Exception as error:  # the call failed: what the page shows is the message
                result = f"FAILED with message: {error}"
            wall = time.perf_counter() - started
            memory = (
                f"; server RSS {_rss_mib(args.pid):.0f} MiB, peak so far {_rss_mib(args.pid, 'VmHWM'):.0f} MiB"
                if args.pid
                else ""
            )
            print(f"- {kind} ({path.stat().st_size:,} bytes): client wait {wall:.2f} s{memory}\n  {result}")
        if args.pid:
            print(f"server peak RSS (VmHWM): {_rss_mib(args.pid, 'VmHWM'):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
