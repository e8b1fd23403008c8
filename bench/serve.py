"""A palette served elastically under a load ramp (spec §12, issue 34): ``python -m esta serve`` on
loopback, three policies on the same palette, the same ramp of concurrent clients.

The palette: ViT-Ti/S/B at the paper's shape (224 px, 100 classes, random init, LoRA B and biases
perturbed as after training, ``bench.palette._as_trained``), written as a real palette folder (anchors
beside it) and loaded by the server as a user's palette is. Five stitches are deployed: the three anchors,
the Ti->S stitch nearest the geometric mean of their GMACs and S->B stitch ``bench.common.STITCH``.
Their latency is measured here first (``esta.profile``, batch 1 and 32, the server's thread count) and
written into the palette's table, which the elastic policy reads. **Accuracy is a proxy**: random weights
have none, so the anchors take the accuracy the embedded family's anchors measured (Ti-32 / S-32 / B-32
fine-tuned alone, suite mean over 3 seeds, docs/results.md: 0.694 / 0.711 / 0.729; ``--anchor-accuracy``)
and each stitch the value at its GMACs on the line between the anchors around it -- the shape of the
accuracy-cost trade-off, not the paper's numbers. (The smoke run's palettes are trained for a few steps
and sit at chance: no ordering to serve by.)

The policies: fixed largest (every request asks ``stitch_id`` of ViT-B), fixed smallest (ViT-Ti) and
elastic (no id; the server's ``--slo-ms``). The ramp: ``--levels`` concurrent clients (default 1, 2, 4, 8,
16, 8, 4, 2, 1), ``--phase-s`` seconds each (default 9: 81 s per policy); each client posts one 224 px PNG
and waits for the answer (timeout ``--request-timeout-s``), at most ``--max-requests`` per policy. Per policy
and load: p50/p95/p99 latency as the client saw it, throughput, SLO misses and *served accuracy* (each
answer weighted by its stitch's proxy accuracy). Writes ``<out>.csv`` (summary), ``<out>_requests.csv``
(every request) and ``<out>.png`` (latency and the stitch in use over time, per policy). Loopback only;
stops by itself (the server is stopped with SIGTERM and its processes checked gone).

    python -m bench.serve [--slo-ms T] [--anchor-accuracy 0.694,0.711,0.729] [--out bench/serve] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import FAMILY, IMG, NUM_CLASSES, STITCH  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("elastic", "fixed-smallest", "fixed-largest")  # the largest last: its backlog outlives its ramp


def deployed_ids(costs: pd.DataFrame) -> list[int]:
    """The anchors, the Ti->S stitch nearest their geometric-mean GMACs, and ``STITCH`` (S->B)."""
    anchors = costs[costs["name"].str.fullmatch(r"ViT-(Ti|S|B)")].sort_values("gmacs")
    ti, s = anchors["gmacs"].iloc[0], anchors["gmacs"].iloc[1]
    ti_s = costs[costs["name"].str.startswith("ViT-Ti->ViT-S")]
    mid = int(ti_s.loc[(ti_s["gmacs"] - np.sqrt(ti * s)).abs().idxmin(), "stitch_id"])
    return sorted({*anchors["stitch_id"].astype(int), mid, STITCH})


# Each anchor of the embedded family fully fine-tuned alone from pretrained weights, suite mean over
# 3 seeds (docs/results.md, 2026-12-02): Ti-32, S-32, B-32.
EMBEDDED_ANCHOR_ACCURACY = (0.694, 0.711, 0.729)


def proxy_accuracy(costs: pd.DataFrame, ids: list[int], anchors: tuple[float, ...]) -> pd.DataFrame:
    """stitch_id, test_accuracy (proxy): the embedded family's measured anchor accuracy (``anchors``,
    small to large) given to the paper family's anchors, and to a stitch the value at its GMACs on the
    line between the anchors around it (accuracy rises with cost along the palette, as in the paper)."""
    anchor_rows = costs[costs["name"].str.fullmatch(r"ViT-(Ti|S|B)")].sort_values("gmacs")
    if len(anchors) != len(anchor_rows):
        raise SystemExit(f"--anchor-accuracy: {len(anchors)} values for {len(anchor_rows)} anchors")
    g = costs.set_index("stitch_id")["gmacs"]
    acc = np.interp([g[s] for s in ids], anchor_rows["gmacs"].to_numpy(), np.asarray(anchors, dtype=float))
    return pd.DataFrame(dict(stitch_id=ids, test_accuracy=acc))


def build_palette(folder: Path, threads: int) -> Path:
    """Write the paper-shape palette (anchors beside it) and profile its deployed stitches (batch 1:
    median of 5 after one warm-up; batch 32: one call); kept in ``folder`` for the next run."""
    from bench.palette import _as_trained
    from esta.palette import stitch_table
    from esta.profile import profile, write_latency
    from esta.tensors import save_tensors
    from esta.vit.anchors import build_family
    from esta.vit.build import assemble
    from esta.vit.data import describe_transform
    from esta.vit.info import stitch_table as family_table
    from esta.vit.palette import load, transform_record, write
    from esta.vit.tuning import TuningConfig

    out = folder / "palette"
    if (out / "palette.json").exists() and "latency" in json.loads((out / "palette.json").read_text()):
        return out
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    files = []
    for i, vit in enumerate(build_family(FAMILY, NUM_CLASSES)):
        files.append(folder / f"anchor{i}.safetensors")
        save_tensors(vit.state_dict(), files[-1], dict(num_classes=NUM_CLASSES))
    cfg = TuningConfig()
    model = assemble(FAMILY, NUM_CLASSES, files, None, cfg)
    _as_trained(model)
    costs = family_table(FAMILY, NUM_CLASSES)
    ids = deployed_ids(costs)
    dep = pd.DataFrame(dict(stitch_id=ids, interval=range(len(ids)), score=float("nan"), reason="bench"))
    table = stitch_table(costs, dep)
    manifest = dict(num_classes=NUM_CLASSES, classes=[f"class_{i}" for i in range(NUM_CLASSES)])
    write(out, model.eval(), table, fam=FAMILY, method="esta", tuning=cfg, manifest=manifest,
          transform=transform_record("bench/paper-shape", manifest, IMG, describe_transform()), anchor_files=files,
          settings=dict(variant="bench", task="bench/paper-shape", seed=0, trained_in="random init (bench/serve.py)"))
    del model
    torch.set_num_threads(threads)
    palette = load(out)
    lat = pd.concat([profile(palette, batches=(1,), repeats=5, warmup=1, stitch_ids=ids),
                     profile(palette, batches=(32,), repeats=1, warmup=0, stitch_ids=ids)])
    write_latency(out, lat)
    return out


def apply_proxy(out: Path, anchors: tuple[float, ...]) -> pd.DataFrame:
    """Put the proxy accuracy (``proxy_accuracy``) into the palette's table as its measured test accuracy
    (``dominated`` recomputed, the table's sha256 re-recorded, the mapping written beside the palette as
    ``proxy_accuracy.csv``); returns the table."""
    from esta import trust
    from esta.palette import META, TABLE, dominated, read_table
    from esta.vit.info import stitch_table as family_table

    table = read_table(out)
    ids = table.loc[table["deployed"], "stitch_id"].astype(int).tolist()
    acc = proxy_accuracy(family_table(FAMILY, NUM_CLASSES), ids, anchors)
    acc.to_csv(out.parent / "proxy_accuracy.csv", index=False)
    per = acc.set_index("stitch_id")["test_accuracy"]
    table["test_accuracy"] = table["accuracy"] = table["stitch_id"].map(per)
    table["accuracy_split"] = table["accuracy"].notna().map({True: "test", False: ""})
    table["score"] = table["accuracy"]
    table["dominated"] = dominated(table, "accuracy")
    table.to_csv(out / TABLE, index=False)
    meta = json.loads((out / META).read_text())
    meta["files"][TABLE] = trust.file_records(out, [TABLE])[TABLE]
    (out / META).write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return read_table(out)


def png_bytes(seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((IMG, IMG, 3)) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ramp(url: str, params: dict, levels: list[int], phase_s: float, timeout_s: float, max_requests: int,
         image: bytes) -> pd.DataFrame:
    """Client threads: thread i sends requests back to back while the current level is above i."""
    import requests

    t0 = time.monotonic()
    end = t0 + phase_s * len(levels)
    rows, lock = [], threading.Lock()
    sent = [0]

    def level_at(t: float) -> int:
        return levels[min(int((t - t0) // phase_s), len(levels) - 1)]

    def client(i: int) -> None:
        session = requests.Session()
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if level_at(now) <= i:
                time.sleep(0.02)
                continue
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            rec = dict(client=i, t_send=now - t0, level=level_at(now))
            try:
                r = session.post(f"{url}/predict", params=params, data=image, headers={"Content-Type": "image/png"},
                                 timeout=timeout_s)
                body = r.json()
                rec.update(status=r.status_code, stitch_id=body.get("stitch_id"), gmacs=body.get("gmacs"),
                           accuracy=body.get("accuracy"), batch_size=body.get("batch_size"),
                           queue_ms=body.get("queue_ms"), run_ms=body.get("run_ms"), slo_fit=body.get("slo_fit"))
            except Exception as err:  # noqa: BLE001 -- a timeout or a refused connection is a result
                rec.update(status=-1, error=type(err).__name__)
            rec["latency_ms"] = (time.monotonic() - t0 - rec["t_send"]) * 1e3
            with lock:
                rows.append(rec)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(max(levels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + phase_s * len(levels) + 5)
    return pd.DataFrame(rows)


def summarise(req: pd.DataFrame, slo_ms: float, duration: dict) -> pd.DataFrame:
    rows = []
    for (policy, level), g in req.groupby(["policy", "level"]):
        rows.append(_summary(policy, level, g, slo_ms, duration[(policy, level)]))
    for policy, g in req.groupby("policy"):
        rows.append(_summary(policy, "all", g, slo_ms, sum(v for (p, _), v in duration.items() if p == policy)))
    return pd.DataFrame(rows)


def _summary(policy, level, g: pd.DataFrame, slo_ms: float, seconds: float) -> dict:
    ok = g[g["status"] == 200]
    lat = ok["latency_ms"]
    q = lambda p: float(np.percentile(lat, p)) if len(lat) else float("nan")  # noqa: E731
    top = ok["stitch_id"].mode()
    return dict(policy=policy, clients=level, requests=len(g), errors=int((g["status"] != 200).sum()),
                p50_ms=q(50), p95_ms=q(95), p99_ms=q(99), throughput_rps=len(ok) / seconds if seconds else float("nan"),
                slo_ms=slo_ms, slo_misses=int((lat > slo_ms).sum() + (g["status"] != 200).sum()),
                slo_miss_rate=float(((lat > slo_ms).sum() + (g["status"] != 200).sum()) / max(len(g), 1)),
                served_accuracy=float(ok["accuracy"].mean()) if len(ok) else float("nan"),
                mean_gmacs=float(ok["gmacs"].mean()) if len(ok) else float("nan"),
                main_stitch=int(top.iloc[0]) if len(top) else -1)


def figure(req: pd.DataFrame, table: pd.DataFrame, slo_ms: float, levels: list[int], phase_s: float, path: Path,
           note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = table.set_index("stitch_id")["name"]
    dep = table[table["deployed"]].sort_values("gmacs")
    fig, axes = plt.subplots(2, len(POLICIES), figsize=(11, 5.2), sharex=True, sharey="row")
    t = np.arange(len(levels) + 1) * phase_s
    for c, policy in enumerate(POLICIES):
        g = req[(req["policy"] == policy) & (req["status"] == 200)]
        ax = axes[0, c]
        ax.scatter(g["t_send"], g["latency_ms"] / 1e3, s=4, alpha=0.6)
        ax.axhline(slo_ms / 1e3, color="red", lw=1, ls="--", label=f"SLO {slo_ms / 1e3:g} s")
        ax.set_yscale("log")
        ax.set_title(policy, fontsize=10)
        twin = ax.twinx()
        twin.step(t, [*levels, levels[-1]], where="post", color="grey", lw=0.8)
        twin.set_ylim(0, max(levels) * 1.1)
        if c == len(POLICIES) - 1:
            twin.set_ylabel("clients", fontsize=8, color="grey")
        else:
            twin.set_yticklabels([])
        ax2 = axes[1, c]
        ax2.scatter(g["t_send"], g["gmacs"], s=4, alpha=0.6, color="tab:green")
        ax2.set_yticks(dep["gmacs"], [f"{names[s]} ({g_:.1f})" for s, g_ in zip(dep["stitch_id"], dep["gmacs"])],
                       fontsize=6)
        ax2.set_xlabel("time since the ramp began (s)", fontsize=8)
    axes[0, 0].set_ylabel("latency (s, client)", fontsize=8)
    axes[1, 0].set_ylabel("stitch served (GMACs)", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-only", action="store_true", help="write and profile the palette, then stop")
    parser.add_argument("--anchor-accuracy", default=",".join(map(str, EMBEDDED_ANCHOR_ACCURACY)),
                        help="proxy accuracy of the anchors, small to large (default: the embedded family's, "
                             "docs/results.md); stitches are interpolated in GMACs")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "esta-bench-serve",
                        help="where the paper-shape palette is written (kept: a second run reuses it)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "serve")
    parser.add_argument("--slo-ms", type=float, help="default: 2 x the measured batch-1 latency of the most "
                                                     "accurate deployed stitch")
    parser.add_argument("--levels", default="1,2,4,8,16,8,4,2,1")
    parser.add_argument("--phase-s", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (and of the profile)")
    parser.add_argument("--request-timeout-s", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=3000, help="per policy")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if len(levels) * args.phase_s > 90:
        raise SystemExit(f"a ramp of {len(levels)} x {args.phase_s:g} s is over 90 s")
    torch.set_num_threads(args.threads)
    t_build = time.monotonic()
    folder = build_palette(args.workdir, args.threads)
    print(f"palette ready in {time.monotonic() - t_build:.0f} s", flush=True)
    if args.build_only:
        return 0
    table = apply_proxy(folder, tuple(float(x) for x in args.anchor_accuracy.split(",")))
    dep = table[table["deployed"]].sort_values("gmacs")
    print(dep[["stitch_id", "name", "gmacs", "latency_ms_b1", "latency_ms_b32", "accuracy"]].to_string(index=False),
          flush=True)
    best = dep.loc[dep["accuracy"].idxmax()]
    slo = args.slo_ms or round(2 * float(best["latency_ms_b1"]), -1)
    largest, smallest = int(dep.iloc[-1]["stitch_id"]), int(dep.iloc[0]["stitch_id"])
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-b-", dir="/tmp")
    log = args.workdir / "server.log"  # beside the palette, not among the results
    cmd = [sys.executable, "-m", "esta", "serve", str(folder), "--port", str(port), "--slo-ms",
           str(slo), "--threads", str(args.threads), "--ray-temp-dir", temp, "--batch-wait-ms", "5"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import requests

    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/healthz", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        image = png_bytes()
        requests.post(f"{url}/predict", data=image, headers={"Content-Type": "image/png"}, timeout=120)  # warm-up
        load = os.getloadavg()
        frames, duration = [], {}
        for policy in POLICIES:
            params = {"fixed-largest": dict(stitch_id=largest), "fixed-smallest": dict(stitch_id=smallest),
                      "elastic": {}}[policy]
            print(f"{policy}: ramp {levels} x {args.phase_s:g} s", flush=True)
            req = ramp(url, params, levels, args.phase_s, args.request_timeout_s, args.max_requests, image)
            frames.append(req.assign(policy=policy))
            for lv in set(levels):
                duration[(policy, lv)] = args.phase_s * levels.count(lv)
            # drain: a request of the smallest stitch queues behind whatever the ramp left running
            requests.post(f"{url}/predict", params=dict(stitch_id=smallest), data=image,
                          headers={"Content-Type": "image/png"}, timeout=600)
        loadavg = (load, os.getloadavg())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
    req = pd.concat(frames, ignore_index=True)
    summary = summarise(req, slo, duration)
    cores = os.cpu_count()
    note = (f"{time.strftime('%Y-%m-%d')}, this {cores}-core CPU box shared with other jobs (load average "
            f"{loadavg[0][0]:.1f} before, {loadavg[1][0]:.1f} after), server torch threads {args.threads}; "
            f"ViT-Ti/S/B paper shape, random init, proxy accuracy; SLO {slo:g} ms")
    summary["note"] = note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.4g")
    req.to_csv(args.out.with_name(args.out.name + "_requests.csv"), index=False, float_format="%.5g")
    figure(req, table, slo, levels, args.phase_s, args.out.with_suffix(".png"), note)
    print(note)
    print(summary.drop(columns=["note"]).to_string(index=False))
    hi = summary[(summary["policy"] == "fixed-largest") & (summary["clients"] != "all")]
    over = hi[hi["p95_ms"] > slo]["clients"].tolist()
    el = summary[(summary["policy"] == "elastic") & summary["clients"].isin(over)]
    low = req[(req["policy"] == "elastic") & (req["level"] == min(levels)) & (req["status"] == 200)]
    print(f"fixed-largest p95 over the SLO at {over} clients; elastic p95 there: {el['p95_ms'].round().tolist()} "
          f"(within: {bool((el['p95_ms'] <= slo).all())}); elastic at {min(levels)} client(s) served the most "
          f"accurate stitch {int(best['stitch_id'])} in {float((low['stitch_id'] == best['stitch_id']).mean()):.0%} "
          "of its answers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
