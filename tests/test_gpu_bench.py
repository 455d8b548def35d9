"""benchmarks/gpu.sh --dry-run runs on CPU at tiny sizes and writes the table: each case a row with every column,
positive finite numbers, and MFU and peak memory blank with a note (a CPU has no bf16 peak in the table and
reports no memory statistics). Two of the four cases, one of each kind, to keep it quick: train_b16 (a training
step, as train_ti16 with another config) and decode_b32 (decoding, as decode_b1 with another batch)."""

import json
import math
import os
import subprocess
import sys

from xla_env import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import gpu_bench  # noqa: E402  (benchmarks/ is not a package)


def test_dry_run_writes_a_row_per_case_with_every_column(tmp_path):
  out = tmp_path / "gpu.md"
  cases = ["train_b16", "decode_b32"]
  proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu.sh"), "--dry-run", "--out", str(out),
                         "--cases", ",".join(cases)],
                        env=subprocess_env(devices=1, PYTHON=sys.executable), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  lines = out.read_text().splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
  assert [c.strip() for c in lines[header].strip("|").split("|")] == list(gpu_bench.COLUMNS)
  table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2:] if line.startswith("|")]
  assert [row[0] for row in table] == cases
  for row in table:
    assert len(row) == len(gpu_bench.COLUMNS), row
    cells = dict(zip(gpu_bench.COLUMNS, row))
    assert cells["MFU"] == "" and cells["peak memory GiB"] == "", row
    for column in ("batch", "step ms", "TFLOP/s/device"):
      assert float(cells[column]) > 0, (column, row)
    assert float(cells["throughput"].split()[0]) > 0 and cells["throughput"].split()[1] in ("img/s", "tok/s")
    assert float(cells["compile s"].split()[0]) > 0, row
  assert "- MFU blank: cpu has no dense bf16 peak" in out.read_text()
  rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
  for row in rows:
    for key in ("throughput", "tflops_per_device", "step_ms", "compile_s"):
      assert math.isfinite(row[key]) and row[key] > 0, (key, row)
