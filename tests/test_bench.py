"""bench/step_cost.py --json writes what the Efficiency page plots (a tiny, fast setting)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_step_cost_json_matches_its_table(tmp_path):
    path = tmp_path / "step_cost.json"
    out = subprocess.run(
        [sys.executable, "bench/step_cost.py", "--tasks", "1", "3", "--batch", "2", "--repeats",
         "1", "--inner", "1", "--json", str(path), "--note", "test"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(path.read_text())
    assert r["tasks"] == [1, 3] and r["note"] == "test" and r["settings"]["batch"] == 2
    for key in ("sd_lora", "autograd", "released"):
        assert len(r[key]["step_ms"]) == len(r[key]["ratio"]) == 2
        assert r[key]["ratio"][0] == 1.0 and all(ms > 0 for ms in r[key]["step_ms"])
    assert r["fused_pass"]["tasks"] == [3] and r["inference"]["tasks"] == 3
    # The printed table is the JSON's numbers.
    row = next(line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["3"])
    assert float(row[1]) == round(r["sd_lora"]["step_ms"][1], 1)
    assert float(row[2]) == round(r["sd_lora"]["ratio"][1], 3)
