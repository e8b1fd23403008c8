"""Serving a palette on Ray Serve (spec §12, issue 34). The elastic policy alone (``esta.serve_policy``):
the most accurate deployed stitch whose queue wait + latency at the batch size (interpolated between
measured sizes) fits the SLO, narrowed by a request's budget. Then ``python -m esta serve`` started for
real on 127.0.0.1 with the smoke run's palettes, answering real HTTP requests: the answers equal
``Palette.predict`` / ``Palette.generate`` for the same stitch, budgets are honoured, every bad request
gets its 4xx JSON error and the next good one succeeds, and SIGTERM leaves no process behind (Ray's
included). One server per palette for the module (a Ray start takes ~30 s on the 2-core CI box)."""

from __future__ import annotations

import io
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from PIL import Image

from esta.palette import PaletteError, choose, read_table
from esta.serve_policy import elastic_choice, latency_at, latency_profile

psutil = pytest.importorskip("psutil")
requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

# ---------------------------------------------------------------------------------------------
# The policy


def policy_table() -> pd.DataFrame:
    """Five deployed stitches whose accuracy does not rise with cost (stitch 3 is the most accurate,
    the most expensive, 4, is not), one not deployed; latency measured at batch 1 and 32."""
    return pd.DataFrame(dict(
        stitch_id=[0, 1, 2, 3, 4, 5], name=list("abcdef"), gmacs=[1.0, 2.0, 4.0, 8.0, 16.0, 3.0],
        params=[10, 20, 40, 80, 160, 30], latency_ms_b1=[1.0, 2.0, 4.0, 8.0, 16.0, np.nan],
        latency_ms_b32=[32.0, 64.0, 128.0, 256.0, 512.0, np.nan], accuracy=[0.5, 0.6, 0.7, 0.9, 0.8, 0.99],
        score=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], deployed=[True, True, True, True, True, False]))


def test_latency_is_interpolated_between_measured_batch_sizes_and_extrapolated_per_image():
    prof = latency_profile(policy_table())
    assert set(prof["batch"]) == {1, 32} and 5 not in set(prof["stitch_id"])  # not measured: no row
    assert latency_at(prof, 3, 1) == 8.0 and latency_at(prof, 3, 32) == 256.0
    assert latency_at(prof, 3, 16) == pytest.approx(8.0 + (256.0 - 8.0) * 15 / 31)
    assert latency_at(prof, 3, 64) == pytest.approx(256.0 + (256.0 - 8.0) / 31 * 32)  # the last segment's slope
    assert math.isnan(latency_at(prof, 5, 4))
    three = pd.DataFrame(dict(stitch_id=[0, 0, 0], batch=[1, 8, 32], median_ms=[2.0, 4.0, 20.0]))
    assert latency_at(three, 0, 4) == pytest.approx(2.0 + 2.0 * 3 / 7)
    assert latency_at(three, 0, 20) == pytest.approx(4.0 + 16.0 * 12 / 24)
    single = pd.DataFrame(dict(stitch_id=[0], batch=[4], median_ms=[10.0]))
    assert latency_at(single, 0, 8) == 20.0


def test_elastic_serves_the_most_accurate_stitch_that_fits_and_degrades_with_load():
    t = policy_table()
    assert elastic_choice(t, 1).stitch_id == choose(t) == 3  # no SLO: the most accurate deployed (5 is not)
    assert elastic_choice(t, 1, 0.0, slo_ms=100).stitch_id == 3  # idle: the most accurate fits
    c = elastic_choice(t, 16, 0.0, slo_ms=100)  # 3 at batch 16: 8 + 248 * 15/31 = 128 ms > 100
    assert (c.stitch_id, c.fits) == (2, True) and c.predicted_ms == pytest.approx(4 + 124 * 15 / 31)
    assert elastic_choice(t, 1, 95.0, slo_ms=100).stitch_id == 2  # the queue wait counts: 95 + 8 > 100
    assert elastic_choice(t, 32, 0.0, slo_ms=100).stitch_id == 1  # 64 ms; 2 would take 128
    missed = elastic_choice(t, 32, 90.0, slo_ms=100)  # nothing fits: the fastest, and the answer says so
    assert (missed.stitch_id, missed.fits) == (0, False) and missed.predicted_ms == 122.0


def test_a_requests_budget_narrows_the_elastic_choice():
    t = policy_table()
    assert elastic_choice(t, 1, slo_ms=1000, max_gmacs=4).stitch_id == 2
    assert elastic_choice(t, 1, max_params=20).stitch_id == 1
    own = elastic_choice(t, 1, 0.0, slo_ms=1000, max_latency_ms=5)  # a batch-1 budget and its own deadline
    assert (own.stitch_id, own.deadline_ms) == (2, 5)
    assert elastic_choice(t, 4, 0.0, slo_ms=1000, max_latency_ms=5).stitch_id == 0  # 2 at batch 4: 4 + 12 > 5
    with pytest.raises(PaletteError, match="below the cheapest deployed stitch"):
        elastic_choice(t, 1, max_gmacs=0.5)
    with pytest.raises(PaletteError, match="max_latency_ms = 0.5 is below"):
        elastic_choice(t, 1, slo_ms=100, max_latency_ms=0.5)
    blind = t.assign(latency_ms_b1=np.nan, latency_ms_b32=np.nan)
    assert elastic_choice(blind, 1).stitch_id == 3  # no SLO: latency is not needed
    with pytest.raises(PaletteError, match="needs measured latency"):
        elastic_choice(blind, 1, slo_ms=100)


# ---------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m esta serve`` in a child process, its descendants (Ray's) recorded while it runs."""

    def __init__(self, palette: Path, log: Path, *args: str):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="ray-t-", dir="/tmp")  # short: Ray's socket paths live under it
        cmd = [sys.executable, "-m", "esta", "serve", str(palette), "--port", str(self.port), "--ray-temp-dir",
               self.temp, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        self.pids: set[int] = set()

    def wait_ready(self, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    self.record()
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise AssertionError(f"no answer on {self.url} within {timeout:.0f} s:\n{self.log.read_text()[-4000:]}")

    def record(self) -> None:
        """Every process the server started (the Ray processes are its descendants or name its temp dir)."""
        try:
            self.pids |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        self.pids |= set(self.ours())

    def ours(self) -> list[int]:
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(self.temp in a for a in p.info["cmdline"] or []):
                    out.append(p.info["pid"])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def stop(self, timeout: float = 120) -> list[int]:
        """SIGTERM to the server only; the processes still alive afterwards (killed, then returned)."""
        self.record()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        end = time.monotonic() + 30
        alive = [pid for pid in self.pids if psutil.pid_exists(pid)]
        while alive and time.monotonic() < end:  # Ray's processes exit as their parent pipe closes
            time.sleep(0.5)
            alive = [pid for pid in self.pids | set(self.ours())
                     if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        for pid in alive:  # leave the box clean even when the test fails
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)
        return alive


def vit_palette_path(smoke) -> Path:
    return smoke / "esta" / "default" / "embedded" / "digits" / "palette" / "seed0"


MAX_BODY_MB = 1


@pytest.fixture(scope="module")
def vit_server(smoke, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    server = Server(vit_palette_path(smoke), log, "--slo-ms", "100000", "--max-body-mb", str(MAX_BODY_MB),
                    "--max-pixels", str(2000 * 2000))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def png(size=(40, 30), mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray((rng.random(shape) * 255).astype("uint8"), mode).save(buf, "PNG")
    return buf.getvalue()


def bomb(width=100_000, height=100_000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` pixels (a few hundred bytes on the wire)."""
    data = png((8, 8))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def post_images(url: str, images: list[bytes], **params) -> requests.Response:
    files = [(f"image{i}", (f"x{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return requests.post(f"{url}/predict", files=files, params=params, timeout=120)


def test_the_server_answers_as_palette_predict_for_the_same_stitch(vit_server, smoke, tmp_path):
    from esta.vit.palette import load

    path = vit_palette_path(smoke)
    palette = load(path)
    t = palette.table
    images = [png((40, 30), seed=1), png((64, 64), "L", seed=2), png((17, 50), seed=3)]
    files = []
    for i, b in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(b)
    deployed = t.loc[t["deployed"]].sort_values("gmacs")
    cheapest = int(deployed.iloc[0]["stitch_id"])
    hidden = int(t.loc[~t["deployed"], "stitch_id"].iloc[0])  # any stitch of the table may be asked for
    for sid, params in ((choose(t), {}), (cheapest, dict(stitch_id=cheapest)), (hidden, dict(stitch_id=hidden))):
        r = post_images(vit_server.url, images, **params)
        assert r.status_code == 200, r.text
        got = r.json()
        row = t.set_index("stitch_id").loc[sid]
        assert got["stitch_id"] == sid and got["gmacs"] == pytest.approx(row["gmacs"]) and got["name"] == row["name"]
        want = palette.select(stitch_id=sid).predict(files)
        assert [p["class"] for p in got["predictions"]] == want["class"].tolist()
        assert np.allclose([p["probability"] for p in got["predictions"]], want["probability"], atol=1e-5)
    one = requests.post(f"{vit_server.url}/predict", data=images[0], headers={"Content-Type": "image/png"}, timeout=120)
    assert one.status_code == 200 and one.json()["stitch_id"] == choose(t)
    want = palette.select(stitch_id=choose(t)).predict(files[:1])
    assert one.json()["predictions"][0]["class_index"] == int(want["class_index"][0])
    assert one.json()["slo_ms"] == 100000 and one.json()["slo_fit"]  # an SLO this loose: the most accurate


def test_a_requests_budget_is_honoured(vit_server, smoke):
    t = read_table(vit_palette_path(smoke))
    dep = t[t["deployed"]].sort_values("gmacs")
    image = [png(seed=4)]
    for g in dep["gmacs"].iloc[[0, len(dep) // 2]]:
        got = post_images(vit_server.url, image, max_gmacs=float(g)).json()
        assert got["gmacs"] <= g and got["stitch_id"] == choose(t, max_gmacs=float(g))
    lat = float(dep["latency_ms_b1"].median())
    got = post_images(vit_server.url, image, max_latency_ms=lat).json()
    row = t.set_index("stitch_id").loc[got["stitch_id"]]
    assert row["deployed"] and row["latency_ms_b1"] <= lat and got["slo_ms"] == lat  # the request's own deadline
    assert not got["slo_fit"] or got["predicted_ms"] <= lat


def test_each_bad_request_gets_its_4xx_and_the_next_good_one_is_served(vit_server, smoke, tmp_path):
    t = read_table(vit_palette_path(smoke))
    good = png(seed=5)
    real = tmp_path / "real.png"
    real.write_bytes(good)
    url = vit_server.url
    bad = [
        (400, "not an image", lambda: post_images(url, [b"this is not an image"])),
        # a part named after a real image file still carries its own bytes: no path is opened
        (400, "not an image", lambda: requests.post(f"{url}/predict", files=[("f", (str(real), b"GIF89a junk"))],
                                                    timeout=60)),
        (413, "pixels", lambda: post_images(url, [bomb()])),
        (413, "limit", lambda: post_images(url, [b"\0" * (MAX_BODY_MB * 2**20 + 1)])),
        (400, "unknown stitch id", lambda: post_images(url, [good], stitch_id=int(t["stitch_id"].max()) + 1)),
        (400, "below the cheapest", lambda: post_images(url, [good], max_gmacs=float(t["gmacs"].min()) / 2)),
        (400, "not both", lambda: post_images(url, [good], stitch_id=0, max_gmacs=1e9)),
        (415, "Content-Type", lambda: requests.post(f"{url}/predict", data=good, headers={"Content-Type": "text/plain"},
                                                    timeout=60)),
        (400, "does not generate", lambda: requests.post(f"{url}/generate", json={"prompt": "hi"}, timeout=60)),
        (422, "", lambda: post_images(url, [good], max_latency_ms="fast")),
    ]
    for status, message, send in bad:
        r = send()
        assert r.status_code == status, (message, r.status_code, r.text)
        body = r.json()
        if message:
            assert message in body["error"], body
        ok = post_images(url, [good])
        assert ok.status_code == 200 and ok.json()["predictions"], ok.text
    health = requests.get(f"{url}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["served"] >= len(bad)


def test_palette_endpoint_is_the_table(vit_server, smoke):
    t = read_table(vit_palette_path(smoke))
    got = requests.get(f"{vit_server.url}/palette", timeout=30).json()
    assert got["kind"] == "vit" and got["slo_ms"] == 100000
    rows = pd.DataFrame(got["stitches"])
    assert rows["stitch_id"].tolist() == t["stitch_id"].tolist() and rows["deployed"].tolist() == t["deployed"].tolist()
    assert np.allclose(rows["gmacs"], t["gmacs"])


@pytest.fixture(scope="module")
def llm_server(smoke, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_llm") / "server.log"
    server = Server(smoke / "llm" / "esta" / "default" / "seed0" / "palette", log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_generate_answers_as_the_palette_and_honours_max_params(llm_server, smoke):
    from esta.llm.palette import load

    palette = load(smoke / "llm" / "esta" / "default" / "seed0" / "palette")
    t = palette.table
    prompts = ["Reverse the digits: 123", "Add one to 41"]
    r = requests.post(f"{llm_server.url}/generate", json={"prompts": prompts, "max_new_tokens": 6}, timeout=300)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["stitch_id"] == choose(t)
    assert got["answers"] == palette.select(stitch_id=choose(t)).generate(prompts, 6)
    small = float(t.loc[t["deployed"], "params"].min())
    got = requests.post(f"{llm_server.url}/generate", json={"prompt": prompts[0], "max_params": small,
                                                            "max_new_tokens": 4}, timeout=300).json()
    assert got["params"] <= small and got["answers"] == palette.select(max_params=small).generate(prompts[:1], 4)
    r = requests.post(f"{llm_server.url}/generate", json={"prompt": "x", "max_params": small / 10}, timeout=60)
    assert r.status_code == 400 and "below the cheapest" in r.json()["error"]
    r = requests.post(f"{llm_server.url}/generate", json={"prompt": "x", "max_new_tokens": 10**6}, timeout=60)
    assert r.status_code == 400 and "max_new_tokens" in r.json()["error"]


@pytest.mark.workflow  # its server fixture (named at run time) needs the smoke run
@pytest.mark.parametrize("which", ["vit_server", "llm_server"])
def test_shutdown_leaves_no_process_behind(which, request):
    """Runs last in the module (pytest keeps file order): stops the server and checks every process it
    started -- the driver, Ray's GCS, raylet, agents, Serve's controller, proxy and replicas -- is gone."""
    server = request.getfixturevalue(which)
    assert len(server.pids) >= 3, "Ray's processes were not found (gcs_server, raylet, the replica)"
    left = server.stop()
    assert server.proc.returncode == 0, server.log.read_text()[-3000:]
    assert not left, f"processes left behind: {left}"


def test_serve_refuses_a_bad_palette_in_one_line_before_ray_starts(tmp_path, capsys):
    from esta.__main__ import main

    t0 = time.monotonic()
    assert main(["serve", str(tmp_path / "nowhere"), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "is not a palette" in err and len(err.splitlines()) == 1
    assert main(["serve", str(tmp_path), "--replicas", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err
    assert time.monotonic() - t0 < 30  # no Ray instance was started for either
