"""launch/outcome.one_line: the one-line endings every launcher shares (error: exit 1, incomplete: exit 0 with the
resume command, STYLEX_DEBUG=1 re-raises)."""
import sys

import pytest

from launch import outcome
from stylex_jax.stages import common


def test_bad_input_is_one_error_line(monkeypatch):
  monkeypatch.delenv('STYLEX_DEBUG', raising=False)
  with pytest.raises(SystemExit) as info:
    with outcome.one_line():
      raise FileNotFoundError('no gan checkpoint in /w/gan/checkpoints')
  assert info.value.code == 'error: no gan checkpoint in /w/gan/checkpoints'


def test_debug_shows_the_traceback(monkeypatch):
  monkeypatch.setenv('STYLEX_DEBUG', '1')
  with pytest.raises(ValueError, match='bad'):
    with outcome.one_line():
      raise ValueError('bad')


def test_preempted_exits_0_with_the_resume_command(monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', ['launch/train.py', '--workdir', '/tmp/a b'])
  with pytest.raises(SystemExit) as info:
    with outcome.one_line('later stages not run'):
      raise common.Preempted('gan', 16, 'checkpoint saved in /tmp/a b/gan/checkpoints')
  assert info.value.code == 0
  line, = capsys.readouterr().out.splitlines()
  assert line.startswith('incomplete: preempted in the gan stage at step 16 (checkpoint saved in ')
  assert "; later stages not run. Resume with: " in line and line.endswith("launch/train.py --workdir '/tmp/a b'")


def test_other_errors_pass_through():
  with pytest.raises(KeyError):
    with outcome.one_line():
      raise KeyError('a bug, not bad input')
