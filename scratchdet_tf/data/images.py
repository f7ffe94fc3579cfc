"""Image bytes in tf.data: loading, a cheap validity check, decoding, and the per-epoch bad-data report.

Raw elements (what ``readers`` build before decoding) are dicts
``{"file": string, "encoded": string ("" until loaded), "image_id": string,
"boxes": float32 [N, 4], "labels": int32 [N], "difficult": bool [N], "num_fixed": int32}``.

Bad images are handled in two layers, so that nothing crashes inside TensorFlow:
1. ``is_valid_image`` rejects bytes that are empty, of an unknown format, or truncated
   (a JPEG without its end-of-image marker, a PNG without its IEND chunk) before decoding, and
   ``within_pixel_limit`` those whose header declares more than ``max_pixels`` pixels.
   ``report_and_skip`` drops those elements, counts them with their file names and prints
   one report per epoch (plus the count of annotation problems found at load time).
2. Anything that still fails to decode (a corrupt JPEG body) is skipped by
   ``ignore_errors`` after the decoding map; TensorFlow logs those with the error.
"""

from __future__ import annotations

import tensorflow as tf

from scratchdet_tf.data import annotations, augment

_MAX_NAMES_REPORTED = 20
# End markers are looked for this close to the end: some files carry trailing padding, and
# FF D9 cannot occur inside JPEG scan data (an FF there is always followed by 00 or D0..D7).
_TAIL_BYTES = 1024


def load_bytes(raw):
    """Fills ``raw["encoded"]`` from ``raw["file"]`` unless it already holds bytes (or has no file)."""
    raw = dict(raw)
    loaded = (tf.strings.length(raw["encoded"]) > 0) | tf.equal(raw["file"], "")
    raw["encoded"] = tf.cond(loaded, lambda: raw["encoded"], lambda: tf.io.read_file(raw["file"]))
    return raw


def _tail_has(data, marker: bytes):
    """bool []: ``marker`` occurs within the last ``_TAIL_BYTES`` bytes of ``data``."""
    length = tf.strings.length(data)
    tail = tf.io.decode_raw(tf.strings.substr(data, tf.maximum(length - _TAIL_BYTES, 0), _TAIL_BYTES), tf.uint8)
    n = tf.size(tail) - len(marker) + 1
    hit = tf.ones([tf.maximum(n, 0)], tf.bool)
    for i, byte in enumerate(marker):
        hit &= tf.equal(tail[i:i + tf.maximum(n, 0)], byte)
    return tf.reduce_any(hit)


def is_valid_image(data):
    """bool []: bytes look like a complete JPEG, PNG, GIF or BMP file.

    Args:
      data: string [] encoded image.
    """
    png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    other = tf.equal(tf.strings.substr(data, 0, 3), b"GIF") | tf.equal(tf.strings.substr(data, 0, 2), b"BM")
    return tf.cond(augment.is_jpeg(data), lambda: _tail_has(data, b"\xff\xd9"),
                   lambda: tf.cond(png, lambda: _tail_has(data, b"IEND"), lambda: other))


# Decoded images larger than this are refused before decoding (a 1.2 MB PNG can declare 20000 x 20000
# pixels: 1.2 GB as uint8 RGB, several GB once resized in float). 50 MP is 8,660 x 5,773.
DEFAULT_MAX_PIXELS = annotations.DEFAULT_MAX_PIXELS
_JPEG_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def _be16(b, i):
    return tf.cast(b[i], tf.int64) * 256 + tf.cast(b[i + 1], tf.int64)


def _le(b, i, n):
    return tf.add_n([tf.cast(b[i + k], tf.int64) * (256 ** k) for k in range(n)])


def _bmp_height(value):
    """A BMP's int32 height (negative: stored top-down) from its unsigned reading, as a positive count."""
    return tf.where(value >= 2 ** 31, 2 ** 32 - value, value)


def _jpeg_size(b):
    """(height, width) from the first SOF segment, walking the segment lengths; (-1, -1) if none is found."""
    n = tf.size(b, out_type=tf.int64)
    sof = tf.constant(_JPEG_SOF, tf.int64)

    def cond(pos, height, width):
        return (pos + 9 <= n) & (height < 0)

    def body(pos, height, width):
        marker = tf.cast(b[pos + 1], tf.int64)
        is_sof = (tf.cast(b[pos], tf.int64) == 0xFF) & tf.reduce_any(tf.equal(sof, marker))
        if_sof = (pos, _be16(b, pos + 5), _be16(b, pos + 7))
        standalone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8)) | (marker == 0xFF)
        step = tf.where(tf.cast(b[pos], tf.int64) != 0xFF, n,  # lost sync: stop
                        tf.where(standalone, 1 + tf.cast(marker != 0xFF, tf.int64), 2 + _be16(b, pos + 2)))
        return tf.cond(is_sof, lambda: if_sof, lambda: (pos + step, height, width))

    minus = tf.constant(-1, tf.int64)
    _, height, width = tf.while_loop(cond, body, (tf.constant(2, tf.int64), minus, minus))
    return height, width


def header_pixels(data):
    """int64 []: height x width that a JPEG, PNG, GIF or BMP header declares, read without decoding;
    -1 if the header is too short or of another format (decoding then fails on its own)."""
    head = tf.io.decode_raw(tf.strings.substr(data, 0, 32), tf.uint8)
    full = tf.size(head) >= 26
    png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    gif = tf.equal(tf.strings.substr(data, 0, 3), b"GIF")
    bmp = tf.equal(tf.strings.substr(data, 0, 2), b"BM")
    minus = tf.constant(-1, tf.int64)

    def from_header():
        return tf.case([
            (png, lambda: (_be16(head, 18) + _be16(head, 16) * 65536) * (_be16(head, 22) + _be16(head, 20) * 65536)),
            (gif, lambda: _le(head, 6, 2) * _le(head, 8, 2)),
            (bmp, lambda: _le(head, 18, 4) * _bmp_height(_le(head, 22, 4))),
        ], default=lambda: minus)

    def from_jpeg():
        height, width = _jpeg_size(tf.io.decode_raw(data, tf.uint8))
        return tf.where(height < 0, minus, height * width)

    return tf.cond(augment.is_jpeg(data), from_jpeg, lambda: tf.cond(full, from_header, lambda: minus))


def within_pixel_limit(data, max_pixels: int):
    """bool []: the header declares at most ``max_pixels`` pixels (or cannot be read: decoding decides)."""
    return header_pixels(data) <= max_pixels


def decode(data):
    """uint8 [H, W, 3] RGB from encoded bytes (grey and RGBA become RGB; a GIF gives its first frame)."""
    image = tf.cond(augment.is_jpeg(data), lambda: tf.io.decode_jpeg(data, channels=3),
                    lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    return tf.ensure_shape(image, [None, None, 3])


def to_example(raw):
    """Decodes a loaded raw element into the data contract (drops the bookkeeping fields)."""
    return {"image": decode(raw["encoded"]), "boxes": raw["boxes"], "labels": raw["labels"],
            "difficult": raw["difficult"], "image_id": raw["image_id"]}


def mark_epoch_end(ds):
    """(raw, is_end) pairs: every raw element with False, then one dummy element with True.

    Apply before ``repeat`` so that each epoch ends with its marker.
    """
    spec = ds.element_spec
    dummy = tf.nest.map_structure(lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype), spec)
    end = tf.data.Dataset.from_tensors((dummy, True))
    return ds.map(lambda raw: (raw, False)).concatenate(end)


def report_and_skip(ds, source: str, load_problems: str = "", num_load_problems: int = 0,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Checks loaded bytes, drops bad images and prints one report per epoch when anything was wrong.

    Args:
      ds: (raw, is_end) pairs from ``mark_epoch_end`` whose raw elements are loaded
        (``load_bytes``).
      source: the source URI, quoted in the report.
      load_problems: summary of the annotation problems found at load time.
      num_load_problems: their count (reported every epoch as a reminder).
      max_pixels: images whose header declares more pixels are skipped undecoded; None: no check
        (file sources are checked when their annotations are read, which costs nothing per epoch).

    Returns:
      A dataset of valid raw elements.
    """
    def check(raw, is_end):
        usable = is_valid_image(raw["encoded"])
        if max_pixels is not None:
            usable &= within_pixel_limit(raw["encoded"], max_pixels)
        return raw, is_end, tf.logical_or(is_end, usable)

    def step(state, element):
        epoch, num_bad, names, num_fixed = state
        raw, is_end, ok = element
        bad = tf.logical_not(ok)
        num_bad += tf.cast(bad, tf.int64)
        names = tf.cond(bad & (tf.size(names) < _MAX_NAMES_REPORTED),
                        lambda: tf.concat([names, [raw["file"]]], 0), lambda: names)
        num_fixed += tf.cast(tf.where(is_end, 0, raw["num_fixed"]), tf.int64)

        def report():
            num_named = tf.cast(tf.size(names), tf.int64)
            more = tf.where(num_bad > num_named, tf.strings.join([", +", tf.strings.as_string(num_bad - num_named),
                                                                   " more"]), "")
            tf.print(tf.strings.join([
                "scratchdet_tf.data: ", source, ": epoch ", tf.strings.as_string(epoch), ": skipped ",
                tf.strings.as_string(num_bad), " unreadable, truncated or oversized images (",
                tf.strings.reduce_join(names, separator=", "), more, "); repaired or dropped ",
                tf.strings.as_string(num_fixed), " boxes of TFDS records; ", str(num_load_problems),
                " annotation problems at load time", f": {load_problems}" if load_problems else ""]))
            return tf.constant(True)

        tf.cond(is_end & ((num_bad > 0) | (num_fixed > 0) | (num_load_problems > 0)), report,
                lambda: tf.constant(False))
        reset = tf.zeros([], tf.int64)
        names = tf.cond(is_end, lambda: tf.zeros([0], tf.string), lambda: names)
        new_state = (epoch + tf.cast(is_end, tf.int64), tf.where(is_end, reset, num_bad), names,
                     tf.where(is_end, reset, num_fixed))
        return new_state, (raw, ok & tf.logical_not(is_end))

    def keep_ok(raw, keep):
        del raw
        return keep

    def drop_flag(raw, keep):
        del keep
        return raw

    # State: (epoch, images skipped, their names, TFDS boxes repaired) of the current epoch.
    initial = (tf.constant(1, tf.int64), tf.constant(0, tf.int64), tf.zeros([0], tf.string), tf.constant(0, tf.int64))
    # In order: a non-deterministic parallel map could pass an epoch's end marker before the epoch's
    # last images, which were then counted in the next epoch's report (a flaky "skipped 3" for 2).
    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.scan(initial, step).filter(keep_ok).map(drop_flag)
