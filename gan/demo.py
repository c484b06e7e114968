"""A local web demo of a saved model: one page and a small JSON API over gan.pipeline.Pipeline.

    app = create_app("runs/shapes32/model")      # a FastAPI app; serve it with uvicorn

    GET  /                 the page (gan/static/demo.html)
    GET  /api/info         the model (resolution, conditioning inputs) and the limits
    POST /api/generate     {prompt, seed (null = random), count, psi, truncation}
                           -> {seeds, images, grid, raster}: PNG data URLs
    POST /api/attention    {prompt, seed, psi, truncation} -> {panel}: the image and one map per word
    POST /api/interpolate  {prompt, prompt_b, seed (null = random), frames, psi, truncation} -> {gif}

Image i of a generation has seed `seed + i`, so any image can be made again with
`spikegan-sample --seeds`. Refusals are JSON `{"error": message, "field": name, "position": int
or null}`: 422 for bad input or a value over a limit (a prompt's syntax error carries the
PromptError's character position), 429 when the generation queue is full. The model runs in
worker threads, so the event loop keeps serving pages and other tabs while images are made.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import socket
import threading
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from encoders import PromptError, parse_prompt
from gan.grid import MAX_SEED, gif_bytes, image_grid, png_bytes
from gan.pipeline import Pipeline

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
GIF_FPS = 12.0
ATTENTION_COLUMNS = 5  # panels per row of the attention maps: five fit the page's column at full size


@dataclass(frozen=True)
class DemoLimits:
    """What one server accepts; requests beyond these are refused with a message, never run."""

    max_images: int = 16         # Images per /api/generate request.
    max_prompt_chars: int = 200  # Characters per prompt.
    max_frames: int = 24         # Interpolation frames per transition (a GIF holds twice as many).
    max_running: int = 1         # Model calls running at once, each in a worker thread.
    max_waiting: int = 8         # Requests queued behind those; one more is refused with 429.

    @staticmethod
    def lowest(name: str) -> int:
        """The smallest value field `name` accepts (no queue is allowed; no slot is not)."""
        return 0 if name == "max_waiting" else 1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < self.lowest(name):
                raise ValueError(f"DemoLimits.{name} must be >= {self.lowest(name)}, got {value}")


class DemoError(Exception):
    """A refused request: HTTP status, a message for the page, the input field it concerns."""

    def __init__(self, status: int, message: str, *, field: str | None = None, position: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.position = position  # 0-based character index in the field's text (prompt syntax errors)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "field": self.field, "position": self.position},
                            status_code=self.status)


class GenerationSlots:
    """Admission and concurrency for model calls.

    At most `running` calls hold a slot at once and `waiting` more wait for one; a request
    beyond that is refused at once (429) rather than queued without bound. exclusive() holds
    every slot: attention maps are recorded as state on the generator's layers, so nothing else
    may run the generator meanwhile. Used from the event loop only (the counter needs no lock).
    """

    def __init__(self, *, running: int, waiting: int) -> None:
        self.running = running
        self.capacity = running + waiting
        self.pending = 0  # requests holding or waiting for a slot
        self._slots = asyncio.Semaphore(running)
        self._exclusive = asyncio.Lock()  # one exclusive holder gathers slots at a time: no deadlock

    @contextlib.asynccontextmanager
    async def hold(self, *, exclusive: bool = False) -> AsyncIterator[None]:
        if self.pending >= self.capacity:
            raise DemoError(429, f"busy: {self.pending} generations are running or waiting, the limit is "
                                 f"{self.capacity}; try again in a moment")
        self.pending += 1
        taken = 0
        try:
            async with self._exclusive if exclusive else contextlib.nullcontext():
                for _ in range(self.running if exclusive else 1):
                    await self._slots.acquire()
                    taken += 1
            yield
        finally:
            for _ in range(taken):
                self._slots.release()
            self.pending -= 1


# ---------------------------------------------------------------------------------------------
# Requests and their checks.

Truncation = Literal["prompt", "global"]


class GenerateRequest(BaseModel):
    prompt: str
    seed: int | None = None  # first seed; image i has seed + i. None = a random one.
    count: int = 1           # images, one per seed
    psi: float = 1.0         # truncation psi in [0, 2]; 1 = none
    truncation: Truncation = "prompt"  # towards the prompt's mean w, or the global w_avg


class AttentionRequest(BaseModel):
    prompt: str
    seed: int
    psi: float = 1.0
    truncation: Truncation = "prompt"


class InterpolateRequest(BaseModel):
    prompt: str
    prompt_b: str
    seed: int | None = None  # one seed for both keyframes; None = a random one
    frames: int = 12         # frames per transition (there and back)
    psi: float = 1.0
    truncation: Truncation = "prompt"


def check_prompt(text: str, limits: DemoLimits, *, field: str = "prompt") -> str:
    """The prompt if it is non-empty, within the length limit and parses; else DemoError 422."""
    if len(text) > limits.max_prompt_chars:
        raise DemoError(422, f"{field}: {len(text)} characters, the limit is {limits.max_prompt_chars}", field=field)
    try:
        words = parse_prompt(text)
    except PromptError as e:
        raise DemoError(422, f"{field}: {e.message} at position {e.position}", field=field, position=e.position) from e
    if not words:
        raise DemoError(422, f"{field}: empty prompt, type some words", field=field)
    return text


def check_range(name: str, value: float, lo: float, hi: float, *, limit: str = "") -> None:
    """DemoError 422 naming the field unless lo <= value <= hi; `limit` says what hi means."""
    if not lo <= value <= hi:  # also refuses NaN
        why = f"; {limit} is {hi:g}" if limit and value > hi else ""
        raise DemoError(422, f"{name}: {value} is outside [{lo:g}, {hi:g}]{why}", field=name)


def pick_seeds(seed: int | None, count: int) -> list[int]:
    """count consecutive seeds from `seed` (a random start below 2**31 when None)."""
    start = secrets.randbelow(2**31) if seed is None else seed
    check_range("seed", start, 0, MAX_SEED - count + 1)
    return list(range(start, start + count))


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------------------------------------
# The app.


def page_html() -> str:
    """The demo page, shipped as package data beside this module."""
    return (resources.files("gan") / "static" / "demo.html").read_text(encoding="utf-8")


def create_app(
    model: str | Path | Pipeline,  # A model directory (safetensors only, as Pipeline loads it) or a loaded Pipeline.
    *,
    limits: DemoLimits = DemoLimits(),  # Per-request and concurrency limits.
    device: str = "cpu",                # Where a model directory is loaded; ignored for a Pipeline.
) -> FastAPI:
    """A FastAPI app serving the demo page and API for one model held in memory.

    Raises ModelDirError (naming the file) when the directory does not load.
    """
    pipe = model if isinstance(model, Pipeline) else Pipeline.from_pretrained(model, device=device)
    name = "/".join(Path(model).resolve().parts[-2:]) if not isinstance(model, Pipeline) else "model"
    slots = GenerationSlots(running=limits.max_running, waiting=limits.max_waiting)
    page = page_html()
    app = FastAPI(title="spikegan demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pipe, app.state.limits, app.state.slots = pipe, limits, slots

    @app.exception_handler(DemoError)
    async def _refused(request: Request, e: DemoError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        field = str(err["loc"][-1]) if err.get("loc") else None
        return DemoError(422, f"{field}: {err['msg']}", field=field).response()

    async def run_model(work: Callable[[], dict], *, exclusive: bool = False) -> dict:
        """work() in a worker thread, holding a generation slot (every slot if exclusive)."""
        async with slots.hold(exclusive=exclusive):
            try:
                return await run_in_threadpool(work)
            except PromptError as e:  # the tokenizer's own parse (check_prompt ran first)
                raise DemoError(422, f"prompt: {e.message} at position {e.position}", field="prompt",
                                position=e.position) from e
            except ValueError as e:  # the pipeline's refusals, e.g. a model without cross-attention
                raise DemoError(422, str(e)) from e

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/info")
    async def info() -> dict:
        return {
            "model": name,
            "resolution": pipe.resolution,
            # The conditioning a model takes; the page shows controls only for those listed here.
            "inputs": ["text"],
            "truncation_modes": ["prompt", "global"],
            "limits": asdict(limits),
        }

    @app.post("/api/generate")
    async def generate(req: GenerateRequest) -> dict:
        prompt = check_prompt(req.prompt, limits)
        check_range("count", req.count, 1, limits.max_images, limit="the limit of images per request")
        check_range("psi", req.psi, 0.0, 2.0)
        seeds = pick_seeds(req.seed, req.count)

        def work() -> dict:
            images = pipe(prompt, seeds, psi=req.psi, truncation=req.truncation)
            return {
                "seeds": seeds,
                "images": [data_url(png_bytes(im), "image/png") for im in images],
                "grid": data_url(png_bytes(image_grid(images, rows=1, cols=len(images))), "image/png"),
                "raster": data_url(png_bytes(pipe.raster(prompt)), "image/png"),
            }

        return await run_model(work)

    @app.post("/api/attention")
    async def attention(req: AttentionRequest) -> dict:
        prompt = check_prompt(req.prompt, limits)
        check_range("seed", req.seed, 0, MAX_SEED)
        check_range("psi", req.psi, 0.0, 2.0)
        def work() -> dict:
            panel = pipe.attention_panel(prompt, req.seed, columns=ATTENTION_COLUMNS, psi=req.psi,
                                         truncation=req.truncation)
            return {"seed": req.seed, "panel": data_url(png_bytes(panel), "image/png")}

        return await run_model(work, exclusive=True)

    @app.post("/api/interpolate")
    async def interpolate(req: InterpolateRequest) -> dict:
        prompts = [check_prompt(req.prompt, limits), check_prompt(req.prompt_b, limits, field="prompt_b")]
        check_range("frames", req.frames, 1, limits.max_frames, limit="the limit of frames per transition")
        check_range("psi", req.psi, 0.0, 2.0)
        seed = pick_seeds(req.seed, 1)[0]
        def work() -> dict:
            frames = pipe.interpolate(prompts, [seed], frames=req.frames, psi=req.psi, truncation=req.truncation,
                                      loop=True)
            return {"seed": seed, "frames": len(frames), "gif": data_url(gif_bytes(frames, fps=GIF_FPS), "image/gif")}

        return await run_model(work)

    return app


# ---------------------------------------------------------------------------------------------
# Serving.


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@contextlib.contextmanager
def running_server(app: FastAPI, *, host: str = DEFAULT_HOST, port: int = 0,
                   timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yields its URL (port 0 = a free port).

    The socket is bound before the thread starts, so the port cannot be taken in between.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = _Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not server.ready.wait(timeout):
            raise RuntimeError(f"the demo server on {host}:{sock.getsockname()[1]} did not start within {timeout:g} s")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def serve(app: FastAPI, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve `app` in the foreground until Ctrl-C."""
    uvicorn.run(app, host=host, port=port, log_level="info")
