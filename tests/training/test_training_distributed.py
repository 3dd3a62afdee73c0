import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["iaunet", "pctrans", "maskrcnn"])
def test_two_process_ddp_on_cpu_agrees(tmp_path, family):
    """torchrun with 2 CPU processes (gloo): both ranks end with identical weights; only rank 0
    writes the run folder. Every model family trains through the same DDP path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(tmp_path), family]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] == 2
    assert r0["params"].keys() == r1["params"].keys()
    for k, v in r0["params"].items():
        assert v == pytest.approx(r1["params"][k], rel=1e-6, abs=1e-6), k
    changed = [k for k in r0["params"] if abs(r0["params"][k] - r0["init"][k]) > 1e-6]
    assert len(changed) > len(r0["params"]) // 2  # the steps did train
    run = tmp_path / "run"
    assert (run / "last.pt").is_file() and (run / "state.pt").is_file()
    names = sorted(p.name for p in run.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["event"] == "start")
    assert start["world_size"] == 2
    assert [r["step"] for r in log if r["event"] == "step"] == [1, 2]  # one writer
