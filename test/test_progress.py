"""Progress bars stay quiet when their output is not a terminal (issue 18: demo logs full of '\\r' updates)."""

from __future__ import annotations

import subprocess
import sys

from cmcnn_ros.tools import progress_bar


def test_a_redirected_tool_writes_no_bar_updates(tmp_path):
    # cmcnn-synth shows its bar by default; redirected to a file it must not write one.
    out = subprocess.run([sys.executable, "-m", "cmcnn_synthetic.generate", "--out", str(tmp_path / "set"),
                          "--subjects", "1", "--classes", "6", "--intensities", "4", "--per-class", "1",
                          "--workers", "1", "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stderr and "cmcnn-synth:" not in out.stderr
    assert len(list((tmp_path / "set" / "colour").iterdir())) == 6


def test_the_bar_is_shown_on_a_terminal_only_when_asked(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    assert progress_bar(range(3)).disable                       # pytest's captured stderr is no terminal
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not progress_bar(range(3), file=sys.stderr).disable
    assert progress_bar(range(3), enabled=False, file=sys.stderr).disable
