"""satseg_jax/config_overrides.py: ``--config FILE.py[:ARG]`` and ``--config.KEY=VALUE``.

The accepted value forms are those of ml_collections' config_flags (which `satseg train`
used through absl before): these tests pin them, field type by field type.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ml_collections import ConfigDict

from satseg_jax.config_overrides import (
    Override,
    apply_overrides,
    config_from_args,
    load_config,
    split_overrides,
)
from satseg_jax.errors import SatsegError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "configs" / "unet_sample.py")


def _config(*argv: str, spec: str = SAMPLE) -> ConfigDict:
    rest, overrides = split_overrides(list(argv))
    assert rest == []
    return config_from_args(spec, overrides)


def test_split_takes_both_spellings_and_leaves_other_arguments():
    rest, ov = split_overrides(["--workdir", "w", "--config.train.num_steps=4",
                                "--config.seed", "-1", "--config", "c.py",
                                "--config.data.augment", "--workdir", "x",
                                "--noconfig.data.cache"])
    assert rest == ["--workdir", "w", "--config", "c.py", "--workdir", "x"]
    assert ov == [Override("train.num_steps", "4"), Override("seed", "-1"),
                  Override("data.augment", None), Override("data.cache", None, negated=True)]


@pytest.mark.parametrize(("text", "want"), [
    ("true", True), ("False", False), ("1", True), ("0", False), ("YES", True), ("no", False),
    ("t", True), ("f", False)])
def test_bool_fields(text, want):
    assert _config(f"--config.data.augment={text}").data.augment is want


def test_bare_and_negated_bools():
    assert _config("--config.data.augment").data.augment is True
    assert _config("--noconfig.data.augment").data.augment is False
    assert _config("--config.data.augment", "false").data.augment is False
    with pytest.raises(SatsegError, match=r"--config.data.augment=maybe: expected a boolean"):
        _config("--config.data.augment=maybe")


def test_int_fields():
    c = _config("--config.train.batch_size=8", "--config.train.num_steps", "12",
                "--config.seed=0x10")
    assert (c.train.batch_size, c.train.num_steps, c.seed) == (8, 12, 16)
    assert isinstance(c.train.batch_size, int)
    for bad in ("1e-3", "4.0", "", "many"):
        with pytest.raises(SatsegError) as e:
            _config(f"--config.train.batch_size={bad}")
        msg = str(e.value)
        assert msg.startswith(f"--config.train.batch_size={bad}: expected an integer")
        assert "config.train.batch_size is int (now 16)" in msg and "\n" not in msg


def test_float_fields():
    c = _config("--config.optimizer.learning_rate=1e-3", "--config.optimizer.b1=1")
    assert c.optimizer.learning_rate == 1e-3
    assert c.optimizer.b1 == 1.0 and isinstance(c.optimizer.b1, float)
    with pytest.raises(SatsegError, match="learning_rate=fast: expected a number"):
        _config("--config.optimizer.learning_rate=fast")


def test_str_fields_take_the_text_as_is():
    c = _config("--config.task=42", "--config.model.name", "unet")
    assert c.task == "42" and c.model.name == "unet"


@pytest.mark.parametrize(("argv", "want"), [
    (["--config.schedule.boundaries=0.5,0.75"], (0.5, 0.75)),
    (["--config.schedule.boundaries=(0.5, 0.75)"], (0.5, 0.75)),
    (["--config.schedule.boundaries=[0.5,0.75]"], (0.5, 0.75)),
    (["--config.schedule.boundaries", "0.4,0.8"], (0.4, 0.8)),
    (["--config.schedule.boundaries=0.5"], (0.5,)),
    (["--config.schedule.boundaries=0.5", "--config.schedule.boundaries=0.75"], (0.5, 0.75)),
    (["--config.schedule.boundaries=abc"], ("abc",)),
    # quotes that reach the program (not removed by a shell) make one string, as before
    (["--config.schedule.boundaries='(0.5, 0.75)'"], ("(0.5, 0.75)",)),
])
def test_tuple_fields_read_like_ml_collections(argv, want):
    assert _config(*argv).schedule.boundaries == want


def test_tuple_with_spaces_is_an_error_with_the_fix():
    with pytest.raises(SatsegError, match="separate them with commas"):
        _config("--config.schedule.boundaries=a b")


def test_dict_fields():
    c = _config("--config.loss.weights={'cross_entropy': 1.0, 'dice': 0.5}")
    assert c.loss.weights.to_dict() == {"cross_entropy": 1.0, "dice": 0.5}
    with pytest.raises(SatsegError, match="expected a dict"):
        _config("--config.loss.weights=dice")


@pytest.fixture()
def odd_config(tmp_path) -> str:
    """A config with a None field, a placeholder, a list and a get_config(arg)."""
    path = tmp_path / "odd.py"
    path.write_text(
        "import ml_collections\nfrom ml_collections import config_dict\n\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.seed = int(arg) if arg else 0\n"
        "    c.task = None\n"
        "    c.parallelism = config_dict.placeholder(int)\n"
        "    c.data = ml_collections.ConfigDict()\n"
        "    c.data.data_dir = [1, 2]\n"
        "    return c\n")
    return str(path)


def test_none_fields_take_a_literal_else_the_text(odd_config):
    assert _config("--config.task=3", spec=odd_config).task == 3
    assert _config("--config.task=[1, 2]", spec=odd_config).task == [1, 2]
    assert _config("--config.task=abc", spec=odd_config).task == "abc"
    assert _config("--config.task=true", spec=odd_config).task is True


def test_placeholders_and_lists(odd_config):
    assert _config("--config.parallelism=5", spec=odd_config).parallelism == 5
    with pytest.raises(SatsegError, match="expected an integer"):
        _config("--config.parallelism=abc", spec=odd_config)
    assert _config("--config.data.data_dir=3,4", spec=odd_config).data.data_dir == [3, 4]


def test_file_colon_arg_calls_get_config_with_it(odd_config):
    assert load_config(f"{odd_config}:7").seed == 7
    assert _config("--config.seed=9", spec=f"{odd_config}:7").seed == 9
    with pytest.raises(SatsegError, match="unknown config field config.sed"):
        _config("--config.sed=9", spec=f"{odd_config}:7")
    with pytest.raises(SatsegError, match="nope.py: config file not found"):
        load_config(str(Path(odd_config).parent / "nope.py:7"))


def test_unknown_keys_list_the_valid_fields():
    with pytest.raises(SatsegError) as e:
        _config("--config.train.batch_sise=4")
    msg = str(e.value)
    assert "--config.train.batch_sise" in msg and "did you mean 'batch_size'" in msg
    assert "valid fields of config.train: batch_size, checkpoint_every" in msg
    with pytest.raises(SatsegError, match="config.seed is a value, not a section"):
        _config("--config.seed.x=1")


def test_model_knobs_the_file_leaves_out_are_set_with_their_type():
    """A recipe written before encoders takes ``--config.model.encoder=resnet34`` (and
    the start fields): config.model is checked against the chosen model's knobs, so a
    knob of that model is added at its default and parsed with its type; a name that is
    no knob of the model (after a --config.model.name switch too) is refused, listing the
    model's knobs."""
    recipe = str(REPO / "configs" / "real" / "rgb_vhr.py")
    c = _config("--config.model.encoder=resnet34", "--config.model.depth=5",
                "--config.model.bn_momentum=0.5", "--config.model.encoder_weights=runs/enc",
                spec=recipe)
    assert (c.model.encoder, c.model.depth, c.model.encoder_weights) == \
        ("resnet34", 5, "runs/enc")
    assert isinstance(c.model.bn_momentum, float) and c.model.bn_momentum == 0.5
    assert "adapt_bands" not in c.model  # only what was asked for is added
    with pytest.raises(SatsegError) as e:
        _config("--config.model.encodr=resnet34", spec=recipe)
    msg = str(e.value)
    assert "did you mean 'encoder'" in msg and "for 'unet'" in msg
    assert "encoder_bn" in msg and "encoder_weights" in msg
    with pytest.raises(SatsegError, match="unknown config field config.model.encoder_bn"):
        _config("--config.model.name=cerranet", "--config.model.encoder_bn=frozen",
                spec=recipe)


def test_the_config_ends_up_locked():
    c = _config("--config.train.num_steps=3")
    assert c.is_locked
    with pytest.raises(AttributeError):
        c.train.new_field = 1


def test_a_value_is_needed_except_for_bools():
    with pytest.raises(SatsegError, match="needs a value"):
        apply_overrides(load_config(SAMPLE), [Override("train.num_steps", None)])
