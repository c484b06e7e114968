"""gan.demo's web API on a tiny untrained model: images, determinism, refusals, limits, the CLI."""
from __future__ import annotations

import asyncio
import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from gan.demo import DemoError, DemoLimits, GenerationSlots, create_app, running_server
from gan.pipeline import Pipeline
from scripts import demo as demo_cli

pytestmark = pytest.mark.usefixtures("one_thread")

LIMITS = DemoLimits(max_images=3, max_prompt_chars=40, max_frames=4, max_running=1, max_waiting=2)


@pytest.fixture(scope="module")
def client(tiny_pipe):
    with TestClient(create_app(tiny_pipe, limits=LIMITS)) as c:  # one event loop for every request
        yield c


def decode(url: str) -> PIL.Image.Image:
    """A data URL -> the image it holds."""
    head, data = url.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/gif;base64"), head
    return PIL.Image.open(io.BytesIO(base64.b64decode(data)))


def pixels(url: str) -> np.ndarray:
    return np.asarray(decode(url).convert("RGB"))


def test_generate_gives_the_pipelines_images_at_the_models_resolution(client, tiny_pipe):
    r = client.post("/api/generate", json={"prompt": "a (red:1.4) circle", "seed": 5, "count": 3, "psi": 0.7})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["seeds"] == [5, 6, 7]
    ref = tiny_pipe("a (red:1.4) circle", [5, 6, 7], psi=0.7)
    for url, im in zip(res["images"], ref, strict=True):
        assert decode(url).size == (tiny_pipe.resolution, tiny_pipe.resolution)
        assert np.array_equal(pixels(url), np.asarray(im))
    grid = pixels(res["grid"])
    assert grid.shape == (16, 3 * 16, 3) and np.array_equal(grid[:, 16:32], np.asarray(ref[1]))
    assert decode(res["raster"]).size[0] > 100
    # Same request, same images; another prompt or truncation mode, other images.
    again = client.post("/api/generate", json={"prompt": "a (red:1.4) circle", "seed": 5, "count": 3, "psi": 0.7})
    assert again.json()["images"] == res["images"]
    other = client.post("/api/generate", json={"prompt": "a blue square", "seed": 5, "count": 1, "psi": 0.7}).json()
    assert np.abs(pixels(other["images"][0]).astype(int) - pixels(res["images"][0])).max() > 2
    mode = client.post("/api/generate", json={"prompt": "a (red:1.4) circle", "seed": 5, "count": 1, "psi": 0.7,
                                              "truncation": "global"}).json()
    assert mode["images"][0] != res["images"][0]


def test_random_seed_is_reported_and_repeats(client):
    res = client.post("/api/generate", json={"prompt": "a red circle", "seed": None, "count": 2}).json()
    s = res["seeds"][0]
    assert res["seeds"] == [s, s + 1] and 0 <= s < 2**31
    again = client.post("/api/generate", json={"prompt": "a red circle", "seed": s, "count": 2}).json()
    assert again["images"] == res["images"]


def test_attention_and_interpolation(client, tiny_pipe):
    r = client.post("/api/attention", json={"prompt": "a red circle", "seed": 3})
    assert r.status_code == 200, r.text
    panel = pixels(r.json()["panel"])
    assert np.array_equal(panel, np.asarray(tiny_pipe.attention_panel("a red circle", 3, columns=5)))
    r = client.post("/api/interpolate", json={"prompt": "a red circle", "prompt_b": "a blue square", "seed": 2, "frames": 3})
    assert r.status_code == 200, r.text
    with decode(r.json()["gif"]) as gif:
        assert gif.n_frames == 6 == r.json()["frames"] and gif.size == (16, 16)


def test_bad_prompt_gives_its_position_and_the_server_keeps_serving(client):
    r = client.post("/api/generate", json={"prompt": "a (red circle", "seed": 0, "count": 1})
    assert r.status_code == 422
    assert r.json() == {"error": "prompt: unbalanced '(' is never closed at position 2", "field": "prompt", "position": 2}
    r = client.post("/api/interpolate", json={"prompt": "a red circle", "prompt_b": "a blue] square", "seed": 0})
    assert r.status_code == 422 and r.json()["field"] == "prompt_b" and r.json()["position"] == 6
    assert client.post("/api/generate", json={"prompt": "a red circle", "seed": 0, "count": 1}).status_code == 200


@pytest.mark.parametrize("path, body, field, text", [
    ("/api/generate", {"prompt": "a red circle", "count": 4}, "count", "the limit of images per request is 3"),
    ("/api/generate", {"prompt": "a red circle " * 4}, "prompt", "52 characters, the limit is 40"),
    ("/api/generate", {"prompt": "  "}, "prompt", "empty prompt"),
    ("/api/generate", {"prompt": "a red circle", "psi": 2.5}, "psi", "outside [0, 2]"),
    ("/api/generate", {"prompt": "a red circle", "seed": -1}, "seed", "outside"),
    ("/api/generate", {"prompt": "a red circle", "count": "many"}, "count", "valid integer"),
    ("/api/generate", {"prompt": "a red circle", "truncation": "local"}, "truncation", "'prompt' or 'global'"),
    ("/api/generate", {"count": 1}, "prompt", "Field required"),
    ("/api/interpolate", {"prompt": "a", "prompt_b": "b", "frames": 5}, "frames", "frames per transition is 4"),
    ("/api/attention", {"prompt": "a (red:11) circle", "seed": 0}, "prompt", "weight 11 outside [0, 10]"),
])
def test_over_limit_and_bad_requests_are_refused(client, path, body, field, text):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and text in r.json()["error"], r.json()


def test_busy_server_refuses_with_429_and_still_serves_pages(tiny_model_dir):
    """One slot, no queue: while a generation holds the slot, pages are served and a second generation is refused."""
    pipe = Pipeline.from_pretrained(tiny_model_dir)
    entered, release = threading.Event(), threading.Event()
    raster = pipe.raster

    def gated_raster(prompt):  # the generation's last step waits for the test
        entered.set()
        assert release.wait(30)
        return raster(prompt)

    pipe.raster = gated_raster
    with TestClient(create_app(pipe, limits=DemoLimits(max_running=1, max_waiting=0))) as c, ThreadPoolExecutor(1) as ex:
        first = ex.submit(c.post, "/api/generate", json={"prompt": "a red circle", "seed": 0, "count": 1})
        assert entered.wait(30)
        assert c.get("/").status_code == 200 and c.get("/api/info").json()["resolution"] == 16
        busy = c.post("/api/generate", json={"prompt": "a blue square", "seed": 0, "count": 1})
        assert busy.status_code == 429 and busy.json()["error"].startswith("busy: 1 generations are running or waiting")
        release.set()
        assert first.result(30).status_code == 200
        assert c.post("/api/generate", json={"prompt": "a blue square", "seed": 0, "count": 1}).status_code == 200
        assert c.app.state.slots.pending == 0


def test_generation_slots_admit_queue_and_refuse():
    async def scenario():
        slots = GenerationSlots(running=2, waiting=1)
        gate = asyncio.Event()
        order = []

        async def job(name, exclusive=False):
            async with slots.hold(exclusive=exclusive):
                order.append(name)
                await gate.wait()

        tasks = [asyncio.create_task(job("a")), asyncio.create_task(job("b"))]
        await asyncio.sleep(0)  # let both take their slots
        exclusive = asyncio.create_task(job("x", exclusive=True))
        await asyncio.sleep(0)
        assert slots.pending == 3 and order == ["a", "b"]  # x waits for both slots
        with pytest.raises(DemoError) as e:
            async with slots.hold():
                pass
        assert e.value.status == 429 and "the limit is 3" in e.value.message
        gate.set()
        await asyncio.gather(*tasks, exclusive)
        assert order == ["a", "b", "x"] and slots.pending == 0

    asyncio.run(scenario())


def test_bounded_load_on_a_live_server(tiny_pipe):
    """20 concurrent requests: each completes or is refused with the limit message; the server answers after."""
    app = create_app(tiny_pipe, limits=DemoLimits(max_images=4, max_running=1, max_waiting=3))
    with running_server(app) as url:
        def post(i):
            return httpx.post(f"{url}/api/generate", json={"prompt": "a red circle", "seed": i, "count": 1}, timeout=60)

        with ThreadPoolExecutor(20) as ex:
            replies = list(ex.map(post, range(20)))
        codes = [r.status_code for r in replies]
        assert set(codes) <= {200, 429} and 200 in codes, codes
        for r in replies:
            if r.status_code == 429:
                assert r.json()["error"].startswith("busy:") and "the limit is 4" in r.json()["error"]
            else:
                assert decode(r.json()["images"][0]).size == (16, 16)
        assert httpx.get(f"{url}/api/info").status_code == 200
        assert httpx.post(f"{url}/api/generate", json={"prompt": "a blue square", "count": 1}, timeout=60).status_code == 200
        assert app.state.slots.pending == 0


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element in ('id="prompt"', 'id="prompt-error"', 'id="seed"', 'id="random-seed"', 'id="psi"',
                    'id="truncation"', 'id="count"', 'id="images"', 'id="raster"', 'id="attention"',
                    'id="walk"', 'id="download-grid"'):
        assert element in r.text, element
    info = client.get("/api/info").json()
    assert info["resolution"] == 16 and info["inputs"] == ["text"] and info["limits"]["max_images"] == 3


# ---------------------------------------------------------------------------------------------
# The command line.


@pytest.mark.parametrize("argv, flag", [
    (["--port", "0"], "--port"),
    (["--port", "70000"], "--port"),
    (["--max-images", "0"], "--max-images"),
    (["--max-running", "0"], "--max-running"),
    (["--max-waiting", "-1"], "--max-waiting"),
])
def test_cli_errors_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        demo_cli.parse_args(["--model", "m", *argv])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_cli_serves_the_model_on_localhost_by_default(tiny_model_dir, monkeypatch, capsys):
    import gan.demo

    served = {}
    monkeypatch.setattr(gan.demo, "serve", lambda app, host, port: served.update(app=app, host=host, port=port))
    assert demo_cli.main(["--model", str(tiny_model_dir), "--max-images", "5"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 7860
    assert served["app"].state.limits.max_images == 5
    assert "serving" in capsys.readouterr().out


def test_cli_refuses_a_pickle_model(tiny_model_dir, tmp_path, capsys):
    import pickle
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").write_bytes(pickle.dumps({"w": 1}))
    assert demo_cli.main(["--model", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spikegan-demo: error:" in err and "not safetensors" in err
