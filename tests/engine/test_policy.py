import pytest
import torch

from mixprec.policy import PRESET_NAMES, PRESETS, Policy


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_str(name):
    policy = Policy.parse(name)
    assert str(policy) == name
    assert Policy.parse(str(policy)) == policy
    assert Policy.parse(policy.to_keys()) == policy


def test_preset_table():
    p = PRESETS
    assert (p["16-mixed"].param_dtype, p["16-mixed"].compute_dtype) == (torch.float32, torch.float16)
    assert p["16-master"].param_dtype == torch.float16 and p["16-master"].master_dtype == torch.float32
    assert p["bf16-true"].master_dtype is None and p["bf16-true"].output_dtype == torch.bfloat16
    assert [p[n].default_scaler for n in ("32", "16-mixed", "bf16-mixed", "16-master", "bf16-master",
                                          "16-true", "bf16-true")] == \
        ["none", "dynamic", "none", "dynamic", "none", "none", "none"]
    assert p["16-true"].uses_autocast is False and p["16-master"].uses_autocast is True


def test_custom_policy_round_trips_and_prints_keys():
    text = "params=bfloat16,compute=float16,output=float32,master=float32"
    policy = Policy.parse(text)
    assert str(policy) == text
    assert Policy.parse(str(policy)) == policy


def test_short_keys_and_aliases():
    assert Policy.parse("p=f32,c=bf16,o=f32") == PRESETS["bf16-mixed"]
    assert Policy.parse("32-true") == PRESETS["32"]
    assert Policy.parse("params=float32,compute=half") == PRESETS["16-mixed"]


@pytest.mark.parametrize(("bad", "named"), [
    ("16-mixd", "'16-mixd'"), ("fp64", "'fp64'"), ("", "''"),
    ("params=float64", "'float64'"), ("params=float16,foo=bar", "'foo=bar'")])
def test_bad_strings_name_the_problem(bad, named):
    with pytest.raises(ValueError) as err:
        Policy.parse(bad)
    message = str(err.value)
    assert named in message
    if "=" not in bad:
        assert all(name in message for name in PRESET_NAMES)


def test_auto_needs_a_device():
    with pytest.raises(ValueError, match="auto_policy"):
        Policy.parse("auto")


def test_master_must_be_wider_than_params():
    with pytest.raises(ValueError, match="master"):
        Policy(torch.float16, torch.float16, torch.float32, torch.float16)
