"""The README's two set-up commands stay true: CI runs the same test command."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_COMMAND = 'pip install ".[demo]" && python -m l2tl_tf.demo'
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q tests'


def test_readme_gives_the_two_commands():
  readme = (REPO / 'README.md').read_text()
  assert DEMO_COMMAND in readme and TEST_COMMAND in readme


def test_ci_installs_the_test_extra_and_runs_the_readme_test_command():
  ci = (REPO / '.ci' / 'run').read_text()
  assert 'pip install' in ci and '-e ".[test]"' in ci
  assert 'python3 -m pytest -q tests' in ci
