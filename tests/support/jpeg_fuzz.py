"""Fuzzes the DCT-domain JPEG module with truncated and bit-flipped JPEGs; run in a subprocess by
tests/test_jpeg_fast_path_fuzz.py, so a crash in C (a segfault, an abort, exit()) fails the test instead of
killing pytest.

    .venv/bin/python -m tests.support.jpeg_fuzz [--examples N]

Every input must either give bytes that Pillow decodes to an image of the declared size, or raise one of the
module's two exceptions. Anything else (another exception, a crash, a hang past the test's timeout) is a failure.
"""

from __future__ import annotations

import argparse
import io
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.compressor import jpeg_fast
from tests.support.photos import encode, photo

# small seeds in every layout and marker mix the path handles, so mutations reach the entropy decoder, the
# tables, the EXIF and XMP parsers and the ICC copy
SEEDS_PARAMS = (
    ("RGB", {"quality": 90}),
    ("RGB", {"quality": 90, "subsampling": 0}),
    ("RGB", {"quality": 80, "subsampling": 1, "progressive": True}),
    ("L", {"quality": 90}),
    ("RGB", {"quality": 90, "exif": b"", "icc_profile": b"\0" * 300, "comment": b"hello"}),
)


@cache
def seeds() -> list[bytes]:
    image = photo("chelsea.png").resize((67, 45))
    bodies = []
    for mode, params in SEEDS_PARAMS:
        params = dict(params)
        if "exif" in params:
            exif = Image.Exif()
            exif[0x0112] = 1
            exif[0x010F] = "maker"
            params["exif"] = exif.tobytes()
            params["xmp"] = b'<x:xmpmeta><rdf:Description tiff:Orientation="1"/></x:xmpmeta>'
        bodies.append(encode(image.convert(mode), "JPEG", **params))
    return bodies


def check(data: bytes) -> str:
    try:
        out = jpeg_fast.requantize(data, 50, 1_000_000)
    except jpeg_fast.NotEligible:
        return "declined"
    except jpeg_fast.JpegError:
        return "corrupt"
    image = Image.open(io.BytesIO(out))
    image.load()
    assert image.format == "JPEG"
    return "ok"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds())))
    kind = draw(st.sampled_from(["truncate", "flip", "both", "overwrite"]))
    if kind in ("flip", "both"):
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
    if kind == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=16))
        data[at : at + len(chunk)] = chunk
    if kind in ("truncate", "both"):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def run(examples: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutated())
    def fuzz(data: bytes) -> None:
        outcome = check(data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    for seed in seeds():  # the seeds themselves are valid and taken
        assert check(seed) == "ok", "a seed was not taken"
    fuzz()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    outcomes = run(args.examples)
    print(" ".join(f"{name}={count}" for name, count in sorted(outcomes.items())), flush=True)


if __name__ == "__main__":
    main()
