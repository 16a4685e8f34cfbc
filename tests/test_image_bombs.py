"""Multi-frame decompression bombs and codec failures through the running stack (issue 11, item 2).

One CSV carries a real photograph and four hostile files: a TIFF whose second page is 15000x15000, an MPO
whose second frame is, a GIF whose second frame claims 16000x16000 on a 1x1 screen, and an animated GIF too
wide for the WebP it must become. Each hostile image must fail on its first try with a reason naming the
limit or the codec, the photograph must succeed, and no compressor may balloon while they go through (the
issue saw 3.3 GB decoded, and RSS staying at 300 MB from 66 MB afterwards).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from tests.support import bombs
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.memory import MIB, RssSampler
from tests.support.photos import photo_bytes
from tests.support.servers import ImageHost

# peak RSS growth allowed per compressor while the batch goes through. A fixed build decodes the photograph
# and headers only (tens of MB); the unfixed one decoded each bomb into 1-3 GB. The bound is far from both,
# so a loaded machine or a second codec thread cannot make it flaky.
PEAK_GROWTH_BOUND = 400 * MIB

HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "tiff-huge-second-page.tif": (bombs.tiff_with_huge_second_page, "pixel limit"),
    "mpo-huge-second-frame.jpg": (bombs.mpo_with_huge_second_frame, "pixel limit"),
    "gif-frame-beyond-screen.gif": (bombs.gif_with_a_frame_larger_than_its_screen, "pixel limit"),
    "too-wide-for-webp.gif": (bombs.animated_gif_too_wide_for_webp, "codec failed"),
}


async def test_multi_frame_bombs_fail_on_the_first_try_without_decoding(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    rows = [("GOOD", "A real photograph", [image_host.add("rocket.jpg", photo_bytes("rocket.jpg"))])]
    for name, (build, _reason) in HOSTILE.items():
        rows.append((name, f"Hostile {name}", [image_host.add(name, build(), "application/octet-stream")]))
    sampler = RssSampler()
    await sampler.start()
    try:
        response = await upload(http, csv_text(rows))
        assert response.status == 200
        request_id = (await response.json())["request_id"]
        final = await wait_final(http, request_id, timeout=180)
    finally:
        await sampler.stop()
    print(f"\ncompressor RSS during the hostile batch:\n{sampler.report()}")

    assert final["status"] == "Completed", final
    assert final["progress"]["images_done"] == 1 and final["progress"]["images_failed"] == len(HOSTILE), final
    async with http.get(f"{API}/requests/{request_id}/products?limit=10") as answer:
        items = {item["serial_number"]: item for item in (await answer.json())["items"]}
    assert items["GOOD"]["output_image_urls"][0]
    for name, (_build, fragment) in HOSTILE.items():
        [reason] = items[name]["image_errors"]
        assert fragment in reason and "interrupted" not in reason, (name, reason)
        assert image_host.hits[name] == 1, (name, "downloaded again: the task was redelivered")
    for key, grown in sampler.growth().items():
        assert grown < PEAK_GROWTH_BOUND, f"{key} grew by {grown / MIB:.0f} MiB:\n{sampler.report()}"
