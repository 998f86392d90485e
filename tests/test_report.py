"""What the engine says (r1lab/engine/report.py): one line per task through logging, progress
bars only on a terminal, nothing from processes other than rank 0."""
import os
import subprocess
import sys
from pathlib import Path

from r1lab.engine import distributed, report

ROOT = Path(__file__).resolve().parents[1]


def test_a_redirected_log_has_one_line_per_task_and_no_carriage_return(tmp_path):
    log = tmp_path / "log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    with open(log, "wb") as f:
        rc = subprocess.run([sys.executable, "-m", "r1lab", "run", "--tasks", "digits,shapes",
                             "--set", "iterations=3", "--set", "eval_before_merge=false",
                             "--out", str(tmp_path / "run")],
                            stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=env).returncode
    text = log.read_bytes()
    assert rc == 0, text.decode()[-2000:]
    assert b"\r" not in text
    tasks = [ln for ln in text.decode().splitlines() if ln.startswith("[r1lab] dac task")]
    assert [ln.split()[3] for ln in tasks] == ["1/2", "2/2"]


def test_bars_only_on_a_terminal(monkeypatch):
    items = [1, 2, 3]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert report.bar(items, desc="x") is items
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    shown = report.bar(items, desc="x")
    assert shown is not items and list(shown) == items
    with report.speaking(False):
        assert report.bar(items) is items


def test_messages_follow_speaking_and_rank(capsys, monkeypatch):
    report.say("one")
    with report.speaking(False):
        report.say("two")
        with report.speaking(True):          # off stays off in nested calls
            report.warn("three")
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    report.say("four")
    assert capsys.readouterr().out.splitlines() == ["[r1lab] one"]
