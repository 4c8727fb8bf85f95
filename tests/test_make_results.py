"""make_results: sections from committed results files, refused when their provenance fails."""

import json

import pytest

from experiments import make_results
from kdjax import provenance

TITLE = 'A fake experiment'


@pytest.fixture(autouse=True)
def one_fake_experiment(monkeypatch):
  monkeypatch.setattr(make_results, 'EXPERIMENTS',
                      (('fake_cpu', TITLE, 'make fake', lambda r: r['table']),))
  monkeypatch.setattr(make_results, 'NAMES', ('fake_cpu',))


def _write_run(run_dir, commit=None):
  record = provenance.record({'seeds': [0, 1]}, command=['python', '-m', 'fake', '--x=1'])
  if commit is not None:
    record['git']['commit'] = commit
  run_dir.mkdir(parents=True)
  results = {'config': {'seeds': [0, 1]}, 'table': '| a | b |', 'wall_seconds': 3.0,
             'finished': 0.0, 'provenance': record}
  (run_dir / 'results.json').write_text(json.dumps(results))
  return record


def _main(tmp_path, *args):
  make_results.main(['--results', str(tmp_path / 'results'), '--out', str(tmp_path / 'out.md'),
                     *args])
  return (tmp_path / 'out.md').read_text()


def test_a_recorded_run_becomes_a_section_with_its_provenance(tmp_path):
  record = _write_run(tmp_path / 'runs' / 'fake_cpu')
  text = _main(tmp_path, '--record', str(tmp_path / 'runs' / 'fake_cpu'))
  assert (tmp_path / 'results' / 'fake_cpu.json').exists()
  assert f'## {TITLE}' in text and '| a | b |' in text
  assert f"Commit `{record['git']['commit'][:12]}`" in text
  assert 'Command: `python -m fake --x=1`' in text and 'Provenance' not in text


def test_a_missing_results_file_fails_naming_the_section(tmp_path, capsys):
  with pytest.raises(SystemExit) as failure:
    _main(tmp_path)
  assert failure.value.code != 0
  assert f'{TITLE} (fake_cpu): no results file' in capsys.readouterr().err
  assert not (tmp_path / 'out.md').exists()


def test_kept_sections_say_so_and_keep_their_old_text_once(tmp_path):
  (tmp_path / 'out.md').write_text(f'# Results\n\n## {TITLE}\n\nold numbers\n')
  first = _main(tmp_path, '--keep', 'fake_cpu')
  assert 'old numbers' in first
  assert 'Provenance not recorded (run predates provenance)' in first
  assert _main(tmp_path, '--keep', 'fake_cpu') == first  # the note is not added twice


def test_a_kept_section_never_run_says_so_not_that_it_predates_provenance(tmp_path):
  first = _main(tmp_path, '--keep', 'fake_cpu')
  assert 'Not run yet' in first and 'Provenance not run yet' in first
  assert 'predates' not in first
  assert _main(tmp_path, '--keep', 'fake_cpu') == first


def test_a_commit_that_is_not_an_ancestor_of_head_fails_unless_kept(tmp_path, capsys):
  _write_run(tmp_path / 'runs' / 'fake_cpu', commit='f' * 40)
  with pytest.raises(SystemExit):
    _main(tmp_path, '--record', str(tmp_path / 'runs' / 'fake_cpu'))
  assert 'ffffffffffff is not an ancestor of HEAD' in capsys.readouterr().err
  text = _main(tmp_path, '--keep', 'fake_cpu')
  assert 'Provenance not checked' in text and '| a | b |' in text


def test_record_refuses_unknown_names_and_results_without_provenance(tmp_path):
  _write_run(tmp_path / 'runs' / 'other')
  with pytest.raises(SystemExit, match='must be named after an experiment'):
    _main(tmp_path, '--record', str(tmp_path / 'runs' / 'other'))
  bare = tmp_path / 'runs2' / 'fake_cpu'
  bare.mkdir(parents=True)
  (bare / 'results.json').write_text('{}')
  with pytest.raises(SystemExit, match='records no provenance'):
    _main(tmp_path, '--record', str(bare))
