"""benchmarks/gan_step.py's comparison with NVIDIA's reference: the peer's output is read, runs whose architectures
differ are refused naming the field, and settings the reference cannot run are refused before anything is timed."""
import pytest

from benchmarks import gan_step

FAKE_PEER = '''import sys
steps = sys.argv[sys.argv.index('--steps') + 1]
print(f'torch 0.0 threads=2 res=16 G=G_COUNTM D=D_COUNTM batch=4 steps={steps} s/step=1.000')
print('img/s 4.2')
'''


@pytest.fixture()
def peer(tmp_path):
  checkout = tmp_path / 'stylegan2-ada-pytorch'
  (checkout / 'training').mkdir(parents=True)
  (checkout / 'training' / 'networks.py').write_text('')
  return checkout


def _script(tmp_path, g, d):
  """A stand-in peer script printing the reference's two result lines with the given parameter counts."""
  path = tmp_path / 'peer.py'
  path.write_text(FAKE_PEER.replace('G_COUNT', g).replace('D_COUNT', d))
  return str(path)


def _args(peer_dir, script, *extra):
  return gan_step.parse_args(['--res', '16', '--batch', '4', '--peer', str(peer_dir), '--peer-script', script, *extra])


def test_peer_rate_is_read_when_the_architectures_match(tmp_path, peer, capsys):
  args = _args(peer, _script(tmp_path, '5.48', '4.73'))
  assert gan_step.run_peer(args, 16, (5_481_234, 4_728_001)) == pytest.approx(4.2)
  assert 'G=5.48M D=4.73M batch=4 steps=16' in capsys.readouterr().out


@pytest.mark.parametrize('g, d, field', [('5.49', '4.73', 'G parameters'), ('5.48', '4.70', 'D parameters')])
def test_differing_architectures_are_refused_naming_the_field(tmp_path, peer, g, d, field):
  args = _args(peer, _script(tmp_path, g, d))
  with pytest.raises(SystemExit, match=f'architectures differ: {field}'):
    gan_step.run_peer(args, 16, (5_481_234, 4_728_001))


def test_settings_the_reference_cannot_run_are_refused_up_front(tmp_path, peer, capsys):
  script = _script(tmp_path, '5.48', '4.73')
  for extra, name in ((['--dtype', 'bfloat16'], '--dtype'), (['--fused'], '--fused'), (['--augment',
                                                                                        'bgc'], '--augment')):
    with pytest.raises(SystemExit):
      _args(peer, script, *extra)
    assert f'{name} is' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    gan_step.parse_args(['--peer', str(tmp_path), '--peer-script', script])  # not a checkout
  assert 'not a checkout of NVlabs/stylegan2-ada-pytorch' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    gan_step.parse_args(['--rounds', '2'])
  assert '--rounds needs --peer' in capsys.readouterr().err


def test_a_failing_reference_stops_with_its_error(tmp_path, peer):
  script = tmp_path / 'broken.py'
  script.write_text('import sys\nsys.exit("no module named torch")\n')
  with pytest.raises(SystemExit, match='the reference failed'):
    gan_step.run_peer(_args(peer, str(script)), 16, (1, 1))
