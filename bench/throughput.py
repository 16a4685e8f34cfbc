"""Throughput: the codec floor against end-to-end images/second, measured in one run.

    .venv/bin/python -m bench.throughput [--images 240] [--configs 1x1,2x1,1x2] [--runs 2] [--profile]
    .venv/bin/python -m bench.throughput --compressor-cores 1 [--images 240] [--runs 2]

1. Makes ``--images`` distinct photographs of 2400x1600 from scikit-image's sample photos (a different crop,
   flip, rotation and colour balance of a different photo each, upscaled, with a little sensor-like noise so
   the JPEG q90 files have the size and detail of camera output), cached in ``bench/out/`` (gitignored).
2. Codec floor: the same bytes through ``services.compressor.compress.compress`` at quality 50 with the Pillow
   pixel path (``jpeg_fast_path=False``: decode + encode, the codec the DCT-domain path replaces) in 2 processes,
   no network, no broker, no storage: as ``ProcessPoolExecutor(2).map`` and with one codec thread per process
   (the way the compressor runs it, ~40 % faster: see ``thread_floor``), before and after step 3. The fastest
   measurement is the floor the ratios are computed against. Also: one process with 1 and 2 codec threads, the
   same floor with the DCT-domain path (``compress`` as the compressors run it), and the JPEG codec's CPU per
   image both ways with the savings each gives (``codec_cpu``, ``--codec-runs`` times).
3. End to end: serves the photographs from a local aiohttp server, uploads one CSV naming all of them and times
   upload -> ``Completed`` through the real ingest, RabbitMQ, compressors, aggregator, FerretDB and MinIO, for
   each compressor configuration ``PROCSxTHREADS`` (compressor processes x ``PIXPRESS_COMPRESSOR_WORKERS``).
   Besides the end-to-end rate it reports when every image had been recorded (the "images phase", before the
   output CSV is written), and the CPU time per image of every part of the pipeline. For configurations that
   fill every core it also prints the ceiling the servers leave: how close to the floor the cores could get
   if everything but the codec and RabbitMQ, FerretDB and MinIO cost nothing (see ``ceiling``).
4. ``--compressor-cores N`` instead: N compressors alone on N cores, the servers and everything else on the
   other cores (a deployment's servers on machines of their own), against the codec floor on those N cores.

Isolation: the script starts its own ingest, aggregator and compressors (the programs of this checkout) on the
stack's RabbitMQ, FerretDB and MinIO servers, but on names nobody else uses: RabbitMQ virtual host
``pixpress-throughput-<random>`` (a new one per configuration), database ``pixpress_throughput``, bucket
``pixpress-throughput``, all emptied for every configuration and removed at the end. So the stack's own
services, queues and data are never touched, other people's tests do not land in the measurement, and FerretDB
starts from an empty database (history no longer slows requests down with our FerretDB patch, see
docs/benchmarks.md, but an empty database is the same for every run). The servers and the two cores are still
shared: the load average is printed with every run.

Needs ``make up`` (the servers) and the RabbitMQ management API on 127.0.0.1:15672 (guest/guest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.compressor.compress import compress  # noqa: E402
from testkit.photos import DATA_DIR, PHOTOS  # noqa: E402
from testkit.stack import (  # noqa: E402
    MANAGEMENT,
    MANAGEMENT_HEADERS,
    STATE,
    create_vhost,
    delete_vhost,
    service_env,
)

OUT = REPO / "bench" / "out"
VENV = REPO / ".venv"
VHOST = "pixpress-throughput"
DATABASE = "pixpress_throughput"
BUCKET = "pixpress-throughput"
POLL_SECONDS = 0.25  # status polling: at most 2.5 % of a 10 s run, and little load on the API and FerretDB
SIZE = (2400, 1600)
# colour photographs shipped in the scikit-image wheel
SOURCES = (*PHOTOS, "motorcycle_right.png", "ihc.png")
SERVERS = ("rabbitmq", "ferretdb", "minio")  # the stack's, shared with whoever else uses them
PHOTO_VERSION = 3  # bump when make_photo changes, so cached files are remade


# --- the photographs ----------------------------------------------------------------------------------------------


def make_photo(i: int) -> bytes:
    """Photo ``i``: source ``i % n``, a crop, a flip/rotation and a colour balance that differ with ``i``."""
    rng = np.random.default_rng(i)
    source = Image.open(DATA_DIR / SOURCES[i % len(SOURCES)]).convert("RGB")
    w, h = source.size
    if (i // len(SOURCES)) % 2:
        source = source.transpose(Image.Transpose.ROTATE_90)  # portrait crops of landscape photos and back
        w, h = h, w
    aspect = SIZE[0] / SIZE[1]
    scale = rng.uniform(0.6, 1.0)
    cw = min(w, int(h * aspect)) * scale
    ch = cw / aspect
    left = rng.uniform(0, w - cw)
    top = rng.uniform(0, h - ch)
    image = source.resize(SIZE, Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if rng.random() < 0.25:
        image = image.transpose(Image.Transpose.ROTATE_180)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    gains = rng.uniform(0.9, 1.1, 3)
    pixels = np.asarray(image, dtype=np.float32) * gains + rng.normal(0, 4.0, (SIZE[1], SIZE[0], 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def photos(count: int) -> list[bytes]:
    OUT.mkdir(parents=True, exist_ok=True)
    paths = [OUT / f"photo-v{PHOTO_VERSION}-{i:04d}.jpg" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.exists()]
    if missing:
        print(f"making {len(missing)} photographs of {SIZE[0]}x{SIZE[1]} in {OUT} ...", flush=True)
        with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
            for i, data in zip(missing, pool.map(make_photo, missing, chunksize=4), strict=True):
                paths[i].write_bytes(data)
    bodies = [path.read_bytes() for path in paths]
    assert len(set(bodies)) == count, "photographs are not distinct"
    return bodies


# --- codec floor --------------------------------------------------------------------------------------------------


# Fresh interpreters for the floor's workers: forked from this script after the end-to-end runs, they inherited
# its heap (and glibc's arenas of its many threads) and ran the codec ~35 % slower than before the runs on an
# otherwise idle core.
FRESH = multiprocessing.get_context("spawn")


def _codec(data: bytes, fast: bool = False) -> int:
    """One photo through ``compress`` at q50: the Pillow pixel path, or with ``fast`` the DCT-domain JPEG path."""
    return len(compress(data, quality=50, jpeg_fast_path=fast).data)


def pool_map_floor(bodies: list[bytes], workers: int = 2, fast: bool = False) -> float:
    """``ProcessPoolExecutor(2).map(compress, photos)``: the codec in each worker's main thread."""
    codec = partial(_codec, fast=fast)
    with ProcessPoolExecutor(workers, mp_context=FRESH) as pool:
        list(pool.map(codec, bodies[: workers * 2]))  # start the workers, import Pillow
        started = time.perf_counter()
        list(pool.map(codec, bodies, chunksize=1))
        return len(bodies) / (time.perf_counter() - started)


def _codec_threads(shares: list[list[bytes]], fast: bool = False) -> float:
    """Runs one codec thread per share in this process; returns the seconds they took."""
    _codec(shares[0][0], fast)
    threads = [threading.Thread(target=lambda share=share: [_codec(b, fast) for b in share]) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _codec_cpu_in_thread(bodies: list[bytes]) -> dict[str, list[float]]:
    """Per photo, in one codec thread: CPU ms and output bytes of the Pillow path and of the DCT-domain path,
    alternating photo by photo so a busy neighbour on the shared cores weighs on both alike."""
    result: dict[str, list[float]] = {"pillow ms": [], "dct ms": [], "pillow bytes": [], "dct bytes": []}

    def work() -> None:
        _codec(bodies[0]), _codec(bodies[0], True)  # warm up both
        for data in bodies:
            for name, fast in (("pillow", False), ("dct", True)):
                started = time.thread_time()
                out = compress(data, quality=50, jpeg_fast_path=fast)
                result[f"{name} ms"].append(1000 * (time.thread_time() - started))
                result[f"{name} bytes"].append(len(out.data))
                assert out.codec == name, f"photo took the {out.codec} path, not {name}"

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return result


def codec_cpu(bodies: list[bytes]) -> dict[str, list[float]]:
    """The JPEG codec's CPU per image both ways, measured in a codec thread of a fresh process (how the compressor
    runs it; see ``thread_floor`` for why a thread and not a main thread)."""
    with ProcessPoolExecutor(1, mp_context=FRESH) as pool:
        return pool.submit(_codec_cpu_in_thread, bodies).result()


def report_codec_cpu(bodies: list[bytes], runs: int) -> list[float]:
    """Prints the JPEG codec's CPU per image, Pillow vs DCT-domain, and the savings each gives (bytes saved over
    bytes in, per image, as the status API reports them)."""
    ratios, pillow_ms, dct_ms = [], [], []
    for attempt in range(runs):
        load = os.getloadavg()[0]
        measured = codec_cpu(bodies)
        pillow, dct = statistics.mean(measured["pillow ms"]), statistics.mean(measured["dct ms"])
        ratios.append(dct / pillow)
        pillow_ms.append(pillow)
        dct_ms.append(dct)
        print(
            f"JPEG codec CPU per image, run {attempt + 1} (load average {load:.2f}): "
            f"Pillow decode + encode {pillow:.1f} ms, DCT-domain {dct:.1f} ms: {dct / pillow:.2f}x",
            flush=True,
        )
    saved_pillow = [100 * (1 - out / len(data)) for out, data in zip(measured["pillow bytes"], bodies, strict=True)]
    saved_dct = [100 * (1 - out / len(data)) for out, data in zip(measured["dct bytes"], bodies, strict=True)]
    gaps = [d - p for d, p in zip(saved_dct, saved_pillow, strict=True)]
    print(
        f"JPEG codec CPU per image over {runs} run(s): Pillow {min(pillow_ms):.1f}-{max(pillow_ms):.1f} ms, DCT-domain "
        f"{min(dct_ms):.1f}-{max(dct_ms):.1f} ms, ratio {min(ratios):.2f}-{max(ratios):.2f}x (target <= 0.6x)\n"
        f"savings per image: Pillow {statistics.mean(saved_pillow):.2f} %, "
        f"DCT-domain {statistics.mean(saved_dct):.2f} % "
        f"(difference per image {min(gaps):+.2f} to {max(gaps):+.2f} points, target within 1)",
        flush=True,
    )
    return pillow_ms


def _pin(cores: set[int] | None) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


def thread_floor(
    bodies: list[bytes], processes: int, threads: int, cores: set[int] | None = None, fast: bool = False
) -> float:
    """``processes`` processes with ``threads`` codec threads each, the photos dealt out once beforehand.

    This is how the compressor runs the codec (in a worker thread). It matters: in a process's main thread
    glibc hands the freed pixel memory back to the OS after every photo and faults it in again for the next
    one (~6,600 page faults per 2400x1600 photo against ~140 in a thread), which costs ~40 % more CPU."""
    parts = processes * threads
    shares = [bodies[i::parts] for i in range(parts)]
    with ProcessPoolExecutor(processes, mp_context=FRESH, initializer=_pin, initargs=(cores,)) as pool:
        futures = [pool.submit(_codec_threads, shares[p * threads : (p + 1) * threads], fast) for p in range(processes)]
        seconds = max(future.result() for future in futures)
    return len(bodies) / seconds


# --- the stack ----------------------------------------------------------------------------------------------------


def stack_settings() -> dict[str, str]:
    """How to reach the stack's servers: the PIXPRESS_* connection settings its services run with."""
    values = {**service_env(), **{k: v for k, v in os.environ.items() if k.startswith("PIXPRESS_")}}
    wanted = ("AMQP_URL", "MONGO_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_SECURE")
    return {f"PIXPRESS_{name}": values[f"PIXPRESS_{name}"] for name in wanted if f"PIXPRESS_{name}" in values}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def supervised_pid(name: str) -> int | None:
    conf = STATE / "supervisord.conf"
    result = subprocess.run(
        [str(VENV / "bin" / "supervisorctl"), "-c", str(conf), "pid", name], capture_output=True, text=True, check=False
    )
    pid = result.stdout.strip()
    return int(pid) if pid.isdigit() and pid != "0" else None


def process_tree_cpu(pid: int | None) -> float:
    import psutil

    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in (root, *root.children(recursive=True)):
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


class CoreSplit:
    """Compressors alone on the first ``compressor_cores`` cores; the stack's servers, ingest, aggregator and this
    script on the others.

    On a 2-core machine everything shares both cores, so the end-to-end rate measures the servers' CPU as much
    as the compressors'. A deployment puts the servers on machines of their own; this emulates that here, so
    the end-to-end rate of the compressors' cores can be compared with the codec floor on as many cores. Every
    thread of the servers' process trees is moved (threads they start later inherit the setting) and moved back
    afterwards."""

    def __init__(self, compressor_cores: int) -> None:
        cores = sorted(os.sched_getaffinity(0))
        if not 0 < compressor_cores < len(cores):
            raise SystemExit(f"--compressor-cores must leave at least one of the {len(cores)} cores for the rest")
        self.compressors = set(cores[:compressor_cores])
        self.others = set(cores[compressor_cores:])
        self._saved: dict[int, set[int]] = {}

    def _pin_tree(self, pid: int, cores: set[int]) -> None:
        import psutil

        root = psutil.Process(pid)
        for process in (root, *root.children(recursive=True)):
            for thread in process.threads():
                with contextlib.suppress(ProcessLookupError):
                    self._saved.setdefault(thread.id, os.sched_getaffinity(thread.id))
                    os.sched_setaffinity(thread.id, cores)

    def __enter__(self) -> CoreSplit:
        for server in SERVERS:
            pid = supervised_pid(server)
            if pid is None:
                raise SystemExit(f"{server} is not running: make up")
            self._pin_tree(pid, self.others)
        self._pin_tree(os.getpid(), self.others)
        return self

    def __exit__(self, *_exc: object) -> None:
        for thread_id, cores in self._saved.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(thread_id, cores)

    def describe(self) -> str:
        return f"compressors on core(s) {sorted(self.compressors)}, everything else on {sorted(self.others)}"


class Pipeline:
    """Ingest, aggregator and compressors of this checkout on a private vhost, database and bucket.

    Only the processes started here are ever signalled. ``names`` = (vhost prefix, database, bucket): another
    benchmark reusing this class keeps its own."""

    def __init__(
        self,
        procs: int,
        threads: int,
        compressor_env: dict[str, str] | None = None,
        compressor_cores: set[int] | None = None,
        names: tuple[str, str, str] = (VHOST, DATABASE, BUCKET),
        output_cache: bool = False,
    ) -> None:
        self.procs, self.threads = procs, threads
        self.output_cache = output_cache
        self.vhost_prefix, self.database, self.bucket = names
        self.compressor_env = compressor_env or {}
        self.compressor_cores = compressor_cores
        self.connection = stack_settings()
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.health: dict[str, str] = {}
        self.server_pids: dict[str, int | None] = {}
        # a fresh name per run: a quorum queue re-declared in a vhost of the same name that was deleted a moment
        # ago can wait on the old queue's Raft cluster still shutting down (a run once hung for 13 min so)
        self.vhost = f"{self.vhost_prefix}-{uuid.uuid4().hex[:8]}"

    def env(self, **extra: str) -> dict[str, str]:
        amqp = self.connection.get("PIXPRESS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        base = {k: v for k, v in os.environ.items() if not k.startswith("PIXPRESS_")}
        return {
            **base,
            **self.connection,
            "PIXPRESS_AMQP_URL": amqp.rstrip("/") + "/" + self.vhost,
            "PIXPRESS_MONGO_DB": self.database,
            "PIXPRESS_S3_BUCKET": self.bucket,
            "PIXPRESS_API_HOST": "127.0.0.1",
            "PIXPRESS_API_PORT": str(self.port),
            "PIXPRESS_ALLOW_PRIVATE_URLS": "true",  # the photographs are served from 127.0.0.1
            "PIXPRESS_LOG_LEVEL": "INFO",
            # off unless asked: the runs of a configuration share their database and bucket, so with the output
            # cache on every run after the first would reuse the first one's outputs and run no codec
            # (bench/resync.py asks for it: measuring that reuse is its point)
            "PIXPRESS_CACHE": "on" if self.output_cache else "off",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    # --- private resources --------------------------------------------------------------------------------

    async def reset(self, http: aiohttp.ClientSession) -> None:
        """Empty vhost, database and bucket (leftovers of an interrupted run included)."""
        await self.remove(http)
        await create_vhost(http, self.vhost)

    async def remove(self, http: aiohttp.ClientSession) -> None:
        """Delete this run's vhost and any left by an interrupted run, then the database and bucket."""
        async with http.get(f"{MANAGEMENT}/vhosts", headers=MANAGEMENT_HEADERS) as answer:
            answer.raise_for_status()
            names = [v["name"] for v in await answer.json() if v["name"].startswith(self.vhost_prefix)]
        for name in names:
            await delete_vhost(http, name)
        await asyncio.to_thread(self._drop_database_and_bucket)

    def _drop_database_and_bucket(self) -> None:
        from minio import Minio
        from minio.deleteobjects import DeleteObject
        from pymongo import MongoClient

        client: MongoClient = MongoClient(self.connection.get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
        try:
            client.drop_database(self.database)
        finally:
            client.close()
        minio = Minio(
            self.connection.get("PIXPRESS_S3_ENDPOINT", "127.0.0.1:9000"),
            access_key=self.connection.get("PIXPRESS_S3_ACCESS_KEY", "pixpress"),
            secret_key=self.connection.get("PIXPRESS_S3_SECRET_KEY", "pixpress-secret"),
            secure=self.connection.get("PIXPRESS_S3_SECURE", "false").lower() == "true",
        )
        if minio.bucket_exists(self.bucket):
            objects = (DeleteObject(o.object_name) for o in minio.list_objects(self.bucket, recursive=True))
            for error in minio.remove_objects(self.bucket, objects):
                print(f"  could not delete {error.name}: {error.message}", file=sys.stderr)
            minio.remove_bucket(self.bucket)

    # --- processes ------------------------------------------------------------------------------------------

    def _spawn(self, name: str, program: str, cores: set[int] | None = None, **extra: str) -> None:
        logs = OUT / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(VENV / "bin" / program)],
                env=self.env(**extra),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: _pin(cores)) if cores else None,
            )

    async def start(self, http: aiohttp.ClientSession, keep_data: bool = False) -> None:
        """``keep_data``: only a fresh vhost; the database and bucket stay as an earlier run left them."""
        if keep_data:
            await create_vhost(http, self.vhost)
        else:
            await self.reset(http)
        self._spawn("ingest", "pixpress-ingest")
        self.health["ingest"] = f"{self.api}/healthz"
        port = free_port()
        self._spawn("aggregator", "pixpress-aggregator", PIXPRESS_HEALTH_PORT=str(port))
        self.health["aggregator"] = f"http://127.0.0.1:{port}/healthz"
        for n in range(1, self.procs + 1):
            port = free_port()
            extra = {"PIXPRESS_HEALTH_PORT": str(port), "PIXPRESS_COMPRESSOR_WORKERS": str(self.threads)}
            extra.update(self.compressor_env)
            self._spawn(f"compressor-{n}", "pixpress-compressor", self.compressor_cores, **extra)
            self.health[f"compressor-{n}"] = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 90
        for name, url in self.health.items():
            while True:
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"bench {name} exited; see {OUT / 'logs' / (name + '.log')}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as answer:
                        if answer.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench {name} not healthy at {url}")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @property
    def compressor_pids(self) -> list[int]:
        return [p.pid for name, p in self.processes.items() if name.startswith("compressor")]

    def compressor_rss_mib(self) -> str:
        import psutil

        sizes = []
        for pid in self.compressor_pids:
            with contextlib.suppress(psutil.Error):
                sizes.append(f"{psutil.Process(pid).memory_info().rss / 2**20:.0f} MiB")
        return ", ".join(sizes)

    def compressor_thread_cpu(self) -> dict[str, float]:
        """The compressors' CPU split by thread: the codec threads (the busiest ones besides the main thread),
        the event loop (the main thread: download, AMQP, orchestration) and the rest (``asyncio.to_thread``
        workers, i.e. the MinIO client's PUTs)."""
        import psutil

        split = {"compressor codec": 0.0, "compressor loop": 0.0, "compressor I/O threads": 0.0}
        for pid in self.compressor_pids:
            with contextlib.suppress(psutil.Error):
                threads = psutil.Process(pid).threads()
                others = sorted((t.user_time + t.system_time for t in threads if t.id != pid), reverse=True)
                split["compressor loop"] += sum(t.user_time + t.system_time for t in threads if t.id == pid)
                split["compressor codec"] += sum(others[: self.threads])
                split["compressor I/O threads"] += sum(others[self.threads :])
        return split

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each part: this pipeline's processes, the shared servers (which also serve
        whoever else uses the machine) and this script (image host and status polling)."""
        import psutil

        usage = {
            **self.compressor_thread_cpu(),
            "ingest": process_tree_cpu(self.processes["ingest"].pid),
            "aggregator": process_tree_cpu(self.processes["aggregator"].pid),
        }
        if not self.server_pids:  # once: each lookup runs supervisorctl (~0.1 s), too slow to do mid-run
            self.server_pids = {server: supervised_pid(server) for server in SERVERS}
        for server in SERVERS:
            usage[server] = process_tree_cpu(self.server_pids[server])
        me = psutil.Process().cpu_times()  # this process alone: the pipeline's processes are its children
        usage["bench"] = me.user + me.system
        return usage


class PhotoHost:
    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        self.app = web.Application()
        self.app.add_routes([web.get("/p/{i}.jpg", self._photo)])
        self.runner = web.AppRunner(self.app, access_log=None)
        self.port = 0
        self.last_served = 0.0

    async def _photo(self, request: web.Request) -> web.Response:
        self.last_served = time.perf_counter()
        return web.Response(body=self.bodies[int(request.match_info["i"])], content_type="image/jpeg")

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def csv(self, indices: range, tag: str) -> str:
        lines = ["Serial Number,Product Name,Input Image Urls"]
        lines += [f"{tag}-{i},Photo {i},http://127.0.0.1:{self.port}/p/{i}.jpg" for i in indices]
        return "\r\n".join(lines) + "\r\n"


@dataclass
class Run:
    images: int
    seconds: float  # upload -> Completed
    settled: float  # upload -> every image recorded by the aggregator (progress counters), before the output CSV
    upload_ms: float
    last_download: float
    cpu_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> part -> CPU ms per image
    progress: dict[str, float] = field(default_factory=dict)  # the final status's progress counts

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def images_phase_rate(self) -> float:
        return self.images / self.settled


async def one_request(
    http: aiohttp.ClientSession,
    api: str,
    host: PhotoHost,
    count: int,
    tag: str,
    snapshot: Callable[[], dict[str, float]],
    poll: float = POLL_SECONDS,
) -> Run:
    form = aiohttp.FormData()
    form.add_field("file", host.csv(range(count), tag).encode(), filename="bench.csv", content_type="text/csv")
    cpu = [snapshot()]
    started = time.perf_counter()
    async with http.post(f"{api}/upload", data=form) as answer:
        body = await answer.json()
        assert answer.status == 200, body
    upload_ms = (time.perf_counter() - started) * 1000
    request_id = body["request_id"]
    settled = 0.0
    status: dict[str, Any]
    while True:
        try:
            async with http.get(f"{api}/status/{request_id}") as answer:
                status = await answer.json() if answer.status == 200 else {"status": f"HTTP {answer.status}"}
        except aiohttp.ClientError:  # the API restarting (other people's fault tests) is not the pipeline's time
            status = {"status": "unreachable"}
        if not settled and status.get("progress", {}).get("images_settled", 0) >= count:
            settled = time.perf_counter() - started
            cpu.append(snapshot())
        if status["status"] in ("Completed", "Failed"):
            break
        await asyncio.sleep(poll)
    seconds = time.perf_counter() - started
    cpu.append(snapshot())
    if not settled:  # finished between two polls
        settled = seconds
        cpu.insert(1, cpu[-1])
    progress = status["progress"]
    if status["status"] != "Completed" or progress["images_done"] != count:
        raise RuntimeError(f"bench request {request_id} did not complete cleanly: {json.dumps(status)}")
    phases = {"images": (cpu[0], cpu[1]), "finish": (cpu[1], cpu[2]), "total": (cpu[0], cpu[2])}
    cpu_ms = {
        phase: {part: 1000 * (after[part] - before[part]) / count for part in after}
        for phase, (before, after) in phases.items()
    }
    return Run(count, seconds, settled, upload_ms, host.last_served - started, cpu_ms, progress)


def report(procs: int, threads: int, run: Run, load: float) -> None:
    cores = os.cpu_count() or 2
    print(
        f"  {procs} process(es) x {threads} codec thread(s): {run.rate:6.2f} images/s "
        f"({run.images} in {run.seconds:.1f}s; /upload {run.upload_ms:.0f} ms; load average {load:.1f})",
        flush=True,
    )
    print(
        f"    last photo downloaded at {run.last_download:.1f}s, every image recorded at {run.settled:.1f}s "
        f"({run.images_phase_rate:.2f} images/s), output CSV and Completed {run.seconds - run.settled:.1f}s later",
        flush=True,
    )
    for phase, label, span in (
        ("images", "images phase", run.settled),
        ("finish", "finish phase", run.seconds - run.settled),
    ):
        parts = run.cpu_ms[phase]
        busy = sum(parts.values()) * run.images / 1000 / max(span, 1e-6)
        print(
            f"    CPU ms per image, {label}: "
            + ", ".join(f"{name} {ms:.1f}" for name, ms in parts.items() if ms >= 0.05)
            + f" ({busy:.2f} of {cores} cores busy)",
            flush=True,
        )


def ceiling(run: Run, floor: float, cores: int) -> str:
    """The best ratio these servers allow when they share the codec's cores, measured by this run.

    Every image costs the codec ``cores / floor`` seconds of CPU and costs RabbitMQ, FerretDB and MinIO their
    share (one PUT, a few messages, one insert). Even if pixpress's own code (download, publish, aggregator,
    ingest) and the image host cost nothing, the cores cannot do more than codec / (codec + servers) of the
    floor."""
    codec_ms = 1000 * cores / floor
    servers_ms = sum(run.cpu_ms["images"].get(name, 0.0) for name in SERVERS)
    return (
        f"ceiling with the servers on the same {cores} cores: {100 * codec_ms / (codec_ms + servers_ms):.0f}% "
        f"(codec {codec_ms:.1f} ms + servers {servers_ms:.1f} ms of CPU per image, everything else free)"
    )


def cpu_ratio(runs: list[Run], pillow_cpu: list[float]) -> str:
    """End to end against the floor in CPU time rather than wall time: the Pillow codec's CPU per image over the
    whole pipeline's (compressors, ingest, aggregator, RabbitMQ, FerretDB, MinIO and the image host) in the
    images phase. On cores the pipeline has to itself that is the ratio of the two rates; on our shared 2 cores,
    where other people's work takes a varying share, it is the one that does not move with their load."""
    pipeline = [sum(run.cpu_ms["images"].values()) for run in runs]
    codec = statistics.median(pillow_cpu)
    return (
        f"in CPU per image: whole pipeline {min(pipeline):.1f}-{max(pipeline):.1f} ms against the Pillow codec's "
        f"{codec:.1f} ms (median of {len(pillow_cpu)}): "
        f"{codec / max(pipeline):.2f}-{codec / min(pipeline):.2f}x the floor"
    )


def py_spy(pids: list[int], seconds: int) -> list[subprocess.Popen]:
    OUT.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                str(VENV / "bin" / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--format",
                "raw",  # collapsed stacks, one "frame;frame;... count" line each
                "--output",
                str(OUT / f"profile-{pid}.txt"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


async def end_to_end(
    bodies: list[bytes],
    configs: list[tuple[int, int]],
    compressor_env: dict[str, str],
    profile: bool,
    runs_wanted: int,
    compressor_cores: set[int] | None = None,
) -> dict[tuple[int, int], list[Run]]:
    host = PhotoHost(bodies)
    await host.start()
    results: dict[tuple[int, int], list[Run]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        try:
            for procs, threads in configs:
                pipeline = Pipeline(procs, threads, compressor_env, compressor_cores)
                try:
                    await pipeline.start(http)
                    await one_request(http, pipeline.api, host, min(20, len(bodies)), f"warm{procs}x{threads}", dict)
                    runs: list[Run] = []
                    for attempt in range(runs_wanted):
                        spies = py_spy(pipeline.compressor_pids, 30) if profile and attempt else []
                        load = os.getloadavg()[0]
                        run = await one_request(
                            http, pipeline.api, host, len(bodies), f"b{procs}x{threads}-{attempt}", pipeline.cpu_seconds
                        )
                        for spy in spies:
                            spy.wait()
                        report(procs, threads, run, load)
                        runs.append(run)
                    results[(procs, threads)] = runs
                    print(f"    compressor RSS after the runs: {pipeline.compressor_rss_mib()}", flush=True)
                finally:
                    pipeline.stop()
        finally:
            await Pipeline(0, 0).remove(http)
            await host.runner.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--configs", default="1x1,2x1,1x2", help="PROCSxTHREADS, comma-separated")
    parser.add_argument(
        "--compressor-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the compressors, e.g. PIXPRESS_COMPRESSOR_PREFETCH=2 (repeatable)",
    )
    parser.add_argument("--runs", type=int, default=2, help="measured runs per configuration (best one counts)")
    parser.add_argument("--codec-runs", type=int, default=2, help="runs of the JPEG codec CPU comparison")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the compressors during the second run")
    parser.add_argument(
        "--compressor-cores",
        type=int,
        metavar="N",
        help="run N compressors x 1 thread alone on N cores, everything else on the other cores, and compare with "
        "the codec floor on those N cores (see CoreSplit)",
    )
    args = parser.parse_args()
    compressor_env = dict(item.split("=", 1) for item in args.compressor_env)
    if args.compressor_cores:
        split = CoreSplit(args.compressor_cores)
        with split:
            per_core(args, split, compressor_env)
        return
    configs = [(int(procs), int(threads)) for procs, threads in (c.split("x") for c in args.configs.split(","))]

    bodies = photos(args.images)
    mib = sum(map(len, bodies)) / 2**20
    print(f"{len(bodies)} distinct photographs {SIZE[0]}x{SIZE[1]}, JPEG q90, {mib:.0f} MiB", flush=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    floors: list[float] = []

    def measure_floor(when: str) -> None:
        load = os.getloadavg()[0]
        spec = pool_map_floor(bodies)
        threaded = thread_floor(bodies, 2, 1)
        floors.extend((spec, threaded))
        print(
            f"codec floor {when} (compress() at q50, Pillow path, 2 processes, load average {load:.2f}): "
            f"ProcessPoolExecutor(2).map {spec:.2f} images/s; one codec thread per process {threaded:.2f} images/s",
            flush=True,
        )

    pillow_cpu: list[float] = []  # the Pillow codec's CPU ms per image, one value per run
    if not args.skip_floor:
        pillow_cpu = report_codec_cpu(bodies, args.codec_runs)
        measure_floor("before")
        one, two = thread_floor(bodies, 1, 1), thread_floor(bodies, 1, 2)
        print(f"threads vs processes, codec only: 1 process x 1 thread {one:.2f} images/s, x 2 threads {two:.2f}")
        fast = thread_floor(bodies, 2, 1, fast=True)
        print(f"the same floor with the DCT-domain JPEG path, one codec thread per process: {fast:.2f} images/s")
    if args.skip_e2e:
        return
    results = asyncio.run(end_to_end(bodies, configs, compressor_env, args.profile, args.runs))
    if not args.skip_floor:
        measure_floor("after")  # the machine is shared: bracket the end-to-end runs
    floor = max(floors) if floors else None  # the fastest floor measured: the conservative ratio
    cores = os.cpu_count() or 2
    print(f"\nsummary (best of {args.runs} runs per configuration)")
    for (procs, threads), runs in results.items():
        if not runs:
            print(f"  {procs}x{threads}: no run")
            continue
        best = max(runs, key=lambda run: run.rate)
        phase = max(run.images_phase_rate for run in runs)

        def pct(rate: float) -> str:
            return f" ({100 * rate / floor:.0f}% of the floor)" if floor else ""

        uploads = statistics.median(run.upload_ms for run in runs)
        print(
            f"  {procs}x{threads}: end to end {best.rate:.2f} images/s{pct(best.rate)}; images phase "
            f"{phase:.2f} images/s{pct(phase)}; output CSV + Completed {best.seconds - best.settled:.1f}s; "
            f"/upload {uploads:.0f} ms",
            flush=True,
        )
        if floor and procs * threads >= cores:
            print(f"       {ceiling(best, floor, cores)}", flush=True)
        if pillow_cpu:
            print(f"       {cpu_ratio(runs, pillow_cpu)}", flush=True)
    if floor:
        print(f"  codec floor: {floor:.2f} images/s (the fastest of {len(floors)} measurements)")


def per_core(args: argparse.Namespace, split: CoreSplit, compressor_env: dict[str, str]) -> None:
    """End to end on the compressors' own cores against the codec floor on the same cores (``--compressor-cores``)."""
    bodies = photos(args.images)
    procs = len(split.compressors)
    print(f"{len(bodies)} distinct photographs {SIZE[0]}x{SIZE[1]}; {split.describe()}", flush=True)
    floors = [thread_floor(bodies, procs, 1, split.compressors)]
    print(f"codec floor before, {procs} process(es) x 1 codec thread on those cores: {floors[0]:.2f} images/s")
    results = asyncio.run(end_to_end(bodies, [(procs, 1)], compressor_env, args.profile, args.runs, split.compressors))
    floors.append(thread_floor(bodies, procs, 1, split.compressors))
    print(f"codec floor after: {floors[1]:.2f} images/s")
    floor = max(floors)
    runs = results.get((procs, 1), [])
    if runs:
        best = max(runs, key=lambda run: run.rate)
        phase = max(run.images_phase_rate for run in runs)
        print(
            f"\nsummary: {procs} compressor(s) on {procs} core(s) of their own: end to end {best.rate:.2f} images/s "
            f"({100 * best.rate / floor:.0f}% of the floor {floor:.2f}); images phase {phase:.2f} images/s "
            f"({100 * phase / floor:.0f}%)"
        )


if __name__ == "__main__":
    main()
