"""Every config composes (with and without debug=tiny / experiment presets); the CLI wrapper
turns bad keys and user errors into one line and a non-zero exit."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from talkinghead.cli import CONFIG_DIR, compose_config, run_cli
from talkinghead.errors import ConfigError, InputError, TalkingHeadError
from talkinghead.face.factory import make_face_model
from talkinghead.face.morphable import MorphableModel
from talkinghead.models.features import SmallImageEncoder, make_identity_feature, make_key_encoder
from talkinghead.pipeline.pose import PoseControls
from talkinghead.preprocess.landmarks import LandmarkDetector, make_detector
from talkinghead.render import Renderer, get_renderer

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
    assert cfg.renderer._target_.endswith("PyTorch3DRenderer") and cfg.face_model._target_.endswith("bfm.load_face_model")
    assert cfg.data.root.endswith("lrw_clips")


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


# ----------------------------------------------------------------------------- swappable parts
#: Every option of the groups whose node is built with Hydra's instantiate: (config group, key in
#: the composed config, the function that builds it).
PART_GROUPS = {
    "renderer": ("renderer", get_renderer, Renderer),
    "face_model": ("face_model", make_face_model, MorphableModel),
    "detector": ("detector", make_detector, LandmarkDetector),
    "refiner/identity_feature": ("refiner.model.identity_feature", make_identity_feature, torch.nn.Module),
    "refiner/key_encoder": ("refiner.model.key_encoder", make_key_encoder, torch.nn.Module),
}
PART_OPTIONS = [(group, p.stem) for group in PART_GROUPS for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]
#: Options that need something this machine may lack; they must then fail with one line naming it.
NEEDS = {"pytorch3d": "pytorch3d", "bfm09": "bfm", "face_alignment": "face", "ground_truth": "ground_truth_clip",
         "saved": "detector.path", "arcface": "weights", "resnet18": "weights|torchvision"}


def _choose(group: str, option: str) -> list[str]:
    if group.startswith("refiner/"):
        return [f"{group}@refiner.model.{group.split('/')[1]}={option}"]
    return [f"{group}={option}"]


@pytest.mark.parametrize("group,option", PART_OPTIONS)
def test_every_group_option_instantiates(group, option):
    key, build_part, kind = PART_GROUPS[group]
    cfg = compose_config("finetune", ["person=p"] + _choose(group, option))
    node = OmegaConf.select(cfg, key)
    assert node._target_, f"{group}/{option}.yaml has no _target_"
    try:
        part = build_part(node)
    except TalkingHeadError as err:  # a part whose weights/package/input is not here: one line naming it
        assert option in NEEDS, f"{group}={option} failed: {err}"
        assert "\n" not in str(err) and re.search(NEEDS[option], str(err)), str(err)
        return
    assert isinstance(part, kind)
    if hasattr(part, "close"):
        part.close()


@pytest.mark.parametrize("group,preset,base", [("audio2coeff", "paper", "default"), ("refiner", "paper", "default"),
                                               ("trainer", "gpu", "cpu")])
def test_preset_is_its_base_plus_the_differences_it_states(group, preset, base):
    composed = compose_config("train", [f"{group}={preset}"])[group]
    stated = OmegaConf.load(CONFIG_DIR / group / f"{preset}.yaml")
    assert list(stated.defaults) == [base, "_self_"]
    del stated["defaults"]
    expected = OmegaConf.merge(compose_config("train", [f"{group}={base}"])[group], stated)
    assert OmegaConf.to_container(composed) == OmegaConf.to_container(expected)
    assert OmegaConf.to_container(composed) != OmegaConf.to_container(compose_config("train")[group])


def test_paper_refiner_keeps_the_paper_key_encoder():
    """refiner/paper.yaml once named no key-encoder size, so the encoder's own defaults (256-d,
    width 32) were used; inheriting from default.yaml (128-d, width 16) must not change that."""
    encoder = make_key_encoder(compose_config("train", ["refiner=paper"]).refiner.model.key_encoder)
    shapes = [tuple(p.shape) for p in encoder.parameters()]
    assert encoder.out_dim == 256 and shapes == [tuple(p.shape) for p in SmallImageEncoder(256, 32).parameters()]


def test_bad_target_or_argument_is_one_line_config_error():
    cfg = compose_config("train", ["renderer._target_=talkinghead.render.opengl.Renderer"])
    with pytest.raises(ConfigError, match=r"renderer._target_='talkinghead.render.opengl.Renderer' does not import") as info:
        get_renderer(cfg.renderer)
    assert "\n" not in str(info.value)
    cfg = compose_config("train", ["+face_model.colour=red"])
    with pytest.raises(ConfigError, match=r"bad arguments for face_model .*colour") as info:
        make_face_model(cfg.face_model)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="has no _target_"):
        get_renderer({"name": "torch"})


def test_pose_group_is_shared():
    for name in ("demo", "evaluate", "infer", "reproduce_tables"):
        cfg = compose_config(name, REQUIRED.get(name, []) + ["pose.amplitude=0.5"])
        assert PoseControls.from_config(cfg.pose) == PoseControls(mode="matched", amplitude=0.5, smoothing=7)
    with pytest.raises(ConfigError, match="pose.speed"):
        PoseControls.from_config({"speed": 2})


def test_dataclass_defaults_are_the_yaml_values():
    """Each default is written once, in its YAML: the dataclasses that mirror a config group have
    exactly its keys, and a dataclass built without arguments equals the composed config."""
    from dataclasses import asdict, fields

    from talkinghead.cli import compose_config
    from talkinghead.instantiate import to_plain
    from talkinghead.pipeline.infer import InferenceOptions
    from talkinghead.pipeline.mouth import MouthOptions
    from talkinghead.pipeline.pose import PoseControls
    from talkinghead.preprocess.fit import FittingConfig

    preprocess = to_plain(compose_config("preprocess", ["video=x", "out=y"]))
    infer = to_plain(compose_config("infer", ["person=p", "audio=a", "out=o"]))
    assert asdict(FittingConfig()) == preprocess["fitting"]
    assert asdict(PoseControls()) == infer["pose"]
    assert asdict(MouthOptions()) == infer["mouth"]
    options = asdict(InferenceOptions())
    for key in {f.name for f in fields(InferenceOptions)} - {"pose", "mouth", "precision", "progress"}:
        assert options[key] == infer[key], key
