"""megapairs.images against Pillow (decoding, resampling) and transformers' image
processors, PIL backend (CLIPImageProcessor / BitImageProcessor with use_fast=False), on
real photographs from Debian's mate-backgrounds and palapeli-data packages, on Pillow
re-encodings of them, and on odd geometry; plus every bad-input case."""

import glob
import io

import numpy as np
import pytest
import transformers
from PIL import Image, ImageOps
from transformers.image_transforms import center_crop
from transformers.image_utils import PILImageResampling

import megapairs as mp
from megapairs.images import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Transform

PHOTOS = sorted(glob.glob("/usr/share/backgrounds/mate/nature/*.jpg")
                + glob.glob("/usr/share/backgrounds/mate/abstract/Elephants*.jpg")
                + glob.glob("/usr/share/palapeli/collection/*.jpg"))


def test_real_photographs_are_installed():
    # `make test` installs mate-backgrounds and palapeli-data; without them these tests prove nothing.
    assert len(PHOTOS) >= 18, f"expected the Debian photo packages, found {PHOTOS}"


def clip_processor():
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    return cls() if cls else transformers.CLIPImageProcessor(use_fast=False)


def dinov2_processor():
    kwargs = dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), resample=PILImageResampling.BICUBIC)
    cls = getattr(transformers, "BitImageProcessorPil", None)
    return cls(**kwargs) if cls else transformers.BitImageProcessor(use_fast=False, **kwargs)


PROCESSORS = {"clip": (clip_processor, OPENAI_CLIP_STD), "dinov2": (dinov2_processor, IMAGENET_STD)}


def levels(ours, reference, std):
    """Largest difference in uint8 levels, undoing the normalisation."""
    return float(np.max(np.abs(ours - reference) * 255 * np.asarray(std, np.float64)[None, :, None, None]))


def jpeg(im, **options):
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_photo():
    with Image.open("/usr/share/palapeli/collection/citrus-fruits.jpg") as im:
        return im.convert("RGB").resize((im.width // 3, im.height // 3))


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_decode_real_photo_equals_pillow(path):
    with Image.open(path) as im:
        want = np.asarray(im.convert("RGB"))
    got = mp.images.decode(path)
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.array_equal(got, want)


VARIANTS = {
    **{f"quality{q}": {"quality": q} for q in (30, 50, 75, 95)},
    "444": {"subsampling": 0}, "422": {"subsampling": 1}, "420": {"subsampling": 2},
    "progressive": {"progressive": True},
    "restart-rows": {"restart_marker_rows": 2}, "restart-blocks": {"restart_marker_blocks": 5},
    "grayscale": {"mode": "L"}, "cmyk": {"mode": "CMYK"}, "cmyk-progressive": {"mode": "CMYK", "progressive": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_reencodings_equal_pillow(small_photo, variant):
    options = dict(VARIANTS[variant])
    data = jpeg(small_photo.convert(options.pop("mode", "RGB")), **options)
    if variant.startswith("restart"):
        assert b"\xff\xdd" in data  # a DRI segment: restart markers are really there
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(mp.images.decode(data), want)


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("WEBP", "RGB"),
                                      ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "CMYK")])
def test_other_formats_go_through_pillow(small_photo, fmt, mode):
    buffer = io.BytesIO()
    im = small_photo.convert(mode) if mode != "I;16" else small_photo.convert("L").convert("I;16")
    im.save(buffer, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    data = buffer.getvalue()
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(mp.images.decode(data), want)


def test_gif_first_frame(small_photo):
    frames = [small_photo.convert("P"), small_photo.rotate(90).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(buffer.getvalue())) as im:
        want = np.asarray(im.convert("RGB"))
    assert np.array_equal(mp.images.decode(buffer.getvalue()), want)


def test_exif_orientation(small_photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = jpeg(small_photo, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as im:
        stored = np.asarray(im.convert("RGB"))
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(mp.images.decode(data), stored)  # ignored by default, as the processors do
    assert np.array_equal(mp.images.decode(data, apply_exif=True), upright)
    batch = mp.images.preprocess([data], apply_exif=True)
    assert np.array_equal(batch, mp.images.preprocess([upright]))


# ---------------------------------------------------------------- preprocessing against transformers


@pytest.mark.parametrize("preset", ["clip", "dinov2"])
def test_preprocess_real_photos_equals_processor(preset):
    make, std = PROCESSORS[preset]
    processor = make()
    images = [Image.open(p).convert("RGB") for p in PHOTOS]
    want = processor(images, return_tensors="np")["pixel_values"]
    got = mp.images.preprocess(PHOTOS, preset)
    assert got.shape == want.shape == (len(PHOTOS), 3, 224, 224)
    assert levels(got, want, std) <= 1.0 + 1e-4  # the contract: within one uint8 level
    # In fact identical: the same decoder settings, the same fixed-point resampling.
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("variant", ["quality30", "422", "grayscale", "cmyk", "progressive", "restart-rows"])
def test_preprocess_reencodings_equal_processor(small_photo, variant):
    options = dict(VARIANTS[variant])
    data = jpeg(small_photo.convert(options.pop("mode", "RGB")), **options)
    want = clip_processor()(Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(mp.images.preprocess([data]), want)


GEOMETRY = [(1, 1), (1, 300), (300, 1), (2, 3), (3, 1000), (223, 400), (224, 224), (225, 225), (224, 300),
            (255, 256), (256, 257), (257, 500), (336, 335), (1000, 7)]


@pytest.mark.parametrize("height,width", GEOMETRY, ids=[f"{h}x{w}" for h, w in GEOMETRY])
@pytest.mark.parametrize("preset", ["clip", "dinov2"])
def test_odd_geometry_equals_processor(small_photo, height, width, preset):
    rng = np.random.default_rng(height * 7919 + width)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    make, std = PROCESSORS[preset]
    want = make()(Image.fromarray(pixels), return_tensors="np")["pixel_values"]
    got = mp.images.preprocess([pixels], preset)
    assert levels(got, want, std) <= 1.0 + 1e-4
    np.testing.assert_array_equal(got, want)
    as_png = io.BytesIO()
    Image.fromarray(pixels).save(as_png, "PNG")
    np.testing.assert_array_equal(mp.images.preprocess([as_png.getvalue()], preset), want)


@pytest.mark.parametrize("height,width", [(2532, 1170), (1000, 400), (900, 500), (700, 120)])
def test_tall_images_equal_processor(height, width):
    """Pillow 13 resamples vertically first when the height shrinks by more than twice the
    width's change; exact mode follows the installed Pillow's order."""
    rng = np.random.default_rng(height)
    smooth = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    image = smooth.resize((width, height), Image.BICUBIC)
    for preset in ("clip", "dinov2"):
        make, _ = PROCESSORS[preset]
        want = make()(image, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(mp.images.preprocess([np.asarray(image)], preset), want)


def test_random_geometry_equals_pillow_resize():
    """Shortest-side resizes of random sizes, all filters, the full resized image as the crop."""
    rng = np.random.default_rng(7)
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS, "box": Image.BOX}
    checked = 0
    while checked < 120:
        h, w, size = (int(v) for v in (rng.integers(2, 700), rng.integers(2, 700), rng.integers(8, 300)))
        short, long = min(h, w), max(h, w)
        new_long = int(size * long / short)
        rh, rw = (new_long, size) if w <= h else (size, new_long)
        if rh * rw > 1_000_000:
            continue
        name = list(filters)[checked % 4]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(pixels).resize((rw, rh), filters[name]))
        t = Transform(size, (rh, rw), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resample=name)
        got = np.rint(mp.images.preprocess([pixels], t)[0].transpose(1, 2, 0) * 255).astype(np.uint8)
        assert np.array_equal(got, want), (h, w, rh, rw, name)
        checked += 1


@pytest.mark.parametrize("resample,pil", [("bicubic", PILImageResampling.BICUBIC),
                                          ("bilinear", PILImageResampling.BILINEAR),
                                          ("lanczos", PILImageResampling.LANCZOS), ("box", PILImageResampling.BOX)])
@pytest.mark.parametrize("size,crop", [(200, (160, 180)), (96, 128), (300, 224), (0, 64)])
def test_custom_transform_equals_transformers_functions(small_photo, resample, pil, size, crop):
    t = Transform(size, crop, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), resample=resample)
    pixels = np.asarray(small_photo)
    image = small_photo
    if size:
        w, h = small_photo.size
        short, long = min(w, h), max(w, h)
        new_long = int(size * long / short)
        image = small_photo.resize((size, new_long) if w <= h else (new_long, size), pil.value, reducing_gap=None)
    crop_hw = (crop, crop) if isinstance(crop, int) else crop
    cropped = center_crop(np.asarray(image), crop_hw, input_data_format="channels_last")
    want = ((cropped.astype(np.float64) / 255).astype(np.float32) - np.float32(t.mean)) / np.float32(t.std)
    want = want.transpose(2, 0, 1)[None]
    got = mp.images.preprocess([pixels], t)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_mixed_inputs_and_threads(small_photo, tmp_path):
    path = tmp_path / "photo.jpg"
    data = jpeg(small_photo)
    path.write_bytes(data)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    items = [data, str(path), path, Image.open(path), decoded, bytearray(data), memoryview(data)]
    one = mp.images.preprocess(items, num_threads=1)
    two = mp.images.preprocess(items, num_threads=2)
    assert np.array_equal(one, two)
    for i in range(1, len(items)):
        assert np.array_equal(one[i], one[0]), f"item {i} differs"
    strided = np.ascontiguousarray(decoded[:, ::-1])[:, ::-1]  # non-contiguous view of the same pixels
    assert np.array_equal(mp.images.preprocess([strided])[0], one[0])
    gray = np.asarray(small_photo.convert("L"))
    assert np.array_equal(mp.images.preprocess([gray]), mp.images.preprocess([np.stack([gray] * 3, -1)]))


def test_fast_mode_stays_close_to_exact():
    """exact=False decodes at a DCT scale; docs/numerics.md records these figures."""
    exact = mp.images.preprocess(PHOTOS, "clip")
    fast = mp.images.preprocess(PHOTOS, "clip", exact=False)
    diff = np.abs(exact - fast) * 255 * np.asarray(OPENAI_CLIP_STD)[None, :, None, None]
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 6, (diff.mean(), np.percentile(diff, 99))


def test_empty_batch_and_progress():
    assert mp.images.preprocess([]).shape == (0, 3, 224, 224)
    batch, kept = mp.images.preprocess([], on_error="skip")
    assert batch.shape == (0, 3, 224, 224) and kept.shape == (0,)
    pixels = np.zeros((40, 50, 3), np.uint8)
    assert mp.images.preprocess([pixels] * 3, progress=True).shape == (3, 3, 224, 224)


# ---------------------------------------------------------------- bad input


def bad_inputs(small_photo):
    good = jpeg(small_photo)
    corrupt = bytearray(good)
    corrupt[len(good) // 2: len(good) // 2 + 64] = bytes(range(64))
    return {
        "truncated JPEG": (good[: len(good) // 2], "cannot decode JPEG"),
        "zero bytes": (b"", "empty input"),
        "not an image": (b"this is text, not an image", "not an image"),
        "JPEG header only": (good[:100], "JPEG header"),
        "garbage after SOI": (b"\xff\xd8\xff" + bytes(200), "JPEG"),
        "truncated PNG": (_png(small_photo)[:200], "cannot decode image"),
    }


def _png(im):
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["truncated JPEG", "zero bytes", "not an image", "JPEG header only",
                                  "garbage after SOI", "truncated PNG"])
def test_bad_input_raises_format_error_naming_the_item(small_photo, case):
    data, fragment = bad_inputs(small_photo)[case]
    good = jpeg(small_photo)
    with pytest.raises(mp.FormatError, match=rf"^image 1: .*{fragment}"):
        mp.images.preprocess([good, data, good])
    batch, kept = mp.images.preprocess([good, data, good], on_error="skip")
    assert kept.tolist() == [0, 2]
    assert np.array_equal(batch, mp.images.preprocess([good, good]))
    with pytest.raises(mp.FormatError):
        mp.images.decode(data)


def test_corrupt_data_never_crashes_or_leaves_garbage(small_photo):
    """Random byte flips anywhere: each image is either an error or fully defined pixels."""
    good = jpeg(small_photo)
    rng = np.random.default_rng(0)
    items = []
    for _ in range(60):
        damaged = bytearray(good)
        for pos in rng.integers(2, len(good), size=rng.integers(1, 20)):
            damaged[pos] = rng.integers(0, 256)
        items.append(bytes(damaged))
    batch, kept = mp.images.preprocess(items, on_error="skip")
    assert np.isfinite(batch).all() and len(batch) == len(kept)
    for j, i in enumerate(kept[:10]):  # what was kept matches Pillow's reading of the same bytes
        want = clip_processor()(Image.open(io.BytesIO(items[i])).convert("RGB"), return_tensors="np")["pixel_values"]
        assert levels(batch[j:j + 1], want, OPENAI_CLIP_STD) <= 1.0 + 1e-4


def test_pixel_limit(small_photo):
    data = jpeg(small_photo)
    limit = small_photo.width * small_photo.height - 1
    with pytest.raises(mp.FormatError, match=r"image 0: .*exceeds the limit"):
        mp.images.preprocess([data], max_pixels=limit)
    with pytest.raises(mp.FormatError, match="exceeds the limit"):
        mp.images.decode(data, max_pixels=limit)
    with pytest.raises(mp.FormatError, match="exceeds the limit"):
        mp.images.preprocess([_png(small_photo)], max_pixels=limit)
    assert mp.images.preprocess([data], max_pixels=None).shape == (1, 3, 224, 224)


def test_argument_errors(tmp_path):
    pixels = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="transform must be"):
        mp.images.preprocess([pixels], "vit")
    with pytest.raises(ValueError, match="on_error"):
        mp.images.preprocess([pixels], on_error="ignore")
    with pytest.raises(ValueError, match=r"image 0: pixel arrays must be uint8"):
        mp.images.preprocess([pixels.astype(np.float32)])
    with pytest.raises(ValueError, match=r"image 1: pixel arrays must be .* got shape \(10, 10, 4\)"):
        mp.images.preprocess([pixels, np.zeros((10, 10, 4), np.uint8)])
    with pytest.raises(TypeError, match="image 0: cannot read an image from int"):
        mp.images.preprocess([42])
    with pytest.raises(FileNotFoundError, match="image 0: .*missing.jpg"):
        mp.images.preprocess([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="num_threads"):
        mp.images.preprocess([pixels], num_threads=0)
    with pytest.raises(ValueError, match="std values must be positive"):
        Transform(224, 224, (0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="resample must be one of"):
        Transform(224, 224, (0, 0, 0), (1, 1, 1), resample="nearest")


def ycck_jpeg(cmyk):
    """A YCCK JPEG (Adobe transform 2), which Pillow cannot write: libturbojpeg compresses
    CMYK pixels as YCCK."""
    import ctypes
    import ctypes.util

    tj = ctypes.CDLL(ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0")
    tj.tjInitCompress.restype = ctypes.c_void_p
    tj.tjCompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ulong),
                               ctypes.c_int, ctypes.c_int, ctypes.c_int]
    tj.tjFree.argtypes = [ctypes.c_void_p]
    tj.tjDestroy.argtypes = [ctypes.c_void_p]
    handle = tj.tjInitCompress()
    out, size = ctypes.c_void_p(), ctypes.c_ulong()
    h, w, _ = cmyk.shape
    TJPF_CMYK, TJSAMP_420 = 11, 2
    rc = tj.tjCompress2(handle, np.ascontiguousarray(cmyk).tobytes(), w, 0, h, TJPF_CMYK, ctypes.byref(out),
                        ctypes.byref(size), TJSAMP_420, 90, 0)
    assert rc == 0
    data = ctypes.string_at(out, size.value)
    tj.tjFree(out)
    tj.tjDestroy(handle)
    return data


def test_ycck_jpeg_equals_pillow(small_photo):
    cmyk = np.asarray(small_photo.convert("CMYK"))
    data = ycck_jpeg(cmyk)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
        want = np.asarray(im.convert("RGB"))
    assert np.array_equal(mp.images.decode(data), want)
    expected = clip_processor()(Image.fromarray(want), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(mp.images.preprocess([data]), expected)


def test_transparent_png_is_composited_on_white_as_transformers_does():
    """tuxpaint stamps are RGBA PNGs; transformers' processors composite them over white
    (convert_to_rgb) before resizing, while decode keeps Pillow's convert("RGB")."""
    stamps = sorted(glob.glob("/usr/share/tuxpaint/stamps/animals/birds/*.png"))[:4]
    assert stamps, "install the Debian package tuxpaint-stamps-default (make system-deps)"
    with Image.open(stamps[0]) as im:
        assert "A" in im.getbands()
        np.testing.assert_array_equal(mp.images.decode(stamps[0]), np.asarray(im.convert("RGB")))
    images = [Image.open(p) for p in stamps]
    want = clip_processor()(images, return_tensors="np")["pixel_values"]
    got = mp.images.preprocess(stamps, "clip")
    # within one uint8 level after normalisation (the contract for the exact path)
    assert np.abs(got - want).max() <= 1 / 255 / min(mp.images.OPENAI_CLIP_STD) + 1e-6
