"""`torchrun --nproc-per-node 2 -m weightsmith verify`: ranks share the seeds (gloo on CPU), rank 0
merges the scores, which equal a single process's; a failed gate still fails the run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from verifykit import GEN, settings

from weightsmith.verify import VerifyOptions, verify
from weightsmith.verify.metrics import TIMING, jsonable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_merge_on_rank_0(wan):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "weightsmith", "verify",
        str(wan["pipe"]), str(wan["Q2_K"]), *GEN, "--seeds", "0-2", "--no-cache", "--consumer", "weightsmith",
        "--gate", "psnr>=60", "--json",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1, p.stderr[-3000:]  # the gate fails on rank 0, so the run fails
    assert "verification gate(s) failed" in p.stderr
    body = json.loads(p.stdout)
    assert body["world_size"] == 2 and not body["passed"]
    (cand,) = body["candidates"]
    assert [it["seed"] for it in cand["items"]] == [0, 1, 2]  # seeds 0, 2 on rank 0; 1 on rank 1
    single = verify(
        VerifyOptions(
            str(wan["pipe"]),
            [str(wan["Q2_K"])],
            settings(seeds=(0, 1, 2)),
            consumers="weightsmith",
            progress=False,
        )
    )
    want = {k: jsonable(v) for k, v in single.candidates[0].worst.items() if k not in TIMING}
    got = {k: v for k, v in cand["metrics"].items() if k not in TIMING}
    assert got == want
