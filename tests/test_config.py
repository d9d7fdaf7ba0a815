"""Every config composes (with and without debug=tiny / experiment presets); the CLI wrapper
turns bad keys and user errors into one line and a non-zero exit."""

import subprocess
import sys
from pathlib import Path

import pytest

from talkinghead.cli import CONFIG_DIR, compose_config, run_cli
from talkinghead.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "common")
REQUIRED = {"preprocess": ["video=v.mp4", "out=o"], "infer": ["person=p", "audio=a.wav", "out=o.mp4"],
            "evaluate": ["person=p"], "finetune": ["person=p"]}


@pytest.mark.parametrize("name", PRIMARY)
@pytest.mark.parametrize("extra", [[], ["debug=tiny"]])
def test_every_config_composes(name, extra):
    cfg = compose_config(name, REQUIRED.get(name, []) + extra)
    assert cfg.verbose is False
    if extra and "audio2coeff" in cfg:
        assert cfg.audio2coeff.train.max_steps <= 50  # tiny really is tiny


@pytest.mark.parametrize("name", ["train", "finetune", "infer"])
def test_experiment_presets_compose(name):
    cfg = compose_config(name, REQUIRED.get(name, []) + ["experiment=paper"])
    assert cfg.refiner.model.image_size == 256
    assert cfg.audio2coeff.model.fc_dim == 2048
    assert cfg.trainer.device == "cuda"


def test_group_choices_are_swappable():
    cfg = compose_config("train", ["renderer=pytorch3d", "face_model=bfm09", "data=lrw"])
    assert cfg.renderer.name == "pytorch3d" and cfg.face_model.kind == "bfm09" and cfg.data.root.endswith("lrw_clips")


def test_unknown_key_is_one_line_config_error():
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        compose_config("train", ["nonsense=1"])
    with pytest.raises(ConfigError, match="unknown config choice"):
        compose_config("train", ["renderer=opengl"])


def test_run_cli_prints_one_line(capsys):
    def boom(cfg):
        raise InputError("audio file not found: x.wav; pass audio=PATH")

    with pytest.raises(SystemExit) as exc:
        run_cli("train", boom, ["debug=tiny"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: audio file not found: x.wav; pass audio=PATH"]


def test_run_cli_verbose_reraises():
    def boom(cfg):
        raise InputError("bad")

    with pytest.raises(InputError):
        run_cli("train", boom, ["verbose=true"])


def test_script_unknown_key_exit_code_and_single_line():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "nonsense=1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nonsense" in lines[0] and "Traceback" not in r.stderr
