"""Writes the seed corpus of fuzz_jpeg to tests/fuzz/corpus/jpeg/.

Valid seeds come from Pillow's encoder, one per kind of JPEG the decoder must handle
(baseline, progressive, grayscale, CMYK, each chroma subsampling, restart markers, a
single pixel); the broken ones are cut or corrupted copies, so that mutations start next
to the error paths. Every seed stays under 4 KB. Deterministic: rerunning rewrites the
same bytes.

    .venv/bin/python tests/fuzz/make_jpeg_corpus.py
"""

import io
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "corpus" / "jpeg"
MAX_SEED = 4096


def picture(width, height, mode="RGB"):
    """Gradients and a few shapes: enough structure for every DCT block to differ."""
    im = Image.new("RGB", (width, height))
    im.putdata([(255 * x // max(width - 1, 1), 255 * y // max(height - 1, 1), (x * y) % 256)
                for y in range(height) for x in range(width)])
    draw = ImageDraw.Draw(im)
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), outline=(250, 250, 20))
    draw.line((0, height - 1, width - 1, 0), fill=(10, 10, 200))
    return im.convert(mode)


def jpeg(im, **options):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=options.pop("quality", 75), **options)
    return buf.getvalue()


def sof_offset(data):
    """Offset of the first SOFn marker, to corrupt the frame header itself."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        i = data.find(marker)
        if i >= 0:
            return i
    raise ValueError("no SOF marker")


def sos_offset(data):
    i = data.find(b"\xff\xda")
    if i < 0:
        raise ValueError("no SOS marker")
    return i


def seeds():
    rgb = picture(32, 24)
    baseline = jpeg(rgb, subsampling=2)
    yield "baseline_420.jpg", baseline
    yield "baseline_422.jpg", jpeg(rgb, subsampling=1)
    yield "baseline_444.jpg", jpeg(rgb, subsampling=0)
    yield "progressive_420.jpg", jpeg(rgb, subsampling=2, progressive=True)
    yield "grayscale.jpg", jpeg(picture(24, 20, "L"))
    yield "grayscale_progressive.jpg", jpeg(picture(17, 9, "L"), progressive=True)
    yield "cmyk.jpg", jpeg(picture(16, 16, "CMYK"))
    yield "restart_markers.jpg", jpeg(picture(40, 64), subsampling=2, restart_marker_rows=1)
    yield "optimized_huffman.jpg", jpeg(picture(21, 13), optimize=True, subsampling=1)
    yield "tiny_1x1.jpg", jpeg(Image.new("RGB", (1, 1), (200, 30, 90)))

    # Broken copies of the baseline image.
    scan = sos_offset(baseline)
    yield "truncated_in_scan.jpg", baseline[: scan + (len(baseline) - scan) // 2]
    yield "truncated_in_header.jpg", baseline[: sof_offset(baseline) + 6]
    corrupted = bytearray(baseline)
    for k in range(scan + 20, len(corrupted) - 2, 37):
        corrupted[k] ^= 0x5A
    yield "corrupted_scan.jpg", bytes(corrupted)
    bad_frame = bytearray(baseline)
    bad_frame[sof_offset(baseline) + 9] = 7  # a component count the frame length disagrees with
    yield "corrupted_frame_header.jpg", bytes(bad_frame)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.jpg"):
        old.unlink()
    for name, data in seeds():
        if len(data) >= MAX_SEED:
            raise SystemExit(f"{name}: {len(data)} bytes, over the {MAX_SEED}-byte limit")
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
