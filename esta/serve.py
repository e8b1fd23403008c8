"""A palette served elastically on Ray Serve (spec §12; issue 34; SN-Net's premise: one stitchable family
adapts to the resources it has at run time).

``python -m esta serve PALETTE`` starts one Ray Serve deployment (``PaletteServer``) behind a FastAPI
ingress. Each replica loads the palette as a user does (``esta.__main__.load_palette``: every check of
``esta.trust`` first) and batches requests with ``@serve.batch``; for every batch the elastic policy
(``esta.serve_policy.elastic_choice``) picks the most accurate deployed stitch whose queue wait plus
measured latency at that batch size fits ``--slo-ms``, within each request's own budget. Endpoints:

- ``POST /predict`` (ViT palettes): the body is one image (``Content-Type: image/*`` or
  ``application/octet-stream``) or several as ``multipart/form-data``; query ``max_latency_ms``,
  ``max_gmacs`` or ``stitch_id``. Images go through the task's eval transform, as ``Palette.predict``.
- ``POST /generate`` (Stitched LLaMA palettes): JSON ``{"prompt" | "prompts", "max_params",
  "max_latency_ms", "stitch_id", "max_new_tokens"}``; greedy answers, as ``Palette.generate``.
- ``GET /palette`` (the stitch table), ``GET /healthz``.

Every answer names the stitch that served it and its GMACs. A bad request -- not an image, a
decompression bomb (more pixels than ``--max-pixels``), a body over ``--max-body-mb``, an unknown stitch
id, a budget below the cheapest deployed stitch -- is a 4xx JSON ``{"error": ...}`` and the server keeps
serving. Requests carry bytes only: the server never opens a path named in a request.

One local Ray instance by default; ``--address`` (or ``RAY_ADDRESS``) joins a running Ray cluster, whose
``--replicas`` are spread over its nodes (each node must see the palette folder and its anchors at the
same path). This module imports no family: the entry point's ``palette_family`` dispatches on the
palette's ``kind``.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (``Request``) as objects
import asyncio
import io
import json
import math
import os
import signal
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from pathlib import Path

__all__ = ["ServeSettings", "BadRequest", "decode_image", "split_body", "build_app", "serve_forever", "MAX_IMAGES"]

MAX_IMAGES = 64  # images in one multipart request
MAX_PROMPT_CHARS, MAX_NEW_TOKENS = 8192, 512


@dataclass
class ServeSettings:
    """What every replica needs: the palette (absolute path), the SLO (ms, none: most accurate),
    limits and the device; ``anchors`` as ``load_palette`` takes them."""

    path: str
    slo_ms: float | None = None
    device: str = "cpu"
    threads: int = 1
    anchors: list[str] | None = None
    max_body_bytes: int = 16 * 2**20
    max_pixels: int = 4096 * 4096
    max_batch: int = 32
    batch_wait_s: float = 0.005
    verify: bool = False
    extra: dict = field(default_factory=dict)


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx) and one message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int, where: str = "image"):
    """An RGB PIL image from request bytes: a 400 if the bytes are not an image, a 413 if it has more
    pixels than ``max_pixels`` (read from the header, before anything is decoded) or PIL calls it a
    decompression bomb."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise BadRequest(413, f"{where}: {w}x{h} = {w * h:,} pixels, over the server's limit of {max_pixels:,}")
            return im.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadRequest(413, f"{where}: decompression bomb refused ({err})") from err
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
            raise BadRequest(400, f"{where}: not an image PIL can read ({type(err).__name__}: {err})") from err


def split_body(body: bytes, content_type: str) -> list[bytes]:
    """The images of a request body: the body itself (``image/*``, ``application/octet-stream``) or
    each part of a ``multipart/form-data`` body (at most ``MAX_IMAGES``; part names and file names are
    ignored: nothing is opened by name)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if not body:
            raise BadRequest(400, "empty body: send an image")
        return [body]
    if ctype != "multipart/form-data":
        raise BadRequest(415, f"Content-Type {ctype or 'missing'}: send an image (image/*, application/octet-stream) "
                              "or several as multipart/form-data")
    msg = BytesParser(policy=email_policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise BadRequest(400, "multipart/form-data body without parts (boundary missing or wrong)")
    parts = [p.get_payload(decode=True) or b"" for p in msg.iter_parts()]
    if not parts:
        raise BadRequest(400, "multipart/form-data body without parts")
    if len(parts) > MAX_IMAGES:
        raise BadRequest(413, f"{len(parts)} images in one request; at most {MAX_IMAGES}")
    return parts


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is over ``limit`` bytes (Content-Length first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {int(declared):,} bytes, over the server's limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body over the server's limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _records(table) -> list[dict]:
    """A table as JSON records (NaN / NA as null)."""
    return json.loads(table.to_json(orient="records"))


@dataclass
class _Item:
    """One request in a batch: its prepared inputs, budget key and arrival time."""

    inputs: object  # images (k, 3, S, S) or a list of prompts
    stitch_id: int | None
    budgets: tuple  # (max_gmacs, max_latency_ms, max_params)
    arrived: float
    max_new_tokens: int = 0

    @property
    def key(self):
        return (self.stitch_id, self.budgets, self.max_new_tokens)


def build_app(settings: ServeSettings, replicas: int = 1, num_cpus: float = 1, num_gpus: float = 0):
    """The Ray Serve application: ``PaletteServer`` (FastAPI ingress, ``@serve.batch``) bound to
    ``settings``, ``replicas`` replicas of ``num_cpus`` / ``num_gpus`` each."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve

    api = FastAPI(title="esta palette server", docs_url=None, redoc_url=None)

    @api.exception_handler(BadRequest)
    async def _bad(_request, err: BadRequest):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @serve.deployment(max_ongoing_requests=4 * settings.max_batch)
    @serve.ingress(api)
    class PaletteServer:
        def __init__(self, settings: ServeSettings):
            import torch

            from esta.__main__ import load_palette, palette_family
            from esta.serve_policy import latency_profile

            torch.set_num_threads(max(1, settings.threads))
            self.settings = settings
            self.palette = load_palette(settings.path, settings.anchors, settings.device, settings.verify)
            self.kind = self.palette.meta["kind"]
            self.family = palette_family(self.kind)
            self.table = self.palette.table
            self.profile = latency_profile(self.table)
            self.rows = self.table.set_index("stitch_id")
            self.transform = self.family.eval_transform_of(self.palette.meta) if self.kind == "vit" else None
            self.pool = ThreadPoolExecutor(max_workers=1)  # the model: one batch at a time, off the event loop
            self.served = 0

        # ---- requests -------------------------------------------------------------------------

        def _check(self, stitch_id, budgets) -> None:
            """Refuse (400) an unknown stitch id, an id with budgets, or a budget below every stitch."""
            from esta.palette import PaletteError, choose
            from esta.serve_policy import candidates

            gmacs, latency, params = budgets
            try:
                if stitch_id is not None:
                    choose(self.table, stitch_id, max_gmacs=gmacs, max_latency_ms=latency, max_params=params)
                else:
                    candidates(self.table, gmacs, latency, params)
            except PaletteError as err:
                raise BadRequest(400, str(err)) from err

        def _answer(self, choice, n: int, wait_ms: float, run_ms: float) -> dict:
            r = self.rows.loc[choice.stitch_id]
            acc = r["accuracy"]
            return dict(stitch_id=int(choice.stitch_id), name=str(r["name"]), gmacs=float(r["gmacs"]),
                        params=int(r["params"]), accuracy=None if acc != acc else float(acc), batch_size=n,
                        queue_ms=round(wait_ms, 3), run_ms=round(run_ms, 3),
                        predicted_ms=None if math.isnan(choice.predicted_ms) else round(choice.predicted_ms, 3),
                        slo_ms=choice.deadline_ms, slo_fit=choice.fits)

        def _choose(self, item: _Item, n: int, wait_ms: float):
            from esta.serve_policy import Choice, elastic_choice

            if item.stitch_id is not None:
                return Choice(int(item.stitch_id), math.nan, None, True)
            gmacs, latency, params = item.budgets
            return elastic_choice(self.table, n, wait_ms, self.settings.slo_ms, gmacs, latency, params, self.profile)

        def _classify(self, stitch_id: int, x):
            """``Palette.predict``'s computation on prepared images: top-1 class and probability."""
            self.palette.select(stitch_id=stitch_id)
            prob = self.palette(x).float().softmax(-1)
            p, idx = prob.max(-1)
            return p.tolist(), idx.tolist()

        def _generate(self, stitch_id: int, prompts: list[str], max_new_tokens: int) -> list[str]:
            return self.palette.select(stitch_id=stitch_id).generate(prompts, max_new_tokens)

        @serve.batch(max_batch_size=settings.max_batch, batch_wait_timeout_s=settings.batch_wait_s)
        async def _run(self, items: list[_Item]) -> list[dict]:
            """One batch: requests grouped by what they asked for; per group the policy picks the
            stitch for the group's size and its oldest request's wait, then one forward (or one
            greedy decode) off the event loop."""
            import torch

            loop = asyncio.get_running_loop()
            groups: dict = {}
            for i, item in enumerate(items):
                groups.setdefault(item.key, []).append(i)
            out: list = [None] * len(items)
            for idx in groups.values():
                first = items[idx[0]]
                wait_ms = (time.perf_counter() - min(items[i].arrived for i in idx)) * 1e3
                if self.kind == "vit":
                    x = torch.cat([items[i].inputs for i in idx])
                    n = len(x)
                    choice = self._choose(first, n, wait_ms)
                    t0 = time.perf_counter()
                    probs, classes = await loop.run_in_executor(self.pool, self._classify, choice.stitch_id, x)
                    run_ms = (time.perf_counter() - t0) * 1e3
                    at = 0
                    names = self.palette.meta["classes"]
                    for i in idx:
                        k = len(items[i].inputs)
                        preds = [{"class_index": int(c), "class": names[int(c)], "probability": float(q)}
                                 for c, q in zip(classes[at : at + k], probs[at : at + k])]
                        out[i] = dict(self._answer(choice, n, wait_ms, run_ms), predictions=preds)
                        at += k
                else:
                    prompts = [p for i in idx for p in items[i].inputs]
                    n = len(prompts)
                    choice = self._choose(first, n, wait_ms)
                    t0 = time.perf_counter()
                    answers = await loop.run_in_executor(self.pool, self._generate, choice.stitch_id, prompts,
                                                         first.max_new_tokens)
                    run_ms = (time.perf_counter() - t0) * 1e3
                    at = 0
                    for i in idx:
                        k = len(items[i].inputs)
                        out[i] = dict(self._answer(choice, n, wait_ms, run_ms), answers=answers[at : at + k])
                        at += k
                self.served += len(idx)
            return out

        @api.post("/predict")
        async def predict(self, request: Request, max_latency_ms: float | None = None,
                          max_gmacs: float | None = None, stitch_id: int | None = None):
            arrived = time.perf_counter()
            if self.kind != "vit":
                raise BadRequest(400, f"a {self.kind} palette does not classify images: POST /generate")
            budgets = (max_gmacs, max_latency_ms, None)
            self._check(stitch_id, budgets)
            body = await _read_body(request, self.settings.max_body_bytes)
            blobs = split_body(body, request.headers.get("content-type", ""))

            def prepare():
                import torch

                ims = [decode_image(b, self.settings.max_pixels, f"image {i}") for i, b in enumerate(blobs)]
                return torch.stack([self.transform(im) for im in ims])

            x = await asyncio.get_running_loop().run_in_executor(None, prepare)
            return await self._run(_Item(x, stitch_id, budgets, arrived))

        @api.post("/generate")
        async def generate(self, request: Request):
            arrived = time.perf_counter()
            if self.kind != "llm":
                raise BadRequest(400, f"a {self.kind} palette does not generate text: POST /predict")
            body = await _read_body(request, self.settings.max_body_bytes)
            try:
                req = json.loads(body or b"null")
            except ValueError as err:
                raise BadRequest(400, f"body: not JSON ({err})") from err
            if not isinstance(req, dict):
                raise BadRequest(400, 'body: a JSON object {"prompt": ...} or {"prompts": [...]}')
            known = {"prompt", "prompts", "max_params", "max_latency_ms", "stitch_id", "max_new_tokens"}
            if set(req) - known:
                raise BadRequest(400, f"unknown fields {sorted(set(req) - known)}; known: {sorted(known)}")
            prompts = [req["prompt"]] if "prompt" in req else req.get("prompts")
            if (not isinstance(prompts, list) or not prompts or len(prompts) > MAX_IMAGES
                    or not all(isinstance(p, str) and 0 < len(p) <= MAX_PROMPT_CHARS for p in prompts)):
                raise BadRequest(400, f"prompt / prompts: 1 to {MAX_IMAGES} non-empty strings of at most "
                                      f"{MAX_PROMPT_CHARS} characters")
            new = req.get("max_new_tokens", 32)
            budgets = (None, req.get("max_latency_ms"), req.get("max_params"))
            sid = req.get("stitch_id")
            if (not isinstance(new, int) or not 1 <= new <= MAX_NEW_TOKENS
                    or not all(b is None or (isinstance(b, int | float) and not isinstance(b, bool)) for b in budgets)
                    or not (sid is None or (isinstance(sid, int) and not isinstance(sid, bool)))):
                raise BadRequest(400, f"max_new_tokens: an integer 1..{MAX_NEW_TOKENS}; max_params, "
                                      "max_latency_ms: numbers; stitch_id: an integer")
            self._check(sid, budgets)
            return await self._run(_Item(prompts, sid, budgets, arrived, new))

        @api.get("/palette")
        def table(self):
            meta = self.palette.meta
            return dict(kind=self.kind, method=meta["method"], task=meta.get("task"), slo_ms=self.settings.slo_ms,
                        stitches=_records(self.table))

        @api.get("/healthz")
        def healthz(self):
            return dict(status="ok", kind=self.kind, stitches=len(self.table),
                        deployed=int(self.table["deployed"].sum()), slo_ms=self.settings.slo_ms,
                        served=self.served, pid=os.getpid())

    opts = dict(num_cpus=num_cpus)
    if num_gpus:
        opts["num_gpus"] = num_gpus
    return PaletteServer.options(num_replicas=replicas, ray_actor_options=opts).bind(settings)


def serve_forever(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
                  address: str | None = None, num_cpus: float | None = None, ray_temp_dir: str | None = None,
                  ready=None, stop: threading.Event | None = None) -> None:
    """Start Ray (a local instance, or the cluster at ``address`` / ``RAY_ADDRESS``), Ray Serve on
    ``host:port`` and the palette's application; block until SIGINT / SIGTERM (or ``stop``), then
    shut Serve and Ray down. ``ready(url)`` is called once the server answers."""
    import logging

    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the raylet waits for its node agent (a Python process) for 30 s by default; on a small busy
    # machine that agent alone can take longer to import and start
    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
    stop = stop or threading.Event()
    previous: dict = {}
    address = address or os.environ.get("RAY_ADDRESS") or None
    cpus = num_cpus if num_cpus is not None else max(1, settings.threads)
    gpus = 1 if settings.device.startswith("cuda") else 0
    try:
        if address is None:  # a new local instance of its own, sized for the replicas asked for ("local":
            # without it ray.init joins a Ray already running on this machine, e.g. a second server's)
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(replicas * cpus)), include_dashboard=False,
                     object_store_memory=256 * 2**20, logging_level=logging.WARNING, _temp_dir=ray_temp_dir)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
        serve.start(http_options=dict(host=host, port=port), logging_config=dict(log_level="WARNING"))
        serve.run(build_app(settings, replicas, cpus, gpus), name="esta", route_prefix="/",
                  logging_config=dict(log_level="WARNING", enable_access_log=False))
        # after ray.init, which installs its own SIGTERM handler (exit at once, nothing shut down)
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        url = f"http://{host}:{port}"
        if ready is not None:
            ready(url)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            for s, h in previous.items():
                signal.signal(s, h)


def settings_from_args(args) -> ServeSettings:
    """``ServeSettings`` of the ``serve`` command line; the palette is read and checked here, before
    Ray starts, so that a bad folder is one error line (an SLO on a palette without latency too)."""
    from esta.palette import PaletteError, read_meta, read_table

    path = Path(args.path).resolve()
    meta = read_meta(path)
    table = read_table(path, meta, args.verify)
    dep = table[table["deployed"]]
    if args.slo_ms is not None:
        if args.slo_ms <= 0:
            raise PaletteError(f"--slo-ms {args.slo_ms:g}: an SLO is a positive time in ms")
        if dep["latency_ms_b1"].isna().all():
            raise PaletteError(f"--slo-ms: {path} has no measured latency for its deployed stitches "
                               "(python -m esta profile measures them)")
    for name in ("replicas", "threads", "max_batch"):
        if getattr(args, name) < 1:
            raise PaletteError(f"--{name.replace('_', '-')} {getattr(args, name)}: at least 1")
    return ServeSettings(path=str(path), slo_ms=args.slo_ms, device=args.device, threads=args.threads,
                         anchors=[str(Path(a).resolve()) for a in args.anchors] if args.anchors else None,
                         max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                         max_batch=args.max_batch, batch_wait_s=args.batch_wait_ms / 1e3, verify=args.verify)


def main(args) -> int:
    """``python -m esta serve``: check the palette, start the server, print its address, block."""
    import sys

    settings = settings_from_args(args)

    def ready(url: str) -> None:
        print(f"serving {settings.path} on {url} (POST /predict, POST /generate, GET /palette, GET /healthz; "
              f"SLO {settings.slo_ms if settings.slo_ms is not None else 'none: most accurate'} ms, "
              f"{args.replicas} replica(s)); Ctrl-C stops", flush=True)

    serve_forever(settings, args.host, args.port, args.replicas, args.address, ray_temp_dir=args.ray_temp_dir,
                  ready=ready)
    print("stopped", file=sys.stderr, flush=True)
    return 0
