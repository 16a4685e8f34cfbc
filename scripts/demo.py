"""``make demo``: serve real photographs locally and put demo/sample.csv through the ``pixpress`` command line.

The photos are the samples scikit-image ships, served on 127.0.0.1:8765 for as long as the demo runs;
``missing.jpg`` is deliberately absent to show how a failed image appears. The demo is what a user types:
``pixpress upload demo/sample.csv --wait``, ``pixpress failures ID``, ``pixpress download ID -o FILE``.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

from testkit.photos import DATA_DIR as PHOTO_DIR
from testkit.stack import STATE

PHOTO_PORT = 8765
SAMPLE = Path(__file__).resolve().parent.parent / "demo" / "sample.csv"
OUTPUT = STATE / "demo-output.csv"


class PhotoHandler(http.server.SimpleHTTPRequestHandler):
    """The sample photos under /photos/, quietly."""

    def translate_path(self, path: str) -> str:
        return super().translate_path(path.removeprefix("/photos"))

    def log_message(self, format: str, *args: object) -> None:
        pass


def command(*args: str) -> list[str]:
    """The installed ``pixpress`` beside this Python (the venv's), so the demo runs what users run."""
    return [str(Path(sys.executable).with_name("pixpress")), *args]


def upload_and_wait() -> tuple[str, int]:
    """``pixpress upload --wait``: its request id (stdout, printed at once), its exit code; progress goes to the
    terminal on stderr."""
    with subprocess.Popen(command("upload", str(SAMPLE), "--wait"), stdout=subprocess.PIPE, text=True) as upload:
        assert upload.stdout is not None
        request_id = upload.stdout.readline().strip()
        print(request_id, flush=True)
        upload.stdout.read()
    return request_id, upload.returncode


def main() -> int:
    os.environ.setdefault("PIXPRESS_API_URL", os.environ.get("PIXPRESS_DEMO_API", "http://127.0.0.1:5000"))
    handler = functools.partial(PhotoHandler, directory=str(PHOTO_DIR))
    photos = http.server.ThreadingHTTPServer(("127.0.0.1", PHOTO_PORT), handler)
    threading.Thread(target=photos.serve_forever, daemon=True).start()
    try:
        print("$ pixpress upload demo/sample.csv --wait", flush=True)
        request_id, outcome = upload_and_wait()
        if not request_id or outcome not in (0, 1):
            return outcome or 1
        print(f"\n$ pixpress failures {request_id}", flush=True)
        subprocess.run(command("failures", request_id), check=False)
        print(f"\n$ pixpress download {request_id} -o {OUTPUT}", flush=True)
        if (downloaded := subprocess.run(command("download", request_id, "-o", str(OUTPUT)), check=False)).returncode:
            return downloaded.returncode
        print(f"\noutput CSV: {OUTPUT}\n")
        print(OUTPUT.read_text(encoding="utf-8"))
        return outcome
    finally:
        photos.shutdown()


if __name__ == "__main__":
    sys.exit(main())
